using System.Diagnostics;
using System.Globalization;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Integrity;

/// <summary>
/// What splitting costs: 64 KiB RDMA WRITEs on rxelo at path MTU 1024, posted whole and split into 64 work requests
/// of 1 KiB or 16 of 4 KiB, pinned to pinned (the mechanism's cost alone). Prints the
/// time per write; docs/known-defects.md quotes the numbers (TCG: only the ratios mean anything).
/// </summary>
[Category("Guest")]
public class SplitCostGuestTests
{
    const int Length = 64 * 1024, Iterations = 200, Warmup = 10;

    [Test]
    public void SplitCost64KiBWrites()
    {
        using var rig = new OdpRig("/mnt/xfs", Mtu.Mtu1024);
        var a = rig.Pair.A;
        Patterns.Fill(rig.PinA.Span[..Length], 3);
        var pinnedRemote = rig.PinB.ToRemote();

        double whole = Measure(a, rig, pinnedRemote);
        double split4k = Measure(a, rig, pinnedRemote with { MaxTransferPerRequest = 4096 });
        double split1k = Measure(a, rig, pinnedRemote with { MaxTransferPerRequest = 1024 });
        Patterns.AssertEqual(rig.PinB.Span[..Length], rig.PinA.Span[..Length], "pinned target after the split writes");

        TestContext.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"64 KiB RDMA WRITE on rxelo, path MTU 1024, pinned to pinned, {Iterations} iterations (TCG): whole {whole:F0} us, " +
            $"split into 16 x 4 KiB {split4k:F0} us ({split4k / whole:F2}x), split into 64 x 1 KiB {split1k:F0} us ({split1k / whole:F2}x)"));
        Assert.That(whole, Is.Positive);
    }

    /// <summary>Microseconds per signaled write, posted and waited for one at a time (split at the target's MaxTransferPerRequest).</summary>
    static double Measure(QueuePair a, OdpRig rig, RemoteRegion target)
    {
        for (int i = 0; i < Warmup; i++)
        {
            a.PostWrite((ulong)i, rig.PinA.Slice(0, Length), target);
            RcPair.Expect(rig.Pair.CqA, WorkCompletionOpcode.RdmaWrite, (ulong)i);
        }
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < Iterations; i++)
        {
            a.PostWrite((ulong)i, rig.PinA.Slice(0, Length), target);
            RcPair.Expect(rig.Pair.CqA, WorkCompletionOpcode.RdmaWrite, (ulong)i);
        }
        return watch.Elapsed.TotalMicroseconds / Iterations;
    }
}
