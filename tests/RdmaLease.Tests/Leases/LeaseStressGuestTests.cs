using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// The invariant under a storm: lease cycles in which a peer keeps RDMA-writing into the leased region and a local
/// thread keeps posting from it, while the epoch ends by a break from another process (open, truncate, hole punch),
/// a release, a region dispose, a file dispose, or a release racing a break. After every cycle: the kernel holds no
/// lease and no region key of the cycle, every write the peer saw succeed is in the file (unless a later truncate or
/// punch removed its range), no write posted after the lease was given back succeeded, and the file holds nothing else.
/// </summary>
[Category("Guest")]
[NonParallelizable]
public sealed class LeaseStressGuestTests
{
    private const int Slots = 32;
    private const int FileSize = Slots * Block;
    private static readonly TimeSpan Budget = TimeSpan.FromSeconds(90);
    private const int MaxCycles = 2000, MinCycles = 80, MinOperations = 3000;
    private static readonly string[] Endings = ["open", "truncate", "punch", "release", "dispose-region", "dispose-file", "release-racing-break"];

    private sealed record Write(int Slot, int Seed, long Posted, WorkCompletionStatus Status);

    [Test]
    public void RacingPostsBreaksReleasesDisposesAndReacquires()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("stressed");
        using var pair = Pair();
        int gid = pair.DeviceA.FindGidIndex(IPAddress.Loopback);
        using var sink = pair.PdA.AllocateBuffer(Block, RemoteWritable);
        var sinkRemote = sink.ToRemote();
        var model = new int[Slots];   // 0: zeros; else the seed of the block pattern the slot must hold
        // A write the peer gave up on (its own QP flushed) may or may not have been executed by the responder: the slot
        // may hold it instead of the model's value, until a definite write or a truncate/punch settles it.
        var maybe = new int[Slots];
        var rng = new Random(20261125);
        var counts = Endings.ToDictionary(e => e, _ => 0);
        int cycles = 0, peerSuccesses = 0, peerFailures = 0, localPosts = 0, localRevoked = 0, kernelChecks = 0;
        var sw = Stopwatch.StartNew();
        DaxFile file = OpenFile(path, "/mnt/xfs", FileSize);
        try
        {
            while (cycles < MaxCycles && sw.Elapsed < Budget)
            {
                string when = $"cycle {cycles}";
                if (!file.IsMapped)
                {
                    file.Dispose();
                    file = OpenFile(path, "/mnt/xfs", FileSize);   // regrows a truncated file with zeros
                }
                AssertContents(file, model, maybe, when + ", before the lease");
                var lease = file.AcquireLease();
                Assert.That(KernelView.LocksOn(file), Has.Count.EqualTo(1), when + ": the kernel holds the new lease");
                var mr = pair.PdB.Register(lease, RemoteWritable);
                uint key = mr.RemoteKey;
                var remote = mr.ToRemote();

                using var cqA = pair.DeviceA.CreateCompletionQueue(64);
                using var cqB = pair.DeviceB.CreateCompletionQueue(64);
                using var peer = pair.PdA.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cqA, ReceiveCompletionQueue = cqA });
                using var local = pair.PdB.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cqB, ReceiveCompletionQueue = cqB });
                peer.Connect(local.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, PathMtu = Mtu.Mtu4096, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic });
                local.Connect(peer.LocalEndpoint(gid), new ConnectOptions { GidIndex = gid, PathMtu = Mtu.Mtu4096, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead | AccessFlags.RemoteAtomic });

                var writes = new List<Write>();
                var unexpected = new List<Exception>();
                using var stop = new CancellationTokenSource();
                int cycle = cycles;
                var peerThread = new Thread(() => PeerWrites(pair, peer, cqA, remote, cycle, writes, unexpected, stop.Token)) { Name = "stress peer" };
                var localThread = new Thread(() =>
                {
                    var wc = new WorkCompletion[8];
                    while (!stop.IsCancellationRequested)
                    {
                        try
                        {
                            local.PostWrite(1, mr.Slice(0, Block), sinkRemote, 0);
                            Interlocked.Increment(ref localPosts);
                            RcPair.WaitOne(cqB);
                        }
                        catch (Exception e) when (e is LeaseRevokedException || (e is ObjectDisposedException && mr.Region.Revocation is ObjectDisposedException))
                        {
                            Interlocked.Increment(ref localRevoked);
                            return;
                        }
                        catch (Exception e)
                        {
                            lock (unexpected)
                                unexpected.Add(e);
                            return;
                        }
                    }
                }) { Name = "stress local" };
                peerThread.Start();
                localThread.Start();
                Thread.Sleep(rng.Next(0, 15));

                string ending = Endings[rng.Next(Endings.Length)];
                counts[ending]++;
                int truncateTo = Slots, punchFrom = 0, punchTo = 0;
                switch (ending)
                {
                    case "open":
                        Probe("open-rdonly", path);
                        break;
                    case "truncate":
                        truncateTo = rng.Next(1, Slots);
                        Probe("truncate", path, (truncateTo * Block).ToString(CultureInfo.InvariantCulture));
                        break;
                    case "punch":
                        punchFrom = rng.Next(0, Slots);
                        punchTo = rng.Next(punchFrom + 1, Slots + 1);
                        Probe("punch", path, (punchFrom * Block).ToString(CultureInfo.InvariantCulture), ((punchTo - punchFrom) * Block).ToString(CultureInfo.InvariantCulture));
                        break;
                    case "release":
                        lease.Release();
                        break;
                    case "dispose-region":
                        mr.Dispose();
                        lease.Release();
                        break;
                    case "dispose-file":
                        file.Dispose();
                        break;
                    case "release-racing-break":
                        var releaser = Task.Run(lease.Release);
                        Probe("open-rdonly", path);
                        Assert.That(releaser.Wait(TimeSpan.FromSeconds(30)), Is.True, when);
                        break;
                }
                // The breaker has returned (or the release did): the lease must be back with the kernel.
                Assert.That(lease.WaitEnded(Stopwatch.GetTimestamp() + 30 * Stopwatch.Frequency), Is.True, when + ": the lease was not given back");
                stop.Cancel();
                Assert.That(peerThread.Join(TimeSpan.FromSeconds(30)) && localThread.Join(TimeSpan.FromSeconds(30)), Is.True, when + ": a posting thread hung");

                long released = lease.ReleasedTimestamp;
                Assert.Multiple(() =>
                {
                    Assert.That(unexpected, Is.Empty, $"{when} ({ending}): unexpected exceptions");
                    Assert.That(lease.IsActive, Is.False, when);
                    Assert.That(released, Is.Not.Zero, when);
                    Assert.That(KernelView.OwnLeases(), Is.Empty, $"{when} ({ending}): /proc/locks");
                    Assert.That(mr.IsDeregistered, Is.True, $"{when} ({ending}): the region was not confirmed deregistered");
                    Assert.That(lease.TeardownErrors, Is.Empty, when);
                    foreach (var w in writes.Where(w => w.Posted > released))
                        Assert.That(w.Status, Is.Not.EqualTo(WorkCompletionStatus.Success), $"{when} ({ending}): a write posted after the release succeeded");
                });
                if (cycles % 5 == 0)
                {
                    Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(key), $"{when} ({ending}): the kernel still lists the region");
                    kernelChecks++;
                }
                foreach (var w in writes)
                {
                    if (w.Status == WorkCompletionStatus.Success)
                    {
                        (model[w.Slot], maybe[w.Slot]) = (w.Seed, 0);
                        peerSuccesses++;
                    }
                    else
                    {
                        if (w.Status == WorkCompletionStatus.WorkRequestFlushed)
                            maybe[w.Slot] = w.Seed;   // indeterminate: flushed by the peer after it gave up
                        peerFailures++;
                    }
                }
                for (int s = truncateTo; s < Slots; s++)
                    (model[s], maybe[s]) = (0, 0);
                for (int s = punchFrom; s < punchTo; s++)
                    (model[s], maybe[s]) = (0, 0);
                if (ending == "dispose-region")
                    Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(key), when);
                mr.Dispose();
                cycles++;
            }
            if (!file.IsMapped)
            {
                file.Dispose();
                file = OpenFile(path, "/mnt/xfs", FileSize);
            }
            AssertContents(file, model, maybe, "at the end");
        }
        finally
        {
            file.Dispose();
        }
        string summary = $"{cycles} lease cycles in {sw.Elapsed.TotalSeconds:F0} s ({string.Join(", ", counts.Select(c => $"{c.Key} {c.Value}"))}); " +
            $"peer writes: {peerSuccesses} succeeded and are in the file, {peerFailures} failed at the peer; local posts {localPosts}, " +
            $"{localRevoked} refused with the revocation; kernel key checks {kernelChecks}; every cycle's contents verified";
        TestContext.Out.WriteLine(summary);
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_GUEST") == "1")
            File.WriteAllText("/mnt/out/lease-stress.txt", summary + "\n");
        Assert.That(cycles, Is.GreaterThanOrEqualTo(MinCycles), summary);
        Assert.That(peerSuccesses + peerFailures + localPosts, Is.GreaterThanOrEqualTo(MinOperations), summary);
        Assert.That(peerSuccesses, Is.GreaterThan(cycles), "the peer must have written in most cycles");
    }

    private static void Probe(params string[] args)
    {
        var p = RunProbe(TimeSpan.FromSeconds(60), args);
        Assert.That(p.Ok, Is.True, p.Output);
    }

    /// <summary>The peer: one RDMA WRITE at a time into a random slot, each block a fresh pattern, until one fails or stop.</summary>
    private static void PeerWrites(RcPair pair, QueuePair qp, CompletionQueue cq, RemoteRegion remote, int cycle, List<Write> writes, List<Exception> unexpected, CancellationToken stop)
    {
        using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        var rng = new Random(cycle);
        try
        {
            for (int i = 0; !stop.IsCancellationRequested; i++)
            {
                int slot = rng.Next(Slots);
                int seed = cycle * 1000 + i + 100;
                Stamp(source.Span, seed);
                long posted = Stopwatch.GetTimestamp();
                qp.PostWrite((ulong)i, source.Slice(0, Block), remote, (ulong)slot * Block);
                var wc = WaitOrGiveUp(qp, cq);
                writes.Add(new Write(slot, seed, posted, wc.Status));
                if (!wc.IsSuccess)
                    return;
            }
        }
        catch (Exception e)
        {
            lock (unexpected)
                unexpected.Add(e);
        }
    }

    /// <summary>The block pattern of <paramref name="seed"/> with the seed itself in its first bytes, so no two writes look alike.</summary>
    private static void Stamp(Span<byte> block, int seed)
    {
        Fill(block, seed);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(block, seed);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(block[^4..], ~seed);
    }

    /// <summary>
    /// A peer's wait for its write: when the responder QP went to the error state (a local post faulted on the
    /// placeholder, or teardown moved it there) rxe drops the write and never completes it at the requester, so after a
    /// bounded wait the peer flushes its own QP (the write then completes as WorkRequestFlushed), as a real peer must.
    /// </summary>
    private static WorkCompletion WaitOrGiveUp(QueuePair qp, CompletionQueue cq)
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
        long giveUp = Environment.TickCount64 + 300;
        while (cq.Poll(wc) == 0)
        {
            if (Environment.TickCount64 > giveUp)
            {
                qp.MoveToError();
                return RcPair.WaitOne(cq);
            }
            Thread.Yield();
        }
        return wc[0];
    }

    /// <summary>
    /// Every slot holds what the model says, or the indeterminate write recorded in <paramref name="maybe"/> (which then
    /// becomes the model: the file settled it).
    /// </summary>
    private static void AssertContents(DaxFile file, int[] model, int[] maybe, string when)
    {
        byte[] data = ReadByDescriptor(file);
        Assert.That(data, Has.Length.EqualTo(FileSize), when);
        var expected = new byte[Block];
        var wrong = new StringBuilder();
        for (int s = 0; s < Slots; s++)
        {
            var actual = data.AsSpan(s * Block, Block);
            if (Holds(actual, model[s], expected))
            {
                maybe[s] = 0;
                continue;
            }
            if (maybe[s] != 0 && Holds(actual, maybe[s], expected))
            {
                (model[s], maybe[s]) = (maybe[s], 0);
                continue;
            }
            wrong.Append(CultureInfo.InvariantCulture, $" slot {s} (expected {(model[s] == 0 ? "zeros" : "seed " + model[s])}{(maybe[s] != 0 ? " or seed " + maybe[s] : "")}, found {Describe(actual)})");
        }
        Assert.That(wrong.ToString(), Is.Empty, $"{when}: the file differs from what the peer's acknowledged writes and the breakers left");
    }

    private static bool Holds(ReadOnlySpan<byte> actual, int seed, byte[] scratch)
    {
        if (seed == 0)
            return actual.IndexOfAnyExcept((byte)0) < 0;
        Stamp(scratch, seed);
        return actual.SequenceEqual(scratch);
    }

    private static string Describe(ReadOnlySpan<byte> block) =>
        block.IndexOfAnyExcept((byte)0) < 0 ? "zeros" : "seed stamp " + System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(block).ToString(CultureInfo.InvariantCulture);
}
