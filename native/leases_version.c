#include "rdmalease_leases.h"

int32_t RdmaLeaseNative_GetLeasesAbiVersion(void)
{
    return RDMALEASE_LEASES_ABI_VERSION;
}
