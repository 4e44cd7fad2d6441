using System.Globalization;
using System.Text.RegularExpressions;
using RdmaLease.Tests.Connections;
using RdmaLease.Tests.Packaging;
using RdmaLease.Tests.Samples;

namespace RdmaLease.Tests.Nodes;

/// <summary>
/// Two guests, each with its own kernel, rxe device (rxenode on eth0) and NVDIMMs, linked only to each other
/// (203.0.113.1 = node 0, 203.0.113.2 = node 1; docs/testing.md, "Two nodes"). Run on the host (category Nodes), which
/// boots the nodes through the harness and drives them; everything RDMA and FS-DAX runs inside them. One boot of both
/// nodes serves the tests below, in order: the third kills node 1 and boots it again, the last kills node 0 and boots
/// it again on its NVDIMMs (TwoNodeTests.Crash.cs).
/// </summary>
[Category("Nodes")]
[NonParallelizable]
[TestFixture]
public partial class TwoNodeTests
{
    static readonly TimeSpan Boot = TimeSpan.FromMinutes(10);
    static string PmemStore => $"dotnet exec artifacts/bin/RdmaLease.PmemStore/{Tool.Configuration}/RdmaLease.PmemStore.dll";
    static string PingPong => $"dotnet exec artifacts/bin/RdmaLease.PingPong/{Tool.Configuration}/RdmaLease.PingPong.dll";
    const string Node0 = "203.0.113.1", Node1 = "203.0.113.2";

    TempDir _dir = null!;
    (int, int) _ports;
#pragma warning disable NUnit1032   // disposed in StopBoth; the kill tests replace them with the node booted again
    NodeGuest _n0 = null!;
    NodeGuest _n1 = null!;
#pragma warning restore NUnit1032

    [OneTimeSetUp]
    public void BootBoth()
    {
        _dir = new TempDir();
        _ports = NodeGuest.FreePorts();
        _n0 = NodeGuest.Launch(0, _ports, Path.Combine(_dir.Path, "node0"), Path.Combine(_dir.Path, "pmem0"), Boot);
        _n1 = NodeGuest.Launch(1, _ports, Path.Combine(_dir.Path, "node1"), Path.Combine(_dir.Path, "pmem1"), Boot);
        _n0.WaitReady();
        _n1.WaitReady();
        // The link carries IP before anything uses RDMA on it.
        var ping = _n1.Run($"busybox ping -c 3 -W 2 {Node0}", TimeSpan.FromSeconds(60));
        Assert.That(ping.Exit, Is.Zero, ping.Output);
    }

    [OneTimeTearDown]
    public void StopBoth()
    {
        Stop(_n0);
        Stop(_n1);
        _n0?.Dispose();
        _n1?.Dispose();
        _dir?.Dispose();
    }

    static void Stop(NodeGuest? n)
    {
        try
        {
            n?.Stop(0, TimeSpan.FromSeconds(60));
        }
        catch (Exception e) when (e is AssertionException or IOException)
        {
            TestContext.Out.WriteLine($"node {n!.Node}: {e.Message}");
        }
    }

    /// <summary>Starts <paramref name="command"/> on <paramref name="node"/> and waits until it listens on TCP <paramref name="port"/>.</summary>
    static int StartListening(NodeGuest node, string command, int port)
    {
        int n = node.Start($"{command} & until ss -Hltn 'sport = :{port}' | grep -q .; do sleep 0.2; done; " +
            $"touch /mnt/out/ctl/listening-{port}; wait $!");
        node.WaitUntil(() => File.Exists(Path.Combine(node.Out, "ctl", $"listening-{port}")) || node.Done(n), TimeSpan.FromSeconds(120), $"a listener on port {port}");
        return n;
    }

