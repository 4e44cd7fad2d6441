// Lease-break signal delivery and the fcntl commands for leases and delegations.
// The handler is the only code here that runs in signal context: it uses nothing but
// clock_gettime and write (both async-signal-safe), and keeps errno intact.
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "rdmalease_leases.h"

static_assert(RL_F_RDLCK == F_RDLCK, "F_RDLCK");
static_assert(RL_F_WRLCK == F_WRLCK, "F_WRLCK");
static_assert(RL_F_UNLCK == F_UNLCK, "F_UNLCK");
static_assert(RL_F_SETLEASE == F_SETLEASE, "F_SETLEASE");
static_assert(RL_F_GETLEASE == F_GETLEASE, "F_GETLEASE");
static_assert(RL_POLL_MSG == POLL_MSG, "POLL_MSG");
static_assert(RL_RECORD_RESCAN != SI_QUEUE && RL_RECORD_RESCAN != SI_USER && RL_RECORD_RESCAN != SI_KERNEL && RL_RECORD_RESCAN > POLL_HUP, "the rescan marker is no si_code");
#ifdef F_SETDELEG
static_assert(RL_F_SETDELEG == F_SETDELEG, "F_SETDELEG");
static_assert(RL_F_GETDELEG == F_GETDELEG, "F_GETDELEG");
#endif
static_assert(RL_F_SETDELEG == RL_F_SETLEASE + 16 && RL_F_GETDELEG == RL_F_SETLEASE + 15, "F_LINUX_SPECIFIC_BASE + 15/16");

// include/uapi/linux/fcntl.h (6.19): struct delegation { __u32 d_flags; __u16 d_type; __u16 __pad; }
struct rl_delegation {
    uint32_t d_flags;
    uint16_t d_type;
    uint16_t pad;
};
static_assert(sizeof(struct rl_delegation) == 8, "struct delegation size");
static_assert(offsetof(struct rl_delegation, d_type) == 4, "struct delegation d_type");

// Records must be written atomically to the pipe, and the reader relies on their size.
static_assert(sizeof(RdmaLeaseSignalRecord) == 16, "record size");
static_assert(sizeof(RdmaLeaseSignalRecord) <= PIPE_BUF, "record fits one atomic pipe write");
// The signal handler uses atomics: they must be lock-free to be async-signal-safe.
static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LONG_LOCK_FREE == 2, "lock-free atomics");

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t s_signo;         // 0 until installed
static int64_t s_owner;                       // the installer's token: one managed copy owns delivery
static int s_pipe[2] = { -1, -1 };
static volatile int s_dropped;                // updated with __atomic builtins

// One slot per signal we handle: the lease-break signal, and SIGIO, which the kernel sends instead when it
// cannot queue the real-time signal (its default action would kill the process).
struct handled_signal {
    volatile sig_atomic_t signo;
    struct sigaction previous;                // the handler we chain to (when chain)
    volatile sig_atomic_t chain;
};
static struct handled_signal s_lease_slot, s_sigio_slot;

static void write_record(int32_t fd, int32_t code)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    RdmaLeaseSignalRecord record = {
        .Fd = fd,
        .Code = code,
        .MonotonicNs = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec,
    };
    ssize_t n;
    do {
        n = write(s_pipe[1], &record, sizeof record);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof record)
        __atomic_add_fetch(&s_dropped, 1, __ATOMIC_RELAXED);   // pipe full (O_NONBLOCK): reader rescans
}

// ---- the mapping guard: the file's pages cut off in the signal handler itself ----------------------------------
// A slot per leased mapping. The handler, for the descriptor a break signal names, asks the kernel (fcntl, which is
// async-signal-safe) whether a break is pending and if so replaces the mapping with a PROT_NONE placeholder at once:
// from then on no ODP access through any region over it reaches the file, however long managed code takes (JIT, GC,
// a stuck thread) to deregister and give the lease back. The state machine keeps the handler from ever touching a
// range after it was disarmed: disarm waits for a handler that is mid-revocation, then frees the slot.
// The state word is (generation << 3) | state: a slot disarmed and re-armed for another lease between the handler's
// look and its compare-and-swap has another generation, so the handler's CAS fails (no ABA).
enum { GUARD_FREE = 0, GUARD_SETUP = 1, GUARD_ARMED = 2, GUARD_REVOKING = 3, GUARD_REVOKED = 4 };
#define GUARD_STATE(word) ((word) & 7)
#define GUARD_WITH(word, state) (((word) & ~7) | (state))
struct guard_slot {
    _Atomic int state;
    int fd;
    int held;                 // RL_F_RDLCK / RL_F_WRLCK
    int delegation;
    void* address;            // the mapping regions are registered over: PROT_NONE placeholder on a break
    void* scratch;            // the application's mapping of the same file (may be NULL): read-write scratch on a break
    size_t length;
};
static struct guard_slot s_guards[RL_GUARD_SLOTS];
static _Atomic int s_guard_high;                  // slots in use so far: the handler scans [0, high)
static _Atomic long s_guard_revocations;

