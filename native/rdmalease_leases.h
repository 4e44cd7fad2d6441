// librdmalease_leases: lease, delegation, break-signal, mapping-guard and cache-flush exports
// (lease_signals.c, dax_flush.c). Needs libc only: no libibverbs, so DaxFile and FileLease work on
// a machine without rdma-core. Conventions: rdmalease_native.h. Mirrored constants are
// static_assert'ed in lease_signals.c.
#pragma once

#include <stdint.h>
#include "rdmalease_native.h"

// Bumped whenever an export of librdmalease_leases changes signature or meaning; RdmaLease.Leases
// refuses a library whose version differs (a stale build would otherwise corrupt memory).
#define RDMALEASE_LEASES_ABI_VERSION 1

/** Returns RDMALEASE_LEASES_ABI_VERSION. Never fails; does not touch errno. */
RL_EXPORT int32_t RdmaLeaseNative_GetLeasesAbiVersion(void);

// Mirrors of kernel constants that libc headers may lack (checked where the headers have them).
#define RL_F_RDLCK 0
#define RL_F_WRLCK 1
#define RL_F_UNLCK 2
#define RL_F_SETLEASE 1024        // F_LINUX_SPECIFIC_BASE + 0
#define RL_F_GETLEASE 1025        // F_LINUX_SPECIFIC_BASE + 1
#define RL_F_GETDELEG 1039        // F_LINUX_SPECIFIC_BASE + 15 (Linux 6.19)
#define RL_F_SETDELEG 1040        // F_LINUX_SPECIFIC_BASE + 16 (Linux 6.19)
#define RL_POLL_MSG 3             // si_code of a lease-break signal (kill_fasync(..., POLL_MSG))

// Flags for RdmaLeaseNative_LeaseSignalInstall.
#define RL_LEASE_SIGNAL_CHAIN 1   // keep a handler someone else installed and call it after ours

// RdmaLeaseSignalRecord.Code of a record that names no lease (Fd -1): SIGIO arrived, which the kernel sends when
// it cannot queue the real-time signal; the reader must re-check every lease.
#define RL_RECORD_RESCAN 0x10000   // no si_code has this value (SI_QUEUE is -1, POLL_* are 1..6)

// Bits of RdmaLeaseNative_LeaseSignalVerify's result.
#define RL_RESTORED_LEASE_SIGNAL 1
#define RL_RESTORED_SIGIO 2

/** One lease-break signal as the handler saw it; written to the pipe as one atomic 16-byte record. */
typedef struct RdmaLeaseSignalRecord {
    int32_t Fd;                   // siginfo si_fd: the descriptor whose lease is being broken
    int32_t Code;                 // siginfo si_code: RL_POLL_MSG for a kernel lease break
    int64_t MonotonicNs;          // CLOCK_MONOTONIC when the handler ran
} RdmaLeaseSignalRecord;

/**
 * Installs the process-wide SA_SIGINFO handler for `signo` and for SIGIO (once; a second call with the same
 * signal and owner does nothing and succeeds) and creates the pipe it writes RdmaLeaseSignalRecords to.
 * Must run before the first F_SETSIG with `signo`: an unhandled real-time signal kills the process.
 * SIGIO is what the kernel sends when it cannot queue the real-time signal; its default action kills the
 * process, so it is handled too and written as a record with Fd -1 and Code RL_RECORD_RESCAN. A foreign SIGIO
 * handler is kept and chained. If another handler (not SIG_DFL/SIG_IGN) is already installed for `signo`,
 * the call fails with EBUSY unless `flags` has RL_LEASE_SIGNAL_CHAIN, in which case that handler is kept
 * and called after ours for every delivery; `*chainedPrevious` (may be NULL) is set to 1 then, 0 otherwise.
 * `owner` (not 0) identifies the caller: one copy of the managed library (one AssemblyLoadContext) owns the
 * pipe; a call with another owner fails with EEXIST.
 * Returns 0, or -1 with errno set (EINVAL: bad signal or owner 0; EBUSY: a different signal is already
 * installed, or a foreign handler without RL_LEASE_SIGNAL_CHAIN; EEXIST: another owner; pipe2/sigaction errors).
 */
RL_EXPORT int32_t RdmaLeaseNative_LeaseSignalInstall(int32_t signo, int32_t flags, int64_t owner, int32_t* chainedPrevious);

/**
 * Checks the handlers for the lease signal and SIGIO: one that was reset to SIG_DFL or SIG_IGN is put back. A
 * handler another component installed over ours is left alone (it may chain to ours; putting ours in front of it
 * again could make the two call each other without end). Returns a mask of RL_RESTORED_LEASE_SIGNAL /
 * RL_RESTORED_SIGIO for what was restored (0: nothing to restore), or -1 with errno set (ENOENT: not installed;
 * sigaction errors).
 */
RL_EXPORT int32_t RdmaLeaseNative_LeaseSignalVerify(void);

// Mapping guards (RdmaLeaseNative_LeaseGuardArm): at most this many leased mappings at once are guarded.
#define RL_GUARD_SLOTS 4096

/**
 * Arms the mapping guard for a leased file: when a lease-break signal (si_code POLL_MSG) names `fd` and
 * F_GETLEASE/F_GETDELEG (`delegation`) no longer reports `heldType`, the signal handler itself replaces
 * [address, address + length) — the mapping memory regions are registered over — with an anonymous PROT_NONE
 * placeholder (MAP_FIXED; mprotect PROT_NONE if that fails), and [scratch, scratch + length) — the application's
 * mapping of the same file, if not NULL — with anonymous read-write memory, before anything else runs. Returns
 * the slot number, or -1 with errno set (EINVAL; ENOSPC: all RL_GUARD_SLOTS in use). The caller must disarm
 * before it unmaps either range or closes the descriptor.
 */
