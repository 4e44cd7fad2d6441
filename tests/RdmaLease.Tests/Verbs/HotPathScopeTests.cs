using System.Runtime.CompilerServices;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// The hot-path scopes (CompletionQueue.OpenPoller, QueuePair.OpenPoster) against what could break them: the CQ or QP
/// disposed on another thread while a scope is open (checked against the kernel's own list of objects), use after the
/// scope ended, double dispose and disposing copies. Posts through a poster move exactly the bytes asked for.
/// </summary>
[Category("Guest")]
[NonParallelizable]   // counts the guest's user-space CQs
public class HotPathScopeTests
{
    [Test]
    public void APollerTakesCompletionsAndEndsCleanly()
    {
        using var rig = new BatchRig();
        rig.Local.Span[..64].Fill(0x5a);
        rig.Remote.Span[..64].Clear();
        var remote = rig.Remote.ToRemote();
        var wc = new WorkCompletion[4];
        var poller = rig.CqA.OpenPoller();
        Assert.That(poller.CompletionQueue, Is.SameAs(rig.CqA));
        Assert.That(poller.Poll(wc), Is.Zero, "nothing posted yet");
        using (var poster = rig.A.OpenPoster())
        {
            Assert.That(poster.QueuePair, Is.SameAs(rig.A));
            for (ulong i = 0; i < 8; i++)
                poster.PostWrite(i, rig.Local.Slice(i * 8, 8), remote, i * 8);
        }
        var ids = new List<ulong>();
        var deadline = Environment.TickCount64 + 10_000;
        while (ids.Count < 8 && Environment.TickCount64 < deadline)
        {
            int n = poller.Poll(wc);
            for (int i = 0; i < n; i++)
            {
                wc[i].ThrowIfFailed();
                ids.Add(wc[i].WorkRequestId);
            }
        }
        poller.Dispose();
        poller.Dispose();   // the second gives nothing back
        Assert.That(ids, Is.EqualTo(new ulong[] { 0, 1, 2, 3, 4, 5, 6, 7 }), "each write completed once, in order");
        Assert.That(rig.Remote.Span[..64].ToArray(), Is.EqualTo(rig.Local.Span[..64].ToArray()), "every byte written");
        var ended = PollError(poller);
        Assert.That(ended, Is.InstanceOf<ObjectDisposedException>());
        Assert.That(ended!.Message, Does.Contain("OpenPoller"));
        Assert.That(rig.CqA.Poll(wc), Is.Zero, "the CQ itself still works");
    }

    /// <summary>What one poll through <paramref name="poller"/> throws (null: nothing).</summary>
    static Exception? PollError(CompletionQueuePoller poller)
    {
        try
        {
            poller.Poll(new WorkCompletion[1]);
            return null;
        }
        catch (Exception e)
        {
            return e;
        }
    }

    [Test]
    public void ACqDisposedOnAnotherThreadIsDestroyedWhenThePollerEnds()
    {
        using var device = Device.Open("rxelo");
        int before = KernelView.RdmaResources("cq").Count;
        var cq = device.CreateCompletionQueue(64);
        var poller = cq.OpenPoller();
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(before + 1), "the CQ exists");

