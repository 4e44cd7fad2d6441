namespace RdmaLease.Verbs;

/// <summary>
/// A queue pair's attributes as the kernel reports them (<see cref="QueuePair.Query"/>, <c>ibv_query_qp</c>): its state,
/// its path to the peer (service level, traffic class, flow label, hop limit, P_Key index, path MTU), its retry
/// settings, the operations peers may direct at it and its packet sequence numbers.
/// </summary>
public sealed record QueuePairAttributes
{
    /// <summary>RESET, INIT, RTR, RTS, ... or ERR.</summary>
    public required QueuePairState State { get; init; }
    /// <summary>The path MTU (RC/UC; set at RTR).</summary>
    public required Mtu PathMtu { get; init; }
    /// <summary>Service level (0..15) of the primary path.</summary>
    public required byte ServiceLevel { get; init; }
    /// <summary>Traffic class of the GRH (RoCE: the IP header's DSCP and ECN bits).</summary>
    public required byte TrafficClass { get; init; }
    /// <summary>Flow label of the GRH (20 bits).</summary>
    public required uint FlowLabel { get; init; }
    /// <summary>Hop limit of the GRH (RoCE: the IP TTL).</summary>
    public required byte HopLimit { get; init; }
    /// <summary>Index of the P_Key in the port's table.</summary>
    public required ushort PartitionKeyIndex { get; init; }
    /// <summary>The local port.</summary>
    public required byte Port { get; init; }
    /// <summary>The local GID index the QP sends from.</summary>
    public required byte GidIndex { get; init; }
    /// <summary>Local ACK timeout exponent (4.096 µs × 2^Timeout).</summary>
    public required byte Timeout { get; init; }
    /// <summary>Transport retries.</summary>
    public required byte RetryCount { get; init; }
    /// <summary>Receiver-not-ready retries (7: infinite).</summary>
    public required byte RnrRetry { get; init; }
    /// <summary>Minimum RNR NAK timer code.</summary>
    public required byte MinRnrTimer { get; init; }
    /// <summary>Outstanding RDMA READs/atomics this QP may issue.</summary>
    public required byte MaxRdAtomic { get; init; }
    /// <summary>Outstanding RDMA READs/atomics this QP accepts from its peer.</summary>
    public required byte MaxDestRdAtomic { get; init; }
    /// <summary>The operations peers may direct at this QP (remote access flags, <see cref="AccessFlags.LocalWrite"/> included).</summary>
    public required AccessFlags Access { get; init; }
    /// <summary>The peer's QP number (RC/UC).</summary>
    public required uint DestinationQueuePairNumber { get; init; }
    /// <summary>The next PSN the QP sends.</summary>
    public required uint SendPacketSequenceNumber { get; init; }
    /// <summary>The next PSN the QP expects.</summary>
    public required uint ReceivePacketSequenceNumber { get; init; }
    /// <summary>The Q_Key (UD).</summary>
    public required uint QKey { get; init; }
}
