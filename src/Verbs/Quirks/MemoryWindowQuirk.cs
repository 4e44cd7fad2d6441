namespace RdmaLease.Verbs;

/// <summary>
/// A driver whose memory windows do not confine a peer to the window's range: the quirk table that
/// <see cref="QueuePair.PostBindMemoryWindow"/> reads. On such a device a window over part of a region would give the
/// peer the whole region, so the library binds windows there only over whole regions.
/// </summary>
/// <param name="Driver">The libibverbs provider (<see cref="Device.Driver"/>).</param>
/// <param name="Reason">What is wrong, for messages.</param>
internal sealed record KnownWindowDefect(string Driver, string Reason)
{
    internal static readonly KnownWindowDefect[] Table =
    [
        // drivers/infiniband/sw/rxe/rxe_resp.c, check_rkey(): an rkey that names a window is looked up (state, PD, QP for
        // type 2, access), then the request is checked with mr_check_range() against the REGION the window is bound to;
        // the window's own addr/length are never compared. Observed on Debian's 7.3.4 (MemoryWindowTests); no fixed
        // release is known, so every kernel is treated as affected.
        new("rxe", "rxe checks a window's rkey against the bounds of the region the window is bound to, not the window's own range " +
            "(drivers/infiniband/sw/rxe/rxe_resp.c, check_rkey); seen on Linux 7.3.4, no fixed release known"),
    ];

    /// <summary>The entry for <paramref name="driver"/>, or null when its windows are taken to enforce their bounds.</summary>
    internal static KnownWindowDefect? Find(string driver) => Table.FirstOrDefault(d => d.Driver == driver);
}
