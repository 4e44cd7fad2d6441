using System.Globalization;
using RdmaLease.Tests.Leases;

namespace RdmaLease.Tests.Samples;

/// <summary>
/// `PmemStore snapshot` and `verify-snapshot` on the host: the refusals that need no reflink, and the snapshot verifier
/// on records this test lays out itself (docs/pmem-store.md), with acknowledgement times before and after the cut.
/// </summary>
public class PmemStoreSnapshotHostTests
{
    const int Page = 4096, AreaRecords = 8;

    [Test]
    public void VerifySnapshotSortsRecordsByWhenTheyWereAcknowledged()
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        var file = new byte[3 * AreaRecords * Page];
        void Put(uint client, ulong seq) => PmemStoreHostTests.DocumentedRecord(client, seq).CopyTo(file.AsSpan((int)(client * AreaRecords + seq) * Page));
        for (ulong s = 0; s < 4; s++)
            Put(0, s);               // 0-2 acknowledged before the cut, 3 after it (in flight at the cut)
        Put(1, 2);
        Put(1, 3);
        File.WriteAllBytes(dir.File("clean"), file);
        WriteLog(dir.File("c0"), 0, [(0, 100), (1, 200), (2, 300), (3, 2000), (4, 2100)]);   // 4: acknowledged after, not in it
        WriteLog(dir.File("c1"), 1, [(2, 400), (3, 500)]);

        Put(0, 5);                                          // valid, but never acknowledged
        file[(AreaRecords + 3) * Page + 30] ^= 1;           // client 1 record 3, acknowledged before: corrupt
        Array.Clear(file, (AreaRecords + 2) * Page, Page);  // client 1 record 2, acknowledged before: missing
        file[(AreaRecords + 6) * Page + 5] = 0x77;          // client 1 page 6: something that is not a record
        File.WriteAllBytes(dir.File("bad"), file);

        var r = PmemStoreSample.Run("verify-snapshot", dir.File("clean"), dir.File("bad"), "--acked", dir.File("c0"), "--acked", dir.File("c1"),
            "--area-records", AreaRecords.ToString(CultureInfo.InvariantCulture), "--taken-at", "1000", "--taken-at", "1000");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
            Assert.That(r.Stdout, Does.Contain("verify-snapshot: 5 acknowledged before the snapshot, 5 verified, 0 missing, 0 corrupt; 1 acknowledged after it and already in it (in flight at the cut); 0 never acknowledged, 0 torn"), r.Output);
            Assert.That(r.Stdout, Does.Contain("verify-snapshot: 5 acknowledged before the snapshot, 3 verified, 1 missing, 1 corrupt; 1 acknowledged after it and already in it (in flight at the cut); 1 never acknowledged, 1 torn"), r.Output);
            Assert.That(r.Stdout, Does.Contain("client 0 record 5 is valid but was never acknowledged").And.Contain("client 1 record 2 (acknowledged before the snapshot) missing")
                .And.Contain("client 1 record 3 (acknowledged before the snapshot) corrupt").And.Contain("client 1 record 6: the page holds something that is not an intact record"));
        });

        // An earlier cut: fewer records must be there, and the later ones count as in flight.
        var early = PmemStoreSample.Run("verify-snapshot", dir.File("clean"), "--acked", dir.File("c0"), "--acked", dir.File("c1"),
            "--area-records", AreaRecords.ToString(CultureInfo.InvariantCulture), "--taken-at", "250");
        Assert.That(early.ExitCode, Is.Zero, early.Output);
        Assert.That(early.Stdout, Does.Contain("2 acknowledged before the snapshot, 2 verified, 0 missing, 0 corrupt; 4 acknowledged after it and already in it"), early.Output);
    }

    [Test]
    public void SnapshotRefusesAnExistingDestinationAndAMissingFile()
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        File.WriteAllText(dir.File("store"), "store");
        File.WriteAllText(dir.File("taken"), "keep me");
        var exists = PmemStoreSample.Run("snapshot", dir.File("store"), dir.File("taken"));
        Assert.That(exists.ExitCode, Is.EqualTo(1), exists.Output);
        Assert.That(exists.Stderr, Does.Contain("exists: a snapshot never overwrites anything").And.Contain("EEXIST"));
        Assert.That(File.ReadAllText(dir.File("taken")), Is.EqualTo("keep me"));

        var missing = PmemStoreSample.Run("snapshot", dir.File("absent"), dir.File("snap"));
        Assert.That(missing.ExitCode, Is.EqualTo(1), missing.Output);
        Assert.That(missing.Stderr, Does.Contain("does not exist").And.Contain("ENOENT"));
        var noDir = PmemStoreSample.Run("snapshot", dir.File("store"), dir.File("no-such-dir/snap"));
        Assert.That(noDir.ExitCode, Is.EqualTo(1), noDir.Output);
        Assert.That(noDir.Stderr, Does.Contain("the directory of DEST").And.Contain("does not exist"));
        Assert.That(File.Exists(dir.File("snap")), Is.False);
    }

    [TestCase(new[] { "snapshot", "f" }, "snapshot: expected FILE and DEST, got 1 operands")]
    [TestCase(new[] { "snapshot", "f", "d", "--force", "yes" }, "unknown option --force")]
    [TestCase(new[] { "verify-snapshot", "s", "--taken-at", "1" }, "give at least one --acked LOG")]
    [TestCase(new[] { "verify-snapshot", "s", "t", "--acked", "l", "--taken-at", "1" }, "one --taken-at NS per SNAPSHOT")]
    [TestCase(new[] { "verify-snapshot", "s", "--acked", "l", "--taken-at", "soon" }, "--taken-at must be the taken_at_ns")]
    public void BadSnapshotCommandLinesSayWhatIsWrong(string[] args, string message)
    {
        var r = PmemStoreSample.Run(args);
        Assert.That(r.ExitCode, Is.EqualTo(2), r.Output);
        Assert.That(r.Stderr, Does.Contain(message));
    }

    [Test]
    public void VerifySnapshotNeedsAcknowledgementTimes()
    {
        using var dir = LeaseTestSupport.CreateTempDir(Path.GetTempPath());
        File.WriteAllBytes(dir.File("snap"), new byte[2 * Page]);
        File.WriteAllLines(dir.File("log"), ["# pmem-store acked client=0", "0", "1"]);
        var r = PmemStoreSample.Run("verify-snapshot", dir.File("snap"), "--acked", dir.File("log"), "--taken-at", "5");
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain("has no acknowledgement times"));

        File.WriteAllLines(dir.File("log"), ["# pmem-store acked client=0", "0 17", "1"]);
        r = PmemStoreSample.Run("verify-snapshot", dir.File("snap"), "--acked", dir.File("log"), "--taken-at", "5");
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Output);
        Assert.That(r.Stderr, Does.Contain("either every line has an acknowledgement time or none has"));
    }

    static void WriteLog(string path, uint client, (ulong Seq, long Ns)[] acks) =>
        File.WriteAllLines(path, [$"# pmem-store acked client={client}", .. acks.Select(a => string.Create(CultureInfo.InvariantCulture, $"{a.Seq} {a.Ns}"))]);
}
