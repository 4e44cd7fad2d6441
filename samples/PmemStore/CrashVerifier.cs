using System.Globalization;

namespace RdmaLease.PmemStore;

/// <summary>
/// Checks a store whose server's machine died (power cut, killed VM) against the clients' acked logs, which outlive it:
/// every acknowledged record must be there, intact (lost: must be 0). Every other page of a client's area is empty,
/// a whole record its client wrote but never heard acknowledged (its FLUSH or its acknowledgement was cut), or
/// partial: something that is not an intact record (a torn write). Partial pages are counted and reported, and
/// <see cref="RecordFormat.Check"/> never takes one for a record, so a reader never serves it.
/// </summary>
internal static class CrashVerifier
{
    public sealed record Result(long Acknowledged, long Lost, long UnacknowledgedWhole, long UnacknowledgedPartial)
    {
        public bool Ok => Lost == 0;

        public override string ToString() => string.Create(CultureInfo.InvariantCulture,
            $"{Acknowledged} acknowledged, {Lost} acknowledged lost; {UnacknowledgedWhole} unacknowledged found whole, " +
            $"{UnacknowledgedPartial} unacknowledged found partial (detected, not served as records)");
    }

    /// <param name="readPage">Offset → the 4 KiB there (shorter past the end), as for <see cref="Verifier.Verify"/>.</param>
    public static Result Verify(IEnumerable<AckedLog> logs, ulong areaBytes, Func<long, byte[]> readPage, TextWriter output)
    {
        long acked = 0, lost = 0, whole = 0, partial = 0;
        ulong records = areaBytes / RecordFormat.Size;
        foreach (var log in logs)
        {
            var ackedSet = log.Sequences.ToHashSet();
            long a = 0, l = 0, w = 0, p = 0;
            foreach (ulong seq in ackedSet.Where(s => s >= records))
            {
                a++;
                l++;   // acknowledged outside its own area: cannot be the server's record
                output.WriteLine($"PmemStore verify-crash: client {log.ClientId} record {seq} acknowledged outside the area ({records} records)");
            }
            for (ulong seq = 0; seq < records; seq++)
            {
                long offset = checked((long)(log.ClientId * areaBytes + seq * RecordFormat.Size));
                var state = RecordFormat.Check(readPage(offset), log.ClientId, seq);
                if (ackedSet.Contains(seq))
                {
                    a++;
                    if (state != RecordState.Valid)
                    {
                        l++;
                        output.WriteLine($"PmemStore verify-crash: client {log.ClientId} record {seq} was acknowledged and is {state.ToString().ToLowerInvariant()}: LOST");
                    }
                }
                else if (state == RecordState.Valid)
                    w++;
                else if (state == RecordState.Corrupt)
                {
                    p++;
                    output.WriteLine($"PmemStore verify-crash: client {log.ClientId} record {seq} (never acknowledged) is partial: detected by its checksum");
                }
            }
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"PmemStore verify-crash: client {log.ClientId}: {a} acknowledged, {l} lost; {w} unacknowledged found whole, {p} partial"));
            acked += a; lost += l; whole += w; partial += p;
        }
        var result = new Result(acked, lost, whole, partial);
        output.WriteLine("PmemStore verify-crash: " + result);
        return result;
    }
}
