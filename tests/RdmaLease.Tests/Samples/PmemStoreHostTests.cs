using System.Buffers.Binary;
using RdmaLease.Tests.Leases;

namespace RdmaLease.Tests.Samples;

/// <summary>
/// samples/PmemStore on the host: its command lines and its verifier, on ordinary files whose records this test builds
/// itself from the format in docs/pmem-store.md (with its own CRC-32), so the sample's writer and checker are held to
/// the documented layout, not to each other.
/// </summary>
public class PmemStoreHostTests
{
    const int Page = 4096;

    [Test]
    public void VerifyCountsValidMissingAndCorruptRecords()
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        const int AreaRecords = 8;
        var file = new byte[3 * AreaRecords * Page];
        for (ulong s = 0; s < 5; s++)
            DocumentedRecord(0, s).CopyTo(file.AsSpan((int)s * Page));
        for (ulong s = 0; s < 3; s++)
            DocumentedRecord(1, s).CopyTo(file.AsSpan((AreaRecords + (int)s) * Page));
        file[3 * Page + 100] ^= 0x40;                  // client 0, record 3: one payload bit flipped
        DocumentedRecord(1, 2).CopyTo(file.AsSpan(4 * Page));   // client 0, record 4: someone else's record
        File.WriteAllBytes(dir.File("store"), file);
        WriteLog(dir.File("c0"), 0, [0, 1, 2, 3, 4]);
        WriteLog(dir.File("c1"), 1, [0, 1, 2, 6]);      // record 6 was never written: missing

