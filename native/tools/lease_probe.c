// rdmalease-lease-probe: the "other process" of the lease tests and of the measurements in
// docs/leases.md. Performs one file operation that may break a lease and reports how long it
// took, with CLOCK_MONOTONIC stamps comparable to the lease's (Stopwatch) timestamps.
//
//   rdmalease-lease-probe OP PATH [ARG]
//     truncate SIZE            truncate(2) (blocks while a lease is being broken)
//     open-rdonly | open-rdwr  open(2) and close; add -nonblock for O_NONBLOCK (EAGAIN at once)
//     unlink | chmod MODE | rename NEWPATH | link NEWPATH
//     punch OFFSET LENGTH      open O_RDWR, fallocate(PUNCH_HOLE|KEEP_SIZE)
//     collapse OFFSET LENGTH   open O_RDWR, fallocate(COLLAPSE_RANGE)
//     clone SOURCE             open PATH O_RDWR, ioctl(FICLONE, SOURCE): reflink SOURCE onto PATH
//     clone-from DEST          PATH is the source: open PATH O_RDONLY, create DEST (O_EXCL), ioctl(DEST, FICLONE, PATH)
//     clonerange-from DEST OFFSET LENGTH   the same with FICLONERANGE: PATH's [OFFSET, OFFSET+LENGTH) to DEST's 0
//     dedupe-from OTHER OFFSET LENGTH      FIDEDUPERANGE, PATH the source (O_RDONLY), OTHER the destination (O_RDWR)
//     dedupe-into OTHER OFFSET LENGTH      FIDEDUPERANGE, OTHER the source, PATH the destination opened O_RDONLY
//                              (allowed for root or the file's owner): PATH's blocks become OTHER's. A range whose
//                              bytes differ reports "err 52" (EBADE), a partial dedupe "err 34" (ERANGE)
//     open-each-nonblock PATH...  open(2) O_RDONLY|O_NONBLOCK every PATH as fast as possible: each starts a break of
//                              the lease on it (EAGAIN at once). "ok" when every open gave EAGAIN (every file was
//                              leased), else "err" with the first other outcome's errno (0: an open succeeded)
//
// Output, one line: "ok|err ERRNO start_ns=S end_ns=E elapsed_ns=D". Exit 0 on success,
// 1 when the operation failed, 2 on a usage error.
//
//   rdmalease-lease-probe hold PATH [DEVICE]
//     A lease holder that never gives the lease back: opens PATH O_RDWR, maps it MAP_SHARED, with
//     DEVICE registers the mapping as an ODP memory region (libibverbs loaded with dlopen, remote
//     write), ignores the break signal (SIGIO), takes a write delegation (F_SETDELEG, else a
//     lease), prints "held deleg|lease rkey=0xR pid=P" and sleeps until killed. A breaking
//     process then waits out lease-break-time, or until this process dies.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int usage(void)
{
    fprintf(stderr, "usage: rdmalease-lease-probe truncate|open-rdonly[-nonblock]|open-rdwr[-nonblock]|open-each-nonblock|unlink|chmod|rename|link|punch|collapse|clone|clone-from|clonerange-from|dedupe-from|dedupe-into|hold PATH [ARG...]\n");
    return 2;
}

