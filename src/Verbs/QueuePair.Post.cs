using RdmaLease.Interop;

namespace RdmaLease.Verbs;

// Posting: every operation is one ibv_post_send (or one extended work request) per call.
public sealed unsafe partial class QueuePair
{
    /// <summary>Posts a SEND of <paramref name="data"/> (with immediate data when given).</summary>
    /// <exception cref="NotSupportedException"><paramref name="data"/> lies in an On-Demand-Paging region on a device whose
    /// <see cref="Device.OdpQuirk"/> allows less at this QP's path MTU, or not at that address (a message cannot be split;
    /// see docs/known-defects.md).</exception>
    public void PostSend(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        _odp?.CheckMessage("SEND", data);
        var sge = new ibv_sge { addr = data.Address, length = data.Length, lkey = data.Region.LocalKey };
        var wr = new ibv_send_wr
        {
            wr_id = workRequestId,
            sg_list = &sge,
            num_sge = data.Length == 0 ? 0 : 1,
            opcode = immediate.HasValue ? ibv_wr_opcode.IBV_WR_SEND_WITH_IMM : ibv_wr_opcode.IBV_WR_SEND,
            send_flags = (uint)flags,
        };
        if (immediate.HasValue)
            wr.imm_data = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(immediate.Value);
        Post(&wr, data.Region);
    }

    /// <summary>Posts an inline SEND: the bytes are copied into the request, no region needed.</summary>
    public void PostSendInline(ulong workRequestId, ReadOnlySpan<byte> data, SendFlags flags = SendFlags.Signaled)
    {
        fixed (byte* p = data)
        {
            var sge = new ibv_sge { addr = (ulong)p, length = (uint)data.Length, lkey = 0 };
            var wr = new ibv_send_wr
            {
                wr_id = workRequestId,
                sg_list = &sge,
                num_sge = 1,
                opcode = ibv_wr_opcode.IBV_WR_SEND,
                send_flags = (uint)(flags | SendFlags.Inline),
            };
            Post(&wr, null);
        }
    }

