using System.Reflection;
using System.Runtime.CompilerServices;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// The ticket under CompletionQueuePoller and QueuePairPoster, attacked where no device is needed (a fake native
/// handle whose destroy only counts): a stale copy of a scope after the ticket's generation came round, and a scope
/// that was never disposed. Either would break "destroyed once, after the last scope ends".
/// </summary>
[NonParallelizable]   // per-thread tickets, the GC
public unsafe class HeldReferenceHostTests
{
    static int s_destroys;

    static int CountDestroy(nint h)
    {
        Interlocked.Increment(ref s_destroys);
        return 0;
    }

    [SetUp]
    public void ResetCount() => s_destroys = 0;

    /// <summary>
    /// A stale copy of a scope (disposed, then kept) must stay closed however many scopes the thread opens after it.
    /// With an int generation it came round after 2^32 open/close cycles (here the cycles are skipped by setting the
    /// ticket's generation, as a loop opening a scope per batch reaches it in minutes) and the stale copy's Dispose then
    /// gave back the reference of the scope open at the time: the object was destroyed under a live scope.
    /// </summary>
    [Test]
    public void AStaleCopyNeverClosesAScopeOpenedAfterTheGenerationComesRound()
    {
        var h = new NativeHandle(0x7000, &CountDestroy, "fake CQ");
        var stale = HeldReference.Open(h, out var staleGeneration);
        stale.Close(staleGeneration);
        var field = typeof(HeldReference).GetField("_generation", BindingFlags.NonPublic | BindingFlags.Instance)!;
        long cameRound = (long)staleGeneration + (1L << 32) - 1;   // one open/close short of 2^32 after the stale one
        field.SetValue(stale, field.FieldType == typeof(int) ? (object)unchecked((int)cameRound) : cameRound);
        var last = HeldReference.Open(h, out var lastGeneration);
        last.Close(lastGeneration);
        var live = HeldReference.Open(h, out var liveGeneration);
        Assert.That(live, Is.SameAs(stale), "precondition: the thread's ticket is reused");

        stale.Close(staleGeneration);   // the stale copy's Dispose
        h.Dispose();
        Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Pending), "destroyed while a scope was still open");
        Assert.That(live.Pointer, Is.EqualTo((nint)0x7000), "the live scope lost its pointer");
        Assert.That(live.IsOpen(liveGeneration), Is.True, "the stale copy closed the live scope");
        Assert.That(live.IsOpen(staleGeneration), Is.False, "the stale copy counts as open again");
        live.Close(liveGeneration);
        Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Destroyed), "not destroyed when the last scope ended");
        Assert.That(s_destroys, Is.EqualTo(1));
    }

    /// <summary>
    /// A scope that was never disposed (no using, an early return) held its reference forever: the CQ's Dispose
    /// returned, but the native object (and its device context under it) stayed until the process ended, in
    /// `rdma resource show` too. Now the ticket's finalizer gives the reference back once nothing can reach it.
    /// </summary>
    [Test]
    public void AScopeNeverDisposedDoesNotKeepTheObjectForever()
    {
        var h = new NativeHandle(0x7000, &CountDestroy, "fake CQ");
        OpenAndForget(h);
        h.Dispose();
        Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Pending), "precondition: the forgotten scope defers the destroy");
        for (int i = 0; i < 3 && h.DestroyState == DestroyState.Pending; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        Assert.That(h.DestroyState, Is.EqualTo(DestroyState.Destroyed), "a forgotten scope kept the native object for good");
        Assert.That(s_destroys, Is.EqualTo(1));
    }

    /// <summary>
    /// Two scopes open at once on one thread (nested on one object, and on two objects), closed in either order, and a
    /// copy closed twice: each object destroyed exactly once, only after its last scope ended.
    /// </summary>
    [Test]
    public void NestedScopesClosedInEitherOrderDestroyEachObjectOnceAfterItsLastScope()
    {
        var a = new NativeHandle(0x7000, &CountDestroy, "fake CQ a");
        var b = new NativeHandle(0x8000, &CountDestroy, "fake CQ b");
        var outer = HeldReference.Open(a, out var go);
        var inner = HeldReference.Open(a, out var gi);
        var other = HeldReference.Open(b, out var gb);
        Assert.That(new[] { outer, inner, other }.Distinct().Count(), Is.EqualTo(3), "one ticket per open scope");
        a.Dispose();
        b.Dispose();
        outer.Close(go);
        outer.Close(go);
        Assert.That(a.DestroyState, Is.EqualTo(DestroyState.Pending), "the inner scope still holds a");
        Assert.That(inner.Pointer, Is.EqualTo((nint)0x7000));
        var c = new NativeHandle(0x9000, &CountDestroy, "fake CQ c");
        var reused = HeldReference.Open(c, out var gr);
        Assert.That(reused, Is.SameAs(outer), "the closed ticket is reused");
        Assert.That(outer.IsOpen(go), Is.False, "the closed scope's copy reaches the new object");
        inner.Close(gi);
        Assert.That(a.DestroyState, Is.EqualTo(DestroyState.Destroyed));
        Assert.That(b.DestroyState, Is.EqualTo(DestroyState.Pending));
        other.Close(gb);
        Assert.That(b.DestroyState, Is.EqualTo(DestroyState.Destroyed));
        Assert.That(s_destroys, Is.EqualTo(2));
        reused.Close(gr);
        c.Dispose();
        Assert.That(s_destroys, Is.EqualTo(3));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void OpenAndForget(NativeHandle h) => HeldReference.Open(h, out _);
}
