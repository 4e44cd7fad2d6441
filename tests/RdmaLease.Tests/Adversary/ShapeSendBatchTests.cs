using System.Net;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Tests.Adversary;

/// <summary>
/// SendBatch attacked through the public API: every refusal must leave no post reference behind (the region named
/// deregisters at once, and `rdma resource show mr` stops listing it), and the capacity limits hold exactly.
/// </summary>
[Category("Guest")]
public class ShapeSendBatchTests
{
    [Test]
    public void EightInlineSendsFillingTheBatchsInlineBytesArePostedAndArriveIntact()
    {
        // Defect found: an inline send's FirstSegment indexes the inline bytes, but the post sliced the segment list
        // with it, so a second inline send in a batch (with fewer segments than the first's bytes) threw
        // ArgumentOutOfRangeException from Post.
        using var rig = new BatchRig();
        const int Each = BatchRig.MaxInline, Sends = SendBatch.MaxInlineBytes / Each;
        rig.Remote.Span.Clear();
        for (int i = 0; i < Sends; i++)
            rig.B.PostReceive((ulong)(100 + i), rig.Remote.Slice((ulong)i * 128, 128));
        var sent = new byte[Sends][];
        var batch = rig.A.StartPost();
        batch.Send(1, rig.Local.Slice(0, 0), SendFlags.None);   // one (empty) segment first: the inline offsets pass it
        rig.B.PostReceive(99, rig.Remote.Slice(8192, 128));
        for (int i = 0; i < Sends; i++)
        {
            sent[i] = new byte[Each];
            Patterns.Fill(sent[i], 10 + i);
            batch.SendInline((ulong)(10 + i), sent[i]);
        }
        Assert.That(batch.Count, Is.EqualTo(Sends + 1));
        batch.Post();

        RcPair.Expect(rig.CqB, WorkCompletionOpcode.Receive, 100);   // the empty SEND took the first receive
        for (int i = 0; i < Sends; i++)
            RcPair.Expect(rig.CqA, WorkCompletionOpcode.Send, (ulong)(10 + i));
        for (int i = 1; i < Sends; i++)
            Assert.That(RcPair.Expect(rig.CqB, WorkCompletionOpcode.Receive, (ulong)(100 + i)).ByteLength, Is.EqualTo((uint)Each));
        Assert.That(RcPair.Expect(rig.CqB, WorkCompletionOpcode.Receive, 99).ByteLength, Is.EqualTo((uint)Each), "the last inline SEND");
        for (int i = 0; i < Sends - 1; i++)
            Patterns.AssertEqual(rig.Remote.Span.Slice((i + 1) * 128, Each), sent[i], $"inline SEND {i}");
        Patterns.AssertEqual(rig.Remote.Span.Slice(8192, Each), sent[Sends - 1], "the last inline SEND");
    }

