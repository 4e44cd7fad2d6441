using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using RdmaLease.Tests.Packaging;

namespace RdmaLease.Tests.Samples;

/// <summary>
/// The demo that `./build.sh demo` shows a new user runs as a test too, so it cannot rot: as built (JIT), and as
/// `./build.sh aot` publishes it with NativeAOT (the proof of the libraries' AOT claim).
/// </summary>
[Category("Guest")]
public class DemoTests
{
    [Test]
    public void LeaseBreakDemoRunsToTheEnd()
    {
        // Same configuration as this test binary: artifacts/bin/RdmaLease.Tests/<config>/.
        string config = new DirectoryInfo(AppContext.BaseDirectory).Name;
        string demo = RepoPaths.File($"artifacts/bin/RdmaLease.Demo/{config}/RdmaLease.Demo.dll");
        string output = RunDemo("dotnet", "exec", demo);
        Assert.That(output, Does.Contain("rdma-lease demo (JIT)"));
        AssertTheStory(output, "first-break.txt");
    }

    [Test]
    public void NativeAotDemoRunsToTheEnd()
    {
        string demo = RepoPaths.File("artifacts/aot/RdmaLease.Demo/RdmaLease.Demo");
        Assert.That(File.Exists(demo), $"{demo} is missing: ./build.sh aot");
        Assert.That(File.Exists(Path.ChangeExtension(demo, ".dll")), Is.False, "a native executable, no IL assembly beside it");
        string output = RunDemo(demo);
        Assert.That(output, Does.Contain("rdma-lease demo (NativeAOT)"));
        AssertTheStory(output, "first-break-aot.txt");
    }

    [Test]
    public void TheTourThatBuildShDemoGivesRunsToTheEnd()
    {
        // ./build.sh demo runs samples/tour.sh in the guest: devices, ping-pong against rdma-core's program, the demo, the store.
        using var storeDir = new TempDir(under: "/mnt/xfs");
        string output = RunDemo(480_000, "bash", "samples/tour.sh", Tool.Configuration, Path.Combine(storeDir.Path, "store.pmem"));
        Assert.Multiple(() =>
        {
            Assert.That(output, Does.Contain("== 1.").And.Contain("rxelo: driver rxe"));
            // Both sides of the ping-pong print rc_pingpong's summary: 4096 B x 100 iterations x 2 directions.
            Assert.That(Regex.Matches(output, @"^819200 bytes in [0-9.]+ seconds = [0-9.]+ Mbit/sec$", RegexOptions.Multiline), Has.Count.EqualTo(2), output);
            Assert.That(output, Does.Contain("rdma-lease demo (JIT)"));
            // The store: one break in the middle, every acknowledged record verified at the end.
            Assert.That(output, Does.Contain("break 1: generation 1 ended"));
            Assert.That(output, Does.Contain("generation 2: leased"));
            Assert.That(output, Does.Match(@"200 records acknowledged, 200 verified, 0 missing, 0 corrupt"));
            Assert.That(output, Does.Contain("0 leases still held, 0 bytes still registered"));
            Assert.That(output, Does.Contain("== The tour is over"));
        });
        AssertTheStory(output, "first-break-tour.txt");
    }

    static string RunDemo(string program, params string[] args) => RunDemo(180_000, program, args);

    static string RunDemo(int timeoutMs, string program, params string[] args)
    {
        using var dir = new TempDir(under: "/mnt/xfs");
        var psi = new ProcessStartInfo(program) { WorkingDirectory = RepoPaths.Root, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args.Append(Path.Combine(dir.Path, "demo.pmem")))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        Assert.That(p.WaitForExit(timeoutMs), $"the demo finished within {timeoutMs / 1000} s");
        TestContext.Out.WriteLine(output);
        Assert.That(p.ExitCode, Is.Zero, output + stderr.Result);
        return output;
    }

    static void AssertTheStory(string output, string firstBreakFile)
    {
        Assert.That(output, Does.Contain("file bytes match what the peer wrote: True"));
        Assert.That(output, Does.Contain("the truncate returned (ok)"));
        Assert.That(output, Does.Contain("refused with LeaseRevokedException"));
        Assert.That(output, Does.Contain("old rkey: RemoteAccessError"));
        Assert.That(output, Does.Contain("peer write Success, bytes match True"));
        // The first break of a fresh process (JIT included, when there is one): measured, and safely inside the kernel's deadline.
        var m = Regex.Match(output, @"lease released ([0-9.]+) ms after the signal \(the first break in this process\)");
        Assert.That(m.Success, Is.True, output);
        double firstBreakMs = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.AppendAllText($"/mnt/out/{firstBreakFile}", $"{firstBreakMs:F2}\n");
        Assert.That(firstBreakMs, Is.LessThan(RdmaLease.Leases.FileLease.LeaseBreakTime.TotalMilliseconds / 2));
    }
}
