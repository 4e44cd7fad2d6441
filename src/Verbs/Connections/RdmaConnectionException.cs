namespace RdmaLease.Verbs;

/// <summary>Which step of setting up or keeping an rdma_cm connection failed.</summary>
public enum RdmaConnectionFailure
{
    /// <summary>RDMA_CM_EVENT_ADDR_ERROR: no RDMA device could be found for the address.</summary>
    AddressResolution,
    /// <summary>RDMA_CM_EVENT_ROUTE_ERROR: no path to the peer.</summary>
    RouteResolution,
    /// <summary>RDMA_CM_EVENT_UNREACHABLE: the peer did not answer the connection request.</summary>
    Unreachable,
    /// <summary>RDMA_CM_EVENT_REJECTED: the peer (or its kernel: nobody listening) refused.</summary>
    Rejected,
    /// <summary>RDMA_CM_EVENT_CONNECT_ERROR: the connection could not be completed.</summary>
    ConnectError,
    /// <summary>The connection is on another device than the queue pair given for it.</summary>
    DeviceMismatch,
    /// <summary>RDMA_CM_EVENT_DEVICE_REMOVAL: the device went away.</summary>
    DeviceRemoved,
    /// <summary>The peer disconnected before the connection was established.</summary>
    Disconnected,
}

/// <summary>
/// An rdma_cm connection could not be made or was lost: the message says which step failed, the status the kernel
/// reported and what to check.
/// </summary>
public class RdmaConnectionException : VerbsException
{
    /// <summary>Creates the exception.</summary>
    public RdmaConnectionException(RdmaConnectionFailure failure, string target, int errno, string message)
        : base(OperationOf(failure), target, errno, message, null)
    {
        Failure = failure;
    }

    /// <summary>The step that failed.</summary>
    public RdmaConnectionFailure Failure { get; }

    static string OperationOf(RdmaConnectionFailure failure) => failure switch
    {
        RdmaConnectionFailure.AddressResolution => "rdma_resolve_addr",
        RdmaConnectionFailure.RouteResolution => "rdma_resolve_route",
        RdmaConnectionFailure.DeviceMismatch => "rdma_cm device check",
        _ => "rdma_connect",
    };
}

/// <summary>
/// The peer refused the connection (RDMA_CM_EVENT_REJECTED): either its application rejected it, with
/// <see cref="PrivateData"/>, or nobody listens on that port (the peer's kernel rejects, <see cref="IsConsumerReject"/>
/// false).
/// </summary>
public sealed class RdmaConnectionRejectedException : RdmaConnectionException
{
    /// <summary>Creates the exception.</summary>
    public RdmaConnectionRejectedException(string target, int reason, bool consumer, byte[] privateData, string message)
        : base(RdmaConnectionFailure.Rejected, target, 0, message)
    {
        Reason = reason;
        IsConsumerReject = consumer;
        PrivateData = privateData;
    }

    /// <summary>The transport's reject reason (IB CM: 28 = consumer reject, 8 = invalid service id: nobody listening).</summary>
    public int Reason { get; }

    /// <summary>True when the peer's application rejected (rdma_reject); false when its kernel did.</summary>
    public bool IsConsumerReject { get; }

    /// <summary>The private data the rejecting side sent (IB/RoCE: always the transport's full size, zero padded).</summary>
    public ReadOnlyMemory<byte> PrivateData { get; }
}
