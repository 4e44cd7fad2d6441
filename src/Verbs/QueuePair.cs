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
public sealed unsafe partial class QueuePair : VerbsObject
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
        Number = qp->qp_num;
        SendCompletionQueue = options.SendCompletionQueue;
        ReceiveCompletionQueue = options.ReceiveCompletionQueue;
        _qpx = qpx;
        _initialPsn = (uint)Random.Shared.Next(0, 1 << 24);
        _maxSendRequests = options.MaxSendRequests;
        _odpOff = options.WithoutOdpQuirk;
        _odp = OdpRuleAt(null);
    }

    static NativeHandle Create(ProtectionDomain pd, QueuePairOptions o, out ibv_qp* qp, out ibv_qp_ex* qpx)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (o.SendCompletionQueue.Device != pd.Device || o.ReceiveCompletionQueue.Device != pd.Device)
            throw new ArgumentException($"the completion queues must belong to {pd.Device}", nameof(o));
        NativeHandle pdHandle = pd.HandleForChildren, send = o.SendCompletionQueue.HandleForChildren,
            recv = o.ReceiveCompletionQueue.HandleForChildren;
        NativeHandle? srq = o.SharedReceiveQueue?.HandleForChildren;
        using var p = pdHandle.Enter();
        using var ctx = pd.Device.HandleForChildren.Enter();
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
        qpx = null;
        qp = null;
        if (o.Type == QueuePairType.ReliableConnected)
        {
            attr.comp_mask = InitAttrPd | InitAttrSendOpsFlags;
            attr.send_ops_flags = SendOpsForLibrary();
            qp = RdmaLeaseNative.CreateQpEx((ibv_context*)ctx.Pointer, &attr);
            if (qp != null)
                qpx = libibverbs.ibv_qp_to_qp_ex(qp);
        }
        if (qp == null)
        {
            attr.comp_mask = InitAttrPd;
            attr.send_ops_flags = 0;
            qp = RdmaLeaseNative.CreateQpEx((ibv_context*)ctx.Pointer, &attr);
        }
        if (qp == null)
            throw new VerbsException("ibv_create_qp_ex", $"{o.Type} QP in {pd}", Marshal.GetLastPInvokeError(),
                $"Asked for {o.MaxSendRequests}/{o.MaxReceiveRequests} requests, {o.MaxSendScatterGather}/{o.MaxReceiveScatterGather} SGEs, {o.MaxInlineData} inline bytes; the device allows {pd.Device.Attributes.MaxQpWr} requests and {pd.Device.Attributes.MaxSge} SGEs.");
        // The QP must be destroyed before its CQs and SRQ: they are dependencies of its handle.
        return new NativeHandle((nint)qp, &Destroy, $"QP {qp->qp_num} on {pd.Device.Name}", pdHandle, send, recv, srq);
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
        var odp = OdpRuleAt(mtu);   // before any transition: in OdpQuirkMode.Probe, a new MTU runs the probe here

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
        attr.ah_attr.sl = options.ServiceLevel;
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
        _odp = odp;
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
        _odp = OdpRuleAt(PathMtu);
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
        using var qpRef = Handle.Enter();
        nint qp = qpRef.Pointer;
        int rc = libibverbs.ibv_query_qp((ibv_qp*)qp, &attr, (int)ibv_qp_attr_mask.IBV_QP_STATE, &init);
        if (rc != 0)
            throw new VerbsException("ibv_query_qp", ToString(), rc);
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
        using var qpRef = Handle.Enter();
        nint qp = qpRef.Pointer;
        fixed (ibv_qp_attr* a = &attr)
        {
            int rc = libibverbs.ibv_modify_qp((ibv_qp*)qp, a, (int)mask);
            if (rc != 0)
                throw new VerbsException("ibv_modify_qp", $"{this} ({transition})", rc,
                    rc == Errno.EINVAL ? "An attribute is out of range for this device or the QP is not in the expected state." : null);
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Type} QP {Number} on {ProtectionDomain.Device.Name}";
}
