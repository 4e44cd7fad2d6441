using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>
/// Two RC QPs on rxelo in one PD, made for gather/scatter posting: 4 SGEs per send and per receive, 64 inline bytes;
/// a pinned 64 KiB buffer on each side (B's reachable for writes, reads and atomics). Disposing the device disposes all.
/// </summary>
sealed class BatchRig : IDisposable
{
    public const int MaxSegments = 4, MaxInline = 64;
    public const AccessFlags All = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic;

    public Device Device { get; }
    public ProtectionDomain Pd { get; }
    public CompletionQueue CqA { get; }
    public CompletionQueue CqB { get; }
    public QueuePair A { get; }
    public QueuePair B { get; }
    public RegisteredBuffer Local { get; }
    public RegisteredBuffer Remote { get; }

    public BatchRig(Mtu? pathMtu = null, int maxSendRequests = 64)
    {
        Device = Device.Open("rxelo");
        Pd = Device.AllocateProtectionDomain();
        CqA = Device.CreateCompletionQueue(256);
        CqB = Device.CreateCompletionQueue(256);
        A = Pd.CreateQueuePair(Options(CqA, maxSendRequests));
        B = Pd.CreateQueuePair(Options(CqB, maxSendRequests));
        int gid = Device.FindGidIndex(IPAddress.Loopback);
        var connect = new ConnectOptions { GidIndex = gid, PathMtu = pathMtu, RemoteAccess = RcPair.AllRemoteOperations(Device) };
        A.Connect(B.LocalEndpoint(gid), connect);
        B.Connect(A.LocalEndpoint(gid), connect);
        Local = Pd.AllocateBuffer(64 << 10, All);
        Remote = Pd.AllocateBuffer(64 << 10, All);
    }

    static QueuePairOptions Options(CompletionQueue cq, int maxSendRequests) => new()
    {
        SendCompletionQueue = cq,
        ReceiveCompletionQueue = cq,
        MaxSendRequests = maxSendRequests,
        MaxSendScatterGather = MaxSegments,
        MaxReceiveScatterGather = MaxSegments,
        MaxInlineData = MaxInline,
    };

    /// <summary>Asserts nothing completes on either CQ within 200 ms (nothing was posted).</summary>
    public void AssertNothingPosted(string what)
    {
        Thread.Sleep(200);
        Span<WorkCompletion> wc = stackalloc WorkCompletion[4];
        Assert.That(CqA.Poll(wc) + CqB.Poll(wc), Is.Zero, what + ": nothing may have been posted");
    }

    public void Dispose() => Device.Dispose();
}
