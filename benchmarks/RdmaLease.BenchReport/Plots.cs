using System.Globalization;
using ScottPlot;

namespace RdmaLease.BenchReport;

/// <summary>A PNG written beside results.md, and the suite whose section links it.</summary>
sealed record Plot(string Suite, string FileName, string Title);

/// <summary>
/// The generic plots: for every (suite, case, metric) measured at more than two params, a curve of the median against the
/// param on a log2 axis, one line per impl (the bandwidth and registration-time curves); for every (suite, case) with
/// samples, a CDF, one line per impl and param (pooled over rounds).
/// </summary>
static class Plots
{
    const int Width = 900, Height = 540;

    public static List<Plot> Write(RunData run, string dir)
    {
        var plots = new List<Plot>();
        foreach (var g in run.Results.GroupBy(r => (r.Suite, r.Case, r.Metric)).OrderBy(g => g.Key.ToString(), StringComparer.Ordinal))
        {
            var numeric = g.Where(r => double.TryParse(r.Param, NumberStyles.Float, CultureInfo.InvariantCulture, out double p) && p > 0).ToList();
            if (numeric.Select(r => r.Param).Distinct().Count() <= 2)
                continue;
            string file = Safe($"{g.Key.Suite}-{g.Key.Case}-{g.Key.Metric}.png");
            string title = $"{g.Key.Suite} {g.Key.Case}: {Report.Display(g.Key.Metric, g.First().Unit)}, median over rounds";
            Curve(numeric, title, g.First().Unit, Path.Combine(dir, file));
            plots.Add(new Plot(g.Key.Suite, file, title));
        }
        foreach (var g in run.Samples.GroupBy(s => (s.Suite, s.Case)).OrderBy(g => g.Key.ToString(), StringComparer.Ordinal))
        {
            string file = Safe($"{g.Key.Suite}-{g.Key.Case}-cdf.png");
            string title = $"{g.Key.Suite} {g.Key.Case}: distribution of samples (CDF, all rounds)";
            Cdf(g.ToList(), title, Path.Combine(dir, file));
            plots.Add(new Plot(g.Key.Suite, file, title));
        }
        return plots;
    }

    static void Curve(List<ResultRow> rows, string title, string unit, string path)
    {
        var plot = new ScottPlot.Plot();
        var ticks = new ScottPlot.TickGenerators.NumericManual();
        foreach (var param in rows.Select(r => double.Parse(r.Param, CultureInfo.InvariantCulture)).Distinct().Order())
            ticks.AddMajor(Math.Log2(param), SizeLabel(param));
        foreach (var impl in rows.GroupBy(r => r.Impl).OrderBy(g => RunData.ImplOrder(g.Key)).ThenBy(g => g.Key, StringComparer.Ordinal))
        {
            var points = impl.GroupBy(r => double.Parse(r.Param, CultureInfo.InvariantCulture)).OrderBy(p => p.Key)
                .Select(p => (X: Math.Log2(p.Key), Y: RunData.Median(p.Select(r => r.Value).ToList()))).ToArray();
            var line = plot.Add.Scatter(points.Select(p => p.X).ToArray(), points.Select(p => p.Y).ToArray());
            line.LegendText = impl.Key;
            line.MarkerSize = 7;
        }
        plot.Axes.Bottom.TickGenerator = ticks;
        plot.Axes.Bottom.Label.Text = "message size (log2 scale)";
        plot.Axes.Left.Label.Text = unit;
        plot.Title(title);
        plot.ShowLegend(Alignment.UpperLeft);
        plot.SavePng(path, Width, Height);
    }

    static void Cdf(List<SampleRow> samples, string title, string path)
    {
        var plot = new ScottPlot.Plot();
        // A log10 x axis: the typical values and a tail of stalls orders of magnitude longer both stay readable.
        var positive = samples.Where(s => s.Value > 0).Select(s => s.Value).ToArray();
        int low = (int)Math.Floor(Math.Log10(positive.Min())), high = (int)Math.Ceiling(Math.Log10(positive.Max()));
        var ticks = new ScottPlot.TickGenerators.NumericManual();
        for (int e = low; e <= high; e++)
            ticks.AddMajor(e, Math.Pow(10, e).ToString("G", CultureInfo.InvariantCulture));
        foreach (var g in samples.GroupBy(s => (s.Impl, s.Param)).OrderBy(g => g.Key.Param, Comparer<string>.Create(RunData.CompareParams)).ThenBy(g => RunData.ImplOrder(g.Key.Impl)))
        {
            var values = g.Select(s => s.Value).Where(v => v > 0).Order().ToArray();
            var ys = Enumerable.Range(1, values.Length).Select(i => (double)i / values.Length).ToArray();
            values = values.Select(Math.Log10).ToArray();
            var line = plot.Add.ScatterLine(values, ys);
            line.LegendText = g.Key.Param.Length == 0 ? g.Key.Impl
                : $"{g.Key.Impl} {(double.TryParse(g.Key.Param, NumberStyles.Float, CultureInfo.InvariantCulture, out double p) ? SizeLabel(p) : g.Key.Param)}";
            line.MarkerSize = 0;
        }
        plot.Axes.Bottom.TickGenerator = ticks;
        plot.Axes.SetLimitsX(low, high);
        plot.Axes.SetLimitsY(0, 1.02);
        plot.Axes.Bottom.Label.Text = samples[0].Unit + " (log10 scale)";
        plot.Axes.Left.Label.Text = "fraction of samples ≤ x";
        plot.Title(title);
        plot.ShowLegend(Alignment.LowerRight);
        plot.SavePng(path, Width, Height);
    }

    /// <summary>64, 4 KiB, 1 MiB: a size in bytes as people write it; other numbers as they are.</summary>
    static string SizeLabel(double v) =>
        v >= 1 << 30 && v % (1 << 30) == 0 ? $"{v / (1 << 30)} GiB" :
        v >= 1 << 20 && v % (1 << 20) == 0 ? $"{v / (1 << 20)} MiB" :
        v >= 1 << 10 && v % (1 << 10) == 0 ? $"{v / (1 << 10)} KiB" : v.ToString(CultureInfo.InvariantCulture);

    static string Safe(string name) => string.Concat(name.Select(ch => char.IsLetterOrDigit(ch) || ch is '-' or '_' or '.' ? ch : '_'));
}
