using System.Runtime.InteropServices;

namespace RdmaLease.Leases;

internal static partial class Interop
{
    /// <summary>One export per fcntl command used for leases and delegations (native/lease_signals.c).</summary>
    internal static partial class Fcntl
    {
        /// <summary>F_SETDELEG (F_LINUX_SPECIFIC_BASE + 16, Linux 6.19); the shim passes struct delegation.</summary>
        internal const int F_SETDELEG = 1040;

        /// <summary>F_GETDELEG (F_LINUX_SPECIFIC_BASE + 15, Linux 6.19).</summary>
        internal const int F_GETDELEG = 1039;

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_FcntlSetSig", SetLastError = true)]
        internal static partial int SetSig(int fd, int signo);

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_FcntlSetOwn", SetLastError = true)]
        internal static partial int SetOwn(int fd, int pid);

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_FcntlSetLease", SetLastError = true)]
        internal static partial int SetLease(int fd, int type);

        /// <summary>The held or pending-break lease type, or -1 (errno set).</summary>
        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_FcntlGetLease", SetLastError = true)]
        internal static partial int GetLease(int fd);

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_FcntlSetDeleg", SetLastError = true)]
        internal static partial int SetDeleg(int fd, int type);

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_FcntlGetDeleg", SetLastError = true)]
        internal static partial int GetDeleg(int fd, out int type);
    }
}
