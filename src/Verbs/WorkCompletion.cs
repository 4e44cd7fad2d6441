using System.Runtime.InteropServices;

namespace RdmaLease.Verbs;

/// <summary>
/// One work completion. Its layout is <c>struct ibv_wc</c> itself (checked by the layout
/// conformance test), so <see cref="CompletionQueue.Poll"/> writes completions straight into
/// the caller's span with no copy and no allocation.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public readonly struct WorkCompletion
{
    readonly ulong _wrId;
    readonly int _status;
    readonly int _opcode;
    readonly uint _vendorError;
    readonly uint _byteLength;
    readonly uint _immediateOrInvalidatedRkey;   // __be32 imm_data / invalidated_rkey
    readonly uint _qpNumber;
    readonly uint _sourceQp;
    readonly uint _flags;
    readonly ushort _pkeyIndex;
    readonly ushort _slid;
    readonly byte _sl;
    readonly byte _dlidPathBits;

    const uint WithGrh = 1 << 0;          // IBV_WC_GRH
    const uint WithImmediate = 1 << 1;    // IBV_WC_WITH_IMM
    const uint WithInvalidate = 1 << 3;   // IBV_WC_WITH_INV

    /// <summary>The id the work request was posted with.</summary>
    public ulong WorkRequestId => _wrId;
    /// <summary>Success, or what went wrong.</summary>
    public WorkCompletionStatus Status => (WorkCompletionStatus)_status;
    /// <summary>What completed. Only meaningful when <see cref="Status"/> is Success.</summary>
    public WorkCompletionOpcode Opcode => (WorkCompletionOpcode)_opcode;
    /// <summary>Bytes received (receives) or transferred (RDMA READ).</summary>
    public uint ByteLength => _byteLength;
    /// <summary>The QP the work request belonged to.</summary>
    public uint QueuePairNumber => _qpNumber;
    /// <summary>For UD receives: the sending QP.</summary>
    public uint SourceQueuePair => _sourceQp;
    /// <summary>Vendor error syndrome, for diagnostics.</summary>
    public uint VendorError => _vendorError;
    /// <summary>True when the completion carries immediate data.</summary>
    public bool HasImmediate => (_flags & WithImmediate) != 0;
    /// <summary>The immediate data, host order, when <see cref="HasImmediate"/>.</summary>
    public uint Immediate => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(_immediateOrInvalidatedRkey);
    /// <summary>True for a receive of a SEND with invalidate: the sender revoked the memory window (or region) whose
    /// rkey is <see cref="InvalidatedRemoteKey"/>.</summary>
    public bool HasInvalidatedRemoteKey => (_flags & WithInvalidate) != 0;
    /// <summary>The rkey a SEND with invalidate revoked, when <see cref="HasInvalidatedRemoteKey"/>.</summary>
    public uint InvalidatedRemoteKey => HasInvalidatedRemoteKey ? _immediateOrInvalidatedRkey : 0;
    /// <summary>UD receives: the message came with a Global Route Header, in the first 40 bytes of the receive buffer
    /// (always on RoCE).</summary>
    public bool HasGlobalRouteHeader => (_flags & WithGrh) != 0;
    /// <summary>UD receives: the service level the message was sent with.</summary>
    public byte ServiceLevel => _sl;
    /// <summary>UD receives: the sender's LID (0 on RoCE, where the GRH identifies the sender).</summary>
    public ushort SourceLid => _slid;
    /// <summary>True for a successful completion.</summary>
    public bool IsSuccess => _status == 0;

    /// <summary>The library's description of the status (ibv_wc_status_str).</summary>
    public string StatusDescription => Describe(Status);

    /// <summary>Throws <see cref="WorkCompletionException"/> unless the status is Success.</summary>
    public void ThrowIfFailed()
    {
        if (_status != 0)
            throw new WorkCompletionException(this);
    }

    internal static unsafe string Describe(WorkCompletionStatus status) =>
        Marshal.PtrToStringUTF8((nint)Interop.libibverbs.ibv_wc_status_str((Interop.ibv_wc_status)status)) ?? status.ToString();

    /// <inheritdoc/>
    public override string ToString() => IsSuccess
        ? $"wr {_wrId}: {Opcode}, {ByteLength} bytes, QP {QueuePairNumber}"
        : $"wr {_wrId}: {Status} ({StatusDescription}), vendor error 0x{VendorError:x}, QP {QueuePairNumber}";
}

/// <summary>A work request completed with an error status.</summary>
public sealed class WorkCompletionException : Exception
{
    /// <summary>The failed completion.</summary>
    public WorkCompletion Completion { get; }
    /// <summary>Its status.</summary>
    public WorkCompletionStatus Status => Completion.Status;

    /// <summary>Creates the exception for <paramref name="completion"/>.</summary>
    public WorkCompletionException(WorkCompletion completion)
        : base($"Work request {completion.WorkRequestId} on QP {completion.QueuePairNumber} failed: {completion.Status} ({completion.StatusDescription}); vendor error 0x{completion.VendorError:x}.")
    {
        Completion = completion;
    }
}
