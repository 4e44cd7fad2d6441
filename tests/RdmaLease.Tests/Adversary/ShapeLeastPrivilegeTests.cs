using System.Buffers.Binary;
using System.Net;
using RdmaLease.Tests.Connections;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Connections.Cm;

namespace RdmaLease.Tests.Adversary;

/// <summary>
/// Least privilege as a peer sees it: a QP connected without RemoteAccess (Connect, or rdma_cm's accept and connect by
/// default) refuses every RDMA WRITE, READ and atomic aimed at it, even at a region registered for them.
/// </summary>
[Category("Guest")]
public class ShapeLeastPrivilegeTests
{
    const AccessFlags Everything = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic;

    [TestCase("write")]
    [TestCase("read")]
    [TestCase("atomic")]
    public void AQueuePairConnectedWithoutRemoteAccessRefusesThePeersOperation(string operation)
    {
        // Each refusal moves both RC QPs to the error state: one operation per pair.
        using var device = Device.Open("rxelo");
        var pd = device.AllocateProtectionDomain();
        var cq = device.CreateCompletionQueue(16);
        var attacker = pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        var victim = pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        int gid = device.FindGidIndex(IPAddress.Loopback);
        attacker.Connect(victim.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead });
        victim.Connect(attacker.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid });   // grants nothing
        Assert.That(victim.Query().Access, Is.EqualTo(AccessFlags.LocalWrite));
        var target = pd.AllocateBuffer(4096, Everything);   // the region itself allows everything
        var local = pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        Patterns.Fill(target.Span, 1);
        Patterns.Fill(local.Span, 2);
        byte[] before = target.Span.ToArray();
        var remote = target.ToRemote();

        switch (operation)
        {
            case "write": attacker.PostWrite(1, local.Slice(0, 256), remote); break;
            case "read": attacker.PostRead(1, local.Slice(0, 256), remote); break;
            default: attacker.PostFetchAdd(1, local.Slice(0, 8), remote, 0, 1); break;
        }
        var wc = RcPair.WaitOne(cq);
        Assert.That((wc.WorkRequestId, wc.Status), Is.EqualTo((1UL, WorkCompletionStatus.RemoteInvalidRequest)).Or.EqualTo((1UL, WorkCompletionStatus.RemoteAccessError)),
            $"the peer's {operation} is refused: {wc}");
        Patterns.AssertEqual(target.Span, before, "nothing landed in the victim's region");
        if (operation != "write")
        {
            byte[] expected = new byte[256];
            Patterns.Fill(expected, 2);
            Patterns.AssertEqual(local.Span[..256], expected, $"the {operation} brought nothing back");
        }
        device.Dispose();
    }

    [Test]
    public void TakingBackRemoteWriteInRtsRefusesTheNextWriteAndAtomic()
    {
        using var rig = new BatchRig();   // B grants everything
        var remote = rig.Remote.ToRemote();
        Patterns.Fill(rig.Local.Span, 5);
        rig.Remote.Span.Clear();
        rig.A.PostWrite(1, rig.Local.Slice(0, 64), remote);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        rig.B.ChangeRemoteAccess(AccessFlags.RemoteRead);   // keep READ, take back WRITE and atomics
        Assert.That(rig.B.Query().Access, Is.EqualTo(AccessFlags.LocalWrite | AccessFlags.RemoteRead));
        rig.A.PostRead(2, rig.Local.Slice(4096, 64), remote);
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaRead, 2);
        BinaryPrimitives.WriteUInt64LittleEndian(rig.Remote.Span[1024..], 40);
        byte[] before = rig.Remote.Span.ToArray();
        rig.A.PostFetchAdd(3, rig.Local.Slice(8192, 8), remote, 1024, 2);
        var wc = RcPair.WaitOne(rig.CqA);
        Assert.That(wc.Status, Is.Not.EqualTo(WorkCompletionStatus.Success), "an atomic after RemoteAtomic was taken back: " + wc);
        Patterns.AssertEqual(rig.Remote.Span, before, "nothing changed");
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(rig.Remote.Span[1024..]), Is.EqualTo(40UL));
    }

    [Test]
    public async Task AnRdmaCmConnectionGrantsNothingByDefault()
    {
        using var server = new CmSide();
        using var client = new CmSide();
        using var listener = RdmaListener.Listen(AnyPort);
        using var target = server.Pd.AllocateBuffer(4096, Everything);
        using var source = client.Pd.AllocateBuffer(4096, Everything);
        var qpS = server.NewQueuePair();
        var qpC = client.NewQueuePair();
        Patterns.Fill(target.Span, 7);
        Patterns.Fill(source.Span, 8);
        byte[] before = target.Span.ToArray();

        var accepting = Task.Run(async () =>
        {
            using var request = await listener.AcceptAsync(Generous);
            return await request.AcceptAsync(qpS, new RdmaAcceptOptions { Timeout = Generous });   // RemoteAccess left at its default
        });
        using var conn = await RdmaConnection.ConnectAsync(listener.LocalEndPoint, qpC, new RdmaConnectOptions { Timeout = Generous, AckTimeout = 16 });
        using var sconn = await accepting.WaitAsync(Generous);
        Assert.Multiple(() =>
        {
            Assert.That(qpS.Query().Access & ~AccessFlags.LocalWrite, Is.EqualTo(AccessFlags.None), "the accepting QP grants nothing");
            Assert.That(qpC.Query().Access & ~AccessFlags.LocalWrite, Is.EqualTo(AccessFlags.None), "the connecting QP grants nothing");
        });
        qpC.PostWrite(1, source.Slice(0, 512), target.ToRemote());
        var wc = WaitOne(client.Cq);
        Assert.That(wc.Status, Is.Not.EqualTo(WorkCompletionStatus.Success), "an RDMA WRITE into a QP that grants nothing: " + wc);
        Patterns.AssertEqual(target.Span, before, "nothing landed");
    }
}
