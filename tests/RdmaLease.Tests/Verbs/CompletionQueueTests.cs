using System.Collections.Concurrent;
using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// Extended completion queues (ibv_cq_ex, start/next/end poll) report what plain ones do, for RC and UD traffic and
/// for errors; batches come out in order.
/// </summary>
[Category("Guest")]
public class ExtendedCompletionQueueTests
{
    /// <summary>A completion without the QP numbers, which differ between runs, and with them named A or B.</summary>
    readonly record struct Seen(ulong Id, WorkCompletionStatus Status, WorkCompletionOpcode Opcode, uint ByteLength, bool HasImmediate,
        uint Immediate, bool Grh, bool Invalidated, string Qp);

    static Seen Project(WorkCompletion wc, CqRig rig) => new(wc.WorkRequestId, wc.Status, wc.Opcode, wc.ByteLength, wc.HasImmediate,
        wc.HasImmediate ? wc.Immediate : 0, wc.HasGlobalRouteHeader, wc.HasInvalidatedRemoteKey,
        wc.QueuePairNumber == rig.A.QueuePairNumber ? "A" : wc.QueuePairNumber == rig.B.QueuePairNumber ? "B" : "?" + wc.QueuePairNumber);

    static List<Seen> RcTraffic(bool extended)
    {
        using var rig = new CqRig(new CompletionQueueOptions { Entries = 64, Extended = extended });
        Assert.That(rig.Cq.IsExtended, Is.EqualTo(extended));
        var seen = new List<Seen>();
        Patterns.Fill(rig.Local.Span[..4096], 1);
        rig.B.PostReceive(1, rig.Remote.Slice(8192, 0));
        rig.A.PostWrite(2, rig.Local.Slice(0, 100), rig.Remote.ToRemote(), 0, immediate: 0xC0FFEE);
        rig.B.PostReceive(3, rig.Remote.Slice(8192, 1024));
        rig.A.PostSend(4, rig.Local.Slice(0, 300), immediate: 0x1234);
        rig.A.PostRead(5, rig.Local.Slice(4096, 2048), rig.Remote.ToRemote(), 0);
        rig.A.PostFetchAdd(6, rig.Local.Slice(8192, 8), rig.Remote.ToRemote(), 4096, 5);
        seen.AddRange(rig.Take(6).Select(wc => Project(wc, rig)));
        return seen;
    }

    [Test]
    public void RcCompletionsAreTheSameThroughTheExtendedApi()
    {
        var plain = RcTraffic(extended: false);
        var extended = RcTraffic(extended: true);
        Assert.That(plain.Select(s => s.Id).Order(), Is.EqualTo(new ulong[] { 1, 2, 3, 4, 5, 6 }), "every work request completed (plain)");
        Assert.That(extended.OrderBy(s => s.Id), Is.EqualTo(plain.OrderBy(s => s.Id)), "field by field");
        var receive = extended.Single(s => s.Id == 3);
        Assert.That((receive.Opcode, receive.ByteLength, receive.HasImmediate, receive.Immediate, receive.Qp),
            Is.EqualTo((WorkCompletionOpcode.Receive, 300u, true, 0x1234u, "B")));
        var writeImm = extended.Single(s => s.Id == 1);
        Assert.That((writeImm.Opcode, writeImm.HasImmediate, writeImm.Immediate), Is.EqualTo((WorkCompletionOpcode.ReceiveRdmaWithImmediate, true, 0xC0FFEEu)));
        Assert.That(extended.Single(s => s.Id == 5).ByteLength, Is.EqualTo(2048u), "RDMA READ byte count");
    }

