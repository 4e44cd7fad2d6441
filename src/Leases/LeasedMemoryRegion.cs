using System.Diagnostics;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Leases;

/// <summary>
/// A memory region over a leased file range, registered only while the lease is held
/// (<see cref="LeasedRegistration.Register(ProtectionDomain, LeasedFileRange, AccessFlags, LeasedRegistrationOptions?)"/>).
/// </summary>
/// <remarks>
/// <para><b>When the lease ends</b> (a break by another process, or <see cref="FileLease.Release"/>/<see cref="DaxFile.Dispose"/>),
/// the lease's teardown callback runs this, on the thread ending the lease, before the file mapping is revoked and the
/// lease given back: (1) the region is revoked with a <see cref="LeaseRevokedException"/> (every later post naming it
/// throws that exception); (2) the queue pairs attached with <see cref="AttachQueuePair"/> are moved to the error state
/// (their outstanding work requests complete with WorkRequestFlushed); (3) the region is deregistered (ibv_dereg_mr), so
/// the rkey is dead: peers' RDMA operations with it complete with RemoteAccessError. Only then may the other process
/// change the file. The application learns of it through <see cref="FileLease.Broken"/> / <see cref="FileLease.BreakRequested"/>,
/// and can take a new lease and register again once the other process is done.</para>
/// <para>A post that is inside libibverbs at the moment of revocation still holds a reference to the region; the
/// deregistration then happens when that post returns (microseconds). For an ODP region that is harmless: before the
/// lease is released the file mapping under the region is replaced by anonymous memory, which invalidates the region's
/// device mappings of the file's pages.</para>
/// <para>Thread-safe. Registration and teardown are serialized: a break that arrives while the region is being registered
/// waits for the registration, then tears it down.</para>
/// </remarks>
public sealed unsafe class LeasedMemoryRegion : IDisposable, ILeaseDependent
{
    private readonly Lock _gate = new();
    private readonly List<QueuePair> _queuePairs = [];
    private readonly IDisposable _dependentRegistration;
    private readonly MemoryRegion _region;
    private LeaseRevokedException? _revocation;
    private long _teardownStarted;
    private long _deregistered;
    private bool _disposed;

    internal LeasedMemoryRegion(ProtectionDomain pd, LeasedFileRange range, AccessFlags access)
    {
        Lease = range.Lease;
        FileOffset = range.Offset;
        ProtectionDomain = pd;
        // Nothing here runs the ODP integrity probe (the device's OdpQuirk was chosen when it was opened), so a break
        // waiting on _gate waits for one ibv_reg_mr at most.
        lock (_gate)
        {
            // The dependent first: a break from now on waits on _gate, then finds the region (or the failure) below.
            try
            {
                _dependentRegistration = range.Lease.AddDependent(this);
            }
            catch (InvalidOperationException)
            {
                throw LeaseRevokedException.ForRegistration(range.Lease);
            }
            try
            {
                DaxFile file = range.Lease.File;
                byte* address = file.RegistrationAddress + range.Offset;   // throws if the mapping is already revoked
                var (mapping, descriptor) = file.MemoryOwners;
                // The region keeps the mapping and the descriptor alive: neither is unmapped or closed before the
                // kernel confirmed the region gone, whatever happens to this object or the file.
                _region = pd.RegisterKeepingAlive(address, range.Length, access, mapping, descriptor);
                file.AddRegion(_region);
            }
            catch
            {
                _dependentRegistration.Dispose();
                throw;
            }
        }
    }

    /// <summary>The lease the region depends on.</summary>
    public FileLease Lease { get; }

    /// <summary>The leased file.</summary>
    public DaxFile File => Lease.File;

    /// <summary>The domain the region is registered in.</summary>
    public ProtectionDomain ProtectionDomain { get; }

    /// <summary>Offset of the region's first byte in the file.</summary>
    public ulong FileOffset { get; }

    /// <summary>
    /// The verbs region, for posting (<see cref="MemoryRegion.Slice"/>, <see cref="MemoryRegion.ToRemote()"/>). After the
    /// lease ended it is revoked and disposed; posts naming it throw <see cref="Revocation"/>.
    /// </summary>
    public MemoryRegion Region => _region;

    /// <summary>Bytes registered.</summary>
    public ulong Length => Region.Length;

    /// <summary>The rkey peers use (dead once the lease ended).</summary>
    public uint RemoteKey => Region.RemoteKey;

    /// <summary>The lkey for local work requests.</summary>
    public uint LocalKey => Region.LocalKey;

    /// <summary>True for an ODP region, false for a pinned one (non-DAX files on devices without ODP).</summary>
    public bool IsOnDemand => Region.IsOnDemand;

    /// <summary>The access rights it was registered with (including <see cref="AccessFlags.OnDemand"/> for ODP).</summary>
    public AccessFlags Access => Region.Access;

