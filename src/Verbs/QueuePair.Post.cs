using RdmaLease.Interop;

namespace RdmaLease.Verbs;

// Posting: every operation is one ibv_post_send (or one extended work request) per call.
public sealed unsafe partial class QueuePair
{
    /// <summary>Posts a SEND of <paramref name="data"/> (with immediate data when given).</summary>
    /// <exception cref="NotSupportedException"><paramref name="data"/> lies in an On-Demand-Paging region on a device whose
    /// <see cref="Device.OdpQuirk"/> allows less at this QP's path MTU, or not at that address (a message cannot be split;
    /// see docs/known-defects.md).</exception>
    /// <exception cref="InvalidOperationException">The QP is UD (use the overload with an <see cref="AddressHandle"/>).</exception>
    public void PostSend(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled, uint? immediate = null) =>
        PostOne(MakeSend(workRequestId, new(in data), flags, immediate.HasValue ? ibv_wr_opcode.IBV_WR_SEND_WITH_IMM : ibv_wr_opcode.IBV_WR_SEND,
            immediate ?? 0), new(in data));

    /// <summary>Posts an inline SEND: the bytes are copied into the request, no region needed.</summary>
    /// <exception cref="ArgumentException">More bytes than the QP's <see cref="QueuePairOptions.MaxInlineData"/>.</exception>
    public void PostSendInline(ulong workRequestId, ReadOnlySpan<byte> data, SendFlags flags = SendFlags.Signaled) =>
        PostOne(MakeInline(workRequestId, data.Length, flags, null), default, data);

    /// <summary>Posts a UD SEND to <paramref name="remoteQpn"/> through <paramref name="address"/>.</summary>
    /// <exception cref="NotSupportedException">As for the RC <see cref="PostSend(ulong, LocalSegment, SendFlags, uint?)"/>.</exception>
    /// <exception cref="InvalidOperationException">The QP is not UD.</exception>
    public void PostSend(ulong workRequestId, LocalSegment data, AddressHandle address, uint remoteQpn, uint remoteQkey, SendFlags flags = SendFlags.Signaled) =>
        PostOne(MakeSendTo(workRequestId, new(in data), address, remoteQpn, remoteQkey, flags, null), new(in data));

    /// <summary>One request through the common body (QueuePair.SendWork.cs): the one-request fast path builds no batch.</summary>
    void PostOne(SendWork work, ReadOnlySpan<LocalSegment> segments, ReadOnlySpan<byte> inlineBytes = default, nint heldQp = 0) =>
        PostSendWork(new(in work), segments, inlineBytes, heldQp);

    /// <summary>
    /// Opens a poster: a scope that holds a reference on this QP until it is disposed, so the posts made through it
    /// (<see cref="QueuePairPoster.PostWrite"/>, <see cref="QueuePairPoster.PostSend"/>, ...) skip the QP's reference
    /// counting. The posting loop's form of the Post methods: <c>using var poster = qp.OpenPoster();</c>. It allocates
    /// nothing in steady state. Each region named is still referenced per post (a lease break must be able to revoke it
    /// between two posts).
    /// </summary>
    /// <remarks>An open poster defers the QP's native destroy (not its Dispose) until the poster is disposed.</remarks>
    /// <exception cref="ObjectDisposedException">The QP was disposed.</exception>
    public QueuePairPoster OpenPoster() => new(this);

    /// <summary>The one-request posts of <see cref="QueuePairPoster"/>: as PostWrite/PostRead/PostSend, on a held QP pointer.</summary>
    internal void PostWriteHeld(nint qp, ulong id, in LocalSegment source, RemoteRegion target, ulong targetOffset, SendFlags flags, uint? immediate) =>
        PostOne(MakeTransfer(id, new(in source), target, targetOffset, flags, read: false, immediate), new(in source), default, qp);

    internal void PostReadHeld(nint qp, ulong id, in LocalSegment destination, RemoteRegion source, ulong sourceOffset, SendFlags flags) =>
        PostOne(MakeTransfer(id, new(in destination), source, sourceOffset, flags, read: true, null), new(in destination), default, qp);

    internal void PostSendHeld(nint qp, ulong id, in LocalSegment data, SendFlags flags, uint? immediate) =>
        PostOne(MakeSend(id, new(in data), flags, immediate.HasValue ? ibv_wr_opcode.IBV_WR_SEND_WITH_IMM : ibv_wr_opcode.IBV_WR_SEND,
            immediate ?? 0), new(in data), default, qp);

    internal void PostReceiveHeld(nint qp, ulong id, in LocalSegment buffer)
    {
        if (_postLimits.HasSharedReceiveQueue)
            throw new InvalidOperationException($"{this} takes its receives from a shared receive queue: post them to the SharedReceiveQueue.");
        ReceiveWork.Post(this, _odp, _postLimits.MaxReceiveSegments, id, new ReadOnlySpan<LocalSegment>(in buffer), qp);
    }

