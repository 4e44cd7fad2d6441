using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using RdmaLease.Tests.Samples;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Security;

/// <summary>
/// An attack on samples/PmemStore: a server with two honest clients writing, and an attacker holding a legitimate
/// client id (and so a grant of its own area) that tries keys, reconnecting after every error, each time writing a
/// marker at the start of an honest client's area. What it tries is what would work if isolation failed: all 256 keys of
/// the index of each honest client's live window (their exact keys, as if leaked, among them), and each area region's
/// own key with its exact address. It must reach nothing it was not granted: no attempt succeeds, the marker is nowhere
/// in the file, every record acknowledged to the honest clients is intact, the server stays up, and every attempt shows
/// in the server's peer_errors metric. <c>RDMA_LEASE_SWEEP_INDEXES=N</c> adds all 256 keys of each of the N key indexes
/// below and above the attacker's own first key: the issue's sweep is N = 64, 33,024 more reconnects, about 25 minutes
/// at this TCG guest's 24 attempts/s, so the suite runs the targeted attack and docs/security.md has the sweep's result.
/// </summary>
[Category("Guest")]
[NonParallelizable]
public class PmemStoreAttackGuestTests
{
    // One at a time: the server grants one connection per client id (a second is told to retry).
    const int Parallel = 1;
    // The honest clients write one record per 700 ms for longer than the attack lasts (at least 20 attempts/s here).
    static readonly int SweepIndexes = int.TryParse(Environment.GetEnvironmentVariable("RDMA_LEASE_SWEEP_INDEXES"), out int n) ? Math.Clamp(n, 0, 1024) : 0;
    static readonly int Records = 100 + (2 * SweepIndexes + 1) * 256 / 20 * 10 / 7 * (SweepIndexes > 0 ? 1 : 0);
    static readonly int AreaRecords = (Records + 63) / 64 * 64;
    static readonly ulong AreaBytes = (ulong)AreaRecords * 4096UL;
    static readonly TimeSpan Start = TimeSpan.FromSeconds(90);

    [Test]
    public async Task AnAttackerSweepingKeysReachesNothingItWasNotGranted()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string file = dir.File("store"), port = "7571";
        string[] logs = [dir.File("acked-0"), dir.File("acked-1")];
        // Three client areas: 0 and 1 honest, 2 the attacker's; a spare one after them.
        using var server = PmemStoreSample.Live("serve", file, "--address", "198.51.100.1", "--port", port, "--device", "rxecm",
            "--clients", "3", "--area-records", AreaRecords.ToString(CultureInfo.InvariantCulture), "--verify", logs[0], "--verify", logs[1]);
        server.WaitFor("generation 1: leased", Start);
        var endpoint = new IPEndPoint(IPAddress.Parse("198.51.100.1"), int.Parse(port, CultureInfo.InvariantCulture));

