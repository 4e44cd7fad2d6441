using RdmaLease.Leases;
using RdmaLease.Tests.Connections;
using RdmaLease.Tests.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Security;

/// <summary>
/// Grants over rdma_cm connections (rxecm): a peer reaches what it was granted through its own connection and nothing
/// else; another peer with the exact key gets RemoteAccessError; an old grant fails after the peer's disconnect, after a
/// re-grant and after a lease break; the server sees each refused attempt (PeerError, peer_errors). Every byte is compared.
/// </summary>
[Category("Guest")]
public class GrantGuestTests
{
    const int Size = 64 * 1024;
    const AccessFlags GrantedRegion = AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind;

    [Test]
    public async Task AGrantWorksOnlyOnTheConnectionItWasMadeFor()
    {
        using var memory = new MemorySlot();
        using var server = new GrantServer(pd => memory.Register(pd), AccessFlags.RemoteWrite);
        using var a = await Peer.ConnectAsync(server);
        using var b = await Peer.ConnectAsync(server);
        Assert.That(a.Grant.RemoteKey, Is.Not.EqualTo(b.Grant.RemoteKey));
        Assert.That(a.Grant.RemoteKey, Is.Not.EqualTo(server.Region.RemoteKey), "peers get window keys, never the region's");

        Assert.That(await a.WriteAsync(a.Grant, 0, seed: 1), Is.EqualTo(WorkCompletionStatus.Success));
        var expected = MemorySlot.Expect(0, seed: 1);
        Patterns.AssertEqual(memory.Span, expected, "a's write through its own grant");

        long before = VerbsMetrics.PeerErrors;
        Assert.That(await b.WriteAsync(a.Grant, 4096, seed: 2), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "b with a's exact key and address");
        Patterns.AssertEqual(memory.Span, expected, "nothing of b's landed");
        GrantServer.Eventually(() => server.Errors.Count == 1, "the server saw b's error");
        var error = server.Errors[0];
        Assert.Multiple(() =>
        {
            Assert.That(error.Error, Is.EqualTo(AsyncEventType.QpAccessError));
            Assert.That(error.GrantEnded, Is.False, "b's own grant stood: the key was never given to b");
            Assert.That(error.QueuePairNumber, Is.EqualTo(server.Connection(1).QueuePair.QueuePairNumber), "reported on b's connection, not a's");
            Assert.That(VerbsMetrics.PeerErrors, Is.GreaterThan(before), "peer_errors counted it");
            Assert.That(server.Connection(1).Grant!.IsRevoked, "the erring peer's grant is revoked");
            Assert.That(server.Connection(0).Grant!.IsRevoked, Is.False, "a's grant is untouched");
        });
        Assert.That(await a.WriteAsync(a.Grant, 8192, seed: 3), Is.EqualTo(WorkCompletionStatus.Success), "a still writes");
        expected = MemorySlot.Expect(8192, seed: 3, expected);
        Patterns.AssertEqual(memory.Span, expected, "a's second write");

        // A write-only grant: a READ through it is refused (the QP grants no READ either).
        Assert.That(await a.ReadAsync(a.Grant, 0), Is.EqualTo(WorkCompletionStatus.RemoteInvalidRequest).Or.EqualTo(WorkCompletionStatus.RemoteAccessError));
    }

