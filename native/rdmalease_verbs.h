// librdmalease_verbs: exports for libibverbs' static inline verbs (verbs.c). Conventions: rdmalease_native.h.
#pragma once

#include "rdmalease_native.h"

// Bumped whenever an export of librdmalease_verbs changes signature or meaning; RdmaLease.Verbs
// refuses a library whose version differs (a stale build would otherwise corrupt memory).
#define RDMALEASE_VERBS_ABI_VERSION 1

/** Returns RDMALEASE_VERBS_ABI_VERSION. Never fails; does not touch errno. */
RL_EXPORT int32_t RdmaLeaseNative_GetVerbsAbiVersion(void);
