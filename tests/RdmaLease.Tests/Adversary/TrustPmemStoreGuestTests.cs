using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Text;
using RdmaLease.Tests.Connections;
using RdmaLease.Tests.Samples;
using RdmaLease.Tests.Security;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Adversary;

/// <summary>
/// samples/PmemStore under peers that are not its honest clients: what its accept gives away (the advert), whom it
/// refuses (bad hellos), and whom it grants an area (a peer claiming a connected client's id). The server and the honest
/// client are the sample's own processes; the impostors are this test process on rxecm (198.51.100.1).
/// </summary>
[Category("Guest")]
[NonParallelizable]
public class TrustPmemStoreGuestTests
{
    const int AreaRecords = 64;
    const ulong AreaBytes = AreaRecords * 4096UL;
    static readonly TimeSpan Start = TimeSpan.FromSeconds(90);

    /// <summary>
    /// docs/pmem-store.md: "Another client, or an attacker with a client id of its own, cannot use" a client's grant. The
    /// client id is the hello's 4 bytes, unauthenticated, and the server grants area c to every peer that says c, while
    /// client c is connected too. An impostor claiming client 0's id gets a grant of client 0's area and writes (and
    /// flushes) a page there. Expected: a second peer for a connected client's id is refused (and, for a real
    /// deployment, ids are authenticated), and nothing of the impostor's lands.
    /// </summary>
    [Test]
    public async Task APeerClaimingAConnectedClientsIdGetsNoGrantOfItsArea()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string file = dir.File("store"), port = "7581", log = dir.File("acked-0");
        using var server = PmemStoreSample.Live("serve", file, "--address", "198.51.100.1", "--port", port, "--device", "rxecm",
            "--clients", "2", "--area-records", AreaRecords.ToString(CultureInfo.InvariantCulture), "--verify", log);
        server.WaitFor("generation 1: leased", Start);
        var endpoint = new IPEndPoint(IPAddress.Parse("198.51.100.1"), int.Parse(port, CultureInfo.InvariantCulture));
        const int Records = 30;
        using var honest = PmemStoreSample.Live("write", "--server", endpoint.ToString(), "--device", "rxecm", "--client-id", "0",
            "--records", Records.ToString(CultureInfo.InvariantCulture), "--window", "1", "--interval-ms", "300", "--acked-log", log, "--timeout-s", "300");
        server.WaitFor("client 0 connected from", Start);

        using var side = new CmSide("rxecm");
        using var page = side.Pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        for (int i = 0; i < 4096; i += KeySweep.Marker.Length)
            KeySweep.Marker.CopyTo(page.Span[i..]);
        var qp = side.NewQueuePair();
        Exception? refused = null;
        RemoteRegion grant = default;
        WorkCompletion? flushed = null;
        try
        {
            using var conn = await RdmaConnection.ConnectAsync(endpoint, qp, new RdmaConnectOptions { PrivateData = KeySweep.PmemStoreHello(0), Timeout = Cm.Generous });
            grant = KeySweep.PmemStoreGrant(conn.RemotePrivateData);
            // Client 0's last record slot, which the honest client (30 records) never writes: its records stay verifiable.
            qp.PostWrite(1, page.Slice(0, 4096), grant, AreaBytes - 4096, SendFlags.None);
            qp.PostFlush(2, grant, AreaBytes - 4096, 4096);
            flushed = Cm.WaitOne(side.Cq, 30);
        }
        catch (RdmaConnectionException e)
        {
            refused = e;
        }
        TestContext.Out.WriteLine(refused is null
            ? $"the impostor claiming client 0 was accepted with a grant of 0x{grant.Address:x}+{grant.Length} (key 0x{grant.RemoteKey:x}); its WRITE+FLUSH: {flushed}"
            : $"the impostor was refused: {refused.Message}");

