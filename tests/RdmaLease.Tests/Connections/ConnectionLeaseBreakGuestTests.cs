using System.Text;
using RdmaLease.Leases;
using RdmaLease.Tests.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Connections.Cm;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Connections;

/// <summary>
/// A connection made with rdma_cm whose target region is a leased FS-DAX file, when another process truncates the
/// file: the region is revoked and the connected QP goes to the error state; then the documented way back
/// (docs/connections.md): new lease, new registration, new QP, reconnect with the new RemoteRegion in the accept's
/// private data, resend. Both sides are in this process but each has its own device context, PD, CQ and QPs.
/// </summary>
[Category("Guest")]
public class ConnectionLeaseBreakGuestTests
{
    [Test]
    public async Task LeaseBreakOnAConnectedRegionThenReconnectAndResend()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("target");
        const int Blocks = 16, Size = Blocks * Block;
        using var server = new CmSide();
        using var client = new CmSide();
        using var listener = RdmaListener.Listen(AnyPort);
        using var source = client.Pd.AllocateBuffer(Block, AccessFlags.LocalWrite);
        using var message = client.Pd.AllocateBuffer(64, AccessFlags.LocalWrite);
        using var inbox = server.Pd.AllocateBuffer(64, AccessFlags.LocalWrite);

        // ---- 1. connected, writing into the leased file ----
        using var first = new Disposables();   // the first generation, disposed on every path
        var file = first.Add(OpenFile(path, "/mnt/xfs", Size));
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        var lease = first.Add(file.AcquireLease());
        var broke = OnBreak(lease);
        var mr = first.Add(server.Pd.Register(lease, RemoteWritable));
        var qpS1 = first.Add(server.NewQueuePair());
        mr.AttachQueuePair(qpS1);
        var qpC1 = first.Add(client.NewQueuePair());
        var advertised1 = new byte[RemoteRegion.EncodedLength];
        mr.ToRemote().Encode(advertised1);
        var (conn1, sconn1, _) = await ConnectPairAsync(listener, qpC1, qpS1, Encoding.ASCII.GetBytes("client v1"), advertised1);
        first.Add(conn1);
        first.Add(sconn1);
        var remote1 = RemoteRegion.Decode(conn1.RemotePrivateData.Span);
        Assert.Multiple(() =>
        {
            Assert.That(remote1, Is.EqualTo(mr.ToRemote()), "the region travelled in the accept's private data");
            Assert.That(mr.IsOnDemand, Is.True, "FS-DAX: ODP");
            Assert.That(qpC1.PathMtu, Is.EqualTo(Mtu.Mtu4096), "rdma_cm on lo: MTU 4096, one packet per 4 KiB write (docs/known-defects.md)");
            Assert.That(KernelQp(qpS1.QueuePairNumber).Single(), Does.Contain("state RTS").And.Contain($"rqpn {qpC1.QueuePairNumber} "), "the kernel shows the server QP connected to the client's");
        });

        BlockPattern(PeerSeed).CopyTo(source.Span);
        for (int b = 0; b < Blocks; b++)
        {
            qpC1.PostWrite((ulong)b, source.Slice(0, Block), remote1, (ulong)(b * Block));
            ExpectSuccess(client.Cq, WorkCompletionOpcode.RdmaWrite, (ulong)b);
        }
        qpS1.PostReceive(900, inbox.Slice(0, 64));
        Encoding.ASCII.GetBytes("v1 written".PadRight(64, '.')).CopyTo(message.Span);
        qpC1.PostSend(901, message.Slice(0, 64));
        ExpectSuccess(client.Cq, WorkCompletionOpcode.Send, 901);
        ExpectSuccess(server.Cq, WorkCompletionOpcode.Receive, 900);
        Assert.That(inbox.Span.ToArray(), Is.EqualTo(message.Span.ToArray()), "the SEND arrived byte for byte");
        Assert.That(ClassifyAll(ReadByDescriptor(file)), Is.All.EqualTo("peer"), "every block written over the connection (read(2))");

        // ---- 2. another process truncates: the lease breaks ----
        var p = RunProbe(TimeSpan.FromSeconds(60), "truncate", path, (4 * Block).ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(broke.Task.Wait(TimeSpan.FromSeconds(30)), Is.True, "no BreakRequested");
        Assert.Multiple(() =>
        {
            Assert.That(mr.IsDeregistered, Is.True);
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(remote1.RemoteKey), "the kernel no longer lists the old rkey");
            Assert.That(qpS1.QueryState(), Is.EqualTo(QueuePairState.Error), "the connected QP attached to the region is in error");
            Assert.That(KernelQp(qpS1.QueuePairNumber).Single(), Does.Contain("state ERR"), "the kernel agrees");
        });
        // The client, still connected as far as rdma_cm knows, writes with the old rkey: nothing lands.
        BlockPattern(LateSeed).CopyTo(source.Span);
        qpC1.PostWrite(50, source.Slice(0, Block), remote1, 0);
        // rxe answers nothing from a QP in the error state: the write fails by retries, or stays outstanding until the
        // connection ends and flushes it. Either way it must not succeed, and nothing may land (checked below).
        var late = TryWaitOne(client.Cq, 10);
        if (late is { } l)
            Assert.That(l.Status, Is.Not.EqualTo(WorkCompletionStatus.Success), $"a write to the revoked region must fail: {l}");

