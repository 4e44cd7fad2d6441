using System.Diagnostics;
using System.Runtime.InteropServices;
using RdmaLease.Leases;
using RdmaLease.Verbs.Internal;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// An adversarial review of the safety work (issue 9), on host files broken by a real second process. A test that
/// demonstrates a violation fails on the code it was written against; its comment says what it breaks and how. The
/// others are attacks the code withstood, kept for coverage.
/// </summary>
[NonParallelizable]
public unsafe class AdversaryHostTests
{
    private TempDir _dir = null!;

    [SetUp]
    public void SetUp() => _dir = CreateTempDir(Path.GetTempPath());

    [TearDown]
    public void TearDown()
    {
        FileLease.InjectedBreakDelay = TimeSpan.Zero;
        _dir.Dispose();
    }

    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(30);

    private DaxFile NewFile(string name, int size = 64 * 1024) =>
        DaxFile.Open(_dir.File(name), new DaxFileOptions { Size = size, AllowNonDax = true });

    private static TaskCompletionSource<LeaseBreakEventArgs> OnBreak(FileLease lease)
    {
        var broke = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.BreakRequested += (_, e) => broke.TrySetResult(e);
        return broke;
    }

    /// <summary>
    /// Whether a CPU store into [address, +length) would fault: read(2) from /dev/zero into it is the same store done
    /// by the kernel, which returns EFAULT instead of killing the process with SIGSEGV. Returns 0 or the errno.
    /// </summary>
    private static int StoreErrno(nint address, int length)
    {
        int fd = open("/dev/zero", 0);
        Assert.That(fd, Is.GreaterThanOrEqualTo(0));
        try
        {
            nint n = read(fd, (void*)address, (nuint)length);
            return n == length ? 0 : Marshal.GetLastPInvokeError();
        }
        finally
        {
            _ = close(fd);
        }
    }

    private const int EFAULT = 14;

    /// <summary>
    /// ATTACK: an application keeps a span of its file (documented use: <c>file.Span</c>, <c>file.Memory</c>) and writes
    /// through it; another process truncates the file. DaxFile's own remarks promise that late stores through a span
    /// taken earlier "land in scratch memory instead of faulting". The break now puts a PROT_NONE placeholder over the
    /// range (native/lease_signals.c guard_on_signal, DaxFile.RevokeMappingLocked), so the late store is a SIGSEGV: the
    /// whole process dies (an access violation in managed code is not catchable). Measured here with read(2) into the
    /// span, which the kernel refuses with EFAULT exactly where a store would fault.
    /// </summary>
    [Test]
    public void AStoreThroughASpanTakenBeforeABreakDoesNotKillTheProcess()
    {
        using var file = NewFile("span");
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        nint address = (nint)file.BaseAddress;
        Assert.That(StoreErrno(address, 4096), Is.Zero, "the mapping takes stores while leased");
        var p = RunProbe(Generous, "open-rdonly-nonblock", file.Path);
        Assert.That(p.Ok, Is.False);
        Assert.That(broke.Task.Wait(Generous), Is.True, "no break");
        Assert.That(StoreErrno(address, 4096), Is.Zero,
            $"a store through a span taken before the break faults (errno {StoreErrno(address, 4096)}, /proc/self/maps: {KernelView.MappingAt(address)}): " +
            "the application is killed by SIGSEGV, where DaxFile's remarks promise scratch memory");
    }

    /// <summary>
    /// ATTACK: the window between the signal handler's placeholder and the managed teardown. The handler makes the
    /// range PROT_NONE at once, but DaxFile learns of it only at DisarmGuard, at the end of the teardown. Until then
    /// <see cref="DaxFile.IsMapped"/> says true and <see cref="DaxFile.GetSpan"/> (and Flush, whose clwb on a DAX
    /// mapping then faults inside the library) hand out the dead range: the first store kills the process. The window
    /// is the signal-to-teardown latency (milliseconds; a GC pause, a busy break worker or the injected delay used here
    /// make it as long as the kernel's deadline).
    /// </summary>
    [Test]
    public void TheFileSaysUnmappedAsSoonAsTheSignalHandlerRevokedIt()
    {
        using var file = NewFile("window");
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        nint address = (nint)file.RegistrationAddress;   // where regions are registered: PROT_NONE after a break
        FileLease.InjectedBreakDelay = TimeSpan.FromSeconds(3);
        var p = RunProbe(Generous, "open-rdonly-nonblock", file.Path);
        Assert.That(p.Ok, Is.False);
        Assert.That(WaitUntil(() => KernelView.PermissionsAt(address) == "---p"), Is.True, "the signal handler did not revoke the mapping");
        bool mapped = file.IsMapped;
        Exception? spanError = null;
        try
        {
            _ = file.GetSpan(0, 16);
        }
        catch (Exception e)
        {
            spanError = e;
        }
        FileLease.InjectedBreakDelay = TimeSpan.Zero;
        Assert.That(broke.Task.Wait(Generous), Is.True);
        Assert.Multiple(() =>
        {
            Assert.That(mapped, Is.False, "IsMapped said true while the range was PROT_NONE");
            Assert.That(spanError, Is.InstanceOf<InvalidOperationException>(), "GetSpan handed out a PROT_NONE range: a store through it is a SIGSEGV");
        });
    }

