// rdmalease-lease-probe: the "other process" of the lease tests and of the measurements in
// docs/leases.md. Performs one file operation that may break a lease and reports how long it
// took, with CLOCK_MONOTONIC stamps comparable to the lease's (Stopwatch) timestamps.
//
//   rdmalease-lease-probe OP PATH [ARG]
//     truncate SIZE            truncate(2) (blocks while a lease is being broken)
//     open-rdonly | open-rdwr  open(2) and close; add -nonblock for O_NONBLOCK (EAGAIN at once)
//     unlink | chmod MODE | rename NEWPATH | link NEWPATH
//     punch OFFSET LENGTH      open O_RDWR, fallocate(PUNCH_HOLE|KEEP_SIZE)
//
// Output, one line: "ok|err ERRNO start_ns=S end_ns=E elapsed_ns=D". Exit 0 on success,
// 1 when the operation failed, 2 on a usage error.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    fprintf(stderr, "usage: rdmalease-lease-probe truncate|open-rdonly[-nonblock]|open-rdwr[-nonblock]|unlink|chmod|rename|link|punch PATH [ARG...]\n");
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

int main(int argc, char** argv)
{
    if (argc < 3)
        return usage();
    const char* op = argv[1];
    const char* path = argv[2];
    const char* arg = argc > 3 ? argv[3] : NULL;
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
    } else
        return usage();
    int e = r < 0 ? errno : 0;
    long long end = now_ns();
    printf("%s %d start_ns=%lld end_ns=%lld elapsed_ns=%lld\n", r < 0 ? "err" : "ok", e, start, end, end - start);
    return r < 0 ? 1 : 0;
}
