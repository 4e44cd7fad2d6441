using System.Net;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Integrity;

/// <summary>
/// The ODP quirk policy on the guest's devices: chosen by driver when the device is opened, never by a registration;
/// no probe and no cache unless asked for (<see cref="OdpQuirkMode.Probe"/>).
/// </summary>
[Category("Guest")]
public class OdpQuirkGuestTests
{
    const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;

    [TestCase("rxelo")]
    [TestCase("rxe0")]
    [TestCase("rxe1")]
    public void TheGuestsRxeDevicesGetTheKnownQuirkByDriver(string name)
    {
        int runs = OdpIntegrityProbe.Runs;
        using var device = Device.Open(name);
        Assert.That(device.Driver, Is.EqualTo("rxe"), "libibverbs' provider for a soft-RoCE device");
        Assert.That(device.OdpQuirk, Is.Not.Null);
        Assert.That(device.OdpQuirk!.Mode, Is.EqualTo(OdpQuirkMode.Auto));
        Assert.That(device.OdpQuirk.Reason, Does.Contain("rxe drops the in-page offset"));
        Assert.That(device.OdpQuirk.Describe(Mtu.Mtu1024), Does.Contain($"at path MTU 1024: ODP safe up to 1024 bytes per work request"));
        Assert.That(OdpIntegrityProbe.Runs, Is.EqualTo(runs), "a known quirk needs no probe");
    }

    /// <summary>
    /// A leased FS-DAX registration and a 4-packet RDMA WRITE from it (path MTU 1024), with the quirk off (the device then
    /// has none, as a non-rxe device would) and with rxe's default: neither runs the probe or writes anything under the
    /// cache directories; only the quirk refuses the write, and only the quirk tells peers limits.
    /// </summary>
    [TestCase(OdpQuirkMode.Off)]
    [TestCase(OdpQuirkMode.Auto)]
    public unsafe void RegistrationAndPostsRunNoProbeAndWriteNoCache(OdpQuirkMode mode)
    {
        using var home = new TempDir();
        using var files = new TempDir("/mnt/xfs");
        var saved = new[] { "HOME", "XDG_CACHE_HOME", "RDMA_LEASE_CACHE" }.ToDictionary(v => v, Environment.GetEnvironmentVariable);
        foreach (string variable in saved.Keys)
            Environment.SetEnvironmentVariable(variable, home.Path);
        try
        {
            int runs = OdpIntegrityProbe.Runs;
            using var device = Device.Open("rxelo", new DeviceOptions { OdpQuirk = mode });
            Assert.That(device.OdpQuirk, mode == OdpQuirkMode.Off ? Is.Null : Is.Not.Null);
            using var pd = device.AllocateProtectionDomain();
            using var file = DaxFile.Open(Path.Combine(files.Path, "f"), new DaxFileOptions { Size = 65536 });
            using var lease = file.AcquireLease();
            using var region = pd.Register(lease, Rw);
            using var buffer = pd.AllocateBuffer(65536, Rw | AccessFlags.OnDemand);
            Assert.That(region.IsOnDemand && buffer.IsOnDemand);

            var (a, cq) = LoopbackQueuePairs(device, pd, Mtu.Mtu1024, IPAddress.Loopback);
            using var target = pd.AllocateBuffer(65536, Rw);
            void WriteFourPackets() => a.PostWrite(1, region.Region.Slice(0, 4096), target.ToRemote());
            var remote = region.Region.ToRemote();
            if (mode == OdpQuirkMode.Off)
            {
                WriteFourPackets();   // posted as it is (rxe then misplaces it: OdpDefectGuestTests)
                RcPair.Expect(cq, WorkCompletionOpcode.RdmaWrite, 1);
                Assert.That((remote.MaxTransferPerRequest, remote.RequiredAlignment), Is.EqualTo((0u, 0u)), "no limits for peers");
            }
            else
            {
                var e = Assert.Throws<NotSupportedException>(WriteFourPackets)!;
                Assert.That(e.Message, Does.Contain("docs/known-defects.md"));
                Assert.That(remote.RequiredAlignment, Is.EqualTo((uint)Environment.SystemPageSize), "rxelo's active MTU is 4096: aligned, any size");
            }
            Assert.That(OdpIntegrityProbe.Runs, Is.EqualTo(runs), "no probe ran");
            Assert.That(Directory.EnumerateFileSystemEntries(home.Path), Is.Empty, "nothing was written under HOME or the cache directories");
        }
        finally
        {
            foreach (var (variable, value) in saved)
                Environment.SetEnvironmentVariable(variable, value);
        }
    }

    [Test]
    public void ProbeModeProbesWhenOpenedAndForANewPathMtuOnly()
    {
        int runs = OdpIntegrityProbe.Runs;
        using var device = Device.Open("rxe0", new DeviceOptions { OdpQuirk = OdpQuirkMode.Probe });
        Assert.That(OdpIntegrityProbe.Runs, Is.EqualTo(runs + 1), "one active port (MTU 1024): one probe when opened");
        Assert.That(device.OdpQuirk!.Mode, Is.EqualTo(OdpQuirkMode.Probe));
        Assert.That(device.OdpQuirk.Reason, Does.Contain("probe"));
        var rule = device.OdpQuirk.RuleAt(Mtu.Mtu1024)!;
        Assert.That((rule.MaxTransfer, rule.Alignment), Is.EqualTo((1024u, (uint)Environment.SystemPageSize)), "what the probe finds on this kernel");

        using var pd = device.AllocateProtectionDomain();
        using var odp = pd.AllocateBuffer(65536, Rw | AccessFlags.OnDemand);
        var (a, _) = LoopbackQueuePairs(device, pd, Mtu.Mtu1024, IPAddress.Parse("192.0.2.1"));
        Assert.That(OdpIntegrityProbe.Runs, Is.EqualTo(runs + 1), "registering and connecting at a probed MTU run none");
        Assert.Throws<NotSupportedException>(() => a.PostSend(1, odp.Slice(0, 4096)), "the probe's verdict is applied");

        _ = LoopbackQueuePairs(device, pd, Mtu.Mtu512, IPAddress.Parse("192.0.2.1"));
        Assert.That(OdpIntegrityProbe.Runs, Is.EqualTo(runs + 2), "a queue pair at a new path MTU: one more probe (the second QP reuses it)");
    }

    /// <summary>Two RC queue pairs on <paramref name="device"/> connected to each other; returns the first and their CQ.</summary>
    static (QueuePair A, CompletionQueue Cq) LoopbackQueuePairs(Device device, ProtectionDomain pd, Mtu mtu, IPAddress address)
    {
        var cq = device.CreateCompletionQueue(64);
        var options = new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq };
        var a = pd.CreateQueuePair(options);
        var b = pd.CreateQueuePair(options);
        int gid = device.FindGidIndex(address);
        var connect = new ConnectOptions { GidIndex = gid, PathMtu = mtu, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic };
        a.Connect(b.LocalEndpoint(gid), connect);
        b.Connect(a.LocalEndpoint(gid), connect);
        return (a, cq);
    }
}
