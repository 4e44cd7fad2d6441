using System.Net;
using System.Net.Sockets;
using System.Text;
using RdmaLease.Tests.Packaging;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Connections;

/// <summary>
/// samples/PingPong against rdma-core's ibv_rc_pingpong in the guest, both ways round, over rxelo (GID index 1,
/// ::ffff:127.0.0.1) with the TCP exchange on 127.0.0.1: several sizes and path MTUs, with completion events (-e) and
/// busy polling. Each side's summary must count what it moved, and each side's "remote address" must be the other's
/// "local address" (the exchange carried the right endpoints). Busy polling is slow with two pollers on the guest's one
/// vCPU (about 0.3 s per iteration), hence the small -n.
/// </summary>
[Category("Guest")]
public class PingPongGuestTests
{
    static int s_nextPort = 18600;

    static int NextPort() => Interlocked.Increment(ref s_nextPort);

    static string[] Common(int port, int size, int mtu, bool events, int iterations) =>
        ["-d", "rxelo", "-g", "1", "-p", port.ToString(), "-s", size.ToString(), "-m", mtu.ToString(), "-n", iterations.ToString(),
            .. events ? new[] { "-e" } : []];

    // The last case also runs with few receives posted (refilled every few messages) and a service level, on both sides.
    [TestCase(1, 1024, false, 10, "")]
    [TestCase(4096, 4096, true, 30, "")]
    [TestCase(65536, 1024, true, 20, "--rx-depth=4 -l 3")]
    public async Task OurServerServesRdmaCoresClient(int size, int mtu, bool events, int iterations, string more)
    {
        int port = NextPort();
        string[] args = [.. Common(port, size, mtu, events, iterations), .. more.Split(' ', StringSplitOptions.RemoveEmptyEntries)];
        var server = Task.Run(() => PingPongSample.RunOurs(args));
        PingPongSample.WaitForListener(port, server);
        var client = PingPongSample.RunTheirs([.. args, "127.0.0.1"]);
        AssertBothCounted(await server, "our server", client, "ibv_rc_pingpong client", size, iterations);
    }

    [TestCase(1, 4096, true, 30, "")]
    [TestCase(4096, 1024, false, 10, "-r 3")]
    [TestCase(65536, 4096, false, 10, "")]
    public async Task OurClientConnectsToRdmaCoresServer(int size, int mtu, bool events, int iterations, string more)
    {
        int port = NextPort();
        string[] args = [.. Common(port, size, mtu, events, iterations), .. more.Split(' ', StringSplitOptions.RemoveEmptyEntries)];
        var server = Task.Run(() => PingPongSample.RunTheirs(args));
        PingPongSample.WaitForListener(port, server);
        var client = PingPongSample.RunOurs([.. args, "127.0.0.1"]);
        AssertBothCounted(await server, "ibv_rc_pingpong server", client, "our client", size, iterations);
    }

    [Test]
    public async Task OnDemandPagingWorksWhereTheDeviceMovesItCorrectly()
    {
        // rxe's ODP data path is correct at path MTU 4096 from a page boundary (docs/known-defects.md): both sides ODP.
        int port = NextPort();
        var args = Common(port, 4096, 4096, events: true, iterations: 20);
        var server = Task.Run(() => PingPongSample.RunOurs([.. args, "-o"]));
        PingPongSample.WaitForListener(port, server);
        var client = PingPongSample.RunTheirs([.. args, "-o", "127.0.0.1"]);
        AssertBothCounted(await server, "our ODP server", client, "ibv_rc_pingpong ODP client", 4096, 20);
    }

    [Test]
    public async Task OnDemandPagingThatRxeWouldCorruptIsRefusedClearly()
    {
        // 4 KiB messages at path MTU 1024 are four packets: rxe would misplace three of them in an ODP buffer.
        int port = NextPort();
        var args = Common(port, 4096, 1024, events: true, iterations: 5);
        var server = Task.Run(() => PingPongSample.RunOurs([.. args, "-o"]));
        PingPongSample.WaitForListener(port, server);
        var client = PingPongSample.RunTheirs([.. args, "127.0.0.1"], timeoutMs: 60_000);
        var ours = await server;
        Assert.That(ours.ExitCode, Is.EqualTo(1), ours.Output);
        Assert.That(ours.Stderr, Does.Contain("PingPong: refused:").And.Contain("On-Demand-Paging").And.Contain("-m 4096"));
        Assert.That(ours.Stdout, Does.Not.Contain("iters in"));
        // Our server stopped before answering: rdma-core's client could not read its address.
        Assert.That(client.ExitCode, Is.Not.Zero, client.Output);
        Assert.That(client.Stderr, Does.Contain("Couldn't read/write remote address"));
    }

