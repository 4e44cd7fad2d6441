using System.Diagnostics;
using System.Net;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Connections.Cm;

namespace RdmaLease.Tests.Connections;

/// <summary>rdma_cm connections (RdmaListener, RdmaConnection) on rxelo (127.0.0.1) in the guest.</summary>
[Category("Guest")]
public class ConnectionGuestTests
{
    [Test]
    public async Task ConnectAcceptWithPrivateDataBothWaysThenWriteAndSend()
    {
        using var server = new CmSide();
        using var client = new CmSide();
        using var listener = RdmaListener.Listen(AnyPort);
        Assert.That(listener.LocalEndPoint.Port, Is.Not.Zero, "the kernel chose a port");
        Assert.That(KernelCmIds(listener.LocalEndPoint.Port), Has.Some.Contains("LISTEN"), "the kernel lists the listening cm_id");

        const int Size = 64 * 1024;
        using var target = server.Pd.AllocateBuffer(Size, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        using var inbox = server.Pd.AllocateBuffer(8192, AccessFlags.LocalWrite);
        using var source = client.Pd.AllocateBuffer(Size, AccessFlags.LocalWrite);
        var qpS = server.NewQueuePair();
        var qpC = client.NewQueuePair();
        byte[] clientData = Bytes(RdmaPrivateDataLimits.Connect, 3);          // the full 56 bytes
        var serverData = new byte[RdmaPrivateDataLimits.Accept];
        target.ToRemote().Encode(serverData);
        Bytes(RdmaPrivateDataLimits.Accept - RemoteRegion.EncodedLength, 9).CopyTo(serverData.AsSpan(RemoteRegion.EncodedLength));

        var (conn, sconn, requestData) = await ConnectPairAsync(listener, qpC, qpS, clientData, serverData);
        using (conn)
        using (sconn)
        {
            AssertPrivateData(requestData, clientData, RdmaPrivateDataLimits.Connect, "connect private data at the server");
            AssertPrivateData(sconn.RemotePrivateData.Span, clientData, RdmaPrivateDataLimits.Connect, "the server connection's RemotePrivateData");
            AssertPrivateData(conn.RemotePrivateData.Span, serverData, RdmaPrivateDataLimits.Accept, "accept private data at the client");
            Assert.Multiple(() =>
            {
                Assert.That(conn.IsConnected && sconn.IsConnected, Is.True);
                Assert.That(conn.DeviceName, Is.EqualTo(DeviceName));
                Assert.That(conn.RemoteEndPoint, Is.EqualTo(listener.LocalEndPoint));
                Assert.That(sconn.RemoteEndPoint, Is.EqualTo(conn.LocalEndPoint));
                Assert.That(conn.QueuePair, Is.SameAs(qpC));
                Assert.That(qpC.QueryState(), Is.EqualTo(QueuePairState.ReadyToSend));
                Assert.That(qpS.QueryState(), Is.EqualTo(QueuePairState.ReadyToSend));
                Assert.That(KernelQp(qpC.QueuePairNumber).Single(), Does.Contain("state RTS").And.Contain($"rqpn {qpS.QueuePairNumber} "), "kernel: client QP connected to the server's");
                Assert.That(KernelQp(qpS.QueuePairNumber).Single(), Does.Contain("state RTS").And.Contain($"rqpn {qpC.QueuePairNumber} "), "kernel: server QP connected to the client's");
                Assert.That(KernelCmIds(listener.LocalEndPoint.Port), Has.Count.GreaterThanOrEqualTo(3), "listener + both connection ids");
            });

            // RDMA WRITE (multi-packet, pinned) into the region advertised in the accept, then a SEND.
            var remote = RemoteRegion.Decode(conn.RemotePrivateData.Span);
            Patterns.Fill(source.Span, 41);
            qpC.PostWrite(1, source.Slice(0, Size), remote, 0);
            ExpectSuccess(client.Cq, WorkCompletionOpcode.RdmaWrite, 1);
            Patterns.AssertEqual(target.Span, source.Span, "RDMA WRITE over the rdma_cm connection");
            qpS.PostReceive(2, inbox.Slice(0, 8192));
            qpC.PostSend(3, source.Slice(4096, 8192));
            ExpectSuccess(client.Cq, WorkCompletionOpcode.Send, 3);
            ExpectSuccess(server.Cq, WorkCompletionOpcode.Receive, 2);
            Patterns.AssertEqual(inbox.Span, source.Span.Slice(4096, 8192), "SEND over the rdma_cm connection");

            // A second connection on the same QP is refused.
            var reuse = Assert.ThrowsAsync<InvalidOperationException>(() => RdmaConnection.ConnectAsync(listener.LocalEndPoint, qpC));
            Assert.That(reuse!.Message, Does.Contain("already used"));
        }
        // Disposed: the kernel lists neither QP as connected any more (error), and no connection cm_id.
        Assert.Multiple(() =>
        {
            Assert.That(qpC.QueryState(), Is.EqualTo(QueuePairState.Error));
            Assert.That(KernelCmIds(listener.LocalEndPoint.Port).Count(l => !l.Contains("LISTEN", StringComparison.Ordinal)), Is.Zero, "connection ids destroyed");
        });
        uint c = qpC.QueuePairNumber, s = qpS.QueuePairNumber;
        qpC.Dispose();
        qpS.Dispose();
        Assert.That(KernelQp(c).Concat(KernelQp(s)), Is.Empty, "QPs gone from the kernel");
    }

    [Test]
    public async Task PeerDisconnectIsObservedOnBothSides()
    {
        using var server = new CmSide();
        using var client = new CmSide();
        using var listener = RdmaListener.Listen(AnyPort);
        var qpS = server.NewQueuePair();
        var qpC = client.NewQueuePair();
        using var inbox = server.Pd.AllocateBuffer(64, AccessFlags.LocalWrite);
        var (conn, sconn, _) = await ConnectPairAsync(listener, qpC, qpS, [1], [2]);
        using (conn)
        using (sconn)
        {
            qpS.PostReceive(7, inbox.Slice(0, 64));   // outstanding: flushed when the connection ends
            Assert.That(sconn.Disconnected.IsCompleted, Is.False);
            await conn.DisconnectAsync(Generous);
            Assert.That(conn.DisconnectedByPeer, Is.False);
            await sconn.Disconnected.WaitAsync(Generous);
            Assert.Multiple(() =>
            {
                Assert.That(sconn.DisconnectedByPeer, Is.True);
                Assert.That(sconn.IsConnected, Is.False);
                Assert.That(qpS.QueryState(), Is.EqualTo(QueuePairState.Error), "the peer's disconnect moved our QP to error");
                Assert.That(qpC.QueryState(), Is.EqualTo(QueuePairState.Error));
            });
            var flushed = WaitOne(server.Cq);
            Assert.That(flushed.Status, Is.EqualTo(WorkCompletionStatus.WorkRequestFlushed), flushed.ToString());
            await conn.DisconnectAsync(Generous);   // idempotent
        }
        Assert.ThrowsAsync<ObjectDisposedException>(() => conn.DisconnectAsync());
    }

    [Test]
    public async Task ConnectToAPortNobodyListensOnIsRejectedWithinTheTimeout()
    {
        using var client = new CmSide();
        var qp = client.NewQueuePair();
        int port;
        using (var probe = RdmaListener.Listen(AnyPort))
            port = probe.LocalEndPoint.Port;   // free now
        var sw = Stopwatch.StartNew();
        var e = Assert.ThrowsAsync<RdmaConnectionRejectedException>(() =>
            RdmaConnection.ConnectAsync(new IPEndPoint(Address, port), qp, new RdmaConnectOptions { Timeout = TimeSpan.FromSeconds(20) }));
        sw.Stop();
        TestContext.Out.WriteLine($"{sw.ElapsedMilliseconds} ms: {e!.Message}");
        Assert.Multiple(() =>
        {
            Assert.That(e.Failure, Is.EqualTo(RdmaConnectionFailure.Rejected));
            Assert.That(e.IsConsumerReject, Is.False);
            Assert.That(e.Message, Does.Contain("Nobody listens").Or.Contain("listening"));
            Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(20)));
            Assert.That(qp.QueryState(), Is.EqualTo(QueuePairState.Reset), "back in RESET, ready for another attempt");
        });
        await Task.CompletedTask;
    }

    [Test]
    public async Task RejectCarriesPrivateDataAndTheQueuePairCanConnectAfterwards()
    {
        using var server = new CmSide();
        using var client = new CmSide();
        using var listener = RdmaListener.Listen(AnyPort);
        var qpC = client.NewQueuePair();
        byte[] why = Bytes(20, 5);
        var rejecting = Task.Run(async () =>
        {
            using var request = await listener.AcceptAsync(Generous);
            Assert.Throws<ArgumentException>(() => request.Reject(new byte[RdmaPrivateDataLimits.Reject + 1]));
            request.Reject(why);
            Assert.Throws<InvalidOperationException>(() => request.Reject());
        });
        var e = Assert.ThrowsAsync<RdmaConnectionRejectedException>(() =>
            RdmaConnection.ConnectAsync(listener.LocalEndPoint, qpC, new RdmaConnectOptions { Timeout = Generous }));
        await rejecting.WaitAsync(Generous);
        Assert.That(e!.IsConsumerReject, Is.True, e.Message);
        Assert.That(e.PrivateData.Span[..why.Length].ToArray(), Is.EqualTo(why));
        Assert.That(qpC.QueryState(), Is.EqualTo(QueuePairState.Reset));

        // The same QP, reset by the failed attempt, connects.
        var qpS = server.NewQueuePair();
        var (c, s, _) = await ConnectPairAsync(listener, qpC, qpS, [9], [8]);
        c.Dispose();
        s.Dispose();
    }

    [Test]
    public async Task AcceptCanBeCancelledOrTimeOut()
    {
        using var listener = RdmaListener.Listen(AnyPort);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var sw = Stopwatch.StartNew();
        Assert.CatchAsync<OperationCanceledException>(() => listener.AcceptAsync(cts.Token));
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)));
        var t = Assert.ThrowsAsync<TimeoutException>(() => listener.AcceptAsync(TimeSpan.FromMilliseconds(200)));
        Assert.That(t!.Message, Does.Contain("no connection request"));
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => listener.AcceptAsync(TimeSpan.Zero));
        var pending = listener.AcceptAsync(Generous);
        listener.Dispose();
        Assert.ThrowsAsync<ObjectDisposedException>(() => pending);
        await Task.CompletedTask;
    }

    [Test]
    public async Task ConnectCanBeCancelledOrTimeOutWhileThePeerDoesNotAnswer()
    {
        using var client = new CmSide();
        using var listener = RdmaListener.Listen(AnyPort);
        var qp = client.NewQueuePair();

        // Nobody takes the request from the listener: the connect waits for the response.
        var t = Assert.ThrowsAsync<TimeoutException>(() =>
            RdmaConnection.ConnectAsync(listener.LocalEndPoint, qp, new RdmaConnectOptions { Timeout = TimeSpan.FromSeconds(2) }));
        Assert.That(t!.Message, Does.Contain("the connection request"));
        Assert.That(qp.QueryState(), Is.EqualTo(QueuePairState.Reset));
        (await listener.AcceptAsync(Generous)).Dispose();   // the stale request: rejected

        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(500));
        Assert.CatchAsync<OperationCanceledException>(() =>
            RdmaConnection.ConnectAsync(listener.LocalEndPoint, qp, new RdmaConnectOptions { Timeout = Generous }, cts.Token));
        Assert.That(qp.QueryState(), Is.EqualTo(QueuePairState.Reset));
        (await listener.AcceptAsync(Generous)).Dispose();
    }

    [Test]
    public void BadInputIsRefusedWithClearExceptions()
    {
        using var client = new CmSide();
        var qp = client.NewQueuePair();
        var ud = client.NewQueuePair(QueuePairType.UnreliableDatagram);
        var to = new IPEndPoint(Address, 7471);
        var big = Assert.ThrowsAsync<ArgumentException>(() => RdmaConnection.ConnectAsync(to, qp, new RdmaConnectOptions { PrivateData = new byte[57] }));
        Assert.That(big!.Message, Does.Contain("57 bytes").And.Contain("at most 56"));
        var notRc = Assert.ThrowsAsync<ArgumentException>(() => RdmaConnection.ConnectAsync(to, ud));
        Assert.That(notRc!.Message, Does.Contain("RC"));
        Assert.ThrowsAsync<ArgumentException>(() => RdmaConnection.ConnectAsync(new IPEndPoint(Address, 0), qp));
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => RdmaConnection.ConnectAsync(to, qp, new RdmaConnectOptions { Timeout = TimeSpan.FromSeconds(-1) }));
        Assert.ThrowsAsync<ArgumentNullException>(() => RdmaConnection.ConnectAsync(null!, qp));
        Assert.Throws<ArgumentOutOfRangeException>(() => RdmaListener.Listen(AnyPort, 0));
        using var listener = RdmaListener.Listen(AnyPort);
        var inUse = Assert.Throws<VerbsException>(() => RdmaListener.Listen(listener.LocalEndPoint));
        Assert.That(inUse!.Message, Does.Contain("port").And.Contain("rdma_bind_addr"));
        Assert.That(qp.QueryState(), Is.EqualTo(QueuePairState.Reset), "nothing touched the QP");
    }

    [Test]
    public void NoRouteAndWrongDeviceSayWhatToCheck()
    {
        using var client = new CmSide();
        var qp = client.NewQueuePair();
        // 203.0.113.1 (TEST-NET-3): the guest has no route there.
        var e = Assert.CatchAsync<RdmaConnectionException>(() =>
            RdmaConnection.ConnectAsync(new IPEndPoint(IPAddress.Parse("203.0.113.1"), 7471), qp, new RdmaConnectOptions { Timeout = TimeSpan.FromSeconds(10) }));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Failure, Is.EqualTo(RdmaConnectionFailure.AddressResolution));
        Assert.That(e.Message, Does.Contain("rdma link"));
        Assert.That(qp.QueryState(), Is.EqualTo(QueuePairState.Reset));

        // A QP on rxelo for a peer rdma_cm reaches through rxecm.
        using var listener = RdmaListener.Listen(AnyPort);
        using var other = new CmSide("rxelo");
        var wrong = other.NewQueuePair();
        var m = Assert.CatchAsync<RdmaConnectionException>(() => RdmaConnection.ConnectAsync(listener.LocalEndPoint, wrong));
        Assert.That(m!.Failure, Is.EqualTo(RdmaConnectionFailure.DeviceMismatch));
        Assert.That(m.Message, Does.Contain($"'{DeviceName}'").And.Contain("'rxelo'"));
        Assert.That(wrong.QueryState(), Is.EqualTo(QueuePairState.Reset));

        // Loopback: rdma_cm cannot route over lo; the message says so.
        var lo = Assert.CatchAsync<RdmaConnectionException>(() =>
            RdmaConnection.ConnectAsync(new IPEndPoint(IPAddress.Loopback, listener.LocalEndPoint.Port), wrong, new RdmaConnectOptions { Timeout = TimeSpan.FromSeconds(10) }));
        TestContext.Out.WriteLine(lo!.Message);
        Assert.That(lo.Message, Does.Contain("loopback"));
    }

    [Test]
    public async Task ManyConnectionsInALoopLeaveNothingBehind()
    {
        using var server = new CmSide();
        using var client = new CmSide();
        using var listener = RdmaListener.Listen(AnyPort);
        int qpsBefore = KernelView.RdmaResources("qp").Count;
        using var buffer = server.Pd.AllocateBuffer(64, AccessFlags.LocalWrite);
        using var source = client.Pd.AllocateBuffer(64, AccessFlags.LocalWrite);
        for (int i = 0; i < 20; i++)
        {
            using var qpS = server.NewQueuePair();
            using var qpC = client.NewQueuePair();
            var (c, s, data) = await ConnectPairAsync(listener, qpC, qpS, [(byte)i], [(byte)(i + 100)]);
            Assert.That(data[0], Is.EqualTo((byte)i));
            Assert.That(c.RemotePrivateData.Span[0], Is.EqualTo((byte)(i + 100)));
            qpS.PostReceive((ulong)i, buffer.Slice(0, 64));
            source.Span[..64].Fill((byte)i);
            qpC.PostSend((ulong)i, source.Slice(0, 64));
            ExpectSuccess(client.Cq, WorkCompletionOpcode.Send, (ulong)i);
            ExpectSuccess(server.Cq, WorkCompletionOpcode.Receive, (ulong)i);
            Assert.That(buffer.Span[..64].IndexOfAnyExcept((byte)i), Is.EqualTo(-1));
            if (i % 2 == 0)
                await c.DisconnectAsync(Generous);
            c.Dispose();
            s.Dispose();
        }
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.RdmaResources("qp"), Has.Count.EqualTo(qpsBefore), "no QP left");
            Assert.That(KernelCmIds(listener.LocalEndPoint.Port), Has.Count.EqualTo(1), "only the listener's cm_id is left");
        });
    }
}
