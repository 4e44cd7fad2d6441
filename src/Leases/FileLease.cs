using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
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
/// F_GETLEASE/F_GETDELEG (a signal for a descriptor whose lease is intact is ignored) and a break worker then, in this
/// order: marks the lease revoked (<see cref="IsActive"/> false) and revokes every region over the file (posts naming one
/// throw <see cref="LeaseRevokedException"/>; attached queue pairs go to the error state); replaces the file mapping by
/// an inaccessible placeholder (a device access through any region over it faults: the peer gets an error completion);
/// deregisters every region, waiting until the kernel confirms each (bounded by half the time left before the kernel's
/// deadline); releases the lease (F_UNLCK, which lets the breaking process go on), records
/// <see cref="ReleasedTimestamp"/>, and only then tells the application: <see cref="Broken"/> is cancelled and
/// <see cref="BreakRequested"/> raised on the thread pool. No application code runs before F_UNLCK. The kernel waits at
/// most <see cref="LeaseBreakTime"/> for the release and then removes the lease by force; <see cref="LeaseDiagnostics"/>
/// counts teardowns that came close. docs/leases.md, "Safety argument", says why no region outlives its lease.</para>
/// <para><b>Release</b> (<see cref="Release"/>, <see cref="Dispose"/>, or disposing the <see cref="DaxFile"/>) deregisters
/// the regions too (confirmed), then F_UNLCK; the mapping stays unless a region could not be confirmed gone. Both are
/// idempotent and safe from any thread.</para>
/// </remarks>
public sealed class FileLease : IDisposable
{
    private const int Pending = 0, Active = 1, Ending = 2, Released = 3;

