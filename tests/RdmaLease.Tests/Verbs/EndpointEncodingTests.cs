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
        region.Encode(bytes);
        Assert.That(RemoteRegion.Decode(bytes), Is.EqualTo(region));
        Assert.Throws<ArgumentException>(() => RemoteRegion.Decode(new byte[RemoteRegion.EncodedLength - 1]));
        Assert.Throws<ArgumentException>(() => region.Encode(new byte[RemoteRegion.EncodedLength - 1]));
    }

    [Test]
    public void EveryWireEncodingIsBigEndian()
    {
        var region = new RemoteRegion(0x0102_0304_0506_0708, 0x1112_1314_1516_1718, 0x2122_2324, 0x3132_3334, 0x4142_4344);
        var bytes = new byte[RemoteRegion.EncodedLength];
        region.Encode(bytes);
        Assert.That(Convert.ToHexString(bytes), Is.EqualTo("0102030405060708" + "1112131415161718" + "21222324" + "31323334" + "41424344"));

        var endpoint = new QueuePairEndpoint(0x0102, 0x00a0b0c, 0x0d0e0f, IPAddress.Parse("::ffff:192.0.2.1"));
        var ep = new byte[QueuePairEndpoint.EncodedLength];
        endpoint.Encode(ep);
        Assert.That(Convert.ToHexString(ep), Is.EqualTo("0102" + "000A0B0C" + "000D0E0F" + "00000000000000000000FFFFC0000201"));
        Assert.Throws<ArgumentException>(() => QueuePairEndpoint.Decode(ep.AsSpan(0, QueuePairEndpoint.EncodedLength - 1)));
    }

    [Test]
    public void QueuePairEndpointRoundTripsAsTextAndBytes()
    {
        var endpoint = new QueuePairEndpoint(0, 0x11, 0xabcde, IPAddress.Parse("::ffff:192.0.2.1"));
        Assert.That(QueuePairEndpoint.Parse(endpoint.ToString()), Is.EqualTo(endpoint));
        var bytes = new byte[QueuePairEndpoint.EncodedLength];
        endpoint.Encode(bytes);
        Assert.That(QueuePairEndpoint.Decode(bytes), Is.EqualTo(endpoint));
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
