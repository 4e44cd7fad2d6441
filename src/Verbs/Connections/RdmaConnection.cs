using System.Diagnostics;
using System.Net;
using System.Threading.Channels;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>
/// An RC connection made with rdma_cm (librdmacm) on one of your queue pairs: <see cref="ConnectAsync"/> on the active
/// side, <see cref="RdmaListener"/> and <see cref="RdmaConnectionRequest.AcceptAsync(QueuePair, RdmaAcceptOptions?, CancellationToken)"/>
/// on the passive side. rdma_cm resolves the address and route, exchanges QP numbers, PSNs and private data, and the
/// library moves your queue pair through INIT, RTR and RTS with rdma_cm's attributes; the queue pair stays yours
/// (dispose it yourself, after the connection). See docs/connections.md.
/// </summary>
/// <remarks>
/// Events are read on the library's shared event thread; no thread blocks on a connection. Disposing the connection
/// moves its queue pair to the error state (outstanding work completes with WorkRequestFlushed) and destroys the
/// rdma_cm id, which tells the peer (it sees <see cref="Disconnected"/> complete).
/// </remarks>
/// <example>
/// <code>
/// using var conn = await RdmaConnection.ConnectAsync(new IPEndPoint(IPAddress.Parse("192.0.2.2"), 7471), qp,
///     new RdmaConnectOptions { PrivateData = hello });
/// var region = RemoteRegion.Decode(conn.RemotePrivateData.Span);
/// qp.PostWrite(1, buffer.Slice(0, 4096), region, 0);
/// </code>
/// </example>
public sealed class RdmaConnection : IDisposable
{
    readonly CmId _id;
    readonly Channel<CmEvent> _events = Channel.CreateUnbounded<CmEvent>(new UnboundedChannelOptions { SingleReader = true });
    readonly TaskCompletionSource _disconnected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    QueuePair? _qp;
    volatile bool _established, _localDisconnect, _disposed;
    int _disposeOnce;
    RemoteGrant? _grant;
    volatile bool _revokedByConnection;   // the connection ended its grant itself (disconnect, dispose, an error of the peer's)
    Device? _watchedDevice;
    EventHandler<AsyncEvent>? _deviceEvents;

    internal RdmaConnection(CmId id)
    {
        _id = id;
    }

    /// <summary>The queue pair the connection drives.</summary>
    public QueuePair QueuePair => _qp ?? throw new InvalidOperationException("the connection has no queue pair yet");

    /// <summary>The peer's address and rdma_cm port.</summary>
    public IPEndPoint RemoteEndPoint { get; private set; } = new(IPAddress.None, 0);

    /// <summary>This side's address and rdma_cm port.</summary>
    public IPEndPoint LocalEndPoint { get; private set; } = new(IPAddress.None, 0);

    /// <summary>
    /// What the peer sent: its connect request's private data (passive side) or its accept's (active side). IB and RoCE
    /// carry no length, so this is the transport's full size (56 or 196 bytes), zero padded.
    /// </summary>
    public ReadOnlyMemory<byte> RemotePrivateData { get; private set; }

    /// <summary>The verbs device the connection runs on (rdma_cm chose it by address).</summary>
    public string DeviceName { get; private set; } = "";

    /// <summary>True from establishment until a disconnect (either side) or Dispose.</summary>
    public bool IsConnected => _established && !_disconnected.Task.IsCompleted;

    /// <summary>
    /// Completes when the connection ends: the peer disconnected or went away (rdma_cm's DISCONNECTED), this side
    /// called <see cref="DisconnectAsync(TimeSpan, CancellationToken)"/>, the device was removed, or the connection was disposed. It never
    /// faults. By then the queue pair is in the error state.
    /// </summary>
    public Task Disconnected => _disconnected.Task;

    /// <summary>True when the peer ended the connection (rather than this side).</summary>
    public bool DisconnectedByPeer { get; private set; }

