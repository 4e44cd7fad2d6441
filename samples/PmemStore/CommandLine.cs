using System.Globalization;

namespace RdmaLease.PmemStore;

/// <summary>A bad command line: the message says what was wrong; Program prints it and the usage, and exits 2.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// <c>--name value</c> options (repeatable ones collect every value) and operands, checked against what a subcommand
/// knows. Small on purpose: three subcommands with a handful of options each.
/// </summary>
internal sealed class CommandLine
{
    readonly Dictionary<string, List<string>> _options = new(StringComparer.Ordinal);
    readonly string _command;

    public CommandLine(string command, IReadOnlyList<string> args, IReadOnlySet<string> known)
    {
        _command = command;
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal))
            {
                Operands.Add(a);
                continue;
            }
            string name = a[2..];
            if (!known.Contains(name))
                throw new UsageException($"{command}: unknown option --{name} (known: {string.Join(", ", known.Order().Select(k => "--" + k))})");
            if (i + 1 >= args.Count)
                throw new UsageException($"{command}: --{name} needs a value");
            if (!_options.TryGetValue(name, out var values))
                _options[name] = values = [];
            values.Add(args[++i]);
        }
    }

    public List<string> Operands { get; } = [];

    public string? String(string name) => _options.TryGetValue(name, out var v) ? v[^1] : null;

    public IReadOnlyList<string> All(string name) => _options.TryGetValue(name, out var v) ? v : [];

    public string Required(string name) => String(name) ?? throw new UsageException($"{_command}: --{name} is required");

    public long Number(string name, long fallback, long min, long max)
    {
        string? s = String(name);
        if (s is null)
            return fallback;
        if (!long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out long v) || v < min || v > max)
            throw new UsageException($"{_command}: --{name} must be a whole number from {min} to {max}, got '{s}'");
        return v;
    }

    public string Operand(string what)
    {
        if (Operands.Count != 1)
            throw new UsageException($"{_command}: expected one {what}, got {Operands.Count} operands ({string.Join(' ', Operands)})");
        return Operands[0];
    }
}