    /// <summary>
    /// Takes every break worker with a slow teardown (the injected delay, standing in for anything that keeps a worker:
    /// a GC-suspended or descheduled thread, a deregistration waiting for a post) and returns the leases; the caller's
    /// next break waits in the queue.
    /// </summary>
    private List<(DaxFile File, FileLease Lease)> OccupyEveryBreakWorker(TimeSpan delay)
    {
        var slow = new List<(DaxFile, FileLease)>();
        for (int i = 0; i < LeaseSignals.BreakWorkerCount; i++)
        {
            var f = NewFile($"slow{i}", 4096);
            slow.Add((f, f.AcquireLease()));
        }
        FileLease.InjectedBreakDelay = delay;
        var p = RunProbe(Generous, ["open-each-nonblock", .. slow.Select(s => s.Item1.Path)]);
        Assert.That(p.Ok, Is.True, p.Output);
        // Every worker has entered its slow teardown once each lease says inactive (Ending is set before the delay).
        Assert.That(WaitUntil(() => slow.All(s => !s.Item2.IsActive)), Is.True, "the slow breaks did not start");
        FileLease.InjectedBreakDelay = TimeSpan.Zero;
        return slow;
    }

    /// <summary>
    /// ATTACK: LeaseSignals promises "a slow lease occupies one worker and never delays the others' breaks". The pool
    /// is fixed (<see cref="LeaseSignals.BreakWorkerCount"/>, max(4, cores)): that many slow teardowns and an unrelated
    /// lease's break waits in the queue for as long as they take. Past lease-break-time the kernel removes that lease
    /// while <see cref="FileLease.IsActive"/> still says true and its regions are registered (only an ODP region over an
    /// armed guard is cut off; a pinned region stays reachable).
    /// </summary>
    [Test]
    public void SlowTeardownsOnEveryWorkerDoNotDelayAnotherLeasesBreak()
    {
        var delay = TimeSpan.FromSeconds(4);
        using var victimFile = NewFile("victim");
        var victim = victimFile.AcquireLease();
        var broke = OnBreak(victim);
        var slow = OccupyEveryBreakWorker(delay);
        try
        {
            var p = RunProbe(Generous, "open-rdonly-nonblock", victimFile.Path);
            Assert.That(p.Ok, Is.False);
            Assert.That(broke.Task.Wait(Generous), Is.True, "the victim's break was never handled");
            Assert.That(victim.BreakToRelease, Is.LessThan(TimeSpan.FromSeconds(1)),
                $"an unrelated lease's break waited behind {slow.Count} slow teardowns");
        }
        finally
        {
            foreach (var (f, _) in slow)
                f.Dispose();
        }
    }

    /// <summary>
    /// ATTACK: a voluntary <see cref="FileLease.Release"/> that wins the race against a break already under way (the
    /// signal handler has revoked the mapping; the break waits for a worker). The release tears down as a release:
    /// <see cref="FileLease.WasBroken"/> stays false, <see cref="FileLease.Broken"/> is never cancelled and
    /// BreakRequested never raised (the queued break finds the lease released and drops it), yet the mapping is gone
    /// and DaxFile says "revoked because its lease was broken". An application waiting on Broken to reopen never learns.
    /// </summary>
    [Test]
    public void AReleaseThatWinsTheRaceAgainstABreakStillReportsTheBreak()
    {
        using var file = NewFile("race");
        var lease = file.AcquireLease();
        nint address = (nint)file.RegistrationAddress;   // where regions are registered: PROT_NONE after a break
        var slow = OccupyEveryBreakWorker(TimeSpan.FromSeconds(3));
        try
        {
            var p = RunProbe(Generous, "open-rdonly-nonblock", file.Path);
            Assert.That(p.Ok, Is.False);
            Assert.That(WaitUntil(() => KernelView.PermissionsAt(address) == "---p"), Is.True, "the signal handler did not revoke the mapping");
            lease.Release();
            Assert.That(file.IsMapped, Is.False, "the break revoked the mapping");
            Thread.Sleep(TimeSpan.FromSeconds(4));   // the workers are free again and have seen the queued break
            Assert.Multiple(() =>
            {
                Assert.That(lease.WasBroken, Is.True, "the kernel broke the lease (and the mapping is revoked), but the lease says released");
                Assert.That(lease.Broken.IsCancellationRequested, Is.True, "Broken was never cancelled");
            });
        }
        finally
        {
            foreach (var (f, _) in slow)
                f.Dispose();
        }
    }