        // ---- 3. the way back: the server ends the old connection; the client sees it ----
        sconn1.Dispose();
        await conn1.Disconnected.WaitAsync(Generous);
        Assert.That(conn1.DisconnectedByPeer, Is.True);
        Assert.That(qpC1.QueryState(), Is.EqualTo(QueuePairState.Error));
        late ??= WaitOne(client.Cq, 30);
        Assert.That(late.Value.Status, Is.Not.EqualTo(WorkCompletionStatus.Success), $"the late write: {late}");
        TestContext.Out.WriteLine($"old connection, old rkey after the break: {late.Value.Status}");
        conn1.Dispose();
        uint oldServerQpn = qpS1.QueuePairNumber, oldClientQpn = qpC1.QueuePairNumber;
        qpS1.Dispose();
        qpC1.Dispose();
        mr.Dispose();
        lease.Dispose();
        file.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(KernelQp(oldServerQpn), Is.Empty, "old server QP destroyed");
            Assert.That(KernelQp(oldClientQpn), Is.Empty, "old client QP destroyed");
        });

        // New lease, new registration, new QPs, reconnect: the new region in the accept's private data.
        using var file2 = DaxFile.Open(path, new DaxFileOptions());
        Assert.That(file2.Length, Is.EqualTo(4 * Block));
        Assert.That(ClassifyAll(ReadByDescriptor(file2)), Is.EqualTo(new[] { "peer", "peer", "peer", "peer" }), "the late write landed nowhere");
        using var lease2 = file2.AcquireLease();
        using var mr2 = server.Pd.Register(lease2, RemoteWritable);
        using var qpS2 = server.NewQueuePair();
        mr2.AttachQueuePair(qpS2);
        using var qpC2 = client.NewQueuePair();
        var advertised2 = new byte[RemoteRegion.EncodedLength];
        mr2.ToRemote().Encode(advertised2);
        var (conn2, sconn2, requestData2) = await ConnectPairAsync(listener, qpC2, qpS2, Encoding.ASCII.GetBytes("client v2"), advertised2);
        using var c2 = conn2;
        using var s2 = sconn2;
        var remote2 = RemoteRegion.Decode(conn2.RemotePrivateData.Span);
        Assert.Multiple(() =>
        {
            Assert.That(Encoding.ASCII.GetString(requestData2).TrimEnd('\0'), Is.EqualTo("client v2"));
            Assert.That(remote2, Is.EqualTo(mr2.ToRemote()));
            Assert.That(remote2.RemoteKey, Is.Not.EqualTo(remote1.RemoteKey), "a new rkey");
            Assert.That(remote2.Length, Is.EqualTo((ulong)(4 * Block)));
        });

        // Resend: every block of the (now shorter) file, and the SEND.
        BlockPattern(NewFileSeed).CopyTo(source.Span);
        for (int b = 0; b < 4; b++)
        {
            qpC2.PostWrite((ulong)(100 + b), source.Slice(0, Block), remote2, (ulong)(b * Block));
            ExpectSuccess(client.Cq, WorkCompletionOpcode.RdmaWrite, (ulong)(100 + b));
        }
        qpS2.PostReceive(910, inbox.Slice(0, 64));
        Encoding.ASCII.GetBytes("v2 resent".PadRight(64, '-')).CopyTo(message.Span);
        qpC2.PostSend(911, message.Slice(0, 64));
        ExpectSuccess(client.Cq, WorkCompletionOpcode.Send, 911);
        ExpectSuccess(server.Cq, WorkCompletionOpcode.Receive, 910);
        Assert.That(inbox.Span.ToArray(), Is.EqualTo(message.Span.ToArray()));
        Assert.That(ClassifyAll(ReadByDescriptor(file2)), Is.EqualTo(new[] { "new", "new", "new", "new" }), "the resend landed in every block");
        Patterns.AssertEqual(file2.Span, ReadByDescriptor(file2), "mapping and read(2) agree");

        // The old rkey over the new, working connection: refused by the responder, nothing lands.
        BlockPattern(LateSeed).CopyTo(source.Span);
        qpC2.PostWrite(60, source.Slice(0, Block), remote1, 0);
        var old = WaitOne(client.Cq, 30);
        Assert.That(old.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), old.ToString());
        Assert.That(ClassifyAll(ReadByDescriptor(file2)), Is.EqualTo(new[] { "new", "new", "new", "new" }), "the old rkey reached nothing");
        uint s2Qpn = qpS2.QueuePairNumber;
        sconn2.Dispose();
        conn2.Dispose();
        qpS2.Dispose();
        Assert.That(KernelQp(s2Qpn), Is.Empty);
    }
}
