using System.Globalization;
using RdmaLease.Verbs;

namespace RdmaLease.PingPong;

/// <summary>
/// ibv_rc_pingpong's options and their defaults (rdma-core libibverbs/examples/rc_pingpong.c), parsed the way getopt_long
/// does: short options clustered (<c>-eo</c>) or with attached values (<c>-s4096</c>), long ones as <c>--size=4096</c> or
/// <c>--size 4096</c> or any unambiguous prefix, operands anywhere, <c>--</c> ends the options.
/// </summary>
sealed record PingPongOptions
{
    public string? ServerName { get; init; }
    public int Port { get; init; } = OutOfBandExchange.DefaultPingPongPort;
    public string? DeviceName { get; init; }
    public byte IbPort { get; init; } = 1;
    public int Size { get; init; } = 4096;
    public Mtu Mtu { get; init; } = Mtu.Mtu1024;
    public int RxDepth { get; init; } = 500;
    public int Iterations { get; init; } = 1000;
    public byte ServiceLevel { get; init; }
    public bool Events { get; init; }
    public int? GidIndex { get; init; }
    public bool OnDemandPaging { get; init; }
    public bool Help { get; init; }

    // name, short letter, takes a value
    static readonly (string Long, char Short, bool HasArg)[] Known =
    [
        ("port", 'p', true), ("ib-dev", 'd', true), ("ib-port", 'i', true), ("size", 's', true), ("mtu", 'm', true),
        ("rx-depth", 'r', true), ("iters", 'n', true), ("sl", 'l', true), ("events", 'e', false), ("gid-idx", 'g', true),
        ("odp", 'o', false), ("help", 'h', false),
    ];

    // ibv_rc_pingpong's other options: recognised, so the refusal can say what they are.
    static readonly (string Long, char Short, string What)[] Unsupported =
    [
        ("iodp", 'O', "implicit on-demand paging"), ("prefetch", 'P', "ODP prefetch"), ("ts", 't', "completion timestamps"),
        ("chk", 'c', "buffer validation"), ("dm", 'j', "device memory"), ("new_send", 'N', "the new post-send API"),
        ("allow-cc-unprotected", 'U', "CoCo unprotected memory"),
    ];

    public const string Usage = """
        Usage:
          PingPong            start a server and wait for connection
          PingPong <host>     connect to server at <host>

        Options:
          -p, --port=<port>      listen on/connect to port <port> (default 18515)
          -d, --ib-dev=<dev>     use IB device <dev> (default first device found)
          -i, --ib-port=<port>   use port <port> of IB device (default 1)
          -s, --size=<size>      size of message to exchange (default 4096)
          -m, --mtu=<size>       path MTU (default 1024)
          -r, --rx-depth=<dep>   number of receives to post at a time (default 500)
          -n, --iters=<iters>    number of exchanges (default 1000)
          -l, --sl=<sl>          service level value
          -e, --events           sleep on CQ events (default poll)
          -g, --gid-idx=<gid index> local port gid index (needed on RoCE)
          -o, --odp              use on demand paging
          -h, --help             this text
        """;

