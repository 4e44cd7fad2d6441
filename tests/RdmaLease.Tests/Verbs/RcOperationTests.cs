using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>Every RC operation, on rxelo (loopback) and across the veth pair; every byte compared.</summary>
[Category("Guest")]
[TestFixture("loopback")]
[TestFixture("veth")]
public class RcOperationTests(string link)
{
    RcPair _pair = null!;
    RegisteredBuffer _a = null!, _b = null!;
    const AccessFlags All = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic;

    [OneTimeSetUp]
    public void Connect()
    {
        _pair = link == "loopback" ? RcPair.Loopback() : RcPair.Veth();
        _a = _pair.PdA.AllocateBuffer(64 * 1024, All);
        _b = _pair.PdB.AllocateBuffer(64 * 1024, All);
    }

    [OneTimeTearDown]
    public void Close()
    {
        _a.Dispose();
        _b.Dispose();
        _pair.Dispose();
    }

    [TestCase(1)]
    [TestCase(4096)]
    [TestCase(65536)]
    public void RdmaWrite(int length)
    {
        Patterns.Fill(_a.Span[..length], length);
        _b.Span.Clear();
        _pair.A.PostWrite(1, _a.Slice(0, (uint)length), _b.ToRemote());
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.RdmaWrite, 1);
        Patterns.AssertEqual(_b.Span[..length], _a.Span[..length], "RDMA WRITE");
        Assert.That(_b.Span[length..].IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "bytes past the write were touched");
    }

    [Test]
    public void RdmaWriteWithImmediateConsumesAReceive()
    {
        Patterns.Fill(_a.Span[..100], 3);
        _pair.B.PostReceive(7, _b.Slice(0, 0));
        _pair.A.PostWrite(2, _a.Slice(0, 100), _b.ToRemote(), 1000, immediate: 0xC0FFEE);
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.RdmaWrite, 2);
        var wc = RcPair.Expect(_pair.CqB, WorkCompletionOpcode.ReceiveRdmaWithImmediate, 7);
        Assert.That(wc.HasImmediate);
        Assert.That(wc.Immediate, Is.EqualTo(0xC0FFEEu));
        Patterns.AssertEqual(_b.Span.Slice(1000, 100), _a.Span[..100], "RDMA WRITE with immediate");
    }

    [TestCase(8)]
    [TestCase(8192)]
    public void RdmaRead(int length)
    {
        Patterns.Fill(_b.Span[..length], 5);
        _a.Span.Clear();
        _pair.A.PostRead(3, _a.Slice(0, (uint)length), _b.ToRemote());
        var wc = RcPair.Expect(_pair.CqA, WorkCompletionOpcode.RdmaRead, 3);
        Assert.That(wc.ByteLength, Is.EqualTo((uint)length));
        Patterns.AssertEqual(_a.Span[..length], _b.Span[..length], "RDMA READ");
    }

    [Test]
    public void SendReceiveWithImmediate()
    {
        Patterns.Fill(_a.Span[..3000], 9);
        _b.Span.Clear();
        _pair.B.PostReceive(10, _b.Slice(0, 4096));
        _pair.A.PostSend(11, _a.Slice(0, 3000), immediate: 42);
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.Send, 11);
        var wc = RcPair.Expect(_pair.CqB, WorkCompletionOpcode.Receive, 10);
        Assert.That(wc.ByteLength, Is.EqualTo(3000u));
        Assert.That(wc.Immediate, Is.EqualTo(42u));
        Patterns.AssertEqual(_b.Span[..3000], _a.Span[..3000], "SEND");
    }

    [Test]
    public void InlineSend()
    {
        ReadOnlySpan<byte> message = "inline bytes need no memory region"u8;
        _b.Span.Clear();
        _pair.B.PostReceive(12, _b.Slice(0, 256));
        _pair.A.PostSendInline(13, message);
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.Send, 13);
        var wc = RcPair.Expect(_pair.CqB, WorkCompletionOpcode.Receive, 12);
        Patterns.AssertEqual(_b.Span[..(int)wc.ByteLength], message, "inline SEND");
    }

    [Test]
    public void CompareSwapAndFetchAdd()
    {
        var target = _b.Span.Slice(64, 8);
        BitConverter.TryWriteBytes(target, 100UL);
        _pair.A.PostCompareSwap(20, _a.Slice(0, 8), _b.ToRemote(), 64, compare: 100, swap: 555);
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.CompareSwap, 20);
        Assert.That(BitConverter.ToUInt64(_a.Span[..8]), Is.EqualTo(100UL), "CAS returns the old value");
        Assert.That(BitConverter.ToUInt64(target), Is.EqualTo(555UL), "CAS swapped");

        _pair.A.PostCompareSwap(21, _a.Slice(0, 8), _b.ToRemote(), 64, compare: 100, swap: 777);
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.CompareSwap, 21);
        Assert.That(BitConverter.ToUInt64(target), Is.EqualTo(555UL), "a failed compare leaves the value");

        _pair.A.PostFetchAdd(22, _a.Slice(8, 8), _b.ToRemote(), 64, add: 45);
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.FetchAdd, 22);
        Assert.That(BitConverter.ToUInt64(_a.Span.Slice(8, 8)), Is.EqualTo(555UL));
        Assert.That(BitConverter.ToUInt64(target), Is.EqualTo(600UL));
    }

    [Test]
    public void AtomicWrite()
    {
        Assert.That(_pair.A.SupportsExtendedOperations, "rxe offers the extended work-request API");
        _pair.A.PostAtomicWrite(30, _b.ToRemote(), 128, 0x1122334455667788UL);
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.AtomicWrite, 30);
        Assert.That(BitConverter.ToUInt64(_b.Span.Slice(128, 8)), Is.EqualTo(0x1122334455667788UL));
    }

    [Test]
    public void PostListWritesThenReads()
    {
        Patterns.Fill(_a.Span[..2048], 11);
        _b.Span.Clear();
        var batch = _pair.A.StartPost();
        batch.Write(40, _a.Slice(0, 1024), _b.ToRemote(), 0, SendFlags.None);
        batch.Write(41, _a.Slice(1024, 1024), _b.ToRemote(), 1024, SendFlags.None);
        batch.Read(42, _a.Slice(4096, 2048), _b.ToRemote(), 0);
        batch.Post();
        RcPair.Expect(_pair.CqA, WorkCompletionOpcode.RdmaRead, 42);
        Patterns.AssertEqual(_b.Span[..2048], _a.Span[..2048], "post list writes");
        Patterns.AssertEqual(_a.Span.Slice(4096, 2048), _a.Span[..2048], "post list read back");
    }

    [Test]
    public void BadRemoteKeyGivesRemoteAccessError()
    {
        // Its own pair: the error moves the QP to the error state.
        using var pair = link == "loopback" ? RcPair.Loopback() : RcPair.Veth();
        var a = pair.PdA.AllocateBuffer(4096, All);
        var b = pair.PdB.AllocateBuffer(4096, All);
        var wrong = b.ToRemote() with { RemoteKey = b.RemoteKey ^ 0x5a5a00 };
        pair.A.PostWrite(50, a.Slice(0, 64), wrong);
        var wc = RcPair.WaitOne(pair.CqA);
        Assert.That(wc.Status, Is.EqualTo(WorkCompletionStatus.RemoteAccessError), wc.ToString());
        Assert.That(wc.StatusDescription, Does.Contain("access").IgnoreCase);
        var e = Assert.Throws<WorkCompletionException>(wc.ThrowIfFailed)!;
        Assert.That(e.Message, Does.Contain("RemoteAccessError"));
        Assert.That(b.Span.IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing landed");
    }

    [Test]
    public void ReceiverNotReadyRetriesExceeded()
    {
        using var pair = link == "loopback" ? RcPair.Loopback(rnrRetry: 0) : RcPair.Veth(rnrRetry: 0);
        var a = pair.PdA.AllocateBuffer(4096, All);
        pair.A.PostSend(60, a.Slice(0, 16));   // B has no receive posted
        var wc = RcPair.WaitOne(pair.CqA);
        Assert.That(wc.Status, Is.EqualTo(WorkCompletionStatus.ReceiverNotReadyRetryExceeded), wc.ToString());
    }
}
