using System.Runtime.InteropServices;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>On-Demand-Paging capabilities of a device (ibv_odp_caps).</summary>
/// <param name="General">ibv_odp_general_caps bits (bit 0: ODP supported).</param>
/// <param name="Rc">ibv_odp_transport_cap_bits for RC queue pairs.</param>
/// <param name="Uc">The same for UC.</param>
/// <param name="Ud">The same for UD.</param>
public readonly record struct OdpCaps(ulong General, uint Rc, uint Uc, uint Ud)
{
    /// <summary>Whether the device supports ODP memory regions at all.</summary>
    public bool Supported => (General & 1) != 0;
}

/// <summary>A snapshot of one verbs device's identity and capabilities.</summary>
public sealed record DeviceInfo(string Name, string FirmwareVersion, int PortCount, OdpCaps Odp)
{
    /// <summary>Opens every verbs device on this machine and reads its attributes.</summary>
    /// <exception cref="InvalidOperationException">libibverbs failed to list or open a device.</exception>
    public static unsafe IReadOnlyList<DeviceInfo> ListAll()
    {
        nint* list = Bootstrap.ibv_get_device_list(out int n);
        if (list == null)
            throw new InvalidOperationException($"ibv_get_device_list failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        try
        {
            var result = new List<DeviceInfo>(n);
            byte* attr = stackalloc byte[Bootstrap.SizeofDeviceAttrEx];
            for (int i = 0; i < n; i++)
            {
                string name = Marshal.PtrToStringUTF8(Bootstrap.ibv_get_device_name(list[i]))!;
                nint ctx = Bootstrap.ibv_open_device(list[i]);
                if (ctx == 0)
                    throw new InvalidOperationException($"ibv_open_device({name}) failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
                try
                {
                    int rc = Bootstrap.RdmaLeaseNative_QueryDeviceEx(ctx, attr, Bootstrap.SizeofDeviceAttrEx);
                    if (rc != 0)
                        throw new InvalidOperationException($"ibv_query_device_ex({name}) failed: {Marshal.GetPInvokeErrorMessage(rc)}");
                    byte* odp = attr + Bootstrap.OffsetofOdpCaps;
                    result.Add(new DeviceInfo(
                        name,
                        Marshal.PtrToStringUTF8((nint)(attr + Bootstrap.OffsetofFwVer)) ?? "",
                        attr[Bootstrap.OffsetofPhysPortCnt],
                        new OdpCaps(*(ulong*)odp, *(uint*)(odp + 8), *(uint*)(odp + 12), *(uint*)(odp + 16))));
                }
                finally
                {
                    _ = Bootstrap.ibv_close_device(ctx);
                }
            }
            return result;
        }
        finally
        {
            Bootstrap.ibv_free_device_list(list);
        }
    }
}
