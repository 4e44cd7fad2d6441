using System.Globalization;

namespace RdmaLease.PmemStore;

/// <summary><c>snapshot FILE DEST</c> and <c>verify-snapshot SNAPSHOT... --acked LOG... --taken-at NS...</c>.</summary>
internal static class SnapshotCommands
{
    public static readonly HashSet<string> SnapshotOptions = [];
    public static readonly HashSet<string> VerifyOptions = ["acked", "area-records", "taken-at"];

    public static int Snapshot(CommandLine cl)
    {
        if (cl.Operands.Count != 2)
            throw new UsageException($"snapshot: expected FILE and DEST, got {cl.Operands.Count} operands ({string.Join(' ', cl.Operands)})");
        try
        {
            Console.WriteLine("PmemStore snapshot: " + PmemStore.Snapshot.Take(cl.Operands[0], cl.Operands[1]));
            return 0;
        }
        catch (SnapshotException e)
        {
            Console.Error.WriteLine("PmemStore snapshot: " + e.Message);
            return 1;
        }
    }

    /// <summary>Each SNAPSHOT operand against the <c>--taken-at</c> at the same position (several snapshots of one run at once).</summary>
    public static int VerifySnapshot(CommandLine cl)
    {
        var snapshots = cl.Operands;
        var takenAt = cl.All("taken-at");
        if (snapshots.Count == 0)
            throw new UsageException("verify-snapshot: expected at least one SNAPSHOT");
        var logs = cl.All("acked");
        if (logs.Count == 0)
            throw new UsageException("verify-snapshot: give at least one --acked LOG (written by 'PmemStore write --acked-log')");
        if (takenAt.Count != snapshots.Count)
            throw new UsageException($"verify-snapshot: give one --taken-at NS per SNAPSHOT, in the same order (the taken_at_ns 'PmemStore snapshot' printed); got {snapshots.Count} snapshots and {takenAt.Count} times");
        var times = takenAt.Select(t => long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long ns) ? ns
            : throw new UsageException($"verify-snapshot: --taken-at must be the taken_at_ns 'PmemStore snapshot' printed, got '{t}'")).ToList();
        ulong area = (ulong)cl.Number("area-records", 1024, 1, 1 << 20) * RecordFormat.Size;
        try
        {
            var loaded = logs.Select(AckedLog.Load).ToList();
            bool ok = true;
            for (int i = 0; i < snapshots.Count; i++)
            {
                Console.WriteLine($"PmemStore verify-snapshot: {snapshots[i]} (taken at {times[i]} ns)");
                using var handle = File.OpenHandle(snapshots[i]);
                ok &= SnapshotVerifier.Verify(loaded, area, times[i], Verifier.ReadFrom(handle), Console.Out).Ok;
            }
            return ok ? 0 : 1;
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"PmemStore verify-snapshot: {e.Message}");
            return 1;
        }
    }
}
