// The C twin of `RdmaLease.Benchmarks break` (BreakCost.cs), driven by lease_breaker: per break, opens FILE (created REGION_BYTES long if missing),
// maps it, takes a write delegation (F_SETDELEG; a lease where the kernel has none) with F_SETSIG, registers an ODP region over
// the whole mapping and says "ready". Its SA_SIGINFO handler stamps the signal and writes it to a pipe; the main thread
// reads it, deregisters the region, gives the delegation back (F_UNLCK) and says "released US" (signal -> F_UNLCK).
// VARIANT traffic: a thread keeps 4 KiB RDMA WRITEs going into the region (loopback RC pair) until the break stops them.
//
//   usage: lease_holder DEVICE FILE REGION_BYTES BREAKS idle|traffic
#define _GNU_SOURCE
#include "bench_common.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define F_GETDELEG_ 1039
#define F_SETDELEG_ 1040
struct delegation { uint32_t d_flags; uint16_t d_type; uint16_t pad; };
struct record { int fd; uint64_t ns; };
static int pipe_fd[2];

static void on_break(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    int saved = errno;
    struct record r = { si->si_fd, now_ns() };
    if (write(pipe_fd[1], &r, sizeof r) != sizeof r) { }
    errno = saved;
}

static int set_lease(int fd, int type, int deleg)
{
    if (!deleg) return fcntl(fd, F_SETLEASE, type);
    struct delegation d = { .d_type = (uint16_t)type };
    return fcntl(fd, F_SETDELEG_, &d);
}

struct traffic { struct ibv_qp *qp; struct ibv_cq *cq; struct ibv_mr *src; uint64_t addr; uint32_t rkey; size_t pages; atomic_int stop; long writes; };

static void *traffic_run(void *p)
{
    struct traffic *t = p;
    struct ibv_wc wc;
    for (long i = 0; !atomic_load(&t->stop); i++) {
        struct ibv_sge sge = { .addr = (uintptr_t)t->src->addr, .length = 4096, .lkey = t->src->lkey };
        struct ibv_send_wr wr = { .wr_id = (uint64_t)i, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
            .send_flags = IBV_SEND_SIGNALED, .wr.rdma = { .remote_addr = t->addr + (uint64_t)(i % (long)t->pages) * 4096, .rkey = t->rkey } }, *bad;
        if (ibv_post_send(t->qp, &wr, &bad) != 0) break;
        int n;
        while ((n = ibv_poll_cq(t->cq, 1, &wc)) == 0) { }
        if (n < 0 || wc.status != IBV_WC_SUCCESS) break;   // the break deregistered the region
        t->writes++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6) { fprintf(stderr, "usage: %s DEVICE FILE REGION_BYTES BREAKS idle|traffic\n", argv[0]); return 2; }
    const char *path = argv[2];
    size_t size = strtoull(argv[3], NULL, 10);
    int breaks = atoi(argv[4]);
    int traffic = strcmp(argv[5], "traffic") == 0;
    struct ibv_context *ctx = open_device(argv[1]);
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(pd, "ibv_alloc_pd");
    uint8_t *source = aligned_alloc(4096, 4096);
    memset(source, 0x5a, 4096);
    struct ibv_mr *src = ibv_reg_mr(pd, source, 4096, IBV_ACCESS_LOCAL_WRITE);
    CHECK(src, "ibv_reg_mr source");
    CHECK(pipe2(pipe_fd, O_CLOEXEC) == 0, "pipe");
    struct sigaction sa = { .sa_sigaction = on_break, .sa_flags = SA_SIGINFO | SA_RESTART };
    sigemptyset(&sa.sa_mask);
    int sig = SIGRTMIN + 5;
    CHECK(sigaction(sig, &sa, NULL) == 0, "sigaction");
    int deleg = 1;
    char line[64];
    for (int b = 0; b < breaks; b++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        CHECK(fd >= 0, path);
        struct stat st;
        CHECK(fstat(fd, &st) == 0 && (st.st_size >= (off_t)size || ftruncate(fd, (off_t)size) == 0), "ftruncate");
        uint8_t *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        CHECK(map != MAP_FAILED, "mmap");
        CHECK(fcntl(fd, F_SETSIG, sig) == 0, "F_SETSIG");
        if (set_lease(fd, F_WRLCK, deleg) != 0 && errno == EINVAL) deleg = 0;
        CHECK(deleg || set_lease(fd, F_WRLCK, 0) == 0, "F_SETLEASE");
        struct ibv_mr *mr = ibv_reg_mr(pd, map, size, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_ON_DEMAND);
        CHECK(mr, "ibv_reg_mr ODP");
        struct traffic t = { 0 };
        pthread_t thread;
        struct ibv_qp *peer = NULL;
        if (traffic) {
            t.cq = ibv_create_cq(ctx, 64, NULL, NULL, 0);
            CHECK(t.cq, "ibv_create_cq");
            t.qp = make_qp(pd, t.cq);
            peer = make_qp(pd, t.cq);
            connect_qp(ctx, t.qp, peer->qp_num);
            connect_qp(ctx, peer, t.qp->qp_num);
            t.src = src; t.addr = (uintptr_t)map; t.rkey = mr->rkey; t.pages = size / 4096;
            CHECK(pthread_create(&thread, NULL, traffic_run, &t) == 0, "pthread_create");
            while (t.writes < 2) usleep(100);   // the traffic is flowing before the lease can break
        }
        printf("ready\n");
        fflush(stdout);
        struct record r;
        while (read(pipe_fd[0], &r, sizeof r) != sizeof r) CHECK(errno == EINTR, "read pipe");
        CHECK(r.fd == fd, "a break for another descriptor");
        CHECK(ibv_dereg_mr(mr) == 0, "ibv_dereg_mr");
        CHECK(set_lease(fd, F_UNLCK, deleg) == 0, "F_UNLCK");
        uint64_t released = now_ns();
        printf("released %.1f\n", (double)(released - r.ns) / 1000.0);
        fflush(stdout);
        if (traffic) {
            atomic_store(&t.stop, 1);
            pthread_join(thread, NULL);
            ibv_destroy_qp(t.qp); ibv_destroy_qp(peer); ibv_destroy_cq(t.cq);
            if (map[0] != 0x5a) { fprintf(stderr, "lease_holder: the traffic's bytes are not in the file\n"); return 1; }
        }
        munmap(map, size);
        close(fd);
        if (b + 1 < breaks && (!fgets(line, sizeof line, stdin) || strncmp(line, "go", 2) != 0)) {
            fprintf(stderr, "lease_holder: the breaker said '%s' instead of 'go'\n", line);
            return 1;
        }
    }
    ibv_dereg_mr(src); ibv_dealloc_pd(pd); ibv_close_device(ctx);
    return 0;
}
