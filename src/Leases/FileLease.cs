using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Tmds.Linux;

namespace RdmaLease.Leases;

/// <summary>
/// A revocable layout lease on a <see cref="DaxFile"/>: while it is held no other process can open, truncate (or, with a
/// delegation, unlink/rename/chmod) the file without the kernel first asking us to give the lease back. That is what
/// makes it safe to let an RDMA device write into the file's persistent-memory pages: before the file's layout changes,
/// every registration over it is torn down.
/// </summary>
/// <remarks>
/// <para><b>Kind.</b> <see cref="Mechanism"/> is a delegation (F_SETDELEG, Linux 6.19+, also broken by unlink, rename and
/// chmod) where the kernel has it, else a classic lease (F_SETLEASE; EINVAL from F_SETDELEG means "not on this kernel").
/// <see cref="Type"/> follows the file's access: a read-only <see cref="DaxFile"/> (O_RDONLY) gets a read lease that other
/// readers do not break; a read-write one gets a write lease that any other open breaks. Either can only be taken while no
/// conflicting open exists; the <see cref="LeaseUnavailableException"/> then names the processes (from /proc/locks and
/// /proc/*/fd).</para>
/// <para><b>A break</b> arrives as a real-time signal (<see cref="LeaseSignals"/>); the watcher thread confirms it with
/// F_GETLEASE/F_GETDELEG (a signal for a descriptor whose lease is intact is ignored) and then, in this order:
/// marks the lease revoked (<see cref="IsActive"/> false), runs the teardown callbacks (<see cref="RegisterTeardown"/>,
/// last registered first), revokes the file mapping (replaced by anonymous memory), releases the lease (F_UNLCK, which
/// lets the breaking process go on), records <see cref="ReleasedTimestamp"/>, and only then tells the application:
/// <see cref="Broken"/> is cancelled and <see cref="BreakRequested"/> raised on the thread pool. The kernel waits at most
/// <see cref="LeaseBreakTime"/> for the release and then removes the lease by force, so teardown callbacks must be quick
/// and must not wait for a thread that could be releasing this lease.</para>
/// <para><b>Release</b> (<see cref="Release"/>, <see cref="Dispose"/>, or disposing the <see cref="DaxFile"/>) runs the
/// teardown callbacks too, then F_UNLCK; the mapping stays. Both are idempotent and safe from any thread.</para>
/// </remarks>
public sealed class FileLease : IDisposable
{
    private readonly Lock _gate = new();
    private readonly CancellationTokenSource _broken = new();
    private readonly List<Teardown> _teardowns = [];
    private readonly ManualResetEventSlim _ended = new(false);
    private readonly int _fd;
    private int _state;                      // 0 active, 1 revoking, 2 released
    private int _endingThread;
    private long _signalTimestamp;
    private long _releasedTimestamp;
    private List<Exception>? _teardownErrors;

    private FileLease(DaxFile file, int fd, LeaseMechanism mechanism, LeaseType type, string? whyNotDelegation)
    {
        File = file;
        _fd = fd;
        Mechanism = mechanism;
        Type = type;
        DelegationUnavailableReason = whyNotDelegation;
        AcquiredTimestamp = Stopwatch.GetTimestamp();
    }

    /// <summary>The leased file.</summary>
    public DaxFile File { get; }

    /// <summary>The leased descriptor (the file's own).</summary>
    public int FileDescriptor => _fd;

    /// <summary>Delegation (F_SETDELEG) or classic lease (F_SETLEASE).</summary>
    public LeaseMechanism Mechanism { get; }

    /// <summary>Read or write lease, from the file's access.</summary>
    public LeaseType Type { get; }

    /// <summary>Why a delegation was not taken when <see cref="Mechanism"/> is <see cref="LeaseMechanism.Lease"/>, else null.</summary>
    public string? DelegationUnavailableReason { get; }

