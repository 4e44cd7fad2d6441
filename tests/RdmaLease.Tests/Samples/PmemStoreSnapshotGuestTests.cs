using System.Globalization;
using System.Text;
using RdmaLease.Leases;
using RdmaLease.Tests.Leases;
using RdmaLease.Tests.Packaging;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Samples;

/// <summary>
/// Consistent online snapshots of a live pmem store (issue 14): `PmemStore snapshot FILE DEST` (and `rdma-lease store
/// snapshot`) reflinks the store file while clients keep writing. Each snapshot is checked against the clients' acked
/// logs and the time it was taken, by the sample's verifier and by this test's own reading of the documented format.
/// </summary>
[Category("Guest")]
[NonParallelizable]   // the store's server listens on a fixed port, and the timings are read off one vCPU
public class PmemStoreSnapshotGuestTests
{
    const int Clients = 2, AreaRecords = 256, Records = 110, Snapshots = 5, Page = 4096;
    const long AreaBytes = AreaRecords * (long)Page, FileSize = (Clients + 1) * AreaBytes;
    static readonly TimeSpan Start = TimeSpan.FromSeconds(90), Step = TimeSpan.FromSeconds(45);
    static readonly string Cli = RepoPaths.File($"artifacts/bin/RdmaLease.Cli/{Tool.Configuration}/rdma-lease.dll");

    static string S(long v) => v.ToString(CultureInfo.InvariantCulture);

    static string Ms(long ns) => (ns / 1e6).ToString("F1", CultureInfo.InvariantCulture);

