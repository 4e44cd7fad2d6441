using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// A memory window (<c>ibv_mw</c>): a second rkey over part of a registered region, that this process can bind,
/// move and revoke while the region stays registered. Give a peer the window's <see cref="ToRemote"/> instead of the
/// region's: revoking the window (<see cref="QueuePair.PostLocalInvalidate"/>, a peer's
/// <see cref="QueuePair.PostSendWithInvalidate"/>, or for type 1 <see cref="QueuePair.PostUnbindMemoryWindow"/>)
/// takes one work request, microseconds, where deregistering the region takes a system call and pinning again.
/// </summary>
/// <remarks>
/// <para>Allocated with <see cref="ProtectionDomain.AllocateMemoryWindow"/>; bound with
/// <see cref="QueuePair.PostBindMemoryWindow"/> to a range of a region registered with
/// <see cref="AccessFlags.MemoryWindowBind"/> in the same protection domain. A type 2 window is usable only through
/// the QP that bound it, a type 1 window through any QP of its domain. On a device that does not confine peers to a
/// window's range (rxe: it checks only the region's bounds), windows are bound over whole regions only: register a
/// region per range to hand out (docs/known-defects.md).</para>
/// <para>Lifetime: the window keeps its protection domain alive. While bound, it is also a child of the region it is
/// bound to and, for type 2, of the QP it was bound through: disposing either disposes the window first (a region
/// with bound windows cannot be deregistered — rxe refuses with EINVAL, IBA 10.6.7.2.6 — and a leased region must be
/// deregistered when its lease breaks). Dispose deallocates the window, which revokes any binding at once.</para>
/// <para>Thread-safety: binds, unbinds and invalidations of one window are serialized by the window; the window's
/// state (<see cref="RemoteKey"/>, <see cref="BoundRegion"/>) is that of the last one posted, which takes effect
/// when the device executes it. A bind that completes with an error (<see cref="WorkCompletionStatus.MemoryWindowBindError"/>)
/// leaves the window's key unknown: dispose it and allocate another.</para>
/// </remarks>
public sealed unsafe class MemoryWindow : VerbsObject
{
    /// <summary>The domain the window was allocated in.</summary>
    public ProtectionDomain ProtectionDomain { get; }
    /// <summary>Type 1 or type 2.</summary>
    public MemoryWindowType Type { get; }

    readonly Lock _sync = new();
    uint _rkey;
    MemoryRegion? _region;         // the region of the last bind posted (a dependent-parent), null before any
    QueuePair? _boundThrough;      // type 2: the QP of the last bind posted (a dependent-parent)
    ulong _offset, _length;
    AccessFlags _access;
    bool _bound;                   // false after an unbind or invalidation was posted

    internal MemoryWindow(ProtectionDomain pd, MemoryWindowType type)
        : base(Allocate(pd, type, out ibv_mw* mw), pd)
    {
        ProtectionDomain = pd;
        Type = type;
        _rkey = mw->rkey;
    }

    static NativeHandle Allocate(ProtectionDomain pd, MemoryWindowType type, out ibv_mw* mw)
    {
        if (type is not (MemoryWindowType.Type1 or MemoryWindowType.Type2))
            throw new ArgumentOutOfRangeException(nameof(type), type, "a memory window is of type 1 or type 2");
        var caps = pd.Device.Attributes.MemoryWindows;
        bool supported = type == MemoryWindowType.Type1
            ? (caps & MemoryWindowCapabilities.Type1) != 0
            : (caps & (MemoryWindowCapabilities.Type2A | MemoryWindowCapabilities.Type2B)) != 0;
        if (!supported)
            throw new NotSupportedException($"{pd.Device} does not support {type} memory windows (it reports {caps}).");
        var handle = NativeCalls.Create(pd.HandleForChildren, (nint)type, static (p, t) => (nint)RdmaLeaseNative.AllocMw((ibv_pd*)p, (int)t), &Dealloc,
            "ibv_alloc_mw", $"{type} memory window in {pd}", $"{type} memory window on {pd.Device.Name}",
            errno => errno == Errno.ENOMEM ? $"The device allows {pd.Device.Attributes.MaxMw} memory windows." : null);
        mw = (ibv_mw*)handle.DangerousGetHandle();
        handle.Rename($"{type} memory window (rkey 0x{mw->rkey:x}) on {pd.Device.Name}");
        return handle;
    }

    static int Dealloc(nint mw) => RdmaLeaseNative.DeallocMw((ibv_mw*)mw);

    /// <summary>
    /// The window's rkey: after a bind is posted, the key that bind gives peers (each bind changes the low 8 bits);
    /// before any bind, the key the window was allocated with, which grants nothing.
    /// </summary>
    public uint RemoteKey
    {
        get
        {
            lock (_sync)
                return _rkey;
        }
    }

    /// <summary>The region of the last bind posted, or null (never bound, or an unbind/invalidation was posted since).</summary>
    public MemoryRegion? BoundRegion
    {
        get
        {
            lock (_sync)
                return _bound ? _region : null;
        }
    }

