// Minimal reproducer: rxe places multi-packet transfers that touch an ODP memory region at
// the wrong offsets while reporting success (seen on Debian kernels 7.2.13 and 7.3.4).
//
// One process, two RC QPs on one device connected to each other. A pinned buffer is the
// peer's memory; an ODP region over a MAP_SHARED mapping of FILE is the memory under test.
// For each operation (RDMA WRITE into the ODP region, RDMA READ out of it, SEND into a
// receive buffer inside it) it moves LEN bytes at path MTU MTU and compares every byte.
//
//   usage: rxe_odp_multipacket DEVICE FILE MTU LEN      e.g. rxelo /mnt/xfs/f 1024 4096
//   exit:  0 all bytes correct, 1 corruption seen, 2 setup error
//
// Build: cc -O2 -o rxe_odp_multipacket rxe_odp_multipacket.c -libverbs
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(cond, what) do { if (!(cond)) { fprintf(stderr, "%s failed: %s\n", what, strerror(errno)); exit(2); } } while (0)

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *cq;
static struct ibv_qp *qa, *qb;   // qa posts; qb is the target side

static struct ibv_qp *make_qp(void)
{
    struct ibv_qp_init_attr ia = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
        .cap = { .max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1 } };
    struct ibv_qp *qp = ibv_create_qp(pd, &ia);
    CHECK(qp, "ibv_create_qp");
    struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .port_num = 1,
        .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_LOCAL_WRITE };
    errno = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    CHECK(errno == 0, "modify INIT");
    return qp;
}

