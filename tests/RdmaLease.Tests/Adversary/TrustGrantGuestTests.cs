using System.Diagnostics.Metrics;
using RdmaLease.Leases;
using RdmaLease.Tests.Connections;
using RdmaLease.Tests.Leases;
using RdmaLease.Tests.Security;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Adversary;

/// <summary>
/// Attacks on grants (issue 15) through the public API, on rxe in the guest: what a peer can do with its own key, what
/// another peer can do to it, and what the server's own calls (cancel, revoke, a failing accept) leave behind. Claims
/// are checked against the kernel (`rdma resource show pd` users count windows) and every byte moved is compared.
/// Tests of an attack that the library or device refuses pass; tests that show a defect fail and say what they expect.
/// </summary>
[Category("Guest")]
[NonParallelizable]   // counts the guest's PD users and listens to the process-wide meter
public class TrustGrantGuestTests
{
    const AccessFlags Granted = AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind;
    const AccessFlags GrantedWithFlush = Granted | AccessFlags.FlushPersistent;
    const ulong Area = 64 * 1024;

    // ---- The server's own calls: cancel, shared completion queues, failed grants, races ----

    /// <summary>
    /// GrantAsync's token cancels the wait for the bind, and the docs say "the window is then deallocated: nothing is
    /// granted". But the bind was posted (the token is not checked before the post): its completion still arrives on
    /// the send CQ, where the application's poller finds a completion it never asked for, or the next GrantAsync takes it
    /// for its own bind and leaves its own behind. A token cancelled before the call shows it: under TCG rxe executes the
    /// bind before the first poll most of the time (then the grant is simply made), so this tries until a call is cancelled.
    /// </summary>
    [Test]
    public async Task ACancelledGrantLeavesNoCompletionOnTheSendQueue()
    {
        using var rig = new TrustRig();
        var link = rig.Connect(AccessFlags.RemoteWrite);
        using var region = rig.ServerPd.AllocateBuffer(16384, Granted);
        int users = KernelView.ProtectionDomainUsers();
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        int attempts = 0;
        Exception? failure = null;
        while (failure is null && attempts < 400)
        {
            attempts++;
            try
            {
                using var g = await link.ServerQp.GrantAsync(region, AccessFlags.RemoteWrite, cancelled.Token);
            }
            catch (Exception e)
            {
                failure = e;
            }
            if (failure is null)
                Assert.That(TrustRig.Drain(link.ServerSendCq, TimeSpan.FromMilliseconds(20)), Is.Empty, "a grant that was made took its own completion");
        }
        Assert.That(failure, Is.InstanceOf<OperationCanceledException>(), $"one of {attempts} grants with a cancelled token was cancelled");
        int usersAfterCancel = KernelView.ProtectionDomainUsers();

        // The next grant, made as an application would after a cancelled one, then the send CQ.
        using var next = await link.ServerQp.GrantAsync(region, AccessFlags.RemoteWrite);
        var left = TrustRig.Drain(link.ServerSendCq, TimeSpan.FromSeconds(1));
        var wrote = link.Write(next.Remote, 4096, seed: 3);
        TestContext.Out.WriteLine($"cancelled at attempt {attempts}: {failure!.GetType().Name}; PD users {users} -> {usersAfterCancel}; after the next grant the send CQ held " +
            $"{left.Count}: {string.Join("; ", left)}; a write through the next grant: {wrote}");
        Assert.Multiple(() =>
        {
            Assert.That(usersAfterCancel, Is.EqualTo(users), "rdma resource show pd: the cancelled grant's window is deallocated");
            Assert.That(left, Is.Empty, "no completion is left on the send CQ: a cancelled grant's bind completion (wr_id 0x54_4E41_5247_4C52) reaches the " +
                "next GrantAsync, which takes it for its own and leaves its own for the application's poller");
            Assert.That(wrote.Status, Is.EqualTo(WorkCompletionStatus.Success));
            Patterns.AssertEqual(region.Span.Slice(4096, 4096), TrustRig.Block(3), "the write through the next grant");
        });
    }

