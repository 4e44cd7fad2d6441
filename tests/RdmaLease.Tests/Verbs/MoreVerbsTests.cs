using System.Net;
using System.Runtime.InteropServices;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>UD, SRQ, ODP regions, asynchronous polling and device events.</summary>
[Category("Guest")]
public class MoreVerbsTests
{
    const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;

    [TestCase("rxelo", "127.0.0.1", "rxelo", "127.0.0.1")]
    [TestCase("rxe0", "192.0.2.1", "rxe1", "192.0.2.2")]
    public void UdSendReceive(string devA, string ipA, string devB, string ipB)
    {
        using var a = Device.Open(devA);
        using var b = devB == devA ? null : Device.Open(devB);
        var db = b ?? a;
        var pdA = a.AllocateProtectionDomain();
        var pdB = db.AllocateProtectionDomain();
        var cqA = a.CreateCompletionQueue(16);
        var cqB = db.CreateCompletionQueue(16);
        var qpA = pdA.CreateQueuePair(new QueuePairOptions { Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = cqA, ReceiveCompletionQueue = cqA });
        var qpB = pdB.CreateQueuePair(new QueuePairOptions { Type = QueuePairType.UnreliableDatagram, SendCompletionQueue = cqB, ReceiveCompletionQueue = cqB });
        const uint Qkey = 0x11111111;
        qpA.MoveToReadyToSend(Qkey);
        qpB.MoveToReadyToSend(Qkey);
        int gidA = a.FindGidIndex(IPAddress.Parse(ipA)), gidB = db.FindGidIndex(IPAddress.Parse(ipB));
        var ah = pdA.CreateAddressHandle(qpB.LocalEndpoint(gidB), gidA);

        var send = pdA.AllocateBuffer(4096, Rw);
        var recv = pdB.AllocateBuffer(4096, Rw);
        Patterns.Fill(send.Span[..512], 77);
        // A UD receive buffer starts with the 40-byte GRH.
        qpB.PostReceive(1, recv.Slice(0, 40 + 512));
        qpA.PostSend(2, send.Slice(0, 512), ah, qpB.QueuePairNumber, Qkey);
        RcPair.Expect(cqA, WorkCompletionOpcode.Send, 2);
        var wc = RcPair.Expect(cqB, WorkCompletionOpcode.Receive, 1);
        Assert.That(wc.ByteLength, Is.EqualTo(40u + 512));
        Assert.That(wc.SourceQueuePair, Is.EqualTo(qpA.QueuePairNumber));
        Patterns.AssertEqual(recv.Span.Slice(40, 512), send.Span[..512], "UD payload");
    }

