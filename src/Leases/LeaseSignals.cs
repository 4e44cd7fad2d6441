using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Tmds.Linux;

namespace RdmaLease.Leases;

/// <summary>
/// The process-wide delivery of lease breaks. The kernel announces a break with the signal chosen by F_SETSIG on the
/// leased descriptor (here a real-time signal, default SIGRTMIN+5: .NET itself uses SIGRTMIN, and a real-time signal
/// carries si_fd and queues instead of merging). A native SA_SIGINFO handler (native/lease_signals.c), installed before
/// the first F_SETSIG, writes {si_fd, si_code, CLOCK_MONOTONIC} to a pipe; one background thread, "rdma-lease signals",
/// reads the pipe, confirms the break with F_GETLEASE/F_GETDELEG and hands it to one of a few dedicated break workers
/// ("rdma-lease break N"), which tear the lease down (see <see cref="FileLease"/>): a slow lease occupies one worker
/// and never delays the others' breaks.
/// </summary>
/// <remarks>
/// <para>Robustness: SIGIO, which the kernel sends instead when it cannot queue the real-time signal (its default
/// action kills the process), is handled too and makes the watcher re-check every lease. Every
/// <see cref="RescanInterval"/>, and at every acquisition, the watcher checks that both handlers are still ours (a
/// handler another component installed later is chained behind ours again) and re-checks every lease with
/// F_GETLEASE/F_GETDELEG, so a lost signal delays a break by at most that interval. A watcher that fails restarts;
/// counters are in <see cref="LeaseDiagnostics"/>.</para>
/// <para>Only one copy of this assembly per process can deliver breaks: a second copy (another AssemblyLoadContext)
/// is refused with an <see cref="InvalidOperationException"/> at its first lease.</para>
/// <para>If another component already installed a handler for the chosen signal, it is kept and called after ours
/// (<see cref="ChainedForeignHandler"/> says so); choose another signal with <see cref="UseSignal"/> to avoid sharing.</para>
/// </remarks>
public static class LeaseSignals
{
    private static readonly Lock s_gate = new();
    private static readonly ConcurrentDictionary<int, FileLease> s_leases = new();
    private static readonly ConcurrentQueue<(FileLease Lease, long Timestamp, int Code)> s_breaks = new();
    private static readonly SemaphoreSlim s_breaksReady = new(0);
    // Identifies this copy of the assembly to the native handler: one copy per process owns the pipe.
    private static readonly long s_owner = Random.Shared.NextInt64(1, long.MaxValue);
    private static int s_signal;          // chosen (0: default not yet applied)
    private static bool s_installed;
    private static bool s_chained;
    private static Thread? s_watcher;
    private static int s_injectWatcherFault;

    /// <summary>The default offset from SIGRTMIN: SIGRTMIN+5.</summary>
    public const int DefaultSignalOffset = 5;

    /// <summary>How often the watcher re-checks the handlers and every lease with the kernel when no signal arrives.</summary>
    public static TimeSpan RescanInterval { get; } = TimeSpan.FromMilliseconds(250);

    /// <summary>Break workers started with the watcher; one more is started whenever a break finds every worker busy.</summary>
    internal static int BreakWorkerCount { get; } = Math.Max(4, Environment.ProcessorCount);

    private static int s_workers, s_idleWorkers;
    private static readonly ManualResetEventSlim s_warm = new(false);

    /// <summary>How long a lease acquisition waits for the break path's warm-up before it goes ahead anyway.</summary>
    internal static TimeSpan WarmupLimit { get; } = TimeSpan.FromSeconds(30);

    /// <summary>The signal the kernel sends on a lease break (F_SETSIG): the chosen one, else SIGRTMIN+5.</summary>
    public static int SignalNumber
    {
        get
        {
            lock (s_gate)
                return s_signal != 0 ? s_signal : LibC.SIGRTMIN + DefaultSignalOffset;
        }
    }

    /// <summary>True once the native handler is installed (at the first lease).</summary>
    public static bool IsInstalled
    {
        get
        {
            lock (s_gate)
                return s_installed;
        }
    }

    /// <summary>True while the watcher thread runs (from the first lease on).</summary>
    public static bool IsWatcherAlive => s_watcher?.IsAlive == true;

    /// <summary>True when a handler someone else had installed for <see cref="SignalNumber"/> is kept and chained.</summary>
    public static bool ChainedForeignHandler
    {
        get
        {
            lock (s_gate)
                return s_chained;
        }
    }

