namespace RdmaLease.Verbs;

/// <summary>What a memory region or QP lets local and remote peers do (ibv_access_flags).</summary>
[Flags]
public enum AccessFlags
{
    /// <summary>Only local reads.</summary>
    None = 0,
    /// <summary>IBV_ACCESS_LOCAL_WRITE: the HCA may write (receives, RDMA READ results). Required with RemoteWrite/RemoteAtomic.</summary>
    LocalWrite = 1,
    /// <summary>IBV_ACCESS_REMOTE_WRITE: peers may RDMA WRITE into the region.</summary>
    RemoteWrite = 1 << 1,
    /// <summary>IBV_ACCESS_REMOTE_READ: peers may RDMA READ from the region.</summary>
    RemoteRead = 1 << 2,
    /// <summary>IBV_ACCESS_REMOTE_ATOMIC: peers may run atomics (and ATOMIC WRITE) on the region.</summary>
    RemoteAtomic = 1 << 3,
    /// <summary>IBV_ACCESS_MW_BIND.</summary>
    MemoryWindowBind = 1 << 4,
    /// <summary>IBV_ACCESS_ZERO_BASED: remote addresses are offsets from the region's start.</summary>
    ZeroBased = 1 << 5,
    /// <summary>IBV_ACCESS_ON_DEMAND: an On-Demand-Paging region; pages are faulted in, never pinned.</summary>
    OnDemand = 1 << 6,
    /// <summary>IBV_ACCESS_HUGETLB.</summary>
    HugeTlb = 1 << 7,
    /// <summary>IBV_ACCESS_FLUSH_GLOBAL: peers may FLUSH the region for global visibility.</summary>
    FlushGlobal = 1 << 8,
    /// <summary>IBV_ACCESS_FLUSH_PERSISTENT: peers may FLUSH the region to persistence (pmem only).</summary>
    FlushPersistent = 1 << 9,
    /// <summary>IBV_ACCESS_RELAXED_ORDERING (optional: ignored where unsupported).</summary>
    RelaxedOrdering = 1 << 20,
}

/// <summary>Memory window type (ibv_mw_type).</summary>
public enum MemoryWindowType
{
    /// <summary>IBV_MW_TYPE_1: bound with a bind call (ibv_bind_mw), usable through any QP of its protection domain;
    /// unbound by binding it again with length 0. Cannot be invalidated with an invalidate work request.</summary>
    Type1 = 1,
    /// <summary>IBV_MW_TYPE_2: bound with a bind work request on one QP and usable only through that QP; revoked by a
    /// local invalidate or a peer's SEND with invalidate.</summary>
    Type2 = 2,
}

/// <summary>Memory window types a device supports (the IBV_DEVICE_MEM_WINDOW* capability bits).</summary>
[Flags]
public enum MemoryWindowCapabilities
{
    /// <summary>No memory windows.</summary>
    None = 0,
    /// <summary>IBV_DEVICE_MEM_WINDOW: type 1 windows.</summary>
    Type1 = 1 << 0,
    /// <summary>IBV_DEVICE_MEM_WINDOW_TYPE_2A: type 2A windows (bound to a QP number).</summary>
    Type2A = 1 << 1,
    /// <summary>IBV_DEVICE_MEM_WINDOW_TYPE_2B: type 2B windows (bound to a QP number and its PD).</summary>
    Type2B = 1 << 2,
}

/// <summary>ODP support per transport (ibv_odp_transport_cap_bits, plus the kernel's FLUSH and ATOMIC WRITE bits).</summary>
[Flags]
public enum OdpTransportCaps : uint
{
    /// <summary>No ODP for this transport.</summary>
    None = 0,
    /// <summary>SEND from an ODP region.</summary>
    Send = 1 << 0,
    /// <summary>Receive into an ODP region.</summary>
    Receive = 1 << 1,
    /// <summary>RDMA WRITE targeting an ODP region.</summary>
    Write = 1 << 2,
    /// <summary>RDMA READ from an ODP region.</summary>
    Read = 1 << 3,
    /// <summary>Atomics on an ODP region.</summary>
    Atomic = 1 << 4,
    /// <summary>SRQ receive into an ODP region.</summary>
    SrqReceive = 1 << 5,
    /// <summary>FLUSH on an ODP region (kernel IB_ODP_SUPPORT_FLUSH; verbs.h 56 has no name for it).</summary>
    Flush = 1 << 6,
    /// <summary>ATOMIC WRITE on an ODP region (kernel IB_ODP_SUPPORT_ATOMIC_WRITE).</summary>
    AtomicWrite = 1 << 7,
}

