using RdmaLease.Interop;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>The rewrite of the kernel's ib_wc_flags into libibverbs' values (Quirks/CompletionFlagsQuirk.cs).</summary>
public class CompletionFlagsQuirkTests
{
    [TestCase(0u, 0u)]
    [TestCase(1u, 1u, TestName = "{m}(GRH stays)")]
    [TestCase(2u, 2u, TestName = "{m}(WITH_IMM stays)")]
    [TestCase(4u, 8u, TestName = "{m}(kernel WITH_INVALIDATE is IBV_WC_WITH_INV)")]
    [TestCase(8u, 4u, TestName = "{m}(kernel IP_CSUM_OK is IBV_WC_IP_CSUM_OK)")]
    [TestCase(1u | 4u | 8u, 1u | 4u | 8u, TestName = "{m}(both swap)")]
    [TestCase(1u | 2u | 4u, 1u | 2u | 8u, TestName = "{m}(GRH, immediate and invalidate)")]
    public unsafe void KernelFlagsBecomeLibibverbsFlags(uint kernel, uint expected)
    {
        var wc = stackalloc ibv_wc[2];
        wc[0] = new ibv_wc { wc_flags = kernel, wr_id = 7 };
        wc[1] = new ibv_wc { wc_flags = 4 };
        KnownCompletionFlagsDefect.Translate(wc, 1);
        Assert.That(wc[0].wc_flags, Is.EqualTo(expected));
        Assert.That(wc[0].wr_id, Is.EqualTo(7UL), "nothing else changes");
        Assert.That(wc[1].wc_flags, Is.EqualTo(4u), "only the first n completions are rewritten");
    }

    [Test]
    public void OnlyRxeIsInTheTables()
    {
        Assert.That(KnownCompletionFlagsDefect.Find("rxe"), Is.Not.Null);
        Assert.That(KnownWindowDefect.Find("rxe"), Is.Not.Null);
        Assert.That(KnownCompletionFlagsDefect.Find("mlx5"), Is.Null);
        Assert.That(KnownWindowDefect.Find("mlx5"), Is.Null);
        Assert.That(KnownWindowDefect.Find(""), Is.Null, "an unknown driver is taken at its word");
    }

    [Test]
    public void TheNextWindowKeyChangesTheLowByteOnly()
    {
        Assert.That(MemoryWindow.NextKey(0x1234_5601), Is.EqualTo(0x1234_5602u));
        Assert.That(MemoryWindow.NextKey(0x1234_56ff), Is.EqualTo(0x1234_5600u), "wraps within the byte (ibv_inc_rkey)");
    }
}
