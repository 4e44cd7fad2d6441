// The Program.cs of the fresh console project `./build.sh consumer` creates with `dotnet new console` and
// `dotnet add package RdmaLease.Leases` (a local folder feed of artifacts/packages). Not part of the solution:
// it only ever builds against the packages. Its guest test (tests/RdmaLease.Tests/Packaging/
// PackageConsumerGuestTests.cs) runs it on soft-RoCE with a file on XFS with DAX:
//
//   RdmaLease.PackageConsumer FILE [DEVICE]
using System.Net;
using System.Reflection;
using RdmaLease.Leases;
using RdmaLease.Verbs;

string path = args.Length > 0 ? args[0] : "/mnt/xfs/consumer.pmem";
string deviceName = args.Length > 1 ? args[1] : "rxelo";
const AccessFlags Access = AccessFlags.LocalWrite | AccessFlags.RemoteWrite;

foreach (var type in new[] { typeof(Device), typeof(DaxFile) })
    Console.WriteLine($"package: {type.Assembly.GetName().Name} {type.Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion}");

using var device = Device.Open(deviceName);
using var pd = device.AllocateProtectionDomain();
using var file = DaxFile.Open(path, new DaxFileOptions { Size = 1 << 20 });
using var lease = file.AcquireLease();
using var region = pd.Register(lease, Access);
Console.WriteLine($"file: FS-DAX {file.IsDax}; lease: {lease.Mechanism}; region: {region.Length} bytes, on-demand {region.IsOnDemand}");

// One RC queue pair connected to another on the same device writes a page into the leased file.
using var cq = device.CreateCompletionQueue(16);
var qpOptions = new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq };
using var writer = pd.CreateQueuePair(qpOptions);
using var target = pd.CreateQueuePair(qpOptions);
int gid = device.FindGidIndex(IPAddress.Loopback);
writer.Connect(target.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead });
target.Connect(writer.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead });
using var page = pd.AllocateBuffer(4096, Access);
Random.Shared.NextBytes(page.Span);
writer.PostWrite(7, page.All, region.ToRemote());
Span<WorkCompletion> done = stackalloc WorkCompletion[1];
long giveUp = Environment.TickCount64 + 10_000;
while (cq.Poll(done) == 0 && Environment.TickCount64 < giveUp) { }
Console.WriteLine($"rdma write: {done[0].Status}, file bytes match {file.GetSpan(0, 4096).SequenceEqual(page.Span)}");

// Where the native code came from: the package's runtimes/linux-x64/native, found through the .deps.json.
foreach (var lib in File.ReadLines("/proc/self/maps").Select(l => l.IndexOf('/') is var i and >= 0 ? l[i..] : "")
    .Where(p => p.Contains("/librdmalease_", StringComparison.Ordinal)).Distinct().Order(StringComparer.Ordinal))
    Console.WriteLine($"native: {lib}");
return done[0].IsSuccess ? 0 : 1;
