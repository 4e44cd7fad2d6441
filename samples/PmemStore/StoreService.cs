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
    const AccessFlags RegionAccess = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.FlushPersistent;
    // Least privilege: the clients' QPs may only WRITE and FLUSH to persistence here.
    const AccessFlags PeerAccess = AccessFlags.RemoteWrite | AccessFlags.FlushPersistent;

    readonly Lock _gate = new();
    Generation? _current;
    TaskCompletionSource<Generation> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    CompletionQueue? _cq;
    int _breaks, _accepted;

    static void Out(string line) => Console.Out.WriteLine("PmemStore serve: " + line);

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        RdmaListener? listener = null;
        Task accepting = Task.CompletedTask;
        try
        {
            // The server's QPs only receive RDMA WRITE and FLUSH, which complete nothing here: one small CQ for all.
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
                Out($"generation {gen.Number}: leased {gen.File.Path} ({gen.File.Length} bytes, {gen.Lease.Mechanism}), region rkey 0x{gen.Region.ToRemote().RemoteKey:x}, advertising it");
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
                gen.Region.Dispose();
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
        Out($"stopping: listener closed, {closed} connections closed; {_breaks} breaks, {_accepted} connections accepted in all");
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
            LeasedMemoryRegion? region = null;
            try
            {
                // Opened again every time: a truncate may have changed the size, and the mapping must match it.
                file = context.OpenFile(options.File, new DaxFileOptions { Size = File.Exists(options.File) ? null : options.FileSize });
                lease = context.AcquireLease(file);
                region = context.Own(context.ProtectionDomain.Register(lease, RegionAccess));
                var gen = new Generation(number, file, lease, region, new Advert((uint)number, options.Clients, options.AreaBytes, region.ToRemote()));
                lease.BreakRequested += (_, _) => gen.Broken.TrySetResult();
                if (!lease.IsActive || region.IsDeregistered)
                    gen.Broken.TrySetResult();   // broke before we listened
                if (file.Length < options.FileSize)
                    Out($"generation {number}: warning: the file is {file.Length} bytes, less than the {options.FileSize} the client areas need");
                return gen;
            }
            catch (Exception e) when (e is LeaseUnavailableException or LeaseRevokedException)
            {
                // The breaker may still hold the file open (or a lease): wait and try again.
                region?.Dispose();
                lease?.Dispose();
                file?.Dispose();
                Out($"generation {number}: lease not available yet ({e.Message}); retrying in {delay.TotalMilliseconds:0} ms");
                await Task.Delay(delay, stop).ConfigureAwait(false);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(1).Ticks));
            }
            catch
            {
                region?.Dispose();
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
            var qp = context.Own(context.ProtectionDomain.CreateQueuePair(new QueuePairOptions
            {
                SendCompletionQueue = _cq!, ReceiveCompletionQueue = _cq!, MaxSendRequests = 1, MaxReceiveRequests = 1,
            }));
            if (!gen.TryAdd(qp))
            {
                qp.Dispose();
                Reject(request, "retry: the region was revoked just now");
                return;
            }
            try
            {
                // Attached before accepting: a break from here on moves this QP to the error state too.
                gen.Region.AttachQueuePair(qp);
                var conn = await request.AcceptAsync(qp, new RdmaAcceptOptions
                {
                    PrivateData = gen.Advert.Encode(), RemoteAccess = PeerAccess, Timeout = TimeSpan.FromSeconds(10),
                }, stop).ConfigureAwait(false);
                if (!gen.TrySetConnection(qp, conn))
                {
                    conn.Dispose();
                    qp.Dispose();
                    return;
                }
                Interlocked.Increment(ref _accepted);
                Out($"generation {gen.Number}: client {client} connected from {conn.RemoteEndPoint} (QP {qp.QueuePairNumber})");
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
