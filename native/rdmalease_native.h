// Shared definitions for librdmalease_native, the C shim of rdma-lease.
// Style (after dotnet/runtime's System.Native): one export per operation, prefixed
// RdmaLeaseNative_, fixed-width types only, each documented with what it shims, what it
// returns and whether it sets errno. Mirrored constants are static_assert'ed in the .c file.
#pragma once

#include <stdint.h>

#define RL_EXPORT __attribute__((visibility("default")))

// Bumped whenever an export changes signature or meaning; the managed side refuses a
// library whose version differs (a stale build would otherwise corrupt memory).
#define RDMALEASE_NATIVE_ABI_VERSION 2

/** Returns RDMALEASE_NATIVE_ABI_VERSION. Never fails; does not touch errno. */
RL_EXPORT int32_t RdmaLeaseNative_GetAbiVersion(void);