    /// <summary>
    /// ATTACK: native/lease_signals.c chains a handler that another component installed after ours, behind ours. A
    /// component that itself chains to the handler it found (as it should, and as .NET's own System.Native does for
    /// PosixSignalRegistration) then forms a cycle: ours → theirs → ours → … until the stack overflows and the process
    /// dies on the next SIGIO (or, for the lease signal, the next break). Run in a child process (this test host would
    /// die); the child registers a .NET PosixSignal handler for SIGIO after the first lease, lets the next acquisition
    /// "restore" ours, and raises SIGIO.
    /// </summary>
    [Test]
    public void AHandlerThatChainsBackToOursDoesNotRecurseUntilTheStackOverflows()
    {
        var (exitCode, output) = RunChild(nameof(ChildProcess_ChainedHandlerCycle), "chain");
        Assert.That(output, Does.Contain("child: raising SIGIO"), Tail(output));
        Assert.Multiple(() =>
        {
            Assert.That(output, Does.Not.Contain("Stack overflow"), $"ours and a chaining handler called each other until the stack overflowed.\n{Tail(output)}");
            Assert.That(exitCode, Is.Zero, $"the child died when SIGIO was raised.\n{Tail(output)}");
        });
    }

    /// <summary>The child of <see cref="AHandlerThatChainsBackToOursDoesNotRecurseUntilTheStackOverflows"/> (does nothing otherwise).</summary>
    [Test]
    public void ChildProcess_ChainedHandlerCycle()
    {
        if (Environment.GetEnvironmentVariable(ChildVariable) != "chain")
            return;   // only meaningful as the child of the test above
        using var first = NewFile("first", 4096);
        using (first.AcquireLease())
        {
            // our handlers for the lease signal and SIGIO are installed now
        }
        using var registration = System.Runtime.InteropServices.PosixSignalRegistration.Create((PosixSignal)SIGIO, _ => { });
        using var second = NewFile("second", 4096);
        using var lease = second.AcquireLease();   // verifies the handlers: ours is put back, chaining System.Native's
        long before = LeaseDiagnostics.SigioRescans;
        Console.WriteLine("child: raising SIGIO");
        Console.Out.Flush();
        Assert.That(kill(Environment.ProcessId, SIGIO), Is.Zero);
        Assert.That(WaitUntil(() => LeaseDiagnostics.SigioRescans > before), Is.True, "SIGIO was not seen");
        Thread.Sleep(1000);   // the thread that took the signal is still in the handlers' cycle, if there is one
        Console.WriteLine("child: survived SIGIO");
        Console.Out.Flush();
    }

    private const string ChildVariable = "RDMA_LEASE_ADVERSARY_CHILD";

