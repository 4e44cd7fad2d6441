// rdma-lease benchmarks. `interop DEVICE ITERATIONS`: the per-call costs of docs/interop.md,
// measured the same way as benchmarks/c/verbs_cost.c so both run in one guest (./build.sh bench)
// and only ratios are compared (the guest runs under TCG emulation); then the per-post cost of the
// ODP quirk (docs/known-defects.md), on the same device opened with and without it.
// `grants DEVICE ITERATIONS [DIRECTORY]`: memory-window grants against registrations (GrantCost.cs).
// `net TEST ...`: the twins of perftest's ib_send_lat, ib_write_lat, ib_write_bw (NetTwin.cs; benchmarks/guest/suites/net.sh).
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs;

if (args.Length > 0 && args[0] == "net")
{
    NativeLibraries.RegisterResolver(typeof(InteropCost).Assembly, NativeLibraries.VerbsShimInfo);
    return NetTwin.Run(args[1..]);
}
bool interop = args.Length == 3 && args[0] == "interop";
bool grants = args.Length is 3 or 4 && args[0] == "grants";
if (!interop && !grants)
{
    Console.Error.WriteLine("usage: RdmaLease.Benchmarks interop DEVICE ITERATIONS\n" +
        "       RdmaLease.Benchmarks grants DEVICE ITERATIONS [DIRECTORY on FS-DAX, default /mnt/xfs]\n" +
        "       " + NetTwin.Usage);
    return 2;
}
// This assembly imports the verbs shim itself (below): through the library's one resolver, like every rdma-lease load.
NativeLibraries.RegisterResolver(typeof(InteropCost).Assembly, NativeLibraries.VerbsShimInfo);
if (interop)
    InteropCost.Run(args[1], long.Parse(args[2], CultureInfo.InvariantCulture));
