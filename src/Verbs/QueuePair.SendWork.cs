using System.Buffers.Binary;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>What a QP was created with that posting checks requests against (QueuePairOptions).</summary>
internal readonly record struct PostLimits(int MaxSendSegments, int MaxReceiveSegments, int MaxInlineData, bool HasSharedReceiveQueue)
{
    public static PostLimits From(QueuePairOptions o) =>
        new(o.MaxSendScatterGather, o.MaxReceiveScatterGather, o.MaxInlineData, o.SharedReceiveQueue is not null);
}

// The one body under every send-queue post: the one-request methods (QueuePair.Post.cs) and SendBatch make SendWork
// values with the Make* checks below, and PostSendWork turns any number of them into one ibv_post_send.
public sealed unsafe partial class QueuePair
{
    readonly PostLimits _postLimits;

    /// <summary>Starts a batch of send-queue work requests, posted together by <see cref="SendBatch.Post"/> (one
    /// <c>ibv_post_send</c>). The batch lives on the stack; nothing is allocated. (A QP disposed meanwhile makes
    /// <see cref="SendBatch.Post"/> throw ObjectDisposedException.)</summary>
    public SendBatch StartPost() => new(this);

    // ----- the checks every request passes before it can be posted (throw before anything is posted) -----

    /// <summary>A SEND, SEND with immediate or SEND with invalidate on a connected QP (<paramref name="immediateOrKey"/>:
    /// the immediate in host order, or the rkey to invalidate).</summary>
    internal SendWork MakeSend(ulong id, ReadOnlySpan<LocalSegment> data, SendFlags flags, ibv_wr_opcode opcode, uint immediateOrKey)
    {
        if (Type == QueuePairType.UnreliableDatagram)
            throw new InvalidOperationException($"{this} is UD: a SEND needs an address (SendTo, or PostSend with an AddressHandle).");
        if (opcode == ibv_wr_opcode.IBV_WR_SEND_WITH_INV && Type != QueuePairType.ReliableConnected)
            throw new InvalidOperationException($"{this} is {Type}: SEND with invalidate needs an RC QP.");
        return new SendWork { Id = id, Opcode = opcode, Flags = flags, ImmediateOrKey = immediateOrKey, Length = Gather(data, flags, "SEND"),
            SegmentCount = (ushort)data.Length };
    }

