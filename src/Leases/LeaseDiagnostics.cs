using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace RdmaLease.Leases;

/// <summary>
/// Process-wide counters of lease-break handling: how close teardowns came to the kernel's deadline, and every event
/// that means the safety machinery had to step in (a deregistration the kernel did not confirm, a replaced signal
/// handler, a break found by a rescan instead of its signal). All zero in a healthy process, except the counts of
/// breaks and releases.
/// </summary>
/// <remarks>
/// The same counts, with the number of active leases and a histogram of break-signal-to-release times, are published by
/// the <c>RdmaLease.Leases</c> meter (<see cref="MeterName"/>; <c>dotnet-counters monitor --counters RdmaLease.Leases</c>).
/// </remarks>
public static class LeaseDiagnostics
{
    /// <summary>The System.Diagnostics.Metrics meter publishing these counts.</summary>
    public const string MeterName = "RdmaLease.Leases";

    private static long s_active, s_breaks, s_releases, s_deadlineWarnings, s_deadlineMisses, s_unconfirmed, s_failedDeregistrations, s_retriedDeregistrations,
        s_quarantines, s_handlerRestorations, s_watcherRestarts, s_sigio, s_spurious, s_dropped, s_foundByRescan, s_worstTicks;

    private static readonly Meter s_meter = new(MeterName, typeof(LeaseDiagnostics).Assembly.GetName().Version?.ToString());
    private static readonly Histogram<double> s_breakToRelease = s_meter.CreateHistogram<double>("rdmalease.leases.break_to_release", "ms",
        "Time from a break's signal to the lease given back (regions deregistered before), per break.");

    static LeaseDiagnostics()
    {
        s_meter.CreateObservableUpDownCounter("rdmalease.leases.active", () => ActiveLeases, "{lease}", "Leases held now.");
        s_meter.CreateObservableCounter("rdmalease.leases.breaks", () => Breaks, "{break}", "Leases given back after a break.");
        s_meter.CreateObservableCounter("rdmalease.leases.releases", () => Releases, "{release}", "Leases given back voluntarily.");
        s_meter.CreateObservableCounter("rdmalease.leases.deadline_misses", () => DeadlineMisses, "{break}",
            "Breaks released after lease-break-time (the kernel had removed the lease by force).");
        s_meter.CreateObservableCounter("rdmalease.leases.unconfirmed_deregistrations", () => UnconfirmedDeregistrations, "{region}",
            "Regions whose deregistration the kernel had not confirmed when their lease was given back.");
        s_meter.CreateObservableCounter("rdmalease.leases.retried_deregistrations", () => RetriedDeregistrations, "{region}",
            "Regions whose ibv_dereg_mr failed at first and succeeded when tried again during the teardown.");
    }

    /// <summary>Leases held now (granted and not yet given back).</summary>
    public static long ActiveLeases => Interlocked.Read(ref s_active);

    /// <summary>Fraction of lease-break-time after which a teardown counts as a deadline warning.</summary>
    public const double WarningFraction = 0.5;

    /// <summary>Breaks handled (lease given back after a break).</summary>
    public static long Breaks => Interlocked.Read(ref s_breaks);

    /// <summary>Voluntary releases (Release, Dispose).</summary>
    public static long Releases => Interlocked.Read(ref s_releases);

    /// <summary>Breaks whose signal-to-release time exceeded <see cref="WarningFraction"/> of lease-break-time.</summary>
    public static long DeadlineWarnings => Interlocked.Read(ref s_deadlineWarnings);

    /// <summary>Breaks released after lease-break-time: the kernel had already removed the lease by force.</summary>
    public static long DeadlineMisses => Interlocked.Read(ref s_deadlineMisses);

    /// <summary>The longest signal-to-release time of any break so far.</summary>
    public static TimeSpan WorstBreakToRelease => TimeSpan.FromSeconds((double)Interlocked.Read(ref s_worstTicks) / Stopwatch.Frequency);

    /// <summary>Regions whose deregistration the kernel had not confirmed when their lease was given back.</summary>
    public static long UnconfirmedDeregistrations => Interlocked.Read(ref s_unconfirmed);

    /// <summary>Of those, the ones where ibv_dereg_mr failed (rather than a post still holding the region).</summary>
    public static long FailedDeregistrations => Interlocked.Read(ref s_failedDeregistrations);

