using System.Net;
using RdmaLease.Leases;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Readme;

/// <summary>
/// The README's examples, compiled here: <see cref="ReadmeExampleTests"/> checks that each README code block is exactly
/// its region below and runs it in the guest against rxe and FS-DAX.
/// </summary>
static class ReadmeExample
{
    /// <summary>Runs the example on a file at <paramref name="path"/>; returns what it would give peers.</summary>
    public static RemoteRegion Run(string path)
    {
        #region readme
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        using var file = DaxFile.Open(path, new DaxFileOptions { Size = 1 << 20 });   // a file on FS-DAX, mapped MAP_SYNC
        using var lease = file.AcquireLease();                 // a write delegation (F_SETDELEG) or lease
        using var region = pd.Register(lease, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);  // ODP: nothing pinned
        RemoteRegion forPeers = region.ToRemote();             // address, length, rkey (+ limits the device needs)
        lease.Broken.Register(() => Console.WriteLine("truncated: region already deregistered, lease given back"));
        #endregion
        return forPeers;
    }

    /// <summary>
    /// The complete example: a server leases and advertises a pmem file over rdma_cm, a client connects, writes and
    /// flushes to persistence, then <paramref name="truncateFromAnotherProcess"/> breaks the lease. Returns what the
    /// client's write after the break completed with, and the region (disposed) for the caller to check.
    /// </summary>
    public static async Task<(WorkCompletionStatus AfterBreak, LeasedMemoryRegion Region)> RunComplete(string path, IPAddress address,
        Func<Task> truncateFromAnotherProcess, CancellationToken ct)
    {
        #region readme-complete
        // The server: a leased pmem file, registered, advertised to whoever connects (rdma_cm private data).
        using var device = Device.Open("rxecm");               // rdma_cm needs a routed address: not rxe on lo
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(16, withEvents: true);
        using var file = DaxFile.Open(path, new DaxFileOptions { Size = 1 << 20 });
        using var lease = file.AcquireLease();
        using var region = pd.Register(lease, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.FlushPersistent);
        var qpOptions = new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq };
        using var serverQp = pd.CreateQueuePair(qpOptions);
        region.AttachQueuePair(serverQp);                      // a break moves it to the error state
        using var listener = RdmaListener.Listen(new IPEndPoint(address, 0));
        var advert = new byte[RemoteRegion.EncodedLength];
        region.ToRemote().Encode(advert);
        var accepted = Task.Run(async () =>
        {
            using var request = await listener.AcceptAsync(ct);
            return await request.AcceptAsync(serverQp, new RdmaAcceptOptions
            {
                PrivateData = advert,
                RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.FlushPersistent,   // QPs grant nothing by default
            }, ct);
        }, ct);

        // The client (another process, in real life): connect, read the advert, RDMA WRITE then FLUSH to persistence.
        using var clientQp = pd.CreateQueuePair(qpOptions);
        using var connection = await RdmaConnection.ConnectAsync(listener.LocalEndPoint, clientQp, cancellationToken: ct);
        using var serverSide = await accepted;
        var target = RemoteRegion.Decode(connection.RemotePrivateData.Span);
        using var data = pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        "hello, persistent memory"u8.CopyTo(data.Span);
        clientQp.PostWrite(1, data.Slice(0, 4096), target, 0, SendFlags.None);
        clientQp.PostFlush(2, target, 0, 4096);                // completes once the bytes are persistent
        await foreach (var wc in cq.ReadAllAsync(ct))
        {
            wc.ThrowIfFailed();
            if (wc.WorkRequestId == 2)
                break;                                         // stored: only now may the client count it
        }

        // Another process truncates the file: before the lease goes back, the region is revoked and deregistered
        // and the server's QP is in error. The old rkey reaches nothing; reconnect with a new QP and a new registration.
        await truncateFromAnotherProcess();
        await Task.Delay(Timeout.Infinite, lease.Broken).ContinueWith(_ => { }, TaskScheduler.Default);
        serverSide.Dispose();                                  // the server ends that generation's connections
        await connection.Disconnected.WaitAsync(ct);           // the client learns it ...
        clientQp.PostWrite(3, data.Slice(0, 4096), target);    // ... and a late write is flushed, never delivered
        WorkCompletion afterBreak = default;
        await foreach (var wc in cq.ReadAllAsync(ct))
        {
            afterBreak = wc;
            break;
        }
        #endregion
        return (afterBreak.Status, region);
    }
}
