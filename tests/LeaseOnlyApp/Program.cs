// Uses only what RdmaLease.Leases offers without RDMA: a DAX file (map, write, flush) and a lease that another
// process breaks. Then reports which native libraries the process mapped, and only at the very end asks for
// libibverbs, to show what a verbs call would meet on this machine.
//
//   RdmaLease.LeaseOnlyApp FILE LEASE_PROBE [--allow-non-dax]
//
// LEASE_PROBE is artifacts/native/rdmalease-lease-probe (it truncates FILE, which breaks the lease).
using System.Diagnostics;
using System.Globalization;
using RdmaLease.Interop;
using RdmaLease.Leases;

if (args.Length < 2)
{
    Console.Error.WriteLine("usage: RdmaLease.LeaseOnlyApp FILE LEASE_PROBE [--allow-non-dax]");
    return 2;
}
string path = args[0], probe = args[1];
bool allowNonDax = args.Length > 2 && args[2] == "--allow-non-dax";

using var file = DaxFile.Open(path, new DaxFileOptions { Size = 1 << 16, AllowNonDax = allowNonDax });
Console.WriteLine($"file: FS-DAX {file.IsDax}, MAP_SYNC {file.IsMapSync}");
file.GetSpan(0, 4096).Fill(0x5a);
Console.WriteLine($"flush: {file.Flush(0, 4096)}");

using var lease = file.AcquireLease();
Console.WriteLine($"lease: {lease.Mechanism} ({lease.Type})");
// The process's first lease is granted only once the break path is compiled (WarmupTime is set when it is).
Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
    $"warm-up: done before the lease {LeaseDiagnostics.WarmupTime > TimeSpan.Zero} ({LeaseDiagnostics.WarmupTime.TotalMilliseconds:F0} ms)"));
var psi = new ProcessStartInfo(probe) { RedirectStandardOutput = true };
foreach (var a in new[] { "truncate", path, "0" })
    psi.ArgumentList.Add(a);
using (var truncate = Process.Start(psi)!)
{
    string report = truncate.StandardOutput.ReadToEnd();
    truncate.WaitForExit();
    bool observed = lease.Broken.WaitHandle.WaitOne(TimeSpan.FromSeconds(10));
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"break: observed {observed}, lease released {lease.BreakToRelease?.TotalMilliseconds:F2} ms after the signal; truncate {report.Split(' ')[0]}"));
}

var mapped = File.ReadLines("/proc/self/maps")
    .Select(l => l.IndexOf('/') is var i and >= 0 ? Path.GetFileName(l[i..]) : "")
    .Where(n => n.StartsWith("librdmalease", StringComparison.Ordinal) || n.StartsWith("libibverbs", StringComparison.Ordinal)
        || n.StartsWith("librdmacm", StringComparison.Ordinal))
    .Distinct().Order(StringComparer.Ordinal);
Console.WriteLine($"mapped: {string.Join(' ', mapped)}");

try
{
    NativeLibraries.EnsureLoaded();
    Console.WriteLine($"verbs: libibverbs loaded from {NativeLibraries.IbVerbsPath}");
}
catch (RdmaLibraryNotFoundException e)
{
    Console.WriteLine($"verbs: {e.GetType().Name}: {e.Message}");
}
return 0;