    [Test]
    public void FiveSnapshotsOfALiveStoreHoldEveryRecordAcknowledgedBeforeThem()
    {
        var phase = System.Diagnostics.Stopwatch.StartNew();
        using var dir = CreateTempDir("/mnt/xfs");
        string file = dir.File("store"), port = "7563";
        string[] logs = [dir.File("acked-0"), dir.File("acked-1")];
        using var server = PmemStoreSample.Live("serve", file, "--address", "198.51.100.1", "--port", port, "--device", "rxecm",
            "--clients", S(Clients), "--area-records", S(AreaRecords), "--verify", logs[0], "--verify", logs[1]);
        // The clients start with the server (they retry until it listens): the three start-ups overlap.
        var clients = Enumerable.Range(0, Clients).Select(c => PmemStoreSample.Live("write", "--server", "198.51.100.1:" + port,
            "--device", "rxecm", "--client-id", S(c), "--records", S(Records), "--window", "2", "--interval-ms", "200",
            "--acked-log", logs[c], "--timeout-s", "240")).ToArray();
        var snaps = new List<(string Path, (long TakenAt, long Opened, long Cloned, long Synced, long Done) Times)>();
        try
        {
            for (int i = 1; i <= Snapshots; i++)
            {
                // Both clients back in the current generation and storing records in it: the assertions below check that
                // each stored records between two snapshots.
                for (int c = 0; c < Clients; c++)
                {
                    Assert.That(clients[c].HasExited, Is.False, $"client {c} finished before snapshot {i}: give it more records\n{clients[c].Output}\n{server.Output}");
                    int connected = clients[c].WaitFor($"connected, generation {i},", i == 1 ? Start : Step, 0, $"client {c} back in generation {i}");
                    clients[c].WaitFor(": progress: ", Step, connected, $"client {c} storing in generation {i}");
                }
                string dest = dir.File($"snapshot-{i}");
                // In this process (the sample's Snapshot.Take, which `PmemStore snapshot` and `rdma-lease store snapshot`
                // run): a tool's start-up, seconds under TCG, would let the clients write most of their records first.
                var taken = RdmaLease.PmemStore.Snapshot.Take(file, dest);
                TestContext.Out.WriteLine(taken.ToString());
                snaps.Add((dest, (taken.StartNs, taken.OpenedNs, taken.ClonedNs, taken.SyncedNs, taken.ClosedNs)));
                // Writing resumes by itself: the server re-leases, the clients reconnect and resend.
                server.WaitFor($"break {i}:", Step);
                server.WaitFor($"generation {i + 1}: leased", Step);
            }
            TestContext.Out.WriteLine($"{phase.Elapsed.TotalSeconds:F1} s: {Snapshots} snapshots taken");
            for (int c = 0; c < Clients; c++)
            {
                int exit = clients[c].WaitForExit(TimeSpan.FromSeconds(240));
                var summary = PmemStoreSample.ClientSummary(clients[c].Output, c);
                TestContext.Out.WriteLine($"client {c}: {summary}");
                foreach (string line in clients[c].Output.Split('\n').Where(l => l.Contains("connect", StringComparison.Ordinal)))
                    TestContext.Out.WriteLine(line);
                Assert.That(exit, Is.Zero, clients[c].Output);
                Assert.That(summary.Acknowledged, Is.EqualTo(Records));
                Assert.That(summary.Connections, Is.GreaterThanOrEqualTo(Snapshots + 1), "it reconnected after every snapshot");
            }
        }
        finally
        {
            foreach (var c in clients)
                c.Dispose();
            foreach (string line in server.Output.Split('\n').Where(l => l.Contains("accepting", StringComparison.Ordinal) || l.Contains("rejected", StringComparison.Ordinal)))
                TestContext.Out.WriteLine(line);
        }

        // The live file at the end, by the server (through its own mapping) at SIGTERM.
        TestContext.Out.WriteLine($"{phase.Elapsed.TotalSeconds:F1} s: the clients are done");
        server.Signal("TERM");
        Assert.That(server.WaitForExit(TimeSpan.FromSeconds(60)), Is.Zero, server.Output);
        foreach (string line in server.Output.Split('\n').Where(l => l.Contains(": break ", StringComparison.Ordinal) || l.Contains("retrying", StringComparison.Ordinal)))
            TestContext.Out.WriteLine(line);
        Assert.That(PmemStoreSample.VerifyTotal(server.Output), Is.EqualTo(((long)Clients * Records, (long)Clients * Records, 0L, 0L)), server.Output);
        Assert.That(server.Output, Does.Contain($"; {Snapshots} breaks,"), "each snapshot broke the lease once, nothing else did");

        // Each snapshot, after every later write: by the sample's verifier, then by this test's own reading.
        TestContext.Out.WriteLine($"{phase.Elapsed.TotalSeconds:F1} s: the server verified the live file and stopped");
        var acks = logs.Select(PmemStoreSample.AckedLog).ToArray();
        var live = KernelView.Extents(file);
        var gaps = acks.SelectMany(a => a.Zip(a.Skip(1), (x, y) => (y.AckedAtNs - x.AckedAtNs) / 1e6)).Order().ToList();
        var table = new StringBuilder();
        table.AppendLine(CultureInfo.InvariantCulture, $"{Clients} clients x {Records} records (4 KiB, window 2, 200 ms pacing), store file {FileSize / 1048576} MiB on XFS-DAX ({live.Count} extents at the end); ms on CLOCK_MONOTONIC; a client's usual gap between acknowledgements: median {gaps[gaps.Count / 2]:F0} ms");
        table.AppendLine();
        table.AppendLine("| snapshot | open (the server's break) | FICLONE | fsync | file held | total | acked before: all present | in flight at the cut | client 0 pause | client 1 pause | 4 KiB pages copied since (FIEMAP, at the end) |");
        table.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|");
        // The sample's verifier, all five in one run (one --taken-at per snapshot, in order).
        var v = PmemStoreSample.Run(["verify-snapshot", .. snaps.Select(x => x.Path), "--acked", logs[0], "--acked", logs[1], "--area-records", S(AreaRecords),
            .. snaps.SelectMany(x => new[] { "--taken-at", S(x.Times.TakenAt) })]);
        TestContext.Out.WriteLine(v.Stdout);
        Assert.That(v.ExitCode, Is.Zero, v.Output);
        Assert.That(System.Text.RegularExpressions.Regex.Matches(v.Stdout, @"verify-snapshot: \d+ acknowledged before the snapshot, \d+ verified, 0 missing, 0 corrupt; \d+ acknowledged after it and already in it \(in flight at the cut\); 0 never acknowledged, 0 torn"),
            Has.Count.EqualTo(Snapshots), v.Output);
        int previous = 0;
        for (int i = 0; i < snaps.Count; i++)
        {
            var (snap, t) = snaps[i];

            byte[] data = ReadFile(snap);
            var extents = KernelView.Extents(snap);
            Assert.That(data, Has.Length.EqualTo(FileSize), $"snapshot {i + 1}: the file's size");
            int before = 0, inFlight = 0;
            var pauses = new string[Clients];
            for (int c = 0; c < Clients; c++)
            {
                var ackedAt = acks[c].ToDictionary(a => a.Sequence, a => a.AckedAtNs);
                for (int seq = 0; seq < AreaRecords; seq++)
                {
                    long offset = c * AreaBytes + (long)seq * Page;
                    var page = data.AsSpan((int)offset, Page);
                    bool valid = PmemStoreSample.IsDocumentedRecord(page, (uint)c, (ulong)seq);
                    bool acked = ackedAt.TryGetValue((ulong)seq, out long at);
                    if (acked && at < t.TakenAt)
                    {
                        before++;
                        Assert.That(valid, Is.True, $"snapshot {i + 1}: client {c} record {seq}, acknowledged {Ms(t.TakenAt - at)} ms before the snapshot, is in it intact");
                        Assert.That(KernelView.PhysicalAt(extents, offset), Is.EqualTo(KernelView.PhysicalAt(live, offset)),
                            $"snapshot {i + 1}: client {c} record {seq} was never written again, so it still shares its block with the live file");
                    }
                    else if (valid)
                    {
                        Assert.That(acked, Is.True, $"snapshot {i + 1}: client {c} record {seq} is valid but its client never had it acknowledged");
                        inFlight++;
                    }
                    else
                        Assert.That(page.IndexOfAnyExcept((byte)0), Is.Negative, $"snapshot {i + 1}: client {c} page {seq} holds something that is not an intact record (torn)");
                }
                long since = i == 0 ? 0 : snaps[i - 1].Times.Done;
                Assert.That(acks[c].Count(a => a.AckedAtNs > since && a.AckedAtNs < t.TakenAt), Is.Positive,
                    $"client {c} stored records between snapshot {i} and snapshot {i + 1}: the snapshot was taken while it wrote");
                long lastBefore = acks[c].Where(a => a.AckedAtNs < t.TakenAt).Max(a => a.AckedAtNs);
                var after = acks[c].Where(a => a.AckedAtNs > t.Done).ToList();
                pauses[c] = after.Count == 0 ? "(finished)" : Ms(after.Min(a => a.AckedAtNs) - lastBefore);
            }
            long copied = Enumerable.Range(0, (int)(FileSize / Page)).Count(p =>
            {
                long phys = KernelView.PhysicalAt(extents, (long)p * Page);
                return phys >= 0 && phys != KernelView.PhysicalAt(live, (long)p * Page);
            });
            table.AppendLine(CultureInfo.InvariantCulture,
                $"| {i + 1} | {Ms(t.Opened - t.TakenAt)} | {Ms(t.Cloned - t.Opened)} | {Ms(t.Synced - t.Cloned)} | {Ms(t.Done - t.Opened)} | {Ms(t.Done - t.TakenAt)} | {before} | {inFlight} | {pauses[0]} | {pauses[1]} | {copied} |");
            Assert.That(before, Is.GreaterThan(previous), $"snapshot {i + 1} came after more acknowledgements than snapshot {i}: the clients wrote in between");
            previous = before;
        }
        LeasedRegistrationGuestTests.Report("pmem-snapshots.md", table.ToString());
        TestContext.Out.WriteLine($"{phase.Elapsed.TotalSeconds:F1} s: every snapshot verified");
    }

