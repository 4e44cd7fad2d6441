using System.Net;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>
/// A connection request a <see cref="RdmaListener"/> received: who asks, with what private data. Accept it on a queue
/// pair of yours (<see cref="AcceptAsync(QueuePair, RdmaAcceptOptions?, CancellationToken)"/>) or
/// <see cref="Reject"/> it; disposing it untaken rejects it.
/// </summary>
public sealed class RdmaConnectionRequest : IDisposable
{
    readonly RdmaConnection _connection;
    int _state;   // 0 pending, 1 accepting/accepted, 2 rejected/disposed

    internal RdmaConnectionRequest(CmEvent e)
    {
        var id = CmId.Adopt(e.Id, e.RequestChannel!);
        _connection = new RdmaConnection(id);
        try
        {
            _connection.InitializeFromRequest(e);
            e.RequestChannel!.Start(_connection.OnEvent);
        }
        catch
        {
            // Refuse rather than leave the peer waiting; the id and its channel are destroyed with the connection.
            try { id.Reject(default, "a connection request"); } catch (VerbsException) { }
            _connection.Abandon(resetQueuePair: false);
            throw;
        }
        ResponderResources = e.ResponderResources;
        InitiatorDepth = e.InitiatorDepth;
    }

    /// <summary>The peer's address and rdma_cm port.</summary>
    public IPEndPoint RemoteEndPoint => _connection.RemoteEndPoint;

    /// <summary>The local address and port the request arrived on.</summary>
    public IPEndPoint LocalEndPoint => _connection.LocalEndPoint;

    /// <summary>The peer's private data: the transport's full 56 bytes, zero padded (IB and RoCE carry no length).</summary>
    public ReadOnlyMemory<byte> PrivateData => _connection.RemotePrivateData;

    /// <summary>The verbs device the request arrived on: accept it on a queue pair of this device.</summary>
    public string DeviceName => _connection.DeviceName;

    /// <summary>RDMA READs/atomics the peer wants to have outstanding here.</summary>
    public byte ResponderResources { get; }

    /// <summary>RDMA READs/atomics the peer accepts from this side.</summary>
    public byte InitiatorDepth { get; }

    /// <summary>Accepts with default options and no private data.</summary>
    public Task<RdmaConnection> AcceptAsync(QueuePair queuePair, CancellationToken cancellationToken = default) =>
        AcceptAsync(queuePair, null, cancellationToken);

    /// <summary>
    /// Accepts the request on <paramref name="queuePair"/> (RC, in RESET, on <see cref="DeviceName"/>): moves it to
    /// RTS with rdma_cm's attributes, sends the accept with your private data and waits for the peer's confirmation.
    /// </summary>
    /// <exception cref="ArgumentException">Private data longer than <see cref="RdmaPrivateDataLimits.Accept"/>, a QP that is not RC.</exception>
    /// <exception cref="RdmaConnectionException">The queue pair is on another device (the request stays pending: accept on
    /// the right device or reject), or the peer gave up.</exception>
    /// <exception cref="TimeoutException">No confirmation within <see cref="RdmaAcceptOptions.Timeout"/>.</exception>
    /// <exception cref="InvalidOperationException">Already accepted or rejected.</exception>
    public Task<RdmaConnection> AcceptAsync(QueuePair queuePair, RdmaAcceptOptions? options, CancellationToken cancellationToken = default) =>
        AcceptCoreAsync(queuePair, options, null, AccessFlags.None, null, cancellationToken);

    /// <summary>
    /// Accepts the request on <paramref name="queuePair"/> and grants the peer <paramref name="access"/> to
    /// <paramref name="region"/> through a memory window of its own (<see cref="QueuePair.GrantAsync(MemoryRegion, AccessFlags, CancellationToken)"/>),
    /// bound before the accept is sent: <paramref name="privateData"/> turns the grant's <see cref="RemoteRegion"/> into
    /// the accept's private data (the peer learns the window's key, never the region's). The QP grants the peer exactly
    /// the operations granted (plus <see cref="RdmaAcceptOptions.RemoteAccess"/>). The connection holds the grant
    /// (<see cref="RdmaConnection.Grant"/>) and revokes it when the peer disconnects, when the connection is disposed and
    /// when the peer's QP reports an error (<see cref="RdmaConnection.PeerError"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The region grants remote access by its own key, or does not fit (see
    /// <see cref="QueuePair.GrantAsync(MemoryRegion, AccessFlags, CancellationToken)"/>); the private data is too long.</exception>
    public Task<RdmaConnection> AcceptAsync(QueuePair queuePair, MemoryRegion region, AccessFlags access, Func<RemoteRegion, ReadOnlyMemory<byte>> privateData,
        RdmaAcceptOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(region);
        ArgumentNullException.ThrowIfNull(privateData);
        if (access == AccessFlags.None)
            throw new ArgumentException("grant at least one operation (RemoteWrite, RemoteRead, ...)", nameof(access));
        return AcceptCoreAsync(queuePair, options, region, access, privateData, cancellationToken);
    }

