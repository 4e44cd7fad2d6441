using System.Diagnostics;
using System.Globalization;
using System.Text;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// Memory regions over leased files (<see cref="LeasedRegistration"/>) in the QEMU guest: XFS and ext4 with DAX, and
/// tmpfs (non-DAX, allowed explicitly). The RDMA peer is a second RC QP on rxelo with path MTU 4096, so every 4 KiB
/// write is one packet (rxe's ODP multi-packet defect, docs/known-defects.md, does not apply).
/// </summary>
[Category("Guest")]
public unsafe class LeasedRegistrationGuestTests
{
    private static readonly string[] Mounts = ["/mnt/xfs", "/mnt/ext4", "/mnt/tmpfs"];
    private static readonly string[] DaxMounts = ["/mnt/xfs", "/mnt/ext4"];
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    private static string Fs(string mount) => Path.GetFileName(mount);

    /// <summary>Prints <paramref name="text"/> and, in the guest, writes it to /mnt/out/<paramref name="name"/> (the tables in docs/).</summary>
    internal static void Report(string name, string text)
    {
        TestContext.Out.WriteLine(text);
        if (Directory.Exists("/mnt/out") && Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.WriteAllText($"/mnt/out/{name}", text);
    }

    // ---- registration and the break sequence --------------------------------------------------------------------

    [TestCaseSource(nameof(Mounts))]
    public void RegisteredFileMovesBytesBothWays(string mount)
    {
        using var dir = CreateTempDir(mount);
        const int Size = 64 * 1024;
        using var file = OpenFile(dir.File("f"), mount, Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        using var lease = file.AcquireLease();
        using var pair = Pair();
        using var mr = pair.PdB.Register(lease, RemoteWritable);
        Assert.Multiple(() =>
        {
            Assert.That(mr.IsOnDemand, Is.True, "rxe has RC ODP write/read: the region is ODP on every filesystem");
            Assert.That(mr.Access & AccessFlags.OnDemand, Is.EqualTo(AccessFlags.OnDemand));
            Assert.That(mr.IsActive, Is.True);
            Assert.That(mr.Length, Is.EqualTo((ulong)Size));
            Assert.That(KernelView.MappingAt((nint)mr.Region.Address), Does.EndWith(" " + file.Path), "the region is over a mapping of the file");
        });

        using var source = pair.PdA.AllocateBuffer(Size, AccessFlags.LocalWrite);
        using var back = pair.PdA.AllocateBuffer(Size, AccessFlags.LocalWrite);
        Patterns.Fill(source.Span, 77);
        var remote = mr.ToRemote();
        for (int b = 0; b < Size / Block; b++)
        {
            pair.A.PostWrite((ulong)b, source.Slice((ulong)(b * Block), Block), remote, (ulong)(b * Block));
            RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, (ulong)b);
        }
        Patterns.AssertEqual(ReadByDescriptor(file), source.Span, $"{mount}: the file after 16 RDMA writes (read(2))");
        Patterns.AssertEqual(file.Span, source.Span, $"{mount}: the mapping after 16 RDMA writes");
        for (int b = 0; b < Size / Block; b++)
        {
            pair.A.PostRead((ulong)(100 + b), back.Slice((ulong)(b * Block), Block), remote, (ulong)(b * Block));
            RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaRead, (ulong)(100 + b));
        }
        Patterns.AssertEqual(back.Span, source.Span, $"{mount}: RDMA READ back from the file");
    }