    /// <summary>
    /// GrantAsync's contract allows other unsignaled send work outstanding ("no other signaled send work"). On rxe, a
    /// bind posted behind a SEND that the peer answers with RNR NAK (no receive posted yet: the normal state of a
    /// message protocol for a moment) moves the QP to the error state: the connection dies, and GrantAsync throws an
    /// InvalidOperationException about "a completion of other work" (the unsignaled SEND, flushed). Measured without
    /// GrantAsync too (PostBindMemoryWindow): the QP is in error within 200 ms, while the same SEND without a bind waits
    /// in RTS for as long as the peer needs. An rxe defect (docs/known-defects.md, "rxe fails a QP whose bind follows an
    /// unacknowledged SEND"): this test shows it, and fails when a kernel fixes it. GrantAsync documents that re-grants
    /// need an idle QP.
    /// </summary>
    [Test]
    public async Task RxeFailsAQueuePairWhoseBindFollowsAnUnacknowledgedSend()
    {
        using var rig = new TrustRig();
        var link = rig.Connect(AccessFlags.RemoteWrite);
        using var region = rig.ServerPd.AllocateBuffer(16384, Granted);
        using var message = rig.ServerPd.AllocateBuffer(64, AccessFlags.LocalWrite);
        Patterns.Fill(message.Span, 8);
        link.ServerQp.PostSend(9, message.Slice(0, 64), SendFlags.None);
        Thread.Sleep(300);   // the peer has no receive yet: RNR NAK, retried without end (rnr_retry 7)
        var granting = link.ServerQp.GrantAsync(region, AccessFlags.RemoteWrite);
        Thread.Sleep(500);
        var stateWhileWaiting = link.ServerQp.QueryState();
        link.PeerQp.PostReceive(5, link.Source.Slice(0, 64));
        Exception? failure = null;
        RemoteGrant? grant = null;
        try
        {
            grant = await granting.WaitAsync(Cm.Generous);
        }
        catch (Exception e)
        {
            failure = e;
        }
        var received = Cm.TryWaitOne(link.PeerCq, 5);
        TestContext.Out.WriteLine($"server QP while the grant waited: {stateWhileWaiting}; grant: {(failure is null ? grant!.ToString() : failure.GetType().Name + ": " + failure.Message)}; " +
            $"peer received: {(received is { } r ? r.ToString() : "nothing")}; server QP now {link.ServerQp.QueryState()}");
        using (grant)
        {
            Assert.Multiple(() =>
            {
                Assert.That(stateWhileWaiting, Is.EqualTo(QueuePairState.Error), "rxe: the bind behind the RNR-retried SEND fails the QP (the defect)");
                Assert.That(failure, Is.Not.Null, "so no grant is made, and GrantAsync says why");
                Assert.That(grant, Is.Null);
            });
        }
    }

    /// <summary>
    /// A server whose QPs share one send CQ (the README's example does) grants one peer while another QP's signaled work
    /// has completed. GrantAsync takes that completion off the shared queue and throws it away with an
    /// InvalidOperationException: the other QP's owner never learns its SEND completed. Expected: the other QP's
    /// completion stays on the queue for its own poller (or GrantAsync refuses a shared send CQ before taking anything).
    /// </summary>
    [Test]
    public async Task AGrantOnASharedSendQueueTakesNoOtherQueuePairsCompletion()
    {
        using var rig = new TrustRig();
        var shared = rig.Server.CreateCompletionQueue(16);
        var busy = rig.Connect(AccessFlags.None, shared);
        var granting = rig.Connect(AccessFlags.None, shared);
        using var region = rig.ServerPd.AllocateBuffer(16384, Granted);
        using var message = rig.ServerPd.AllocateBuffer(64, AccessFlags.LocalWrite);
        Patterns.Fill(message.Span, 4);

        // The busy QP's own work: a signaled SEND its peer receives. Its completion is then on the shared queue.
        busy.PeerQp.PostReceive(5, busy.Source.Slice(0, 64));
        busy.ServerQp.PostSend(77, message.Slice(0, 64));
        var received = RcPair.WaitOne(busy.PeerCq);
        Assert.That(received.Status, Is.EqualTo(WorkCompletionStatus.Success));
        Patterns.AssertEqual(busy.Source.Span[..64], message.Span[..64], "the SEND's bytes");
        Thread.Sleep(500);   // the ACK comes back and the sender's completion is queued (not a speed assertion)

        RemoteGrant? grant = null;
        Exception? failure = null;
        try
        {
            grant = await granting.ServerQp.GrantAsync(region, AccessFlags.RemoteWrite);
        }
        catch (Exception e)
        {
            failure = e;
        }
        var left = TrustRig.Drain(shared, TimeSpan.FromSeconds(1));
        TestContext.Out.WriteLine($"grant: {(failure is null ? grant!.ToString() : failure.GetType().Name + ": " + failure.Message)}; the shared CQ then held: {string.Join("; ", left)}");
        grant?.Dispose();
        Assert.That(left.Select(c => c.WorkRequestId), Does.Contain(77UL),
            "the busy QP's SEND completion (wr_id 77) is still on the shared send CQ for the busy QP's poller");
    }

