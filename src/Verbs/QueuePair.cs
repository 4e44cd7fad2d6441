using System.Net;
using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>How to create a <see cref="QueuePair"/>.</summary>
public sealed record QueuePairOptions
{
    /// <summary>RC (default) or UD.</summary>
    public QueuePairType Type { get; init; } = QueuePairType.ReliableConnected;
    /// <summary>Where send-side completions go.</summary>
    public required CompletionQueue SendCompletionQueue { get; init; }
    /// <summary>Where receive completions go (may be the same CQ).</summary>
    public required CompletionQueue ReceiveCompletionQueue { get; init; }
    /// <summary>A shared receive queue to take receives from, instead of the QP's own.</summary>
    public SharedReceiveQueue? SharedReceiveQueue { get; init; }
    /// <summary>Outstanding send work requests.</summary>
    public int MaxSendRequests { get; init; } = 64;
    /// <summary>Outstanding receive work requests (ignored with an SRQ).</summary>
    public int MaxReceiveRequests { get; init; } = 64;
    /// <summary>Scatter/gather entries per send request.</summary>
    public int MaxSendScatterGather { get; init; } = 1;
    /// <summary>Scatter/gather entries per receive request.</summary>
    public int MaxReceiveScatterGather { get; init; } = 1;
    /// <summary>Largest inline send in bytes (0: no inline sends).</summary>
    public int MaxInlineData { get; init; }
    /// <summary>Every send request completes with a completion, whatever its flags.</summary>
    public bool SignalAll { get; init; }
}

/// <summary>
/// A queue pair: RC (connected with <see cref="Connect"/>) or UD (made ready with
/// <see cref="ActivateDatagram"/>). Posting is allocation-free and costs one P/Invoke
/// transition per call (a post list is one call too).
/// </summary>
/// <remarks>
/// Posting from several threads at once is safe (the provider locks its queues) but the order
/// of requests between threads is then undefined. Dispose from any thread: a post in progress
/// finishes first; later posts throw ObjectDisposedException.
/// FLUSH and ATOMIC WRITE use the extended work-request API (ibv_wr_*), available when the QP was
/// created with it (<see cref="SupportsExtendedOperations"/>).
/// </remarks>
public sealed unsafe class QueuePair : VerbsObject
{
    /// <summary>The domain of the QP.</summary>
    public ProtectionDomain ProtectionDomain { get; }
    /// <summary>RC, UC or UD.</summary>
    public QueuePairType Type { get; }
    /// <summary>The QP number peers address.</summary>
    public uint Number { get; }
    /// <summary>Whether FLUSH and ATOMIC WRITE can be posted (extended API present on this QP).</summary>
    public bool SupportsExtendedOperations => _qpx != null;
    /// <summary>The path MTU set by <see cref="Connect"/> (null before).</summary>
    public Mtu? PathMtu { get; private set; }
    /// <summary>The send queue's completion queue.</summary>
    public CompletionQueue SendCompletionQueue { get; }
    /// <summary>The receive side's completion queue.</summary>
    public CompletionQueue ReceiveCompletionQueue { get; }

    readonly ibv_qp_ex* _qpx;
    readonly uint _initialPsn;

    const ulong ExtendedOps = (ulong)(ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_RDMA_WRITE | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_SEND | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_SEND_WITH_IMM
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_RDMA_READ | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_FLUSH
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_ATOMIC_WRITE);

    internal QueuePair(ProtectionDomain pd, QueuePairOptions options)
        : base(Create(pd, options, out ibv_qp* qp, out ibv_qp_ex* qpx), pd)
    {
        ProtectionDomain = pd;
        Type = options.Type;
        Number = qp->qp_num;
        SendCompletionQueue = options.SendCompletionQueue;
        ReceiveCompletionQueue = options.ReceiveCompletionQueue;
        _qpx = qpx;
        _initialPsn = (uint)Random.Shared.Next(0, 1 << 24);
    }

