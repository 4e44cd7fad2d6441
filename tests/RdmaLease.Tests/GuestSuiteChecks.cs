using System.Diagnostics;

namespace RdmaLease.Tests;

/// <summary>
/// After every test of a guest run: the kernel must list no QP, CQ, MR or PD of this process
/// (`rdma resource show`), i.e. everything the suite created was destroyed. A leak is written to
/// leaked-resources.txt in the results directory, which build.sh fails on, and fails the run.
/// </summary>
[SetUpFixture]
public class GuestSuiteChecks
{
    [OneTimeTearDown]
    public void NoVerbsResourcesLeft()
    {
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") != "1")
            return;
        // Objects a test dropped without Dispose are released by their SafeHandle finalizers.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        string pid = $" pid {Environment.ProcessId} ";
        var leaks = new List<string>();
        foreach (var kind in new[] { "qp", "cq", "mr", "pd" })
        {
            var psi = new ProcessStartInfo("rdma", $"resource show {kind}") { RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            leaks.AddRange(output.Split('\n').Where(l => (l + " ").Contains(pid, StringComparison.Ordinal)).Select(l => $"{kind}: {l.Trim()}"));
        }
        if (leaks.Count == 0)
            return;
        File.WriteAllLines("/mnt/out/leaked-resources.txt", leaks);
        throw new InvalidOperationException("verbs resources left after the suite:\n" + string.Join('\n', leaks));
    }
}