    /// <summary>True until the lease is broken or released.</summary>
    public bool IsActive => Volatile.Read(ref _state) == 0;

    /// <summary>True when the kernel broke the lease (as opposed to a voluntary release).</summary>
    public bool WasBroken => _broken.IsCancellationRequested || Interlocked.Read(ref _signalTimestamp) != 0;

    /// <summary>Cancelled after a break has been handled (registrations torn down, lease released).</summary>
    public CancellationToken Broken => _broken.Token;

    /// <summary>
    /// Raised (on the thread pool) after a break has been handled. Subscribe before the break could happen; after it,
    /// <see cref="Broken"/> tells as well.
    /// </summary>
    public event EventHandler<LeaseBreakEventArgs>? BreakRequested;

    /// <summary>Stopwatch timestamp of the acquisition.</summary>
    public long AcquiredTimestamp { get; }

    /// <summary>Stopwatch timestamp of the break signal (from the native handler), 0 when not broken.</summary>
    public long BreakSignalTimestamp => Interlocked.Read(ref _signalTimestamp);

    /// <summary>Stopwatch timestamp right after F_UNLCK, 0 while held.</summary>
    public long ReleasedTimestamp => Interlocked.Read(ref _releasedTimestamp);

    /// <summary>Break signal to release: how long the breaking process waited on us. Null when not broken (or not yet released).</summary>
    public TimeSpan? BreakToRelease
    {
        get
        {
            long s = BreakSignalTimestamp, r = ReleasedTimestamp;
            return s != 0 && r != 0 ? Stopwatch.GetElapsedTime(s, r) : null;
        }
    }

    /// <summary>Exceptions thrown by teardown callbacks (they never stop the release).</summary>
    public IReadOnlyList<Exception> TeardownErrors
    {
        get
        {
            lock (_gate)
                return _teardownErrors?.ToArray() ?? [];
        }
    }

    /// <summary>
    /// /proc/sys/fs/lease-break-time: how long the kernel lets a breaking process wait before it removes the lease
    /// by force. Teardown must finish well within it.
    /// </summary>
    public static TimeSpan LeaseBreakTime =>
        TimeSpan.FromSeconds(int.Parse(System.IO.File.ReadAllText("/proc/sys/fs/lease-break-time").Trim(), CultureInfo.InvariantCulture));

    /// <summary>
    /// Registers code to run when the lease ends (break or release) BEFORE the mapping is revoked and the lease released:
    /// e.g. deregistering the memory regions over the file. Callbacks run once, last registered first, on the thread that
    /// ends the lease (the watcher thread for a break). Dispose the returned object to unregister.
    /// </summary>
    /// <exception cref="InvalidOperationException">The lease has already ended.</exception>
    public IDisposable RegisterTeardown(Action<FileLease> callback)
    {
        ArgumentNullException.ThrowIfNull(callback);
        lock (_gate)
        {
            if (_state != 0)
                throw new InvalidOperationException("the lease has already been broken or released");
            var t = new Teardown(this, callback);
            _teardowns.Add(t);
            return t;
        }
    }

    /// <summary>
    /// [<paramref name="offset"/>, +<paramref name="length"/>) of the leased file, for
    /// <c>pd.Register(lease.Range(offset, length), access)</c> (<see cref="LeasedRegistration"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Empty, or outside the file's mapping.</exception>
    public LeasedFileRange Range(long offset, long length) => new(this, offset, length);

    /// <summary>Releases the lease: runs the teardown callbacks, then F_UNLCK. Idempotent; safe from any thread.</summary>
    public void Release() => End(breakSignal: 0, signalCode: 0, pendingType: -1, observed: 0);

    /// <summary>Same as <see cref="Release"/>.</summary>
    public void Dispose() => Release();

