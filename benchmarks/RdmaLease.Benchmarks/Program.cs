// rdma-lease benchmarks. `interop DEVICE ITERATIONS`: the per-call costs of docs/interop.md,
// measured the same way as benchmarks/c/verbs_cost.c so both run in one guest (./build.sh bench)
// and only ratios are compared (the guest runs under TCG emulation).
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs;

if (args.Length != 3 || args[0] != "interop")
{
    Console.Error.WriteLine("usage: RdmaLease.Benchmarks interop DEVICE ITERATIONS");
    return 2;
}
// This assembly imports the verbs shim itself (below): through the library's one resolver, like every rdma-lease load.
NativeLibraries.RegisterResolver(typeof(InteropCost).Assembly, NativeLibraries.VerbsShimInfo);
InteropCost.Run(args[1], long.Parse(args[2], CultureInfo.InvariantCulture));
return 0;

static unsafe partial class InteropCost
{
    // The shim's poll without SuppressGCTransition, to price the GC transition itself.
    [LibraryImport(NativeLibraries.VerbsShim, EntryPoint = "RdmaLeaseNative_PollCq")]
    private static partial int PollCqWithTransition(ibv_cq* cq, int n, ibv_wc* wc);

    static void Report(string name, long calls, long ticks) =>
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"cs {name} {ticks * 1e9 / Stopwatch.Frequency / calls:F1}"));

    public static void Run(string deviceName, long iterations)
    {
        using var device = Device.Open(deviceName);
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(256);
        var options = new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq };
        using var a = pd.CreateQueuePair(options);
        using var b = pd.CreateQueuePair(options);
        int gid = device.FindGidIndex(IPAddress.Loopback);
        a.Connect(b.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid });
        b.Connect(a.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid });
        using var buffer = pd.AllocateBuffer(8192, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);

        var wc = new WorkCompletion[8];
        long polls = iterations * 100;
        ibv_cq* raw = cq.Cq;
        ibv_wc* rawWc = stackalloc ibv_wc[8];
        var providerPoll = raw->context->ops.poll_cq;
        var providerPollNoTransition = (delegate* unmanaged[SuppressGCTransition]<ibv_cq*, int, ibv_wc*, int>)providerPoll;

        for (int round = 0; round < 2; round++)   // the first round warms up the JIT tiers
        {
            bool report = round == 1;
            long sum = 0;   // every poll's result is used; an empty CQ must give 0
            long t = Stopwatch.GetTimestamp();
            for (long i = 0; i < polls; i++)
                sum += cq.Poll(wc);
            if (report) Report("poll-empty CompletionQueue.Poll (safe layer)", polls, Stopwatch.GetTimestamp() - t);

            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < polls; i++)
                sum += RdmaLeaseNative.PollCq(raw, 8, rawWc);
            if (report) Report("poll-empty shim P/Invoke, SuppressGCTransition", polls, Stopwatch.GetTimestamp() - t);

            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < polls; i++)
                sum += PollCqWithTransition(raw, 8, rawWc);
            if (report) Report("poll-empty shim P/Invoke, with GC transition", polls, Stopwatch.GetTimestamp() - t);

            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < polls; i++)
                sum += providerPoll(raw, 8, rawWc);
            if (report) Report("poll-empty provider pointer from C#, with GC transition", polls, Stopwatch.GetTimestamp() - t);

            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < polls; i++)
                sum += providerPollNoTransition(raw, 8, rawWc);
            if (report) Report("poll-empty provider pointer from C#, SuppressGCTransition", polls, Stopwatch.GetTimestamp() - t);

            if (sum != 0)
                throw new InvalidOperationException($"an empty CQ returned completions ({sum})");
            var source = buffer.Slice(0, 8);
            var target = buffer.ToRemote();
            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < iterations; i++)
            {
                a.PostWrite((ulong)i, source, target, 4096);
                int n;
                while ((n = cq.Poll(wc)) == 0) { }
                if (n != 1 || !wc[0].IsSuccess)
                    throw new InvalidOperationException(wc[0].ToString());
            }
            if (report) Report("write-roundtrip QueuePair.PostWrite + Poll (safe layer)", iterations, Stopwatch.GetTimestamp() - t);
        }
        GC.KeepAlive(cq);
    }
}