    /// <summary>True while the region is registered and its lease held.</summary>
    public bool IsActive
    {
        get
        {
            lock (_gate)
                return _revocation is null && !_disposed;
        }
    }

    /// <summary>Why posts fail, once the lease ended; null while active.</summary>
    public LeaseRevokedException? Revocation
    {
        get
        {
            lock (_gate)
                return _revocation;
        }
    }

    /// <summary>Stopwatch timestamp at which the teardown began (0 while active).</summary>
    public long TeardownStartedTimestamp => Interlocked.Read(ref _teardownStarted);

    /// <summary>Stopwatch timestamp right after deregistration (0 while registered).</summary>
    public long DeregisteredTimestamp => Interlocked.Read(ref _deregistered);

    /// <summary>
    /// True once the kernel confirmed the region gone (ibv_dereg_mr returned success). Until then a peer's key might
    /// still name it; the file range under it stays reserved.
    /// </summary>
    public bool IsDeregistered => _region.DeregistrationState == DestroyState.Destroyed;

    /// <summary>The errno of the last failed ibv_dereg_mr (0 when none failed).</summary>
    public int DeregistrationErrno => _region.DeregistrationErrno;

    /// <summary>What a peer needs to reach the region.</summary>
    public RemoteRegion ToRemote() => Region.ToRemote();

    /// <summary>A local segment of the region.</summary>
    public LocalSegment Slice(ulong offset, uint length) => Region.Slice(offset, length);

