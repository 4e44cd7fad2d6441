using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// A protection domain (<c>ibv_pd</c>): memory regions, queue pairs, SRQs and address handles live
/// in one, and only objects of the same domain can be used together. Disposing it disposes them.
/// </summary>
/// <remarks>Thread-safe.</remarks>
public sealed unsafe class ProtectionDomain : VerbsObject
{
    /// <summary>The device the domain belongs to.</summary>
    public Device Device { get; }

    internal ibv_pd* Pd => (ibv_pd*)Handle.DangerousGetHandle();

    internal ProtectionDomain(Device device)
        : base(Allocate(device), device)
    {
        Device = device;
    }

    static NativeHandle Allocate(Device device) =>
        NativeCalls.Create(device.HandleForChildren, 0, static (ctx, _) => (nint)libibverbs.ibv_alloc_pd((ibv_context*)ctx), &Dealloc,
            "ibv_alloc_pd", device.ToString(), "protection domain on " + device.Name);

    static int Dealloc(nint pd) => libibverbs.ibv_dealloc_pd((ibv_pd*)pd);

    /// <summary>
    /// Allocates <paramref name="length"/> bytes of page-aligned, zeroed memory and registers it.
    /// The memory is freed after the region is deregistered (on dispose).
    /// </summary>
    /// <param name="length">Bytes; rounded up to whole pages. <see cref="RegisteredBuffer.Span"/> covers at most
    /// <see cref="int.MaxValue"/> bytes; larger buffers are reached with <see cref="RegisteredBuffer.AsSpan"/> and posted with
    /// <see cref="MemoryRegion.Slice"/>.</param>
    /// <param name="access">What local and remote peers may do. <see cref="AccessFlags.OnDemand"/> makes it an ODP region.</param>
    /// <remarks>ODP regions: as for <see cref="Register"/>.</remarks>
    public RegisteredBuffer AllocateBuffer(ulong length, AccessFlags access = AccessFlags.LocalWrite)
    {
        ArgumentOutOfRangeException.ThrowIfZero(length);
        return new RegisteredBuffer(this, length, access);
    }

