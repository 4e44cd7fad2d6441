using System.Diagnostics.Metrics;

namespace RdmaLease.Verbs;

/// <summary>
/// The <c>RdmaLease.Verbs</c> meter (System.Diagnostics.Metrics; <c>dotnet-counters monitor --counters RdmaLease.Verbs</c>):
/// process-wide counts of registered memory, completions and posts refused because their region was revoked.
/// </summary>
/// <remarks>
/// Every instrument is observable: the hot paths only add to a process-wide count (one interlocked add per poll that
/// returned completions, none when it returned nothing), and a listener reads the counts when it collects.
/// </remarks>
public static class VerbsMetrics
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "RdmaLease.Verbs";

    static long s_registeredBytes, s_registeredRegions, s_completions, s_errorCompletions, s_revokedPosts, s_peerErrorCount;
    static Counter<long>? s_peerErrors;

    static readonly Meter s_meter = CreateMeter();

    static Meter CreateMeter()
    {
        var meter = new Meter(MeterName, typeof(VerbsMetrics).Assembly.GetName().Version?.ToString());
        meter.CreateObservableUpDownCounter("rdmalease.verbs.registered_bytes", () => Volatile.Read(ref s_registeredBytes), "By",
            "Bytes in memory regions registered and not yet deregistered (confirmed by ibv_dereg_mr).");
        meter.CreateObservableUpDownCounter("rdmalease.verbs.registered_regions", () => Volatile.Read(ref s_registeredRegions), "{region}",
            "Memory regions registered and not yet deregistered.");
        meter.CreateObservableCounter("rdmalease.verbs.completions", () => Volatile.Read(ref s_completions), "{completion}",
            "Work completions polled, successful or not.");
        meter.CreateObservableCounter("rdmalease.verbs.error_completions", () => Volatile.Read(ref s_errorCompletions), "{completion}",
            "Work completions polled with an error status (flushed requests included).");
        s_peerErrors = meter.CreateCounter<long>("rdmalease.verbs.peer_errors", "{error}",
            "Errors a peer caused on an rdma_cm connection's queue pair (a key it was not granted, an access outside its grant, a malformed request), " +
            "tagged with the peer's address (peer.address), the device's event (error.type) and whether its grant still stood (grant.state: live, or " +
            "ended by a lease break): a key sweep shows as a fast-growing live count for one peer.");
        meter.CreateObservableCounter("rdmalease.verbs.revoked_posts", () => Volatile.Read(ref s_revokedPosts), "{post}",
            "Posts refused because a region they named was revoked (its lease broke).");
        return meter;
    }

    /// <summary>Bytes registered now (what the <c>registered_bytes</c> instrument reports).</summary>
    public static long RegisteredBytes => Volatile.Read(ref s_registeredBytes);

    /// <summary>Completions polled so far (the <c>completions</c> instrument).</summary>
    public static long Completions => Volatile.Read(ref s_completions);

    /// <summary>Error completions polled so far (the <c>error_completions</c> instrument).</summary>
    public static long ErrorCompletions => Volatile.Read(ref s_errorCompletions);

    /// <summary>Posts refused because of a revoked region so far (the <c>revoked_posts</c> instrument).</summary>
    public static long RevokedPosts => Volatile.Read(ref s_revokedPosts);

    internal static void Registered(ulong bytes)
    {
        Interlocked.Add(ref s_registeredBytes, (long)bytes);
        Interlocked.Increment(ref s_registeredRegions);
    }

    internal static void Deregistered(ulong bytes)
    {
        Interlocked.Add(ref s_registeredBytes, -(long)bytes);
        Interlocked.Decrement(ref s_registeredRegions);
    }

    internal static void Polled(ReadOnlySpan<WorkCompletion> completions)
    {
        int errors = 0;
        foreach (ref readonly WorkCompletion wc in completions)
            errors += wc.IsSuccess ? 0 : 1;
        Interlocked.Add(ref s_completions, completions.Length);
        if (errors != 0)
            Interlocked.Add(ref s_errorCompletions, errors);
    }

    internal static void RevokedPost() => Interlocked.Increment(ref s_revokedPosts);

    /// <summary>Errors peers caused on connections' queue pairs so far, all peers together (the <c>peer_errors</c> instrument).</summary>
    public static long PeerErrors => Volatile.Read(ref s_peerErrorCount);

    internal static void PeerError(System.Net.IPAddress peer, AsyncEventType error, bool grantEnded)
    {
        EnsureCreated();
        Interlocked.Increment(ref s_peerErrorCount);
        s_peerErrors!.Add(1, new KeyValuePair<string, object?>("peer.address", peer.ToString()), new KeyValuePair<string, object?>("error.type", error.ToString()),
            new KeyValuePair<string, object?>("grant.state", grantEnded ? "ended" : "live"));
    }

    // Touch the meter so it exists (and dotnet-counters can see it) once any verbs object does.
    internal static void EnsureCreated() => GC.KeepAlive(s_meter);
}
