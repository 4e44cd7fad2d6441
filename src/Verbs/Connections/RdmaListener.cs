using System.Diagnostics;
using System.Net;
using System.Threading.Channels;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>
/// Listens for rdma_cm connection requests (RC) on an address and port: the passive side of
/// <see cref="RdmaConnection.ConnectAsync"/>. Each request arrives as an <see cref="RdmaConnectionRequest"/> from
/// <see cref="AcceptAsync(TimeSpan, CancellationToken)"/>, with the peer's address and private data, to accept on a
/// queue pair of yours or to reject.
/// </summary>
/// <example>
/// <code>
/// using var listener = RdmaListener.Listen(new IPEndPoint(IPAddress.Parse("192.0.2.1"), 7471));
/// using var request = await listener.AcceptAsync(ct);
/// using var conn = await request.AcceptAsync(qp, new RdmaAcceptOptions { PrivateData = regionBytes }, ct);
/// </code>
/// </example>
public sealed class RdmaListener : IDisposable
{
    readonly CmEventChannel _channel;
    readonly CmId _id;
    readonly Channel<RdmaConnectionRequest> _requests = Channel.CreateUnbounded<RdmaConnectionRequest>();
    volatile bool _disposed;

    RdmaListener(CmEventChannel channel, CmId id, IPEndPoint local)
    {
        _channel = channel;
        _id = id;
        LocalEndPoint = local;
    }

    /// <summary>The address and port listened on (the port the kernel chose when 0 was given).</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>
    /// Binds to <paramref name="endPoint"/> (port 0: any free port, see <see cref="LocalEndPoint"/>; address
    /// <see cref="IPAddress.Any"/>: every RDMA device) and listens.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="backlog"/> is not positive.</exception>
    /// <exception cref="VerbsException">The bind or listen failed (port in use, no RDMA device on that address: the message says which).</exception>
    /// <exception cref="RdmaLibraryNotFoundException">librdmacm is not installed.</exception>
    public static RdmaListener Listen(IPEndPoint endPoint, int backlog = 16)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(backlog);
        var channel = new CmEventChannel();
        CmId? id = null;
        try
        {
            id = CmId.Create(channel);
            id.Bind(endPoint);
            id.Listen(backlog, endPoint);
            var local = id.LocalEndPoint ?? endPoint;
            var listener = new RdmaListener(channel, id, local);
            channel.Start(listener.OnEvent);
            return listener;
        }
        catch
        {
            id?.Dispose();
            channel.Dispose();
            throw;
        }
    }

    unsafe void OnEvent(CmEvent e)
    {
        if (e.Type != rdma_cm_event_type.RDMA_CM_EVENT_CONNECT_REQUEST)
        {
            Trace.TraceInformation($"rdma-lease: listener {LocalEndPoint}: {e.Name} (status {e.Status})");
            return;
        }
        if (e.RequestChannel is null)
        {
            // Could not give the request its own channel: refuse it here, where it is.
            Trace.TraceError($"rdma-lease: listener {LocalEndPoint}: a connection request could not be taken over ({e.RequestError}); rejected");
            _ = librdmacm.rdma_reject((rdma_cm_id*)e.Id, null, 0);
            _ = librdmacm.rdma_destroy_id((rdma_cm_id*)e.Id);
            return;
        }
        RdmaConnectionRequest request;
        try
        {
            request = new RdmaConnectionRequest(e);
        }
        catch (Exception ex)
        {
            // The request rejected and destroyed its id itself (RdmaConnectionRequest's constructor).
            Trace.TraceError($"rdma-lease: listener {LocalEndPoint}: a connection request could not be set up ({ex.Message}); rejected");
            return;
        }
        if (_disposed || !_requests.Writer.TryWrite(request))
            request.Dispose();   // rejects it
    }

    /// <summary>Waits for the next connection request.</summary>
    public Task<RdmaConnectionRequest> AcceptAsync(CancellationToken cancellationToken = default) =>
        AcceptAsync(Timeout.InfiniteTimeSpan, cancellationToken);

    /// <summary>Waits at most <paramref name="timeout"/> for the next connection request.</summary>
    /// <exception cref="TimeoutException">No request within <paramref name="timeout"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    /// <exception cref="ObjectDisposedException">The listener was disposed (also while waiting).</exception>
    public async Task<RdmaConnectionRequest> AcceptAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        RdmaConnection.CheckTimeout(timeout, nameof(timeout));
        ObjectDisposedException.ThrowIf(_disposed, this);
        try
        {
            return await _requests.Reader.ReadAsync(cancellationToken).AsTask().WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new ObjectDisposedException(ToString(), "the listener was disposed while waiting for a connection request");
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"{this}: no connection request within {timeout.TotalSeconds:0.###} s.", e);
        }
    }

    /// <summary>Stops listening; requests not yet taken are rejected. Connections already accepted are not affected.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _id.Dispose();
        _channel.Dispose();
        _requests.Writer.TryComplete();
        while (_requests.Reader.TryRead(out var pending))
            pending.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() => $"rdma_cm listener on {LocalEndPoint}";
}
