using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using RdmaLease.Tests.Connections;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Security;

/// <summary>
/// An attacker with a legitimate connection of its own to a server that grants it one region: it tries other keys,
/// one per connection (an RC error kills the QP, so it reconnects after each), with several connections in flight.
/// Each attempt is an 8-byte RDMA WRITE of <see cref="Marker"/> through a guessed key at a guessed address; any
/// success is a foreign write. What it measures is what the server let through, nothing else.
/// </summary>
internal sealed class KeySweep(IPEndPoint server, string deviceName, byte[] hello, Func<ReadOnlyMemory<byte>, RemoteRegion> grantOf)
{
    /// <summary>What the attacker writes: found anywhere outside its own grant, it is a foreign write.</summary>
    public static readonly byte[] Marker = "ATTACK!!"u8.ToArray();

    public sealed record Result(int Attempts, int Succeeded, int RemoteAccessErrors, int OtherErrors, int ConnectFailures, List<uint> OwnKeys, TimeSpan Elapsed)
    {
        public override string ToString() =>
            $"{Attempts} attempts in {Elapsed.TotalSeconds:F0} s ({Attempts / Math.Max(Elapsed.TotalSeconds, 0.001):F0}/s): {Succeeded} succeeded, " +
            $"{RemoteAccessErrors} remote access errors, {OtherErrors} other errors, {ConnectFailures} failed connects; {OwnKeys.Count} grants received";
    }

    /// <summary>One connection, as the attacker first sees the server: its own grant.</summary>
    public async Task<RemoteRegion> FirstGrantAsync()
    {
        using var side = new CmSide(deviceName, withEvents: true);
        var qp = side.NewQueuePair();
        using var conn = await RdmaConnection.ConnectAsync(server, qp, new RdmaConnectOptions { PrivateData = hello, Timeout = TimeSpan.FromSeconds(30) });
        return grantOf(conn.RemotePrivateData);
    }

    /// <summary>Tries every (key, address) of <paramref name="attempts"/>, <paramref name="parallel"/> connections at a time.</summary>
    public async Task<Result> RunAsync(IReadOnlyList<(uint Key, ulong Address)> attempts, int parallel)
    {
        int next = -1, succeeded = 0, access = 0, other = 0, connectFailures = 0;
        var own = new List<uint>();
        var clock = Stopwatch.StartNew();
        async Task Worker()
        {
            using var side = new CmSide(deviceName, withEvents: true);
            using var source = side.Pd.AllocateBuffer(64, AccessFlags.LocalWrite);
            Marker.CopyTo(source.Span);
            int i;
            while ((i = Interlocked.Increment(ref next)) < attempts.Count)
            {
                var (key, address) = attempts[i];
                var qp = side.NewQueuePair();
                try
                {
                    RdmaConnection conn;
                    for (int tries = 0; ; tries++)
                    {
                        try
                        {
                            conn = await RdmaConnection.ConnectAsync(server, qp, new RdmaConnectOptions { PrivateData = hello, Timeout = TimeSpan.FromSeconds(30) });
                            break;
                        }
                        catch (Exception e) when (e is RdmaConnectionException or TimeoutException && tries < 500)
                        {
                            // The server refuses a second connection of one client id until it has dropped the last one
                            // ("retry: ..."), and may be slow for a moment: count it and connect again.
                            Interlocked.Increment(ref connectFailures);
                            qp.Dispose();
                            qp = side.NewQueuePair();
                            await Task.Delay(10);
                        }
                    }
                    using (conn)
                    {
                        var grant = grantOf(conn.RemotePrivateData);
                        lock (own)
                            own.Add(grant.RemoteKey);
                        qp.PostWrite(1, source.Slice(0, (uint)Marker.Length), new RemoteRegion(address, (ulong)Marker.Length, key), 0);
                        var wc = await WaitAsync(side.Cq, TimeSpan.FromSeconds(30));
                        if (wc.Status == WorkCompletionStatus.Success)
                            Interlocked.Increment(ref succeeded);
                        else if (wc.Status == WorkCompletionStatus.RemoteAccessError)
                            Interlocked.Increment(ref access);
                        else
                            Interlocked.Increment(ref other);
                    }
                }
                finally
                {
                    qp.Dispose();
                }
            }
        }
        await Task.WhenAll(Enumerable.Range(0, parallel).Select(_ => Task.Run(Worker)));
        return new Result(attempts.Count, succeeded, access, other, connectFailures, own, clock.Elapsed);
    }

    static async Task<WorkCompletion> WaitAsync(CompletionQueue cq, TimeSpan timeout)
    {
        var wc = new WorkCompletion[1];
        using var cts = new CancellationTokenSource(timeout);
        await cq.PollAsync(wc, cts.Token);
        return wc[0];
    }

    /// <summary>All 256 keys of each index from <paramref name="center"/> - <paramref name="below"/> to + <paramref name="above"/>.</summary>
    public static IEnumerable<uint> KeysAround(uint center, int below, int above)
    {
        long index = center >> 8;
        for (long i = Math.Max(1, index - below); i <= index + above; i++)
            for (uint low = 0; low < 256; low++)
                yield return (uint)(i << 8) | low;
    }

    /// <summary>PmemStore's hello ("PMSC", client id) and the grant in its advert (24 bytes of header, then the region).</summary>
    public static byte[] PmemStoreHello(uint clientId)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(b, 0x43534D50);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), clientId);
        return b;
    }

    public static RemoteRegion PmemStoreGrant(ReadOnlyMemory<byte> advert)
    {
        var span = advert.Span;
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(span), Is.EqualTo(0x41534D50u), "a PmemStore advert (PMSA)");
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(span[4..]), Is.EqualTo(2u), "advert version 2: the grant");
        return RemoteRegion.Decode(span.Slice(24, RemoteRegion.EncodedLength));
    }
}
