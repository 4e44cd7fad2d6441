using System.Net;
using RdmaLease.Interop;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// QP attributes (issue 10): what Connect sets is what the kernel reports (ibv_query_qp), a new QP grants peers
/// nothing until asked, remote access changes in RTS, and the path does not (the kernel refuses it).
/// </summary>
[Category("Guest")]
public unsafe class QueuePairAttributeTests
{
    [Test]
    public void ConnectSetsThePathAndQueryReportsIt()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(64);
        var options = new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq };
        using var a = pd.CreateQueuePair(options);
        using var b = pd.CreateQueuePair(options);
        int gid = device.FindGidIndex(IPAddress.Loopback);
        a.Connect(b.LocalEndpoint(gid), new ConnectOptions
        {
            GidIndex = gid, PathMtu = Mtu.Mtu1024, ServiceLevel = 5, TrafficClass = 0x28, FlowLabel = 0x12345, HopLimit = 17,
            Timeout = 12, RetryCount = 3, RnrRetry = 6, MaxRdAtomic = 1, RemoteAccess = AccessFlags.RemoteRead,
        });
        b.Connect(a.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid });

        var qa = a.Query();
        Assert.Multiple(() =>
        {
            Assert.That(qa.State, Is.EqualTo(QueuePairState.ReadyToSend));
            Assert.That(qa.PathMtu, Is.EqualTo(Mtu.Mtu1024));
            Assert.That((qa.TrafficClass, qa.FlowLabel), Is.EqualTo(((byte)0x28, 0x12345u)));
            // What RoCE on this kernel does with the rest (docs/verbs.md): the kernel sets the GRH hop limit from the IP
            // route when it resolves the destination (64 here, whatever was asked), and rxe keeps no service level.
            Assert.That(qa.HopLimit, Is.EqualTo((byte)64), "RoCE: the hop limit comes from the route");
            Assert.That(qa.ServiceLevel, Is.EqualTo((byte)0), "rxe keeps no SL");
            Assert.That((qa.PartitionKeyIndex, qa.Port, qa.GidIndex), Is.EqualTo(((ushort)0, (byte)1, (byte)gid)));
            Assert.That((qa.Timeout, qa.RetryCount, qa.RnrRetry), Is.EqualTo(((byte)12, (byte)3, (byte)6)));
            Assert.That(qa.Access, Is.EqualTo(AccessFlags.LocalWrite | AccessFlags.RemoteRead));
            Assert.That(qa.DestinationQueuePairNumber, Is.EqualTo(b.QueuePairNumber));
            Assert.That(qa.SendPacketSequenceNumber, Is.EqualTo(a.LocalEndpoint(gid).PacketSequenceNumber));
            Assert.That(qa.ReceivePacketSequenceNumber, Is.EqualTo(b.LocalEndpoint(gid).PacketSequenceNumber));
        });
        Assert.That(b.Query().Access, Is.EqualTo(AccessFlags.LocalWrite), "least privilege: a QP grants peers nothing unless asked");
        Assert.That(b.Query().HopLimit, Is.EqualTo((byte)64), "the default hop limit");
    }

    [Test]
    public void RemoteAccessIsGrantedAndTakenBackInRtsAndTheKernelRefusesAPathChange()
    {
        using var pair = RcPair.Loopback(Mtu.Mtu4096);
        const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;
        using var source = pair.PdA.AllocateBuffer(4096, Rw);
        using var target = pair.PdB.AllocateBuffer(4096, Rw);
        var remote = target.ToRemote();

        pair.B.ChangeRemoteAccess(AccessFlags.RemoteWrite);
        Assert.That(pair.B.Query().Access, Is.EqualTo(AccessFlags.LocalWrite | AccessFlags.RemoteWrite));
        Patterns.Fill(source.Span, 3);
        pair.A.PostWrite(1, source.Slice(0, 4096), remote);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        Patterns.AssertEqual(target.Span, source.Span, "a write the QP grants");

        // The path is fixed in RTS: ibv_modify_qp with the address vector is refused by the kernel (IBA's RTS->RTS
        // optional attributes are access flags, alternate path, migration state and the RNR timer).
        var attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_RTS };
        attr.ah_attr.is_global = 1;
        attr.ah_attr.port_num = 1;
        attr.ah_attr.sl = 2;
        attr.ah_attr.grh.hop_limit = 9;
        attr.ah_attr.grh.sgid_index = (byte)pair.DeviceB.FindGidIndex(IPAddress.Loopback);
        attr.ah_attr.grh.traffic_class = 0x10;
        IPAddress.Parse("::ffff:127.0.0.1").TryWriteBytes(new Span<byte>(attr.ah_attr.grh.dgid.raw, 16), out _);
        int rc;
        using (var qp = pair.B.HandleForChildren.Enter())
            rc = libibverbs.ibv_modify_qp((ibv_qp*)qp.Pointer, &attr, (int)(ibv_qp_attr_mask.IBV_QP_STATE | ibv_qp_attr_mask.IBV_QP_AV));
        Assert.That(rc, Is.EqualTo(22), "EINVAL: the kernel does not change a connected QP's path");
        Assert.That(pair.B.Query().TrafficClass, Is.EqualTo((byte)0), "unchanged");

        pair.B.ChangeRemoteAccess(AccessFlags.None);
        Assert.That(pair.B.Query().Access, Is.EqualTo(AccessFlags.LocalWrite));
        target.Span.Clear();
        pair.A.PostWrite(2, source.Slice(0, 4096), remote);
        var wc = RcPair.WaitOne(pair.CqA);
        Assert.That(wc.Status, Is.Not.EqualTo(WorkCompletionStatus.Success), "a write the QP no longer grants: " + wc);
        Assert.That(target.Span.IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing landed");
    }

    [Test]
    public void BadAttributesAreRefusedWithTheReason()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(16);
        using var qp = pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        int gid = device.FindGidIndex(IPAddress.Loopback);
        var peer = qp.LocalEndpoint(gid);
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => qp.Connect(peer, new ConnectOptions { GidIndex = gid, ServiceLevel = 16 }))!.Message, Does.Contain("0..15"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => qp.Connect(peer, new ConnectOptions { GidIndex = gid, FlowLabel = 0x100000 }))!.Message, Does.Contain("20 bits"));
        Assert.That(Assert.Throws<ArgumentException>(() => qp.Connect(peer, new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.OnDemand }))!.Message, Does.Contain("grants only"));
        Assert.That(qp.QueryState(), Is.EqualTo(QueuePairState.Reset), "nothing was modified");
        Assert.That(Assert.Throws<InvalidOperationException>(() => qp.ChangeRemoteAccess(AccessFlags.RemoteWrite))!.Message, Does.Contain("Reset"));
        Assert.Throws<ArgumentException>(() => qp.ChangeRemoteAccess(AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind));
        // rxe takes any P_Key index (kernel 7.3), so the library checks it against the port's table.
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => qp.Connect(peer, new ConnectOptions { GidIndex = gid, PartitionKeyIndex = 999 }))!.Message,
            Does.Contain("P_Key table entries"));
        var bad = Assert.Throws<VerbsException>(() => qp.Connect(peer, new ConnectOptions { GidIndex = 250 }))!;
        Assert.That(bad.Operation, Does.StartWith("ibv_"), bad.Message);
    }

    [Test]
    public void AUdQueuePairMovesToReadyToSendWithItsQKey()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(16);
        using var qp = pd.CreateQueuePair(new QueuePairOptions { Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        qp.MoveToReadyToSend(0x1234);
        var q = qp.Query();
        Assert.That((q.State, q.QKey), Is.EqualTo((QueuePairState.ReadyToSend, 0x1234u)));
        Assert.Throws<InvalidOperationException>(() => qp.ChangeRemoteAccess(AccessFlags.RemoteWrite), "UD");
        Assert.Throws<InvalidOperationException>(() => qp.Connect(qp.LocalEndpoint(1), new ConnectOptions { GidIndex = 1 }), "UD connects with MoveToReadyToSend");
    }
}
