using System.Diagnostics;

namespace RdmaLease.Tests.Interop;

/// <summary>
/// The checked-in bindings are exactly what the generator makes of the same rdma-core headers:
/// regenerating (<c>./build.sh bindings</c>) would change nothing. The test runs the generator with
/// the checked-in options (tools/BindingsGenerator/generate.rsp) into a temporary directory and
/// compares every file byte for byte with src/Verbs/Interop/Generated.
/// </summary>
public class BindingsRegenerationTests
{
    const string CheckedIn = "src/Verbs/Interop/Generated";

    [Test]
    public void RegeneratingTheBindingsChangesNothing()
    {
        var headers = LayoutChecks.HeadersDir();
        // Built with the solution, in the same configuration as this test binary.
        string config = new DirectoryInfo(AppContext.BaseDirectory).Name;
        var generator = RepoPaths.File($"artifacts/bin/RdmaLease.BindingsGenerator/{config}/RdmaLease.BindingsGenerator.dll");
        Assert.That(File.Exists(generator), $"{generator} is missing: build the solution (./build.sh build)");

        using var output = new TempDir();
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "exec", generator, "@" + RepoPaths.File("tools/BindingsGenerator/generate.rsp"), "--headers-dir", headers, "--output", output.Path })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        Assert.That(p.WaitForExit(120_000), "the generator finished within 120 s");
        // A host without libclang or clang's builtin headers fails here, with the generator's message
        // naming the missing file and the Debian package (build.sh setup installs both).
        Assert.That(p.ExitCode, Is.Zero, $"the bindings generator failed:\n{stderr.Result}{stdout}");

        var fresh = GeneratedFiles(output.Path);
        var current = GeneratedFiles(RepoPaths.File(CheckedIn));
        var differences = new List<string>();
        foreach (var rel in fresh.Union(current).Order(StringComparer.Ordinal))
        {
            if (!current.Contains(rel)) differences.Add($"{rel}: would be added");
            else if (!fresh.Contains(rel)) differences.Add($"{rel}: would be deleted");
            else if (FirstDifferentLine(Path.Combine(output.Path, rel), RepoPaths.File(Path.Combine(CheckedIn, rel))) is int line)
                differences.Add($"{rel}: would change from line {line}");
        }
        Assert.That(differences, Is.Empty,
            $"regenerating from {headers} would change {CheckedIn}: run ./build.sh bindings and commit the result");
        Assert.That(current, Is.Not.Empty);
    }

    // What the generator owns in an output directory: every *.cs but the hand-written *.Manual.cs.
    static HashSet<string> GeneratedFiles(string dir) =>
        Directory.EnumerateFiles(dir, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.EndsWith(".Manual.cs", StringComparison.Ordinal))
            .Select(f => Path.GetRelativePath(dir, f))
            .ToHashSet(StringComparer.Ordinal);

    // The 1-based line of the first differing byte, or null when the files are identical.
    static int? FirstDifferentLine(string a, string b)
    {
        byte[] x = File.ReadAllBytes(a), y = File.ReadAllBytes(b);
        int common = x.AsSpan().CommonPrefixLength(y);
        if (common == x.Length && common == y.Length) return null;
        return x.AsSpan(0, common).Count((byte)'\n') + 1;
    }
}
