using RdmaLease.Leases;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>The decisions of leased registration that need no verbs device: ranges, ODP capability mapping, ODP or pinned.</summary>
public class LeasedRegistrationHostTests
{
    private static readonly OdpCapabilities RxeLike = new(true, false,
        OdpTransportCaps.Send | OdpTransportCaps.Receive | OdpTransportCaps.Write | OdpTransportCaps.Read | OdpTransportCaps.Atomic
        | OdpTransportCaps.SrqReceive | OdpTransportCaps.Flush | OdpTransportCaps.AtomicWrite, OdpTransportCaps.None, OdpTransportCaps.Send);

    private static readonly OdpCapabilities NoOdp = new(false, false, OdpTransportCaps.None, OdpTransportCaps.None, OdpTransportCaps.None);

    private static readonly OdpCapabilities WriteOnly = new(true, false, OdpTransportCaps.Write, OdpTransportCaps.None, OdpTransportCaps.None);

    [TestCase(AccessFlags.LocalWrite, OdpTransportCaps.None)]
    [TestCase(AccessFlags.LocalWrite | AccessFlags.RemoteWrite, OdpTransportCaps.Write)]
    [TestCase(AccessFlags.RemoteRead, OdpTransportCaps.Read)]
    [TestCase(AccessFlags.LocalWrite | AccessFlags.RemoteAtomic, OdpTransportCaps.Atomic)]
    [TestCase(AccessFlags.RemoteRead | AccessFlags.FlushPersistent, OdpTransportCaps.Read | OdpTransportCaps.Flush)]
    [TestCase(AccessFlags.FlushGlobal, OdpTransportCaps.Flush)]
    [TestCase(AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic,
        OdpTransportCaps.Write | OdpTransportCaps.Read | OdpTransportCaps.Atomic)]
    public void AccessFlagsMapToOdpCapabilities(AccessFlags access, OdpTransportCaps expected) =>
        Assert.That(LeasedRegistration.RequiredOdpCapabilities(access), Is.EqualTo(expected));

    [Test]
    public void OdpIsChosenWhenTheDeviceHasIt()
    {
        var options = new LeasedRegistrationOptions();
        Assert.That(LeasedRegistration.UseOnDemand("rxe0", RxeLike, isDax: true, "/p", AccessFlags.LocalWrite | AccessFlags.RemoteWrite, options), Is.True);
        Assert.That(LeasedRegistration.UseOnDemand("rxe0", RxeLike, isDax: false, "/p", AccessFlags.LocalWrite | AccessFlags.RemoteWrite, options), Is.True);
        Assert.That(LeasedRegistration.UseOnDemand("rxe0", RxeLike, isDax: true, "/p", AccessFlags.LocalWrite,
            new LeasedRegistrationOptions { Mode = LeasedRegistrationMode.Pinned }), Is.False, "Pinned is honoured (the kernel then refuses on DAX)");
    }

    [Test]
    public void DaxWithoutOdpIsRefusedWithTheReason()
    {
        var e = Assert.Throws<OdpUnavailableException>(() =>
            LeasedRegistration.UseOnDemand("mlx4_0", NoOdp, isDax: true, "/mnt/pmem/f", AccessFlags.LocalWrite | AccessFlags.RemoteWrite, new LeasedRegistrationOptions()));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.Contain("/mnt/pmem/f").And.Contain("FS-DAX").And.Contain("EOPNOTSUPP").And.Contain("mlx4_0 has no On-Demand Paging"));
            Assert.That(e.Required, Is.EqualTo(OdpTransportCaps.Write));
            Assert.That(e.Supported, Is.EqualTo(OdpTransportCaps.None));
        });

        var partial = Assert.Throws<OdpUnavailableException>(() =>
            LeasedRegistration.UseOnDemand("dev", WriteOnly, isDax: true, "/f", AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead,
                new LeasedRegistrationOptions { AdditionalOdpCapabilities = OdpTransportCaps.Receive }));
        Assert.That(partial!.Message, Does.Contain("not for Receive, Read"));
        Assert.That(partial.Required, Is.EqualTo(OdpTransportCaps.Write | OdpTransportCaps.Read | OdpTransportCaps.Receive));
    }

    [Test]
    public void NonDaxWithoutOdpIsPinnedOnlyWhenPinningIsAskedFor()
    {
        // Auto never pins: a pinned region is only as safe as its teardown is fast (docs/leases.md), so it must be chosen.
        var auto = Assert.Throws<OdpUnavailableException>(() => LeasedRegistration.UseOnDemand("dev", NoOdp, isDax: false, "/tmp/f",
            AccessFlags.LocalWrite | AccessFlags.RemoteWrite, new LeasedRegistrationOptions()));
        Assert.That(auto!.Message, Does.Contain("LeasedRegistrationMode.Pinned").And.Contain("deadline"));
        Assert.That(LeasedRegistration.UseOnDemand("dev", NoOdp, isDax: false, "/tmp/f", AccessFlags.LocalWrite | AccessFlags.RemoteWrite,
            new LeasedRegistrationOptions { Mode = LeasedRegistrationMode.Pinned }), Is.False);
        var e = Assert.Throws<OdpUnavailableException>(() => LeasedRegistration.UseOnDemand("dev", NoOdp, isDax: false, "/tmp/f",
            AccessFlags.LocalWrite, new LeasedRegistrationOptions { Mode = LeasedRegistrationMode.OnDemand }));
        Assert.That(e!.Message, Does.Contain("LeasedRegistrationMode.OnDemand"));
    }

    [Test]
    public void RangesAreChecked()
    {
        using var dir = CreateTempDir(Path.GetTempPath());
        using var file = DaxFile.Open(dir.File("f"), new DaxFileOptions { Size = 8192, AllowNonDax = true });
        using var lease = file.AcquireLease();
        var r = lease.Range(4096, 4096);
        Assert.That((r.Lease, r.Offset, r.Length), Is.EqualTo((lease, 4096L, 4096L)));
        Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(4096, 4097));
        Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(ulong.MaxValue, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(0, 0));
        Assert.Throws<ArgumentNullException>(() => _ = new LeasedFileRange(null!, 0, 1));
    }

    [TestCase(AccessFlags.LocalWrite)]
    [TestCase(AccessFlags.LocalWrite | AccessFlags.RemoteWrite)]
    [TestCase(AccessFlags.LocalWrite | AccessFlags.RemoteAtomic)]
    public void WriteAccessToAReadOnlyFileIsRefusedClearly(AccessFlags access)
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        string path = dir.File("ro");
        File.WriteAllBytes(path, new byte[4096]);
        using var file = DaxFile.Open(path, new DaxFileOptions { Access = DaxFileAccess.Read, AllowNonDax = true });
        var e = Assert.Throws<ArgumentException>(() => LeasedRegistration.CheckAccessAgainstFile(file, access));
        Assert.That(e!.Message, Does.Contain("read-only").And.Contain("AccessFlags.RemoteRead alone"));
        Assert.DoesNotThrow(() => LeasedRegistration.CheckAccessAgainstFile(file, AccessFlags.RemoteRead));
        using var rw = DaxFile.Open(dir.File("rw"), new DaxFileOptions { Size = 4096, AllowNonDax = true });
        Assert.DoesNotThrow(() => LeasedRegistration.CheckAccessAgainstFile(rw, access));
    }
}
