using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Adversary.ShapeSendBatchTests;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Adversary;

/// <summary>Every ulong offset/length of the public API with values that wrap or reach one past the end.</summary>
[Category("Guest")]
public class ShapeNumbersTests
{
    [Test]
    public unsafe void RegionOffsetsAndLengthsThatWrapOrOverrunAreRefused()
    {
        using var rig = new BatchRig();
        var pd = rig.Pd;
        int regionsBefore = KernelView.RegisteredRemoteKeys().Count;
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.AllocateBuffer(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.AllocateBuffer(ulong.MaxValue));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.AllocateBuffer(ulong.MaxValue - (ulong)Environment.SystemPageSize + 1));
        Assert.Throws<ArgumentNullException>(() => pd.Register(null, 4096, AccessFlags.LocalWrite));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.Register((void*)rig.Local.Address, 0, AccessFlags.LocalWrite));
        // A range that wraps past 2^64 (it would slip past the leased-mapping check) is refused before ibv_reg_mr.
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.Register((void*)rig.Local.Address, ulong.MaxValue, AccessFlags.LocalWrite));
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.Register((void*)rig.Local.Address, ulong.MaxValue - rig.Local.Address + 1, AccessFlags.LocalWrite));
        Assert.That(KernelView.RegisteredRemoteKeys(), Has.Count.EqualTo(regionsBefore), "nothing was registered");

        using var buffer = pd.AllocateBuffer(10000);
        ulong n = buffer.Length;
        Assert.That(n, Is.EqualTo(12288UL), "rounded up to whole pages");
        foreach (var (offset, length) in new (ulong, uint)[] { (ulong.MaxValue, 1), (n, 1), (n - 1, 2), (1, (uint)n), (n + 1, 0), (ulong.MaxValue - 2, 8), (0, uint.MaxValue) })
            Assert.Throws<ArgumentOutOfRangeException>(() => buffer.Slice(offset, length), $"Slice({offset}, {length})");
        Assert.That(buffer.Slice(n, 0), Is.EqualTo(new LocalSegment(buffer, n, 0)), "an empty slice at the very end is inside");
        Assert.That(buffer.Slice(n - 1, 1).Address, Is.EqualTo(buffer.Address + n - 1));
        foreach (var (offset, length) in new (ulong, int)[] { (ulong.MaxValue, 1), (n, 1), (n - 1, 2), (ulong.MaxValue - 2, 8), (0, -1), (0, int.MaxValue) })
            Assert.Throws<ArgumentOutOfRangeException>(() => buffer.AsSpan(offset, length), $"AsSpan({offset}, {length})");
        Assert.That(buffer.AsSpan(n, 0).Length, Is.Zero);
        buffer.AsSpan(n - 1, 1)[0] = 7;
        Assert.That(buffer.Span[^1], Is.EqualTo((byte)7));
    }

    [Test]
    public void RemoteOffsetsThatWrapOrOverrunAreRefusedWhenAdded()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        ulong n = remote.Length;
        var seg = rig.Local.Slice(0, 8);
        var batch = rig.A.StartPost();
        foreach (ulong offset in new[] { ulong.MaxValue, ulong.MaxValue - 7, n, n - 7, n + 1, n - 4 })
        {
            Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Write(1, seg, remote, offset));
            Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Read(1, seg, remote, offset));
            Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.CompareSwap(1, seg, remote, offset, 0, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => rig.A.PostWrite(1, seg, remote, offset), $"PostWrite at {offset}");
        }
        // A peer's region of 2^64-1 bytes at 0 with an offset that makes the address wrap: still refused, not posted.
        var huge = remote with { Address = 0x1000, Length = ulong.MaxValue - 0x1000 };
        Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Write(1, seg, huge, ulong.MaxValue - 0x1000 - 7));
        // A region demanding alignment, with an offset that wraps the address to 0 (aligned): the range check still refuses it.
        var aligned = remote with { RequiredAlignment = 4096 };
        Catch<ArgumentOutOfRangeException>(ref batch, (ref SendBatch b) => b.Write(1, seg, aligned, 0 - remote.Address));
        Assert.Throws<ArgumentException>(() => rig.A.PostWrite(1, seg, aligned, ulong.MaxValue));   // misaligned (wrapped): refused too
        Assert.That(batch.Count, Is.Zero);
        rig.AssertNothingPosted("out-of-range remote offsets");

        // The last 8 bytes are inside: posted.
        rig.Local.Span[..8].Fill(0x3c);
        batch.Write(2, seg, remote, n - 8);
        batch.Post();
        RcPair.Expect(rig.CqA, WorkCompletionOpcode.RdmaWrite, 2);
        Assert.That(rig.Remote.Span[^8..].ToArray(), Is.All.EqualTo((byte)0x3c));
    }

    [Test]
    public void LeasedFileRangesThatWrapOrOverrunAreRefused()
    {
        const string Mount = "/mnt/xfs";
        using var dir = CreateTempDir(Mount);
        using var file = OpenFile(dir.File("numbers"), Mount, 8192);
        using var lease = file.AcquireLease();
        ulong n = (ulong)file.Length;
        foreach (var (offset, length) in new (ulong, ulong)[] { (ulong.MaxValue, 2), (n, 1), (n - 1, 2), (1, n), (0, 0), (n, 0), (1, ulong.MaxValue), (ulong.MaxValue, ulong.MaxValue) })
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => lease.Range(offset, length), $"Range({offset}, {length})");
            Assert.Throws<ArgumentOutOfRangeException>(() => new LeasedFileRange(lease, offset, length), $"new LeasedFileRange({offset}, {length})");
        }
        Assert.Throws<ArgumentNullException>(() => new LeasedFileRange(null!, 0, 1));
        var last = lease.Range(n - 1, 1);
        Assert.That((last.Offset, last.Length), Is.EqualTo((n - 1, 1UL)));
        Assert.That(lease.Range(0, n).Length, Is.EqualTo(n));
    }
}