    /// <summary>Takes a lease on <paramref name="file"/>; see the class remarks for which kind.</summary>
    /// <exception cref="LeaseUnavailableException">The kernel refused (EAGAIN: conflicting opens, named in the message).</exception>
    public static FileLease Acquire(DaxFile file, LeaseOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        options ??= new LeaseOptions();
        int signal = LeaseSignals.EnsureStarted();
        int fd = file.FileDescriptor;
        var type = file.Access == DaxFileAccess.Read ? LeaseType.Read : LeaseType.Write;
        int lockType = type == LeaseType.Read ? LibC.F_RDLCK : LibC.F_WRLCK;

        // F_SETSIG before the lease, so the very first break is our real-time signal, not SIGIO.
        if (Interop.Fcntl.SetSig(fd, signal) != 0)
            throw UnixIOException.Last($"F_SETSIG({signal}) on '{file.Path}'");
        if (Interop.Fcntl.SetOwn(fd, Environment.ProcessId) != 0)
            throw UnixIOException.Last($"F_SETOWN on '{file.Path}'");

        string? whyNot = null;
        var mechanism = LeaseMechanism.Delegation;
        int errno = 0;
        if (options.PreferDelegation)
        {
            var lease = new FileLease(file, fd, LeaseMechanism.Delegation, type, null);
            if (TryTake(lease, () => Interop.Fcntl.SetDeleg(fd, lockType), out errno))
                return lease;
            if (errno != LibC.EINVAL)
                throw Unavailable(file, type, "F_SETDELEG", errno);
            whyNot = "F_SETDELEG failed with EINVAL: this kernel has no delegations for user space (Linux 6.19+) or not for this file";
            if (!options.AllowLeaseFallback)
                throw new LeaseUnavailableException($"cannot take a {Describe(type)} delegation on '{file.Path}' ({whyNot}) and LeaseOptions.AllowLeaseFallback is false", errno, []);
        }
        else
        {
            whyNot = "LeaseOptions.PreferDelegation is false";
        }
        mechanism = LeaseMechanism.Lease;
        var classic = new FileLease(file, fd, mechanism, type, whyNot);
        if (TryTake(classic, () => Interop.Fcntl.SetLease(fd, lockType), out errno))
            return classic;
        throw Unavailable(file, type, "F_SETLEASE", errno);
    }

    private static bool TryTake(FileLease lease, Func<int> take, out int errno)
    {
        lease.File.Attach(lease);
        LeaseSignals.Register(lease);    // before the lease exists, so a break right after is found
        if (take() == 0)
        {
            errno = 0;
            return true;
        }
        errno = Marshal.GetLastPInvokeError();
        LeaseSignals.Unregister(lease);
        lease.File.Detach(lease);
        Volatile.Write(ref lease._state, 2);
        return false;
    }

    private static LeaseUnavailableException Unavailable(DaxFile file, LeaseType type, string call, int errno)
    {
        string what = $"cannot take a {Describe(type)} {(call == "F_SETDELEG" ? "delegation" : "lease")} ({call}) on '{file.Path}'";
        if (errno != LibC.EAGAIN)
            return new LeaseUnavailableException(what, errno, []);
        var holders = LeaseHolders.Find(file);
        string who = holders.Count > 0
            ? "; conflicting: " + string.Join("; ", holders)
            : "; no other opener found in /proc (it may be in another PID namespace, or have closed the file since)";
        string hint = type == LeaseType.Write
            ? " A write lease needs this descriptor to be the only open of the file."
            : " A read lease needs an O_RDONLY descriptor and no open for writing.";
        return new LeaseUnavailableException(what + who + "." + hint + " Error", errno, holders);
    }

    private static string Describe(LeaseType type) => type == LeaseType.Read ? "read" : "write";

