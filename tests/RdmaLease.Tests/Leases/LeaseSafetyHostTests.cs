using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Loader;
using RdmaLease.Leases;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// The lease state machine and break delivery under misuse, races and injected failures, on host files broken by a
/// real second process. Every claim is checked against /proc/locks, /proc/self/fd and /proc/self/maps.
/// </summary>
[NonParallelizable]
public class LeaseSafetyHostTests
{
    private TempDir _dir = null!;

    [SetUp]
    public void SetUp() => _dir = CreateTempDir(Path.GetTempPath());

    [TearDown]
    public void TearDown() => _dir.Dispose();

    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(30);

    private DaxFile NewFile(string name, int size = 64 * 1024) =>
        DaxFile.Open(_dir.File(name), new DaxFileOptions { Size = size, AllowNonDax = true });

    private static void AssertKernelAgrees(DaxFile file, FileLease? lease, string when)
    {
        var locks = KernelView.LocksOn(file);
        if (lease is { IsActive: true })
            Assert.That(locks, Has.Count.EqualTo(1), $"{when}: the lease object says active, so the kernel must hold it");
        else if (file.Lease is null && (lease is null || lease.ReleasedTimestamp != 0))
            Assert.That(locks, Is.Empty, $"{when}: nothing is held, so /proc/locks must list nothing on the file");
    }

