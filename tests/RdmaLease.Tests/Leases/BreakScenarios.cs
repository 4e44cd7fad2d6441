using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using RdmaLease.Leases;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>Lease scenarios shared by the host tests (/tmp) and the guest tests (/mnt/xfs, /mnt/ext4).</summary>
internal static class BreakScenarios
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);
    private static readonly string[] ExpectedOrder = ["registered second", "registered first"];

    /// <summary>
    /// A write lease over a file full of a known pattern; another process truncate(2)s it to twice its size. Checks the
    /// whole break sequence against the real kernel: the signal names our descriptor, F_GETLEASE/F_GETDELEG shows the
    /// break, teardown callbacks run last-first while the mapping is still there and the truncater is still blocked,
    /// then the lease is released, the truncater finishes well within lease-break-time, the application is told, and
    /// every byte written through the mapping is in the file.
    /// </summary>
    public static TimeSpan TruncateBreaksWriteLease(string root, bool dax, LeaseMechanism expected)
    {
        using var dir = CreateTempDir(root);
        string path = dir.File("leased");
        const int Size = 256 * 1024;
        using var file = DaxFile.Open(path, new DaxFileOptions { Size = Size, AllowNonDax = !dax });
        Assert.That(file.IsDax, Is.EqualTo(dax));
        Fill(file.Span, seed: 7);
        Assert.That(file.Flush(), dax ? Is.Not.EqualTo(FlushMethod.Msync) : Is.EqualTo(FlushMethod.Msync));

        using var lease = file.AcquireLease();
        Assert.Multiple(() =>
        {
            Assert.That(lease.Mechanism, Is.EqualTo(expected));
            Assert.That(lease.Type, Is.EqualTo(LeaseType.Write));
            Assert.That(lease.IsActive, Is.True);
            Assert.That(file.Lease, Is.SameAs(lease));
        });

        var broke = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.BreakRequested += (_, e) => broke.TrySetResult(e);
        var order = new ConcurrentQueue<string>();
        bool mappedInTeardown = true, activeInTeardown = true, tokenCancelledInTeardown = true;
        long teardownDone = 0;
        lease.RegisterTeardown(_ => order.Enqueue("registered first"));
        lease.RegisterTeardown(l =>
        {
            mappedInTeardown = file.IsMapped;
            activeInTeardown = l.IsActive;
            tokenCancelledInTeardown = l.Broken.IsCancellationRequested;
            Thread.Sleep(200);   // stands in for deregistering memory regions
            teardownDone = Stopwatch.GetTimestamp();
            order.Enqueue("registered second");
        });
        var unregistered = lease.RegisterTeardown(_ => order.Enqueue("unregistered"));
        unregistered.Dispose();

        var probe = StartProbe("truncate", path, (2 * Size).ToString(CultureInfo.InvariantCulture));
        Assert.That(broke.Task.Wait(Generous), Is.True, "no BreakRequested event");
        Assert.That(probe.Wait(Generous), Is.True, "the truncating process did not finish");
        var e = broke.Task.Result;
        var p = probe.Result;
        TimeSpan breakTime = FileLease.LeaseBreakTime;

        Assert.Multiple(() =>
        {
            Assert.That(p.Ok, Is.True, p.Output);
            Assert.That(e.FileDescriptor, Is.EqualTo(lease.FileDescriptor));
            Assert.That(e.Lease, Is.SameAs(lease));
            Assert.That(e.SignalCode, Is.EqualTo(POLL_MSG));
            Assert.That(e.PendingLeaseType, Is.EqualTo(F_UNLCK));
            Assert.That(e.TeardownErrors, Is.Empty);
            Assert.That(order, Is.EqualTo(ExpectedOrder));
            Assert.That(mappedInTeardown, Is.False, "on a break the file mapping is replaced by the placeholder before regions are deregistered");
            Assert.That(activeInTeardown, Is.False, "the lease must be marked revoked before teardown");
            Assert.That(tokenCancelledInTeardown, Is.False, "the application is told only after the release");
            Assert.That(p.EndTimestamp, Is.GreaterThanOrEqualTo(teardownDone), "the truncater must stay blocked until teardown is done");
            Assert.That(p.Elapsed, Is.LessThan(breakTime / 2), $"truncate took {p.Elapsed}; lease-break-time is {breakTime}");
            Assert.That(lease.IsActive, Is.False);
            Assert.That(lease.WasBroken, Is.True);
            Assert.That(lease.Broken.IsCancellationRequested, Is.True);
            Assert.That(lease.BreakToRelease, Is.Not.Null);
            Assert.That(lease.BreakToRelease!.Value, Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(190)).And.LessThan(breakTime));
            Assert.That(e.BreakToRelease, Is.EqualTo(lease.BreakToRelease));
            Assert.That(lease.BreakSignalTimestamp, Is.LessThanOrEqualTo(e.ObservedTimestamp));
            Assert.That(file.IsMapped, Is.False);
            Assert.That(file.Lease, Is.Null);
        });
        Assert.Throws<InvalidOperationException>(() => _ = file.GetSpan(0, 1).Length);
        Assert.Throws<InvalidOperationException>(() => file.AcquireLease());

        byte[] contents = ReadFile(path);
        Assert.That(contents, Has.Length.EqualTo(2 * Size));
        AssertPattern(contents.AsSpan(0, Size), 7, "file after the break");
        Assert.That(contents.AsSpan(Size).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "the grown tail must be zeros");
        lease.Release();   // idempotent after a break
        TestContext.Out.WriteLine($"{root}: {lease.Mechanism} break-signal->release {lease.BreakToRelease!.Value.TotalMilliseconds:F1} ms (teardown 200 ms), truncate blocked {p.Elapsed.TotalMilliseconds:F1} ms");
        return lease.BreakToRelease!.Value;
    }

    /// <summary>A read lease on an O_RDONLY file: other readers leave it alone, a writer breaks it.</summary>
    public static void ReadLeaseIgnoresReadersAndBreaksOnWriter(string root, bool dax, LeaseMechanism expected)
    {
        using var dir = CreateTempDir(root);
        string path = dir.File("read-leased");
        const int Size = 64 * 1024;
        using (var writer = DaxFile.Open(path, new DaxFileOptions { Size = Size, AllowNonDax = !dax }))
        {
            Fill(writer.Span, seed: 3);
            writer.Flush();
        }
        using var file = DaxFile.Open(path, new DaxFileOptions { Access = DaxFileAccess.Read, AllowNonDax = !dax });
        Assert.That(file.Length, Is.EqualTo(Size));
        AssertPattern(file.Span, 3, "read-only mapping");
        using var lease = file.AcquireLease();
        Assert.That(lease.Type, Is.EqualTo(LeaseType.Read));
        Assert.That(lease.Mechanism, Is.EqualTo(expected));
        var broke = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.BreakRequested += (_, e) => broke.TrySetResult(e);

        var reader = RunProbe(Generous, "open-rdonly", path);
        Assert.That(reader.Ok, Is.True, reader.Output);
        Assert.That(broke.Task.Wait(TimeSpan.FromMilliseconds(500)), Is.False, "another reader must not break a read lease");
        Assert.That(lease.IsActive, Is.True);

        var writerProbe = RunProbe(Generous, "open-rdwr-nonblock", path);
        Assert.That(writerProbe.Ok, Is.False, "O_NONBLOCK open for writing fails while the read lease is held");
        Assert.That(writerProbe.Errno, Is.EqualTo(EAGAIN));
        Assert.That(broke.Task.Wait(Generous), Is.True, "a writer's open must break the read lease");
        Assert.Multiple(() =>
        {
            Assert.That(broke.Task.Result.FileDescriptor, Is.EqualTo(lease.FileDescriptor));
            Assert.That(broke.Task.Result.PendingLeaseType, Is.EqualTo(F_UNLCK));
            Assert.That(lease.IsActive, Is.False);
        });
        var again = RunProbe(Generous, "open-rdwr", path);
        Assert.That(again.Ok, Is.True, again.Output);
        Assert.That(again.Elapsed, Is.LessThan(TimeSpan.FromSeconds(2)), "after the release nothing blocks the writer");
    }
}
