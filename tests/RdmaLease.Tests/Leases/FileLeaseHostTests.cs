using LeaseInterop = RdmaLease.Leases.Interop;
using System.Diagnostics;
using RdmaLease.Leases;
using Tmds.Linux;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>Leases on ordinary host files under /tmp, broken by a real second process.</summary>
public class FileLeaseHostTests
{
    private TempDir _dir = null!;

    [SetUp]
    public void SetUp() => _dir = CreateTempDir(Path.GetTempPath());

    [TearDown]
    public void TearDown() => _dir.Dispose();

    private DaxFile NewFile(string name, int size = 4096) =>
        DaxFile.Open(_dir.File(name), new DaxFileOptions { Size = size, AllowNonDax = true });

    [Test]
    public void TruncateByAnotherProcessBreaksTheLeaseInOrder() =>
        BreakScenarios.TruncateBreaksWriteLease(Path.GetTempPath(), dax: false, ExpectedMechanism);

    [Test]
    public void ReadLeaseIgnoresReadersAndBreaksOnWriter() =>
        BreakScenarios.ReadLeaseIgnoresReadersAndBreaksOnWriter(Path.GetTempPath(), dax: false, ExpectedMechanism);

    [Test]
    public void MechanismFollowsTheKernel()
    {
        using var file = NewFile("mechanism");
        using var lease = file.AcquireLease();
        Assert.That(lease.Mechanism, Is.EqualTo(ExpectedMechanism));
        if (KernelHasDelegations)
            Assert.That(lease.DelegationUnavailableReason, Is.Null);
        else
            Assert.That(lease.DelegationUnavailableReason, Does.Contain("EINVAL"));
        Assert.That(LeaseInterop.Fcntl.GetLease(file.FileDescriptor),
            Is.EqualTo(lease.Mechanism == LeaseMechanism.Lease ? LibC.F_WRLCK : LibC.F_UNLCK), "F_GETLEASE sees only FL_LEASE leases");
        Assert.That(LeaseSignals.IsInstalled, Is.True);
        Assert.That(LeaseSignals.SignalNumber, Is.EqualTo(LibC.SIGRTMIN + LeaseSignals.DefaultSignalOffset));
        Assert.That(LeaseSignals.ChainedForeignHandler, Is.False);
    }

    [Test]
    public void ClassicLeaseOnRequestAndNoFallbackWhenForbidden()
    {
        using (var file = NewFile("classic"))
        using (var lease = file.AcquireLease(new LeaseOptions { PreferDelegation = false }))
        {
            Assert.That(lease.Mechanism, Is.EqualTo(LeaseMechanism.Lease));
            Assert.That(lease.DelegationUnavailableReason, Does.Contain("PreferDelegation"));
            Assert.That(LeaseInterop.Fcntl.GetLease(file.FileDescriptor), Is.EqualTo(LibC.F_WRLCK));
        }
        using var strict = NewFile("strict");
        if (KernelHasDelegations)
        {
            using var lease = strict.AcquireLease(new LeaseOptions { AllowLeaseFallback = false });
            Assert.That(lease.Mechanism, Is.EqualTo(LeaseMechanism.Delegation));
        }
        else
        {
            var e = Assert.Throws<LeaseUnavailableException>(() => strict.AcquireLease(new LeaseOptions { AllowLeaseFallback = false }));
            Assert.That(e!.Errno, Is.EqualTo(LibC.EINVAL));
            Assert.That(e.Message, Does.Contain("AllowLeaseFallback"));
            Assert.That(strict.Lease, Is.Null);
        }
    }

