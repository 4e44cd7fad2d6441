using System.Globalization;
using RdmaLease.Tests.Leases;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Samples;

/// <summary>
/// samples/PmemStore end to end in the guest: a hosted server leasing an FS-DAX file, two client processes appending
/// records with RDMA WRITE + FLUSH over rdma_cm (rxecm on 198.51.100.1), three lease breaks of different kinds by
/// another process while they write, every acknowledged record verified, then SIGTERM and the kernel's own lists
/// showing that the server left no MR, QP, PD or lease behind.
/// </summary>
[Category("Guest")]
[NonParallelizable]   // counts the guest's user-space verbs objects before and after
public class PmemStoreGuestTests
{
    const int Clients = 2, AreaRecords = 512, Records = 400;
    const long AreaBytes = AreaRecords * 4096L, FileSize = (Clients + 1) * AreaBytes;
    static readonly TimeSpan Start = TimeSpan.FromSeconds(90), Step = TimeSpan.FromSeconds(45);

    [Test]
    public void TwoClientsThreeBreaksEveryAcknowledgedRecordVerifiedThenAnOrderedShutdown()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string file = dir.File("store"), port = "7561";
        string[] logs = [dir.File("acked-0"), dir.File("acked-1")];
        var baseline = Resources();

        using var server = PmemStoreSample.Live("serve", file, "--address", "198.51.100.1", "--port", port, "--device", "rxecm",
            "--clients", "2", "--area-records", AreaRecords.ToString(CultureInfo.InvariantCulture), "--verify", logs[0], "--verify", logs[1]);
        server.WaitFor("generation 1: leased", Start);
        Assert.That(new FileInfo(file).Length, Is.EqualTo(FileSize), "one area per client and a spare one");

        var clients = Enumerable.Range(0, Clients).Select(c => PmemStoreSample.Live("write", "--server", "198.51.100.1:" + port,
            "--device", "rxecm", "--client-id", c.ToString(CultureInfo.InvariantCulture), "--records", Records.ToString(CultureInfo.InvariantCulture),
            "--window", "2", "--interval-ms", "150", "--acked-log", logs[c], "--timeout-s", "240")).ToArray();
        try
        {
            // Three kinds of break, none destroying acknowledged data: a truncate to a LARGER size, a hole punched in
            // the spare area nobody writes, and a plain open for reading.
            string[][] breaks =
            [
                ["truncate", file, (FileSize + AreaBytes).ToString(CultureInfo.InvariantCulture)],
                ["punch", file, (Clients * AreaBytes).ToString(CultureInfo.InvariantCulture), AreaBytes.ToString(CultureInfo.InvariantCulture)],
                ["open-rdonly", file],
            ];
            for (int b = 0; b < breaks.Length; b++)
            {
                int generation = b + 1;
                // Each client stores records in this generation before it is broken: the break comes while they write.
                int[] marks = [.. clients.Select(c => c.Count)];
                for (int c = 0; c < Clients; c++)
                {
                    Assert.That(clients[c].HasExited, Is.False, $"client {c} finished before break {generation}: give it more records\n{clients[c].Output}");
                    // "progress: N acknowledged" comes every 10 records whose FLUSH completed: not the connect line.
                    clients[c].WaitFor(": progress: ", b == 0 ? Start : Step, marks[c], $"client {c} storing in generation {generation}");
                }
                var probe = RunProbe(TimeSpan.FromSeconds(60), breaks[b]);
                Assert.That(probe.Ok, Is.True, $"{breaks[b][0]}: {probe.Output}");
                server.WaitFor($"break {generation}:", Step);
                server.WaitFor($"generation {generation + 1}: leased", Step);
            }

            for (int c = 0; c < Clients; c++)
            {
                int exit = clients[c].WaitForExit(TimeSpan.FromSeconds(180));
                var summary = PmemStoreSample.ClientSummary(clients[c].Output, c);
                TestContext.Out.WriteLine($"client {c}: {summary}");
                Assert.Multiple(() =>
                {
                    Assert.That(exit, Is.Zero, clients[c].Output);
                    Assert.That(summary.Acknowledged, Is.EqualTo(Records), "every record stored in the end");
                    Assert.That(summary.Connections, Is.GreaterThanOrEqualTo(breaks.Length + 1), "it reconnected after every break");
                });
            }
        }
        finally
        {
            foreach (var c in clients)
                c.Dispose();
        }

