using System.Text.RegularExpressions;

namespace RdmaLease.Tests.Nodes;

/// <summary>
/// Crash durability across two kernels: a client on node 1 writes and flushes records into PmemStore's file on node 0's
/// FS-DAX; after some acknowledged records node 0's QEMU is SIGKILLed (no shutdown) and booted again on the same NVDIMM
/// backing files, which it mounts as they are (XFS replays its log); `PmemStore verify-crash` then checks the store
/// against the client's acked log, which the client appended line by line to its node's share as acknowledgements came.
/// QEMU has no CPU cache to lose (a guest store to the NVDIMM is in the backing file's page cache at once), so this
/// tests the protocol's acknowledgement order and the detection of torn records, not a missing cache flush
/// (docs/pmem-store.md, "Crash durability"). Node 1 stays up; node 0 boots four times: one store per cut point, each
/// verified by the next boot.
/// </summary>
[Category("Nodes")]
[NonParallelizable]
public partial class ServerNodeCrashTests
{
    // Cut points: (acknowledged records before the kill, window, pause after each batch of completions). The first two
    // kill between paced batches; the third streams 8 records in flight, so the kill lands mid-batch.
    static readonly (int AfterAcked, int Window, int IntervalMs)[] Cuts = [(10, 1, 300), (40, 2, 100), (30, 8, 0)];

    // The client gives up after this long without an acknowledgement; with its 15 s silence timeout and a 10 s connect
    // attempt on top, it must have failed within Bound of the kill.
    const int GiveUpSeconds = 20;
    static readonly TimeSpan Bound = TimeSpan.FromSeconds(GiveUpSeconds + 15 + 10 + 15);

    [Test]
    public void AcknowledgedRecordsSurviveTheServerNodeKilledAtThreeCutPoints()
    {
        using var dir = new TempDir();
        var ports = NodeGuest.FreePorts();
        string pmem0 = Path.Combine(dir.Path, "pmem0");
        var report = new List<string>();
        using var client = NodeGuest.Launch(1, ports, Path.Combine(dir.Path, "node1"), Path.Combine(dir.Path, "pmem1"), TwoNodeTests.Boot);
        (int Writer, DateTime KilledAt, int AckedAtKill)? previous = null;
        for (int k = 0; k <= Cuts.Length; k++)
        {
            string out0 = Path.Combine(dir.Path, $"node0-boot{k}");
            Directory.CreateDirectory(out0);
            // Node 0 boots again at once: the client on node 1 is failing meanwhile, checked below.
            using var server = NodeGuest.Boot(0, ports, out0, pmem0, TwoNodeTests.Boot);
            if (k == 0)
                client.WaitReady();   // booted alongside node 0's first boot
            if (previous is { } p)
            {
                ClientFailed(client, k - 1, p.Writer, p.KilledAt, p.AckedAtKill, report);
                File.Copy(Path.Combine(client.Out, $"acked-{k - 1}"), Path.Combine(out0, $"acked-{k - 1}"));
                report.Add(VerifyAfterCrash(server, k - 1));
            }
            if (k == Cuts.Length)
            {
                Assert.That(server.Stop(0, TimeSpan.FromMinutes(1)), Is.Zero);
                break;
            }

            var (after, window, interval) = Cuts[k];
            TwoNodeTests.StartServer(server, $"store-{k}", 7600 + k, $"c{k}");
            int writer = client.Start($"{TwoNodeTests.PmemStore} write --server 203.0.113.1:{7600 + k} --device rxenode --client-id 0 " +
                $"--records 400 --window {window} --interval-ms {interval} --give-up-s {GiveUpSeconds} --acked-log /mnt/out/acked-{k}");
            client.WaitUntil(() => TwoNodeTests.Acked(client, $"acked-{k}") >= after, TimeSpan.FromMinutes(3), $"{after} acknowledged records (cut {k})");
            server.Kill();
            previous = (writer, DateTime.UtcNow, TwoNodeTests.Acked(client, $"acked-{k}"));
            Assert.That(client.Done(writer), Is.False, $"the client was still writing at cut {k}");
        }
        foreach (string line in report)
            TestContext.Out.WriteLine(line);
    }

