using System.Text;
using Microsoft.Extensions.Hosting;
using RdmaLease.Hosting;
using RdmaLease.Leases;
using RdmaLease.Verbs;

namespace RdmaLease.PmemStore;

/// <summary>
/// The server: leases the file, registers it, advertises the region in every accept's private data, and on each lease
/// break tears the generation down (connections, QPs, region, lease, file), opens the file again at its new size,
/// re-leases (retrying while the breaker still has it), re-registers and advertises the new region to reconnecting
/// clients. The listener stays up throughout. On shutdown it stops accepting, ends the connections, verifies the
/// acknowledged records when asked, and leaves the rest to RdmaLeaseContext's ordered teardown.
/// </summary>
internal sealed class StoreService(RdmaLeaseContext context, ServerOptions options, IHostApplicationLifetime lifetime) : BackgroundService
{
    // Isolation: an area's region grants nothing by its own key (it never leaves the process); a client reaches its
    // area only through the grant (a type 2 window bound through its own QP) its connection was accepted with.
    // No FlushPersistent either: the grant's window carries it (a region flag would let any peer FLUSH by the region's key).
    const AccessFlags RegionAccess = AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind;
    // Least privilege: a client may only WRITE and FLUSH to persistence, and only in its own area.
    const AccessFlags PeerAccess = AccessFlags.RemoteWrite | AccessFlags.FlushPersistent;

    readonly PeerErrors _peerErrors = new();
    readonly System.Collections.Concurrent.ConcurrentDictionary<uint, int> _connectionsById = new(), _errorsById = new();

    readonly Lock _gate = new();
    Generation? _current;
    TaskCompletionSource<Generation> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    CompletionQueue? _cq;
    int _breaks, _accepted, _strandedAreas;
    // Areas the kernel refused to deregister at a break: each keeps the old descriptor open, which stops a new write
    // lease, until its deregistration succeeds (retried before every lease attempt).
    readonly List<LeasedMemoryRegion> _stranded = [];

