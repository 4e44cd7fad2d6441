namespace RdmaLease.Verbs.Internal;

/// <summary>
/// Address ranges that must not be registered directly with <see cref="ProtectionDomain.Register"/>: the mappings of
/// leased files (RdmaLease.Leases' DaxFile). A region registered that way would not be tied to the file's lease and
/// could outlive it; those files are registered through their lease instead, which knows how to take the region down.
/// </summary>
internal static class ProtectedMappings
{
    private static readonly Lock s_gate = new();
    private static readonly List<(nint Start, nuint Length, string Owner)> s_ranges = [];

    internal static void Add(nint start, nuint length, string owner)
    {
        lock (s_gate)
            s_ranges.Add((start, length, owner));
    }

    internal static void Remove(nint start)
    {
        lock (s_gate)
            s_ranges.RemoveAll(r => r.Start == start);
    }

    /// <summary>The owner of a protected range that [start, start + length) overlaps, or null.</summary>
    internal static string? Overlapping(nint start, nuint length)
    {
        lock (s_gate)
        {
            foreach (var r in s_ranges)
            {
                if ((nuint)start < (nuint)r.Start + r.Length && (nuint)r.Start < (nuint)start + length)
                    return r.Owner;
            }
        }
        return null;
    }
}
