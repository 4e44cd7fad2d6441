using RdmaLease.Verbs;

namespace RdmaLease.Tests.Integrity;

/// <summary>Host tests: the split arithmetic and the verdict text (no device needed).</summary>
public class TransferSplitTests
{
    [TestCase(0u, 1024u, 1)]
    [TestCase(1u, 1024u, 1)]
    [TestCase(1024u, 1024u, 1)]
    [TestCase(1025u, 1024u, 2)]
    [TestCase(4096u, 1024u, 4)]
    [TestCase(65536u, 1024u, 64)]
    [TestCase(65537u, 1024u, 65)]
    [TestCase(uint.MaxValue, OdpIntegrityResult.Unlimited, 1)]
    [TestCase(uint.MaxValue, 1u, int.MaxValue)]
    public void Count(uint length, uint limit, int pieces) =>
        Assert.That(TransferSplit.Count(length, limit), Is.EqualTo(pieces));

    [Test]
    public void PiecesCoverTheTransferExactlyOnceInOrder()
    {
        foreach (uint limit in new uint[] { 256, 1000, 1024, 4096 })
        {
            foreach (uint length in new uint[] { 0, 1, 255, 256, 1023, 1024, 1025, 3000, 16384, 16385 })
            {
                int n = TransferSplit.Count(length, limit);
                uint next = 0;
                for (int i = 0; i < n; i++)
                {
                    var (offset, pieceLength) = TransferSplit.Piece(i, length, limit);
                    Assert.That(offset, Is.EqualTo(next), $"piece {i} of {length} at {limit}");
                    Assert.That(pieceLength, Is.LessThanOrEqualTo(limit));
                    Assert.That(pieceLength > 0 || length == 0, $"empty piece {i} of {length} at {limit}");
                    next += pieceLength;
                }
                Assert.That(next, Is.EqualTo(length), $"{length} at {limit}");
            }
        }
    }

    [Test]
    public void BadArgumentsThrow()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => TransferSplit.Count(10, 0))!;
        Assert.That(e.Message, Does.Contain("at least 1 byte"));
        Assert.Throws<ArgumentOutOfRangeException>(() => TransferSplit.Piece(4, 4096, 1024));
        Assert.Throws<ArgumentOutOfRangeException>(() => TransferSplit.Piece(-1, 4096, 1024));
    }

    [TestCase(OdpIntegrityResult.Unlimited, 0u, OdpIntegrityResult.Unlimited)]
    [TestCase(OdpIntegrityResult.Unlimited, 1024u, 1024u)]
    [TestCase(1024u, 0u, 1024u)]
    [TestCase(1024u, 512u, 512u)]
    [TestCase(512u, 1024u, 512u)]
    [TestCase(0u, 1024u, 0u)]
    public void CombineTreatsARemoteZeroAsNoLimit(uint local, uint remote, uint combined) =>
        Assert.That(TransferSplit.Combine(local, remote), Is.EqualTo(combined));

    [Test]
    public void TooManyPiecesForOnePostAreRefusedSayingWhy()
    {
        Assert.That(TransferSplit.Fits(64, 64));
        Assert.That(TransferSplit.Fits(TransferSplit.MaxPieces, 1024));
        Assert.That(TransferSplit.Fits(65, 64), Is.False, "deeper than the send queue");
        Assert.That(TransferSplit.Fits(TransferSplit.MaxPieces + 1, 4096), Is.False, "more than a split may stackalloc");
        var e = TransferSplit.TooMany(65, 64, "QP 7: this transfer of 66560 bytes");
        Assert.That(e.Message, Does.StartWith("QP 7: this transfer of 66560 bytes must be split into 65 work requests")
            .And.Contain("(64: the send queue holds 64, a split at most 256)").And.Contain("docs/known-defects.md"));
    }

    [Test]
    public void VerdictSaysWhatIsSafe()
    {
        var r = new OdpIntegrityResult("rxelo", "k", Mtu.Mtu1024, 1024, 1, DateTimeOffset.UnixEpoch, []);
        Assert.That(r.Verdict, Is.EqualTo("rxelo at path MTU 1024: ODP safe up to 1024 bytes per work request (multi-packet transfers corrupt)"));
        Assert.That((r with { MaxSafeTransfer = OdpIntegrityResult.Unlimited }).Verdict, Does.EndWith("ODP safe for any transfer size"));
        Assert.That((r with { MaxSafeTransfer = OdpIntegrityResult.Unlimited }).IsSound);
        Assert.That((r with { RequiredAlignment = 4096 }).Verdict, Does.EndWith("only at 4096-byte aligned ODP addresses (unaligned ones land at the page start)"));
        Assert.That((r with { MaxSafeTransfer = 0 }).IsUnsafe);
        Assert.That(new OdpIntegrityCheck(OdpIntegrityOperation.ReadOutOf, 0, 4096, 1, 3072, 1024, null).ToString(),
            Does.Contain("CORRUPT, 3072 bytes wrong, first at 1024"));
    }
}