    /// <summary>
    /// What a peer needs to reach the bound range through the window: its address (the region's IOVA plus the bound
    /// offset), length and the window's rkey, with the transfer limits of the region (<see cref="MemoryRegion.ToRemote()"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">The window is not bound.</exception>
    public RemoteRegion ToRemote()
    {
        MemoryRegion region;
        ulong offset, length;
        uint rkey;
        lock (_sync)
        {
            if (!_bound || _region is null)
                throw new InvalidOperationException($"{this} is not bound: bind it with QueuePair.PostBindMemoryWindow first.");
            (region, offset, length, rkey) = (_region, _offset, _length, _rkey);
        }
        return Describe(region, offset, length, rkey);
    }

    static RemoteRegion Describe(MemoryRegion region, ulong offset, ulong length, uint rkey) =>
        region.ToRemote() with { Address = region.Iova + offset, Length = length, RemoteKey = rkey };

    /// <summary>Checks a bind before anything is posted; the device would otherwise fail it asynchronously.</summary>
    internal void CheckBind(QueuePair qp, MemoryRegion region, ulong offset, ulong length, AccessFlags access)
    {
        if (region.ProtectionDomain != ProtectionDomain)
            throw new ArgumentException($"{region} is in another protection domain than {this}.", nameof(region));
        if (Type == MemoryWindowType.Type2 && qp.ProtectionDomain != ProtectionDomain)
            throw new ArgumentException($"a type 2 window is bound through a QP of its own protection domain; {qp} is in another.", nameof(qp));
        if (Type == MemoryWindowType.Type2 && qp.Type == QueuePairType.UnreliableDatagram)
            throw new ArgumentException($"{qp} is UD: memory windows are bound through RC or UC queue pairs.", nameof(qp));
        if ((region.Access & AccessFlags.MemoryWindowBind) == 0)
            throw new ArgumentException($"{region} was registered without AccessFlags.MemoryWindowBind ({region.Access}): windows cannot be bound to it.", nameof(region));
        // FLUSH through a window needs the window's own Flush* access (rxe checks it against the window, as it does
        // READ/WRITE/atomics: a FLUSH through a RemoteWrite-only window is a remote access error, measured).
        const AccessFlags Allowed = AccessFlags.RemoteRead | AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic | AccessFlags.FlushGlobal | AccessFlags.FlushPersistent;
        if ((access & ~Allowed) != 0 || access == AccessFlags.None)
            throw new ArgumentException($"{access}: a window grants RemoteRead, RemoteWrite, RemoteAtomic, FlushGlobal and/or FlushPersistent, nothing else (zero-based windows are not supported).", nameof(access));
        var device = ProtectionDomain.Device.Attributes;
        if (((access & AccessFlags.FlushGlobal) != 0 && !device.FlushGlobal) || ((access & AccessFlags.FlushPersistent) != 0 && !device.FlushPersistent))
            throw new ArgumentException($"{access}: {ProtectionDomain.Device} does not support that FLUSH type (FlushGlobal {device.FlushGlobal}, FlushPersistent {device.FlushPersistent}).", nameof(access));
        if ((access & (AccessFlags.RemoteWrite | AccessFlags.RemoteAtomic)) != 0 && (region.Access & AccessFlags.LocalWrite) == 0)
            throw new ArgumentException($"a window granting {access} needs a region with LocalWrite; {region} has {region.Access}.", nameof(access));
        ArgumentOutOfRangeException.ThrowIfZero(length);
        region.CheckRange(offset, length);
        if ((offset != 0 || length != region.Length) && !UnsafeBoundsDefectIgnored && KnownWindowDefect.Find(ProtectionDomain.Device.Driver) is { } defect)
            throw new NotSupportedException($"{ProtectionDomain.Device} does not confine a peer to a memory window's range: {defect.Reason}. " +
                $"A window over [{offset}, {offset + length}) of {region} would give the peer all {region.Length} bytes of it. Bind windows over " +
                "whole regions: register a region (with AccessFlags.MemoryWindowBind) for each range you hand out, and grant and revoke access " +
                "with windows over them (see docs/known-defects.md).");
    }

    /// <summary>
    /// Test hook: binds windows over part of a region even on a device known not to confine peers to them
    /// (<see cref="KnownWindowDefect"/>), so a test can show what the device does.
    /// </summary>
    internal bool UnsafeBoundsDefectIgnored { get; set; }