    static NativeHandle Create(ProtectionDomain pd, QueuePairOptions o, out ibv_qp* qp, out ibv_qp_ex* qpx)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (o.SendCompletionQueue.Device != pd.Device || o.ReceiveCompletionQueue.Device != pd.Device)
            throw new ArgumentException($"the completion queues must belong to {pd.Device}", nameof(o));
        NativeHandle pdHandle = pd.HandleForChildren, send = o.SendCompletionQueue.HandleForChildren,
            recv = o.ReceiveCompletionQueue.HandleForChildren;
        NativeHandle? srq = o.SharedReceiveQueue?.HandleForChildren;
        nint p = pdHandle.Enter();
        nint ctx = pd.Device.HandleForChildren.Enter();
        send.Enter();
        recv.Enter();
        srq?.Enter();
        try
        {
            var attr = new ibv_qp_init_attr_ex
            {
                send_cq = (ibv_cq*)send.DangerousGetHandle(),
                recv_cq = (ibv_cq*)recv.DangerousGetHandle(),
                srq = srq == null ? null : (ibv_srq*)srq.DangerousGetHandle(),
                qp_type = (ibv_qp_type)o.Type,
                sq_sig_all = o.SignalAll ? 1 : 0,
                pd = (ibv_pd*)p,
            };
            attr.cap.max_send_wr = (uint)o.MaxSendRequests;
            attr.cap.max_recv_wr = o.SharedReceiveQueue == null ? (uint)o.MaxReceiveRequests : 0;
            attr.cap.max_send_sge = (uint)o.MaxSendScatterGather;
            attr.cap.max_recv_sge = (uint)o.MaxReceiveScatterGather;
            attr.cap.max_inline_data = (uint)o.MaxInlineData;
            const uint InitAttrPd = (uint)ibv_qp_init_attr_mask.IBV_QP_INIT_ATTR_PD;
            const uint InitAttrSendOpsFlags = (uint)ibv_qp_init_attr_mask.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;

            // The extended work-request API (for FLUSH and ATOMIC WRITE) where the device has it;
            // otherwise a plain QP. UD supports only sends in the extended API.
            qpx = null;
            qp = null;
            if (o.Type == QueuePairType.ReliableConnected)
            {
                attr.comp_mask = InitAttrPd | InitAttrSendOpsFlags;
                attr.send_ops_flags = ExtendedOps;
                qp = RdmaLeaseNative.CreateQpEx((ibv_context*)ctx, &attr);
                if (qp != null)
                    qpx = libibverbs.ibv_qp_to_qp_ex(qp);
            }
            if (qp == null)
            {
                attr.comp_mask = InitAttrPd;
                attr.send_ops_flags = 0;
                qp = RdmaLeaseNative.CreateQpEx((ibv_context*)ctx, &attr);
            }
            if (qp == null)
                throw new VerbsException("ibv_create_qp_ex", $"{o.Type} QP in {pd}", Marshal.GetLastPInvokeError(),
                    $"Asked for {o.MaxSendRequests}/{o.MaxReceiveRequests} requests, {o.MaxSendScatterGather}/{o.MaxReceiveScatterGather} SGEs, {o.MaxInlineData} inline bytes; the device allows {pd.Device.Attributes.MaxQpWr} requests and {pd.Device.Attributes.MaxSge} SGEs.");
            // The QP must be destroyed before its CQs and SRQ: they are dependencies of its handle.
            return new NativeHandle((nint)qp, &Destroy, $"QP {qp->qp_num} on {pd.Device.Name}", pdHandle, send, recv, srq);
        }
        finally
        {
            srq?.Exit();
            recv.Exit();
            send.Exit();
            pd.Device.HandleForChildren.Exit();
            pdHandle.Exit();
        }
    }

    static int Destroy(nint qp) => libibverbs.ibv_destroy_qp((ibv_qp*)qp);

    /// <summary>
    /// This QP's endpoint for the peer: QP number, initial PSN, and the GID at
    /// <paramref name="gidIndex"/> (and LID) of <paramref name="port"/>.
    /// </summary>
    public QueuePairEndpoint LocalEndpoint(int gidIndex, byte port = 1)
    {
        var gid = ProtectionDomain.Device.QueryGid(port, gidIndex);
        var portAttr = ProtectionDomain.Device.QueryPort(port);
        return new QueuePairEndpoint(portAttr.Lid, Number, _initialPsn, gid.Address);
    }

    /// <summary>
    /// Moves an RC/UC QP through RESET → INIT → RTR → RTS, connected to <paramref name="remote"/>.
    /// </summary>
    /// <exception cref="VerbsException">A transition was refused; the message names which.</exception>
    public void Connect(QueuePairEndpoint remote, ConnectOptions options)
    {
        ArgumentNullException.ThrowIfNull(remote);
        ArgumentNullException.ThrowIfNull(options);
        if (Type == QueuePairType.UnreliableDatagram)
            throw new InvalidOperationException($"{this} is UD: use ActivateDatagram, and address peers per send with an AddressHandle.");
        var port = ProtectionDomain.Device.QueryPort(options.Port);
        Mtu mtu = options.PathMtu ?? port.ActiveMtu;
        if (mtu > port.ActiveMtu)
            throw new ArgumentOutOfRangeException(nameof(options), mtu, $"path MTU {mtu.Bytes()} exceeds port {options.Port}'s active MTU {port.ActiveMtu.Bytes()}");

        var attr = new ibv_qp_attr
        {
            qp_state = ibv_qp_state.IBV_QPS_INIT,
            pkey_index = 0,
            port_num = options.Port,
            qp_access_flags = (uint)(options.RemoteAccess | AccessFlags.LocalWrite),
        };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_PKEY_INDEX | ibv_qp_attr_mask.IBV_QP_PORT | ibv_qp_attr_mask.IBV_QP_ACCESS_FLAGS, "RESET->INIT");

        attr = new ibv_qp_attr
        {
            qp_state = ibv_qp_state.IBV_QPS_RTR,
            path_mtu = (ibv_mtu)mtu,
            dest_qp_num = remote.QueuePairNumber,
            rq_psn = remote.PacketSequenceNumber,
            max_dest_rd_atomic = options.MaxRdAtomic,
            min_rnr_timer = options.MinRnrTimer,
        };
        attr.ah_attr.dlid = remote.Lid;
        attr.ah_attr.port_num = options.Port;
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.sgid_index = (byte)options.GidIndex;
        attr.ah_attr.grh.hop_limit = 64;
        WriteGid(remote.Gid, ref attr.ah_attr.grh.dgid);
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_AV | ibv_qp_attr_mask.IBV_QP_PATH_MTU | ibv_qp_attr_mask.IBV_QP_DEST_QPN | ibv_qp_attr_mask.IBV_QP_RQ_PSN
            | ibv_qp_attr_mask.IBV_QP_MAX_DEST_RD_ATOMIC | ibv_qp_attr_mask.IBV_QP_MIN_RNR_TIMER, "INIT->RTR");

        attr = new ibv_qp_attr
        {
            qp_state = ibv_qp_state.IBV_QPS_RTS,
            timeout = options.Timeout,
            retry_cnt = options.RetryCount,
            rnr_retry = options.RnrRetry,
            sq_psn = _initialPsn,
            max_rd_atomic = options.MaxRdAtomic,
        };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_TIMEOUT | ibv_qp_attr_mask.IBV_QP_RETRY_CNT | ibv_qp_attr_mask.IBV_QP_RNR_RETRY | ibv_qp_attr_mask.IBV_QP_SQ_PSN
            | ibv_qp_attr_mask.IBV_QP_MAX_QP_RD_ATOMIC, "RTR->RTS");
        PathMtu = mtu;
    }

    /// <summary>Moves a UD QP to RTS, receiving datagrams sent with <paramref name="qkey"/>.</summary>
    public void ActivateDatagram(uint qkey, byte port = 1)
    {
        if (Type != QueuePairType.UnreliableDatagram)
            throw new InvalidOperationException($"{this} is {Type}: connect it with Connect.");
        var attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_INIT, pkey_index = 0, port_num = port, qkey = qkey };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_PKEY_INDEX | ibv_qp_attr_mask.IBV_QP_PORT | ibv_qp_attr_mask.IBV_QP_QKEY, "RESET->INIT");
        attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_RTR };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE, "INIT->RTR");
        attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_RTS, sq_psn = _initialPsn };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_SQ_PSN, "RTR->RTS");
        PathMtu = ProtectionDomain.Device.QueryPort(port).ActiveMtu;
    }

    /// <summary>Moves the QP to the error state: outstanding requests complete with WorkRequestFlushed.</summary>
    public void MoveToError()
    {
        var attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_ERR };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE, "->ERR");
    }

    /// <summary>The QP's current state (ibv_query_qp).</summary>
    public QueuePairState QueryState()
    {
        ibv_qp_attr attr;
        ibv_qp_init_attr init;
        nint qp = Handle.Enter();
        try
        {
            int rc = libibverbs.ibv_query_qp((ibv_qp*)qp, &attr, (int)ibv_qp_attr_mask.IBV_QP_STATE, &init);
            if (rc != 0)
                throw new VerbsException("ibv_query_qp", ToString(), rc);
        }
        finally
        {
            Handle.Exit();
        }
        return (QueuePairState)attr.qp_state;
    }

    static void WriteGid(IPAddress gid, ref ibv_gid dgid)
    {
        fixed (byte* raw = dgid.raw)
        {
            if (!gid.MapToIPv6().TryWriteBytes(new Span<byte>(raw, 16), out int n) || n != 16)
                throw new ArgumentException($"{gid} is not a GID", nameof(gid));
        }
    }

    void Modify(ref ibv_qp_attr attr, ibv_qp_attr_mask mask, string transition)
    {
        nint qp = Handle.Enter();
        try
        {
            fixed (ibv_qp_attr* a = &attr)
            {
                int rc = libibverbs.ibv_modify_qp((ibv_qp*)qp, a, (int)mask);
                if (rc != 0)
                    throw new VerbsException("ibv_modify_qp", $"{this} ({transition})", rc,
                        rc == Errno.EINVAL ? "An attribute is out of range for this device or the QP is not in the expected state." : null);
            }
        }
        finally
        {
            Handle.Exit();
        }
    }

    // ---- posting -------------------------------------------------------------------------

    /// <summary>Posts a SEND of <paramref name="data"/> (with immediate data when given).</summary>
    public void PostSend(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
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
    public void PostSend(ulong workRequestId, LocalSegment data, AddressHandle address, uint remoteQpn, uint remoteQkey, SendFlags flags = SendFlags.Signaled)
    {
        ArgumentNullException.ThrowIfNull(address);
        var sge = new ibv_sge { addr = data.Address, length = data.Length, lkey = data.Region.LocalKey };
        nint ah = address.HandleForChildren.Enter();
        try
        {
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
        finally
        {
            address.HandleForChildren.Exit();
        }
    }

    /// <summary>Posts an RDMA WRITE of <paramref name="source"/> to <paramref name="target"/> at <paramref name="targetOffset"/>.</summary>
    public void PostWrite(ulong workRequestId, LocalSegment source, RemoteRegion target, ulong targetOffset = 0,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        target.CheckRange(targetOffset, source.Length);
        var sge = new ibv_sge { addr = source.Address, length = source.Length, lkey = source.Region.LocalKey };
        var wr = new ibv_send_wr
        {
            wr_id = workRequestId,
            sg_list = &sge,
            num_sge = 1,
            opcode = immediate.HasValue ? ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM : ibv_wr_opcode.IBV_WR_RDMA_WRITE,
            send_flags = (uint)flags,
        };
        if (immediate.HasValue)
            wr.imm_data = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(immediate.Value);
        wr.wr.rdma.remote_addr = target.Address + targetOffset;
        wr.wr.rdma.rkey = target.RemoteKey;
        Post(&wr, source.Region);
    }

    /// <summary>Posts an RDMA READ of <paramref name="destination"/>.Length bytes from <paramref name="source"/> at <paramref name="sourceOffset"/>.</summary>
    public void PostRead(ulong workRequestId, LocalSegment destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        source.CheckRange(sourceOffset, destination.Length);
        var sge = new ibv_sge { addr = destination.Address, length = destination.Length, lkey = destination.Region.LocalKey };
        var wr = new ibv_send_wr
        {
            wr_id = workRequestId,
            sg_list = &sge,
            num_sge = 1,
            opcode = ibv_wr_opcode.IBV_WR_RDMA_READ,
            send_flags = (uint)flags,
        };
        wr.wr.rdma.remote_addr = source.Address + sourceOffset;
        wr.wr.rdma.rkey = source.RemoteKey;
        Post(&wr, destination.Region);
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
        ibv_qp_ex* qpx = RequireExtended("ATOMIC WRITE");
        Handle.Enter();
        try
        {
            int rc = RdmaLeaseNative.WrAtomicWrite(qpx, workRequestId, (uint)flags, target.RemoteKey, target.Address + targetOffset, &value);
            if (rc != 0)
                throw new VerbsException("ibv_wr_atomic_write", ToString(), rc);
        }
        finally
        {
            Handle.Exit();
        }
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
        ibv_qp_ex* qpx = RequireExtended("FLUSH");
        Handle.Enter();
        try
        {
            int rc = RdmaLeaseNative.WrFlush(qpx, workRequestId, (uint)flags, target.RemoteKey, target.Address + targetOffset, length, (byte)type, (byte)level);
            if (rc != 0)
                throw new VerbsException("ibv_wr_flush", ToString(), rc);
        }
        finally
        {
            Handle.Exit();
        }
    }

    ibv_qp_ex* RequireExtended(string what) => _qpx != null ? _qpx
        : throw new NotSupportedException($"{what} needs the extended work-request API, which {this} was created without (the device or libibverbs lacks it).");

    /// <summary>Posts a receive buffer.</summary>
    public void PostReceive(ulong workRequestId, LocalSegment buffer)
    {
        var sge = new ibv_sge { addr = buffer.Address, length = buffer.Length, lkey = buffer.Region.LocalKey };
        var wr = new ibv_recv_wr { wr_id = workRequestId, sg_list = &sge, num_sge = 1 };
        buffer.Region.EnterForPost();
        nint qp = Handle.Enter();
        try
        {
            ibv_recv_wr* bad;
            int rc = RdmaLeaseNative.PostRecv((ibv_qp*)qp, &wr, &bad);
            if (rc != 0)
                throw new VerbsException("ibv_post_recv", ToString(), rc, PostHint(rc));
        }
        finally
        {
            Handle.Exit();
            buffer.Region.ExitForPost();
        }
    }

    /// <summary>
    /// Posts a list of send requests in one call (one P/Invoke transition for all of them).
    /// </summary>
    /// <returns>The number posted; all of them unless the provider refused one, which then throws.</returns>
    public void PostSend(ReadOnlySpan<SendRequest> requests)
    {
        if (requests.IsEmpty)
            return;
        const int MaxList = 64;
        if (requests.Length > MaxList)
            throw new ArgumentOutOfRangeException(nameof(requests), requests.Length, $"post at most {MaxList} requests per list");
        ibv_send_wr* wrs = stackalloc ibv_send_wr[requests.Length];
        ibv_sge* sges = stackalloc ibv_sge[requests.Length];
        int entered = 0;
        try
        {
            for (int i = 0; i < requests.Length; i++)
            {
                ref readonly SendRequest r = ref requests[i];
                r.Local.Region.EnterForPost();
                entered++;
                sges[i] = new ibv_sge { addr = r.Local.Address, length = r.Local.Length, lkey = r.Local.Region.LocalKey };
                wrs[i] = r.ToNative(&sges[i]);
                wrs[i].next = i + 1 < requests.Length ? &wrs[i + 1] : null;
            }
            nint qp = Handle.Enter();
            try
            {
                ibv_send_wr* bad;
                int rc = RdmaLeaseNative.PostSend((ibv_qp*)qp, wrs, &bad);
                if (rc != 0)
                    throw new VerbsException("ibv_post_send", $"{this} (request {bad - wrs} of {requests.Length})", rc, PostHint(rc));
            }
            finally
            {
                Handle.Exit();
            }
        }
        finally
        {
            for (int i = 0; i < entered; i++)
                requests[i].Local.Region.ExitForPost();
        }
    }

    void Post(ibv_send_wr* wr, MemoryRegion? region)
    {
        region?.EnterForPost();
        nint qp = Handle.Enter();
        try
        {
            ibv_send_wr* bad;
            int rc = RdmaLeaseNative.PostSend((ibv_qp*)qp, wr, &bad);
            if (rc != 0)
                throw new VerbsException("ibv_post_send", ToString(), rc, PostHint(rc));
        }
        finally
        {
            Handle.Exit();
            region?.ExitForPost();
        }
    }

    static string? PostHint(int errno) => errno switch
    {
        Errno.ENOMEM => "The queue is full: poll completions before posting more (or create the QP with more requests).",
        Errno.EINVAL => "The request is invalid for this QP (state, opcode, or more scatter/gather entries or inline bytes than it was created with).",
        _ => null,
    };

    /// <inheritdoc/>
    public override string ToString() => $"{Type} QP {Number} on {ProtectionDomain.Device.Name}";
}

/// <summary>One entry of a send post list (<see cref="QueuePair.PostSend(ReadOnlySpan{SendRequest})"/>).</summary>
public readonly struct SendRequest
{
    internal readonly ulong WorkRequestId;
    internal readonly LocalSegment Local;
    readonly ibv_wr_opcode _opcode;
    readonly SendFlags _flags;
    readonly ulong _remoteAddress;
    readonly uint _remoteKey;

    SendRequest(ulong wrId, LocalSegment local, ibv_wr_opcode opcode, SendFlags flags, ulong remoteAddress, uint remoteKey)
    {
        WorkRequestId = wrId;
        Local = local;
        _opcode = opcode;
        _flags = flags;
        _remoteAddress = remoteAddress;
        _remoteKey = remoteKey;
    }

    /// <summary>A SEND of <paramref name="data"/>.</summary>
    public static SendRequest Send(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled) =>
        new(workRequestId, data, ibv_wr_opcode.IBV_WR_SEND, flags, 0, 0);

    /// <summary>An RDMA WRITE of <paramref name="source"/> to <paramref name="target"/>+<paramref name="targetOffset"/>.</summary>
    public static SendRequest Write(ulong workRequestId, LocalSegment source, RemoteRegion target, ulong targetOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        target.CheckRange(targetOffset, source.Length);
        return new(workRequestId, source, ibv_wr_opcode.IBV_WR_RDMA_WRITE, flags, target.Address + targetOffset, target.RemoteKey);
    }

    /// <summary>An RDMA READ into <paramref name="destination"/> from <paramref name="source"/>+<paramref name="sourceOffset"/>.</summary>
    public static SendRequest Read(ulong workRequestId, LocalSegment destination, RemoteRegion source, ulong sourceOffset = 0, SendFlags flags = SendFlags.Signaled)
    {
        source.CheckRange(sourceOffset, destination.Length);
        return new(workRequestId, destination, ibv_wr_opcode.IBV_WR_RDMA_READ, flags, source.Address + sourceOffset, source.RemoteKey);
    }

    internal unsafe ibv_send_wr ToNative(ibv_sge* sge)
    {
        var wr = new ibv_send_wr { wr_id = WorkRequestId, sg_list = sge, num_sge = 1, opcode = _opcode, send_flags = (uint)_flags };
        wr.wr.rdma.remote_addr = _remoteAddress;
        wr.wr.rdma.rkey = _remoteKey;
        return wr;
    }
}
