namespace RdmaLease.Leases;

/// <summary>Which kernel mechanism holds a <see cref="FileLease"/>.</summary>
public enum LeaseMechanism
{
    /// <summary>
    /// fcntl F_SETDELEG (Linux 6.19+): a delegation (FL_DELEG). Broken by the opens and truncates that break a
    /// lease, and also by metadata changes of other processes: unlink, rename, chmod (and link on some kernels).
    /// </summary>
    Delegation,

    /// <summary>
    /// fcntl F_SETLEASE: a classic lease (FL_LEASE), taken when the kernel has no F_SETDELEG (EINVAL). Broken by other
    /// opens and truncates, but NOT by unlink, rename or chmod.
    /// </summary>
    Lease,
}

/// <summary>The type of a lease, from the access of the file it is taken on.</summary>
public enum LeaseType
{
    /// <summary>
    /// F_RDLCK, on an O_RDONLY descriptor (<see cref="DaxFileAccess.Read"/>). Other readers do not break it; an open for
    /// writing or a truncate by another process does. Cannot be taken while anyone has the file open for writing.
    /// </summary>
    Read = 0,

    /// <summary>
    /// F_WRLCK, on an O_RDWR descriptor (<see cref="DaxFileAccess.ReadWrite"/>). Any other open of the file (even
    /// read-only) or truncate breaks it. Cannot be taken while any other descriptor, in any process, has the file open.
    /// </summary>
    Write = 1,
}

/// <summary>Options for <see cref="FileLease.Acquire(DaxFile, LeaseOptions?)"/>.</summary>
public sealed class LeaseOptions
{
    /// <summary>Try F_SETDELEG first (default true); false takes a classic F_SETLEASE lease directly.</summary>
    public bool PreferDelegation { get; init; } = true;

    /// <summary>
    /// When the kernel has no F_SETDELEG (EINVAL), fall back to F_SETLEASE (default true). False makes that case an error,
    /// for callers that need unlink/rename/chmod to break the lease.
    /// </summary>
    public bool AllowLeaseFallback { get; init; } = true;
}

/// <summary>What a lease break looked like, passed to <see cref="FileLease.BreakRequested"/>.</summary>
public sealed class LeaseBreakEventArgs : EventArgs
{
    internal LeaseBreakEventArgs(FileLease lease, int fd, int signalCode, int pendingType, long signalTimestamp,
        long observedTimestamp, long releasedTimestamp, IReadOnlyList<Exception> teardownErrors)
    {
        Lease = lease;
        FileDescriptor = fd;
        SignalCode = signalCode;
        PendingLeaseType = pendingType;
        SignalTimestamp = signalTimestamp;
        ObservedTimestamp = observedTimestamp;
        ReleasedTimestamp = releasedTimestamp;
        TeardownErrors = teardownErrors;
    }

    /// <summary>The broken lease (already released when the event is raised).</summary>
    public FileLease Lease { get; }

    /// <summary>The leased descriptor: si_fd of the signal.</summary>
    public int FileDescriptor { get; }

    /// <summary>si_code of the signal (3, POLL_MSG, for a kernel lease break; 0 when found by a re-check after dropped signals).</summary>
    public int SignalCode { get; }

    /// <summary>What F_GETLEASE/F_GETDELEG reported: the type the breaker wants us to go to (2, F_UNLCK, or 0, F_RDLCK), or -1.</summary>
    public int PendingLeaseType { get; }

    /// <summary><see cref="System.Diagnostics.Stopwatch"/> timestamp of the signal handler's run.</summary>
    public long SignalTimestamp { get; }

    /// <summary>Stopwatch timestamp when the watcher thread picked the signal up.</summary>
    public long ObservedTimestamp { get; }

    /// <summary>Stopwatch timestamp right after the lease was released (F_UNLCK).</summary>
    public long ReleasedTimestamp { get; }

    /// <summary>From the signal to the release: what the breaking process waited on us.</summary>
    public TimeSpan BreakToRelease => System.Diagnostics.Stopwatch.GetElapsedTime(SignalTimestamp, ReleasedTimestamp);

    /// <summary>Exceptions the teardown callbacks threw (they did not stop the release).</summary>
    public IReadOnlyList<Exception> TeardownErrors { get; }
}

/// <summary>A process that has the file open or holds a lock/lease on it, as found in /proc.</summary>
/// <param name="Pid">The process id.</param>
/// <param name="Command">Its /proc/PID/comm, if readable.</param>
/// <param name="What">What it holds: "fd 3 (O_RDWR)" or a /proc/locks entry such as "LEASE READ".</param>
public sealed record LeaseHolder(int Pid, string? Command, string What)
{
    /// <inheritdoc/>
    public override string ToString() => $"pid {Pid} ({Command ?? "?"}) {What}";
}

/// <summary>
/// A lease could not be taken. For EAGAIN (someone else has the file open in a conflicting way) <see cref="Holders"/>
/// lists the processes found in /proc/locks and /proc/*/fd.
/// </summary>
public sealed class LeaseUnavailableException : UnixIOException
{
    internal LeaseUnavailableException(string message, int errno, IReadOnlyList<LeaseHolder> holders)
        : base(message, errno)
    {
        Holders = holders;
    }

    /// <summary>Other openers and lock/lease holders of the file (empty when none was found or errno was not EAGAIN).</summary>
    public IReadOnlyList<LeaseHolder> Holders { get; }
}