    /// <summary>The options, or the reason they are wrong (for stderr, followed by the usage, exit code 1).</summary>
    public static PingPongOptions Parse(IReadOnlyList<string> args)
    {
        var o = new PingPongOptions();
        var operands = new List<string>();
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (a == "--")
            {
                operands.AddRange(args.Skip(i + 1));
                break;
            }
            if (a.StartsWith("--", StringComparison.Ordinal))
            {
                string name = a[2..];
                string? value = null;
                int eq = name.IndexOf('=', StringComparison.Ordinal);
                if (eq >= 0)
                    (name, value) = (name[..eq], name[(eq + 1)..]);
                var (_, letter, hasArg) = FindLong(name);
                if (!hasArg && value != null)
                    throw new UsageException($"option '--{name}' doesn't allow an argument");
                if (hasArg && value == null)
                    value = i + 1 < args.Count ? args[++i] : throw new UsageException($"option '--{name}' requires an argument");
                o = o.With(letter, value, "--" + name);
            }
            else if (a.Length > 1 && a[0] == '-')
            {
                for (int j = 1; j < a.Length; j++)
                {
                    char c = a[j];
                    var known = Known.Where(k => k.Short == c).ToList();
                    if (known.Count == 0)
                        throw Refuse(c.ToString(), Unsupported.FirstOrDefault(u => u.Short == c).What, $"invalid option -- '{c}'");
                    if (!known[0].HasArg)
                    {
                        o = o.With(c, null, "-" + c);
                        continue;
                    }
                    string value = j + 1 < a.Length ? a[(j + 1)..]
                        : i + 1 < args.Count ? args[++i] : throw new UsageException($"option requires an argument -- '{c}'");
                    o = o.With(c, value, "-" + c);
                    break;
                }
            }
            else
            {
                operands.Add(a);
            }
        }
        if (operands.Count > 1)
            throw new UsageException($"one server name at most, got {operands.Count}: {string.Join(' ', operands)}");
        return o with { ServerName = operands.SingleOrDefault() };
    }

    static (string, char, bool) FindLong(string name)
    {
        var exact = Known.Where(k => k.Long == name).ToList();
        var matches = exact.Count > 0 ? exact : Known.Where(k => k.Long.StartsWith(name, StringComparison.Ordinal)).ToList();
        if (matches.Count == 1 && name.Length > 0)
            return matches[0];
        if (matches.Count > 1)
            throw new UsageException($"option '--{name}' is ambiguous; possibilities: {string.Join(' ', matches.Select(m => "--" + m.Long))}");
        var unsupported = Unsupported.FirstOrDefault(u => u.Long == name);
        throw Refuse("-" + name, unsupported.What, $"unrecognized option '--{name}'");
    }

    static UsageException Refuse(string option, string? what, string otherwise) => what != null
        ? new UsageException($"option '-{option}' ({what}) of ibv_rc_pingpong is not supported by this sample")
        : new UsageException(otherwise);

    PingPongOptions With(char option, string? value, string spelled) => option switch
    {
        'p' => this with { Port = Number(value, spelled, 1, 65535, "a TCP port") },
        'd' => this with { DeviceName = value!.Length > 0 ? value : throw new UsageException($"{spelled}: empty device name") },
        'i' => this with { IbPort = (byte)Number(value, spelled, 1, 255, "a port number of the device (1 is the first)") },
        's' => this with { Size = Number(value, spelled, 1, 1 << 30, "a message size in bytes") },
        'm' => this with { Mtu = MtuOf(value, spelled) },
        'r' => this with { RxDepth = Number(value, spelled, 1, 1 << 20, "a number of receives") },
        'n' => this with { Iterations = Number(value, spelled, 1, int.MaxValue, "a number of exchanges") },
        'l' => this with { ServiceLevel = (byte)Number(value, spelled, 0, 15, "a service level") },
        'e' => this with { Events = true },
        'g' => this with { GidIndex = Number(value, spelled, 0, 65535, "a GID table index") },
        'o' => this with { OnDemandPaging = true },
        'h' => this with { Help = true },
        _ => throw new UsageException($"invalid option -- '{option}'"),
    };

    static Mtu MtuOf(string? value, string spelled)
    {
        int bytes = Number(value, spelled, 0, int.MaxValue, "a path MTU");
        return bytes is 256 or 512 or 1024 or 2048 or 4096
            ? MtuExtensions.FromBytes(bytes)
            : throw new UsageException($"{spelled} {value}: a path MTU is 256, 512, 1024, 2048 or 4096");
    }

    // strtoul(s, NULL, 0)'s bases (0x.. hex, 0.. octal, else decimal), but the whole value must be a number in range.
    static int Number(string? value, string spelled, long min, long max, string what)
    {
        string s = value ?? "";
        long n;
        bool ok = s.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? long.TryParse(s.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out n)
            : s.Length > 1 && s[0] == '0' ? TryOctal(s[1..], out n)
            : long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out n);
        if (!ok)
            throw new UsageException($"{spelled} '{s}': not {what} (a number: decimal, 0x hex or 0 octal)");
        if (n < min || n > max)
            throw new UsageException($"{spelled} {s}: {what} is {min}..{max}");
        return (int)n;
    }

    static bool TryOctal(string s, out long n)
    {
        n = 0;
        foreach (char c in s)
        {
            if (c is < '0' or > '7' || n > int.MaxValue)
                return false;
            n = n * 8 + (c - '0');
        }
        return s.Length > 0;
    }
}

/// <summary>Bad command line: printed with the usage, exit code 1 (ibv_rc_pingpong's).</summary>
sealed class UsageException(string message) : Exception(message);
