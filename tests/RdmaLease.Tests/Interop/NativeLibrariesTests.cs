using RdmaLease.Interop;

namespace RdmaLease.Tests.Interop;

public class NativeLibrariesTests
{
    [Test]
    public void MissingLibibverbsNamesThePackagesToInstall()
    {
        var saved = Environment.GetEnvironmentVariable("RDMA_LEASE_LIBIBVERBS");
        Environment.SetEnvironmentVariable("RDMA_LEASE_LIBIBVERBS", "/nonexistent/rdma-lease/libibverbs.so.1");
        try
        {
            var e = Assert.Throws<RdmaLibraryNotFoundException>(() => NativeLibraries.LoadUncached(NativeLibraries.IbVerbsInfo));
            Assert.That(e!.Message, Does.Contain("libibverbs1 ibverbs-providers")
                .And.Contain("RDMA_LEASE_LIBIBVERBS")
                .And.Contain("/nonexistent/rdma-lease/libibverbs.so.1"));
            Assert.That(e.Library, Is.EqualTo("libibverbs"));
        }
        finally { Environment.SetEnvironmentVariable("RDMA_LEASE_LIBIBVERBS", saved); }
    }

    [Test]
    public void MissingLibrdmacmNamesThePackagesToInstall()
    {
        var saved = Environment.GetEnvironmentVariable("RDMA_LEASE_LIBRDMACM");
        Environment.SetEnvironmentVariable("RDMA_LEASE_LIBRDMACM", "/nonexistent/rdma-lease/librdmacm.so.1");
        try
        {
            var e = Assert.Throws<RdmaLibraryNotFoundException>(() => NativeLibraries.LoadUncached(NativeLibraries.RdmaCmInfo));
            Assert.That(e!.Message, Does.Contain("librdmacm1").And.Contain("RDMA_LEASE_LIBRDMACM"));
        }
        finally { Environment.SetEnvironmentVariable("RDMA_LEASE_LIBRDMACM", saved); }
    }

    [Test]
    public void HookIsConsultedFirst()
    {
        var saved = NativeLibraries.Resolver;
        var asked = new List<string>();
        NativeLibraries.Resolver = name => { asked.Add(name); return 0; };
        var savedEnv = Environment.GetEnvironmentVariable("RDMA_LEASE_LIBRDMACM");
        Environment.SetEnvironmentVariable("RDMA_LEASE_LIBRDMACM", "/nonexistent/librdmacm.so.1");
        try
        {
            Assert.Throws<RdmaLibraryNotFoundException>(() => NativeLibraries.LoadUncached(NativeLibraries.RdmaCmInfo));
            Assert.That(asked, Has.Count.EqualTo(1).And.Contains("rdmacm"));
        }
        finally
        {
            NativeLibraries.Resolver = saved;
            Environment.SetEnvironmentVariable("RDMA_LEASE_LIBRDMACM", savedEnv);
        }
    }

    /// <summary>A generated LibraryImport binds through the resolver (the host has no RDMA
    /// devices, so the list is empty or NULL, but the call reaches libibverbs).</summary>
    [Test]
    public unsafe void GeneratedImportsBindThroughTheResolver()
    {
        NativeLibraries.EnsureLoaded();
        int count = -1;
        var list = libibverbs.ibv_get_device_list(&count);
        if (list != null) libibverbs.ibv_free_device_list(list);
        Assert.That(count, Is.GreaterThanOrEqualTo(0));
    }

    [Test]
    public void ResolverIsRegisteredByDefault() => Assert.That(NativeLibraries.ResolverRegistered, Is.True);

    [TestCase("/usr/lib/x86_64-linux-gnu/libibverbs.so.1.14.56.1", 56, 1)]
    [TestCase("/usr/lib/x86_64-linux-gnu/libibverbs.so.1.14.44.0", 44, 0)]
    public void VersionComesFromTheLibraryFileName(string path, int major, int minor) =>
        Assert.That(NativeLibraries.VersionFromFileName(path), Is.EqualTo(new Version(major, minor)));

    [TestCase("/opt/rdma/libibverbs.so.1")]
    [TestCase("/opt/rdma/libibverbs.so")]
    public void VersionIsUnknownWithoutOne(string path) => Assert.That(NativeLibraries.VersionFromFileName(path), Is.Null);

    /// <summary>The host has rdma-core 44's libibverbs1 (build.sh installs it): it loads, its
    /// version is read, and the entry points it is too old for are refused.</summary>
    [Test]
    public void EntryPointsNewerThanTheLoadedLibraryAreRefused()
    {
        NativeLibraries.EnsureLoaded();
        var version = NativeLibraries.IbVerbsVersion;
        Assert.That(version, Is.Not.Null, $"cannot tell the version of {NativeLibraries.IbVerbsPath}");
        var min = NativeLibraries.MinimumIbVerbsVersion["ibv_wr_flush"];
        if (version! < min)
        {
            var e = Assert.Throws<NotSupportedException>(() => NativeLibraries.RequireIbVerbs("ibv_wr_flush"));
            Assert.That(e!.Message, Does.Contain("ibv_wr_flush").And.Contain($"rdma-core {min}").And.Contain($"rdma-core {version}"));
        }
        else Assert.DoesNotThrow(() => NativeLibraries.RequireIbVerbs("ibv_wr_flush"));
        Assert.DoesNotThrow(() => NativeLibraries.RequireIbVerbs("ibv_reg_mr"));
    }
}