    [Test]
    public async Task AnOldGrantFailsAfterADisconnectAReGrantAndALeaseBreak()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        var file = LeasedRdma.OpenFile(path, "/mnt/xfs", Size);
        var lease = file.AcquireLease();
        LeasedMemoryRegion? leased = null;
        using var server = new GrantServer(pd => (leased = pd.Register(lease, GrantedRegion)).Region, AccessFlags.RemoteWrite);
        var keys = new List<uint>();
        try
        {
            // 1. After a disconnect.
            RemoteRegion old;
            using (var p = await Peer.ConnectAsync(server))
            {
                Assert.That(await p.WriteAsync(p.Grant, 0, seed: 1), Is.EqualTo(WorkCompletionStatus.Success));
                old = p.Grant;
                await p.Connection.DisconnectAsync();
            }
            keys.Add(old.RemoteKey);
            GrantServer.Eventually(() => server.Connection(0).Grant!.IsRevoked, "the server revoked the grant at the disconnect");
            using (var p = await Peer.ConnectAsync(server))
            {
                keys.Add(p.Grant.RemoteKey);
                Assert.That(await p.WriteAsync(old, 4096, seed: 2), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the old grant after a disconnect");
            }

            // 2. After a re-grant on the same connection.
            using (var p = await Peer.ConnectAsync(server))
            {
                keys.Add(p.Grant.RemoteKey);
                var conn = server.Connection(2);
                old = p.Grant;
                conn.Grant!.Revoke();
                using var again = await conn.QueuePair.GrantAsync(server.Region, AccessFlags.RemoteWrite);
                keys.Add(again.Remote.RemoteKey);
                Assert.That(await p.WriteAsync(again.Remote, 8192, seed: 3), Is.EqualTo(WorkCompletionStatus.Success), "the new grant works");
                Assert.That(await p.WriteAsync(old, 12288, seed: 4), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the old grant after a re-grant");
            }

            // 3. After a lease break: another process truncates; the region and every window over it are gone.
            using (var p = await Peer.ConnectAsync(server))
            {
                keys.Add(p.Grant.RemoteKey);
                old = p.Grant;
                var broke = LeasedRdma.OnBreak(lease);
                var probe = RunProbe(TimeSpan.FromSeconds(60), "truncate", path, Size.ToString(System.Globalization.CultureInfo.InvariantCulture));
                Assert.That(probe.Ok, Is.True, probe.Output);
                Assert.That(broke.Task.Wait(TimeSpan.FromSeconds(60)), Is.True, "the lease broke");
                Assert.That(server.Connection(3).Grant!.IsRevoked, "the grant died with its region");
            }
            leased!.Dispose();
            lease.Dispose();
            file.Dispose();
            file = DaxFile.Open(path);
            lease = file.AcquireLease();
            server.Region = server.Pd.Register(lease, GrantedRegion).Region;
            using (var p = await Peer.ConnectAsync(server))
            {
                keys.Add(p.Grant.RemoteKey);
                Assert.That(await p.WriteAsync(p.Grant, 0, seed: 5), Is.EqualTo(WorkCompletionStatus.Success), "the new grant after the break");
                Assert.That(await p.WriteAsync(old, 4096, seed: 6), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the old grant after a break");
            }
            Assert.That(keys.Distinct().Count(), Is.EqualTo(keys.Count), "every grant had a key never given before: " + string.Join(", ", keys.Select(k => $"0x{k:x}")));
            byte[] bytes = LeasedRdma.ReadByDescriptor(file);
            Patterns.AssertEqual(bytes.AsSpan(0, 4096), Pattern(5), "the write through the newest grant");
            Patterns.AssertEqual(bytes.AsSpan(8192, 4096), Pattern(3), "the write through the re-grant");
            Assert.That(bytes.AsSpan(4096, 4096).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "no old grant wrote anything");
            Assert.That(bytes.AsSpan(12288).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "no old grant wrote anything");
        }
        finally
        {
            server.Dispose();
            lease.Dispose();
            file.Dispose();
        }
    }

    [Test]
    public void ARegionThatAnswersItsOwnKeyIsNotGranted()
    {
        using var pair = RcPair.Loopback();
        using var buffer = pair.PdB.AllocateBuffer(4096, AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.MemoryWindowBind);
        var e = Assert.ThrowsAsync<ArgumentException>(() => pair.B.GrantAsync(buffer, AccessFlags.RemoteWrite));
        Assert.That(e!.Message, Does.Contain("grants RemoteWrite through its own key").And.Contain("MemoryWindowBind"));
    }

    /// <summary>
    /// The control for the attack tests: the same sweep (all 256 keys of an index, a reconnect after each error) finds
    /// a region that answers its own key in the server's protection domain, although the attacker was granted something
    /// else, and its marker lands there. So a sweep that finds nothing means the keys were refused, not that it could not hit.
    /// </summary>
    [Test]
    public async Task TheSweepFindsARegionThatAnswersItsOwnKey()
    {
        using var memory = new MemorySlot();
        using var server = new GrantServer(pd => memory.Register(pd), AccessFlags.RemoteWrite);
        using var victim = server.Pd.AllocateBuffer(4096, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);
        var sweep = new KeySweep(server.EndPoint, Cm.DeviceName, [], GrantServer.Decode);
        var attempts = KeySweep.KeysAround(victim.RemoteKey, 0, 0).Select(k => (k, victim.Address)).ToList();
        var result = await sweep.RunAsync(attempts, 4);
        TestContext.Out.WriteLine($"sweep of index 0x{victim.RemoteKey >> 8:x}: {result}");
        Assert.Multiple(() =>
        {
            Assert.That(result.Succeeded, Is.EqualTo(1), "exactly the victim's key");
            Assert.That(result.RemoteAccessErrors, Is.EqualTo(255));
            Assert.That(victim.Span[..KeySweep.Marker.Length].ToArray(), Is.EqualTo(KeySweep.Marker), "the marker landed in the victim region");
        });
    }

    /// <summary>
    /// The sweep aimed at a live grant: an attacker tries all 256 keys of a peer's window index (its exact key among
    /// them), reconnecting after each error, while that peer keeps writing through its grant: every one of the peer's
    /// writes succeeds and lands, and the server reports no error on the peer's connection.
    /// </summary>
    [TestCase("fsdax")]
    public async Task ASweepOfAPeersKeysDoesNotDisturbThatPeer(string kind)
    {
        using var memory = new MemorySlot(kind);
        using var server = new GrantServer(pd => memory.Register(pd), kind == "fsdax" ? AccessFlags.RemoteWrite | AccessFlags.FlushPersistent : AccessFlags.RemoteWrite);
        using var a = await Peer.ConnectAsync(server);
        var aConnection = server.Connection(0);
        var sweep = new KeySweep(server.EndPoint, Cm.DeviceName, [], GrantServer.Decode);
        var attempts = KeySweep.KeysAround(a.Grant.RemoteKey, 0, 0).Select(k => (k, a.Grant.Address + 4096)).ToList();
        var attack = sweep.RunAsync(attempts, 4);
        var statuses = new List<WorkCompletionStatus>();
        var expected = new byte[Size];
        int writes = 0;
        while (!attack.IsCompleted)
        {
            int offset = 8192 + (writes % 8) * 4096;
            statuses.Add(await a.WriteAsync(a.Grant, (ulong)offset, seed: 10 + writes));
            if (kind == "fsdax" && statuses[^1] == WorkCompletionStatus.Success)
                statuses.Add(await a.FlushAsync(a.Grant, (ulong)offset));
            if (statuses[^1] != WorkCompletionStatus.Success)
                break;
            MemorySlot.Expect(offset, 10 + writes, expected);
            writes++;
        }
        var result = await attack;
        TestContext.Out.WriteLine($"sweep of a's index 0x{a.Grant.RemoteKey >> 8:x} (a's key 0x{a.Grant.RemoteKey:x}): {result}; a wrote {writes} times meanwhile: {string.Join(",", statuses.Distinct())}");
        TestContext.Out.WriteLine($"server errors: {server.Errors.Count}, on a's connection: " + string.Join("; ", server.Errors.Where(e => e.QueuePairNumber == aConnection.QueuePair.QueuePairNumber)));
        Assert.Multiple(() =>
        {
            Assert.That(result.Succeeded, Is.Zero);
            Assert.That(statuses, Is.All.EqualTo(WorkCompletionStatus.Success), "a's writes through its own grant during the sweep");
            Assert.That(server.Errors.Where(e => e.QueuePairNumber == aConnection.QueuePair.QueuePairNumber), Is.Empty, "no error reported on a's connection");
            Assert.That(aConnection.Grant!.IsRevoked, Is.False, "a's grant stands");
        });
        Patterns.AssertEqual(memory.Span[8192..], expected.AsSpan(8192), "a's writes, byte for byte");
        Assert.That(memory.Span[..8192].IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "nothing of the attacker's");
    }

    [Test]
    public void AGrantNeedsAConnectedRcQueuePairAndRemoteOperationsOnly()
    {
        using var pair = RcPair.Loopback();
        using var region = pair.PdB.AllocateBuffer(4096, GrantedRegion);
        int users = KernelView.ProtectionDomainUsers();
        using var idleCq = pair.DeviceB.CreateCompletionQueue(4);
        var idle = pair.PdB.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = idleCq, ReceiveCompletionQueue = idleCq });
        var e1 = Assert.ThrowsAsync<InvalidOperationException>(() => idle.GrantAsync(region, AccessFlags.RemoteWrite));
        var shared = pair.PdB.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = pair.CqB, ReceiveCompletionQueue = pair.CqB });
        var e5 = Assert.ThrowsAsync<InvalidOperationException>(() => pair.B.GrantAsync(region, AccessFlags.RemoteWrite));
        Assert.That(e5!.Message, Does.Contain("is the send completion queue of 2 queue pairs"));
        shared.Dispose();
        Assert.That(e1!.Message, Does.Contain("is Reset").And.Contain("RTS"));
        var e2 = Assert.ThrowsAsync<ArgumentException>(() => pair.B.GrantAsync(region, AccessFlags.LocalWrite | AccessFlags.RemoteWrite));
        Assert.That(e2!.Message, Does.Contain("remote operations only"));
        var e3 = Assert.ThrowsAsync<ArgumentException>(() => pair.B.GrantAsync(region, AccessFlags.None));
        Assert.That(e3!.Message, Does.Contain("RemoteWrite"));
        using var other = pair.PdA.AllocateBuffer(4096, GrantedRegion);
        var e4 = Assert.ThrowsAsync<ArgumentException>(() => pair.B.GrantAsync(other, AccessFlags.RemoteWrite));
        Assert.That(e4!.Message, Does.Contain("another protection domain"));
        // A refused grant leaves no window behind: the kernel's count of PD users (windows are users) grew by the idle QP
        // and the other buffer only.
        Assert.That(KernelView.ProtectionDomainUsers(), Is.EqualTo(users + 2), "rdma resource show pd: users");
    }

    static byte[] Pattern(int seed)
    {
        var b = new byte[4096];
        Fill(b, seed);
        return b;
    }

    /// <summary>A client: its own device context, PD, CQ and QP, connected to the server, with the grant it was given.</summary>
    sealed class Peer : IDisposable
    {
        readonly CmSide _side = new();
        readonly RegisteredBuffer _buffer;

        Peer() => _buffer = _side.Pd.AllocateBuffer(4096, AccessFlags.LocalWrite);

        public RdmaConnection Connection { get; private set; } = null!;
        public RemoteRegion Grant { get; private set; }

        public static async Task<Peer> ConnectAsync(GrantServer server)
        {
            var p = new Peer();
            var qp = p._side.NewQueuePair();
            p.Connection = await RdmaConnection.ConnectAsync(server.EndPoint, qp, new RdmaConnectOptions { Timeout = Cm.Generous });
            p.Grant = GrantServer.Decode(p.Connection.RemotePrivateData);
            return p;
        }

        public async Task<WorkCompletionStatus> WriteAsync(RemoteRegion target, ulong offset, int seed)
        {
            Fill(_buffer.Span, seed);
            Connection.QueuePair.PostWrite(1, _buffer.Slice(0, 4096), target, offset);
            return await WaitAsync();
        }

        public async Task<WorkCompletionStatus> FlushAsync(RemoteRegion target, ulong offset)
        {
            Connection.QueuePair.PostFlush(3, target, offset, 4096);
            return await WaitAsync();
        }

        public async Task<WorkCompletionStatus> ReadAsync(RemoteRegion source, ulong offset)
        {
            Connection.QueuePair.PostRead(2, _buffer.Slice(0, 4096), source, offset);
            return await WaitAsync();
        }

        async Task<WorkCompletionStatus> WaitAsync()
        {
            var wc = new WorkCompletion[1];
            while (_side.Cq.Poll(wc) == 0)
                await Task.Delay(1);
            return wc[0].Status;
        }

        public void Dispose()
        {
            Connection?.Dispose();
            _side.Dispose();
        }
    }

    /// <summary>Memory registered for grants (no remote access of its own): anonymous, or a leased FS-DAX file (ODP).</summary>
    sealed class MemorySlot(string kind = "anonymous") : IDisposable
    {
        RegisteredBuffer? _buffer;
        RdmaLease.Tests.Leases.TempDir? _dir;
        DaxFile? _file;
        FileLease? _lease;
        LeasedMemoryRegion? _leased;

        public MemoryRegion Register(ProtectionDomain pd)
        {
            if (kind == "anonymous")
                return _buffer = pd.AllocateBuffer(Size, GrantedRegion);
            _dir = CreateTempDir("/mnt/xfs");
            _file = LeasedRdma.OpenFile(_dir.File("f"), "/mnt/xfs", Size);
            _lease = _file.AcquireLease();
            _leased = pd.Register(_lease, GrantedRegion);   // no FLUSH of its own: the grant's window carries it
            return _leased.Region;
        }

        public Span<byte> Span => _buffer is { } b ? b.Span : _file!.Span;

        public static byte[] Expect(int offset, int seed, byte[]? before = null)
        {
            var e = before ?? new byte[Size];
            Fill(e.AsSpan(offset, 4096), seed);
            return e;
        }

        public void Dispose()
        {
            _leased?.Dispose();
            _lease?.Dispose();
            _file?.Dispose();
            _dir?.Dispose();
        }
    }
}
