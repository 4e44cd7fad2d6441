// The C twin of `RdmaLease.Benchmarks reg` (RegCost.cs): registration and deregistration time by size, each timed
// alone, for one kind of memory. Every page is written before the first registration (data present, as in use); a
// file's region goes over a second mapping of it, as rdma-lease registers one.
//
//   usage: reg_cost DEVICE KIND MAX_BYTES ITERATIONS [FILE]
//   KIND: odp-fsdax (FILE on FS-DAX, MAP_SHARED, IBV_ACCESS_ON_DEMAND), pinned-anon (anonymous memory),
//         pinned-pagecache (FILE on a page-cache file system, MAP_SHARED). Sizes: 4 KiB, 16 KiB, ... (x4) up to MAX_BYTES.
// Prints "CASE SIZE reg_us MEDIAN" and "CASE SIZE dereg_us MEDIAN" per size (median of ITERATIONS, after one unrecorded).
#include "bench_common.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 5) { fprintf(stderr, "usage: %s DEVICE KIND MAX_BYTES ITERATIONS [FILE]\n", argv[0]); return 2; }
    const char *kind = argv[2];
    size_t max = strtoull(argv[3], NULL, 10);
    int iterations = atoi(argv[4]);
    int odp = strcmp(kind, "odp-fsdax") == 0, file = odp || strcmp(kind, "pinned-pagecache") == 0;
    if (!odp && !file && strcmp(kind, "pinned-anon") != 0) { fprintf(stderr, "unknown kind '%s'\n", kind); return 2; }
    if (file && argc < 6) { fprintf(stderr, "%s needs a FILE\n", kind); return 2; }
    struct ibv_context *ctx = open_device(argv[1]);
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(pd, "ibv_alloc_pd");
    uint8_t *memory;
    int fd = -1;
    if (file) {
        fd = open(argv[5], O_RDWR | O_CREAT | O_TRUNC, 0600);
        CHECK(fd >= 0, argv[5]);
        CHECK(ftruncate(fd, (off_t)max) == 0, "ftruncate");
        memory = mmap(NULL, max, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
        memory = mmap(NULL, max, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    CHECK(memory != MAP_FAILED, "mmap");
    for (size_t i = 0; i < max; i += 4096) memory[i] = (uint8_t)(i >> 12 | 1);
    if (file) {
        // As rdma-lease's DaxFile does: the region goes over a second mapping of the file, not the one written through
        // (whose page tables are populated, which rxe's ODP registration would copy).
        uint8_t *second = mmap(NULL, max, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        CHECK(second != MAP_FAILED, "mmap (registration)");
        munmap(memory, max);
        memory = second;
    }
    int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | (odp ? IBV_ACCESS_ON_DEMAND : 0);
    const char *name = odp ? "reg_odp_fsdax" : file ? "reg_pinned_pagecache" : "reg_pinned_anon";
    uint64_t *reg = calloc((size_t)iterations, sizeof *reg), *dereg = calloc((size_t)iterations, sizeof *dereg);
    for (size_t size = 4096; size <= max; size *= 4) {
        for (int i = -1; i < iterations; i++) {
            uint64_t t0 = now_ns();
            struct ibv_mr *mr = ibv_reg_mr(pd, memory, size, access);
            uint64_t t1 = now_ns();
            CHECK(mr, "ibv_reg_mr");
            CHECK(ibv_dereg_mr(mr) == 0, "ibv_dereg_mr");
            uint64_t t2 = now_ns();
            if (i >= 0) { reg[i] = t1 - t0; dereg[i] = t2 - t1; }
        }
        printf("%s %zu reg_us %.1f\n", name, size, median_us(reg, iterations));
        printf("%s %zu dereg_us %.1f\n", name, size, median_us(dereg, iterations));
        fflush(stdout);
    }
    munmap(memory, max);
    if (fd >= 0) { close(fd); unlink(argv[5]); }
    ibv_dealloc_pd(pd);
    ibv_close_device(ctx);
    return 0;
}