    [Test]
    public void SharedReceiveQueueFeedsTwoQueuePairs()
    {
        using var device = Device.Open("rxelo");
        var pd = device.AllocateProtectionDomain();
        var cq = device.CreateCompletionQueue(64);
        var srq = pd.CreateSharedReceiveQueue(16);
        var recv = pd.AllocateBuffer(8192, Rw);
        var send = pd.AllocateBuffer(4096, Rw);
        for (int i = 0; i < 4; i++)
            srq.PostReceive(100 + (ulong)i, recv.Slice((ulong)i * 2048, 2048));

        int gid = device.FindGidIndex(IPAddress.Loopback);
        var receivers = new[]
        {
            pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq, SharedReceiveQueue = srq }),
            pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq, SharedReceiveQueue = srq }),
        };
        var senders = new[]
        {
            pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq }),
            pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq }),
        };
        for (int i = 0; i < 2; i++)
        {
            senders[i].Connect(receivers[i].LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic });
            receivers[i].Connect(senders[i].LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic });
        }
        Patterns.Fill(send.Span[..1000], 1);
        Patterns.Fill(send.Span.Slice(1000, 1000), 2);
        senders[0].PostSend(1, send.Slice(0, 1000));
        senders[1].PostSend(2, send.Slice(1000, 1000));

        var received = new Dictionary<uint, WorkCompletion>();
        for (int seen = 0; seen < 4;)
        {
            var wc = RcPair.WaitOne(cq);
            Assert.That(wc.IsSuccess, wc.ToString());
            seen++;
            if (wc.Opcode == WorkCompletionOpcode.Receive)
                received[wc.QueuePairNumber] = wc;
        }
        Assert.That(received.Keys, Is.EquivalentTo(receivers.Select(r => r.QueuePairNumber)), "each receiver took one SRQ buffer");
        foreach (var (qpn, wc) in received)
        {
            int source = qpn == receivers[0].QueuePairNumber ? 0 : 1000;
            int slot = (int)(wc.WorkRequestId - 100);
            Patterns.AssertEqual(recv.Span.Slice(slot * 2048, 1000), send.Span.Slice(source, 1000), $"SRQ receive on QP {qpn}");
        }
    }

    [Test]
    public unsafe void OnDemandRegionOverAnonymousMemory()
    {
        using var pair = RcPair.Loopback();   // path MTU 4096 on lo: single-page packets, see known-defects.md
        nuint size = 64 * 1024;
        void* memory = NativeMemory.AlignedAlloc(size, 4096);
        try
        {
            using var odp = pair.PdB.Register(memory, size, Rw | AccessFlags.OnDemand);
            Assert.That(odp.IsOnDemand);
            // rdma-core 56's rxe provider has no advise_mr: Prefetch reports that instead of throwing.
            bool prefetched = odp.Prefetch(0, (uint)size, forWrite: true);
            TestContext.Out.WriteLine($"prefetch supported: {prefetched}");
            using var pinned = pair.PdA.AllocateBuffer(4096, Rw);
            Assert.Throws<InvalidOperationException>(() => pinned.Prefetch(0, 4096, forWrite: false), "only ODP regions prefetch");
            using var source = pair.PdA.AllocateBuffer(size, Rw);
            Assert.That(pair.A.PathMtu, Is.EqualTo(Mtu.Mtu4096), "rxelo runs at 4096: multi-packet ODP writes are correct there");
            Patterns.Fill(source.Span, 123);
            pair.A.PostWrite(1, source.All, odp.ToRemote());
            RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, 1);
            Patterns.AssertEqual(new ReadOnlySpan<byte>(memory, (int)size), source.Span, "RDMA WRITE into an ODP region");
        }
        finally
        {
            NativeMemory.AlignedFree(memory);
        }
    }

    [Test]
    public void RegisteringWithoutLocalWriteForRemoteWriteIsRefusedClearly()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        var e = Assert.Throws<ArgumentException>(() => pd.AllocateBuffer(4096, AccessFlags.RemoteWrite))!;
        Assert.That(e.Message, Does.Contain("LocalWrite"));
    }

    [Test]
    public void OpeningAMissingDeviceNamesTheOnesThere()
    {
        var e = Assert.Throws<ArgumentException>(() => Device.Open("mlx5_9"))!;
        Assert.That(e.Message, Does.Contain("rxelo"));
    }

    [Test]
    public async Task PollAsyncWaitsForACompletionWithoutSpinning()
    {
        using var pair = RcPair.Loopback(events: true);
        using var local = pair.PdA.AllocateBuffer(4096, Rw);
        using var remote = pair.PdB.AllocateBuffer(4096, Rw);
        var completions = new WorkCompletion[4];
        var waiting = pair.CqA.PollAsync(completions);
        await Task.Delay(100);
        Assert.That(waiting.IsCompleted, Is.False, "nothing was posted yet");
        Patterns.Fill(local.Span[..100], 8);
        pair.A.PostWrite(9, local.Slice(0, 100), remote.ToRemote());
        int n = await waiting.AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(n, Is.EqualTo(1));
        Assert.That(completions[0].WorkRequestId, Is.EqualTo(9UL));
        Assert.That(completions[0].IsSuccess, completions[0].ToString());
        Patterns.AssertEqual(remote.Span[..100], local.Span[..100], "RDMA WRITE");

        using var cts = new CancellationTokenSource(200);
        Assert.ThrowsAsync<TaskCanceledException>(async () => await pair.CqA.PollAsync(completions, cts.Token));
    }

    [Test]
    public void PortEventsReachTheApplication()
    {
        using var device = Device.Open("rxe0");
        var events = new System.Collections.Concurrent.BlockingCollection<AsyncEvent>();
        device.AsyncEvent += (_, e) => events.Add(e);
        try
        {
            Run("ip", "link set veth0 down");
            Assert.That(events.TryTake(out var down, TimeSpan.FromSeconds(10)), "an event after link down");
            Assert.That(down.Type, Is.EqualTo(AsyncEventType.PortError));
            Assert.That(down.Port, Is.EqualTo(1));
        }
        finally
        {
            Run("ip", "link set veth0 up");
        }
        Assert.That(events.TryTake(out var up, TimeSpan.FromSeconds(10)), "an event after link up");
        Assert.That(up.Type, Is.EqualTo(AsyncEventType.PortActive));
    }

    static void Run(string file, string args)
    {
        using var p = System.Diagnostics.Process.Start(file, args);
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Zero, $"{file} {args}");
    }
}

