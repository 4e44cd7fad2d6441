using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>
/// A driver whose completions carry the KERNEL's <c>ib_wc_flags</c> values instead of libibverbs' <c>ibv_wc_flags</c>:
/// the kernel numbers IB_WC_WITH_INVALIDATE 1 &lt;&lt; 2 and IB_WC_IP_CSUM_OK 1 &lt;&lt; 3, libibverbs IBV_WC_IP_CSUM_OK
/// 1 &lt;&lt; 2 and IBV_WC_WITH_INV 1 &lt;&lt; 3 (GRH and WITH_IMM agree). On such a device <see cref="CompletionQueue.Poll"/>
/// swaps the two bits back, so <see cref="WorkCompletion.HasInvalidatedRemoteKey"/> means what it says; elsewhere it
/// costs one field test per poll.
/// </summary>
/// <param name="Driver">The libibverbs provider (<see cref="Device.Driver"/>).</param>
/// <param name="Reason">What is wrong, for messages and docs.</param>
internal sealed record KnownCompletionFlagsDefect(string Driver, string Reason)
{
    internal static readonly KnownCompletionFlagsDefect[] Table =
    [
        // The kernel driver writes struct ib_uverbs_wc into the mmap'ed CQ with its own flag values (rxe_resp.c,
        // do_complete: IB_WC_WITH_INVALIDATE for a SEND with invalidate), and the provider copies it as it is
        // (providers/rxe/rxe.c: rxe_poll_cq memcpy, cq_read_wc_flags). Seen on Linux 7.3.4 with rdma-core 56.1.
        new("rxe", "rxe passes the kernel's ib_wc_flags through: a SEND with invalidate is flagged IBV_WC_IP_CSUM_OK instead of IBV_WC_WITH_INV"),
    ];

    internal static KnownCompletionFlagsDefect? Find(string driver) => Table.FirstOrDefault(d => d.Driver == driver);

    const uint KernelWithInvalidate = 1 << 2, KernelIpChecksumOk = 1 << 3;

    /// <summary>Rewrites the kernel's flag values of <paramref name="n"/> completions as libibverbs' own.</summary>
    internal static unsafe void Translate(ibv_wc* wc, int n)
    {
        for (int i = 0; i < n; i++)
        {
            uint f = wc[i].wc_flags;
            if ((f & (KernelWithInvalidate | KernelIpChecksumOk)) == 0)
                continue;
            wc[i].wc_flags = (f & ~(KernelWithInvalidate | KernelIpChecksumOk))
                | ((f & KernelWithInvalidate) != 0 ? (uint)ibv_wc_flags.IBV_WC_WITH_INV : 0)
                | ((f & KernelIpChecksumOk) != 0 ? (uint)ibv_wc_flags.IBV_WC_IP_CSUM_OK : 0);
        }
    }
}