/// <summary>Path MTU (ibv_mtu).</summary>
public enum Mtu
{
    /// <summary>256 bytes.</summary>
    Mtu256 = 1,
    /// <summary>512 bytes.</summary>
    Mtu512 = 2,
    /// <summary>1024 bytes.</summary>
    Mtu1024 = 3,
    /// <summary>2048 bytes.</summary>
    Mtu2048 = 4,
    /// <summary>4096 bytes.</summary>
    Mtu4096 = 5,
}

/// <summary>Helpers for <see cref="Mtu"/>.</summary>
public static class MtuExtensions
{
    /// <summary>The MTU in bytes.</summary>
    public static int Bytes(this Mtu mtu) => mtu is >= Mtu.Mtu256 and <= Mtu.Mtu4096
        ? 128 << (int)mtu
        : throw new ArgumentOutOfRangeException(nameof(mtu), mtu, "not an ibv_mtu value (1..5)");

    /// <summary>The <see cref="Mtu"/> of a byte count (256, 512, 1024, 2048 or 4096).</summary>
    public static Mtu FromBytes(int bytes) => bytes switch
    {
        256 => Mtu.Mtu256, 512 => Mtu.Mtu512, 1024 => Mtu.Mtu1024, 2048 => Mtu.Mtu2048, 4096 => Mtu.Mtu4096,
        _ => throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "a path MTU is 256, 512, 1024, 2048 or 4096 bytes"),
    };
}

/// <summary>Logical port state (ibv_port_state).</summary>
public enum PortState
{
    /// <summary>IBV_PORT_NOP.</summary>
    Nop = 0,
    /// <summary>IBV_PORT_DOWN.</summary>
    Down = 1,
    /// <summary>IBV_PORT_INIT.</summary>
    Init = 2,
    /// <summary>IBV_PORT_ARMED.</summary>
    Armed = 3,
    /// <summary>IBV_PORT_ACTIVE: usable.</summary>
    Active = 4,
    /// <summary>IBV_PORT_ACTIVE_DEFER.</summary>
    ActiveDefer = 5,
}

/// <summary>The link layer of a port.</summary>
public enum LinkLayer
{
    /// <summary>IBV_LINK_LAYER_UNSPECIFIED (treated as InfiniBand).</summary>
    Unspecified = 0,
    /// <summary>IBV_LINK_LAYER_INFINIBAND.</summary>
    InfiniBand = 1,
    /// <summary>IBV_LINK_LAYER_ETHERNET: RoCE (rxe is this).</summary>
    Ethernet = 2,
}

/// <summary>GID type (ibv_gid_type).</summary>
public enum GidType
{
    /// <summary>IBV_GID_TYPE_IB.</summary>
    InfiniBand = 0,
    /// <summary>IBV_GID_TYPE_ROCE_V1.</summary>
    RoceV1 = 1,
    /// <summary>IBV_GID_TYPE_ROCE_V2 (routable, UDP).</summary>
    RoceV2 = 2,
}

/// <summary>Queue pair transport.</summary>
public enum QueuePairType
{
    /// <summary>IBV_QPT_RC: reliable connected; every operation.</summary>
    ReliableConnected = 2,
    /// <summary>IBV_QPT_UC: unreliable connected.</summary>
    UnreliableConnected = 3,
    /// <summary>IBV_QPT_UD: unreliable datagram; SEND/RECV only, via address handles.</summary>
    UnreliableDatagram = 4,
}

