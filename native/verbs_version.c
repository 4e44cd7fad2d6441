#include "rdmalease_verbs.h"

int32_t RdmaLeaseNative_GetVerbsAbiVersion(void)
{
    return RDMALEASE_VERBS_ABI_VERSION;
}
