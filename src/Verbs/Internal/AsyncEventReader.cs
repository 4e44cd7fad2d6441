using RdmaLease.Interop;

namespace RdmaLease.Verbs.Internal;

/// <summary>Reads a device's async events on the shared event thread and raises them.</summary>
internal sealed unsafe class AsyncEventReader : IDisposable
{
    readonly Device _device;
    readonly int _fd;
    public EventHandler<AsyncEvent>? Handlers;

    public AsyncEventReader(Device device)
    {
        _device = device;
        _fd = device.Context->async_fd;
        EventLoop.Shared.Register(_fd, OnReadable);
    }

    void OnReadable()
    {
        var handle = _device.HandleForChildren;
        using var ctxRef = handle.Enter();
        nint ctx = ctxRef.Pointer;
        ibv_async_event e;
        // The fd is non-blocking: returns -1 (EAGAIN) once the queue is empty.
        while (libibverbs.ibv_get_async_event((ibv_context*)ctx, &e) == 0)
        {
            var type = (AsyncEventType)e.event_type;
            int port = type is AsyncEventType.PortActive or AsyncEventType.PortError or AsyncEventType.LidChange
                or AsyncEventType.PkeyChange or AsyncEventType.GidChange or AsyncEventType.SmChange or AsyncEventType.ClientReregister
                ? e.element.port_num : 0;
            uint qpn = type is AsyncEventType.QpFatal or AsyncEventType.QpRequestError or AsyncEventType.QpAccessError
                or AsyncEventType.CommunicationEstablished or AsyncEventType.SendQueueDrained or AsyncEventType.QpLastWqeReached
                or AsyncEventType.PathMigrated or AsyncEventType.PathMigrationError
                ? e.element.qp->qp_num : 0;
            libibverbs.ibv_ack_async_event(&e);
            // Application handlers run on the thread pool, never on the shared event thread,
            // which a slow or throwing handler would otherwise stall or kill.
            if (Handlers is { } handlers)
            {
                var args = new AsyncEvent(type, port, qpn);
                ThreadPool.QueueUserWorkItem(static s => s.handlers(s.device, s.args), (handlers, device: _device, args), preferLocal: false);
            }
        }
        EventLoop.Shared.Rearm(_fd);
    }

    public void Dispose() => EventLoop.Shared.Unregister(_fd);
}
