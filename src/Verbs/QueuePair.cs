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
    /// <summary>The ODP integrity probe's queue pairs: the device's <see cref="OdpQuirk"/> does not apply to them.</summary>
    internal bool WithoutOdpQuirk { get; init; }
}

/// <summary>
/// A queue pair: RC (connected with <see cref="Connect"/>) or UD (made ready with
/// <see cref="MoveToReadyToSend"/>). Posting is allocation-free and costs one P/Invoke
/// transition per call (a post list is one call too).
/// </summary>
/// <remarks>
/// Posting from several threads at once is safe (the provider locks its queues) but the order
/// of requests between threads is then undefined. Dispose from any thread: a post in progress
/// finishes first; later posts throw ObjectDisposedException.
/// FLUSH and ATOMIC WRITE use the extended work-request API (ibv_wr_*), available when the QP was
/// created with it (<see cref="SupportsExtendedOperations"/>).
/// </remarks>
public sealed unsafe partial class QueuePair : VerbsObject
{
    /// <summary>The domain of the QP.</summary>
    public ProtectionDomain ProtectionDomain { get; }
    /// <summary>RC, UC or UD.</summary>
    public QueuePairType Type { get; }
    /// <summary>The QP number peers address.</summary>
    public uint QueuePairNumber { get; }
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
    // The device's ODP quirk at this QP's path MTU (Quirks/OdpQuirk.cs; before Connect, the ports' strictest), null when
    // there is none or it allows everything: all the post path does about ODP on other devices is test this field.
    OdpRule? _odp;
    bool _odpOff;

    /// <summary>Turns the device's ODP quirk off for this QP, so a test can show the corruption it prevents.</summary>
    internal bool UnsafeOdpProtectionOff
    {
        get => _odpOff;
        set
        {
            _odpOff = value;
            _odp = OdpRuleAt(PathMtu);
        }
    }

    /// <summary>The device's ODP quirk's rule at <paramref name="pathMtu"/> (null: the ports' strictest), unless this QP is without it.</summary>
    OdpRule? OdpRuleAt(Mtu? pathMtu)
    {
        OdpQuirk? quirk = _odpOff ? null : ProtectionDomain.Device.OdpQuirk;
        return quirk is null ? null : pathMtu is { } mtu ? quirk.RuleAt(mtu) : quirk.RuleForPeers();
    }

    const ulong ExtendedOps = (ulong)(ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_RDMA_WRITE | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_SEND | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_SEND_WITH_IMM
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_RDMA_READ | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_FLUSH
        | ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_ATOMIC_WRITE);

    // FLUSH and ATOMIC WRITE use slots an older libibverbs' struct ibv_qp_ex lacks: a property of the
    // loaded library, decided once per process. Where it lacks them, QPs are created without those ops.
    static readonly Lazy<bool> s_libraryHasFlush = new(() => LibraryHas("ibv_wr_flush"));
    static readonly Lazy<bool> s_libraryHasAtomicWrite = new(() => LibraryHas("ibv_wr_atomic_write"));

    static bool LibraryHas(string entryPoint)
    {
        try
        {
            NativeLibraries.RequireIbVerbs(entryPoint);
            return true;
        }
        catch (NotSupportedException)
        {
            return false;
        }
    }

    static ulong SendOpsForLibrary() => ExtendedOps
        & ~(s_libraryHasFlush.Value ? 0 : (ulong)ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_FLUSH)
        & ~(s_libraryHasAtomicWrite.Value ? 0 : (ulong)ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_ATOMIC_WRITE);

    internal QueuePair(ProtectionDomain pd, QueuePairOptions options)
        : base(Create(pd, options, out ibv_qp* qp, out ibv_qp_ex* qpx), pd)
    {
        ProtectionDomain = pd;
        Type = options.Type;
        QueuePairNumber = qp->qp_num;
        SendCompletionQueue = options.SendCompletionQueue;
        ReceiveCompletionQueue = options.ReceiveCompletionQueue;
        _qpx = qpx;
        _initialPsn = (uint)Random.Shared.Next(0, 1 << 24);
        _maxSendRequests = options.MaxSendRequests;
        _postLimits = PostLimits.From(options);
        _odpOff = options.WithoutOdpQuirk;
        _odp = OdpRuleAt(null);
        Interlocked.Increment(ref SendCompletionQueue.SendQueueUsers);
    }

