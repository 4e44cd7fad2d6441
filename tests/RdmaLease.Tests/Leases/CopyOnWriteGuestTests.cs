using System.Buffers.Binary;
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
/// Copy-on-write FS-DAX under RDMA (issue 14): XFS with reflink moves a file's data to new blocks whenever a shared
/// block is written, so a leased ODP region must follow the file to storage that changes under it. The peer is an RC
/// QP on rxelo at path MTU 4096; every transfer into the ODP region starts on a page boundary and is one packet
/// (4 KiB writes, 8-byte atomics at a page's first byte): what rxe's ODP defect (docs/known-defects.md) leaves intact.
/// </summary>
[Category("Guest")]
public class CopyOnWriteGuestTests
{
    const int Blocks = 16, Size = Blocks * Block;
    const AccessFlags Everything = RemoteWritable | AccessFlags.RemoteAtomic | AccessFlags.FlushPersistent;
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Two siblings share the file's blocks before the lease (a whole-file FICLONE and a FICLONERANGE of the second
    /// half). Through the leased region a peer streams RDMA WRITEs, ATOMIC WRITEs, compare-and-swaps and fetch-and-adds,
    /// each followed by a FLUSH to persistence, over blocks 0-11, three passes, the first operation on each shared block
    /// being a different kind; block 12 is only read, block 13 only flushed, block 14 stored to by the CPU through the
    /// mapping, block 15 left alone. Afterwards the file holds exactly the model of what was written, both siblings are
    /// byte-identical to before, and FIEMAP's shared flag shows which blocks were copied.
    /// </summary>
    [Test]
    public void WritesAtomicsAndFlushesIntoSharedBlocksCopyThemAndLeaveEverySiblingAlone()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f"), whole = dir.File("sibling-whole"), tail = dir.File("sibling-tail");
        byte[] initial = new byte[Size];
        FillBlocks(initial, InitialSeed);
        for (int b = 0; b < Blocks; b++)
            BinaryPrimitives.WriteUInt64LittleEndian(initial.AsSpan(b * Block), (ulong)(1000 + b));   // atomics' starting values
        File.WriteAllBytes(path, initial);
        Reflink.CloneFile(path, whole);
        Reflink.CloneFile(path, tail, 8 * Block, 8 * Block);
        byte[] wholeBefore = File.ReadAllBytes(whole), tailBefore = File.ReadAllBytes(tail);
        Assert.That(wholeBefore, Is.EqualTo(initial));
        Assert.That(tailBefore, Is.EqualTo(initial[(8 * Block)..]));

        using var file = DaxFile.Open(path);
        Assert.That(file.IsDax, Is.True);
        var before = KernelView.Extents(file.FileDescriptor);
        var wholeExtentsBefore = KernelView.Extents(whole);
        Assert.That(KernelView.IsShared(before, 0, Size), Is.True, "FIEMAP: every block of the file is shared before the lease");
        using var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        using var pair = Pair();
        using var mr = pair.PdB.Register(lease, Everything);
        Assert.That(mr.IsOnDemand, Is.True);
        var remote = mr.ToRemote();