/// <summary>Queue pair state (ibv_qp_state).</summary>
public enum QueuePairState
{
    /// <summary>IBV_QPS_RESET.</summary>
    Reset = 0,
    /// <summary>IBV_QPS_INIT.</summary>
    Init = 1,
    /// <summary>IBV_QPS_RTR: ready to receive.</summary>
    ReadyToReceive = 2,
    /// <summary>IBV_QPS_RTS: ready to send.</summary>
    ReadyToSend = 3,
    /// <summary>IBV_QPS_SQD.</summary>
    SendQueueDrained = 4,
    /// <summary>IBV_QPS_SQE.</summary>
    SendQueueError = 5,
    /// <summary>IBV_QPS_ERR.</summary>
    Error = 6,
}

/// <summary>Flags of a send work request (ibv_send_flags).</summary>
[Flags]
public enum SendFlags
{
    /// <summary>Unsignaled: no completion unless it fails (on QPs created without SignalAll).</summary>
    None = 0,
    /// <summary>IBV_SEND_FENCE: wait for earlier RDMA READs and atomics.</summary>
    Fence = 1 << 0,
    /// <summary>IBV_SEND_SIGNALED: generate a completion.</summary>
    Signaled = 1 << 1,
    /// <summary>IBV_SEND_SOLICITED.</summary>
    Solicited = 1 << 2,
    /// <summary>IBV_SEND_INLINE: copy the data into the work request; no lkey needed.</summary>
    Inline = 1 << 3,
}

/// <summary>Where a FLUSH makes data durable or visible (ibv_placement_type).</summary>
[Flags]
public enum FlushType : byte
{
    /// <summary>IBV_FLUSH_GLOBAL: globally visible.</summary>
    Global = 1,
    /// <summary>IBV_FLUSH_PERSISTENT: persistent (pmem).</summary>
    Persistent = 2,
}

/// <summary>What a FLUSH covers (ibv_selectivity_level).</summary>
public enum FlushLevel : byte
{
    /// <summary>IBV_FLUSH_RANGE: the given range.</summary>
    Range = 0,
    /// <summary>IBV_FLUSH_MR: the whole memory region.</summary>
    MemoryRegion = 1,
}

/// <summary>Completion status (ibv_wc_status).</summary>
public enum WorkCompletionStatus
{
    /// <summary>IBV_WC_SUCCESS.</summary>
    Success = 0,
    /// <summary>IBV_WC_LOC_LEN_ERR.</summary>
    LocalLengthError,
    /// <summary>IBV_WC_LOC_QP_OP_ERR.</summary>
    LocalQpOperationError,
    /// <summary>IBV_WC_LOC_EEC_OP_ERR.</summary>
    LocalEecOperationError,
    /// <summary>IBV_WC_LOC_PROT_ERR.</summary>
    LocalProtectionError,
    /// <summary>IBV_WC_WR_FLUSH_ERR: the QP went to the error state; outstanding requests are flushed.</summary>
    WorkRequestFlushed,
    /// <summary>IBV_WC_MW_BIND_ERR.</summary>
    MemoryWindowBindError,
    /// <summary>IBV_WC_BAD_RESP_ERR.</summary>
    BadResponse,
    /// <summary>IBV_WC_LOC_ACCESS_ERR.</summary>
    LocalAccessError,
    /// <summary>IBV_WC_REM_INV_REQ_ERR.</summary>
    RemoteInvalidRequest,
    /// <summary>IBV_WC_REM_ACCESS_ERR: bad rkey, out of bounds, or access not granted.</summary>
    RemoteAccessError,
    /// <summary>IBV_WC_REM_OP_ERR.</summary>
    RemoteOperationError,
    /// <summary>IBV_WC_RETRY_EXC_ERR: the peer did not answer.</summary>
    RetryExceeded,
    /// <summary>IBV_WC_RNR_RETRY_EXC_ERR: the peer had no receive posted.</summary>
    ReceiverNotReadyRetryExceeded,
    /// <summary>IBV_WC_LOC_RDD_VIOL_ERR.</summary>
    LocalRddViolation,
    /// <summary>IBV_WC_REM_INV_RD_REQ_ERR.</summary>
    RemoteInvalidRdRequest,
    /// <summary>IBV_WC_REM_ABORT_ERR.</summary>
    RemoteAborted,
    /// <summary>IBV_WC_INV_EECN_ERR.</summary>
    InvalidEecn,
    /// <summary>IBV_WC_INV_EEC_STATE_ERR.</summary>
    InvalidEecState,
    /// <summary>IBV_WC_FATAL_ERR.</summary>
    Fatal,
    /// <summary>IBV_WC_RESP_TIMEOUT_ERR.</summary>
    ResponseTimeout,
    /// <summary>IBV_WC_GENERAL_ERR.</summary>
    GeneralError,
}

