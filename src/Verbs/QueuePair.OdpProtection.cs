
namespace RdmaLease.Verbs;

// The ODP integrity protection of posts (docs/known-defects.md).
public sealed unsafe partial class QueuePair
{
    /// <summary>
    /// The largest transfer one work request may move for <paramref name="local"/> and a remote limit (a remote
    /// region's 0: none); throws when an ODP transfer cannot be made safe by splitting.
    /// </summary>
    uint TransferLimit(string what, LocalSegment local, uint remoteLimit)
    {
        if (OdpLimitOverride is uint forced)
            return forced;
        uint limit = remoteLimit == 0 ? OdpIntegrityResult.Unlimited : remoteLimit;
        if (!local.Region.IsOnDemand)
            return limit;
        var rule = OdpRule();
        if (rule.IsSound)
            return limit;
        if (rule.MaxTransfer == 0)
            throw OdpUnsafe(what, local, rule, "found that not even single-packet transfers into and out of ODP memory arrive intact.", "Use a pinned region on this device.");
        CheckAlignment(what, local, rule);
        limit = Math.Min(limit, rule.MaxTransfer);
        if (local.Length > limit && limit % rule.Alignment != 0)
            throw OdpUnsafe(what, local, rule,
                $"found transfers into and out of ODP memory correct only up to {rule.MaxTransfer} bytes per work request and only from {rule.Alignment}-byte aligned addresses.",
                $"Split at {limit} bytes, the pieces after the first would start inside a page and land at the page's start: move at most {limit} bytes per call to an aligned address, or use a pinned region.");
        return limit;
    }

    /// <summary>This QP's ODP rule, looked up once (the first lookup may run the probe).</summary>
    OdpRule OdpRule()
    {
        long known = Volatile.Read(ref _odpLimit);
        if (known >= 0)
            return new OdpRule((uint)known, (uint)(known >> 32));
        Mtu mtu = PathMtu ?? ProtectionDomain.Device.QueryPort(1).ActiveMtu;
        var rule = ProtectionDomain.Device.OdpTransferRule(mtu);
        if (PathMtu != null)
            Volatile.Write(ref _odpLimit, (long)rule.Alignment << 32 | rule.MaxTransfer);
        return rule;
    }

    void CheckAlignment(string what, LocalSegment segment, OdpRule rule)
    {
        if (rule.Alignment > 1 && segment.Address % rule.Alignment != 0)
            throw OdpUnsafe(what, segment, rule,
                $"found that transfers into and out of ODP memory are only correct from {rule.Alignment}-byte aligned addresses (the device drops the in-page offset: the data lands at, or comes from, the page's start).",
                $"This one starts {segment.Address % rule.Alignment} bytes into a page: use an aligned offset or a pinned region.");
    }

    /// <summary>A message (SEND, receive) cannot be split: refuse one in an ODP region that is larger than is safe or misaligned.</summary>
    void CheckMessage(string what, LocalSegment segment)
    {
        if (!segment.Region.IsOnDemand)
            return;
        OdpRule rule;
        if (OdpLimitOverride is uint forced)
            rule = new OdpRule(forced, 1);
        else
            rule = OdpRule();
        if (rule.IsSound)
            return;
        if (rule.MaxTransfer == 0)
            throw OdpUnsafe(what, segment, rule, "found that not even single-packet transfers into and out of ODP memory arrive intact.", "Use a pinned region on this device.");
        CheckAlignment(what, segment, rule);
        if (segment.Length > rule.MaxTransfer)
            throw OdpUnsafe(what, segment, rule,
                $"found transfers into and out of ODP memory safe only up to {rule.MaxTransfer} bytes per work request.",
                what == "receive"
                    ? $"A receive buffer in an ODP region there may hold at most {rule.MaxTransfer} bytes (one packet); receive into a pinned region instead."
                    : $"A SEND is one message and cannot be split: send at most {rule.MaxTransfer} bytes from an ODP region there, or send from a pinned region.");
    }

    NotSupportedException OdpUnsafe(string what, LocalSegment segment, OdpRule rule, string found, string advice)
    {
        _ = rule;
        string mtu = PathMtu is { } m ? m.Bytes().ToString(System.Globalization.CultureInfo.InvariantCulture) : "(the port's active MTU)";
        return new NotSupportedException(
            $"{what} of {segment.Length} bytes in {segment.Region}: an On-Demand-Paging region on {ProtectionDomain.Device.Name}, where the ODP " +
            $"integrity probe at path MTU {mtu} {found} (rxe misplaces transfers that touch ODP memory; see docs/known-defects.md) {advice}");
    }

    void CheckPieceCount(int n, ulong length, uint limit)
    {
        if (n <= 1)
            return;
        int max = Math.Min(TransferSplit.MaxPieces, _maxSendRequests);
        if (n > max)
            throw new ArgumentOutOfRangeException(nameof(length), length,
                $"{this}: this transfer must be split into {n} work requests of at most {limit} bytes (an ODP region on a device with the " +
                $"multi-packet defect, or the remote region's MaxTransferPerRequest; see docs/known-defects.md), more than one post may take " +
                $"({max}: the send queue holds {_maxSendRequests}, a split at most {TransferSplit.MaxPieces}). Post at most {(ulong)max * limit} bytes per call.");
    }
}