    /// <summary>Posts an RDMA WRITE of <paramref name="source"/> to <paramref name="target"/> at <paramref name="targetOffset"/>.</summary>
    /// <remarks>
    /// When <paramref name="source"/> is an On-Demand-Paging region on a device whose <see cref="Device.OdpQuirk"/> limits
    /// the transfer size at this QP's path MTU, or <paramref name="target"/> advertises a
    /// <see cref="RemoteRegion.MaxTransferPerRequest"/>, the write is posted as a linked list of work requests of at
    /// most that size, in one call: only the last carries <paramref name="flags"/>' Signaled and Solicited and the
    /// immediate data, all carry <paramref name="workRequestId"/> (an error on an earlier, unsignaled piece still
    /// completes, with that id, and the rest flush). On a QP created with SignalAll every piece completes.
    /// See docs/known-defects.md.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">The split would take more work requests than one post may (the
    /// send queue's depth, at most 256).</exception>
    /// <exception cref="NotSupportedException"><paramref name="source"/> is an ODP region on a device whose
    /// <see cref="Device.OdpQuirk"/> makes this transfer impossible to post correctly (a misaligned address, or a size no
    /// split can move correctly; see docs/known-defects.md).</exception>
    public void PostWrite(ulong workRequestId, LocalSegment source, RemoteRegion target, ulong targetOffset = 0,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null)
        => PostOne(MakeTransfer(workRequestId, new(in source), target, targetOffset, flags, read: false, immediate), new(in source));

    /// <summary>Posts an RDMA READ of <paramref name="destination"/>.Length bytes from <paramref name="source"/> at <paramref name="sourceOffset"/>.</summary>
    /// <remarks>Split like <see cref="PostWrite"/> when <paramref name="destination"/> is an ODP region on a device with an
    /// ODP quirk or <paramref name="source"/> advertises a limit.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">As for <see cref="PostWrite"/>.</exception>
    /// <exception cref="NotSupportedException">As for <see cref="PostWrite"/>.</exception>
    public void PostRead(ulong workRequestId, LocalSegment destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled) =>
        PostOne(MakeTransfer(workRequestId, new(in destination), source, sourceOffset, flags, read: true, null), new(in destination));

    /// <summary>
    /// The largest transfer one work request may move for <paramref name="local"/>: the remote region's limit, and the
    /// device's ODP quirk's where one is in force (which may refuse the transfer). Without a quirk: one field test.
    /// </summary>
    internal uint TransferLimit(ibv_wr_opcode opcode, in LocalSegment local, uint remoteLimit)
    {
        uint limit = TransferSplit.Combine(OdpIntegrityResult.Unlimited, remoteLimit);
        return _odp is null ? limit : _odp.TransferLimit(opcode == ibv_wr_opcode.IBV_WR_RDMA_READ ? "RDMA READ" : "RDMA WRITE", local, limit);
    }

    /// <summary>Fills <paramref name="n"/> linked work requests for one transfer split at <paramref name="limit"/>.</summary>
    internal static void FillPieces(ibv_send_wr* wrs, ibv_sge* sges, int n, uint limit, ulong workRequestId, ibv_wr_opcode opcode, SendFlags flags,
        uint immediate, LocalSegment local, ulong remoteAddress, uint remoteKey)
    {
        const SendFlags LastOnly = SendFlags.Signaled | SendFlags.Solicited;
        for (int i = 0; i < n; i++)
        {
            var (offset, length) = n == 1 ? (0u, local.Length) : TransferSplit.Piece(i, local.Length, limit);
            bool last = i == n - 1;
            sges[i] = new ibv_sge { addr = local.Address + offset, length = length, lkey = local.Region.LocalKey };
            SendFlags f = last ? flags : flags & ~LastOnly;
            if (i > 0)
                f &= ~SendFlags.Fence;
            wrs[i] = new ibv_send_wr
            {
                wr_id = workRequestId,
                sg_list = &sges[i],
                num_sge = 1,
                opcode = last || opcode != ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM ? opcode : ibv_wr_opcode.IBV_WR_RDMA_WRITE,
                send_flags = (uint)f,
                next = last ? null : &wrs[i + 1],
            };
            if (last && opcode == ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM)
                wrs[i].imm_data = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(immediate);
            wrs[i].wr.rdma.remote_addr = remoteAddress + offset;
            wrs[i].wr.rdma.rkey = remoteKey;
        }
    }

    /// <summary>
    /// Posts an 8-byte compare-and-swap at <paramref name="target"/>+<paramref name="targetOffset"/>;
    /// the original value lands in <paramref name="result"/> (8 bytes, 8-aligned remote address).
    /// </summary>
    public void PostCompareSwap(ulong workRequestId, LocalSegment result, RemoteRegion target, ulong targetOffset, ulong compare, ulong swap, SendFlags flags = SendFlags.Signaled) =>
        PostOne(MakeAtomic(workRequestId, result, target, targetOffset, compareSwap: true, compare, swap, flags), new(in result));

