using System.Buffers.Binary;
using System.IO.Hashing;

namespace RdmaLease.PmemStore;

/// <summary>
/// One record per 4 KiB page: one packet at path MTU 4096, page-aligned (rxe's ODP defect, docs/known-defects.md).
/// Layout (little endian): magic "PMR1", client id u32, sequence u64, payload length u32, CRC-32 u32 (of bytes 0..20
/// and the payload), then the payload. Record <c>s</c> of client <c>c</c> lives at <c>c * areaBytes + s * 4096</c>.
/// </summary>
internal static class RecordFormat
{
    public const int Size = 4096;
    public const int HeaderSize = 24;
    public const int MaxPayload = Size - HeaderSize;
    public const uint Magic = 0x31524D50;   // "PMR1"

    /// <summary>Writes record <paramref name="sequence"/> of <paramref name="clientId"/> (payload derived from both).</summary>
    public static void Write(Span<byte> page, uint clientId, ulong sequence)
    {
        if (page.Length != Size)
            throw new ArgumentException($"a record is exactly {Size} bytes, got {page.Length}", nameof(page));
        page.Clear();
        int length = 64 + (int)((sequence * 37 + clientId * 101) % (MaxPayload - 64 + 1));
        BinaryPrimitives.WriteUInt32LittleEndian(page, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(page[4..], clientId);
        BinaryPrimitives.WriteUInt64LittleEndian(page[8..], sequence);
        BinaryPrimitives.WriteUInt32LittleEndian(page[16..], (uint)length);
        var payload = page.Slice(HeaderSize, length);
        for (int i = 0; i < payload.Length; i++)
            payload[i] = (byte)(i * 31 + (int)sequence * 7 + (int)clientId * 13 + (i >> 8));
        BinaryPrimitives.WriteUInt32LittleEndian(page[20..], Checksum(page));
    }

    static uint Checksum(ReadOnlySpan<byte> page)
    {
        var crc = new Crc32();
        crc.Append(page[..20]);
        crc.Append(page.Slice(HeaderSize, (int)BinaryPrimitives.ReadUInt32LittleEndian(page[16..])));
        return crc.GetCurrentHashAsUInt32();
    }

    /// <summary>What a page holds where record <paramref name="sequence"/> of <paramref name="clientId"/> should be.</summary>
    public static RecordState Check(ReadOnlySpan<byte> page, uint clientId, ulong sequence)
    {
        if (page.Length < Size)
            return RecordState.Missing;   // beyond the end of the file
        if (BinaryPrimitives.ReadUInt32LittleEndian(page) != Magic)
            return page[..HeaderSize].IndexOfAnyExcept((byte)0) < 0 ? RecordState.Missing : RecordState.Corrupt;
        if (BinaryPrimitives.ReadUInt32LittleEndian(page[4..]) != clientId || BinaryPrimitives.ReadUInt64LittleEndian(page[8..]) != sequence)
            return RecordState.Corrupt;
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(page[16..]);
        if (length > MaxPayload)
            return RecordState.Corrupt;
        return Checksum(page) == BinaryPrimitives.ReadUInt32LittleEndian(page[20..]) ? RecordState.Valid : RecordState.Corrupt;
    }
}

internal enum RecordState
{
    Valid,
    /// <summary>Nothing there (zeros, a hole, or past the end of the file).</summary>
    Missing,
    /// <summary>Something there, but not this record or not intact.</summary>
    Corrupt,
}
