using System.Net;
using System.Runtime.InteropServices;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>On-Demand-Paging support (ibv_odp_caps).</summary>
/// <param name="Supported">IBV_ODP_SUPPORT: ODP memory regions can be registered.</param>
/// <param name="Implicit">IBV_ODP_SUPPORT_IMPLICIT: one region may cover the whole address space.</param>
/// <param name="Rc">What ODP supports on RC queue pairs.</param>
/// <param name="Uc">The same on UC.</param>
/// <param name="Ud">The same on UD.</param>
public readonly record struct OdpCapabilities(bool Supported, bool Implicit, OdpTransportCaps Rc, OdpTransportCaps Uc, OdpTransportCaps Ud);

/// <summary>A device's attributes (ibv_device_attr_ex), as far as rdma-lease uses them.</summary>
public sealed record DeviceAttributes
{
    /// <summary>Firmware version string (empty for soft devices).</summary>
    public required string FirmwareVersion { get; init; }
    /// <summary>Node GUID, host order.</summary>
    public required ulong NodeGuid { get; init; }
    /// <summary>Number of physical ports.</summary>
    public required int PortCount { get; init; }
    /// <summary>Largest memory region in bytes.</summary>
    public required ulong MaxMrSize { get; init; }
    /// <summary>Maximum number of QPs.</summary>
    public required int MaxQp { get; init; }
    /// <summary>Maximum outstanding work requests per queue.</summary>
    public required int MaxQpWr { get; init; }
    /// <summary>Maximum scatter/gather entries per work request.</summary>
    public required int MaxSge { get; init; }
    /// <summary>Maximum number of CQs.</summary>
    public required int MaxCq { get; init; }
    /// <summary>Maximum entries per CQ.</summary>
    public required int MaxCqe { get; init; }
    /// <summary>Maximum number of memory regions.</summary>
    public required int MaxMr { get; init; }
    /// <summary>Maximum outstanding RDMA READs/atomics a QP may have as initiator.</summary>
    public required int MaxQpRdAtomic { get; init; }
    /// <summary>Maximum number of SRQs.</summary>
    public required int MaxSrq { get; init; }
    /// <summary>Atomic support: 0 none, 1 within this HCA, 2 global (ibv_atomic_cap).</summary>
    public required int AtomicCapability { get; init; }
    /// <summary>On-Demand-Paging support.</summary>
    public required OdpCapabilities Odp { get; init; }
    /// <summary>The device executes FLUSH for global visibility (IB_UVERBS_DEVICE_FLUSH_GLOBAL).</summary>
    public required bool FlushGlobal { get; init; }
    /// <summary>The device executes FLUSH to persistence (IB_UVERBS_DEVICE_FLUSH_PERSISTENT).</summary>
    public required bool FlushPersistent { get; init; }
    /// <summary>The device executes ATOMIC WRITE (IB_UVERBS_DEVICE_ATOMIC_WRITE).</summary>
    public required bool AtomicWrite { get; init; }
    /// <summary>Maximum number of memory windows (0 without memory windows).</summary>
    public required int MaxMw { get; init; }
    /// <summary>Which memory window types the device supports (IBV_DEVICE_MEM_WINDOW*).</summary>
    public required MemoryWindowCapabilities MemoryWindows { get; init; }

    const uint DeviceMemWindow = (uint)ibv_device_cap_flags.IBV_DEVICE_MEM_WINDOW,
        DeviceMemWindowType2A = (uint)ibv_device_cap_flags.IBV_DEVICE_MEM_WINDOW_TYPE_2A,
        DeviceMemWindowType2B = (uint)ibv_device_cap_flags.IBV_DEVICE_MEM_WINDOW_TYPE_2B;
    const ulong DeviceFlushGlobal = 1UL << 38, DeviceFlushPersistent = 1UL << 39, DeviceAtomicWrite = 1UL << 40;

