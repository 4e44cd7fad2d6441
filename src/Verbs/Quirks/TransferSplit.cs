namespace RdmaLease.Verbs;

/// <summary>
/// The arithmetic of splitting one transfer into work requests of at most a limit each (an ODP quirk's, or a remote
/// region's <see cref="RemoteRegion.MaxTransferPerRequest"/>; pure functions, tested on the host). Limits use
/// <see cref="OdpIntegrityResult"/>'s convention: <see cref="OdpIntegrityResult.Unlimited"/> for none, 0 for "no transfer is safe".
/// </summary>
internal static class TransferSplit
{
    /// <summary>Most work requests one post may be split into (they are stackalloc'ed on the post path).</summary>
    public const int MaxPieces = 256;

    /// <summary>The smaller of two limits, where a remote region's 0 means "no limit".</summary>
    public static uint Combine(uint localLimit, uint remoteMaxTransferPerRequest) =>
        remoteMaxTransferPerRequest == 0 ? localLimit : Math.Min(localLimit, remoteMaxTransferPerRequest);

    /// <summary>How many work requests a transfer of <paramref name="length"/> bytes takes under <paramref name="limit"/> (at least 1).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="limit"/> is 0.</exception>
    public static int Count(uint length, uint limit)
    {
        if (limit == 0)
            throw new ArgumentOutOfRangeException(nameof(limit), limit, "a split limit is at least 1 byte");
        if (length <= limit)
            return 1;
        return (int)Math.Min(((ulong)length + limit - 1) / limit, int.MaxValue);
    }

    /// <summary>Whether <paramref name="pieces"/> work requests fit in one post: the send queue's depth, at most <see cref="MaxPieces"/>.</summary>
    public static bool Fits(int pieces, int sendQueueDepth) => pieces <= Math.Min(MaxPieces, sendQueueDepth);

    /// <summary>The error for a split that does not <see cref="Fits"/>.</summary>
    public static ArgumentOutOfRangeException TooMany(int pieces, int sendQueueDepth, string what) =>
        new(nameof(pieces), pieces,
            $"{what} must be split into {pieces} work requests (an ODP quirk of the device, or the remote region's MaxTransferPerRequest; see " +
            $"docs/known-defects.md), more than one post may take ({Math.Min(MaxPieces, sendQueueDepth)}: the send queue holds {sendQueueDepth}, " +
            $"a split at most {MaxPieces}). Post fewer or smaller transfers per call.");

    /// <summary>Piece <paramref name="index"/> of the split: its offset from the transfer's start and its length.</summary>
    public static (uint Offset, uint Length) Piece(int index, uint length, uint limit)
    {
        int count = Count(length, limit);
        if ((uint)index >= (uint)count)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"a transfer of {length} bytes split at {limit} has {count} piece(s)");
        if (count == 1)
            return (0, length);
        uint offset = (uint)index * limit;
        return (offset, Math.Min(limit, length - offset));
    }
}