    /// <summary>
    /// Chooses the lease-break signal; only before the first lease (afterwards only the signal already in use is
    /// accepted). Must be a real-time signal above SIGRTMIN (which .NET uses) and at most SIGRTMAX.
    /// </summary>
    public static void UseSignal(int signal)
    {
        if (signal <= LibC.SIGRTMIN || signal > LibC.SIGRTMAX)
            throw new ArgumentOutOfRangeException(nameof(signal), signal,
                $"the lease-break signal must be in SIGRTMIN+1..SIGRTMAX ({LibC.SIGRTMIN + 1}..{LibC.SIGRTMAX}); .NET uses SIGRTMIN");
        lock (s_gate)
        {
            if (s_installed && s_signal != signal)
                throw new InvalidOperationException($"lease-break signal {s_signal} is already in use by this process; UseSignal must run before the first lease");
            s_signal = signal;
        }
    }

    /// <summary>
    /// Installs the break handlers, starts the watcher and the break workers, and compiles the break path (returns when
    /// it is compiled), now rather than at the first lease: a host does this at start, so its first lease is not
    /// delayed by the warm-up. Idempotent; the first lease does it otherwise.
    /// </summary>
    /// <exception cref="InvalidOperationException">Another copy of this assembly in the process already delivers breaks.</exception>
    public static void Start()
    {
        EnsureStarted();
        WaitWarm();
    }

    /// <summary>
    /// Waits (at most <see cref="WarmupLimit"/>) until the warm-up has compiled the break path. Every acquisition calls
    /// this before the lease is granted: under the JIT, a process's first break otherwise compiled that path against the
    /// kernel's deadline (0.5-1 s under TCG, measured by the break benchmark).
    /// </summary>
    internal static void WaitWarm()
    {
        if (!s_warm.IsSet && !s_warm.Wait(WarmupLimit))
            Trace.TraceWarning($"rdma-lease: the break path's warm-up took more than {WarmupLimit.TotalSeconds} s; the lease is granted without it");
    }

