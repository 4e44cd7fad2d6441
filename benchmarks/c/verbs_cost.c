// The C side of docs/interop.md's per-call costs: the same loops as the C# benchmark
// (RdmaLease.Benchmarks interop), so both run in one guest and only ratios are compared.
//
//   usage: verbs_cost DEVICE ITERATIONS       (RC loopback on DEVICE, GID index 1)
// Prints one line per measurement: "c <name> <ns per call>".
#include <errno.h>
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(c, what) do { if (!(c)) { perror(what); exit(2); } } while (0)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct ibv_qp *make_qp(struct ibv_pd *pd, struct ibv_cq *cq)
{
    struct ibv_qp_init_attr ia = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
        .cap = { .max_send_wr = 64, .max_recv_wr = 64, .max_send_sge = 1, .max_recv_sge = 1 } };
    struct ibv_qp *qp = ibv_create_qp(pd, &ia);
    CHECK(qp, "ibv_create_qp");
    struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .port_num = 1,
        .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_LOCAL_WRITE };
    CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) == 0, "INIT");
    return qp;
}

static void connect_qp(struct ibv_context *ctx, struct ibv_qp *qp, uint32_t dest)
{
    struct ibv_qp_attr a = { .qp_state = IBV_QPS_RTR, .path_mtu = IBV_MTU_4096, .dest_qp_num = dest,
        .max_dest_rd_atomic = 1, .min_rnr_timer = 1,
        .ah_attr = { .is_global = 1, .port_num = 1, .grh = { .sgid_index = 1, .hop_limit = 64 } } };
    CHECK(ibv_query_gid(ctx, 1, 1, &a.ah_attr.grh.dgid) == 0, "ibv_query_gid");
    CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN
                        | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) == 0, "RTR");
    struct ibv_qp_attr s = { .qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7, .max_rd_atomic = 1 };
    CHECK(ibv_modify_qp(qp, &s, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY
                        | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) == 0, "RTS");
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: %s DEVICE ITERATIONS\n", argv[0]); return 2; }
    long iterations = atol(argv[2]);
    struct ibv_device **list = ibv_get_device_list(NULL);
    struct ibv_context *ctx = NULL;
    for (int i = 0; list && list[i]; i++)
        if (strcmp(ibv_get_device_name(list[i]), argv[1]) == 0) ctx = ibv_open_device(list[i]);
    CHECK(ctx, "open device");
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    struct ibv_cq *cq = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    CHECK(pd && cq, "pd/cq");
    struct ibv_qp *a = make_qp(pd, cq), *b = make_qp(pd, cq);
    connect_qp(ctx, a, b->qp_num);
    connect_qp(ctx, b, a->qp_num);
    uint8_t *buf = aligned_alloc(4096, 8192);
    struct ibv_mr *mr = ibv_reg_mr(pd, buf, 8192, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    CHECK(mr, "ibv_reg_mr");
    struct ibv_wc wc[8];

    // 1. ibv_poll_cq on an empty CQ: the provider's poll through the ops table.
    uint64_t t0 = now_ns();
    for (long i = 0; i < iterations * 100; i++)
        CHECK(ibv_poll_cq(cq, 8, wc) == 0, "poll");
    printf("c poll-empty %.1f\n", (double)(now_ns() - t0) / (double)(iterations * 100));

    // 1b. ibv_start_poll on an empty extended CQ (IBV_WC_STANDARD_FLAGS): the extended API's empty poll.
    struct ibv_cq_init_attr_ex cqx_attr = { .cqe = 256, .wc_flags = IBV_WC_STANDARD_FLAGS };
    struct ibv_cq_ex *cqx = ibv_create_cq_ex(ctx, &cqx_attr);
    CHECK(cqx, "ibv_create_cq_ex");
    struct ibv_poll_cq_attr poll_attr = { .comp_mask = 0 };
    t0 = now_ns();
    for (long i = 0; i < iterations * 100; i++)
        CHECK(ibv_start_poll(cqx, &poll_attr) == ENOENT, "start_poll");
    printf("c poll-empty-ex %.1f\n", (double)(now_ns() - t0) / (double)(iterations * 100));
    ibv_destroy_cq(ibv_cq_ex_to_cq(cqx));

    // 2. post one 8-byte RDMA WRITE, poll until its completion: a full round trip through rxe.
    struct ibv_sge sge = { .addr = (uintptr_t)buf, .length = 8, .lkey = mr->lkey };
    struct ibv_send_wr wr = { .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
        .wr.rdma = { .remote_addr = (uintptr_t)buf + 4096, .rkey = mr->rkey } }, *bad;
    for (long i = 0; i < iterations / 10 + 1; i++) {   // warm up like the C# side
        CHECK(ibv_post_send(a, &wr, &bad) == 0, "post");
        while (ibv_poll_cq(cq, 1, wc) == 0) { }
    }
    t0 = now_ns();
    for (long i = 0; i < iterations; i++) {
        wr.wr_id = (uint64_t)i;
        CHECK(ibv_post_send(a, &wr, &bad) == 0, "post");
        int n;
        while ((n = ibv_poll_cq(cq, 1, wc)) == 0) { }
        CHECK(n == 1 && wc[0].status == IBV_WC_SUCCESS, "completion");
    }
    printf("c write-roundtrip %.1f\n", (double)(now_ns() - t0) / (double)iterations);

    ibv_destroy_qp(a); ibv_destroy_qp(b); ibv_dereg_mr(mr); ibv_destroy_cq(cq);
    ibv_dealloc_pd(pd); ibv_close_device(ctx); ibv_free_device_list(list); free(buf);
    return 0;
}