    [TestCaseSource(nameof(Mounts))]
    public void BreakTearsTheRegionDownBeforeTheRelease(string mount)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("f");
        const int Size = 64 * 1024;
        using var pair = Pair();
        LeasedMemoryRegion mr;
        FileLease lease;
        using (var file = OpenFile(path, mount, Size))
        {
            FillBlocks(file.Span, InitialSeed);
            file.Flush();
            lease = file.AcquireLease();
            var broke = OnBreak(lease);
            mr = pair.PdB.Register(lease, RemoteWritable, new LeasedRegistrationOptions { AdditionalOdpCapabilities = OdpTransportCaps.Receive });
            mr.AttachQueuePair(pair.B);
            pair.B.PostReceive(500, mr.Slice(8 * Block, Block));   // outstanding on the region: flushed at teardown
            var remote = mr.ToRemote();
            WriteBlock(pair, remote, 0);

            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(mr.RemoteKey));
            var p = RunProbe(Generous, "truncate", path, "16384");
            // The truncate returned, so the lease is back with the kernel: the kernel must not list the region any more.
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey), "the region outlived its lease");
            Assert.That(broke.Task.Wait(Generous), Is.True, "no BreakRequested");
            var e = broke.Task.Result;
            Assert.Multiple(() =>
            {
                Assert.That(p.Ok, Is.True, p.Output);
                Assert.That(mr.IsActive, Is.False);
                Assert.That(mr.Revocation, Is.Not.Null);
                Assert.That(mr.Revocation!.WasBroken, Is.True);
                Assert.That(mr.Revocation.Lease, Is.SameAs(lease));
                Assert.That(mr.IsDeregistered, Is.True, "deregistered, confirmed by ibv_dereg_mr");
                Assert.That(mr.DeregistrationErrno, Is.Zero);
                Assert.That(mr.TeardownStartedTimestamp, Is.GreaterThanOrEqualTo(lease.BreakSignalTimestamp));
                Assert.That(mr.DeregisteredTimestamp, Is.GreaterThan(0).And.LessThanOrEqualTo(lease.ReleasedTimestamp), "deregistered before the release");
                Assert.That(p.EndTimestamp, Is.GreaterThanOrEqualTo(mr.DeregisteredTimestamp), "the truncater waited for the deregistration");
                Assert.That(p.Elapsed, Is.LessThan(FileLease.LeaseBreakTime / 2));
                Assert.That(e.TeardownErrors, Is.Empty);
                Assert.That(pair.B.QueryState(), Is.EqualTo(QueuePairState.Error), "the attached QP is moved to the error state");
            });
            var flushed = RcPair.WaitOne(pair.CqB);
            Assert.That(flushed.Status, Is.EqualTo(WorkCompletionStatus.WorkRequestFlushed), flushed.ToString());
            Assert.That(flushed.WorkRequestId, Is.EqualTo(500UL));
            var posting = Assert.Throws<LeaseRevokedException>(() => pair.B.PostSend(9, mr.Slice(0, 64)));
            Assert.That(posting, Is.SameAs(mr.Revocation), "posts naming the region throw the revocation");
            Assert.That(posting!.Message, Does.Contain("broken"));
            Assert.Throws<LeaseRevokedException>(() => pair.PdB.Register(lease, RemoteWritable));
            Assert.That(WriteOnce(pair, remote, 0, LateSeed), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the old rkey is dead");
            TestContext.Out.WriteLine($"{mount}: signal->release {Ms(e.BreakToRelease)} (teardown incl. dereg {Ms(Stopwatch.GetElapsedTime(mr.TeardownStartedTimestamp, mr.DeregisteredTimestamp))}), truncate {Ms(p.Elapsed)}");
            mr.Dispose();   // idempotent after the teardown
        }

        // The application re-acquires and re-registers once the truncate is over.
        using var again = DaxFile.Open(path, new DaxFileOptions { AllowNonDax = !IsDax(mount) });
        Assert.That(again.Length, Is.EqualTo(16384));
        using var lease2 = again.AcquireLease();
        using var mr2 = pair.PdB.Register(lease2, RemoteWritable);
        Assert.That(mr2.RemoteKey, Is.Not.EqualTo(mr.RemoteKey));
        Assert.That(WriteOnce(pair, mr2.ToRemote(), 3 * Block, PeerSeed), Is.EqualTo(WorkCompletionStatus.Success));
        Assert.That(ClassifyAll(ReadByDescriptor(again)), Is.EqualTo(new[] { "peer", "initial", "initial", "peer" }));
    }

    [TestCaseSource(nameof(DaxMounts))]
    public void ReleaseAndDisposeTearTheRegionDownToo(string mount)
    {
        using var dir = CreateTempDir(mount);
        using var pair = Pair();
        using var file = OpenFile(dir.File("f"), mount, 16 * Block);
        var lease = file.AcquireLease();
        var mr = pair.PdB.Register(lease.Range(4 * Block, 8 * Block), RemoteWritable);
        Assert.That(mr.FileOffset, Is.EqualTo(4 * Block));
        Assert.That(KernelView.MappingAt((nint)mr.Region.Address - 4 * Block), Is.EqualTo(KernelView.MappingAt((nint)mr.Region.Address)), "4 blocks into one mapping");
        WriteBlock(pair, mr.ToRemote(), 7 * Block);
        Assert.That(Classify(file.GetSpan(11 * Block, Block)), Is.EqualTo("peer"));

        lease.Dispose();   // voluntary: same teardown, the mapping stays
        Assert.Multiple(() =>
        {
            Assert.That(mr.IsActive, Is.False);
            Assert.That(mr.Revocation!.WasBroken, Is.False);
            Assert.That(mr.IsDeregistered, Is.True);
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey));
            Assert.That(KernelView.LocksOn(file), Is.Empty);
            Assert.That(file.IsMapped, Is.True);
        });
        var e = Assert.Throws<LeaseRevokedException>(() => pair.B.PostSend(1, mr.Slice(0, 8)));
        Assert.That(e!.Message, Does.Contain("released"));
        Assert.That(WriteOnce(pair, mr.ToRemote(), 0, LateSeed), Is.EqualTo(WorkCompletionStatus.RemoteAccessError));

        // Disposing the registration alone keeps the lease.
        using var lease2 = file.AcquireLease();
        var mr2 = pair.PdB.Register(lease2, RemoteWritable);
        mr2.Dispose();
        Assert.That(lease2.IsActive, Is.True);
        Assert.That(mr2.IsDeregistered, Is.True);
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr2.RemoteKey));
        Assert.That(KernelView.LocksOn(file), Has.Count.EqualTo(1), "the lease is still held");
        Assert.Throws<ObjectDisposedException>(() => pair.B.PostSend(2, mr2.Slice(0, 8)));

        // Disposing the file releases the lease, which tears the registration down.
        var mr3 = pair.PdB.Register(lease2, RemoteWritable);
        file.Dispose();
        Assert.That(mr3.IsDeregistered, Is.True);
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr3.RemoteKey));
        Assert.That(KernelView.OwnLeases(), Is.Empty);
        Assert.That(mr3.Revocation, Is.Not.Null);
        Assert.That(lease2.IsActive, Is.False);
    }

    [Test]
    public void PinnedRegistrationOfANonDaxFileIsTornDownToo()
    {
        using var dir = CreateTempDir("/mnt/tmpfs");
        string path = dir.File("f");
        using var pair = Pair();
        using var file = OpenFile(path, "/mnt/tmpfs", 16 * Block);
        using var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        using var mr = pair.PdB.Register(lease, RemoteWritable, new LeasedRegistrationOptions { Mode = LeasedRegistrationMode.Pinned });
        Assert.That(mr.IsOnDemand, Is.False);
        var remote = mr.ToRemote();
        WriteBlock(pair, remote, 2 * Block);
        Assert.That(Classify(ReadByDescriptor(file).AsSpan(2 * Block, Block)), Is.EqualTo("peer"));
        var p = RunProbe(Generous, "truncate", path, "0");
        Assert.That(broke.Task.Wait(Generous), Is.True);
        Assert.That(p.Ok, Is.True);
        Assert.That(mr.IsDeregistered, Is.True);
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey));
        Assert.That(WriteOnce(pair, remote, 2 * Block, LateSeed), Is.EqualTo(WorkCompletionStatus.RemoteAccessError));
        Assert.That(ReadByDescriptor(file), Is.Empty);
    }

    // ---- which operations break, with a peer writing all the time ----------------------------------------------

    private static readonly string[] Operations =
        ["truncate-shrink", "truncate-grow", "punch", "collapse", "clone", "unlink", "rename", "chmod", "open-rdonly", "open-rdwr"];

    private static readonly Dictionary<string, string> MatrixRows = [];

    public static IEnumerable<TestCaseData> MatrixCases()
    {
        foreach (string mount in Mounts)
        {
            foreach (string op in Operations)
            {
                foreach (var mechanism in new[] { LeaseMechanism.Delegation, LeaseMechanism.Lease })
                    yield return new TestCaseData(mount, op, mechanism);
            }
        }
    }

    [OneTimeTearDown]
    public void WriteMatrix()
    {
        if (MatrixRows.Count == 0)
            return;
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"kernel {Environment.OSVersion.Version}, lease-break-time {FileLease.LeaseBreakTime.TotalSeconds} s; 64 KiB file, ODP region over all of it, a peer QP on rxelo RDMA-writing 4 KiB blocks in a loop");
        sb.AppendLine();
        sb.AppendLine("| fs | operation by another process | mechanism | broke | its result | it waited | signal->release | peer: writes before / its next write | old rkey after | file afterwards (4 KiB blocks) |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in MatrixRows.OrderBy(r => r.Key, StringComparer.Ordinal))
            sb.AppendLine(row.Value);
        Report("leased-matrix.md", sb.ToString());
    }

    [TestCaseSource(nameof(MatrixCases))]
    public void OperationWhilePeerWrites(string mount, string op, LeaseMechanism mechanism)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("victim");
        const int Size = 16 * Block;
        string source = dir.File("source");
        if (op == "clone")
        {
            using var s = OpenFile(source, mount, Size);
            FillBlocks(s.Span, CloneSeed);
            s.Flush();
        }
        using var file = OpenFile(path, mount, Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        using var lease = file.AcquireLease(new LeaseOptions { PreferDelegation = mechanism == LeaseMechanism.Delegation });
        Assert.That(lease.Mechanism, Is.EqualTo(mechanism));
        var broke = OnBreak(lease);
        using var pair = Pair();
        using var mr = pair.PdB.Register(lease, RemoteWritable);
        Assert.That(mr.IsOnDemand, Is.True);
        var remote = mr.ToRemote();

        string[] args = op switch
        {
            "truncate-shrink" => ["truncate", path, "16384"],
            "truncate-grow" => ["truncate", path, (2 * Size).ToString(CultureInfo.InvariantCulture)],
            "punch" => ["punch", path, "16384", "16384"],
            "collapse" => ["collapse", path, "16384", "16384"],
            "clone" => ["clone", path, source],
            "rename" => ["rename", path, dir.File("renamed")],
            "chmod" => ["chmod", path, "640"],
            _ => [op, path],
        };
        ProbeResult p;
        int before;
        bool didBreak;
        WorkCompletion? failure;
        using (var writer = new PeerWriter(pair, remote))
        {
            Assert.That(writer.WaitForSuccesses(Size / Block, Generous), Is.True, $"the peer's writes: {writer.Failure} {writer.Error}");
            before = writer.Successes;
            p = RunProbe(FileLease.LeaseBreakTime + Generous, args);
            didBreak = broke.Task.Wait(TimeSpan.FromMilliseconds(500));
            if (didBreak)
                Assert.That(writer.WaitEnded(TimeSpan.FromSeconds(10)), Is.True, "the peer's writes must fail after the break");
            else
                Assert.That(writer.WaitForSuccesses(before + 5, Generous), Is.True, "without a break the peer goes on");
            failure = writer.Failure;
            Assert.That(writer.Error, Is.Null);
        }
        WorkCompletionStatus? late = didBreak ? WriteOnce(pair, remote, 0, LateSeed) : null;
        byte[] content = ReadByDescriptor(file);
        string[] blocks = ClassifyAll(content);

        bool breaksLeases = op is not ("unlink" or "rename" or "chmod");
        bool expectedBreak = breaksLeases || mechanism == LeaseMechanism.Delegation;
        bool ok = p.Ok;
        // What the file must hold: nothing the peer wrote after the break, nothing outside the current extent.
        static (int, Func<int, string[]>) Expect(int length, Func<int, string[]> allowed) => (length, allowed);
        string[] oldBlocks = ["initial", "peer"], zero = ["zero"];
        (int length, Func<int, string[]> allowed) = (op, ok) switch
        {
            ("truncate-shrink", true) => Expect(4 * Block, _ => oldBlocks),
            ("truncate-grow", true) => Expect(2 * Size, b => b < 16 ? oldBlocks : zero),
            ("punch", true) => Expect(Size, b => b is >= 4 and < 8 ? zero : oldBlocks),
            ("collapse", true) => Expect(Size - 4 * Block, _ => oldBlocks),
            ("clone", true) => Expect(Size, _ => ["clone"]),
            _ => Expect(Size, _ => oldBlocks),
        };
        string layout = Summarize(blocks);
        string row = $"| {Fs(mount)} | {op} | {mechanism} | {(didBreak ? "breaks" : "does not break")} | {(ok ? "ok" : ErrnoName(p.Errno))} | {Ms(p.Elapsed)} | {(didBreak ? Ms(broke.Task.Result.BreakToRelease) : "-")} | {before} / {(failure is { } f ? f.Status.ToString() : "Success (no break)")} | {(late?.ToString() ?? "-")} | {content.Length / 1024} KiB: {layout} |";
        lock (MatrixRows)
            MatrixRows[$"{Array.IndexOf(Mounts, mount)}-{Array.IndexOf(Operations, op):D2}-{(int)mechanism}"] = row;
        TestContext.Out.WriteLine(row);

        Assert.Multiple(() =>
        {
            Assert.That(didBreak, Is.EqualTo(expectedBreak), "broke");
            Assert.That(p.Elapsed, Is.LessThan(FileLease.LeaseBreakTime / 2), "the other process must not wait for the break deadline");
            Assert.That(content, Has.Length.EqualTo(length), "file length");
            for (int b = 0; b < blocks.Length; b++)
                Assert.That(allowed(b), Does.Contain(blocks[b]), $"block {b}");
            if (didBreak)
            {
                Assert.That(failure?.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the peer's next write");
                Assert.That(late, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "a write with the old rkey after the break");
                Assert.That(mr.IsDeregistered, Is.True);
            }
            else
            {
                Assert.That(failure, Is.Null);
                Assert.That(mr.IsActive, Is.True);
            }
            if (op is "clone" && mount == "/mnt/xfs")
                Assert.That(ok, Is.True, $"FICLONE on XFS: {p.Output}");
            if (op is "collapse" && IsDax(mount))
                Assert.That(ok, Is.True, $"collapse range: {p.Output}");
            if (op is not ("clone" or "collapse"))
                Assert.That(ok, Is.True, p.Output);
        });
    }

    private static string Summarize(string[] blocks)
    {
        var parts = new List<string>();
        int start = 0;
        for (int i = 1; i <= blocks.Length; i++)
        {
            if (i == blocks.Length || blocks[i] != blocks[start])
            {
                parts.Add(i - start == 1 ? $"{start} {blocks[start]}" : $"{start}-{i - 1} {blocks[start]}");
                start = i;
            }
        }
        return parts.Count == 0 ? "empty" : string.Join(", ", parts);
    }

    // ---- the security property ------------------------------------------------------------------------------

    public static IEnumerable<TestCaseData> SecurityCases() =>
        DaxMounts.SelectMany(m => new[] { new TestCaseData(m, "truncate"), new TestCaseData(m, "punch") });

    /// <summary>
    /// A peer keeps the old rkey; the file is truncated to 0 (or its whole range punched) by another process, which breaks
    /// the lease; a new file is written over the freed blocks with a known pattern. The peer's writes with the old rkey
    /// fail with RemoteAccessError and the new file is unchanged.
    /// </summary>
    [TestCaseSource(nameof(SecurityCases))]
    public void OldRemoteKeyCannotReachFreedBlocks(string mount, string op)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("victim");
        const int Size = 64 * Block;
        using var file = OpenFile(path, mount, Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        var before = PhysicalExtents(path);
        using var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        using var pair = Pair();
        using var mr = pair.PdB.Register(lease, RemoteWritable);
        var remote = mr.ToRemote();
        WriteBlock(pair, remote, 5 * Block);   // the key works

        var p = op == "truncate"
            ? RunProbe(Generous, "truncate", path, "0")
            : RunProbe(Generous, "punch", path, "0", Size.ToString(CultureInfo.InvariantCulture));
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(broke.Task.Wait(Generous), Is.True);

        SyncFilesystems();   // commit the frees, so the allocator may hand the blocks out again (XFS/ext4 keep them busy until then)
        // Where a new file's blocks come from is the allocator's choice (ext4 sometimes starts elsewhere): write new
        // files until one is given some of the freed blocks; with the filesystem's free space as the bound, one must be.
        var newPaths = new List<string>();
        long reused = 0;
        long budget = new DriveInfo(mount).AvailableFreeSpace;
        byte[] block = BlockPattern(NewFileSeed);
        for (long written = 0; reused == 0 && written + Size <= budget; written += Size)
        {
            string newPath = dir.File($"newcomer{newPaths.Count}");
            newPaths.Add(newPath);
            using (var fs = new FileStream(newPath, FileMode.CreateNew, FileAccess.Write))
            {
                for (int i = 0; i < Size / Block; i++)
                    fs.Write(block);
                fs.Flush(flushToDisk: true);
            }
            reused = SharedPhysicalBytes(before, PhysicalExtents(newPath));
        }

        var statuses = new List<WorkCompletionStatus>();
        foreach (ulong offset in new ulong[] { 0, 5 * Block, 32 * Block, 63 * Block })
            statuses.Add(WriteOnce(pair, remote, offset, LateSeed));
        byte[] victim = ReadByDescriptor(file);
        byte[][] newcomers = [.. newPaths.Select(File.ReadAllBytes)];
        string text = $"{mount} {op}: new file {newPaths.Count} shares {reused / 1024} KiB of {Size / 1024} KiB of physical blocks with the victim's old extents; old-rkey writes: {string.Join(", ", statuses)}; truncater/puncher waited {Ms(p.Elapsed)}";
        TestContext.Out.WriteLine(text);
        if (Directory.Exists("/mnt/out") && Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.AppendAllText("/mnt/out/leased-security.txt", text + "\n");
        Assert.Multiple(() =>
        {
            Assert.That(reused, Is.GreaterThan(0), "the new file must reuse the victim's freed blocks, or this test shows nothing");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(remote.RemoteKey));
            Assert.That(statuses, Is.All.EqualTo(WorkCompletionStatus.RemoteAccessError));
            foreach (byte[] newcomer in newcomers)
            {
                Assert.That(ClassifyAll(newcomer), Is.All.EqualTo("new"), "every new file is unchanged");
                Assert.That(newcomer, Has.Length.EqualTo(Size));
            }
            if (op == "truncate")
                Assert.That(victim, Is.Empty);
            else
                Assert.That(ClassifyAll(victim), Is.All.EqualTo("zero"));
        });
    }

    // ---- the unsafe baseline --------------------------------------------------------------------------------

    [TestCaseSource(nameof(DaxMounts))]
    public unsafe void PinnedRegistrationOfTheDaxMappingIsRefused(string mount)
    {
        using var dir = CreateTempDir(mount);
        using var file = OpenFile(dir.File("f"), mount, 16 * Block);
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        var refused = Assert.Throws<ArgumentException>(() => pd.Register(file.BaseAddress, (ulong)file.Length, RemoteWritable));
        Assert.That(refused!.Message, Does.Contain("leased file").And.Contain("pd.Register(lease.Range"), "a leased file's mapping is registered through its lease");
        VerbsException? e;
        using (var raw = new RawFileMapping(file.Path, file.Length))   // the kernel's own answer, outside rdma-lease
            e = Assert.Throws<VerbsException>(() => pd.Register(raw.Address, (ulong)raw.Length, RemoteWritable));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Errno, Is.EqualTo(95), "EOPNOTSUPP");
            Assert.That(e.Operation, Is.EqualTo("ibv_reg_mr"));
            Assert.That(e.Message, Does.Contain("EOPNOTSUPP").And.Contain("OnDemand"));
        });
        using var lease = file.AcquireLease();
        var pinned = Assert.Throws<VerbsException>(() => pd.Register(lease, RemoteWritable, new LeasedRegistrationOptions { Mode = LeasedRegistrationMode.Pinned }));
        Assert.That(pinned!.Errno, Is.EqualTo(95));
        Assert.That(lease.IsActive, Is.True);
        using var odp = pd.Register(lease, RemoteWritable);
        Assert.That(odp.IsOnDemand, Is.True);
        TestContext.Out.WriteLine($"{mount}: {e.Message}");
    }

    /// <summary>
    /// Without a lease, an ODP registration does not hold anything off: truncate(2) returns at once. Then: a write with
    /// the (still registered) rkey past the new EOF fails; one inside the new EOF lands in the file; and once the file is
    /// grown again, the stale registration writes into the new blocks there: it follows whatever the file holds.
    /// </summary>
    [TestCaseSource(nameof(DaxMounts))]
    public unsafe void OdpRegistrationWithoutALeaseHoldsNothingOff(string mount)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("f");
        const int Size = 16 * Block;
        using var file = OpenFile(path, mount, Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        using var pair = Pair();
        using var raw = new RawFileMapping(path, Size);   // a registration not tied to any lease
        using var mr = pair.PdB.Register(raw.Address, (nuint)Size, RemoteWritable | AccessFlags.OnDemand);
        var remote = mr.ToRemote();
        WriteBlock(pair, remote, 12 * Block);

        var shrink = RunProbe(Generous, "truncate", path, "16384");
        Assert.That(shrink.Ok, Is.True);
        var pastEof = WriteOnce(pair, remote, 12 * Block, LateSeed);
        var insideEof = WriteOnce(pair, remote, 1 * Block, PeerSeed);
        var grow = RunProbe(Generous, "truncate", path, Size.ToString(CultureInfo.InvariantCulture));
        Assert.That(grow.Ok, Is.True);
        var intoRegrown = WriteOnce(pair, remote, 12 * Block, LateSeed);
        string[] blocks = ClassifyAll(ReadByDescriptor(file));
        string text = $"{mount}: no lease, ODP region: truncate(2) took {Ms(shrink.Elapsed)}; old rkey past the new EOF: {pastEof}; inside it: {insideEof}; after growing the file again, into the new block: {intoRegrown}; file: {Summarize(blocks)}";
        TestContext.Out.WriteLine(text);
        if (Directory.Exists("/mnt/out") && Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.AppendAllText("/mnt/out/leased-baseline.txt", text + "\n");
        Assert.Multiple(() =>
        {
            Assert.That(shrink.Elapsed, Is.LessThan(TimeSpan.FromSeconds(1)), "nothing to wait for");
            Assert.That(pastEof, Is.EqualTo(WorkCompletionStatus.RemoteAccessError));
            Assert.That(insideEof, Is.EqualTo(WorkCompletionStatus.Success));
            Assert.That(blocks[1], Is.EqualTo("peer"));
            Assert.That(blocks[4..12], Is.All.EqualTo("zero"));
        });
    }

    /// <summary>A holder that ignores the break (the probe's hold mode: SIGIO ignored) makes the truncater wait out lease-break-time.</summary>
    [Test]
    public void AHolderThatNeverReleasesMakesTheTruncaterWaitTheWholeDeadline()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        using (var f = OpenFile(path, "/mnt/xfs", 16 * Block))
            FillBlocks(f.Span, InitialSeed);
        using var holder = new HoldingProcess(path, device: null);
        TimeSpan deadline = FileLease.LeaseBreakTime;
        var p = RunProbe(deadline + Generous, "truncate", path, "0");
        string text = $"/mnt/xfs: holder '{holder.ReadyLine}' never releases: truncate(2) waited {Ms(p.Elapsed)} (lease-break-time {deadline.TotalSeconds} s)";
        TestContext.Out.WriteLine(text);
        if (Directory.Exists("/mnt/out") && Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.AppendAllText("/mnt/out/leased-baseline.txt", text + "\n");
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(p.Elapsed, Is.GreaterThan(deadline - TimeSpan.FromMilliseconds(300)).And.LessThan(deadline + TimeSpan.FromSeconds(3)));
        Assert.That(holder.HasExited, Is.False, "the kernel removed the lease; the holder lives on");
    }

    /// <summary>
    /// The registering process is SIGKILLed while another process's truncate(2) waits on its lease (it registered an ODP
    /// region over the file and never gives the lease back): the kernel drops the lease with the descriptor and the
    /// truncater proceeds at once.
    /// </summary>
    [TestCaseSource(nameof(DaxMounts))]
    public void KillingTheRegisteringProcessLetsTheTruncaterGoAtOnce(string mount)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("f");
        using (var f = OpenFile(path, mount, 16 * Block))
            FillBlocks(f.Span, InitialSeed);
        using var holder = new HoldingProcess(path, "rxelo");
        Assert.That(holder.ReadyLine, Does.StartWith("held deleg rkey=0x").And.Not.Contain("rkey=0x0 "), "an ODP region under a delegation");
        var truncating = StartProbe("truncate", path, "0");
        Assert.That(truncating.Wait(TimeSpan.FromMilliseconds(700)), Is.False, "the truncater waits on the holder's lease");
        long killed = holder.Kill();
        Assert.That(truncating.Wait(Generous), Is.True);
        var p = truncating.Result;
        TimeSpan afterKill = Stopwatch.GetElapsedTime(killed, p.EndTimestamp);
        string text = $"{mount}: registering process SIGKILLed while truncate(2) waited: truncate returned {Ms(afterKill)} after the kill (waited {Ms(p.Elapsed)} in all)";
        TestContext.Out.WriteLine(text);
        if (Directory.Exists("/mnt/out") && Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.AppendAllText("/mnt/out/leased-baseline.txt", text + "\n");
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(afterKill, Is.LessThan(TimeSpan.FromSeconds(1)));
        Assert.That(p.Elapsed, Is.LessThan(FileLease.LeaseBreakTime - TimeSpan.FromSeconds(1)));
        Assert.That(new FileInfo(path).Length, Is.Zero);
    }

    // ---- numbers ----------------------------------------------------------------------------------------------

    /// <summary>Break signal → release with an ODP region deregistered in the teardown, over repeated truncate(2) breaks.</summary>
    [TestCaseSource(nameof(DaxMounts))]
    public void BreakWithARegisteredRegionIsMeasured(string mount)
    {
        const int Runs = 15;
        var signalToRelease = new List<double>();
        var teardown = new List<double>();
        var truncater = new List<double>();
        using var dir = CreateTempDir(mount);
        using var pair = Pair();
        for (int i = 0; i < Runs; i++)
        {
            string path = dir.File($"m{i}");
            using var file = OpenFile(path, mount, 16 * Block);
            using var lease = file.AcquireLease();
            var broke = OnBreak(lease);
            using var mr = pair.PdB.Register(lease, RemoteWritable);
            WriteBlock(pair, mr.ToRemote(), (ulong)(i % 16) * Block);   // faulted in, used
            var p = RunProbe(Generous, "truncate", path, "4096");
            Assert.That(p.Ok, Is.True);
            Assert.That(p.Elapsed, Is.LessThan(FileLease.LeaseBreakTime / 2), $"run {i}: the truncater came close to the kernel's deadline");
            Assert.That(broke.Task.Wait(Generous), Is.True);
            Assert.That(mr.IsDeregistered, Is.True);
            signalToRelease.Add(broke.Task.Result.BreakToRelease.TotalMilliseconds);
            teardown.Add(Stopwatch.GetElapsedTime(mr.TeardownStartedTimestamp, mr.DeregisteredTimestamp).TotalMilliseconds);
            truncater.Add(p.Elapsed.TotalMilliseconds);
        }
        var sb = new StringBuilder();
        foreach (var (what, values) in new[] { ("signal -> release (FileLease.BreakToRelease)", signalToRelease), ("teardown: revoke + ibv_dereg_mr", teardown), ("the truncater's truncate(2), total", truncater) })
        {
            var (median, max) = MedianMax(values);
            sb.AppendLine(CultureInfo.InvariantCulture, $"| {Fs(mount)} | {what} | {Runs} | {values.Min():F3} | {median:F3} | {max:F3} |");
        }
        Report($"leased-latency-{Fs(mount)}.md", sb.ToString());
        Assert.That(MedianMax(truncater).Median, Is.LessThan(FileLease.LeaseBreakTime.TotalMilliseconds / 10));
        Assert.That(MedianMax(signalToRelease).Max, Is.LessThan(FileLease.LeaseBreakTime.TotalMilliseconds / 2));
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "sync")]
    private static extern void SyncFilesystems();

    private static void WriteBlock(RcPair pair, RemoteRegion remote, ulong offset)
    {
        using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        BlockPattern(PeerSeed).CopyTo(source.Span);
        pair.A.PostWrite(77, source.Slice(0, Block), remote, offset);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, 77);
    }
}
