using System.Globalization;
using RdmaLease.Leases;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Foundation;

/// <summary>What every guest test builds on: the rxe devices and the DAX mounts that
/// tools/vm/guest-init.sh prepares. A missing device in the guest is a failure, not a skip.</summary>
[Category("Guest")]
public class GuestEnvironmentTests
{
    static readonly string[] SoftRoceDevices = ["rxelo", "rxe0", "rxe1"];

    [Test]
    public void SoftRoceDevicesExistAndReportOdp()
    {
        Assert.That(Device.List(), Is.SupersetOf(SoftRoceDevices));
        foreach (var name in SoftRoceDevices)
        {
            using var device = Device.Open(name);
            var odp = device.Attributes.Odp;
            Assert.That(odp.Supported, $"{name}: no general ODP support");
            Assert.That(device.Attributes.PortCount, Is.EqualTo(1), name);
            var rcNeeded = OdpTransportCaps.Send | OdpTransportCaps.Receive | OdpTransportCaps.Write | OdpTransportCaps.Read;
            Assert.That(odp.Rc & rcNeeded, Is.EqualTo(rcNeeded), $"{name}: RC ODP caps {odp.Rc}");
            Assert.That(odp.Ud & (OdpTransportCaps.Send | OdpTransportCaps.Receive), Is.Not.EqualTo(OdpTransportCaps.None), $"{name}: UD ODP caps {odp.Ud}");
            Assert.That(device.QueryPort().State, Is.EqualTo(PortState.Active), name);
        }
    }

    [TestCase("/mnt/xfs", true)]
    [TestCase("/mnt/ext4", true)]
    [TestCase("/mnt/tmpfs", false)]
    public void StatxReportsDax(string mount, bool expectDax)
    {
        using var dir = new TempDir(under: mount);
        using var file = DaxFile.Open(Path.Combine(dir.Path, "probe"), new DaxFileOptions { Size = 4096, AllowNonDax = true });
        Assert.That(file.IsDax, Is.EqualTo(expectDax), $"STATX_ATTR_DAX on {file.Path}");
    }

    [Test]
    public void LeaseBreakTimeIsLowered()
    {
        int seconds = int.Parse(File.ReadAllText("/proc/sys/fs/lease-break-time").Trim(), CultureInfo.InvariantCulture);
        Assert.That(seconds, Is.InRange(1, 10));
    }
}
