using LeaseInterop = RdmaLease.Leases.Interop;
using System.Globalization;
using System.Text;
using RdmaLease.Leases;
using Tmds.Linux;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// FS-DAX files and delegations in the QEMU guest (tools/vm/guest-init.sh): XFS and ext4 on emulated pmem mounted
/// -o dax=always, a tmpfs, lease-break-time 5 s, kernel 7.3 (F_SETDELEG).
/// </summary>
[Category("Guest")]
public class LeaseGuestTests
{
    private static readonly string[] DaxMounts = ["/mnt/xfs", "/mnt/ext4"];

    [TestCaseSource(nameof(DaxMounts))]
    public void DaxFileIsDetectedAndMappedWithMapSync(string mount)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("dax");
        const int Size = 2 * 1024 * 1024 + 4096;
        using (var file = DaxFile.Open(path, new DaxFileOptions { Size = Size }))
        {
            Assert.Multiple(() =>
            {
                Assert.That(file.IsDax, Is.True, "statx STATX_ATTR_DAX");
                Assert.That(file.IsMapSync, Is.True);
                Assert.That(SmapsFlags(file), Does.Contain("sf"), "VmFlags 'sf' = synchronous page faults (MAP_SYNC)");
            });
            Fill(file.Span, seed: 42);
            Assert.That(file.Flush(), Is.EqualTo(DaxFile.CpuFlushMethod));
            Assert.That(file.Flush(123, 4567), Is.EqualTo(DaxFile.CpuFlushMethod));
        }
        byte[] contents = ReadFile(path);
        Assert.That(contents, Has.Length.EqualTo(Size));
        AssertPattern(contents, 42, $"{mount}: file written through the MAP_SYNC mapping");

