using System.Net;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Adversary;

/// <summary>
/// The grant attacks' rig on rxelo, without rdma_cm: a server (its own device context and PD, as a server process has)
/// and peers (a context and PD of their own each, as other processes have), each peer's QP connected to a server QP of
/// its own. The server QP has a send CQ of its own (a grant's bind completes there) and grants the peer
/// <c>serverAccess</c> at connect time (None: only what grants widen). Path MTU 4096: one packet per 4 KiB transfer,
/// which rxe's ODP data path gets right (docs/known-defects.md).
/// </summary>
internal sealed class TrustRig : IDisposable
{
    public TrustRig()
    {
        Server = Device.Open("rxelo");
        ServerPd = Server.AllocateProtectionDomain();
        ServerReceiveCq = Server.CreateCompletionQueue(16);
    }

    public Device Server { get; }
    public ProtectionDomain ServerPd { get; }
    public CompletionQueue ServerReceiveCq { get; }
    readonly List<Device> _peers = [];

    /// <summary>A peer linked to a new server QP: the server's QP and send CQ, the peer's QP and CQ, a 4 KiB source buffer.</summary>
    public Link Connect(AccessFlags serverAccess = AccessFlags.None, CompletionQueue? serverSendCq = null)
    {
        var peer = Device.Open("rxelo");
        _peers.Add(peer);
        var peerPd = peer.AllocateProtectionDomain();
        var peerCq = peer.CreateCompletionQueue(16);
        var sendCq = serverSendCq ?? Server.CreateCompletionQueue(4);
        var serverQp = ServerPd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = sendCq, ReceiveCompletionQueue = ServerReceiveCq });
        var peerQp = peerPd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = peerCq, ReceiveCompletionQueue = peerCq });
        int gid = Server.FindGidIndex(IPAddress.Loopback);
        var serverEnd = serverQp.LocalEndpoint(gid);
        var peerEnd = peerQp.LocalEndpoint(gid);
        // The default ACK timeout: the first write into a fresh ODP region faults its pages in, slowly under TCG.
        serverQp.Connect(peerEnd, new ConnectOptions { GidIndex = gid, PathMtu = Mtu.Mtu4096, RemoteAccess = serverAccess });
        peerQp.Connect(serverEnd, new ConnectOptions { GidIndex = gid, PathMtu = Mtu.Mtu4096, RemoteAccess = AccessFlags.None });
        var source = peerPd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        return new Link(serverQp, sendCq, peerQp, peerCq, source);
    }

    public void Dispose()
    {
        foreach (var p in _peers)
            p.Dispose();
        Server.Dispose();
    }

    /// <summary>One peer's connection: the server's QP (and its send CQ) and the peer's QP, CQ and source buffer.</summary>
    internal sealed record Link(QueuePair ServerQp, CompletionQueue ServerSendCq, QueuePair PeerQp, CompletionQueue PeerCq, RegisteredBuffer Source)
    {
        /// <summary>An RDMA WRITE of 4 KiB of <paramref name="seed"/> to <paramref name="target"/>+<paramref name="offset"/>.</summary>
        public WorkCompletion Write(RemoteRegion target, ulong offset, int seed)
        {
            Patterns.Fill(Source.Span, seed);
            PeerQp.PostWrite(1, Source.Slice(0, 4096), target, offset);
            return RcPair.WaitOne(PeerCq);
        }

        /// <summary>A FLUSH (persistent, range) of <paramref name="length"/> bytes at <paramref name="target"/>+<paramref name="offset"/>.</summary>
        public WorkCompletion Flush(RemoteRegion target, ulong offset, ulong length)
        {
            PeerQp.PostFlush(2, target, offset, length);
            return RcPair.WaitOne(PeerCq);
        }
    }

    /// <summary>4 KiB of <paramref name="seed"/>'s pattern, as <see cref="Link.Write"/> sends it.</summary>
    public static byte[] Block(int seed)
    {
        var b = new byte[4096];
        Patterns.Fill(b, seed);
        return b;
    }

    /// <summary>Every completion <paramref name="cq"/> delivers within <paramref name="settle"/>.</summary>
    public static List<WorkCompletion> Drain(CompletionQueue cq, TimeSpan settle)
    {
        var found = new List<WorkCompletion>();
        var one = new WorkCompletion[1];
        var deadline = DateTime.UtcNow + settle;
        while (DateTime.UtcNow < deadline)
        {
            if (cq.Poll(one) == 1)
                found.Add(one[0]);
            else
                Thread.Sleep(5);
        }
        return found;
    }
}
