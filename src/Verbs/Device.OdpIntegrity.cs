namespace RdmaLease.Verbs;

// The ODP integrity probe's surface on Device (docs/known-defects.md). Kept apart from Device.cs.
public sealed partial class Device
{
    // Per Mtu value (1..5): the ODP rule (alignment << 32 | largest safe transfer), NotKnown until looked up.
    // The QP post path reads these; only the first lookup per (device, MTU) reaches the cache or the probe.
    const long NotKnown = -1;
    readonly long[] _odpLimits = [NotKnown, NotKnown, NotKnown, NotKnown, NotKnown, NotKnown];

    /// <summary>
    /// Whether multi-packet transfers into and out of On-Demand-Paging regions arrive intact on this device at
    /// <paramref name="pathMtu"/>: the cached result (per device name, kernel release and MTU, in memory and
    /// in <c>$RDMA_LEASE_CACHE</c>, <c>$XDG_CACHE_HOME/rdma-lease</c> or <c>~/.cache/rdma-lease</c>), or the
    /// loopback probe's, run now (see <see cref="CheckOdpIntegrity"/>). The first ODP registration on a device
    /// looks this up for every port's active MTU; a queue pair with a smaller path MTU looks up its own MTU the
    /// first time it posts with an ODP region.
    /// </summary>
    /// <param name="pathMtu">The path MTU of the queue pairs that will move the data.</param>
    /// <param name="port">The port the probe connects its queue pairs on.</param>
    /// <exception cref="NotSupportedException">The device has no ODP support.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="pathMtu"/> exceeds the port's active MTU (no QP can use it).</exception>
    public OdpIntegrityResult OdpIntegrity(Mtu pathMtu, byte port = 1) => LookUpOdpIntegrity(pathMtu, port, refresh: false);

    /// <summary>
    /// Runs the ODP integrity probe now, whatever is cached, and caches its result: two RC queue pairs on this
    /// device connected to each other at <paramref name="pathMtu"/>; RDMA WRITE into and out of, RDMA READ out of
    /// and into, SEND into and out of an ODP region over a shared memfd mapping, 4 path-MTUs per work request at a
    /// page-aligned and a mid-page offset, every byte compared; when anything is wrong, the same split into one
    /// path MTU per work request. Takes a few hundred milliseconds on soft-RoCE under emulation.
    /// </summary>
    /// <inheritdoc cref="OdpIntegrity" path="/param"/>
    /// <inheritdoc cref="OdpIntegrity" path="/exception"/>
    public OdpIntegrityResult CheckOdpIntegrity(Mtu pathMtu, byte port = 1) => LookUpOdpIntegrity(pathMtu, port, refresh: true);

    OdpIntegrityResult LookUpOdpIntegrity(Mtu pathMtu, byte port, bool refresh)
    {
        _ = pathMtu.Bytes();
        if (!Attributes.Odp.Supported)
            throw new NotSupportedException($"{this} does not support On-Demand Paging; there is nothing to check.");
        var active = QueryPort(port).ActiveMtu;
        if (pathMtu > active)
            throw new ArgumentOutOfRangeException(nameof(pathMtu), pathMtu,
                $"{this} port {port} has active MTU {active.Bytes()}; no queue pair on it can use path MTU {pathMtu.Bytes()}.");
        var result = OdpIntegrityCache.Get(this, pathMtu, port, refresh);
        Volatile.Write(ref _odpLimits[(int)pathMtu], (long)result.RequiredAlignment << 32 | result.MaxSafeTransfer);
        return result;
    }

    /// <summary>
    /// The ODP rule at <paramref name="pathMtu"/>: the largest safe transfer per work request
    /// (<see cref="OdpIntegrityResult.Unlimited"/>, a byte count, or 0) and the alignment its ODP-side address
    /// needs; looked up once per device and MTU.
    /// </summary>
    internal OdpRule OdpTransferRule(Mtu pathMtu)
    {
        long known = Volatile.Read(ref _odpLimits[(int)pathMtu]);
        if (known == NotKnown)
        {
            if (!Attributes.Odp.Supported)
                return OdpRule.Sound;   // no ODP region can exist here
            _ = LookUpOdpIntegrity(pathMtu, FirstPortWithMtu(pathMtu), refresh: false);
            known = Volatile.Read(ref _odpLimits[(int)pathMtu]);
        }
        return new OdpRule((uint)known, (uint)(known >> 32));
    }

    byte FirstPortWithMtu(Mtu pathMtu)
    {
        for (byte p = 1; p <= Attributes.PortCount; p++)
        {
            if (QueryPort(p).ActiveMtu >= pathMtu)
                return p;
        }
        return 1;
    }

    /// <summary>The rule peers must honour for our ODP regions: the strictest over every port's active MTU.</summary>
    internal OdpRule OdpTransferRuleForPeers()
    {
        var rule = OdpRule.Sound;
        for (byte p = 1; p <= Attributes.PortCount; p++)
        {
            var r = OdpTransferRule(QueryPort(p).ActiveMtu);
            rule = new OdpRule(Math.Min(rule.MaxTransfer, r.MaxTransfer), Math.Max(rule.Alignment, r.Alignment));
        }
        return rule;
    }

    /// <summary>Before the first ODP registration: makes sure every port's active MTU has been checked.</summary>
    internal void EnsureOdpIntegrityChecked()
    {
        if (OdpIntegrityProbe.IsRunning || !Attributes.Odp.Supported)
            return;
        for (byte p = 1; p <= Attributes.PortCount; p++)
        {
            var port = QueryPort(p);
            if (port.State is PortState.Active or PortState.ActiveDefer)
                _ = OdpTransferRule(port.ActiveMtu);
        }
    }
}

/// <summary>What the ODP integrity probe allows: transfers of at most <paramref name="MaxTransfer"/> bytes per work
/// request (<see cref="OdpIntegrityResult.Unlimited"/>: any; 0: none) whose ODP-side address is a multiple of
/// <paramref name="Alignment"/>.</summary>
internal readonly record struct OdpRule(uint MaxTransfer, uint Alignment)
{
    public static OdpRule Sound => new(OdpIntegrityResult.Unlimited, 1);

    public bool IsSound => MaxTransfer == OdpIntegrityResult.Unlimited && Alignment <= 1;
}
