using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Adversary;

/// <summary>Hostile bytes for the out-of-band decoders: a peer's message must never decode into something no peer could mean.</summary>
public class ShapeDecodeHostTests
{
    [Test]
    public void AnEndpointWithAQpNumberOrPsnWiderThan24BitsIsRefused()
    {
        var bytes = new byte[QueuePairEndpoint.EncodedLength];
        new QueuePairEndpoint(0, 0x12, 0x34, IPAddress.Parse("::ffff:127.0.0.1")).Encode(bytes);
        bytes[2] = 0x01;   // QP number 0x01000012: the device keeps 24 bits, so this would reach QP 0x12
        Assert.That(Assert.Throws<FormatException>(() => QueuePairEndpoint.Decode(bytes))!.Message, Does.Contain("24 bits"));
        bytes[2] = 0;
        bytes[6] = 0x80;   // PSN 0x80000034
        Assert.Throws<FormatException>(() => QueuePairEndpoint.Decode(bytes));
        Assert.Throws<FormatException>(() => QueuePairEndpoint.Decode(Enumerable.Repeat((byte)0xff, QueuePairEndpoint.EncodedLength).ToArray()));

        var widest = new byte[QueuePairEndpoint.EncodedLength];
        new QueuePairEndpoint(ushort.MaxValue, 0xffffff, 0xffffff, IPAddress.IPv6Loopback).Encode(widest);
        Assert.That(QueuePairEndpoint.Decode(widest), Is.EqualTo(new QueuePairEndpoint(ushort.MaxValue, 0xffffff, 0xffffff, IPAddress.IPv6Loopback)),
            "the largest 24-bit values still decode");
        Assert.Throws<ArgumentException>(() => QueuePairEndpoint.Decode([]));
        Assert.Throws<ArgumentException>(() => QueuePairEndpoint.Decode(widest.AsSpan(0, QueuePairEndpoint.EncodedLength - 1)));
    }

    [Test]
    public void ARegionThatWouldEndPastTheAddressSpaceIsRefused()
    {
        Assert.That(Assert.Throws<FormatException>(() => RemoteRegion.Decode(Enumerable.Repeat((byte)0xff, RemoteRegion.EncodedLength).ToArray()))!.Message,
            Does.Contain("address space"));
        var bytes = new byte[RemoteRegion.EncodedLength];
        new RemoteRegion(ulong.MaxValue - 7, 9, 1).Encode(bytes);   // one byte past 2^64
        Assert.Throws<FormatException>(() => RemoteRegion.Decode(bytes));

        foreach (var fits in new[] { new RemoteRegion(ulong.MaxValue - 7, 8, 1), new RemoteRegion(0, ulong.MaxValue, 2, uint.MaxValue, uint.MaxValue),
                     new RemoteRegion(ulong.MaxValue, 1, 3), new RemoteRegion(ulong.MaxValue, 0, 4) })
        {
            fits.Encode(bytes);
            Assert.That(RemoteRegion.Decode(bytes), Is.EqualTo(fits), "a region that ends at 2^64 at most decodes");
        }
        Assert.Throws<ArgumentException>(() => RemoteRegion.Decode([]));
    }
}