    /// <summary>
    /// A snapshot that cannot work says why, and does not break the holder's lease for nothing: DEST on another
    /// filesystem (EXDEV), DEST already there (EEXIST), a filesystem without reflink (ext4, tmpfs: EOPNOTSUPP).
    /// </summary>
    [Test]
    public void ASnapshotThatCannotWorkSaysWhyAndBreaksNoLease()
    {
        using var xfs = CreateTempDir("/mnt/xfs");
        using var ext4 = CreateTempDir("/mnt/ext4");
        using var tmpfs = CreateTempDir("/mnt/tmpfs");
        string existing = xfs.File("existing");
        File.WriteAllText(existing, "keep me");
        (string File, string Dest, string Mount, string[] Said, bool ViaCli)[] cases =
        [
            (xfs.File("store"), ext4.File("snap"), "/mnt/xfs", ["EXDEV", "another filesystem"], true),
            (xfs.File("store"), existing, "/mnt/xfs", ["EEXIST", "exists", "never overwrites"], false),
            (ext4.File("store"), ext4.File("snap"), "/mnt/ext4", ["EOPNOTSUPP", "no reflink", "XFS"], false),
            (tmpfs.File("store"), tmpfs.File("snap"), "/mnt/tmpfs", ["EOPNOTSUPP", "no reflink"], false),
        ];
        foreach (var (path, dest, mount, said, viaCli) in cases)
        {
            using var file = LeasedRdma.OpenFile(path, mount, 64 * 1024);
            using var lease = file.AcquireLease();
            var broke = LeasedRdma.OnBreak(lease);
            // One through the rdma-lease tool (its exit code and stderr), the others in this process (the same code).
            string message;
            if (viaCli)
            {
                var r = Tool.Run("dotnet", ["exec", Cli, "store", "snapshot", path, dest], timeoutMs: 120_000);
                Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
                message = r.Stderr;
            }
            else
                message = Assert.Throws<RdmaLease.PmemStore.SnapshotException>(() => RdmaLease.PmemStore.Snapshot.Take(path, dest))!.Message;
            Assert.Multiple(() =>
            {
                foreach (string s in said)
                    Assert.That(message, Does.Contain(s), $"{path} -> {dest}");
                Assert.That(broke.Task.IsCompleted, Is.False, $"{path} -> {dest}: the lease was broken for nothing");
                Assert.That(KernelView.LocksOn(file), Has.Count.EqualTo(1), "/proc/locks: still leased");
                if (dest == existing)
                    Assert.That(File.ReadAllText(existing), Is.EqualTo("keep me"));
                else
                    Assert.That(File.Exists(dest), Is.False, "nothing left behind");
            });
            TestContext.Out.WriteLine(message.Trim());
        }
    }

