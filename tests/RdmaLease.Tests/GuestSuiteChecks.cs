using RdmaLease.Leases;

namespace RdmaLease.Tests;

/// <summary>
/// After every test of a run, the system's own view must show nothing of ours left: no lease or delegation in
/// /proc/locks, no descriptor or mapping of a test file (/proc/self/fd, /proc/self/maps), a live lease-break watcher if
/// one was started, and in the guest no QP, CQ, MR or PD of this process (`rdma resource show`). What is left is written
/// to leaked-resources.txt in the results directory, which build.sh fails on, and fails the run.
/// </summary>
[SetUpFixture]
public class GuestSuiteChecks
{
    [OneTimeTearDown]
    public void NothingLeftBehind()
    {
        // Objects a test dropped without Dispose are released by their SafeHandle finalizers.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        var leaks = Leftovers();
        if (leaks.Count == 0)
            return;
        string where = Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1" ? "/mnt/out" : Path.Combine(RepoPaths.Root, "artifacts", "test-results", "host");
        Directory.CreateDirectory(where);
        File.WriteAllLines(Path.Combine(where, "leaked-resources.txt"), leaks);
        throw new InvalidOperationException("left behind after the suite:\n" + string.Join('\n', leaks));
    }

    internal static List<string> Leftovers()
    {
        var leaks = new List<string>();
        leaks.AddRange(KernelView.OwnLeases().Select(l => "lease: " + l));
        foreach (var entry in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            string? target = null;
            try
            {
                target = new FileInfo(entry).LinkTarget;
            }
            catch (IOException)
            {
            }
            if (target?.Contains("rdma-lease-test-", StringComparison.Ordinal) == true)
                leaks.Add($"descriptor: {Path.GetFileName(entry)} -> {target}");
        }
        leaks.AddRange(File.ReadLines("/proc/self/maps").Where(l => l.Contains("rdma-lease-test-", StringComparison.Ordinal)).Select(l => "mapping: " + l));
        if (LeaseSignals.IsInstalled && !LeaseSignals.IsWatcherAlive)
            leaks.Add("the lease-break watcher thread is dead");
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
        {
            foreach (var kind in new[] { "qp", "cq", "mr", "pd" })
                leaks.AddRange(KernelView.RdmaResources(kind).Select(l => $"{kind}: {l}"));
        }
        return leaks;
    }
}
