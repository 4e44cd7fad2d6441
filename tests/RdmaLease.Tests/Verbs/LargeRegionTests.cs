using System.Runtime.InteropServices;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// Regions of 4 GiB and more (issue 10): an ODP registration of a 5 GiB MAP_NORESERVE anonymous mapping (ODP pins
/// nothing, so the 2 GiB guest holds it), slices and remote ranges past 4 GiB, and RDMA WRITE and READ at offsets
/// below and above 4 GiB, every byte checked, the kernel's <c>rdma resource show mr</c> checked for the length.
/// Transfers are page-aligned and one packet at MTU 4096 (rxe's ODP defect, docs/known-defects.md).
/// </summary>
[Category("Guest")]
public unsafe class LargeRegionTests
{
    const ulong FourGiB = 1UL << 32;
    const ulong Size = 5UL << 30;
    const uint Page = 4096;
    static readonly nuint size = unchecked((nuint)Size);

    [Test]
    public void AnOdpRegionPast4GiBIsWrittenAndReadAtEveryOffset()
    {
        void* memory = mmap(null, (nuint)size, 3 /* PROT_READ|PROT_WRITE */, 0x22 | 0x4000 /* MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE */, -1, 0);
        Assert.That((nint)memory, Is.Not.EqualTo((nint)(-1)), $"mmap of {Size} bytes: errno {Marshal.GetLastPInvokeError()}");
        try
        {
            using var pair = RcPair.Loopback(Mtu.Mtu4096);
            const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;
            using var region = pair.PdB.Register(memory, Size, Rw | AccessFlags.OnDemand);
            using var source = pair.PdA.AllocateBuffer(Page, Rw);
            using var sink = pair.PdA.AllocateBuffer(Page, Rw);

            Assert.That((region.Address, region.Length), Is.EqualTo(((ulong)memory, Size)));
            string line = KernelView.RdmaResources("mr").Single(l => l.Contains($"rkey 0x{region.RemoteKey:x} ", StringComparison.Ordinal));
            Assert.That(line, Does.Contain($"mrlen {Size} "), "the kernel's region is 5 GiB long");

            var e = Assert.Throws<InvalidOperationException>(() => _ = region.All)!;
            Assert.That(e.Message, Does.Contain("Slice(offset, length)").And.Contain(Size.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            Assert.Throws<ArgumentOutOfRangeException>(() => region.Slice(Size - 10, Page), "past the end");
            var high = region.Slice(FourGiB + 2 * Page, Page);
            Assert.That(high.Address, Is.EqualTo((ulong)memory + FourGiB + 2 * Page));

            RemoteRegion remote = region.ToRemote();
            Assert.That((remote.Address, remote.Length), Is.EqualTo(((ulong)memory, Size)), "peers see the whole 5 GiB");
            Assert.Throws<ArgumentOutOfRangeException>(() => pair.A.PostWrite(9, source.Slice(0, Page), remote, Size), "past the end, aligned");

            ulong wr = 1;
            foreach (ulong offset in new[] { Page, FourGiB - Page, FourGiB, FourGiB + 2 * Page, Size - Page })
            {
                int seed = (int)(offset / Page);
                Patterns.Fill(source.Span, seed);
                pair.A.PostWrite(wr, source.Slice(0, Page), remote, offset);
                RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, wr++);
                Patterns.AssertEqual(new ReadOnlySpan<byte>((byte*)memory + offset, (int)Page), source.Span, $"the bytes written at {offset:x}");

                sink.Span.Clear();
                pair.A.PostRead(wr, sink.Slice(0, Page), remote, offset);
                RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaRead, wr++);
                Patterns.AssertEqual(sink.Span, source.Span, $"the bytes read back from {offset:x}");
            }
            Assert.That(new ReadOnlySpan<byte>((byte*)memory + 2 * Page, (int)Page).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing landed between the writes");
        }
        finally
        {
            Assert.That(munmap(memory, (nuint)size), Is.Zero);
        }
    }

    [Test]
    public void ABufferGivesSpansOfItsPartsAndRefusesBadRanges()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        Assert.Throws<ArgumentOutOfRangeException>(() => pd.AllocateBuffer(0));
        using var buffer = pd.AllocateBuffer(5000);
        Assert.That(buffer.Length, Is.EqualTo(8192UL), "rounded up to pages");
        buffer.AsSpan(8190, 2).Fill(7);
        Assert.That(buffer.Span[8190..].ToArray(), Is.EqualTo(new byte[] { 7, 7 }));
        Assert.That(buffer.All.Length, Is.EqualTo(8192U));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.AsSpan(8192, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.AsSpan(0, -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.AsSpan(ulong.MaxValue, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.Slice(8000, 200));
    }

    [DllImport("libc", SetLastError = true)]
    static extern void* mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    [DllImport("libc", SetLastError = true)]
    static extern int munmap(void* addr, nuint length);
}
