using System.Net;
using System.Text;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Connections;

/// <summary>Host tests of <see cref="OutOfBandExchange"/>: both forms, both roles, and what it says about bad input.</summary>
public class OutOfBandExchangeTests
{
    static readonly IPAddress Loopback = IPAddress.Parse("::ffff:127.0.0.1");
    static readonly QueuePairEndpoint Client = new(0, 0x12, 0x753c35, Loopback);
    static readonly QueuePairEndpoint Server = new(0x1b, 0xfffffe, 0x000001, IPAddress.Parse("fe80::5054:ff:fe12:3456"));

    // What ibv_rc_pingpong 56.1 (rdma-core, trixie) wrote as a client in the guest, captured byte for byte by
    // PingPongGuestTests.RdmaCoreClientsAddressMessageParses: its 51 characters and the NUL.
    const string CapturedFromRdmaCore = "0000:000028:771713:00000000000000000000ffff7f000001\0";

    [Test]
    public void TheTextFormIsRcPingpongsPrintf()
    {
        Assert.That(OutOfBandExchange.FormatPingPong(Client), Is.EqualTo("0000:000012:753c35:00000000000000000000ffff7f000001"));
        Assert.That(OutOfBandExchange.FormatPingPong(Server), Is.EqualTo("001b:fffffe:000001:fe80000000000000505400fffe123456"));
        // An IPv4 GID is written as the IPv4-mapped GID RoCE v2 uses.
        var v4 = Client with { Gid = IPAddress.Parse("127.0.0.1") };
        Assert.That(OutOfBandExchange.ParsePingPong(OutOfBandExchange.FormatPingPong(v4)), Is.EqualTo(Client));
        Assert.That(OutOfBandExchange.FormatPingPong(Client).Length + 1, Is.EqualTo(OutOfBandExchange.PingPongMessageLength));
    }

    [Test]
    public void AMessageCapturedFromRdmaCoresPingpongParses()
    {
        var e = OutOfBandExchange.ParsePingPong(CapturedFromRdmaCore);
        Assert.That(e, Is.EqualTo(new QueuePairEndpoint(0, 0x28, 0x771713, Loopback)));
        Assert.That(e.Gid.ToString(), Is.EqualTo("::ffff:127.0.0.1"));
        Assert.That(OutOfBandExchange.FormatPingPong(e) + "\0", Is.EqualTo(CapturedFromRdmaCore));
    }

    [Test]
    public void QpNumbersAndPsnsWiderThan24BitsCannotBeWritten()
    {
        Assert.Throws<ArgumentException>(() => OutOfBandExchange.FormatPingPong(Client with { QueuePairNumber = 0x1000000 }));
        Assert.Throws<ArgumentException>(() => OutOfBandExchange.FormatPingPong(Client with { PacketSequenceNumber = 0x1000000 }));
    }

    [TestCase("0000:000012:753c35", "is not an ibv_rc_pingpong address")]
    [TestCase("0000:000012:753c35:00000000000000000000ffff7f000001:00", "is not an ibv_rc_pingpong address")]
    [TestCase("zz00:000012:753c35:00000000000000000000ffff7f000001", "'zz00' in")]
    [TestCase("00000:000012:753c35:00000000000000000000ffff7f000001", "is not a LID")]
    [TestCase("0000:1000000:753c35:00000000000000000000ffff7f000001", "is not a QP number")]
    [TestCase("0000:000012::00000000000000000000ffff7f000001", "is not a PSN")]
    [TestCase("0000:000012:753c35:0000000000000000000ffff7f000001", "is not a GID (32 hex digits)")]
    [TestCase("0000:000012:753c35:00000000000000000000ffff7f00000g", "is not a GID")]
    [TestCase("0000:000012:753c35:::ffff:127.0.0.1", "is not an ibv_rc_pingpong address")]
    [TestCase("\u0001\u0002garbage", "\\x01\\x02garbage")]
    public void MalformedTextMessagesAreRefusedWithThePartThatIsWrong(string text, string expected)
    {
        var e = Assert.Throws<FormatException>(() => OutOfBandExchange.ParsePingPong(text))!;
        Assert.That(e.Message, Does.Contain(expected));
    }

    [Test]
    public async Task AWrittenAddressIsExactlyTheBytesRcPingpongReadsInOneRead()
    {
        using var stream = new MemoryStream();
        await OutOfBandExchange.WritePingPongAsync(stream, Client);
        byte[] bytes = stream.ToArray();
        Assert.That(bytes, Has.Length.EqualTo(52));
        Assert.That(Encoding.ASCII.GetString(bytes), Is.EqualTo("0000:000012:753c35:00000000000000000000ffff7f000001\0"));
        stream.Position = 0;
        Assert.That(await OutOfBandExchange.ReadPingPongAsync(stream), Is.EqualTo(Client));
    }