        byte[] model = (byte[])initial.Clone();
        using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        using var back = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        string[] firstOp = new string[Blocks];
        ulong wr = 0;
        const int Passes = 3, Streamed = 12;
        for (int pass = 0; pass < Passes; pass++)
        {
            for (int b = 0; b < Streamed; b++)
            {
                ulong offset = (ulong)(b * Block);
                ulong current = BinaryPrimitives.ReadUInt64LittleEndian(model.AsSpan(b * Block));
                string kind = ((b + pass) % 4) switch { 0 => "WRITE", 1 => "ATOMIC WRITE", 2 => "CAS", _ => "FAA" };
                firstOp[b] ??= kind;
                switch (kind)
                {
                    case "WRITE":
                        Fill(source.Span[..Block], 100 + pass * Blocks + b);
                        pair.A.PostWrite(++wr, source.Slice(0, Block), remote, offset);
                        RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, wr);
                        source.Span[..Block].CopyTo(model.AsSpan(b * Block));
                        break;
                    case "ATOMIC WRITE":
                        ulong value = 0xA700_0000_0000_0000UL | (uint)(pass << 8 | b);
                        pair.A.PostAtomicWrite(++wr, remote, offset, value);
                        RcPair.Expect(pair.CqA, WorkCompletionOpcode.AtomicWrite, wr);
                        BinaryPrimitives.WriteUInt64LittleEndian(model.AsSpan(b * Block), value);
                        break;
                    case "CAS":
                        ulong swap = 0xCA50_0000_0000_0000UL | (uint)(pass << 8 | b);
                        pair.A.PostCompareSwap(++wr, back.Slice(0, 8), remote, offset, current, swap);
                        RcPair.Expect(pair.CqA, WorkCompletionOpcode.CompareSwap, wr);
                        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(back.Span), Is.EqualTo(current), $"pass {pass} block {b}: CAS saw the file's value");
                        BinaryPrimitives.WriteUInt64LittleEndian(model.AsSpan(b * Block), swap);
                        break;
                    default:
                        ulong add = (ulong)(7 + pass * 100 + b);
                        pair.A.PostFetchAdd(++wr, back.Slice(0, 8), remote, offset, add);
                        RcPair.Expect(pair.CqA, WorkCompletionOpcode.FetchAdd, wr);
                        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(back.Span), Is.EqualTo(current), $"pass {pass} block {b}: FAA saw the file's value");
                        BinaryPrimitives.WriteUInt64LittleEndian(model.AsSpan(b * Block), current + add);
                        break;
                }
                pair.A.PostFlush(++wr, remote, offset, Block, FlushType.Persistent);
                RcPair.Expect(pair.CqA, WorkCompletionOpcode.Flush, wr);
            }
        }
        // Block 12: read only. Block 13: flushed only. Block 14: a CPU store through the mapping. Block 15: untouched.
        pair.A.PostRead(++wr, back.Slice(0, Block), remote, 12 * Block);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaRead, wr);
        Patterns.AssertEqual(back.Span[..Block], initial.AsSpan(12 * Block, Block), "block 12 read through the region");
        pair.A.PostFlush(++wr, remote, 13 * Block, Block, FlushType.Persistent);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.Flush, wr);
        Fill(file.GetSpan(14 * Block, Block), 77);
        file.Flush(14 * Block, Block);
        Fill(model.AsSpan(14 * Block, Block), 77);
        firstOp[12] = "READ";
        firstOp[13] = "FLUSH";
        firstOp[14] = "CPU store";
        firstOp[15] = "-";

        // Every block read back through the region, then the file by read(2), the siblings, and FIEMAP.
        for (int b = 0; b < Blocks; b++)
        {
            pair.A.PostRead(++wr, back.Slice(0, Block), remote, (ulong)(b * Block));
            RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaRead, wr);
            Patterns.AssertEqual(back.Span[..Block], model.AsSpan(b * Block, Block), $"block {b} read back through the region");
        }
        byte[] content = ReadByDescriptor(file);
        var after = KernelView.Extents(file.FileDescriptor);
        var wholeAfter = KernelView.Extents(whole);
        var tailAfter = KernelView.Extents(tail);
        var table = new StringBuilder();
        table.AppendLine("| block | first operation | file block shared before / after | file block moved | sibling's block shared after |");
        table.AppendLine("|---|---|---|---|---|");
        for (int b = 0; b < Blocks; b++)
        {
            long at = b * Block;
            bool moved = KernelView.PhysicalAt(after, at) != KernelView.PhysicalAt(before, at);
            table.AppendLine(CultureInfo.InvariantCulture, $"| {b} | {firstOp[b]} | {KernelView.IsShared(before, at, Block)} / {KernelView.IsShared(after, at, Block)} | {moved} | {KernelView.IsShared(wholeAfter, at, Block)} |");
        }
        LeasedRegistrationGuestTests.Report("cow-shared-writes.md", table.ToString());

        Assert.Multiple(() =>
        {
            Assert.That(broke.Task.IsCompleted, Is.False, "writing into shared blocks breaks no lease");
            Assert.That(lease.IsActive && mr.IsActive, Is.True);
            Patterns.AssertEqual(content, model, "the file holds exactly what the peer (and the CPU) wrote");
            Patterns.AssertEqual(File.ReadAllBytes(whole), wholeBefore, "the whole-file sibling is unchanged");
            Patterns.AssertEqual(File.ReadAllBytes(tail), tailBefore, "the second-half sibling is unchanged");
            for (int b = 0; b < Blocks; b++)
            {
                long at = b * Block;
                bool written = b < Streamed || b == 14;   // a read or a FLUSH alone copies nothing (observed)
                Assert.That(KernelView.IsUnshared(after, at, Block), Is.EqualTo(written), $"block {b} ({firstOp[b]}): copied out of the shared extent");
                Assert.That(KernelView.PhysicalAt(after, at) != KernelView.PhysicalAt(before, at), Is.EqualTo(written), $"block {b} ({firstOp[b]}): moved to a new physical block");
                Assert.That(KernelView.PhysicalAt(wholeAfter, at), Is.EqualTo(KernelView.PhysicalAt(wholeExtentsBefore, at)), $"block {b}: the sibling's block did not move");
                // The whole-file sibling's second half is still shared with the tail sibling; its first half only where the file kept it.
                Assert.That(KernelView.IsShared(wholeAfter, at, Block), Is.EqualTo(b >= 8 || !written), $"sibling block {b} shared");
            }
            Assert.That(KernelView.IsShared(tailAfter, 0, 8 * Block), Is.True, "the tail sibling still shares all its blocks (with the whole one)");
        });
    }

    /// <summary>
    /// The alternative snapshot design, measured: the lease holder clones its own file through its own descriptor while
    /// the peer keeps writing (no open of the file, so no break). The clone is a consistent cut of the write stream, the
    /// writes go on without an error, and the next write to each block copies it again (the clone keeps its bytes).
    /// </summary>
    [Test]
    public void CloningThroughTheLeasedDescriptorBreaksNothingAndCutsTheWriteStreamCleanly()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f"), clonePath = dir.File("clone");
        using var file = OpenFile(path, "/mnt/xfs", Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        byte[] initial = file.Span.ToArray();
        using var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        using var pair = Pair();
        using var mr = pair.PdB.Register(lease, RemoteWritable);
        using var clone = File.OpenHandle(clonePath, FileMode.CreateNew, FileAccess.ReadWrite);
        var writer = new PeerWriter(pair, mr.ToRemote(), sequenced: true);
        long started, ended;
        int before, afterClone, errno;
        try
        {
            Assert.That(writer.WaitForSuccesses(2 * Blocks, Generous), Is.True, $"{writer.Failure} {writer.Error}");
            before = writer.Successes;
            started = Stopwatch.GetTimestamp();
            errno = Reflink.Clone((int)clone.DangerousGetHandle(), file.FileDescriptor);
            ended = Stopwatch.GetTimestamp();
            afterClone = writer.Successes;
            Assert.That(writer.WaitForSuccesses(afterClone + 2 * Blocks, Generous), Is.True, $"the writes go on after the clone: {writer.Failure} {writer.Error}");
        }
        finally
        {
            writer.Dispose();   // waits for the write in flight: afterwards the file is the model of every success
        }
        byte[] content = ReadByDescriptor(file);
        byte[] cloned = ReadFile(clonePath);
        var cloneIds = Enumerable.Range(0, Blocks).Select(b => PeerWriter.SequencedId(cloned.AsSpan(b * Block, Block))).ToArray();
        var fileExtents = KernelView.Extents(file.FileDescriptor);
        var cloneExtents = KernelView.Extents(clonePath);
        Assert.That(errno, Is.Zero, $"FICLONE through the leased descriptor: {ErrnoName(errno)}");
        Assert.That(cloneIds, Has.All.Not.Null, "every block of the clone is one whole write of the peer (no torn or mixed block)");
        long cut = (long)cloneIds.Max(id => id!.Value) + 1;

        // The pause a writer saw: the latency of the writes that overlapped the clone, against all the others.
        var times = writer.Times;
        var during = times.Where(t => t.Completed >= started && t.Posted <= ended).Select(t => Stopwatch.GetElapsedTime(t.Posted, t.Completed).TotalMilliseconds).ToList();
        var others = times.Where(t => t.Completed < started || t.Posted > ended).Select(t => Stopwatch.GetElapsedTime(t.Posted, t.Completed).TotalMilliseconds).ToList();
        string text = string.Create(CultureInfo.InvariantCulture,
            $"clone through the leased descriptor (no break), 64 KiB file, a peer writing 4 KiB blocks: FICLONE {Ms(Stopwatch.GetElapsedTime(started, ended))}; " +
            $"writes overlapping it: {during.Count}, slowest {(during.Count > 0 ? during.Max() : 0):F2} ms; other writes: median {MedianMax(others).Median:F2} ms, max {MedianMax(others).Max:F2} ms; " +
            $"writes completed before {before}, when it returned {afterClone}, cut at {cut}");
        TestContext.Out.WriteLine(text);
        LeasedRegistrationGuestTests.Report("cow-self-clone.txt", text);
        Assert.Multiple(() =>
        {
            Assert.That(writer.Failure, Is.Null, "no write failed");
            Assert.That(writer.Error, Is.Null);
            Assert.That(broke.Task.IsCompleted, Is.False, "no break: the clone opened nothing");
            Assert.That(KernelView.LocksOn(file), Has.Count.EqualTo(1), "/proc/locks: the lease is still ours");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(mr.RemoteKey), "the region is still registered");
            Assert.That(cut, Is.InRange((long)before, (long)afterClone + 1), "the clone holds the writes completed before it began, and at most the one in flight when it ended");
            Patterns.AssertEqual(cloned, PeerWriter.Model(initial, Blocks, cut), "the clone is the file after exactly the first writes, nothing else");
            Patterns.AssertEqual(content, PeerWriter.Model(initial, Blocks, writer.Successes), "the file is exactly the model of every completed write");
            Assert.That(KernelView.SharedBytes(fileExtents), Is.Zero, "every block was written again after the clone: copied again (FIEMAP)");
            Assert.That(KernelView.SharedBytes(cloneExtents), Is.Zero);
        });
    }

    // ---- another process clones, dedupes or copies our file, for each kind of lease -------------------------------

    private static readonly string[] OtherOps = ["clone-from", "clonerange-from", "dedupe-from", "dedupe-into", "cp-reflink"];
    private static readonly string[] Holdings = ["write delegation", "write lease", "read lease"];
    private static readonly Dictionary<string, string> OtherRows = [];
    const int Stable = 12;   // the writing peer cycles over blocks 0-11; 12-15 keep their bytes (the dedupe range)

    public static IEnumerable<TestCaseData> OtherProcessCases()
    {
        foreach (string op in OtherOps)
        {
            foreach (string holding in Holdings)
                yield return new TestCaseData("/mnt/xfs", op, holding);
            foreach (string mount in new[] { "/mnt/ext4", "/mnt/tmpfs" })
                yield return new TestCaseData(mount, op, "write delegation");
        }
    }

    [OneTimeTearDown]
    public void WriteOtherProcessTable()
    {
        if (OtherRows.Count == 0)
            return;
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"kernel {Environment.OSVersion.Version}; 64 KiB file, ODP region over all of it; a write lease's peer RDMA-writes blocks 0-11 in a loop (a new pattern per write), a read lease's peer RDMA-reads every block in a loop; blocks 12-15 are the dedupe range");
        sb.AppendLine();
        sb.AppendLine("| fs | operation by another process | our lease | broke | break target (F_GET*) | its result | it took | signal->release | peer: ops before / its next op | the copy holds | our file afterwards |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in OtherRows.OrderBy(r => r.Key, StringComparer.Ordinal))
            sb.AppendLine(row.Value);
        LeasedRegistrationGuestTests.Report("cow-other-process.md", sb.ToString());
    }

    /// <summary>
    /// Another process takes our file as the source of FICLONE, FICLONERANGE or FIDEDUPERANGE, makes it the destination
    /// of a dedupe (opened O_RDONLY, which the kernel allows root), or runs cp --reflink=always on it, while our peer
    /// writes (write lease or delegation) or reads (read lease, read-only export) through the leased region. Asserted:
    /// whether the lease breaks, that the copy and our file hold nothing but whole writes of a prefix of the peer's
    /// stream (a write lease) or the file's bytes (a read lease), and what FIEMAP shows.
    /// </summary>
    [TestCaseSource(nameof(OtherProcessCases))]
    public void AnotherProcessClonesDedupesOrCopiesOurFile(string mount, string op, string holding)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("ours"), other = dir.File("other"), dest = dir.File("copy");
        byte[] initial = new byte[Size];
        FillBlocks(initial, InitialSeed);
        File.WriteAllBytes(path, initial);
        if (op.StartsWith("dedupe", StringComparison.Ordinal))
            File.WriteAllBytes(other, initial);   // identical bytes, its own blocks
        bool read = holding == "read lease";
        bool xfs = mount == "/mnt/xfs";
        using var file = DaxFile.Open(path, new DaxFileOptions { Access = read ? DaxFileAccess.Read : DaxFileAccess.ReadWrite, AllowNonDax = !IsDax(mount) });
        using var lease = file.AcquireLease(new LeaseOptions { PreferDelegation = holding == "write delegation" });
        Assert.That(lease.Type, Is.EqualTo(read ? LeaseType.Read : LeaseType.Write));
        Assert.That(lease.Mechanism, Is.EqualTo(holding == "write delegation" ? LeaseMechanism.Delegation : LeaseMechanism.Lease));
        var broke = OnBreak(lease);
        using var pair = Pair();
        using var mr = pair.PdB.Register(lease, read ? AccessFlags.RemoteRead : RemoteWritable);
        var remote = mr.ToRemote();
        var extentsBefore = xfs ? KernelView.Extents(file.FileDescriptor) : null;
        var otherBefore = xfs && op.StartsWith("dedupe", StringComparison.Ordinal) ? KernelView.Extents(other) : null;

        string s(long v) => v.ToString(CultureInfo.InvariantCulture);
        Func<(bool Ok, string Result, TimeSpan Took)> run = op switch
        {
            "clone-from" => () => Probe("clone-from", path, dest),
            "clonerange-from" => () => Probe("clonerange-from", path, dest, "0", s(8 * Block)),
            "dedupe-from" => () => Probe("dedupe-from", path, other, s(Stable * Block), s((Blocks - Stable) * Block)),
            "dedupe-into" => () => Probe("dedupe-into", path, other, s(Stable * Block), s((Blocks - Stable) * Block)),
            _ => () =>
            {
                var sw = Stopwatch.StartNew();
                var r = Packaging.Tool.Run("cp", ["--reflink=always", path, dest], timeoutMs: 60_000);
                // cp says "cp: failed to clone 'DEST' from 'SRC': REASON": the reason is what the table needs.
                return (r.ExitCode == 0, r.ExitCode == 0 ? "ok" : $"exit {r.ExitCode}: {r.Stderr.Trim().Split(": ")[^1]}", sw.Elapsed);
            },
        };

        (bool Ok, string Result, TimeSpan Took) outcome;
        bool didBreak;
        int opsBefore, writes = 0;
        string nextOp;
        WorkCompletionStatus? late = null;
        if (read)
        {
            using var reader = new PeerReader(pair, remote, initial);
            Assert.That(reader.WaitForSuccesses(Blocks, Generous), Is.True, $"the peer's reads: {reader.Failure} {reader.Mismatch} {reader.Error}");
            opsBefore = reader.Successes;
            outcome = run();
            didBreak = broke.Task.Wait(TimeSpan.FromMilliseconds(500));
            bool more = reader.WaitForSuccesses(opsBefore + Blocks, TimeSpan.FromSeconds(20));
            nextOp = reader.Failure is { } f ? f.Status.ToString() : reader.Mismatch ?? (more ? "Success" : "stalled");
            Assert.That(reader.Error, Is.Null);
        }
        else
        {
            var writer = new PeerWriter(pair, remote, blocks: Stable, sequenced: true);
            try
            {
                Assert.That(writer.WaitForSuccesses(2 * Stable, Generous), Is.True, $"the peer's writes: {writer.Failure} {writer.Error}");
                opsBefore = writer.Successes;
                outcome = run();
                didBreak = broke.Task.Wait(TimeSpan.FromMilliseconds(500));
                if (didBreak)
                    Assert.That(writer.WaitEnded(TimeSpan.FromSeconds(10)), Is.True, "the peer's writes must fail after the break");
                else
                    Assert.That(writer.WaitForSuccesses(opsBefore + 5, Generous), Is.True, "without a break the peer goes on");
            }
            finally
            {
                writer.Dispose();
            }
            writes = writer.Successes;
            nextOp = writer.Failure is { } f ? f.Status.ToString() : "Success (no break)";
            Assert.That(writer.Error, Is.Null);
            if (didBreak)
                late = WriteOnce(pair, remote, 0, LateSeed);
        }

        byte[] content = ReadByDescriptor(file);
        byte[]? copy = File.Exists(dest) ? ReadFile(dest) : null;
        // What our file may hold: the file's bytes (read lease), or the model of the first N whole writes, where N is
        // the writes the peer saw succeed (or one more: a write that landed as the break came, its ack lost).
        var allowed = read ? [initial] : new[] { PeerWriter.Model(initial, Stable, writes), PeerWriter.Model(initial, Stable, writes + 1) };
        int matched = Array.FindIndex(allowed, a => a.AsSpan().SequenceEqual(content));
        byte[]? expectedCopy = !outcome.Ok || matched < 0 ? null : op switch
        {
            "clone-from" or "cp-reflink" => content,
            "clonerange-from" => content[..(8 * Block)],
            _ => null,
        };
        var extentsAfter = xfs ? KernelView.Extents(file.FileDescriptor) : null;
        string copyHolds = op.StartsWith("dedupe", StringComparison.Ordinal)
            ? (File.ReadAllBytes(other).AsSpan().SequenceEqual(initial) ? "other file unchanged" : "OTHER FILE CHANGED")
            : copy is null ? "no copy"
            : !outcome.Ok ? (copy.Length == 0 ? "nothing (the probe's new file stays empty)" : "PARTIAL COPY")
            : expectedCopy is not null && copy.AsSpan().SequenceEqual(expectedCopy) ? (read ? "our file's bytes" : $"our file at the break ({ClassifyWrites(copy)})")
            : "WRONG BYTES";
        string moved = extentsBefore is null || extentsAfter is null ? "" : Enumerable.Range(Stable, Blocks - Stable)
            .All(b => KernelView.PhysicalAt(extentsAfter, b * Block) == KernelView.PhysicalAt(extentsBefore, b * Block)) ? "" : "; blocks 12-15 moved to the other file's";
        string ours = (matched < 0 ? "WRONG BYTES" : read ? "unchanged" : $"writes 0..{(matched == 0 ? writes : writes + 1) - 1}") + moved;
        int target = didBreak ? broke.Task.Result.PendingLeaseType : -1;
        string targetText = target switch { F_RDLCK => "F_RDLCK (downgrade)", F_UNLCK => "F_UNLCK", -1 => "-", _ => target.ToString(CultureInfo.InvariantCulture) };
        string row = $"| {Path.GetFileName(mount)} | {op} | {holding} | {(didBreak ? "breaks" : "does not break")} | {targetText} | {outcome.Result} | {Ms(outcome.Took)} | {(didBreak ? Ms(broke.Task.Result.BreakToRelease) : "-")} | {opsBefore} / {nextOp} | {copyHolds} | {ours} |";
        lock (OtherRows)
            OtherRows[$"{(xfs ? 0 : mount == "/mnt/ext4" ? 1 : 2)}-{Array.IndexOf(OtherOps, op)}-{Array.IndexOf(Holdings, holding)}"] = row;
        TestContext.Out.WriteLine(row);

        Assert.Multiple(() =>
        {
            // Every one of these opens our file: a write lease or delegation breaks (O_RDONLY asks for a downgrade, which
            // rdma-lease answers by giving the lease back); a read lease does not (other readers are allowed).
            Assert.That(didBreak, Is.EqualTo(!read), "broke");
            if (didBreak)
                Assert.That(target, Is.EqualTo(F_RDLCK), "every one of them opens our file for reading: the kernel asks a write lease to become a read lease");
            Assert.That(outcome.Took, Is.LessThan(FileLease.LeaseBreakTime / 2), "the other process must not wait for the break deadline");
            Assert.That(matched, Is.GreaterThanOrEqualTo(0), "our file holds only whole writes of a prefix of the peer's stream (or, read-only, its own bytes)");
            if (xfs)
                Assert.That(outcome.Ok, Is.True, $"{op} on XFS: {outcome.Result}");
            else
                Assert.That(outcome.Result, Does.Contain(op == "cp-reflink" ? "Operation not supported" : "err 95"), $"{op} on {mount}: no reflink, EOPNOTSUPP");
            if (outcome.Ok && expectedCopy is not null)
                Assert.That(copy, Is.EqualTo(expectedCopy), "the copy is our file as it was when the peer was cut off (or, read-only, as it is)");
            if (!outcome.Ok)
                Assert.That(copy ?? [], Is.Empty, "a refused clone leaves no bytes behind");
            if (outcome.Ok && op is "clone-from" or "clonerange-from" or "cp-reflink")
                Assert.That(copy, Is.Not.Null.And.Length.EqualTo(op == "clonerange-from" ? 8 * Block : Size), "the copy was made");
            if (op.StartsWith("dedupe", StringComparison.Ordinal))
                Assert.That(File.ReadAllBytes(other), Is.EqualTo(initial), "a dedupe never changes bytes");
            if (xfs && op == "dedupe-into")
            {
                var otherAfter = KernelView.Extents(other);
                for (int b = Stable; b < Blocks; b++)
                    Assert.That(KernelView.PhysicalAt(extentsAfter!, b * Block), Is.EqualTo(KernelView.PhysicalAt(otherAfter, b * Block)), $"block {b} of our file now lives in the other file's block");
            }
            if (xfs && op == "dedupe-from")
            {
                var otherAfter = KernelView.Extents(other);
                for (int b = Stable; b < Blocks; b++)
                    Assert.That(KernelView.PhysicalAt(otherAfter, b * Block), Is.EqualTo(KernelView.PhysicalAt(extentsAfter!, b * Block)), $"block {b} of the other file now lives in ours");
                Assert.That(KernelView.PhysicalAt(otherAfter, Stable * Block), Is.Not.EqualTo(KernelView.PhysicalAt(otherBefore!, Stable * Block)));
            }
            if (read)
                Assert.That(nextOp, Is.EqualTo("Success"), "the read-only export keeps serving the file's bytes, every byte compared");
            else if (didBreak)
            {
                Assert.That(nextOp, Is.EqualTo(nameof(WorkCompletionStatus.RemoteAccessError)), "the peer's next write");
                Assert.That(late, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "a write with the old rkey after the break");
                Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey));
            }
        });
    }

    private static (bool Ok, string Result, TimeSpan Took) Probe(params string[] args)
    {
        var p = RunProbe(FileLease.LeaseBreakTime + Generous, args);
        return (p.Ok, p.Ok ? "ok" : $"err {p.Errno} ({ErrnoName(p.Errno)})", p.Elapsed);
    }

    /// <summary>"writes A..B" for a sequenced writer's blocks (0-11, or fewer in a partial clone): the oldest and newest write in them.</summary>
    private static string ClassifyWrites(byte[] data)
    {
        int n = Math.Min(Stable, data.Length / Block);
        var ids = Enumerable.Range(0, n).Select(b => PeerWriter.SequencedId(data.AsSpan(b * Block, Block))).ToList();
        return ids.Any(i => i is null) ? "unwritten blocks" : $"blocks 0-{n - 1}: writes {ids.Min()}..{ids.Max()}";
    }
}
