using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// A posting scope on a <see cref="QueuePair"/> (<see cref="QueuePair.OpenPoster"/>): it holds a reference on the QP from
/// open to <see cref="Dispose"/>, so its posts skip the QP's reference counting. Every check of the QP's own Post methods
/// stays, and so does each region's post reference (a revoked region is refused by the next post). A <c>ref struct</c>:
/// it stays on the thread that opened it.
/// </summary>
/// <example>
/// <code>
/// using var poster = qp.OpenPoster();
/// for (ulong i = 0; i &lt; count; i++)
///     poster.PostWrite(i, source, target, i * 8);
/// </code>
/// </example>
/// <remarks>
/// Safe whatever the caller does: disposing the QP on another thread while the poster is open makes the next post
/// throw ObjectDisposedException and destroys the QP natively when the poster is disposed (never under a post); a post
/// after <see cref="Dispose"/> throws ObjectDisposedException; disposing twice, or disposing copies, gives the reference
/// back once. Use the QP's Post methods for an occasional post and a poster for a loop.
/// </remarks>
public readonly ref struct QueuePairPoster
{
    readonly QueuePair _qp;
    readonly HeldReference _held;
    readonly long _generation;

    internal QueuePairPoster(QueuePair qp)
    {
        _qp = qp;
        _held = HeldReference.Open(qp.HandleForChildren, out _generation);
    }

    /// <summary>The queue pair this poster posts to.</summary>
    public QueuePair QueuePair => _qp ?? throw NotOpened();

    /// <summary>As <see cref="QueuePair.PostWrite"/>.</summary>
    /// <exception cref="ObjectDisposedException">The poster or the QP was disposed.</exception>
    public void PostWrite(ulong workRequestId, LocalSegment source, RemoteRegion target, ulong targetOffset = 0,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        _qp.PostWriteHeld(Held(), workRequestId, source, target, targetOffset, flags, immediate);
        GC.KeepAlive(_held);   // a forgotten scope's ticket is finalized only once no call uses its pointer
    }

    /// <summary>As <see cref="QueuePair.PostRead"/>.</summary>
    /// <exception cref="ObjectDisposedException">The poster or the QP was disposed.</exception>
    public void PostRead(ulong workRequestId, LocalSegment destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        _qp.PostReadHeld(Held(), workRequestId, destination, source, sourceOffset, flags);
        GC.KeepAlive(_held);
    }

    /// <summary>As <see cref="QueuePair.PostSend(ulong, LocalSegment, SendFlags, uint?)"/> (a connected QP).</summary>
    /// <exception cref="ObjectDisposedException">The poster or the QP was disposed.</exception>
    public void PostSend(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        _qp.PostSendHeld(Held(), workRequestId, data, flags, immediate);
        GC.KeepAlive(_held);
    }

    /// <summary>As <see cref="QueuePair.PostReceive(ulong, LocalSegment)"/>.</summary>
    /// <exception cref="ObjectDisposedException">The poster or the QP was disposed.</exception>
    public void PostReceive(ulong workRequestId, LocalSegment buffer)
    {
        _qp.PostReceiveHeld(Held(), workRequestId, buffer);
        GC.KeepAlive(_held);
    }

    /// <summary>As <see cref="SendBatch.Post"/> for a batch started on this poster's QP (and empties it the same way).</summary>
    /// <exception cref="ArgumentException">The batch was started on another QP.</exception>
    /// <exception cref="ObjectDisposedException">The poster or the QP was disposed.</exception>
    public void Post(ref SendBatch batch)
    {
        nint qp = Held();
        if (batch.Owner != _qp)
            throw new ArgumentException($"The batch was started on {(object?)batch.Owner ?? "no QP"}, not on {_qp}: post it there.", nameof(batch));
        batch.PostHeld(qp);
        GC.KeepAlive(_held);
    }

    /// <summary>Gives the QP's reference back (once, however often it is called).</summary>
    public void Dispose() => _held?.Close(_generation);

    nint Held()
    {
        if (_held is null || !_held.IsOpen(_generation) || _qp.HandleForChildren.DisposeRequested)
            ThrowClosed();   // out of line: the exception's building would otherwise enlarge every post's frame
        return _held.Pointer;
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]   // out of line: the exception's building would otherwise enlarge every call's frame
    void ThrowClosed() => HeldReference.ThrowClosed(_held, _generation, _qp, "poster", "OpenPoster", NotOpened);

    static InvalidOperationException NotOpened() =>
        new("This QueuePairPoster was not opened: get one from QueuePair.OpenPoster().");
}