    /// <summary>
    /// The grant made when this connection was accepted with a region
    /// (<see cref="RdmaConnectionRequest.AcceptAsync(QueuePair, MemoryRegion, AccessFlags, Func{RemoteRegion, ReadOnlyMemory{byte}}, RdmaAcceptOptions?, CancellationToken)"/>),
    /// or null. The connection revokes it when the peer disconnects, on <see cref="PeerError"/> and on Dispose.
    /// </summary>
    public RemoteGrant? Grant => _grant;

    /// <summary>
    /// Raised, on a thread-pool thread, when the device reports that what the peer sent put this connection's queue
    /// pair in the error state: a key it was not granted or an access outside its grant
    /// (<see cref="AsyncEventType.QpAccessError"/>), a malformed request (<see cref="AsyncEventType.QpRequestError"/>),
    /// or a fatal error of the QP. By then the connection's grant is revoked; each event also counts in the
    /// <c>RdmaLease.Verbs</c> meter's <c>rdmalease.verbs.peer_errors</c>, tagged with the peer's address, so a key sweep
    /// shows there. End the connection (the QP stays in error); refusing the peer's next connections is the application's call.
    /// </summary>
    public event EventHandler<RdmaPeerErrorEventArgs>? PeerError;

    internal void OnEvent(CmEvent e) => _events.Writer.TryWrite(e);

    internal void Hold(RemoteGrant grant) => _grant = grant;

    /// <summary>Starts watching the device's async events for this connection's queue pair (before the peer can send).</summary>
    internal void WatchPeerErrors()
    {
        if (_qp is not { } qp || _deviceEvents is not null)
            return;
        uint qpn = qp.QueuePairNumber;
        _deviceEvents = (_, e) =>
        {
            if (e.QueuePairNumber == qpn && e.Type is AsyncEventType.QpAccessError or AsyncEventType.QpRequestError or AsyncEventType.QpFatal)
                OnPeerError(e.Type, qpn);
        };
        _watchedDevice = qp.ProtectionDomain.Device;
        _watchedDevice.AsyncEvent += _deviceEvents;
    }

    void OnPeerError(AsyncEventType error, uint qpn)
    {
        // Whether the grant still stood when the peer erred: a grant whose region a lease break revoked (or that ended)
        // fails the writes a peer had in flight, which is no misbehaviour; a standing one means the peer used a key or
        // range it was never given.
        // Ended by the application (Revoke) or the region's end (a lease break) counts as ended; ended by this connection
        // on the peer's own disconnect or error does not (the device may report the error after the peer left).
        bool grantEnded = _grant is { } g && ((g.IsRevoked && !_revokedByConnection) || g.Region.Revocation is not null || g.Region.IsDisposed);
        RevokeGrant();
        VerbsMetrics.PeerError(RemoteEndPoint.Address, error, grantEnded);
        if (!_disposed)
            PeerError?.Invoke(this, new RdmaPeerErrorEventArgs(error, RemoteEndPoint, qpn, grantEnded));
    }

    void RevokeGrant()
    {
        if (_grant is { IsRevoked: false } g)
        {
            _revokedByConnection = true;
            g.Revoke();
        }
    }

    // The device reports an error on its event thread, and the peer's disconnect (which ends this connection) can be
    // handled before that report is: keep listening for a while after the end, so the metric misses nothing. QP numbers
    // are allocated cyclically, so no other QP has this one meanwhile.
    void StopWatchingSoon() => _ = Task.Delay(TimeSpan.FromSeconds(5)).ContinueWith(_ => StopWatching(), TaskScheduler.Default);