        int honestExit = honest.WaitForExit(TimeSpan.FromSeconds(300));
        Assert.That(honestExit, Is.Zero, honest.Output);
        server.Signal("TERM");
        int serverExit = server.WaitForExit(TimeSpan.FromSeconds(60));
        string output = server.Output;
        byte[] bytes = File.ReadAllBytes(file);
        byte[] lastPage = bytes.AsSpan((int)(AreaBytes - 4096), 4096).ToArray();
        Assert.Multiple(() =>
        {
            Assert.That(serverExit, Is.Zero, output);
            Assert.That(PmemStoreSample.VerifyTotal(output), Is.EqualTo(((long)Records, (long)Records, 0L, 0L)), "the honest client's records");
            Assert.That(refused, Is.Not.Null, "a second peer claiming client 0's id while client 0 is connected is refused");
            Assert.That(lastPage.AsSpan().IndexOf(KeySweep.Marker), Is.EqualTo(-1), "nothing of the impostor's landed in client 0's area");
        });
    }

    /// <summary>
    /// What the accept gives away and whom the server refuses: a peer with no PmemStore hello and one with a client id
    /// out of range are rejected with a final reason; a valid client's advert carries its grant (a window key, its area's
    /// length) and no area region's key anywhere in its 196 bytes; a peer that connects and never writes disturbs nothing.
    /// </summary>
    [Test]
    public async Task TheAdvertCarriesNoAreaKeyAndBadHellosAreRefused()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string file = dir.File("store"), port = "7582";
        using var server = PmemStoreSample.Live("serve", file, "--address", "198.51.100.1", "--port", port, "--device", "rxecm",
            "--clients", "2", "--area-records", AreaRecords.ToString(CultureInfo.InvariantCulture));
        server.WaitFor("generation 1: leased", Start);
        var endpoint = new IPEndPoint(IPAddress.Parse("198.51.100.1"), int.Parse(port, CultureInfo.InvariantCulture));
        using var side = new CmSide("rxecm");

        string Rejected(byte[] hello)
        {
            var qp = side.NewQueuePair();
            var e = Assert.CatchAsync<RdmaConnectionRejectedException>(() =>
                RdmaConnection.ConnectAsync(endpoint, qp, new RdmaConnectOptions { PrivateData = hello, Timeout = Cm.Generous }));
            return Encoding.UTF8.GetString(e!.PrivateData.Span).TrimEnd('\0');
        }
        string noHello = Rejected("GET / HTTP/1.1\r\n"u8.ToArray());
        string outOfRange = Rejected(KeySweep.PmemStoreHello(7));
        TestContext.Out.WriteLine($"no hello: '{noHello}'; client id 7: '{outOfRange}'");
        Assert.That(noHello, Does.Contain("not a PmemStore client").And.Not.StartWith("retry:"));
        Assert.That(outOfRange, Does.Contain("client id 7 is not one of 0..1").And.Not.StartWith("retry:"));

        var qp1 = side.NewQueuePair();
        byte[] advert;
        RemoteRegion grant;
        using (var conn = await RdmaConnection.ConnectAsync(endpoint, qp1, new RdmaConnectOptions { PrivateData = KeySweep.PmemStoreHello(1), Timeout = Cm.Generous }))
        {
            advert = conn.RemotePrivateData.ToArray();
            grant = KeySweep.PmemStoreGrant(conn.RemotePrivateData);
            Thread.Sleep(3000);   // connects and never writes
            Assert.That(server.HasExited, Is.False, server.Output);
            Assert.That(conn.IsConnected, Is.True, "the server keeps an idle client's connection");
        }
        var areaKeys = PmemStoreGuestTests.LastAreaKeys(server.Output);
        TestContext.Out.WriteLine($"advert ({advert.Length} bytes): grant 0x{grant.Address:x}+{grant.Length} key 0x{grant.RemoteKey:x}; area keys {string.Join(", ", areaKeys.Select(k => $"0x{k:x}"))}");
        Assert.Multiple(() =>
        {
            Assert.That(grant.Length, Is.EqualTo(AreaBytes), "the grant is client 1's area, nothing more");
            Assert.That(areaKeys, Does.Not.Contain(grant.RemoteKey), "the grant's key is a window's");
            foreach (uint key in areaKeys)
                Assert.That(Contains(advert, key), Is.False, $"area key 0x{key:x} appears nowhere in the accept's private data");
        });
        server.Signal("TERM");
        Assert.That(server.WaitForExit(TimeSpan.FromSeconds(60)), Is.Zero, server.Output);
    }

    /// <summary>A little-endian u32 anywhere in <paramref name="data"/>.</summary>
    static bool Contains(ReadOnlySpan<byte> data, uint value)
    {
        Span<byte> le = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(le, value);
        return data.IndexOf(le) >= 0;
    }
}