    /// <summary>
    /// Snapshot time against file size (1 MiB to 256 MiB, and 1 GiB when /mnt/xfs has room: RDMA_LEASE_XFS_SIZE=2G), each
    /// file written in full and leased with a registered region, as the store's server holds it; then what the snapshot
    /// cost in space (nothing: FIEMAP shows every byte shared) and what writing 16 blocks afterwards copied (16 blocks).
    /// FICLONE through the leaseholder's own descriptor (no break) is timed beside it, for the design choice.
    /// </summary>
    [Test]
    public void SnapshotTimeAgainstFileSizeAndBytesCopiedOnlyWhenWritten()
    {
        const long MiB = 1 << 20;
        const int Written = 16;
        using var dir = CreateTempDir("/mnt/xfs");
        using var pair = LeasedRdma.Pair();
        var table = new StringBuilder();
        table.AppendLine("| file size | extents | snapshot total | open (the holder's break) | FICLONE | fsync | FICLONE through the holder's descriptor (no break) | free space the snapshot took | copied after 16 RDMA writes: FIEMAP | free space they took |");
        table.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        int measured = 0;
        foreach (long size in new[] { 1 * MiB, 16 * MiB, 256 * MiB, 1024 * MiB })
        {
            long free = new DriveInfo("/mnt/xfs").AvailableFreeSpace;
            if (size + 64 * MiB > free)
            {
                table.AppendLine(CultureInfo.InvariantCulture, $"| {size / MiB} MiB | not measured: {free / MiB} MiB free on /mnt/xfs | | | | | | | | |");
                continue;
            }
            string path = dir.File($"f{size / MiB}"), snap = dir.File($"s{size / MiB}"), own = dir.File($"o{size / MiB}");
            WriteStamped(path, size);
            int extentCount = KernelView.Extents(path).Count;
            (long TakenAt, long Opened, long Cloned, long Synced, long Done) t;
            long snapshotFree, ownCloneNs;
            using (var file = DaxFile.Open(path))
            {
                using var lease = file.AcquireLease();
                var broke = LeasedRdma.OnBreak(lease);
                using var mr = pair.PdB.Register(lease, LeasedRdma.RemoteWritable);
                long freeBefore = new DriveInfo("/mnt/xfs").AvailableFreeSpace;
                var r = Tool.Run("dotnet", ["exec", Cli, "store", "snapshot", path, snap], timeoutMs: 120_000);   // the rdma-lease tool
                Assert.That(r.ExitCode, Is.Zero, r.Output);
                t = PmemStoreSample.SnapshotTimes(r.Stdout);
                snapshotFree = freeBefore - new DriveInfo("/mnt/xfs").AvailableFreeSpace;
                Assert.That(broke.Task.Wait(TimeSpan.FromSeconds(30)), Is.True, "the snapshot broke the holder's lease");
                Assert.That(mr.IsDeregistered, Is.True);
                Assert.That(mr.DeregisteredTimestamp, Is.LessThanOrEqualTo(LeaseSignals.MonotonicNsToStopwatch(t.Opened)),
                    "the region was deregistered before the snapshot's open returned");
                using var ownClone = File.OpenHandle(own, FileMode.CreateNew, FileAccess.ReadWrite);
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                Assert.That(Reflink.Clone((int)ownClone.DangerousGetHandle(), file.FileDescriptor), Is.Zero);
                ownCloneNs = (long)System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalNanoseconds;
            }
            File.Delete(own);
            var fileExtents = KernelView.Extents(path);
            var snapExtents = KernelView.Extents(snap);
            long sharedAtFirst = LeasedRdma.SharedPhysicalBytes(
                [.. fileExtents.Select(e => (e.Logical, e.Physical, e.Length))], [.. snapExtents.Select(e => (e.Logical, e.Physical, e.Length))]);

            // Write 16 blocks spread over the file through a leased region: exactly those are copied.
            var writtenBlocks = Enumerable.Range(0, Written).Select(k => size / Page * k / Written).ToHashSet();
            long freeBeforeWrites = new DriveInfo("/mnt/xfs").AvailableFreeSpace;
            using (var file = DaxFile.Open(path))
            {
                using var lease = file.AcquireLease();
                using var mr = pair.PdB.Register(lease, LeasedRdma.RemoteWritable);
                using var source = pair.PdA.AllocateBuffer(Page, RdmaLease.Verbs.AccessFlags.LocalWrite);
                LeasedRdma.BlockPattern(LeasedRdma.PeerSeed).CopyTo(source.Span);
                ulong wr = 0;
                foreach (long b in writtenBlocks)
                {
                    pair.A.PostWrite(++wr, source.Slice(0, Page), mr.ToRemote(), (ulong)(b * Page));
                    RdmaLease.Tests.Verbs.RcPair.Expect(pair.CqA, RdmaLease.Verbs.WorkCompletionOpcode.RdmaWrite, wr);
                }
            }
            long writesFree = freeBeforeWrites - new DriveInfo("/mnt/xfs").AvailableFreeSpace;
            var fileAfter = KernelView.Extents(path);
            long copied = size - LeasedRdma.SharedPhysicalBytes(
                [.. fileAfter.Select(e => (e.Logical, e.Physical, e.Length))], [.. snapExtents.Select(e => (e.Logical, e.Physical, e.Length))]);
            // The file's own pages now: where its physical block differs from the snapshot's at the same offset.
            var ownPages = Enumerable.Range(0, (int)(size / Page))
                .Where(page => PhysicalAt(fileAfter, (long)page * Page) != PhysicalAt(snapExtents, (long)page * Page)).ToList();
            // A DAX write fault through a 2 MiB-aligned part of the mapping may be a huge-page (PMD) fault, which unshares
            // the whole 2 MiB around the written block: the unit of the copy is 4 KiB or 2 MiB, never an unwritten 2 MiB.
            var writtenHugePages = writtenBlocks.Select(b => b * Page / HugePage).ToHashSet();
            CheckStamped(snap, size, []);
            CheckStamped(path, size, writtenBlocks);
            table.AppendLine(CultureInfo.InvariantCulture,
                $"| {size / MiB} MiB | {extentCount} | {Ms(t.Done - t.TakenAt)} ms | {Ms(t.Opened - t.TakenAt)} ms | {Ms(t.Cloned - t.Opened)} ms | {Ms(t.Synced - t.Cloned)} ms | {Ms(ownCloneNs)} ms | {snapshotFree / 1024} KiB | {copied / 1024} KiB | {writesFree / 1024} KiB |");
            Assert.Multiple(() =>
            {
                Assert.That(sharedAtFirst, Is.EqualTo(size), $"{size / MiB} MiB: the snapshot shares every byte with the file (nothing copied)");
                Assert.That(writtenBlocks.Where(b => !ownPages.Contains((int)b)), Is.Empty, $"{size / MiB} MiB: every written block is the file's own");
                Assert.That(ownPages.Where(page => !writtenHugePages.Contains((long)page * Page / HugePage)), Is.Empty,
                    $"{size / MiB} MiB: only the 2 MiB around a written block may be copied");
                Assert.That(copied, Is.EqualTo((long)ownPages.Count * Page));
                Assert.That(copied, Is.InRange(Written * Page, (long)Written * HugePage), $"{size / MiB} MiB: writing {Written} blocks copied those (4 KiB faults) or their 2 MiB (huge-page faults)");
            });
            File.Delete(path);
            File.Delete(snap);
            measured++;
        }
        LeasedRegistrationGuestTests.Report("pmem-snapshot-sizes.md", table.ToString());
        Assert.That(measured, Is.GreaterThanOrEqualTo(3), "1, 16 and 256 MiB fit on the guest's 1 GiB XFS");
    }