    [Test]
    public async Task ClientAndServerExchangeAndTheServerConnectsBeforeItAnswers()
    {
        var (a, b) = OutOfBandDuplex.Create();
        using var _ = a;
        using var __ = b;
        QueuePairEndpoint? connectedTo = null;
        var server = OutOfBandExchange.PingPongServerAsync(b, Server, remote => connectedTo = remote);
        var fromServer = await OutOfBandExchange.PingPongClientAsync(a, Client);
        // The client has the server's address only after the server connected its QP to the client's.
        Assert.That(connectedTo, Is.EqualTo(Client));
        Assert.That(fromServer, Is.EqualTo(Server));
        Assert.That(await server, Is.EqualTo(Client));
    }

    [Test]
    public async Task TheServerRefusesAClosingMessageOtherThanDone()
    {
        var (a, b) = OutOfBandDuplex.Create();
        using var _ = a;
        using var __ = b;
        var server = OutOfBandExchange.PingPongServerAsync(b, Server, _ => { });
        await OutOfBandExchange.WritePingPongAsync(a, Client);
        Assert.That(await OutOfBandExchange.ReadPingPongAsync(a), Is.EqualTo(Server));
        await a.WriteAsync("DONE\0"u8.ToArray());
        var e = Assert.ThrowsAsync<FormatException>(async () => await server)!;
        Assert.That(e.Message, Does.Contain("'DONE\\x00'").And.Contain("\"done\""));
    }

    [Test]
    public void ATruncatedAddressIsAnEndOfStreamSayingHowMuchCame()
    {
        var stream = new MemoryStream(Encoding.ASCII.GetBytes("0000:000012:753c35:0000"));
        var e = Assert.ThrowsAsync<EndOfStreamException>(() => OutOfBandExchange.ReadPingPongAsync(stream))!;
        Assert.That(e.Message, Does.Contain("after 23 of the 52 bytes").And.Contain("ibv_rc_pingpong address"));
        e = Assert.ThrowsAsync<EndOfStreamException>(() => OutOfBandExchange.ReadPingPongAsync(new MemoryStream()))!;
        Assert.That(e.Message, Does.Contain("closed the connection before sending"));
    }

    [Test]
    public void APeerThatClosesMidExchangeFailsTheExchange()
    {
        var (a, b) = OutOfBandDuplex.Create();
        using var __ = a;
        b.Dispose();   // the server went away
        Assert.ThrowsAsync<EndOfStreamException>(() => OutOfBandExchange.PingPongClientAsync(a, Client));
    }

