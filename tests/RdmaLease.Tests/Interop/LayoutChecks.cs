using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using RdmaLease.Interop;

namespace RdmaLease.Tests.Interop;

/// <summary>One C static assertion derived from the C# bindings.</summary>
internal sealed record LayoutCheck(string Record, string Member, long Offset, string Condition, bool IsSize);

/// <summary>
/// Reflects over the generated bindings (RdmaLease.Interop) and writes C static assertions
/// for every struct (size, alignment, offset and size of every member, nested anonymous members
/// included), every enum (size and member values) and every integer constant; compiles them
/// against a set of rdma-core headers with <c>cc -fsyntax-only</c>.
/// </summary>
internal static class LayoutChecks
{
    public static readonly Assembly Bindings = typeof(NativeLibraries).Assembly;

    public static IEnumerable<Type> Structs() => Bindings.GetTypes()
        .Where(t => t.Namespace == "RdmaLease.Interop" && t.IsValueType && !t.IsEnum && !t.IsNested)
        .OrderBy(t => t.Name, StringComparer.Ordinal);

    public static IEnumerable<Type> Enums() => Bindings.GetTypes()
        .Where(t => t.Namespace == "RdmaLease.Interop" && t.IsEnum && !t.IsNested)
        .OrderBy(t => t.Name, StringComparer.Ordinal);

    public static IEnumerable<FieldInfo> Constants() =>
        new[] { typeof(libibverbs), typeof(librdmacm) }
            .SelectMany(c => c.GetFields(BindingFlags.Public | BindingFlags.Static))
            .Where(f => f.IsLiteral)
            .OrderBy(f => f.Name, StringComparer.Ordinal);

    public static string? CName(Type t) => t.GetCustomAttribute<NativeRecordAttribute>()?.CSpelling;

    /// <summary>Checks for every struct, enum and constant. <paramref name="sizeAtMost"/> asserts
    /// sizeof(C) &lt;= the C# size instead of equality (older headers: a prefix).</summary>
    public static List<LayoutCheck> All(bool sizeAtMost, HashSet<Type>? visited = null)
    {
        var checks = new List<LayoutCheck>();
        foreach (var t in Structs())
        {
            var c = CName(t);
            if (c is null) continue;
            visited?.Add(t);
            var size = SizeOf(t);
            checks.Add(new(c, "", 0, $"sizeof({c}) {(sizeAtMost ? "<=" : "==")} {size}", true));
            checks.Add(new(c, "", 0, $"_Alignof({c}) == {AlignOf(t)}", true));
            Walk(t, c, "", 0, checks, visited);
        }
        foreach (var e in Enums())
        {
            var u = Enum.GetUnderlyingType(e);
            checks.Add(new($"enum {e.Name}", "", 0, $"sizeof(enum {e.Name}) == {Marshal.SizeOf(u)}", true));
            foreach (var f in e.GetFields(BindingFlags.Public | BindingFlags.Static))
                checks.Add(new($"enum {e.Name}", f.Name, 0, ValueCondition(f.Name, f.GetRawConstantValue()!), false));
        }
        foreach (var f in Constants())
            checks.Add(new("constants", f.Name, 0, ValueCondition(f.Name, f.GetRawConstantValue()!), false));
        return checks;
    }

    private static string ValueCondition(string name, object value) => value switch
    {
        ulong u => $"(unsigned long long)({name}) == {u}ULL",
        uint u => $"(unsigned long long)({name}) == {u}ULL",
        ushort u => $"(unsigned long long)({name}) == {u}ULL",
        byte u => $"(unsigned long long)({name}) == {u}ULL",
        _ => $"(long long)({name}) == {Convert.ToInt64(value, CultureInfo.InvariantCulture)}LL",
    };

    private static void Walk(Type t, string record, string prefix, long baseOffset, List<LayoutCheck> checks, HashSet<Type>? visited)
    {
        foreach (var f in t.GetFields(BindingFlags.Public | BindingFlags.Instance))
        {
            var offset = baseOffset + Marshal.OffsetOf(t, f.Name).ToInt64();
            if (f.Name.StartsWith("_bitfield", StringComparison.Ordinal)) continue; // offsetof() cannot name bitfields
            var ft = f.FieldType;
            var nested = ft.IsNested && IsGenerated(ft) && !IsFixedBuffer(f);
            if (nested) visited?.Add(ft);
            if (nested && f.Name.StartsWith("Anonymous", StringComparison.Ordinal))
            {
                Walk(ft, record, prefix, offset, checks, visited); // C11 anonymous member: its members are the parent's
                continue;
            }
            var path = prefix + f.Name;
            checks.Add(new(record, path, offset, $"offsetof({record}, {path}) == {offset}", false));
            checks.Add(new(record, path, offset, $"sizeof((({record} *)0)->{path}) == {FieldSize(f)}", false));
            if (nested && ft.Name.EndsWith("_array", StringComparison.Ordinal))
            {
                foreach (var e in ft.GetFields(BindingFlags.Public | BindingFlags.Instance))
                {
                    var o = offset + Marshal.OffsetOf(ft, e.Name).ToInt64();
                    var p = $"{path}[{e.Name[1..]}]";
                    checks.Add(new(record, p, o, $"offsetof({record}, {p}) == {o}", false));
                }
            }
            else if (nested) Walk(ft, record, path + ".", offset, checks, visited);
        }
    }