    /// <summary>A UD SEND (with immediate when given) to <paramref name="remoteQpn"/> through <paramref name="address"/>.</summary>
    internal SendWork MakeSendTo(ulong id, ReadOnlySpan<LocalSegment> data, AddressHandle address, uint remoteQpn, uint remoteQkey, SendFlags flags, uint? immediate)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (Type != QueuePairType.UnreliableDatagram)
            throw new InvalidOperationException($"{this} is {Type}, not UD: its peer is fixed by Connect; use Send, not SendTo.");
        return new SendWork
        {
            Id = id, Opcode = immediate.HasValue ? ibv_wr_opcode.IBV_WR_SEND_WITH_IMM : ibv_wr_opcode.IBV_WR_SEND, Flags = flags,
            ImmediateOrKey = immediate ?? 0, Address = address, RemoteQpn = remoteQpn, RemoteQkey = remoteQkey, Length = Gather(data, flags, "SEND"),
            SegmentCount = (ushort)data.Length,
        };
    }

    /// <summary>An inline SEND of <paramref name="length"/> bytes (copied by the provider during the post).</summary>
    internal SendWork MakeInline(ulong id, int length, SendFlags flags, uint? immediate)
    {
        if (Type == QueuePairType.UnreliableDatagram)
            throw new InvalidOperationException($"{this} is UD: inline sends are for connected QPs here (use SendTo from a registered segment).");
        CheckInline(length);
        return new SendWork
        {
            Id = id, Opcode = immediate.HasValue ? ibv_wr_opcode.IBV_WR_SEND_WITH_IMM : ibv_wr_opcode.IBV_WR_SEND, Flags = flags | SendFlags.Inline,
            ImmediateOrKey = immediate ?? 0, IsInline = true, InlineLength = (ushort)length, Length = (uint)length,
        };
    }

    /// <summary>An RDMA WRITE (with immediate when given) or READ between <paramref name="local"/> and <paramref name="remote"/>+<paramref name="remoteOffset"/>.</summary>
    internal SendWork MakeTransfer(ulong id, ReadOnlySpan<LocalSegment> local, RemoteRegion remote, ulong remoteOffset, SendFlags flags, bool read, uint? immediate)
    {
        if (Type == QueuePairType.UnreliableDatagram || (read && Type != QueuePairType.ReliableConnected))
            throw new InvalidOperationException($"{this} is {Type}: RDMA {(read ? "READ needs an RC" : "WRITE needs a connected")} QP.");
        if (read && (flags & SendFlags.Inline) != 0)
            throw new ArgumentException("an RDMA READ cannot be inline: it brings data in", nameof(flags));
        uint length = Gather(local, flags, read ? "RDMA READ" : "RDMA WRITE");
        remote.CheckRange(remoteOffset, length);
        return new SendWork
        {
            Id = id, Flags = flags, ImmediateOrKey = immediate ?? 0, Length = length, SegmentCount = (ushort)local.Length,
            Opcode = read ? ibv_wr_opcode.IBV_WR_RDMA_READ : immediate.HasValue ? ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM : ibv_wr_opcode.IBV_WR_RDMA_WRITE,
            RemoteAddress = remote.Address + remoteOffset, RemoteKey = remote.RemoteKey, RemoteLimit = remote.MaxTransferPerRequest,
        };
    }

    /// <summary>An 8-byte compare-and-swap or fetch-and-add whose original value lands in <paramref name="result"/>.</summary>
    internal SendWork MakeAtomic(ulong id, in LocalSegment result, RemoteRegion target, ulong targetOffset, bool compareSwap, ulong compareAdd, ulong swap, SendFlags flags)
    {
        if (Type != QueuePairType.ReliableConnected)
            throw new InvalidOperationException($"{this} is {Type}: atomics need an RC QP.");
        ArgumentNullException.ThrowIfNull(result.Region, nameof(result));
        result.Region.CheckRange(result.Offset, result.Length);
        if (result.Length != 8)
            throw new ArgumentException($"an atomic's result segment is 8 bytes, not {result.Length}", nameof(result));
        if ((flags & SendFlags.Inline) != 0)
            throw new ArgumentException("an atomic cannot be inline", nameof(flags));
        target.CheckRange(targetOffset, 8);
        if (((target.Address + targetOffset) & 7) != 0)
            throw new ArgumentException($"atomics need an 8-byte aligned remote address (0x{target.Address + targetOffset:x})", nameof(targetOffset));
        return new SendWork
        {
            Id = id, Flags = flags, Length = 8, SegmentCount = 1, CompareAdd = compareAdd, Swap = swap, RemoteAddress = target.Address + targetOffset, RemoteKey = target.RemoteKey,
            Opcode = compareSwap ? ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP : ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD,
        };
    }

    /// <summary>Checks a gather/scatter list against what the QP was created with; returns the bytes it covers.</summary>
    uint Gather(ReadOnlySpan<LocalSegment> segments, SendFlags flags, string what)
    {
        if (segments.Length > _postLimits.MaxSendSegments)
            throw new ArgumentException(
                $"{what} with {segments.Length} scatter/gather entries on {this}, which was created for at most {_postLimits.MaxSendSegments} " +
                "per send request: create the QP with a larger QueuePairOptions.MaxSendScatterGather, or post fewer segments.", nameof(segments));
        ulong total = 0;
        foreach (ref readonly LocalSegment s in segments)
        {
            ArgumentNullException.ThrowIfNull(s.Region, nameof(segments));
            s.Region.CheckRange(s.Offset, s.Length);   // a segment made with `with` or its constructor skipped Slice's check
            total += s.Length;
        }
        if (total > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(segments), total, $"a {what} moves at most 2^31-1 bytes per work request");
        if ((flags & SendFlags.Inline) != 0)
            CheckInline((int)total);
        return (uint)total;
    }

    void CheckInline(int length)
    {
        if (length > _postLimits.MaxInlineData)
            throw new ArgumentException(
                $"an inline SEND of {length} bytes on {this}, which was created for at most {_postLimits.MaxInlineData} inline bytes: create the QP " +
                "with a larger QueuePairOptions.MaxInlineData (the device may refuse), or send from a registered segment.");
    }

    // ----- the post -----

    /// <summary>
    /// Posts <paramref name="work"/> in one ibv_post_send. Single-segment WRITEs and READs are split as the ODP quirk or
    /// the remote region requires (QueuePair.Post.cs, TransferLimit); other requests are one work request each, their
    /// segments in ODP regions checked like a SEND's (a message is not split). Every segment's region keeps its post
    /// reference (<see cref="MemoryRegion.EnterForPost"/>, which re-checks revocation) and every address handle its
    /// reference across the native call; everything that can be refused is refused before the first one is taken.
    /// The QP's own reference is taken here, or held already by a <see cref="QueuePairPoster"/> (<paramref name="heldQp"/>,
    /// its native pointer; 0: none).
    /// </summary>
    internal void PostSendWork(ReadOnlySpan<SendWork> work, ReadOnlySpan<LocalSegment> segments, ReadOnlySpan<byte> inlineBytes, nint heldQp = 0)
    {
        int n = work.Length;
        uint* limits = stackalloc uint[n];
        int wrCount = 0, sgeCount = 0;
        for (int i = 0; i < n && wrCount <= TransferSplit.MaxPieces; i++)
        {
            ref readonly SendWork w = ref work[i];
            // An inline send's FirstSegment indexes the inline bytes, not the segments: it owns no segment.
            ReadOnlySpan<LocalSegment> own = w.IsInline ? default : segments.Slice(w.FirstSegment, w.SegmentCount);
            if (w.IsTransfer && own.Length == 1)
            {
                limits[i] = TransferLimit(w.Opcode, own[0], w.RemoteLimit);
                int pieces = TransferSplit.Count(w.Length, limits[i]);
                wrCount += pieces;
                sgeCount += pieces;
                continue;
            }
            if (_odp is { } odp && !w.IsAtomic)
            {
                foreach (ref readonly LocalSegment s in own)
                    odp.CheckMessage(w.Name, s);
            }
            if (w.IsTransfer && w.RemoteLimit != 0 && w.Length > w.RemoteLimit)
                throw new NotSupportedException($"{this}: an {w.Name} of {own.Length} segments ({w.Length} bytes) to a remote region that takes at " +
                    $"most {w.RemoteLimit} bytes per work request (RemoteRegion.MaxTransferPerRequest; see docs/known-defects.md): a list of " +
                    "segments is not split. Post it as several requests, or one single-segment request (which is split).");
            wrCount++;
            sgeCount += Math.Max(own.Length, 1);
        }
        if (!TransferSplit.Fits(wrCount, _maxSendRequests))
        {
            throw wrCount == n
                ? new InvalidOperationException($"{n} work requests in one post on {this}, whose send queue holds {_maxSendRequests}: post fewer at a time.")
                : TransferSplit.TooMany(wrCount, _maxSendRequests, $"{this}: these {n} requests");
        }

        ibv_send_wr* wrs = stackalloc ibv_send_wr[wrCount];
        ibv_sge* sges = stackalloc ibv_sge[sgeCount];
        nint* addresses = stackalloc nint[n];
        using var regions = RegionReferences.Enter(segments);
        using var handles = AddressReferences.Enter(work, addresses);
        fixed (byte* inline = inlineBytes)
        {
            int k = 0, s = 0;
            for (int i = 0; i < n; i++)
            {
                ref readonly SendWork w = ref work[i];
                if (w.IsTransfer && w.SegmentCount == 1)
                {
                    int pieces = TransferSplit.Count(w.Length, limits[i]);
                    FillPieces(wrs + k, sges + s, pieces, limits[i], w.Id, w.Opcode, w.Flags, w.ImmediateOrKey, segments[w.FirstSegment],
                        w.RemoteAddress, w.RemoteKey);
                    k += pieces;
                    s += pieces;
                }
                else
                {
                    s += FillOne(wrs + k, sges + s, w, segments, inline, addresses[i]);
                    k++;
                }
                wrs[k - 1].next = k < wrCount ? &wrs[k] : null;
            }
        }
        using var qp = heldQp == 0 ? Handle.Enter() : default;
        ibv_send_wr* bad = null;
        int rc = RdmaLeaseNative.PostSend((ibv_qp*)(heldQp == 0 ? qp.Pointer : heldQp), wrs, &bad);
        if (rc != 0)
        {
            long at = bad >= wrs && bad < wrs + wrCount ? bad - wrs : -1;
            throw new VerbsException("ibv_post_send", wrCount == 1 ? ToString()
                : $"{this} (work request {at} of {wrCount} for {n} requests; those before it were posted)", rc, PostHint(rc));
        }
    }

    /// <summary>Builds one unsplit work request; returns the scatter/gather entries it used (zero-length segments are left out).</summary>
    internal static int FillOne(ibv_send_wr* wr, ibv_sge* sge, in SendWork w, ReadOnlySpan<LocalSegment> segments, byte* inlineBytes, nint address)
    {
        int used = 0;
        if (w.IsInline)
        {
            sge[used++] = new ibv_sge { addr = (ulong)(inlineBytes + w.FirstSegment), length = w.InlineLength, lkey = 0 };
        }
        else
        {
            foreach (ref readonly LocalSegment seg in segments.Slice(w.FirstSegment, w.SegmentCount))
            {
                if (seg.Length != 0)
                    sge[used++] = new ibv_sge { addr = seg.Address, length = seg.Length, lkey = seg.Region.LocalKey };
            }
        }
        *wr = new ibv_send_wr
        {
            wr_id = w.Id,
            sg_list = used == 0 ? null : sge,
            num_sge = used,
            opcode = w.Opcode,
            send_flags = (uint)w.Flags,
        };
        // The immediate travels in network order; the key to invalidate is a plain rkey (the same field).
        wr->imm_data = w.Opcode is ibv_wr_opcode.IBV_WR_SEND_WITH_IMM or ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM
            ? BinaryPrimitives.ReverseEndianness(w.ImmediateOrKey) : w.ImmediateOrKey;
        if (w.IsAtomic)
        {
            wr->wr.atomic.remote_addr = w.RemoteAddress;
            wr->wr.atomic.rkey = w.RemoteKey;
            wr->wr.atomic.compare_add = w.CompareAdd;
            wr->wr.atomic.swap = w.Swap;
        }
        else if (address != 0)
        {
            wr->wr.ud.ah = (ibv_ah*)address;
            wr->wr.ud.remote_qpn = w.RemoteQpn;
            wr->wr.ud.remote_qkey = w.RemoteQkey;
        }
        else
        {
            wr->wr.rdma.remote_addr = w.RemoteAddress;
            wr->wr.rdma.rkey = w.RemoteKey;
        }
        return used;
    }

    internal static string? PostHint(int errno) => errno switch
    {
        Errno.ENOMEM => "The queue is full: poll completions before posting more (or create the QP with more requests).",
        Errno.EINVAL => "The request is invalid for this QP (state, opcode, or more scatter/gather entries or inline bytes than it was created with).",
        _ => null,
    };
}
