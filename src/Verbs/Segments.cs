using System.Buffers.Binary;

namespace RdmaLease.Verbs;

/// <summary>
/// A range of a local memory region used as a work request's data: the scatter/gather
/// entry (address, length, lkey) of a post. Keeps the region so posting can check it is
/// still registered.
/// </summary>
/// <param name="Region">The registered region.</param>
/// <param name="Offset">Offset of the first byte from the region's start.</param>
/// <param name="Length">Bytes: the one 32-bit length of the library, as verbs' <c>sge.length</c> (one work request moves at
/// most <see cref="uint.MaxValue"/> bytes); the region's own offsets and lengths are <c>ulong</c>.</param>
public readonly record struct LocalSegment(MemoryRegion Region, ulong Offset, uint Length)
{
    /// <summary>The address of the first byte in this process.</summary>
    public ulong Address => Region.Address + Offset;
}

/// <summary>
/// What a peer needs to reach one of our regions (or we one of theirs): the address peers use
/// (IOVA), the length and the rkey, plus the largest transfer one work request may move into or
/// out of it (0: no limit) so that both sides split transfers the device cannot move correctly
/// (see docs/known-defects.md), and the alignment every transfer's start address must have there.
/// </summary>
/// <param name="Address">The region's first byte as the peer addresses it.</param>
/// <param name="Length">Bytes.</param>
/// <param name="RemoteKey">The rkey.</param>
/// <param name="MaxTransferPerRequest">Largest safe transfer per work request, 0 when unlimited.</param>
/// <param name="RequiredAlignment">Alignment every transfer's remote start address needs (0 or 1: none). On rxe's ODP
/// data path, data for a mid-page address lands at the page start, so ODP regions there advertise the page size.</param>
public readonly record struct RemoteRegion(ulong Address, ulong Length, uint RemoteKey, uint MaxTransferPerRequest = 0, uint RequiredAlignment = 0)
{
    /// <summary>Size of <see cref="Encode"/>'s encoding.</summary>
    public const int EncodedLength = 28;

    /// <summary>
    /// Writes the region for out-of-band exchange: address, length, rkey, transfer limit and alignment, in that order,
    /// big-endian (network byte order, as every wire encoding of the library).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than <see cref="EncodedLength"/>.</exception>
    public void Encode(Span<byte> destination)
    {
        if (destination.Length < EncodedLength)
            throw new ArgumentException($"needs {EncodedLength} bytes, got {destination.Length}", nameof(destination));
        BinaryPrimitives.WriteUInt64BigEndian(destination, Address);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Length);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], RemoteKey);
        BinaryPrimitives.WriteUInt32BigEndian(destination[20..], MaxTransferPerRequest);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..], RequiredAlignment);
    }

    /// <summary>Reads what <see cref="Encode"/> wrote.</summary>
    /// <exception cref="ArgumentException"><paramref name="source"/> is shorter than <see cref="EncodedLength"/>.</exception>
    /// <exception cref="FormatException">The region would end past the 64-bit address space (no region can).</exception>
    public static RemoteRegion Decode(ReadOnlySpan<byte> source)
    {
        if (source.Length < EncodedLength)
            throw new ArgumentException($"needs {EncodedLength} bytes, got {source.Length}", nameof(source));
        ulong address = BinaryPrimitives.ReadUInt64BigEndian(source), length = BinaryPrimitives.ReadUInt64BigEndian(source[8..]);
        if (length != 0 && length - 1 > ulong.MaxValue - address)
            throw new FormatException($"the encoded region 0x{address:x}+{length} ends past the 64-bit address space: not a region Encode wrote");
        return new(address, length, BinaryPrimitives.ReadUInt32BigEndian(source[16..]), BinaryPrimitives.ReadUInt32BigEndian(source[20..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[24..]));
    }

    internal void CheckRange(ulong offset, ulong length)
    {
        if (RequiredAlignment > 1 && (Address + offset) % RequiredAlignment != 0)
            throw new ArgumentException(
                $"remote address 0x{Address + offset:x} is not {RequiredAlignment}-byte aligned, which this region requires: it is an On-Demand-Paging " +
                "region on a device that places data for mid-page addresses at the page start (see docs/known-defects.md).", nameof(offset));
        if (offset > Length || length > Length - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) is outside the remote region of {Length} bytes.");
    }
}
