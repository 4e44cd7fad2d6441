namespace RdmaLease.Verbs;

/// <summary>Private data sizes rdma_cm carries on RC over InfiniBand and RoCE (the IB CM's message sizes less rdma_cm's header).</summary>
public static class RdmaPrivateDataLimits
{
    /// <summary>Bytes a connect request carries (REQ).</summary>
    public const int Connect = 56;
    /// <summary>Bytes an accept carries (REP).</summary>
    public const int Accept = 196;
    /// <summary>Bytes a reject carries (REJ).</summary>
    public const int Reject = 148;
}

/// <summary>How <see cref="RdmaConnection.ConnectAsync(System.Net.IPEndPoint, QueuePair, RdmaConnectOptions?, CancellationToken)"/> connects.</summary>
public sealed record RdmaConnectOptions
{
    /// <summary>Sent with the request; at most <see cref="RdmaPrivateDataLimits.Connect"/> bytes. The peer receives the
    /// transport's full 56 bytes, zero padded: put your own length in it if you need one.</summary>
    public ReadOnlyMemory<byte> PrivateData { get; init; }
    /// <summary>The whole connect (address and route resolution, request, response) must finish within this; default 10 s.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>The local address to connect from (null: the kernel picks by routing).</summary>
    public System.Net.IPAddress? SourceAddress { get; init; }
    /// <summary>RDMA READs/atomics this side may have outstanding at the peer (initiator depth).</summary>
    public byte InitiatorDepth { get; init; } = 1;
    /// <summary>RDMA READs/atomics the peer may have outstanding here (responder resources).</summary>
    public byte ResponderResources { get; init; } = 1;
    /// <summary>Transport retries before a RetryExceeded completion (0–7).</summary>
    public byte RetryCount { get; init; } = 7;
    /// <summary>Receiver-not-ready retries (7 = infinite).</summary>
    public byte RnrRetry { get; init; } = 7;
    /// <summary>Local ACK timeout exponent (4.096 µs × 2^n); null keeps what rdma_cm derives from the route.</summary>
    public byte? AckTimeout { get; init; }
    /// <summary>
    /// Operations the peer may direct at the queue pair (RDMA WRITE/READ, atomics, FLUSH); default <see cref="AccessFlags.None"/>:
    /// least privilege, as <see cref="ConnectOptions.RemoteAccess"/>. Grant later with <see cref="QueuePair.ChangeRemoteAccess"/>.
    /// </summary>
    public AccessFlags RemoteAccess { get; init; }
}

/// <summary>How <see cref="RdmaConnectionRequest.AcceptAsync(QueuePair, RdmaAcceptOptions?, CancellationToken)"/> accepts.</summary>
public sealed record RdmaAcceptOptions
{
    /// <summary>Sent with the accept; at most <see cref="RdmaPrivateDataLimits.Accept"/> bytes (the peer receives 196, zero padded).</summary>
    public ReadOnlyMemory<byte> PrivateData { get; init; }
    /// <summary>The peer's confirmation (RTU) must arrive within this; default 10 s.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>RDMA READs/atomics this side may have outstanding at the peer; at most what the peer offered.</summary>
    public byte InitiatorDepth { get; init; } = 1;
    /// <summary>RDMA READs/atomics the peer may have outstanding here.</summary>
    public byte ResponderResources { get; init; } = 1;
    /// <summary>Receiver-not-ready retries (7 = infinite).</summary>
    public byte RnrRetry { get; init; } = 7;
    /// <summary>Local ACK timeout exponent; null keeps what rdma_cm derives.</summary>
    public byte? AckTimeout { get; init; }
    /// <summary>Operations the peer may direct at the queue pair; default <see cref="AccessFlags.None"/>, as for connect.</summary>
    public AccessFlags RemoteAccess { get; init; }
}
