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
    readonly int _maxSendRequests;
    // The ODP transfer limit at this QP's path MTU (docs/known-defects.md), -1 until looked up.
    long _odpLimit = -1;

    /// <summary>
    /// Test and probe hook: when set, the transfer limit of every post, whatever the regions (Unlimited turns the
    /// ODP protection off: transfers are not split and receives and SENDs are not refused).
    /// </summary>
    internal uint? OdpLimitOverride { get; set; }

    /// <summary>Turns the ODP integrity protection off for this QP, so a test can show the corruption it prevents.</summary>
    internal bool UnsafeOdpProtectionOff
    {
        get => OdpLimitOverride == OdpIntegrityResult.Unlimited;
        set => OdpLimitOverride = value ? OdpIntegrityResult.Unlimited : null;
    }

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
        _maxSendRequests = options.MaxSendRequests;
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
            qp_access_flags = (uint)((options.RemoteAccess ?? DefaultRemoteAccess(ProtectionDomain.Device)) | AccessFlags.LocalWrite),
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
        Volatile.Write(ref _odpLimit, -1);
    }

    static AccessFlags DefaultRemoteAccess(Device device) =>
        AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic
        | (device.Attributes.FlushGlobal ? AccessFlags.FlushGlobal : 0)
        | (device.Attributes.FlushPersistent ? AccessFlags.FlushPersistent : 0);

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
        Volatile.Write(ref _odpLimit, -1);
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
    /// <exception cref="NotSupportedException"><paramref name="data"/> lies in an On-Demand-Paging region on a device
    /// whose ODP data path is only safe up to a smaller size at this QP's path MTU (a message cannot be split; see
    /// docs/known-defects.md).</exception>
    public void PostSend(ulong workRequestId, LocalSegment data, SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        CheckMessage("SEND", data);
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
        CheckMessage("SEND", data);
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
    /// <remarks>
    /// When <paramref name="source"/> is an On-Demand-Paging region on a device whose ODP data path is unsafe for
    /// multi-packet transfers at this QP's path MTU, or <paramref name="target"/> advertises a
    /// <see cref="RemoteRegion.MaxTransferPerRequest"/>, the write is posted as a linked list of work requests of at
    /// most that size, in one call: only the last carries <paramref name="flags"/>' Signaled and Solicited and the
    /// immediate data, all carry <paramref name="workRequestId"/> (an error on an earlier, unsignaled piece still
    /// completes, with that id, and the rest flush). On a QP created with SignalAll every piece completes.
    /// See docs/known-defects.md.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">The split would take more work requests than one post may (the
    /// send queue's depth, at most 256).</exception>
    /// <exception cref="NotSupportedException">The device's ODP data path is unsafe even for single packets.</exception>
    public void PostWrite(ulong workRequestId, LocalSegment source, RemoteRegion target, ulong targetOffset = 0,
        SendFlags flags = SendFlags.Signaled, uint? immediate = null)
    {
        target.CheckRange(targetOffset, source.Length);
        PostTransfer(workRequestId, immediate.HasValue ? ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM : ibv_wr_opcode.IBV_WR_RDMA_WRITE,
            flags, immediate ?? 0, source, target.Address + targetOffset, target.RemoteKey, target.MaxTransferPerRequest);
    }

    /// <summary>Posts an RDMA READ of <paramref name="destination"/>.Length bytes from <paramref name="source"/> at <paramref name="sourceOffset"/>.</summary>
    /// <remarks>Split like <see cref="PostWrite"/> when <paramref name="destination"/> is an ODP region on an unsafe
    /// device or <paramref name="source"/> advertises a limit.</remarks>
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
        uint limit = TransferLimit(opcode == ibv_wr_opcode.IBV_WR_RDMA_READ ? "RDMA READ" : "RDMA WRITE", local, remoteLimit);
        int n = TransferSplit.Count(local.Length, limit);
        CheckPieceCount(n, local.Length, limit);
        ibv_send_wr* wrs = stackalloc ibv_send_wr[n];
        ibv_sge* sges = stackalloc ibv_sge[n];
        FillPieces(wrs, sges, n, limit, workRequestId, opcode, flags, immediate, local, remoteAddress, remoteKey);
        Post(wrs, local.Region);
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

    // ---- ODP integrity protection (docs/known-defects.md) ------------------------------------

    /// <summary>
    /// The largest transfer one work request may move for <paramref name="local"/> and a remote limit (a remote
    /// region's 0: none); throws when an ODP transfer cannot be made safe by splitting.
    /// </summary>
    uint TransferLimit(string what, LocalSegment local, uint remoteLimit)
    {
        if (OdpLimitOverride is uint forced)
            return forced;
        uint limit = remoteLimit == 0 ? OdpIntegrityResult.Unlimited : remoteLimit;
        if (!local.Region.IsOnDemand)
            return limit;
        var rule = OdpRule();
        if (rule.IsSound)
            return limit;
        if (rule.MaxTransfer == 0)
            throw OdpUnsafe(what, local, rule, "found that not even single-packet transfers into and out of ODP memory arrive intact.", "Use a pinned region on this device.");
        CheckAlignment(what, local, rule);
        limit = Math.Min(limit, rule.MaxTransfer);
        if (local.Length > limit && limit % rule.Alignment != 0)
            throw OdpUnsafe(what, local, rule,
                $"found transfers into and out of ODP memory correct only up to {rule.MaxTransfer} bytes per work request and only from {rule.Alignment}-byte aligned addresses.",
                $"Split at {limit} bytes, the pieces after the first would start inside a page and land at the page's start: move at most {limit} bytes per call to an aligned address, or use a pinned region.");
        return limit;
    }

    /// <summary>This QP's ODP rule, looked up once (the first lookup may run the probe).</summary>
    OdpRule OdpRule()
    {
        long known = Volatile.Read(ref _odpLimit);
        if (known >= 0)
            return new OdpRule((uint)known, (uint)(known >> 32));
        Mtu mtu = PathMtu ?? ProtectionDomain.Device.QueryPort(1).ActiveMtu;
        var rule = ProtectionDomain.Device.OdpTransferRule(mtu);
        if (PathMtu != null)
            Volatile.Write(ref _odpLimit, (long)rule.Alignment << 32 | rule.MaxTransfer);
        return rule;
    }

    void CheckAlignment(string what, LocalSegment segment, OdpRule rule)
    {
        if (rule.Alignment > 1 && segment.Address % rule.Alignment != 0)
            throw OdpUnsafe(what, segment, rule,
                $"found that transfers into and out of ODP memory are only correct from {rule.Alignment}-byte aligned addresses (the device drops the in-page offset: the data lands at, or comes from, the page's start).",
                $"This one starts {segment.Address % rule.Alignment} bytes into a page: use an aligned offset or a pinned region.");
    }

    /// <summary>A message (SEND, receive) cannot be split: refuse one in an ODP region that is larger than is safe or misaligned.</summary>
    void CheckMessage(string what, LocalSegment segment)
    {
        if (!segment.Region.IsOnDemand)
            return;
        OdpRule rule;
        if (OdpLimitOverride is uint forced)
            rule = new OdpRule(forced, 1);
        else
            rule = OdpRule();
        if (rule.IsSound)
            return;
        if (rule.MaxTransfer == 0)
            throw OdpUnsafe(what, segment, rule, "found that not even single-packet transfers into and out of ODP memory arrive intact.", "Use a pinned region on this device.");
        CheckAlignment(what, segment, rule);
        if (segment.Length > rule.MaxTransfer)
            throw OdpUnsafe(what, segment, rule,
                $"found transfers into and out of ODP memory safe only up to {rule.MaxTransfer} bytes per work request.",
                what == "receive"
                    ? $"A receive buffer in an ODP region there may hold at most {rule.MaxTransfer} bytes (one packet); receive into a pinned region instead."
                    : $"A SEND is one message and cannot be split: send at most {rule.MaxTransfer} bytes from an ODP region there, or send from a pinned region.");
    }

    NotSupportedException OdpUnsafe(string what, LocalSegment segment, OdpRule rule, string found, string advice)
    {
        _ = rule;
        string mtu = PathMtu is { } m ? m.Bytes().ToString(System.Globalization.CultureInfo.InvariantCulture) : "(the port's active MTU)";
        return new NotSupportedException(
            $"{what} of {segment.Length} bytes in {segment.Region}: an On-Demand-Paging region on {ProtectionDomain.Device.Name}, where the ODP " +
            $"integrity probe at path MTU {mtu} {found} (rxe misplaces transfers that touch ODP memory; see docs/known-defects.md) {advice}");
    }

    void CheckPieceCount(int n, ulong length, uint limit)
    {
        if (n <= 1)
            return;
        int max = Math.Min(TransferSplit.MaxPieces, _maxSendRequests);
        if (n > max)
            throw new ArgumentOutOfRangeException(nameof(length), length,
                $"{this}: this transfer must be split into {n} work requests of at most {limit} bytes (an ODP region on a device with the " +
                $"multi-packet defect, or the remote region's MaxTransferPerRequest; see docs/known-defects.md), more than one post may take " +
                $"({max}: the send queue holds {_maxSendRequests}, a split at most {TransferSplit.MaxPieces}). Post at most {(ulong)max * limit} bytes per call.");
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
        ibv_qp_ex* qpx = RequireExtended("ATOMIC WRITE", "ibv_wr_atomic_write");
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
        ibv_qp_ex* qpx = RequireExtended("FLUSH", "ibv_wr_flush");
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

    ibv_qp_ex* RequireExtended(string what, string entryPoint)
    {
        if (_qpx == null)
            throw new NotSupportedException($"{what} needs the extended work-request API, which {this} was created without (the device or libibverbs lacks it).");
        // Its slot sits past the end of an older libibverbs' struct ibv_qp_ex: check the library once per entry point.
        if (entryPoint == "ibv_wr_flush" ? !s_flushChecked : !s_atomicWriteChecked)
        {
            NativeLibraries.RequireIbVerbs(entryPoint);
            if (entryPoint == "ibv_wr_flush") s_flushChecked = true; else s_atomicWriteChecked = true;
        }
        return _qpx;
    }

    static bool s_flushChecked, s_atomicWriteChecked;

    /// <summary>Posts a receive buffer.</summary>
    /// <exception cref="NotSupportedException"><paramref name="buffer"/> lies in an On-Demand-Paging region on a device
    /// whose ODP data path is unsafe for multi-packet transfers at this QP's path MTU, and is larger than the safe size
    /// (one packet): a message arriving there could be misplaced (see docs/known-defects.md).</exception>
    public void PostReceive(ulong workRequestId, LocalSegment buffer)
    {
        CheckMessage("receive", buffer);
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
        // Writes and reads are split as PostWrite/PostRead split them; SENDs are checked, not split.
        uint* limits = stackalloc uint[requests.Length];
        int total = 0;
        for (int i = 0; i < requests.Length; i++)
        {
            ref readonly SendRequest r = ref requests[i];
            if (r.IsSend)
            {
                CheckMessage("SEND", r.Local);
                limits[i] = OdpIntegrityResult.Unlimited;
            }
            else
            {
                limits[i] = TransferLimit(r.IsRead ? "RDMA READ" : "RDMA WRITE", r.Local, r.RemoteLimit);
            }
            total += TransferSplit.Count(r.Local.Length, limits[i]);
            if (total > TransferSplit.MaxPieces)
                break;
        }
        int maxPieces = Math.Min(TransferSplit.MaxPieces, _maxSendRequests);
        if (total > maxPieces && total > requests.Length)
            throw new ArgumentOutOfRangeException(nameof(requests), requests.Length,
                $"{this}: these {requests.Length} requests must be split into {(total > TransferSplit.MaxPieces ? "more than " + TransferSplit.MaxPieces : total)} work requests " +
                $"(ODP regions on a device with the multi-packet defect, or remote regions' MaxTransferPerRequest; see docs/known-defects.md), more than one post " +
                $"may take ({maxPieces}: the send queue holds {_maxSendRequests}, a split at most {TransferSplit.MaxPieces}). Post fewer or smaller transfers per call.");
        ibv_send_wr* wrs = stackalloc ibv_send_wr[total];
        ibv_sge* sges = stackalloc ibv_sge[total];
        int entered = 0;
        try
        {
            int k = 0;
            for (int i = 0; i < requests.Length; i++)
            {
                ref readonly SendRequest r = ref requests[i];
                r.Local.Region.EnterForPost();
                entered++;
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
            nint qp = Handle.Enter();
            try
            {
                ibv_send_wr* bad;
                int rc = RdmaLeaseNative.PostSend((ibv_qp*)qp, wrs, &bad);
                if (rc != 0)
                    throw new VerbsException("ibv_post_send", $"{this} (work request {bad - wrs} of {total} for {requests.Length} requests)", rc, PostHint(rc));
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
