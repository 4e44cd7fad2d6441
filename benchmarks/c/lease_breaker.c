// The breaker of the lease-break benchmark (benchmarks/guest/suites/break.sh): starts a holder (lease_holder, or
// `RdmaLease.Benchmarks break`), and each time the holder says "ready" (lease held, region registered) opens the file
// O_RDWR, which breaks the lease and blocks until the holder gives it back, and measures how long it was blocked.
// The holder then says "released US [MORE...]" (its own signal -> F_UNLCK time, then whatever else it measured);
// "go" lets it take the next lease (not after the last break: the holder has exited).
//
//   usage: lease_breaker FILE BREAKS HOLDER [ARGS...]
// Prints one line per break: "break INDEX BLOCKED_US RELEASED_US [MORE...]". Written in C so its own timing has no managed noise.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: %s FILE BREAKS HOLDER [ARGS...]\n", argv[0]); return 2; }
    const char *path = argv[1];
    int breaks = atoi(argv[2]);
    int to_holder[2], from_holder[2];
    if (pipe2(to_holder, O_CLOEXEC) != 0 || pipe2(from_holder, O_CLOEXEC) != 0) { perror("pipe"); return 2; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        dup2(to_holder[0], 0);
        dup2(from_holder[1], 1);
        execvp(argv[3], argv + 3);
        perror(argv[3]);
        _exit(127);
    }
    close(to_holder[0]);
    close(from_holder[1]);
    FILE *in = fdopen(from_holder[0], "r");
    char line[256];
    int done = 0, failed = 0;
    for (; done < breaks; done++) {
        if (!fgets(line, sizeof line, in) || strncmp(line, "ready", 5) != 0) {
            fprintf(stderr, "lease_breaker: break %d: the holder said '%s' instead of 'ready'\n", done, feof(in) ? "(exit)" : line);
            failed = 1;
            break;
        }
        uint64_t t0 = now_ns();
        int fd = open(path, O_RDWR | O_CLOEXEC);   // breaks the lease; blocks until it is given back
        uint64_t blocked = now_ns() - t0;
        if (fd < 0) { fprintf(stderr, "lease_breaker: open %s: %s\n", path, strerror(errno)); failed = 1; break; }
        close(fd);   // before "go": the holder's next lease needs no other opener
        double released;
        if (!fgets(line, sizeof line, in) || sscanf(line, "released %lf", &released) != 1) {
            fprintf(stderr, "lease_breaker: break %d: the holder said '%s' instead of 'released US'\n", done, feof(in) ? "(exit)" : line);
            failed = 1;
            break;
        }
        printf("break %d %.1f %s", done, (double)blocked / 1000.0, line + strlen("released "));
        fflush(stdout);
        if (done + 1 < breaks && write(to_holder[1], "go\n", 3) != 3) { perror("write to holder"); failed = 1; break; }
    }
    close(to_holder[1]);
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "lease_breaker: the holder ended with status 0x%x\n", status);
        failed = 1;
    }
    return failed;
}
