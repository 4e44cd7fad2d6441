using System.Buffers.Binary;
using System.Globalization;
using System.Net;

namespace RdmaLease.Verbs;

/// <summary>
/// What the other side needs to connect to a queue pair, exchanged out of band (a socket, a
/// file): LID (InfiniBand), QP number, starting packet sequence number and GID (RoCE).
/// </summary>
/// <param name="Lid">Local identifier; 0 on RoCE.</param>
/// <param name="QueuePairNumber">The QP number.</param>
/// <param name="PacketSequenceNumber">The first PSN the QP sends (24 bits).</param>
/// <param name="Gid">The GID the QP sends from (IPv4-mapped for RoCE over IPv4).</param>
public sealed record QueuePairEndpoint(ushort Lid, uint QueuePairNumber, uint PacketSequenceNumber, IPAddress Gid)
{
    /// <summary>Size of the binary encoding.</summary>
    public const int EncodedLength = 26;

    /// <summary>Writes the endpoint in a fixed big-endian layout.</summary>
    public void WriteTo(Span<byte> destination)
    {
        if (destination.Length < EncodedLength)
            throw new ArgumentException($"needs {EncodedLength} bytes", nameof(destination));
        BinaryPrimitives.WriteUInt16BigEndian(destination, Lid);
        BinaryPrimitives.WriteUInt32BigEndian(destination[2..], QueuePairNumber);
        BinaryPrimitives.WriteUInt32BigEndian(destination[6..], PacketSequenceNumber);
        if (!Gid.MapToIPv6().TryWriteBytes(destination[10..], out int written) || written != 16)
            throw new InvalidOperationException("a GID is 16 bytes");
    }

    /// <summary>Reads what <see cref="WriteTo"/> wrote.</summary>
    public static QueuePairEndpoint ReadFrom(ReadOnlySpan<byte> source)
    {
        if (source.Length < EncodedLength)
            throw new ArgumentException($"needs {EncodedLength} bytes, got {source.Length}", nameof(source));
        return new(BinaryPrimitives.ReadUInt16BigEndian(source), BinaryPrimitives.ReadUInt32BigEndian(source[2..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[6..]), new IPAddress(source.Slice(10, 16)));
    }

    /// <summary>Text form <c>lid:qpn:psn:gid</c>, e.g. <c>0:17:0:::ffff:127.0.0.1</c>.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Lid}:{QueuePairNumber}:{PacketSequenceNumber}:{Gid}");

    /// <summary>Parses <see cref="ToString"/>'s form.</summary>
    /// <exception cref="FormatException">Not of that form (the message says which part).</exception>
    public static QueuePairEndpoint Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Split(':', 4);
        if (parts.Length != 4)
            throw new FormatException($"'{text}' is not lid:qpn:psn:gid");
        if (!ushort.TryParse(parts[0], CultureInfo.InvariantCulture, out var lid))
            throw new FormatException($"'{parts[0]}' in '{text}' is not a LID (0..65535)");
        if (!uint.TryParse(parts[1], CultureInfo.InvariantCulture, out var qpn) || qpn > 0xffffff)
            throw new FormatException($"'{parts[1]}' in '{text}' is not a QP number (24 bits)");
        if (!uint.TryParse(parts[2], CultureInfo.InvariantCulture, out var psn) || psn > 0xffffff)
            throw new FormatException($"'{parts[2]}' in '{text}' is not a PSN (24 bits)");
        if (!IPAddress.TryParse(parts[3], out var gid))
            throw new FormatException($"'{parts[3]}' in '{text}' is not a GID");
        return new(lid, qpn, psn, gid);
    }
}

/// <summary>How <see cref="QueuePair.Connect"/> sets up the path to the peer.</summary>
public sealed record ConnectOptions
{
    /// <summary>The local GID index to send from (RoCE: the entry of the interface to use).</summary>
    public required int GidIndex { get; init; }
    /// <summary>Local port.</summary>
    public byte Port { get; init; } = 1;
    /// <summary>Path MTU; default: the local port's active MTU.</summary>
    public Mtu? PathMtu { get; init; }
    /// <summary>Outstanding RDMA READs/atomics this side may issue (and accept).</summary>
    public byte MaxRdAtomic { get; init; } = 1;
    /// <summary>Local ACK timeout exponent: 4.096 µs × 2^Timeout (14 ≈ 67 ms).</summary>
    public byte Timeout { get; init; } = 14;
    /// <summary>Transport retries before a RetryExceeded completion.</summary>
    public byte RetryCount { get; init; } = 7;
    /// <summary>Receiver-not-ready retries (7 = infinite).</summary>
    public byte RnrRetry { get; init; } = 7;
    /// <summary>Minimum RNR NAK timer code the responder asks for.</summary>
    public byte MinRnrTimer { get; init; } = 1;
    /// <summary>Service level of the path (0..15), as <c>ibv_rc_pingpong -l</c> sets it.</summary>
    public byte ServiceLevel { get; init; }
    /// <summary>
    /// Operations the peer may direct at this QP (RDMA WRITE/READ, atomics, FLUSH need it here as well as on the
    /// region). Default: write, read, atomics, and the FLUSH types the device supports.
    /// </summary>
    public AccessFlags? RemoteAccess { get; init; }
}
