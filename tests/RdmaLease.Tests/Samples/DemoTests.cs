using System.Diagnostics;

namespace RdmaLease.Tests.Samples;

/// <summary>The demo that `./build.sh demo` shows a new user runs as a test too, so it cannot rot.</summary>
[Category("Guest")]
public class DemoTests
{
    [Test]
    public void LeaseBreakDemoRunsToTheEnd()
    {
        // Same configuration as this test binary: artifacts/bin/RdmaLease.Tests/<config>/.
        string config = new DirectoryInfo(AppContext.BaseDirectory).Name;
        string demo = RepoPaths.File($"artifacts/bin/RdmaLease.Demo/{config}/RdmaLease.Demo.dll");
        using var dir = new TempDir(under: "/mnt/xfs");
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = RepoPaths.Root, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "exec", demo, Path.Combine(dir.Path, "demo.pmem") })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        Assert.That(p.WaitForExit(60_000), "the demo finished within 60 s");
        TestContext.Out.WriteLine(output);
        Assert.That(p.ExitCode, Is.Zero, output + stderr.Result);
        Assert.That(output, Does.Contain("file bytes match what the peer wrote: True"));
        Assert.That(output, Does.Contain("the truncate returned (ok)"));
        Assert.That(output, Does.Contain("refused with LeaseRevokedException"));
        Assert.That(output, Does.Contain("old rkey: RemoteAccessError"));
        Assert.That(output, Does.Contain("peer write Success, bytes match True"));
        // The first break of a fresh process (JIT included): measured, and safely inside the kernel's deadline.
        var m = System.Text.RegularExpressions.Regex.Match(output, @"lease released ([0-9.]+) ms after the signal \(the first break in this process\)");
        Assert.That(m.Success, Is.True, output);
        double firstBreakMs = double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.AppendAllText("/mnt/out/first-break.txt", $"{firstBreakMs:F2}\n");
        Assert.That(firstBreakMs, Is.LessThan(RdmaLease.Leases.FileLease.LeaseBreakTime.TotalMilliseconds / 2));
    }
}
