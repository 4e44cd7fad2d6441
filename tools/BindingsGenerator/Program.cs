using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using RdmaLease.BindingsGenerator;
using static RdmaLease.BindingsGenerator.Clang;

// RdmaLease.BindingsGenerator: C# bindings for rdma-core's headers, through libclang.
// Usage: RdmaLease.BindingsGenerator @generate.rsp --headers-dir DIR --output DIR
try
{
    return Run(Options.Parse(args));
}
catch (Exception e) when (e is ArgumentException or InvalidOperationException or NotSupportedException or IOException or DllNotFoundException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}

static unsafe int Run(Options opt)
{
    var version = VersionOf(opt.HeadersDir);
    var (clangVersion, resourceDir) = LoadLibClang(opt.LibClang);
    // Named in every generated file: the output depends on both, so a change of either shows in the diff.
    var tools = $"Generator: RdmaLease.BindingsGenerator {typeof(Generator).Assembly.GetName().Version!.ToString(3)}; libclang: {clangVersion}";
    var include = Path.Combine(opt.HeadersDir, "usr/include");
    var clangArgs = new List<string> { "-x", "c", "-std=gnu11", $"-resource-dir={resourceDir}", $"-I{include}/x86_64-linux-gnu", $"-I{include}" };
    clangArgs.AddRange(opt.ClangArgs);
    var main = string.Concat(opt.Headers.Select(h => $"#include <{h}>\n"));

    var index = clang_createIndex(0, 0);
    try
    {
        var tu = Parse(index, main, clangArgs, DetailedPreprocessingRecord | SkipFunctionBodies);
        var gen = new Generator(opt, tu, version, tools);
        gen.Collect();

        // Object-like macros: let clang evaluate each one as the initializer of a probe variable;
        // those that are not integer constant expressions (types, strings, function aliases) drop out.
        var probe = new StringBuilder(main);
        foreach (var (_, _, name) in gen.Macros)
            probe.Append(CultureInfo.InvariantCulture, $"static const __auto_type rl_probe__{name} = ({name});\n");
        var tu2 = Parse(index, probe.ToString(), clangArgs, SkipFunctionBodies, quiet: true);
        var values = new Dictionary<string, (string, string)>(StringComparer.Ordinal);
        foreach (var c in Children(clang_getTranslationUnitCursor(tu2)))
        {
            if (c.kind != CXCursorKind.VarDecl) continue;
            var n = Spelling(c);
            if (!n.StartsWith("rl_probe__", StringComparison.Ordinal)) continue;
            var type = clang_getCanonicalType(clang_getCursorType(c)).kind switch
            {
                CXTypeKind.Int => "int", CXTypeKind.UInt => "uint",
                CXTypeKind.Long or CXTypeKind.LongLong => "long", CXTypeKind.ULong or CXTypeKind.ULongLong => "ulong",
                _ => null,
            };
            if (type is null) continue;
            var e = clang_Cursor_Evaluate(c);
            if (e == 0) continue;
            try
            {
                if (clang_EvalResult_getKind(e) != EvalInt) continue;
                var v = type is "uint" or "ulong"
                    ? Generator.FormatUnsigned(clang_EvalResult_getAsUnsigned(e))
                    : clang_EvalResult_getAsLongLong(e).ToString(CultureInfo.InvariantCulture);
                values[n["rl_probe__".Length..]] = (type, v);
            }
            finally { clang_EvalResult_dispose(e); }
        }
        clang_disposeTranslationUnit(tu2);

        gen.Emit(values);
        foreach (var w in gen.Warnings) Console.Error.WriteLine($"warning: {w}");

        // Write, then drop generated files that no longer have a source (never *.Manual.cs).
        Directory.CreateDirectory(opt.Output);
        var written = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (rel, text) in gen.Files())
        {
            var path = Path.Combine(opt.Output, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            if (!File.Exists(path) || File.ReadAllText(path) != text) File.WriteAllText(path, text);
            written.Add(Path.GetFullPath(path));
        }
        foreach (var f in Directory.EnumerateFiles(opt.Output, "*.cs", SearchOption.AllDirectories))
            if (!f.EndsWith(".Manual.cs", StringComparison.Ordinal) && !written.Contains(Path.GetFullPath(f))) File.Delete(f);
        Console.WriteLine($"bindings: {written.Count} files in {opt.Output} (rdma-core {version})");
        clang_disposeTranslationUnit(tu);
        return 0;
    }
    finally { clang_disposeIndex(index); }
}