    // Node 0 serves with our PingPong and node 1's ibv_rc_pingpong connects; then node 1 serves with ibv_rc_pingpong and
    // our PingPong on node 0 connects. Each side's remote address must be the other's local one, with the other
    // node's GID (its IPv4 address on the link).
    [Order(1)]
    [TestCase(0, true, 4096, 4096, 20)]
    [TestCase(1, false, 64, 1024, 20)]
    public void PingPongAcrossTheNodesOursAndRdmaCores(int serverOn, bool oursServes, int size, int mtu, int iterations)
    {
        int port = 18800 + serverOn;
        var (serverNode, clientNode) = serverOn == 0 ? (_n0, _n1) : (_n1, _n0);
        string common = $"-d rxenode -g 1 -p {port} -s {size} -m {mtu} -n {iterations} -e";
        int server = StartListening(serverNode, $"{(oursServes ? PingPong : "ibv_rc_pingpong")} {common}", port);
        int client = clientNode.Start($"{(oursServes ? "ibv_rc_pingpong" : PingPong)} {common} {(serverOn == 0 ? Node0 : Node1)}");
        var s = PingPongSample.Parse(new Tool.Result(serverNode.WaitFor(server, TimeSpan.FromMinutes(3)), serverNode.Log(server), ""), $"server on node {serverNode.Node}");
        var c = PingPongSample.Parse(new Tool.Result(clientNode.WaitFor(client, TimeSpan.FromMinutes(3)), clientNode.Log(client), ""), $"client on node {clientNode.Node}");
        TestContext.Out.WriteLine($"server node {serverNode.Node}: {s}\nclient node {clientNode.Node}: {c}");
        Assert.Multiple(() =>
        {
            Assert.That(s.Remote, Is.EqualTo(c.Local), "the server's peer is the client");
            Assert.That(c.Remote, Is.EqualTo(s.Local), "the client's peer is the server");
            Assert.That(s.Local, Does.EndWith($"::ffff:203.0.113.{serverNode.Node + 1}"), "the server's GID is its link address");
            Assert.That(c.Local, Does.EndWith($"::ffff:203.0.113.{clientNode.Node + 1}"), "the client's GID is its link address");
            Assert.That(s.Iterations, Is.EqualTo(iterations));
            Assert.That(c.Iterations, Is.EqualTo(iterations));
            Assert.That(s.Bytes, Is.EqualTo(2L * size * iterations), "the server counted every byte both ways");
            Assert.That(c.Bytes, Is.EqualTo(2L * size * iterations), "the client counted every byte both ways");
        });
    }

    // PmemStore's server on node 0 (rdma_cm listen/accept on rxenode), two clients on node 1 (rdma_cm connect), two
    // lease breaks on node 0 while they write; every acknowledged record verified by the server at SIGTERM.
    [Order(2)]
    [Test]
    public void PmemStoreServesTheOtherNodeAcrossLeaseBreaks()
    {
        const int records = 120;
        var server = StartServer(_n0, "store-a", 7561, "a");
        int[] clients = [.. Enumerable.Range(0, 2).Select(c => _n1.Start(
            $"{PmemStore} write --server {Node0}:7561 --device rxenode --client-id {c} --records {records} --window 2 --interval-ms 100 " +
            $"--give-up-s 60 --acked-log /mnt/out/a-acked-{c}"))];
        string[] breaks = ["truncate /mnt/xfs/store-a 8388608", "open-rdonly /mnt/xfs/store-a"];
        for (int b = 0; b < breaks.Length; b++)
        {
            int[] marks = [.. Enumerable.Range(0, 2).Select(c => Acked(_n1, $"a-acked-{c}"))];
            for (int c = 0; c < 2; c++)
            {
                int client = c;
                _n1.WaitUntil(() => Acked(_n1, $"a-acked-{client}") >= marks[client] + 5, TimeSpan.FromMinutes(3), $"client {c} storing before break {b + 1}");
            }
            var probe = _n0.Run($"artifacts/native/rdmalease-lease-probe {breaks[b]}", TimeSpan.FromSeconds(90));
            Assert.That(probe.Exit, Is.Zero, $"{breaks[b]}: {probe.Output}");
            _n0.WaitUntil(() => _n0.Log(server).Contains($"generation {b + 2}: leased", StringComparison.Ordinal), TimeSpan.FromMinutes(1), $"generation {b + 2}");
        }
        for (int c = 0; c < 2; c++)
        {
            int exit = _n1.WaitFor(clients[c], TimeSpan.FromMinutes(4));
            var summary = PmemStoreSample.ClientSummary(_n1.Log(clients[c]), c);
            TestContext.Out.WriteLine($"client {c}: {summary}");
            Assert.That(exit, Is.Zero, _n1.Log(clients[c]));
            Assert.That(summary.Acknowledged, Is.EqualTo(records));
            Assert.That(summary.Connections, Is.GreaterThanOrEqualTo(breaks.Length + 1), "it reconnected after every break");
        }
        for (int c = 0; c < 2; c++)
            File.Copy(Path.Combine(_n1.Out, $"a-acked-{c}"), Path.Combine(_n0.Out, $"a-acked-{c}"));
        var view = KernelViewOf(_n0);
        Assert.That(view.Leases, Is.Not.Empty, $"node 0's /proc/locks shows the server's lease\n{view.Raw}");
        Assert.That(view.MemoryRegions, Is.Not.Empty, $"node 0's kernel lists the server's regions\n{view.Raw}");
        string log = StopServer(_n0, server, "a", 2 * records);
        Assert.That(log, Does.Contain("2 breaks"));
        var after = KernelViewOf(_n0);
        Assert.That(after.Leases, Is.Empty, $"no lease left on node 0\n{after.Raw}");
        Assert.That(after.MemoryRegions, Is.Empty, $"no region left on node 0\n{after.Raw}");
    }

