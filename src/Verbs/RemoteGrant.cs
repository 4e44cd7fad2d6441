namespace RdmaLease.Verbs;

/// <summary>
/// One peer's access to one memory region: a type 2 memory window of its own, bound through that peer's queue pair.
/// Its key (<see cref="Remote"/>) works only on that queue pair — a peer on any other QP, guessing or replaying it, gets
/// <see cref="WorkCompletionStatus.RemoteAccessError"/> — only for the operations granted, and only until the grant
/// ends: <see cref="Revoke"/>, the end of the queue pair or of the region, or a lease break of a leased region (its
/// teardown deallocates every window over it). Each grant is a new window, so its key was never given out before.
/// </summary>
/// <remarks>
/// <para>Make one with <see cref="QueuePair.GrantAsync(MemoryRegion, AccessFlags, CancellationToken)"/>, or at accept
/// time with <see cref="RdmaConnectionRequest.AcceptAsync(QueuePair, MemoryRegion, AccessFlags, Func{RemoteRegion, ReadOnlyMemory{byte}}, RdmaAcceptOptions?, CancellationToken)"/>,
/// which also revokes it when the connection ends. The region must not grant remote access through its own key
/// (register it with <see cref="AccessFlags.LocalWrite"/> | <see cref="AccessFlags.MemoryWindowBind"/>, plus
/// <see cref="AccessFlags.FlushPersistent"/> for FLUSH): only window keys then ever reach peers (docs/security.md).</para>
/// <para>Revoking deallocates the window (<c>ibv_dealloc_mw</c>): when <see cref="Revoke"/> returns, the key reaches
/// nothing, whatever the state of the queue pair. A peer can also give its grant back itself with a SEND with
/// invalidate of the key (<see cref="QueuePair.PostSendWithInvalidate"/>).</para>
/// </remarks>
public sealed class RemoteGrant : IDisposable
{
    readonly MemoryWindow _window;

    internal RemoteGrant(QueuePair queuePair, MemoryRegion region, AccessFlags access, MemoryWindow window, RemoteRegion remote)
    {
        QueuePair = queuePair;
        Region = region;
        Access = access;
        _window = window;
        Remote = remote;
    }

    /// <summary>The queue pair the grant was bound through: the only one its key works on.</summary>
    public QueuePair QueuePair { get; }

    /// <summary>The region granted.</summary>
    public MemoryRegion Region { get; }

    /// <summary>The operations granted (RDMA READ, WRITE, atomics, FLUSH).</summary>
    public AccessFlags Access { get; }

    /// <summary>What to give the peer: the region's address and length with the window's key.</summary>
    public RemoteRegion Remote { get; }

    /// <summary>True once revoked, by <see cref="Revoke"/> or by the end of the queue pair or region (a lease break included).</summary>
    public bool IsRevoked => _window.IsDisposed;

    /// <summary>Revokes the grant: deallocates its window, so the key reaches nothing from now on. Idempotent.</summary>
    public void Revoke() => _window.Dispose();

    /// <summary>Revokes the grant (<see cref="Revoke"/>).</summary>
    public void Dispose() => Revoke();

    /// <inheritdoc/>
    public override string ToString() =>
        $"grant of {Access} on {Region} to {QueuePair} (rkey 0x{Remote.RemoteKey:x}{(IsRevoked ? ", revoked" : "")})";
}
