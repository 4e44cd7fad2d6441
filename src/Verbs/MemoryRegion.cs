using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// A registered memory region (<c>ibv_mr</c>): its <see cref="LocalKey"/> lets this process's
/// work requests use the memory, its <see cref="RemoteKey"/> lets peers reach it, as far as
/// <see cref="Access"/> allows. Disposing it deregisters it; afterwards no work request can use it.
/// </summary>
/// <remarks>Thread-safe. A region can be revoked (for example when the lease on a file under it
/// breaks): from then on, posting a work request that names it throws the revocation's exception.</remarks>
public unsafe class MemoryRegion : VerbsObject
{
    /// <summary>The domain the region was registered in.</summary>
    public ProtectionDomain ProtectionDomain { get; }
    /// <summary>First byte of the registered range in this process (verbs' <c>uint64_t</c>, like every address here).</summary>
    public ulong Address { get; }
    /// <summary>Length in bytes; may exceed 4 GiB (one work request moves at most <see cref="uint.MaxValue"/> bytes of it).</summary>
    public ulong Length { get; }
    /// <summary>The address peers use for <see cref="Address"/> (usually the same).</summary>
    public ulong Iova { get; }
    /// <summary>Access rights the region was registered with.</summary>
    public AccessFlags Access { get; }
    /// <summary>The lkey, for local scatter/gather entries.</summary>
    public uint LocalKey { get; }
    /// <summary>The rkey, for peers' RDMA operations (only meaningful with a remote access flag).</summary>
    public uint RemoteKey { get; }
    /// <summary>True for an On-Demand-Paging region (no pages pinned).</summary>
    public bool IsOnDemand => (Access & AccessFlags.OnDemand) != 0;

    Exception? _revoked;

    // keepAlive: handles owning the memory (a file mapping, its descriptor), released only after the region's
    // deregistration succeeded, so the range cannot be unmapped while the region might exist.
    internal MemoryRegion(ProtectionDomain pd, void* address, ulong length, AccessFlags access, ulong iova, bool ownsMemory,
        params ReadOnlySpan<SafeHandle?> keepAlive)
        : base(RegisterNative(pd, address, length, access, iova, ownsMemory, out ibv_mr* mr, keepAlive), pd)
    {
        ProtectionDomain = pd;
        Address = (ulong)address;
        Length = length;
        Iova = iova;
        Access = access;
        LocalKey = mr->lkey;
        RemoteKey = mr->rkey;
    }

    static NativeHandle RegisterNative(ProtectionDomain pd, void* address, ulong length, AccessFlags access, ulong iova, bool ownsMemory, out ibv_mr* mr,
        ReadOnlySpan<SafeHandle?> keepAlive)
    {
        if ((access & (AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)) != 0 && (access & AccessFlags.LocalWrite) == 0)
        {
            if (ownsMemory)
                NativeMemory.AlignedFree(address);
            throw new ArgumentException($"{access}: remote write and remote atomic access need LocalWrite too (the verbs API requires it).", nameof(access));
        }
        // The keep-alive handles are dependencies: released only after ibv_dereg_mr succeeded.
        nint memory = (nint)address;
        var args = new Registration { Address = address, Length = (nuint)length, Iova = iova, Access = (uint)access };
        var handle = NativeCalls.Create(pd.HandleForChildren, (nint)(&args), static (p, a) =>
            {
                var r = (Registration*)a;
                return (nint)libibverbs.ibv_reg_mr_iova2((ibv_pd*)p, r->Address, r->Length, r->Iova, r->Access);
            }, &Deregister, "ibv_reg_mr", $"{length} bytes at 0x{memory:x} ({access}) in {pd}", $"memory region 0x{memory:x}+{length}",
            errno => Hint(errno, access), ownsMemory ? () => NativeMemory.AlignedFree((void*)memory) : null, keepAlive);
        mr = (ibv_mr*)handle.DangerousGetHandle();
        VerbsMetrics.Registered((ulong)mr->length);
        handle.Rename($"memory region 0x{memory:x}+{length} (rkey 0x{mr->rkey:x})");
        if (ownsMemory)
            handle.FreeAfterDestroy = (nint)address;
        return handle;
    }

    struct Registration
    {
        public void* Address;
        public nuint Length;
        public ulong Iova;
        public uint Access;
    }

    static string? Hint(int errno, AccessFlags access) => errno switch
    {
        Errno.EOPNOTSUPP when (access & AccessFlags.OnDemand) == 0 =>
            "The kernel refuses to pin this memory; FS-DAX file mappings cannot be pinned. Register it with AccessFlags.OnDemand on a device with ODP support.",
        Errno.EOPNOTSUPP or Errno.EINVAL when (access & AccessFlags.OnDemand) != 0 =>
            "The device may not support On-Demand Paging for this access (see Device.Attributes.Odp).",
        Errno.EINVAL when (access & AccessFlags.FlushPersistent) != 0 =>
            "FlushPersistent needs persistent memory (an FS-DAX mapping).",
        Errno.ENOMEM => "Pinned memory is limited by RLIMIT_MEMLOCK (ulimit -l).",
        Errno.EFAULT when (access & (AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)) != 0 =>
            "The range is not mapped in this process, or it is mapped read-only while the access asks for writes (LocalWrite, RemoteWrite, RemoteAtomic).",
        Errno.EFAULT => "The range is not mapped in this process.",
        _ => null,
    };

