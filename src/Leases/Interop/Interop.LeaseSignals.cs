using System.Runtime.InteropServices;

namespace RdmaLease.Leases;

internal static partial class Interop
{
    /// <summary>The lease-break signal handler of native/lease_signals.c (see native/rdmalease_leases.h).</summary>
    internal static partial class LeaseSignals
    {
        /// <summary>RL_LEASE_SIGNAL_CHAIN: keep a foreign handler for the signal and call it after ours.</summary>
        internal const int Chain = 1;

        /// <summary>RL_POLL_MSG: the si_code of a kernel lease-break signal.</summary>
        internal const int PollMsg = 3;

        /// <summary>RdmaLeaseSignalRecord: one signal as the handler saw it.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct Record
        {
            internal int Fd;
            internal int Code;
            internal long MonotonicNs;
        }

        [LibraryImport(Libraries.RdmaLeaseNative, EntryPoint = "RdmaLeaseNative_LeaseSignalInstall", SetLastError = true)]
        internal static unsafe partial int Install(int signo, int flags, int* chainedPrevious);

        [LibraryImport(Libraries.RdmaLeaseNative, EntryPoint = "RdmaLeaseNative_LeaseSignalGetSignal")]
        internal static partial int GetSignal();

        [LibraryImport(Libraries.RdmaLeaseNative, EntryPoint = "RdmaLeaseNative_LeaseSignalGetPipe")]
        internal static partial int GetPipe();

        [LibraryImport(Libraries.RdmaLeaseNative, EntryPoint = "RdmaLeaseNative_LeaseSignalRead", SetLastError = true)]
        internal static unsafe partial int Read(Record* records, int capacity);

        [LibraryImport(Libraries.RdmaLeaseNative, EntryPoint = "RdmaLeaseNative_LeaseSignalTakeDropped")]
        internal static partial int TakeDropped();

        [LibraryImport(Libraries.RdmaLeaseNative, EntryPoint = "RdmaLeaseNative_GetMonotonicNs")]
        internal static partial long GetMonotonicNs();
    }
}
