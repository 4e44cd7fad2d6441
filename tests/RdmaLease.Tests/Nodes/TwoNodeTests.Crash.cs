using System.Text.RegularExpressions;

namespace RdmaLease.Tests.Nodes;

/// <summary>
/// Crash durability across two kernels, the fixture's last test: three clients on node 1 write and flush records into
/// one PmemStore file on node 0's FS-DAX, each at its own cut point of its stream; node 0's QEMU is SIGKILLed (no
/// shutdown) and booted again on the same NVDIMM backing files, which it mounts as they are (XFS replays its log);
/// `PmemStore verify-crash` then checks the store against the clients' acked logs, which they appended line by line to
/// their node's share as acknowledgements came. QEMU has no CPU cache to lose (a guest store to the NVDIMM is in the
/// backing file's page cache at once), so this tests the protocol's acknowledgement order and the detection of torn
/// records, not a missing cache flush (docs/pmem-store.md, "Crash durability"). One kill and one boot serve the three
/// cut points: each is a client's own place in its stream when the power goes.
/// </summary>
public partial class TwoNodeTests
{
    // Cut points, one client each: (acknowledged records before the kill, window, pause after each batch of completions).
    // The first two are between paced batches; the third streams 8 records in flight, so the kill lands mid-batch. It
    // starts once the other two are storing (so it cannot finish before they reach their marks), and the kill follows
    // the last mark reached. Every client has 512 records (the server's area): the paced ones must still be writing when
    // the third reaches its mark (the second was at 347 of 400 in one run with a 100 ms pause, load average 14).
    static readonly (int AfterAcked, int Window, int IntervalMs)[] Cuts = [(10, 1, 300), (40, 2, 150), (30, 8, 0)];

    // A client gives up after this long without an acknowledgement; with its 15 s silence timeout and a 10 s connect
    // attempt on top, it must have failed within Bound of the kill.
    const int GiveUpSeconds = 10;
    static readonly TimeSpan Bound = TimeSpan.FromSeconds(GiveUpSeconds + 15 + 10 + 15);

    [Order(4)]
    [Test]
    public void AcknowledgedRecordsSurviveTheServerNodeKilledAtThreeCutPoints()
    {
        StartServer(_n0, "store-c", 7563, "c", Cuts.Length);
        int[] writers = new int[Cuts.Length];
        for (int k = 0; k < Cuts.Length; k++)
        {
            if (k == Cuts.Length - 1)
                for (int j = 0; j < k; j++)
                {
                    int c = j;
                    _n1.WaitUntil(() => Acked(_n1, $"c-acked-{c}") >= 1, TimeSpan.FromMinutes(3), $"client {c} storing");
                }
            var (_, window, interval) = Cuts[k];
            writers[k] = _n1.Start($"{PmemStore} write --server {Node0}:7563 --device rxenode --client-id {k} --records 512 --window {window} " +
                $"--interval-ms {interval} --give-up-s {GiveUpSeconds} --acked-log /mnt/out/c-acked-{k}");
        }
        for (int j = 0; j < Cuts.Length; j++)
        {
            int c = j;
            _n1.WaitUntil(() => Acked(_n1, $"c-acked-{c}") >= Cuts[c].AfterAcked, TimeSpan.FromMinutes(3), $"{Cuts[c].AfterAcked} acknowledged records (cut {c})");
        }
        _n0.Kill();
        var killedAt = DateTime.UtcNow;
        int[] ackedAtKill = [.. Enumerable.Range(0, Cuts.Length).Select(k => Acked(_n1, $"c-acked-{k}"))];
        for (int k = 0; k < Cuts.Length; k++)
            Assert.That(_n1.Done(writers[k]), Is.False, $"client {k} was still writing at the kill");

        // Node 0 boots again at once: the clients on node 1 are failing meanwhile, checked below.
        _n0.Dispose();
        _n0 = NodeGuest.Boot(0, _ports, Path.Combine(_dir.Path, "node0-again"), Path.Combine(_dir.Path, "pmem0"), Boot);
        var report = new List<string>();
        for (int k = 0; k < Cuts.Length; k++)
        {
            ClientFailed(_n1, k, writers[k], killedAt, ackedAtKill[k], report);
            File.Copy(Path.Combine(_n1.Out, $"c-acked-{k}"), Path.Combine(_n0.Out, $"c-acked-{k}"));
        }
        report.Add(VerifyAfterCrash(_n0, [.. Enumerable.Range(0, Cuts.Length).Select(k => Acked(_n1, $"c-acked-{k}"))]));
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
        int late = Acked(client, $"c-acked-{k}") - ackedAtKill;
        report.Add($"cut {k} (window {Cuts[k].Window}, pause {Cuts[k].IntervalMs} ms): node 0 killed after {ackedAtKill} acknowledged " +
            $"(+{late} acknowledgements it had sent arrived after the kill); the client failed {failedAfter.TotalSeconds:0.0} s after the kill");
        Assert.Multiple(() =>
        {
            Assert.That(exit, Is.EqualTo(1), log);
            Assert.That(ackedAtKill, Is.GreaterThanOrEqualTo(Cuts[k].AfterAcked), "the cut came after its mark");
            Assert.That(failedAfter, Is.LessThanOrEqualTo(Bound), "the client failed within the bound");
            Assert.That(log, Does.Contain("giving up: no record acknowledged for").And.Contain($"Is the server at {Node0}"), log);
            Assert.That(late, Is.InRange(0, Cuts[k].Window), "at most a window of acknowledgements in flight at the kill");
        });
    }

    /// <summary>Runs verify-crash on node 0 booted again over every client's acked log; asserts nothing acknowledged was lost.</summary>
    static string VerifyAfterCrash(NodeGuest server, int[] ackedPerClient)
    {
        string logs = string.Join(' ', Enumerable.Range(0, Cuts.Length).Select(k => $"--acked /mnt/out/c-acked-{k}"));
        var r = server.Run($"grep ' /mnt/xfs ' /proc/mounts; ls -l /mnt/xfs; {PmemStore} verify-crash /mnt/xfs/store-c {logs} --area-records 512",
            TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.Output);
        var m = Total().Match(r.Output);
        Assert.That(m.Success, Is.True, $"no verify-crash total:\n{r.Output}");
        long acked = long.Parse(m.Groups[1].Value), lost = long.Parse(m.Groups[2].Value), whole = long.Parse(m.Groups[3].Value), partial = long.Parse(m.Groups[4].Value);
        Assert.Multiple(() =>
        {
            Assert.That(r.Exit, Is.Zero, r.Output);
            Assert.That(r.Output, Does.Contain(" /mnt/xfs xfs "), "node 0 mounted its XFS again");
            Assert.That(acked, Is.EqualTo(ackedPerClient.Sum()), "the store was checked against every acknowledgement");
            Assert.That(lost, Is.Zero, "acknowledged records lost");
            // Unacknowledged pages: at most what could have been in flight (the windows), each whole or detected as partial.
            Assert.That(whole + partial, Is.LessThanOrEqualTo(Cuts.Sum(c => c.Window)), "pages beyond the acknowledged ones");
        });
        return $"{acked} acknowledged over the three cuts, {lost} lost; {whole} unacknowledged found whole, {partial} partial (detected)";
    }

    [GeneratedRegex(@"PmemStore verify-crash: (\d+) acknowledged, (\d+) acknowledged lost; (\d+) unacknowledged found whole, (\d+) unacknowledged found partial")]
    private static partial Regex Total();
}
