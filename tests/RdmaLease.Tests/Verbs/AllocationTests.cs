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

    static void AssertPostAndPollAllocateNothing(QueuePair qp, CompletionQueue cq, LocalSegment source, RemoteRegion target, string what)
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[8];

        void Cycle(ulong id, Span<WorkCompletion> completions)
        {
            qp.PostWrite(id, source, target, id % 64 * 8);
            while (cq.Poll(completions) == 0) { }
            if (!completions[0].IsSuccess)
                completions[0].ThrowIfFailed();
        }

        for (ulong i = 0; i < 2_000; i++)   // warm up: JIT tiers, first-touch paths
            Cycle(i, wc);
        long before = GC.GetAllocatedBytesForCurrentThread();
        const int Cycles = 100_000;
        for (ulong i = 0; i < Cycles; i++)
            Cycle(i, wc);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(allocated, Is.Zero, $"{allocated} bytes allocated over {Cycles} post+poll cycles{what}");
    }
}
