namespace RdmaLease.Tests.Packaging;

/// <summary>
/// A program that uses only DAX files and leases (tests/LeaseOnlyApp) runs where libibverbs cannot be loaded: a child
/// process in its own mount namespace (unshare -m) in which every libibverbs.so.1 file of the system has /dev/null
/// bind-mounted over it, so the dynamic loader really fails on it. The program maps and flushes a file, has its lease
/// broken by another process's truncate and given back (its first lease granted only once the break path was compiled),
/// reports which native libraries it mapped, and only then asks
/// for libibverbs, which must fail with our guidance. The same program without the hiding loads libibverbs: the
/// failure is the hiding's doing.
/// </summary>
public class LeaseOnlyTests
{
    /// <summary>On the host: an ordinary file under /tmp (no DAX there).</summary>
    [Test]
    public void ALeaseOnlyProgramRunsWithoutLibibverbs()
    {
        using var dir = new TempDir();
        var hidden = Run(Path.Combine(dir.Path, "hidden"), hideLibibverbs: true, allowNonDax: true);
        AssertLeaseWorkedWithoutVerbs(hidden);
        var control = Run(Path.Combine(dir.Path, "control"), hideLibibverbs: false, allowNonDax: true);
        Assert.That(control.Stdout, Does.Contain("verbs: libibverbs loaded from /"), control.Output);
    }

    internal static Tool.Result Run(string file, bool hideLibibverbs, bool allowNonDax)
    {
        string app = RepoPaths.File($"artifacts/bin/RdmaLease.LeaseOnlyApp/{Tool.Configuration}/RdmaLease.LeaseOnlyApp.dll");
        Assert.That(File.Exists(app), $"{app} is missing: ./build.sh build");
        var command = new List<string> { "dotnet", "exec", app, file, RepoPaths.File("artifacts/native/rdmalease-lease-probe") };
        if (allowNonDax)
            command.Add("--allow-non-dax");
        if (!hideLibibverbs)
            return Tool.Run(command[0], command.Skip(1), timeoutMs: 60_000);
        var libraries = LibibverbsFiles();
        Assert.That(libraries, Is.Not.Empty, "this machine has no libibverbs.so.1 to hide, so the test would prove nothing");
        // sh -c SCRIPT sh LIB... -- COMMAND...: bind /dev/null over each library, then exec the program.
        string script = "set -e; while [ \"$1\" != -- ]; do mount --bind /dev/null \"$1\"; shift; done; shift; exec \"$@\"";
        var result = Tool.Run("unshare", ["--mount", "--propagation", "private", "sh", "-c", script, "sh", .. libraries, "--", .. command],
            timeoutMs: 60_000);
        TestContext.Out.WriteLine($"hidden: {string.Join(' ', libraries)}\n{result.Output}");
        return result;
    }

    /// <summary>The real files behind every libibverbs.so* the dynamic loader could find.</summary>
    static List<string> LibibverbsFiles() =>
        [.. new[] { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib" }
            .Where(Directory.Exists)
            .SelectMany(d => Directory.EnumerateFiles(d, "libibverbs.so*"))
            .Select(f => new FileInfo(f).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(f))
            .Where(File.Exists)
            .Distinct(StringComparer.Ordinal)
            .Order(StringComparer.Ordinal)];

    internal static void AssertLeaseWorkedWithoutVerbs(Tool.Result r)
    {
        Assert.That(r.ExitCode, Is.Zero, r.Output);
        Assert.That(r.Stdout, Does.Contain("break: observed True").And.Contain("truncate ok"), r.Output);
        // A fresh process: its first AcquireLease returned only after the warm-up compiled the break path (LeaseSignals.WaitWarm).
        Assert.That(r.Stdout, Does.Contain("warm-up: done before the lease True"), r.Output);
        string mapped = r.Stdout.Split('\n').Single(l => l.StartsWith("mapped:", StringComparison.Ordinal));
        Assert.That(mapped, Does.Contain("librdmalease_leases.so"), "the lease library was loaded");
        Assert.That(mapped, Does.Not.Contain("libibverbs").And.Not.Contain("librdmalease_verbs").And.Not.Contain("librdmacm"),
            "nothing of the verbs side was loaded by the lease work");
        Assert.That(r.Stdout, Does.Contain("verbs: RdmaLibraryNotFoundException: libibverbs could not be loaded")
            .And.Contain("apt-get install libibverbs1 ibverbs-providers"), "libibverbs really was unloadable, and the guidance names the packages");
    }
}

/// <summary>The same in the guest, on XFS with DAX (MAP_SYNC mapping, CPU cache flush).</summary>
[Category("Guest")]
public class LeaseOnlyGuestTests
{
    [Test]
    public void ALeaseOnlyProgramRunsWithoutLibibverbsOnFsDax()
    {
        using var dir = new TempDir(under: "/mnt/xfs");
        var hidden = LeaseOnlyTests.Run(Path.Combine(dir.Path, "hidden.pmem"), hideLibibverbs: true, allowNonDax: false);
        LeaseOnlyTests.AssertLeaseWorkedWithoutVerbs(hidden);
        Assert.That(hidden.Stdout, Does.Contain("file: FS-DAX True, MAP_SYNC True"), hidden.Output);
        Assert.That(hidden.Stdout, Does.Match(@"flush: (Clwb|ClflushOpt|Clflush)\b"), hidden.Output);
    }
}