    static int Deregister(nint mr)
    {
        ulong length = (ulong)((ibv_mr*)mr)->length;   // read before: the struct is freed by a successful ibv_dereg_mr
        int rc = libibverbs.ibv_dereg_mr((ibv_mr*)mr);
        if (rc == 0)
            VerbsMetrics.Deregistered(length);
        return rc;
    }

    /// <summary>
    /// Revokes the region: every later post that names it throws <paramref name="reason"/>
    /// (rethrown as is). Deregistration still happens on <see cref="VerbsObject.Dispose()"/>.
    /// </summary>
    public void Revoke(Exception reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        Interlocked.CompareExchange(ref _revoked, reason, null);
    }

    /// <summary>The exception posts will throw, once revoked; else null.</summary>
    public Exception? Revocation => Volatile.Read(ref _revoked);

    /// <summary>
    /// Takes a reference for a post; throws if revoked or disposed. The revocation is checked again after the
    /// reference is taken: a post either fails here, or holds the reference until its native call returned, and
    /// the deregistration (which waits for the last reference) can only run after that. Revoke does not wait: a post that
    /// passed this check just before it may still reach libibverbs after Revoke returned. What is guaranteed is that every
    /// post naming the region reaches libibverbs before the deregistration starts, and none after (the lease teardown
    /// relies on exactly that: revoke, then deregister and wait for the kernel's confirmation, then give the lease back).
    /// </summary>
    internal HandleScope EnterForPost()
    {
        if (Volatile.Read(ref _revoked) is { } reason)
        {
            VerbsMetrics.RevokedPost();
            throw reason;
        }
        var scope = Handle.Enter();
        if (Volatile.Read(ref _revoked) is { } late)
        {
            scope.Dispose();
            VerbsMetrics.RevokedPost();
            throw late;
        }
        return scope;
    }

    /// <summary>Gives back a reference <see cref="EnterForPost"/> took, for callers that hold several at once.</summary>
    internal void ExitPost() => Handle.DangerousRelease();

    /// <summary>
    /// Deregisters the region and waits, until <paramref name="deadline"/> (a Stopwatch timestamp), for the kernel
    /// to confirm it: a post holding a reference finishes first. Returns Destroyed once ibv_dereg_mr succeeded;
    /// Pending when a reference was still held at the deadline (the deregistration then runs when it is given back);
    /// Failed when ibv_dereg_mr kept failing (<see cref="DeregistrationErrno"/>): the region may still exist, and the
    /// memory under it (and anything it was registered to keep alive) is kept for ever.
    /// </summary>
    internal DestroyState DeregisterAndWait(long deadline)
    {
        Dispose();
        return Handle.WaitForDestroy(deadline);
    }

    /// <summary>The errno of the last failed ibv_dereg_mr (0 when none failed).</summary>
    internal int DeregistrationErrno => Handle.DestroyErrno;

    /// <summary>Whether ibv_dereg_mr has run and succeeded (the kernel object is gone), is pending, or failed.</summary>
    internal DestroyState DeregistrationState => Handle.DestroyState;

    /// <summary>Checks that [offset, offset+length) lies inside the region.</summary>
    internal void CheckRange(ulong offset, ulong length)
    {
        if (offset > Length || length > Length - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) is outside {this} (length {Length}).");
    }

    /// <summary>
    /// Prefetches (faults in) part of an ODP region so the first RDMA access does not page-fault
    /// (<c>ibv_advise_mr</c>). Returns false where the provider has no prefetch (EOPNOTSUPP).
    /// </summary>
    /// <param name="offset">Start, in bytes from <see cref="Address"/>.</param>
    /// <param name="length">Bytes.</param>
    /// <param name="forWrite">Prefetch for writing (pages made writable).</param>
    public bool Prefetch(ulong offset, uint length, bool forWrite)
    {
        if (!IsOnDemand)
            throw new InvalidOperationException($"{this} is not an ODP region; only ODP regions can be prefetched.");
        CheckRange(offset, length);
        var sge = new ibv_sge { addr = Address + offset, length = length, lkey = LocalKey };
        using var pd = ProtectionDomain.HandleForChildren.Enter();
        using var mr = EnterForPost();
        const int PrefetchRead = 0, PrefetchWrite = 1;   // IBV_ADVISE_MR_ADVICE_PREFETCH(_WRITE)
        const uint FlagFlush = 1;                        // IBV_ADVISE_MR_FLAG_FLUSH: wait until done
        int rc = RdmaLeaseNative.AdviseMr((ibv_pd*)pd.Pointer, forWrite ? PrefetchWrite : PrefetchRead, FlagFlush, &sge, 1);
        if (rc == Errno.EOPNOTSUPP)
            return false;
        if (rc != 0)
            throw new VerbsException("ibv_advise_mr", ToString(), rc);
        return true;
    }