    /// <summary>
    /// Names a queue pair of this process that works on this region (receives into it, reads into it, sends from it):
    /// when the lease ends it is moved to the error state before the region is deregistered, so its outstanding work
    /// requests are flushed instead of touching the file. Queue pairs of peers need nothing: their rkey dies.
    /// </summary>
    /// <exception cref="LeaseRevokedException">The lease has already ended.</exception>
    public void AttachQueuePair(QueuePair queuePair)
    {
        ArgumentNullException.ThrowIfNull(queuePair);
        lock (_gate)
        {
            if (_revocation is { } r)
                throw r;
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_queuePairs.Contains(queuePair))
                _queuePairs.Add(queuePair);
        }
    }

    /// <summary>Stops moving <paramref name="queuePair"/> to the error state at teardown.</summary>
    public void DetachQueuePair(QueuePair queuePair)
    {
        lock (_gate)
            _queuePairs.Remove(queuePair);
    }

    /// <summary>
    /// Deregisters the region now (the lease stays held; attached queue pairs are left as they are), waiting until the
    /// kernel confirms it (bounded by half the lease-break time). Idempotent.
    /// </summary>
    /// <exception cref="RegionDeregistrationException">The kernel did not confirm the deregistration: see the exception.</exception>
    public void Dispose()
    {
        var errors = new List<Exception>();
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            _dependentRegistration.Dispose();
            _queuePairs.Clear();
            if (_region.Revocation is null)
                _region.Revoke(new ObjectDisposedException(ToString()));
            long waitUntil = Stopwatch.GetTimestamp() + (long)(FileLease.BreakTime.TotalSeconds / 2 * Stopwatch.Frequency);
            DeregisterLocked(waitUntil, errors);
        }
        if (errors.Count > 0)
            throw errors[0];
    }

    /// <summary>
    /// Tries ibv_dereg_mr again for a region the kernel refused to deregister (a <see cref="RegionDeregistrationException"/>
    /// with an errno). Until it succeeds the region keeps its file range reserved and the file's descriptor open, so the
    /// file cannot be leased again (a write lease needs the only open descriptor): call this before re-leasing. On success
    /// both are released. Returns <see cref="IsDeregistered"/>; does nothing to a region not yet deregistered or one
    /// whose deregistration is still waiting for a post.
    /// </summary>
    public bool RetryDeregistration()
    {
        lock (_gate)
        {
            if (_region.DeregistrationState == DestroyState.Failed && _region.HandleForChildren.RetryFailedDestroy())
            {
                Interlocked.Exchange(ref _deregistered, Stopwatch.GetTimestamp());
                LeaseDiagnostics.RecordRetriedDeregistration();
            }
            return IsDeregistered;
        }
    }

    void ILeaseDependent.Revoke(LeaseRevokedException reason, List<Exception> errors)
    {
        lock (_gate)
        {
            if (_disposed || _revocation is not null)
                return;
            Interlocked.Exchange(ref _teardownStarted, Stopwatch.GetTimestamp());
            _revocation = reason;
            _region.Revoke(reason);
            foreach (var qp in _queuePairs)
            {
                try
                {
                    if (!qp.IsDisposed)
                        qp.MoveToError();
                }
                catch (ObjectDisposedException)
                {
                    // destroyed meanwhile: it can no longer touch the region
                }
                catch (VerbsException e)
                {
                    errors.Add(e);
                }
            }
            _queuePairs.Clear();
        }
    }

    bool ILeaseDependent.Deregister(long waitUntil, List<Exception> errors)
    {
        lock (_gate)
            return _disposed ? IsDeregistered : DeregisterLocked(waitUntil, errors);
    }

    /// <summary>
    /// Deregisters and waits for the kernel's confirmation. Not confirmed: a post still holds a reference at
    /// <paramref name="waitUntil"/> (the deregistration then runs when it returns), or ibv_dereg_mr failed even after
    /// retries. Either way the file range under the region stays reserved (its handles are kept by the region), and a
    /// pinned region's domain is quarantined: all its QPs to the error state, so no peer reaches the pages through it.
    /// </summary>
    private bool DeregisterLocked(long waitUntil, List<Exception> errors)
    {
        // Taken before the region's Dispose closes them: rxe refuses ibv_dereg_mr (EINVAL) while it counts a window
        // bound to the region, and a window whose handle a caller still holds is deallocated only when it lets go.
        var windows = _region.ChildrenOf<MemoryWindow>();
        var state = _region.DeregisterAndWait(waitUntil);
        if (state == DestroyState.Failed)
            state = RetryAfterWindows(windows, waitUntil);
        if (state == DestroyState.Destroyed)
        {
            Interlocked.Exchange(ref _deregistered, Stopwatch.GetTimestamp());
            return true;
        }
        LeaseDiagnostics.RecordUnconfirmedDeregistration(state == DestroyState.Failed);
        string why = state == DestroyState.Failed
            ? $"ibv_dereg_mr failed with {Verbs.Errno.Describe(_region.DeregistrationErrno)} after {_region.HandleForChildren.DestroyCalls} attempts " +
              "(retried after the windows over it were deallocated)"
            : "a post still held the region when the wait ended (it is deregistered when that post returns)";
        string consequence;
        if (IsOnDemand)
        {
            consequence = "the file range under it stays reserved by an inaccessible placeholder, so peers using its key get errors";
        }
        else
        {
            var qpErrors = ProtectionDomain.Quarantine($"pinned {this} could not be confirmed deregistered ({why}).");
            errors.AddRange(qpErrors);
            LeaseDiagnostics.RecordQuarantine();
            consequence = $"it is pinned, so every queue pair of {ProtectionDomain} was moved to the error state and the domain takes no new ones";
        }
        errors.Add(new RegionDeregistrationException(this, state == DestroyState.Failed ? _region.DeregistrationErrno : 0, $"{why}; {consequence}"));
        return false;
    }

    /// <summary>
    /// A failed ibv_dereg_mr, tried again: once the windows that were over the region are deallocated (a window whose
    /// handle was still held is deallocated when it is given back), then a few times with short pauses, all before
    /// <paramref name="waitUntil"/> (the bound a break already has) and within <see cref="RetryBudget"/>.
    /// </summary>
    private DestroyState RetryAfterWindows(List<MemoryWindow> windows, long waitUntil)
    {
        long until = Math.Min(waitUntil, Stopwatch.GetTimestamp() + (long)(RetryBudget.TotalSeconds * Stopwatch.Frequency));
        foreach (var window in windows)
            window.HandleForChildren.WaitForDestroy(until);
        var handle = _region.HandleForChildren;
        for (int pause = 1; ; pause *= 2)
        {
            if (handle.RetryFailedDestroy())
            {
                LeaseDiagnostics.RecordRetriedDeregistration();
                return DestroyState.Destroyed;
            }
            if (Stopwatch.GetTimestamp() + pause * Stopwatch.Frequency / 1000 >= until)
                return handle.DestroyState;
            Thread.Sleep(pause);
        }
    }

    /// <summary>How long a break spends retrying a failed deregistration at most (it is also bounded by half the lease-break time).</summary>
    internal static TimeSpan RetryBudget { get; } = TimeSpan.FromMilliseconds(250);

    /// <inheritdoc/>
    public override string ToString() =>
        $"leased {(_region.IsOnDemand ? "ODP" : "pinned")} region '{Lease.File.Path}'+{FileOffset} rkey 0x{_region.RemoteKey:x}";
}

/// <summary>
/// The kernel did not confirm that a leased memory region was deregistered: ibv_dereg_mr kept failing, or a post still
/// held the region when the bounded wait ended. The region may still exist; what the library did so that no peer can
/// reach the file through it is in the message (an ODP region's file range is kept behind an inaccessible placeholder; a
/// pinned region's protection domain is quarantined).
/// </summary>
public sealed class RegionDeregistrationException : InvalidOperationException
{
    internal RegionDeregistrationException(LeasedMemoryRegion region, int errno, string detail)
        : base($"{region} was not confirmed deregistered: {detail}.")
    {
        Errno = errno;
    }

    /// <summary>The errno ibv_dereg_mr failed with, or 0 when it had not run yet (a post held the region).</summary>
    public int Errno { get; }
}
