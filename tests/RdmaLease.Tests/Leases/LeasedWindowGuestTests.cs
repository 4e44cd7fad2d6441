using System.Globalization;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// Memory windows over a region of a leased FS-DAX file: a lease break must still end with the region deregistered
/// (the kernel refuses ibv_dereg_mr while a window is bound), so the region's teardown deallocates its windows first,
/// and the peer's window key is dead when the truncate goes on.
/// </summary>
[Category("Guest")]
public class LeasedWindowGuestTests
{
    [Test]
    public void ALeaseBreakDeallocatesTheWindowsOverTheRegionAndDeregistersIt()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        const int Size = 64 * 1024;
        using var pair = Pair();
        using var file = OpenFile(path, "/mnt/xfs", Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        using var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        using var mr = pair.PdB.Register(lease, AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind);
        var window = pair.PdB.AllocateMemoryWindow();
        var remote = pair.B.PostBindMemoryWindow(1, window, mr.Region, 0, mr.Length, AccessFlags.RemoteWrite);
        RcPair.Expect(pair.CqB, WorkCompletionOpcode.BindMemoryWindow, 1);

        using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        BlockPattern(PeerSeed).CopyTo(source.Span);
        pair.A.PostWrite(2, source.Slice(0, Block), remote, 2 * Block);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, 2);
        Assert.That(ClassifyAll(ReadByDescriptor(file))[..4], Is.EqualTo(new[] { "initial", "initial", "peer", "initial" }), "the write through the window landed in the file");

        var p = RunProbe(TimeSpan.FromSeconds(60), "truncate", path, "16384");
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(broke.Task.Wait(TimeSpan.FromSeconds(60)), Is.True, "no BreakRequested");
        var e = broke.Task.Result;
        Assert.Multiple(() =>
        {
            Assert.That(window.IsDisposed, "the window over the region was deallocated by its teardown");
            Assert.That(mr.IsDeregistered, Is.True, $"ibv_dereg_mr confirmed (errno {mr.DeregistrationErrno})");
            Assert.That(mr.DeregistrationErrno, Is.Zero);
            Assert.That(e.TeardownErrors, Is.Empty);
            Assert.That(pair.PdB.QuarantineReason, Is.Null, "no quarantine: nothing failed");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey), "rdma resource show mr");
        });
        BlockPattern(LateSeed).CopyTo(source.Span);
        pair.A.PostWrite(3, source.Slice(0, Block), remote, 0);
        var late = RcPair.WaitOne(pair.CqA);
        Assert.That(late.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the window's key after the break, on the QP it worked through: " + late);
        Assert.That(ClassifyAll(ReadByDescriptor(file)), Is.EqualTo(new[] { "initial", "initial", "peer", "initial" }), "nothing late landed");
        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"signal->release with a bound window: {e.BreakToRelease.TotalMilliseconds:F1} ms"));
    }
}
