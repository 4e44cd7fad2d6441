// RdmaLease.BenchReport RUN_DIR OUT_DIR: benchmarks/guest/run.sh's results.csv, samples.csv and environment.txt (RUN_DIR)
// to OUT_DIR/results.md and PNG plots beside it (docs/benchmarks.md, "The contract"). Generic: it knows no suite.
using System.Globalization;
using RdmaLease.BenchReport;

if (args.Length != 2)
{
    Console.Error.WriteLine("usage: RdmaLease.BenchReport RUN_DIR OUT_DIR\n" +
        "  RUN_DIR holds results.csv, samples.csv and environment.txt from benchmarks/guest/run.sh;\n" +
        "  OUT_DIR receives results.md and the PNG plots (docs/benchmarks for the committed report)");
    return 2;
}
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
try
{
    var run = RunData.Load(args[0]);
    Directory.CreateDirectory(args[1]);
    var plots = Plots.Write(run, args[1]);
    string markdown = Report.Markdown(run, plots);
    File.WriteAllText(Path.Combine(args[1], "results.md"), markdown);
    Console.WriteLine($"BenchReport: {run.Results.Count} result rows, {run.Samples.Count} samples -> {Path.Combine(args[1], "results.md")}, {plots.Count} plots");
    return 0;
}
catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
{
    Console.Error.WriteLine("BenchReport: " + e.Message);
    return 1;
}
