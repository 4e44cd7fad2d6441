using System.Diagnostics;
using System.Globalization;

namespace RdmaLease.PmemStore;

/// <summary>
/// A client's acknowledged records: the line <c># pmem-store acked client=N</c>, then one record a line, each written
/// only after that record's FLUSH completed successfully: its sequence number and, when known, the CLOCK_MONOTONIC
/// time of the acknowledgement in nanoseconds (<c>SEQ NS</c>; system-wide, so comparable with a snapshot's
/// <c>taken_at_ns</c> from another process of the same machine).
/// </summary>
internal sealed record AckedLog(uint ClientId, IReadOnlyList<ulong> Sequences, IReadOnlyList<long>? AckedAtNs = null)
{
    const string Header = "# pmem-store acked client=";

    /// <summary>CLOCK_MONOTONIC in nanoseconds (what Stopwatch reads on Linux).</summary>
    public static long NowNs() => ToNs(Stopwatch.GetTimestamp());

    /// <summary>A Stopwatch timestamp in CLOCK_MONOTONIC nanoseconds.</summary>
    public static long ToNs(long timestamp) =>
        Stopwatch.Frequency == 1_000_000_000 ? timestamp : (long)(timestamp * (1e9 / Stopwatch.Frequency));

    public void Save(string path)
    {
        using var w = new StreamWriter(path);
        w.WriteLine(Header + ClientId.ToString(CultureInfo.InvariantCulture));
        for (int i = 0; i < Sequences.Count; i++)
        {
            w.WriteLine(AckedAtNs is null
                ? Sequences[i].ToString(CultureInfo.InvariantCulture)
                : string.Create(CultureInfo.InvariantCulture, $"{Sequences[i]} {AckedAtNs[i]}"));
        }
    }

    /// <summary>
    /// Opens <paramref name="path"/> for appending as records are acknowledged (<see cref="Appender.Add"/>), each line
    /// flushed to the file at once: a log that outlives its writer or its server's machine holds every acknowledgement
    /// made before the crash.
    /// </summary>
    public static Appender Append(string path, uint clientId) => new(path, clientId);

    public sealed class Appender : IDisposable
    {
        readonly StreamWriter _w;

        internal Appender(string path, uint clientId)
        {
            _w = new StreamWriter(path) { AutoFlush = true };
            _w.WriteLine(Header + clientId.ToString(CultureInfo.InvariantCulture));
        }

        public void Add(ulong sequence, long ackedAtNs) =>
            _w.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{sequence} {ackedAtNs}"));

        public void Dispose() => _w.Dispose();
    }

    /// <exception cref="FormatException">Not such a log: the message names the file and line.</exception>
    public static AckedLog Load(string path)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || !lines[0].StartsWith(Header, StringComparison.Ordinal)
            || !uint.TryParse(lines[0].AsSpan(Header.Length), NumberStyles.None, CultureInfo.InvariantCulture, out uint client))
            throw new FormatException($"{path}: line 1 should be '{Header}N': is this a log written by 'PmemStore write --acked-log'?");
        var seqs = new List<ulong>(lines.Length - 1);
        var times = new List<long>(lines.Length - 1);
        bool? timed = null;
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0)
                continue;
            string[] f = lines[i].Split(' ');
            if (f.Length > 2 || !ulong.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out ulong s))
                throw new FormatException($"{path}: line {i + 1} ('{lines[i]}') is not a sequence number");
            timed ??= f.Length == 2;
            if (timed != (f.Length == 2))
                throw new FormatException($"{path}: line {i + 1} ('{lines[i]}'): either every line has an acknowledgement time or none has");
            if (f.Length == 2)
            {
                if (!long.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out long ns))
                    throw new FormatException($"{path}: line {i + 1} ('{lines[i]}'): '{f[1]}' is not an acknowledgement time in nanoseconds");
                times.Add(ns);
            }
            seqs.Add(s);
        }
        return new AckedLog(client, seqs, timed == true ? times : null);
    }
}
