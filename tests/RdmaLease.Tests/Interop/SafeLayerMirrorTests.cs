using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Interop;

/// <summary>
/// The safe layer's .NET-named enums and <see cref="WorkCompletion"/> mirror C values and
/// layouts. The generated bindings are checked against the C headers (LayoutConformanceTests);
/// these check the safe layer against the generated bindings, member by member.
/// </summary>
public class SafeLayerMirrorTests
{
    static IEnumerable<TestCaseData> Mirrors()
    {
        // (safe enum, generated enum, prefix of the C names, explicit C name per safe name where not derivable)
        yield return Case<AccessFlags, ibv_access_flags>(new()
        {
            [AccessFlags.LocalWrite] = "IBV_ACCESS_LOCAL_WRITE", [AccessFlags.RemoteWrite] = "IBV_ACCESS_REMOTE_WRITE",
            [AccessFlags.RemoteRead] = "IBV_ACCESS_REMOTE_READ", [AccessFlags.RemoteAtomic] = "IBV_ACCESS_REMOTE_ATOMIC",
            [AccessFlags.MemoryWindowBind] = "IBV_ACCESS_MW_BIND", [AccessFlags.ZeroBased] = "IBV_ACCESS_ZERO_BASED",
            [AccessFlags.OnDemand] = "IBV_ACCESS_ON_DEMAND", [AccessFlags.HugeTlb] = "IBV_ACCESS_HUGETLB",
            [AccessFlags.FlushGlobal] = "IBV_ACCESS_FLUSH_GLOBAL", [AccessFlags.FlushPersistent] = "IBV_ACCESS_FLUSH_PERSISTENT",
            [AccessFlags.RelaxedOrdering] = "IBV_ACCESS_RELAXED_ORDERING",
        });
        yield return Case<SendFlags, ibv_send_flags>(new()
        {
            [SendFlags.Fence] = "IBV_SEND_FENCE", [SendFlags.Signaled] = "IBV_SEND_SIGNALED",
            [SendFlags.Solicited] = "IBV_SEND_SOLICITED", [SendFlags.Inline] = "IBV_SEND_INLINE",
        });
        yield return Case<Mtu, ibv_mtu>(new()
        {
            [Mtu.Mtu256] = "IBV_MTU_256", [Mtu.Mtu512] = "IBV_MTU_512", [Mtu.Mtu1024] = "IBV_MTU_1024",
            [Mtu.Mtu2048] = "IBV_MTU_2048", [Mtu.Mtu4096] = "IBV_MTU_4096",
        });
        yield return Case<PortState, ibv_port_state>(new()
        {
            [PortState.Nop] = "IBV_PORT_NOP", [PortState.Down] = "IBV_PORT_DOWN", [PortState.Init] = "IBV_PORT_INIT",
            [PortState.Armed] = "IBV_PORT_ARMED", [PortState.Active] = "IBV_PORT_ACTIVE", [PortState.ActiveDefer] = "IBV_PORT_ACTIVE_DEFER",
        });
        yield return Case<QueuePairType, ibv_qp_type>(new()
        {
            [QueuePairType.ReliableConnected] = "IBV_QPT_RC", [QueuePairType.UnreliableConnected] = "IBV_QPT_UC",
            [QueuePairType.UnreliableDatagram] = "IBV_QPT_UD",
        });
        yield return Case<QueuePairState, ibv_qp_state>(new()
        {
            [QueuePairState.Reset] = "IBV_QPS_RESET", [QueuePairState.Init] = "IBV_QPS_INIT", [QueuePairState.ReadyToReceive] = "IBV_QPS_RTR",
            [QueuePairState.ReadyToSend] = "IBV_QPS_RTS", [QueuePairState.SendQueueDrained] = "IBV_QPS_SQD",
            [QueuePairState.SendQueueError] = "IBV_QPS_SQE", [QueuePairState.Error] = "IBV_QPS_ERR",
        });
        yield return Case<GidType, ibv_gid_type>(new()
        {
            [GidType.InfiniBand] = "IBV_GID_TYPE_IB", [GidType.RoceV1] = "IBV_GID_TYPE_ROCE_V1", [GidType.RoceV2] = "IBV_GID_TYPE_ROCE_V2",
        });
        yield return Case<MemoryWindowType, ibv_mw_type>(new() { [MemoryWindowType.Type1] = "IBV_MW_TYPE_1", [MemoryWindowType.Type2] = "IBV_MW_TYPE_2" });
        yield return Case<FlushType, ibv_placement_type>(new() { [FlushType.Global] = "IBV_FLUSH_GLOBAL", [FlushType.Persistent] = "IBV_FLUSH_PERSISTENT" });
        yield return Case<FlushLevel, ibv_selectivity_level>(new() { [FlushLevel.Range] = "IBV_FLUSH_RANGE", [FlushLevel.MemoryRegion] = "IBV_FLUSH_MR" });
        yield return Case<OdpTransportCaps, ibv_odp_transport_cap_bits>(new()
        {
            [OdpTransportCaps.Send] = "IBV_ODP_SUPPORT_SEND", [OdpTransportCaps.Receive] = "IBV_ODP_SUPPORT_RECV",
            [OdpTransportCaps.Write] = "IBV_ODP_SUPPORT_WRITE", [OdpTransportCaps.Read] = "IBV_ODP_SUPPORT_READ",
            [OdpTransportCaps.Atomic] = "IBV_ODP_SUPPORT_ATOMIC", [OdpTransportCaps.SrqReceive] = "IBV_ODP_SUPPORT_SRQ_RECV",
            // The kernel's IB_ODP_SUPPORT_FLUSH / _ATOMIC_WRITE (include/rdma/ib_verbs.h): rdma-core passes the
            // bits through but verbs.h 56 names neither. Checked against the kernel's values below.
            [OdpTransportCaps.Flush] = KernelOnly, [OdpTransportCaps.AtomicWrite] = KernelOnly,
        });
        yield return Case<WorkCompletionOpcode, ibv_wc_opcode>(new()
        {
            [WorkCompletionOpcode.Send] = "IBV_WC_SEND", [WorkCompletionOpcode.RdmaWrite] = "IBV_WC_RDMA_WRITE",
            [WorkCompletionOpcode.RdmaRead] = "IBV_WC_RDMA_READ", [WorkCompletionOpcode.CompareSwap] = "IBV_WC_COMP_SWAP",
            [WorkCompletionOpcode.FetchAdd] = "IBV_WC_FETCH_ADD", [WorkCompletionOpcode.BindMemoryWindow] = "IBV_WC_BIND_MW",
            [WorkCompletionOpcode.LocalInvalidate] = "IBV_WC_LOCAL_INV", [WorkCompletionOpcode.Tso] = "IBV_WC_TSO",
            [WorkCompletionOpcode.Flush] = "IBV_WC_FLUSH", [WorkCompletionOpcode.AtomicWrite] = "IBV_WC_ATOMIC_WRITE",
            [WorkCompletionOpcode.Receive] = "IBV_WC_RECV", [WorkCompletionOpcode.ReceiveRdmaWithImmediate] = "IBV_WC_RECV_RDMA_WITH_IMM",
        });
        // Statuses and async events are declared in C's order: compare by position.
        yield return Ordered<WorkCompletionStatus, ibv_wc_status>("IBV_WC_GENERAL_ERR");
        yield return Ordered<AsyncEventType, ibv_event_type>("IBV_EVENT_WQ_FATAL");
    }

