using System.Runtime.InteropServices;

namespace RdmaLease.Tests.Foundation;

/// <summary>What every guest test builds on: the rxe devices and the DAX mounts that
/// tools/vm/guest-init.sh prepares. A missing device in the guest is a failure, not a skip.</summary>
[Category("Guest")]
public unsafe class GuestEnvironmentTests
{
    const uint IBV_ODP_SUPPORT_SEND = 1, IBV_ODP_SUPPORT_RECV = 2, IBV_ODP_SUPPORT_WRITE = 4, IBV_ODP_SUPPORT_READ = 8;

    [Test]
    public void SoftRoceDevicesExistAndReportOdp()
    {
        var devices = RdmaLease.Verbs.DeviceInfo.ListAll().ToDictionary(d => d.Name);
        Assert.That(devices.Keys, Is.SupersetOf(new[] { "rxelo", "rxe0", "rxe1" }));
        foreach (var name in new[] { "rxelo", "rxe0", "rxe1" })
        {
            var (_, rc, _, ud) = devices[name].Odp;
            Assert.That(devices[name].Odp.Supported, $"{name}: no general ODP support");
            Assert.That(devices[name].PortCount, Is.EqualTo(1), name);
            uint rcNeeded = IBV_ODP_SUPPORT_SEND | IBV_ODP_SUPPORT_RECV | IBV_ODP_SUPPORT_WRITE | IBV_ODP_SUPPORT_READ;
            Assert.That(rc & rcNeeded, Is.EqualTo(rcNeeded), $"{name}: RC ODP caps 0x{rc:x}");
            Assert.That(ud & (IBV_ODP_SUPPORT_SEND | IBV_ODP_SUPPORT_RECV), Is.Not.Zero, $"{name}: UD ODP caps 0x{ud:x}");
        }
    }

    // statx(2): struct statx starts { u32 stx_mask; u32 stx_blksize; u64 stx_attributes; ... };
    // stx_attributes_mask is at offset 0x28 (include/uapi/linux/stat.h).
    [DllImport("libc", SetLastError = true)] static extern int statx(int dirfd, string path, int flags, uint mask, byte* buf);
    const ulong STATX_ATTR_DAX = 0x200000;
    const int AT_FDCWD = -100;

    static (bool Dax, bool DaxKnown) StatxDax(string path)
    {
        byte* buf = stackalloc byte[256];
        int rc = statx(AT_FDCWD, path, 0, 0xfff, buf);
        Assert.That(rc, Is.Zero, $"statx({path}) failed: errno {Marshal.GetLastPInvokeError()}");
        ulong attributes = *(ulong*)(buf + 8), attributesMask = *(ulong*)(buf + 0x28);
        return ((attributes & STATX_ATTR_DAX) != 0, (attributesMask & STATX_ATTR_DAX) != 0);
    }

    [TestCase("/mnt/xfs", true)]
    [TestCase("/mnt/ext4", true)]
    [TestCase("/mnt/tmpfs", false)]
    public void StatxReportsDax(string mount, bool expectDax)
    {
        using var dir = new TempDir(under: mount);
        string file = Path.Combine(dir.Path, "probe");
        File.WriteAllBytes(file, new byte[4096]);
        var (dax, _) = StatxDax(file);
        Assert.That(dax, Is.EqualTo(expectDax), $"STATX_ATTR_DAX on {file}");
    }

    [Test]
    public void LeaseBreakTimeIsLowered()
    {
        int seconds = int.Parse(File.ReadAllText("/proc/sys/fs/lease-break-time").Trim(), System.Globalization.CultureInfo.InvariantCulture);
        Assert.That(seconds, Is.InRange(1, 10));
    }
}
