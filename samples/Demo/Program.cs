// rdma-lease demo: a peer RDMA-writes into a persistent-memory file; another process truncates
// the file; the kernel breaks our lease, we tear the registration down and give the lease back,
// the truncate proceeds, and the peer's old key no longer reaches the file. Runs in the guest
// (./build.sh demo) on soft-RoCE (rxelo) and XFS with DAX (/mnt/xfs).
using System.Diagnostics;
using System.Net;
using System.Runtime.CompilerServices;
using RdmaLease.Leases;
using RdmaLease.Verbs;

const string DeviceName = "rxelo";
string path = args.Length > 0 ? args[0] : "/mnt/xfs/demo.pmem";
string probe = Path.GetFullPath("artifacts/native/rdmalease-lease-probe");
const int FileSize = 1 << 20, Chunk = 64 * 1024;
const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;

// ./build.sh aot publishes this program with NativeAOT too (no JIT: the break path is compiled ahead of time).
Console.WriteLine($"rdma-lease demo ({(RuntimeFeature.IsDynamicCodeCompiled ? "JIT" : "NativeAOT")})");
using var device = Device.Open(DeviceName);
var port = device.QueryPort();
Console.WriteLine($"  device {DeviceName} (driver {device.Driver}): {port.LinkLayer}, MTU {port.ActiveMtu.Bytes()}, ODP {device.Attributes.Odp.Rc}");
Console.WriteLine($"  ODP quirk: {device.OdpQuirk?.Describe(port.ActiveMtu) ?? "none"}");

// The file side: a DAX file, a lease, a leased (ODP) registration.
File.Delete(path);
var file = DaxFile.Open(path, new DaxFileOptions { Size = FileSize });
Console.WriteLine($"  {path}: {FileSize >> 10} KiB, FS-DAX {file.IsDax}, MAP_SYNC {file.IsMapSync}");
using var pd = device.AllocateProtectionDomain();
var lease = file.AcquireLease();
Console.WriteLine($"  lease: {lease.Mechanism} ({lease.Type}); the kernel's break deadline is {FileLease.LeaseBreakTime.TotalSeconds:F0} s");
var region = pd.Register(lease, Rw);
Console.WriteLine($"  registered {region.Length >> 10} KiB, {(region.IsOnDemand ? "On-Demand-Paging (nothing pinned)" : "pinned")}, rkey 0x{region.RemoteKey:x}");

// The peer side (another QP on the same device; in production, another machine).
using var cq = device.CreateCompletionQueue(64);
int gid = device.FindGidIndex(IPAddress.Loopback);
var options = new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq };
var peer = pd.CreateQueuePair(options);
var server = pd.CreateQueuePair(options);
peer.Connect(server.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.FlushPersistent });
server.Connect(peer.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.FlushPersistent });
using var source = pd.AllocateBuffer(Chunk, Rw);
var remote = region.ToRemote();   // what the peer was given out of band

for (int i = 0; i < Chunk; i++)
    source.Span[i] = (byte)(i * 7 + i / 251);
var sw = Stopwatch.StartNew();
peer.PostWrite(1, source.All, remote, 0);
peer.PostFlush(2, remote, 0, Chunk, FlushType.Persistent);
var completion = Wait(cq);
Console.WriteLine($"  peer: RDMA WRITE of {Chunk >> 10} KiB + FLUSH to persistence: {completion.Status} in {sw.Elapsed.TotalMilliseconds:F2} ms");
Console.WriteLine($"  file bytes match what the peer wrote: {file.GetSpan(0, Chunk).SequenceEqual(source.Span)}");

// Another process truncates the file: the kernel breaks the lease and blocks the truncate
// until we give the lease back (or the deadline passes).
using var broken = new ManualResetEventSlim();
LeaseBreakEventArgs? breakArgs = null;
lease.BreakRequested += (_, e) =>
{
    breakArgs = e;
    broken.Set();
};
Console.WriteLine("  another process: truncate(2) the file to 0 ...");
var truncate = Process.Start(new ProcessStartInfo(probe, $"truncate {path} 0") { RedirectStandardOutput = true })!;
string report = truncate.StandardOutput.ReadToEnd();
truncate.WaitForExit();
broken.Wait(TimeSpan.FromSeconds(10));
double truncateMs = double.Parse(report.Split("elapsed_ns=")[1], System.Globalization.CultureInfo.InvariantCulture) / 1e6;
Console.WriteLine($"  lease broken: registration revoked and deregistered, lease released {lease.BreakToRelease?.TotalMilliseconds:F2} ms after the signal (the first break in this process)");
if (breakArgs is { } b)
    Console.WriteLine($"    signal -> watcher {Stopwatch.GetElapsedTime(b.SignalTimestamp, b.ObservedTimestamp).TotalMilliseconds:F2} ms, watcher -> released {Stopwatch.GetElapsedTime(b.ObservedTimestamp, b.ReleasedTimestamp).TotalMilliseconds:F2} ms; the break path was compiled ahead in {LeaseDiagnostics.WarmupTime.TotalMilliseconds:F0} ms when the first lease was taken");
Console.WriteLine($"  the truncate returned ({report.Split(' ')[0]}) after {truncateMs:F2} ms, far below the {FileLease.LeaseBreakTime.TotalSeconds:F0} s deadline");

// Our own posts that name the file's region are refused at once...
try
{
    server.PostWrite(3, region.Slice(0, 4096), remote, 0);
}
catch (LeaseRevokedException e)
{
    Console.WriteLine($"  our post reading from the old region: refused with {e.GetType().Name}");
}
// ...and a peer that does not know yet: its write with the old rkey dies at the device, not in the file.
peer.PostWrite(4, source.Slice(0, 4096), remote, 0);
Console.WriteLine($"  the peer's next RDMA WRITE with the old rkey: {Wait(cq).Status}");
file.Dispose();

// After the conflicting operation: take the lease again and register again (the old QP went to
// the error state with the failed write; the peer reconnects).
using var again = DaxFile.Open(path, new DaxFileOptions { Size = FileSize });
using var lease2 = again.AcquireLease();
using var region2 = pd.Register(lease2, Rw);
using var cq2 = device.CreateCompletionQueue(64);
var options2 = options with { SendCompletionQueue = cq2, ReceiveCompletionQueue = cq2 };
var fresh = pd.CreateQueuePair(options2);
var freshTarget = pd.CreateQueuePair(options2);
fresh.Connect(freshTarget.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.FlushPersistent });
freshTarget.Connect(fresh.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.FlushPersistent });
fresh.PostWrite(5, source.All, region2.ToRemote(), 0);
var ok = Wait(cq2);
Console.WriteLine($"  re-leased and re-registered (rkey 0x{region2.RemoteKey:x}): peer write {ok.Status}, bytes match {again.GetSpan(0, Chunk).SequenceEqual(source.Span)}");
return ok.IsSuccess ? 0 : 1;

static WorkCompletion Wait(CompletionQueue cq)
{
    Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
    // Generous: under QEMU's emulation a fresh process's first ODP fault-in competes with its own JIT on one vCPU.
    var deadline = Environment.TickCount64 + 60_000;
    while (cq.Poll(wc) == 0)
    {
        if (Environment.TickCount64 > deadline)
            throw new TimeoutException("no completion within 60 s");
        Thread.Yield();   // one vCPU in the guest: leave it to rxe's kernel work
    }
    return wc[0];
}
