using System.Globalization;

namespace RdmaLease.BenchReport;

/// <summary>One row of results.csv: suite,case,impl,param,round,metric,value,unit.</summary>
sealed record ResultRow(string Suite, string Case, string Impl, string Param, int Round, string Metric, double Value, string Unit);

/// <summary>One row of samples.csv: suite,case,impl,param,round,index,value,unit.</summary>
sealed record SampleRow(string Suite, string Case, string Impl, string Param, int Round, int Index, double Value, string Unit);

/// <summary>What one run of benchmarks/guest/run.sh left: its rows and its environment.txt (key: value lines, in order).</summary>
sealed class RunData
{
    public required IReadOnlyList<ResultRow> Results { get; init; }
    public required IReadOnlyList<SampleRow> Samples { get; init; }
    public required IReadOnlyList<KeyValuePair<string, string>> Environment { get; init; }

    public string? Env(string key) => Environment.FirstOrDefault(p => p.Key == key).Value;

    /// <exception cref="FormatException">A file is missing a column, a number or its header (file and line named).</exception>
    /// <exception cref="IOException">results.csv cannot be read.</exception>
    public static RunData Load(string dir)
    {
        string results = Path.Combine(dir, "results.csv");
        if (!File.Exists(results))
            throw new FileNotFoundException($"{results} does not exist: RUN_DIR must be the output directory of benchmarks/guest/run.sh", results);
        var rows = Read(results, "suite,case,impl,param,round,metric,value,unit",
            (f, where) => new ResultRow(f[0], f[1], f[2], f[3], Int(f[4], where), f[5], Number(f[6], where), f[7]));
        string samplesPath = Path.Combine(dir, "samples.csv");
        var samples = File.Exists(samplesPath)
            ? Read(samplesPath, "suite,case,impl,param,round,index,value,unit",
                (f, where) => new SampleRow(f[0], f[1], f[2], f[3], Int(f[4], where), Int(f[5], where), Number(f[6], where), f[7]))
            : [];
        string envPath = Path.Combine(dir, "environment.txt");
        var env = File.Exists(envPath)
            ? File.ReadAllLines(envPath).Select(l => l.Split(": ", 2)).Where(p => p.Length == 2)
                .Select(p => KeyValuePair.Create(p[0].Trim(), p[1].Trim())).ToList()
            : [];
        return new RunData { Results = rows, Samples = samples, Environment = env };
    }

    static List<T> Read<T>(string path, string header, Func<string[], string, T> parse)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || lines[0].Trim() != header)
            throw new FormatException($"{path}: the first line must be the header '{header}'");
        var list = new List<T>(lines.Length);
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0)
                continue;
            var fields = lines[i].Split(',');
            string where = $"{path}:{i + 1}";
            if (fields.Length != 8)
                throw new FormatException($"{where}: {fields.Length} fields, the header has 8 ('{lines[i]}')");
            list.Add(parse(fields, where));
        }
        return list;
    }

    static int Int(string s, string where) => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v)
        ? v : throw new FormatException($"{where}: '{s}' is not a whole number");

    static double Number(string s, string where) => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v)
        && double.IsFinite(v) ? v : throw new FormatException($"{where}: '{s}' is not a number (invariant culture, e.g. 12.5)");

    /// <summary>Sorts params numerically when they are numbers (sizes), else as text; empty first.</summary>
    public static int CompareParams(string a, string b)
    {
        bool na = double.TryParse(a, NumberStyles.Float, CultureInfo.InvariantCulture, out double x);
        bool nb = double.TryParse(b, NumberStyles.Float, CultureInfo.InvariantCulture, out double y);
        return na && nb ? x.CompareTo(y) : na != nb ? (na ? 1 : -1) : string.CompareOrdinal(a, b);
    }

    /// <summary>Impls in report order: c first, then cs, cs-aot, then any other by name.</summary>
    public static int ImplOrder(string impl) => impl switch { "c" => 0, "cs" => 1, "cs-aot" => 2, _ => 3 };

    public static double Median(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n == 0 ? double.NaN : n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }
}