    [Test]
    public void ARefusedLeaseLeavesNothingBehind()
    {
        using var file = NewFile("refused");
        using (var other = new FileStream(file.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            var e = Assert.Throws<LeaseUnavailableException>(() => file.AcquireLease());
            Assert.That(e!.Errno, Is.EqualTo(EAGAIN));
            Assert.That(file.Lease, Is.Null);
            Assert.That(KernelView.LocksOn(file), Is.Empty);
        }
        // Nothing of the refused attempt is left: not in the file, not in the signal registry, not in the kernel.
        using var lease = file.AcquireLease();
        Assert.That(lease.IsActive, Is.True);
        AssertKernelAgrees(file, lease, "after the retry");
    }

    [Test]
    public void AFileTruncatedBetweenOpenAndLeaseIsRefused()
    {
        using var file = NewFile("shrunk");
        using (var fs = new FileStream(file.Path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            fs.SetLength(4096);
        var e = Assert.Throws<LeaseUnavailableException>(() => file.AcquireLease());
        Assert.That(e!.Message, Does.Contain("shorter than its 65536-byte mapping"));
        Assert.Multiple(() =>
        {
            Assert.That(file.Lease, Is.Null);
            Assert.That(KernelView.LocksOn(file), Is.Empty, "the lease taken before the size check was given back");
        });
    }

    [Test]
    public void DisposeRacingAcquireNeverLeavesALease()
    {
        for (int round = 0; round < 100; round++)
        {
            var file = NewFile($"race-{round}");
            var leases = new List<FileLease>();
            using var go = new ManualResetEventSlim();
            var acquirer = Task.Run(() =>
            {
                go.Wait();
                for (int i = 0; i < 20; i++)
                {
                    try
                    {
                        var l = file.AcquireLease();
                        lock (leases)
                            leases.Add(l);
                        if (i % 2 == 0)
                            l.Release();
                    }
                    catch (Exception e) when (e is ObjectDisposedException or InvalidOperationException)
                    {
                    }
                }
            });
            go.Set();
            Thread.Sleep(round % 5);
            file.Dispose();
            Assert.That(acquirer.Wait(Generous), Is.True);
            lock (leases)
            {
                Assert.That(leases.Where(l => l.IsActive), Is.Empty, $"round {round}: a lease says active after its file was disposed");
                Assert.That(leases.Where(l => l.ReleasedTimestamp == 0), Is.Empty, $"round {round}: a lease was never given back");
            }
            Assert.That(KernelView.DescriptorsOf(file.Path), Is.Empty, $"round {round}: descriptor left open");
            Assert.That(KernelView.MappingsOf(file.Path), Is.Empty, $"round {round}: mapping left");
            Assert.That(KernelView.OwnLeases().Where(l => l.Contains($":{file.Inode} ", StringComparison.Ordinal)), Is.Empty, $"round {round}: kernel lease left");
        }
    }

    [Test]
    public void AcquiringWhileTheOldLeaseIsBeingGivenBackWaitsForIt()
    {
        using var file = NewFile("handover");
        var old = file.AcquireLease();
        using var inTeardown = new ManualResetEventSlim();
        old.RegisterTeardown(_ =>
        {
            inTeardown.Set();
            Thread.Sleep(300);
        });
        var releaser = Task.Run(old.Release);
        Assert.That(inTeardown.Wait(Generous), Is.True);
        Assert.That(old.IsActive, Is.False);
        using var fresh = file.AcquireLease();
        Assert.Multiple(() =>
        {
            Assert.That(old.ReleasedTimestamp, Is.Not.Zero, "the new lease was taken before the old one was given back");
            Assert.That(old.ReleasedTimestamp, Is.LessThanOrEqualTo(fresh.AcquiredTimestamp));
            Assert.That(fresh.IsActive, Is.True);
            Assert.That(file.Lease, Is.SameAs(fresh));
            Assert.That(KernelView.LocksOn(file), Has.Count.EqualTo(1));
        });
        Assert.That(releaser.Wait(Generous), Is.True);
    }

    [Test]
    public void IsActiveAgreesWithTheKernelThroughBreaksAndReleases()
    {
        var file = NewFile("agree");
        for (int i = 0; i < 60; i++)
        {
            if (!file.IsMapped)
            {
                file.Dispose();   // a break revoked the mapping: open the file again, as an application must
                file = DaxFile.Open(file.Path, new DaxFileOptions { AllowNonDax = true });
            }
            var lease = file.AcquireLease();
            AssertKernelAgrees(file, lease, $"iteration {i} after acquire");
            if (i % 3 == 0)
            {
                lease.Release();
            }
            else
            {
                var broke = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                lease.BreakRequested += (_, _) => broke.TrySetResult();
                var p = RunProbe(Generous, "open-rdonly-nonblock", file.Path);   // starts the break, EAGAIN at once
                Assert.That(p.Ok, Is.False, "the open must be refused while the lease is held");
                Assert.That(broke.Task.Wait(Generous), Is.True, $"iteration {i}: no break");
            }
            Assert.That(lease.IsActive, Is.False);
            AssertKernelAgrees(file, lease, $"iteration {i} after the end");
        }
        file.Dispose();
    }

    [Test]
    public void SigioNeitherKillsTheProcessNorLosesALease()
    {
        using var file = NewFile("sigio");
        using var lease = file.AcquireLease();
        long before = LeaseDiagnostics.SigioRescans;
        Assert.That(kill(Environment.ProcessId, SIGIO), Is.Zero);
        Assert.That(WaitUntil(() => LeaseDiagnostics.SigioRescans > before), Is.True, "SIGIO was not seen");
        Assert.That(lease.IsActive, Is.True, "a rescan keeps an intact lease");
        AssertKernelAgrees(file, lease, "after SIGIO");
    }

    [Test]
    public void AHandlerReplacedByAnotherComponentIsPutBackAndALostBreakIsFound()
    {
        var file = NewFile("replaced");
        var lease = file.AcquireLease();
        var broke = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.BreakRequested += (_, _) => broke.TrySetResult();
        long restoredBefore = LeaseDiagnostics.HandlerRestorations, foundBefore = LeaseDiagnostics.BreaksFoundByRescan;
        // Another library ignores our signal: the break's signal is lost. The periodic check must put our handler
        // back and find the break by asking the kernel.
        Assert.That(signal(LeaseSignals.SignalNumber, SIG_IGN), Is.Not.EqualTo(SIG_ERR));
        var p = RunProbe(Generous, "open-rdonly-nonblock", file.Path);
        Assert.That(p.Ok, Is.False);
        Assert.That(broke.Task.Wait(Generous), Is.True, "the lost break was never handled");
        Assert.Multiple(() =>
        {
            Assert.That(LeaseDiagnostics.HandlerRestorations, Is.GreaterThan(restoredBefore));
            Assert.That(LeaseDiagnostics.BreaksFoundByRescan, Is.GreaterThan(foundBefore));
            Assert.That(lease.BreakToRelease, Is.LessThan(LeaseSignals.RescanInterval * 4 + TimeSpan.FromSeconds(1)));
            Assert.That(KernelView.LocksOn(file), Is.Empty);
        });

        // Reset to the default action (which would kill the process on the next break): put back as well.
        restoredBefore = LeaseDiagnostics.HandlerRestorations;
        Assert.That(signal(SIGIO, SIG_DFL), Is.Not.EqualTo(SIG_ERR));
        file.Dispose();
        using var reopened = DaxFile.Open(file.Path, new DaxFileOptions { AllowNonDax = true });
        using var again = reopened.AcquireLease();   // verifies the handlers at once
        Assert.That(LeaseDiagnostics.HandlerRestorations, Is.GreaterThan(restoredBefore));
        Assert.That(kill(Environment.ProcessId, SIGIO), Is.Zero, "SIGIO must be handled again");
        Assert.That(again.IsActive, Is.True);
    }

    [Test]
    public void AFailingWatcherRestartsAndStillDeliversBreaks()
    {
        using var file = NewFile("watcher");
        var lease = file.AcquireLease();
        long before = LeaseDiagnostics.WatcherRestarts;
        LeaseSignals.InjectWatcherFault();
        Assert.That(WaitUntil(() => LeaseDiagnostics.WatcherRestarts > before), Is.True, "the injected fault was not hit");
        Assert.That(LeaseSignals.IsWatcherAlive, Is.True);
        var broke = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.BreakRequested += (_, _) => broke.TrySetResult();
        RunProbe(Generous, "open-rdonly-nonblock", file.Path);
        Assert.That(broke.Task.Wait(Generous), Is.True, "no break after the restart");
        Assert.That(KernelView.LocksOn(file), Is.Empty);
    }

    [Test]
    public void ASecondCopyOfTheAssemblyIsRefusedClearly()
    {
        using (var file = NewFile("first"))
        using (file.AcquireLease())
        {
            // the default copy delivers breaks from now on
        }
        var context = new AssemblyLoadContext("second copy", isCollectible: false);
        Assembly copy = context.LoadFromAssemblyPath(typeof(DaxFile).Assembly.Location);
        Assert.That(copy, Is.Not.SameAs(typeof(DaxFile).Assembly));
        Type daxFile = copy.GetType("RdmaLease.Leases.DaxFile", throwOnError: true)!;
        Type options = copy.GetType("RdmaLease.Leases.DaxFileOptions", throwOnError: true)!;
        object opts = Activator.CreateInstance(options)!;
        options.GetProperty("Size")!.SetValue(opts, (long?)4096);
        options.GetProperty("AllowNonDax")!.SetValue(opts, true);
        var other = (IDisposable)daxFile.GetMethod("Open")!.Invoke(null, [_dir.File("second"), opts])!;
        using (other)
        {
            var e = Assert.Throws<TargetInvocationException>(() => daxFile.GetMethod("AcquireLease")!.Invoke(other, [null]));
            Assert.That(e!.InnerException, Is.InstanceOf<InvalidOperationException>());
            Assert.That(e.InnerException!.Message, Does.Contain("another copy of RdmaLease.Leases").And.Contain("AssemblyLoadContext"));
        }
        Assert.That(KernelView.OwnLeases(), Is.Empty);
    }

    private static bool WaitUntil(Func<bool> condition)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > Generous)
                return false;
            Thread.Sleep(5);
        }
        return true;
    }

    private const int SIGIO = 29;
    private static readonly nint SIG_DFL = 0, SIG_IGN = 1, SIG_ERR = -1;

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    [DllImport("libc", SetLastError = true)]
    private static extern nint signal(int signum, nint handler);
}
