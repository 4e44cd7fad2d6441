// Conventions shared by rdma-lease's two native libraries, which are split by what they depend on
// (as dotnet/runtime keeps libSystem.Native apart from the shims that need OpenSSL):
//   librdmalease_leases.so  leases, break signals, the mapping guard, DAX cache flush: libc only
//                           (rdmalease_leases.h; used by RdmaLease.Leases)
//   librdmalease_verbs.so   libibverbs' static inline verbs: DT_NEEDED libibverbs.so.1
//                           (rdmalease_verbs.h; used by RdmaLease.Verbs)
// Style (after dotnet/runtime's System.Native): one export per operation, prefixed
// RdmaLeaseNative_, fixed-width types only, each documented with what it shims, what it
// returns and whether it sets errno. Mirrored constants are static_assert'ed in the .c file.
// Each library has its own ABI version export, which the managed side checks when it loads it.
#pragma once

#include <stdint.h>

#define RL_EXPORT __attribute__((visibility("default")))