    /// <summary>Posts a UD SEND to <paramref name="remoteQpn"/> through <paramref name="address"/>.</summary>
    /// <exception cref="NotSupportedException">As for the RC <see cref="PostSend(ulong, LocalSegment, SendFlags, uint?)"/>.</exception>
    public void PostSend(ulong workRequestId, LocalSegment data, AddressHandle address, uint remoteQpn, uint remoteQkey, SendFlags flags = SendFlags.Signaled)
    {
        ArgumentNullException.ThrowIfNull(address);
        _odp?.CheckMessage("SEND", data);
        var sge = new ibv_sge { addr = data.Address, length = data.Length, lkey = data.Region.LocalKey };
        using var ahRef = address.HandleForChildren.Enter();
        nint ah = ahRef.Pointer;
        var wr = new ibv_send_wr
        {
            wr_id = workRequestId,
            sg_list = &sge,
            num_sge = 1,
            opcode = ibv_wr_opcode.IBV_WR_SEND,
            send_flags = (uint)flags,
        };
        wr.wr.ud.ah = (ibv_ah*)ah;
        wr.wr.ud.remote_qpn = remoteQpn;
        wr.wr.ud.remote_qkey = remoteQkey;
        Post(&wr, data.Region);
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
    {
        target.CheckRange(targetOffset, source.Length);
        PostTransfer(workRequestId, immediate.HasValue ? ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM : ibv_wr_opcode.IBV_WR_RDMA_WRITE,
            flags, immediate ?? 0, source, target.Address + targetOffset, target.RemoteKey, target.MaxTransferPerRequest);
    }

    /// <summary>Posts an RDMA READ of <paramref name="destination"/>.Length bytes from <paramref name="source"/> at <paramref name="sourceOffset"/>.</summary>
    /// <remarks>Split like <see cref="PostWrite"/> when <paramref name="destination"/> is an ODP region on a device with an
    /// ODP quirk or <paramref name="source"/> advertises a limit.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">As for <see cref="PostWrite"/>.</exception>
    /// <exception cref="NotSupportedException">As for <see cref="PostWrite"/>.</exception>
    public void PostRead(ulong workRequestId, LocalSegment destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        source.CheckRange(sourceOffset, destination.Length);
        PostTransfer(workRequestId, ibv_wr_opcode.IBV_WR_RDMA_READ, flags, 0, destination, source.Address + sourceOffset,
            source.RemoteKey, source.MaxTransferPerRequest);
    }

    void PostTransfer(ulong workRequestId, ibv_wr_opcode opcode, SendFlags flags, uint immediate, LocalSegment local,
        ulong remoteAddress, uint remoteKey, uint remoteLimit)
    {
        uint limit = TransferLimit(opcode, local, remoteLimit);
        int n = TransferSplit.Count(local.Length, limit);
        if (n > 1 && !TransferSplit.Fits(n, _maxSendRequests))
            throw TransferSplit.TooMany(n, _maxSendRequests, $"{this}: this transfer of {local.Length} bytes");
        ibv_send_wr* wrs = stackalloc ibv_send_wr[n];
        ibv_sge* sges = stackalloc ibv_sge[n];
        FillPieces(wrs, sges, n, limit, workRequestId, opcode, flags, immediate, local, remoteAddress, remoteKey);
        Post(wrs, local.Region);
    }

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
        PostAtomic(workRequestId, result, target, targetOffset, ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP, compare, swap, flags);

    /// <summary>Posts an 8-byte fetch-and-add; the original value lands in <paramref name="result"/>.</summary>
    public void PostFetchAdd(ulong workRequestId, LocalSegment result, RemoteRegion target, ulong targetOffset, ulong add, SendFlags flags = SendFlags.Signaled) =>
        PostAtomic(workRequestId, result, target, targetOffset, ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD, add, 0, flags);

    void PostAtomic(ulong workRequestId, LocalSegment result, RemoteRegion target, ulong targetOffset, ibv_wr_opcode opcode, ulong compareAdd, ulong swap, SendFlags flags)
    {
        if (result.Length != 8)
            throw new ArgumentException($"an atomic's result segment is 8 bytes, not {result.Length}", nameof(result));
        target.CheckRange(targetOffset, 8);
        if (((target.Address + targetOffset) & 7) != 0)
            throw new ArgumentException($"atomics need an 8-byte aligned remote address (0x{target.Address + targetOffset:x})", nameof(targetOffset));
        var sge = new ibv_sge { addr = result.Address, length = 8, lkey = result.Region.LocalKey };
        var wr = new ibv_send_wr
        {
            wr_id = workRequestId,
            sg_list = &sge,
            num_sge = 1,
            opcode = opcode,
            send_flags = (uint)flags,
        };
        wr.wr.atomic.remote_addr = target.Address + targetOffset;
        wr.wr.atomic.rkey = target.RemoteKey;
        wr.wr.atomic.compare_add = compareAdd;
        wr.wr.atomic.swap = swap;
        Post(&wr, result.Region);
    }

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
    public void PostReceive(ulong workRequestId, LocalSegment buffer)
    {
        _odp?.CheckMessage("receive", buffer);
        var sge = new ibv_sge { addr = buffer.Address, length = buffer.Length, lkey = buffer.Region.LocalKey };
        var wr = new ibv_recv_wr { wr_id = workRequestId, sg_list = &sge, num_sge = 1 };
        using var mr = buffer.Region.EnterForPost();
        using var qp = Handle.Enter();
        ibv_recv_wr* bad;
        int rc = RdmaLeaseNative.PostRecv((ibv_qp*)qp.Pointer, &wr, &bad);
        if (rc != 0)
            throw new VerbsException("ibv_post_recv", ToString(), rc, PostHint(rc));
    }

    /// <summary>
    /// Posts a list of send requests in one call (one P/Invoke transition for all of them).
    /// </summary>
    /// <returns>The number posted; all of them unless the provider refused one, which then throws.</returns>
    public void PostSend(ReadOnlySpan<SendRequest> requests)
    {
        if (requests.IsEmpty)
            return;
        if (requests.Length > RequestList.Capacity)
            throw new ArgumentOutOfRangeException(nameof(requests), requests.Length, $"post at most {RequestList.Capacity} requests per list");
        // One read of the caller's memory: the regions whose references are taken, the work requests built and the
        // references given back must be the same even if another thread rewrites the caller's array meanwhile.
        var copy = new RequestList();
        requests.CopyTo(copy);
        PostSendList(((ReadOnlySpan<SendRequest>)copy)[..requests.Length]);
    }

    /// <summary>Room for the largest post list, on the stack.</summary>
    [System.Runtime.CompilerServices.InlineArray(Capacity)]
    struct RequestList
    {
        public const int Capacity = 64;
        SendRequest _first;
    }

    void PostSendList(ReadOnlySpan<SendRequest> requests)
    {
        // Writes and reads are split as PostWrite/PostRead split them; SENDs are checked, not split.
        uint* limits = stackalloc uint[requests.Length];
        int total = 0;
        for (int i = 0; i < requests.Length; i++)
        {
            ref readonly SendRequest r = ref requests[i];
            if (r.IsSend)
            {
                _odp?.CheckMessage("SEND", r.Local);
                limits[i] = OdpIntegrityResult.Unlimited;
            }
            else
            {
                limits[i] = TransferLimit(r.IsRead ? ibv_wr_opcode.IBV_WR_RDMA_READ : ibv_wr_opcode.IBV_WR_RDMA_WRITE, r.Local, r.RemoteLimit);
            }
            total += TransferSplit.Count(r.Local.Length, limits[i]);
            if (total > TransferSplit.MaxPieces)
                break;
        }
        if (total > requests.Length && !TransferSplit.Fits(total, _maxSendRequests))
            throw TransferSplit.TooMany(total, _maxSendRequests, $"{this}: these {requests.Length} requests");
        ibv_send_wr* wrs = stackalloc ibv_send_wr[total];
        ibv_sge* sges = stackalloc ibv_sge[total];
        using var regions = RegionReferences.Enter(requests);
        int k = 0;
        for (int i = 0; i < requests.Length; i++)
        {
            ref readonly SendRequest r = ref requests[i];
            int n = TransferSplit.Count(r.Local.Length, limits[i]);
            if (n == 1)
            {
                sges[k] = new ibv_sge { addr = r.Local.Address, length = r.Local.Length, lkey = r.Local.Region.LocalKey };
                wrs[k] = r.ToNative(&sges[k]);
            }
            else
            {
                r.FillPieces(wrs + k, sges + k, n, limits[i]);
            }
            k += n;
            wrs[k - 1].next = k < total ? &wrs[k] : null;
        }
        using var qp = Handle.Enter();
        ibv_send_wr* bad;
        int rc = RdmaLeaseNative.PostSend((ibv_qp*)qp.Pointer, wrs, &bad);
        if (rc != 0)
            throw new VerbsException("ibv_post_send", $"{this} (work request {bad - wrs} of {total} for {requests.Length} requests)", rc, PostHint(rc));
    }

    /// <summary>
    /// The post references of every region a list of requests names, taken all at once (rolled back if one is
    /// revoked or disposed) and given back together: the list form of <see cref="MemoryRegion.EnterForPost"/>.
    /// Immutable once made, so a <c>using</c> copy gives back exactly what was taken.
    /// </summary>
    readonly ref struct RegionReferences
    {
        readonly ReadOnlySpan<SendRequest> _requests;

        RegionReferences(ReadOnlySpan<SendRequest> requests) => _requests = requests;

        public static RegionReferences Enter(ReadOnlySpan<SendRequest> requests)
        {
            int entered = 0;
            try
            {
                for (; entered < requests.Length; entered++)
                    requests[entered].Local.Region.EnterForPost();   // the reference is given back by Dispose (or below)
            }
            catch
            {
                Release(requests[..entered]);
                throw;
            }
            return new RegionReferences(requests);
        }

        public void Dispose() => Release(_requests);

        static void Release(ReadOnlySpan<SendRequest> requests)
        {
            foreach (ref readonly SendRequest r in requests)
                r.Local.Region.ExitPost();
        }
    }

    void Post(ibv_send_wr* wr, MemoryRegion? region)
    {
        using var mr = region is null ? default : region.EnterForPost();
        using var qp = Handle.Enter();
        ibv_send_wr* bad;
        int rc = RdmaLeaseNative.PostSend((ibv_qp*)qp.Pointer, wr, &bad);
        if (rc != 0)
            throw new VerbsException("ibv_post_send", ToString(), rc, PostHint(rc));
    }

    static string? PostHint(int errno) => errno switch
    {
        Errno.ENOMEM => "The queue is full: poll completions before posting more (or create the QP with more requests).",
        Errno.EINVAL => "The request is invalid for this QP (state, opcode, or more scatter/gather entries or inline bytes than it was created with).",
        _ => null,
    };
}
