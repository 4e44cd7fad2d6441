using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>One entry of a send post list (<see cref="QueuePair.PostSend(ReadOnlySpan{SendRequest})"/>).</summary>
public readonly struct SendRequest
{
    internal readonly ulong WorkRequestId;
    internal readonly LocalSegment Local;
    readonly ibv_wr_opcode _opcode;
    readonly SendFlags _flags;
    readonly ulong _remoteAddress;
    readonly uint _remoteKey;
    internal readonly uint RemoteLimit;

    SendRequest(ulong wrId, LocalSegment local, ibv_wr_opcode opcode, SendFlags flags, ulong remoteAddress, uint remoteKey, uint remoteLimit)
    {
        WorkRequestId = wrId;
        Local = local;
        _opcode = opcode;
        _flags = flags;
        _remoteAddress = remoteAddress;
        _remoteKey = remoteKey;
        RemoteLimit = remoteLimit;
    }

    internal bool IsSend => _opcode == ibv_wr_opcode.IBV_WR_SEND;
    internal bool IsRead => _opcode == ibv_wr_opcode.IBV_WR_RDMA_READ;

    /// <summary>A SEND of <paramref name="data"/>.</summary>
    public static SendRequest Send(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled) =>
        new(workRequestId, data, ibv_wr_opcode.IBV_WR_SEND, flags, 0, 0, 0);

    /// <summary>An RDMA WRITE of <paramref name="source"/> to <paramref name="target"/>+<paramref name="targetOffset"/>.</summary>
    public static SendRequest Write(ulong workRequestId, LocalSegment source, RemoteRegion target, ulong targetOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        target.CheckRange(targetOffset, source.Length);
        return new(workRequestId, source, ibv_wr_opcode.IBV_WR_RDMA_WRITE, flags, target.Address + targetOffset, target.RemoteKey, target.MaxTransferPerRequest);
    }

    /// <summary>An RDMA READ into <paramref name="destination"/> from <paramref name="source"/>+<paramref name="sourceOffset"/>.</summary>
    public static SendRequest Read(ulong workRequestId, LocalSegment destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        source.CheckRange(sourceOffset, destination.Length);
        return new(workRequestId, destination, ibv_wr_opcode.IBV_WR_RDMA_READ, flags, source.Address + sourceOffset, source.RemoteKey, source.MaxTransferPerRequest);
    }

    internal unsafe ibv_send_wr ToNative(ibv_sge* sge)
    {
        var wr = new ibv_send_wr { wr_id = WorkRequestId, sg_list = sge, num_sge = 1, opcode = _opcode, send_flags = (uint)_flags };
        wr.wr.rdma.remote_addr = _remoteAddress;
        wr.wr.rdma.rkey = _remoteKey;
        return wr;
    }

    internal unsafe void FillPieces(ibv_send_wr* wrs, ibv_sge* sges, int n, uint limit) =>
        QueuePair.FillPieces(wrs, sges, n, limit, WorkRequestId, _opcode, _flags, 0, Local, _remoteAddress, _remoteKey);
}
