// The C side of the per-call costs (docs/benchmarks.md, "Per-call costs"): the same loops as the C# benchmark
// (RdmaLease.Benchmarks interop), so both run in one guest and only ratios are compared.
//
//   usage: verbs_cost DEVICE ITERATIONS       (RC loopback on DEVICE, GID index 1)
// Prints one line per measurement, "row,CASE,c,PARAM,ns_per_call,VALUE,ns": the median of REPEATS runs of the loop.
// benchmarks/guest/suites/percall.sh turns the lines into rows of results.csv. A case the C# side measures in
// several forms (e.g. poll_empty and poll_empty_poller) is measured here once per form, so each has its own C figure.
#include <errno.h>

#include "bench_common.h"

#define REPEATS 5      // each figure is the median of this many runs of its loop
#define POST_BATCH 32  // posts timed together (the send queue holds 64)

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// One result line: the median of the REPEATS runs.
static void row(const char *name, double *runs)
{
    qsort(runs, REPEATS, sizeof runs[0], compare_double);
    printf("row,%s,c,,ns_per_call,%.1f,ns\n", name, runs[REPEATS / 2]);
    fflush(stdout);
}

static void drain(struct ibv_cq *cq, int count, struct ibv_wc *wc)
{
    for (int got = 0; got < count;) {
        int n = ibv_poll_cq(cq, 1, wc);
        CHECK(n >= 0 && (n == 0 || wc[0].status == IBV_WC_SUCCESS), "drain");
        got += n;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: %s DEVICE ITERATIONS\n", argv[0]); return 2; }
    long iterations = atol(argv[2]);
    struct ibv_context *ctx = open_device(argv[1]);
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
    double runs[REPEATS];

    // ibv_poll_cq on an empty CQ: the provider's poll through the ops table. One C figure per C# form.
    static const char *const poll_cases[] = { "poll_empty", "poll_empty_poller", "poll_empty_shim", "poll_empty_shim_transition",
                                              "poll_empty_provider_pointer", "poll_empty_provider_pointer_transition" };
    for (int w = 0; w < 2; w++) {   // the first pass warms up (caches, the provider's first-call paths)
        for (size_t c = 0; c < sizeof poll_cases / sizeof poll_cases[0]; c++) {
            for (int r = 0; r < REPEATS; r++) {
                uint64_t t0 = now_ns();
                for (long i = 0; i < iterations * 10; i++)
                    CHECK(ibv_poll_cq(cq, 8, wc) == 0, "poll");
                runs[r] = (double)(now_ns() - t0) / (double)(iterations * 10);
            }
            if (w == 1)
                row(poll_cases[c], runs);
        }
    }

    // ibv_start_poll on an empty extended CQ (IBV_WC_STANDARD_FLAGS): the extended API's empty poll.
    struct ibv_cq_init_attr_ex cqx_attr = { .cqe = 256, .wc_flags = IBV_WC_STANDARD_FLAGS };
    struct ibv_cq_ex *cqx = ibv_create_cq_ex(ctx, &cqx_attr);
    CHECK(cqx, "ibv_create_cq_ex");
    struct ibv_poll_cq_attr poll_attr = { .comp_mask = 0 };
    for (int r = 0; r < REPEATS; r++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < iterations * 10; i++)
            CHECK(ibv_start_poll(cqx, &poll_attr) == ENOENT, "start_poll");
        runs[r] = (double)(now_ns() - t0) / (double)(iterations * 10);
    }
    row("poll_empty_ex", runs);
    ibv_destroy_cq(ibv_cq_ex_to_cq(cqx));

    struct ibv_sge sge = { .addr = (uintptr_t)buf, .length = 8, .lkey = mr->lkey };
    struct ibv_send_wr wr = { .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
        .wr.rdma = { .remote_addr = (uintptr_t)buf + 4096, .rkey = mr->rkey } }, *bad;
    for (long i = 0; i < iterations / 10 + 1; i++) {   // warm up like the C# side
        CHECK(ibv_post_send(a, &wr, &bad) == 0, "post");
        while (ibv_poll_cq(cq, 1, wc) == 0) { }
    }

    // post_send: one 8-byte RDMA WRITE posted, not waited for: POST_BATCH posts timed together, their completions
    // drained untimed. One C figure per C# form.
    static const char *const post_cases[] = { "post_send", "post_send_poster" };
    long post_rounds = iterations / POST_BATCH / 2 + 1;
    for (size_t c = 0; c < sizeof post_cases / sizeof post_cases[0]; c++) {
        for (int r = 0; r < REPEATS; r++) {
            uint64_t total = 0;
            for (long k = 0; k < post_rounds; k++) {
                uint64_t t0 = now_ns();
                for (int j = 0; j < POST_BATCH; j++) {
                    wr.wr_id = (uint64_t)j;
                    CHECK(ibv_post_send(a, &wr, &bad) == 0, "post");
                }
                total += now_ns() - t0;
                drain(cq, POST_BATCH, wc);
            }
            runs[r] = (double)total / (double)(post_rounds * POST_BATCH);
        }
        row(post_cases[c], runs);
    }

    // write_rtt_8b: post one 8-byte RDMA WRITE, poll until its completion: a full round trip through rxe.
    static const char *const rtt_cases[] = { "write_rtt_8b", "write_rtt_8b_scoped" };
    long rtts = iterations / REPEATS + 1;
    for (size_t c = 0; c < sizeof rtt_cases / sizeof rtt_cases[0]; c++) {
        for (int r = 0; r < REPEATS; r++) {
            uint64_t t0 = now_ns();
            for (long i = 0; i < rtts; i++) {
                wr.wr_id = (uint64_t)i;
                CHECK(ibv_post_send(a, &wr, &bad) == 0, "post");
                int n;
                while ((n = ibv_poll_cq(cq, 1, wc)) == 0) { }
                CHECK(n == 1 && wc[0].status == IBV_WC_SUCCESS, "completion");
            }
            runs[r] = (double)(now_ns() - t0) / (double)rtts;
        }
        row(rtt_cases[c], runs);
    }

    ibv_destroy_qp(a); ibv_destroy_qp(b); ibv_dereg_mr(mr); ibv_destroy_cq(cq);
    ibv_dealloc_pd(pd); ibv_close_device(ctx); free(buf);
    return 0;
}
