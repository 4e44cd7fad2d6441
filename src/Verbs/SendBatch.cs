using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>
/// Send-queue work requests gathered on the stack and posted together by <see cref="Post"/>: one <c>ibv_post_send</c>
/// (one P/Invoke transition, one doorbell) for all of them. Made by <see cref="QueuePair.StartPost"/>; allocates nothing.
/// </summary>
/// <remarks>
/// <para>Capacity: <see cref="MaxRequests"/> requests, <see cref="MaxSegments"/> scatter/gather entries in all, and
/// <see cref="MaxInlineBytes"/> inline bytes in all, per batch. Each request is checked when it is added (its segments
/// against the QP's <see cref="QueuePairOptions.MaxSendScatterGather"/>, inline bytes against its
/// <see cref="QueuePairOptions.MaxInlineData"/>, the remote range, the operation against the QP's type) and a refused
/// request is not added; <see cref="Post"/> checks the rest (ODP quirk, revoked regions, the send queue's depth) before
/// anything is posted.</para>
/// <para>The batch holds copies of the segments and inline bytes it was given, never pointers: the native requests are
/// built inside <see cref="Post"/>, so a copy of a batch is a second, independent batch. Every region named keeps a
/// post reference from just before the native call until it returned, so a revocation either refuses the whole post or
/// waits for it (docs/leases.md).</para>
/// <para>FLUSH and ATOMIC WRITE use the extended work-request API and are posted on their own
/// (<see cref="QueuePair.PostFlush"/>, <see cref="QueuePair.PostAtomicWrite"/>).</para>
/// </remarks>
/// <example>
/// <code>
/// var batch = qp.StartPost();
/// batch.Write(1, [header, body], peer, 0, SendFlags.None, immediate: 7);
/// batch.SendInline(2, "done"u8);
/// batch.Post();   // one ibv_post_send; the batch is empty again
/// </code>
/// </example>
public ref struct SendBatch
{
    /// <summary>Most requests in one batch.</summary>
    public const int MaxRequests = 16;
    /// <summary>Most scatter/gather entries in one batch, over all its requests.</summary>
    public const int MaxSegments = 32;
    /// <summary>Most inline bytes in one batch, over all its inline sends (rxe takes at most 512 per request).</summary>
    public const int MaxInlineBytes = 512;

    readonly QueuePair? _qp;
    WorkList _work;
    SegmentList _segments;
    InlineBytes _inline;
    int _count, _segmentCount, _inlineCount;

    internal SendBatch(QueuePair qp) => _qp = qp;

    /// <summary>The QP the batch was started on (null for a default batch).</summary>
    internal readonly QueuePair? Owner => _qp;

    /// <summary>Requests added since the batch was started or last posted.</summary>
    public readonly int Count => _count;

    /// <summary>A SEND of <paramref name="data"/> (with immediate data when given).</summary>
    public void Send(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled, uint? immediate = null) =>
        Send(workRequestId, new ReadOnlySpan<LocalSegment>(in data), flags, immediate);

    /// <summary>A SEND gathered from <paramref name="data"/> (with immediate data when given).</summary>
    public void Send(ulong workRequestId, scoped ReadOnlySpan<LocalSegment> data, SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        var stored = Reserve(data);
        Add(QueuePair.MakeSend(workRequestId, stored, flags,
            immediate.HasValue ? ibv_wr_opcode.IBV_WR_SEND_WITH_IMM : ibv_wr_opcode.IBV_WR_SEND, immediate ?? 0));
    }

    /// <summary>A SEND that also invalidates the peer's type 2 window <paramref name="remoteKeyToInvalidate"/>
    /// (see <see cref="QueuePair.PostSendWithInvalidate"/>).</summary>
    public void SendWithInvalidate(ulong workRequestId, scoped ReadOnlySpan<LocalSegment> data, uint remoteKeyToInvalidate, SendFlags flags = SendFlags.Signaled)
    {
        var stored = Reserve(data);
        Add(QueuePair.MakeSend(workRequestId, stored, flags, ibv_wr_opcode.IBV_WR_SEND_WITH_INV, remoteKeyToInvalidate));
    }

    /// <summary>An inline SEND: <paramref name="data"/> is copied into the batch now, and by the provider at <see cref="Post"/>.</summary>
    /// <exception cref="ArgumentException">More bytes than the QP's <see cref="QueuePairOptions.MaxInlineData"/>.</exception>
    public void SendInline(ulong workRequestId, scoped ReadOnlySpan<byte> data, SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        if (_inlineCount + data.Length > MaxInlineBytes)
            throw Full($"{data.Length} more inline bytes", $"{MaxInlineBytes} inline bytes ({_inlineCount} used)");
        CheckRequestRoom();
        var work = QueuePair.MakeInline(workRequestId, data.Length, flags, immediate);
        data.CopyTo(((Span<byte>)_inline)[_inlineCount..]);
        work.FirstSegment = (ushort)_inlineCount;
        _inlineCount += data.Length;
        _work[_count++] = work;
    }

    /// <summary>A UD SEND of <paramref name="data"/> to <paramref name="remoteQpn"/> through <paramref name="address"/>.</summary>
    public void SendTo(ulong workRequestId, LocalSegment data, AddressHandle address, uint remoteQpn, uint remoteQkey,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null) =>
        SendTo(workRequestId, new ReadOnlySpan<LocalSegment>(in data), address, remoteQpn, remoteQkey, flags, immediate);

    /// <summary>A UD SEND gathered from <paramref name="data"/> to <paramref name="remoteQpn"/> through <paramref name="address"/>.</summary>
    public void SendTo(ulong workRequestId, scoped ReadOnlySpan<LocalSegment> data, AddressHandle address, uint remoteQpn, uint remoteQkey,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        var stored = Reserve(data);
        Add(QueuePair.MakeSendTo(workRequestId, stored, address, remoteQpn, remoteQkey, flags, immediate));
    }

    /// <summary>An RDMA WRITE of <paramref name="source"/> to <paramref name="target"/>+<paramref name="targetOffset"/>
    /// (split like <see cref="QueuePair.PostWrite"/> where a quirk or the target requires).</summary>
    public void Write(ulong workRequestId, LocalSegment source, RemoteRegion target, ulong targetOffset = 0,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null) =>
        Write(workRequestId, new ReadOnlySpan<LocalSegment>(in source), target, targetOffset, flags, immediate);

    /// <summary>An RDMA WRITE gathered from <paramref name="source"/> to <paramref name="target"/>+<paramref name="targetOffset"/>,
    /// with immediate data when given. A list of two or more segments is never split.</summary>
    public void Write(ulong workRequestId, scoped ReadOnlySpan<LocalSegment> source, RemoteRegion target, ulong targetOffset = 0,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        var stored = Reserve(source);
        Add(QueuePair.MakeTransfer(workRequestId, stored, target, targetOffset, flags, read: false, immediate));
    }

    /// <summary>An RDMA READ into <paramref name="destination"/> from <paramref name="source"/>+<paramref name="sourceOffset"/>.</summary>
    public void Read(ulong workRequestId, LocalSegment destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled) =>
        Read(workRequestId, new ReadOnlySpan<LocalSegment>(in destination), source, sourceOffset, flags);

    /// <summary>An RDMA READ scattered into <paramref name="destination"/> from <paramref name="source"/>+<paramref name="sourceOffset"/>.
    /// A list of two or more segments is never split.</summary>
    public void Read(ulong workRequestId, scoped ReadOnlySpan<LocalSegment> destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        var stored = Reserve(destination);
        Add(QueuePair.MakeTransfer(workRequestId, stored, source, sourceOffset, flags, read: true, null));
    }

    /// <summary>An 8-byte compare-and-swap at <paramref name="target"/>+<paramref name="targetOffset"/>; the original value lands in <paramref name="result"/>.</summary>
    public void CompareSwap(ulong workRequestId, LocalSegment result, RemoteRegion target, ulong targetOffset, ulong compare, ulong swap,
        SendFlags flags = SendFlags.Signaled)
    {
        var stored = Reserve(new ReadOnlySpan<LocalSegment>(in result));
        Add(QueuePair.MakeAtomic(workRequestId, stored[0], target, targetOffset, compareSwap: true, compare, swap, flags));
    }

    /// <summary>An 8-byte fetch-and-add at <paramref name="target"/>+<paramref name="targetOffset"/>; the original value lands in <paramref name="result"/>.</summary>
    public void FetchAdd(ulong workRequestId, LocalSegment result, RemoteRegion target, ulong targetOffset, ulong add, SendFlags flags = SendFlags.Signaled)
    {
        var stored = Reserve(new ReadOnlySpan<LocalSegment>(in result));
        Add(QueuePair.MakeAtomic(workRequestId, stored[0], target, targetOffset, compareSwap: false, add, 0, flags));
    }

    /// <summary>
    /// Posts every request added, in order, with one <c>ibv_post_send</c>, and empties the batch (also when it throws:
    /// a refused batch is not half-kept). Nothing is posted when a check fails; when the provider refuses a request, those
    /// before it were posted (the exception says which).
    /// </summary>
    /// <exception cref="InvalidOperationException">The batch is empty (or was not made by <see cref="QueuePair.StartPost"/>),
    /// or holds more work requests than the send queue does.</exception>
    /// <exception cref="NotSupportedException">The device's ODP quirk refuses a segment (see <see cref="QueuePair.PostSend(ulong, LocalSegment, SendFlags, uint?)"/>),
    /// or a list of segments is larger than the remote region takes per request.</exception>
    /// <exception cref="Exception">A region named was revoked: the exception it was revoked with (a lease's: LeaseRevokedException); nothing was posted.</exception>
    /// <exception cref="ObjectDisposedException">The QP, a region or an address handle was disposed; nothing was posted.</exception>
    /// <exception cref="VerbsException">ibv_post_send refused a request.</exception>
    public void Post() => PostHeld(0);

    /// <summary>Post(), the QP's reference held by a <see cref="QueuePairPoster"/> (<paramref name="heldQp"/>; 0: none).</summary>
    internal void PostHeld(nint heldQp)
    {
        if (_count == 0)
            throw new InvalidOperationException(_qp is null
                ? "This SendBatch was not made by QueuePair.StartPost(): start one there."
                : $"The batch for {_qp} is empty: add requests before Post().");
        try
        {
            QueuePair.PostSendWork(((ReadOnlySpan<SendWork>)_work)[.._count], ((ReadOnlySpan<LocalSegment>)_segments)[.._segmentCount],
                ((ReadOnlySpan<byte>)_inline)[.._inlineCount], heldQp);
        }
        finally
        {
            Clear();
        }
    }

    /// <summary>Drops every request added (nothing was posted or referenced for them).</summary>
    public void Clear() => (_count, _segmentCount, _inlineCount) = (0, 0, 0);

    readonly QueuePair QueuePair => _qp ?? throw new InvalidOperationException("This SendBatch was not made by QueuePair.StartPost(): start one there.");

    /// <summary>Copies <paramref name="segments"/> into the batch (after the last request's) without committing them:
    /// the request is checked on the copy, so what is checked is what is posted.</summary>
    [UnscopedRef]
    Span<LocalSegment> Reserve(scoped ReadOnlySpan<LocalSegment> segments)
    {
        CheckRequestRoom();
        if (_segmentCount + segments.Length > MaxSegments)
            throw Full($"{segments.Length} more scatter/gather entries", $"{MaxSegments} entries ({_segmentCount} used)");
        Span<LocalSegment> stored = ((Span<LocalSegment>)_segments).Slice(_segmentCount, segments.Length);
        segments.CopyTo(stored);
        return stored;
    }

    void Add(SendWork work)
    {
        work.FirstSegment = (ushort)_segmentCount;
        _segmentCount += work.SegmentCount;
        _work[_count++] = work;
    }

    readonly void CheckRequestRoom()
    {
        if (_count == MaxRequests)
            throw Full("another request", $"{MaxRequests} requests");
    }

    readonly InvalidOperationException Full(string what, string capacity) =>
        new($"The batch for {_qp} has no room for {what}: a batch holds at most {capacity}. Post() it and start another.");

    [InlineArray(MaxRequests)]
    struct WorkList
    {
        SendWork _first;
    }

    [InlineArray(MaxSegments)]
    internal struct SegmentList
    {
        LocalSegment _first;
    }

    [InlineArray(MaxInlineBytes)]
    struct InlineBytes
    {
        byte _first;
    }
}
