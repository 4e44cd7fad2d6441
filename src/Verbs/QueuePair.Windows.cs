using RdmaLease.Interop;

namespace RdmaLease.Verbs;

// Memory windows: binding, unbinding and invalidating them are work requests on a QP (MemoryWindow.cs has the window).
public sealed unsafe partial class QueuePair
{
    /// <summary>
    /// Posts a bind of <paramref name="window"/> to [<paramref name="offset"/>, +<paramref name="length"/>) of
    /// <paramref name="region"/>, granting peers <paramref name="access"/> through the window's new rkey. A type 2
    /// window is then usable only through this QP; a type 1 window through any QP of its domain. Rebinding a type 1
    /// window moves it; a type 2 window must be invalidated first (a bind of a bound type 2 window completes with
    /// <see cref="WorkCompletionStatus.MemoryWindowBindError"/>).
    /// </summary>
    /// <param name="workRequestId">The id of the bind's completion (opcode <see cref="WorkCompletionOpcode.BindMemoryWindow"/>).</param>
    /// <param name="window">A window of this QP's protection domain (type 2) or of <paramref name="region"/>'s (type 1).</param>
    /// <param name="region">A region registered with <see cref="AccessFlags.MemoryWindowBind"/> in the window's domain
    /// (and <see cref="AccessFlags.LocalWrite"/> for a writable window).</param>
    /// <param name="offset">First byte of the window, from the region's start.</param>
    /// <param name="length">Bytes (not 0).</param>
    /// <param name="access">RemoteRead, RemoteWrite and/or RemoteAtomic.</param>
    /// <param name="flags">Send flags; Signaled (the default) to see the bind complete. Later work requests on this
    /// QP run after the bind, so a peer told the key after the bind was posted and completed can use it.</param>
    /// <returns>What to give the peer: the bound range's address and length with the window's new rkey.</returns>
    /// <exception cref="ArgumentException">The region, QP and window do not fit together (domain, bind access, range,
    /// access flags), so the device would fail the bind.</exception>
    /// <exception cref="NotSupportedException">The range is not the whole region, on a device known not to confine peers
    /// to a window's range (rxe; see docs/known-defects.md): the peer would get the whole region.</exception>
    /// <exception cref="VerbsException">The provider refused the post.</exception>
    public RemoteRegion PostBindMemoryWindow(ulong workRequestId, MemoryWindow window, MemoryRegion region, ulong offset, ulong length,
        AccessFlags access, SendFlags flags = SendFlags.Signaled)
    {
        ArgumentNullException.ThrowIfNull(window);
        ArgumentNullException.ThrowIfNull(region);
        window.CheckBind(this, region, offset, length, access);
        return window.PostBind(this, Handle, workRequestId, region, offset, length, access, flags)!.Value;
    }

    /// <summary>
    /// Posts an unbind of a type 1 <paramref name="window"/> (a bind of length 0): once it has executed, the window's
    /// rkey reaches nothing (peers get <see cref="WorkCompletionStatus.RemoteAccessError"/>) and the window can be bound again.
    /// </summary>
    /// <exception cref="InvalidOperationException">The window is of type 2 (use <see cref="PostLocalInvalidate"/>), or was never bound.</exception>
    public void PostUnbindMemoryWindow(ulong workRequestId, MemoryWindow window, SendFlags flags = SendFlags.Signaled)
    {
        ArgumentNullException.ThrowIfNull(window);
        if (window.Type != MemoryWindowType.Type1)
            throw new InvalidOperationException($"{window} is a type 2 window: revoke it with PostLocalInvalidate (or a peer's SEND with invalidate).");
        window.PostBind(this, Handle, workRequestId, null, 0, 0, AccessFlags.None, flags);
    }

    /// <summary>
    /// Posts a local invalidation (IBV_WR_LOCAL_INV) of a type 2 <paramref name="window"/>: once it completes (opcode
    /// <see cref="WorkCompletionOpcode.LocalInvalidate"/>), peers using the window's rkey get
    /// <see cref="WorkCompletionStatus.RemoteAccessError"/>, and the window can be bound again. The region stays registered.
    /// </summary>
    /// <exception cref="InvalidOperationException">The window is of type 1 (use <see cref="PostUnbindMemoryWindow"/>), or was never bound.</exception>
    public void PostLocalInvalidate(ulong workRequestId, MemoryWindow window, SendFlags flags = SendFlags.Signaled)
    {
        ArgumentNullException.ThrowIfNull(window);
        window.PostLocalInvalidate(this, Handle, workRequestId, flags);
    }

    /// <summary>
    /// Posts a SEND of <paramref name="data"/> that also invalidates, at the receiver, the type 2 memory window whose
    /// rkey is <paramref name="remoteKeyToInvalidate"/> (IBV_WR_SEND_WITH_INV): the peer that gave us a window revokes
    /// our access with the message we send it when we are done. The receiver's completion reports the key
    /// (<see cref="WorkCompletion.HasInvalidatedRemoteKey"/>, <see cref="WorkCompletion.InvalidatedRemoteKey"/>).
    /// </summary>
    public void PostSendWithInvalidate(ulong workRequestId, LocalSegment data, uint remoteKeyToInvalidate, SendFlags flags = SendFlags.Signaled) =>
        PostOne(MakeSend(workRequestId, new(in data), flags, ibv_wr_opcode.IBV_WR_SEND_WITH_INV, remoteKeyToInvalidate), new(in data));
}
