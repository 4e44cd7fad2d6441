using RdmaLease.Verbs;

namespace RdmaLease.Tests.Integrity;

/// <summary>
/// Host tests of the ODP quirk policy (src/Verbs/Quirks/OdpQuirk.cs): which quirk a device gets, from its driver, the
/// kernel release, its ODP support and the mode asked for. The guest has only rxe devices; these inputs cover the rest.
/// </summary>
public class OdpQuirkPolicyTests
{
    const string Debian734 = "7.3.4+deb13-amd64", Debian7213 = "7.2.13+deb13-amd64";

    [TestCase("rxe", Debian734)]
    [TestCase("rxe", Debian7213)]
    [TestCase("rxe", "6.1.0-18-amd64")]
    [TestCase("rxe", "99.0.0")]   // no release with the fix is known: every kernel
    public void AutoPutsTheKnownQuirkOnRxe(string driver, string kernel)
    {
        var choice = OdpQuirk.Choose(OdpQuirkMode.Auto, driver, kernel, odpSupported: true);
        Assert.That(choice, Is.Not.Null);
        Assert.That(choice!.Value.Mode, Is.EqualTo(OdpQuirkMode.Auto));
        Assert.That(choice.Value.Known!.Driver, Is.EqualTo("rxe"));
        Assert.That(choice.Value.Known.Reason, Does.Contain("in-page offset"));
    }

    [TestCase("mlx5")]
    [TestCase("siw")]
    [TestCase("irdma")]
    [TestCase("rxe2")]
    [TestCase("")]   // provider could not be told
    public void AutoPutsNoQuirkOnOtherDrivers(string driver) =>
        Assert.That(OdpQuirk.Choose(OdpQuirkMode.Auto, driver, Debian734, odpSupported: true), Is.Null);

    [Test]
    public void OffPutsNoQuirkEvenOnRxe() =>
        Assert.That(OdpQuirk.Choose(OdpQuirkMode.Off, "rxe", Debian734, odpSupported: true), Is.Null);

    [TestCase("mlx5")]
    [TestCase("rxe")]
    public void ProbeIsOptInOnAnyDriver(string driver)
    {
        var choice = OdpQuirk.Choose(OdpQuirkMode.Probe, driver, Debian734, odpSupported: true);
        Assert.That(choice, Is.EqualTo(((OdpQuirkMode, KnownOdpDefect?)?)(OdpQuirkMode.Probe, null)));
    }

    [TestCase(OdpQuirkMode.Auto)]
    [TestCase(OdpQuirkMode.Probe)]
    public void NoQuirkWithoutOdp(OdpQuirkMode mode) =>
        Assert.That(OdpQuirk.Choose(mode, "rxe", Debian734, odpSupported: false), Is.Null);

    [TestCase(Debian734, true)]
    [TestCase("7.8.99-1-amd64", true)]
    [TestCase("7.9", false)]
    [TestCase("7.9.0-rc1", false)]
    [TestCase("7.10.1+deb14-amd64", false)]
    [TestCase("8.0.0", false)]
    [TestCase("unreadable", false)]   // counts as the newest
    public void AnEntryWithAFixedReleaseStopsThere(string kernel, bool quirk)
    {
        var fixedIn79 = new KnownOdpDefect("rxe", "7.9", "test entry", (_, page) => (0, page));
        var choice = OdpQuirk.Choose(OdpQuirkMode.Auto, "rxe", kernel, odpSupported: true, [fixedIn79]);
        Assert.That(choice is not null, Is.EqualTo(quirk), kernel);
    }

    [TestCase("7.3.4+deb13-amd64", "7.3.4")]
    [TestCase("6.1.0-18-amd64", "6.1.0")]
    [TestCase("7.9", "7.9")]
    [TestCase("7.10.1", "7.10.1")]
    [TestCase("7.", "2147483647.0")]
    [TestCase("", "2147483647.0")]
    public void KernelVersionIsTheNumericPrefix(string release, string version) =>
        Assert.That(KnownOdpDefect.KernelVersion(release), Is.EqualTo(Version.Parse(version)));

    [TestCase(256, 4096u, 256u, 4096u)]
    [TestCase(1024, 4096u, 1024u, 4096u)]
    [TestCase(2048, 4096u, 2048u, 4096u)]
    [TestCase(4096, 4096u, OdpIntegrityResult.Unlimited, 4096u)]
    [TestCase(4096, 65536u, 4096u, 65536u)]   // 64 KiB pages: MTU 4096 packets after the first start inside a page
    public void TheRxeRuleIsOnePacketBelowAPageSizedMtuAndPageAlignedAlways(int mtu, uint page, uint maxTransfer, uint alignment)
    {
        var rxe = KnownOdpDefect.Find("rxe", Debian734, KnownOdpDefect.Table)!;
        Assert.That(rxe.Limits(MtuExtensions.FromBytes(mtu), page), Is.EqualTo((maxTransfer, alignment)));
    }

    [TestCase("librxe-rdmav34.so", "rxe")]
    [TestCase("libmlx5-rdmav34.so", "mlx5")]
    [TestCase("libvmw_pvrdma-rdmav34.so", "vmw_pvrdma")]
    [TestCase("libibverbs.so.1", "")]
    [TestCase("lib-rdmav34.so", "")]
    [TestCase("", "")]
    public void TheDriverIsTheProviderLibrarysName(string file, string driver) =>
        Assert.That(Device.DriverFromProviderLibrary(file), Is.EqualTo(driver));
}
