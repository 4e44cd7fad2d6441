using System.Buffers.Binary;
using RdmaLease.Verbs;

namespace RdmaLease.PmemStore;

/// <summary>
/// What the server puts in the accept's private data (52 of RC's 196 bytes): magic "PMSA", version 2, the lease
/// generation, the number of client areas, the bytes of one area, and the client's grant: its own area, through a
/// window of its own (<see cref="RemoteRegion.Encode"/>; version 1 advertised the whole file's region key).
/// </summary>
internal readonly record struct Advert(uint Generation, uint Clients, ulong AreaBytes, RemoteRegion Region)
{
    public const uint Magic = 0x41534D50;   // "PMSA"
    public const int Length = 24 + RemoteRegion.EncodedLength;
    public const uint Version = 2;

    public byte[] Encode()
    {
        var b = new byte[Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), Version);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), Generation);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(12), Clients);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), AreaBytes);
        Region.Encode(b.AsSpan(24));
        return b;
    }

    /// <exception cref="FormatException">Not a PmemStore server's advert.</exception>
    public static Advert Decode(ReadOnlySpan<byte> data)
    {
        if (data.Length < Length || BinaryPrimitives.ReadUInt32LittleEndian(data) != Magic)
            throw new FormatException("the accept's private data is not a PmemStore advert (magic PMSA): is that a PmemStore server?");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
        if (version != Version)
            throw new FormatException($"PmemStore advert version {version}; this client speaks version {Version}");
        return new Advert(BinaryPrimitives.ReadUInt32LittleEndian(data[8..]), BinaryPrimitives.ReadUInt32LittleEndian(data[12..]),
            BinaryPrimitives.ReadUInt64LittleEndian(data[16..]), RemoteRegion.Decode(data.Slice(24, RemoteRegion.EncodedLength)));
    }
}

/// <summary>What a client puts in the connect's private data: magic "PMSC" and its client id.</summary>
internal static class Hello
{
    public const uint Magic = 0x43534D50;   // "PMSC"

    public static byte[] Encode(uint clientId)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), clientId);
        return b;
    }

    public static uint? Decode(ReadOnlySpan<byte> data) =>
        data.Length >= 8 && BinaryPrimitives.ReadUInt32LittleEndian(data) == Magic ? BinaryPrimitives.ReadUInt32LittleEndian(data[4..]) : null;
}
