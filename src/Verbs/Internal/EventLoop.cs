using System.Collections.Concurrent;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace RdmaLease.Verbs.Internal;

/// <summary>
/// One epoll thread for the whole process that watches the file descriptors of completion
/// channels and device async-event queues, so waiting costs no thread per CQ. A handler runs
/// on this thread when its descriptor is readable and must not block; descriptors are
/// registered one-shot and re-armed by the handler's owner when it wants the next event.
/// </summary>
internal sealed unsafe class EventLoop
{
    static readonly Lazy<EventLoop> s_shared = new(() => new EventLoop());
    public static EventLoop Shared => s_shared.Value;

    readonly int _epoll;
    readonly ConcurrentDictionary<int, Action> _handlers = new();

    EventLoop()
    {
        _epoll = epoll_create1(EPOLL_CLOEXEC);
        if (_epoll < 0)
            throw new VerbsException("epoll_create1", "the completion event loop", errno);
        new Thread(Run) { IsBackground = true, Name = "rdma-lease events" }.Start();
    }

    /// <summary>Makes <paramref name="fd"/> non-blocking and watches it (one-shot) for readability.</summary>
    public void Register(int fd, Action onReadable)
    {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            throw new VerbsException("fcntl(O_NONBLOCK)", $"event descriptor {fd}", errno);
        _handlers[fd] = onReadable;
        Control(EPOLL_CTL_ADD, fd);
    }

    /// <summary>Asks for the next readability event of a registered descriptor.</summary>
    public void Rearm(int fd) => Control(EPOLL_CTL_MOD, fd);

    /// <summary>Stops watching <paramref name="fd"/>. A handler already running may still finish.</summary>
    public void Unregister(int fd)
    {
        _handlers.TryRemove(fd, out _);
        epoll_event ev = default;
        _ = epoll_ctl(_epoll, EPOLL_CTL_DEL, fd, &ev);
    }

    void Control(int op, int fd)
    {
        epoll_event ev = default;
        ev.events = EPOLLIN | EPOLLONESHOT;
        ev.data.fd = fd;
        if (epoll_ctl(_epoll, op, fd, &ev) < 0)
            throw new VerbsException("epoll_ctl", $"event descriptor {fd}", errno);
    }

    void Run()
    {
        const int Max = 32;
        epoll_event* events = stackalloc epoll_event[Max];
        while (true)
        {
            int n = epoll_wait(_epoll, events, Max, -1);
            if (n < 0)
            {
                if (errno == EINTR)
                    continue;
                Environment.FailFast($"rdma-lease event loop: epoll_wait failed with errno {errno}");
            }
            for (int i = 0; i < n; i++)
            {
                if (_handlers.TryGetValue(events[i].data.fd, out var handler))
                {
                    try
                    {
                        handler();
                    }
                    catch (Exception e) when (e is ObjectDisposedException or VerbsException)
                    {
                        // The owner was disposed between the event and the handler; nothing to deliver.
                    }
                }
            }
        }
    }
}
