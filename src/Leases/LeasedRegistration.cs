using RdmaLease.Verbs;

namespace RdmaLease.Leases;

/// <summary>A byte range of a leased file, to register for RDMA: <see cref="FileLease.Range"/> makes one.</summary>
public readonly record struct LeasedFileRange
{
    /// <summary>Checks that [<paramref name="offset"/>, +<paramref name="length"/>) lies inside the lease's file mapping.</summary>
    /// <remarks>Offsets and lengths of memory and file ranges are <c>ulong</c> throughout the library (verbs' <c>uint64_t</c>).</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or outside the file's mapping.</exception>
    public LeasedFileRange(FileLease lease, ulong offset, ulong length)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentOutOfRangeException.ThrowIfZero(length);
        ulong mapped = (ulong)lease.File.Length;
        if (offset > mapped || length > mapped - offset)
            throw new ArgumentOutOfRangeException(nameof(length), $"[{offset}, {offset}+{length}) is outside the {lease.File.Length}-byte mapping of '{lease.File.Path}'");
        Lease = lease;
        Offset = offset;
        Length = length;
    }

    /// <summary>The lease the registration depends on.</summary>
    public FileLease Lease { get; }

    /// <summary>Offset of the first byte in the file (and in its mapping).</summary>
    public ulong Offset { get; }

    /// <summary>Bytes.</summary>
    public ulong Length { get; }
}

/// <summary>How <see cref="LeasedRegistration.Register(ProtectionDomain, LeasedFileRange, AccessFlags, LeasedRegistrationOptions?)"/> registers.</summary>
public enum LeasedRegistrationMode
{
    /// <summary>
    /// On-Demand Paging when the device supports it for the operations the access needs; otherwise refused
    /// (<see cref="OdpUnavailableException"/>). Never pins: a pinned region has a weaker guarantee (see
    /// <see cref="Pinned"/>), so it must be asked for.
    /// </summary>
    Auto,

    /// <summary>Always ODP; <see cref="OdpUnavailableException"/> when the device lacks it.</summary>
    OnDemand,

    /// <summary>
    /// Always pinned (still torn down when the lease ends). The kernel refuses to pin an FS-DAX mapping (EOPNOTSUPP,
    /// a <see cref="VerbsException"/>); useful for non-DAX files on devices without ODP. The weaker guarantee: an ODP
    /// region is cut off from the file by the signal handler at the moment of the break, but a pinned region keeps its
    /// pages until its teardown deregisters it, so if the process cannot finish the teardown within lease-break-time
    /// (stopped, stalled), the kernel takes the lease back and a peer's write with the old key can still complete with
    /// Success into pages that are no longer the file's (the file itself is never reached). A failed deregistration
    /// quarantines the protection domain; <see cref="LeaseDiagnostics.DeadlineMisses"/> counts missed deadlines.
    /// </summary>
    Pinned,
}

/// <summary>Options of a leased registration.</summary>
public sealed class LeasedRegistrationOptions
{
    /// <summary>ODP or pinned; see <see cref="LeasedRegistrationMode"/>. Default <see cref="LeasedRegistrationMode.Auto"/>.</summary>
    public LeasedRegistrationMode Mode { get; init; } = LeasedRegistrationMode.Auto;

    /// <summary>
    /// ODP capabilities needed beyond what the access flags imply (those imply Write, Read, Atomic, Flush for the remote
    /// flags): add <see cref="OdpTransportCaps.Send"/>/<see cref="OdpTransportCaps.Receive"/> when this process posts
    /// sends from, or receives into, the region.
    /// </summary>
    public OdpTransportCaps AdditionalOdpCapabilities { get; init; }
}

/// <summary>
/// The device has no On-Demand Paging for what the registration needs, and the memory cannot be pinned (FS-DAX) or
/// <see cref="LeasedRegistrationMode.OnDemand"/> was asked for.
/// </summary>
public sealed class OdpUnavailableException : NotSupportedException
{
    internal OdpUnavailableException(string message, OdpTransportCaps required, OdpTransportCaps supported)
        : base(message)
    {
        Required = required;
        Supported = supported;
    }

    /// <summary>The RC ODP capabilities the registration needs.</summary>
    public OdpTransportCaps Required { get; }

    /// <summary>What the device reports for RC (<see cref="OdpCapabilities.Rc"/>; None when it has no ODP at all).</summary>
    public OdpTransportCaps Supported { get; }
}