    internal static unsafe DeviceAttributes From(in ibv_device_attr_ex a)
    {
        ref readonly ibv_device_attr o = ref a.orig_attr;
        string fw;
        fixed (sbyte* p = o.fw_ver)
            fw = Marshal.PtrToStringUTF8((nint)p) ?? "";
        return new DeviceAttributes
        {
            FirmwareVersion = fw,
            NodeGuid = (ulong)IPAddress.NetworkToHostOrder((long)o.node_guid),
            PortCount = o.phys_port_cnt,
            MaxMrSize = o.max_mr_size,
            MaxQp = o.max_qp,
            MaxQpWr = o.max_qp_wr,
            MaxSge = o.max_sge,
            MaxCq = o.max_cq,
            MaxCqe = o.max_cqe,
            MaxMr = o.max_mr,
            MaxQpRdAtomic = o.max_qp_rd_atom,
            MaxSrq = o.max_srq,
            AtomicCapability = (int)o.atomic_cap,
            Odp = new OdpCapabilities(
                (a.odp_caps.general_caps & 1) != 0,
                (a.odp_caps.general_caps & 2) != 0,
                (OdpTransportCaps)a.odp_caps.per_transport_caps.rc_odp_caps,
                (OdpTransportCaps)a.odp_caps.per_transport_caps.uc_odp_caps,
                (OdpTransportCaps)a.odp_caps.per_transport_caps.ud_odp_caps),
            FlushGlobal = (a.device_cap_flags_ex & DeviceFlushGlobal) != 0,
            FlushPersistent = (a.device_cap_flags_ex & DeviceFlushPersistent) != 0,
            AtomicWrite = (a.device_cap_flags_ex & DeviceAtomicWrite) != 0,
            MaxMw = o.max_mw,
            MemoryWindows = ((o.device_cap_flags & DeviceMemWindow) != 0 ? MemoryWindowCapabilities.Type1 : 0)
                | ((o.device_cap_flags & DeviceMemWindowType2A) != 0 ? MemoryWindowCapabilities.Type2A : 0)
                | ((o.device_cap_flags & DeviceMemWindowType2B) != 0 ? MemoryWindowCapabilities.Type2B : 0),
        };
    }
}

/// <summary>A port's attributes (ibv_port_attr).</summary>
/// <param name="Port">Port number (from 1).</param>
/// <param name="State">Logical state; <see cref="PortState.Active"/> when usable.</param>
/// <param name="MaxMtu">Largest MTU the port supports.</param>
/// <param name="ActiveMtu">The MTU in use (for RoCE: from the netdev's MTU).</param>
/// <param name="GidTableLength">Entries in the GID table.</param>
/// <param name="Lid">Local identifier (0 on RoCE).</param>
/// <param name="LinkLayer">InfiniBand or Ethernet (RoCE).</param>
/// <param name="MaxMessageSize">Largest message in bytes.</param>
/// <param name="PartitionKeyTableLength">Entries in the P_Key table (<see cref="ConnectOptions.PartitionKeyIndex"/> is below it).</param>
public readonly record struct PortAttributes(byte Port, PortState State, Mtu MaxMtu, Mtu ActiveMtu, int GidTableLength,
    ushort Lid, LinkLayer LinkLayer, uint MaxMessageSize, ushort PartitionKeyTableLength)
{
    internal static PortAttributes From(byte port, in ibv_port_attr a) => new(port, (PortState)a.state, (Mtu)a.max_mtu,
        (Mtu)a.active_mtu, a.gid_tbl_len, a.lid, (LinkLayer)a.link_layer, a.max_msg_sz, a.pkey_tbl_len);
}

/// <summary>One GID table entry (ibv_gid_entry).</summary>
/// <param name="Port">Port number.</param>
/// <param name="Index">GID index, as given to <see cref="ConnectOptions.GidIndex"/>.</param>
/// <param name="Type">InfiniBand, RoCE v1 or v2.</param>
/// <param name="Address">The GID as an IPv6 address (IPv4-mapped for an IPv4 interface).</param>
/// <param name="NetdevIfIndex">The interface index of the network device (RoCE), 0 if none.</param>
public sealed record GidEntry(byte Port, int Index, GidType Type, IPAddress Address, int NetdevIfIndex)
{
    /// <summary>The IPv4 address for an IPv4-mapped GID, else null.</summary>
    public IPAddress? IPv4 => Address.IsIPv4MappedToIPv6 ? Address.MapToIPv4() : null;

    internal static unsafe GidEntry From(ibv_gid_entry e) =>
        new((byte)e.port_num, (int)e.gid_index, (GidType)e.gid_type, new IPAddress(new ReadOnlySpan<byte>(e.gid.raw, 16)), (int)e.ndev_ifindex);
}

/// <summary>An asynchronous device event.</summary>
/// <param name="Type">What happened.</param>
/// <param name="Port">For port events, the port number; else 0.</param>
/// <param name="QueuePairNumber">For QP events, the QP number; else 0.</param>
public readonly record struct AsyncEvent(AsyncEventType Type, int Port, uint QueuePairNumber);
