using System.Buffers;
using System.Globalization;
using System.Net;
using System.Text;

namespace RdmaLease.Verbs;

/// <summary>What a peer sent in <see cref="OutOfBandExchange"/>'s binary form: its queue pair's endpoint, and a region
/// it grants access to when it sent one.</summary>
/// <param name="Endpoint">The peer's queue pair endpoint, for <see cref="QueuePair.Connect"/>.</param>
/// <param name="Region">The region the peer advertised, or null.</param>
public sealed record OutOfBandMessage(QueuePairEndpoint Endpoint, RemoteRegion? Region);

/// <summary>
/// Exchanges <see cref="QueuePairEndpoint"/>s (and optionally a <see cref="RemoteRegion"/>) over a <see cref="Stream"/>,
/// usually a TCP connection, for programs that connect queue pairs without rdma_cm. Two forms:
/// <list type="bullet">
/// <item>rdma-core's <c>ibv_rc_pingpong</c> form (<see cref="PingPongClientAsync"/>, <see cref="PingPongServerAsync"/>):
/// a 52-byte text message <c>LLLL:QQQQQQ:PPPPPP:GGGG...</c> (LID, QP number, PSN in hex, the GID as 32 hex digits) and
/// the client's closing <c>"done"</c>, so our programs talk to theirs;</item>
/// <item>our binary form (<see cref="WriteAsync"/>, <see cref="ReadAsync"/>, <see cref="ExchangeAsync"/>): a tagged,
/// versioned message with the endpoint's encoding and, when given, the region's.</item>
/// </list>
/// Every read fails with <see cref="EndOfStreamException"/> when the peer closes the stream early, with
/// <see cref="FormatException"/> when what arrived is not such a message, and the whole exchanges with
/// <see cref="TimeoutException"/> when the peer does not answer in time; all say what was expected.
/// </summary>
/// <example>
/// <code>
/// using var tcp = new TcpClient();
/// await tcp.ConnectAsync(IPAddress.Loopback, OutOfBandExchange.DefaultPingPongPort, ct);
/// QueuePairEndpoint theirs = await OutOfBandExchange.PingPongClientAsync(tcp.GetStream(), qp.LocalEndpoint(1), cancellationToken: ct);
/// qp.Connect(theirs, new ConnectOptions { GidIndex = 1 });
/// </code>
/// </example>
public static class OutOfBandExchange
{
    /// <summary><c>ibv_rc_pingpong</c>'s TCP port when none is given.</summary>
    public const int DefaultPingPongPort = 18515;

    /// <summary>Bytes of one <c>ibv_rc_pingpong</c> address message: 51 characters and the C string's NUL.</summary>
    public const int PingPongMessageLength = 52;

    /// <summary>How long a whole exchange may take when the caller gives no timeout.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    // The client's closing message: the C string "done" with its NUL, as rc_pingpong writes it.
    static ReadOnlySpan<byte> Done => "done\0"u8;

    // Binary form: "RLQP", version, flags, the endpoint's encoding, then the region's when flagged.
    static ReadOnlySpan<byte> Tag => "RLQP"u8;
    const byte Version = 1;
    const byte HasRegion = 1;
    const int HeaderLength = 6;

    /// <summary>Bytes of a binary-form message without and with a region.</summary>
    public static int BinaryMessageLength(bool withRegion) =>
        HeaderLength + QueuePairEndpoint.EncodedLength + (withRegion ? RemoteRegion.EncodedLength : 0);

    /// <summary>
    /// The endpoint in <c>ibv_rc_pingpong</c>'s text form, <c>%04x:%06x:%06x:</c> and the GID's 16 bytes as 32 hex
    /// digits in wire order, e.g. <c>0000:000011:a3c2f1:00000000000000000000ffff7f000001</c> (51 characters).
    /// </summary>
    /// <exception cref="ArgumentException">The QP number or PSN does not fit in 24 bits.</exception>
    public static string FormatPingPong(QueuePairEndpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (endpoint.QueuePairNumber > 0xffffff || endpoint.PacketSequenceNumber > 0xffffff)
            throw new ArgumentException($"{endpoint}: a QP number and a PSN are 24 bits", nameof(endpoint));
        Span<byte> gid = stackalloc byte[16];
        if (!endpoint.Gid.MapToIPv6().TryWriteBytes(gid, out int n) || n != 16)
            throw new ArgumentException($"{endpoint.Gid} is not a GID", nameof(endpoint));
        return string.Create(CultureInfo.InvariantCulture,
            $"{endpoint.Lid:x4}:{endpoint.QueuePairNumber:x6}:{endpoint.PacketSequenceNumber:x6}:{Convert.ToHexStringLower(gid)}");
    }