static int pending_type(int fd, int delegation)
{
    if (delegation) {
        struct rl_delegation deleg = { .d_flags = 0, .d_type = RL_F_UNLCK, .pad = 0 };
        return fcntl(fd, RL_F_GETDELEG, &deleg) < 0 ? -1 : deleg.d_type;
    }
    return fcntl(fd, RL_F_GETLEASE);
}

static void guard_on_signal(int fd)
{
    int high = atomic_load_explicit(&s_guard_high, memory_order_acquire);
    for (int i = 0; i < high; i++) {
        struct guard_slot* g = &s_guards[i];
        int word = atomic_load_explicit(&g->state, memory_order_acquire);
        if (GUARD_STATE(word) != GUARD_ARMED || g->fd != fd)
            continue;
        void* address = g->address;
        size_t length = g->length;
        void* scratch = g->scratch;
        int pending = pending_type(fd, g->delegation);
        if (pending < 0 || pending == g->held)
            continue;                              // intact (a spurious signal) or not ours to judge
        int expected = word;
        if (!atomic_compare_exchange_strong(&g->state, &expected, GUARD_WITH(word, GUARD_REVOKING)))
            continue;                              // disarmed (and maybe re-armed: another generation) meanwhile
        if (mmap(address, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
            mprotect(address, length, PROT_NONE);
        // The application's view of the file: readable, writable scratch, so a store through a span taken before the
        // break lands there instead of faulting the process.
        if (scratch != NULL)
            mmap(scratch, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
        atomic_fetch_add(&s_guard_revocations, 1);
        atomic_store_explicit(&g->state, GUARD_WITH(word, GUARD_REVOKED), memory_order_release);
    }
}

int32_t RdmaLeaseNative_LeaseGuardArm(int32_t fd, void* address, void* scratch, uint64_t length, int32_t heldType, int32_t delegation)
{
    if (fd < 0 || address == NULL || length == 0 || (heldType != RL_F_RDLCK && heldType != RL_F_WRLCK)) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < RL_GUARD_SLOTS; i++) {
        struct guard_slot* g = &s_guards[i];
        int word = atomic_load(&g->state);
        if (GUARD_STATE(word) != GUARD_FREE)
            continue;
        int next = GUARD_WITH(word + 8, GUARD_SETUP);   // a new generation
        if (!atomic_compare_exchange_strong(&g->state, &word, next))
            continue;
        g->fd = fd;
        g->held = heldType;
        g->delegation = delegation != 0;
        g->address = address;
        g->scratch = scratch;
        g->length = (size_t)length;
        int high = atomic_load(&s_guard_high);
        while (high < i + 1 && !atomic_compare_exchange_weak(&s_guard_high, &high, i + 1)) {
        }
        atomic_store_explicit(&g->state, GUARD_WITH(next, GUARD_ARMED), memory_order_release);
        return i;
    }
    errno = ENOSPC;
    return -1;
}

int32_t RdmaLeaseNative_LeaseGuardDisarm(int32_t fd, const void* address)
{
    int revoked = 0;
    int high = atomic_load_explicit(&s_guard_high, memory_order_acquire);
    for (int i = 0; i < high; i++) {
        struct guard_slot* g = &s_guards[i];
        for (;;) {
            int word = atomic_load_explicit(&g->state, memory_order_acquire);
            int state = GUARD_STATE(word);
            if (state != GUARD_ARMED && state != GUARD_REVOKING && state != GUARD_REVOKED)
                break;
            if (!((fd >= 0 && g->fd == fd) || (address != NULL && (g->address == address || g->scratch == address))))
                break;
            if (state == GUARD_REVOKING) {
                sched_yield();                     // a handler is replacing the mapping: it finishes in microseconds
                continue;
            }
            if (atomic_compare_exchange_strong(&g->state, &word, GUARD_WITH(word, GUARD_FREE))) {
                revoked |= state == GUARD_REVOKED;
                break;
            }
        }
    }
    return revoked;
}

int32_t RdmaLeaseNative_LeaseGuardIsRevoked(const void* address)
{
    int high = atomic_load_explicit(&s_guard_high, memory_order_acquire);
    for (int i = 0; i < high; i++) {
        struct guard_slot* g = &s_guards[i];
        int state = GUARD_STATE(atomic_load_explicit(&g->state, memory_order_acquire));
        if ((state == GUARD_REVOKING || state == GUARD_REVOKED) && g->address == address)
            return 1;
    }
    return 0;
}

int64_t RdmaLeaseNative_LeaseGuardRevocations(void)
{
    return atomic_load(&s_guard_revocations);
}

static void call_previous(struct handled_signal* slot, int signo, siginfo_t* info, void* context)
{
    if (!slot->chain)
        return;
    if (slot->previous.sa_flags & SA_SIGINFO)
        slot->previous.sa_sigaction(signo, info, context);
    else if (slot->previous.sa_handler != SIG_DFL && slot->previous.sa_handler != SIG_IGN)
        slot->previous.sa_handler(signo);
}

static void lease_signal_handler(int signo, siginfo_t* info, void* context)
{
    int saved_errno = errno;
    if (signo == SIGIO) {
        // The real-time queue overflowed (or someone sent SIGIO): which lease broke is unknown, so rescan all.
        write_record(-1, RL_RECORD_RESCAN);
        call_previous(&s_sigio_slot, signo, info, context);
    } else {
        if (info != NULL && info->si_code == RL_POLL_MSG)
            guard_on_signal(info->si_fd);          // first: the file's pages out of every region's reach
        write_record(info != NULL ? info->si_fd : -1, info != NULL ? info->si_code : 0);
        call_previous(&s_lease_slot, signo, info, context);
    }
    errno = saved_errno;
}

static int is_ours(const struct sigaction* sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == lease_signal_handler;
}

static int is_foreign_handler(const struct sigaction* sa)
{
    if (sa->sa_flags & SA_SIGINFO)
        return sa->sa_sigaction != NULL && sa->sa_sigaction != lease_signal_handler;
    return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN;
}

// Installs lease_signal_handler for slot->signo, chaining `previous` when it is a foreign handler.
// Caller holds s_lock. Returns 0 or -1 with errno set.
static int install_slot(struct handled_signal* slot, int signo, const struct sigaction* previous)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = lease_signal_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    // The handler reads slot->previous: block the signal while the slot changes.
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, signo);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    slot->chain = 0;
    slot->previous = *previous;
    slot->chain = is_foreign_handler(previous);
    slot->signo = signo;
    int r = sigaction(signo, &sa, NULL);
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return r;
}

