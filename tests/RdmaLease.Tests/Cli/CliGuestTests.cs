using System.Diagnostics;
using System.Text.Json;
using RdmaLease.Leases;
using RdmaLease.Tests.Connections;
using RdmaLease.Tests.Packaging;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Cli;

/// <summary>The <c>rdma-lease</c> tool in the guest: devices as JSON, a lease watched through two breaks, bad input.</summary>
[Category("Guest")]
public class CliGuestTests
{
    static readonly string Cli = RepoPaths.File($"artifacts/bin/RdmaLease.Cli/{Tool.Configuration}/rdma-lease.dll");
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    static Tool.Result Run(params string[] args) => Tool.Run("dotnet", ["exec", Cli, .. args], timeoutMs: 120_000);

    [Test]
    public void DevicesAsJsonDescribeRxeloWithItsGidsAndCapabilities()
    {
        var r = Run("devices", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Output);
        using var doc = JsonDocument.Parse(r.Stdout);
        var rxelo = doc.RootElement.EnumerateArray().Single(d => d.GetProperty("name").GetString() == "rxelo");
        Assert.Multiple(() =>
        {
            Assert.That(rxelo.GetProperty("driver").GetString(), Is.EqualTo("rxe"));
            Assert.That(rxelo.GetProperty("odp").GetProperty("supported").GetBoolean(), Is.True);
            Assert.That(rxelo.GetProperty("flushPersistent").GetBoolean(), Is.True);
            Assert.That(rxelo.GetProperty("odpQuirk").GetString(), Is.Not.Null.And.Not.Empty, "rxe's ODP quirk is in force by default");
            var port = rxelo.GetProperty("ports")[0];
            Assert.That(port.GetProperty("state").GetString(), Is.EqualTo("Active"));
            Assert.That(port.GetProperty("activeMtu").GetInt32(), Is.EqualTo(4096));
            Assert.That(port.GetProperty("gids").EnumerateArray().Any(g => g.GetProperty("address").GetString() == "::ffff:127.0.0.1"), Is.True);
        });
    }

    [Test]
    public void DevicesAsTextNameTheQuirk()
    {
        var r = Run("devices", "--device", "rxelo");
        Assert.That(r.ExitCode, Is.Zero, r.Output);
        Assert.That(r.Stdout, Does.Contain("rxelo: driver rxe").And.Contain("ODP quirk:").And.Contain("GID 1: ::ffff:127.0.0.1"));
    }

    [TestCase(new[] { "devices", "--device", "no-such-device" }, 1, "no-such-device")]
    [TestCase(new[] { "lease", "/mnt/xfs/x", "--breaks", "-1" }, 1, "--breaks")]
    [TestCase(new[] { "lease", "/mnt/xfs/no-such-dir/x", "--size", "4096" }, 1, "no-such-dir")]
    [TestCase(new[] { "lease" }, 1, "FILE")]
    [TestCase(new[] { "frobnicate" }, 1, "frobnicate")]
    public void BadInputIsRefusedWithAMessage(string[] args, int exitCode, string mentioned)
    {
        var r = Run(args);
        Assert.That(r.ExitCode, Is.EqualTo(exitCode), r.Output);
        Assert.That(r.Output, Does.Contain(mentioned));
    }

    [Test]
    public async Task PingPongServesRdmaCoresClient()
    {
        // The tool runs samples/PingPong's own code with ibv_rc_pingpong's command line, untouched by our parser.
        const int Port = 18901, Size = 4096, Iterations = 10;
        string[] common = ["-d", "rxelo", "-g", "1", "-p", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-s", "4096", "-m", "4096", "-n", "10", "-e"];
        var server = Task.Run(() => Run(["pingpong", .. common]));
        PingPongSample.WaitForListener(Port, server);
        var client = PingPongSample.RunTheirs([.. common, "127.0.0.1"]);
        var ours = PingPongSample.Parse(await server, "rdma-lease pingpong");
        var theirs = PingPongSample.Parse(client, "ibv_rc_pingpong");
        Assert.Multiple(() =>
        {
            Assert.That(ours.Bytes, Is.EqualTo((long)Size * Iterations * 2));
            Assert.That(theirs.Bytes, Is.EqualTo((long)Size * Iterations * 2));
            Assert.That(ours.Remote, Is.EqualTo(theirs.Local));
        });
    }

    [Test]
    public void LeaseWatchesTwoBreaksAndTakesTheLeaseBackBetweenThem()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("watched");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "exec", Cli, "lease", path, "--size", "65536", "--breaks", "2", "--json" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var events = new List<JsonElement>();
        JsonElement Next()
        {
            var line = p.StandardOutput.ReadLineAsync().WaitAsync(Generous).GetAwaiter().GetResult();
            if (line is null)
                Assert.Fail($"the tool ended early: {stderr.Result}");   // only then: Result waits for the process to end
            var e = JsonDocument.Parse(line!).RootElement.Clone();
            events.Add(e);
            return e;
        }
        try
        {
            Assert.That(Next().GetProperty("event").GetString(), Is.EqualTo("acquired"));
            Assert.That(RunProbe(Generous, "truncate", path, "32768").Ok, Is.True);
            var first = Next();
            Assert.That(first.GetProperty("event").GetString(), Is.EqualTo("break"), first.ToString());
            var again = Next();
            Assert.That(again.GetProperty("event").GetString(), Is.EqualTo("acquired"), again.ToString());
            Assert.That(again.GetProperty("length").GetInt64(), Is.EqualTo(32768), "re-opened at the file's new size");
            Assert.That(RunProbe(Generous, "truncate", path, "16384").Ok, Is.True);
            var second = Next();
            var done = Next();
            Assert.That(p.WaitForExit(Generous), Is.True);
            Assert.Multiple(() =>
            {
                Assert.That(p.ExitCode, Is.Zero, stderr.Result);
                Assert.That(second.GetProperty("event").GetString(), Is.EqualTo("break"));
                Assert.That(second.GetProperty("count").GetInt32(), Is.EqualTo(2));
                foreach (var b in new[] { first, second })
                {
                    double ms = b.GetProperty("signalToReleaseMs").GetDouble();
                    Assert.That(ms, Is.GreaterThan(0).And.LessThan(FileLease.LeaseBreakTime.TotalMilliseconds), b.ToString());
                    Assert.That(b.GetProperty("teardownErrors").GetInt32(), Is.Zero);
                }
                Assert.That(done.GetProperty("event").GetString(), Is.EqualTo("done"));
                Assert.That(done.GetProperty("breaks").GetInt32(), Is.EqualTo(2));
            });
        }
        finally
        {
            if (!p.HasExited)
                p.Kill(entireProcessTree: true);
            TestContext.Out.WriteLine(string.Join("\n", events));
        }
    }
}
