using System.Reflection;
using System.Runtime.InteropServices;
using RdmaLease.Interop;

namespace RdmaLease.Tests.Interop;

/// <summary>
/// The generated bindings against C: every struct's size, alignment and member offsets and every
/// enum and constant value, compiled as static assertions against rdma-core 56's headers (what the
/// bindings were generated from and the guest runs) and against the host's rdma-core 44 headers
/// (whose layouts must be a prefix of 56's: with an older library we must not read past its structs).
/// </summary>
public class LayoutConformanceTests
{
    [Test]
    public void BindingsMatchTheRdmaCore56Headers()
    {
        var dir = LayoutChecks.HeadersDir();
        var checks = LayoutChecks.All(sizeAtMost: false);
        var inc = Path.Combine(dir, "usr/include");
        var errors = LayoutChecks.Compile(checks, [Path.Combine(inc, "x86_64-linux-gnu"), inc], "rdma-core-56");
        Assert.That(errors.Select(e => e.Check is null ? e.Message : $"{e.Check.Condition}: {e.Message}"), Is.Empty,
            $"{errors.Count} of {checks.Count} layout checks failed against {dir}");
        Assert.That(checks, Has.Count.GreaterThan(1000));
    }

    [Test]
    public void HostRdmaCore44LayoutsAreAPrefixOfTheBindings()
    {
        if (!File.Exists("/usr/include/infiniband/verbs.h") || !File.Exists("/usr/include/rdma/rdma_cma.h"))
            Assert.Fail("the host's rdma-core headers are missing: apt-get install libibverbs-dev librdmacm-dev");
        var checks = LayoutChecks.All(sizeAtMost: true);
        var errors = LayoutChecks.Compile(checks, [], "host");
        var absent = new HashSet<LayoutCheck>();
        var failures = new List<string>();
        foreach (var (check, message) in errors)
        {
            if (check is null) failures.Add(message);
            else if (message.Contains("static assertion failed", StringComparison.Ordinal)) failures.Add($"{check.Condition}: {message}");
            else absent.Add(check); // a struct, member or constant the older headers do not have
        }
        // A member 44 lacks must not sit before one it has: older structs are a prefix.
        foreach (var record in checks.Where(c => !c.IsSize && c.Member.Length > 0 && !c.Record.StartsWith("enum ", StringComparison.Ordinal) && c.Record != "constants")
                     .GroupBy(c => c.Record))
        {
            var present = record.Where(c => !absent.Contains(c)).ToList();
            if (present.Count == 0) continue;
            var lastPresent = present.Max(c => c.Offset);
            foreach (var a in record.Where(c => absent.Contains(c) && c.Offset < lastPresent).DistinctBy(c => c.Member))
                failures.Add($"{record.Key}: {a.Member} (offset {a.Offset}) is missing in the host headers but lies before members they have");
        }
        Assert.That(failures, Is.Empty, "host rdma-core headers disagree with the bindings");
        var checkedCount = checks.Count - absent.Count;
        Assert.That(checkedCount, Is.GreaterThan(checks.Count * 3 / 4),
            $"only {checkedCount} of {checks.Count} checks apply to the host headers: are libibverbs-dev and librdmacm-dev installed?");
        TestContext.Out.WriteLine($"{checkedCount} of {checks.Count} checks apply to the host's rdma-core and pass");
    }

    [Test]
    public void EveryStructHasLayoutChecks()
    {
        var visited = new HashSet<Type>();
        var checks = LayoutChecks.All(sizeAtMost: false, visited);
        var missingRecord = LayoutChecks.Structs().Where(t => LayoutChecks.CName(t) is null).Select(t => t.Name);
        Assert.That(missingRecord, Is.Empty, "structs without [NativeRecord]: no C type to check them against");
        var nested = LayoutChecks.Structs()
            .SelectMany(AllNested)
            .Where(t => t.GetCustomAttribute<System.Runtime.CompilerServices.CompilerGeneratedAttribute>() is null)
            .Where(t => !visited.Contains(t))
            .Select(t => t.FullName);
        Assert.That(nested, Is.Empty, "nested structs no layout check reaches");
        var unchecked_ = LayoutChecks.Structs()
            .Where(t => t.GetFields(BindingFlags.Public | BindingFlags.Instance).Length > 0)
            .Where(t => !checks.Any(c => c.Record == LayoutChecks.CName(t) && c.Member.Length > 0))
            .Select(t => t.Name);
        Assert.That(unchecked_, Is.Empty, "structs with public fields but no member offset check");

        static IEnumerable<Type> AllNested(Type t) =>
            t.GetNestedTypes(BindingFlags.Public).Where(n => n.IsValueType).SelectMany(n => AllNested(n).Prepend(n));
    }

    [Test]
    public void StructsAreBlittableWithMatchingManagedAndMarshalledSizes()
    {
        var problems = new List<string>();
        foreach (var t in LayoutChecks.Structs())
        {
            if (LayoutChecks.ContainsReferences(t)) problems.Add($"{t.Name} contains references");
            var layout = t.StructLayoutAttribute?.Value;
            if (layout is not (LayoutKind.Sequential or LayoutKind.Explicit)) problems.Add($"{t.Name} has layout {layout}");
            var managed = LayoutChecks.SizeOf(t);
            var marshalled = Marshal.SizeOf(t);
            if (managed != marshalled) problems.Add($"{t.Name}: Unsafe.SizeOf {managed} != Marshal.SizeOf {marshalled}");
        }
        Assert.That(problems, Is.Empty);
    }

    [Test]
    public void SpotChecksOfWellKnownLayouts()
    {
        // Independent of the generator: values from the rdma-core 56 headers on x86_64.
        Assert.Multiple(() =>
        {
            Assert.That(LayoutChecks.SizeOf(typeof(ibv_gid)), Is.EqualTo(16));
            Assert.That(LayoutChecks.SizeOf(typeof(ibv_sge)), Is.EqualTo(16));
            Assert.That(Marshal.OffsetOf<ibv_send_wr>(nameof(ibv_send_wr.wr)), Is.EqualTo((nint)40));
            Assert.That((int)ibv_access_flags.IBV_ACCESS_ON_DEMAND, Is.EqualTo(1 << 6));
        });
    }
}