    private protected override void OnDisposing() => Interlocked.Decrement(ref SendCompletionQueue.SendQueueUsers);

    static NativeHandle Create(ProtectionDomain pd, QueuePairOptions o, out ibv_qp* qp, out ibv_qp_ex* qpx)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (o.SendCompletionQueue.Device != pd.Device || o.ReceiveCompletionQueue.Device != pd.Device)
            throw new ArgumentException($"the completion queues must belong to {pd.Device}", nameof(o));
        NativeHandle pdHandle = pd.HandleForChildren, send = o.SendCompletionQueue.HandleForChildren,
            recv = o.ReceiveCompletionQueue.HandleForChildren;
        NativeHandle? srq = o.SharedReceiveQueue?.HandleForChildren;
        using var p = pdHandle.Enter();
        using var sendRef = send.Enter();
        using var recvRef = recv.Enter();
        using var srqRef = srq is null ? default : srq.Enter();
        var attr = new ibv_qp_init_attr_ex
        {
            send_cq = (ibv_cq*)sendRef.Pointer,
            recv_cq = (ibv_cq*)recvRef.Pointer,
            srq = srq == null ? null : (ibv_srq*)srqRef.Pointer,
            qp_type = (ibv_qp_type)o.Type,
            sq_sig_all = o.SignalAll ? 1 : 0,
            pd = (ibv_pd*)p.Pointer,
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
        attr.comp_mask = o.Type == QueuePairType.ReliableConnected ? InitAttrPd | InitAttrSendOpsFlags : InitAttrPd;
        attr.send_ops_flags = o.Type == QueuePairType.ReliableConnected ? SendOpsForLibrary() : 0;
        // The QP must be destroyed before its CQs and SRQ: they are dependencies of its handle.
        var handle = NativeCalls.Create(pd.Device.HandleForChildren, (nint)(&attr), static (ctx, a) =>
            {
                var init = (ibv_qp_init_attr_ex*)a;
                ibv_qp* created = RdmaLeaseNative.CreateQpEx((ibv_context*)ctx, init);
                if (created == null && (init->comp_mask & InitAttrSendOpsFlags) != 0)
                {
                    init->comp_mask = InitAttrPd;   // the plain QP; comp_mask then says which one was made
                    init->send_ops_flags = 0;
                    created = RdmaLeaseNative.CreateQpEx((ibv_context*)ctx, init);
                }
                return (nint)created;
            }, &Destroy, "ibv_create_qp_ex", $"{o.Type} QP in {pd}", $"{o.Type} QP on {pd.Device.Name}",
            _ => $"Asked for {o.MaxSendRequests}/{o.MaxReceiveRequests} requests, {o.MaxSendScatterGather}/{o.MaxReceiveScatterGather} SGEs, {o.MaxInlineData} inline bytes; the device allows {pd.Device.Attributes.MaxQpWr} requests and {pd.Device.Attributes.MaxSge} SGEs.",
            onFailure: null, pdHandle, send, recv, srq);
        qp = (ibv_qp*)handle.DangerousGetHandle();
        qpx = (attr.comp_mask & InitAttrSendOpsFlags) != 0 ? libibverbs.ibv_qp_to_qp_ex(qp) : null;
        handle.Rename($"QP {qp->qp_num} on {pd.Device.Name}");
        return handle;
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
        return new QueuePairEndpoint(portAttr.Lid, QueuePairNumber, _initialPsn, gid.Address);
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
            throw new InvalidOperationException($"{this} is UD: use MoveToReadyToSend, and address peers per send with an AddressHandle.");
        // The device keeps only 24 bits of each: a wider QP number would silently connect to another QP.
        if (remote.QueuePairNumber > 0xffffff || remote.PacketSequenceNumber > 0xffffff)
            throw new ArgumentException($"{remote}: a QP number and a PSN are 24 bits", nameof(remote));
        var port = ProtectionDomain.Device.QueryPort(options.Port);
        Mtu mtu = options.PathMtu ?? port.ActiveMtu;
        if (mtu > port.ActiveMtu)
            throw new ArgumentOutOfRangeException(nameof(options), mtu, $"path MTU {mtu.Bytes()} exceeds port {options.Port}'s active MTU {port.ActiveMtu.Bytes()}");
        CheckPath(options, port);
        var odp = OdpRuleAt(mtu);   // before any transition: in OdpQuirkMode.Probe, a new MTU runs the probe here

        var attr = new ibv_qp_attr
        {
            qp_state = ibv_qp_state.IBV_QPS_INIT,
            pkey_index = options.PartitionKeyIndex,
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
        attr.ah_attr.sl = options.ServiceLevel;
        attr.ah_attr.grh.sgid_index = (byte)options.GidIndex;
        attr.ah_attr.grh.hop_limit = options.HopLimit;
        attr.ah_attr.grh.traffic_class = options.TrafficClass;
        attr.ah_attr.grh.flow_label = options.FlowLabel;
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
        _odp = odp;
    }

    const AccessFlags RemoteOperations = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic
        | AccessFlags.FlushGlobal | AccessFlags.FlushPersistent;

    static void CheckPath(ConnectOptions options, PortAttributes port)
    {
        // rxe accepts any P_Key index at RESET->INIT (kernel 7.3): checked here, against the port's table.
        if (options.PartitionKeyIndex >= port.PartitionKeyTableLength)
            throw new ArgumentOutOfRangeException(nameof(options), options.PartitionKeyIndex,
                $"ConnectOptions.PartitionKeyIndex: port {port.Port} has {port.PartitionKeyTableLength} P_Key table entries");
        if ((options.RemoteAccess & ~RemoteOperations) != 0)
            throw new ArgumentException($"ConnectOptions.RemoteAccess {options.RemoteAccess}: a QP grants only {RemoteOperations} (local access is the region's).", nameof(options));
        if (options.ServiceLevel > 15)
            throw new ArgumentOutOfRangeException(nameof(options), options.ServiceLevel, "ConnectOptions.ServiceLevel is 4 bits (0..15)");
        if (options.FlowLabel > 0xfffff)
            throw new ArgumentOutOfRangeException(nameof(options), options.FlowLabel, "ConnectOptions.FlowLabel is 20 bits (0..0xfffff)");
    }

    /// <summary>
    /// Changes the operations the peer may direct at this connected QP (ibv_modify_qp RTS→RTS with the access flags,
    /// which the kernel allows in RTS): grant RDMA WRITE/READ when the peer needs them, take them back when it no
    /// longer does. The path (service level, traffic class, flow label, hop limit, P_Key index, MTU) is fixed once the
    /// QP is connected: the kernel refuses to change it in RTS; set it with <see cref="ConnectOptions"/>.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="remoteAccess"/> holds more than remote operations.</exception>
    /// <exception cref="InvalidOperationException">The QP is not RC/UC or not in RTS.</exception>
    public void ChangeRemoteAccess(AccessFlags remoteAccess)
    {
        if ((remoteAccess & ~RemoteOperations) != 0)
            throw new ArgumentException($"{remoteAccess}: a QP grants only {RemoteOperations}.", nameof(remoteAccess));
        if (Type == QueuePairType.UnreliableDatagram)
            throw new InvalidOperationException($"{this} is UD: peers cannot direct RDMA operations at it.");
        if (QueryState() is var state and not QueuePairState.ReadyToSend)
            throw new InvalidOperationException($"{this} is {state}: its remote access changes in RTS (connect it first).");
        var attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_RTS, qp_access_flags = (uint)(remoteAccess | AccessFlags.LocalWrite) };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_ACCESS_FLAGS, "RTS->RTS access");
    }

    /// <summary>
    /// Moves a UD QP through RESET → INIT → RTR → RTS (verbs' states), receiving datagrams sent with
    /// <paramref name="qkey"/>. RC/UC QPs get there with <see cref="Connect"/>.
    /// </summary>
    public void MoveToReadyToSend(uint qkey, byte port = 1)
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
        _odp = OdpRuleAt(PathMtu);
    }

    /// <summary>Moves the QP to the error state: outstanding requests complete with WorkRequestFlushed.</summary>
    public void MoveToError()
    {
        var attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_ERR };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE, "->ERR");
    }

    /// <summary>The QP's current state (ibv_query_qp).</summary>
    public QueuePairState QueryState() => (QueuePairState)QueryNative(ibv_qp_attr_mask.IBV_QP_STATE).qp_state;

    /// <summary>The QP's attributes as the kernel reports them (ibv_query_qp): state, path, retries, access, PSNs.</summary>
    public QueuePairAttributes Query()
    {
        const ibv_qp_attr_mask All = ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_PATH_MTU | ibv_qp_attr_mask.IBV_QP_AV
            | ibv_qp_attr_mask.IBV_QP_PKEY_INDEX | ibv_qp_attr_mask.IBV_QP_PORT | ibv_qp_attr_mask.IBV_QP_TIMEOUT | ibv_qp_attr_mask.IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask.IBV_QP_RNR_RETRY | ibv_qp_attr_mask.IBV_QP_MIN_RNR_TIMER | ibv_qp_attr_mask.IBV_QP_MAX_QP_RD_ATOMIC
            | ibv_qp_attr_mask.IBV_QP_MAX_DEST_RD_ATOMIC | ibv_qp_attr_mask.IBV_QP_ACCESS_FLAGS | ibv_qp_attr_mask.IBV_QP_DEST_QPN
            | ibv_qp_attr_mask.IBV_QP_SQ_PSN | ibv_qp_attr_mask.IBV_QP_RQ_PSN | ibv_qp_attr_mask.IBV_QP_QKEY;
        var a = QueryNative(All);
        return new QueuePairAttributes
        {
            State = (QueuePairState)a.qp_state,
            PathMtu = (Mtu)a.path_mtu,
            ServiceLevel = a.ah_attr.sl,
            TrafficClass = a.ah_attr.grh.traffic_class,
            FlowLabel = a.ah_attr.grh.flow_label,
            HopLimit = a.ah_attr.grh.hop_limit,
            PartitionKeyIndex = a.pkey_index,
            Port = a.port_num,
            GidIndex = a.ah_attr.grh.sgid_index,
            Timeout = a.timeout,
            RetryCount = a.retry_cnt,
            RnrRetry = a.rnr_retry,
            MinRnrTimer = a.min_rnr_timer,
            MaxRdAtomic = a.max_rd_atomic,
            MaxDestRdAtomic = a.max_dest_rd_atomic,
            Access = (AccessFlags)a.qp_access_flags,
            DestinationQueuePairNumber = a.dest_qp_num,
            SendPacketSequenceNumber = a.sq_psn,
            ReceivePacketSequenceNumber = a.rq_psn,
            QKey = a.qkey,
        };
    }

    struct QpQuery
    {
        public ibv_qp_attr_mask Mask;
        public ibv_qp_attr Attr;
        public ibv_qp_init_attr Init;
    }

    ibv_qp_attr QueryNative(ibv_qp_attr_mask mask)
    {
        var q = new QpQuery { Mask = mask };
        NativeCalls.Call(Handle, (nint)(&q), static (qp, a) =>
            {
                var q = (QpQuery*)a;
                return libibverbs.ibv_query_qp((ibv_qp*)qp, &q->Attr, (int)q->Mask, &q->Init);
            }, "ibv_query_qp", this);
        return q.Attr;
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
        var m = new QpQuery { Mask = mask, Attr = attr };
        NativeCalls.Call(Handle, (nint)(&m), static (qp, a) => libibverbs.ibv_modify_qp((ibv_qp*)qp, &((QpQuery*)a)->Attr, (int)((QpQuery*)a)->Mask),
            "ibv_modify_qp", $"{this} ({transition})",
            rc => rc == Errno.EINVAL ? "An attribute is out of range for this device or the QP is not in the expected state." : null);
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Type} QP {QueuePairNumber} on {ProtectionDomain.Device.Name}";
}