RL_EXPORT int32_t RdmaLeaseNative_LeaseGuardArm(int32_t fd, void* address, void* scratch, uint64_t length, int32_t heldType, int32_t delegation);

/** 1 when the guard armed over `address` has replaced (or is replacing) the mapping, else 0. Never sets errno. */
RL_EXPORT int32_t RdmaLeaseNative_LeaseGuardIsRevoked(const void* address);

/**
 * Disarms every guard on `fd` (if >= 0) or whose mapping or scratch is `address` (if not NULL), waiting for a handler that is replacing
 * the mapping at that moment. Returns 1 if a handler had replaced the mapping of a disarmed guard, else 0.
 * Afterwards no handler touches those ranges. Never sets errno.
 */
RL_EXPORT int32_t RdmaLeaseNative_LeaseGuardDisarm(int32_t fd, const void* address);

/** How many mappings the signal handler has replaced so far. Never sets errno. */
RL_EXPORT int64_t RdmaLeaseNative_LeaseGuardRevocations(void);

/** The installed signal number, or 0 before RdmaLeaseNative_LeaseSignalInstall. Never sets errno. */
RL_EXPORT int32_t RdmaLeaseNative_LeaseSignalGetSignal(void);

/** The read end of the handler's pipe (O_CLOEXEC, blocking), or -1 when not installed. Never sets errno. */
RL_EXPORT int32_t RdmaLeaseNative_LeaseSignalGetPipe(void);

/**
 * Waits up to `timeoutMs` (-1: for ever) until at least one record is in the pipe (poll(2)), then copies up to
 * `capacity` whole records into `records` (read(2) on the pipe, EINTR retried). Returns the number of
 * records, 0 when the time ran out, or -1 with errno set (EPIPE: the pipe is broken).
 */
RL_EXPORT int32_t RdmaLeaseNative_LeaseSignalRead(RdmaLeaseSignalRecord* records, int32_t capacity, int32_t timeoutMs);

/**
 * How many records the handler dropped because the pipe was full since the last call (the
 * count is reset). The reader must then re-check every lease with F_GETLEASE/F_GETDELEG.
 * Never sets errno.
 */
RL_EXPORT int32_t RdmaLeaseNative_LeaseSignalTakeDropped(void);

/** fcntl(fd, F_SETSIG, signo), EINTR retried. Returns 0, or -1 with errno set. */
RL_EXPORT int32_t RdmaLeaseNative_FcntlSetSig(int32_t fd, int32_t signo);

/** fcntl(fd, F_SETOWN, pid), EINTR retried. Returns 0, or -1 with errno set. */
RL_EXPORT int32_t RdmaLeaseNative_FcntlSetOwn(int32_t fd, int32_t pid);

/** fcntl(fd, F_SETLEASE, type) with type RL_F_RDLCK/WRLCK/UNLCK, EINTR retried. Returns 0, or -1 with errno set. */
RL_EXPORT int32_t RdmaLeaseNative_FcntlSetLease(int32_t fd, int32_t type);

/**
 * fcntl(fd, F_GETLEASE): the lease type this open file holds, or the type a pending break
 * will leave it with (RL_F_UNLCK while a break to nothing is pending, RL_F_RDLCK while a
 * downgrade is pending); RL_F_UNLCK when it holds no lease. Returns that, or -1 with errno set.
 */
RL_EXPORT int32_t RdmaLeaseNative_FcntlGetLease(int32_t fd);

/**
 * fcntl(fd, F_SETDELEG, &(struct delegation){ .d_flags = 0, .d_type = type }), EINTR retried.
 * Returns 0, or -1 with errno set; EINVAL means the kernel has no F_SETDELEG (before 6.19) or
 * the file cannot carry one.
 */
RL_EXPORT int32_t RdmaLeaseNative_FcntlSetDeleg(int32_t fd, int32_t type);

/**
 * fcntl(fd, F_GETDELEG, &deleg): stores the delegation type (same meaning as F_GETLEASE's
 * result, for delegations only) in `*type`. Returns 0, or -1 with errno set (EINVAL: no F_GETDELEG).
 */
RL_EXPORT int32_t RdmaLeaseNative_FcntlGetDeleg(int32_t fd, int32_t* type);

/** clock_gettime(CLOCK_MONOTONIC) in nanoseconds (the clock the handler stamps records with). */
RL_EXPORT int64_t RdmaLeaseNative_GetMonotonicNs(void);

// Cache-flush methods, best first.
#define RL_FLUSH_CLWB 1
#define RL_FLUSH_CLFLUSHOPT 2
#define RL_FLUSH_CLFLUSH 3

/**
 * Which instruction RdmaLeaseNative_FlushCpuCaches uses on this CPU (cpuid leaf 7):
 * RL_FLUSH_CLWB, RL_FLUSH_CLFLUSHOPT or RL_FLUSH_CLFLUSH. Never sets errno.
 */
RL_EXPORT int32_t RdmaLeaseNative_GetCpuFlushMethod(void);

/**
 * Writes back every CPU cache line overlapping [address, address + length) with the best
 * instruction the CPU has, then executes sfence. On a MAP_SYNC mapping of an FS-DAX file this
 * makes the stores durable (on platforms whose persistence domain includes the memory
 * controller, ADR). Returns the method used. Never fails; does not touch errno.
 */
RL_EXPORT int32_t RdmaLeaseNative_FlushCpuCaches(const void* address, uint64_t length);
