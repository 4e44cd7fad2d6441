using System.Globalization;

namespace RdmaLease.PmemStore;

/// <summary>Checks that every acknowledged record is in the file, intact: the sample's proof.</summary>
internal static class Verifier
{
    public sealed record Result(long Acknowledged, long Verified, long Missing, long Corrupt)
    {
        public bool Ok => Missing == 0 && Corrupt == 0 && Verified == Acknowledged;

        public override string ToString() =>
            string.Create(CultureInfo.InvariantCulture, $"{Acknowledged} records acknowledged, {Verified} verified, {Missing} missing, {Corrupt} corrupt");
    }

    /// <summary>
    /// Verifies <paramref name="logs"/> against the file's bytes, read by <paramref name="readPage"/> (offset → the 4 KiB
    /// there, shorter at the end of the file); prints one line per client and the total to <paramref name="output"/>.
    /// </summary>
    public static Result Verify(IEnumerable<AckedLog> logs, ulong areaBytes, Func<long, byte[]> readPage, TextWriter output)
    {
        long acked = 0, verified = 0, missing = 0, corrupt = 0;
        foreach (var log in logs)
        {
            long a = 0, v = 0, m = 0, c = 0;
            foreach (ulong seq in log.Sequences.Distinct())
            {
                a++;
                if ((seq + 1) * RecordFormat.Size > areaBytes)
                {
                    c++;   // acknowledged outside its own area: cannot be the server's record
                    continue;
                }
                long offset = checked((long)(log.ClientId * areaBytes + seq * RecordFormat.Size));
                switch (RecordFormat.Check(readPage(offset), log.ClientId, seq))
                {
                    case RecordState.Valid: v++; break;
                    case RecordState.Missing: m++; output.WriteLine($"PmemStore verify: client {log.ClientId} record {seq} missing"); break;
                    default: c++; output.WriteLine($"PmemStore verify: client {log.ClientId} record {seq} corrupt"); break;
                }
            }
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"PmemStore verify: client {log.ClientId}: {a} acknowledged, {v} verified, {m} missing, {c} corrupt"));
            acked += a; verified += v; missing += m; corrupt += c;
        }
        var result = new Result(acked, verified, missing, corrupt);
        output.WriteLine("PmemStore verify: " + result);
        return result;
    }

    /// <summary>Reads 4 KiB at an offset of an open file with pread (zeros past the end come back short).</summary>
    public static Func<long, byte[]> ReadFrom(Microsoft.Win32.SafeHandles.SafeFileHandle file) => offset =>
    {
        var page = new byte[RecordFormat.Size];
        int total = 0;
        while (total < page.Length)
        {
            int n = RandomAccess.Read(file, page.AsSpan(total), offset + total);
            if (n == 0)
                break;
            total += n;
        }
        return total == page.Length ? page : page[..total];
    };
}