    /// <summary>
    /// Posts a bind (or, with <paramref name="region"/> null for type 1, an unbind) through <paramref name="qp"/> and
    /// records the result. Called by QueuePair under its own checks.
    /// </summary>
    internal RemoteRegion? PostBind(QueuePair qp, NativeHandle qpHandle, ulong workRequestId, MemoryRegion? region, ulong offset, ulong length,
        AccessFlags access, SendFlags flags)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        lock (_sync)
        {
            MemoryRegion target = region ?? _region ?? throw new InvalidOperationException($"{this} was never bound: there is nothing to unbind.");
            // The peer-facing description first: a region that must not be given to peers (ToRemote refuses) is not bound either.
            RemoteRegion? remote = region is null ? null : Describe(region, offset, length, 0);
            // Become a dependent before posting, so a Dispose of the region (or QP) that starts now closes this window
            // before its own native destroy; undone below if the post fails.
            MemoryRegion? previousRegion = _region;
            QueuePair? previousQp = _boundThrough;
            bool addedRegion = false, addedQp = false;
            if (target != previousRegion)
            {
                target.AddDependent(this);
                addedRegion = true;
            }
            try
            {
                if (Type == MemoryWindowType.Type2 && qp != previousQp)
                {
                    qp.AddDependent(this);
                    addedQp = true;
                }
                // Released in reverse order: the QP, then the window, then the region, so if both the window and its
                // region were disposed meanwhile the window is deallocated before the region is deregistered.
                using var mrRef = target.EnterForPost();
                using var mwRef = Handle.Enter();
                using var qpRef = qpHandle.Enter();
                ibv_mw* mw = (ibv_mw*)mwRef.Pointer;
                ibv_mr* mr = (ibv_mr*)mrRef.Pointer;
                ulong address = region is null ? 0 : (ulong)region.Address + offset;
                ulong bindLength = region is null ? 0 : length;
                int rc;
                string verb;
                if (Type == MemoryWindowType.Type1)
                {
                    verb = "ibv_bind_mw";
                    rc = RdmaLeaseNative.BindMw((ibv_qp*)qpRef.Pointer, mw, workRequestId, (uint)flags, mr, address, bindLength, (uint)access);
                }
                else
                {
                    verb = "ibv_post_send(IBV_WR_BIND_MW)";
                    uint next = NextKey(mw->rkey);
                    var wr = new ibv_send_wr { wr_id = workRequestId, opcode = ibv_wr_opcode.IBV_WR_BIND_MW, send_flags = (uint)flags };
                    wr.bind_mw.mw = mw;
                    wr.bind_mw.rkey = next;
                    wr.bind_mw.bind_info = new ibv_mw_bind_info { mr = mr, addr = address, length = bindLength, mw_access_flags = (uint)access };
                    ibv_send_wr* bad;
                    rc = RdmaLeaseNative.PostSend((ibv_qp*)qpRef.Pointer, &wr, &bad);
                    // The kernel identifies the window by this key in the next bind: keep it in step, as the provider
                    // does itself for type 1 binds.
                    if (rc == 0)
                        mw->rkey = next;
                }
                if (rc != 0)
                    throw new VerbsException(verb, $"{this} through {qp}", rc,
                        rc == Errno.EINVAL ? "The QP must be RC or UC and in a state that accepts send requests." : null);
                _rkey = mw->rkey;
            }
            catch
            {
                if (addedRegion)
                    target.RemoveDependent(this);
                if (addedQp)
                    qp.RemoveDependent(this);
                throw;
            }
            if (addedRegion && previousRegion is not null)
                previousRegion.RemoveDependent(this);
            if (addedQp && previousQp is not null)
                previousQp.RemoveDependent(this);
            _region = target;
            if (Type == MemoryWindowType.Type2)
                _boundThrough = qp;
            _bound = region is not null;
            (_offset, _length, _access) = region is null ? (0UL, 0UL, AccessFlags.None) : (offset, length, access);
            return remote is { } r ? r with { RemoteKey = _rkey } : null;
        }
    }

    /// <summary>Posts a local invalidation of the window (type 2) through <paramref name="qp"/>.</summary>
    internal void PostLocalInvalidate(QueuePair qp, NativeHandle qpHandle, ulong workRequestId, SendFlags flags)
    {
        if (Type != MemoryWindowType.Type2)
            throw new InvalidOperationException($"{this} is a type 1 window: those are revoked with PostUnbindMemoryWindow, not invalidated.");
        lock (_sync)
        {
            if (_region is null)
                throw new InvalidOperationException($"{this} was never bound: there is nothing to invalidate.");
            using var mwRef = Handle.Enter();   // a disposed window throws here, not with a confusing completion
            using var qpRef = qpHandle.Enter();
            var wr = new ibv_send_wr { wr_id = workRequestId, opcode = ibv_wr_opcode.IBV_WR_LOCAL_INV, send_flags = (uint)flags };
            wr.invalidate_rkey = _rkey;
            ibv_send_wr* bad;
            int rc = RdmaLeaseNative.PostSend((ibv_qp*)qpRef.Pointer, &wr, &bad);
            if (rc != 0)
                throw new VerbsException("ibv_post_send(IBV_WR_LOCAL_INV)", $"{this} through {qp}", rc);
            _bound = false;
        }
    }

    /// <summary>ibv_inc_rkey: the next key of a window, which differs in the low 8 bits only.</summary>
    internal static uint NextKey(uint rkey) => (rkey & ~0xffu) | ((rkey + 1) & 0xffu);

    private protected override void OnDisposing()
    {
        MemoryRegion? region;
        QueuePair? qp;
        lock (_sync)
        {
            (region, qp) = (_region, _boundThrough);
            _bound = false;
        }
        region?.RemoveDependent(this);
        qp?.RemoveDependent(this);
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Type} memory window on {ProtectionDomain.Device.Name}";
}
