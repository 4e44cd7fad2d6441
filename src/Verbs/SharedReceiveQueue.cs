using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// A shared receive queue (<c>ibv_srq</c>): receive buffers posted once, consumed by whichever
/// QP created with it receives next. Thread-safety as for <see cref="QueuePair"/>.
/// </summary>
public sealed unsafe class SharedReceiveQueue : VerbsObject
{
    /// <summary>The domain of the SRQ.</summary>
    public ProtectionDomain ProtectionDomain { get; }

    // The device's ODP quirk for the ports' active MTUs (Quirks/OdpQuirk.cs), null when none applies.
    readonly OdpRule? _odp;
    readonly int _maxSegments;

    internal SharedReceiveQueue(ProtectionDomain pd, int maxWorkRequests, int maxScatterGather)
        : base(Create(pd, maxWorkRequests, maxScatterGather), pd)
    {
        ProtectionDomain = pd;
        _odp = pd.Device.OdpQuirk?.RuleForPeers();
        _maxSegments = maxScatterGather;
    }

    static NativeHandle Create(ProtectionDomain pd, int maxWr, int maxSge)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxWr);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSge);
        var attr = new ibv_srq_init_attr();
        attr.attr.max_wr = (uint)maxWr;
        attr.attr.max_sge = (uint)maxSge;
        return NativeCalls.Create(pd.HandleForChildren, (nint)(&attr), static (p, a) => (nint)libibverbs.ibv_create_srq((ibv_pd*)p, (ibv_srq_init_attr*)a),
            &Destroy, "ibv_create_srq", $"SRQ of {maxWr} requests in {pd}", "SRQ on " + pd.Device.Name);
    }

    static int Destroy(nint srq) => libibverbs.ibv_destroy_srq((ibv_srq*)srq);

    /// <summary>Posts a receive buffer to the shared queue.</summary>
    /// <exception cref="NotSupportedException"><paramref name="buffer"/> lies in an On-Demand-Paging region on a device whose
    /// <see cref="Device.OdpQuirk"/> allows less (one packet, below a page-sized MTU on rxe) or not at that address (see
    /// docs/known-defects.md). An SRQ is not tied to one QP: the rule is the strictest of the ports' active MTUs when it was created.</exception>
    public void PostReceive(ulong workRequestId, LocalSegment buffer) => PostReceive(workRequestId, new ReadOnlySpan<LocalSegment>(in buffer));

    /// <summary>Posts a receive that scatters an incoming message over <paramref name="scatter"/>, in order.</summary>
    /// <exception cref="ArgumentException">More segments than the SRQ was created for (its maxScatterGather), or than 32.</exception>
    /// <exception cref="NotSupportedException">A segment is refused by the device's ODP quirk, as for one buffer.</exception>
    public void PostReceive(ulong workRequestId, ReadOnlySpan<LocalSegment> scatter) =>
        ReceiveWork.Post(this, _odp, _maxSegments, workRequestId, scatter);

    /// <inheritdoc/>
    public override string ToString() => "SRQ on " + ProtectionDomain.Device.Name;
}
