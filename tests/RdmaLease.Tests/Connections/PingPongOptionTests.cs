using RdmaLease.Tests.Packaging;

namespace RdmaLease.Tests.Connections;

/// <summary>
/// samples/PingPong's command line on the host: options are checked before any device is opened, so bad ones fail here
/// the way ibv_rc_pingpong fails (a message, the usage, exit code 1).
/// </summary>
public class PingPongOptionTests
{
    [TestCase("-x", "invalid option -- 'x'")]
    [TestCase("-m 1000", "-m 1000: a path MTU is 256, 512, 1024, 2048 or 4096")]
    [TestCase("--mtu=100", "--mtu 100: a path MTU is")]
    [TestCase("-p 70000", "-p 70000: a TCP port is 1..65535")]
    [TestCase("-i 0", "a port number of the device")]
    [TestCase("--size=abc", "--size 'abc': not a message size")]
    [TestCase("-s 0", "a message size in bytes is 1..")]
    [TestCase("-n -3", "-n '-3': not a number of exchanges")]
    [TestCase("-l 16", "a service level is 0..15")]
    [TestCase("-r 09", "not a number of receives")]
    [TestCase("-s", "option requires an argument -- 's'")]
    [TestCase("--iters", "option '--iters' requires an argument")]
    [TestCase("--events=1", "option '--events' doesn't allow an argument")]
    [TestCase("--i 3", "option '--i' is ambiguous")]
    [TestCase("--bogus", "unrecognized option '--bogus'")]
    [TestCase("-O", "option '-O' (implicit on-demand paging) of ibv_rc_pingpong is not supported")]
    [TestCase("--ts", "option '--ts' (completion timestamps) of ibv_rc_pingpong is not supported")]
    [TestCase("host1 host2", "one server name at most, got 2")]
    public void BadCommandLinesFailWithTheReasonAndTheUsage(string args, string reason)
    {
        var r = PingPongSample.RunOurs(args.Split(' '), timeoutMs: 60_000);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.StartWith("PingPong: ").And.Contain(reason));
        Assert.That(r.Stdout, Does.Contain("Usage:").And.Contain("-g, --gid-idx=<gid index>"));
    }

    [Test]
    public void HelpPrintsTheUsageAndSucceeds()
    {
        var r = PingPongSample.RunOurs(["--help"], timeoutMs: 60_000);
        Assert.That(r.ExitCode, Is.Zero, r.Output);
        foreach (var option in new[] { "-p, --port", "-d, --ib-dev", "-i, --ib-port", "-s, --size", "-m, --mtu", "-r, --rx-depth",
                     "-n, --iters", "-l, --sl", "-e, --events", "-g, --gid-idx", "-o, --odp" })
            Assert.That(r.Stdout, Does.Contain(option));
    }
}
