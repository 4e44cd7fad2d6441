using System.Net;

namespace RdmaLease.Verbs;

/// <summary>What <see cref="RdmaConnection.PeerError"/> reports: the device's error of the connection's queue pair, and the peer.</summary>
public sealed class RdmaPeerErrorEventArgs : EventArgs
{
    internal RdmaPeerErrorEventArgs(AsyncEventType error, IPEndPoint remoteEndPoint, uint queuePairNumber, bool grantEnded)
    {
        Error = error;
        RemoteEndPoint = remoteEndPoint;
        QueuePairNumber = queuePairNumber;
        GrantEnded = grantEnded;
    }

    /// <summary><see cref="AsyncEventType.QpAccessError"/> (a key not granted, an access outside the grant),
    /// <see cref="AsyncEventType.QpRequestError"/> (a malformed request) or <see cref="AsyncEventType.QpFatal"/>.</summary>
    public AsyncEventType Error { get; }

    /// <summary>The peer's address and rdma_cm port.</summary>
    public IPEndPoint RemoteEndPoint { get; }

    /// <summary>The local queue pair the device reported.</summary>
    public uint QueuePairNumber { get; }

    /// <summary>
    /// True when the connection's grant had already ended (its region revoked by a lease break, or deregistered): the
    /// peer used a key that was valid moments before, as work in flight during a break does. False when the grant stood:
    /// the peer used a key or range it was never given.
    /// </summary>
    public bool GrantEnded { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{Error} on QP {QueuePairNumber} from {RemoteEndPoint}{(GrantEnded ? " (its grant had ended)" : "")}";
}
