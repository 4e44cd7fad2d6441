using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;

namespace RdmaLease.Verbs.Internal;

/// <summary>
/// A handle reference held across many calls by a public hot-path scope (<see cref="CompletionQueuePoller"/>,
/// <see cref="QueuePairPoster"/>): taken once when the scope opens, given back once when it closes, so the calls in
/// between do no reference counting. The scope is a <c>ref struct</c> (it cannot leave its thread) holding this ticket
/// and the generation it was opened with; closing bumps the generation, so every copy of the scope is closed at once
/// and the reference is given back exactly once, however many copies are disposed. Closed tickets are kept per thread
/// and reused, so opening a scope allocates nothing in steady state. The generation is a long: an int came round again
/// after 2^32 opens on one thread (minutes of a loop that opens a scope per batch), and a stale copy then closed the
/// scope open at the time. A scope never disposed gives its reference back when the GC finds its ticket unreachable
/// (the finalizer), so a forgotten scope defers the native destroy instead of leaking the kernel object; the scopes
/// keep the ticket alive across each native call (GC.KeepAlive) so that never happens under a call.
/// </summary>
internal sealed class HeldReference
{
    [ThreadStatic] static HeldReference? t_free;

    SafeHandle? _handle;
    HeldReference? _nextFree;
    long _generation;

    /// <summary>The native pointer while open (0 once closed).</summary>
    public nint Pointer { get; private set; }

    /// <summary>Takes a reference on <paramref name="handle"/> (ObjectDisposedException once it is disposed).</summary>
    public static HeldReference Open(NativeHandle handle, out long generation)
    {
        var scope = handle.Enter();   // the reference this ticket holds until Close
        var ticket = t_free ?? new HeldReference();
        t_free = ticket._nextFree;
        ticket._nextFree = null;
        ticket._handle = handle;
        ticket.Pointer = scope.Pointer;
        generation = ticket._generation;
        return ticket;
    }

    /// <summary>Whether the scope opened with <paramref name="generation"/> is still open.</summary>
    public bool IsOpen(long generation) => _generation == generation;

    /// <summary>Gives the reference back if the scope opened with <paramref name="generation"/> is still open.</summary>
    public void Close(long generation)
    {
        if (_generation != generation)
            return;   // a copy of the scope closed it already
        var handle = _handle!;
        _generation++;
        _handle = null;
        Pointer = 0;
        _nextFree = t_free;
        t_free = this;
        handle.DangerousRelease();
    }

    /// <summary>
    /// Why a scope (poller or poster) cannot be used: never opened, disposed (this copy or another), or its object disposed
    /// meanwhile. One place for both scopes' messages.
    /// </summary>
    [DoesNotReturn]
    public static void ThrowClosed(HeldReference? held, long generation, object? owner, string kind, string opener, Func<InvalidOperationException> notOpened)
    {
        if (held is null)
            throw notOpened();
        if (!held.IsOpen(generation))
            throw new ObjectDisposedException($"a {kind} of {owner}", $"The {kind} was disposed: open another with {opener}().");
        throw new ObjectDisposedException(owner?.ToString());
    }

    /// <summary>A scope that was never disposed: its reference is given back here (nothing can reach the ticket any more).</summary>
    ~HeldReference()
    {
        if (_handle is { } handle)
            handle.DangerousRelease();
    }
}
