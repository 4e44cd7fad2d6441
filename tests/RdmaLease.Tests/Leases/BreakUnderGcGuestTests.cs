using System.Diagnostics;
using System.Globalization;
using System.Text;
using RdmaLease.Leases;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// The managed runtime sits on the path from the break signal to F_UNLCK. Breaks of a lease with a registered ODP
/// region, measured quiet and while another thread forces blocking, compacting gen2 collections over a large heap:
/// every break must still be given back well within lease-break-time. The distribution goes to docs/leases.md.
/// </summary>
[Category("Guest")]
[NonParallelizable]
public sealed class BreakUnderGcGuestTests
{
    private const int Breaks = 40;

    [Test]
    public void BreaksDuringGen2CollectionsStayWellWithinTheDeadline()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        using var pair = Pair();
        var quiet = Measure(dir, pair, "quiet", pressure: false);
        var underGc = Measure(dir, pair, "gen2", pressure: true);
        var sb = new StringBuilder();
        sb.AppendLine("| condition | breaks | gen2 GCs during | median ms | p90 ms | max ms |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var (name, values, gcs) in new[] { ("quiet", quiet.Values, quiet.Gen2), ("forced blocking gen2 GCs, 200 MB heap", underGc.Values, underGc.Gen2) })
        {
            var s = values.Order().ToList();
            sb.AppendLine(CultureInfo.InvariantCulture, $"| {name} | {s.Count} | {gcs} | {s[s.Count / 2]:F2} | {s[s.Count * 9 / 10]:F2} | {s[^1]:F2} |");
        }
        string text = sb.ToString();
        TestContext.Out.WriteLine("break signal -> lease released (FileLease.BreakToRelease), XFS-DAX, one ODP region, guest (TCG):\n" + text);
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.WriteAllText("/mnt/out/break-under-gc.md", text);
        double limit = FileLease.LeaseBreakTime.TotalMilliseconds / 2;
        Assert.Multiple(() =>
        {
            Assert.That(quiet.Values.Max(), Is.LessThan(limit));
            Assert.That(underGc.Values.Max(), Is.LessThan(limit), "a break under GC pressure came close to the kernel's deadline");
            Assert.That(underGc.Gen2, Is.GreaterThan(Breaks / 2), "the collections must actually overlap the breaks");
        });
    }

    private static (List<double> Values, int Gen2) Measure(TempDir dir, Verbs.RcPair pair, string name, bool pressure)
    {
        string path = dir.File(name);
        var values = new List<double>();
        using var stop = new CancellationTokenSource();
        Thread? collector = null;
        int gen2Before = GC.CollectionCount(2);
        if (pressure)
        {
            collector = new Thread(() =>
            {
                var keep = new List<byte[]>();
                for (int i = 0; i < 200; i++)
                    keep.Add(new byte[1 << 20]);
                while (!stop.IsCancellationRequested)
                {
                    for (int i = 0; i < 20; i++)
                        keep[Random.Shared.Next(keep.Count)] = new byte[1 << 20];
                    GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
                }
                GC.KeepAlive(keep);
            }) { IsBackground = true, Name = "gen2 pressure" };
            collector.Start();
        }
        try
        {
            for (int i = 0; i < Breaks; i++)
            {
                using var file = OpenFile(path, "/mnt/xfs", 4 * Block);
                var lease = file.AcquireLease();
                var broke = OnBreak(lease);
                using var mr = pair.PdB.Register(lease, RemoteWritable);
                var p = RunProbe(TimeSpan.FromSeconds(60), "open-rdonly", path);
                Assert.That(p.Ok, Is.True, p.Output);
                Assert.That(broke.Task.Wait(TimeSpan.FromSeconds(60)), Is.True);
                Assert.That(mr.IsDeregistered, Is.True);
                values.Add(lease.BreakToRelease!.Value.TotalMilliseconds);
            }
        }
        finally
        {
            stop.Cancel();
            collector?.Join();
        }
        return (values, GC.CollectionCount(2) - gen2Before);
    }
}