    async Task<RdmaConnection> AcceptCoreAsync(QueuePair queuePair, RdmaAcceptOptions? options, MemoryRegion? region, AccessFlags access,
        Func<RemoteRegion, ReadOnlyMemory<byte>>? privateData, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(queuePair);
        options ??= new RdmaAcceptOptions();
        RdmaConnection.CheckQueuePair(queuePair, nameof(queuePair));
        RdmaCm.CheckPrivateData(options.PrivateData.Span, RdmaPrivateDataLimits.Accept, "an accept", nameof(options));
        RdmaConnection.CheckTimeout(options.Timeout, nameof(options));
        cancellationToken.ThrowIfCancellationRequested();
        string target = RemoteEndPoint.ToString();
        _connection.CheckDevice(queuePair, target);   // before taking the request: a mismatch leaves it pending
        if (Interlocked.CompareExchange(ref _state, 1, 0) != 0)
            throw new InvalidOperationException($"the request from {RemoteEndPoint} was already accepted, rejected or disposed");
        if (!queuePair.TryClaimForConnection(_connection))
        {
            _state = 0;
            throw new InvalidOperationException($"{queuePair} is already used by another rdma_cm connection: give each connection its own queue pair.");
        }
        _connection.SetQueuePair(queuePair);
        using var timeout = new CancellationTokenSource(options.Timeout);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            var id = _connection.Id;
            queuePair.MoveWith(id, ibv_qp_state.IBV_QPS_INIT, options.RemoteAccess | access, options.ResponderResources, options.InitiatorDepth, options.AckTimeout, "RESET->INIT (rdma_cm)");
            queuePair.MoveWith(id, ibv_qp_state.IBV_QPS_RTR, AccessFlags.None, options.ResponderResources, options.InitiatorDepth, options.AckTimeout, "INIT->RTR (rdma_cm)");
            queuePair.MoveWith(id, ibv_qp_state.IBV_QPS_RTS, AccessFlags.None, options.ResponderResources, options.InitiatorDepth, options.AckTimeout, "RTR->RTS (rdma_cm)");
            ReadOnlyMemory<byte> data = options.PrivateData;
            if (region is not null)
            {
                // Bound and executed before the accept leaves: the peer can use the key as soon as it has it.
                var grant = await queuePair.GrantAsync(region, access, linked.Token).ConfigureAwait(false);
                _connection.Hold(grant);
                data = privateData!(grant.Remote);
                RdmaCm.CheckPrivateData(data.Span, RdmaPrivateDataLimits.Accept, "an accept", nameof(privateData));
            }
            _connection.WatchPeerErrors();
            id.Accept(queuePair.QueuePairNumber, data.Span, options.ResponderResources, options.InitiatorDepth, options.RnrRetry, target);
            var e = await _connection.NextEventAsync(linked.Token).ConfigureAwait(false);
            if (e.Type != rdma_cm_event_type.RDMA_CM_EVENT_ESTABLISHED || e.Status != 0)
                throw RdmaConnection.Failure(e, RemoteEndPoint, null);
            _connection.StartMonitoring();
            return _connection;
        }
        catch (Exception e)
        {
            _connection.Abandon(resetQueuePair: true);
            if (e is OperationCanceledException && timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
                throw new TimeoutException($"accepting {RemoteEndPoint}: the peer did not confirm within {options.Timeout.TotalSeconds:0.###} s.", e);
            throw;
        }
    }

    /// <summary>Rejects the request, sending <paramref name="privateData"/> (at most <see cref="RdmaPrivateDataLimits.Reject"/> bytes).</summary>
    /// <exception cref="ArgumentException">Private data too long.</exception>
    /// <exception cref="InvalidOperationException">Already accepted or rejected.</exception>
    public void Reject(ReadOnlySpan<byte> privateData = default)
    {
        RdmaCm.CheckPrivateData(privateData, RdmaPrivateDataLimits.Reject, "a reject", nameof(privateData));
        if (Interlocked.CompareExchange(ref _state, 2, 0) != 0)
            throw new InvalidOperationException($"the request from {RemoteEndPoint} was already accepted, rejected or disposed");
        try
        {
            _connection.Id.Reject(privateData, RemoteEndPoint.ToString());
        }
        finally
        {
            _connection.Abandon(resetQueuePair: false);
        }
    }

    /// <summary>Rejects the request if it was neither accepted nor rejected. An accepted connection is not affected.</summary>
    public void Dispose()
    {
        if (Interlocked.CompareExchange(ref _state, 2, 0) != 0)
            return;
        try
        {
            _connection.Id.Reject(default, RemoteEndPoint.ToString());
        }
        catch (VerbsException)
        {
            // The peer has gone already; destroying the id is all that is left.
        }
        _connection.Abandon(resetQueuePair: false);
    }

    /// <inheritdoc/>
    public override string ToString() => $"rdma_cm connection request from {RemoteEndPoint} on {DeviceName}";
}
