using System.Diagnostics;
using RdmaLease.Verbs;

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
public sealed unsafe class LeasedMemoryRegion : IDisposable
{
    private readonly Lock _gate = new();
    private readonly List<QueuePair> _queuePairs = [];
    private readonly IDisposable _teardownRegistration;
    private MemoryRegion? _region;
    private LeaseRevokedException? _revocation;
    private long _teardownStarted;
    private long _deregistered;
    private int _deregistrationErrno;
    private bool _disposed;

    internal LeasedMemoryRegion(ProtectionDomain pd, LeasedFileRange range, AccessFlags access)
    {
        Lease = range.Lease;
        FileOffset = range.Offset;
        ProtectionDomain = pd;
        lock (_gate)
        {
            // The callback first: a break from now on waits on _gate, then finds the region (or the failure) below.
            try
            {
                _teardownRegistration = range.Lease.RegisterTeardown(OnLeaseEnding);
            }
            catch (InvalidOperationException)
            {
                throw new LeaseRevokedException(range.Lease, range.Lease.WasBroken);
            }
            try
            {
                byte* address = range.Lease.File.BaseAddress + range.Offset;   // throws if the mapping is already revoked
                _region = pd.Register(address, (nuint)range.Length, access);
            }
            catch
            {
                _teardownRegistration.Dispose();
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
    public long FileOffset { get; }

    /// <summary>
    /// The verbs region, for posting (<see cref="MemoryRegion.Slice"/>, <see cref="MemoryRegion.ToRemote()"/>). After the
    /// lease ended it is revoked and disposed; posts naming it throw <see cref="Revocation"/>.
    /// </summary>
    public MemoryRegion Region => _region!;

    /// <summary>Bytes registered.</summary>
    public nuint Length => Region.Length;

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

    /// <summary>The errno ibv_dereg_mr returned when the teardown deregistered the region (0: success, or not yet).</summary>
    public int DeregistrationErrno => Volatile.Read(ref _deregistrationErrno);

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
    /// Deregisters the region now (the lease stays held; attached queue pairs are left as they are). Idempotent.
    /// </summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            _teardownRegistration.Dispose();
            _queuePairs.Clear();
            if (_region is { } mr && mr.Revocation is null)
                mr.Revoke(new ObjectDisposedException(ToString()));
            Deregister();
        }
    }

    private void OnLeaseEnding(FileLease lease)
    {
        lock (_gate)
        {
            if (_disposed || _revocation is not null)
                return;
            Interlocked.Exchange(ref _teardownStarted, Stopwatch.GetTimestamp());
            var reason = new LeaseRevokedException(lease, broken: lease.BreakSignalTimestamp != 0);
            _revocation = reason;
            _region?.Revoke(reason);
            List<Exception>? errors = null;
            foreach (var qp in _queuePairs)
            {
                try
                {
                    if (!qp.IsDisposed)
                        qp.MoveToError();
                }
                catch (Exception e) when (e is VerbsException or ObjectDisposedException)
                {
                    (errors ??= []).Add(e);
                }
            }
            _queuePairs.Clear();
            Deregister();
            if (errors is not null)
                throw new AggregateException($"moving queue pairs to the error state while tearing down {this}", errors);
        }
    }

    private void Deregister()
    {
        if (_region is not { } mr || mr.IsDisposed)
            return;
        mr.Dispose();
        Volatile.Write(ref _deregistrationErrno, mr.HandleForChildren.DestroyErrno);
        Interlocked.Exchange(ref _deregistered, Stopwatch.GetTimestamp());
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"leased {(_region?.IsOnDemand == true ? "ODP" : "pinned")} region '{Lease.File.Path}'+{FileOffset} ({(IsActive ? "active" : "revoked")})";
}
