namespace RdmaLease.Verbs;

// The home of the ODP device quirk (docs/known-defects.md): which devices have one (the table below, keyed by driver,
// as rdma-core's providers/<driver>/ and the kernel's quirk tables are), and the rule QueuePair, SharedReceiveQueue
// and MemoryRegion.ToRemote apply where one is in force. The common path holds a null OdpRule and pays nothing else.

/// <summary>How a device's On-Demand-Paging defects are handled (<see cref="DeviceOptions.OdpQuirk"/>; docs/known-defects.md).</summary>
public enum OdpQuirkMode
{
    /// <summary>
    /// Protect ODP transfers only where a defect is known: the <c>rxe</c> driver, on every kernel (no release with a fix is
    /// known; the defect was seen on Linux 7.2.13 and 7.3.4). Other drivers get no protection. Nothing is probed.
    /// </summary>
    Auto,

    /// <summary>No protection whatever the driver: for a kernel on which <see cref="Device.CheckOdpIntegrity"/> (or
    /// <c>rdma-lease devices --check</c>) found the ODP data path sound.</summary>
    Off,

    /// <summary>
    /// Protect as the ODP integrity probe finds, on any driver with ODP: <see cref="Device.Open(string, DeviceOptions?)"/>
    /// runs it for every active port's MTU (tens of milliseconds each), and a queue pair connecting at a path MTU not yet
    /// probed runs it for that MTU. Results live as long as the device object; nothing is written to disk.
    /// </summary>
    Probe,
}

/// <summary>
/// The On-Demand-Paging quirk in force on a device (<see cref="Device.OdpQuirk"/>, null where none is): the rule by which
/// <see cref="QueuePair"/> splits or refuses transfers touching ODP regions, <see cref="SharedReceiveQueue"/> refuses
/// receive buffers, and <see cref="MemoryRegion.ToRemote()"/> tells peers <see cref="RemoteRegion.MaxTransferPerRequest"/>
/// and <see cref="RemoteRegion.RequiredAlignment"/>. See docs/known-defects.md.
/// </summary>
public sealed class OdpQuirk
{
    readonly Device _device;
    readonly KnownOdpDefect? _known;
    readonly OdpIntegrityResult?[] _probed = new OdpIntegrityResult?[(int)Mtu.Mtu4096 + 1];

    internal OdpQuirk(Device device, OdpQuirkMode mode, KnownOdpDefect? known)
    {
        _device = device;
        Mode = mode;
        _known = known;
    }

    /// <summary><see cref="OdpQuirkMode.Auto"/> (a known defect of the driver) or <see cref="OdpQuirkMode.Probe"/>.</summary>
    public OdpQuirkMode Mode { get; }

    /// <summary>Where the rule comes from, e.g. "rxe drops the in-page offset of ODP addresses (...)".</summary>
    public string Reason => _known?.Reason ?? "found by the ODP integrity probe";

    /// <summary>What transfers touching an ODP region may do at <paramref name="pathMtu"/>, for people
    /// (in <see cref="OdpQuirkMode.Probe"/> mode this may run the probe for that MTU).</summary>
    public string Describe(Mtu pathMtu) =>
        RuleAt(pathMtu)?.ToString() ?? OdpIntegrityResult.Describe(_device.Name, pathMtu, OdpIntegrityResult.Unlimited, 1) + $" ({Reason})";

    /// <inheritdoc/>
    public override string ToString() => $"ODP quirk on {_device.Name}: {Reason}";

    /// <summary>The running kernel's release (<c>uname -r</c>).</summary>
    internal static string KernelRelease { get; } = ReadKernelRelease();

    static string ReadKernelRelease()
    {
        try
        {
            return File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        }
        catch (IOException)
        {
            return Environment.OSVersion.Version.ToString();
        }
    }

