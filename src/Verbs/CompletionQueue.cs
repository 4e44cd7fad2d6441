using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>How to create a <see cref="CompletionQueue"/>.</summary>
public sealed record CompletionQueueOptions
{
    /// <summary>Minimum capacity; at most <see cref="DeviceAttributes.MaxCqe"/>.</summary>
    public required int Entries { get; init; }
    /// <summary>Give it a completion channel so <see cref="CompletionQueue.PollAsync"/> and
    /// <see cref="CompletionQueue.ReadAllAsync"/> can wait without spinning.</summary>
    public bool WithEvents { get; init; }
    /// <summary>
    /// Create it with the extended API (<c>ibv_create_cq_ex</c>) and poll it with <c>ibv_start_poll</c> /
    /// <c>ibv_next_poll</c> / <c>ibv_end_poll</c> (one P/Invoke transition per <see cref="CompletionQueue.Poll"/> either
    /// way). The completions carry the same fields as a plain CQ's except the P_Key index, which the extended API
    /// does not report. docs/verbs.md has the measured cost of both on rxe.
    /// </summary>
    public bool Extended { get; init; }
}

/// <summary>
/// A completion queue (<c>ibv_cq</c>, or <c>ibv_cq_ex</c> when created <see cref="CompletionQueueOptions.Extended"/>).
/// <see cref="Poll"/> busy-polls into a caller's span without allocating; <see cref="PollAsync"/> and
/// <see cref="ReadAllAsync"/> wait for completions through a completion channel watched by the library's single event
/// thread (no thread per CQ).
/// </summary>
/// <remarks>
/// <see cref="Poll"/> may be called from several threads (the provider serializes them), and any number of
/// <see cref="PollAsync"/> callers may wait at once: each completion goes to exactly one of them. Dispose may run on
/// any thread while another polls: the destroy waits for the poll in progress, later polls throw
/// ObjectDisposedException, and waiters fail with it.
/// </remarks>
public sealed unsafe partial class CompletionQueue : VerbsObject
{
    /// <summary>The device the CQ belongs to.</summary>
    public Device Device { get; }
    /// <summary>Entries the CQ holds (at least what was asked).</summary>
    public int Capacity { get; }
    /// <summary>Whether the CQ has a completion channel, i.e. supports <see cref="PollAsync"/>.</summary>
    public bool HasEvents => _channel != null;
    /// <summary>Whether the CQ was created and is polled through the extended API (<c>ibv_cq_ex</c>).</summary>
    public bool IsExtended => _extended;

    readonly NativeHandle? _channel;
    readonly int _channelFd = -1;
    readonly bool _extended;
    readonly bool _kernelWcFlags;   // the device reports the kernel's ib_wc_flags (Quirks/CompletionFlagsQuirk.cs)
    readonly Lock _waitLock = new();
    // Completed, and replaced by a new one, on every completion-channel event: every waiter that took it before arming
    // the notification wakes and polls again. Faulted with ObjectDisposedException (and not replaced) on Dispose.
    TaskCompletionSource _signal = NewSignal();

    static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal ibv_cq* Cq => (ibv_cq*)Handle.DangerousGetHandle();

    /// <summary>Queue pairs (not disposed) whose send queue completes here: a grant waits only on a send CQ of its QP's own.</summary>
    internal int SendQueueUsers;

    internal CompletionQueue(Device device, CompletionQueueOptions options)
        : this(device, options, options.WithEvents ? CreateChannel(device) : null)
    {
    }

    CompletionQueue(Device device, CompletionQueueOptions options, NativeHandle? channel)
        : base(Create(device, options.Entries, options.Extended, channel, out int capacity), device)
    {
        Device = device;
        Capacity = capacity;
        _channel = channel;
        _extended = options.Extended;
        _kernelWcFlags = KnownCompletionFlagsDefect.Find(device.Driver) is not null;
        if (channel != null)
        {
            _channelFd = ((ibv_comp_channel*)channel.DangerousGetHandle())->fd;
            EventLoop.Shared.Register(_channelFd, OnChannelReadable);
        }
    }

    static NativeHandle CreateChannel(Device device) =>
        NativeCalls.Create(device.HandleForChildren, 0, static (ctx, _) => (nint)libibverbs.ibv_create_comp_channel((ibv_context*)ctx), &DestroyChannel,
            "ibv_create_comp_channel", device.ToString(), "completion channel on " + device.Name);

    static int DestroyChannel(nint ch) => libibverbs.ibv_destroy_comp_channel((ibv_comp_channel*)ch);

