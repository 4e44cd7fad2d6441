using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>
/// One send-queue work request, checked and in managed form: what <see cref="SendBatch"/> stores and the one-request
/// methods of <see cref="QueuePair"/> build on the stack. It holds no pointers: its segments are
/// [<see cref="FirstSegment"/>, +<see cref="SegmentCount"/>) of a segment list beside it (inline bytes: of an inline
/// byte list), so copying the list it lives in cannot make it point at stale memory; the native
/// <c>ibv_send_wr</c> is built only inside the post (QueuePair.PostSendWork).
/// </summary>
internal struct SendWork
{
    public ulong Id;
    public ibv_wr_opcode Opcode;
    public SendFlags Flags;
    /// <summary>The immediate data (already in network order) or the rkey to invalidate: one field of ibv_send_wr.</summary>
    public uint ImmediateOrKey;
    public ulong RemoteAddress;
    public uint RemoteKey;
    /// <summary>The remote region's <see cref="RemoteRegion.MaxTransferPerRequest"/> (0: none).</summary>
    public uint RemoteLimit;
    public ulong CompareAdd, Swap;
    /// <summary>UD only: the path, the remote QPN and Q_Key.</summary>
    public AddressHandle? Address;
    public uint RemoteQpn, RemoteQkey;
    public ushort FirstSegment, SegmentCount;
    /// <summary>Inline sends: the bytes are [FirstSegment, +InlineLength) of the inline byte list (SegmentCount is 0).</summary>
    public bool IsInline;
    public ushort InlineLength;
    /// <summary>Bytes the request moves (sum of its segments, or its inline bytes).</summary>
    public uint Length;

    public readonly bool IsTransfer => Opcode is ibv_wr_opcode.IBV_WR_RDMA_WRITE or ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM or ibv_wr_opcode.IBV_WR_RDMA_READ;

    public readonly bool IsAtomic => Opcode is ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP or ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD;

    public readonly string Name => Opcode switch
    {
        ibv_wr_opcode.IBV_WR_RDMA_WRITE or ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM => "RDMA WRITE",
        ibv_wr_opcode.IBV_WR_RDMA_READ => "RDMA READ",
        ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP => "COMPARE AND SWAP",
        ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD => "FETCH AND ADD",
        _ => "SEND",
    };
}