    static void Out(string line) => Console.Out.WriteLine("PmemStore serve: " + line);

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        RdmaListener? listener = null;
        Task accepting = Task.CompletedTask;
        try
        {
            // The server's QPs only receive RDMA WRITE and FLUSH, which complete nothing here: one small receive CQ for
            // all; each QP's send CQ is its own (its grant's bind completes there, and only there).
            _cq = context.Own(context.Device.CreateCompletionQueue(16));
            listener = RdmaListener.Listen(options.Listen);
            Out($"listening on {listener.LocalEndPoint} (device {context.Device.Name}); file {options.File}, {options.Clients} client areas of {options.AreaBytes} bytes and a spare one");
            accepting = AcceptLoopAsync(listener, stop);
            int number = 0;
            while (!stop.IsCancellationRequested)
            {
                var gen = await StartGenerationAsync(++number, stop).ConfigureAwait(false);
                lock (_gate)
                {
                    _current = gen;
                    _ready.TrySetResult(gen);
                }
                Out($"generation {gen.Number}: leased {gen.File.Path} ({gen.File.Length} bytes, {gen.Lease.Mechanism}), {gen.Areas.Count(a => a is not null)} client areas registered " +
                    $"(keys {string.Join(",", gen.Areas.OfType<LeasedMemoryRegion>().Select(a => $"0x{a.RemoteKey:x}"))}, grant nothing and are never sent to peers); each client gets a grant of its own");
                try
                {
                    await gen.Broken.Task.WaitAsync(stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;   // shutdown: the finally below ends this generation
                }
                lock (_gate)
                {
                    _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
                    _current = null;
                }
                // The library has already revoked and deregistered the region and failed its QPs; what is left is ours.
                int closed = gen.EndConnections();
                foreach (var (client, error) in gen.DisposeAreas())
                {
                    // Not fatal: the range is already cut off and the lease given back (Generation.DisposeAreas).
                    Interlocked.Increment(ref _strandedAreas);
                    _stranded.Add(gen.Areas[(int)client]!);
                    Out($"break: client {client}'s area was not confirmed deregistered (errno {error.Errno}): {error.Message}; " +
                        "its client was disconnected with the others; its deregistration is retried before each lease attempt, and the area is registered anew with the next lease");
                }
                gen.Lease.Dispose();
                gen.File.Dispose();
                int breaks = Interlocked.Increment(ref _breaks);
                Out($"break {breaks}: generation {gen.Number} ended after {gen.Lease.BreakToRelease?.TotalMilliseconds ?? double.NaN:0.0} ms signal-to-release; {closed} connections closed; re-leasing");
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Out($"failed: {e.GetType().Name}: {e.Message}");
            Environment.ExitCode = 1;
            lifetime.StopApplication();
        }
        finally
        {
            listener?.Dispose();
            try
            {
                await accepting.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
            await StopAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Stops the store in order: no new connections, existing ones closed, then verification.</summary>
    Task StopAsync()
    {
        Generation? gen;
        lock (_gate)
            gen = _current;
        int closed = gen?.EndConnections() ?? 0;
        Out($"stopping: listener closed, {closed} connections closed; {_breaks} breaks, {_accepted} connections accepted in all, " +
            $"{_strandedAreas} areas not confirmed deregistered at a break");
        Out($"peer errors on standing grants (rdmalease.verbs.peer_errors by peer): {_peerErrors.Summary()}");
        if (options.VerifyLogs.Count > 0)
        {
            try
            {
                var logs = options.VerifyLogs.Select(AckedLog.Load).ToList();
                Verifier.Result result;
                if (gen is { IsLive: true })
                {
                    // Read through our own mapping: opening the file again would break our own lease.
                    var file = gen.File;
                    result = Verifier.Verify(logs, options.AreaBytes, offset =>
                        offset >= file.Length ? [] : file.Span.Slice((int)offset, (int)Math.Min(RecordFormat.Size, file.Length - offset)).ToArray(), Console.Out);
                }
                else
                {
                    using var handle = File.OpenHandle(options.File);
                    result = Verifier.Verify(logs, options.AreaBytes, Verifier.ReadFrom(handle), Console.Out);
                }
                if (!result.Ok)
                    Environment.ExitCode = 1;
            }
            catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
            {
                Out($"verify failed: {e.Message}");
                Environment.ExitCode = 1;
            }
        }
        Out("stopped; the host now deregisters the region, releases the lease and destroys the QPs, CQ and PD");
        return Task.CompletedTask;
    }

    async Task<Generation> StartGenerationAsync(int number, CancellationToken stop)
    {
        var delay = TimeSpan.FromMilliseconds(100);
        while (true)
        {
            DaxFile? file = null;
            FileLease? lease = null;
            var areas = new LeasedMemoryRegion?[options.Clients];
            _stranded.RemoveAll(area => area.RetryDeregistration());
            try
            {
                // Opened again every time: a truncate may have changed the size, and the mapping must match it.
                file = context.OpenFile(options.File, new DaxFileOptions { Size = File.Exists(options.File) ? null : options.FileSize });
                lease = context.AcquireLease(file);
                for (uint c = 0; c < options.Clients; c++)
                {
                    // An area the file no longer covers (a truncate) is not registered: its client is told to retry.
                    if ((c + 1) * options.AreaBytes <= (ulong)file.Length)
                        areas[c] = context.Own(context.ProtectionDomain.Register(new LeasedFileRange(lease, c * options.AreaBytes, options.AreaBytes), RegionAccess));
                }
                var gen = new Generation(number, file, lease, areas);
                lease.BreakRequested += (_, _) => gen.Broken.TrySetResult();
                if (!lease.IsActive || areas.Any(a => a is { IsDeregistered: true }))
                    gen.Broken.TrySetResult();   // broke before we listened
                if (file.Length < options.FileSize)
                    Out($"generation {number}: warning: the file is {file.Length} bytes, less than the {options.FileSize} the client areas need");
                return gen;
            }
            catch (Exception e) when (e is LeaseUnavailableException or LeaseRevokedException)
            {
                // The breaker may still hold the file open (or a lease): wait and try again.
                foreach (var area in areas)
                    area?.Dispose();
                lease?.Dispose();
                file?.Dispose();
                Out($"generation {number}: lease not available yet ({e.Message}){(_stranded.Count > 0 ? $"; {_stranded.Count} areas of an earlier generation still not deregistered keep the file open" : "")}; retrying in {delay.TotalMilliseconds:0} ms");
                await Task.Delay(delay, stop).ConfigureAwait(false);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(1).Ticks));
            }
            catch
            {
                foreach (var area in areas)
                    area?.Dispose();
                lease?.Dispose();
                file?.Dispose();
                throw;
            }
        }
    }

    async Task AcceptLoopAsync(RdmaListener listener, CancellationToken stop)
    {
        var handlers = new List<Task>();
        while (!stop.IsCancellationRequested)
        {
            RdmaConnectionRequest request;
            try
            {
                request = await listener.AcceptAsync(stop).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                break;
            }
            handlers.RemoveAll(t => t.IsCompleted);
            handlers.Add(Task.Run(() => HandleAsync(request, stop), CancellationToken.None));
        }
        await Task.WhenAll(handlers).ConfigureAwait(false);
    }

    async Task HandleAsync(RdmaConnectionRequest request, CancellationToken stop)
    {
        using (request)
        {
            uint? id = Hello.Decode(request.PrivateData.Span);
            if (id is not { } client || client >= options.Clients)
            {
                string why = id is null ? "not a PmemStore client (no PMSC hello in the private data)"
                    : $"client id {id} is not one of 0..{options.Clients - 1}: start the server with --clients {id + 1} or more";
                Out($"rejected a connection from {request.RemoteEndPoint}: {why}");
                Reject(request, why);
                return;
            }
            var gen = await CurrentAsync(TimeSpan.FromSeconds(5), stop).ConfigureAwait(false);
            if (gen is null)
            {
                Reject(request, "retry: the server is re-leasing its file");
                return;
            }
            if (gen.Areas[(int)client] is not { } area)
            {
                Reject(request, $"retry: the file no longer covers client {client}'s area");
                return;
            }
            // With events: the grant waits for its bind through the channel instead of polling.
            var sendCq = context.Own(context.Device.CreateCompletionQueue(2, withEvents: true));
            var qp = context.Own(context.ProtectionDomain.CreateQueuePair(new QueuePairOptions
            {
                SendCompletionQueue = sendCq, ReceiveCompletionQueue = _cq!, MaxSendRequests = 2, MaxReceiveRequests = 1,
            }));
            if (!gen.TryAdd(qp, client, out string? refusal))
            {
                Generation.DisposePeer(qp);
                Reject(request, refusal!);
                return;
            }
            try
            {
                // Attached before accepting: a break from here on moves this QP to the error state too.
                area.AttachQueuePair(qp);
                // The grant: a window of this client's own over its own area, bound through its QP; the advert carries
                // the window's key, never the area's.
                var conn = await request.AcceptAsync(qp, area.Region, PeerAccess,
                    grant => new Advert((uint)gen.Number, options.Clients, options.AreaBytes, grant).Encode(),
                    new RdmaAcceptOptions { Timeout = TimeSpan.FromSeconds(10) }, stop).ConfigureAwait(false);
                conn.PeerError += (_, e) => OnPeerError(gen, qp, client, e);
                if (!gen.TrySetConnection(qp, conn))
                {
                    conn.Dispose();
                    Generation.DisposePeer(qp);
                    return;
                }
                Interlocked.Increment(ref _accepted);
                // Every connection of an honest client is worth a line; thousands from one id (a reconnect loop, a key
                // sweep) are not: the first 16 per id, then every 1024th.
                int n = _connectionsById.AddOrUpdate(client, 1, (_, v) => v + 1);
                if (n <= 16 || n % 1024 == 0)
                    Out($"generation {gen.Number}: client {client} connected from {conn.RemoteEndPoint} (QP {qp.QueuePairNumber}, grant rkey 0x{conn.Grant!.Remote.RemoteKey:x}, connection {n} of this id)");
                _ = conn.Disconnected.ContinueWith(_ => gen.Drop(qp), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                Out($"generation {gen.Number}: accepting client {client} failed ({e.GetType().Name}: {e.Message}); it will retry");
                gen.Drop(qp);
            }
            catch (OperationCanceledException)
            {
                gen.Drop(qp);
            }
        }
    }

    /// <summary>
    /// A peer sent what its grant does not allow (a key it was not given, a range outside its area...): the device put
    /// its QP in error and the connection revoked its grant. Log it (the first, then every 256th per peer: a key sweep
    /// is thousands) and drop the connection; the peer may reconnect, and gets a new grant of its own area only.
    /// </summary>
    void OnPeerError(Generation gen, QueuePair qp, uint client, RdmaPeerErrorEventArgs e)
    {
        if (e.GrantEnded)
        {
            gen.Drop(qp);   // a write in flight when a break ended the grant: no misbehaviour, the client reconnects
            return;
        }
        string peer = e.RemoteEndPoint.Address.ToString();
        // The first 16 per client id, then every 256th: an honest client's error is worth a line, a sweep's thousands are not.
        int n = _errorsById.AddOrUpdate(client, 1, (_, v) => v + 1);
        if (n <= 16 || n % 256 == 0)
            Out($"peer {peer} (client id {client}): {e.Error} on QP {e.QueuePairNumber}: it used a key or range it was not granted; " +
                $"connection dropped; {n} such errors from this client id, {_peerErrors.Of(peer)} from {peer} so far (rdmalease.verbs.peer_errors)");
        gen.Drop(qp);
    }

    static void Reject(RdmaConnectionRequest request, string why)
    {
        try
        {
            byte[] reason = Encoding.UTF8.GetBytes(why);
            request.Reject(reason.AsSpan(0, Math.Min(reason.Length, RdmaPrivateDataLimits.Reject)));
        }
        catch (Exception e) when (e is VerbsException or ObjectDisposedException or InvalidOperationException)
        {
            Out($"rejecting failed: {e.Message}");
        }
    }

    /// <summary>The live generation, waiting up to <paramref name="wait"/> for one while the server re-leases.</summary>
    async Task<Generation?> CurrentAsync(TimeSpan wait, CancellationToken stop)
    {
        var deadline = DateTime.UtcNow + wait;
        while (true)
        {
            Task<Generation> ready;
            lock (_gate)
            {
                if (_current is { IsLive: true } g)
                    return g;
                ready = _ready.Task;
            }
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
                return null;
            try
            {
                await ready.WaitAsync(left, stop).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                return null;
            }
            if (ready.IsCompleted && !ready.Result.IsLive)
                await Task.Delay(50, stop).ConfigureAwait(false);   // the loop has not replaced the broken one yet
        }
    }
}
