using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// The one body under every receive post, for a QP's own receive queue and for a shared receive queue: one receive work
/// request scattering over up to <see cref="MaxSegments"/> segments.
/// </summary>
internal static class ReceiveWork
{
    /// <summary>Most segments one receive may scatter over (besides what the queue was created for): rxe takes 32.</summary>
    public const int MaxSegments = 32;

    // heldQueue: the queue's native pointer when a QueuePairPoster holds its reference (0: take one here).
    internal static unsafe void Post(VerbsObject queue, OdpRule? odp, int maxSegments, ulong workRequestId, ReadOnlySpan<LocalSegment> scatter,
        nint heldQueue = 0)
    {
        if (scatter.Length > maxSegments || scatter.Length > MaxSegments)
            throw new ArgumentException(
                $"a receive with {scatter.Length} scatter/gather entries on {queue}, which was created for at most {maxSegments} per receive " +
                $"(and a receive here takes at most {MaxSegments}): create it with more (QueuePairOptions.MaxReceiveScatterGather, or " +
                "CreateSharedReceiveQueue's maxScatterGather), or scatter over fewer segments.", nameof(scatter));
        // The references are taken and given back from a copy only this thread sees: another thread rewriting the
        // caller's memory meanwhile cannot make them differ (SendBatch keeps its own copy the same way).
        var copy = new SendBatch.SegmentList();
        Span<LocalSegment> segments = ((Span<LocalSegment>)copy)[..scatter.Length];
        scatter.CopyTo(segments);
        ibv_sge* sges = stackalloc ibv_sge[segments.Length];
        for (int i = 0; i < segments.Length; i++)
        {
            ref readonly LocalSegment s = ref segments[i];
            ArgumentNullException.ThrowIfNull(s.Region, nameof(scatter));
            s.Region.CheckRange(s.Offset, s.Length);   // a segment made with `with` or its constructor skipped Slice's check
            odp?.CheckMessage("receive", s);
            sges[i] = new ibv_sge { addr = s.Address, length = s.Length, lkey = s.Region.LocalKey };
        }
        var wr = new ibv_recv_wr { wr_id = workRequestId, sg_list = sges, num_sge = segments.Length };
        using var regions = RegionReferences.Enter(segments);
        using var q = heldQueue == 0 ? queue.HandleForChildren.Enter() : default;
        nint pointer = heldQueue == 0 ? q.Pointer : heldQueue;
        int rc;
        ibv_recv_wr* bad;
        if (queue is SharedReceiveQueue)
            rc = RdmaLeaseNative.PostSrqRecv((ibv_srq*)pointer, &wr, &bad);
        else
            rc = RdmaLeaseNative.PostRecv((ibv_qp*)pointer, &wr, &bad);
        if (rc != 0)
            throw new VerbsException(queue is SharedReceiveQueue ? "ibv_post_srq_recv" : "ibv_post_recv", queue.ToString()!, rc, QueuePair.PostHint(rc));
    }
}
