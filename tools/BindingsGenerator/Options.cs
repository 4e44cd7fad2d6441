namespace RdmaLease.BindingsGenerator;

/// <summary>
/// The generator's options, read from response files (one option and its value per line,
/// '#' starts a comment) and the command line. See generate.rsp for what each one means.
/// </summary>
internal sealed class Options
{
    public string HeadersDir = "";
    public string Output = "";
    public string Namespace = "RdmaLease.Interop";
    /// <summary>The accessibility of the top-level types (public or internal).</summary>
    public string Accessibility = "public";
    /// <summary>libclang's shared library (libclang.so.1 of an LLVM install).</summary>
    public string LibClang = "";
    public readonly List<string> Headers = [];
    public readonly HashSet<string> Traverse = new(StringComparer.Ordinal);
    /// <summary>Header path prefix → (library name for LibraryImport, class holding functions and constants).</summary>
    public readonly List<(string Prefix, string Library, string Class)> Libraries = [];
    public readonly Dictionary<string, string> Remap = new(StringComparer.Ordinal);
    public readonly HashSet<string> Opaque = new(StringComparer.Ordinal);
    public readonly HashSet<string> Exclude = new(StringComparer.Ordinal);
    public readonly List<string> ClangArgs = [];
    public bool SetLastError;

    public static Options Parse(IEnumerable<string> args)
    {
        var o = new Options();
        var queue = new Queue<string>(Expand(args));
        string Next(string opt) => queue.Count > 0 ? queue.Dequeue() : throw new ArgumentException($"{opt} needs a value");
        while (queue.Count > 0)
        {
            var a = queue.Dequeue();
            switch (a)
            {
                case "--headers-dir": o.HeadersDir = Path.GetFullPath(Next(a)); break;
                case "--output": o.Output = Path.GetFullPath(Next(a)); break;
                case "--namespace": o.Namespace = Next(a); break;
                case "--accessibility":
                    o.Accessibility = Next(a);
                    if (o.Accessibility is not ("public" or "internal")) throw new ArgumentException($"--accessibility {o.Accessibility}: expected public or internal");
                    break;
                case "--libclang": o.LibClang = Next(a); break;
                case "--header": o.Headers.Add(Next(a)); break;
                case "--traverse": o.Traverse.Add(Next(a)); break;
                case "--library":
                    {
                        // --library PREFIX=LIBRARY:CLASS
                        var v = Next(a); var eq = v.IndexOf('='); var colon = v.IndexOf(':', eq + 1);
                        if (eq < 0 || colon < 0) throw new ArgumentException($"--library {v}: expected PREFIX=LIBRARY:CLASS");
                        o.Libraries.Add((v[..eq], v[(eq + 1)..colon], v[(colon + 1)..]));
                        break;
                    }
                case "--remap":
                    {
                        var v = Next(a); var eq = v.IndexOf('=');
                        if (eq < 0) throw new ArgumentException($"--remap {v}: expected CNAME=CSTYPE");
                        o.Remap[v[..eq]] = v[(eq + 1)..];
                        break;
                    }
                case "--opaque": o.Opaque.Add(Next(a)); break;
                case "--exclude": o.Exclude.Add(Next(a)); break;
                case "--clang-arg": o.ClangArgs.Add(Next(a)); break;
                case "--set-last-error": o.SetLastError = true; break;
                default: throw new ArgumentException($"unknown option '{a}'");
            }
        }
        if (o.HeadersDir.Length == 0 || !Directory.Exists(Path.Combine(o.HeadersDir, "usr/include")))
            throw new ArgumentException($"--headers-dir must name a directory with usr/include inside (got '{o.HeadersDir}')");
        if (o.Output.Length == 0) throw new ArgumentException("--output is required");
        if (o.LibClang.Length == 0) throw new ArgumentException("--libclang is required");
        if (o.Headers.Count == 0) throw new ArgumentException("at least one --header is required");
        return o;
    }

    // @file arguments expand to the file's lines (options and values separated by the first space).
    private static IEnumerable<string> Expand(IEnumerable<string> args)
    {
        foreach (var a in args)
        {
            if (!a.StartsWith('@')) { yield return a; continue; }
            foreach (var raw in File.ReadAllLines(a[1..]))
            {
                var line = raw.Trim();
                if (line.Length == 0 || line.StartsWith('#')) continue;
                var sp = line.IndexOf(' ');
                if (sp < 0) { yield return line; continue; }
                yield return line[..sp];
                yield return line[(sp + 1)..].Trim();
            }
        }
    }

    public (string Library, string Class) LibraryFor(string header)
    {
        (string, string)? best = null; var bestLen = -1;
        foreach (var (prefix, lib, cls) in Libraries)
            if (header.StartsWith(prefix, StringComparison.Ordinal) && prefix.Length > bestLen) { best = (lib, cls); bestLen = prefix.Length; }
        return best ?? throw new InvalidOperationException($"no --library covers {header}");
    }
}
