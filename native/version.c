#include "rdmalease_native.h"

int32_t RdmaLeaseNative_GetAbiVersion(void)
{
    return RDMALEASE_NATIVE_ABI_VERSION;
}
