using System.Runtime.CompilerServices;
using RdmaLease.Interop;

namespace RdmaLease.Leases;

internal static partial class Interop
{
    internal static class Libraries
    {
        /// <summary>
        /// librdmalease_leases (native/lease_signals.c, dax_flush.c): libc only, so DAX files and leases load on a
        /// machine without rdma-core. Loaded through the one resolver of <see cref="NativeLibraries"/>.
        /// </summary>
        internal const string RdmaLeaseLeases = NativeLibraries.LeasesShim;

        /// <summary>The ABI version of native/rdmalease_leases.h (RDMALEASE_LEASES_ABI_VERSION) this assembly was built against.</summary>
        internal const int ExpectedAbiVersion = 1;

        internal static readonly NativeLibraries.LibraryInfo Info =
            NativeLibraries.Shim(RdmaLeaseLeases, typeof(Interop).Assembly, "RdmaLeaseNative_GetLeasesAbiVersion", ExpectedAbiVersion);

        [ModuleInitializer]
        [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255",
            Justification = "The resolver must be in place before any LibraryImport of this assembly binds, whoever calls first.")]
        internal static void Register() => NativeLibraries.RegisterResolver(typeof(Interop).Assembly, Info);
    }

    /// <summary>
    /// Loads librdmalease_leases now and checks its ABI version, or throws <see cref="RdmaLibraryNotFoundException"/>
    /// saying what is wrong (missing beside the application, or from another build).
    /// </summary>
    internal static void EnsureNativeAbi() => NativeLibraries.Load(Libraries.Info);
}