        // The server still holds its region and lease; then SIGTERM.
        Assert.That(OwnedLeasesOf(server.Id), Has.Count.EqualTo(1), "/proc/locks: the server's lease");
        var keys = LastAreaKeys(server.Output);
        Assert.That(keys, Has.Count.EqualTo(Clients));
        Assert.That(RemoteKeys(), Is.SupersetOf(keys), "rdma resource show mr: the server's last areas are registered");
        server.Signal("TERM");
        int serverExit = server.WaitForExit(TimeSpan.FromSeconds(60));
        string output = server.Output;
        TestContext.Out.WriteLine(output);
        var total = PmemStoreSample.VerifyTotal(output);
        Assert.Multiple(() =>
        {
            Assert.That(serverExit, Is.Zero, output);
            Assert.That(total, Is.EqualTo(((long)Clients * Records, (long)Clients * Records, 0L, 0L)), "every acknowledged record present and intact");
            Assert.That(output, Does.Contain("stopping: listener closed").And.Contain("; 3 breaks,"));
            Assert.That(output, Does.Contain("Shutting down: tearing down"), "the host's ordered teardown ran");
            Assert.That(output, Does.Contain("0 leases still held, 0 bytes still registered"), "and left nothing");
            Assert.That(output.IndexOf("stopping: listener closed", StringComparison.Ordinal),
                Is.LessThan(output.IndexOf("Shutting down: tearing down", StringComparison.Ordinal)), "the store stops before the objects it used are torn down");
            Assert.That(OwnedLeasesOf(server.Id), Is.Empty, "/proc/locks: no lease of the server's pid");
            Assert.That(RemoteKeys().Intersect(keys), Is.Empty, "rdma resource show mr: the areas are deregistered");
            Assert.That(Resources(), Is.EqualTo(baseline), "rdma resource show: no MR, QP or PD of the server remains");
        });
    }

    [Test]
    public void AClientIdWithoutAnAreaIsRefusedByTheServer()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        using var server = PmemStoreSample.Live("serve", dir.File("store"), "--address", "198.51.100.1", "--port", "7562", "--device", "rxecm",
            "--clients", "1", "--area-records", "16");
        server.WaitFor("generation 1: leased", Start);
        var r = PmemStoreSample.Run("write", "--server", "198.51.100.1:7562", "--device", "rxecm", "--client-id", "1", "--records", "4");
        Assert.That(r.ExitCode, Is.EqualTo(2), r.Output);
        Assert.That(r.Stdout, Does.Contain("the server refused: client id 1 is not one of 0..0"));
        server.Signal("TERM");
        Assert.That(server.WaitForExit(TimeSpan.FromSeconds(60)), Is.Zero, server.Output);
    }

    static List<string> OwnedLeasesOf(int pid) =>
        [.. File.ReadLines("/proc/locks").Where(l =>
        {
            string[] t = l.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return t.Length > 5 && t[1] is "LEASE" or "DELEG" && t[4] == pid.ToString(CultureInfo.InvariantCulture);
        })];

    /// <summary>The user-space MRs, QPs and PDs the kernel lists (those of exited creating threads included), by count.</summary>
    static (int Mr, int Qp, int Pd) Resources() =>
        (KernelView.RdmaResources("mr").Count, KernelView.RdmaResources("qp").Count, KernelView.RdmaResources("pd").Count);

    static HashSet<uint> RemoteKeys() => KernelView.RegisteredRemoteKeys();

    /// <summary>The area keys of the server's newest generation ("generation N: leased ..., (keys 0x..,0x.., grant nothing...").</summary>
    internal static List<uint> LastAreaKeys(string output)
    {
        var m = System.Text.RegularExpressions.Regex.Matches(output, @"client areas registered \(keys ([0-9a-fx,]+), grant nothing");
        Assert.That(m, Is.Not.Empty, output);
        return [.. m[^1].Groups[1].Value.Split(',').Select(k => uint.Parse(k[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture))];
    }
}