    private static bool IsGenerated(Type t) => t.Assembly == Bindings && t.Namespace == "RdmaLease.Interop";
    private static bool IsFixedBuffer(FieldInfo f) => f.GetCustomAttribute<FixedBufferAttribute>() is not null;

    private static long FieldSize(FieldInfo f)
    {
        var t = f.FieldType;
        if (t.IsPointer || t.IsFunctionPointer || t.IsUnmanagedFunctionPointer) return IntPtr.Size;
        return SizeOf(t);
    }

    private static readonly MethodInfo SizeOfMethod = typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!;
    private static readonly MethodInfo AlignMethod = typeof(LayoutChecks).GetMethod(nameof(AlignOfCore), BindingFlags.NonPublic | BindingFlags.Static)!;
    private static readonly MethodInfo ContainsRefsMethod = typeof(RuntimeHelpers).GetMethod(nameof(RuntimeHelpers.IsReferenceOrContainsReferences))!;

    public static int SizeOf(Type t) => (int)SizeOfMethod.MakeGenericMethod(t).Invoke(null, null)!;
    public static int AlignOf(Type t) => (int)AlignMethod.MakeGenericMethod(t).Invoke(null, null)!;
    public static bool ContainsReferences(Type t) => (bool)ContainsRefsMethod.MakeGenericMethod(t).Invoke(null, null)!;

    [StructLayout(LayoutKind.Sequential)]
    private struct AlignProbe<T> where T : unmanaged
    {
        public byte Pad;
        public T Value;
    }

    private static int AlignOfCore<T>() where T : unmanaged
    {
        var probe = default(AlignProbe<T>);
        return (int)Unsafe.ByteOffset(ref Unsafe.As<AlignProbe<T>, byte>(ref probe), ref Unsafe.As<T, byte>(ref probe.Value));
    }

    // --- compiling ------------------------------------------------------------------------------

    /// <summary>The rdma-core headers directory (with usr/include inside) the tests check against.</summary>
    public static string HeadersDir()
    {
        var env = Environment.GetEnvironmentVariable("RDMA_LEASE_RDMA_HEADERS");
        if (!string.IsNullOrWhiteSpace(env)) return RequireHeaders(env, "RDMA_LEASE_RDMA_HEADERS");
        var cache = Environment.GetEnvironmentVariable("RDMA_LEASE_CACHE");
        if (string.IsNullOrWhiteSpace(cache))
        {
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            cache = Path.Combine(string.IsNullOrWhiteSpace(xdg) ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache") : xdg, "rdma-lease");
        }
        var current = Path.Combine(cache, "rdma-core", "current");
        if (!File.Exists(current))
            throw new InvalidOperationException($"no rdma-core headers: set RDMA_LEASE_RDMA_HEADERS, or run ./build.sh setup (it writes {current})");
        return RequireHeaders(File.ReadAllText(current).Trim(), current);
    }

    private static string RequireHeaders(string dir, string from) =>
        File.Exists(Path.Combine(dir, "usr/include/infiniband/verbs.h"))
            ? dir
            : throw new InvalidOperationException($"{from} names '{dir}', which has no usr/include/infiniband/verbs.h");

    /// <summary>The compiler's errors, by the check they are about (null: not on a check line).</summary>
    public static List<(LayoutCheck? Check, string Message)> Compile(IReadOnlyList<LayoutCheck> checks, IEnumerable<string> includeDirs, string tag)
    {
        var sb = new StringBuilder();
        sb.Append("#include <stddef.h>\n#include <infiniband/verbs.h>\n#include <rdma/rdma_cma.h>\n");
        const int firstLine = 4;
        foreach (var c in checks) sb.Append(CultureInfo.InvariantCulture, $"_Static_assert({c.Condition}, \"{c.Record} {c.Member}\");\n");
        var dir = Path.Combine(Path.GetTempPath(), $"rdma-lease-layout-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        var file = Path.Combine(dir, $"{tag}.c");
        File.WriteAllText(file, sb.ToString());
        var psi = new ProcessStartInfo("cc") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "-fsyntax-only", "-std=gnu11", "-fmax-errors=0", "-w" }) psi.ArgumentList.Add(a);
        foreach (var d in includeDirs) psi.ArgumentList.Add($"-I{d}");
        psi.ArgumentList.Add(file);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start cc");
        var stderrTask = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        var errors = new List<(LayoutCheck?, string)>();
        foreach (var line in stderrTask.Result.Split('\n'))
        {
            if (!line.StartsWith(file + ":", StringComparison.Ordinal) || !line.Contains(": error: ", StringComparison.Ordinal)) continue;
            var rest = line[(file.Length + 1)..];
            var n = int.Parse(rest[..rest.IndexOf(':', StringComparison.Ordinal)], CultureInfo.InvariantCulture);
            var idx = n - firstLine;
            errors.Add((idx >= 0 && idx < checks.Count ? checks[idx] : null, rest[(rest.IndexOf(": error: ", StringComparison.Ordinal) + 9)..]));
        }
        if (p.ExitCode != 0 && errors.Count == 0)
            throw new InvalidOperationException($"cc failed without a parsable error:\n{stderrTask.Result}");
        return errors;
    }
}