static unsafe nint Parse(nint index, string source, List<string> args, uint options, bool quiet = false)
{
    const string name = "rdma_lease_bindings.c";
    var ptrs = new List<nint>();
    nint Utf8(string s) { var p = Marshal.StringToCoTaskMemUTF8(s); ptrs.Add(p); return p; }
    try
    {
        var argv = stackalloc byte*[args.Count];
        for (var i = 0; i < args.Count; i++) argv[i] = (byte*)Utf8(args[i]);
        var file = new CXUnsavedFile { Filename = (byte*)Utf8(name), Contents = (byte*)Utf8(source), Length = (nuint)Encoding.UTF8.GetByteCount(source) };
        var tu = clang_parseTranslationUnit(index, (byte*)Utf8(name), argv, args.Count, &file, 1, options);
        if (tu == 0) throw new InvalidOperationException("libclang could not parse the headers");
        var errors = 0;
        for (uint i = 0; i < clang_getNumDiagnostics(tu); i++)
        {
            var d = clang_getDiagnostic(tu, i);
            var severity = clang_getDiagnosticSeverity(d);
            if (severity >= 3) errors++; // CXDiagnostic_Error
            if (!quiet && severity >= 2) Console.Error.WriteLine(Str(clang_formatDiagnostic(d, 0x1 | 0x2 | 0x4)));
            clang_disposeDiagnostic(d);
        }
        if (!quiet && errors > 0) throw new InvalidOperationException($"{errors} errors parsing the headers");
        return tu;
    }
    finally { foreach (var p in ptrs) Marshal.FreeCoTaskMem(p); }
}

// Loads libclang from the path generate.rsp names (no LD_LIBRARY_PATH needed) and finds clang's
// resource directory beside it: <libdir>/clang/<major>, whose include/ holds the builtin headers
// (stddef.h, stdint.h, ...) that glibc's headers include. Debian packages those apart from libclang
// (libclang-common-<major>-dev), so check for them here rather than fail on "'stddef.h' file not found".
static (string Version, string ResourceDir) LoadLibClang(string path)
{
    if (!File.Exists(path))
        throw new InvalidOperationException($"libclang is missing: {path} does not exist (Debian: apt-get install libclang1-16; ./build.sh setup installs it)");
    var handle = NativeLibrary.Load(path);
    NativeLibrary.SetDllImportResolver(typeof(Clang).Assembly, (name, _, _) => name == Clang.Lib ? handle : 0);
    var version = Str(clang_getClangVersion());
    var major = Regex.Match(version, @"version (\d+)\.");
    if (!major.Success) throw new InvalidOperationException($"cannot read the major version from libclang's '{version}'");
    var resourceDir = Path.Combine(Path.GetDirectoryName(path)!, "clang", major.Groups[1].Value);
    if (!File.Exists(Path.Combine(resourceDir, "include", "stddef.h")))
        throw new InvalidOperationException(
            $"clang's builtin headers are missing: {resourceDir}/include/stddef.h does not exist " +
            $"(Debian: apt-get install libclang-common-{major.Groups[1].Value}-dev; ./build.sh setup installs it)");
    return (version, resourceDir);
}

// The headers directory is named after the Debian version of libibverbs-dev (e.g. 56.1-1).
static string VersionOf(string headersDir)
{
    var debian = Path.GetFileName(Path.TrimEndingDirectorySeparator(headersDir));
    var upstream = debian.Split('-')[0];
    if (upstream.Length == 0 || !char.IsDigit(upstream[0]))
        throw new ArgumentException($"cannot read the rdma-core version from the headers directory name '{debian}' (expected e.g. 56.1-1)");
    return $"{upstream} (Debian package {debian})";
}
