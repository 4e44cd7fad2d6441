using System.Net;
using RdmaLease.Tests.Connections;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Security;

/// <summary>
/// A server in the test process that accepts every connection with a grant of <see cref="Region"/> (the key in the
/// accept's private data), each peer on a QP with a send CQ of its own, and keeps the accepted connections until the peer
/// leaves or errs (the connection revokes the grant; the server drops the QP). <see cref="Region"/> can be replaced
/// (a re-registration after a break): later connections get grants of the new one.
/// </summary>
internal sealed class GrantServer : IDisposable
{
    readonly CmSide _side = new();
    readonly RdmaListener _listener;
    readonly CancellationTokenSource _stop = new();
    readonly Task _loop;
    readonly Lock _gate = new();
    readonly List<RdmaConnection> _connections = [];
    readonly List<RdmaPeerErrorEventArgs> _errors = [];

    public GrantServer(Func<ProtectionDomain, MemoryRegion> region, AccessFlags access)
    {
        Region = region(_side.Pd);
        Access = access;
        _listener = RdmaListener.Listen(Cm.AnyPort);
        _loop = Task.Run(AcceptLoopAsync);
    }

    public ProtectionDomain Pd => _side.Pd;
    public MemoryRegion Region { get; set; }
    public AccessFlags Access { get; }
    public IPEndPoint EndPoint => _listener.LocalEndPoint;

    /// <summary>The connections accepted so far, in order (ended ones included).</summary>
    public List<RdmaConnection> Connections
    {
        get
        {
            lock (_gate)
                return [.. _connections];
        }
    }

    /// <summary>The <paramref name="index"/>th connection accepted, waiting for it (the server's accept completes a little after the peer's connect).</summary>
    public RdmaConnection Connection(int index)
    {
        Eventually(() => Connections.Count > index, $"the server accepted connection {index}");
        return Connections[index];
    }

    /// <summary>What <see cref="RdmaConnection.PeerError"/> reported, in order.</summary>
    public List<RdmaPeerErrorEventArgs> Errors
    {
        get
        {
            lock (_gate)
                return [.. _errors];
        }
    }

    async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            RdmaConnectionRequest request;
            try
            {
                request = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            using (request)
            {
                var cq = _side.Device.CreateCompletionQueue(2, withEvents: true);
                var qp = _side.Pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = _side.Cq });
                try
                {
                    var conn = await request.AcceptAsync(qp, Region, Access, Encode, new RdmaAcceptOptions { Timeout = Cm.Generous }, _stop.Token);
                    conn.PeerError += (_, e) =>
                    {
                        lock (_gate)
                            _errors.Add(e);
                    };
                    lock (_gate)
                        _connections.Add(conn);
                    _ = conn.Disconnected.ContinueWith(_ =>
                    {
                        conn.Dispose();
                        qp.Dispose();
                        cq.Dispose();
                    }, TaskScheduler.Default);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    TestContext.Out.WriteLine($"GrantServer: accept failed: {e.Message}");
                    qp.Dispose();
                    cq.Dispose();
                }
            }
        }
    }

    public static ReadOnlyMemory<byte> Encode(RemoteRegion grant)
    {
        var b = new byte[RemoteRegion.EncodedLength];
        grant.Encode(b);
        return b;
    }

    public static RemoteRegion Decode(ReadOnlyMemory<byte> data) => RemoteRegion.Decode(data.Span);

    /// <summary>Waits until <paramref name="condition"/> holds (the server's side of a connection is asynchronous).</summary>
    public static void Eventually(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Cm.Generous;
        while (!condition())
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "timed out waiting until " + what);
            Thread.Sleep(20);
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        try
        {
            _loop.Wait(Cm.Generous);
        }
        catch (AggregateException)
        {
        }
        foreach (var c in Connections)
            c.Dispose();
        _side.Dispose();
    }
}
