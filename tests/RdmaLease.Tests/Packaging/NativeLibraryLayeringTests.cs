using RdmaLease.Interop;
using LeasesInterop = RdmaLease.Leases.Interop;

namespace RdmaLease.Tests.Packaging;

/// <summary>
/// The two native libraries are split by dependency: librdmalease_leases needs only libc, librdmalease_verbs needs
/// libibverbs. Checked on the ELF files themselves (what the dynamic loader reads), as built and as copied beside
/// this test binary, and on what the loader of <see cref="NativeLibraries"/> accepts.
/// </summary>
public class NativeLibraryLayeringTests
{
    const string Leases = "librdmalease_leases.so", Verbs = "librdmalease_verbs.so";

    static IEnumerable<string> Copies(string name) =>
        [RepoPaths.File($"artifacts/native/{name}"), Path.Combine(AppContext.BaseDirectory, name)];

    [Test]
    public void TheLeasesLibraryNeedsOnlyLibc()
    {
        foreach (var lib in Copies(Leases))
        {
            Assert.That(Tool.Needed(lib), Is.EqualTo(new[] { "libc.so.6" }), $"DT_NEEDED of {lib}");
            var (_, undefined) = Tool.DynamicSymbols(lib);
            Assert.That(undefined.Where(s => s.StartsWith("ibv_", StringComparison.Ordinal) || s.StartsWith("rdma_", StringComparison.Ordinal)),
                Is.Empty, $"{lib} needs verbs symbols");
            Assert.That(undefined, Does.Contain("sigaction"), "the parser sees what the library takes from libc");
        }
    }

    [Test]
    public void TheVerbsLibraryNeedsLibibverbs()
    {
        foreach (var lib in Copies(Verbs))
        {
            Assert.That(Tool.Needed(lib), Does.Contain("libibverbs.so.1"), $"DT_NEEDED of {lib}");
            Assert.That(Tool.DynamicSymbols(lib).Undefined, Does.Contain("ibv_query_port").And.Contain("ibv_create_qp"),
                $"{lib} takes the verbs its inlines fall back to from libibverbs");
        }
    }

    [Test]
    public void EachLibraryExportsItsOwnAbiVersionAndItsOwnCalls()
    {
        var leases = Tool.DynamicSymbols(RepoPaths.File($"artifacts/native/{Leases}")).Defined;
        var verbs = Tool.DynamicSymbols(RepoPaths.File($"artifacts/native/{Verbs}")).Defined;
        Assert.That(leases, Does.Contain("RdmaLeaseNative_GetLeasesAbiVersion").And.Contain("RdmaLeaseNative_LeaseSignalInstall")
            .And.Contain("RdmaLeaseNative_FlushCpuCaches"));
        Assert.That(verbs, Does.Contain("RdmaLeaseNative_GetVerbsAbiVersion").And.Contain("RdmaLeaseNative_PollCq"));
        var ours = (HashSet<string> s) => s.Where(n => n.StartsWith("RdmaLeaseNative_", StringComparison.Ordinal)).ToHashSet();
        Assert.That(ours(leases).Intersect(ours(verbs)), Is.Empty, "no export is in both libraries");
        Assert.That(leases.Where(n => n.StartsWith("RdmaLeaseNative_", StringComparison.Ordinal)).All(n => !n.Contains("Cq") && !n.Contains("Qp") && !n.Contains("Wr")),
            Is.True, "no verbs export in the leases library");
    }

    /// <summary>Build paths are mapped (-ffile-prefix-map): the bytes do not depend on where the repository or the cache is.</summary>
    [Test]
    public void TheLibrariesCarryNoBuildPaths()
    {
        string home = Environment.GetEnvironmentVariable("HOME") ?? "/root";
        foreach (var lib in new[] { Leases, Verbs })
        {
            var text = System.Text.Encoding.Latin1.GetString(File.ReadAllBytes(RepoPaths.File($"artifacts/native/{lib}")));
            Assert.That(text, Does.Not.Contain(RepoPaths.Root + "/").And.Not.Contain(home + "/.cache"), lib);
            Assert.That(text, Does.Contain("/_/native"), $"{lib}: the debug info names the mapped source directory");
        }
    }

    [Test]
    public void BothShimsLoadThroughTheResolverWithTheirAbiVersion()
    {
        Assert.That(NativeLibraries.LoadUncached(LeasesInterop.Libraries.Info).Path, Does.EndWith("/" + Leases));
        Assert.That(NativeLibraries.LoadUncached(NativeLibraries.VerbsShimInfo).Path, Does.EndWith("/" + Verbs));
    }

    [Test]
    public void AShimOfAnotherAbiVersionIsRefused()
    {
        var info = NativeLibraries.Shim(NativeLibraries.LeasesShim, typeof(LeasesInterop).Assembly,
            "RdmaLeaseNative_GetLeasesAbiVersion", LeasesInterop.Libraries.ExpectedAbiVersion + 1);
        var e = Assert.Throws<RdmaLibraryNotFoundException>(() => NativeLibraries.LoadUncached(info));
        Assert.That(e!.Message, Does.Contain($"it has ABI version {LeasesInterop.Libraries.ExpectedAbiVersion},")
            .And.Contain($"needs ABI version {LeasesInterop.Libraries.ExpectedAbiVersion + 1}")
            .And.Contain("RdmaLease.Leases").And.Contain(Leases));
        Assert.That(e.Library, Is.EqualTo("librdmalease_leases"));
    }

    [Test]
    public void ALibraryWithoutTheAbiExportIsRefused()
    {
        // The verbs ABI export asked of the leases library: as if the wrong (or an old, combined) library were found.
        var info = NativeLibraries.Shim(NativeLibraries.LeasesShim, typeof(LeasesInterop).Assembly, "RdmaLeaseNative_GetVerbsAbiVersion", 1);
        var e = Assert.Throws<RdmaLibraryNotFoundException>(() => NativeLibraries.LoadUncached(info));
        Assert.That(e!.Message, Does.Contain("has no RdmaLeaseNative_GetVerbsAbiVersion export"));
    }

    [Test]
    public void AMissingShimNamesItsPackageAndRuntime()
    {
        var info = NativeLibraries.Shim("rdmalease_absent", typeof(LeasesInterop).Assembly, "RdmaLeaseNative_GetLeasesAbiVersion", 1);
        var e = Assert.Throws<RdmaLibraryNotFoundException>(() => NativeLibraries.LoadUncached(info));
        Assert.That(e!.Message, Does.Contain("librdmalease_absent.so").And.Contain("RdmaLease.Leases package")
            .And.Contain("runtimes/linux-x64/native").And.Contain("./build.sh build"));
        Assert.That(e.InnerException, Is.InstanceOf<DllNotFoundException>(), "the loader's own message is kept");
    }

    /// <summary>The hook of <see cref="NativeLibraries.Resolver"/> is asked for our shims too, before anything else.</summary>
    [Test]
    public void TheHookIsAskedForTheShims()
    {
        var saved = NativeLibraries.Resolver;
        var asked = new List<string>();
        NativeLibraries.Resolver = name => { asked.Add(name); return 0; };
        try
        {
            NativeLibraries.LoadUncached(LeasesInterop.Libraries.Info);
            NativeLibraries.LoadUncached(NativeLibraries.VerbsShimInfo);
        }
        finally { NativeLibraries.Resolver = saved; }
        Assert.That(asked, Is.EqualTo(new[] { NativeLibraries.LeasesShim, NativeLibraries.VerbsShim }));
    }
}