else
    GrantCost.Run(args[1], int.Parse(args[2], CultureInfo.InvariantCulture), args.Length == 4 ? args[3] : "/mnt/xfs");
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
        using var cqx = device.CreateCompletionQueue(new CompletionQueueOptions { Entries = 256, Extended = true });
        var (a, b) = LoopbackPair(pd, cq, pathMtu: null);
        var (ax, bx) = LoopbackPair(pd, cqx, pathMtu: null);
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

            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < polls; i++)
                sum += cqx.Poll(wc);
            if (report) Report("poll-empty CompletionQueue.Poll, extended CQ (safe layer)", polls, Stopwatch.GetTimestamp() - t);

            ibv_cq_ex* rawEx = (ibv_cq_ex*)cqx.Cq;
            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < polls; i++)
                sum += RdmaLeaseNative.PollCqEx(rawEx, 8, rawWc);
            if (report) Report("poll-empty shim PollCqEx (start/next/end poll), SuppressGCTransition", polls, Stopwatch.GetTimestamp() - t);

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

            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < iterations; i++)
            {
                ax.PostWrite((ulong)i, source, target, 4096);
                int n;
                while ((n = cqx.Poll(wc)) == 0) { }
                if (n != 1 || !wc[0].IsSuccess)
                    throw new InvalidOperationException(wc[0].ToString());
            }
            if (report) Report("write-roundtrip QueuePair.PostWrite + Poll, extended CQ (safe layer)", iterations, Stopwatch.GetTimestamp() - t);

            long batches = Math.Max(iterations / 20, 10);
            if (report) Report("poll-8-ready CompletionQueue.Poll, per completion", batches * 8, PollReady(a, cq, source, target, wc, batches));
            if (report) Report("poll-8-ready CompletionQueue.Poll, extended CQ, per completion", batches * 8, PollReady(ax, cqx, source, target, wc, batches));
            if (report) Report("post-8-writes QueuePair.PostWrite x8 (8 ibv_post_send), per request", batches * 8, PostEight(a, cq, source, target, wc, batches, batched: false));
            if (report) Report("post-8-writes SendBatch of 8 (StartPost, 8 Write, one ibv_post_send), per request", batches * 8, PostEight(a, cq, source, target, wc, batches, batched: true));

            t = Stopwatch.GetTimestamp();
            for (long i = 0; i < iterations; i++)
            {
                var batch = a.StartPost();
                batch.Write((ulong)i, source, target, 4096);
                batch.Post();
                int n;
                while ((n = cq.Poll(wc)) == 0) { }
                if (n != 1 || !wc[0].IsSuccess)
                    throw new InvalidOperationException(wc[0].ToString());
            }
            if (report) Report("write-roundtrip SendBatch of 1 (StartPost, Write, Post) + Poll (safe layer)", iterations, Stopwatch.GetTimestamp() - t);

            foreach (var (length, cycles, size) in new[] { (65536, batches, "64 KiB"), (16 << 20, Math.Max(batches / 20, 5), "16 MiB") })
            {
                var (bindTicks, invalidateTicks, deregTicks, regTicks) = Windows(pd, b, cq, cycles, length);
                if (report)
                {
                    Report($"mw-bind type 2 window over a {size} region, post to completion", cycles, bindTicks);
                    Report($"mw-local-invalidate of it, post to completion (revokes the peer's access)", cycles, invalidateTicks);
                    Report($"mr-register {size} pinned (ibv_reg_mr)", cycles, regTicks);
                    Report($"mr-deregister {size} pinned (MemoryRegion.Dispose: ibv_dereg_mr)", cycles, deregTicks);
                }
            }
        }
        GC.KeepAlive(cq);
        GC.KeepAlive(bx);
        OdpQuirkCost(deviceName, iterations);
    }

    /// <summary>Two RC queue pairs in <paramref name="pd"/> connected to each other over 127.0.0.1 (disposed with the PD).</summary>
    internal static (QueuePair A, QueuePair B) LoopbackPair(ProtectionDomain pd, CompletionQueue cq, Mtu? pathMtu)
    {
        var options = new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq };
        var a = pd.CreateQueuePair(options);
        var b = pd.CreateQueuePair(options);
        int gid = pd.Device.FindGidIndex(IPAddress.Loopback);
        var connect = new ConnectOptions { GidIndex = gid, PathMtu = pathMtu, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic };
        a.Connect(b.LocalEndpoint(gid), connect);
        b.Connect(a.LocalEndpoint(gid), connect);
        return (a, b);
    }

    /// <summary>
    /// What the post path pays for the ODP quirk: the step every PostWrite/PostRead runs before building its work request
    /// (QueuePair.TransferLimit), and whole 8-byte RDMA WRITE round trips from an ODP region, on DEVICE opened with its
    /// quirk (rxe: Auto) and with none (Off: what a device without a quirk pays), at path MTU 4096. The two are measured
    /// alternately, so load from outside the guest falls on both alike.
    /// </summary>
    static void OdpQuirkCost(string deviceName, long iterations)
    {
        using var off = new QuirkRig(deviceName, OdpQuirkMode.Off);
        using var on = new QuirkRig(deviceName, OdpQuirkMode.Auto);
        QuirkRig[] rigs = [off, on];
        const int Repeats = 5;   // the fastest of 5 runs of the step: load from outside only ever adds time
        long checks = iterations * 20;
        var wc = new WorkCompletion[8];
        for (int round = 0; round < 2; round++)   // the first round warms up the JIT tiers (and faults the ODP page in)
        {
            bool report = round == 1;
            foreach (bool odp in new[] { false, true })
            {
                var best = new long[rigs.Length];
                Array.Fill(best, long.MaxValue);
                long sum = 0;
                for (int r = 0; r < Repeats; r++)
                {
                    for (int k = 0; k < rigs.Length; k++)
                    {
                        var source = (odp ? rigs[k].Odp : rigs[k].Pinned).Slice(0, 8);
                        long t = Stopwatch.GetTimestamp();
                        for (long i = 0; i < checks; i++)
                            sum += rigs[k].A.TransferLimit(ibv_wr_opcode.IBV_WR_RDMA_WRITE, source, 0);
                        best[k] = Math.Min(best[k], Stopwatch.GetTimestamp() - t);
                    }
                }
                if (sum != Repeats * rigs.Length * checks * (long)OdpIntegrityResult.Unlimited)
                    throw new InvalidOperationException($"an 8-byte aligned transfer was limited ({sum})");
                for (int k = 0; report && k < rigs.Length; k++)
                    Report($"odp-quirk post-path step (QueuePair.TransferLimit), {(odp ? "ODP" : "pinned")} source, {rigs[k].Label}", checks, best[k]);
            }
            var total = new long[rigs.Length];
            const int Chunks = 10;
            for (int c = 0; c < Chunks; c++)
            {
                foreach (int k in c % 2 == 0 ? [0, 1] : (int[])[1, 0])   // each goes first in half the chunks
                {
                    long t = Stopwatch.GetTimestamp();
                    for (long i = 0; i < iterations / Chunks; i++)
                    {
                        rigs[k].A.PostWrite((ulong)i, rigs[k].Odp.Slice(0, 8), rigs[k].Target);
                        int n;
                        while ((n = rigs[k].Cq.Poll(wc)) == 0) { }
                        if (n != 1 || !wc[0].IsSuccess)
                            throw new InvalidOperationException(wc[0].ToString());
                    }
                    total[k] += Stopwatch.GetTimestamp() - t;
                }
            }
            for (int k = 0; report && k < rigs.Length; k++)
                Report($"odp-quirk write-roundtrip from an ODP region, PostWrite + Poll, {rigs[k].Label}", iterations / Chunks * Chunks, total[k]);
        }
    }

    /// <summary>
    /// Ticks spent in the one Poll that returns 8 ready completions, over <paramref name="batches"/> batches of 8 writes
    /// (waiting for them to complete is not counted: the CQ is left alone for 2 ms first).
    /// </summary>
    static long PollReady(QueuePair qp, CompletionQueue cq, LocalSegment source, RemoteRegion target, WorkCompletion[] wc, long batches)
    {
        long ticks = 0;
        for (long k = 0; k < batches; k++)
        {
            for (int j = 0; j < 8; j++)
                qp.PostWrite((ulong)j, source, target, 4096);
            Thread.Sleep(2);
            long t = Stopwatch.GetTimestamp();
            int n = cq.Poll(wc);
            ticks += Stopwatch.GetTimestamp() - t;
            while (n < 8)
                n += cq.Poll(wc.AsSpan(n));   // not ready after all: drain, and count this batch as it is
            if (n != 8 || !wc[7].IsSuccess)
                throw new InvalidOperationException(wc[7].ToString());
        }
        return ticks;
    }

    /// <summary>
    /// Ticks spent posting 8 eight-byte writes, as 8 PostWrite calls or as one SendBatch, over <paramref name="batches"/>
    /// rounds (draining the completions afterwards is not counted).
    /// </summary>
    static long PostEight(QueuePair qp, CompletionQueue cq, LocalSegment source, RemoteRegion target, WorkCompletion[] wc, long batches, bool batched)
    {
        long ticks = 0;
        for (long k = 0; k < batches; k++)
        {
            long t = Stopwatch.GetTimestamp();
            if (batched)
            {
                var batch = qp.StartPost();
                for (int j = 0; j < 8; j++)
                    batch.Write((ulong)j, source, target, 4096);
                batch.Post();
            }
            else
            {
                for (int j = 0; j < 8; j++)
                    qp.PostWrite((ulong)j, source, target, 4096);
            }
            ticks += Stopwatch.GetTimestamp() - t;
            for (int n = 0; n < 8;)
            {
                int got = cq.Poll(wc.AsSpan(0, 8 - n));
                for (int i = 0; i < got; i++)
                {
                    if (!wc[i].IsSuccess)
                        throw new InvalidOperationException(wc[i].ToString());
                }
                n += got;
            }
        }
        return ticks;
    }

    /// <summary>Bind and invalidate a type 2 window over a region of <paramref name="length"/> bytes, against registering and deregistering the region itself.</summary>
    static unsafe (long Bind, long Invalidate, long Deregister, long Register) Windows(ProtectionDomain pd, QueuePair qp, CompletionQueue cq, long cycles, int length)
    {
        nuint size = (nuint)length;
        void* memory = NativeMemory.AlignedAlloc(size, 4096);
        NativeMemory.Clear(memory, size);
        long bind = 0, invalidate = 0, dereg = 0, reg = 0;
        var one = new WorkCompletion[1];
        try
        {
            using var region = pd.Register(memory, size, AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind);
            using var window = pd.AllocateMemoryWindow();
            for (long i = 0; i < cycles; i++)
            {
                long t = Stopwatch.GetTimestamp();
                qp.PostBindMemoryWindow(1, window, region, 0, (ulong)length, AccessFlags.RemoteWrite);
                Wait(cq, one, WorkCompletionOpcode.BindMemoryWindow);
                bind += Stopwatch.GetTimestamp() - t;
                t = Stopwatch.GetTimestamp();
                qp.PostLocalInvalidate(2, window);
                Wait(cq, one, WorkCompletionOpcode.LocalInvalidate);
                invalidate += Stopwatch.GetTimestamp() - t;
            }
            for (long i = 0; i < cycles; i++)
            {
                long t = Stopwatch.GetTimestamp();
                var mr = pd.Register(memory, size, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
                reg += Stopwatch.GetTimestamp() - t;
                t = Stopwatch.GetTimestamp();
                mr.Dispose();
                dereg += Stopwatch.GetTimestamp() - t;
            }
        }
        finally
        {
            NativeMemory.AlignedFree(memory);
        }
        return (bind, invalidate, dereg, reg);
    }

    internal static void Wait(CompletionQueue cq, WorkCompletion[] one, WorkCompletionOpcode opcode)
    {
        while (cq.Poll(one) == 0) { }
        if (!one[0].IsSuccess || one[0].Opcode != opcode)
            throw new InvalidOperationException(one[0].ToString());
    }

    /// <summary>The device opened in one ODP quirk mode, a connected QP, an ODP and a pinned source, a pinned target.</summary>
    sealed class QuirkRig : IDisposable
    {
        readonly Device _device;
        public QuirkRig(string deviceName, OdpQuirkMode mode)
        {
            _device = Device.Open(deviceName, new DeviceOptions { OdpQuirk = mode });
            Label = _device.OdpQuirk is null ? "no quirk" : "with the quirk";
            var pd = _device.AllocateProtectionDomain();
            Cq = _device.CreateCompletionQueue(256);
            (A, _) = LoopbackPair(pd, Cq, Mtu.Mtu4096);
            Odp = pd.AllocateBuffer(8192, AccessFlags.LocalWrite | AccessFlags.OnDemand);
            Pinned = pd.AllocateBuffer(8192, AccessFlags.LocalWrite);
            Target = pd.AllocateBuffer(8192, AccessFlags.LocalWrite | AccessFlags.RemoteWrite).ToRemote();
        }

        public string Label { get; }
        public CompletionQueue Cq { get; }
        public QueuePair A { get; }
        public RegisteredBuffer Odp { get; }
        public RegisteredBuffer Pinned { get; }
        public RemoteRegion Target { get; }

        public void Dispose() => _device.Dispose();   // and everything made from it
    }
}