    /// <summary>
    /// Regions whose ibv_dereg_mr failed at first during a teardown and succeeded when tried again (after the windows
    /// that were over them were deallocated); these are not counted as unconfirmed.
    /// </summary>
    public static long RetriedDeregistrations => Interlocked.Read(ref s_retriedDeregistrations);

    /// <summary>Protection domains quarantined because a pinned region in them could not be confirmed deregistered.</summary>
    public static long QuarantinedDomains => Interlocked.Read(ref s_quarantines);

    /// <summary>Times another component had replaced our lease-signal or SIGIO handler and it was put back.</summary>
    public static long HandlerRestorations => Interlocked.Read(ref s_handlerRestorations);

    /// <summary>Times the watcher thread failed and restarted.</summary>
    public static long WatcherRestarts => Interlocked.Read(ref s_watcherRestarts);

    /// <summary>SIGIO deliveries (the kernel's fallback when it cannot queue the real-time signal), each followed by a rescan.</summary>
    public static long SigioRescans => Interlocked.Read(ref s_sigio);

    /// <summary>Signals that led to no revocation: no lease on that descriptor, or the kernel showed the lease intact.</summary>
    public static long SpuriousSignals => Interlocked.Read(ref s_spurious);

    /// <summary>Signal records the handler dropped because the pipe was full (every lease was re-checked then).</summary>
    public static long DroppedSignals => Interlocked.Read(ref s_dropped);

    /// <summary>Breaks found by a rescan (a lost or not yet delivered signal), not by their own signal.</summary>
    public static long BreaksFoundByRescan => Interlocked.Read(ref s_foundByRescan);

    /// <summary>
    /// File mappings the native signal handler replaced with the placeholder at the moment of a break signal, before
    /// any managed code ran (normally one per break of a lease whose file is mapped).
    /// </summary>
    public static long SignalHandlerRevocations => Interop.LeaseGuard.Revocations();

    /// <summary>How long compiling the break path took when the watcher started (zero under NativeAOT).</summary>
    public static TimeSpan WarmupTime { get; internal set; }

    internal static void RecordAcquired() => Interlocked.Increment(ref s_active);

    internal static void RecordEnd(FileLease lease, bool broken, long start, long released, TimeSpan breakTime)
    {
        Interlocked.Decrement(ref s_active);
        if (!broken)
        {
            Interlocked.Increment(ref s_releases);
            return;
        }
        Interlocked.Increment(ref s_breaks);
        long ticks = released - start;
        long worst;
        while (ticks > (worst = Interlocked.Read(ref s_worstTicks)) && Interlocked.CompareExchange(ref s_worstTicks, ticks, worst) != worst)
        {
        }
        double seconds = (double)ticks / Stopwatch.Frequency;
        s_breakToRelease.Record(seconds * 1000);
        if (seconds >= breakTime.TotalSeconds)
        {
            Interlocked.Increment(ref s_deadlineMisses);
            Trace.TraceError($"rdma-lease: {lease} was given back {seconds * 1000:0.#} ms after its break signal, past lease-break-time ({breakTime.TotalSeconds} s): the kernel had removed it by force");
        }
        else if (seconds >= breakTime.TotalSeconds * WarningFraction)
        {
            Interlocked.Increment(ref s_deadlineWarnings);
            Trace.TraceWarning($"rdma-lease: {lease} was given back {seconds * 1000:0.#} ms after its break signal, more than {WarningFraction:P0} of lease-break-time ({breakTime.TotalSeconds} s)");
        }
    }

    internal static void RecordUnconfirmedDeregistration(bool failed)
    {
        Interlocked.Increment(ref s_unconfirmed);
        if (failed)
            Interlocked.Increment(ref s_failedDeregistrations);
    }

    internal static void RecordRetriedDeregistration() => Interlocked.Increment(ref s_retriedDeregistrations);

    internal static void RecordQuarantine() => Interlocked.Increment(ref s_quarantines);

    internal static void RecordHandlerRestored() => Interlocked.Increment(ref s_handlerRestorations);

    internal static void RecordWatcherRestart() => Interlocked.Increment(ref s_watcherRestarts);

    internal static void RecordSigio() => Interlocked.Increment(ref s_sigio);

    internal static void RecordSpuriousSignal() => Interlocked.Increment(ref s_spurious);

    internal static void RecordDroppedSignals(int n) => Interlocked.Add(ref s_dropped, n);

    internal static void RecordBreakFoundByRescan() => Interlocked.Increment(ref s_foundByRescan);
}