static void connect_qp(struct ibv_qp *qp, uint32_t dest, enum ibv_mtu mtu)
{
    struct ibv_qp_attr a = { .qp_state = IBV_QPS_RTR, .path_mtu = mtu, .dest_qp_num = dest, .rq_psn = 0,
        .max_dest_rd_atomic = 1, .min_rnr_timer = 1,
        .ah_attr = { .is_global = 1, .port_num = 1, .grh = { .sgid_index = 1, .hop_limit = 1 } } };
    CHECK(ibv_query_gid(ctx, 1, 1, &a.ah_attr.grh.dgid) == 0, "ibv_query_gid");
    errno = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                          IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    CHECK(errno == 0, "modify RTR");
    struct ibv_qp_attr s = { .qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7, .sq_psn = 0, .max_rd_atomic = 1 };
    errno = ibv_modify_qp(qp, &s, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                          IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
    CHECK(errno == 0, "modify RTS");
}

static void wait_completions(int n)
{
    struct ibv_wc wc;
    while (n > 0) {
        int got = ibv_poll_cq(cq, 1, &wc);
        CHECK(got >= 0, "ibv_poll_cq");
        if (got == 0) continue;
        if (wc.status != IBV_WC_SUCCESS) { fprintf(stderr, "completion error: %s\n", ibv_wc_status_str(wc.status)); exit(2); }
        n--;
    }
}

static void fill(uint8_t *p, size_t len, uint8_t seed)
{
    for (size_t i = 0; i < len; i++) p[i] = (uint8_t)(seed + i * 7 + (i >> 10));
}

static int compare(const char *what, const uint8_t *got, const uint8_t *want, size_t len, unsigned mtu)
{
    size_t bad = 0, first = len;
    for (size_t i = 0; i < len; i++) if (got[i] != want[i]) { bad++; if (first == len) first = i; }
    if (bad == 0) { printf("%-12s mtu %4u len %6zu: ok\n", what, mtu, len); return 0; }
    printf("%-12s mtu %4u len %6zu: CORRUPT, %zu of %zu bytes wrong, first at %zu\n", what, mtu, len, bad, len, first);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 5) { fprintf(stderr, "usage: %s DEVICE FILE MTU LEN\n", argv[0]); return 2; }
    unsigned mtu_bytes = (unsigned)atoi(argv[3]);
    size_t len = (size_t)atol(argv[4]);
    enum ibv_mtu mtu = mtu_bytes == 256 ? IBV_MTU_256 : mtu_bytes == 512 ? IBV_MTU_512 : mtu_bytes == 1024 ? IBV_MTU_1024
                     : mtu_bytes == 2048 ? IBV_MTU_2048 : IBV_MTU_4096;

    struct ibv_device **list = ibv_get_device_list(NULL);
    CHECK(list, "ibv_get_device_list");
    for (int i = 0; list[i]; i++) if (strcmp(ibv_get_device_name(list[i]), argv[1]) == 0) ctx = ibv_open_device(list[i]);
    CHECK(ctx, "open device");
    pd = ibv_alloc_pd(ctx); CHECK(pd, "ibv_alloc_pd");
    cq = ibv_create_cq(ctx, 16, NULL, NULL, 0); CHECK(cq, "ibv_create_cq");

    size_t map_len = (len + 4095) & ~(size_t)4095;
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600); CHECK(fd >= 0, "open file");
    CHECK(ftruncate(fd, (off_t)map_len) == 0, "ftruncate");
    uint8_t *file = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0); CHECK(file != MAP_FAILED, "mmap");
    uint8_t *peer = aligned_alloc(4096, map_len), *want = malloc(len);
    CHECK(peer && want, "malloc");
    int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
    struct ibv_mr *odp = ibv_reg_mr(pd, file, map_len, access | IBV_ACCESS_ON_DEMAND); CHECK(odp, "ibv_reg_mr(ODP)");
    struct ibv_mr *pin = ibv_reg_mr(pd, peer, map_len, access); CHECK(pin, "ibv_reg_mr(pinned)");

    qa = make_qp(); qb = make_qp();
    connect_qp(qa, qb->qp_num, mtu); connect_qp(qb, qa->qp_num, mtu);

    int corrupt = 0;
    struct ibv_sge sge; struct ibv_send_wr wr, *bad; struct ibv_recv_wr rwr, *rbad;

    // 1. RDMA WRITE: peer (pinned) -> file (ODP)
    fill(peer, len, 0x11); memcpy(want, peer, len); memset(file, 0, map_len);
    sge = (struct ibv_sge){ .addr = (uintptr_t)peer, .length = (uint32_t)len, .lkey = pin->lkey };
    wr = (struct ibv_send_wr){ .wr_id = 1, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
        .wr.rdma = { .remote_addr = (uintptr_t)file, .rkey = odp->rkey } };
    CHECK(ibv_post_send(qa, &wr, &bad) == 0, "post write"); wait_completions(1);
    corrupt |= compare("rdma-write", file, want, len, mtu_bytes);

    // 2. RDMA READ: file (ODP) -> peer (pinned)
    fill(file, len, 0x22); memcpy(want, file, len); memset(peer, 0, map_len);
    wr.opcode = IBV_WR_RDMA_READ; wr.wr_id = 2;
    CHECK(ibv_post_send(qa, &wr, &bad) == 0, "post read"); wait_completions(1);
    corrupt |= compare("rdma-read", peer, want, len, mtu_bytes);

    // 3. SEND: peer (pinned) -> receive buffer in file (ODP)
    fill(peer, len, 0x33); memcpy(want, peer, len); memset(file, 0, map_len);
    struct ibv_sge rsge = { .addr = (uintptr_t)file, .length = (uint32_t)len, .lkey = odp->lkey };
    rwr = (struct ibv_recv_wr){ .wr_id = 3, .sg_list = &rsge, .num_sge = 1 };
    CHECK(ibv_post_recv(qb, &rwr, &rbad) == 0, "post recv");
    wr.opcode = IBV_WR_SEND; wr.wr_id = 4;
    CHECK(ibv_post_send(qa, &wr, &bad) == 0, "post send"); wait_completions(2);
    corrupt |= compare("send-recv", file, want, len, mtu_bytes);

    ibv_destroy_qp(qa); ibv_destroy_qp(qb); ibv_dereg_mr(odp); ibv_dereg_mr(pin);
    ibv_destroy_cq(cq); ibv_dealloc_pd(pd); ibv_close_device(ctx); ibv_free_device_list(list);
    munmap(file, map_len); close(fd); unlink(argv[2]);
    return corrupt;
}
