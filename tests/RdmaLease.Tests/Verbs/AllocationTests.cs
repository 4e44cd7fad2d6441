using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>The data path allocates nothing in steady state.</summary>
[Category("Guest")]
public class AllocationTests
{
    [Test]
    public void PostAndPollAllocateNothing()
    {
        using var pair = RcPair.Loopback();
        const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite;
        using var local = pair.PdA.AllocateBuffer(4096, Rw);
        using var remote = pair.PdB.AllocateBuffer(4096, Rw);
        AssertPostAndPollAllocateNothing(pair.A, pair.CqA, local.Slice(0, 64), remote.ToRemote(), "");
    }

    [Test]
    public void PostAndPollThroughAnExtendedQueueAllocateNothing()
    {
        using var rig = new CqRig(new CompletionQueueOptions { Entries = 64, Extended = true });
        AssertPostAndPollAllocateNothing(rig.A, rig.Cq, rig.Local.Slice(0, 64), rig.Remote.ToRemote(), " through ibv_cq_ex");
    }

    [Test]
    public void PostersAndPollersAllocateNothing()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        rig.Local.Span[..64].Fill(0xc3);
        var wc = new WorkCompletion[8];

        // Opening the scopes is part of the cycle: their tickets are reused, so even a scope per operation allocates nothing.
        void Cycle(ulong id)
        {
            Span<WorkCompletion> completions = wc;
            using var poster = rig.A.OpenPoster();
            using var poller = rig.CqA.OpenPoller();
            poster.PostWrite(id, rig.Local.Slice(id % 8 * 8, 8), remote, id % 64 * 8);
            var batch = rig.A.StartPost();
            batch.Write(id, rig.Local.Slice(64, 8), remote, 1024, SendFlags.None);
            poster.Post(ref batch);
            while (poller.Poll(completions) == 0) { }
            if (!completions[0].IsSuccess)
                completions[0].ThrowIfFailed();
        }

        AssertCyclesAllocateNothing(Cycle, 2_000, 50_000, "cycles of a poster's write and batch and a poller's poll");
        Assert.That(rig.Remote.Span[..512].ToArray(), Is.EqualTo(Enumerable.Repeat((byte)0xc3, 512).ToArray()), "every write landed");
    }

    [Test]
    public void MixedBatchesAndScatterReceivesAllocateNothing()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        byte[] note = "batched inline note"u8.ToArray();
        var wc = new WorkCompletion[8];

        void Cycle(ulong id)
        {
            Span<WorkCompletion> completions = wc;
            rig.B.PostReceive(2 * id, rig.Remote.Slice(30000, 8));                                          // taken by the WRITE's immediate
            rig.B.PostReceive(2 * id + 1, [rig.Remote.Slice(30100, 8), rig.Remote.Slice(30200, 32)]);       // the inline SEND, scattered
            var batch = rig.A.StartPost();
            batch.Write(id, [rig.Local.Slice(0, 64), rig.Local.Slice(128, 64)], remote, 0, SendFlags.None, immediate: (uint)id);
            batch.SendInline(id, note, SendFlags.None);
            batch.FetchAdd(id, rig.Local.Slice(8192, 8), remote, 4096, 1, SendFlags.None);
            batch.Read(id, [rig.Local.Slice(1024, 32), rig.Local.Slice(2048, 32)], remote, 512);
            batch.Post();
            Drain(rig.CqA, 1, completions);   // the READ's (the others are unsignaled)
            Drain(rig.CqB, 2, completions);   // both receives
        }

        static void Drain(CompletionQueue cq, int count, Span<WorkCompletion> completions)
        {
            for (int got = 0; got < count;)
            {
                int n = cq.Poll(completions[..(count - got)]);
                for (int i = 0; i < n; i++)
                {
                    if (!completions[i].IsSuccess)
                        completions[i].ThrowIfFailed();
                }
                got += n;
            }
        }

        AssertCyclesAllocateNothing(Cycle, 500, 5_000, "cycles of a 4-request batch and 2 receives");
    }

    static void AssertPostAndPollAllocateNothing(QueuePair qp, CompletionQueue cq, LocalSegment source, RemoteRegion target, string what)
    {
        var wc = new WorkCompletion[8];

        void Cycle(ulong id)
        {
            Span<WorkCompletion> completions = wc;
            qp.PostWrite(id, source, target, id % 64 * 8);
            while (cq.Poll(completions) == 0) { }
            if (!completions[0].IsSuccess)
                completions[0].ThrowIfFailed();
        }

        AssertCyclesAllocateNothing(Cycle, 2_000, 100_000, "post+poll cycles" + what);
    }

    /// <summary>Runs <paramref name="cycle"/> <paramref name="warmUp"/> times (JIT tiers, first-touch paths), then asserts
    /// <paramref name="cycles"/> more allocate nothing on this thread.</summary>
    static void AssertCyclesAllocateNothing(Action<ulong> cycle, int warmUp, int cycles, string what)
    {
        for (ulong i = 0; i < (ulong)warmUp; i++)
            cycle(i);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (ulong i = 0; i < (ulong)cycles; i++)
            cycle(i);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(allocated, Is.Zero, $"{allocated} bytes allocated over {cycles} {what}");
    }
}
