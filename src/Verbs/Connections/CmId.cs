using System.Net;
using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// An rdma_cm_id (RDMA_PS_TCP, i.e. RC) on one event channel. Its native pointer is reached only through
/// <see cref="NativeHandle.Enter"/>; rdma_destroy_id runs when it is disposed and no call is inside it, before the
/// channel it depends on is closed. No QP is ever attached to it (id->qp stays NULL): our own QueuePair is driven
/// with rdma_init_qp_attr (see <see cref="QueuePair"/>'s Connections part).
/// </summary>
internal sealed unsafe class CmId : IDisposable
{
    readonly NativeHandle _handle;

    CmId(NativeHandle handle, CmEventChannel channel)
    {
        _handle = handle;
        Channel = channel;
    }

    public CmEventChannel Channel { get; }

    /// <summary>A new id on <paramref name="channel"/>.</summary>
    public static CmId Create(CmEventChannel channel)
    {
        var handle = new NativeHandle(0, &Destroy, "rdma_cm id", channel.Handle);
        rdma_cm_id* id;
        using (var ch = channel.Handle.Enter())
        {
            if (librdmacm.rdma_create_id((rdma_event_channel*)ch.Pointer, &id, null, rdma_port_space.RDMA_PS_TCP) != 0)
            {
                int errno = RdmaCm.LastErrno();
                handle.ReleaseDependenciesOfUnusedHandle();
                throw new VerbsException("rdma_create_id", "rdma_cm", errno);
            }
        }
        handle.Attach((nint)id, "rdma_cm id");
        return new CmId(handle, channel);
    }

    /// <summary>Takes ownership of a connection request's id, already moved to <paramref name="channel"/>.</summary>
    public static CmId Adopt(nint id, CmEventChannel channel)
    {
        var handle = new NativeHandle(0, &Destroy, "rdma_cm id", channel.Handle);
        handle.Attach(id, "rdma_cm id (connection request)");
        return new CmId(handle, channel);
    }

    static int Destroy(nint id) => librdmacm.rdma_destroy_id((rdma_cm_id*)id) == 0 ? 0 : RdmaCm.LastErrno();

    public bool Is(nint pointer) => _handle.DangerousGetHandle() == pointer;

    /// <summary>The verbs device the id is bound to (after address resolution or on a request), null before.</summary>
    public string? DeviceName
    {
        get
        {
            using var s = _handle.Enter();
            var id = (rdma_cm_id*)s.Pointer;
            return id->verbs == null ? null : Marshal.PtrToStringUTF8((nint)libibverbs.ibv_get_device_name(id->verbs->device));
        }
    }

    public byte Port
    {
        get
        {
            using var s = _handle.Enter();
            return ((rdma_cm_id*)s.Pointer)->port_num;
        }
    }

    public IPEndPoint? LocalEndPoint
    {
        get
        {
            using var s = _handle.Enter();
            var id = (rdma_cm_id*)s.Pointer;
            return RdmaCm.FromSockaddr(new ReadOnlySpan<byte>(&id->route.addr.Anonymous1, RdmaCm.SockaddrSize));
        }
    }

    public IPEndPoint? RemoteEndPoint
    {
        get
        {
            using var s = _handle.Enter();
            var id = (rdma_cm_id*)s.Pointer;
            return RdmaCm.FromSockaddr(new ReadOnlySpan<byte>(&id->route.addr.Anonymous2, RdmaCm.SockaddrSize));
        }
    }

    public void Bind(IPEndPoint endPoint)
    {
        byte* sa = stackalloc byte[RdmaCm.SockaddrSize];
        RdmaCm.ToSockaddr(endPoint, new Span<byte>(sa, RdmaCm.SockaddrSize));
        using var s = _handle.Enter();
        if (librdmacm.rdma_bind_addr((rdma_cm_id*)s.Pointer, (sockaddr*)sa) != 0)
        {
            int errno = RdmaCm.LastErrno();
            throw new VerbsException("rdma_bind_addr", endPoint.ToString(), errno, errno switch
            {
                RdmaCm.EADDRINUSE => "Another rdma_cm listener (or connection) uses that port: pick another, or port 0 for any.",
                RdmaCm.EADDRNOTAVAIL => $"Either another rdma_cm id already uses port {endPoint.Port} on that address (pick another, or port 0 for any), " +
                    $"or no RDMA device is bound to the network interface carrying {endPoint.Address}: check `rdma link` and `ip addr`.",
                Errno.ENODEV => $"No RDMA device is bound to the network interface carrying {endPoint.Address}: " +
                    "check `rdma link` (soft-RoCE: rdma link add rxe0 type rxe netdev <interface>) and `ip addr`.",
                _ => null,
            });
        }
    }

    public void Listen(int backlog, IPEndPoint endPoint)
    {
        using var s = _handle.Enter();
        if (librdmacm.rdma_listen((rdma_cm_id*)s.Pointer, backlog) != 0)
            throw new VerbsException("rdma_listen", endPoint.ToString(), RdmaCm.LastErrno());
    }

