using System.Diagnostics;
using RdmaLease.Verbs;

namespace RdmaLease.PingPong;

/// <summary>
/// One side of ibv_rc_pingpong: a buffer of <c>-s</c> bytes that every SEND goes out of and every receive lands in, an RC
/// queue pair with one send slot and <c>-r</c> receives posted, one completion queue for both, and the loop that counts
/// an iteration as one SEND and one receive completed.
/// </summary>
sealed class PingPongSession : IDisposable
{
    // rc_pingpong's work request ids; `pending` holds the ones whose completion the next SEND waits for.
    const ulong ReceiveId = 1, SendId = 2;

    readonly PingPongOptions _options;
    readonly Device _device;
    readonly ProtectionDomain _pd;
    readonly RegisteredBuffer _buffer;
    readonly CompletionQueue _cq;
    readonly QueuePair _qp;
    readonly int _gidIndex;
    int _receivesPosted;
    ulong _pending;

    /// <summary>What the peer needs: sent in the TCP exchange.</summary>
    public QueuePairEndpoint Local { get; }

    PingPongSession(PingPongOptions options, Device device)
    {
        _options = options;
        _device = device;
        try
        {
            var port = device.QueryPort(options.IbPort);
            if (options.OnDemandPaging)
            {
                var odp = device.Attributes.Odp;
                const OdpTransportCaps needed = OdpTransportCaps.Send | OdpTransportCaps.Receive;
                if (!odp.Supported || (odp.Rc & needed) != needed)
                    throw new PingPongException("The device isn't ODP capable or does not support RC send and receive with ODP");
            }
            if (port.LinkLayer != LinkLayer.Ethernet && port.Lid == 0)
                throw new PingPongException("Couldn't get local LID");
            // ibv_rc_pingpong sends a zero GID without -g, which only InfiniBand can route; our Connect always uses the GRH.
            _gidIndex = options.GidIndex ?? (port.LinkLayer == LinkLayer.Ethernet
                ? throw new PingPongException($"{device.Name} port {options.IbPort} is RoCE: give the GID index to send from with -g " +
                    "(e.g. -g 1 for ::ffff:127.0.0.1 on an rxe device over lo; 'ibv_devinfo -v' lists the GID table)")
                : 0);
            _pd = device.AllocateProtectionDomain();
            _buffer = _pd.AllocateBuffer((ulong)options.Size, AccessFlags.LocalWrite | (options.OnDemandPaging ? AccessFlags.OnDemand : 0));
            _buffer.Span.Fill(0x7b);   // what rc_pingpong sends
            _cq = device.CreateCompletionQueue(options.RxDepth + 1, withEvents: options.Events);
            _qp = _pd.CreateQueuePair(new QueuePairOptions
            {
                SendCompletionQueue = _cq, ReceiveCompletionQueue = _cq, MaxSendRequests = 1, MaxReceiveRequests = options.RxDepth,
            });
            Local = _qp.LocalEndpoint(_gidIndex, options.IbPort);
        }
        catch
        {
            DisposeObjects();   // the device is the caller's until this returns
            throw;
        }
    }

    /// <summary>Opens <c>-d</c>'s device (default: the first one) and makes the objects.</summary>
    public static PingPongSession Open(PingPongOptions options)
    {
        var names = Device.List();
        string name = options.DeviceName
            ?? (names.Count > 0 ? names[0] : null)
            ?? throw new PingPongException("No IB devices found (is an rxe device set up, and ib_uverbs loaded?)");
        if (!names.Contains(name))
            throw new PingPongException($"IB device {name} not found (devices: {(names.Count == 0 ? "none" : string.Join(", ", names))})");
        var device = Device.Open(name);
        try
        {
            return new PingPongSession(options, device);
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Connects the QP to the peer (RESET to RTS) and posts the receives. Our QP takes receives only once out of RESET,
    /// so they are posted here rather than before the exchange as in rc_pingpong; either way before the peer can send.
    /// </summary>
    /// <exception cref="NotSupportedException">ODP at a path MTU where the device's ODP quirk refuses transfers of this size.</exception>
    public void Connect(QueuePairEndpoint remote)
    {
        _qp.Connect(remote, new ConnectOptions
        {
            GidIndex = _gidIndex, Port = _options.IbPort, PathMtu = _options.Mtu, ServiceLevel = _options.ServiceLevel,
            MinRnrTimer = 12, RemoteAccess = AccessFlags.None,   // rc_pingpong's: only SEND and receive
        });
        PostReceives(_options.RxDepth);
    }

    void PostReceives(int count)
    {
        for (int i = 0; i < count; i++)
            _qp.PostReceive(ReceiveId, _buffer.Slice(0, (uint)_options.Size));
        _receivesPosted += count;
    }

    void PostSend()
    {
        _qp.PostSend(SendId, _buffer.Slice(0, (uint)_options.Size), SendFlags.Signaled);
        _pending = ReceiveId | SendId;
    }

    /// <summary>
    /// <c>-n</c> iterations: the client sends first, each side sends again once its last SEND and a receive have completed.
    /// With <c>-e</c> it waits for completions through the CQ's completion channel, otherwise it busy-polls.
    /// </summary>
    /// <returns>The time from the first SEND (client) or the start (server) to the last completion.</returns>
    public async Task<TimeSpan> RunAsync(bool sendFirst, CancellationToken cancellationToken)
    {
        _pending = ReceiveId;
        if (sendFirst)
            PostSend();
        long start = Stopwatch.GetTimestamp();
        var completions = new WorkCompletion[2];
        int iterations = _options.Iterations, sent = 0, received = 0;
        while (received < iterations || sent < iterations)
        {
            int n;
            if (_options.Events)
            {
                n = await _cq.PollAsync(completions, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                do
                    n = _cq.Poll(completions);
                while (n == 0);
            }
            for (int i = 0; i < n; i++)
            {
                var wc = completions[i];
                if (!wc.IsSuccess)
                    throw new PingPongException($"Failed status {wc.StatusDescription} ({(int)wc.Status}) for wr_id {wc.WorkRequestId}", new WorkCompletionException(wc));
                switch (wc.WorkRequestId)
                {
                    case SendId:
                        sent++;
                        break;
                    case ReceiveId:
                        // Refill when one receive is left, as rc_pingpong does.
                        if (--_receivesPosted <= 1)
                            PostReceives(_options.RxDepth - _receivesPosted);
                        received++;
                        break;
                    default:
                        throw new PingPongException($"Completion for unknown wr_id {wc.WorkRequestId}");
                }
                _pending &= ~wc.WorkRequestId;
                if (sent < iterations && _pending == 0)
                    PostSend();
            }
        }
        return Stopwatch.GetElapsedTime(start);
    }

    public void Dispose()
    {
        DisposeObjects();
        _device.Dispose();
    }

    // Children first (a QP before its CQ, a region before its PD); null when the constructor failed before them.
    void DisposeObjects()
    {
        _qp?.Dispose();
        _cq?.Dispose();
        _buffer?.Dispose();
        _pd?.Dispose();
    }
}

/// <summary>A failure ibv_rc_pingpong reports with a message of its own; exit code 1.</summary>
sealed class PingPongException(string message, Exception? inner = null) : Exception(message, inner);
