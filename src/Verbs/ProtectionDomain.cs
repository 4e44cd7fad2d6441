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

    static NativeHandle Allocate(Device device)
    {
        NativeHandle parent = device.HandleForChildren;
        nint ctx = parent.Enter();
        try
        {
            ibv_pd* pd = libibverbs.ibv_alloc_pd((ibv_context*)ctx);
            if (pd == null)
                throw new VerbsException("ibv_alloc_pd", device.ToString(), Marshal.GetLastPInvokeError());
            return new NativeHandle((nint)pd, &Dealloc, "protection domain on " + device.Name, parent);
        }
        finally
        {
            parent.Exit();
        }
    }

    static int Dealloc(nint pd) => libibverbs.ibv_dealloc_pd((ibv_pd*)pd);

    /// <summary>
    /// Allocates <paramref name="length"/> bytes of page-aligned, zeroed memory and registers it.
    /// The memory is freed after the region is deregistered (on dispose).
    /// </summary>
    /// <param name="length">Bytes; rounded up to whole pages.</param>
    /// <param name="access">What local and remote peers may do. <see cref="AccessFlags.OnDemand"/> makes it an ODP region.</param>
    public RegisteredBuffer AllocateBuffer(int length, AccessFlags access = AccessFlags.LocalWrite)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        return new RegisteredBuffer(this, length, access);
    }

    /// <summary>
    /// Registers memory the caller owns. The caller must keep <paramref name="address"/> ..
    /// +<paramref name="length"/> mapped until the region is disposed; for a pinned region the
    /// pages stay pinned until then, for an ODP region the device faults them in on use.
    /// </summary>
    /// <param name="address">Start of the range.</param>
    /// <param name="length">Bytes.</param>
    /// <param name="access">Access rights; include <see cref="AccessFlags.OnDemand"/> for ODP.</param>
    /// <param name="iova">The address peers use for the region's first byte (default: <paramref name="address"/>).</param>
    /// <exception cref="VerbsException">The kernel refused (e.g. EOPNOTSUPP for a pinned FS-DAX mapping).</exception>
    public MemoryRegion Register(void* address, nuint length, AccessFlags access, ulong? iova = null)
    {
        if (address == null)
            throw new ArgumentNullException(nameof(address));
        ArgumentOutOfRangeException.ThrowIfZero(length);
        return new MemoryRegion(this, address, length, access, iova ?? (ulong)address, ownsMemory: false);
    }

    /// <summary>Creates a queue pair in this domain.</summary>
    public QueuePair CreateQueuePair(QueuePairOptions options) => new(this, options);

    /// <summary>Creates a shared receive queue.</summary>
    /// <param name="maxWorkRequests">Receive requests it can hold.</param>
    /// <param name="maxScatterGather">Scatter/gather entries per request.</param>
    public SharedReceiveQueue CreateSharedReceiveQueue(int maxWorkRequests, int maxScatterGather = 1) =>
        new(this, maxWorkRequests, maxScatterGather);

    /// <summary>Creates an address handle to reach <paramref name="remote"/> over UD.</summary>
    public AddressHandle CreateAddressHandle(QueuePairEndpoint remote, int gidIndex, byte port = 1) =>
        new(this, remote, gidIndex, port);

    /// <inheritdoc/>
    public override string ToString() => "protection domain on " + Device.Name;
}