    const string KernelOnly = "";

    static TestCaseData Case<TSafe, TNative>(Dictionary<TSafe, string> names) where TSafe : struct, Enum where TNative : struct, Enum =>
        new TestCaseData(typeof(TSafe), typeof(TNative), names.ToDictionary(p => p.Key.ToString(), p => p.Value)).SetArgDisplayNames(typeof(TSafe).Name);

    static TestCaseData Ordered<TSafe, TNative>(string lastCName) where TSafe : struct, Enum where TNative : struct, Enum
    {
        var native = Enum.GetNames<TNative>();
        var safe = Enum.GetNames<TSafe>();
        int last = Array.IndexOf(native, lastCName);
        return new TestCaseData(typeof(TSafe), typeof(TNative), safe.Select((s, i) => (s, native[i])).Take(last + 1).ToDictionary(p => p.s, p => p.Item2))
            .SetArgDisplayNames(typeof(TSafe).Name);
    }

    [TestCaseSource(nameof(Mirrors))]
    public void SafeEnumMirrorsTheGeneratedOne(Type safe, Type native, Dictionary<string, string> names)
    {
        Assert.That(names.Keys, Is.EquivalentTo(Enum.GetNames(safe).Where(n => n != "None")), $"every member of {safe.Name} is checked");
        Assert.Multiple(() =>
        {
            foreach (var (safeName, cName) in names)
            {
                if (cName == KernelOnly)
                    continue;
                long s = Convert.ToInt64(Enum.Parse(safe, safeName), System.Globalization.CultureInfo.InvariantCulture);
                Assert.That(Enum.IsDefined(native, Enum.Parse(native, cName)), cName);
                long c = Convert.ToInt64(Enum.Parse(native, cName), System.Globalization.CultureInfo.InvariantCulture);
                Assert.That(s, Is.EqualTo(c), $"{safe.Name}.{safeName} vs {cName}");
            }
        });
    }

    [Test]
    public void KernelOnlyOdpBitsHaveTheKernelsValues()
    {
        Assert.That((uint)OdpTransportCaps.Flush, Is.EqualTo(1u << 6), "IB_ODP_SUPPORT_FLUSH");
        Assert.That((uint)OdpTransportCaps.AtomicWrite, Is.EqualTo(1u << 7), "IB_ODP_SUPPORT_ATOMIC_WRITE");
        Assert.That(Enum.GetValues<ibv_odp_transport_cap_bits>().Max(), Is.LessThan((ibv_odp_transport_cap_bits)(1u << 6)), "verbs.h now names them: map them above");
    }

    [Test]
    public void WorkCompletionHasTheLayoutOfIbvWc()
    {
        Assert.That(Marshal.SizeOf<WorkCompletion>(), Is.EqualTo(Marshal.SizeOf<ibv_wc>()));
        (string Safe, string C)[] fields =
        [
            ("_wrId", "wr_id"), ("_status", "status"), ("_opcode", "opcode"), ("_vendorError", "vendor_err"),
            ("_byteLength", "byte_len"), ("_qpNumber", "qp_num"), ("_sourceQp", "src_qp"), ("_flags", "wc_flags"),
            ("_pkeyIndex", "pkey_index"), ("_slid", "slid"), ("_sl", "sl"), ("_dlidPathBits", "dlid_path_bits"),
        ];
        foreach (var (safe, c) in fields)
            Assert.That(Marshal.OffsetOf<WorkCompletion>(safe), Is.EqualTo(Marshal.OffsetOf<ibv_wc>(c)), $"{safe} vs ibv_wc.{c}");
        Assert.That(Marshal.OffsetOf<WorkCompletion>("_immediateOrInvalidatedRkey"), Is.EqualTo(Marshal.OffsetOf<ibv_wc>("byte_len") + 4), "imm_data follows byte_len");
    }
}
