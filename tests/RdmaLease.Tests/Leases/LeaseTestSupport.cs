using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using RdmaLease.Leases;

namespace RdmaLease.Tests.Leases;

/// <summary>What rdmalease-lease-probe reported: "ok|err ERRNO start_ns=S end_ns=E elapsed_ns=D".</summary>
internal sealed record ProbeResult(bool Ok, int Errno, long StartTimestamp, long EndTimestamp, TimeSpan Elapsed, string Output)
{
    public static ProbeResult Parse(string output)
    {
        string[] t = output.Trim().Split(' ');
        if (t.Length != 5 || (t[0] != "ok" && t[0] != "err"))
            throw new FormatException($"unexpected probe output '{output}'");
        long Value(string field) => long.Parse(field[(field.IndexOf('=', StringComparison.Ordinal) + 1)..], CultureInfo.InvariantCulture);
        return new ProbeResult(t[0] == "ok", int.Parse(t[1], CultureInfo.InvariantCulture),
            LeaseSignals.MonotonicNsToStopwatch(Value(t[2])), LeaseSignals.MonotonicNsToStopwatch(Value(t[3])),
            TimeSpan.FromTicks(Value(t[4]) / 100), output.Trim());
    }
}

/// <summary>The other process: the lease-probe tool next to the test assembly, and temp-file plumbing.</summary>
internal static class LeaseTestSupport
{
    public const int EAGAIN = 11;
    public const int F_RDLCK = 0;
    public const int F_UNLCK = 2;
    public const int POLL_MSG = 3;

    public static string ProbePath
    {
        get
        {
            string p = Path.Combine(AppContext.BaseDirectory, "rdmalease-lease-probe");
            Assert.That(File.Exists(p), Is.True, $"{p} is missing: build with make -C native before dotnet build");
            return p;
        }
    }

    /// <summary>True when the running kernel has F_SETDELEG (Linux 6.19 and later).</summary>
    public static bool KernelHasDelegations => Environment.OSVersion.Version >= new Version(6, 19);

    public static LeaseMechanism ExpectedMechanism => KernelHasDelegations ? LeaseMechanism.Delegation : LeaseMechanism.Lease;

    /// <summary>Starts the probe (another process) on one operation; the task completes when it exits.</summary>
    public static Task<ProbeResult> StartProbe(params string[] args)
    {
        var psi = new ProcessStartInfo(ProbePath) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        var process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start the probe");
        return Task.Run(async () =>
        {
            using (process)
            {
                string stdout = await process.StandardOutput.ReadToEndAsync().ConfigureAwait(false);
                string stderr = await process.StandardError.ReadToEndAsync().ConfigureAwait(false);
                await process.WaitForExitAsync().ConfigureAwait(false);
                if (process.ExitCode == 2)
                    throw new InvalidOperationException($"probe usage error: {stderr}");
                return ProbeResult.Parse(stdout);
            }
        });
    }

    /// <summary>Runs the probe and waits for it, failing after <paramref name="timeout"/>.</summary>
    public static ProbeResult RunProbe(TimeSpan timeout, params string[] args)
    {
        var task = StartProbe(args);
        Assert.That(task.Wait(timeout), Is.True, $"probe {string.Join(' ', args)} did not finish within {timeout}");
        return task.Result;
    }

    /// <summary>A fresh directory under <paramref name="root"/> for one test, removed afterwards.</summary>
    public static TempDir CreateTempDir(string root) => new(root);

    /// <summary>A recognisable byte pattern: every position gets a value depending on it and on the seed.</summary>
    public static void Fill(Span<byte> span, int seed)
    {
        for (int i = 0; i < span.Length; i++)
            span[i] = Pattern(i, seed);
    }

    public static byte Pattern(long i, int seed) => (byte)((i * 131) + (i >> 8) + seed);

    /// <summary>Asserts every byte of <paramref name="data"/> against <see cref="Pattern"/>, naming the first mismatch.</summary>
    public static void AssertPattern(ReadOnlySpan<byte> data, int seed, string what)
    {
        for (int i = 0; i < data.Length; i++)
        {
            if (data[i] != Pattern(i, seed))
                Assert.Fail($"{what}: byte {i} is {data[i]}, expected {Pattern(i, seed)}");
        }
    }

    /// <summary>Reads a file with ordinary read(2)s (not through any mapping).</summary>
    public static byte[] ReadFile(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
        var data = new byte[fs.Length];
        fs.ReadExactly(data);
        return data;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int sigqueue(int pid, int sig, nint value);

    /// <summary>Queues <paramref name="signal"/> to this process with sival = <paramref name="value"/> (si_fd then reads as it).</summary>
    public static void SigQueueSelf(int signal, int value)
    {
        if (sigqueue(Environment.ProcessId, signal, value) != 0)
            Assert.Fail($"sigqueue failed: errno {Marshal.GetLastPInvokeError()}");
    }
}

internal sealed class TempDir : IDisposable
{
    public TempDir(string root)
    {
        FullName = Path.Combine(root, $"rdma-lease-test-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(FullName);
    }

    public string FullName { get; }

    public string File(string name) => Path.Combine(FullName, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(FullName, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>A lease dependent that runs a callback when the lease ends, to observe the teardown's order and timing.</summary>
internal static class TeardownHooks
{
    /// <summary>
    /// Runs <paramref name="callback"/> in the deregistration step of the lease's teardown (after every region was
    /// revoked, before F_UNLCK), last added first, on the thread that ends the lease. Dispose to remove it.
    /// </summary>
    public static IDisposable RegisterTeardown(this FileLease lease, Action<FileLease> callback) =>
        lease.AddDependent(new CallbackDependent(lease, callback));

    private sealed class CallbackDependent(FileLease lease, Action<FileLease> callback) : ILeaseDependent
    {
        public void Revoke(LeaseRevokedException reason, List<Exception> errors)
        {
        }

        public bool Deregister(long waitUntil, List<Exception> errors)
        {
            callback(lease);
            return true;
        }
    }
}