    // Node 1 (the client's machine) is killed mid-stream: the server on node 0 keeps its lease and its registrations,
    // and serves a new client from node 1 booted again; every record either client had acknowledged is verified.
    [Order(3)]
    [Test]
    public void AClientNodeKilledMidStreamLeavesTheServerServing()
    {
        var server = StartServer(_n0, "store-b", 7562, "b");
        int writer = _n1.Start($"{PmemStore} write --server {Node0}:7562 --device rxenode --client-id 0 --records 400 --window 2 --interval-ms 100 " +
            "--acked-log /mnt/out/b-acked-0");
        _n1.WaitUntil(() => Acked(_n1, "b-acked-0") >= 15, TimeSpan.FromMinutes(3), "client 0 storing");
        var before = KernelViewOf(_n0);
        _n1.Kill();
        int acked = Acked(_n1, "b-acked-0");
        Assert.That(_n1.Done(writer), Is.False, "the client was still writing when its node died");
        File.Copy(Path.Combine(_n1.Out, "b-acked-0"), Path.Combine(_n0.Out, "b-acked-0"));
        // Node 1 boots again at once (its link is up 20–40 s later, so not before the check below).
        _n1.Dispose();   // its QEMU is gone already
        _n1 = NodeGuest.Launch(1, _ports, Path.Combine(_dir.Path, "node1-again"), Path.Combine(_dir.Path, "pmem1"), Boot);

        // Longer than the client's silence timeout and rxe's retries: the server has noticed whatever it will notice.
        Thread.Sleep(TimeSpan.FromSeconds(20));
        var after = KernelViewOf(_n0);
        Assert.Multiple(() =>
        {
            Assert.That(after.Leases, Is.EquivalentTo(before.Leases), $"the lease is intact\nbefore:\n{before.Raw}\nafter:\n{after.Raw}");
            Assert.That(after.MemoryRegions, Is.SupersetOf(before.MemoryRegions), $"every registration is intact\nbefore:\n{before.Raw}\nafter:\n{after.Raw}");
            Assert.That(_n0.Done(server), Is.False, "the server is still running");
        });

        _n1.WaitReady();
        var fresh = _n1.Run($"{PmemStore} write --server {Node0}:7562 --device rxenode --client-id 1 --records 40 --window 2 " +
            "--give-up-s 60 --acked-log /mnt/out/b-acked-1", TimeSpan.FromMinutes(4));
        Assert.That(fresh.Exit, Is.Zero, fresh.Output);
        Assert.That(PmemStoreSample.ClientSummary(fresh.Output, 1).Acknowledged, Is.EqualTo(40));
        File.Copy(Path.Combine(_n1.Out, "b-acked-1"), Path.Combine(_n0.Out, "b-acked-1"));
        string log = StopServer(_n0, server, "b", acked + 40);
        Assert.That(log, Does.Contain("0 breaks"));
    }