        using var readOnly = DaxFile.Open(path, new DaxFileOptions { Access = DaxFileAccess.Read });
        Assert.That(readOnly.IsDax, Is.True);
        Assert.That(readOnly.IsMapSync, Is.False, "MAP_SYNC is for writable mappings");
        AssertPattern(readOnly.Span, 42, $"{mount}: read-only DAX mapping");
    }

    [TestCaseSource(nameof(DaxMounts))]
    public void DelegationIsTaken(string mount)
    {
        using var dir = CreateTempDir(mount);
        using var file = DaxFile.Open(dir.File("deleg"), new DaxFileOptions { Size = 4096 });
        using var lease = file.AcquireLease();
        Assert.Multiple(() =>
        {
            Assert.That(lease.Mechanism, Is.EqualTo(LeaseMechanism.Delegation));
            Assert.That(lease.DelegationUnavailableReason, Is.Null);
            Assert.That(LeaseInterop.Fcntl.GetDeleg(file.FileDescriptor, out int t), Is.Zero);
            Assert.That(t, Is.EqualTo(LibC.F_WRLCK), "F_GETDELEG");
            Assert.That(LeaseInterop.Fcntl.GetLease(file.FileDescriptor), Is.EqualTo(LibC.F_UNLCK), "F_GETLEASE does not see a delegation");
            Assert.That(File.ReadAllLines("/proc/locks").Select(l => LeaseHolders.ParseLocksLine(l, file.DeviceMajor, file.DeviceMinor, file.Inode)),
                Does.Contain(((int, string)?)(Environment.ProcessId, "DELEG ACTIVE WRITE")));
        });
        lease.Release();
        Assert.That(LeaseInterop.Fcntl.GetDeleg(file.FileDescriptor, out int after), Is.Zero);
        Assert.That(after, Is.EqualTo(LibC.F_UNLCK));
    }

    [TestCaseSource(nameof(DaxMounts))]
    public void TruncateBreaksTheDelegationInOrder(string mount) =>
        BreakScenarios.TruncateBreaksWriteLease(mount, dax: true, LeaseMechanism.Delegation);

    [TestCaseSource(nameof(DaxMounts))]
    public void ReadDelegationIgnoresReadersAndBreaksOnWriter(string mount) =>
        BreakScenarios.ReadLeaseIgnoresReadersAndBreaksOnWriter(mount, dax: true, LeaseMechanism.Delegation);

    [Test]
    public void TmpfsIsRefusedUnlessAllowed()
    {
        using var dir = CreateTempDir("/mnt/tmpfs");
        string path = dir.File("plain");
        var e = Assert.Throws<FileNotOnDaxException>(() => DaxFile.Open(path, new DaxFileOptions { Size = 8192 }));
        Assert.That(e!.Message, Does.Contain("dax=always"));
        Assert.That(File.Exists(path), Is.False);
        using var file = DaxFile.Open(path, new DaxFileOptions { Size = 8192, AllowNonDax = true });
        Assert.Multiple(() =>
        {
            Assert.That(file.IsDax, Is.False);
            Assert.That(file.IsMapSync, Is.False);
            Assert.That(SmapsFlags(file), Does.Not.Contain("sf"));
        });
        Fill(file.Span, 5);
        Assert.That(file.Flush(), Is.EqualTo(FlushMethod.Msync));
        AssertPattern(ReadFile(path), 5, "tmpfs file");
    }

    /// <summary>
    /// Which operation of another process breaks which kind of lease, on XFS and ext4 with DAX, with the
    /// break-signal-to-release latency (teardown empty). The table is written to the test output and, in the guest, to
    /// /mnt/out/lease-matrix.md. Asserted: truncate and opens break both kinds; unlink, rename, chmod and link break a
    /// delegation only.
    /// </summary>
    [Test]
    public void BreakMatrix()
    {
        string[][] ops =
        [
            ["truncate", "truncate(2) shrink"], ["truncate-grow", "truncate(2) grow"], ["open-rdonly", "open O_RDONLY"],
            ["open-rdwr", "open O_RDWR"], ["unlink", "unlink"], ["rename", "rename"], ["chmod", "chmod"], ["link", "link"],
        ];
        var table = new StringBuilder();
        table.AppendLine(CultureInfo.InvariantCulture, $"kernel {Environment.OSVersion.Version}, lease-break-time {FileLease.LeaseBreakTime.TotalSeconds} s, write lease/delegation on an O_RDWR MAP_SYNC-mapped 64 KiB file");
        table.AppendLine();
        table.AppendLine("| fs | operation by another process | mechanism | broke | signal->release | the other process waited | break target (F_GET*) |");
        table.AppendLine("|---|---|---|---|---|---|---|");
        var failures = new List<string>();
        foreach (string mount in DaxMounts)
        {
            foreach (var op in ops)
            {
                foreach (var mechanism in new[] { LeaseMechanism.Delegation, LeaseMechanism.Lease })
                {
                    var (broke, latency, waited, pending) = BreakOnce(mount, op[0], mechanism);
                    table.AppendLine(CultureInfo.InvariantCulture,
                        $"| {Path.GetFileName(mount)} | {op[1]} | {mechanism} | {(broke ? "breaks" : "does not break")} | {(broke ? $"{latency.TotalMilliseconds:F2} ms" : "-")} | {waited.TotalMilliseconds:F1} ms | {PendingName(pending)} |");
                    bool metadata = op[0] is "unlink" or "rename" or "chmod";
                    // link(2) breaks a delegation and not a lease (observed on XFS and ext4, kernel 7.3).
                    bool expected = op[0] == "link" ? mechanism == LeaseMechanism.Delegation : !metadata || mechanism == LeaseMechanism.Delegation;
                    if (broke != expected)
                        failures.Add($"{mount} {op[1]} {mechanism}: {(broke ? "broke" : "did not break")}");
                }
            }
        }
        TestContext.Out.WriteLine(table.ToString());
        if (Directory.Exists("/mnt/out") && Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.WriteAllText("/mnt/out/lease-matrix.md", table.ToString());
        Assert.That(failures, Is.Empty, table.ToString());
    }

    /// <summary>Break-signal→release latency over repeated truncate(2) breaks, written to /mnt/out/lease-latency.md.</summary>
    [Test]
    public void BreakLatencyIsMeasured()
    {
        var sb = new StringBuilder(BreakLatency.Header);
        foreach (string mount in DaxMounts)
        {
            foreach (var mechanism in new[] { LeaseMechanism.Delegation, LeaseMechanism.Lease })
                sb.Append(BreakLatency.Measure(mount, mechanism, iterations: 25));
        }
        TestContext.Out.WriteLine(sb.ToString());
        if (Directory.Exists("/mnt/out") && Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.WriteAllText("/mnt/out/lease-latency.md", sb.ToString());
    }

    private static (bool Broke, TimeSpan Latency, TimeSpan Waited, int Pending) BreakOnce(string mount, string op, LeaseMechanism mechanism)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("victim");
        const int Size = 64 * 1024;
        using var file = DaxFile.Open(path, new DaxFileOptions { Size = Size });
        Fill(file.Span, 1);
        file.Flush();
        using var lease = file.AcquireLease(new LeaseOptions { PreferDelegation = mechanism == LeaseMechanism.Delegation });
        Assert.That(lease.Mechanism, Is.EqualTo(mechanism));
        var broke = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.BreakRequested += (_, e) => broke.TrySetResult(e);
        string[] args = op switch
        {
            "truncate" => ["truncate", path, "4096"],
            "truncate-grow" => ["truncate", path, (2 * Size).ToString(CultureInfo.InvariantCulture)],
            "rename" => ["rename", path, dir.File("renamed")],
            "link" => ["link", path, dir.File("linked")],
            "chmod" => ["chmod", path, "640"],
            _ => [op, path],
        };
        var probe = RunProbe(FileLease.LeaseBreakTime + TimeSpan.FromSeconds(30), args);
        Assert.That(probe.Ok, Is.True, $"{op}: {probe.Output}");
        // A breaking operation returns only after our release, so the event is at most a thread-pool hop away.
        bool didBreak = broke.Task.Wait(TimeSpan.FromMilliseconds(500));
        if (didBreak)
            Assert.That(broke.Task.Result.FileDescriptor, Is.EqualTo(lease.FileDescriptor));
        return (didBreak, didBreak ? broke.Task.Result.BreakToRelease : TimeSpan.Zero, probe.Elapsed,
            didBreak ? broke.Task.Result.PendingLeaseType : -1);
    }

    private static string PendingName(int type) => type switch { 0 => "F_RDLCK (downgrade)", 1 => "F_WRLCK", 2 => "F_UNLCK", _ => "-" };

    /// <summary>The VmFlags line of /proc/self/smaps for the file's mapping.</summary>
    private static unsafe string[] SmapsFlags(DaxFile file)
    {
        string start = ((ulong)file.BaseAddress).ToString("x", CultureInfo.InvariantCulture) + "-";
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            if (line.StartsWith(start, StringComparison.Ordinal))
                inside = true;
            else if (inside && line.StartsWith("VmFlags:", StringComparison.Ordinal))
                return line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        }
        Assert.Fail($"no mapping at {start} in /proc/self/smaps");
        return [];
    }
}