    static (WorkCompletion Received, WorkCompletion Sent, uint SenderQp, byte[] Payload) UdExchange(bool extended)
    {
        using var device = Device.Open("rxelo");
        var pd = device.AllocateProtectionDomain();
        var cq = device.CreateCompletionQueue(new CompletionQueueOptions { Entries = 16, Extended = extended });
        var qpA = pd.CreateQueuePair(new QueuePairOptions { Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        var qpB = pd.CreateQueuePair(new QueuePairOptions { Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        const uint Qkey = 0x11111111;
        qpA.MoveToReadyToSend(Qkey);
        qpB.MoveToReadyToSend(Qkey);
        int gid = device.FindGidIndex(IPAddress.Loopback);
        var ah = pd.CreateAddressHandle(qpB.LocalEndpoint(gid), gid);
        var send = pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        var recv = pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        Patterns.Fill(send.Span[..512], 77);
        qpB.PostReceive(1, recv.Slice(0, 40 + 512));
        qpA.PostSend(2, send.Slice(0, 512), ah, qpB.QueuePairNumber, Qkey);
        var sent = RcPair.WaitOne(cq);
        var received = RcPair.WaitOne(cq);
        if (sent.WorkRequestId == 1)
            (sent, received) = (received, sent);
        return (received, sent, qpA.QueuePairNumber, recv.Span.Slice(40, 512).ToArray());
    }

    [Test]
    public void UdReceivesCarryTheGrhFlagServiceLevelSourceLidAndSourceQp()
    {
        var plain = UdExchange(extended: false);
        var extended = UdExchange(extended: true);
        foreach (var (name, run) in new[] { ("plain", plain), ("extended", extended) })
        {
            var wc = run.Received;
            Assert.Multiple(() =>
            {
                Assert.That(wc.Status, Is.EqualTo(WorkCompletionStatus.Success), $"{name}: {wc}");
                Assert.That(wc.Opcode, Is.EqualTo(WorkCompletionOpcode.Receive), name);
                Assert.That(wc.ByteLength, Is.EqualTo(40u + 512), name + ": GRH + payload");
                Assert.That(wc.HasGlobalRouteHeader, name + ": RoCE UD receives come with a GRH");
                Assert.That(wc.SourceQueuePair, Is.EqualTo(run.SenderQp), name + ": source QP");
                Assert.That(wc.ServiceLevel, Is.Zero, name + ": the address handle's SL");
                Assert.That(wc.SourceLid, Is.Zero, name + ": RoCE has no LIDs");
                Assert.That(run.Sent.HasGlobalRouteHeader, Is.False, name + ": a send completion has no GRH");
            });
            var expected = new byte[512];
            Patterns.Fill(expected, 77);
            Patterns.AssertEqual(run.Payload, expected, name + ": payload");
        }
    }

    [Test]
    public void ErrorsComeThroughTheExtendedApi()
    {
        using var rig = new CqRig(new CompletionQueueOptions { Entries = 16, Extended = true });
        var wrong = rig.Remote.ToRemote() with { RemoteKey = rig.Remote.RemoteKey ^ 0x5a5a00 };
        rig.A.PostWrite(50, rig.Local.Slice(0, 64), wrong);
        var wc = RcPair.WaitOne(rig.Cq);
        Assert.That((wc.WorkRequestId, wc.Status, wc.QueuePairNumber), Is.EqualTo((50UL, WorkCompletionStatus.RemoteAccessError, rig.A.QueuePairNumber)), wc.ToString());
        rig.A.PostWrite(51, rig.Local.Slice(0, 64), rig.Remote.ToRemote());
        wc = RcPair.WaitOne(rig.Cq);
        Assert.That((wc.WorkRequestId, wc.Status), Is.EqualTo((51UL, WorkCompletionStatus.WorkRequestFlushed)), "after the error the QP flushes: " + wc);
    }

    [Test]
    public void BatchesComeOutInOrderAndNothingTwice()
    {
        using var rig = new CqRig(new CompletionQueueOptions { Entries = 64, Extended = true });
        for (ulong i = 0; i < 10; i++)
            rig.A.PostWrite(i, rig.Local.Slice(i * 8, 8), rig.Remote.ToRemote(), i * 8);
        var ids = new List<ulong>();
        var sizes = new List<int>();
        var batch = new WorkCompletion[4];
        var deadline = Environment.TickCount64 + 10_000;
        while (ids.Count < 10 && Environment.TickCount64 < deadline)
        {
            Thread.Sleep(20);   // let several complete, so batches fill
            int n = rig.Cq.Poll(batch);
            if (n > 0)
                sizes.Add(n);
            ids.AddRange(batch.Take(n).Select(wc => { Assert.That(wc.IsSuccess, wc.ToString()); return wc.WorkRequestId; }));
        }
        Assert.That(ids, Is.EqualTo(Enumerable.Range(0, 10).Select(i => (ulong)i)), "every write once, in order");
        Assert.That(sizes.Max(), Is.EqualTo(4), $"full batches were returned ({string.Join(",", sizes)})");
        Assert.That(rig.Cq.Poll(batch), Is.Zero, "nothing more");
    }

    [Test]
    public async Task PollAsyncWaitsOnAnExtendedQueueToo()
    {
        using var rig = new CqRig(new CompletionQueueOptions { Entries = 16, Extended = true, WithEvents = true });
        var completions = new WorkCompletion[4];
        var waiting = rig.Cq.PollAsync(completions);
        await Task.Delay(100);
        Assert.That(waiting.IsCompleted, Is.False, "nothing was posted yet");
        rig.A.PostWrite(9, rig.Local.Slice(0, 100), rig.Remote.ToRemote());
        int n = await waiting.AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That((n, completions[0].WorkRequestId, completions[0].Status), Is.EqualTo((1, 9UL, WorkCompletionStatus.Success)));
    }
}

/// <summary>
/// PollAsync with several waiters at once and the IAsyncEnumerable form: every completion reaches exactly one waiter,
/// cancellation ends waits without taking completions, disposal ends them all.
/// </summary>
[Category("Guest")]
public class CompletionQueueAsyncTests
{
    static CqRig EventRig(bool extended = false) => new(new CompletionQueueOptions { Entries = 256, WithEvents = true, Extended = extended });

    static async Task AssertPending(IEnumerable<Task> tasks, string what)
    {
        await Task.Delay(150);
        Assert.That(tasks.Where(t => t.IsCompleted).Select(t => t.Status), Is.Empty, what + ": nothing was posted yet");
    }

    [Test]
    public async Task EachOfSeveralWaitersGetsACompletion()
    {
        using var rig = EventRig();
        var waiters = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            var one = new WorkCompletion[1];
            int n = await rig.Cq.PollAsync(one);
            return (n, one[0]);
        })).ToArray();
        await AssertPending(waiters, "4 waiters");
        for (ulong id = 1; id <= 4; id++)
            rig.A.PostWrite(id, rig.Local.Slice(id * 8, 8), rig.Remote.ToRemote(), id * 8);
        var results = await Task.WhenAll(waiters).WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(results.Select(r => r.n), Is.All.EqualTo(1));
        Assert.That(results.Select(r => r.Item2.WorkRequestId).Order(), Is.EqualTo(new ulong[] { 1, 2, 3, 4 }), "each completion went to one waiter");
        Assert.That(results.Select(r => r.Item2.Status), Is.All.EqualTo(WorkCompletionStatus.Success));
        Assert.That(rig.Cq.Poll(new WorkCompletion[4]), Is.Zero, "none left over");
    }

    [Test]
    public async Task CancelledWaitersTakeNothingAndTheOthersGetEverything()
    {
        using var rig = EventRig();
        using var cancel = new CancellationTokenSource();
        var one = new WorkCompletion[1];
        var cancelled = Enumerable.Range(0, 2).Select(_ => rig.Cq.PollAsync(new WorkCompletion[8], cancel.Token).AsTask()).ToArray();
        var kept = Enumerable.Range(0, 2).Select(_ => rig.Cq.PollAsync(new WorkCompletion[1]).AsTask()).ToArray();
        await AssertPending(cancelled.Concat(kept), "4 waiters");
        cancel.Cancel();
        foreach (var t in cancelled)
            Assert.That(async () => await t, Throws.InstanceOf<OperationCanceledException>());
        Assert.That(kept.Where(t => t.IsCompleted), Is.Empty, "the other waiters still wait");

        rig.A.PostWrite(1, rig.Local.Slice(0, 8), rig.Remote.ToRemote());
        rig.A.PostWrite(2, rig.Local.Slice(8, 8), rig.Remote.ToRemote(), 8);
        var counts = await Task.WhenAll(kept).WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(counts, Is.All.EqualTo(1), "each remaining waiter got one");
        Assert.That(rig.Cq.Poll(new WorkCompletion[4]), Is.Zero, "both completions were delivered, none left behind");

        // The queue keeps working after the cancellations.
        var next = rig.Cq.PollAsync(one);
        rig.A.PostWrite(3, rig.Local.Slice(16, 8), rig.Remote.ToRemote(), 16);
        Assert.That(await next.AsTask().WaitAsync(TimeSpan.FromSeconds(20)), Is.EqualTo(1));
        Assert.That(one[0].WorkRequestId, Is.EqualTo(3UL));
    }

    [TestCase(false)]
    [TestCase(true)]
    public async Task ManyWaitersLoseAndDuplicateNothing(bool extended)
    {
        using var rig = EventRig(extended);
        const int Total = 1500, Waiters = 6, Window = 32;
        var seen = new ConcurrentDictionary<ulong, int>();
        int received = 0, duplicates = 0;
        var perWaiter = new int[Waiters];
        using var done = new CancellationTokenSource();
        var waiters = Enumerable.Range(0, Waiters).Select(w => Task.Run(async () =>
        {
            var buffer = new WorkCompletion[1 + w % 3 * 3];   // batches of 1, 4 and 7
            try
            {
                while (true)
                {
                    int n = await rig.Cq.PollAsync(buffer, done.Token);
                    for (int i = 0; i < n; i++)
                    {
                        if (!buffer[i].IsSuccess || !seen.TryAdd(buffer[i].WorkRequestId, w))
                            Interlocked.Increment(ref duplicates);
                    }
                    perWaiter[w] += n;
                    Interlocked.Add(ref received, n);
                }
            }
            catch (OperationCanceledException)
            {
            }
        })).ToArray();

        var deadline = Environment.TickCount64 + 120_000;
        for (int posted = 0; posted < Total;)
        {
            while (posted - Volatile.Read(ref received) >= Window)
            {
                Assert.That(Environment.TickCount64, Is.LessThan(deadline), $"stalled: {posted} posted, {received} received");
                await Task.Delay(1);
            }
            rig.A.PostWrite((ulong)posted, rig.Local.Slice((ulong)(posted % 512) * 8, 8), rig.Remote.ToRemote(), (ulong)(posted % 512) * 8);
            posted++;
        }
        while (Volatile.Read(ref received) < Total && Environment.TickCount64 < deadline)
            await Task.Delay(5);
        await Task.Delay(100);   // anything extra would show up now
        done.Cancel();
        await Task.WhenAll(waiters).WaitAsync(TimeSpan.FromSeconds(20));

        TestContext.Out.WriteLine($"per waiter: {string.Join(", ", perWaiter)}");
        Assert.That(duplicates, Is.Zero, "completions seen twice or failed");
        Assert.That(received, Is.EqualTo(Total), "completions delivered");
        Assert.That(seen.Keys.Order(), Is.EqualTo(Enumerable.Range(0, Total).Select(i => (ulong)i)), "every work request exactly once");
        Assert.That(perWaiter.Count(n => n > 0), Is.GreaterThan(1), "more than one waiter got completions");
    }

    [Test]
    public async Task ReadAllAsyncStreamsCompletionsAndLeavesTheRestWhenTheConsumerStops()
    {
        using var rig = EventRig();
        var taken = new List<ulong>();
        var consumer = Task.Run(async () =>
        {
            await foreach (var wc in rig.Cq.ReadAllAsync())
            {
                Assert.That(wc.IsSuccess, wc.ToString());
                taken.Add(wc.WorkRequestId);
                if (taken.Count == 10)
                    break;
            }
        });
        await Task.Delay(150);
        Assert.That(consumer.IsCompleted, Is.False, "waiting for completions");
        for (ulong id = 0; id < 15; id++)
            rig.A.PostWrite(id, rig.Local.Slice(id * 8, 8), rig.Remote.ToRemote(), id * 8);
        await consumer.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(taken, Is.EqualTo(Enumerable.Range(0, 10).Select(i => (ulong)i)), "the first ten, in order");

        var rest = new List<ulong>();
        var batch = new WorkCompletion[16];
        var deadline = Environment.TickCount64 + 10_000;
        while (rest.Count < 5 && Environment.TickCount64 < deadline)
            rest.AddRange(batch.Take(rig.Cq.Poll(batch)).Select(wc => wc.WorkRequestId));
        Assert.That(rest, Is.EqualTo(new ulong[] { 10, 11, 12, 13, 14 }), "the five the consumer did not take are still on the queue");
    }

    [Test]
    public async Task ReadAllAsyncEndsWithCancellation()
    {
        using var rig = EventRig();
        using var cancel = new CancellationTokenSource();
        int items = 0;
        var consumer = Task.Run(async () =>
        {
            await foreach (var wc in rig.Cq.ReadAllAsync(cancel.Token))
                items++;
        });
        rig.A.PostWrite(1, rig.Local.Slice(0, 8), rig.Remote.ToRemote());
        var deadline = Environment.TickCount64 + 10_000;
        while (Volatile.Read(ref items) == 0 && Environment.TickCount64 < deadline)
            await Task.Delay(5);
        Assert.That(items, Is.EqualTo(1));
        cancel.Cancel();
        Assert.That(async () => await consumer.WaitAsync(TimeSpan.FromSeconds(10)), Throws.InstanceOf<OperationCanceledException>());
    }

    [Test]
    public async Task DisposingTheQueueEndsEveryWaiter()
    {
        var rig = EventRig();
        try
        {
            var waiters = Enumerable.Range(0, 3).Select(_ => rig.Cq.PollAsync(new WorkCompletion[2]).AsTask())
                .Append(Task.Run(async () => { await foreach (var _ in rig.Cq.ReadAllAsync()) { } }))
                .ToArray();
            await AssertPending(waiters, "4 waiters");
            rig.Cq.Dispose();
            foreach (var t in waiters)
                Assert.That(async () => await t.WaitAsync(TimeSpan.FromSeconds(10)), Throws.InstanceOf<ObjectDisposedException>());
            Assert.That(async () => await rig.Cq.PollAsync(new WorkCompletion[1]), Throws.InstanceOf<ObjectDisposedException>(), "a wait after disposal");
        }
        finally
        {
            rig.Dispose();
        }
    }
}

/// <summary>One device (rxelo), one PD, one CQ as <see cref="CompletionQueueOptions"/> say, two connected RC QPs on it.</summary>
sealed class CqRig : IDisposable
{
    public Device Device { get; }
    public CompletionQueue Cq { get; }
    public QueuePair A { get; }
    public QueuePair B { get; }
    public RegisteredBuffer Local { get; }
    public RegisteredBuffer Remote { get; }