int32_t RdmaLeaseNative_LeaseSignalInstall(int32_t signo, int32_t flags, int64_t owner, int32_t* chainedPrevious)
{
    if (chainedPrevious != NULL)
        *chainedPrevious = 0;
    if (signo < SIGRTMIN || signo > SIGRTMAX || (flags & ~RL_LEASE_SIGNAL_CHAIN) != 0 || owner == 0) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&s_lock);
    int result = -1;
    if (s_signo != 0) {
        if (s_owner != owner) {
            errno = EEXIST;            // another copy of the managed library delivers breaks in this process
        } else if (s_signo == signo) {
            if (chainedPrevious != NULL)
                *chainedPrevious = s_lease_slot.chain;
            result = 0;
        } else {
            errno = EBUSY;
        }
        goto out;
    }

    struct sigaction previous, previous_io;
    if (sigaction(signo, NULL, &previous) != 0 || sigaction(SIGIO, NULL, &previous_io) != 0)
        goto out;
    if (is_foreign_handler(&previous) && !(flags & RL_LEASE_SIGNAL_CHAIN)) {
        errno = EBUSY;
        goto out;
    }

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        goto out;
    int fl = fcntl(fds[1], F_GETFL);
    if (fl < 0 || fcntl(fds[1], F_SETFL, fl | O_NONBLOCK) != 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        errno = e;
        goto out;
    }
    s_pipe[0] = fds[0];
    s_pipe[1] = fds[1];
    if (install_slot(&s_sigio_slot, SIGIO, &previous_io) != 0 || install_slot(&s_lease_slot, signo, &previous) != 0) {
        int e = errno;
        sigaction(SIGIO, &previous_io, NULL);
        close(fds[0]);
        close(fds[1]);
        s_pipe[0] = s_pipe[1] = -1;
        s_lease_slot.chain = s_sigio_slot.chain = 0;
        errno = e;
        goto out;
    }
    s_signo = signo;
    s_owner = owner;
    if (chainedPrevious != NULL)
        *chainedPrevious = s_lease_slot.chain;
    result = 0;
out:
    pthread_mutex_unlock(&s_lock);
    return result;
}