/// <summary>
/// A work request named a memory region whose file lease has ended (broken by another process, or released): the
/// region has been revoked and deregistered. Re-acquire the lease and register again once the conflicting operation
/// is over.
/// </summary>
public sealed class LeaseRevokedException : InvalidOperationException
{
    internal LeaseRevokedException(FileLease lease, bool broken, string message)
        : base(message)
    {
        Lease = lease;
        Path = lease.File.Path;
        WasBroken = broken;
    }

    /// <summary>A registration asked for on a lease that has already ended.</summary>
    internal static LeaseRevokedException ForRegistration(FileLease lease) =>
        new(lease, lease.WasBroken, lease.WasBroken
            ? $"cannot register '{lease.File.Path}': its {lease.Mechanism.ToString().ToLowerInvariant()} was broken by another process and the mapping revoked. Open the file again, take a new lease with DaxFile.AcquireLease and register through it."
            : $"cannot register '{lease.File.Path}': its {lease.Mechanism.ToString().ToLowerInvariant()} was already released. Take a new lease with DaxFile.AcquireLease and register through it.");

    internal LeaseRevokedException(FileLease lease, bool broken)
        : base(broken
            ? $"the memory region over '{lease.File.Path}' was revoked and deregistered: its {lease.Mechanism.ToString().ToLowerInvariant()} was broken by another process (truncate, open, hole punch, unlink...). Take a new lease and register again."
            : $"the memory region over '{lease.File.Path}' was deregistered because its {lease.Mechanism.ToString().ToLowerInvariant()} was released.")
    {
        Lease = lease;
        Path = lease.File.Path;
        WasBroken = broken;
    }

    /// <summary>The ended lease.</summary>
    public FileLease Lease { get; }

    /// <summary>The file.</summary>
    public string Path { get; }

    /// <summary>True when the kernel broke the lease; false for a voluntary release.</summary>
    public bool WasBroken { get; }
}

/// <summary>Registers memory regions over leased files: <c>pd.Register(lease.Range(0, n), access)</c>.</summary>
public static class LeasedRegistration
{
    /// <summary>Registers the whole file mapping of <paramref name="lease"/>; see <see cref="Register(ProtectionDomain, LeasedFileRange, AccessFlags, LeasedRegistrationOptions?)"/>.</summary>
    public static LeasedMemoryRegion Register(this ProtectionDomain pd, FileLease lease, AccessFlags access, LeasedRegistrationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(lease);
        return Register(pd, new LeasedFileRange(lease, 0, (ulong)lease.File.Length), access, options);
    }

    /// <summary>
    /// Registers <paramref name="range"/> of a leased file for RDMA. The registration lives only while the lease is held:
    /// when the lease is broken (or released) it is revoked (posts naming it throw <see cref="LeaseRevokedException"/>),
    /// the queue pairs attached with <see cref="LeasedMemoryRegion.AttachQueuePair"/> are moved to the error state, and the
    /// region is deregistered, all before the lease is given back; peers using its rkey then get remote access errors.
    /// </summary>
    /// <remarks>
    /// ODP (<see cref="AccessFlags.OnDemand"/>) is used when the device supports it, on RC, for every operation the
    /// access needs (<see cref="RequiredOdpCapabilities"/>); FS-DAX mappings cannot be pinned, so there ODP is required.
    /// A non-DAX file (opened with <see cref="DaxFileOptions.AllowNonDax"/>) is pinned only with <see cref="LeasedRegistrationMode.Pinned"/> (a weaker guarantee: see there).
    /// The registration runs no ODP integrity probe and writes nothing: the device's <see cref="Device.OdpQuirk"/> (by
    /// default only the rxe driver's known defect; <see cref="DeviceOptions.OdpQuirk"/>) was chosen when the device was
    /// opened, and applies to the region's use: posts that would be corrupted are split or refused, and
    /// <see cref="MemoryRegion.ToRemote()"/> tells peers the limits (docs/known-defects.md). Nothing the quirk does runs
    /// on the lease-break path.
    /// </remarks>
    /// <exception cref="ArgumentException">Access flags this method sets itself (OnDemand), or a PD of another device than expected.</exception>
    /// <exception cref="LeaseRevokedException">The lease has already ended.</exception>
    /// <exception cref="OdpUnavailableException">FS-DAX (or Mode OnDemand) and the device lacks the ODP capabilities.</exception>
    /// <exception cref="VerbsException">The kernel refused the registration.</exception>
    public static LeasedMemoryRegion Register(this ProtectionDomain pd, LeasedFileRange range, AccessFlags access, LeasedRegistrationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(pd);
        if (range.Lease is null)
            throw new ArgumentException("default(LeasedFileRange): make one with FileLease.Range or the constructor", nameof(range));
        if ((access & AccessFlags.OnDemand) != 0)
            throw new ArgumentException("leave AccessFlags.OnDemand out: the registration chooses ODP or pinning itself (LeasedRegistrationOptions.Mode)", nameof(access));
        options ??= new LeasedRegistrationOptions();
        if (!Enum.IsDefined(options.Mode))
            throw new ArgumentOutOfRangeException(nameof(options), options.Mode, "unknown LeasedRegistrationMode");
        DaxFile file = range.Lease.File;
        CheckAccessAgainstFile(file, access);
        bool onDemand = UseOnDemand(pd.Device.Name, pd.Device.Attributes.Odp, file.IsDax, file.Path, access, options);
        return new LeasedMemoryRegion(pd, range, onDemand ? access | AccessFlags.OnDemand : access);
    }

