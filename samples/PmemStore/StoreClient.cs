using System.Diagnostics;
using System.Globalization;
using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.PmemStore;

/// <summary>What <c>PmemStore write</c> was asked to do.</summary>
internal sealed record ClientOptions(IPEndPoint Server, string? Device, uint ClientId, int Records, int Window,
    TimeSpan Interval, TimeSpan Timeout, string? AckedLog, TimeSpan? GiveUp = null);

/// <summary>
/// Appends records 0..N-1 into this client's area, the grant the server accepted it with: RDMA WRITE, then FLUSH (persistent) of the
/// same range. A record counts as stored only when its FLUSH completes successfully. Any error completion, a silent
/// connection, or a disconnect ends the connection; the client reconnects with backoff, takes the region from the new
/// accept's private data and resends every record not yet acknowledged.
/// </summary>
internal sealed class StoreClient(ClientOptions options, TextWriter output)
{
    // No completion for this long on a connection with work outstanding: treat it as dead (rxe answers nothing from a
    // QP in the error state, so a write to a revoked region can hang until the retries run out).
    static readonly TimeSpan Silence = TimeSpan.FromSeconds(15);
    const ulong WriteBit = 1UL << 63;

    readonly bool[] _acked = new bool[options.Records];
    readonly bool[] _posted = new bool[options.Records];
    readonly List<ulong> _ackOrder = [];
    readonly List<long> _ackTimes = [];   // CLOCK_MONOTONIC ns of each acknowledgement: a snapshot's verifier compares them
    int _resent, _connections;
    AckedLog.Appender? _log;

