// rdma-lease benchmarks. `interop DEVICE ITERATIONS`: the per-call costs of docs/benchmarks.md ("Per-call costs"),
// measured the same way as benchmarks/c/verbs_cost.c so both run in one guest (benchmarks/guest/suites/percall.sh)
// and only ratios are compared (the guest runs under TCG emulation); then the per-post cost of the
// ODP quirk (docs/known-defects.md), on the same device opened with and without it. Output: one line per figure,
// "row,CASE,cs,PARAM,METRIC,VALUE,UNIT" (the suite adds the suite name and round); ns_per_call figures are the
// median of Repeats runs of their loop, alloc_bytes_per_op the managed bytes this thread allocated per operation.
// `grants DEVICE ITERATIONS [DIRECTORY]`: memory-window grants against registrations (GrantCost.cs).
// `reg ...`: registration time by size and kind of memory (RegCost.cs); `break ...`: the lease holder of the
// break-to-release benchmark (BreakCost.cs). Both have C twins in benchmarks/c.
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
bool reg = args.Length is 5 or 6 && args[0] == "reg";
bool lease = args.Length == 6 && args[0] == "break";
if (!interop && !grants && !reg && !lease)
{
    Console.Error.WriteLine("usage: RdmaLease.Benchmarks interop DEVICE ITERATIONS\n" +
        "       RdmaLease.Benchmarks grants DEVICE ITERATIONS [DIRECTORY on FS-DAX, default /mnt/xfs]\n" +
        "       RdmaLease.Benchmarks reg DEVICE odp-fsdax|pinned-anon|pinned-pagecache MAX_BYTES ITERATIONS [FILE]\n" +
        "       RdmaLease.Benchmarks break DEVICE FILE REGION_BYTES BREAKS idle|traffic|gc   (driven by lease_breaker)\n" +
        "       " + NetTwin.Usage);
    return 2;
}
// This assembly imports the verbs shim itself (below): through the library's one resolver, like every rdma-lease load.
NativeLibraries.RegisterResolver(typeof(InteropCost).Assembly, NativeLibraries.VerbsShimInfo);
var inv = CultureInfo.InvariantCulture;
if (interop)
    InteropCost.Run(args[1], long.Parse(args[2], inv));
else if (grants)
    GrantCost.Run(args[1], int.Parse(args[2], inv), args.Length == 4 ? args[3] : "/mnt/xfs");
else if (reg)
    RegCost.Run(args[1], args[2], ulong.Parse(args[3], inv), int.Parse(args[4], inv), args.Length == 6 ? args[5] : null);
else
    return BreakCost.Run(args[1], args[2], long.Parse(args[3], inv), int.Parse(args[4], inv), args[5]);
return 0;

static unsafe partial class InteropCost
{
    // The shim's poll without SuppressGCTransition, to price the GC transition itself.
    [LibraryImport(NativeLibraries.VerbsShim, EntryPoint = "RdmaLeaseNative_PollCq")]
    private static partial int PollCqWithTransition(ibv_cq* cq, int n, ibv_wc* wc);

    const int Repeats = 5;      // each ns_per_call figure is the median of this many runs of its loop
    const int PostBatch = 32;   // posts timed together (the send queue holds 64), as in verbs_cost.c