    /// <summary>
    /// Parses <see cref="FormatPingPong"/>'s form, as <c>ibv_rc_pingpong</c> sends it: up to the first NUL, hex LID
    /// (up to 4 digits), QP number and PSN (up to 6), and a GID of exactly 32 hex digits.
    /// </summary>
    /// <exception cref="FormatException">Not that form; the message names the part that is wrong.</exception>
    public static QueuePairEndpoint ParsePingPong(string message)
    {
        ArgumentNullException.ThrowIfNull(message);
        int nul = message.IndexOf('\0', StringComparison.Ordinal);
        string text = nul < 0 ? message : message[..nul];
        var parts = text.Split(':');
        if (parts.Length != 4)
            throw new FormatException($"'{Printable(text)}' is not an ibv_rc_pingpong address (LLLL:QQQQQQ:PPPPPP: and a 32-digit GID, in hex)");
        ushort lid = (ushort)Hex(parts[0], 4, "LID", text);
        uint qpn = Hex(parts[1], 6, "QP number", text);
        uint psn = Hex(parts[2], 6, "PSN", text);
        if (parts[3].Length != 32 || !IsHex(parts[3]))
            throw new FormatException($"'{Printable(parts[3])}' in '{Printable(text)}' is not a GID (32 hex digits)");
        return new QueuePairEndpoint(lid, qpn, psn, new IPAddress(Convert.FromHexString(parts[3])));
    }