    public CqRig(CompletionQueueOptions options)
    {
        Device = Device.Open("rxelo");
        var pd = Device.AllocateProtectionDomain();
        Cq = Device.CreateCompletionQueue(options);
        var qpOptions = new QueuePairOptions { SendCompletionQueue = Cq, ReceiveCompletionQueue = Cq };
        A = pd.CreateQueuePair(qpOptions);
        B = pd.CreateQueuePair(qpOptions);
        int gid = Device.FindGidIndex(IPAddress.Loopback);
        A.Connect(B.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic });
        B.Connect(A.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic });
        const AccessFlags All = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic;
        Local = pd.AllocateBuffer(16384, All);
        Remote = pd.AllocateBuffer(16384, All);
    }

    /// <summary>Polls until <paramref name="count"/> completions arrived (10 s at most).</summary>
    public List<WorkCompletion> Take(int count)
    {
        var all = new List<WorkCompletion>();
        var batch = new WorkCompletion[8];
        var deadline = Environment.TickCount64 + 10_000;
        while (all.Count < count)
        {
            Assert.That(Environment.TickCount64, Is.LessThan(deadline), $"{all.Count} of {count} completions within 10 s");
            all.AddRange(batch.Take(Cq.Poll(batch)));
        }
        return all;
    }

    public void Dispose() => Device.Dispose();
}
