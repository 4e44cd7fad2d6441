using System.Text.Json;

namespace RdmaLease.Tests.Packaging;

/// <summary>
/// A fresh console project built against the packages alone (`./build.sh consumer`: `dotnet new console`, a local
/// folder feed of artifacts/packages, `dotnet add package RdmaLease.Leases`, publish; on the host, see
/// docs/testing.md) runs in the guest: an RDMA device, a lease on an FS-DAX file, a registration of it, a write
/// into it through a queue pair, with its native code from the packages' runtimes/linux-x64/native.
/// </summary>
[Category("Guest")]
public class PackageConsumerGuestTests
{
    [Test]
    public void AConsoleProjectBuiltFromThePackagesRunsInTheGuest()
    {
        string dir = RepoPaths.File("artifacts/package-consumer");
        string app = Path.Combine(dir, "RdmaLease.PackageConsumer.dll");
        Assert.That(File.Exists(app), $"{app} is missing: ./build.sh pack && ./build.sh consumer");

        // Built against the packages, not the projects: the .deps.json says so, and names their native assets.
        using var deps = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "RdmaLease.PackageConsumer.deps.json")));
        var libraries = deps.RootElement.GetProperty("libraries");
        string version = Path.GetFileNameWithoutExtension(PackageTests.Package(RepoPaths.File("artifacts/packages"), "RdmaLease.Leases"))["RdmaLease.Leases.".Length..];
        foreach (var id in new[] { "RdmaLease.Leases", "RdmaLease.Verbs" })
            Assert.That(libraries.GetProperty($"{id}/{version}").GetProperty("type").GetString(), Is.EqualTo("package"), id);

        using var files = new TempDir(under: "/mnt/xfs");
        var r = Tool.Run("dotnet", ["exec", app, Path.Combine(files.Path, "consumer.pmem"), "rxelo"], timeoutMs: 120_000);
        TestContext.Out.WriteLine(r.Output);
        Assert.That(r.ExitCode, Is.Zero, r.Output);
        Assert.That(r.Stdout, Does.Contain($"package: RdmaLease.Verbs {version}+").And.Contain($"package: RdmaLease.Leases {version}+"));
        Assert.That(r.Stdout, Does.Contain("file: FS-DAX True; lease: Delegation; region: 1048576 bytes, on-demand True"));
        Assert.That(r.Stdout, Does.Contain("rdma write: Success, file bytes match True"));
        string native = Path.Combine(dir, "runtimes/linux-x64/native");
        Assert.That(r.Stdout, Does.Contain($"native: {native}/librdmalease_leases.so").And.Contain($"native: {native}/librdmalease_verbs.so"),
            "the native libraries came from the package's runtimes/linux-x64/native");
    }
}