    [Test]
    public void ExactlyMaxRequestsAndMaxSegmentsArePostedAndOneMoreOfEitherIsRefused()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        Patterns.Fill(rig.Local.Span, 3);
        rig.Remote.Span.Clear();
        var batch = rig.A.StartPost();
        // 8 requests of 3 segments and 8 of 1: 16 requests, 32 segments.
        for (int i = 0; i < 8; i++)
        {
            ulong at = (ulong)i * 1024;
            batch.Write((ulong)i, [rig.Local.Slice(at, 100), rig.Local.Slice(at + 100, 100), rig.Local.Slice(at + 200, 56)], remote, at);
        }
        for (int i = 8; i < 16; i++)
            batch.Write((ulong)i, rig.Local.Slice((ulong)i * 1024, 256), remote, (ulong)i * 1024);
        Assert.That(batch.Count, Is.EqualTo(SendBatch.MaxRequests));
        Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Write(99, rig.Local.Slice(0, 1), remote));
        Assert.That(batch.Count, Is.EqualTo(SendBatch.MaxRequests), "the refused request was not added");
        batch.Post();
        for (int i = 0; i < 16; i++)
            RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, (ulong)i);
        for (int i = 0; i < 16; i++)
            Patterns.AssertEqual(rig.Remote.Span.Slice(i * 1024, 256), rig.Local.Span.Slice(i * 1024, 256), $"write {i}");
        Assert.That(rig.Remote.Span.Slice(256, 768).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing between the writes");

        for (int i = 0; i < SendBatch.MaxSegments / BatchRig.MaxSegments; i++)
            batch.Write((ulong)i, [rig.Local.Slice(0, 8), rig.Local.Slice(8, 8), rig.Local.Slice(16, 8), rig.Local.Slice(24, 8)], remote, 0, SendFlags.None);
        var e = Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Send(1, rig.Local.Slice(0, 0)));
        Assert.That(e.Message, Does.Contain($"{SendBatch.MaxSegments} entries (32 used)"));
        batch.Clear();
        rig.AssertNothingPosted("the full batch was cleared");
    }

    [Test]
    public void ZeroLengthSegmentsArePostedAndGiveTheirReferencesBack()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var region = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint key = region.RemoteKey;
        Patterns.Fill(region.Span, 4);
        rig.Remote.Span.Clear();
        rig.B.PostReceive(50, rig.Remote.Slice(30000, 64));
        var batch = rig.A.StartPost();
        batch.Write(1, [region.Slice(0, 0), region.Slice(0, 64), region.Slice(4096, 0)], remote, 0);
        batch.Write(2, region.Slice(100, 0), remote, remote.Length);   // empty, at the remote region's very end
        batch.Read(3, region.Slice(4096, 0), remote, 0);
        batch.Send(4, [region.Slice(0, 0), region.Slice(1, 0)]);
        batch.Post();
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 2);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaRead, 3);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.Send, 4);
        Assert.That(RcPair.Expect(rig.CqB, WorkCompletionOpcode.Receive, 50).ByteLength, Is.Zero);
        Patterns.AssertEqual(rig.Remote.Span[..64], region.Span[..64], "the one non-empty segment");
        Assert.That(rig.Remote.Span[64..].IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing else landed");
        AssertDeregistersAtOnce(region, key, "after a post of empty segments");
    }

    [Test]
    public void OneRegionInThirtyOneSegmentsThenARevokedOneRollsBackEveryReference()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var many = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        var revoked = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint manyKey = many.RemoteKey, revokedKey = revoked.RemoteKey;
        var batch = rig.A.StartPost();
        for (int i = 0; i < 7; i++)
            batch.Write((ulong)i, [many.Slice(0, 8), many.Slice(8, 8), many.Slice(16, 8), many.Slice(24, 8)], remote, 0);
        batch.Write(7, [many.Slice(0, 8), many.Slice(8, 8), many.Slice(16, 8), revoked.Slice(0, 8)], remote, 0);
        var reason = new TimeoutException("revoked by the adversary");
        revoked.Revoke(reason);
        Assert.That(Catch<TimeoutException>(ref batch, (ref SendBatch b) => b.Post()), Is.SameAs(reason));
        Assert.That(batch.Count, Is.Zero, "a refused batch is emptied");
        rig.AssertNothingPosted("a batch whose last segment is revoked");
        AssertDeregistersAtOnce(many, manyKey, "31 references to one region, rolled back");
        AssertDeregistersAtOnce(revoked, revokedKey, "the revoked region");
    }

    [Test]
    public void ARegionDisposedBetweenAddingAndPostRefusesTheBatchAndTheOthersStayFree()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var witness = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        var doomed = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint witnessKey = witness.RemoteKey, doomedKey = doomed.RemoteKey;
        var batch = rig.A.StartPost();
        batch.Write(1, witness.Slice(0, 64), remote);
        batch.Write(2, [witness.Slice(64, 64), doomed.Slice(0, 64)], remote, 64);
        AssertDeregistersAtOnce(doomed, doomedKey, "adding a request takes no reference");
        Catch<ObjectDisposedException>(ref batch, (ref SendBatch b) => b.Post());
        rig.AssertNothingPosted("a batch naming a disposed region");
        AssertDeregistersAtOnce(witness, witnessKey, "the witness's reference was rolled back");
    }

    [Test]
    public void ABatchCopiedByValueIsASecondBatchAndEachPostGivesItsReferencesBack()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var witness = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint witnessKey = witness.RemoteKey;
        Patterns.Fill(witness.Span, 6);
        var batch = rig.A.StartPost();
        batch.Write(1, witness.Slice(0, 128), remote, 0);
        var copy = batch;
        batch.Post();
        Assert.That((batch.Count, copy.Count), Is.EqualTo((0, 1)), "the copy keeps its own request");
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        rig.Remote.Span[..128].Clear();
        copy.Post();
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        Patterns.AssertEqual(rig.Remote.Span[..128], witness.Span[..128], "the copy's write");
        Catch<InvalidOperationException>(ref copy, (ref SendBatch b) => b.Post());   // posted: empty now
        AssertDeregistersAtOnce(witness, witnessKey, "two posts of one request");
    }

    [Test]
    public void PostAfterClearOrOnADisposedOrUnconnectedQueuePairLeaksNothing()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var witness = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint witnessKey = witness.RemoteKey;

        var batch = rig.A.StartPost();
        batch.Write(1, witness.Slice(0, 64), remote);
        batch.Clear();
        Assert.That(Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.Post()).Message, Does.Contain("empty"));

        // An RC QP never connected: the provider may refuse the post (EINVAL) after every reference was taken, or queue
        // it where nothing runs; either way the references are given back when the call returns.
        var idle = rig.Pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = rig.CqA, ReceiveCompletionQueue = rig.CqA });
        var refused = idle.StartPost();
        refused.Write(2, witness.Slice(0, 64), remote);
        refused.Send(3, witness.Slice(64, 64));
        try
        {
            refused.Post();
        }
        catch (VerbsException e)
        {
            Assert.That(e.Operation, Is.EqualTo("ibv_post_send"), e.Message);
        }
        Assert.That(refused.Count, Is.Zero);

        // The QP disposed between adding and Post.
        var orphan = rig.A.StartPost();
        orphan.Write(4, witness.Slice(0, 64), remote);
        rig.A.Dispose();
        Catch<ObjectDisposedException>(ref orphan, (ref SendBatch b) => b.Post());
        rig.AssertNothingPosted("posts refused");
        AssertDeregistersAtOnce(witness, witnessKey, "after Clear, an EINVAL post and a disposed QP");
    }

    [Test]
    public void EveryRefusedRequestLeavesTheBatchPostableAndTakesNoReference()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var witness = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint witnessKey = witness.RemoteKey;
        var ud = rig.Pd.CreateQueuePair(new QueuePairOptions
        {
            Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = rig.CqA, ReceiveCompletionQueue = rig.CqA,
        });
        var seg = witness.Slice(0, 64);
        var result = witness.Slice(128, 8);
        Patterns.Fill(witness.Span, 8);
        rig.Remote.Span.Clear();

        var batch = rig.A.StartPost();
        batch.Write(1, seg, remote, 0);
        // UD on RC, and RC operations on UD.
        using (var ah = rig.Pd.CreateAddressHandle(rig.B.LocalEndpoint(1), 1))
            Catch<InvalidOperationException>(ref batch, (ref SendBatch b) => b.SendTo(2, seg, ah, 1, 1));
        var onUd = ud.StartPost();
        Catch<InvalidOperationException>(ref onUd, (ref SendBatch b) => b.Send(2, seg));
        Catch<InvalidOperationException>(ref onUd, (ref SendBatch b) => b.SendInline(2, [1, 2, 3]));
        Catch<InvalidOperationException>(ref onUd, (ref SendBatch b) => b.Write(2, seg, remote));
        Catch<InvalidOperationException>(ref onUd, (ref SendBatch b) => b.Read(2, seg, remote));
        Catch<InvalidOperationException>(ref onUd, (ref SendBatch b) => b.CompareSwap(2, result, remote, 0, 0, 0));
        Catch<InvalidOperationException>(ref onUd, (ref SendBatch b) => b.SendWithInvalidate(2, [seg], 5));
        Assert.That(onUd.Count, Is.Zero);
        // Bad arguments, each refused when added.
        Catch<ArgumentNullException>(ref batch, (ref SendBatch b) => b.SendTo(2, seg, null!, 1, 1));
        Catch<ArgumentException>(ref batch, (ref SendBatch b) => b.Read(2, seg, remote, 0, SendFlags.Inline));
        Catch<ArgumentException>(ref batch, (ref SendBatch b) => b.CompareSwap(2, witness.Slice(128, 4), remote, 0, 0, 0));
        Catch<ArgumentException>(ref batch, (ref SendBatch b) => b.FetchAdd(2, result, remote, 4, 1));              // misaligned
        Catch<ArgumentException>(ref batch, (ref SendBatch b) => b.FetchAdd(2, result, remote, 0, 1, SendFlags.Inline));
        Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.FetchAdd(2, result, remote, remote.Length - 4, 1));
        Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Write(2, seg, remote, remote.Length - 63));
        Catch<ArgumentException>(ref batch, (ref SendBatch b) => b.Send(2, [seg, seg, seg, seg, seg]));              // 5 > 4 SGEs
        Catch<ArgumentException>(ref batch, (ref SendBatch b) => b.Send(2, witness.Slice(0, BatchRig.MaxInline + 1), SendFlags.Inline));
        Catch<ArgumentException>(ref batch, (ref SendBatch b) => b.SendInline(2, new byte[BatchRig.MaxInline + 1]));
        Catch<ArgumentNullException>(ref batch, (ref SendBatch b) => b.Send(2, default(LocalSegment)));
        Assert.That(batch.Count, Is.EqualTo(1), "only the first request was added");
        batch.Post();
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        Patterns.AssertEqual(rig.Remote.Span[..64], witness.Span[..64], "the one request added");
        AssertDeregistersAtOnce(witness, witnessKey, "after 17 refusals and one post");
    }

    [Test]
    public void SegmentsMadeWithoutSliceAreCheckedAgainstTheirRegion()
    {
        // Defect found: LocalSegment is a public record struct, so `with` or its constructor skip Slice's range check,
        // and a segment past its region was posted (the device then fails it and the RC QP goes to the error state).
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var seg = rig.Local.Slice(0, 64);
        LocalSegment[] hostile =
        [
            seg with { Offset = rig.Local.Length },                 // starts at the end, 64 bytes past it
            seg with { Offset = rig.Local.Length - 63 },            // one byte past the end
            seg with { Length = (uint)rig.Local.Length + 1 },
            seg with { Offset = ulong.MaxValue },                   // Address wraps
            seg with { Offset = ulong.MaxValue - 62 },              // Offset + Length wraps to 1
            new LocalSegment(rig.Local, 1, uint.MaxValue),
        ];
        foreach (var bad in hostile)
        {
            var batch = rig.A.StartPost();
            Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Write(1, bad, remote));
            Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Send(1, [seg, bad]));
            Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Read(1, [bad], remote));
            Assert.Throws<ArgumentOutOfRangeException>(() => rig.A.PostWrite(1, bad, remote), bad.ToString());
            Assert.Throws<ArgumentOutOfRangeException>(() => rig.A.PostReceive(1, bad), bad.ToString());
        }
        var atomic = rig.Local.Slice(0, 8);
        var batch2 = rig.A.StartPost();
        Catch<ArgumentOutOfRangeException>(ref batch2, (ref SendBatch b) => b.FetchAdd(1, atomic with { Offset = rig.Local.Length - 4 }, remote, 0, 1));
        Catch<ArgumentNullException>(ref batch2, (ref SendBatch b) => b.CompareSwap(1, new LocalSegment(null!, 0, 8), remote, 0, 0, 0));
        Assert.Throws<ArgumentNullException>(() => rig.A.PostFetchAdd(1, new LocalSegment(null!, 0, 8), remote, 0, 1));
        // The last byte and an empty segment at the very end are inside.
        rig.Remote.Span.Clear();
        rig.Local.Span[^1] = 0x5a;
        batch2.Write(2, [seg with { Offset = rig.Local.Length - 1, Length = 1 }, seg with { Offset = rig.Local.Length, Length = 0 }], remote, 7);
        batch2.Post();
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 2);
        Assert.That(rig.Remote.Span[7], Is.EqualTo((byte)0x5a));
        Assert.That(rig.A.QueryState(), Is.EqualTo(QueuePairState.ReadyToSend), "no refused segment reached the device");
    }

    [Test]
    public void AnAddressHandleDisposedBeforePostRefusesTheBatchAndLeaksNoRegionReference()
    {
        using var rig = new BatchRig();
        var ud = rig.Pd.CreateQueuePair(new QueuePairOptions
        {
            Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = rig.CqA, ReceiveCompletionQueue = rig.CqA,
        });
        const uint Qkey = 0x1234;
        ud.MoveToReadyToSend(Qkey);
        int gid = rig.Device.FindGidIndex(IPAddress.Loopback);
        var self = ud.LocalEndpoint(gid);
        var witness = rig.Pd.AllocateBuffer(4096, BatchRig.All);
        uint witnessKey = witness.RemoteKey;
        var ah = rig.Pd.CreateAddressHandle(self, gid);
        var keep = rig.Pd.CreateAddressHandle(self, gid);
        var batch = ud.StartPost();
        batch.SendTo(1, witness.Slice(0, 64), keep, self.QueuePairNumber, Qkey);
        batch.SendTo(2, witness.Slice(64, 64), ah, self.QueuePairNumber, Qkey);
        ah.Dispose();
        Catch<ObjectDisposedException>(ref batch, (ref SendBatch b) => b.Post());
        rig.AssertNothingPosted("a UD batch naming a disposed address handle");
        AssertDeregistersAtOnce(witness, witnessKey, "the regions' references were rolled back with the handles'");
        keep.Dispose();
        Assert.That(keep.IsDisposed, Is.True);
    }

    static void AssertDeregistersAtOnce(MemoryRegion region, uint rkey, string what)
    {
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(rkey), what + ": the kernel lists the region before");
        region.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(region.DeregistrationState, Is.EqualTo(DestroyState.Destroyed), what + ": no post reference was left, so it deregistered at once");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(rkey), what + ": rdma resource show mr no longer lists it");
        });
    }

    internal delegate void BatchAction(ref SendBatch batch);

    /// <summary>Runs <paramref name="act"/> and returns the exception of exactly type <typeparamref name="T"/> it threw.</summary>
    internal static T Catch<T>(ref SendBatch batch, BatchAction act) where T : Exception
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
}
