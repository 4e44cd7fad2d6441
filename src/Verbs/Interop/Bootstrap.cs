using System.Runtime.InteropServices;

namespace RdmaLease.Interop;

/// <summary>
/// The few raw verbs the foundation needs to enumerate devices, declared by hand with
/// layouts taken from rdma-core 56's verbs.h. Replaced by the generated bindings
/// (src/Verbs/Interop/Generated) once they exist.
/// </summary>
internal static unsafe partial class Bootstrap
{
    [LibraryImport("libibverbs.so.1", SetLastError = true)] internal static partial nint* ibv_get_device_list(out int num);
    [LibraryImport("libibverbs.so.1")] internal static partial void ibv_free_device_list(nint* list);
    [LibraryImport("libibverbs.so.1")] internal static partial nint ibv_get_device_name(nint device);
    [LibraryImport("libibverbs.so.1", SetLastError = true)] internal static partial nint ibv_open_device(nint device);
    [LibraryImport("libibverbs.so.1")] internal static partial int ibv_close_device(nint context);
    [LibraryImport("rdmalease_native")] internal static partial int RdmaLeaseNative_QueryDeviceEx(nint context, byte* attr, ulong size);

    internal const int SizeofDeviceAttrEx = 400;       // sizeof(struct ibv_device_attr_ex)
    internal const int OffsetofFwVer = 0;              // orig_attr.fw_ver (char[64])
    internal const int OffsetofPhysPortCnt = 227;      // orig_attr.phys_port_cnt (u8)
    internal const int OffsetofOdpCaps = 240;          // odp_caps (u64 general, u32 rc, uc, ud)
}