    /// <summary>
    /// A grant over a region that can no longer be bound (deregistered by its owner, or revoked and deregistered by a
    /// lease break) fails; the exception must say so, and the QP's remote access must stay what it was: GrantAsync widens
    /// it (ChangeRemoteAccess) before the post that fails, so a failed grant leaves the QP accepting RDMA WRITE from the
    /// peer for any key of the domain that allows it (least privilege, docs/connections.md).
    /// </summary>
    [TestCase("deregistered")]
    [TestCase("lease broken")]
    public void AGrantOfARegionThatIsGoneFailsClearlyAndWidensNothing(string how)
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("area");
        using var file = LeasedRdma.OpenFile(path, "/mnt/xfs", (long)Area);
        using var lease = file.AcquireLease();
        using var rig = new TrustRig();
        var link = rig.Connect(AccessFlags.None);
        var area = rig.ServerPd.Register(lease, Granted);
        if (how == "deregistered")
        {
            area.Dispose();
        }
        else
        {
            var broke = LeasedRdma.OnBreak(lease);
            var probe = RunProbe(TimeSpan.FromSeconds(60), "truncate", path, (2 * Area).ToString(System.Globalization.CultureInfo.InvariantCulture));
            Assert.That(probe.Ok, Is.True, probe.Output);
            Assert.That(broke.Task.Wait(TimeSpan.FromSeconds(60)), Is.True, "the lease broke");
            Assert.That(area.IsDeregistered, "the break deregistered the area");
        }
        int users = KernelView.ProtectionDomainUsers();
        var e = Assert.CatchAsync<Exception>(() => link.ServerQp.GrantAsync(area.Region, AccessFlags.RemoteWrite));
        TestContext.Out.WriteLine($"GrantAsync of a {how} region: {e!.GetType().Name}: {e.Message}");
        Assert.Multiple(() =>
        {
            Assert.That(e, Is.InstanceOf<ArgumentException>(), "a specific exception, naming the region");
            Assert.That(e.Message, Does.Contain("deregistered").Or.Contain("revoked"), "the message says the region is gone, not only 'disposed object'");
            Assert.That(KernelView.ProtectionDomainUsers(), Is.EqualTo(users), "no window left behind");
            Assert.That(link.ServerQp.Query().Access, Is.EqualTo(AccessFlags.LocalWrite), "a failed grant widens the QP's remote access by nothing");
        });
        area.Dispose();
    }

    /// <summary>Revoke, Dispose and the QP's Dispose racing each other: each grant ends once, no window is left, the key reaches nothing.</summary>
    [Test]
    public async Task RevokeDisposeAndTheQueuePairsEndRacingLeaveNoWindowAndNoAccess()
    {
        using var rig = new TrustRig();
        var link = rig.Connect(AccessFlags.None);
        using var region = rig.ServerPd.AllocateBuffer(16384, Granted);
        int users = KernelView.ProtectionDomainUsers();
        RemoteRegion last = default;
        for (int i = 0; i < 20; i++)
        {
            var g = await link.ServerQp.GrantAsync(region, AccessFlags.RemoteWrite);
            last = g.Remote;
            Parallel.Invoke(g.Revoke, g.Dispose, g.Revoke, g.Dispose);
            Assert.That(g.IsRevoked, $"round {i}");
        }
        Assert.That(KernelView.ProtectionDomainUsers(), Is.EqualTo(users), "rdma resource show pd: every window deallocated");
        var late = link.Write(last, 0, seed: 5);
        Assert.That(late.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the last revoked key: " + late);
        Assert.That(region.Span.IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing landed");

        // A grant racing its QP's end: the window is a child of the QP and goes first.
        var other = rig.Connect(AccessFlags.None);
        users = KernelView.ProtectionDomainUsers();
        var grant = await other.ServerQp.GrantAsync(region, AccessFlags.RemoteWrite);
        Parallel.Invoke(grant.Revoke, other.ServerQp.Dispose, grant.Dispose);
        Assert.That(grant.IsRevoked);
        Assert.That(KernelView.ProtectionDomainUsers(), Is.EqualTo(users - 1), "the QP and its window are gone (the window never outlives its QP)");
    }

    // ---- What a peer can do with its own key ----

    /// <summary>
    /// A peer with a write-only grant of its own area, on a QP that a second grant (of another area of its own) has
    /// widened to READ and atomics, tries past its grant's end, before its start, a READ, an atomic and a FLUSH through
    /// the write-only grant: each is refused by the window itself, and the neighbouring area is untouched.
    /// </summary>
    [TestCase("write past the end")]
    [TestCase("write before the start")]
    [TestCase("read")]
    [TestCase("atomic")]
    [TestCase("flush")]
    public async Task APeerReachesNothingOutsideWhatItsGrantAllows(string attempt)
    {
        using var dir = CreateTempDir("/mnt/xfs");
        using var file = LeasedRdma.OpenFile(dir.File("areas"), "/mnt/xfs", (long)(4 * Area));
        using var lease = file.AcquireLease();
        using var rig = new TrustRig();
        // Areas 0..3 of the file; the peer is granted WRITE on area 1, READ and atomics on area 3.
        var areas = Enumerable.Range(0, 4).Select(i => rig.ServerPd.Register(lease.Range((ulong)i * Area, Area), Granted)).ToArray();
        try
        {
            LeasedRdma.FillBlocks(file.Span, LeasedRdma.InitialSeed);
            byte[] before = file.Span.ToArray();
            var link = rig.Connect(AccessFlags.None);
            using var write = await link.ServerQp.GrantAsync(areas[1].Region, AccessFlags.RemoteWrite);
            using var readAtomic = await link.ServerQp.GrantAsync(areas[3].Region, AccessFlags.RemoteRead | AccessFlags.RemoteAtomic);
            Assert.That(link.ServerQp.Query().Access & (AccessFlags.RemoteRead | AccessFlags.RemoteAtomic), Is.EqualTo(AccessFlags.RemoteRead | AccessFlags.RemoteAtomic),
                "the QP itself allows READ and atomics now: only the window can refuse them");
            var ok = link.Write(write.Remote, Area - 4096, seed: 1);
            Assert.That(ok.Status, Is.EqualTo(WorkCompletionStatus.Success), "the peer's own last page: " + ok);
            Patterns.AssertEqual(file.Span.Slice((int)(2 * Area - 4096), 4096), TrustRig.Block(1), "the peer's write in its own area");
            TrustRig.Block(1).CopyTo(before.AsSpan((int)(2 * Area - 4096)));

            var target = write.Remote;
            WorkCompletion wc;
            switch (attempt)
            {
                case "write past the end":
                    // The grant's own limits would refuse the post: the attacker forges a wider description, same key.
                    wc = link.Write(new RemoteRegion(target.Address, target.Length + 4096, target.RemoteKey), Area, seed: 2);
                    break;
                case "write before the start":
                    wc = link.Write(new RemoteRegion(target.Address - 4096, target.Length + 4096, target.RemoteKey), 0, seed: 2);
                    break;
                case "read":
                    link.PeerQp.PostRead(3, link.Source.Slice(0, 4096), target, 0);
                    wc = RcPair.WaitOne(link.PeerCq);
                    break;
                case "atomic":
                    link.PeerQp.PostFetchAdd(4, link.Source.Slice(0, 8), new RemoteRegion(target.Address, target.Length, target.RemoteKey), 0, 1);
                    wc = RcPair.WaitOne(link.PeerCq);
                    break;
                default:
                    wc = link.Flush(target, 0, 4096);
                    break;
            }
            TestContext.Out.WriteLine($"{attempt} through the write-only grant (QP access {link.ServerQp.Query().Access}): {wc}");
            Assert.That(wc.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError).Or.EqualTo(WorkCompletionStatus.RemoteInvalidRequest), $"{attempt} is refused");
            Patterns.AssertEqual(file.Span, before, "the file: nothing but the peer's own write landed");
        }
        finally
        {
            foreach (var a in areas)
                a.Dispose();
        }
    }

    /// <summary>
    /// docs/security.md: a region registered for grants "grants nothing" by its own key, which "never leaves the process".
    /// With FlushPersistent on the region (as docs/connections.md and PmemStore register it, for grants that FLUSH), the
    /// region's own key answers a FLUSH from any peer whose QP allows FLUSH (every PmemStore client's does): another
    /// client flushes an area it was never granted, and a FLUSH sweep tells valid region keys (success) from invalid ones
    /// (remote access error) — the oracle a WRITE sweep does not have. GrantAsync refuses regions with RemoteRead, RemoteWrite or
    /// RemoteAtomic, not with FlushGlobal/FlushPersistent.
    /// </summary>
    [Test]
    public async Task ARegionsOwnKeyAnswersNoFlushFromAnotherPeer()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        using var file = LeasedRdma.OpenFile(dir.File("areas"), "/mnt/xfs", (long)(2 * Area));
        using var lease = file.AcquireLease();
        using var rig = new TrustRig();
        var victim = rig.Connect(AccessFlags.None);
        var attacker = rig.Connect(AccessFlags.None);
        // The fix: a region that answers FLUSH by its own key is not granted at all...
        using (var flushable = rig.ServerPd.Register(lease.Range(0, Area), GrantedWithFlush))
        {
            var refused = Assert.ThrowsAsync<ArgumentException>(() => victim.ServerQp.GrantAsync(flushable.Region, AccessFlags.RemoteWrite | AccessFlags.FlushPersistent));
            Assert.That(refused!.Message, Does.Contain("FlushPersistent through its own key"));
        }
        // ...and one registered as documented (no FLUSH of its own) answers no FLUSH by its key, while grants FLUSH it.
        using var victimArea = rig.ServerPd.Register(lease.Range(0, Area), Granted);
        using var attackerArea = rig.ServerPd.Register(lease.Range(Area, Area), Granted);
        using var victimGrant = await victim.ServerQp.GrantAsync(victimArea.Region, AccessFlags.RemoteWrite | AccessFlags.FlushPersistent);
        using var attackerGrant = await attacker.ServerQp.GrantAsync(attackerArea.Region, AccessFlags.RemoteWrite | AccessFlags.FlushPersistent);
        Assert.That(victim.Write(victimGrant.Remote, 0, seed: 1).Status, Is.EqualTo(WorkCompletionStatus.Success));
        Assert.That(victim.Flush(victimGrant.Remote, 0, 4096).Status, Is.EqualTo(WorkCompletionStatus.Success));
        Assert.That(attacker.Write(attackerGrant.Remote, 0, seed: 2).Status, Is.EqualTo(WorkCompletionStatus.Success));
        Assert.That(attacker.Flush(attackerGrant.Remote, 0, 4096).Status, Is.EqualTo(WorkCompletionStatus.Success));

        // The attacker FLUSHes the victim's area by the area's own key (as if guessed: 256 tries per MR index).
        var byRegionKey = victimGrant.Remote with { RemoteKey = victimArea.RemoteKey };
        var wc = attacker.Flush(byRegionKey, 0, 4096);
        TestContext.Out.WriteLine($"FLUSH of the victim's area (0x{victimArea.RemoteKey:x}) by its own key from another peer: {wc}");
        Assert.Multiple(() =>
        {
            Assert.That(wc.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the region's own key reaches nothing, FLUSH included");
            Patterns.AssertEqual(file.Span[..4096], TrustRig.Block(1), "the victim's page");
            Patterns.AssertEqual(file.Span.Slice((int)Area, 4096), TrustRig.Block(2), "the attacker's own page");
        });
    }

    /// <summary>
    /// Whether the fix for the test above is open: a window FLUSHes (persistent) a leased FS-DAX region registered without
    /// FlushPersistent of its own (rxe checks a FLUSH through a window against the window's access only). If so, grants
    /// can give FLUSH while the region's own key answers nothing at all.
    /// </summary>
    [Test]
    public async Task AGrantFlushesARegionRegisteredWithoutFlushAccessOfItsOwn()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        using var file = LeasedRdma.OpenFile(dir.File("area"), "/mnt/xfs", (long)Area);
        using var lease = file.AcquireLease();
        using var rig = new TrustRig();
        using var area = rig.ServerPd.Register(lease, Granted);
        var link = rig.Connect(AccessFlags.None);
        using var grant = await link.ServerQp.GrantAsync(area.Region, AccessFlags.RemoteWrite | AccessFlags.FlushPersistent);
        var write = link.Write(grant.Remote, 4096, seed: 3);
        var flush = link.Flush(grant.Remote, 4096, 4096);
        TestContext.Out.WriteLine($"region access {area.Access}; write {write}; flush through the window {flush}");
        Assert.Multiple(() =>
        {
            Assert.That(write.Status, Is.EqualTo(WorkCompletionStatus.Success));
            Assert.That(flush.Status, Is.EqualTo(WorkCompletionStatus.Success), "a window's FlushPersistent is enough");
            Patterns.AssertEqual(file.Span.Slice(4096, 4096), TrustRig.Block(3), "the page written and flushed");
        });
    }

    // ---- What another peer can do to a grant ----

    /// <summary>
    /// docs/security.md: a peer cannot "reach another peer's grant, even with its exact key". A SEND with invalidate
    /// carries a key to invalidate; IBA allows it only for a type 2 window bound through the QP that receives it. rxe's
    /// rxe_invalidate_mw checks neither the QP nor the PD: an attacker that knows (or sweeps, 256 tries per window index) a
    /// victim's key revokes the victim's grant through its OWN connection, whenever the server has a receive posted
    /// on the attacker's QP (any server that takes messages). The victim's next write then fails, the device reports the
    /// error on the VICTIM's QP (PeerError blames the victim, grant.state "live"), and the library still says the grant stands.
    /// An rxe defect (docs/known-defects.md, "rxe lets any peer invalidate a type 2 window"): this test shows it and fails
    /// when a kernel fixes it. The defence is not to post receives on the QPs of peers you do not trust (PmemStore posts
    /// none: a SEND without a receive is answered RNR before any invalidation).
    /// </summary>
    [Test]
    public async Task RxeLetsAnotherPeerInvalidateAType2WindowWithASendWithInvalidate()
    {
        using var rig = new TrustRig();
        using var victimArea = rig.ServerPd.AllocateBuffer(16384, Granted);
        using var attackerArea = rig.ServerPd.AllocateBuffer(16384, Granted);
        var victim = rig.Connect(AccessFlags.None);
        var attacker = rig.Connect(AccessFlags.None);
        using var victimGrant = await victim.ServerQp.GrantAsync(victimArea, AccessFlags.RemoteWrite);
        using var attackerGrant = await attacker.ServerQp.GrantAsync(attackerArea, AccessFlags.RemoteWrite);
        Assert.That(victim.Write(victimGrant.Remote, 0, seed: 1).Status, Is.EqualTo(WorkCompletionStatus.Success));
        Patterns.AssertEqual(victimArea.Span[..4096], TrustRig.Block(1), "the victim's first write");

        var events = new List<AsyncEvent>();
        rig.Server.AsyncEvent += (_, e) =>
        {
            lock (events)
                events.Add(e);
        };
        // The server takes messages from its peers: a receive on the attacker's QP.
        using var inbox = rig.ServerPd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        attacker.ServerQp.PostReceive(7, inbox.Slice(0, 4096));
        Patterns.Fill(attacker.Source.Span[..64], 9);
        attacker.PeerQp.PostSendWithInvalidate(3, attacker.Source.Slice(0, 64), victimGrant.Remote.RemoteKey);
        var sent = RcPair.WaitOne(attacker.PeerCq);
        var received = Cm.TryWaitOne(rig.ServerReceiveCq, 5);

        var after = victim.Write(victimGrant.Remote, 4096, seed: 2);
        Thread.Sleep(500);   // the device's async event, if any, reaches the handler
        List<AsyncEvent> seen;
        lock (events)
            seen = [.. events];
        TestContext.Out.WriteLine($"attacker's SEND with invalidate of the victim's key 0x{victimGrant.Remote.RemoteKey:x}: {sent}; server received: " +
            $"{(received is { } r ? $"{r} (invalidated key 0x{r.InvalidatedRemoteKey:x})" : "nothing")}; victim's next write: {after}; " +
            $"victim's grant IsRevoked {victimGrant.IsRevoked}; device events: {string.Join(", ", seen)} (victim QP {victim.ServerQp.QueuePairNumber}, attacker QP {attacker.ServerQp.QueuePairNumber})");
        Assert.Multiple(() =>
        {
            Assert.That(sent.Status, Is.EqualTo(WorkCompletionStatus.Success), "rxe accepts the SEND with invalidate of a window bound through another QP (the defect)");
            Assert.That(received?.InvalidatedRemoteKey, Is.EqualTo(victimGrant.Remote.RemoteKey), "and invalidates the victim's key");
            Assert.That(after.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the victim's next write is refused");
        });
        Assert.That(victimArea.Span.Slice(4096, 4096).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing of the refused write landed");
    }

    // ---- What the server is told: PeerError and the metric ----

    /// <summary>
    /// The server revokes a peer's grant itself (RemoteGrant.Revoke, documented as the first way a grant ends); the
    /// honest peer's next write through the key it was given fails. PeerError must not say the peer "used a key or range
    /// it was never given": GrantEnded is true, and the metric's grant.state is "ended", not "live" (which the docs
    /// call a key sweep).
    /// </summary>
    [Test]
    public async Task APeerWritingThroughAGrantTheServerRevokedIsNotCountedAsASweep()
    {
        using var server = new GrantServer(pd => pd.AllocateBuffer(Area, Granted), AccessFlags.RemoteWrite);
        var memory = (RegisteredBuffer)server.Region;
        var states = new List<string>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == VerbsMetrics.MeterName && instrument.Name == "rdmalease.verbs.peer_errors")
                l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((_, _, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "grant.state")
                {
                    lock (states)
                        states.Add(tag.Value as string ?? "");
                }
            }
        });
        listener.Start();

        using var side = new CmSide();
        using var source = side.Pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        var qp = side.NewQueuePair();
        using var conn = await RdmaConnection.ConnectAsync(server.EndPoint, qp, new RdmaConnectOptions { Timeout = Cm.Generous });
        var grant = GrantServer.Decode(conn.RemotePrivateData);
        WorkCompletionStatus Write(ulong offset, int seed)
        {
            Patterns.Fill(source.Span, seed);
            qp.PostWrite(1, source.Slice(0, 4096), grant, offset);
            return Cm.WaitOne(side.Cq).Status;
        }
        Assert.That(Write(0, seed: 1), Is.EqualTo(WorkCompletionStatus.Success));
        Patterns.AssertEqual(memory.Span[..4096], TrustRig.Block(1), "the peer's write through its grant");

        GrantServer.Eventually(() => server.Connections.Count == 1, "the server holds the connection");
        server.Connections[0].Grant!.Revoke();   // the server's own decision
        Assert.That(Write(4096, seed: 2), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the revoked key reaches nothing");
        Assert.That(memory.Span[4096..].IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing landed after the revoke");
        GrantServer.Eventually(() => server.Errors.Count == 1, "the server saw the peer's error");
        Thread.Sleep(200);
        string[] measured;
        lock (states)
            measured = [.. states];
        TestContext.Out.WriteLine($"PeerError: {server.Errors[0]} (GrantEnded {server.Errors[0].GrantEnded}); peer_errors grant.state: {string.Join(", ", measured)}");
        Assert.Multiple(() =>
        {
            Assert.That(server.Errors[0].GrantEnded, Is.True, "the grant had ended (the server revoked it): the peer used the key it was given, no sweep");
            Assert.That(measured, Is.EqualTo(new[] { "ended" }), "peer_errors: grant.state 'ended', not 'live'");
        });
    }

    // ---- Accepting with a grant when the private data cannot be made ----

    /// <summary>
    /// AcceptAsync with a grant whose private-data factory throws, or returns more than an accept carries: the grant is
    /// already bound by then. The accept must fail with the factory's error, the peer be refused at once (not left to time
    /// out), the window be deallocated (kernel's PD users), and the QP be back in RESET, where it then accepts the peer's
    /// retry with a grant that works.
    /// </summary>
    [TestCase("throws")]
    [TestCase("too long")]
    public async Task AnAcceptWhosePrivateDataCannotBeMadeRefusesThePeerAndLeavesNoWindow(string how)
    {
        using var server = new CmSide();
        using var client = new CmSide();
        using var region = server.Pd.AllocateBuffer(Area, Granted);
        using var listener = RdmaListener.Listen(Cm.AnyPort);
        var qp = server.Pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = server.Device.CreateCompletionQueue(2, withEvents: true), ReceiveCompletionQueue = server.Cq });
        var clientQp = client.NewQueuePair();
        int users = KernelView.ProtectionDomainUsers();
        Func<RemoteRegion, ReadOnlyMemory<byte>> broken = how == "throws"
            ? _ => throw new FormatException("the application's encoder failed")
            : _ => new byte[RdmaPrivateDataLimits.Accept + 1];

        var accepting = AcceptOnceAsync(listener, qp, region, broken);
        Exception? refused = null;
        try
        {
            using var c = await RdmaConnection.ConnectAsync(listener.LocalEndPoint, clientQp, new RdmaConnectOptions { Timeout = Cm.Generous });
        }
        catch (Exception e)
        {
            refused = e;
        }
        var (_, acceptFailure) = await accepting;
        TestContext.Out.WriteLine($"accept: {acceptFailure?.GetType().Name}: {acceptFailure?.Message}\nconnect: {refused?.GetType().Name}: {refused?.Message}");
        Assert.Multiple(() =>
        {
            Assert.That(acceptFailure, how == "throws" ? Is.InstanceOf<FormatException>() : Is.InstanceOf<ArgumentException>());
            Assert.That(refused, Is.InstanceOf<RdmaConnectionException>(), "the peer is refused, not left to time out");
            Assert.That(KernelView.ProtectionDomainUsers(), Is.EqualTo(users), "rdma resource show pd: the grant's window was deallocated");
            Assert.That(qp.QueryState(), Is.EqualTo(QueuePairState.Reset), "the QP is back in RESET");
        });

        // The peer tries again; the same QP accepts it with a grant that works.
        var again = AcceptOnceAsync(listener, qp, region, GrantServer.Encode);
        using var conn = await RdmaConnection.ConnectAsync(listener.LocalEndPoint, clientQp, new RdmaConnectOptions { Timeout = Cm.Generous });
        var (serverSide, failure) = await again;
        Assert.That(failure, Is.Null);
        using var accepted = serverSide;
        var grant = GrantServer.Decode(conn.RemotePrivateData);
        Assert.That(grant.RemoteKey, Is.Not.EqualTo(region.RemoteKey), "a window's key, never the region's");
        using var source = client.Pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        Patterns.Fill(source.Span, 6);
        clientQp.PostWrite(1, source.Slice(0, 4096), grant, 8192);
        Assert.That(Cm.WaitOne(client.Cq).Status, Is.EqualTo(WorkCompletionStatus.Success));
        Patterns.AssertEqual(region.Span.Slice(8192, 4096), source.Span, "the retry's write through its grant");
        Assert.That(region.Span[..8192].IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing else landed");
    }

    static Task<(RdmaConnection? Connection, Exception? Failure)> AcceptOnceAsync(RdmaListener listener, QueuePair qp, MemoryRegion region,
        Func<RemoteRegion, ReadOnlyMemory<byte>> privateData) => Task.Run(async () =>
        {
            using var request = await listener.AcceptAsync(Cm.Generous);
            try
            {
                return ((RdmaConnection?)await request.AcceptAsync(qp, region, AccessFlags.RemoteWrite, privateData, new RdmaAcceptOptions { Timeout = Cm.Generous }), (Exception?)null);
            }
            catch (Exception e)
            {
                return (null, e);
            }
        });
}
