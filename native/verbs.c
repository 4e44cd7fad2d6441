// Exports for libibverbs' static inline verbs, which have no symbol C# could bind to.
// Each export is a direct forward of one verb (or, for the extended work-request API,
// of one whole work request: start + opcode + data + complete in a single transition).
// None of them sets errno themselves: verbs return an errno value (0 on success), except
// where a comment says the return is NULL with errno set by the provider.
#include <errno.h>
#include <stddef.h>
#include <infiniband/verbs.h>

#include "rdmalease_verbs.h"

// The managed layer mirrors these; a change in rdma-core must fail the build, not corrupt memory.
_Static_assert(IBV_ACCESS_ON_DEMAND == (1 << 6), "IBV_ACCESS_ON_DEMAND");
_Static_assert(IBV_ACCESS_FLUSH_PERSISTENT == (1 << 9), "IBV_ACCESS_FLUSH_PERSISTENT");
_Static_assert(IBV_FLUSH_GLOBAL == 1 && IBV_FLUSH_PERSISTENT == 2, "ibv_flush types");
_Static_assert(IBV_FLUSH_RANGE == 0 && IBV_FLUSH_MR == 1, "ibv_flush levels");
_Static_assert(sizeof(struct ibv_wc) == 48, "struct ibv_wc");

/** ibv_query_device_ex. attr_size must be sizeof(struct ibv_device_attr_ex) of the caller's
 *  layout; smaller sizes are refused with EINVAL. Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_QueryDeviceEx(struct ibv_context *context, struct ibv_device_attr_ex *attr, uint64_t attr_size)
{
    if (attr_size != sizeof(*attr))
        return EINVAL;
    return ibv_query_device_ex(context, NULL, attr);
}

/** ibv_query_port (the static inline that fills the full struct ibv_port_attr). Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_QueryPort(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *attr, uint64_t attr_size)
{
    if (attr_size != sizeof(*attr))
        return EINVAL;
    return ibv_query_port(context, port_num, attr);
}

/** ibv_post_send: posts a linked list of work requests. Returns 0 or an errno value; *bad_wr names the first refused one. */
RL_EXPORT int32_t RdmaLeaseNative_PostSend(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr)
{
    return ibv_post_send(qp, wr, bad_wr);
}

/** ibv_post_recv. Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_PostRecv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr)
{
    return ibv_post_recv(qp, wr, bad_wr);
}

/** ibv_post_srq_recv. Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_PostSrqRecv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr)
{
    return ibv_post_srq_recv(srq, wr, bad_wr);
}

/** ibv_poll_cq. Returns the number of completions written to wc (>= 0) or a negative value on error. */
RL_EXPORT int32_t RdmaLeaseNative_PollCq(struct ibv_cq *cq, int32_t num_entries, struct ibv_wc *wc)
{
    return ibv_poll_cq(cq, num_entries, wc);
}

/** ibv_req_notify_cq. Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_ReqNotifyCq(struct ibv_cq *cq, int32_t solicited_only)
{
    return ibv_req_notify_cq(cq, solicited_only);
}

/** ibv_create_qp_ex. Returns the QP, or NULL with errno set. */
RL_EXPORT struct ibv_qp *RdmaLeaseNative_CreateQpEx(struct ibv_context *context, struct ibv_qp_init_attr_ex *attr)
{
    return ibv_create_qp_ex(context, attr);
}

/** ibv_advise_mr (prefetch of ODP ranges). Returns 0 or an errno value (EOPNOTSUPP where the provider has none). */
RL_EXPORT int32_t RdmaLeaseNative_AdviseMr(struct ibv_pd *pd, int32_t advice, uint32_t flags, struct ibv_sge *sg_list, uint32_t num_sge)
{
    return ibv_advise_mr(pd, (enum ibv_advise_mr_advice)advice, flags, sg_list, num_sge);
}

