using System.Globalization;
using System.Net;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Connections;

/// <summary>One side of an rdma_cm connection test: its own device context, PD, CQ and RC QPs (as another process would have).</summary>
internal sealed class CmSide : IDisposable
{
    /// <param name="withEvents">a CQ with a completion channel, for <c>PollAsync</c>.</param>
    public CmSide(string device = Cm.DeviceName, bool withEvents = false)
    {
        Device = Device.Open(device);
        Pd = Device.AllocateProtectionDomain();
        Cq = Device.CreateCompletionQueue(256, withEvents);
    }

    public Device Device { get; }
    public ProtectionDomain Pd { get; }
    public CompletionQueue Cq { get; }

    public QueuePair NewQueuePair(QueuePairType type = QueuePairType.ReliableConnected) =>
        Pd.CreateQueuePair(new QueuePairOptions { Type = type, SendCompletionQueue = Cq, ReceiveCompletionQueue = Cq });

    /// <summary>Disposing the device disposes everything made from it, newest first.</summary>
    public void Dispose() => Device.Dispose();
}

/// <summary>Disposes what was added, newest first, whatever happened (idempotent disposals).</summary>
internal sealed class Disposables : IDisposable
{
    readonly Stack<IDisposable> _items = new();

    public T Add<T>(T item) where T : IDisposable
    {
        _items.Push(item);
        return item;
    }

    public void Dispose()
    {
        while (_items.TryPop(out var d))
            d.Dispose();
    }
}

internal static class Cm
{
    public static readonly TimeSpan Generous = TimeSpan.FromSeconds(30);

    /// <summary>rdma_cm cannot route over lo: tests use rxecm on the dummy rdmacm0 (tools/vm/guest-init.sh).</summary>
    public const string DeviceName = "rxecm";

    public static readonly IPAddress Address = IPAddress.Parse("198.51.100.1");

    public static IPEndPoint AnyPort => new(Address, 0);

    public static byte[] Bytes(int length, int seed)
    {
        var b = new byte[length];
        for (int i = 0; i < b.Length; i++)
            b[i] = (byte)(i * 7 + seed);
        return b;
    }

    /// <summary>Connects <paramref name="client"/> to <paramref name="listener"/>, which accepts on <paramref name="server"/>.</summary>
    public static async Task<(RdmaConnection Client, RdmaConnection Server, byte[] RequestData)> ConnectPairAsync(
        RdmaListener listener, QueuePair client, QueuePair server, byte[] clientData, byte[] serverData)
    {
        var accepting = Task.Run(async () =>
        {
            using var request = await listener.AcceptAsync(Generous);
            byte[] data = request.PrivateData.ToArray();
            // The client writes into the server's region: the server QP grants RDMA WRITE (QPs grant nothing by default).
            var conn = await request.AcceptAsync(server, new RdmaAcceptOptions { PrivateData = serverData, Timeout = Generous, RemoteAccess = AccessFlags.RemoteWrite });
            return (conn, data);
        });
        RdmaConnection c;
        try
        {
            c = await RdmaConnection.ConnectAsync(listener.LocalEndPoint, client,
                new RdmaConnectOptions { PrivateData = clientData, Timeout = Generous, AckTimeout = 16 });
        }
        catch
        {
            try { (await accepting).conn.Dispose(); } catch (Exception) { }
            throw;
        }
        var (s, requestData) = await accepting.WaitAsync(Generous);
        return (c, s, requestData);
    }

    /// <summary>`rdma resource show qp` lines of the QP numbered <paramref name="qpn"/> (lqpn).</summary>
    public static List<string> KernelQp(uint qpn) =>
        [.. KernelView.RdmaResources("qp").Where(l => l.Contains($" lqpn {qpn.ToString(CultureInfo.InvariantCulture)} ", StringComparison.Ordinal))];

    /// <summary>`rdma resource show cm_id` lines of user-space ids that mention <paramref name="port"/>.</summary>
    public static List<string> KernelCmIds(int port) =>
        [.. KernelView.RdmaResources("cm_id").Where(l => l.Contains(":" + port.ToString(CultureInfo.InvariantCulture) + " ", StringComparison.Ordinal)
            || l.EndsWith(":" + port.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal))];

    public static WorkCompletion WaitOne(CompletionQueue cq, int seconds = 20)
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
        long deadline = Environment.TickCount64 + seconds * 1000L;
        while (cq.Poll(wc) == 0)
        {
            if (Environment.TickCount64 > deadline)
                Assert.Fail($"no completion on {cq} within {seconds} s");
            Thread.Yield();
        }
        return wc[0];
    }

    /// <summary>One completion within <paramref name="seconds"/>, or null.</summary>
    public static WorkCompletion? TryWaitOne(CompletionQueue cq, int seconds)
    {
        var wc = new WorkCompletion[1];
        long deadline = Environment.TickCount64 + seconds * 1000L;
        while (cq.Poll(wc) == 0)
        {
            if (Environment.TickCount64 > deadline)
                return null;
            Thread.Sleep(1);
        }
        return wc[0];
    }

    public static void ExpectSuccess(CompletionQueue cq, WorkCompletionOpcode opcode, ulong id)
    {
        var wc = WaitOne(cq);
        Assert.That(wc.Status, Is.EqualTo(WorkCompletionStatus.Success), wc.ToString());
        Assert.That(wc.Opcode, Is.EqualTo(opcode), wc.ToString());
        Assert.That(wc.WorkRequestId, Is.EqualTo(id), wc.ToString());
    }

    /// <summary>The private data as received: what was sent, then zeros up to the transport's size.</summary>
    public static void AssertPrivateData(ReadOnlySpan<byte> received, byte[] sent, int transportSize, string what)
    {
        Assert.That(received.Length, Is.EqualTo(transportSize), $"{what}: IB/RoCE deliver the full private data area");
        Assert.That(received[..sent.Length].ToArray(), Is.EqualTo(sent), what);
        Assert.That(received[sent.Length..].IndexOfAnyExcept((byte)0), Is.EqualTo(-1), $"{what}: padding");
    }
}
