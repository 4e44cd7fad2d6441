using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// A busy-poll scope on a <see cref="CompletionQueue"/> (<see cref="CompletionQueue.OpenPoller"/>): it holds a reference
/// on the CQ from open to <see cref="Dispose"/>, so <see cref="Poll"/> is the native poll and nothing else (no
/// interlocked reference counting per call). A <c>ref struct</c>: it stays on the thread that opened it.
/// </summary>
/// <example>
/// <code>
/// using var poller = cq.OpenPoller();
/// Span&lt;WorkCompletion&gt; wc = stackalloc WorkCompletion[16];
/// while (running)
/// {
///     int n = poller.Poll(wc);
///     ...
/// }
/// </code>
/// </example>
/// <remarks>
/// Safe whatever the caller does: disposing the CQ on another thread while the poller is open makes the next
/// <see cref="Poll"/> throw ObjectDisposedException and destroys the CQ natively when the poller is disposed (never under
/// a poll); <see cref="Poll"/> after <see cref="Dispose"/> throws ObjectDisposedException; disposing twice, or disposing
/// copies of the poller, gives the reference back once. Use <see cref="CompletionQueue.Poll"/> for an occasional poll
/// and a poller for a loop.
/// </remarks>
public readonly ref struct CompletionQueuePoller
{
    readonly CompletionQueue _cq;
    readonly HeldReference _held;
    readonly long _generation;

    internal CompletionQueuePoller(CompletionQueue cq)
    {
        _cq = cq;
        _held = HeldReference.Open(cq.HandleForChildren, out _generation);
    }

    /// <summary>The completion queue this poller polls.</summary>
    public CompletionQueue CompletionQueue => _cq ?? throw NotOpened();

    /// <summary>
    /// Takes up to <c>completions.Length</c> completions off the queue without waiting: <see cref="CompletionQueue.Poll"/>
    /// without its reference counting. Allocation-free, one P/Invoke transition.
    /// </summary>
    /// <returns>How many entries of <paramref name="completions"/> were filled (0 when none were ready).</returns>
    /// <exception cref="ObjectDisposedException">The poller or the CQ was disposed.</exception>
    /// <exception cref="VerbsException">The provider reported a polling error.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]   // into the caller's loop: its loads of the scope's fields can be hoisted
    public int Poll(Span<WorkCompletion> completions)
    {
        if (_held is null || !_held.IsOpen(_generation) || _cq.HandleForChildren.DisposeRequested)
            ThrowClosed();   // out of line: the exception's building would otherwise enlarge every poll's frame
        int n = _cq.PollHeld(_held.Pointer, completions);
        GC.KeepAlive(_held);   // a forgotten scope's ticket is finalized only once no call uses its pointer
        return n;
    }

    /// <summary>Gives the CQ's reference back (once, however often it is called).</summary>
    public void Dispose() => _held?.Close(_generation);

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]   // out of line: the exception's building would otherwise enlarge every call's frame
    void ThrowClosed() => HeldReference.ThrowClosed(_held, _generation, _cq, "poller", "OpenPoller", NotOpened);

    static InvalidOperationException NotOpened() =>
        new("This CompletionQueuePoller was not opened: get one from CompletionQueue.OpenPoller().");
}