    [Test]
    public void AnotherOpenerIsNamedWhenTheLeaseIsRefused()
    {
        using var file = NewFile("held");
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec 3<\"$0\"; echo ready; exec sleep 60");
        psi.ArgumentList.Add(file.Path);
        using var holder = Process.Start(psi)!;
        try
        {
            Assert.That(holder.StandardOutput.ReadLine(), Is.EqualTo("ready"));
            var e = Assert.Throws<LeaseUnavailableException>(() => file.AcquireLease());
            Assert.Multiple(() =>
            {
                Assert.That(e!.Errno, Is.EqualTo(EAGAIN));
                Assert.That(e.Holders.Select(h => h.Pid), Does.Contain(holder.Id));
                Assert.That(e.Holders.Single(h => h.Pid == holder.Id).What, Is.EqualTo("fd 3 (O_RDONLY)"));
                Assert.That(e.Message, Does.Contain($"pid {holder.Id} (sleep) fd 3 (O_RDONLY)"));
                Assert.That(e.Message, Does.Contain("only open"));
                Assert.That(file.Lease, Is.Null);
            });
        }
        finally
        {
            holder.Kill();
            holder.WaitForExit();
        }
        using var lease = file.AcquireLease();   // once the other opener is gone
        Assert.That(lease.IsActive, Is.True);
    }

    [Test]
    public void OurOwnSecondOpenIsNamedToo()
    {
        using var file = NewFile("own");
        using var second = new FileStream(file.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var e = Assert.Throws<LeaseUnavailableException>(() => file.AcquireLease());
        Assert.That(e!.Holders.Any(h => h.Pid == Environment.ProcessId && h.What.EndsWith("(O_RDONLY)", StringComparison.Ordinal)), Is.True,
            string.Join("; ", e.Holders));
    }

    [Test]
    public void ASecondLeaseOnTheSameFileIsRefused()
    {
        using var file = NewFile("twice");
        using var lease = file.AcquireLease();
        Assert.Throws<InvalidOperationException>(() => file.AcquireLease());
        lease.Release();
        using var again = file.AcquireLease();
        Assert.That(again.IsActive, Is.True);
    }

    [Test]
    public void ReleaseIsIdempotentRunsTeardownOnceAndUnlocks()
    {
        using var file = NewFile("release");
        var lease = file.AcquireLease();
        int runs = 0;
        lease.RegisterTeardown(_ => Interlocked.Increment(ref runs));
        var threads = Enumerable.Range(0, 8).Select(_ => new Thread(lease.Release)).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        lease.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(runs, Is.EqualTo(1));
            Assert.That(lease.IsActive, Is.False);
            Assert.That(lease.WasBroken, Is.False);
            Assert.That(lease.Broken.IsCancellationRequested, Is.False, "a voluntary release is not a break");
            Assert.That(lease.BreakToRelease, Is.Null);
            Assert.That(lease.ReleasedTimestamp, Is.Not.Zero);
            Assert.That(file.IsMapped, Is.True, "a voluntary release keeps the mapping");
            Assert.That(LeaseInterop.Fcntl.GetLease(file.FileDescriptor), Is.EqualTo(LibC.F_UNLCK));
        });
        Assert.Throws<InvalidOperationException>(() => lease.RegisterTeardown(_ => { }));
        var reader = RunProbe(TimeSpan.FromSeconds(30), "open-rdwr-nonblock", file.Path);
        Assert.That(reader.Ok, Is.True, "nothing is leased any more: " + reader.Output);
    }

    [Test]
    public void DisposingTheFileReleasesItsLease()
    {
        var file = NewFile("dispose");
        var lease = file.AcquireLease();
        bool ran = false;
        lease.RegisterTeardown(_ => ran = file.IsMapped);
        file.Dispose();
        Assert.That(ran, Is.True, "teardown runs before the mapping goes");
        Assert.That(lease.IsActive, Is.False);
    }

    [Test]
    public void DisposeWaitsForAReleaseInProgressOnAnotherThread()
    {
        var file = NewFile("race");
        var lease = file.AcquireLease();
        using var inTeardown = new ManualResetEventSlim();
        lease.RegisterTeardown(_ =>
        {
            inTeardown.Set();
            Thread.Sleep(300);
        });
        var releaser = new Thread(lease.Release);
        releaser.Start();
        Assert.That(inTeardown.Wait(TimeSpan.FromSeconds(30)), Is.True);
        file.Dispose();   // must not close the descriptor while the other thread is still releasing
        Assert.That(lease.ReleasedTimestamp, Is.Not.Zero, "Dispose returned before the release finished");
        releaser.Join();
    }

    [Test]
    public void ATeardownCallbackMayDisposeTheFile()
    {
        var file = NewFile("reentrant");
        var lease = file.AcquireLease();
        lease.RegisterTeardown(_ => file.Dispose());
        var done = Task.Run(lease.Release);
        Assert.That(done.Wait(TimeSpan.FromSeconds(30)), Is.True, "re-entrant release deadlocked");
        Assert.That(lease.IsActive, Is.False);
        Assert.That(file.IsMapped, Is.False);
    }

    [Test]
    public void TeardownErrorsAreCollectedAndDoNotStopTheRelease()
    {
        using var file = NewFile("errors");
        var lease = file.AcquireLease();
        bool secondRan = false;
        lease.RegisterTeardown(_ => secondRan = true);
        lease.RegisterTeardown(_ => throw new InvalidOperationException("boom"));
        lease.Release();
        Assert.That(secondRan, Is.True);
        Assert.That(lease.TeardownErrors.Single().Message, Is.EqualTo("boom"));
        Assert.That(LeaseInterop.Fcntl.GetLease(file.FileDescriptor), Is.EqualTo(LibC.F_UNLCK));
    }

    [Test]
    public void ASignalForAnIntactLeaseIsIgnored()
    {
        using var file = NewFile("spurious");
        using var lease = file.AcquireLease();
        bool broken = false;
        lease.BreakRequested += (_, _) => broken = true;
        long before = LeaseDiagnostics.SpuriousSignals;
        // sigqueue's value lands where si_fd is read: the handler sees our descriptor, the kernel has no break pending.
        SigQueueSelf(LeaseSignals.SignalNumber, lease.FileDescriptor);
        var sw = Stopwatch.StartNew();
        while (LeaseDiagnostics.SpuriousSignals == before && sw.Elapsed < TimeSpan.FromSeconds(20))
            Thread.Sleep(10);
        Assert.Multiple(() =>
        {
            Assert.That(LeaseDiagnostics.SpuriousSignals, Is.GreaterThan(before));
            Assert.That(lease.IsActive, Is.True);
            Assert.That(broken, Is.False);
            Assert.That(file.IsMapped, Is.True);
        });
    }

    [Test]
    public void SignalChoiceIsValidated()
    {
        using var file = NewFile("signal");
        using var lease = file.AcquireLease();   // installs the handler
        Assert.Throws<ArgumentOutOfRangeException>(() => LeaseSignals.UseSignal(LibC.SIGRTMIN));
        Assert.Throws<ArgumentOutOfRangeException>(() => LeaseSignals.UseSignal(LibC.SIGRTMAX + 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => LeaseSignals.UseSignal(10));
        Assert.Throws<InvalidOperationException>(() => LeaseSignals.UseSignal(LeaseSignals.SignalNumber + 1));
        Assert.DoesNotThrow(() => LeaseSignals.UseSignal(LeaseSignals.SignalNumber));
    }

    [Test]
    public void BreakLatencyPhasesAreConsistent()
    {
        string table = BreakLatency.Measure(Path.GetTempPath(), ExpectedMechanism, iterations: 5);
        TestContext.Out.WriteLine(BreakLatency.Header + table);
        Assert.That(table.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(5));
    }

    [Test]
    public void LeaseBreakTimeIsTheKernelSetting() =>
        Assert.That(FileLease.LeaseBreakTime,
            Is.EqualTo(TimeSpan.FromSeconds(int.Parse(File.ReadAllText("/proc/sys/fs/lease-break-time"), System.Globalization.CultureInfo.InvariantCulture))));

    [Test]
    public void HandlerTimestampsShareTheStopwatchClock()
    {
        long sw = Stopwatch.GetTimestamp();
        long native = LeaseSignals.MonotonicNsToStopwatch(LeaseInterop.LeaseSignals.GetMonotonicNs());
        long after = Stopwatch.GetTimestamp();
        Assert.That(native, Is.InRange(sw, after));
    }

    [Test]
    public void ProcLocksLinesAreParsed()
    {
        Assert.Multiple(() =>
        {
            Assert.That(LeaseHolders.ParseLocksLine("1: LEASE  ACTIVE    READ  1234 fd:01:5678 0 EOF", 0xfd, 1, 5678),
                Is.EqualTo((1234, "LEASE ACTIVE READ")));
            Assert.That(LeaseHolders.ParseLocksLine("2: DELEG  ACTIVE    WRITE 77 103:00:12 0 EOF", 0x103, 0, 12),
                Is.EqualTo((77, "DELEG ACTIVE WRITE")));
            Assert.That(LeaseHolders.ParseLocksLine("3: -> POSIX  ADVISORY  WRITE 9 08:02:44 0 EOF", 8, 2, 44),
                Is.EqualTo((9, "waiting for POSIX ADVISORY WRITE")));
            Assert.That(LeaseHolders.ParseLocksLine("1: LEASE  ACTIVE    READ  1234 fd:01:5678 0 EOF", 0xfd, 1, 5679), Is.Null);
            Assert.That(LeaseHolders.ParseLocksLine("garbage", 0, 0, 0), Is.Null);
        });
    }
}
