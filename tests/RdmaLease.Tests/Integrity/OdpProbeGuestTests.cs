using System.Diagnostics;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Integrity;

/// <summary>The ODP integrity probe on the guest's devices (against the quirk table's rxe entry), and the C reproducer.</summary>
[Category("Guest")]
public class OdpProbeGuestTests
{
    [TestCase("rxelo", 1024, 1024u)]
    [TestCase("rxelo", 4096, OdpIntegrityResult.Unlimited)]
    [TestCase("rxe0", 1024, 1024u)]
    [TestCase("rxe1", 1024, 1024u)]
    public void ProbeFindsTheDefect(string deviceName, int mtuBytes, uint maxSafe)
    {
        using var device = Device.Open(deviceName);
        var started = Stopwatch.StartNew();
        var result = device.CheckOdpIntegrity(MtuExtensions.FromBytes(mtuBytes));
        TestContext.Out.WriteLine($"{result.Verdict} (probe took {started.ElapsedMilliseconds} ms, kernel {result.KernelRelease})");
        foreach (var check in result.Checks)
            TestContext.Out.WriteLine("  " + check);

        Assert.That(result.MaxSafeTransfer, Is.EqualTo(maxSafe), result.Verdict);
        // On this kernel rxe drops the in-page offset of ODP addresses: only transfers from a page boundary are right.
        Assert.That(result.RequiredAlignment, Is.EqualTo((uint)Environment.SystemPageSize), result.Verdict);
        Assert.That(result.IsSound, Is.False);
        Assert.That(result.DeviceName, Is.EqualTo(deviceName));
        Assert.That(result.KernelRelease, Is.EqualTo(File.ReadAllText("/proc/sys/kernel/osrelease").Trim()));
        var multi = result.Checks.Where(c => c.WorkRequests == 1 && c.Length == 4 * mtuBytes).ToList();
        Assert.That(multi, Has.Count.EqualTo(12), "six operations at two offsets, four packets in one work request each");
        Assert.That(multi.Where(c => c.Offset != 0), Has.None.Matches<OdpIntegrityCheck>(c => c.Passed), "mid-page: corrupt at every MTU");
        if (maxSafe == OdpIntegrityResult.Unlimited)
        {
            Assert.That(multi.Where(c => c.Offset == 0), Has.All.Matches<OdpIntegrityCheck>(c => c.Passed), "from a page boundary: intact");
        }
        else
        {
            Assert.That(multi.Where(c => c.Offset == 0), Has.None.Matches<OdpIntegrityCheck>(c => c.Passed), "the probe saw the corruption (it cannot pass vacuously)");
            var split = result.Checks.Where(c => c.WorkRequests > 1).ToList();
            Assert.That(split, Has.Count.EqualTo(12));
            Assert.That(split.Where(c => !c.Passed), Is.Not.Empty, "split at the MTU, pieces start inside pages: still corrupt");
            var single = result.Checks.Where(c => c.Length == mtuBytes).ToList();
            Assert.That(single, Has.Count.EqualTo(6));
            Assert.That(single, Has.All.Matches<OdpIntegrityCheck>(c => c.Passed && c.Offset == Environment.SystemPageSize), "one packet from a page boundary: intact");
        }
        // The quirk table's rxe entry, in force without probing, is what the probe measures on this kernel.
        Assert.That(device.OdpQuirk, Is.Not.Null);
        var rule = device.OdpQuirk!.RuleAt(MtuExtensions.FromBytes(mtuBytes))!;
        Assert.That((rule.MaxTransfer, rule.Alignment), Is.EqualTo((result.MaxSafeTransfer, result.RequiredAlignment)), rule.ToString());
    }

    [Test]
    public void UnalignedOdpAddressesLandAtThePageStart()
    {
        // Beyond the multi-packet symptom: one small write to a mid-page ODP address lands at the page's start.
        using var rig = new OdpRig("/mnt/tmpfs", Mtu.Mtu4096);
        rig.Unprotected = true;
        var raw = new RemoteRegion(rig.OdpB.Iova, rig.OdpB.Length, rig.OdpB.RemoteKey);
        foreach (int offset in new[] { 8, 1024, 8192 + 3000 })
        {
            rig.FileSpan.Clear();
            rig.PinA.Span[..64].Fill(0xEE);
            rig.Pair.A.PostWrite((ulong)offset, rig.PinA.Slice(0, 64), raw, (ulong)offset);
            RcPair.Expect(rig.Pair.CqA, WorkCompletionOpcode.RdmaWrite, (ulong)offset);
            int landed = rig.FileSpan.IndexOf((byte)0xEE);
            TestContext.Out.WriteLine($"64 bytes written to ODP offset {offset} landed at {landed}");
            Assert.That(landed, Is.EqualTo(offset / 4096 * 4096), $"64 bytes written at {offset}");
        }
    }

    [Test]
    public void AnMtuAboveThePortsActiveMtuIsRefused()
    {
        using var device = Device.Open("rxe0");
        Assert.That(device.QueryPort().ActiveMtu, Is.EqualTo(Mtu.Mtu1024));
        int runs = OdpIntegrityProbe.Runs;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => device.CheckOdpIntegrity(Mtu.Mtu4096))!;
        Assert.That(OdpIntegrityProbe.Runs, Is.EqualTo(runs), "refused before probing");
        Assert.That(e.Message, Does.Contain("active MTU 1024"));
    }

    [Test]
    public void PeersAreRefusedAnOdpRegionNoSplitCanReachCorrectly()
    {
        // rxe1's active MTU is 1024: one packet is right only from a page boundary, so no split of a larger
        // transfer is, and ToRemote refuses to hand the region to a peer.
        using var pair = RcPair.Veth();
        using var tmp = new TempDir("/mnt/tmpfs");
        string path = Path.Combine(tmp.Path, "f");
        File.WriteAllBytes(path, new byte[65536]);
        using var raw = new Leases.RawFileMapping(path, 65536);
        MemoryRegion odp;
        unsafe
        {
            odp = pair.PdB.Register(raw.Address, 65536, OdpTransfers.All | AccessFlags.OnDemand);
        }
        var e = Assert.Throws<NotSupportedException>(() => odp.ToRemote())!;
        Assert.That(e.Message, Does.Contain("rxe1").And.Contain("docs/known-defects.md"));
        pair.Dispose();
    }

    [Test]
    public void CReproducerShowsTheDefectAt1024AndNotAt4096()
    {
        string tool = RepoPaths.File("artifacts/native/rxe_odp_multipacket");
        Assert.That(File.Exists(tool), tool + " (built by ./build.sh build)");
        string target = "/mnt/xfs/repro-" + Guid.NewGuid().ToString("N")[..8];

        var (code, output) = Run(tool, "rxelo", target, "1024", "4096");
        TestContext.Out.Write(output);
        Assert.That(code, Is.EqualTo(1), output);
        foreach (string op in new[] { "rdma-write", "rdma-read", "send-recv" })
            Assert.That(output, Does.Match($@"{op}\s+mtu 1024 len   4096: CORRUPT"), output);

        (code, output) = Run(tool, "rxelo", target, "4096", (4 * 4096).ToString(System.Globalization.CultureInfo.InvariantCulture));
        TestContext.Out.Write(output);
        Assert.That(code, Is.Zero, output);
        Assert.That(output, Does.Not.Contain("CORRUPT"));
    }

    static (int Code, string Output) Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        Assert.That(p.WaitForExit(60_000), "the reproducer finished within 60 s");
        return (p.ExitCode, stdout + stderr);
    }
}
