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

    /// <summary>
    /// Writes the endpoint for out-of-band exchange: LID, QP number, PSN and the 16-byte GID, in that order, big-endian
    /// (network byte order, as every wire encoding of the library).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than <see cref="EncodedLength"/>.</exception>
    public void Encode(Span<byte> destination)
    {
        if (destination.Length < EncodedLength)
            throw new ArgumentException($"needs {EncodedLength} bytes, got {destination.Length}", nameof(destination));
        BinaryPrimitives.WriteUInt16BigEndian(destination, Lid);
        BinaryPrimitives.WriteUInt32BigEndian(destination[2..], QueuePairNumber);
        BinaryPrimitives.WriteUInt32BigEndian(destination[6..], PacketSequenceNumber);
        if (!Gid.MapToIPv6().TryWriteBytes(destination[10..], out int written) || written != 16)
            throw new InvalidOperationException("a GID is 16 bytes");
    }

    /// <summary>Reads what <see cref="Encode"/> wrote.</summary>
    /// <exception cref="ArgumentException"><paramref name="source"/> is shorter than <see cref="EncodedLength"/>.</exception>
    /// <exception cref="FormatException">The QP number or PSN is wider than 24 bits (as <see cref="Parse"/> refuses).</exception>
    public static QueuePairEndpoint Decode(ReadOnlySpan<byte> source)
    {
        if (source.Length < EncodedLength)
            throw new ArgumentException($"needs {EncodedLength} bytes, got {source.Length}", nameof(source));
        uint qpn = BinaryPrimitives.ReadUInt32BigEndian(source[2..]), psn = BinaryPrimitives.ReadUInt32BigEndian(source[6..]);
        // The device keeps only 24 bits: a wider QP number would silently connect to another QP.
        if (qpn > 0xffffff || psn > 0xffffff)
            throw new FormatException($"the encoded QP number 0x{qpn:x} or PSN 0x{psn:x} is wider than 24 bits: not an endpoint Encode wrote");
        return new(BinaryPrimitives.ReadUInt16BigEndian(source), qpn, psn, new IPAddress(source.Slice(10, 16)));
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
    /// <summary>
    /// Operations the peer may direct at this QP (RDMA WRITE/READ, atomics, FLUSH need it here as well as on the
    /// region): <see cref="AccessFlags.RemoteWrite"/>, <see cref="AccessFlags.RemoteRead"/>, <see cref="AccessFlags.RemoteAtomic"/>,
    /// <see cref="AccessFlags.FlushGlobal"/>, <see cref="AccessFlags.FlushPersistent"/>. Default <see cref="AccessFlags.None"/>:
    /// least privilege, a peer can only SEND to the QP until it is granted more, here or later with
    /// <see cref="QueuePair.ChangeRemoteAccess"/>.
    /// </summary>
    public AccessFlags RemoteAccess { get; init; }
    /// <summary>Service level (0..15) of the path.</summary>
    public byte ServiceLevel { get; init; }
    /// <summary>Traffic class of the GRH (RoCE: the IP header's DSCP and ECN bits).</summary>
    public byte TrafficClass { get; init; }
    /// <summary>Flow label of the GRH (20 bits; 0: none).</summary>
    public uint FlowLabel { get; init; }
    /// <summary>Hop limit of the GRH (RoCE: the IP TTL).</summary>
    public byte HopLimit { get; init; } = 64;
    /// <summary>Index of the P_Key in the port's table.</summary>
    public ushort PartitionKeyIndex { get; init; }
}
