using RdmaLease.Leases;
using RdmaLease.PmemStore;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Samples;

/// <summary>
/// The PmemStore server's end of a generation when an area's deregistration fails at a break (seen once across two
/// nodes, docs/known-defects.md): <see cref="Generation.DisposeAreas"/> reports the area instead of throwing; the area
/// keeps the old descriptor open, so the file cannot be leased again until <see cref="LeasedMemoryRegion.RetryDeregistration"/>
/// succeeds (the server retries it before each lease attempt); then the next generation registers it again and serves it. The failure is injected into the real region's ibv_dereg_mr
/// (every call, retries included), on rxe in the guest.
/// </summary>
[Category("Guest")]
[NonParallelizable]
public class PmemStoreBreakGuestTests
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);
    const int Area = 4 * Block;
    const AccessFlags RegionAccess = AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind;

    [Test]
    public async Task AnAreaNotConfirmedDeregisteredAtABreakDoesNotEndTheServerAndIsServedAgain()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("store");
        using var pair = Pair();
        var file = OpenFile(path, "/mnt/xfs", 2 * Area);
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var areas = new LeasedMemoryRegion?[2];
        for (int c = 0; c < 2; c++)
            areas[c] = pair.PdB.Register(new LeasedFileRange(lease, (ulong)(c * Area), Area), RegionAccess);
        var gen = new Generation(1, file, lease, areas);
        var grant = await pair.B.GrantAsync(areas[0]!.Region, AccessFlags.RemoteWrite);
        Assert.That(PeerWrite(pair, grant.Remote, 0, PeerSeed), Is.EqualTo(WorkCompletionStatus.Success), "client 0's write before the break");

        NativeHandle stuck = areas[0]!.Region.HandleForChildren;
        stuck.InjectDestroyFailures = 1000;
        nint stuckAddress = (nint)areas[0]!.Region.Address;
        try
        {
            var p = RunProbe(Generous, "open-rdonly", path);
            Assert.That(p.Ok, Is.True, p.Output);
            Assert.That(broke.Task.Wait(Generous), Is.True, "the lease broke");

            // What StoreService does at a break.
            Assert.That(gen.EndConnections(), Is.Zero);
            var failed = gen.DisposeAreas();
            Assert.Multiple(() =>
            {
                Assert.That(failed.Select(f => f.Client), Is.EqualTo(new uint[] { 0 }), "client 0's area is reported, not thrown");
                Assert.That(failed[0].Error.Errno, Is.EqualTo(Errno.EBUSY), "the injected errno");
                Assert.That(failed[0].Error.Message, Does.Contain("placeholder"));
                Assert.That(areas[1]!.IsDeregistered, Is.True, "the other area is deregistered");
                Assert.That(KernelView.PermissionsAt(stuckAddress), Is.EqualTo("---p"), "the stuck area's range is cut off");
                Assert.That(grant.IsRevoked, Is.True);
            });
            gen.Lease.Dispose();
            gen.File.Dispose();

            // The stuck area keeps the old descriptor open, so no write lease can be had until it is deregistered
            // (what the server retries before each lease attempt).
            Assert.That(KernelView.DescriptorsOf(path), Has.Count.EqualTo(1), "the stuck area keeps the descriptor open");
            using (var early = DaxFile.Open(path))
                Assert.That(() => early.AcquireLease(), Throws.TypeOf<LeaseUnavailableException>().With.Message.Contains("conflicting"));
            Assert.That(areas[0]!.RetryDeregistration(), Is.False, "still refused");
            stuck.InjectDestroyFailures = 0;   // the condition passes (on rxe: the window is deallocated at last)
            long retriedBefore = LeaseDiagnostics.RetriedDeregistrations;
            Assert.That(areas[0]!.RetryDeregistration(), Is.True, "the retry deregisters it");
            Assert.Multiple(() =>
            {
                Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(areas[0]!.RemoteKey), "the kernel's view: the area's region is gone");
                Assert.That(KernelView.DescriptorsOf(path), Is.Empty, "and the old descriptor closed");
                Assert.That(LeaseDiagnostics.RetriedDeregistrations, Is.GreaterThan(retriedBefore));
            });

            // The next generation: the file again, a new lease, the area registered anew and granted to a client.
            using var file2 = DaxFile.Open(path);
            using var lease2 = file2.AcquireLease();
            using var again = pair.PdB.Register(new LeasedFileRange(lease2, 0, Area), RegionAccess);
            Assert.That(again.RemoteKey, Is.Not.EqualTo(areas[0]!.RemoteKey));
            var (peer, target, peerCq) = ExtraQueuePairs(pair);   // the reconnected client's QPs (disposed with the pair's domains)
            using var grant2 = await target.GrantAsync(again.Region, AccessFlags.RemoteWrite);
            Assert.That(PeerWriteOn(pair, peer, peerCq, grant2.Remote, Block, NewFileSeed), Is.EqualTo(WorkCompletionStatus.Success), "client 0 served again");
            Assert.That(PeerWriteOn(pair, peer, peerCq, grant.Remote, 2 * Block, LateSeed), Is.Not.EqualTo(WorkCompletionStatus.Success), "the old grant reaches nothing");
            string[] blocks = ClassifyAll(ReadByDescriptor(file2));
            Assert.That(blocks, Is.EqualTo(new[] { "peer", "new", "zero", "zero", "zero", "zero", "zero", "zero" }), "every byte written before and after the break, nothing else");
        }
        finally
        {
            stuck.InjectDestroyFailures = 0;
            Assert.That(stuck.RetryFailedDestroy(), Is.True, "the real deregistration");   // cleanup if an assert failed first
        }
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(areas[0]!.RemoteKey));
    }

    static WorkCompletionStatus PeerWrite(RcPair pair, RemoteRegion target, ulong offset, int seed) =>
        PeerWriteOn(pair, pair.A, pair.CqA, target, offset, seed);

    static WorkCompletionStatus PeerWriteOn(RcPair pair, QueuePair qp, CompletionQueue cq, RemoteRegion target, ulong offset, int seed)
    {
        using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        BlockPattern(seed).CopyTo(source.Span);
        qp.PostWrite(1, source.Slice(0, Block), target, offset);
        return RcPair.WaitOne(cq).Status;
    }
}
