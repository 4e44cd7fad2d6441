using System.Runtime.InteropServices;

namespace RdmaLease.Leases;

internal static partial class Interop
{
    /// <summary>CPU cache write-back (native/dax_flush.c).</summary>
    internal static partial class CacheFlush
    {
        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_GetCpuFlushMethod")]
        internal static partial int GetCpuFlushMethod();

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_FlushCpuCaches")]
        internal static unsafe partial int FlushCpuCaches(void* address, ulong length);
    }
}