    /// <summary>
    /// A server node gone makes the client fail within a bounded time (<see cref="Bound"/> after the kill, by the host's
    /// clock: the exit file's time on the share), with a clear error.
    /// </summary>
    static void ClientFailed(NodeGuest client, int k, int writer, DateTime killedAt, int ackedAtKill, List<string> report)
    {
        var left = Bound - (DateTime.UtcNow - killedAt);
        int exit = client.WaitFor(writer, left > TimeSpan.FromSeconds(1) ? left : TimeSpan.FromSeconds(1));
        var failedAfter = File.GetLastWriteTimeUtc(Path.Combine(client.Out, "ctl", $"{writer}.exit")) - killedAt;
        string log = client.Log(writer);
        // Acknowledgements node 0 sent before it died may still reach the client afterwards (in the host's socket
        // buffers, or not yet processed by node 1's vCPU): they count like any other, and the store must hold them.
        int late = TwoNodeTests.Acked(client, $"acked-{k}") - ackedAtKill;
        report.Add($"cut {k}: node 0 killed after {ackedAtKill} acknowledged (+{late} acknowledgements it had sent arrived after the kill); " +
            $"the client failed {failedAfter.TotalSeconds:0.0} s after the kill");
        Assert.Multiple(() =>
        {
            Assert.That(exit, Is.EqualTo(1), log);
            Assert.That(failedAfter, Is.LessThanOrEqualTo(Bound), "the client failed within the bound");
            Assert.That(log, Does.Contain("giving up: no record acknowledged for").And.Contain("Is the server at 203.0.113.1"), log);
            Assert.That(late, Is.InRange(0, Cuts[k].Window), "at most a window of acknowledgements in flight at the kill");
        });
    }

    /// <summary>Runs verify-crash on the store of cut <paramref name="k"/> on node 0 booted again; asserts nothing acknowledged was lost.</summary>
    static string VerifyAfterCrash(NodeGuest server, int k)
    {
        var mount = server.Run("grep ' /mnt/xfs ' /proc/mounts; ls -l /mnt/xfs", TimeSpan.FromSeconds(30));
        var r = server.Run($"{TwoNodeTests.PmemStore} verify-crash /mnt/xfs/store-{k} --acked /mnt/out/acked-{k} --area-records 512", TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(mount.Output + r.Output);
        var m = Total().Match(r.Output);
        Assert.That(m.Success, Is.True, $"no verify-crash total:\n{r.Output}");
        long acked = long.Parse(m.Groups[1].Value), lost = long.Parse(m.Groups[2].Value), whole = long.Parse(m.Groups[3].Value), partial = long.Parse(m.Groups[4].Value);
        Assert.Multiple(() =>
        {
            Assert.That(r.Exit, Is.Zero, r.Output);
            Assert.That(acked, Is.GreaterThanOrEqualTo(Cuts[k].AfterAcked), "the store was checked against every acknowledgement");
            Assert.That(lost, Is.Zero, "acknowledged records lost");
            // Unacknowledged pages: at most what could have been in flight (the window), each whole or detected as partial.
            Assert.That(whole + partial, Is.LessThanOrEqualTo(Cuts[k].Window), "pages beyond the acknowledged ones");
        });
        return $"cut {k} (after {Cuts[k].AfterAcked}, window {Cuts[k].Window}): {acked} acknowledged, {lost} lost; {whole} unacknowledged found whole, {partial} partial (detected)";
    }

    [GeneratedRegex(@"PmemStore verify-crash: (\d+) acknowledged, (\d+) acknowledged lost; (\d+) unacknowledged found whole, (\d+) unacknowledged found partial")]
    private static partial Regex Total();
}