/// <summary>FLUSH (global visibility and persistence) and explicit IOVAs.</summary>
[Category("Guest")]
public class FlushAndIovaTests
{
    const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;

    [Test]
    public void FlushForVisibilityOnMemory()
    {
        using var pair = RcPair.Loopback();
        Assert.That(pair.DeviceA.Attributes.FlushGlobal, "rxe reports FLUSH global");
        using var local = pair.PdA.AllocateBuffer(4096, Rw);
        using var remote = pair.PdB.AllocateBuffer(8192, Rw | AccessFlags.FlushGlobal);
        Patterns.Fill(local.Span, 4);
        pair.A.PostWrite(1, local.All, remote.ToRemote(), 4096, SendFlags.None);
        pair.A.PostFlush(2, remote.ToRemote(), 4096, 4096, FlushType.Global);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.Flush, 2);
        Patterns.AssertEqual(remote.Span.Slice(4096, 4096), local.Span, "written, then flushed");
    }

    [Test]
    public unsafe void FlushToPersistenceOnAnFsDaxFile()
    {
        using var pair = RcPair.Loopback();
        Assert.That(pair.DeviceA.Attributes.FlushPersistent, "rxe reports FLUSH persistent");
        using var dir = new TempDir(under: "/mnt/xfs");
        using var file = RdmaLease.Leases.DaxFile.Open(Path.Combine(dir.Path, "flush"), new RdmaLease.Leases.DaxFileOptions { Size = 16384 });
        Assert.That(file.IsDax);
        // On FS-DAX only an ODP registration is possible (the lease's registration chooses it); FlushPersistent is
        // accepted because the pages are pmem.
        using var lease = file.AcquireLease();
        using var region = RdmaLease.Leases.LeasedRegistration.Register(pair.PdB, lease, Rw | AccessFlags.FlushPersistent | AccessFlags.FlushGlobal);
        Assert.That(region.IsOnDemand);
        using var local = pair.PdA.AllocateBuffer(8192, Rw);
        Patterns.Fill(local.Span, 6);
        pair.A.PostWrite(1, local.All, region.ToRemote(), 4096, SendFlags.None);
        pair.A.PostFlush(2, region.ToRemote(), 4096, 8192, FlushType.Persistent);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.Flush, 2);
        Patterns.AssertEqual(file.GetSpan(4096, 8192), local.Span, "the file holds the flushed bytes");
        pair.A.PostFlush(3, region.ToRemote(), 0, 0, FlushType.Persistent, FlushLevel.MemoryRegion);
        RcPair.Expect(pair.CqA, WorkCompletionOpcode.Flush, 3);
    }

    [Test]
    public unsafe void PinnedFlushPersistentOnDramIsRefusedWithAHint()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        var e = Assert.Throws<VerbsException>(() => pd.AllocateBuffer(4096, Rw | AccessFlags.FlushPersistent))!;
        Assert.That(e.Errno, Is.EqualTo(22), e.Message);
        Assert.That(e.Message, Does.Contain("EINVAL").And.Contain("persistent memory"));
    }

    [Test]
    public unsafe void ExplicitIovaIsWhatPeersAddress()
    {
        using var pair = RcPair.Loopback();
        nuint size = 8192;
        void* memory = NativeMemory.AlignedAlloc(size, 4096);
        try
        {
            NativeMemory.Clear(memory, size);
            const ulong Iova = 0x4000_0000;
            using var region = pair.PdB.Register(memory, size, Rw, iova: Iova);
            Assert.That(region.ToRemote().Address, Is.EqualTo(Iova));
            using var local = pair.PdA.AllocateBuffer(4096, Rw);
            Patterns.Fill(local.Span[..100], 12);
            pair.A.PostWrite(1, local.Slice(0, 100), region.ToRemote(), 4096);
            RcPair.Expect(pair.CqA, WorkCompletionOpcode.RdmaWrite, 1);
            Patterns.AssertEqual(new ReadOnlySpan<byte>((byte*)memory + 4096, 100), local.Span[..100], "write at IOVA+4096");
        }
        finally
        {
            NativeMemory.AlignedFree(memory);
        }
    }
}
