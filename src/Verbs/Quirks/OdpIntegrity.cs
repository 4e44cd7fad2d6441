using System.Globalization;

namespace RdmaLease.Verbs;

/// <summary>One kind of transfer the ODP integrity probe checks (the ODP region's role in it).</summary>
public enum OdpIntegrityOperation
{
    /// <summary>RDMA WRITE from a pinned buffer into the ODP region (the ODP region is the responder's).</summary>
    WriteInto,
    /// <summary>RDMA READ out of the ODP region into a pinned buffer (the ODP region is the responder's).</summary>
    ReadOutOf,
    /// <summary>RDMA WRITE whose source is the ODP region (the ODP region is the requester's).</summary>
    WriteFrom,
    /// <summary>RDMA READ whose destination is the ODP region (the ODP region is the requester's).</summary>
    ReadInto,
    /// <summary>SEND from a pinned buffer into a receive buffer inside the ODP region.</summary>
    SendInto,
    /// <summary>SEND whose data is in the ODP region, received into a pinned buffer.</summary>
    SendFrom,
}

/// <summary>One transfer the probe made and what it found.</summary>
/// <param name="Operation">What moved where.</param>
/// <param name="Offset">Offset of the transfer in the ODP region (0 is page-aligned; the other offset starts mid-page and crosses a page boundary).</param>
/// <param name="Length">Bytes moved.</param>
/// <param name="WorkRequests">Work requests (or messages, for SEND) it was split into: 1 for the multi-packet check.</param>
/// <param name="WrongBytes">Bytes of the whole window (the transfer and the bytes around it) that were not what they must be.</param>
/// <param name="FirstWrong">Offset of the first wrong byte in the ODP region, -1 if none.</param>
/// <param name="Error">A failed or missing completion, else null.</param>
public sealed record OdpIntegrityCheck(OdpIntegrityOperation Operation, int Offset, int Length, int WorkRequests, int WrongBytes, int FirstWrong, string? Error)
{
    /// <summary>True when every byte was right and every completion succeeded.</summary>
    public bool Passed => WrongBytes == 0 && Error == null;

    /// <inheritdoc/>
    public override string ToString()
    {
        string outcome = Error != null ? "ERROR " + Error
            : WrongBytes == 0 ? "ok"
            : string.Create(CultureInfo.InvariantCulture, $"CORRUPT, {WrongBytes} bytes wrong, first at {FirstWrong}");
        return string.Create(CultureInfo.InvariantCulture, $"{Operation,-9} offset {Offset,4} length {Length,6} in {WorkRequests,2} request(s): {outcome}");
    }
}

/// <summary>
/// What the ODP integrity probe found for one device at one path MTU: the largest transfer one work request
/// may move into or out of an On-Demand-Paging region and arrive intact (see docs/known-defects.md).
/// </summary>
/// <param name="DeviceName">The device probed.</param>
/// <param name="KernelRelease">The running kernel (<c>uname -r</c>) when it was probed.</param>
/// <param name="PathMtu">The path MTU of the probe's queue pairs.</param>
/// <param name="MaxSafeTransfer">Largest safe transfer per work request: <see cref="Unlimited"/> when multi-packet
/// transfers were correct, the path MTU when only single-packet ones were, 0 when even those were not.</param>
/// <param name="RequiredAlignment">The alignment the ODP-side address of a transfer needs for that to hold: 1 when any
/// address is fine, the page size when only transfers starting on a page boundary arrived intact (rxe on Debian 7.3.4
/// drops the in-page offset of ODP addresses). A split transfer's pieces must each start so aligned.</param>
/// <param name="TestedAt">When the probe ran.</param>
/// <param name="Checks">Every transfer it made.</param>
public sealed record OdpIntegrityResult(string DeviceName, string KernelRelease, Mtu PathMtu, uint MaxSafeTransfer,
    uint RequiredAlignment, DateTimeOffset TestedAt, IReadOnlyList<OdpIntegrityCheck> Checks)
{
    /// <summary>The value of <see cref="MaxSafeTransfer"/> when any size is safe.</summary>
    public const uint Unlimited = uint.MaxValue;

    /// <summary>True when multi-packet transfers to and from ODP regions are correct: nothing is split.</summary>
    public bool IsUnlimited => MaxSafeTransfer == Unlimited;

    /// <summary>True when transfers of any size at any address were correct: ODP needs no protection here.</summary>
    public bool IsSound => MaxSafeTransfer == Unlimited && RequiredAlignment <= 1;

    /// <summary>True when not even single-packet transfers were correct: ODP regions must not be used.</summary>
    public bool IsUnsafe => MaxSafeTransfer == 0;

    /// <summary>One line for people, e.g. "rxelo at path MTU 1024: ODP safe up to 1024 bytes per work request".</summary>
    public string Verdict => Describe(DeviceName, PathMtu, MaxSafeTransfer, RequiredAlignment);

    internal static string Describe(string device, Mtu pathMtu, uint maxSafeTransfer, uint requiredAlignment)
    {
        string size = maxSafeTransfer == Unlimited ? "ODP safe for any transfer size"
            : maxSafeTransfer == 0 ? "ODP UNSAFE (even single-packet transfers were wrong)"
            : string.Create(CultureInfo.InvariantCulture, $"ODP safe up to {maxSafeTransfer} bytes per work request (multi-packet transfers corrupt)");
        string align = maxSafeTransfer == 0 || requiredAlignment <= 1 ? ""
            : string.Create(CultureInfo.InvariantCulture, $", only at {requiredAlignment}-byte aligned ODP addresses (unaligned ones land at the page start)");
        return string.Create(CultureInfo.InvariantCulture, $"{device} at path MTU {pathMtu.Bytes()}: {size}{align}");
    }

    /// <inheritdoc/>
    public override string ToString() => Verdict;
}
