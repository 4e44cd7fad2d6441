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

// ---- Memory windows ------------------------------------------------------------------------

_Static_assert(IBV_MW_TYPE_1 == 1 && IBV_MW_TYPE_2 == 2, "ibv_mw_type");
_Static_assert(IBV_WR_LOCAL_INV == 7 && IBV_WR_BIND_MW == 8 && IBV_WR_SEND_WITH_INV == 9, "ibv_wr_opcode (windows)");

/** ibv_alloc_mw: a memory window of type IBV_MW_TYPE_1 or IBV_MW_TYPE_2 in pd. Returns the window, or
 *  NULL with errno set (EOPNOTSUPP where the provider has no memory windows). */
RL_EXPORT struct ibv_mw *RdmaLeaseNative_AllocMw(struct ibv_pd *pd, int32_t type)
{
    return ibv_alloc_mw(pd, (enum ibv_mw_type)type);
}

/** ibv_dealloc_mw: frees a window (bound or not; the kernel unbinds it). Returns 0 or an errno value. */
RL_EXPORT int32_t RdmaLeaseNative_DeallocMw(struct ibv_mw *mw)
{
    return ibv_dealloc_mw(mw);
}

/** ibv_bind_mw (type 1 windows only): posts on qp a bind of [addr, addr+length) of mr with the
 *  IBV_ACCESS_* flags in access; length 0 with addr 0 unbinds. mr must not be NULL even to unbind: rxe's
 *  provider reads bind_info.mr->lkey whatever the length. On success the provider has stored the
 *  window's next rkey in mw->rkey. Returns 0 or an errno value (EINVAL for a type 2 window, EPERM when
 *  mr and mw are in different protection domains). */
RL_EXPORT int32_t RdmaLeaseNative_BindMw(struct ibv_qp *qp, struct ibv_mw *mw, uint64_t wr_id, uint32_t send_flags,
                                         struct ibv_mr *mr, uint64_t addr, uint64_t length, uint32_t access)
{
    struct ibv_mw_bind bind = {
        .wr_id = wr_id,
        .send_flags = send_flags,
        .bind_info = { .mr = mr, .addr = addr, .length = length, .mw_access_flags = access },
    };
    return ibv_bind_mw(qp, mw, &bind);
}

// ---- Extended completion queues ------------------------------------------------------------

_Static_assert(IBV_WC_STANDARD_FLAGS == 0x7f, "IBV_WC_STANDARD_FLAGS");
_Static_assert(IBV_WC_GRH == 1 && IBV_WC_WITH_IMM == 2 && IBV_WC_WITH_INV == 8, "ibv_wc_flags");

/** ibv_create_cq_ex. Returns the CQ (ibv_cq_ex_to_cq of it is the plain ibv_cq every other verb
 *  takes), or NULL with errno set (EOPNOTSUPP where the provider has no extended CQs or lacks a
 *  requested wc_flags field). */
RL_EXPORT struct ibv_cq_ex *RdmaLeaseNative_CreateCqEx(struct ibv_context *context, struct ibv_cq_init_attr_ex *attr)
{
    return ibv_create_cq_ex(context, attr);
}

/** Up to num_entries completions of an extended CQ created with IBV_WC_STANDARD_FLAGS, through
 *  ibv_start_poll / ibv_next_poll / ibv_end_poll, written as struct ibv_wc (pkey_index, which the
 *  extended API does not report, is 0). One call, whatever the count. Returns the number written
 *  (>= 0), or a negative errno value when the provider reports an error other than ENOENT (empty). */
RL_EXPORT int32_t RdmaLeaseNative_PollCqEx(struct ibv_cq_ex *cq, int32_t num_entries, struct ibv_wc *wc)
{
    if (num_entries <= 0)
        return 0;
    struct ibv_poll_cq_attr attr = { .comp_mask = 0 };
    int rc = ibv_start_poll(cq, &attr);
    if (rc == ENOENT)
        return 0;
    if (rc != 0)
        return -rc;
    int32_t n = 0;
    for (;;) {
        struct ibv_wc *w = &wc[n];
        w->wr_id = cq->wr_id;
        w->status = cq->status;
        w->opcode = ibv_wc_read_opcode(cq);
        w->vendor_err = ibv_wc_read_vendor_err(cq);
        w->byte_len = ibv_wc_read_byte_len(cq);
        w->wc_flags = ibv_wc_read_wc_flags(cq);
        w->imm_data = (w->wc_flags & (IBV_WC_WITH_IMM | IBV_WC_WITH_INV)) ? ibv_wc_read_imm_data(cq) : 0;
        w->qp_num = ibv_wc_read_qp_num(cq);
        w->src_qp = ibv_wc_read_src_qp(cq);
        w->pkey_index = 0;
        w->slid = (uint16_t)ibv_wc_read_slid(cq);
        w->sl = ibv_wc_read_sl(cq);
        w->dlid_path_bits = ibv_wc_read_dlid_path_bits(cq);
        n++;
        if (n == num_entries)
            break;
        rc = ibv_next_poll(cq);
        if (rc == ENOENT)
            break;
        if (rc != 0) {
            ibv_end_poll(cq);
            return n > 0 ? n : -rc;
        }
    }
    ibv_end_poll(cq);
    return n;
}
