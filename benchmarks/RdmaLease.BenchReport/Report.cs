using System.Globalization;
using System.Text;

namespace RdmaLease.BenchReport;

/// <summary>results.md: per suite, one table row per (case, param, metric) with every impl's median over rounds and its
/// spread, and each non-C impl's ratio to C (of the medians, and per round: both measured in the same round).</summary>
static class Report
{
    /// <summary>Lower is better for these units; higher for <see cref="HigherIsBetter"/>; the rest get no target mark.</summary>
    static readonly string[] LowerIsBetter = ["us", "ns"];
    static readonly string[] HigherIsBetter = ["MiB/s", "Mpps"];

    /// <summary>The issue's targets against C in the same run: latency ratio ≤ 1.05, bandwidth and message rate ≥ 0.95.</summary>
    public const double LatencyTarget = 1.05, ThroughputTarget = 0.95;

    public static string Markdown(RunData run, IReadOnlyList<Plot> plots)
    {
        var md = new StringBuilder();
        md.AppendLine("# Benchmark results (generated)");
        md.AppendLine();
        md.AppendLine("Written by `benchmarks/RdmaLease.BenchReport` from one run of `./build.sh bench` (`benchmarks/guest/run.sh`); do not edit:");
        md.AppendLine("run it again. What the numbers mean, and why a target is missed: [../benchmarks.md](../benchmarks.md).");
        md.AppendLine();
        if (run.Environment.Count > 0)
        {
            md.AppendLine("| run | |");
            md.AppendLine("|---|---|");
            foreach (var (key, value) in run.Environment)
                md.AppendLine($"| {key} | {Escape(value)} |");
            md.AppendLine();
        }
        int rounds = run.Results.Select(r => r.Round).Distinct().Count();
        md.AppendLine($"Each cell: the median over {rounds} round(s), then the spread (min–max over rounds). A ratio is the impl's median over");
        md.AppendLine("C's (`c`: rdma-core, perftest or our C twin); \"per round\" is the min–max of that ratio taken within each round, where both");
        md.AppendLine($"ran back to back. Targets: ✔ when a latency or time ratio is ≤ {LatencyTarget:0.00}, or a bandwidth or message-rate ratio is ≥ {ThroughputTarget:0.00}; ✘ otherwise.");
        md.AppendLine();
        foreach (var suite in run.Results.GroupBy(r => r.Suite).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            md.AppendLine($"## {suite.Key}");
            md.AppendLine();
            var impls = suite.Select(r => r.Impl).Distinct().OrderBy(RunData.ImplOrder).ThenBy(i => i, StringComparer.Ordinal).ToList();
            var others = impls.Where(i => i != "c").ToList();
            bool hasC = impls.Contains("c");
            var header = new List<string> { "case", "param", "metric" };
            header.AddRange(impls);
            if (hasC)
            {
                foreach (var o in others)
                    header.AddRange([$"{o} / c", $"{o} / c per round"]);
            }
            md.AppendLine("| " + string.Join(" | ", header) + " |");
            md.AppendLine("|" + string.Concat(Enumerable.Repeat("---|", header.Count)));
            var keys = suite.GroupBy(r => (r.Case, r.Param, r.Metric))
                .OrderBy(g => g.Key.Case, StringComparer.Ordinal)
                .ThenBy(g => g.Key.Metric, StringComparer.Ordinal)
                .ThenBy(g => g.Key.Param, Comparer<string>.Create(RunData.CompareParams));
            foreach (var g in keys)
            {
                string unit = g.First().Unit;
                var cells = new List<string> { g.Key.Case, g.Key.Param, Display(g.Key.Metric, unit) };
                foreach (var impl in impls)
                {
                    var v = g.Where(r => r.Impl == impl).Select(r => r.Value).ToList();
                    cells.Add(v.Count == 0 ? "" : $"{Format(RunData.Median(v))} ({Format(v.Min())}–{Format(v.Max())})");
                }
                if (hasC)
                {
                    foreach (var o in others)
                    {
                        var (ratio, low, high) = Ratios(g.ToList(), o);
                        cells.Add(double.IsNaN(ratio) ? "" : double.IsFinite(ratio) ? $"{ratio:0.000}{Mark(ratio, unit)}" : "n/a (c is 0)");
                        cells.Add(double.IsNaN(low) ? "" : double.IsFinite(low) && double.IsFinite(high) ? $"{low:0.000}–{high:0.000}" : "n/a");
                    }
                }
                md.AppendLine("| " + string.Join(" | ", cells) + " |");
            }
            md.AppendLine();
            foreach (var plot in plots.Where(p => p.Suite == suite.Key))
            {
                md.AppendLine($"![{plot.Title}]({plot.FileName})");
                md.AppendLine();
            }
        }
        return md.ToString();
    }

    /// <summary>The ratio of <paramref name="impl"/>'s median to C's, and the min and max of the per-round ratios.</summary>
    public static (double Ratio, double Low, double High) Ratios(IReadOnlyList<ResultRow> rows, string impl)
    {
        var c = rows.Where(r => r.Impl == "c").Select(r => r.Value).ToList();
        var o = rows.Where(r => r.Impl == impl).Select(r => r.Value).ToList();
        double ratio = c.Count == 0 || o.Count == 0 ? double.NaN : RunData.Median(o) / RunData.Median(c);
        var perRound = rows.GroupBy(r => r.Round)
            .Select(g => (C: g.Where(r => r.Impl == "c").Select(r => r.Value).ToList(), O: g.Where(r => r.Impl == impl).Select(r => r.Value).ToList()))
            .Where(p => p.C.Count > 0 && p.O.Count > 0)
            .Select(p => RunData.Median(p.O) / RunData.Median(p.C)).ToList();
        return (ratio, perRound.Count == 0 ? double.NaN : perRound.Min(), perRound.Count == 0 ? double.NaN : perRound.Max());
    }

    static string Mark(double ratio, string unit) =>
        !double.IsFinite(ratio) ? "" :
        LowerIsBetter.Contains(unit) ? (ratio <= LatencyTarget ? " ✔" : " ✘") :
        HigherIsBetter.Contains(unit) ? (ratio >= ThroughputTarget ? " ✔" : " ✘") : "";

    /// <summary>The metric's name with its unit; a <c>*_p99_us</c> metric reads as a 99th percentile.</summary>
    public static string Display(string metric, string unit) =>
        metric.EndsWith("_p99_us", StringComparison.Ordinal) ? $"{metric[..^"_p99_us".Length]} p99 (us)" : $"{metric} ({unit})";

    static string Format(double v) => v.ToString(Math.Abs(v) >= 100 ? "0.0" : Math.Abs(v) >= 1 ? "0.00" : "0.0000", CultureInfo.InvariantCulture);

    static string Escape(string s) => s.Replace("|", "\\|", StringComparison.Ordinal);
}
