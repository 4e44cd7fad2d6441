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

        /// <summary>RL_RECORD_RESCAN: a record naming no lease (SIGIO: the real-time queue overflowed); re-check every lease.</summary>
        internal const int RescanCode = 0x10000;

        /// <summary>RL_RESTORED_LEASE_SIGNAL / RL_RESTORED_SIGIO: what <see cref="Verify"/> put back.</summary>
        internal const int RestoredLeaseSignal = 1, RestoredSigio = 2;

        /// <summary>RdmaLeaseSignalRecord: one signal as the handler saw it.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct Record
        {
            internal int Fd;
            internal int Code;
            internal long MonotonicNs;
        }

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseSignalInstall", SetLastError = true)]
        internal static unsafe partial int Install(int signo, int flags, long owner, int* chainedPrevious);

        /// <summary>Puts our handlers back where another component replaced them; a mask of what was restored, or -1.</summary>
        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseSignalVerify", SetLastError = true)]
        internal static partial int Verify();

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseSignalGetSignal")]
        internal static partial int GetSignal();

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseSignalGetPipe")]
        internal static partial int GetPipe();

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseSignalRead", SetLastError = true)]
        internal static unsafe partial int Read(Record* records, int capacity, int timeoutMs);

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_LeaseSignalTakeDropped")]
        internal static partial int TakeDropped();

        [LibraryImport(Libraries.RdmaLeaseLeases, EntryPoint = "RdmaLeaseNative_GetMonotonicNs")]
        internal static partial long GetMonotonicNs();
    }
}
