using System.Runtime.InteropServices;

namespace RdmaLease.Leases;

internal static partial class Interop
{
    /// <summary>The mapping guard of native/lease_signals.c: the signal handler cuts a broken lease's file mapping off.</summary>
    internal static partial class LeaseGuard
    {
        /// <summary>Arms the guard for a leased mapping; the slot, or -1 (errno: EINVAL, ENOSPC).</summary>
        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseGuardArm", SetLastError = true)]
        internal static unsafe partial int Arm(int fd, void* address, void* scratch, ulong length, int heldType, int delegation);

        /// <summary>1 when the guard over <paramref name="address"/> has replaced the mapping.</summary>
        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseGuardIsRevoked")]
        [SuppressGCTransition]
        internal static unsafe partial int IsRevoked(void* address);

        /// <summary>Disarms the guards on <paramref name="fd"/> (or -1) or <paramref name="address"/> (or null); 1 if a handler had replaced the mapping.</summary>
        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseGuardDisarm")]
        internal static unsafe partial int Disarm(int fd, void* address);

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseGuardRevocations")]
        internal static partial long Revocations();
    }
}