    /// <summary>A local scatter/gather segment of this region.</summary>
    public LocalSegment Slice(ulong offset, uint length)
    {
        CheckRange(offset, length);
        return new LocalSegment(this, offset, length);
    }

    /// <summary>The whole region as one local segment (one scatter/gather entry).</summary>
    /// <exception cref="InvalidOperationException">The region is longer than one scatter/gather entry can be
    /// (<see cref="uint.MaxValue"/> bytes, verbs' 32-bit <c>sge.length</c>): post parts of it with <see cref="Slice"/>.</exception>
    public LocalSegment All => Length <= uint.MaxValue ? new(this, 0, (uint)Length) : throw new InvalidOperationException(
        $"{this} is {Length} bytes, more than one scatter/gather entry can describe ({uint.MaxValue} bytes, verbs' 32-bit sge length): " +
        "post parts of it with Slice(offset, length); a peer still reaches the whole region through ToRemote().");

    /// <summary>
    /// What a peer needs to reach this region: address (IOVA), length and rkey, and for an On-Demand-Paging region on a
    /// device with an <see cref="Device.OdpQuirk"/>, the limits its peers must honour for the strictest of the device's
    /// ports' active MTUs: <see cref="RemoteRegion.MaxTransferPerRequest"/> and <see cref="RemoteRegion.RequiredAlignment"/>.
    /// Peers using a smaller path MTU should be given <see cref="ToRemote(Mtu)"/>. Our <see cref="QueuePair"/> honours
    /// the limits; a peer that ignores them can still corrupt the region (see docs/known-defects.md).
    /// </summary>
    /// <exception cref="NotSupportedException">An ODP region whose device's quirk leaves no correct way for a peer to move
    /// more than one packet (rxe below a page-sized MTU).</exception>
    public RemoteRegion ToRemote() => ToRemote(IsOnDemand ? ProtectionDomain.Device.OdpQuirk?.RuleForPeers() : null);

    /// <summary>As <see cref="ToRemote()"/>, with the limits for queue pairs whose path MTU is <paramref name="pathMtu"/>.</summary>
    /// <exception cref="NotSupportedException">As for <see cref="ToRemote()"/>, at that MTU.</exception>
    public RemoteRegion ToRemote(Mtu pathMtu) => ToRemote(IsOnDemand ? ProtectionDomain.Device.OdpQuirk?.RuleAt(pathMtu) : null);

    RemoteRegion ToRemote(OdpRule? rule) => rule?.ForPeers(this) ?? new(Iova, Length, RemoteKey);

    /// <inheritdoc/>
    public override string ToString() => $"memory region 0x{Address:x}+{Length} (lkey 0x{LocalKey:x}) on {ProtectionDomain.Device.Name}";
}

/// <summary>
/// Memory the library allocated (page-aligned, zeroed) and registered; freed after deregistration.
/// </summary>
public sealed unsafe class RegisteredBuffer : MemoryRegion
{
    internal RegisteredBuffer(ProtectionDomain pd, ulong length, AccessFlags access)
        : this(pd, Allocate(length, out ulong size), size, access)
    {
    }

    RegisteredBuffer(ProtectionDomain pd, void* memory, ulong size, AccessFlags access)
        : base(pd, memory, size, access, (ulong)memory, ownsMemory: true)
    {
    }

    static void* Allocate(ulong length, out ulong size)
    {
        ulong page = (ulong)Environment.SystemPageSize;
        if (length > ulong.MaxValue - page)
            throw new ArgumentOutOfRangeException(nameof(length), length, "larger than any address space");
        size = (length + page - 1) & ~(page - 1);
        void* p = NativeMemory.AlignedAlloc((nuint)size, (nuint)page);   // throws OutOfMemoryException when it cannot
        NativeMemory.Clear(p, (nuint)size);
        return p;
    }

    /// <summary>The buffer's bytes. Valid until the buffer is disposed.</summary>
    /// <exception cref="InvalidOperationException">The buffer is longer than a span can be (<see cref="int.MaxValue"/>
    /// bytes): use <see cref="AsSpan"/> for parts of it.</exception>
    public Span<byte> Span
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsDisposed, this);
            if (Length > int.MaxValue)
                throw new InvalidOperationException(
                    $"{this} is {Length} bytes; a Span<byte> holds at most {int.MaxValue}. Use AsSpan(offset, length) for parts of it.");
            return new Span<byte>((void*)Address, (int)Length);
        }
    }

    /// <summary>The bytes [<paramref name="offset"/>, +<paramref name="length"/>) of the buffer, at any offset of a
    /// buffer of any size. Valid until the buffer is disposed.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the buffer, or <paramref name="length"/> is negative.</exception>
    public Span<byte> AsSpan(ulong offset, int length)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        CheckRange(offset, (ulong)length);
        return new Span<byte>((void*)(Address + offset), length);
    }
}
