using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>Host tests of what peers exchange out of band.</summary>
public class EndpointEncodingTests
{
    [Test]
    public void RemoteRegionRoundTripsThroughItsEncoding()
    {
        var region = new RemoteRegion(0x7f00_1234_5000, 1 << 20, 0xabcdef, MaxTransferPerRequest: 1024, RequiredAlignment: 4096);
        Span<byte> bytes = stackalloc byte[RemoteRegion.EncodedLength];
        region.WriteTo(bytes);
        Assert.That(RemoteRegion.ReadFrom(bytes), Is.EqualTo(region));
        Assert.Throws<ArgumentException>(() => RemoteRegion.ReadFrom(new byte[RemoteRegion.EncodedLength - 1]));
    }

    [Test]
    public void QueuePairEndpointRoundTripsAsTextAndBytes()
    {
        var endpoint = new QueuePairEndpoint(0, 0x11, 0xabcde, IPAddress.Parse("::ffff:192.0.2.1"));
        Assert.That(QueuePairEndpoint.Parse(endpoint.ToString()), Is.EqualTo(endpoint));
        var bytes = new byte[QueuePairEndpoint.EncodedLength];
        endpoint.WriteTo(bytes);
        Assert.That(QueuePairEndpoint.ReadFrom(bytes), Is.EqualTo(endpoint));
    }

    [TestCase("1:2:3")]
    [TestCase("x:2:3:::1")]
    [TestCase("1:16777216:3:::1")]
    [TestCase("1:2:3:not-a-gid")]
    public void MalformedEndpointsAreRefusedWithTheReason(string text)
    {
        var e = Assert.Throws<FormatException>(() => QueuePairEndpoint.Parse(text))!;
        Assert.That(e.Message, Does.Contain(text.Split(':').Length < 4 ? "lid:qpn:psn:gid" : "is not"));
    }

    [Test]
    public void MisalignedTransfersToAnAlignedRegionAreRefused()
    {
        var region = new RemoteRegion(0x10000, 65536, 1, RequiredAlignment: 4096);
        Assert.DoesNotThrow(() => SendRequestFor(region, 8192));
        var e = Assert.Throws<ArgumentException>(() => SendRequestFor(region, 8))!;
        Assert.That(e.Message, Does.Contain("4096-byte aligned").And.Contain("known-defects"));
        Assert.Throws<ArgumentOutOfRangeException>(() => SendRequestFor(region, 65536));
    }

    static void SendRequestFor(RemoteRegion region, ulong offset) => region.CheckRange(offset, 64);
}