    static NativeHandle Create(Device device, int entries, bool extended, NativeHandle? channel, out int capacity)
    {
        if (entries < 1 || entries > device.Attributes.MaxCqe)
        {
            channel?.Dispose();
            throw new ArgumentOutOfRangeException(nameof(entries), entries, $"{device} supports 1..{device.Attributes.MaxCqe} CQ entries");
        }
        var ch = channel == null ? null : (ibv_comp_channel*)channel.DangerousGetHandle();
        // Every field a plain ibv_poll_cq reports (but the P_Key index): IBV_WC_STANDARD_FLAGS.
        var attr = new ibv_cq_init_attr_ex { cqe = (uint)entries, channel = ch, wc_flags = libibverbs.IBV_WC_STANDARD_FLAGS };
        // The channel must outlive the CQ: it is a dependency, released after ibv_destroy_cq.
        var handle = NativeCalls.Create(device.HandleForChildren, (nint)(&attr), extended
                ? static (ctx, a) => (nint)RdmaLeaseNative.CreateCqEx((ibv_context*)ctx, (ibv_cq_init_attr_ex*)a)   // ibv_cq_ex_to_cq is a cast
                : static (ctx, a) => (nint)libibverbs.ibv_create_cq((ibv_context*)ctx, (int)((ibv_cq_init_attr_ex*)a)->cqe, null, ((ibv_cq_init_attr_ex*)a)->channel, 0),
            &Destroy, extended ? "ibv_create_cq_ex" : "ibv_create_cq", $"{device} ({entries} entries)",
            (extended ? "extended " : "") + "completion queue on " + device.Name,
            errno => extended && errno == Errno.EOPNOTSUPP ? "The provider has no extended CQs (or not every standard completion field): create a plain one." : null,
            onFailure: () => channel?.Dispose(), channel);
        capacity = ((ibv_cq*)handle.DangerousGetHandle())->cqe;
        return handle;
    }

    static int Destroy(nint cq) => libibverbs.ibv_destroy_cq((ibv_cq*)cq);

    /// <summary>
    /// Takes up to <c>completions.Length</c> completions off the queue without waiting.
    /// Allocation-free; one P/Invoke transition (also through the extended API). Each call takes and gives back a
    /// reference on the CQ (two interlocked operations); a loop that polls many times should use
    /// <see cref="OpenPoller"/>, which takes it once.
    /// </summary>
    /// <returns>How many entries of <paramref name="completions"/> were filled (0 when none were ready).</returns>
    /// <exception cref="VerbsException">The provider reported a polling error.</exception>
    public int Poll(Span<WorkCompletion> completions)
    {
        using var cqRef = Handle.Enter();
        return PollHeld(cqRef.Pointer, completions);
    }

    /// <summary>
    /// Opens a poller: a scope that holds a reference on this CQ until it is disposed, so its
    /// <see cref="CompletionQueuePoller.Poll"/> does no reference counting (the busy-poll loop's form of <see cref="Poll"/>).
    /// Use it as <c>using var poller = cq.OpenPoller();</c> around a polling loop; it allocates nothing in steady state.
    /// </summary>
    /// <remarks>
    /// While a poller is open, a <see cref="VerbsObject.Dispose()"/> of the CQ (or its device) on another thread still
    /// returns at once and makes the poller's next poll throw ObjectDisposedException; the native CQ is destroyed when the
    /// poller is disposed. So keep a poller's scope to the loop that uses it: an open poller defers the destroy.
    /// </remarks>
    /// <exception cref="ObjectDisposedException">The CQ was disposed.</exception>
    public CompletionQueuePoller OpenPoller() => new(this);

    /// <summary>The poll itself, on a CQ pointer the caller holds a reference for.</summary>
    internal int PollHeld(nint cq, Span<WorkCompletion> completions)
    {
        int n;
        fixed (WorkCompletion* wc = completions)
        {
            n = _extended
                ? RdmaLeaseNative.PollCqEx((ibv_cq_ex*)cq, completions.Length, (ibv_wc*)wc)
                : RdmaLeaseNative.PollCq((ibv_cq*)cq, completions.Length, (ibv_wc*)wc);
            if (n > 0)
            {
                if (_kernelWcFlags)
                    KnownCompletionFlagsDefect.Translate((ibv_wc*)wc, n);
                VerbsMetrics.Polled(completions[..n]);
            }
        }
        if (n < 0)
            throw new VerbsException(_extended ? "ibv_start_poll" : "ibv_poll_cq", ToString(), -n);
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
    // (ibv_destroy_cq waits for unacknowledged events), then wake every waiter.
    void OnChannelReadable()
    {
        using (var ch = _channel!.Enter())
        {
            ibv_cq* cq;
            void* context;
            while (libibverbs.ibv_get_cq_event((ibv_comp_channel*)ch.Pointer, &cq, &context) == 0)
                libibverbs.ibv_ack_cq_events(cq, 1);
        }
        TaskCompletionSource signal;
        lock (_waitLock)
        {
            signal = _signal;
            if (!signal.Task.IsCompleted)   // faulted by Dispose: stays so
                _signal = NewSignal();
        }
        signal.TrySetResult();
    }

    private protected override void OnDisposing()
    {
        if (_channel != null)
        {
            EventLoop.Shared.Unregister(_channelFd);
            lock (_waitLock)
                _signal.TrySetException(new ObjectDisposedException(ToString()));
            _channel.Dispose();   // destroyed natively after the CQ, which holds a reference
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"{(_extended ? "extended " : "")}completion queue ({Capacity} entries) on {Device.Name}";
}
