using RdmaLease.Interop;

namespace RdmaLease.Verbs;

// The part of QueuePair that rdma_cm connections drive: the transitions take rdma_cm's attributes (rdma_init_qp_attr:
// port, pkey, path, PSNs, timeouts) instead of an out-of-band endpoint, and the QP stays ours (id->qp is NULL).
public sealed unsafe partial class QueuePair
{
    // The RdmaConnection (or request being accepted) using this QP: one at a time.
    object? _connectionOwner;

    internal bool TryClaimForConnection(object owner) => Interlocked.CompareExchange(ref _connectionOwner, owner, null) is null;

    internal void ReleaseConnectionClaim(object owner) => Interlocked.CompareExchange(ref _connectionOwner, null, owner);

    /// <summary>Moves the QP to <paramref name="state"/> with the attributes rdma_cm computed for <paramref name="id"/>.</summary>
    internal void MoveWith(CmId id, ibv_qp_state state, AccessFlags remoteAccess, byte responderResources, byte initiatorDepth, byte? ackTimeout, string transition)
    {
        var attr = id.InitQpAttr(state, out int mask, ToString());
        OdpRule? odp = null;
        switch (state)
        {
            case ibv_qp_state.IBV_QPS_INIT:
                // rdma_cm would grant remote write (+read/atomic with responder resources): least privilege instead,
                // what the options ask for, as Connect does.
                attr.qp_access_flags = (uint)(remoteAccess | AccessFlags.LocalWrite);
                mask |= (int)ibv_qp_attr_mask.IBV_QP_ACCESS_FLAGS;
                break;
            case ibv_qp_state.IBV_QPS_RTR:
                attr.max_dest_rd_atomic = responderResources;
                odp = OdpRuleAt((Mtu)attr.path_mtu);   // before the transition: in OdpQuirkMode.Probe a new MTU probes here
                break;
            case ibv_qp_state.IBV_QPS_RTS:
                attr.max_rd_atomic = initiatorDepth;
                if (ackTimeout is { } t)
                {
                    attr.timeout = t;
                    mask |= (int)ibv_qp_attr_mask.IBV_QP_TIMEOUT;
                }
                break;
        }
        Modify(ref attr, (ibv_qp_attr_mask)mask, transition);
        if (state == ibv_qp_state.IBV_QPS_RTR)
        {
            PathMtu = (Mtu)attr.path_mtu;
            _odp = odp;
        }
    }

    /// <summary>Back to RESET after a connect that did not complete, so the QP can be connected again.</summary>
    internal void ResetAfterFailedConnection()
    {
        var attr = new ibv_qp_attr { qp_state = ibv_qp_state.IBV_QPS_RESET };
        Modify(ref attr, ibv_qp_attr_mask.IBV_QP_STATE, "->RESET");
        PathMtu = null;
        _odp = OdpRuleAt(null);
    }
}