    static void Row(string name, double value, string metric = "ns_per_call", string unit = "ns", string param = "") =>
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"row,{name},cs,{param},{metric},{value:0.0##},{unit}"));

    static void Report(string name, long calls, long ticks) => Row(name, ticks * 1e9 / Stopwatch.Frequency / calls);

    /// <summary>
    /// Runs <paramref name="loop"/> (which does <paramref name="operations"/> operations and returns the Stopwatch ticks
    /// they took) <see cref="Repeats"/> times; reports the median ns per operation and, from the last run, the managed
    /// bytes this thread allocated per operation (steady state: the caller warmed the loop up first).
    /// </summary>
    static void Measure(string name, long operations, Func<long> loop, bool report, bool allocations = false)
    {
        var runs = new double[Repeats];
        long allocated = 0;
        for (int r = 0; r < Repeats; r++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            runs[r] = loop() * 1e9 / Stopwatch.Frequency / operations;
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Array.Sort(runs);
        if (!report)
            return;
        Row(name, runs[Repeats / 2]);
        if (allocations)
            Row(name, (double)allocated / operations, "alloc_bytes_per_op", "B");
    }

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
        long polls = iterations * 10;
        ibv_cq* raw = cq.Cq;
        var rawWc = (ibv_wc*)NativeMemory.Alloc(8, (nuint)sizeof(ibv_wc));
        var providerPoll = raw->context->ops.poll_cq;
        var providerPollNoTransition = (delegate* unmanaged[SuppressGCTransition]<ibv_cq*, int, ibv_wc*, int>)providerPoll;
        var source = buffer.Slice(0, 8);
        var target = buffer.ToRemote();

        // The first round warms up the JIT tiers; the pause lets the runtime finish compiling the library's methods at
        // tier 1 in the background (its tiering delay), so the measured round runs what a long-running loop would. The
        // loops are methods of their own, optimized at once (AggressiveOptimization), as a loop that runs for long is
        // after on-stack replacement.
        for (int round = 0; round < 2; round++)
        {
            bool report = round == 1;
            if (report)
                Thread.Sleep(1000);
            Measure("poll_empty", polls, () => PollLoop(cq, wc, polls), report, allocations: true);
            Measure("poll_empty_poller", polls, () => PollerLoop(cq, wc, polls), report, allocations: true);
            Measure("poll_empty_shim", polls, () => ShimLoop(raw, rawWc, polls, transition: false), report);
            Measure("poll_empty_shim_transition", polls, () => ShimLoop(raw, rawWc, polls, transition: true), report);
            Measure("poll_empty_provider_pointer", polls, () => ProviderLoop(raw, rawWc, polls, providerPollNoTransition), report);
            Measure("poll_empty_provider_pointer_transition", polls, () => ProviderLoop(raw, rawWc, polls,
                (delegate* unmanaged[SuppressGCTransition]<ibv_cq*, int, ibv_wc*, int>)null, providerPoll), report);
            Measure("poll_empty_ex", polls, () => PollLoop(cqx, wc, polls), report);

            long postRounds = iterations / PostBatch / 2 + 1;
            Measure("post_send", postRounds * PostBatch, () => PostOnly(a, cq, source, target, wc, postRounds, scoped: false), report, allocations: true);
            Measure("post_send_poster", postRounds * PostBatch, () => PostOnly(a, cq, source, target, wc, postRounds, scoped: true), report, allocations: true);

            long rtts = iterations / Repeats + 1;
            Measure("write_rtt_8b", rtts, () => RoundTrips(a, cq, source, target, wc, rtts, scoped: false), report, allocations: true);
            Measure("write_rtt_8b_scoped", rtts, () => RoundTrips(a, cq, source, target, wc, rtts, scoped: true), report, allocations: true);
            if (!report)
                continue;

            long batches = Math.Max(iterations / 20, 10);
            Report("poll_ready8_per_completion", batches * 8, PollReady(a, cq, source, target, wc, batches));
            Report("poll_ready8_ex_per_completion", batches * 8, PollReady(ax, cqx, source, target, wc, batches));
            Report("post8_separate_per_request", batches * 8, PostEight(a, cq, source, target, wc, batches, batched: false));
            Report("post8_batch_per_request", batches * 8, PostEight(a, cq, source, target, wc, batches, batched: true));
            foreach (var (length, cycles) in new[] { (65536, batches), (16 << 20, Math.Max(batches / 20, 5)) })
            {
                var (bindTicks, invalidateTicks, deregTicks, regTicks) = Windows(pd, b, cq, cycles, length);
                string size = length.ToString(CultureInfo.InvariantCulture);
                Row("mw_bind_type2", bindTicks * 1e6 / Stopwatch.Frequency / cycles, "us_per_call", "us", size);
                Row("mw_local_invalidate", invalidateTicks * 1e6 / Stopwatch.Frequency / cycles, "us_per_call", "us", size);
                Row("mr_register_pinned", regTicks * 1e6 / Stopwatch.Frequency / cycles, "us_per_call", "us", size);
                Row("mr_deregister_pinned", deregTicks * 1e6 / Stopwatch.Frequency / cycles, "us_per_call", "us", size);
            }
        }
        NativeMemory.Free(rawWc);
        GC.KeepAlive(cq);
        GC.KeepAlive(bx);
        OdpQuirkCost(deviceName, iterations);
    }

    // ----- the measured loops: each returns the Stopwatch ticks it took; every poll's result is used (an empty CQ gives 0) -----

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long PollLoop(CompletionQueue cq, WorkCompletion[] wc, long polls)
    {
        long sum = 0, t = Stopwatch.GetTimestamp();
        for (long i = 0; i < polls; i++)
            sum += cq.Poll(wc);
        return Empty(sum, Stopwatch.GetTimestamp() - t);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long PollerLoop(CompletionQueue cq, WorkCompletion[] wc, long polls)
    {
        long sum = 0, t = Stopwatch.GetTimestamp();
        using (var poller = cq.OpenPoller())
        {
            for (long i = 0; i < polls; i++)
                sum += poller.Poll(wc);
        }
        return Empty(sum, Stopwatch.GetTimestamp() - t);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long ShimLoop(ibv_cq* cq, ibv_wc* wc, long polls, bool transition)
    {
        long sum = 0, t = Stopwatch.GetTimestamp();
        if (transition)
        {
            for (long i = 0; i < polls; i++)
                sum += PollCqWithTransition(cq, 8, wc);
        }
        else
        {
            for (long i = 0; i < polls; i++)
                sum += RdmaLeaseNative.PollCq(cq, 8, wc);
        }
        return Empty(sum, Stopwatch.GetTimestamp() - t);
    }

    /// <summary>The provider's poll_cq pointer called from C#: without the GC transition when <paramref name="fast"/> is set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long ProviderLoop(ibv_cq* cq, ibv_wc* wc, long polls, delegate* unmanaged[SuppressGCTransition]<ibv_cq*, int, ibv_wc*, int> fast,
        delegate* unmanaged<ibv_cq*, int, ibv_wc*, int> withTransition = null)
    {
        long sum = 0, t = Stopwatch.GetTimestamp();
        if (fast != null)
        {
            for (long i = 0; i < polls; i++)
                sum += fast(cq, 8, wc);
        }
        else
        {
            for (long i = 0; i < polls; i++)
                sum += withTransition(cq, 8, wc);
        }
        return Empty(sum, Stopwatch.GetTimestamp() - t);
    }

    static long Empty(long sum, long ticks) => sum == 0 ? ticks : throw new InvalidOperationException($"an empty CQ returned completions ({sum})");

    /// <summary>One 8-byte WRITE posted, its completion polled, <paramref name="count"/> times: through the QP and CQ, or a poster and a poller.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long RoundTrips(QueuePair qp, CompletionQueue cq, LocalSegment source, RemoteRegion target, WorkCompletion[] wc, long count, bool scoped)
    {
        long t = Stopwatch.GetTimestamp();
        if (scoped)
        {
            using var poster = qp.OpenPoster();
            using var poller = cq.OpenPoller();
            for (long i = 0; i < count; i++)
            {
                poster.PostWrite((ulong)i, source, target, 4096);
                int n;
                while ((n = poller.Poll(wc)) == 0) { }
                if (n != 1 || !wc[0].IsSuccess)
                    throw new InvalidOperationException(wc[0].ToString());
            }
        }
        else
        {
            for (long i = 0; i < count; i++)
            {
                qp.PostWrite((ulong)i, source, target, 4096);
                int n;
                while ((n = cq.Poll(wc)) == 0) { }
                if (n != 1 || !wc[0].IsSuccess)
                    throw new InvalidOperationException(wc[0].ToString());
            }
        }
        return Stopwatch.GetTimestamp() - t;
    }

    /// <summary>
    /// Posts <paramref name="rounds"/> × <see cref="PostBatch"/> 8-byte writes, through the QP's PostWrite or through a
    /// poster opened once, and returns the ticks the posts took: their completions are drained off the clock.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long PostOnly(QueuePair qp, CompletionQueue cq, LocalSegment source, RemoteRegion target, WorkCompletion[] wc, long rounds, bool scoped)
    {
        long ticks = 0;
        for (long k = 0; k < rounds; k++)
        {
            long t = Stopwatch.GetTimestamp();
            if (scoped)
            {
                using var poster = qp.OpenPoster();
                for (int j = 0; j < PostBatch; j++)
                    poster.PostWrite((ulong)j, source, target, 4096);
            }
            else
            {
                for (int j = 0; j < PostBatch; j++)
                    qp.PostWrite((ulong)j, source, target, 4096);
            }
            ticks += Stopwatch.GetTimestamp() - t;
            for (int n = 0; n < PostBatch;)
            {
                int got = cq.Poll(wc.AsSpan(0, 1));
                if (got == 1 && !wc[0].IsSuccess)
                    throw new InvalidOperationException(wc[0].ToString());
                n += got;
            }
        }
        return ticks;
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
                    Report($"odp_quirk_step_{(odp ? "odp" : "pinned")}_source_{rigs[k].Name}", checks, best[k]);   // QueuePair.TransferLimit
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
                Report($"odp_quirk_write_rtt_8b_{rigs[k].Name}", iterations / Chunks * Chunks, total[k]);   // from an ODP region
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
            Name = _device.OdpQuirk is null ? "no_quirk" : "with_quirk";
            var pd = _device.AllocateProtectionDomain();
            Cq = _device.CreateCompletionQueue(256);
            (A, _) = LoopbackPair(pd, Cq, Mtu.Mtu4096);
            Odp = pd.AllocateBuffer(8192, AccessFlags.LocalWrite | AccessFlags.OnDemand);
            Pinned = pd.AllocateBuffer(8192, AccessFlags.LocalWrite);
            Target = pd.AllocateBuffer(8192, AccessFlags.LocalWrite | AccessFlags.RemoteWrite).ToRemote();
        }

        /// <summary>The case-name suffix: no_quirk or with_quirk.</summary>
        public string Name { get; }
        public CompletionQueue Cq { get; }
        public QueuePair A { get; }
        public RegisteredBuffer Odp { get; }
        public RegisteredBuffer Pinned { get; }
        public RemoteRegion Target { get; }

        public void Dispose() => _device.Dispose();   // and everything made from it
    }
}