    /// <summary>Installs the handlers and starts the watcher and the break workers (once); returns the signal for F_SETSIG.</summary>
    /// <exception cref="InvalidOperationException">Another copy of this assembly in the process already delivers breaks.</exception>
    internal static unsafe int EnsureStarted()
    {
        lock (s_gate)
        {
            if (s_installed)
                return s_signal;
            Interop.EnsureNativeAbi();
            if (s_signal == 0)
                s_signal = LibC.SIGRTMIN + DefaultSignalOffset;
            int chained;
            if (Interop.LeaseSignals.Install(s_signal, Interop.LeaseSignals.Chain, s_owner, &chained) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == LibC.EEXIST)
                    throw new InvalidOperationException(
                        "another copy of RdmaLease.Leases in this process (loaded into another AssemblyLoadContext) already delivers lease breaks; " +
                        "two copies would steal each other's break signals. Load RdmaLease.Leases once, in a context both users share.");
                throw new UnixIOException($"installing the lease-break handler for signal {s_signal}", errno);
            }
            s_chained = chained != 0;
            s_installed = true;
            for (int i = 0; i < BreakWorkerCount; i++)
                StartBreakWorker();
            s_watcher = new Thread(Watch) { IsBackground = true, Name = "rdma-lease signals" };
            s_watcher.Start();
            // Off the watcher: a break arriving meanwhile is handled at once (compiling what it needs itself).
            new Thread(Warmup.Run) { IsBackground = true, Name = "rdma-lease warm-up", Priority = ThreadPriority.BelowNormal }.Start();
            return s_signal;
        }
    }

    /// <summary>
    /// Checks that the native handlers for the lease signal and SIGIO are still installed; puts back one that another
    /// component replaced (chaining the replacement) and then re-checks every lease, since a signal may have been missed.
    /// </summary>
    internal static void Verify()
    {
        int restored = Interop.LeaseSignals.Verify();
        if (restored < 0)
        {
            Trace.TraceError($"rdma-lease: checking the lease-break handlers failed (errno {Marshal.GetLastPInvokeError()})");
            return;
        }
        if (restored == 0)
            return;
        LeaseDiagnostics.RecordHandlerRestored();
        Trace.TraceWarning($"rdma-lease: another component replaced the handler for {((restored & Interop.LeaseSignals.RestoredLeaseSignal) != 0 ? $"signal {s_signal}" : "")}" +
            $"{(restored == (Interop.LeaseSignals.RestoredLeaseSignal | Interop.LeaseSignals.RestoredSigio) ? " and " : "")}" +
            $"{((restored & Interop.LeaseSignals.RestoredSigio) != 0 ? "SIGIO" : "")}; ours was put back in front of it. Every lease is re-checked.");
        Rescan();
    }

    internal static void Register(FileLease lease)
    {
        if (!s_leases.TryAdd(lease.FileDescriptor, lease))
            throw new InvalidOperationException($"descriptor {lease.FileDescriptor} already carries a lease");
    }

    internal static void Unregister(FileLease lease) =>
        s_leases.TryRemove(new KeyValuePair<int, FileLease>(lease.FileDescriptor, lease));

    /// <summary>
    /// Hands a confirmed break to a break worker, once per lease (a rescan finding it again while it waits is ignored). If
    /// every worker is busy (slow teardowns elsewhere), another is started: one lease's teardown never waits for another's.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // the break path: optimized at once, never tier-0 or rejitted mid-run
    internal static void Dispatch(FileLease lease, long timestamp, int code)
    {
        if (!lease.TryMarkBreakQueued())
            return;
        s_breaks.Enqueue((lease, timestamp, code));
        if (Volatile.Read(ref s_idleWorkers) < s_breaks.Count)
            StartBreakWorker();
        s_breaksReady.Release();
    }

    private static void StartBreakWorker()
    {
        int n = Interlocked.Increment(ref s_workers);
        Interlocked.Increment(ref s_idleWorkers);
        new Thread(BreakWorker) { IsBackground = true, Name = $"rdma-lease break {n - 1}" }.Start();
    }

    /// <summary>Break worker threads started so far.</summary>
    internal static int BreakWorkers => Volatile.Read(ref s_workers);

    /// <summary>Converts a CLOCK_MONOTONIC reading to a <see cref="Stopwatch"/> timestamp (the same clock on Linux).</summary>
    internal static long MonotonicNsToStopwatch(long ns) =>
        Stopwatch.Frequency == 1_000_000_000 ? ns : (long)((Int128)ns * Stopwatch.Frequency / 1_000_000_000);

    /// <summary>Re-checks every lease with the kernel and dispatches those whose break is pending.</summary>
    internal static void Rescan()
    {
        long now = Stopwatch.GetTimestamp();
        foreach (var lease in s_leases.Values)
        {
            if (lease.ConfirmBreak())
            {
                LeaseDiagnostics.RecordBreakFoundByRescan();
                Dispatch(lease, now, 0);
            }
        }
    }

    private static void Watch()
    {
        while (true)
        {
            try
            {
                WatchOnce();
            }
            catch (Exception e)
            {
                // Never die: a watcher that stopped would leave every lease to the kernel's deadline.
                LeaseDiagnostics.RecordWatcherRestart();
                Trace.TraceError($"rdma-lease: the lease-break watcher failed and restarts: {e}");
                Thread.Sleep(10);
            }
        }
    }

    /// <summary>Test hook: the watcher's next loop throws, as an unexpected failure would.</summary>
    internal static void InjectWatcherFault() => Volatile.Write(ref s_injectWatcherFault, 1);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // the break path: optimized at once, never tier-0 or rejitted mid-run
    private static unsafe void WatchOnce()
    {
        const int Capacity = 64;
        var records = new Interop.LeaseSignals.Record[Capacity];
        long nextCheck = 0;
        while (true)
        {
            if (Interlocked.Exchange(ref s_injectWatcherFault, 0) != 0)
                throw new InvalidOperationException("injected watcher fault (test hook)");
            int n;
            fixed (Interop.LeaseSignals.Record* p = records)
                n = Interop.LeaseSignals.Read(p, Capacity, (int)RescanInterval.TotalMilliseconds);
            if (n < 0)
                throw new UnixIOException("reading the lease-break pipe", Marshal.GetLastPInvokeError());
            bool rescan = false;
            for (int i = 0; i < n; i++)
            {
                ref var r = ref records[i];
                if (r.Code == Interop.LeaseSignals.RescanCode)
                {
                    LeaseDiagnostics.RecordSigio();
                    rescan = true;
                }
                else if (s_leases.TryGetValue(r.Fd, out var lease) && lease.ConfirmBreak())
                {
                    Dispatch(lease, MonotonicNsToStopwatch(r.MonotonicNs), r.Code);
                }
                else
                {
                    LeaseDiagnostics.RecordSpuriousSignal();
                }
            }
            int dropped = Interop.LeaseSignals.TakeDropped();
            if (dropped > 0)
            {
                LeaseDiagnostics.RecordDroppedSignals(dropped);
                rescan = true;
            }
            long now = Stopwatch.GetTimestamp();
            if (n == 0 || now >= nextCheck)
            {
                nextCheck = now + (long)(RescanInterval.TotalSeconds * Stopwatch.Frequency);
                FileLease.RefreshLeaseBreakTime();
                Verify();
                rescan = true;
            }
            if (rescan)
                Rescan();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // the break path: optimized at once, never tier-0 or rejitted mid-run
    private static void BreakWorker()
    {
        while (true)
        {
            s_breaksReady.Wait();
            if (!s_breaks.TryDequeue(out var work))
                continue;
            Interlocked.Decrement(ref s_idleWorkers);
            try
            {
                work.Lease.OnBreak(work.Timestamp, work.Code);
            }
            catch (Exception e)
            {
                Trace.TraceError($"rdma-lease: handling the break of {work.Lease} failed: {e}");
            }
            finally
            {
                Interlocked.Increment(ref s_idleWorkers);
            }
        }
    }

    /// <summary>
    /// Compiles the break path ahead, on its own thread when the first lease is taken (which waits for it before the
    /// kernel grants the lease): under the JIT, the first break of a process otherwise spends its time compiling the
    /// methods between the signal and F_UNLCK, against the kernel's deadline. Only the types on that path: preparing whole unrelated classes took seconds under TCG.
    /// </summary>
    private static class Warmup
    {
        public static void Run()
        {
            if (!RuntimeFeature.IsDynamicCodeCompiled)
            {
                s_warm.Set();
                return;   // NativeAOT: compiled ahead of time
            }
            long start = Stopwatch.GetTimestamp();
            try
            {
                Prepare(typeof(FileLease), "End", "OnBreak", "ConfirmBreak", "KernelBreakPending", "Step", "RevokeMapping", "Notify", "WaitEnded", "get_IsActive", "ToString");
                Prepare(typeof(LeasedMemoryRegion), null);
                Prepare(typeof(DaxFile), "RevokeMapping", "RevokeMappingLocked", "ReleaseKernelLease", "get_HasUnconfirmedRegions", "HasUnconfirmedRegionsLocked", "Detach", "get_Path", "get_IsMapped");
                Prepare(typeof(LeaseSignals), "Dispatch", "Rescan", "Unregister", "BreakWorker", "MonotonicNsToStopwatch", "Verify");
                Prepare(typeof(LeaseDiagnostics), null);
                Prepare(typeof(Verbs.MemoryRegion), "Revoke", "DeregisterAndWait", "get_DeregistrationState", "get_DeregistrationErrno", "EnterForPost", "ToString");
                Prepare(typeof(Verbs.Internal.NativeHandle), null);
                Prepare(typeof(Verbs.Internal.VerbsObject), "Dispose", "RemoveChild", "get_IsDisposed");
                Prepare(typeof(Verbs.QueuePair), "MoveToError", "Modify", "ToString");
                Prepare(typeof(Verbs.ProtectionDomain), "Quarantine");
                Prepare(typeof(Interop.Fcntl), null);
                Prepare(typeof(Interop.LeaseSignals), null);
            }
            catch (Exception e)
            {
                Trace.TraceWarning($"rdma-lease: compiling the break path ahead failed (it is compiled on first use instead): {e.Message}");
            }
            LeaseDiagnostics.WarmupTime = Stopwatch.GetElapsedTime(start);
            s_warm.Set();
        }

        private const System.Reflection.BindingFlags All = System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic
            | System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.DeclaredOnly;

        /// <summary>
        /// Prepares the named methods of <paramref name="type"/> (null: all of them), its local functions, and the lambdas
        /// the compiler put in nested closure classes (End's teardown steps are lambdas).
        /// </summary>
        private static void Prepare(
            [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicMethods | DynamicallyAccessedMemberTypes.NonPublicMethods
                | DynamicallyAccessedMemberTypes.PublicConstructors | DynamicallyAccessedMemberTypes.NonPublicConstructors)] Type type, params string[]? names)
        {
            foreach (var m in type.GetMethods(All))
            {
                if (names is null || Array.IndexOf(names, m.Name) >= 0 || m.Name.StartsWith('<'))
                    PrepareOne(m);
            }
            PrepareClosures(type);
        }

        [UnconditionalSuppressMessage("Trimming", "IL2070", Justification = "Only under the JIT; a closure class the trimmer removed is never run, so has nothing to prepare.")]
        [UnconditionalSuppressMessage("Trimming", "IL2075", Justification = "As above.")]
        private static void PrepareClosures(Type type)
        {
            foreach (var closure in type.GetNestedTypes(System.Reflection.BindingFlags.NonPublic))
            {
                if (!closure.Name.StartsWith('<') || closure.ContainsGenericParameters)
                    continue;
                foreach (var m in closure.GetMethods(All))
                    PrepareOne(m);
            }
        }

        private static void PrepareOne(System.Reflection.MethodInfo m)
        {
            if (m.IsAbstract || m.ContainsGenericParameters)
                return;
            try
            {
                RuntimeHelpers.PrepareMethod(m.MethodHandle);
            }
            catch (Exception e) when (e is ArgumentException or NotSupportedException or InvalidOperationException or TypeLoadException or DllNotFoundException or EntryPointNotFoundException)
            {
                // a method that cannot be prepared ahead (P/Invoke into a library not loaded): compiled on first use
            }
        }
    }
}