    public void ResolveAddress(IPAddress? source, IPEndPoint destination, int timeoutMs)
    {
        byte* src = stackalloc byte[RdmaCm.SockaddrSize];
        byte* dst = stackalloc byte[RdmaCm.SockaddrSize];
        if (source is not null)
            RdmaCm.ToSockaddr(new IPEndPoint(source, 0), new Span<byte>(src, RdmaCm.SockaddrSize));
        RdmaCm.ToSockaddr(destination, new Span<byte>(dst, RdmaCm.SockaddrSize));
        using var s = _handle.Enter();
        if (librdmacm.rdma_resolve_addr((rdma_cm_id*)s.Pointer, source is null ? null : (sockaddr*)src, (sockaddr*)dst, timeoutMs) != 0)
            throw new RdmaConnectionException(RdmaConnectionFailure.AddressResolution, destination.ToString(), RdmaCm.LastErrno(),
                $"rdma_resolve_addr to {destination} failed at once: {Errno.Describe(RdmaCm.LastErrno())}. " + RdmaConnection.AddressHint(destination, source));
    }

    public void ResolveRoute(int timeoutMs, IPEndPoint destination)
    {
        using var s = _handle.Enter();
        if (librdmacm.rdma_resolve_route((rdma_cm_id*)s.Pointer, timeoutMs) != 0)
            throw new RdmaConnectionException(RdmaConnectionFailure.RouteResolution, destination.ToString(), RdmaCm.LastErrno(),
                $"rdma_resolve_route to {destination} failed at once: {Errno.Describe(RdmaCm.LastErrno())}. " + RdmaConnection.LoopbackNote(destination) +
                "Check that the interface carrying the route has an RDMA device bound to it (`rdma link`, `ip route get`).");
    }

    public void Connect(uint qpNumber, ReadOnlySpan<byte> privateData, byte responderResources, byte initiatorDepth, byte retryCount, byte rnrRetry, string target)
    {
        int errno = Establish(connect: true, qpNumber, privateData, responderResources, initiatorDepth, retryCount, rnrRetry);
        if (errno != 0)
            throw new VerbsException("rdma_connect", target, errno, errno == Errno.EINVAL
                ? "The initiator depth or responder resources exceed what the device allows (its max_qp_init_rd_atom / max_qp_rd_atom)." : null);
    }

    public void Accept(uint qpNumber, ReadOnlySpan<byte> privateData, byte responderResources, byte initiatorDepth, byte rnrRetry, string target)
    {
        int errno = Establish(connect: false, qpNumber, privateData, responderResources, initiatorDepth, retryCount: 0, rnrRetry);
        if (errno != 0)
            throw new VerbsException("rdma_accept", target, errno);
    }

    /// <summary>rdma_connect or rdma_accept with one rdma_conn_param (the retry count only means something to connect); the errno or 0.</summary>
    int Establish(bool connect, uint qpNumber, ReadOnlySpan<byte> privateData, byte responderResources, byte initiatorDepth, byte retryCount, byte rnrRetry)
    {
        fixed (byte* pd = privateData)
        {
            var param = new rdma_conn_param
            {
                private_data = privateData.IsEmpty ? null : pd,
                private_data_len = (byte)privateData.Length,
                responder_resources = responderResources,
                initiator_depth = initiatorDepth,
                retry_count = retryCount,
                rnr_retry_count = rnrRetry,
                qp_num = qpNumber,
            };
            using var s = _handle.Enter();
            var id = (rdma_cm_id*)s.Pointer;
            int rc = connect ? librdmacm.rdma_connect(id, &param) : librdmacm.rdma_accept(id, &param);
            return rc == 0 ? 0 : RdmaCm.LastErrno();
        }
    }

    public void Reject(ReadOnlySpan<byte> privateData, string target)
    {
        fixed (byte* pd = privateData)
        {
            using var s = _handle.Enter();
            if (librdmacm.rdma_reject((rdma_cm_id*)s.Pointer, privateData.IsEmpty ? null : pd, (byte)privateData.Length) != 0)
                throw new VerbsException("rdma_reject", target, RdmaCm.LastErrno());
        }
    }

    public void Establish(string target)
    {
        using var s = _handle.Enter();
        if (librdmacm.rdma_establish((rdma_cm_id*)s.Pointer) != 0)
            throw new VerbsException("rdma_establish", target, RdmaCm.LastErrno());
    }

    /// <summary>rdma_disconnect; returns the errno (0 on success): disconnecting twice is not an error to us.</summary>
    public int Disconnect()
    {
        using var s = _handle.Enter();
        return librdmacm.rdma_disconnect((rdma_cm_id*)s.Pointer) == 0 ? 0 : RdmaCm.LastErrno();
    }

    /// <summary>rdma_init_qp_attr: the attributes rdma_cm computed for moving a QP of this connection to <paramref name="state"/>.</summary>
    public ibv_qp_attr InitQpAttr(ibv_qp_state state, out int mask, string target)
    {
        var attr = new ibv_qp_attr { qp_state = state };
        int m;
        using var s = _handle.Enter();
        if (librdmacm.rdma_init_qp_attr((rdma_cm_id*)s.Pointer, &attr, &m) != 0)
            throw new VerbsException("rdma_init_qp_attr", $"{target} ({state})", RdmaCm.LastErrno());
        mask = m;
        return attr;
    }

    public bool IsDisposed => _handle.DisposeRequested;

    public void Dispose() => _handle.Dispose();
}
