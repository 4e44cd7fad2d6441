using System.Collections.Concurrent;
using System.Diagnostics;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// The handle core every verbs object stands on, driven with fake native objects so each path can be forced: references
/// are never leaked by a failed entry, a destroy waits for the last reference, a failed destroy keeps what the object
/// depends on, and waiting for the destroy is bounded.
/// </summary>
public unsafe class NativeHandleHostTests
{
    static readonly ConcurrentDictionary<nint, int> Destroyed = new();
    static readonly ConcurrentDictionary<nint, int> FailuresLeft = new();
    static long s_next = 0x1000;

    static int FakeDestroy(nint h)
    {
        if (FailuresLeft.TryGetValue(h, out int left) && left > 0)
        {
            FailuresLeft[h] = left - 1;
            return 16;   // EBUSY
        }
        Destroyed.AddOrUpdate(h, 1, (_, n) => n + 1);
        return 0;
    }

    static NativeHandle Make(string what, params ReadOnlySpan<System.Runtime.InteropServices.SafeHandle?> deps) =>
        new((nint)Interlocked.Add(ref s_next, 16), &FakeDestroy, what, [.. deps]);

    static int DestroyCount(NativeHandle h) => Destroyed.GetValueOrDefault(h.DangerousGetHandle());

    [Test]
    public void EnteringADisposedHandleThrowsAndLeaksNoReferenceOfAnotherScope()
    {
        var region = Make("region");
        var qp = Make("qp");
        nint regionPtr = region.DangerousGetHandle();
        qp.Dispose();
        // The shape of every post: the region's reference first, then the QP's. The QP is gone.
        Assert.Throws<ObjectDisposedException>(() =>
        {
            using var mr = region.Enter();
            using var q = qp.Enter();
        });
        region.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(Destroyed.GetValueOrDefault(regionPtr), Is.EqualTo(1), "the region's reference was given back: it is destroyed");
            Assert.That(region.DestroyState, Is.EqualTo(DestroyState.Destroyed));
        });
    }

    [Test]
    public void DestroyWaitsForTheLastReferenceAndWaitForDestroyObservesIt()
    {
        var h = Make("busy");
        bool added = false;
        h.DangerousAddRef(ref added);   // what HandleScope holds while a post is inside libibverbs
        h.Dispose();
        Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Pending), "destroyed under a call in progress");
        Assert.That(h.WaitForDestroy(Stopwatch.GetTimestamp() + Stopwatch.Frequency / 20), Is.EqualTo(DestroyState.Pending), "the bounded wait ends");
        var releaser = Task.Run(() =>
        {
            Thread.Sleep(50);
            h.DangerousRelease();
        });
        var state = h.WaitForDestroy(Stopwatch.GetTimestamp() + 30 * Stopwatch.Frequency);
        releaser.Wait();
        Assert.That(state, Is.EqualTo(DestroyState.Destroyed));
        Assert.That(DestroyCount(h), Is.EqualTo(1));
        Assert.Throws<ObjectDisposedException>(() => h.Enter());
    }

    [Test]
    public void ATransientDestroyFailureIsRetried()
    {
        var parent = Make("parent");
        var h = Make("child", parent);
        FailuresLeft[h.DangerousGetHandle()] = NativeHandle.DestroyAttempts - 1;
        h.Dispose();
        Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Destroyed));
        Assert.That(h.DestroyErrno, Is.EqualTo(16), "the failures are recorded");
        parent.Dispose();
        Assert.That(parent.DestroyState, Is.EqualTo(DestroyState.Destroyed), "the child released the parent");
    }

    [Test]
    public void APersistentDestroyFailureKeepsEverythingItDependsOnUntilARetrySucceeds()
    {
        var memory = Make("mapping");
        var parent = Make("pd");
        var h = Make("region", parent, memory);
        FailuresLeft[h.DangerousGetHandle()] = 1000;
        h.Dispose();
        memory.Dispose();
        parent.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Failed));
            Assert.That(h.DestroyErrno, Is.EqualTo(16));
            Assert.That(memory.DestroyState, Is.EqualTo(DestroyState.Pending), "memory under a region that may exist is never released");
            Assert.That(parent.DestroyState, Is.EqualTo(DestroyState.Pending), "nor its parent");
        });
        FailuresLeft[h.DangerousGetHandle()] = 0;
        Assert.That(h.RetryFailedDestroy(), Is.True);
        Assert.Multiple(() =>
        {
            Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Destroyed));
            Assert.That(memory.DestroyState, Is.EqualTo(DestroyState.Destroyed), "released once the region is confirmed gone");
            Assert.That(parent.DestroyState, Is.EqualTo(DestroyState.Destroyed));
            Assert.That(h.RetryFailedDestroy(), Is.True, "idempotent");
            Assert.That(DestroyCount(h), Is.EqualTo(1));
        });
    }

    [Test]
    public void InjectedFailuresDriveTheSamePath()
    {
        var h = Make("injected");
        h.InjectDestroyFailures = NativeHandle.DestroyAttempts;
        h.InjectedDestroyErrno = 5;   // EIO
        h.Dispose();
        Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Failed));
        Assert.That(h.DestroyErrno, Is.EqualTo(5));
        Assert.That(DestroyCount(h), Is.Zero, "the real destroy never ran");
        Assert.That(h.RetryFailedDestroy(), Is.True);
        Assert.That(DestroyCount(h), Is.EqualTo(1));
    }

    [Test]
    public void ADependencyClosedBeforeTheChildIsMadeIsRefusedWithoutLeaks()
    {
        var alive = Make("alive");
        var closed = Make("closed");
        closed.Dispose();
        Assert.Throws<ObjectDisposedException>(() => Make("child", alive, closed));
        alive.Dispose();
        Assert.That(alive.DestroyState, Is.EqualTo(DestroyState.Destroyed), "the reference taken on the first dependency was given back");
    }

    [Test]
    public void ManyThreadsEnteringWhileDisposeRacesNeverLeak()
    {
        for (int round = 0; round < 200; round++)
        {
            var a = Make("a");
            var b = Make("b");
            using var go = new ManualResetEventSlim();
            var workers = Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
            {
                go.Wait();
                for (int i = 0; i < 200; i++)
                {
                    try
                    {
                        using var ra = a.Enter();
                        using var rb = b.Enter();
                    }
                    catch (ObjectDisposedException)
                    {
                    }
                }
            })).ToArray();
            go.Set();
            b.Dispose();
            a.Dispose();
            Task.WaitAll(workers);
            Assert.That(a.WaitForDestroy(Stopwatch.GetTimestamp() + 10 * Stopwatch.Frequency), Is.EqualTo(DestroyState.Destroyed), $"round {round}: a leaked a reference");
            Assert.That(b.WaitForDestroy(Stopwatch.GetTimestamp() + 10 * Stopwatch.Frequency), Is.EqualTo(DestroyState.Destroyed), $"round {round}: b leaked a reference");
        }
    }
}