// Puts our handler back for one slot when someone reset it to SIG_DFL or SIG_IGN. Returns 1 if restored, 0 if it
// is ours or a foreign handler (left alone: it may chain to ours, and chaining it behind ours again would make the two
// call each other for ever; breaks it swallows are found by the managed rescan), -1 on error.
static int verify_slot(struct handled_signal* slot)
{
    struct sigaction current;
    if (sigaction(slot->signo, NULL, &current) != 0)
        return -1;
    if (is_ours(&current) || is_foreign_handler(&current))
        return 0;
    return install_slot(slot, slot->signo, &current) == 0 ? 1 : -1;
}

int32_t RdmaLeaseNative_LeaseSignalVerify(void)
{
    pthread_mutex_lock(&s_lock);
    int32_t result = 0;
    if (s_signo == 0) {
        errno = ENOENT;
        result = -1;
    } else {
        int a = verify_slot(&s_lease_slot), b = verify_slot(&s_sigio_slot);
        result = (a < 0 || b < 0) ? -1 : (a ? RL_RESTORED_LEASE_SIGNAL : 0) | (b ? RL_RESTORED_SIGIO : 0);
    }
    pthread_mutex_unlock(&s_lock);
    return result;
}

int32_t RdmaLeaseNative_LeaseSignalGetSignal(void)
{
    return s_signo;
}

int32_t RdmaLeaseNative_LeaseSignalGetPipe(void)
{
    return s_signo != 0 ? s_pipe[0] : -1;
}

int32_t RdmaLeaseNative_LeaseSignalRead(RdmaLeaseSignalRecord* records, int32_t capacity, int32_t timeoutMs)
{
    if (records == NULL || capacity <= 0) {
        errno = EINVAL;
        return -1;
    }
    int fd = RdmaLeaseNative_LeaseSignalGetPipe();
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    struct pollfd pfd = { .fd = fd, .events = POLLIN, .revents = 0 };
    int ready;
    do {
        ready = poll(&pfd, 1, timeoutMs);
    } while (ready < 0 && errno == EINTR);
    if (ready < 0)
        return -1;
    if (ready == 0)
        return 0;
    size_t want = (size_t)capacity * sizeof *records, got = 0;
    char* p = (char*)records;
    for (;;) {
        ssize_t n = read(fd, p + got, want - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EPIPE;             // we hold the write end: end of file means the pipe is broken
            return -1;
        }
        got += (size_t)n;
        // Each record is one atomic write, so a partial one only means the rest is in flight.
        if (got % sizeof *records == 0)
            return (int32_t)(got / sizeof *records);
    }
}

int32_t RdmaLeaseNative_LeaseSignalTakeDropped(void)
{
    return __atomic_exchange_n(&s_dropped, 0, __ATOMIC_RELAXED);
}

static int32_t fcntl_int(int32_t fd, int cmd, int arg)
{
    int r;
    do {
        r = fcntl(fd, cmd, arg);
    } while (r < 0 && errno == EINTR);
    return r;
}

int32_t RdmaLeaseNative_FcntlSetSig(int32_t fd, int32_t signo)
{
    return fcntl_int(fd, F_SETSIG, signo) < 0 ? -1 : 0;
}

int32_t RdmaLeaseNative_FcntlSetOwn(int32_t fd, int32_t pid)
{
    return fcntl_int(fd, F_SETOWN, pid) < 0 ? -1 : 0;
}

int32_t RdmaLeaseNative_FcntlSetLease(int32_t fd, int32_t type)
{
    return fcntl_int(fd, RL_F_SETLEASE, type) < 0 ? -1 : 0;
}

int32_t RdmaLeaseNative_FcntlGetLease(int32_t fd)
{
    int r;
    do {
        r = fcntl(fd, RL_F_GETLEASE);
    } while (r < 0 && errno == EINTR);
    return r;
}

int32_t RdmaLeaseNative_FcntlSetDeleg(int32_t fd, int32_t type)
{
    struct rl_delegation deleg = { .d_flags = 0, .d_type = (uint16_t)type, .pad = 0 };
    int r;
    do {
        r = fcntl(fd, RL_F_SETDELEG, &deleg);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -1 : 0;
}

int32_t RdmaLeaseNative_FcntlGetDeleg(int32_t fd, int32_t* type)
{
    struct rl_delegation deleg = { .d_flags = 0, .d_type = RL_F_UNLCK, .pad = 0 };
    int r;
    do {
        r = fcntl(fd, RL_F_GETDELEG, &deleg);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -1;
    if (type != NULL)
        *type = deleg.d_type;
    return 0;
}

int64_t RdmaLeaseNative_GetMonotonicNs(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}