    /// <summary>
    /// The policy: which quirk <paramref name="mode"/> puts on a device of <paramref name="driver"/> under
    /// <paramref name="kernelRelease"/>; null for none (also whenever the device has no ODP: no ODP region can exist).
    /// </summary>
    internal static (OdpQuirkMode Mode, KnownOdpDefect? Known)? Choose(OdpQuirkMode mode, string driver, string kernelRelease, bool odpSupported,
        IEnumerable<KnownOdpDefect>? table = null)
    {
        if (!odpSupported)
            return null;
        return mode switch
        {
            OdpQuirkMode.Off => null,
            OdpQuirkMode.Probe => (OdpQuirkMode.Probe, null),
            OdpQuirkMode.Auto => KnownOdpDefect.Find(driver, kernelRelease, table ?? KnownOdpDefect.Table) is { } known ? (OdpQuirkMode.Auto, known) : null,
            _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, "unknown OdpQuirkMode"),
        };
    }

    /// <summary>The rule at <paramref name="pathMtu"/>; null when it allows every transfer (Probe mode may probe here).</summary>
    internal OdpRule? RuleAt(Mtu pathMtu)
    {
        if (_known is { } known)
        {
            var (max, alignment) = known.Limits(pathMtu, (uint)Environment.SystemPageSize);
            return OdpRule.Create(_device.Name, pathMtu, max, alignment, known.Reason);
        }
        OdpIntegrityResult result;
        lock (_probed)
            result = _probed[(int)pathMtu] ??= OdpIntegrityProbe.Run(_device, pathMtu, FirstPortWithMtu(pathMtu));
        return OdpRule.Create(_device.Name, pathMtu, result.MaxSafeTransfer, result.RequiredAlignment, Reason);
    }

    /// <summary>The rule for memory any queue pair may reach (SRQs, peers, receives before Connect): the strictest of the ports' active MTUs.</summary>
    internal OdpRule? RuleForPeers()
    {
        OdpRule? rule = null;
        for (byte p = 1; p <= _device.Attributes.PortCount; p++)
            rule = OdpRule.Strictest(rule, RuleAt(_device.QueryPort(p).ActiveMtu));
        return rule;
    }

    /// <summary>Probe mode: probes every active port's MTU now (when the device is opened).</summary>
    internal void ProbeActivePorts()
    {
        for (byte p = 1; p <= _device.Attributes.PortCount; p++)
        {
            var port = _device.QueryPort(p);
            if (port.State is PortState.Active or PortState.ActiveDefer)
                _ = RuleAt(port.ActiveMtu);
        }
    }

    /// <summary>Probe mode: a result <see cref="Device.CheckOdpIntegrity"/> measured replaces the one for its MTU.</summary>
    internal void Record(OdpIntegrityResult result)
    {
        if (Mode != OdpQuirkMode.Probe)
            return;
        lock (_probed)
            _probed[(int)result.PathMtu] = result;
    }

    byte FirstPortWithMtu(Mtu pathMtu)
    {
        for (byte p = 1; p <= _device.Attributes.PortCount; p++)
        {
            if (_device.QueryPort(p).ActiveMtu >= pathMtu)
                return p;
        }
        return 1;
    }
}

/// <summary>A driver whose ODP data path is known to be defective: the quirk table <see cref="OdpQuirkMode.Auto"/> reads.</summary>
/// <param name="Driver">The libibverbs provider (<see cref="Device.Driver"/>).</param>
/// <param name="FixedIn">The first kernel release with the fix (its numeric prefix, e.g. "7.9"); null while none is known.</param>
/// <param name="Reason">What is wrong, for messages.</param>
/// <param name="Limits">The largest transfer per work request (<see cref="OdpIntegrityResult.Unlimited"/>: any) and the
/// alignment its ODP-side address needs, at a path MTU, given the page size.</param>
internal sealed record KnownOdpDefect(string Driver, string? FixedIn, string Reason, Func<Mtu, uint, (uint MaxTransfer, uint Alignment)> Limits)
{
    internal static readonly KnownOdpDefect[] Table =
    [
        // Every packet lands at (or is read from) the start of its page: only page-aligned addresses are right, and below
        // a page-sized MTU only one packet (later packets start inside the page). Seen on Debian's 7.2.13 and 7.3.4.
        new("rxe", FixedIn: null, "rxe drops the in-page offset of ODP addresses (seen on Linux 7.2.13 and 7.3.4; no fixed release known)",
            (mtu, page) => ((uint)mtu.Bytes() >= page ? OdpIntegrityResult.Unlimited : (uint)mtu.Bytes(), page)),
    ];

    /// <summary>The entry for <paramref name="driver"/> that applies to <paramref name="kernelRelease"/>, or null.</summary>
    internal static KnownOdpDefect? Find(string driver, string kernelRelease, IEnumerable<KnownOdpDefect> table) =>
        table.FirstOrDefault(d => d.Driver == driver && (d.FixedIn is null || KernelVersion(kernelRelease) < Version.Parse(d.FixedIn)));

    /// <summary>The numeric prefix of a release: "7.3.4+deb13-amd64" is 7.3.4; an unreadable one counts as the newest.</summary>
    internal static Version KernelVersion(string release) =>
        Version.TryParse(string.Concat(release.TakeWhile(c => char.IsAsciiDigit(c) || c == '.')).TrimEnd('.'), out var v) ? v : new Version(int.MaxValue, 0);
}

