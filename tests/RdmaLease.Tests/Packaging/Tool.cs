using System.Diagnostics;
using System.Text.RegularExpressions;

namespace RdmaLease.Tests.Packaging;

/// <summary>Runs the programs the packaging tests drive (readelf, git, build.sh, the sample programs) and reads ELF files.</summary>
internal static partial class Tool
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public string Output => Stdout + Stderr;
    }

    /// <summary>Runs <paramref name="file"/> with <paramref name="args"/>; fails the test when it does not end within the time.</summary>
    public static Result Run(string file, IEnumerable<string> args, string? workingDirectory = null, int timeoutMs = 120_000,
        IReadOnlyDictionary<string, string?>? environment = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? RepoPaths.Root,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string?>())
            psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish within {timeoutMs / 1000} s");
        }
        p.WaitForExit();
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Runs a command that must succeed and returns its standard output.</summary>
    public static string Output(string file, params string[] args)
    {
        var r = Run(file, args);
        Assert.That(r.ExitCode, Is.Zero, $"{file} {string.Join(' ', args)} failed: {r.Output}");
        return r.Stdout;
    }

    /// <summary>The DT_NEEDED entries of an ELF shared object (readelf -d).</summary>
    public static List<string> Needed(string elf) =>
        [.. NeededLine().Matches(Output("readelf", "-d", "-W", elf)).Select(m => m.Groups[1].Value)];

    /// <summary>The dynamic symbols an ELF file defines and the ones it needs from elsewhere (readelf --dyn-syms).</summary>
    public static (HashSet<string> Defined, HashSet<string> Undefined) DynamicSymbols(string elf)
    {
        HashSet<string> defined = new(StringComparer.Ordinal), undefined = new(StringComparer.Ordinal);
        foreach (var line in Output("readelf", "--dyn-syms", "-W", elf).Split('\n'))
        {
            // Num: Value Size Type Bind Vis Ndx Name
            var t = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (t.Length < 8 || !t[0].EndsWith(':') || t[7].Length == 0)
                continue;
            string name = t[7].Split('@')[0];
            (t[6] == "UND" ? undefined : defined).Add(name);
        }
        return (defined, undefined);
    }

    [GeneratedRegex(@"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")]
    private static partial Regex NeededLine();

    /// <summary>The configuration directory name of this test binary (release, debug): the sample programs are built alike.</summary>
    public static string Configuration => new DirectoryInfo(AppContext.BaseDirectory).Name;
}