    public async Task<int> RunAsync(CancellationToken ct)
    {
        using var device = Device.Open(options.Device ?? OnlyDevice());
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(4 * options.Window + 16, withEvents: true);
        // Pinned source buffer (rxe's ODP data path is for the target side here): every record prepared once.
        using var records = pd.AllocateBuffer((ulong)options.Records * RecordFormat.Size, AccessFlags.LocalWrite);
        for (int s = 0; s < options.Records; s++)
            RecordFormat.Write(records.Span.Slice(s * RecordFormat.Size, RecordFormat.Size), options.ClientId, (ulong)s);

        using var log = _log = options.AckedLog is { } path ? AckedLog.Append(path, options.ClientId) : null;
        var clock = Stopwatch.StartNew();
        var backoff = TimeSpan.FromMilliseconds(200);
        byte[] hello = Hello.Encode(options.ClientId);
        // --give-up-s: how long the client goes on without a working connection (its server gone) before it says so.
        var lastProgress = Stopwatch.StartNew();
        string? lastError = null;
        while (_ackOrder.Count < options.Records && clock.Elapsed < options.Timeout)
        {
            if (options.GiveUp is { } giveUp && lastProgress.Elapsed > giveUp)
            {
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"PmemStore write: client {options.ClientId}: giving up: no record acknowledged for {lastProgress.Elapsed.TotalSeconds:0.0} s (--give-up-s {giveUp.TotalSeconds:0}); last error: {lastError ?? "none"}. Is the server at {options.Server} running?"));
                break;
            }
            int ackedBefore = _ackOrder.Count;
            using var qp = pd.CreateQueuePair(new QueuePairOptions
            {
                SendCompletionQueue = cq, ReceiveCompletionQueue = cq,
                MaxSendRequests = 2 * options.Window + 2, MaxReceiveRequests = 1,
            });
            RdmaConnection? conn = null;
            try
            {
                conn = await RdmaConnection.ConnectAsync(options.Server, qp,
                    new RdmaConnectOptions { PrivateData = hello, Timeout = TimeSpan.FromSeconds(10) }, ct).ConfigureAwait(false);
                var advert = Advert.Decode(conn.RemotePrivateData.Span);
                CheckArea(advert);
                _connections++;
                output.WriteLine($"PmemStore write: client {options.ClientId}: connected, generation {advert.Generation}, grant rkey 0x{advert.Region.RemoteKey:x}, {_ackOrder.Count}/{options.Records} acknowledged");
                backoff = TimeSpan.FromMilliseconds(200);
                await PumpAsync(qp, cq, records, advert, ct).ConfigureAwait(false);
            }
            // A final refusal carries a reason; an empty one is a request the server dropped unanswered (a lease break
            // during its accept, which it logs as "it will retry"): retry that too.
            catch (RdmaConnectionRejectedException e) when (e.IsConsumerReject && Reason(e).Length > 0 && !Reason(e).StartsWith("retry", StringComparison.Ordinal))
            {
                output.WriteLine($"PmemStore write: client {options.ClientId}: the server refused: {Reason(e)}");
                return 2;
            }
            catch (Exception e) when (e is RdmaConnectionException or VerbsException or TimeoutException or ConnectionLostException or LeaseGoneException)
            {
                lastError = $"{e.GetType().Name}: {e.Message}";
                output.WriteLine($"PmemStore write: client {options.ClientId}: connection lost ({e.GetType().Name}: {e.Message}); reconnecting in {backoff.TotalMilliseconds:0} ms");
            }
            finally
            {
                conn?.Dispose();   // QP to error, rdma_cm id destroyed; the QP itself goes with the using
            }
            Drain(cq);   // completions of the dead QP must not count for the next one
            if (_ackOrder.Count > ackedBefore)
                lastProgress.Restart();
            if (_ackOrder.Count < options.Records)
            {
                await Task.Delay(backoff, ct).ConfigureAwait(false);
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(2).Ticks));
            }
        }

        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"PmemStore write: client {options.ClientId}: {options.Records} records, {_ackOrder.Count} acknowledged, {_resent} resent, {_connections} connections, {clock.Elapsed.TotalSeconds:0.0} s"));
        return _ackOrder.Count == options.Records ? 0 : 1;
    }

    void CheckArea(Advert advert)
    {
        ulong need = (ulong)options.Records * RecordFormat.Size;
        if (advert.AreaBytes < need)
            throw new InvalidOperationException($"the server's client areas are {advert.AreaBytes} bytes; {options.Records} records need {need}: start the server with a larger --area-records");
        if (advert.Region.Length < need)
            throw new LeaseGoneException($"the granted area ({advert.Region.Length} bytes) does not hold {options.Records} records");
    }

    async Task PumpAsync(QueuePair qp, CompletionQueue cq, RegisteredBuffer records, Advert advert, CancellationToken ct)
    {
        var queue = new Queue<int>(Enumerable.Range(0, options.Records).Where(s => !_acked[s]));
        var inFlight = new HashSet<int>();
        var wcs = new WorkCompletion[16];
        while (true)
        {
            while (inFlight.Count < options.Window && queue.Count > 0)
            {
                int s = queue.Dequeue();
                ulong offset = (ulong)s * RecordFormat.Size;   // within the grant: this client's own area
                var source = records.Slice((ulong)s * RecordFormat.Size, RecordFormat.Size);
                // Unsignaled WRITE (an error still completes), signaled FLUSH of the same range: RC executes them in
                // order, so the FLUSH's success means the WRITE's bytes are persistent in the file.
                qp.PostWrite((ulong)(uint)s | WriteBit, source, advert.Region, offset, SendFlags.None);
                qp.PostFlush((ulong)s, advert.Region, offset, RecordFormat.Size, FlushType.Persistent);
                if (_posted[s])
                    _resent++;
                _posted[s] = true;
                inFlight.Add(s);
            }
            if (inFlight.Count == 0)
                return;

            int n;
            using (var silence = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                silence.CancelAfter(Silence);
                try
                {
                    n = await cq.PollAsync(wcs, silence.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    throw new ConnectionLostException($"no completion for {Silence.TotalSeconds:0} s with {inFlight.Count} records outstanding");
                }
            }
            for (int i = 0; i < n; i++)
            {
                var wc = wcs[i];
                if (wc.QueuePairNumber != qp.QueuePairNumber)
                    continue;
                if (wc.Status != WorkCompletionStatus.Success)
                    throw new ConnectionLostException($"record {wc.WorkRequestId & ~WriteBit}: {wc.Opcode} completed with {wc.Status} ({wc.StatusDescription})");
                if (wc.Opcode != WorkCompletionOpcode.Flush)
                    continue;
                int s = (int)wc.WorkRequestId;
                inFlight.Remove(s);
                if (!_acked[s])
                {
                    _acked[s] = true;
                    _ackOrder.Add((ulong)s);
                    _ackTimes.Add(AckedLog.NowNs());
                    _log?.Add((ulong)s, _ackTimes[^1]);
                    if (_ackOrder.Count % 10 == 0)
                        output.WriteLine($"PmemStore write: client {options.ClientId}: progress: {_ackOrder.Count} acknowledged");
                }
            }
            if (options.Interval > TimeSpan.Zero)
                await Task.Delay(options.Interval, ct).ConfigureAwait(false);
        }
    }

    static void Drain(CompletionQueue cq)
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[16];
        while (cq.Poll(wc) > 0)
        {
        }
    }

    static string Reason(RdmaConnectionRejectedException e) =>
        System.Text.Encoding.UTF8.GetString(e.PrivateData.Span).TrimEnd('\0');

    static string OnlyDevice()
    {
        var names = Device.List();
        return names.Count == 1 ? names[0]
            : throw new UsageException($"write: {names.Count} RDMA devices ({string.Join(", ", names)}): choose one with --device (the one bound to the interface that reaches the server)");
    }
}

/// <summary>The connection stopped carrying records (error completion, silence): reconnect and resend.</summary>
internal sealed class ConnectionLostException(string message) : Exception(message);

/// <summary>The advertised region does not fit this client (the server is between leases or misconfigured).</summary>
internal sealed class LeaseGoneException(string message) : Exception(message);
