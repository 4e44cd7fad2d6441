namespace RdmaLease.Verbs;

// Grants: a peer's access to a region through a type 2 window of its own (RemoteGrant.cs has the grant). Apart from
// QueuePair.Windows.cs because the wait for the bind is async (no await in unsafe code).
public sealed partial class QueuePair
{
    /// <summary>
    /// Grants the peer of this queue pair <paramref name="access"/> to the whole of <paramref name="region"/> through a
    /// new type 2 memory window bound through this QP, and waits until the bind has executed: the returned grant's key
    /// works on this QP only, and from the moment this returns. Give the peer <see cref="RemoteGrant.Remote"/>, never the
    /// region's own key; revoke with <see cref="RemoteGrant.Revoke"/>. Widens the QP's remote access
    /// (<see cref="ChangeRemoteAccess"/>) to the operations granted if it lacks them.
    /// </summary>
    /// <remarks>The wait takes the bind's completion off the QP's send completion queue (through its channel if it has
    /// one, else by polling): grant while the QP has no other signaled send work outstanding — as when a server grants a
    /// connecting peer before accepting it, or give such QPs a send queue of their own. A completion of other work found
    /// meanwhile is an error, named in the exception.</remarks>
    /// <param name="region">A region of this QP's protection domain registered with <see cref="AccessFlags.MemoryWindowBind"/>
    /// (and <see cref="AccessFlags.LocalWrite"/> to grant writes, atomics or FLUSH), without remote access of its own.</param>
    /// <param name="access">RemoteRead, RemoteWrite, RemoteAtomic, FlushGlobal and/or FlushPersistent.</param>
    /// <param name="cancellationToken">Ends the wait for the bind (the window is then deallocated: nothing is granted).</param>
    /// <exception cref="ArgumentException">The region grants remote access through its own key, or does not fit the window
    /// (domain, bind access, LocalWrite), or <paramref name="access"/> is not remote operations.</exception>
    /// <exception cref="InvalidOperationException">The QP is not RC in RTS, or its send completion queue delivered a
    /// completion of other work.</exception>
    /// <exception cref="WorkCompletionException">The device failed the bind.</exception>
    public Task<RemoteGrant> GrantAsync(MemoryRegion region, AccessFlags access, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(region);
        return GrantAsync(region, 0, region.Length, access, cancellationToken);
    }

    /// <summary>
    /// Grants part of <paramref name="region"/>, as <see cref="GrantAsync(MemoryRegion, AccessFlags, CancellationToken)"/>
    /// does the whole. On a device that does not confine a peer to a window's range (rxe) only whole regions are
    /// granted (<see cref="NotSupportedException"/>): register a region per range you grant.
    /// </summary>
    public async Task<RemoteGrant> GrantAsync(MemoryRegion region, ulong offset, ulong length, AccessFlags access, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(region);
        if ((region.Access & PeerDataAccess) != 0)
            throw new ArgumentException($"{region} grants {region.Access & PeerDataAccess} through its own key (0x{region.RemoteKey:x}): any peer on a QP of " +
                $"{region.ProtectionDomain} that learns or guesses that key reaches all of it, grant or no grant. Register regions you grant with " +
                "AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind (| FlushPersistent for FLUSH) and no remote access.", nameof(region));
        if (Type != QueuePairType.ReliableConnected)
            throw new InvalidOperationException($"{this} is {Type}: grants are bound through RC queue pairs (type 2 windows).");
        var attributes = Query();
        if (attributes.State != QueuePairState.ReadyToSend)
            throw new InvalidOperationException($"{this} is {attributes.State}: a grant is bound by a work request, which needs a connected QP in RTS.");
        if ((access & RemoteOperations) != access)
            throw new ArgumentException($"{access}: a grant gives remote operations only ({RemoteOperations}).", nameof(access));
        var window = ProtectionDomain.AllocateMemoryWindow(MemoryWindowType.Type2);
        try
        {
            window.CheckBind(this, region, offset, length, access);
            if ((attributes.Access & access) != access)
                ChangeRemoteAccess((attributes.Access & RemoteOperations) | access);
            var remote = window.PostBind(this, Handle, GrantWorkRequestId, region, offset, length, access, SendFlags.Signaled)!.Value;
            var wc = await WaitForOwnCompletionAsync(GrantWorkRequestId, "the grant's bind", cancellationToken).ConfigureAwait(false);
            wc.ThrowIfFailed();
            return new RemoteGrant(this, region, access, window, remote);
        }
        catch
        {
            window.Dispose();
            throw;
        }
    }

    /// <summary>The work request id of a grant's bind ("RLGRANT\0").</summary>
    internal const ulong GrantWorkRequestId = 0x0054_4E41_5247_4C52;

    const AccessFlags PeerDataAccess = AccessFlags.RemoteRead | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic;

    /// <summary>Waits for the completion of <paramref name="workRequestId"/> on the send CQ, which nobody else may poll meanwhile.</summary>
    async Task<WorkCompletion> WaitForOwnCompletionAsync(ulong workRequestId, string what, CancellationToken cancellationToken)
    {
        var cq = SendCompletionQueue;
        var one = new WorkCompletion[1];
        int idle = 0;
        while (true)
        {
            int n = cq.HasEvents ? await cq.PollAsync(one, cancellationToken).ConfigureAwait(false) : cq.Poll(one);
            if (n == 1)
            {
                if (one[0].WorkRequestId != workRequestId)
                    throw new InvalidOperationException($"waiting for {what} on {this}, its send completion queue delivered a completion of other work " +
                        $"({one[0]}), now taken off the queue: grant while the QP has no other signaled send work outstanding, or give it a send queue of its own.");
                return one[0];
            }
            cancellationToken.ThrowIfCancellationRequested();
            // A bind executes in microseconds on hardware, milliseconds under emulation: spin briefly, then sleep.
            if (++idle < 64)
                await Task.Yield();
            else
                await Task.Delay(1, cancellationToken).ConfigureAwait(false);
        }
    }
}
