using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// A completion queue (<c>ibv_cq</c>). <see cref="Poll"/> busy-polls into a caller's span
/// without allocating; <see cref="PollAsync"/> waits for completions through a completion
/// channel watched by the library's single event thread (no thread per CQ).
/// </summary>
/// <remarks>
/// <see cref="Poll"/> may be called from several threads (the provider serializes them);
/// <see cref="PollAsync"/> supports one waiter at a time. Dispose may run on any thread while
/// another polls: the destroy waits for the poll in progress, later polls throw ObjectDisposedException.
/// </remarks>
public sealed unsafe partial class CompletionQueue : VerbsObject
{
    /// <summary>The device the CQ belongs to.</summary>
    public Device Device { get; }
    /// <summary>Entries the CQ holds (at least what was asked).</summary>
    public int Capacity { get; }
    /// <summary>Whether the CQ has a completion channel, i.e. supports <see cref="PollAsync"/>.</summary>
    public bool HasEvents => _channel != null;

    readonly NativeHandle? _channel;
    readonly int _channelFd = -1;
    readonly bool _kernelWcFlags;   // the device reports the kernel's ib_wc_flags (Quirks/CompletionFlagsQuirk.cs)
    readonly object _waitLock = new();
    TaskCompletionSource? _waiter;

    internal ibv_cq* Cq => (ibv_cq*)Handle.DangerousGetHandle();

    internal CompletionQueue(Device device, int entries, bool withEvents)
        : this(device, entries, withEvents ? CreateChannel(device) : null)
    {
    }

    CompletionQueue(Device device, int entries, NativeHandle? channel)
        : base(Create(device, entries, channel, out int capacity), device)
    {
        Device = device;
        Capacity = capacity;
        _channel = channel;
        _kernelWcFlags = KnownCompletionFlagsDefect.Find(device.Driver) is not null;
        if (channel != null)
        {
            _channelFd = ((ibv_comp_channel*)channel.DangerousGetHandle())->fd;
            EventLoop.Shared.Register(_channelFd, OnChannelReadable);
        }
    }

    static NativeHandle CreateChannel(Device device)
    {
        NativeHandle parent = device.HandleForChildren;
        using var ctxRef = parent.Enter();
        nint ctx = ctxRef.Pointer;
        ibv_comp_channel* ch = libibverbs.ibv_create_comp_channel((ibv_context*)ctx);
        if (ch == null)
            throw new VerbsException("ibv_create_comp_channel", device.ToString(), Marshal.GetLastPInvokeError());
        return new NativeHandle((nint)ch, &DestroyChannel, "completion channel on " + device.Name, parent);
    }

    static int DestroyChannel(nint ch) => libibverbs.ibv_destroy_comp_channel((ibv_comp_channel*)ch);

    static NativeHandle Create(Device device, int entries, NativeHandle? channel, out int capacity)
    {
        if (entries < 1 || entries > device.Attributes.MaxCqe)
        {
            channel?.Dispose();
            throw new ArgumentOutOfRangeException(nameof(entries), entries, $"{device} supports 1..{device.Attributes.MaxCqe} CQ entries");
        }
        NativeHandle parent = device.HandleForChildren;
        using var ctxRef = parent.Enter();
        nint ctx = ctxRef.Pointer;
        var ch = channel == null ? null : (ibv_comp_channel*)channel.DangerousGetHandle();
        ibv_cq* cq = libibverbs.ibv_create_cq((ibv_context*)ctx, entries, null, ch, 0);
        if (cq == null)
        {
            int errno = Marshal.GetLastPInvokeError();
            channel?.Dispose();
            throw new VerbsException("ibv_create_cq", $"{device} ({entries} entries)", errno);
        }
        capacity = cq->cqe;
        // The channel must outlive the CQ: it is a dependency, released after ibv_destroy_cq.
        return new NativeHandle((nint)cq, &Destroy, "completion queue on " + device.Name, parent, channel);
    }

    static int Destroy(nint cq) => libibverbs.ibv_destroy_cq((ibv_cq*)cq);

    /// <summary>
    /// Takes up to <c>completions.Length</c> completions off the queue without waiting.
    /// Allocation-free; one P/Invoke transition.
    /// </summary>
    /// <returns>How many entries of <paramref name="completions"/> were filled (0 when none were ready).</returns>
    /// <exception cref="VerbsException">The provider reported a polling error.</exception>
    public int Poll(Span<WorkCompletion> completions)
    {
        using var cqRef = Handle.Enter();
        nint cq = cqRef.Pointer;
        int n;
        fixed (WorkCompletion* wc = completions)
            n = RdmaLeaseNative.PollCq((ibv_cq*)cq, completions.Length, (ibv_wc*)wc);
        if (n < 0)
            throw new VerbsException("ibv_poll_cq", ToString(), -n);
        if (_kernelWcFlags && n > 0)
        {
            fixed (WorkCompletion* wc = completions)
                KnownCompletionFlagsDefect.Translate((ibv_wc*)wc, n);
        }
        return n;
    }

    void RequestNotification()
    {
        using var cqRef = Handle.Enter();
        nint cq = cqRef.Pointer;
        int rc = RdmaLeaseNative.ReqNotifyCq((ibv_cq*)cq, 0);
        if (rc != 0)
            throw new VerbsException("ibv_req_notify_cq", ToString(), rc);
    }

    // On the event thread: take every pending CQ event off the channel (non-blocking), ack them
    // (ibv_destroy_cq waits for unacknowledged events), then wake the waiter.
    void OnChannelReadable()
    {
        using (var ch = _channel!.Enter())
        {
            ibv_cq* cq;
            void* context;
            while (libibverbs.ibv_get_cq_event((ibv_comp_channel*)ch.Pointer, &cq, &context) == 0)
                libibverbs.ibv_ack_cq_events(cq, 1);
        }
        TaskCompletionSource? waiter;
        lock (_waitLock)
            waiter = _waiter;
        waiter?.TrySetResult();
    }

    private protected override void OnDisposing()
    {
        if (_channel != null)
        {
            EventLoop.Shared.Unregister(_channelFd);
            TaskCompletionSource? waiter;
            lock (_waitLock)
                waiter = _waiter;
            waiter?.TrySetException(new ObjectDisposedException(ToString()));
            _channel.Dispose();   // destroyed natively after the CQ, which holds a reference
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"completion queue ({Capacity} entries) on {Device.Name}";
}
