using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

// The awaiting half of CompletionQueue, apart from the unsafe one (no await in unsafe code).
public sealed partial class CompletionQueue
{
    /// <summary>
    /// Returns completions as soon as there are any, waiting without spinning (through the
    /// completion channel) while there are none. Requires a CQ created with events.
    /// </summary>
    /// <returns>How many entries of <paramref name="completions"/> were filled (at least 1).</returns>
    public async ValueTask<int> PollAsync(Memory<WorkCompletion> completions, CancellationToken cancellationToken = default)
    {
        if (_channel == null)
            throw new InvalidOperationException($"{this} has no completion channel: create it with withEvents: true to wait asynchronously.");
        ArgumentOutOfRangeException.ThrowIfZero(completions.Length, nameof(completions));
        while (true)
        {
            int n = Poll(completions.Span);
            if (n > 0)
                return n;
            var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_waitLock)
            {
                if (_waiter != null)
                    throw new InvalidOperationException($"{this} already has a PollAsync waiting; one waiter at a time.");
                _waiter = waiter;
            }
            try
            {
                RequestNotification();
                // A completion that arrived before the notification was armed raises no event: poll again.
                n = Poll(completions.Span);
                if (n > 0)
                    return n;
                EventLoop.Shared.Rearm(_channelFd);
                await waiter.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                lock (_waitLock)
                    _waiter = null;
            }
        }
    }
}
