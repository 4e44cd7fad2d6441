using System.Globalization;
using System.Text.RegularExpressions;
using RdmaLease.Tests.Packaging;

namespace RdmaLease.Tests.Connections;

/// <summary>Runs samples/PingPong and rdma-core's ibv_rc_pingpong, and reads what they print.</summary>
static partial class PingPongSample
{
    /// <summary>The sample as built with this test binary (artifacts/bin/RdmaLease.PingPong/&lt;config&gt;/).</summary>
    public static string Dll => RepoPaths.File($"artifacts/bin/RdmaLease.PingPong/{Tool.Configuration}/RdmaLease.PingPong.dll");

    /// <summary>Runs our sample with <paramref name="args"/> and waits for it (at most <paramref name="timeoutMs"/>).</summary>
    public static Tool.Result RunOurs(IEnumerable<string> args, int timeoutMs = 120_000) =>
        Tool.Run("dotnet", ["exec", Dll, .. args], timeoutMs: timeoutMs);

    /// <summary>Runs rdma-core's ibv_rc_pingpong (the guest's ibverbs-utils) with <paramref name="args"/>.</summary>
    public static Tool.Result RunTheirs(IEnumerable<string> args, int timeoutMs = 120_000) =>
        Tool.Run("ibv_rc_pingpong", args, timeoutMs: timeoutMs);

    /// <summary>
    /// Waits until something listens on TCP <paramref name="port"/> (/proc/net/tcp and tcp6). The servers accept one
    /// connection only, so a probe connection would use it up; and rc_pingpong's stdout is a pipe, flushed only at exit.
    /// </summary>
    public static void WaitForListener(int port, Task server, int timeoutMs = 90_000)
    {
        string hexPort = port.ToString("X4", CultureInfo.InvariantCulture);
        var deadline = Environment.TickCount64 + timeoutMs;
        while (true)
        {
            foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
            {
                if (!File.Exists(table))
                    continue;
                // sl local_address rem_address st ...: the local address ends in :PORT, state 0A is LISTEN.
                foreach (var line in File.ReadLines(table).Skip(1))
                {
                    var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    if (f.Length > 3 && f[1].EndsWith(":" + hexPort, StringComparison.Ordinal) && f[3] == "0A")
                        return;
                }
            }
            if (server.IsCompleted)
                Assert.Fail($"the server exited before listening on {port}: {(server.IsFaulted ? server.Exception : ((Task<Tool.Result>)server).Result.Output)}");
            if (Environment.TickCount64 > deadline)
                Assert.Fail($"nothing listened on TCP port {port} within {timeoutMs / 1000} s");
            Thread.Sleep(100);
        }
    }

    /// <summary>What one side printed: its and its peer's address lines and the two summary lines, parsed.</summary>
    public sealed record Summary(string Local, string Remote, long Bytes, int Iterations, double Seconds, double UsecPerIter);

    public static Summary Parse(Tool.Result r, string who)
    {
        Assert.That(r.ExitCode, Is.Zero, $"{who} failed:\n{r.Output}");
        var local = LocalLine().Match(r.Stdout);
        var remote = RemoteLine().Match(r.Stdout);
        var bytes = BytesLine().Match(r.Stdout);
        var iters = ItersLine().Match(r.Stdout);
        Assert.That(local.Success && remote.Success && bytes.Success && iters.Success, $"{who} printed ibv_rc_pingpong's four lines:\n{r.Output}");
        Assert.That(bytes.Groups[2].Value, Is.EqualTo(iters.Groups[2].Value), $"{who}: the same seconds on both summary lines");
        return new Summary(local.Groups[1].Value, remote.Groups[1].Value, long.Parse(bytes.Groups[1].Value, CultureInfo.InvariantCulture),
            int.Parse(iters.Groups[1].Value, CultureInfo.InvariantCulture), double.Parse(iters.Groups[2].Value, CultureInfo.InvariantCulture),
            double.Parse(iters.Groups[3].Value, CultureInfo.InvariantCulture));
    }

    // rc_pingpong's printf formats, to the character.
    [GeneratedRegex(@"^  local address:  (LID 0x[0-9a-f]{4}, QPN 0x[0-9a-f]{6}, PSN 0x[0-9a-f]{6}, GID \S+)$", RegexOptions.Multiline)]
    private static partial Regex LocalLine();

    [GeneratedRegex(@"^  remote address: (LID 0x[0-9a-f]{4}, QPN 0x[0-9a-f]{6}, PSN 0x[0-9a-f]{6}, GID \S+)$", RegexOptions.Multiline)]
    private static partial Regex RemoteLine();

    [GeneratedRegex(@"^(\d+) bytes in (\d+\.\d\d) seconds = (\d+\.\d\d) Mbit/sec$", RegexOptions.Multiline)]
    private static partial Regex BytesLine();

    [GeneratedRegex(@"^(\d+) iters in (\d+\.\d\d) seconds = (\d+\.\d\d) usec/iter$", RegexOptions.Multiline)]
    private static partial Regex ItersLine();
}