        var r = PmemStoreSample.Run("verify", dir.File("store"), "--acked", dir.File("c0"), "--acked", dir.File("c1"), "--area-records", "8");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
            Assert.That(PmemStoreSample.VerifyTotal(r.Stdout), Is.EqualTo((9L, 6L, 1L, 2L)), r.Output);
            Assert.That(r.Stdout, Does.Contain("client 0: 5 acknowledged, 3 verified, 0 missing, 2 corrupt"));
            Assert.That(r.Stdout, Does.Contain("client 1: 4 acknowledged, 3 verified, 1 missing, 0 corrupt"));
            Assert.That(r.Stdout, Does.Contain("client 0 record 3 corrupt").And.Contain("client 1 record 6 missing"));
        });

        WriteLog(dir.File("c0"), 0, [0, 1, 2]);
        WriteLog(dir.File("c1"), 1, [0, 1, 2]);
        var ok = PmemStoreSample.Run("verify", dir.File("store"), "--acked", dir.File("c0"), "--acked", dir.File("c1"), "--area-records", "8");
        Assert.That(ok.ExitCode, Is.Zero, ok.Output);
        Assert.That(PmemStoreSample.VerifyTotal(ok.Stdout), Is.EqualTo((6L, 6L, 0L, 0L)));
    }

    // What a crash of the server's machine can leave (docs/pmem-store.md, "Crash durability"): acknowledged records,
    // unacknowledged ones that landed whole, a torn page (a record's first cache line, the rest still zeros), and empty
    // pages. verify-crash counts the torn page as partial, never as a record, and fails only on a lost acknowledgement.
    [Test]
    public void VerifyCrashCountsLostWholeAndPartialRecords()
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        const int AreaRecords = 8;
        var file = new byte[2 * AreaRecords * Page];
        for (ulong s = 0; s < 5; s++)
            DocumentedRecord(0, s).CopyTo(file.AsSpan((int)s * Page));
        // Record 5 torn: only its first cache line landed (its 105-byte payload runs past it).
        DocumentedRecord(0, 5).AsSpan(0, 64).CopyTo(file.AsSpan(5 * Page));
        File.WriteAllBytes(dir.File("store"), file);
        WriteLog(dir.File("c0"), 0, [0, 1, 2]);        // 3 and 4 landed whole, unacknowledged

        var ok = PmemStoreSample.Run("verify-crash", dir.File("store"), "--acked", dir.File("c0"), "--area-records", "8");
        Assert.Multiple(() =>
        {
            Assert.That(ok.ExitCode, Is.Zero, ok.Output);
            Assert.That(ok.Stdout, Does.Contain("PmemStore verify-crash: 3 acknowledged, 0 acknowledged lost; 2 unacknowledged found whole, 1 unacknowledged found partial"), ok.Output);
            Assert.That(ok.Stdout, Does.Contain("client 0 record 5 (never acknowledged) is partial"), ok.Output);
        });

        WriteLog(dir.File("c0"), 0, [0, 1, 2, 5, 6]);  // the torn record and an empty page acknowledged: both lost
        var lost = PmemStoreSample.Run("verify-crash", dir.File("store"), "--acked", dir.File("c0"), "--area-records", "8");
        Assert.Multiple(() =>
        {
            Assert.That(lost.ExitCode, Is.EqualTo(1), lost.Output);
            Assert.That(lost.Stdout, Does.Contain("5 acknowledged, 2 acknowledged lost; 2 unacknowledged found whole, 0 unacknowledged found partial"), lost.Output);
            Assert.That(lost.Stdout, Does.Contain("record 5 was acknowledged and is corrupt: LOST").And.Contain("record 6 was acknowledged and is missing: LOST"), lost.Output);
        });
    }

    [Test]
    public void VerifyPastTheEndOfTheFileCountsMissing()
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        File.WriteAllBytes(dir.File("store"), DocumentedRecord(0, 0));
        WriteLog(dir.File("c0"), 0, [0, 1]);
        var r = PmemStoreSample.Run("verify", dir.File("store"), "--acked", dir.File("c0"), "--area-records", "4");
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(PmemStoreSample.VerifyTotal(r.Stdout), Is.EqualTo((2L, 1L, 1L, 0L)));
    }

    [TestCase(new string[0], "", TestName = "no command")]
    [TestCase(new[] { "store" }, "unknown command 'store'")]
    [TestCase(new[] { "serve" }, "expected one FILE")]
    [TestCase(new[] { "serve", "f", "--port", "70000" }, "--port must be a whole number from 0 to 65535")]
    [TestCase(new[] { "serve", "f", "--address", "not-an-ip" }, "--address must be an IP address")]
    [TestCase(new[] { "serve", "f", "--clients", "2", "--area-records", "4", "--size", "4096" }, "--size must be (clients + 1) * area-records * 4096 = 49152")]
    [TestCase(new[] { "serve", "f", "--colour", "red" }, "unknown option --colour")]
    [TestCase(new[] { "write", "--client-id", "0" }, "--server is required")]
    [TestCase(new[] { "write", "--server", "198.51.100.1", "--client-id", "0" }, "--server must be ADDRESS:PORT")]
    [TestCase(new[] { "write", "--server", "198.51.100.1:7471" }, "--client-id is required")]
    [TestCase(new[] { "write", "--server", "198.51.100.1:7471", "--client-id", "0", "--records", "0" }, "--records must be a whole number from 1")]
    [TestCase(new[] { "write", "--server", "198.51.100.1:7471", "--client-id", "0", "--window" }, "--window needs a value")]
    [TestCase(new[] { "verify", "f" }, "give at least one --acked LOG")]
    public void BadCommandLinesSayWhatIsWrong(string[] args, string message)
    {
        var r = PmemStoreSample.Run(args);
        Assert.That(r.ExitCode, Is.EqualTo(2), r.Output);
        Assert.That(r.Stderr, Does.Contain(message));
        Assert.That(r.Stdout, Does.Contain("usage:"));
    }

    [Test]
    public void VerifyRefusesWhatIsNotAnAckedLog()
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        File.WriteAllBytes(dir.File("store"), new byte[Page]);
        File.WriteAllText(dir.File("log"), "0\n1\n");
        var r = PmemStoreSample.Run("verify", dir.File("store"), "--acked", dir.File("log"));
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain("line 1 should be '# pmem-store acked client=N'"));

        File.WriteAllText(dir.File("log"), "# pmem-store acked client=0\nseven\n");
        r = PmemStoreSample.Run("verify", dir.File("store"), "--acked", dir.File("log"));
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain("line 2 ('seven') is not a sequence number"));

        r = PmemStoreSample.Run("verify", dir.File("absent"), "--acked", dir.File("log"));
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
    }

    static void WriteLog(string path, uint client, ulong[] sequences) =>
        File.WriteAllLines(path, [$"# pmem-store acked client={client}", .. sequences.Select(s => s.ToString(System.Globalization.CultureInfo.InvariantCulture))]);

    /// <summary>A record as docs/pmem-store.md lays it out, with any payload: the checker must accept it.</summary>
    internal static byte[] DocumentedRecord(uint client, ulong sequence)
    {
        var page = new byte[Page];
        int length = 100 + (int)sequence;
        BinaryPrimitives.WriteUInt32LittleEndian(page, 0x31524D50);   // "PMR1"
        BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(4), client);
        BinaryPrimitives.WriteUInt64LittleEndian(page.AsSpan(8), sequence);
        BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(16), (uint)length);
        for (int i = 0; i < length; i++)
            page[24 + i] = (byte)(i ^ (int)sequence ^ 0x5a);
        BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(20), PmemStoreSample.Crc32([.. page.AsSpan(0, 20), .. page.AsSpan(24, length)]));
        return page;
    }
}