    /// <summary>Posts an 8-byte fetch-and-add; the original value lands in <paramref name="result"/>.</summary>
    public void PostFetchAdd(ulong workRequestId, LocalSegment result, RemoteRegion target, ulong targetOffset, ulong add, SendFlags flags = SendFlags.Signaled) =>
        PostOne(MakeAtomic(workRequestId, result, target, targetOffset, compareSwap: false, add, 0, flags), new(in result));

    /// <summary>Posts an 8-byte ATOMIC WRITE of <paramref name="value"/> (extended API; 8-aligned target).</summary>
    public void PostAtomicWrite(ulong workRequestId, RemoteRegion target, ulong targetOffset, ulong value, SendFlags flags = SendFlags.Signaled)
    {
        target.CheckRange(targetOffset, 8);
        if (((target.Address + targetOffset) & 7) != 0)
            throw new ArgumentException($"ATOMIC WRITE needs an 8-byte aligned remote address (0x{target.Address + targetOffset:x})", nameof(targetOffset));
        ibv_qp_ex* qpx = RequireExtended("ATOMIC WRITE", "ibv_wr_atomic_write", s_libraryHasAtomicWrite);
        using var scope = Handle.Enter();
        int rc = RdmaLeaseNative.WrAtomicWrite(qpx, workRequestId, (uint)flags, target.RemoteKey, target.Address + targetOffset, &value);
        if (rc != 0)
            throw new VerbsException("ibv_wr_atomic_write", ToString(), rc);
    }

    /// <summary>
    /// Posts a FLUSH of <paramref name="length"/> bytes at <paramref name="target"/>+<paramref name="targetOffset"/>:
    /// its completion means earlier writes to that range are visible (<see cref="FlushType.Global"/>) or
    /// persistent (<see cref="FlushType.Persistent"/>) at the target.
    /// </summary>
    public void PostFlush(ulong workRequestId, RemoteRegion target, ulong targetOffset, ulong length,
        FlushType type = FlushType.Persistent, FlushLevel level = FlushLevel.Range, SendFlags flags = SendFlags.Signaled)
    {
        if (level == FlushLevel.Range)
            target.CheckRange(targetOffset, length);
        ibv_qp_ex* qpx = RequireExtended("FLUSH", "ibv_wr_flush", s_libraryHasFlush);
        using var scope = Handle.Enter();
        int rc = RdmaLeaseNative.WrFlush(qpx, workRequestId, (uint)flags, target.RemoteKey, target.Address + targetOffset, length, (byte)type, (byte)level);
        if (rc != 0)
            throw new VerbsException("ibv_wr_flush", ToString(), rc);
    }

    ibv_qp_ex* RequireExtended(string what, string entryPoint, Lazy<bool> libraryHasIt)
    {
        if (_qpx == null)
            throw new NotSupportedException($"{what} needs the extended work-request API, which {this} was created without (the device or libibverbs lacks it).");
        if (!libraryHasIt.Value)
            NativeLibraries.RequireIbVerbs(entryPoint);   // throws, naming the release needed and the one loaded
        return _qpx;
    }

    /// <summary>Posts a receive buffer.</summary>
    /// <exception cref="NotSupportedException"><paramref name="buffer"/> lies in an On-Demand-Paging region on a device whose
    /// <see cref="Device.OdpQuirk"/> allows less at this QP's path MTU (one packet, below a page-sized MTU on rxe), or not at
    /// that address: a message arriving there could be misplaced (see docs/known-defects.md).</exception>
    public void PostReceive(ulong workRequestId, LocalSegment buffer) => PostReceive(workRequestId, new ReadOnlySpan<LocalSegment>(in buffer));

    /// <summary>Posts a receive that scatters an incoming message over <paramref name="scatter"/>, in order.</summary>
    /// <exception cref="ArgumentException">More segments than the QP's <see cref="QueuePairOptions.MaxReceiveScatterGather"/>
    /// (or than 32).</exception>
    /// <exception cref="InvalidOperationException">The QP takes its receives from a shared receive queue.</exception>
    /// <exception cref="NotSupportedException">A segment is refused by the device's ODP quirk, as for one buffer.</exception>
    public void PostReceive(ulong workRequestId, ReadOnlySpan<LocalSegment> scatter)
    {
        if (_postLimits.HasSharedReceiveQueue)
            throw new InvalidOperationException($"{this} takes its receives from a shared receive queue: post them to the SharedReceiveQueue.");
        ReceiveWork.Post(this, _odp, _postLimits.MaxReceiveSegments, workRequestId, scatter);
    }
}
