using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Tmds.Linux;

namespace RdmaLease.Leases;

/// <summary>
/// The process-wide delivery of lease breaks. The kernel announces a break with the signal chosen by F_SETSIG on the
/// leased descriptor (here a real-time signal, default SIGRTMIN+5: .NET itself uses SIGRTMIN, and a real-time signal
/// carries si_fd and queues instead of merging). A native SA_SIGINFO handler (native/lease_signals.c), installed before
/// the first F_SETSIG, writes {si_fd, si_code, CLOCK_MONOTONIC} to a pipe; one background thread,
/// "rdma-lease signals", reads the pipe, finds the lease by descriptor and, after F_GETLEASE/F_GETDELEG confirms a
/// break is pending, revokes it (see <see cref="FileLease"/>).
/// </summary>
/// <remarks>
/// If another component already installed a handler for the chosen signal, it is kept and called after ours
/// (<see cref="ChainedForeignHandler"/> says so); choose another signal with <see cref="UseSignal"/> to avoid sharing.
/// </remarks>
public static class LeaseSignals
{
    private static readonly Lock s_gate = new();
    private static readonly ConcurrentDictionary<int, FileLease> s_leases = new();
    private static int s_signal;          // chosen (0: default not yet applied)
    private static bool s_installed;
    private static bool s_chained;
    private static long s_spurious;
    private static long s_dropped;
    private static Thread? s_watcher;

    /// <summary>The default offset from SIGRTMIN: SIGRTMIN+5.</summary>
    public const int DefaultSignalOffset = 5;

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

    /// <summary>True when a handler someone else had installed for <see cref="SignalNumber"/> is kept and chained.</summary>
    public static bool ChainedForeignHandler
    {
        get
        {
            lock (s_gate)
                return s_chained;
        }
    }

    /// <summary>Signals that did not lead to a revocation: no lease on that descriptor, or F_GETLEASE showed no pending break.</summary>
    public static long SpuriousSignals => Interlocked.Read(ref s_spurious);

    /// <summary>Signal records the handler had to drop because the pipe was full (every lease was re-checked then).</summary>
    public static long DroppedSignals => Interlocked.Read(ref s_dropped);

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

    /// <summary>Installs the handler and starts the watcher (once); returns the signal to pass to F_SETSIG.</summary>
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
            if (Interop.LeaseSignals.Install(s_signal, Interop.LeaseSignals.Chain, &chained) != 0)
                throw UnixIOException.Last($"installing the lease-break handler for signal {s_signal}");
            s_chained = chained != 0;
            s_installed = true;
            s_watcher = new Thread(Watch) { IsBackground = true, Name = "rdma-lease signals" };
            s_watcher.Start();
            return s_signal;
        }
    }

    internal static void Register(FileLease lease)
    {
        if (!s_leases.TryAdd(lease.FileDescriptor, lease))
            throw new InvalidOperationException($"descriptor {lease.FileDescriptor} already carries a lease");
    }

    internal static void Unregister(FileLease lease) =>
        s_leases.TryRemove(new KeyValuePair<int, FileLease>(lease.FileDescriptor, lease));

    /// <summary>Converts a CLOCK_MONOTONIC reading to a <see cref="Stopwatch"/> timestamp (the same clock on Linux).</summary>
    internal static long MonotonicNsToStopwatch(long ns) =>
        Stopwatch.Frequency == 1_000_000_000 ? ns : (long)((Int128)ns * Stopwatch.Frequency / 1_000_000_000);

    private static unsafe void Watch()
    {
        const int Capacity = 64;
        var records = new Interop.LeaseSignals.Record[Capacity];
        while (true)
        {
            int n;
            fixed (Interop.LeaseSignals.Record* p = records)
                n = Interop.LeaseSignals.Read(p, Capacity);
            if (n < 0)
            {
                int e = Marshal.GetLastPInvokeError();
                Trace.TraceError($"rdma-lease: reading the lease-break pipe failed (errno {e}); lease breaks are no longer delivered");
                return;
            }
            if (n == 0)
                return;
            for (int i = 0; i < n; i++)
            {
                ref var r = ref records[i];
                if (s_leases.TryGetValue(r.Fd, out var lease))
                {
                    if (!lease.OnBreakSignal(MonotonicNsToStopwatch(r.MonotonicNs), r.Code))
                        Interlocked.Increment(ref s_spurious);
                }
                else
                {
                    Interlocked.Increment(ref s_spurious);
                }
            }
            int dropped = Interop.LeaseSignals.TakeDropped();
            if (dropped > 0)
            {
                Interlocked.Add(ref s_dropped, dropped);
                long now = Stopwatch.GetTimestamp();
                foreach (var lease in s_leases.Values)
                    lease.OnBreakSignal(now, 0);
            }
        }
    }
}
