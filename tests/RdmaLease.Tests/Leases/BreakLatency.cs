using System.Globalization;
using System.Text;
using RdmaLease.Leases;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// Repeated truncate(2) breaks with an empty teardown, split into phases on one clock (CLOCK_MONOTONIC, which the probe,
/// the signal handler and Stopwatch share): the other process's call → our signal handler → the watcher thread → the
/// release (F_UNLCK) → the other process's call returns.
/// </summary>
internal static class BreakLatency
{
    public static string Measure(string root, LeaseMechanism mechanism, int iterations)
    {
        var callToSignal = new List<double>();
        var signalToObserved = new List<double>();
        var observedToRelease = new List<double>();
        var signalToRelease = new List<double>();
        var callTotal = new List<double>();
        using var dir = CreateTempDir(root);
        for (int i = 0; i < iterations; i++)
        {
            string path = dir.File($"latency-{i}");
            using var file = DaxFile.Open(path, new DaxFileOptions { Size = 64 * 1024, AllowNonDax = true });
            using var lease = file.AcquireLease(new LeaseOptions { PreferDelegation = mechanism == LeaseMechanism.Delegation });
            Assert.That(lease.Mechanism, Is.EqualTo(mechanism));
            var broke = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
            lease.BreakRequested += (_, e) => broke.TrySetResult(e);
            var p = RunProbe(TimeSpan.FromSeconds(60), "truncate", path, "4096");
            Assert.That(p.Ok, Is.True, p.Output);
            Assert.That(broke.Task.Wait(TimeSpan.FromSeconds(30)), Is.True);
            var e = broke.Task.Result;
            static double Ms(long from, long to) => (to - from) * 1000.0 / System.Diagnostics.Stopwatch.Frequency;
            callToSignal.Add(Ms(p.StartTimestamp, e.SignalTimestamp));
            signalToObserved.Add(Ms(e.SignalTimestamp, e.ObservedTimestamp));
            observedToRelease.Add(Ms(e.ObservedTimestamp, e.ReleasedTimestamp));
            signalToRelease.Add(e.BreakToRelease.TotalMilliseconds);
            callTotal.Add(p.Elapsed.TotalMilliseconds);
            Assert.That(p.Elapsed, Is.LessThan(FileLease.LeaseBreakTime / 2));
        }
        var sb = new StringBuilder();
        void Row(string name, List<double> v)
        {
            v.Sort();
            double Pct(double q) => v[Math.Min(v.Count - 1, (int)Math.Ceiling(q * v.Count) - 1)];
            sb.AppendLine(CultureInfo.InvariantCulture, $"| {root} | {mechanism} | {name} | {v[0]:F3} | {Pct(0.5):F3} | {Pct(0.9):F3} | {v[^1]:F3} |");
        }
        Row("other process's truncate(2) starts → our signal handler runs", callToSignal);
        Row("signal handler → watcher thread has it", signalToObserved);
        Row("watcher → lease released (F_GETLEASE check, teardown, unmap, F_UNLCK)", observedToRelease);
        Row("**signal → release** (FileLease.BreakToRelease)", signalToRelease);
        Row("other process's truncate(2), total", callTotal);
        return sb.ToString();
    }

    public const string Header = "| fs | mechanism | phase | min ms | median ms | p90 ms | max ms |\n|---|---|---|---|---|---|---|\n";
}