        var honest = Enumerable.Range(0, 2).Select(c => PmemStoreSample.Live("write", "--server", endpoint.ToString(), "--device", "rxecm",
            "--client-id", c.ToString(CultureInfo.InvariantCulture), "--records", Records.ToString(CultureInfo.InvariantCulture), "--window", "1", "--interval-ms", "700",
            "--acked-log", logs[c], "--timeout-s", (600 + Records).ToString(CultureInfo.InvariantCulture))).ToArray();
        KeySweep.Result result;
        RemoteRegion first;
        int honestReconnects = 0;
        try
        {
            for (int c = 0; c < honest.Length; c++)
                server.WaitFor($"client {c} connected from", Start);
            var sweep = new KeySweep(endpoint, "rxecm", KeySweep.PmemStoreHello(2), KeySweep.PmemStoreGrant);
            first = await sweep.FirstGrantAsync();
            Assert.That(first.Length, Is.EqualTo(AreaBytes), "the attacker's grant is its own area, nothing more");
            // Client c's area is at c * AreaBytes of the file: the honest areas lie just below the attacker's (client 2).
            ulong AreaStart(int c) => first.Address - (ulong)(2 - c) * AreaBytes;
            var liveKeys = new[] { GrantKey(server.Output, 0), GrantKey(server.Output, 1) };
            var areaKeys = PmemStoreGuestTests.LastAreaKeys(server.Output);
            var attempts = new List<(uint Key, ulong Address)>();
            for (int c = 0; c < 2; c++)
                attempts.AddRange(KeySweep.KeysAround(liveKeys[c], 0, 0).Select(k => (k, AreaStart(c))));
            for (int c = 0; c < 3; c++)
                attempts.Add((areaKeys[c], AreaStart(c)));
            Assert.That(attempts, Has.Count.EqualTo(2 * 256 + 3));
            if (SweepIndexes > 0)
                attempts.AddRange(KeySweep.KeysAround(first.RemoteKey, SweepIndexes, SweepIndexes).Select((k, i) => (k, AreaStart(i % 2))));
            Assert.That(attempts.Select(a => a.Key), Is.SupersetOf(liveKeys), "the honest clients' exact keys are tried");
            result = await sweep.RunAsync(attempts, Parallel);
            TestContext.Out.WriteLine($"attack (live windows 0x{liveKeys[0]:x}, 0x{liveKeys[1]:x}; area keys {string.Join(", ", areaKeys.Select(k => $"0x{k:x}"))}; own first grant 0x{first.RemoteKey:x}): {result}");
            Assert.That(server.HasExited, Is.False, "the server stays up through the sweep\n" + server.Output);
            foreach (var line in server.Output.Split('\n').Where(l => l.Contains("(client id 0)", StringComparison.Ordinal) || l.Contains("(client id 1)", StringComparison.Ordinal)
                || l.Contains("client 0 connected", StringComparison.Ordinal) || l.Contains("client 1 connected", StringComparison.Ordinal)))
                TestContext.Out.WriteLine("server: " + line);

            for (int c = 0; c < honest.Length; c++)
            {
                int exit = honest[c].WaitForExit(TimeSpan.FromSeconds(600 + Records));
                var summary = PmemStoreSample.ClientSummary(honest[c].Output, c);
                TestContext.Out.WriteLine($"honest client {c}: {summary}");
                honestReconnects += summary.Connections - 1;
                foreach (var line in honest[c].Output.Split('\n').Where(l => l.Contains("connection lost", StringComparison.Ordinal)))
                    TestContext.Out.WriteLine("  " + line);
                Assert.That(exit, Is.Zero, honest[c].Output);
                Assert.That(summary.Acknowledged, Is.EqualTo(Records));
                // Not asserted: that the honest clients kept one connection. rxe's ODP occasionally fails a write into a page
                // touched for the first time under load (docs/known-defects.md); the client reconnects and resends, and
                // the records are verified below. ASweepOfAPeersKeysDoesNotDisturbThatPeer shows the sweep itself does not.
            }
        }
        finally
        {
            foreach (var c in honest)
                c.Dispose();
        }
        server.Signal("TERM");
        int serverExit = server.WaitForExit(TimeSpan.FromSeconds(60));
        string output = server.Output;
        TestContext.Out.WriteLine(string.Join('\n', output.Split('\n').Where(l => !l.Contains(" connected from ", StringComparison.Ordinal)).TakeLast(40)));

        // The file as the server left it: the marker anywhere is a foreign write (the attacker never wrote its own area).
        byte[] bytes = File.ReadAllBytes(file);
        long foreign = 0;
        for (int at = bytes.AsSpan().IndexOf(KeySweep.Marker); at >= 0;)
        {
            foreign += KeySweep.Marker.Length;
            int next = bytes.AsSpan(at + 1).IndexOf(KeySweep.Marker);
            at = next < 0 ? -1 : at + 1 + next;
        }
        var total = PmemStoreSample.VerifyTotal(output);
        var errors = Regex.Match(output, @"peer errors on standing grants \(rdmalease\.verbs\.peer_errors by peer\): 198\.51\.100\.1: (\d+)");
        Assert.Multiple(() =>
        {
            Assert.That(result.Succeeded, Is.Zero, "no guessed key reached anything");
            Assert.That(foreign, Is.Zero, "foreign bytes written (the marker in the file)");
            Assert.That(result.RemoteAccessErrors + result.OtherErrors, Is.EqualTo(result.Attempts), "every attempt failed");
            Assert.That(result.OwnKeys.Distinct().Count(), Is.EqualTo(result.OwnKeys.Count), "every connection had a grant with a key never given before");
            Assert.That(serverExit, Is.Zero, output);
            Assert.That(total, Is.EqualTo((2L * Records, 2L * Records, 0L, 0L)), "every record acknowledged to the honest clients present and intact");
            Assert.That(errors.Success, Is.True, "the sweep shows in the server's peer_errors metric\n" + output);
            if (errors.Success)
                // Every refused attempt (an attempt the attacker saw fail otherwise, e.g. flushed, may still be an access
                // error at the server), plus the honest clients' own transient errors (same address: one per reconnect).
                Assert.That(long.Parse(errors.Groups[1].Value, CultureInfo.InvariantCulture), Is.InRange(result.RemoteAccessErrors, result.Attempts + honestReconnects),
                    "peer_errors for the attacker's address counts every refused attempt");
        });
    }

    /// <summary>Client <paramref name="client"/>'s newest grant key ("client N connected from ... grant rkey 0x...").</summary>
    static uint GrantKey(string output, int client)
    {
        var m = Regex.Matches(output, $@"client {client} connected from \S+ \(QP \d+, grant rkey 0x([0-9a-f]+)");
        Assert.That(m, Is.Not.Empty, output);
        return uint.Parse(m[^1].Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
    }
}
