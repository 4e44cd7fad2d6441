using System.Buffers.Binary;
using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>SendBatch (QueuePair.StartPost) and scatter-list receives on rxe, pinned buffers, every byte and completion checked.</summary>
[Category("Guest")]
public class SendBatchTests
{
    [Test]
    public void AMixedBatchPostsEveryKindOfRequestAtOnce()
    {
        using var rig = new BatchRig();
        Span<byte> l = rig.Local.Span, r = rig.Remote.Span;
        Patterns.Fill(l, 1);
        r.Clear();
        Patterns.Fill(r.Slice(16384, 200), 2);
        BinaryPrimitives.WriteUInt64LittleEndian(r[4096..], 0x1111);
        BinaryPrimitives.WriteUInt64LittleEndian(r[4104..], 100);
        var remote = rig.Remote.ToRemote();
        byte[] inline = new byte[40];
        Patterns.Fill(inline, 3);

        // B's receives, consumed in order: the WRITE with immediate, the 3-segment SEND (scattered over 3), the inline SEND.
        rig.B.PostReceive(101, rig.Remote.Slice(30000, 64));
        rig.B.PostReceive(102, [rig.Remote.Slice(8192, 200), rig.Remote.Slice(9000, 50), rig.Remote.Slice(9500, 250)]);
        rig.B.PostReceive(103, rig.Remote.Slice(12000, 64));

        var batch = rig.A.StartPost();
        batch.Write(1, [rig.Local.Slice(0, 100), rig.Local.Slice(1000, 300), rig.Local.Slice(5000, 64)], remote, 0, immediate: 0xABCD);
        batch.Send(2, [rig.Local.Slice(2000, 100), rig.Local.Slice(2200, 300), rig.Local.Slice(2600, 100)]);
        batch.SendInline(3, inline);
        batch.CompareSwap(4, rig.Local.Slice(8192, 8), remote, 4096, compare: 0x1111, swap: 0x2222);
        batch.FetchAdd(5, rig.Local.Slice(8200, 8), remote, 4104, add: 5);
        batch.Read(6, [rig.Local.Slice(20000, 128), rig.Local.Slice(24000, 72)], remote, 16384);
        Assert.That(batch.Count, Is.EqualTo(6));
        batch.Post();
        Assert.That(batch.Count, Is.Zero, "Post empties the batch");

        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.Send, 2);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.Send, 3);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.CompareSwap, 4);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.FetchAdd, 5);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaRead, 6);
        var imm = RcPair.Expect(rig.CqB, WorkCompletionOpcode.ReceiveRdmaWithImmediate, 101);
        var gathered = RcPair.Expect(rig.CqB, WorkCompletionOpcode.Receive, 102);
        var inlined = RcPair.Expect(rig.CqB, WorkCompletionOpcode.Receive, 103);

        l = rig.Local.Span;
        r = rig.Remote.Span;
        Assert.Multiple(() =>
        {
            Assert.That(imm.HasImmediate && imm.Immediate == 0xABCD, $"the WRITE's immediate arrived: {imm}");
            Assert.That(gathered.ByteLength, Is.EqualTo(500u));
            Assert.That(inlined.ByteLength, Is.EqualTo(40u));
        });
        byte[] written = [.. l[..100], .. l.Slice(1000, 300), .. l.Slice(5000, 64)];
        Patterns.AssertEqual(r[..464], written, "gathered WRITE");
        Assert.That(r.Slice(464, 64).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing written past the WRITE");
        byte[] sent = [.. l.Slice(2000, 100), .. l.Slice(2200, 300), .. l.Slice(2600, 100)];
        byte[] received = [.. r.Slice(8192, 200), .. r.Slice(9000, 50), .. r.Slice(9500, 250)];
        Patterns.AssertEqual(received, sent, "3-segment SEND into a 3-segment receive");
        Assert.That(r[8392] | r[9050] | r[9750], Is.Zero, "nothing received past each scatter segment");
        Patterns.AssertEqual(r.Slice(12000, 40), inline, "inline SEND");
        Assert.That(r.Slice(12040, 24).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing past the inline SEND");
        ulong[] atomics = [BinaryPrimitives.ReadUInt64LittleEndian(l[8192..]), BinaryPrimitives.ReadUInt64LittleEndian(r[4096..]),
            BinaryPrimitives.ReadUInt64LittleEndian(l[8200..]), BinaryPrimitives.ReadUInt64LittleEndian(r[4104..])];
        Assert.That(atomics, Is.EqualTo(new ulong[] { 0x1111, 0x2222, 100, 105 }),
            "compare-and-swap's original, the swapped value, fetch-and-add's original, the sum");
        byte[] read = [.. l.Slice(20000, 128), .. l.Slice(24000, 72)];
        Patterns.AssertEqual(read, r.Slice(16384, 200), "READ scattered over 2 segments");
    }

    [Test]
    public void AUdBatchSendsToTwoAddressHandles()
    {
        using var device = Device.Open("rxelo");
        var pd = device.AllocateProtectionDomain();
        var cq = device.CreateCompletionQueue(64);
        var options = new QueuePairOptions
        {
            Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = cq, ReceiveCompletionQueue = cq,
            MaxSendScatterGather = 2, MaxReceiveScatterGather = 2,
        };
        var a = pd.CreateQueuePair(options);
        var b = pd.CreateQueuePair(options);
        var c = pd.CreateQueuePair(options);
        const uint Qkey = 0x22222222;
        foreach (var qp in new[] { a, b, c })
            qp.MoveToReadyToSend(Qkey);
        int gid = device.FindGidIndex(IPAddress.Loopback);
        var endB = b.LocalEndpoint(gid);
        var endC = c.LocalEndpoint(gid);
        var toB = pd.CreateAddressHandle(endB, gid);
        var toC = pd.CreateAddressHandle(endC, gid);
        var send = pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        var recv = pd.AllocateBuffer(8192, AccessFlags.LocalWrite);
        Patterns.Fill(send.Span, 5);
        recv.Span.Clear();

        b.PostReceive(11, recv.Slice(0, 40 + 300));                                  // GRH, then the payload
        c.PostReceive(12, [recv.Slice(4096, 40), recv.Slice(5000, 300)]);           // GRH in one segment, payload in the other
        var batch = a.StartPost();
        batch.SendTo(1, send.Slice(0, 300), toB, endB.QueuePairNumber, Qkey);
        batch.SendTo(2, [send.Slice(1000, 100), send.Slice(2000, 200)], toC, endC.QueuePairNumber, Qkey, immediate: 9);
        batch.Post();

        var completions = new List<WorkCompletion>();
        for (int i = 0; i < 4; i++)
            completions.Add(RcPair.WaitOne(cq));
        Assert.That(completions.All(w => w.IsSuccess), string.Join("; ", completions));
        var sends = completions.Where(w => w.Opcode == WorkCompletionOpcode.Send).Select(w => w.WorkRequestId).Order().ToArray();
        Assert.That(sends, Is.EqualTo(new ulong[] { 1, 2 }));
        var atB = completions.Single(w => w.WorkRequestId == 11 && w.Opcode == WorkCompletionOpcode.Receive);
        var atC = completions.Single(w => w.WorkRequestId == 12 && w.Opcode == WorkCompletionOpcode.Receive);
        var endA = a.LocalEndpoint(gid);
        Assert.Multiple(() =>
        {
            Assert.That(atB.ByteLength, Is.EqualTo(40u + 300));
            Assert.That(atC.ByteLength, Is.EqualTo(40u + 300));
            Assert.That(atB.SourceQueuePair, Is.EqualTo(endA.QueuePairNumber));
            Assert.That(atB.HasImmediate, Is.False);
            Assert.That(atC.HasImmediate && atC.Immediate == 9, atC.ToString());
        });
        Patterns.AssertEqual(recv.Span.Slice(40, 300), send.Span[..300], "UD SEND to B");
        byte[] sent = [.. send.Span.Slice(1000, 100), .. send.Span.Slice(2000, 200)];
        Patterns.AssertEqual(recv.Span.Slice(5000, 300), sent, "2-segment UD SEND to C, scattered");
        Assert.That(recv.Span[340] | recv.Span[5300], Is.Zero, "nothing past either payload");
    }

    [Test]
    public void RequestsTheQueuePairCannotTakeAreRefusedBeforeAnythingIsPosted()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var seg = rig.Local.Slice(0, 64);
        LocalSegment[] five = [seg, seg, seg, seg, seg];
        var batch = rig.A.StartPost();
        batch.Write(1, seg, remote);   // accepted: later refusals must not disturb it

        var e = Catch<ArgumentException>(rig.A, (ref SendBatch b) => b.Write(2, five, remote))!;
        Assert.That(e.Message, Does.Contain("5 scatter/gather entries").And.Contain("at most 4").And.Contain("MaxSendScatterGather"));
        Catch<ArgumentException>(rig.A, (ref SendBatch b) => b.Send(2, five));
        Catch<ArgumentException>(rig.A, (ref SendBatch b) => b.Read(2, five, remote));
        var inline = Catch<ArgumentException>(rig.A, (ref SendBatch b) => b.SendInline(2, new byte[BatchRig.MaxInline + 1]))!;
        Assert.That(inline.Message, Does.Contain($"{BatchRig.MaxInline + 1} bytes").And.Contain("MaxInlineData"));
        Assert.Throws<ArgumentException>(() => rig.A.PostSendInline(2, new byte[BatchRig.MaxInline + 1]));
        Catch<ArgumentException>(rig.A, (ref SendBatch b) => b.Send(2, rig.Local.Slice(0, BatchRig.MaxInline + 1), SendFlags.Inline));
        Catch<ArgumentException>(rig.A, (ref SendBatch b) => b.CompareSwap(2, rig.Local.Slice(0, 4), remote, 0, 1, 2));
        Catch<ArgumentException>(rig.A, (ref SendBatch b) => b.FetchAdd(2, rig.Local.Slice(0, 8), remote, 4, 1));
        Catch<ArgumentOutOfRangeException>(rig.A, (ref SendBatch b) => b.Write(2, [seg, seg], remote, remote.Length - 100));
        var ah = rig.Pd.CreateAddressHandle(rig.B.LocalEndpoint(rig.Device.FindGidIndex(IPAddress.Loopback)), rig.Device.FindGidIndex(IPAddress.Loopback));
        var ud = Catch<InvalidOperationException>(rig.A, (ref SendBatch b) => b.SendTo(2, seg, ah, 1, 1))!;
        Assert.That(ud.Message, Does.Contain("not UD"));
        Assert.Throws<ArgumentException>(() => rig.B.PostReceive(2, five), "a 5-segment receive on a QP made for 4");
        using var srq = rig.Pd.CreateSharedReceiveQueue(8, maxScatterGather: 2);
        var s = Assert.Throws<ArgumentException>(() => srq.PostReceive(2, [seg, seg, seg]))!;
        Assert.That(s.Message, Does.Contain("at most 2"));
        Assert.That(batch.Count, Is.EqualTo(1), "refused requests were not added");
        batch.Clear();
        var empty = Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Post())!;
        Assert.That(empty.Message, Does.Contain("empty"));
        var notStarted = default(SendBatch);
        Catch<InvalidOperationException>(ref notStarted, (ref SendBatch b) => b.Post());
        rig.AssertNothingPosted("after the refusals");
    }

    [Test]
    public void ABatchHoldsItsCapacityAndNoMore()
    {
        using var rig = new BatchRig(maxSendRequests: 8);
        var remote = rig.Remote.ToRemote();
        var seg = rig.Local.Slice(0, 8);
        var batch = rig.A.StartPost();
        for (int i = 0; i < SendBatch.MaxRequests; i++)
            batch.Write((ulong)i, seg, remote, (ulong)i * 8, SendFlags.None);
        var full = Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Write(99, seg, remote))!;
        Assert.That(full.Message, Does.Contain($"at most {SendBatch.MaxRequests} requests"));
        // 16 work requests on a send queue of 8: refused before posting, and the batch is emptied.
        var deep = Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Post())!;
        Assert.That(deep.Message, Does.Contain("send queue holds 8"));
        Assert.That(batch.Count, Is.Zero);
        rig.AssertNothingPosted("a batch deeper than the send queue");

        for (int i = 0; i < SendBatch.MaxSegments / BatchRig.MaxSegments; i++)
            batch.Write((ulong)i, [seg, seg, seg, seg], remote, 0, SendFlags.None);
        Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Write(99, seg, remote));
        batch.Clear();
        batch.SendInline(1, new byte[BatchRig.MaxInline], SendFlags.None);
        for (int used = BatchRig.MaxInline; used + BatchRig.MaxInline <= SendBatch.MaxInlineBytes; used += BatchRig.MaxInline)
            batch.SendInline(1, new byte[BatchRig.MaxInline], SendFlags.None);
        var inline = Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.SendInline(1, new byte[1]))!;
        Assert.That(inline.Message, Does.Contain($"{SendBatch.MaxInlineBytes} inline bytes"));
        batch.Clear();
        rig.AssertNothingPosted("capacity refusals");
    }

    [Test]
    public void ARevokedRegionInTheMiddleOfABatchRefusesItAndLeaksNoReference()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var doomed = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint doomedKey = doomed.RemoteKey;
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(doomedKey), "the kernel lists the region first");
        var batch = rig.A.StartPost();
        batch.Write(1, rig.Local.Slice(0, 64), remote);
        batch.Write(2, [rig.Local.Slice(64, 64), doomed.Slice(0, 64)], remote, 64);
        batch.Write(3, rig.Local.Slice(128, 64), remote, 128);
        var reason = new InvalidOperationException("revoked by the test");
        doomed.Revoke(reason);
        var thrown = Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Post());
        Assert.That(thrown, Is.SameAs(reason), "the revocation's own exception");
        rig.AssertNothingPosted("a batch naming a revoked region");

        doomed.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(doomed.DeregistrationState, Is.EqualTo(RdmaLease.Verbs.Internal.DestroyState.Destroyed),
                "every reference the refused post took was given back, so the region deregistered at once");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(doomedKey), "rdma resource show mr no longer lists it");
        });
        // The QP and the other region are unharmed: the same requests without the revoked region go through.
        Patterns.Fill(rig.Local.Span[..192], 9);
        batch.Write(1, rig.Local.Slice(0, 192), remote, 0, SendFlags.None);
        batch.Read(2, rig.Local.Slice(1024, 192), remote, 0);
        batch.Post();
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaRead, 2);
        Patterns.AssertEqual(rig.Local.Span.Slice(1024, 192), rig.Local.Span[..192], "write then read back");
    }

    [Test]
    public void OnAQuirkyDeviceAnOdpSegmentInAListIsCheckedLikeASendAndNotSplit()
    {
        using var rig = new BatchRig(Mtu.Mtu1024);
        Assume.That(rig.Device.OdpQuirk, Is.Not.Null, "rxe has the ODP quirk (Auto)");
        using var odp = rig.Pd.AllocateBuffer(16384, AccessFlags.LocalWrite | AccessFlags.OnDemand);
        var remote = rig.Remote.ToRemote();
        var batch = rig.A.StartPost();
        batch.Write(1, rig.Local.Slice(0, 64), remote);
        batch.Write(2, [odp.Slice(0, 2048), rig.Local.Slice(0, 64)], remote, 4096);   // 2 packets from ODP: no split of a list
        var e = Catch<NotSupportedException>(ref batch, (ref SendBatch b) => b.Post())!;
        Assert.That(e.Message, Does.Contain("On-Demand-Paging"));
        batch.Send(3, [rig.Local.Slice(0, 64), odp.Slice(100, 64)]);   // mid-page ODP address
        Catch<NotSupportedException>(ref batch, (ref SendBatch b) => b.Post());
        rig.AssertNothingPosted("refused ODP lists");
    }

    delegate void BatchAction(ref SendBatch batch);

    /// <summary>Runs <paramref name="act"/> on <paramref name="batch"/> and returns the <typeparamref name="T"/> it threw
    /// (Assert.Throws takes a lambda, which cannot capture a ref struct).</summary>
    static T Catch<T>(ref SendBatch batch, BatchAction act) where T : Exception
    {
        try
        {
            act(ref batch);
        }
        catch (T e) when (e.GetType() == typeof(T))
        {
            return e;
        }
        Assert.Fail($"{typeof(T).Name} expected, nothing thrown");
        return null!;
    }

    /// <summary>The same on a fresh batch of <paramref name="qp"/>.</summary>
    static T Catch<T>(QueuePair qp, BatchAction act) where T : Exception
    {
        var batch = qp.StartPost();
        return Catch<T>(ref batch, act);
    }
}
