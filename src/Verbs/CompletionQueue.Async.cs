using System.Runtime.CompilerServices;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

// The awaiting half of CompletionQueue, apart from the unsafe one (no await in unsafe code).
public sealed partial class CompletionQueue
{
    /// <summary>
    /// Returns completions as soon as there are any, waiting without spinning (through the completion channel) while
    /// there are none. Requires a CQ created with events. Any number of callers may wait at once, on any threads:
    /// every channel event wakes them all, each polls, and the provider hands each completion to exactly one of them.
    /// </summary>
    /// <returns>How many entries of <paramref name="completions"/> were filled (at least 1).</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while waiting
    /// (a <see cref="TaskCanceledException"/>). Nothing was taken off the queue by this call then.</exception>
    /// <exception cref="ObjectDisposedException">The CQ was disposed, also while waiting.</exception>
    public async ValueTask<int> PollAsync(Memory<WorkCompletion> completions, CancellationToken cancellationToken = default)
    {
        if (_channel == null)
            throw new InvalidOperationException($"{this} has no completion channel: create it with events (withEvents: true) to wait asynchronously.");
        ArgumentOutOfRangeException.ThrowIfZero(completions.Length, nameof(completions));
        while (true)
        {
            int n = Poll(completions.Span);
            if (n > 0)
                return n;
            // Take the signal before arming: an event after the arm completes this signal or a later one, so it is
            // never missed; one before the arm completed an earlier signal, and is covered by the poll after the arm.
            Task signal;
            lock (_waitLock)
                signal = _signal.Task;
            RequestNotification();
            n = Poll(completions.Span);
            if (n > 0)
                return n;
            EventLoop.Shared.Rearm(_channelFd);
            // Cancellation only ever ends a wait, never a poll that took completions: none is lost to a cancelled caller.
            await signal.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The completions of the queue as an asynchronous stream, waiting as <see cref="PollAsync"/> does while there
    /// are none; it ends only by cancellation (<see cref="OperationCanceledException"/>) or disposal of the CQ
    /// (<see cref="ObjectDisposedException"/>). It takes one completion off the queue per item, so a consumer that
    /// stops early leaves the rest on the queue for other pollers. Several streams and <see cref="PollAsync"/> callers
    /// may run at once; each completion goes to one of them.
    /// </summary>
    /// <example>
    /// <code>
    /// await foreach (WorkCompletion wc in cq.ReadAllAsync(cancellationToken))
    ///     wc.ThrowIfFailed();
    /// </code>
    /// </example>
    public async IAsyncEnumerable<WorkCompletion> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var one = new WorkCompletion[1];
        while (true)
        {
            await PollAsync(one, cancellationToken).ConfigureAwait(false);
            yield return one[0];
        }
    }
}
