using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>One rdma_cm event, copied out of librdmacm's buffer before the event was acknowledged.</summary>
internal sealed unsafe class CmEvent
{
    public rdma_cm_event_type Type;
    public int Status;
    public byte[] PrivateData = [];
    public nint Id;
    public byte ResponderResources, InitiatorDepth;
    /// <summary>CONNECT_REQUEST: the request's new cm_id, moved to this channel (null when it could not be).</summary>
    public CmEventChannel? RequestChannel;
    public string? RequestError;

    public string Name => Marshal.PtrToStringUTF8((nint)RdmaCm.EventName(Type)) ?? Type.ToString();
}

/// <summary>
/// An rdma_event_channel read on the shared epoll thread (<see cref="EventLoop"/>): no thread blocks on it. Every
/// event is copied and acknowledged (rdma_ack_cm_event) before its handler runs, so rdma_destroy_id, which waits for the
/// acknowledgements of its id's events, never waits on us.
/// </summary>
internal sealed unsafe class CmEventChannel : IDisposable
{
    readonly NativeHandle _handle;
    readonly int _fd;
    Action<CmEvent>? _onEvent;
    volatile bool _disposed;
    bool _registered;

    public CmEventChannel()
    {
        RdmaCm.EnsureLoaded();
        rdma_event_channel* channel = librdmacm.rdma_create_event_channel();
        if (channel == null)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new VerbsException("rdma_create_event_channel", "rdma_cm", errno, errno == Errno.ENOENT || errno == Errno.ENODEV
                ? "/dev/infiniband/rdma_cm is missing: load the rdma_ucm kernel module (modprobe rdma_ucm)." : null);
        }
        _fd = channel->fd;
        _handle = new NativeHandle((nint)channel, &Destroy, $"rdma_cm event channel (fd {_fd})");
    }

    static int Destroy(nint channel)
    {
        librdmacm.rdma_destroy_event_channel((rdma_event_channel*)channel);
        return 0;
    }

    /// <summary>The handle ids on this channel depend on (so it is closed after them).</summary>
    public NativeHandle Handle => _handle;

    /// <summary>Starts delivering events to <paramref name="onEvent"/> (on the event thread; it must not block).</summary>
    public void Start(Action<CmEvent> onEvent)
    {
        _onEvent = onEvent;
        EventLoop.Shared.Register(_fd, OnReadable);
        _registered = true;
    }

    void OnReadable()
    {
        if (_disposed)
            return;
        using (var scope = _handle.Enter())
        {
            var channel = (rdma_event_channel*)scope.Pointer;
            rdma_cm_event* e;
            // Non-blocking descriptor: -1 with EAGAIN once no event is queued.
            while (librdmacm.rdma_get_cm_event(channel, &e) == 0)
            {
                var copy = Copy(e);
                librdmacm.rdma_ack_cm_event(e);
                try
                {
                    _onEvent?.Invoke(copy);
                }
                catch (Exception ex)
                {
                    Trace.TraceError($"rdma-lease: handling {copy.Name} failed: {ex}");
                }
            }
        }
        if (!_disposed)
            EventLoop.Shared.Rearm(_fd);
    }

    static CmEvent Copy(rdma_cm_event* e)
    {
        var copy = new CmEvent { Type = e->@event, Status = e->status, Id = (nint)e->id };
        if (e->@event is rdma_cm_event_type.RDMA_CM_EVENT_CONNECT_REQUEST or rdma_cm_event_type.RDMA_CM_EVENT_CONNECT_RESPONSE
            or rdma_cm_event_type.RDMA_CM_EVENT_REJECTED or rdma_cm_event_type.RDMA_CM_EVENT_ESTABLISHED)
        {
            ref var conn = ref e->param.conn;
            if (conn.private_data != null && conn.private_data_len > 0)
                copy.PrivateData = new ReadOnlySpan<byte>(conn.private_data, conn.private_data_len).ToArray();
            copy.ResponderResources = conn.responder_resources;
            copy.InitiatorDepth = conn.initiator_depth;
        }
        if (e->@event == rdma_cm_event_type.RDMA_CM_EVENT_CONNECT_REQUEST)
        {
            // The request's id gets its own channel now, before anything else can arrive for it on the listener's.
            CmEventChannel? own = null;
            try
            {
                own = new CmEventChannel();
                using var ch = own.Handle.Enter();
                if (librdmacm.rdma_migrate_id(e->id, (rdma_event_channel*)ch.Pointer) != 0)
                    throw new VerbsException("rdma_migrate_id", "a connection request", Marshal.GetLastPInvokeError());
                copy.RequestChannel = own;
            }
            catch (Exception ex)
            {
                own?.Dispose();
                copy.RequestError = ex.Message;
            }
        }
        return copy;
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        if (_registered)
            EventLoop.Shared.Unregister(_fd);
        _handle.Dispose();   // closed once the ids on it are destroyed (they hold references)
    }
}
