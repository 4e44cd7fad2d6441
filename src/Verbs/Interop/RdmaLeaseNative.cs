using System.Runtime.InteropServices;

namespace RdmaLease.Interop;

/// <summary>
/// librdmalease_verbs (native/verbs.c): exports for libibverbs' static inline verbs. Each entry
/// point forwards one verb; see native/verbs.c for the contract of each. Loaded (and its ABI version
/// checked) by <see cref="NativeLibraries"/>. All return 0 or an
/// errno value unless noted. docs/interop.md has the measured cost of each kind of call.
/// </summary>
internal static unsafe partial class RdmaLeaseNative
{
    const string Lib = NativeLibraries.VerbsShim;

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_QueryDeviceEx")]
    internal static partial int QueryDeviceEx(ibv_context* context, ibv_device_attr_ex* attr, ulong attrSize);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_QueryPort")]
    internal static partial int QueryPort(ibv_context* context, byte port, ibv_port_attr* attr, ulong attrSize);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_PostSend")]
    [SuppressGCTransition]
    internal static partial int PostSend(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** badWr);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_PostRecv")]
    [SuppressGCTransition]
    internal static partial int PostRecv(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** badWr);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_PostSrqRecv")]
    [SuppressGCTransition]
    internal static partial int PostSrqRecv(ibv_srq* srq, ibv_recv_wr* wr, ibv_recv_wr** badWr);

    /// <summary>Returns the number of completions (>= 0) or a negative value on error.</summary>
    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_PollCq")]
    [SuppressGCTransition]
    internal static partial int PollCq(ibv_cq* cq, int numEntries, ibv_wc* wc);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_ReqNotifyCq")]
    internal static partial int ReqNotifyCq(ibv_cq* cq, int solicitedOnly);

    /// <summary>Returns the QP, or null with errno set.</summary>
    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_CreateQpEx", SetLastError = true)]
    internal static partial ibv_qp* CreateQpEx(ibv_context* context, ibv_qp_init_attr_ex* attr);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_AdviseMr")]
    internal static partial int AdviseMr(ibv_pd* pd, int advice, uint flags, ibv_sge* sgList, uint numSge);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_WrPost")]
    [SuppressGCTransition]
    internal static partial int WrPost(ibv_qp_ex* qpx, ulong wrId, uint sendFlags, int opcode, uint rkey, ulong remoteAddr, uint imm, uint lkey, ulong addr, uint length);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_WrFlush")]
    [SuppressGCTransition]
    internal static partial int WrFlush(ibv_qp_ex* qpx, ulong wrId, uint sendFlags, uint rkey, ulong remoteAddr, ulong length, byte type, byte level);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_WrAtomicWrite")]
    [SuppressGCTransition]
    internal static partial int WrAtomicWrite(ibv_qp_ex* qpx, ulong wrId, uint sendFlags, uint rkey, ulong remoteAddr, ulong* value);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_WrAtomic")]
    [SuppressGCTransition]
    internal static partial int WrAtomic(ibv_qp_ex* qpx, ulong wrId, uint sendFlags, int cmpSwp, uint rkey, ulong remoteAddr, ulong compareAdd, ulong swap, uint lkey, ulong addr);

    /// <summary>Returns the window, or null with errno set.</summary>
    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_AllocMw", SetLastError = true)]
    internal static partial ibv_mw* AllocMw(ibv_pd* pd, int type);

    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_DeallocMw")]
    internal static partial int DeallocMw(ibv_mw* mw);

    /// <summary>Type 1 windows: posts the bind (length 0 unbinds); on success the provider stored the new rkey in mw->rkey.</summary>
    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_BindMw")]
    [SuppressGCTransition]
    internal static partial int BindMw(ibv_qp* qp, ibv_mw* mw, ulong wrId, uint sendFlags, ibv_mr* mr, ulong addr, ulong length, uint access);

    /// <summary>Returns the CQ, or null with errno set.</summary>
    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_CreateCqEx", SetLastError = true)]
    internal static partial ibv_cq_ex* CreateCqEx(ibv_context* context, ibv_cq_init_attr_ex* attr);

    /// <summary>Extended CQ (start/next/end poll) into ibv_wc: the number of completions (>= 0) or a negative errno.</summary>
    [LibraryImport(Lib, EntryPoint = "RdmaLeaseNative_PollCqEx")]
    [SuppressGCTransition]
    internal static partial int PollCqEx(ibv_cq_ex* cq, int numEntries, ibv_wc* wc);
}