    static uint Hex(string part, int maxDigits, string what, string text)
    {
        if (part.Length == 0 || part.Length > maxDigits || !IsHex(part))
            throw new FormatException($"'{Printable(part)}' in '{Printable(text)}' is not a {what} (1 to {maxDigits} hex digits)");
        return uint.Parse(part, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
    }

    static readonly SearchValues<char> HexDigits = SearchValues.Create("0123456789abcdefABCDEF");

    static bool IsHex(string s) => s.AsSpan().IndexOfAnyExcept(HexDigits) < 0;

    // Control characters of a garbled message would garble the exception's text too.
    static string Printable(string s) =>
        string.Concat(s.Select(c => char.IsControl(c) ? $"\\x{(int)c:x2}" : c.ToString()));

    /// <summary>Writes one <c>ibv_rc_pingpong</c> address message (<see cref="PingPongMessageLength"/> bytes, one write).</summary>
    public static async Task WritePingPongAsync(Stream stream, QueuePairEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var message = new byte[PingPongMessageLength];
        Encoding.ASCII.GetBytes(FormatPingPong(endpoint), message);   // 51 characters; the last byte stays NUL
        await stream.WriteAsync(message, cancellationToken).ConfigureAwait(false);
        await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads one <c>ibv_rc_pingpong</c> address message.</summary>
    /// <exception cref="EndOfStreamException">The stream ended before <see cref="PingPongMessageLength"/> bytes.</exception>
    /// <exception cref="FormatException">The bytes are not an address message.</exception>
    public static async Task<QueuePairEndpoint> ReadPingPongAsync(Stream stream, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var message = new byte[PingPongMessageLength];
        await ReadExactlyAsync(stream, message, "ibv_rc_pingpong address message", cancellationToken).ConfigureAwait(false);
        return ParsePingPong(Encoding.Latin1.GetString(message));
    }

    /// <summary>
    /// The client's side of <c>ibv_rc_pingpong</c>'s exchange: sends <paramref name="local"/>, reads the server's
    /// endpoint, sends <c>"done"</c>. The server's queue pair is ready to receive when this returns; connect yours to
    /// the result, post receives, and send first.
    /// </summary>
    /// <exception cref="TimeoutException">The server did not answer within <paramref name="timeout"/>
    /// (default <see cref="DefaultTimeout"/>).</exception>
    public static Task<QueuePairEndpoint> PingPongClientAsync(Stream stream, QueuePairEndpoint local, TimeSpan? timeout = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(local);
        return WithTimeout(timeout, "the ibv_rc_pingpong server's address", async ct =>
        {
            await WritePingPongAsync(stream, local, ct).ConfigureAwait(false);
            var remote = await ReadPingPongAsync(stream, ct).ConfigureAwait(false);
            await stream.WriteAsync(Done.ToArray(), ct).ConfigureAwait(false);
            await stream.FlushAsync(ct).ConfigureAwait(false);
            return remote;
        }, cancellationToken);
    }

    /// <summary>
    /// The server's side of <c>ibv_rc_pingpong</c>'s exchange: reads the client's endpoint, calls
    /// <paramref name="connect"/> with it (connect the queue pair and post receives there: the client sends as soon as
    /// it has the answer), sends <paramref name="local"/>, and waits for the client's <c>"done"</c>.
    /// </summary>
    /// <exception cref="TimeoutException">The client did not complete the exchange within <paramref name="timeout"/>
    /// (default <see cref="DefaultTimeout"/>).</exception>
    /// <exception cref="FormatException">The client sent something else than an address and <c>"done"</c>.</exception>
    public static Task<QueuePairEndpoint> PingPongServerAsync(Stream stream, QueuePairEndpoint local, Action<QueuePairEndpoint> connect,
        TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(local);
        ArgumentNullException.ThrowIfNull(connect);
        return WithTimeout(timeout, "the ibv_rc_pingpong client's address and \"done\"", async ct =>
        {
            var remote = await ReadPingPongAsync(stream, ct).ConfigureAwait(false);
            connect(remote);
            await WritePingPongAsync(stream, local, ct).ConfigureAwait(false);
            var done = new byte[Done.Length];
            await ReadExactlyAsync(stream, done, "\"done\" message", ct).ConfigureAwait(false);
            if (!done.AsSpan().SequenceEqual(Done))
                throw new FormatException($"the client sent '{Printable(Encoding.Latin1.GetString(done))}' where ibv_rc_pingpong sends \"done\"");
            return remote;
        }, cancellationToken);
    }

    /// <summary>Writes <paramref name="endpoint"/> (and <paramref name="region"/>) in the binary form, in one write.</summary>
    public static async Task WriteAsync(Stream stream, QueuePairEndpoint endpoint, RemoteRegion? region = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(endpoint);
        var message = new byte[BinaryMessageLength(region is not null)];
        Tag.CopyTo(message);
        message[4] = Version;
        message[5] = region is null ? (byte)0 : HasRegion;
        endpoint.Encode(message.AsSpan(HeaderLength));
        region?.Encode(message.AsSpan(HeaderLength + QueuePairEndpoint.EncodedLength));
        await stream.WriteAsync(message, cancellationToken).ConfigureAwait(false);
        await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads one binary-form message.</summary>
    /// <exception cref="EndOfStreamException">The stream ended inside the message.</exception>
    /// <exception cref="FormatException">The bytes are not a binary-form message of a version this library reads.</exception>
    public static async Task<OutOfBandMessage> ReadAsync(Stream stream, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var header = new byte[HeaderLength];
        await ReadExactlyAsync(stream, header, "rdma-lease endpoint message", cancellationToken).ConfigureAwait(false);
        if (!header.AsSpan(0, 4).SequenceEqual(Tag))
            throw new FormatException($"the peer's message starts with {Convert.ToHexString(header, 0, 4)}, not \"RLQP\": it is not an rdma-lease endpoint message " +
                "(an ibv_rc_pingpong peer? use the PingPong methods for it)");
        if (header[4] != Version)
            throw new FormatException($"the peer's endpoint message is version {header[4]}; this library reads version {Version}");
        if ((header[5] & ~HasRegion) != 0)
            throw new FormatException($"the peer's endpoint message has unknown flags 0x{header[5]:x2}");
        bool withRegion = (header[5] & HasRegion) != 0;
        var body = new byte[BinaryMessageLength(withRegion) - HeaderLength];
        await ReadExactlyAsync(stream, body, "rdma-lease endpoint message", cancellationToken, already: HeaderLength).ConfigureAwait(false);
        var endpoint = QueuePairEndpoint.Decode(body);
        if (endpoint.QueuePairNumber > 0xffffff || endpoint.PacketSequenceNumber > 0xffffff)
            throw new FormatException($"the peer's endpoint {endpoint} has a QP number or PSN wider than 24 bits");
        return new OutOfBandMessage(endpoint, withRegion ? RemoteRegion.Decode(body.AsSpan(QueuePairEndpoint.EncodedLength)) : null);
    }

    /// <summary>
    /// Both sides at once, in the binary form: writes <paramref name="local"/> (and <paramref name="region"/>), then reads
    /// the peer's message. Symmetric: both peers call this, neither waits for the other to go first.
    /// </summary>
    /// <exception cref="TimeoutException">The peer's message did not arrive within <paramref name="timeout"/>
    /// (default <see cref="DefaultTimeout"/>).</exception>
    public static Task<OutOfBandMessage> ExchangeAsync(Stream stream, QueuePairEndpoint local, RemoteRegion? region = null,
        TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(local);
        return WithTimeout(timeout, "the peer's endpoint message", async ct =>
        {
            await WriteAsync(stream, local, region, ct).ConfigureAwait(false);
            return await ReadAsync(stream, ct).ConfigureAwait(false);
        }, cancellationToken);
    }

    static async Task<T> WithTimeout<T>(TimeSpan? timeout, string waitingFor, Func<CancellationToken, Task<T>> exchange, CancellationToken cancellationToken)
    {
        TimeSpan limit = timeout ?? DefaultTimeout;
        if (limit <= TimeSpan.Zero && limit != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(timeout), limit, "a timeout is positive (or Timeout.InfiniteTimeSpan)");
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(limit);
        try
        {
            return await exchange(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested && cts.IsCancellationRequested)
        {
            throw new TimeoutException($"no {waitingFor} within {limit.TotalSeconds:0.###} s: is the peer running, and is it the " +
                "same kind of program (ibv_rc_pingpong's text form or rdma-lease's binary form)?", e);
        }
    }

    static async Task ReadExactlyAsync(Stream stream, Memory<byte> buffer, string what, CancellationToken cancellationToken, int already = 0)
    {
        int read = 0;
        while (read < buffer.Length)
        {
            int n = await stream.ReadAsync(buffer[read..], cancellationToken).ConfigureAwait(false);
            if (n == 0)
                throw new EndOfStreamException(read + already == 0
                    ? $"the peer closed the connection before sending its {what}"
                    : $"the peer closed the connection after {read + already} of the {buffer.Length + already} bytes of its {what}");
            read += n;
        }
    }
}
