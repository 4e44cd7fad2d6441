using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// rxe refuses ibv_dereg_mr (EINVAL) while it still counts a memory window bound to the region
/// (docs/known-defects.md). A break retries the deregistration once the windows that were over the region are
/// deallocated, within a short bound, instead of giving up after three calls a millisecond apart.
/// </summary>
[Category("Guest")]
[NonParallelizable]
public class DeregistrationRetryGuestTests
{
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);
    const int Size = 16 * Block;
    const AccessFlags GrantedRegion = AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind;

    /// <summary>
    /// A grant's window is still held (its handle referenced, as by a post in flight) when the break deallocates it, so
    /// its ibv_dealloc_mw waits for the holder: the region's first ibv_dereg_mr calls fail with EINVAL (the kernel still
    /// counts the window). Once the holder lets go the window is deallocated and the retry deregisters the region: the
    /// break reports no error and the region is gone from `rdma resource show mr`.
    /// </summary>
    [Test]
    public async Task ADeregistrationRefusedForAWindowStillHeldSucceedsOnceTheWindowIsGone()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        using var pair = Pair();
        using var file = OpenFile(path, "/mnt/xfs", Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, GrantedRegion);
        var grant = await pair.B.GrantAsync(mr.Region, AccessFlags.RemoteWrite);
        Assert.That(PeerWrite(pair, grant.Remote, 0, PeerSeed), Is.EqualTo(WorkCompletionStatus.Success), "the peer's write through its grant");

        var window = mr.Region.ChildrenOf<MemoryWindow>().Single();
        NativeHandle windowHandle = window.HandleForChildren;
        bool held = false;
        windowHandle.DangerousAddRef(ref held);
        Assert.That(held, Is.True);
        long retriedBefore = LeaseDiagnostics.RetriedDeregistrations;
        // Let go of the window once the region's first deregistration has failed (or after 30 s, so nothing hangs).
        var sawFailure = Task.Run(() =>
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            bool failed = false;
            while (!failed && DateTime.UtcNow < deadline && mr.Region.DeregistrationState != DestroyState.Destroyed)
            {
                failed = mr.Region.DeregistrationState == DestroyState.Failed;
                Thread.Sleep(failed ? 0 : 1);
            }
            windowHandle.DangerousRelease();
            return failed;
        });

        var p = RunProbe(Generous, "open-rdonly", path);
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(broke.Task.Wait(Generous), Is.True, "the lease broke");
        Assert.That(await sawFailure, Is.True, "the first ibv_dereg_mr calls failed while the window was held");
        Assert.Multiple(() =>
        {
            Assert.That(mr.DeregistrationErrno, Is.EqualTo(Errno.EINVAL), "rxe refused: it still counted the window");
            Assert.That(mr.Region.HandleForChildren.DestroyCalls, Is.GreaterThan(NativeHandle.DestroyAttempts), "tried again after the window was gone");
            Assert.That(mr.IsDeregistered, Is.True, "the retry deregistered the region");
            Assert.That(lease.TeardownErrors, Is.Empty, "the break reports no error");
            Assert.That(LeaseDiagnostics.RetriedDeregistrations, Is.GreaterThan(retriedBefore));
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey), "the kernel's view: the region is gone");
            Assert.That(windowHandle.DestroyState, Is.EqualTo(DestroyState.Destroyed), "the window was deallocated when its holder let go");
            Assert.That(grant.IsRevoked, Is.True);
        });
        Assert.That(PeerWrite(pair, grant.Remote, Block, LateSeed), Is.Not.EqualTo(WorkCompletionStatus.Success), "the grant's key after the break");
        string[] blocks = ClassifyAll(ReadByDescriptor(file));
        Assert.That(blocks[0], Is.EqualTo("peer"), "the peer's write through the grant");
        Assert.That(blocks.Skip(1), Is.All.EqualTo("initial"), "nothing else reached the file");
    }

    /// <summary>A WRITE of a block of <paramref name="seed"/> from pair.A (the QP the grant was made for).</summary>
    static WorkCompletionStatus PeerWrite(RcPair pair, RemoteRegion target, ulong offset, int seed)
    {
        using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        BlockPattern(seed).CopyTo(source.Span);
        pair.A.PostWrite(1, source.Slice(0, Block), target, offset);
        return RcPair.WaitOne(pair.CqA).Status;
    }
}