    /// <summary>
    /// Called by the watcher for a signal naming this lease's descriptor. Returns false when F_GETLEASE/F_GETDELEG shows
    /// the lease intact (a spurious signal) or the lease has already ended.
    /// </summary>
    internal bool OnBreakSignal(long signalTimestamp, int signalCode)
    {
        if (!IsActive)
            return false;
        long observed = Stopwatch.GetTimestamp();
        int held = Type == LeaseType.Read ? LibC.F_RDLCK : LibC.F_WRLCK;
        int pending;
        if (Mechanism == LeaseMechanism.Delegation)
            pending = Interop.Fcntl.GetDeleg(_fd, out int t) == 0 ? t : -1;
        else
            pending = Interop.Fcntl.GetLease(_fd);
        if (pending == held)
            return false;            // lease intact: not a break (or one already withdrawn)
        // F_UNLCK / F_RDLCK: a break is pending (or the kernel already removed the lease after lease-break-time).
        return End(signalTimestamp, signalCode, pending, observed);
    }

    private bool End(long breakSignal, int signalCode, int pendingType, long observed)
    {
        Teardown[] teardowns = [];
        bool mine = false, wait = false;
        lock (_gate)
        {
            if (_state == 0)
            {
                mine = true;
                _state = 1;
                _endingThread = Environment.CurrentManagedThreadId;
                if (breakSignal != 0)
                    Interlocked.Exchange(ref _signalTimestamp, breakSignal);
                teardowns = [.. _teardowns];
                _teardowns.Clear();
            }
            else
            {
                // Someone else is ending the lease. Wait until it is really released, so that a Dispose that follows
                // never closes the descriptor under that thread, unless that someone is this very thread (a teardown
                // callback calling Release or disposing the file).
                wait = _state == 1 && _endingThread != Environment.CurrentManagedThreadId;
            }
        }
        if (!mine)
        {
            if (wait)
                _ended.Wait();
            return false;
        }

        // 1. revoked (above); 2. teardown callbacks, last registered first.
        for (int i = teardowns.Length - 1; i >= 0; i--)
        {
            try
            {
                teardowns[i].Callback(this);
            }
            catch (Exception e)
            {
                lock (_gate)
                    (_teardownErrors ??= []).Add(e);
            }
        }
        // 3. the mapping, on a break only: the file's pages leave this process.
        if (breakSignal != 0)
            File.RevokeMapping();
        // 4. release: lets the breaking process continue. Under the file's lock, so the descriptor is still ours
        //    (a file disposed by a teardown callback has closed it, which released the lease already).
        File.ReleaseKernelLease(Mechanism == LeaseMechanism.Delegation);
        long released = Stopwatch.GetTimestamp();
        Interlocked.Exchange(ref _releasedTimestamp, released);
        LeaseSignals.Unregister(this);
        File.Detach(this);
        Volatile.Write(ref _state, 2);
        _ended.Set();

        // 5. tell the application, off the watcher thread so a slow handler cannot delay other leases' breaks.
        if (breakSignal != 0)
        {
            var args = new LeaseBreakEventArgs(this, _fd, signalCode, pendingType, breakSignal, observed, released, TeardownErrors);
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.Lease.Notify(s), args, preferLocal: false);
        }
        return true;
    }

    private void Notify(LeaseBreakEventArgs args)
    {
        try
        {
            _broken.Cancel();
        }
        catch (AggregateException e)
        {
            Trace.TraceError($"rdma-lease: a Broken-token callback threw: {e}");
        }
        try
        {
            BreakRequested?.Invoke(this, args);
        }
        catch (Exception e)
        {
            Trace.TraceError($"rdma-lease: a BreakRequested handler threw: {e}");
        }
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Describe(Type)} {(Mechanism == LeaseMechanism.Delegation ? "delegation" : "lease")} on '{File.Path}' (fd {_fd}, {(IsActive ? "active" : WasBroken ? "broken" : "released")})";

    private sealed class Teardown(FileLease owner, Action<FileLease> callback) : IDisposable
    {
        public Action<FileLease> Callback { get; } = callback;

        public void Dispose()
        {
            lock (owner._gate)
                owner._teardowns.Remove(this);
        }
    }
}