    private static (int ExitCode, string Output) RunChild(string test, string mode)
    {
        string host = Environment.ProcessPath!;
        string assembly = typeof(AdversaryHostTests).Assembly.Location;
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            psi.ArgumentList.Add("exec");
            psi.ArgumentList.Add(assembly);
        }
        foreach (string a in new[] { "--filter", $"FullyQualifiedName~{nameof(AdversaryHostTests)}.{test}", "--no-ansi", "--progress", "off",
            "--output", "Detailed", "--results-directory", Path.Combine(Path.GetTempPath(), "rdma-lease-adversary-child") })
            psi.ArgumentList.Add(a);
        psi.Environment[ChildVariable] = mode;
        using var child = Process.Start(psi)!;
        var stdout = child.StandardOutput.ReadToEndAsync();
        var stderr = child.StandardError.ReadToEndAsync();
        Assert.That(child.WaitForExit(TimeSpan.FromSeconds(120)), Is.True, "the child hangs");
        return (child.ExitCode, stdout.Result + stderr.Result);
    }

    private static string Tail(string s) => s.Length > 3000 ? s[^3000..] : s;

    /// <summary>Withstood: out-of-range, negative and overflowing ranges are refused with ArgumentOutOfRangeException.</summary>
    [Test]
    public void HugeNegativeAndOverflowingRangesAreRefused()
    {
        using var file = NewFile("ranges", 8192);
        using var lease = file.AcquireLease();
        Assert.Multiple(() =>
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(ulong.MaxValue, 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(0, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(0, unchecked((ulong)-4096)));
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(long.MaxValue, 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(1, ulong.MaxValue));
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(ulong.MaxValue, ulong.MaxValue));
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(8191, 2));
            Assert.That(lease.Range(8191, 1).Length, Is.EqualTo(1), "the last byte is a valid range");
            Assert.Throws<ArgumentOutOfRangeException>(() => file.GetSpan(long.MaxValue, 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => file.GetSpan(8192, 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => file.Flush(1, long.MaxValue));
            Assert.Throws<ArgumentOutOfRangeException>(() => file.Flush(long.MaxValue, 0));
        });
    }

    /// <summary>Withstood: a lease object used after its file was disposed says inactive, releases idempotently, refuses new leases.</summary>
    [Test]
    public void ALeaseUsedAfterItsFileIsDisposedIsInertAndSaysSo()
    {
        var file = NewFile("after");
        var lease = file.AcquireLease();
        file.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(lease.IsActive, Is.False);
            Assert.That(lease.ReleasedTimestamp, Is.Not.Zero);
            Assert.DoesNotThrow(lease.Release);
            Assert.DoesNotThrow(lease.Dispose);
            Assert.Throws<ObjectDisposedException>(() => file.AcquireLease());
            Assert.Throws<ObjectDisposedException>(() => _ = file.FileDescriptor);
            Assert.That(file.Lease, Is.Null);
            Assert.That(KernelView.LocksOn(file), Is.Empty);
            Assert.That(KernelView.DescriptorsOf(file.Path), Is.Empty);
            Assert.That(KernelView.MappingsOf(file.Path), Is.Empty);
        });
    }

    /// <summary>
    /// Withstood: two DaxFiles on one path in one process. Opening the second breaks the first one's write lease (our
    /// own watcher gives it back, so the open does not wait out the deadline); the second cannot lease while the first
    /// is open, and the refusal names this process; once the first is disposed it can.
    /// </summary>
    [Test]
    public void TwoDaxFilesOnOnePathInOneProcess()
    {
        using var a = NewFile("same");
        var leaseA = a.AcquireLease();
        var broke = OnBreak(leaseA);
        var sw = Stopwatch.StartNew();
        using var b = DaxFile.Open(a.Path, new DaxFileOptions { AllowNonDax = true });
        Assert.That(sw.Elapsed, Is.LessThan(FileLease.LeaseBreakTime / 2), "our own open waited on our own lease");
        Assert.That(broke.Task.Wait(Generous), Is.True);
        Assert.That(leaseA.IsActive, Is.False);
        var e = Assert.Throws<LeaseUnavailableException>(() => b.AcquireLease());
        Assert.That(e!.Holders.Select(h => h.Pid), Does.Contain(Environment.ProcessId), e.Message);
        a.Dispose();
        using var leaseB = b.AcquireLease();
        Assert.That(KernelView.LocksOn(b), Has.Count.EqualTo(1));
    }

    /// <summary>Withstood: a deadline already past returns the state at once, also while a reference is held.</summary>
    [Test]
    public void WaitForDestroyWithADeadlineInThePastReturnsAtOnce()
    {
        var h = new NativeHandle(0x7000, &FakeDestroy, "fake");
        bool added = false;
        h.DangerousAddRef(ref added);
        h.Dispose();
        var sw = Stopwatch.StartNew();
        Assert.That(h.WaitForDestroy(long.MinValue), Is.EqualTo(DestroyState.Pending));
        Assert.That(h.WaitForDestroy(0), Is.EqualTo(DestroyState.Pending));
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(1)));
        h.DangerousRelease();
        Assert.That(h.WaitForDestroy(0), Is.EqualTo(DestroyState.Destroyed));
    }

    private static int FakeDestroy(nint h) => 0;

    private static bool WaitUntil(Func<bool> condition)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > Generous)
                return false;
            Thread.Sleep(2);
        }
        return true;
    }

    private const int SIGIO = 29;

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    [DllImport("libc", SetLastError = true)]
    private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern nint read(int fd, void* buffer, nuint count);

    [DllImport("libc")]
    private static extern int close(int fd);
}