    /// <summary>
    /// Registers memory the caller owns. The caller must keep <paramref name="address"/> ..
    /// +<paramref name="length"/> mapped until the region is disposed; for a pinned region the
    /// pages stay pinned until then, for an ODP region the device faults them in on use.
    /// </summary>
    /// <param name="address">Start of the range: a pointer into this process, which the caller vouches for (hence
    /// <c>unsafe</c>). Every address the library reports back (<see cref="MemoryRegion.Address"/>, <see cref="LocalSegment.Address"/>,
    /// <see cref="RemoteRegion.Address"/>) is a <c>ulong</c>, verbs' <c>uint64_t</c>.</param>
    /// <param name="length">Bytes; regions of 4 GiB and more are fine (ODP ones need not fit in memory).</param>
    /// <param name="access">Access rights; include <see cref="AccessFlags.OnDemand"/> for ODP.</param>
    /// <param name="iova">The address peers use for the region's first byte (default: <paramref name="address"/>).</param>
    /// <remarks>
    /// An ODP registration (<see cref="AccessFlags.OnDemand"/>) runs no probe and consults no quirk: it is one
    /// <c>ibv_reg_mr</c>. Where the device has an <see cref="Device.OdpQuirk"/> (by default the rxe driver's known defect,
    /// docs/known-defects.md), that rule is applied when the region is used instead: <see cref="QueuePair"/> refuses or
    /// splits transfers it would corrupt, and <see cref="MemoryRegion.ToRemote()"/> tells peers the limits.
    /// </remarks>
    /// <exception cref="ArgumentException">The range lies in a leased file's mapping (register that through its lease).</exception>
    /// <exception cref="VerbsException">The kernel refused (e.g. EOPNOTSUPP for a pinned FS-DAX mapping).</exception>
    public MemoryRegion Register(void* address, ulong length, AccessFlags access, ulong? iova = null)
    {
        if (address == null)
            throw new ArgumentNullException(nameof(address));
        ArgumentOutOfRangeException.ThrowIfZero(length);
        // A range past the end of the address space would wrap, and the leased-mapping check below would miss it.
        if (length > ulong.MaxValue - (ulong)address)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"0x{(nint)address:x}+{length} ends past the 64-bit address space");
        if (ProtectedMappings.Overlapping((nint)address, (nuint)length) is { } file)
            throw new ArgumentException(
                $"[0x{(nint)address:x}, +{length}) lies in the mapping of the leased file '{file}': a region registered directly would not be " +
                "tied to the file's lease and could outlive it. Register it through the lease: pd.Register(lease.Range(offset, length), access).", nameof(address));
        return new MemoryRegion(this, address, length, access, iova ?? (ulong)address, ownsMemory: false);
    }

    /// <summary>
    /// Registers memory owned by <paramref name="owners"/> (a file mapping and its descriptor): the region keeps them
    /// alive, so they are released only after the kernel confirmed the region deregistered.
    /// </summary>
    internal MemoryRegion RegisterKeepingAlive(void* address, ulong length, AccessFlags access, params ReadOnlySpan<SafeHandle?> owners)
    {
        if (address == null)
            throw new ArgumentNullException(nameof(address));
        ArgumentOutOfRangeException.ThrowIfZero(length);
        return new MemoryRegion(this, address, length, access, (ulong)address, ownsMemory: false, owners);
    }

    /// <summary>Creates a queue pair in this domain.</summary>
    /// <exception cref="InvalidOperationException">The domain is quarantined (<see cref="QuarantineReason"/>).</exception>
    public QueuePair CreateQueuePair(QueuePairOptions options)
    {
        ThrowIfQuarantined();
        var qp = new QueuePair(this, options);
        if (QuarantineReason is not null)
        {
            qp.Dispose();   // quarantined while it was being created: it was not in the snapshot Quarantine moved to error
            ThrowIfQuarantined();
        }
        return qp;
    }

    string? _quarantine;

    /// <summary>
    /// Why the domain is quarantined, or null. A domain is quarantined when a memory region in it that had to be
    /// deregistered (its file lease ended) could not be: every queue pair of the domain was moved to the error state so
    /// that no peer can reach the region through it, and no new queue pair can be created in it. Dispose the domain
    /// and use a new one.
    /// </summary>
    public string? QuarantineReason => Volatile.Read(ref _quarantine);

    /// <summary>
    /// Quarantines the domain (see <see cref="QuarantineReason"/>): from now on no queue pair is created in it, and
    /// every existing one is moved to the error state. Returns the errors of QPs that could not be moved.
    /// </summary>
    internal List<Exception> Quarantine(string reason)
    {
        Interlocked.CompareExchange(ref _quarantine, reason, null);
        var errors = new List<Exception>();
        foreach (var qp in ChildrenOf<QueuePair>())
        {
            try
            {
                qp.MoveToError();
            }
            catch (ObjectDisposedException)
            {
                // destroyed meanwhile: it reaches nothing
            }
            catch (VerbsException e)
            {
                errors.Add(e);
            }
        }
        return errors;
    }

    void ThrowIfQuarantined()
    {
        if (QuarantineReason is { } why)
            throw new InvalidOperationException($"{this} is quarantined and takes no new queue pairs: {why} Dispose it and allocate a new protection domain.");
    }

    /// <summary>Creates a shared receive queue.</summary>
    /// <param name="maxWorkRequests">Receive requests it can hold.</param>
    /// <param name="maxScatterGather">Scatter/gather entries per request.</param>
    public SharedReceiveQueue CreateSharedReceiveQueue(int maxWorkRequests, int maxScatterGather = 1) =>
        new(this, maxWorkRequests, maxScatterGather);

    /// <summary>
    /// Allocates a memory window: a revocable rkey over part of a region of this domain, bound and revoked with work
    /// requests (<see cref="QueuePair.PostBindMemoryWindow"/>, <see cref="QueuePair.PostLocalInvalidate"/>).
    /// </summary>
    /// <exception cref="NotSupportedException">The device does not support windows of <paramref name="type"/>
    /// (<see cref="DeviceAttributes.MemoryWindows"/>).</exception>
    public MemoryWindow AllocateMemoryWindow(MemoryWindowType type = MemoryWindowType.Type2) => new(this, type);

    /// <summary>Creates an address handle to reach <paramref name="remote"/> over UD.</summary>
    public AddressHandle CreateAddressHandle(QueuePairEndpoint remote, int gidIndex, byte port = 1) =>
        new(this, remote, gidIndex, port);

    /// <inheritdoc/>
    public override string ToString() => "protection domain on " + Device.Name;
}
