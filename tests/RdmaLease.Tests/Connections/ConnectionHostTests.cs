using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Connections;

/// <summary>What rdma_cm connections check and convert before any native call (host: no device needed).</summary>
public class ConnectionHostTests
{
    [TestCase("198.51.100.1", 7471)]
    [TestCase("0.0.0.0", 0)]
    [TestCase("fe80::1%3", 65535)]
    [TestCase("::ffff:192.0.2.1", 1)]
    public void SocketAddressesRoundTrip(string address, int port)
    {
        var endPoint = new IPEndPoint(IPAddress.Parse(address), port);
        var storage = new byte[RdmaCm.SockaddrSize];
        storage.AsSpan().Fill(0xAA);
        RdmaCm.ToSockaddr(endPoint, storage);
        Assert.That(RdmaCm.FromSockaddr(storage), Is.EqualTo(endPoint));
        // Network byte order for the port, as the kernel reads it.
        Assert.That(storage[2] << 8 | storage[3], Is.EqualTo(port));
        Assert.That(storage.AsSpan(28).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "the rest is zeroed");
    }

    [Test]
    public void UnknownFamiliesAreNotAddresses()
    {
        var storage = new byte[RdmaCm.SockaddrSize];
        storage[0] = 27;   // AF_IB
        Assert.That(RdmaCm.FromSockaddr(storage), Is.Null);
    }

    [TestCase(RdmaPrivateDataLimits.Connect, "a connect request")]
    [TestCase(RdmaPrivateDataLimits.Accept, "an accept")]
    [TestCase(RdmaPrivateDataLimits.Reject, "a reject")]
    public void PrivateDataIsCheckedAgainstTheTransportLimit(int limit, string what)
    {
        Assert.DoesNotThrow(() => RdmaCm.CheckPrivateData(new byte[limit], limit, what, "data"));
        Assert.DoesNotThrow(() => RdmaCm.CheckPrivateData([], limit, what, "data"));
        var e = Assert.Throws<ArgumentException>(() => RdmaCm.CheckPrivateData(new byte[limit + 1], limit, what, "data"));
        Assert.That(e!.Message, Does.Contain($"{limit + 1} bytes of private data on {what}").And.Contain($"at most {limit}"));
        Assert.That(e.ParamName, Is.EqualTo("data"));
    }

    [Test]
    public void LimitsAreRcOverIbAndRoce() =>
        Assert.That((RdmaPrivateDataLimits.Connect, RdmaPrivateDataLimits.Accept, RdmaPrivateDataLimits.Reject), Is.EqualTo((56, 196, 148)));

    [Test]
    public void RejectionsSayWhatToCheck()
    {
        var remote = new IPEndPoint(IPAddress.Parse("198.51.100.1"), 7471);
        var nobody = (RdmaConnectionRejectedException)RdmaConnection.Failure(
            new CmEvent { Type = RdmaLease.Interop.rdma_cm_event_type.RDMA_CM_EVENT_REJECTED, Status = 8 }, remote, null);
        Assert.That(nobody.IsConsumerReject, Is.False);
        Assert.That(nobody.Message, Does.Contain("Nobody listens on rdma_cm port 7471"));
        var consumer = (RdmaConnectionRejectedException)RdmaConnection.Failure(
            new CmEvent { Type = RdmaLease.Interop.rdma_cm_event_type.RDMA_CM_EVENT_REJECTED, Status = 28, PrivateData = [1, 2, 3] }, remote, null);
        Assert.That(consumer.IsConsumerReject, Is.True);
        Assert.That(consumer.PrivateData.ToArray(), Is.EqualTo(new byte[] { 1, 2, 3 }));
        Assert.That(RdmaConnection.LoopbackNote(new IPEndPoint(IPAddress.Loopback, 1)), Does.Contain("loopback"));
        Assert.That(RdmaConnection.LoopbackNote(remote), Is.Empty);
    }
}