static int open_close(const char* path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

// The start of struct ibv_mr (infiniband/verbs.h, stable ABI since libibverbs 1.1).
struct probe_ibv_mr {
    void* context;
    void* pd;
    void* addr;
    size_t length;
    uint32_t handle;
    uint32_t lkey;
    uint32_t rkey;
};

static int fail(const char* what)
{
    int e = errno;
    fprintf(stderr, "hold: %s: %s\n", what, strerror(e));
    printf("err %d %s\n", e, what);
    return 1;
}

// Registers [addr, addr+len) on DEVICE as an ODP region with remote write; returns the rkey or -1.
static long long register_odp(const char* device, void* addr, size_t len)
{
    void* lib = dlopen("libibverbs.so.1", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "hold: %s\n", dlerror());
        errno = ENOENT;
        return -1;
    }
    void** (*get_list)(int*) = (void** (*)(int*))dlsym(lib, "ibv_get_device_list");
    const char* (*get_name)(void*) = (const char* (*)(void*))dlsym(lib, "ibv_get_device_name");
    void* (*open_device)(void*) = (void* (*)(void*))dlsym(lib, "ibv_open_device");
    void* (*alloc_pd)(void*) = (void* (*)(void*))dlsym(lib, "ibv_alloc_pd");
    struct probe_ibv_mr* (*reg_mr)(void*, void*, size_t, int) = (struct probe_ibv_mr* (*)(void*, void*, size_t, int))dlsym(lib, "ibv_reg_mr");
    if (!get_list || !get_name || !open_device || !alloc_pd || !reg_mr) {
        errno = ENOSYS;
        return -1;
    }
    int n = 0;
    void** list = get_list(&n);
    for (int i = 0; list && i < n; i++) {
        if (strcmp(get_name(list[i]), device) != 0)
            continue;
        void* ctx = open_device(list[i]);
        void* pd = ctx ? alloc_pd(ctx) : NULL;
        // IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_ON_DEMAND
        struct probe_ibv_mr* mr = pd ? reg_mr(pd, addr, len, 1 | 2 | 64) : NULL;
        return mr ? (long long)mr->rkey : -1;
    }
    errno = ENODEV;
    return -1;
}

static int hold(const char* path, const char* device)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fail("open");
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0)
        return fail("fstat (the file must not be empty)");
    void* map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return fail("mmap");
    long long rkey = 0;
    if (device && (rkey = register_odp(device, map, (size_t)st.st_size)) < 0)
        return fail("ibv_reg_mr (ODP)");
    signal(SIGIO, SIG_IGN);   // the break signal: ignored, so the lease is never given back
    struct { uint32_t d_flags; uint16_t d_type; uint16_t pad; } deleg = { 0, F_WRLCK, 0 };
    const char* kind = "deleg";
    if (fcntl(fd, 1040 /* F_SETDELEG */, &deleg) != 0) {
        if (errno != EINVAL)
            return fail("F_SETDELEG");
        kind = "lease";
        if (fcntl(fd, F_SETLEASE, F_WRLCK) != 0)
            return fail("F_SETLEASE");
    }
    printf("held %s rkey=0x%llx pid=%d\n", kind, rkey, (int)getpid());
    fflush(stdout);
    for (;;)
        pause();
}

// Closes fds (ignoring -1) keeping errno.
static void close_keep_errno(int a, int b)
{
    int e = errno;
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    errno = e;
}

