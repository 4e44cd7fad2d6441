using System.Globalization;

namespace RdmaLease.PmemStore;

/// <summary>
/// Checks a snapshot against the clients' acked logs and the time it was taken (<c>taken_at_ns</c>): every record
/// acknowledged before that is in it, intact; every other page of a client's area is either empty or a valid record
/// that its client had acknowledged by the end of its run (one in flight at the cut: durable before it, its
/// acknowledgement after); nothing torn, nothing never acknowledged.
/// </summary>
internal static class SnapshotVerifier
{
    public sealed record Result(long AckedBefore, long Verified, long Missing, long Corrupt, long InFlight, long Unacknowledged, long Torn)
    {
        public bool Ok => Missing == 0 && Corrupt == 0 && Unacknowledged == 0 && Torn == 0 && Verified == AckedBefore;

        public override string ToString() => string.Create(CultureInfo.InvariantCulture,
            $"{AckedBefore} acknowledged before the snapshot, {Verified} verified, {Missing} missing, {Corrupt} corrupt; " +
            $"{InFlight} acknowledged after it and already in it (in flight at the cut); {Unacknowledged} never acknowledged, {Torn} torn");
    }

    /// <param name="readPage">Offset → the 4 KiB there (shorter past the end), as for <see cref="Verifier.Verify"/>.</param>
    public static Result Verify(IEnumerable<AckedLog> logs, ulong areaBytes, long takenAtNs, Func<long, byte[]> readPage, TextWriter output)
    {
        long before = 0, verified = 0, missing = 0, corrupt = 0, inFlight = 0, unacked = 0, torn = 0;
        foreach (var log in logs)
        {
            if (log.AckedAtNs is null)
                throw new FormatException($"the acked log of client {log.ClientId} has no acknowledgement times (written by an older 'PmemStore write'): a snapshot cannot be checked against it");
            var ackedAt = new Dictionary<ulong, long>();
            for (int i = 0; i < log.Sequences.Count; i++)
                ackedAt.TryAdd(log.Sequences[i], log.AckedAtNs[i]);
            long b = 0, v = 0, m = 0, c = 0, f = 0, u = 0, t = 0;
            ulong records = areaBytes / RecordFormat.Size;
            for (ulong seq = 0; seq < records; seq++)
            {
                long offset = checked((long)(log.ClientId * areaBytes + seq * RecordFormat.Size));
                byte[] page = readPage(offset);
                var state = RecordFormat.Check(page, log.ClientId, seq);
                bool acked = ackedAt.TryGetValue(seq, out long at);
                if (acked && at < takenAtNs)
                {
                    b++;
                    switch (state)
                    {
                        case RecordState.Valid: v++; break;
                        case RecordState.Missing: m++; output.WriteLine($"PmemStore verify-snapshot: client {log.ClientId} record {seq} (acknowledged before the snapshot) missing"); break;
                        default: c++; output.WriteLine($"PmemStore verify-snapshot: client {log.ClientId} record {seq} (acknowledged before the snapshot) corrupt"); break;
                    }
                }
                else if (state == RecordState.Valid && acked)
                    f++;
                else if (state == RecordState.Valid)
                {
                    u++;
                    output.WriteLine($"PmemStore verify-snapshot: client {log.ClientId} record {seq} is valid but was never acknowledged");
                }
                else if (state == RecordState.Corrupt)
                {
                    t++;
                    output.WriteLine($"PmemStore verify-snapshot: client {log.ClientId} record {seq}: the page holds something that is not an intact record (torn)");
                }
            }
            foreach (var (seq, at) in ackedAt)
            {
                if (at < takenAtNs && seq >= records)
                {
                    b++;
                    c++;   // acknowledged outside its own area: cannot be the server's record
                }
            }
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"PmemStore verify-snapshot: client {log.ClientId}: {b} acknowledged before the snapshot, {v} verified, {m} missing, {c} corrupt; {f} in flight at the cut, {u} never acknowledged, {t} torn"));
            before += b; verified += v; missing += m; corrupt += c; inFlight += f; unacked += u; torn += t;
        }
        var result = new Result(before, verified, missing, corrupt, inFlight, unacked, torn);
        output.WriteLine("PmemStore verify-snapshot: " + result);
        return result;
    }
}