/** One RDMA WRITE / READ / SEND work request through the extended API (ibv_wr_start, the
 *  opcode verb, ibv_wr_set_sge, ibv_wr_complete). opcode: IBV_WR_RDMA_WRITE, IBV_WR_RDMA_WRITE_WITH_IMM,
 *  IBV_WR_RDMA_READ, IBV_WR_SEND, IBV_WR_SEND_WITH_IMM. imm is in network order. Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_WrPost(struct ibv_qp_ex *qpx, uint64_t wr_id, uint32_t send_flags, int32_t opcode,
                                         uint32_t rkey, uint64_t remote_addr, uint32_t imm,
                                         uint32_t lkey, uint64_t addr, uint32_t length)
{
    ibv_wr_start(qpx);
    qpx->wr_id = wr_id;
    qpx->wr_flags = send_flags;
    switch (opcode) {
    case IBV_WR_RDMA_WRITE: ibv_wr_rdma_write(qpx, rkey, remote_addr); break;
    case IBV_WR_RDMA_WRITE_WITH_IMM: ibv_wr_rdma_write_imm(qpx, rkey, remote_addr, imm); break;
    case IBV_WR_RDMA_READ: ibv_wr_rdma_read(qpx, rkey, remote_addr); break;
    case IBV_WR_SEND: ibv_wr_send(qpx); break;
    case IBV_WR_SEND_WITH_IMM: ibv_wr_send_imm(qpx, imm); break;
    default: ibv_wr_abort(qpx); return EINVAL;
    }
    if (length != 0)
        ibv_wr_set_sge(qpx, lkey, addr, length);
    else
        ibv_wr_set_sge_list(qpx, 0, NULL);
    return ibv_wr_complete(qpx);
}

/** One FLUSH work request (ibv_wr_flush): type IBV_FLUSH_GLOBAL/IBV_FLUSH_PERSISTENT, level
 *  IBV_FLUSH_RANGE/IBV_FLUSH_MR. Returns 0 or an errno value (EOPNOTSUPP where the QP lacks it). */
RL_EXPORT int32_t RdmaLeaseNative_WrFlush(struct ibv_qp_ex *qpx, uint64_t wr_id, uint32_t send_flags,
                                          uint32_t rkey, uint64_t remote_addr, uint64_t length, uint8_t type, uint8_t level)
{
    if (qpx->wr_flush == NULL)
        return EOPNOTSUPP;
    ibv_wr_start(qpx);
    qpx->wr_id = wr_id;
    qpx->wr_flags = send_flags;
    ibv_wr_flush(qpx, rkey, remote_addr, length, type, level);
    return ibv_wr_complete(qpx);
}

/** One ATOMIC WRITE work request (ibv_wr_atomic_write) of the 8 bytes at value.
 *  Returns 0 or an errno value (EOPNOTSUPP where the QP lacks it). */
RL_EXPORT int32_t RdmaLeaseNative_WrAtomicWrite(struct ibv_qp_ex *qpx, uint64_t wr_id, uint32_t send_flags,
                                                uint32_t rkey, uint64_t remote_addr, const uint64_t *value)
{
    if (qpx->wr_atomic_write == NULL)
        return EOPNOTSUPP;
    ibv_wr_start(qpx);
    qpx->wr_id = wr_id;
    qpx->wr_flags = send_flags;
    ibv_wr_atomic_write(qpx, rkey, remote_addr, value);
    return ibv_wr_complete(qpx);
}

/** One compare-and-swap (cmp_swp != 0) or fetch-and-add work request into the 8-byte
 *  buffer at (lkey, addr). Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_WrAtomic(struct ibv_qp_ex *qpx, uint64_t wr_id, uint32_t send_flags, int32_t cmp_swp,
                                           uint32_t rkey, uint64_t remote_addr, uint64_t compare_add, uint64_t swap,
                                           uint32_t lkey, uint64_t addr)
{
    ibv_wr_start(qpx);
    qpx->wr_id = wr_id;
    qpx->wr_flags = send_flags;
    if (cmp_swp)
        ibv_wr_atomic_cmp_swp(qpx, rkey, remote_addr, compare_add, swap);
    else
        ibv_wr_atomic_fetch_add(qpx, rkey, remote_addr, compare_add);
    ibv_wr_set_sge(qpx, lkey, addr, 8);
    return ibv_wr_complete(qpx);
}