    const long HugePage = 2 * 1024 * 1024;

    /// <summary>The physical address of <paramref name="logical"/> in <paramref name="extents"/> (-1 where nothing is mapped).</summary>
    static long PhysicalAt(List<KernelView.Extent> extents, long logical)
    {
        foreach (var e in extents)
        {
            if (logical >= e.Logical && logical < e.Logical + e.Length)
                return e.Physical + (logical - e.Logical);
        }
        return -1;
    }

    /// <summary>Writes <paramref name="size"/> bytes with write(2): block b is its number (8 bytes) then the initial block pattern.</summary>
    static void WriteStamped(string path, long size)
    {
        byte[] chunk = new byte[1 << 20];
        using var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.None);
        for (long at = 0; at < size; at += chunk.Length)
        {
            int n = (int)Math.Min(chunk.Length, size - at);
            for (int off = 0; off < n; off += Page)
                Stamp(chunk.AsSpan(off, Page), (at + off) / Page);
            fs.Write(chunk, 0, n);
        }
        fs.Flush(flushToDisk: true);
    }

    static readonly byte[] InitialBlock = LeasedRdma.BlockPattern(LeasedRdma.InitialSeed);

    static void Stamp(Span<byte> block, long number)
    {
        InitialBlock.CopyTo(block);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(block, number);
    }

    /// <summary>Compares every byte: each block stamped with its number, or the peer's pattern where <paramref name="peerBlocks"/> says.</summary>
    static void CheckStamped(string path, long size, HashSet<long> peerBlocks)
    {
        byte[] chunk = new byte[1 << 20];
        byte[] expected = new byte[Page], peer = LeasedRdma.BlockPattern(LeasedRdma.PeerSeed);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
        Assert.That(fs.Length, Is.EqualTo(size), path);
        for (long at = 0; at < size; at += chunk.Length)
        {
            int n = (int)Math.Min(chunk.Length, size - at);
            fs.ReadExactly(chunk, 0, n);
            for (int off = 0; off < n; off += Page)
            {
                long b = (at + off) / Page;
                Stamp(expected, b);
                byte[] want = peerBlocks.Contains(b) ? peer : expected;
                if (!chunk.AsSpan(off, Page).SequenceEqual(want))
                    Assert.Fail($"{path}: block {b} is not {(peerBlocks.Contains(b) ? "the peer's write" : "its stamped pattern")}");
            }
        }
    }
}