    void StopWatching()
    {
        if (_watchedDevice is { } device && _deviceEvents is { } handler)
        {
            try
            {
                device.AsyncEvent -= handler;
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    internal async Task<CmEvent> NextEventAsync(CancellationToken ct) => await _events.Reader.ReadAsync(ct).ConfigureAwait(false);

    /// <summary>
    /// Connects <paramref name="queuePair"/> (RC, in the RESET state, not used by another connection) to the listener
    /// at <paramref name="remote"/>: address resolution, route resolution, the request with your private data, the
    /// response with the peer's, all within <see cref="RdmaConnectOptions.Timeout"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Private data longer than <see cref="RdmaPrivateDataLimits.Connect"/>, a QP that is not RC, a non-positive timeout.</exception>
    /// <exception cref="RdmaConnectionRejectedException">The peer rejected, or nobody listens there.</exception>
    /// <exception cref="RdmaConnectionException">Address or route resolution failed, the peer was unreachable, the
    /// device rdma_cm chose is not the queue pair's; the message says what to check.</exception>
    /// <exception cref="TimeoutException">The timeout passed; the message names the step that was waiting.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    /// <remarks>On any failure the rdma_cm id is destroyed and the queue pair is back in RESET, ready for another attempt.</remarks>
    public static async Task<RdmaConnection> ConnectAsync(IPEndPoint remote, QueuePair queuePair, RdmaConnectOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(remote);
        ArgumentNullException.ThrowIfNull(queuePair);
        options ??= new RdmaConnectOptions();
        CheckQueuePair(queuePair, nameof(queuePair));
        RdmaCm.CheckPrivateData(options.PrivateData.Span, RdmaPrivateDataLimits.Connect, "a connect request", nameof(options));
        CheckTimeout(options.Timeout, nameof(options));
        if (remote.Port == 0)
            throw new ArgumentException($"{remote}: give the port the peer's RdmaListener listens on", nameof(remote));
        cancellationToken.ThrowIfCancellationRequested();

        var channel = new CmEventChannel();
        CmId? id = null;
        RdmaConnection? conn = null;
        bool claimed = false;
        string step = "address resolution";
        using var timeout = new CancellationTokenSource(options.Timeout);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            id = CmId.Create(channel);
            conn = new RdmaConnection(id);
            channel.Start(conn.OnEvent);
            if (!queuePair.TryClaimForConnection(conn))
                throw new InvalidOperationException($"{queuePair} is already used by another rdma_cm connection: give each connection its own queue pair.");
            claimed = true;
            conn._qp = queuePair;
            int stepMs = (int)Math.Clamp(options.Timeout.TotalMilliseconds, 1, int.MaxValue);
            string target = remote.ToString();

            id.ResolveAddress(options.SourceAddress, remote, stepMs);
            Expect(await conn.NextEventAsync(linked.Token).ConfigureAwait(false), rdma_cm_event_type.RDMA_CM_EVENT_ADDR_RESOLVED, remote, options.SourceAddress);
            conn.CheckDevice(queuePair, target);

            step = "route resolution";
            id.ResolveRoute(stepMs, remote);
            Expect(await conn.NextEventAsync(linked.Token).ConfigureAwait(false), rdma_cm_event_type.RDMA_CM_EVENT_ROUTE_RESOLVED, remote, options.SourceAddress);

            step = "the connection request";
            queuePair.MoveWith(id, ibv_qp_state.IBV_QPS_INIT, options.RemoteAccess, options.ResponderResources, options.InitiatorDepth, options.AckTimeout, "RESET->INIT (rdma_cm)");
            id.Connect(queuePair.QueuePairNumber, options.PrivateData.Span, options.ResponderResources, options.InitiatorDepth, options.RetryCount, options.RnrRetry, target);
            var response = await conn.NextEventAsync(linked.Token).ConfigureAwait(false);
            Expect(response, rdma_cm_event_type.RDMA_CM_EVENT_CONNECT_RESPONSE, remote, options.SourceAddress);

            queuePair.MoveWith(id, ibv_qp_state.IBV_QPS_RTR, AccessFlags.None, options.ResponderResources, options.InitiatorDepth, options.AckTimeout, "INIT->RTR (rdma_cm)");
            queuePair.MoveWith(id, ibv_qp_state.IBV_QPS_RTS, AccessFlags.None, options.ResponderResources, options.InitiatorDepth, options.AckTimeout, "RTR->RTS (rdma_cm)");
            conn.WatchPeerErrors();
            id.Establish(target);   // the RTU: the passive side's accept completes
            conn.RemotePrivateData = response.PrivateData;
            conn.StartMonitoring();
            return conn;
        }
        catch (Exception e)
        {
            conn?.Abandon(resetQueuePair: claimed);
            if (conn is null)
            {
                id?.Dispose();
                channel.Dispose();
            }
            if (e is OperationCanceledException && timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
                throw new TimeoutException($"connecting to {remote}: {step} did not finish within {options.Timeout.TotalSeconds:0.###} s. " +
                    (step == "the connection request"
                        ? "The peer did not answer or accept in time: is its application accepting (RdmaListener.AcceptAsync)?"
                        : AddressHint(remote, options.SourceAddress)), e);
            throw;
        }
    }

    internal static void CheckQueuePair(QueuePair qp, string paramName)
    {
        ObjectDisposedException.ThrowIf(qp.IsDisposed, qp);
        if (qp.Type != QueuePairType.ReliableConnected)
            throw new ArgumentException($"{qp} is {qp.Type}: rdma_cm connections here are RC; create the queue pair with QueuePairType.ReliableConnected.", paramName);
    }

    internal static void CheckTimeout(TimeSpan timeout, string paramName)
    {
        if (timeout <= TimeSpan.Zero && timeout != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(paramName, timeout, "the timeout must be positive (or Timeout.InfiniteTimeSpan)");
    }

    internal void CheckDevice(QueuePair qp, string target)
    {
        DeviceName = _id.DeviceName ?? "";
        if (DeviceName != qp.ProtectionDomain.Device.Name)
            throw new RdmaConnectionException(RdmaConnectionFailure.DeviceMismatch, target, 0,
                $"rdma_cm reaches {target} through device '{DeviceName}', but {qp} is on '{qp.ProtectionDomain.Device.Name}': " +
                $"create the queue pair (and its protection domain and memory) on Device.Open(\"{DeviceName}\"), or connect to an address that device '{qp.ProtectionDomain.Device.Name}' serves.");
    }

    static void Expect(CmEvent e, rdma_cm_event_type expected, IPEndPoint remote, IPAddress? source)
    {
        if (e.Type == expected && e.Status == 0)
            return;
        throw Failure(e, remote, source);
    }

    /// <summary>What to check when no device or route serves an address.</summary>
    internal static string AddressHint(IPEndPoint destination, IPAddress? source) =>
        $"Check that an RDMA device is bound to the network interface that carries {(source is null ? "the route to " + destination.Address : source.ToString())} " +
        "(`rdma link`; soft-RoCE: `rdma link add rxe0 type rxe netdev <interface>`), that the interface is up and has the address " +
        $"(`ip addr`, `ip route get {destination.Address}`), and that the rdma_ucm kernel module is loaded. rdma_cm cannot use the " +
        "loopback interface (127.0.0.1, ::1): connect to an address of an interface an RDMA device is bound to, even on this host.";

    internal static string LoopbackNote(IPEndPoint remote) => IPAddress.IsLoopback(remote.Address)
        ? $"rdma_cm cannot route over the loopback interface ({remote.Address}): connect to the address of an interface an RDMA device is bound to (`rdma link`), even on this host. "
        : "";

    internal static Exception Failure(CmEvent e, IPEndPoint remote, IPAddress? source)
    {
        string target = remote.ToString();
        int errno = e.Status < 0 ? -e.Status : 0;
        string status = errno != 0 ? Errno.Describe(errno) : $"status {e.Status}";
        return e.Type switch
        {
            rdma_cm_event_type.RDMA_CM_EVENT_ADDR_ERROR => new RdmaConnectionException(RdmaConnectionFailure.AddressResolution, target, errno,
                $"Address resolution of {remote.Address} failed ({e.Name}, {status}). " + AddressHint(remote, source)),
            rdma_cm_event_type.RDMA_CM_EVENT_ROUTE_ERROR => new RdmaConnectionException(RdmaConnectionFailure.RouteResolution, target, errno,
                $"Route resolution to {remote.Address} failed ({e.Name}, {status}). " + LoopbackNote(remote) + "Check that {remote.Address} is reachable over an interface an RDMA device serves (`ip route get {remote.Address}`, its neighbour entry) and that both ends are on the same RoCE network."),
            rdma_cm_event_type.RDMA_CM_EVENT_UNREACHABLE => new RdmaConnectionException(RdmaConnectionFailure.Unreachable, target, errno,
                $"{remote} did not answer the connection request ({e.Name}, {status}). Check that a host with an RDMA device is at {remote.Address}, that its rdma_ucm module is loaded and that nothing drops RoCE (UDP 4791) between the two."),
            rdma_cm_event_type.RDMA_CM_EVENT_REJECTED => e.Status == 28
                ? new RdmaConnectionRejectedException(target, e.Status, true, e.PrivateData,
                    $"{remote} rejected the connection (its application called Reject); its private data ({e.PrivateData.Length} bytes) is in PrivateData.")
                : new RdmaConnectionRejectedException(target, e.Status, false, e.PrivateData, e.Status == 8
                    ? $"Nobody listens on rdma_cm port {remote.Port} at {remote.Address} (rejected by the peer's kernel, reason 8: invalid service id). Check the port and that the peer's RdmaListener is started."
                    : $"{remote} rejected the connection (reason {e.Status}). Check that the peer is listening there and accepts RC connections."),
            rdma_cm_event_type.RDMA_CM_EVENT_CONNECT_ERROR => new RdmaConnectionException(RdmaConnectionFailure.ConnectError, target, errno,
                $"The connection with {remote} could not be completed ({e.Name}, {status}): the peer gave up or its queue pair could not be moved to RTR/RTS."),
            rdma_cm_event_type.RDMA_CM_EVENT_DEVICE_REMOVAL => new RdmaConnectionException(RdmaConnectionFailure.DeviceRemoved, target, errno,
                $"The RDMA device of the connection with {remote} was removed ({e.Name})."),
            rdma_cm_event_type.RDMA_CM_EVENT_DISCONNECTED or rdma_cm_event_type.RDMA_CM_EVENT_TIMEWAIT_EXIT => new RdmaConnectionException(RdmaConnectionFailure.Disconnected, target, errno,
                $"{remote} disconnected before the connection was established ({e.Name})."),
            _ => new RdmaConnectionException(RdmaConnectionFailure.ConnectError, target, errno,
                $"Unexpected rdma_cm event {e.Name} ({status}) while connecting with {remote}."),
        };
    }

    /// <summary>Passive side: the request's id and addresses, before the accept.</summary>
    internal void InitializeFromRequest(CmEvent request)
    {
        RemotePrivateData = request.PrivateData;
        RemoteEndPoint = _id.RemoteEndPoint ?? RemoteEndPoint;
        LocalEndPoint = _id.LocalEndPoint ?? LocalEndPoint;
        DeviceName = _id.DeviceName ?? "";
    }

    internal CmId Id => _id;

    internal void SetQueuePair(QueuePair qp) => _qp = qp;

    internal void StartMonitoring()
    {
        RemoteEndPoint = _id.RemoteEndPoint ?? RemoteEndPoint;
        LocalEndPoint = _id.LocalEndPoint ?? LocalEndPoint;
        _established = true;
        _ = MonitorAsync();
    }

    // After establishment: the rest of the connection's events, in order.
    async Task MonitorAsync()
    {
        try
        {
            await foreach (var e in _events.Reader.ReadAllAsync().ConfigureAwait(false))
            {
                if (e.Type is rdma_cm_event_type.RDMA_CM_EVENT_DISCONNECTED or rdma_cm_event_type.RDMA_CM_EVENT_DEVICE_REMOVAL)
                {
                    bool byPeer = !_localDisconnect;
                    MoveQueuePairToError();
                    RevokeGrant();
                    if (byPeer && !_disposed)
                        _ = _id.Disconnect();   // answers the peer's DREQ at once (a DREP), rather than at destroy
                    DisconnectedByPeer = byPeer;
                    _disconnected.TrySetResult();
                }
            }
        }
        catch (Exception ex) when (ex is ObjectDisposedException or VerbsException)
        {
            _disconnected.TrySetResult();
        }
    }

    void MoveQueuePairToError()
    {
        try
        {
            if (_qp is { IsDisposed: false } qp && qp.QueryState() != QueuePairState.Error)
                qp.MoveToError();
        }
        catch (Exception ex) when (ex is ObjectDisposedException or VerbsException)
        {
            // The QP is gone or already unusable: nothing left to stop.
        }
    }

    /// <summary>Disconnects (rdma_disconnect) and waits, at most 10 s, for rdma_cm to confirm.</summary>
    public Task DisconnectAsync(CancellationToken cancellationToken = default) => DisconnectAsync(TimeSpan.FromSeconds(10), cancellationToken);

    /// <summary>
    /// Moves the queue pair to the error state (outstanding work completes with WorkRequestFlushed), sends the
    /// disconnect and waits until rdma_cm reports the connection ended (<see cref="Disconnected"/>). Idempotent.
    /// </summary>
    /// <exception cref="TimeoutException">rdma_cm did not confirm within <paramref name="timeout"/> (the connection is ended locally anyway; dispose it).</exception>
    public async Task DisconnectAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        CheckTimeout(timeout, nameof(timeout));
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_established)
            throw new InvalidOperationException("the connection was never established");
        if (!_disconnected.Task.IsCompleted)
        {
            _localDisconnect = true;
            MoveQueuePairToError();
            int errno = _id.Disconnect();
            if (errno != 0 && errno != Errno.EINVAL && !_disconnected.Task.IsCompleted)
                throw new VerbsException("rdma_disconnect", ToString(), errno);
        }
        try
        {
            await _disconnected.Task.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"{this}: rdma_cm did not confirm the disconnect within {timeout.TotalSeconds:0.###} s; dispose the connection.", e);
        }
    }

    /// <summary>A failed connect or accept: destroy the id, and put the queue pair back to RESET for another attempt.</summary>
    internal void Abandon(bool resetQueuePair)
    {
        var qp = _qp;
        DisposeCore();
        if (qp is not null && resetQueuePair)
        {
            try
            {
                if (!qp.IsDisposed)
                    qp.ResetAfterFailedConnection();
            }
            catch (Exception ex) when (ex is ObjectDisposedException or VerbsException)
            {
                Trace.TraceWarning($"rdma-lease: {qp} could not be reset after a failed connect: {ex.Message}");
            }
            qp.ReleaseConnectionClaim(this);
        }
    }

    /// <summary>
    /// Ends the connection: the queue pair goes to the error state, the rdma_cm id is destroyed (the peer sees
    /// DISCONNECTED) and <see cref="Disconnected"/> completes. The queue pair itself stays yours to dispose.
    /// </summary>
    public void Dispose()
    {
        if (_established)
            MoveQueuePairToError();
        DisposeCore();
        _qp?.ReleaseConnectionClaim(this);
    }

    void DisposeCore()
    {
        if (Interlocked.Exchange(ref _disposeOnce, 1) != 0)
            return;
        _disposed = true;
        StopWatchingSoon();
        RevokeGrant();
        _id.Dispose();            // rdma_destroy_id: waits for nothing of ours (every event was acknowledged on arrival)
        _id.Channel.Dispose();
        _events.Writer.TryComplete();
        _disconnected.TrySetResult();
    }

    /// <inheritdoc/>
    public override string ToString() => $"rdma_cm connection {LocalEndPoint} -> {RemoteEndPoint} on {(DeviceName.Length == 0 ? "?" : DeviceName)}";
}