    [Test]
    public void OurClientWithNoServerSaysSoAndFails()
    {
        int port = NextPort();
        var started = Environment.TickCount64;
        var r = PingPongSample.RunOurs(["-d", "rxelo", "-g", "1", "-p", port.ToString(), "127.0.0.1"], timeoutMs: 90_000);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain($"Couldn't connect to 127.0.0.1:{port}").And.Contain("is the server running"));
        Assert.That(r.Stdout, Does.Contain("local address:").And.Not.Contain("remote address:"));
        TestContext.Out.WriteLine($"failed after {(Environment.TickCount64 - started) / 1000.0:F1} s");
    }

    [Test]
    public void RoceWithoutAGidIndexIsRefusedWithTheFix()
    {
        var r = PingPongSample.RunOurs(["-d", "rxelo", "-p", NextPort().ToString(), "127.0.0.1"], timeoutMs: 90_000);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain("is RoCE: give the GID index to send from with -g"));
        r = PingPongSample.RunOurs(["-d", "nosuchdev", "-g", "1"], timeoutMs: 90_000);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain("IB device nosuchdev not found").And.Contain("rxelo"));
    }

    [Test]
    public async Task RdmaCoresClientsAddressMessageParses()
    {
        // Be the server to a real ibv_rc_pingpong client: take its message byte for byte, then hang up, so it exits
        // (and flushes the "local address" line its message must match).
        using var listener = new TcpListener(IPAddress.Loopback, NextPort());
        listener.Start(1);
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var client = Task.Run(() => PingPongSample.RunTheirs(["-d", "rxelo", "-g", "1", "-p", port.ToString(), "127.0.0.1"], timeoutMs: 60_000));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        byte[] raw = new byte[OutOfBandExchange.PingPongMessageLength];
        using (var socket = await listener.AcceptSocketAsync(cts.Token))
        await using (var stream = new NetworkStream(socket, ownsSocket: false))
            await stream.ReadExactlyAsync(raw, cts.Token);
        var r = await client;
        string text = Encoding.Latin1.GetString(raw);
        TestContext.Out.WriteLine($"ibv_rc_pingpong sent \"{text.Replace("\0", "\\0")}\"");
        Assert.That(text, Does.Match("^[0-9a-f]{4}:[0-9a-f]{6}:[0-9a-f]{6}:[0-9a-f]{32}\0$"));
        var endpoint = OutOfBandExchange.ParsePingPong(text);
        Assert.That(endpoint.Gid, Is.EqualTo(IPAddress.Parse("::ffff:127.0.0.1")));
        Assert.That(OutOfBandExchange.FormatPingPong(endpoint) + "\0", Is.EqualTo(text), "we write what rdma-core writes");
        Assert.That(r.ExitCode, Is.Not.Zero);
        Assert.That(r.Stdout, Does.Contain(
            $"  local address:  LID 0x{endpoint.Lid:x4}, QPN 0x{endpoint.QueuePairNumber:x6}, PSN 0x{endpoint.PacketSequenceNumber:x6}, GID ::ffff:127.0.0.1"));
    }

    [Test]
    public async Task TheBinaryExchangeConnectsQueuePairsThatThenMoveEveryByte()
    {
        // Two QPs of this process, each side's endpoint and region crossing a real TCP connection in our binary form.
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(16);
        using var a = pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        using var b = pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        using var source = pd.AllocateBuffer(8192);
        using var target = pd.AllocateBuffer(8192, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        Random.Shared.NextBytes(source.Span);

        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start(1);
        using var tcpA = new TcpClient();
        var accepted = listener.AcceptTcpClientAsync();
        await tcpA.ConnectAsync(IPAddress.Loopback, ((IPEndPoint)listener.LocalEndpoint).Port);
        using var tcpB = await accepted;
        var forA = OutOfBandExchange.ExchangeAsync(tcpB.GetStream(), b.LocalEndpoint(1), target.ToRemote());
        var fromB = await OutOfBandExchange.ExchangeAsync(tcpA.GetStream(), a.LocalEndpoint(1));
        var fromA = await forA;
        Assert.That(fromB.Endpoint.QueuePairNumber, Is.EqualTo(b.QueuePairNumber));
        Assert.That(fromA.Region, Is.Null);
        a.Connect(fromB.Endpoint, new ConnectOptions { GidIndex = 1 });
        b.Connect(fromA.Endpoint, new ConnectOptions { GidIndex = 1, RemoteAccess = AccessFlags.RemoteWrite });   // QPs grant nothing by default

        a.PostWrite(1, source.All, fromB.Region!.Value);
        var wc = RdmaLease.Tests.Verbs.RcPair.WaitOne(cq);
        wc.ThrowIfFailed();
        Assert.That(target.Span.SequenceEqual(source.Span), "every byte of the RDMA WRITE arrived");
    }

    static void AssertBothCounted(Tool.Result serverRun, string serverName, Tool.Result clientRun, string clientName, int size, int iterations)
    {
        TestContext.Out.WriteLine($"{serverName}:\n{serverRun.Output}\n{clientName}:\n{clientRun.Output}");
        var server = PingPongSample.Parse(serverRun, serverName);
        var client = PingPongSample.Parse(clientRun, clientName);
        foreach (var s in new[] { server, client })
        {
            // rc_pingpong counts size * iters * 2: every iteration one message each way.
            Assert.That(s.Bytes, Is.EqualTo((long)size * iterations * 2));
            Assert.That(s.Iterations, Is.EqualTo(iterations));
            Assert.That(s.Seconds, Is.GreaterThan(0));
        }
        Assert.That(server.Remote, Is.EqualTo(client.Local), "the server got the client's endpoint");
        Assert.That(client.Remote, Is.EqualTo(server.Local), "the client got the server's endpoint");
        Assert.That(server.Local, Does.EndWith("GID ::ffff:127.0.0.1"));
    }
}
