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
    /// one, else by polling), so that queue must be this QP's alone (checked), and the QP should have no other send work
    /// outstanding — as when a server grants a connecting peer before accepting it. On rxe a bind posted behind a SEND the
    /// peer has not yet acknowledged can put the QP in the error state (docs/known-defects.md): re-grant on an idle QP.
    /// The QP's remote access is widened only once the bind has completed: a failed grant widens nothing.</remarks>
    /// <param name="region">A region of this QP's protection domain registered with <see cref="AccessFlags.MemoryWindowBind"/>
    /// (and <see cref="AccessFlags.LocalWrite"/> to grant writes, atomics or FLUSH), without remote access of its own.</param>
    /// <param name="access">RemoteRead, RemoteWrite, RemoteAtomic, FlushGlobal and/or FlushPersistent.</param>
    /// <param name="cancellationToken">Cancels the grant before its bind is posted. Once posted, the bind is waited for
    /// (it completes in milliseconds), so no completion is left behind for another waiter.</param>
    /// <exception cref="ArgumentException">The region is deregistered or revoked, answers its own key (remote access or
    /// FLUSH), or does not fit the window (domain, bind access, LocalWrite), or <paramref name="access"/> is not remote operations.</exception>
    /// <exception cref="InvalidOperationException">The QP is not RC in RTS, its send completion queue serves other QPs, or
    /// that queue delivered a completion of other work.</exception>
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
        if (region.IsDisposed)
            throw new ArgumentException($"{region} is deregistered: there is nothing to grant. Register the memory again (after a lease break: a new lease, then a new registration).", nameof(region));
        if (region.Revocation is { } revoked)
            throw new ArgumentException($"{region} was revoked ({revoked.Message}): there is nothing to grant.", nameof(region), revoked);
        if ((region.Access & PeerReachable) != 0)
            throw new ArgumentException($"{region} grants {region.Access & PeerReachable} through its own key (0x{region.RemoteKey:x}): any peer on a QP of " +
                $"{region.ProtectionDomain} that learns or guesses that key can use it, grant or no grant. Register regions you grant with " +
                "AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind and no remote access (a window with FlushPersistent flushes them).", nameof(region));
        if (Type != QueuePairType.ReliableConnected)
            throw new InvalidOperationException($"{this} is {Type}: grants are bound through RC queue pairs (type 2 windows).");
        if (Volatile.Read(ref SendCompletionQueue.SendQueueUsers) > 1)
            throw new InvalidOperationException($"{SendCompletionQueue} is the send completion queue of {SendCompletionQueue.SendQueueUsers} queue pairs: a grant waits " +
                "for its bind there and would take the others' completions. Give the QP a send completion queue of its own (with events).");
        var attributes = Query();
        if (attributes.State != QueuePairState.ReadyToSend)
            throw new InvalidOperationException($"{this} is {attributes.State}: a grant is bound by a work request, which needs a connected QP in RTS.");
        if ((access & RemoteOperations) != access)
            throw new ArgumentException($"{access}: a grant gives remote operations only ({RemoteOperations}).", nameof(access));
        cancellationToken.ThrowIfCancellationRequested();
        var window = ProtectionDomain.AllocateMemoryWindow(MemoryWindowType.Type2);
        try
        {
            window.CheckBind(this, region, offset, length, access);
            var remote = window.PostBind(this, Handle, GrantWorkRequestId, region, offset, length, access, SendFlags.Signaled)!.Value;
            // Posted: the bind's completion will come, so wait for it whatever the token says (milliseconds), rather
            // than leave it on the queue for the next waiter to mistake for its own.
            var wc = await WaitForOwnCompletionAsync(GrantWorkRequestId, "the grant's bind").ConfigureAwait(false);
            wc.ThrowIfFailed();
            // Only now widen what the QP lets the peer do: a grant that failed widens nothing.
            if ((attributes.Access & access) != access)
                ChangeRemoteAccess((attributes.Access & RemoteOperations) | access);
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

    // What a region's own key would let a peer do: data access, and FLUSH (which also tells a key sweep which keys are valid).
    const AccessFlags PeerReachable = AccessFlags.RemoteRead | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic | AccessFlags.FlushGlobal | AccessFlags.FlushPersistent;

    /// <summary>Waits for the completion of <paramref name="workRequestId"/> on the send CQ, which is this QP's alone.</summary>
    async Task<WorkCompletion> WaitForOwnCompletionAsync(ulong workRequestId, string what)
    {
        var cq = SendCompletionQueue;
        var one = new WorkCompletion[1];
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        int idle = 0;
        while (true)
        {
            int n;
            if (cq.HasEvents)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                try
                {
                    n = await cq.PollAsync(one, timeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    n = 0;
                }
            }
            else
                n = cq.Poll(one);
            if (n == 1)
            {
                if (one[0].WorkRequestId != workRequestId)
                    throw new InvalidOperationException($"waiting for {what} on {this}, its send completion queue delivered a completion of other work " +
                        $"({one[0]}), now taken off the queue: grant while the QP has no other signaled send work outstanding.");
                return one[0];
            }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"{what} on {this} did not complete within 30 s: is the QP still connected?");
            // A bind executes in microseconds on hardware, milliseconds under emulation: spin briefly, then sleep.
            if (++idle < 64)
                await Task.Yield();
            else
                await Task.Delay(1).ConfigureAwait(false);
        }
    }
}
