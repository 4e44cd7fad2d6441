using System.Globalization;

namespace RdmaLease.PmemStore;

/// <summary>
/// A client's acknowledged records: the line <c># pmem-store acked client=N</c>, then one sequence number a line, each
/// written only after that record's FLUSH completed successfully.
/// </summary>
internal sealed record AckedLog(uint ClientId, IReadOnlyList<ulong> Sequences)
{
    const string Header = "# pmem-store acked client=";

    public void Save(string path)
    {
        using var w = new StreamWriter(path);
        w.WriteLine(Header + ClientId.ToString(CultureInfo.InvariantCulture));
        foreach (ulong s in Sequences)
            w.WriteLine(s.ToString(CultureInfo.InvariantCulture));
    }

    /// <exception cref="FormatException">Not such a log: the message names the file and line.</exception>
    public static AckedLog Load(string path)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || !lines[0].StartsWith(Header, StringComparison.Ordinal)
            || !uint.TryParse(lines[0].AsSpan(Header.Length), NumberStyles.None, CultureInfo.InvariantCulture, out uint client))
            throw new FormatException($"{path}: line 1 should be '{Header}N': is this a log written by 'PmemStore write --acked-log'?");
        var seqs = new List<ulong>(lines.Length - 1);
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0)
                continue;
            if (!ulong.TryParse(lines[i], NumberStyles.None, CultureInfo.InvariantCulture, out ulong s))
                throw new FormatException($"{path}: line {i + 1} ('{lines[i]}') is not a sequence number");
            seqs.Add(s);
        }
        return new AckedLog(client, seqs);
    }
}