    /// <summary>
    /// Starts PmemStore's server for FILE on node 0's XFS (<paramref name="clients"/> clients, 512 records each; at SIGTERM
    /// it verifies TAG-acked-N for each) and waits for its first lease.
    /// </summary>
    static int StartServer(NodeGuest node, string file, int port, string tag, int clients = 2)
    {
        string verify = string.Join(' ', Enumerable.Range(0, clients).Select(c => $"--verify /mnt/out/{tag}-acked-{c}"));
        int n = node.Start($"{PmemStore} serve /mnt/xfs/{file} --address {Node0} --port {port} --device rxenode --clients {clients} --area-records 512 " +
            $"{verify} & echo $! > /mnt/out/{tag}-server.pid; wait $!");
        node.WaitUntil(() => node.Log(n).Contains("generation 1: leased", StringComparison.Ordinal) || node.Done(n), TimeSpan.FromMinutes(2), "the server's first lease");
        Assert.That(node.Done(n), Is.False, node.Log(n));
        return n;
    }

    /// <summary>SIGTERM to the server (it verifies the acked logs it was given): asserts it verified <paramref name="acked"/> records, none missing or corrupt.</summary>
    static string StopServer(NodeGuest node, int server, string tag, int acked)
    {
        var kill = node.Run($"kill -TERM $(cat /mnt/out/{tag}-server.pid)", TimeSpan.FromSeconds(30));
        Assert.That(kill.Exit, Is.Zero, kill.Output);
        int exit = node.WaitFor(server, TimeSpan.FromMinutes(2));
        string log = node.Log(server);
        TestContext.Out.WriteLine(string.Join('\n', log.Split('\n').Where(l => l.Contains("verify", StringComparison.Ordinal) || l.Contains("stopping", StringComparison.Ordinal))));
        Assert.That(exit, Is.Zero, log);
        var total = PmemStoreSample.VerifyTotal(log);
        Assert.That(total, Is.EqualTo(((long)acked, (long)acked, 0L, 0L)), log);
        Assert.That(log, Does.Contain("0 leases still held, 0 bytes still registered"));
        return log;
    }

    /// <summary>Lines in a client's acked log on the host side of a node's share (its header not counted).</summary>
    static int Acked(NodeGuest node, string log)
    {
        string path = Path.Combine(node.Out, log);
        return File.Exists(path) ? Math.Max(0, File.ReadAllLines(path).Count(l => l.Length > 0) - 1) : 0;
    }

    internal sealed record View(List<string> Leases, List<string> MemoryRegions, string Raw);

    /// <summary>The node kernel's own view: /proc/locks leases and `rdma resource show mr` user-space regions.</summary>
    internal static View KernelViewOf(NodeGuest node)
    {
        var r = node.Run("echo '## locks'; cat /proc/locks; echo '## mr'; rdma resource show mr", TimeSpan.FromSeconds(60));
        Assert.That(r.Exit, Is.Zero, r.Output);
        string[] lines = r.Output.Split('\n');
        int mr = Array.IndexOf(lines, "## mr");
        var leases = lines.Take(mr).Where(l => l.Contains("LEASE", StringComparison.Ordinal) || l.Contains("DELEG", StringComparison.Ordinal))
            .Select(l => WhitespaceRuns().Replace(l[(l.IndexOf(':') + 1)..].Trim(), " ")).ToList();
        var mrs = lines.Skip(mr + 1).Where(l => l.Contains("rkey", StringComparison.Ordinal) && !l.Contains("comm [", StringComparison.Ordinal))
            .Select(l => l.Trim()).ToList();
        return new View(leases, mrs, r.Output);
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex WhitespaceRuns();
}