        Task.Run(cq.Dispose).Wait();
        Assert.That(cq.IsDisposed);
        Assert.That(PollError(poller), Is.InstanceOf<ObjectDisposedException>(), "a poll after the CQ's Dispose");
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(before + 1), "the open poller keeps the native CQ");

        poller.Dispose();
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(before), "destroyed when the poller ended");
        poller.Dispose();
    }

    /// <summary>
    /// A poller and a poster that were never disposed (no using): the CQ's and QP's Dispose return, and once the GC has
    /// found the scopes' tickets unreachable the kernel's own list shows both objects gone. Before, they stayed in
    /// `rdma resource show` until the process ended (the scope's reference was never given back).
    /// </summary>
    [Test]
    public void AForgottenPollerOrPosterDoesNotKeepTheKernelObjectsForever()
    {
        using var rig = new BatchRig();
        int cqs = KernelView.RdmaResources("cq").Count, qps = KernelView.RdmaResources("qp").Count;
        OpenAndForget(rig.CqA, rig.A);
        rig.A.Dispose();
        rig.CqA.Dispose();
        Assert.That(KernelView.RdmaResources("qp"), Has.Count.EqualTo(qps), "precondition: the forgotten poster defers the QP's destroy");
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(cqs), "precondition: the forgotten poller defers the CQ's destroy");
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        Assert.That(KernelView.RdmaResources("qp"), Has.Count.EqualTo(qps - 1), "a forgotten poster kept the QP");
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(cqs - 1), "a forgotten poller kept the CQ");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void OpenAndForget(CompletionQueue cq, QueuePair qp)
    {
        var poller = cq.OpenPoller();
        Assert.That(poller.Poll(new WorkCompletion[1]), Is.Zero);
        var poster = qp.OpenPoster();
        Assert.That(poster.QueuePair, Is.SameAs(qp));
    }

    [Test]
    public void DisposingCopiesOfAPollerGivesItsReferenceBackOnce()
    {
        using var device = Device.Open("rxelo");
        int before = KernelView.RdmaResources("cq").Count;
        var cq = device.CreateCompletionQueue(64);
        var first = cq.OpenPoller();
        var copy = first;
        copy.Dispose();
        first.Dispose();   // a second release here would take the reference the next poller holds
        Assert.That(PollError(first), Is.InstanceOf<ObjectDisposedException>());

        var second = cq.OpenPoller();
        cq.Dispose();
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(before + 1), "the second poller still holds the CQ");
        second.Dispose();
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(before), "destroyed when the second poller ended");
    }

    [Test]
    public void DisposeFromAnotherThreadWhileAPollerPolls()
    {
        using var device = Device.Open("rxelo");
        int before = KernelView.RdmaResources("cq").Count;
        var cq = device.CreateCompletionQueue(64);
        using var started = new ManualResetEventSlim();
        using var ended = new ManualResetEventSlim();
        using var disposePoller = new ManualResetEventSlim();
        Exception? end = null;
        long polls = 0;
        var thread = new Thread(() =>
        {
            var wc = new WorkCompletion[16];
            var poller = cq.OpenPoller();
            started.Set();
            try
            {
                while (true)
                {
                    poller.Poll(wc);
                    polls++;
                }
            }
            catch (Exception e)
            {
                end = e;
            }
            ended.Set();
            disposePoller.Wait();
            poller.Dispose();
        });
        thread.Start();
        started.Wait();
        Thread.Sleep(50);
        device.Dispose();   // the CQ with it, while the poller polls
        Assert.That(ended.Wait(TimeSpan.FromSeconds(10)), "the poller stopped");
        Assert.That(end, Is.InstanceOf<ObjectDisposedException>(), $"after {polls} polls");
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(before + 1), "kept while the poller is open");
        disposePoller.Set();
        Assert.That(thread.Join(TimeSpan.FromSeconds(10)), "the poller's thread ended");
        Assert.That(KernelView.RdmaResources("cq"), Has.Count.EqualTo(before), "destroyed once the poller ended");
    }

    [Test]
    public void AQpDisposedOnAnotherThreadIsDestroyedWhenThePosterEnds()
    {
        using var rig = new BatchRig();
        uint qpn = rig.A.QueuePairNumber;
        var remote = rig.Remote.ToRemote();
        var poster = rig.A.OpenPoster();
        poster.PostWrite(1, rig.Local.Slice(0, 8), remote);
        Assert.That(Take(rig.CqA, 1)[0].WorkRequestId, Is.EqualTo(1));

        Task.Run(rig.A.Dispose).Wait();
        Assert.That(PostError(poster, rig.Local.Slice(0, 8), remote, 0), Is.InstanceOf<ObjectDisposedException>(), "a post after the QP's Dispose");
        Assert.That(QpListed(qpn), "the open poster keeps the native QP");
        poster.Dispose();
        Assert.That(QpListed(qpn), Is.False, "destroyed when the poster ended");
        poster.Dispose();
        var ended = PostError(poster, rig.Local.Slice(0, 8), remote, 0);
        Assert.That(ended, Is.InstanceOf<ObjectDisposedException>());
        Assert.That(ended!.Message, Does.Contain("OpenPoster"));
    }


    static bool QpListed(uint qpn) =>
        KernelView.RdmaResources("qp").Any(l => l.Contains($"lqpn {qpn} ", StringComparison.Ordinal));

    [Test]
    public void APosterKeepsEveryPostCheckAndMovesTheRightBytes()
    {
        using var rig = new BatchRig();
        var remote = rig.Remote.ToRemote();
        var rng = new Random(12);
        rng.NextBytes(rig.Local.Span[..4096]);
        rig.Remote.Span[..4096].Clear();
        using var poster = rig.A.OpenPoster();

        poster.PostWrite(1, rig.Local.Slice(0, 1024), remote, 0);
        poster.PostRead(2, rig.Local.Slice(8192, 512), remote, 0);   // reads back what the write put there
        var batch = rig.A.StartPost();
        batch.Write(3, rig.Local.Slice(1024, 1024), remote, 1024);
        batch.Write(4, rig.Local.Slice(2048, 2048), remote, 2048);
        poster.Post(ref batch);
        Assert.That(batch.Count, Is.Zero, "the batch was emptied");
        rig.B.PostReceive(5, rig.Remote.Slice(12288, 64));
        poster.PostSend(6, rig.Local.Slice(0, 64));
        var done = Take(rig.CqA, 5);
        Assert.That(done.Select(w => w.WorkRequestId), Is.EquivalentTo(new ulong[] { 1, 2, 3, 4, 6 }));
        Assert.That(Take(rig.CqB, 1)[0].ByteLength, Is.EqualTo(64));
        Assert.Multiple(() =>
        {
            Assert.That(rig.Remote.Span[..4096].ToArray(), Is.EqualTo(rig.Local.Span[..4096].ToArray()), "the writes");
            Assert.That(rig.Local.Span.Slice(8192, 512).ToArray(), Is.EqualTo(rig.Local.Span[..512].ToArray()), "the read");
            Assert.That(rig.Remote.Span.Slice(12288, 64).ToArray(), Is.EqualTo(rig.Local.Span[..64].ToArray()), "the send");
        });

        // The checks of the QP's own methods stay: a range outside the remote region, a batch of another QP, a revoked region.
        Assert.That(PostError(poster, rig.Local.Slice(0, 64), remote, remote.Length), Is.InstanceOf<ArgumentOutOfRangeException>());
        var other = rig.B.StartPost();
        other.Write(7, rig.Remote.Slice(0, 8), rig.Local.ToRemote(), 0);
        Assert.That(PostBatch(poster, ref other).Message, Does.Contain("started on"));
        using var revoked = rig.Pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        var reason = new InvalidOperationException("revoked for the test");
        revoked.Revoke(reason);
        Assert.That(PostError(poster, revoked.Slice(0, 8), remote, 0), Is.SameAs(reason));
    }

    /// <summary>The next <paramref name="count"/> completions (each successful, 10 s at most each).</summary>
    static List<WorkCompletion> Take(CompletionQueue cq, int count)
    {
        var all = new List<WorkCompletion>();
        for (int i = 0; i < count; i++)
        {
            var wc = RcPair.WaitOne(cq);
            wc.ThrowIfFailed();
            all.Add(wc);
        }
        return all;
    }

    /// <summary>What one write through <paramref name="poster"/> throws (null: nothing).</summary>
    static Exception? PostError(QueuePairPoster poster, LocalSegment source, RemoteRegion target, ulong offset)
    {
        try
        {
            poster.PostWrite(9, source, target, offset);
            return null;
        }
        catch (Exception e)
        {
            return e;
        }
    }

    static ArgumentException PostBatch(QueuePairPoster poster, ref SendBatch batch)
    {
        try
        {
            poster.Post(ref batch);
        }
        catch (ArgumentException e)
        {
            return e;
        }
        throw new AssertionException("a batch of another QP was posted");
    }
}

/// <summary>What can be checked of the scopes without a device: a default scope refuses everything.</summary>
public class HotPathScopeHostTests
{
    [Test]
    public void ADefaultScopeRefusesEverythingAndDisposesQuietly()
    {
        var poller = default(CompletionQueuePoller);
        var poster = default(QueuePairPoster);
        poller.Dispose();
        poster.Dispose();
        var poll = Assert.Throws<InvalidOperationException>(() => default(CompletionQueuePoller).Poll(new WorkCompletion[1]))!;
        var post = Assert.Throws<InvalidOperationException>(() => default(QueuePairPoster).PostReceive(1, default))!;
        var cq = Assert.Throws<InvalidOperationException>(() => _ = default(CompletionQueuePoller).CompletionQueue)!;
        Assert.Multiple(() =>
        {
            Assert.That(poll.Message, Does.Contain("OpenPoller"));
            Assert.That(post.Message, Does.Contain("OpenPoster"));
            Assert.That(cq.Message, Does.Contain("OpenPoller"));
        });
    }
}