    /// <summary>Refuses write access to a file mapped read-only: the device would write where the process may not.</summary>
    internal static void CheckAccessAgainstFile(DaxFile file, AccessFlags access)
    {
        const AccessFlags Writes = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic;
        if (file.Access == DaxFileAccess.Read && (access & Writes) != 0)
            throw new ArgumentException(
                $"'{file.Path}' is open read-only (DaxFileAccess.Read, mapped PROT_READ, under a read lease), but {access & Writes} asks for " +
                "write access to it. Register it with AccessFlags.RemoteRead alone, or open the file with DaxFileAccess.ReadWrite.", nameof(access));
    }

    /// <summary>
    /// The RC ODP capabilities a region with <paramref name="access"/> needs: RemoteWrite → Write, RemoteRead → Read,
    /// RemoteAtomic → Atomic, FlushGlobal/FlushPersistent → Flush.
    /// </summary>
    public static OdpTransportCaps RequiredOdpCapabilities(AccessFlags access)
    {
        var caps = OdpTransportCaps.None;
        if ((access & AccessFlags.RemoteWrite) != 0)
            caps |= OdpTransportCaps.Write;
        if ((access & AccessFlags.RemoteRead) != 0)
            caps |= OdpTransportCaps.Read;
        if ((access & AccessFlags.RemoteAtomic) != 0)
            caps |= OdpTransportCaps.Atomic;
        if ((access & (AccessFlags.FlushGlobal | AccessFlags.FlushPersistent)) != 0)
            caps |= OdpTransportCaps.Flush;
        return caps;
    }

    /// <summary>ODP (true) or pinned (false) for a registration; throws <see cref="OdpUnavailableException"/> when neither works.</summary>
    internal static bool UseOnDemand(string deviceName, OdpCapabilities odp, bool isDax, string path, AccessFlags access, LeasedRegistrationOptions options)
    {
        if (options.Mode == LeasedRegistrationMode.Pinned)
            return false;
        OdpTransportCaps required = RequiredOdpCapabilities(access) | options.AdditionalOdpCapabilities;
        OdpTransportCaps supported = odp.Supported ? odp.Rc : OdpTransportCaps.None;
        OdpTransportCaps missing = odp.Supported ? required & ~supported : required;
        if (odp.Supported && missing == OdpTransportCaps.None)
            return true;
        string why = odp.Supported
            ? $"device {deviceName} supports On-Demand Paging on RC only for {supported}, not for {missing} (needed by {access} / {options.AdditionalOdpCapabilities})"
            : $"device {deviceName} has no On-Demand Paging support";
        string what = isDax
            ? $"'{path}' is on FS-DAX, whose pages the kernel refuses to pin for RDMA (ibv_reg_mr fails with EOPNOTSUPP), so it can only be registered with ODP"
            : options.Mode == LeasedRegistrationMode.OnDemand
                ? "LeasedRegistrationMode.OnDemand was asked for"
                : "LeasedRegistrationMode.Auto registers with ODP only. This non-DAX file could be pinned with LeasedRegistrationMode.Pinned, " +
                  "at the cost of a weaker guarantee: a pinned region stays reachable if the process misses the kernel's lease-break deadline";
        throw new OdpUnavailableException($"cannot register '{path}': {what}, and {why}. Use a device with ODP (e.g. rxe on Linux 6.x, mlx5).", required, supported);
    }
}