/// <summary>
/// What a quirk allows at one path MTU: ODP transfers of at most <c>maxTransfer</c> bytes per work request
/// (<see cref="OdpIntegrityResult.Unlimited"/>: any; 0: none) whose ODP-side address is a multiple of <c>alignment</c>
/// (1 or the page size: a power of two). There is no instance for "everything allowed": holders keep null, so the post
/// path tests one field.
/// </summary>
internal sealed class OdpRule
{
    readonly string _device, _reason;
    readonly Mtu _mtu;

    OdpRule(string device, Mtu mtu, uint maxTransfer, uint alignment, string reason)
    {
        (_device, _mtu, MaxTransfer, Alignment, _reason) = (device, mtu, maxTransfer, alignment, reason);
    }

    public uint MaxTransfer { get; }
    public uint Alignment { get; }

    internal static OdpRule? Create(string device, Mtu mtu, uint maxTransfer, uint alignment, string reason)
    {
        if (alignment > 1 && !System.Numerics.BitOperations.IsPow2(alignment))
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "an ODP alignment is a power of two");
        return maxTransfer == OdpIntegrityResult.Unlimited && alignment <= 1 ? null : new(device, mtu, maxTransfer, Math.Max(alignment, 1), reason);
    }

    /// <summary>The stricter of two rules (null: no limit).</summary>
    internal static OdpRule? Strictest(OdpRule? a, OdpRule? b) =>
        a is null ? b : b is null ? a
        : new(a._device, a._mtu < b._mtu ? a._mtu : b._mtu, Math.Min(a.MaxTransfer, b.MaxTransfer), Math.Max(a.Alignment, b.Alignment), a._reason);

    /// <summary>
    /// The largest transfer one work request may move for <paramref name="local"/>, given <paramref name="limit"/> (the remote
    /// region's, or Unlimited); throws when an ODP transfer cannot be made correct by splitting.
    /// </summary>
    internal uint TransferLimit(string what, in LocalSegment local, uint limit)
    {
        if (!local.Region.IsOnDemand)
            return limit;
        CheckUsable(what, local);
        limit = Math.Min(limit, MaxTransfer);
        if (local.Length > limit && (limit & (Alignment - 1)) != 0)
            throw Refused(what, local, $"Split at {limit} bytes, the pieces after the first would start inside a page and land at its start: " +
                $"move at most {limit} bytes per call from an aligned address, or use a pinned region.");
        return limit;
    }

    /// <summary>A message (SEND, receive) cannot be split: refuses one in an ODP region that is misaligned or larger than is safe.</summary>
    internal void CheckMessage(string what, in LocalSegment segment)
    {
        if (!segment.Region.IsOnDemand)
            return;
        CheckUsable(what, segment);
        if (segment.Length > MaxTransfer)
            throw Refused(what, segment, what == "receive"
                ? $"A receive buffer in an ODP region there may hold at most {MaxTransfer} bytes (one packet): receive into a pinned region instead."
                : $"A SEND is one message and cannot be split: send at most {MaxTransfer} bytes from an ODP region there, or send from a pinned region.");
    }

    void CheckUsable(string what, in LocalSegment segment)
    {
        if (MaxTransfer == 0)
            throw Refused(what, segment, "Use a pinned region on this device.");
        if ((segment.Address & (Alignment - 1)) != 0)
            throw Refused(what, segment, $"This one starts {segment.Address & (Alignment - 1)} bytes into a page: use an aligned offset or a pinned region.");
    }

    /// <summary>What peers get for <paramref name="region"/>: the limits to honour, or a refusal when no transfer a peer could split is correct.</summary>
    internal RemoteRegion ForPeers(MemoryRegion region)
    {
        if (MaxTransfer == 0 || (MaxTransfer != OdpIntegrityResult.Unlimited && Alignment > MaxTransfer))
            throw new NotSupportedException($"{region} is an On-Demand-Paging region on {this}: no split of a larger transfer is correct, so peers " +
                "must not be given access to it at this path MTU (see docs/known-defects.md). Use a pinned region, or a path MTU of the page size.");
        return new(region.Iova, region.Length, region.RemoteKey, MaxTransfer == OdpIntegrityResult.Unlimited ? 0 : MaxTransfer, Alignment <= 1 ? 0 : Alignment);
    }

    NotSupportedException Refused(string what, LocalSegment segment, string advice) =>
        new($"{what} of {segment.Length} bytes in {segment.Region}: an On-Demand-Paging region on {this} (see docs/known-defects.md). {advice}");

    public override string ToString() => OdpIntegrityResult.Describe(_device, _mtu, MaxTransfer, Alignment) + $" ({_reason})";
}
