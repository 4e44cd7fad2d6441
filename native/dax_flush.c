// CPU cache write-back for durability of stores through a MAP_SYNC mapping of an FS-DAX file.
// The instructions are emitted as raw encodings (the PMDK way), so no -mclwb is needed and the
// library still loads on CPUs without them: the choice is made once from cpuid.
#include <cpuid.h>
#include <stdint.h>

#include "rdmalease_leases.h"

static int32_t s_method;        // 0 = not yet probed
static uintptr_t s_line = 64;

static int32_t probe(void)
{
    unsigned a, b, c, d;
    int32_t method = RL_FLUSH_CLFLUSH;
    if (__get_cpuid(1, &a, &b, &c, &d) && ((b >> 8) & 0xff) != 0)
        s_line = ((b >> 8) & 0xff) * 8;                  // CLFLUSH line size, in 8-byte units
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        if (b & (1u << 24))
            method = RL_FLUSH_CLWB;
        else if (b & (1u << 23))
            method = RL_FLUSH_CLFLUSHOPT;
    }
    __atomic_store_n(&s_method, method, __ATOMIC_RELEASE);
    return method;
}

int32_t RdmaLeaseNative_GetCpuFlushMethod(void)
{
    int32_t m = __atomic_load_n(&s_method, __ATOMIC_ACQUIRE);
    return m != 0 ? m : probe();
}

int32_t RdmaLeaseNative_FlushCpuCaches(const void* address, uint64_t length)
{
    int32_t method = RdmaLeaseNative_GetCpuFlushMethod();
    if (length == 0) {
        __asm__ volatile("sfence" ::: "memory");
        return method;
    }
    uintptr_t p = (uintptr_t)address & ~(s_line - 1);
    uintptr_t end = (uintptr_t)address + length;
    for (; p < end; p += s_line) {
        char* line = (char*)p;
        switch (method) {
        case RL_FLUSH_CLWB:        // 66 0F AE /6
            __asm__ volatile(".byte 0x66; xsaveopt %0" : "+m"(*line));
            break;
        case RL_FLUSH_CLFLUSHOPT:  // 66 0F AE /7
            __asm__ volatile(".byte 0x66; clflush %0" : "+m"(*line));
            break;
        default:                   // 0F AE /7 (ordered by itself)
            __asm__ volatile("clflush %0" : "+m"(*line));
            break;
        }
    }
    __asm__ volatile("sfence" ::: "memory");
    return method;
}