    private readonly Lock _gate = new();
    private readonly CancellationTokenSource _broken = new();
    private readonly List<Dependent> _dependents = [];
    private readonly ManualResetEventSlim _ended = new(false);
    private readonly int _fd;
    private int _state = Pending;            // Pending until the kernel granted it; IsActive only while Active
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
    }

    /// <summary>Test hook: every break's managed teardown starts this much later (as after a long pause or a stuck thread).</summary>
    internal static TimeSpan InjectedBreakDelay { get; set; }

    private static long s_breakTimeTicks = -1;
    private int _breakQueued;

    /// <summary>
    /// /proc/sys/fs/lease-break-time as last read (at the first lease, then by the watcher every
    /// <see cref="LeaseSignals.RescanInterval"/>): the kernel's deadline for giving a broken lease back.
    /// </summary>
    internal static TimeSpan BreakTime
    {
        get
        {
            long ticks = Interlocked.Read(ref s_breakTimeTicks);
            if (ticks < 0)
                ticks = RefreshLeaseBreakTime().Ticks;
            return TimeSpan.FromTicks(ticks);
        }
    }

    /// <summary>Re-reads lease-break-time (the kernel applies the value current when a break starts).</summary>
    internal static TimeSpan RefreshLeaseBreakTime()
    {
        TimeSpan t = LeaseBreakTime;
        Interlocked.Exchange(ref s_breakTimeTicks, t.Ticks);
        return t;
    }

    /// <summary>True the first time only: the break is queued for a worker once.</summary>
    internal bool TryMarkBreakQueued() => Interlocked.Exchange(ref _breakQueued, 1) == 0;

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

    /// <summary>
    /// True from the moment the kernel granted the lease until a break or release begins; while it is true the kernel
    /// holds the lease (/proc/locks lists it, as ACTIVE or, while a break is being handled, BREAKING).
    /// </summary>
    public bool IsActive => Volatile.Read(ref _state) == Active;

    /// <summary>True when the kernel broke the lease (as opposed to a voluntary release).</summary>
    public bool WasBroken => _broken.IsCancellationRequested || Interlocked.Read(ref _signalTimestamp) != 0;

    /// <summary>Cancelled after a break has been handled (registrations torn down, lease released).</summary>
    public CancellationToken Broken => _broken.Token;

    /// <summary>
    /// Raised (on the thread pool) after a break has been handled. Subscribe before the break could happen; after it,
    /// <see cref="Broken"/> tells as well.
    /// </summary>
    public event EventHandler<LeaseBreakEventArgs>? BreakRequested;

    /// <summary>
    /// Stopwatch timestamp of the kernel's grant (right after F_SETDELEG/F_SETLEASE succeeded: after the file's previous
    /// lease was given back, which an acquisition waits for).
    /// </summary>
    public long AcquiredTimestamp { get; private set; }

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
    /// Adds something that must be torn down before the lease is given back (a memory region over the file): when the
    /// lease ends, every dependent is first revoked (fast: no new use), then deregistered (waited for, bounded by the
    /// kernel's deadline), and only then is the lease released. Dispose the returned object to remove it.
    /// </summary>
    /// <exception cref="InvalidOperationException">The lease is not active.</exception>
    internal IDisposable AddDependent(ILeaseDependent dependent)
    {
        lock (_gate)
        {
            if (_state != Active)
                throw new InvalidOperationException("the lease has already been broken or released");
            var d = new Dependent(this, dependent);
            _dependents.Add(d);
            return d;
        }
    }

    /// <summary>
    /// [<paramref name="offset"/>, +<paramref name="length"/>) of the leased file, for
    /// <c>pd.Register(lease.Range(offset, length), access)</c> (<see cref="LeasedRegistration"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Empty, or outside the file's mapping.</exception>
    public LeasedFileRange Range(ulong offset, ulong length) => new(this, offset, length);

    /// <summary>
    /// Releases the lease: deregisters the regions over the file (confirmed by the kernel), then F_UNLCK. Idempotent;
    /// safe from any thread; returns once the kernel has the lease back (also when another thread is giving it back).
    /// </summary>
    public void Release() => End(breakSignal: 0, signalCode: 0, pendingType: -1, observed: 0);

    /// <summary>Same as <see cref="Release"/>.</summary>
    public void Dispose() => Release();

    /// <summary>Takes a lease on <paramref name="file"/>; see the class remarks for which kind.</summary>
    /// <exception cref="LeaseUnavailableException">The kernel refused (EAGAIN: conflicting opens, named in the message),
    /// or the file is now shorter than its mapping (truncated between the open and the lease).</exception>
    /// <exception cref="InvalidOperationException">The file already has an active lease.</exception>
    /// <exception cref="ObjectDisposedException">The file was disposed.</exception>
    public static FileLease Acquire(DaxFile file, LeaseOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        options ??= new LeaseOptions();
        int signal = LeaseSignals.EnsureStarted();
        LeaseSignals.WaitWarm();   // the break path compiled before any lease can break
        lock (file.AcquisitionGate)
            return Acquire(file, options, signal);
    }

    private static FileLease Acquire(DaxFile file, LeaseOptions options, int signal)
    {
        var type = file.Access == DaxFileAccess.Read ? LeaseType.Read : LeaseType.Write;
        int lockType = type == LeaseType.Read ? LibC.F_RDLCK : LibC.F_WRLCK;

        string? whyNot = null;
        if (options.PreferDelegation)
        {
            var delegation = new FileLease(file, file.FileDescriptor, LeaseMechanism.Delegation, type, null);
            if (delegation.TryTake(signal, lockType, out int errno))
                return delegation.Activated();
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
        var classic = new FileLease(file, file.FileDescriptor, LeaseMechanism.Lease, type, whyNot);
        if (classic.TryTake(signal, lockType, out int e))
            return classic.Activated();
        throw Unavailable(file, type, "F_SETLEASE", e);
    }

    /// <summary>
    /// Attaches to the file, registers for break signals and asks the kernel. Every step is undone when a later one
    /// fails, so a refused lease leaves the file, the signal registry and the kernel as they were.
    /// </summary>
    private bool TryTake(int signal, int lockType, out int errno)
    {
        errno = 0;
        File.Attach(this, BreakTime + TimeSpan.FromSeconds(1));
        bool registered = false, taken = false;
        try
        {
            // F_SETSIG before the lease, so the very first break is our real-time signal, not SIGIO.
            if (Interop.Fcntl.SetSig(_fd, signal) != 0)
                throw UnixIOException.Last($"F_SETSIG({signal}) on '{File.Path}'");
            if (Interop.Fcntl.SetOwn(_fd, Environment.ProcessId) != 0)
                throw UnixIOException.Last($"F_SETOWN on '{File.Path}'");
            LeaseSignals.Register(this);    // before the lease exists, so a break right after is found
            registered = true;
            int rc = Mechanism == LeaseMechanism.Delegation ? Interop.Fcntl.SetDeleg(_fd, lockType) : Interop.Fcntl.SetLease(_fd, lockType);
            if (rc != 0)
            {
                errno = Marshal.GetLastPInvokeError();
                return false;
            }
            taken = true;
            AcquiredTimestamp = Stopwatch.GetTimestamp();
            // A truncate between the open and the lease leaves part of the mapping past EOF (SIGBUS on access, and a
            // region over it would reach whatever the file grows into next): refuse such a lease.
            long size = File.CurrentSize();
            if (size < File.Length)
                throw new LeaseUnavailableException(
                    $"'{File.Path}' is now {size} bytes, shorter than its {File.Length}-byte mapping: it was truncated after it was opened. " +
                    "Dispose the DaxFile and open the file again", 0, []);
            return true;
        }
        catch
        {
            taken = taken && !TakeBackAfterFailure();
            throw;
        }
        finally
        {
            if (!taken)
            {
                if (registered)
                    LeaseSignals.Unregister(this);
                File.Detach(this);
                Volatile.Write(ref _state, Released);
                _ended.Set();
            }
        }
    }

    private bool TakeBackAfterFailure()
    {
        File.ReleaseKernelLease(Mechanism == LeaseMechanism.Delegation);
        return true;
    }

    /// <summary>Pending → Active, then asks the kernel whether a break began meanwhile (its signal was ignored then).</summary>
    private FileLease Activated()
    {
        File.ArmGuard(Type, Mechanism == LeaseMechanism.Delegation);
        Volatile.Write(ref _state, Active);
        LeaseDiagnostics.RecordAcquired();   // End, which every Active lease reaches, records its end
        LeaseSignals.Verify();
        if (KernelBreakPending(out _))
            LeaseSignals.Dispatch(this, Stopwatch.GetTimestamp(), 0);
        return this;
    }

    /// <summary>
    /// F_GETLEASE/F_GETDELEG: true when the kernel no longer holds the lease as granted (a break is pending, or the
    /// kernel removed it). <paramref name="pendingType"/> is what it reports (-1 when the call failed).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // the break path: optimized at once (LeaseSignals.Warmup)
    internal bool KernelBreakPending(out int pendingType)
    {
        int held = Type == LeaseType.Read ? LibC.F_RDLCK : LibC.F_WRLCK;
        if (Mechanism == LeaseMechanism.Delegation)
            pendingType = Interop.Fcntl.GetDeleg(_fd, out int t) == 0 ? t : -1;
        else
            pendingType = Interop.Fcntl.GetLease(_fd);
        return pendingType != held;
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
    /// Called by the watcher for a signal naming this lease's descriptor (or a rescan). Returns false when
    /// F_GETLEASE/F_GETDELEG shows the lease intact (a spurious signal) or the lease is not active.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // the break path: optimized at once (LeaseSignals.Warmup)
    internal bool ConfirmBreak()
    {
        if (!IsActive)
            return false;
        return KernelBreakPending(out _);
    }

    /// <summary>Handles a confirmed break (on a break worker thread): see <see cref="End"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // the break path: optimized at once (LeaseSignals.Warmup)
    internal void OnBreak(long signalTimestamp, int signalCode)
    {
        long observed = Stopwatch.GetTimestamp();
        KernelBreakPending(out int pending);
        End(signalTimestamp, signalCode, pending, observed);
    }

    /// <summary>Waits until the lease is fully given back, at most until <paramref name="deadline"/> (Stopwatch).</summary>
    internal bool WaitEnded(long deadline)
    {
        long remaining = deadline - Stopwatch.GetTimestamp();
        return remaining > 0 ? _ended.Wait(TimeSpan.FromSeconds((double)remaining / Stopwatch.Frequency)) : _ended.IsSet;
    }

    /// <summary>
    /// Ends the lease, in this order: (1) revoked: <see cref="IsActive"/> false, every dependent revoked (posts naming a
    /// region throw, attached QPs moved to the error state); (2) on a break, the file mapping replaced by an inaccessible
    /// placeholder, so no device access reaches the file's blocks whatever happens next; (3) every dependent deregistered,
    /// each waited for until the kernel confirms it (bounded by half the time left before the kernel's deadline); a
    /// region that cannot be confirmed leaves the placeholder in place and its range reserved (and, if pinned, its
    /// protection domain quarantined); (4) F_UNLCK; (5) the application told, off this thread.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // the break path: optimized at once (LeaseSignals.Warmup)
    private bool End(long breakSignal, int signalCode, int pendingType, long observed)
    {
        Dependent[] dependents = [];
        bool mine = false, wait = false;
        lock (_gate)
        {
            if (_state == Active)
            {
                mine = true;
                _state = Ending;
                _endingThread = Environment.CurrentManagedThreadId;
                // A release that beats the break's signal to it is still a break: report it as one.
                if (breakSignal == 0 && KernelBreakPending(out int pending))
                    (breakSignal, observed, pendingType) = (Stopwatch.GetTimestamp(), Stopwatch.GetTimestamp(), pending);
                if (breakSignal != 0)
                    Interlocked.Exchange(ref _signalTimestamp, breakSignal);
                dependents = [.. _dependents];
                _dependents.Clear();
            }
            else
            {
                // Someone else is ending the lease. Wait until it is really released, so that a Dispose that follows
                // never closes the descriptor under that thread (bounded: the teardown itself is bounded).
                wait = _state == Ending && _endingThread != Environment.CurrentManagedThreadId;
            }
        }
        if (!mine)
        {
            if (wait && !WaitEnded(Stopwatch.GetTimestamp() + (long)((BreakTime.TotalSeconds + 1) * Stopwatch.Frequency)))
                Trace.TraceError($"rdma-lease: {this} was still being given back by another thread after {BreakTime.TotalSeconds + 1} s");
            return false;
        }

        if (breakSignal != 0 && InjectedBreakDelay > TimeSpan.Zero)
            Thread.Sleep(InjectedBreakDelay);   // test hook: managed teardown slower than the kernel's deadline
        long start = breakSignal != 0 ? Math.Min(breakSignal, observed) : Stopwatch.GetTimestamp();
        long kernelDeadline = start + (long)(BreakTime.TotalSeconds * Stopwatch.Frequency);
        var reason = new LeaseRevokedException(this, broken: breakSignal != 0);
        var errors = new List<Exception>();
        // 1. Revoke: fast, nothing waits.
        for (int i = dependents.Length - 1; i >= 0; i--)
            Step(errors, () => dependents[i].Target.Revoke(reason, errors));
        // 2. On a break, cut every device path to the file before anything can be slow.
        if (breakSignal != 0)
            Step(errors, File.RevokeMapping);
        // 3. Deregister, confirmed by the kernel, within half the time left.
        long now = Stopwatch.GetTimestamp();
        long waitUntil = now + Math.Max(0, (kernelDeadline - now) / 2);
        for (int i = dependents.Length - 1; i >= 0; i--)
            Step(errors, () => dependents[i].Target.Deregister(waitUntil, errors));
        // A voluntary release with a region not confirmed gone: cut it off the file too.
        Step(errors, () =>
        {
            if (File.HasUnconfirmedRegions)
                File.RevokeMapping();
        });
        // 4. Release: lets the breaking process continue. The guard first: no handler acts on the file once it is given back.
        bool revokedBySignal = false;
        Step(errors, () => revokedBySignal = File.DisarmGuard());
        if (revokedBySignal && breakSignal == 0)
        {
            // The break's signal came while this release was running: the handler cut the mapping; report the break.
            breakSignal = observed = Stopwatch.GetTimestamp();
            pendingType = LibC.F_UNLCK;
            Interlocked.Exchange(ref _signalTimestamp, breakSignal);
        }
        File.ReleaseKernelLease(Mechanism == LeaseMechanism.Delegation);
        long released = Stopwatch.GetTimestamp();
        Interlocked.Exchange(ref _releasedTimestamp, released);
        if (errors.Count > 0)
        {
            lock (_gate)
                (_teardownErrors ??= []).AddRange(errors);
            foreach (var e in errors)
                Trace.TraceError($"rdma-lease: while giving back {this}: {e.Message}");
        }
        LeaseDiagnostics.RecordEnd(this, breakSignal != 0, start, released, BreakTime);
        LeaseSignals.Unregister(this);
        File.Detach(this);
        Volatile.Write(ref _state, Released);
        _ended.Set();

        // 5. tell the application, off this thread so a slow handler cannot delay other leases' breaks.
        if (breakSignal != 0)
        {
            var args = new LeaseBreakEventArgs(this, _fd, signalCode, pendingType, breakSignal, observed, released, TeardownErrors);
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.Lease.Notify(s), args, preferLocal: false);
        }
        return true;
    }

    /// <summary>Runs one teardown step; an exception is collected and never stops the release (the kernel would take the lease at its deadline anyway).</summary>
    private static void Step(List<Exception> errors, Action step)
    {
        try
        {
            step();
        }
        catch (Exception e)
        {
            errors.Add(e);
        }
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

    private sealed class Dependent(FileLease owner, ILeaseDependent target) : IDisposable
    {
        public ILeaseDependent Target { get; } = target;

        public void Dispose()
        {
            lock (owner._gate)
                owner._dependents.Remove(this);
        }
    }
}

/// <summary>Something that must be torn down before a lease is given back (a memory region over the leased file).</summary>
internal interface ILeaseDependent
{
    /// <summary>Stops all new use at once (posts throw <paramref name="reason"/>); must not wait. Errors go to <paramref name="errors"/>.</summary>
    void Revoke(LeaseRevokedException reason, List<Exception> errors);

    /// <summary>
    /// Destroys the kernel object, waiting until <paramref name="waitUntil"/> (Stopwatch) for the kernel to confirm it.
    /// Returns true when confirmed; otherwise reports why in <paramref name="errors"/>.
    /// </summary>
    bool Deregister(long waitUntil, List<Exception> errors);
}
