using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// Two RC queue pairs connected to each other: A on <c>deviceA</c>, B on <c>deviceB</c>
/// (the same device for loopback on rxelo; rxe0/rxe1 for the veth pair). Each side has its own
/// PD and CQ. Disposing disposes both devices (and with them everything created).
/// </summary>
sealed class RcPair : IDisposable
{
    public Device DeviceA { get; }
    public Device DeviceB { get; }
    public ProtectionDomain PdA { get; }
    public ProtectionDomain PdB { get; }
    public CompletionQueue CqA { get; }
    public CompletionQueue CqB { get; }
    public QueuePair A { get; }
    public QueuePair B { get; }

    public static readonly IPAddress LoopbackV4 = IPAddress.Loopback;

    RcPair(string deviceA, IPAddress addressA, string deviceB, IPAddress addressB, Mtu? mtu, bool events, byte rnrRetry)
    {
        DeviceA = Device.Open(deviceA);
        DeviceB = deviceB == deviceA ? DeviceA : Device.Open(deviceB);
        PdA = DeviceA.AllocateProtectionDomain();
        PdB = DeviceB.AllocateProtectionDomain();
        CqA = DeviceA.CreateCompletionQueue(256, events);
        CqB = DeviceB.CreateCompletionQueue(256, events);
        A = PdA.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = CqA, ReceiveCompletionQueue = CqA, MaxInlineData = 64 });
        B = PdB.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = CqB, ReceiveCompletionQueue = CqB, MaxInlineData = 64 });
        int gidA = DeviceA.FindGidIndex(addressA), gidB = DeviceB.FindGidIndex(addressB);
        var endA = A.LocalEndpoint(gidA);
        var endB = B.LocalEndpoint(gidB);
        A.Connect(endB, new ConnectOptions { GidIndex = gidA, PathMtu = mtu, RnrRetry = rnrRetry, RemoteAccess = AllRemoteOperations(DeviceA) });
        B.Connect(endA, new ConnectOptions { GidIndex = gidB, PathMtu = mtu, RnrRetry = rnrRetry, RemoteAccess = AllRemoteOperations(DeviceB) });
    }

    /// <summary>Every operation a peer may direct at a QP on <paramref name="device"/> (QPs grant none by default).</summary>
    public static AccessFlags AllRemoteOperations(Device device) =>
        AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic
        | (device.Attributes.FlushGlobal ? AccessFlags.FlushGlobal : 0)
        | (device.Attributes.FlushPersistent ? AccessFlags.FlushPersistent : 0);

    /// <summary>Loopback on rxelo (127.0.0.1).</summary>
    public static RcPair Loopback(Mtu? mtu = null, bool events = false, byte rnrRetry = 7) =>
        new("rxelo", IPAddress.Loopback, "rxelo", IPAddress.Loopback, mtu, events, rnrRetry);

    /// <summary>Across the veth pair: rxe0 (192.0.2.1) to rxe1 (192.0.2.2 in netns peer).</summary>
    public static RcPair Veth(Mtu? mtu = null, bool events = false, byte rnrRetry = 7) =>
        new("rxe0", IPAddress.Parse("192.0.2.1"), "rxe1", IPAddress.Parse("192.0.2.2"), mtu, events, rnrRetry);

    /// <summary>Polls <paramref name="cq"/> until one completion arrives (at most 10 s) and returns it.</summary>
    public static WorkCompletion WaitOne(CompletionQueue cq)
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
        var deadline = Environment.TickCount64 + 10_000;
        while (cq.Poll(wc) == 0)
        {
            if (Environment.TickCount64 > deadline)
                Assert.Fail($"no completion on {cq} within 10 s");
        }
        return wc[0];
    }

    /// <summary>Waits for a successful completion and checks its opcode.</summary>
    public static WorkCompletion Expect(CompletionQueue cq, WorkCompletionOpcode opcode, ulong wrId)
    {
        var wc = WaitOne(cq);
        Assert.That(wc.Status, Is.EqualTo(WorkCompletionStatus.Success), wc.ToString());
        Assert.That(wc.Opcode, Is.EqualTo(opcode), wc.ToString());
        Assert.That(wc.WorkRequestId, Is.EqualTo(wrId), wc.ToString());
        return wc;
    }

    public void Dispose()
    {
        DeviceA.Dispose();
        DeviceB.Dispose();
    }
}

static class Patterns
{
    /// <summary>Deterministic bytes that differ per offset and seed (no period of a packet size).</summary>
    public static void Fill(Span<byte> span, int seed)
    {
        for (int i = 0; i < span.Length; i++)
            span[i] = (byte)(seed * 31 + i * 7 + (i >> 8) * 13 + (i >> 12));
    }

    /// <summary>Asserts two spans are equal, reporting how many bytes differ and where the first is.</summary>
    public static void AssertEqual(ReadOnlySpan<byte> actual, ReadOnlySpan<byte> expected, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), what + ": length");
        int bad = 0, first = -1;
        for (int i = 0; i < actual.Length; i++)
        {
            if (actual[i] != expected[i])
            {
                bad++;
                if (first < 0) first = i;
            }
        }
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {actual.Length} bytes differ, first at offset {first}");
    }
}