// PATH is the source of a clone into DEST, a new file: FICLONE (whole file) or FICLONERANGE (len > 0).
static int clone_from(const char* path, const char* dest, long long offset, long long len)
{
    int src = open(path, O_RDONLY | O_CLOEXEC);
    int fd = src < 0 ? -1 : open(dest, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int r = -1;
    if (fd >= 0 && len > 0) {
        struct file_clone_range range = { .src_fd = src, .src_offset = (uint64_t)offset, .src_length = (uint64_t)len, .dest_offset = 0 };
        r = ioctl(fd, FICLONERANGE, &range);
    } else if (fd >= 0)
        r = ioctl(fd, FICLONE, src);
    close_keep_errno(fd, src);
    return r;
}

// FIDEDUPERANGE of [offset, offset+len) from src_path to the same range of dest_path (dest opened O_RDONLY when
// dest_rdonly: the kernel allows that to root and the owner).
static int dedupe(const char* src_path, const char* dest_path, int dest_rdonly, long long offset, long long len)
{
    int src = open(src_path, O_RDONLY | O_CLOEXEC);
    int dst = src < 0 ? -1 : open(dest_path, (dest_rdonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    int r = -1;
    if (dst >= 0) {
        struct { struct file_dedupe_range range; struct file_dedupe_range_info info; } arg;
        memset(&arg, 0, sizeof arg);
        arg.range.src_offset = (uint64_t)offset;
        arg.range.src_length = (uint64_t)len;
        arg.range.dest_count = 1;
        arg.info.dest_fd = dst;
        arg.info.dest_offset = (uint64_t)offset;
        r = ioctl(src, FIDEDUPERANGE, &arg);
        if (r == 0 && arg.info.status < 0) {
            r = -1;
            errno = -arg.info.status;
        } else if (r == 0 && arg.info.status == FILE_DEDUPE_RANGE_DIFFERS) {
            r = -1;
            errno = EBADE;
        } else if (r == 0 && arg.info.bytes_deduped != (uint64_t)len) {
            r = -1;
            errno = ERANGE;
        }
    }
    close_keep_errno(dst, src);
    return r;
}

int main(int argc, char** argv)
{
    if (argc < 3)
        return usage();
    const char* op = argv[1];
    const char* path = argv[2];
    const char* arg = argc > 3 ? argv[3] : NULL;
    if (strcmp(op, "hold") == 0)
        return hold(path, arg);
    long long start = now_ns();
    int r;
    if (strcmp(op, "truncate") == 0 && arg)
        r = truncate(path, strtoll(arg, NULL, 0));
    else if (strcmp(op, "open-rdonly") == 0)
        r = open_close(path, O_RDONLY);
    else if (strcmp(op, "open-rdwr") == 0)
        r = open_close(path, O_RDWR);
    else if (strcmp(op, "open-rdonly-nonblock") == 0)
        r = open_close(path, O_RDONLY | O_NONBLOCK);
    else if (strcmp(op, "open-rdwr-nonblock") == 0)
        r = open_close(path, O_RDWR | O_NONBLOCK);
    else if (strcmp(op, "open-each-nonblock") == 0) {
        r = 0;
        int first = -1;
        for (int i = 2; i < argc; i++) {
            int fd = open(argv[i], O_RDONLY | O_NONBLOCK | O_CLOEXEC);
            int e = fd < 0 ? errno : 0;
            if (fd >= 0)
                close(fd);
            if (e != EAGAIN && first < 0)
                first = e;
        }
        if (first >= 0) {
            r = -1;
            errno = first;
        }
    }
    else if (strcmp(op, "unlink") == 0)
        r = unlink(path);
    else if (strcmp(op, "chmod") == 0 && arg)
        r = chmod(path, (mode_t)strtol(arg, NULL, 8));
    else if (strcmp(op, "rename") == 0 && arg)
        r = rename(path, arg);
    else if (strcmp(op, "link") == 0 && arg)
        r = link(path, arg);
    else if (strcmp(op, "punch") == 0 && arg && argc > 4) {
        int fd = open(path, O_RDWR | O_CLOEXEC);
        r = fd < 0 ? -1 : fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, strtoll(arg, NULL, 0), strtoll(argv[4], NULL, 0));
        if (fd >= 0) {
            int e = errno;
            close(fd);
            errno = e;
        }
    } else if (strcmp(op, "collapse") == 0 && arg && argc > 4) {
        int fd = open(path, O_RDWR | O_CLOEXEC);
        r = fd < 0 ? -1 : fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, strtoll(arg, NULL, 0), strtoll(argv[4], NULL, 0));
        if (fd >= 0) {
            int e = errno;
            close(fd);
            errno = e;
        }
    } else if (strcmp(op, "clone") == 0 && arg) {
        int src = open(arg, O_RDONLY | O_CLOEXEC);
        int fd = src < 0 ? -1 : open(path, O_RDWR | O_CLOEXEC);
        r = fd < 0 ? -1 : ioctl(fd, FICLONE, src);
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (src >= 0)
            close(src);
        errno = e;
    } else if (strcmp(op, "clone-from") == 0 && arg)
        r = clone_from(path, arg, 0, 0);
    else if (strcmp(op, "clonerange-from") == 0 && arg && argc > 5)
        r = clone_from(path, arg, strtoll(argv[4], NULL, 0), strtoll(argv[5], NULL, 0));
    else if (strcmp(op, "dedupe-from") == 0 && arg && argc > 5)
        r = dedupe(path, arg, 0, strtoll(argv[4], NULL, 0), strtoll(argv[5], NULL, 0));
    else if (strcmp(op, "dedupe-into") == 0 && arg && argc > 5)
        r = dedupe(arg, path, 1, strtoll(argv[4], NULL, 0), strtoll(argv[5], NULL, 0));
    else
        return usage();
    int e = r < 0 ? errno : 0;
    long long end = now_ns();
    printf("%s %d start_ns=%lld end_ns=%lld elapsed_ns=%lld\n", r < 0 ? "err" : "ok", e, start, end, end - start);
    return r < 0 ? 1 : 0;
}