    [Test]
    public void APeerThatNeverAnswersIsATimeoutNamingWhatWasAwaited()
    {
        var (a, b) = OutOfBandDuplex.Create();
        using var _ = a;
        using var __ = b;
        var started = Environment.TickCount64;
        var e = Assert.ThrowsAsync<TimeoutException>(() => OutOfBandExchange.PingPongClientAsync(a, Client, TimeSpan.FromMilliseconds(300)))!;
        Assert.That(e.Message, Does.Contain("server's address").And.Contain("0.3 s"));
        Assert.That(Environment.TickCount64 - started, Is.LessThan(10_000));

        var (c, d) = OutOfBandDuplex.Create();   // a fresh connection: b has a's text message waiting
        using var ___ = c;
        using var ____ = d;
        var binary = Assert.ThrowsAsync<TimeoutException>(() => OutOfBandExchange.ExchangeAsync(d, Server, null, TimeSpan.FromMilliseconds(200)))!;
        Assert.That(binary.Message, Does.Contain("endpoint message"));
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => OutOfBandExchange.ExchangeAsync(d, Server, null, TimeSpan.Zero));
    }

    [Test]
    public void CancellationIsNotATimeout()
    {
        var (a, b) = OutOfBandDuplex.Create();
        using var _ = a;
        using var __ = b;
        using var cts = new CancellationTokenSource(200);
        Assert.CatchAsync<OperationCanceledException>(() => OutOfBandExchange.PingPongServerAsync(b, Server, _ => { }, TimeSpan.FromMinutes(1), cts.Token));
    }

    [Test]
    public async Task TheBinaryFormRoundTripsWithAndWithoutARegion()
    {
        var region = new RemoteRegion(0x7f00_1234_5000, 1 << 20, 0xabcdef, MaxTransferPerRequest: 1024, RequiredAlignment: 4096);
        using var stream = new MemoryStream();
        await OutOfBandExchange.WriteAsync(stream, Client);
        await OutOfBandExchange.WriteAsync(stream, Server, region);
        Assert.That(stream.Length, Is.EqualTo(OutOfBandExchange.BinaryMessageLength(false) + OutOfBandExchange.BinaryMessageLength(true)));
        byte[] bytes = stream.ToArray();
        Assert.That(bytes[..6], Is.EqualTo("RLQP\u0001\0"u8.ToArray()));
        var endpoint = new byte[QueuePairEndpoint.EncodedLength];
        Client.Encode(endpoint);
        Assert.That(bytes[6..32], Is.EqualTo(endpoint), "the endpoint's own encoding follows the header");
        stream.Position = 0;
        Assert.That(await OutOfBandExchange.ReadAsync(stream), Is.EqualTo(new OutOfBandMessage(Client, null)));
        Assert.That(await OutOfBandExchange.ReadAsync(stream), Is.EqualTo(new OutOfBandMessage(Server, region)));
    }

    [Test]
    public async Task TheBinaryExchangeIsSymmetric()
    {
        var (a, b) = OutOfBandDuplex.Create();
        using var _ = a;
        using var __ = b;
        var region = new RemoteRegion(0x1000, 4096, 7);
        var fromB = OutOfBandExchange.ExchangeAsync(a, Client);
        var fromA = OutOfBandExchange.ExchangeAsync(b, Server, region);
        Assert.That(await fromB, Is.EqualTo(new OutOfBandMessage(Server, region)));
        Assert.That(await fromA, Is.EqualTo(new OutOfBandMessage(Client, null)));
    }

    static byte[] Binary(QueuePairEndpoint endpoint, RemoteRegion? region = null)
    {
        using var stream = new MemoryStream();
        OutOfBandExchange.WriteAsync(stream, endpoint, region).GetAwaiter().GetResult();
        return stream.ToArray();
    }

    [Test]
    public void MalformedBinaryMessagesAreRefusedWithTheReason()
    {
        // An rc_pingpong peer's text where our binary form was expected.
        var e = Assert.ThrowsAsync<FormatException>(() => OutOfBandExchange.ReadAsync(new MemoryStream(Encoding.ASCII.GetBytes(CapturedFromRdmaCore))))!;
        Assert.That(e.Message, Does.Contain("not \"RLQP\"").And.Contain("PingPong methods"));

        byte[] bytes = Binary(Client);
        bytes[4] = 2;
        e = Assert.ThrowsAsync<FormatException>(() => OutOfBandExchange.ReadAsync(new MemoryStream(bytes)))!;
        Assert.That(e.Message, Does.Contain("version 2"));

        bytes = Binary(Client);
        bytes[5] = 0x80;
        e = Assert.ThrowsAsync<FormatException>(() => OutOfBandExchange.ReadAsync(new MemoryStream(bytes)))!;
        Assert.That(e.Message, Does.Contain("unknown flags 0x80"));

        bytes = Binary(Client);
        bytes[6 + 2] = 0x01;   // QP number 0x01000012: wider than 24 bits
        e = Assert.ThrowsAsync<FormatException>(() => OutOfBandExchange.ReadAsync(new MemoryStream(bytes)))!;
        Assert.That(e.Message, Does.Contain("24 bits"));
    }

    [TestCase(3)]
    [TestCase(6)]
    [TestCase(31)]
    [TestCase(59)]
    public void ATruncatedBinaryMessageIsAnEndOfStream(int length)
    {
        byte[] bytes = Binary(Server, new RemoteRegion(0x1000, 4096, 7));
        Assert.That(bytes, Has.Length.EqualTo(60));
        var e = Assert.ThrowsAsync<EndOfStreamException>(() => OutOfBandExchange.ReadAsync(new MemoryStream(bytes[..length])))!;
        Assert.That(e.Message, Does.Contain($"after {length} of the").And.Contain("endpoint message"));
    }

    [Test]
    public void NullArgumentsAreRefused()
    {
        Assert.Throws<ArgumentNullException>(() => OutOfBandExchange.ParsePingPong(null!));
        Assert.ThrowsAsync<ArgumentNullException>(() => OutOfBandExchange.PingPongServerAsync(new MemoryStream(), Server, null!));
        Assert.ThrowsAsync<ArgumentNullException>(() => OutOfBandExchange.ExchangeAsync(null!, Server));
    }
}