/// <summary>What completed (ibv_wc_opcode).</summary>
public enum WorkCompletionOpcode
{
    /// <summary>IBV_WC_SEND.</summary>
    Send = 0,
    /// <summary>IBV_WC_RDMA_WRITE.</summary>
    RdmaWrite = 1,
    /// <summary>IBV_WC_RDMA_READ.</summary>
    RdmaRead = 2,
    /// <summary>IBV_WC_COMP_SWAP.</summary>
    CompareSwap = 3,
    /// <summary>IBV_WC_FETCH_ADD.</summary>
    FetchAdd = 4,
    /// <summary>IBV_WC_BIND_MW.</summary>
    BindMemoryWindow = 5,
    /// <summary>IBV_WC_LOCAL_INV.</summary>
    LocalInvalidate = 6,
    /// <summary>IBV_WC_TSO.</summary>
    Tso = 7,
    /// <summary>IBV_WC_FLUSH.</summary>
    Flush = 8,
    /// <summary>IBV_WC_ATOMIC_WRITE.</summary>
    AtomicWrite = 9,
    /// <summary>IBV_WC_RECV: a receive completed.</summary>
    Receive = 1 << 7,
    /// <summary>IBV_WC_RECV_RDMA_WITH_IMM: an RDMA WRITE with immediate consumed a receive.</summary>
    ReceiveRdmaWithImmediate = (1 << 7) + 1,
}

/// <summary>Asynchronous device event (ibv_event_type).</summary>
public enum AsyncEventType
{
    /// <summary>IBV_EVENT_CQ_ERR.</summary>
    CqError,
    /// <summary>IBV_EVENT_QP_FATAL.</summary>
    QpFatal,
    /// <summary>IBV_EVENT_QP_REQ_ERR.</summary>
    QpRequestError,
    /// <summary>IBV_EVENT_QP_ACCESS_ERR.</summary>
    QpAccessError,
    /// <summary>IBV_EVENT_COMM_EST.</summary>
    CommunicationEstablished,
    /// <summary>IBV_EVENT_SQ_DRAINED.</summary>
    SendQueueDrained,
    /// <summary>IBV_EVENT_PATH_MIG.</summary>
    PathMigrated,
    /// <summary>IBV_EVENT_PATH_MIG_ERR.</summary>
    PathMigrationError,
    /// <summary>IBV_EVENT_DEVICE_FATAL.</summary>
    DeviceFatal,
    /// <summary>IBV_EVENT_PORT_ACTIVE.</summary>
    PortActive,
    /// <summary>IBV_EVENT_PORT_ERR.</summary>
    PortError,
    /// <summary>IBV_EVENT_LID_CHANGE.</summary>
    LidChange,
    /// <summary>IBV_EVENT_PKEY_CHANGE.</summary>
    PkeyChange,
    /// <summary>IBV_EVENT_SM_CHANGE.</summary>
    SmChange,
    /// <summary>IBV_EVENT_SRQ_ERR.</summary>
    SrqError,
    /// <summary>IBV_EVENT_SRQ_LIMIT_REACHED.</summary>
    SrqLimitReached,
    /// <summary>IBV_EVENT_QP_LAST_WQE_REACHED.</summary>
    QpLastWqeReached,
    /// <summary>IBV_EVENT_CLIENT_REREGISTER.</summary>
    ClientReregister,
    /// <summary>IBV_EVENT_GID_CHANGE.</summary>
    GidChange,
    /// <summary>IBV_EVENT_WQ_FATAL.</summary>
    WqFatal,
}
