using System.Globalization;
using System.Text;
using RdmaLease.Tests.Packaging;

namespace RdmaLease.Tests.Benchmarks;

/// <summary>
/// benchmarks/RdmaLease.BenchReport on a small synthetic run (no guest): the table's medians, spreads and ratios to C,
/// the target marks, the p99 label, the environment header, and the plots the contract asks for (docs/benchmarks.md).
/// </summary>
public class BenchReportTests
{
    static readonly string Report = RepoPaths.File($"artifacts/bin/RdmaLease.BenchReport/{Tool.Configuration}/RdmaLease.BenchReport.dll");

    static Tool.Result Run(string runDir, string outDir) => Tool.Run("dotnet", ["exec", Report, runDir, outDir]);

    /// <summary>Three rounds; write_bw at three sizes (so a curve), send_lat at one size with samples (so a CDF).</summary>
    static void WriteRun(string dir)
    {
        var results = new StringBuilder("suite,case,impl,param,round,metric,value,unit\n");
        void Row(string @case, string impl, int param, int round, string metric, double value, string unit) =>
            results.Append(CultureInfo.InvariantCulture, $"net,{@case},{impl},{param},{round},{metric},{value.ToString(CultureInfo.InvariantCulture)},{unit}\n");
        double[] c4k = [100, 110, 90], cs4k = [95, 99, 80];
        for (int r = 1; r <= 3; r++)
        {
            Row("write_bw", "c", 4096, r, "bw_mib_s", c4k[r - 1], "MiB/s");
            Row("write_bw", "cs", 4096, r, "bw_mib_s", cs4k[r - 1], "MiB/s");
            Row("write_bw", "c", 64, r, "bw_mib_s", 10, "MiB/s");
            Row("write_bw", "cs", 64, r, "bw_mib_s", 9, "MiB/s");
            Row("write_bw", "c", 65536, r, "bw_mib_s", 200, "MiB/s");
            Row("write_bw", "cs", 65536, r, "bw_mib_s", 200, "MiB/s");
            Row("send_lat", "c", 64, r, "lat_typical_us", 10, "us");
            Row("send_lat", "cs", 64, r, "lat_typical_us", 12, "us");
            Row("send_lat", "c", 64, r, "lat_p99_us", 20, "us");
            Row("send_lat", "cs", 64, r, "lat_p99_us", 20.5, "us");
        }
        File.WriteAllText(Path.Combine(dir, "results.csv"), results.ToString());
        var samples = new StringBuilder("suite,case,impl,param,round,index,value,unit\n");
        for (int i = 0; i < 50; i++)
        {
            samples.Append(CultureInfo.InvariantCulture, $"net,send_lat,c,64,1,{i},{10 + i % 7},us\n");
            samples.Append(CultureInfo.InvariantCulture, $"net,send_lat,cs,64,1,{i},{11 + i % 9},us\n");
        }
        File.WriteAllText(Path.Combine(dir, "samples.csv"), samples.ToString());
        File.WriteAllText(Path.Combine(dir, "environment.txt"), "command: ./build.sh bench 3\nkernel: 7.3.4-test\nrdma-core: 56.1-1\nlabel: synthetic\n");
    }

    static string TableRow(string markdown, string start) =>
        markdown.Split('\n').SingleOrDefault(l => l.StartsWith(start, StringComparison.Ordinal))
        ?? throw new AssertionException($"no row starting '{start}' in:\n{markdown}");

    [Test]
    public void ReportHasMediansSpreadsRatiosAndPlots()
    {
        using var run = new TempDir();
        using var output = new TempDir();
        WriteRun(run.Path);

        var r = Run(run.Path, output.Path);

        Assert.That(r.ExitCode, Is.Zero, r.Output);
        string md = File.ReadAllText(Path.Combine(output.Path, "results.md"));
        // Medians 100 and 95, spreads min–max, ratio of medians 0.95 (meets ≥ 0.95), per-round ratios 0.95, 0.9, 0.889.
        Assert.That(TableRow(md, "| write_bw | 4096 | bw_mib_s (MiB/s) |"),
            Is.EqualTo("| write_bw | 4096 | bw_mib_s (MiB/s) | 100.0 (90.00–110.0) | 95.00 (80.00–99.00) | 0.950 ✔ | 0.889–0.950 |"));
        Assert.That(TableRow(md, "| write_bw | 64 |"), Does.Contain("| 0.900 ✘ |"));
        // Latency: lower is better, the target is ≤ 1.05; the p99 metric is labelled as one.
        Assert.That(TableRow(md, "| send_lat | 64 | lat_typical_us (us) |"), Does.Contain("| 1.200 ✘ | 1.200–1.200 |"));
        Assert.That(TableRow(md, "| send_lat | 64 | lat p99 (us) |"), Does.Contain("| 1.025 ✔ |"));
        Assert.That(md, Does.Contain("| kernel | 7.3.4-test |").And.Contain("| label | synthetic |").And.Contain("median over 3 round(s)"));

        // A curve for the case with more than two sizes, a CDF for the case with samples, nothing else; all linked.
        var pngs = Directory.GetFiles(output.Path, "*.png").Select(Path.GetFileName).Order().ToArray();
        Assert.That(pngs, Is.EqualTo(new[] { "net-send_lat-cdf.png", "net-write_bw-bw_mib_s.png" }));
        foreach (var png in pngs)
        {
            var bytes = File.ReadAllBytes(Path.Combine(output.Path, png!));
            Assert.That(bytes.Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), $"{png} is not a PNG");
            Assert.That(bytes, Has.Length.GreaterThan(5000), $"{png} is too small to hold a plot");
            Assert.That(md, Does.Contain($"]({png})"), $"results.md does not link {png}");
        }
    }

    [Test]
    public void BadNumberIsRefusedWithFileAndLine()
    {
        using var run = new TempDir();
        using var output = new TempDir();
        File.WriteAllText(Path.Combine(run.Path, "results.csv"), "suite,case,impl,param,round,metric,value,unit\nnet,write_bw,c,64,1,bw_mib_s,12,5,MiB/s\n");

        var r = Run(run.Path, output.Path);

        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain("results.csv:2").And.Contain("9 fields"));
        Assert.That(File.Exists(Path.Combine(output.Path, "results.md")), Is.False);
    }
}
