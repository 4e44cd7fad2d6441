using System.Runtime.InteropServices;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// An adversarial review of the safety invariant (issue 9) on the real rxe device and FS-DAX, in the guest. A test that
/// demonstrates a violation fails on the code it was written against; its comment says what it breaks and how. The
/// others are attacks the code withstood, kept for coverage.
/// </summary>
[Category("Guest")]
[NonParallelizable]
public unsafe class AdversaryGuestTests
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);
    private const int Size = 16 * Block;

    [TearDown]
    public void TearDown() => FileLease.InjectedBreakDelay = TimeSpan.Zero;

    /// <summary>One RDMA READ of a block from <paramref name="source"/>+<paramref name="offset"/> by a fresh peer QP.</summary>
    private static WorkCompletionStatus ReadOnce(RcPair pair, RemoteRegion source, ulong offset)
    {
        var (peer, _, cq) = ExtraQueuePairs(pair);
        using var destination = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        peer.PostRead(1, destination.Slice(0, Block), source, offset);
        return RcPair.WaitOne(cq).Status;
    }

    /// <summary>
    /// ATTACK (issue item 7, "access flags are not checked against a read-only mapping"): a file opened read-only (a
    /// read lease, which other readers do not break, on an O_RDONLY descriptor and a PROT_READ mapping) registered with
    /// RemoteWrite. Bad input must get a clear exception. Today LeasedRegistration.Register accepts it: on ODP the
    /// registration silently succeeds (the peer learns only from a failed write, if the provider checks the page's write
    /// permission), on the pinned path ibv_reg_mr fails with EFAULT and the hint "The range is not mapped in this
    /// process", which is wrong. Also checks that the peer's write never lands in the read-only file.
    /// </summary>
    [TestCase("/mnt/xfs", LeasedRegistrationMode.Auto)]
    [TestCase("/mnt/tmpfs", LeasedRegistrationMode.Pinned)]
    public void ARegionOverAReadOnlyFileRefusesWriteAccessClearly(string mount, LeasedRegistrationMode mode)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("ro");
        using (var writer = OpenFile(path, mount, Size))
        {
            FillBlocks(writer.Span, InitialSeed);
            writer.Flush();
        }
        using var pair = Pair();
        using var file = DaxFile.Open(path, new DaxFileOptions { Access = DaxFileAccess.Read, AllowNonDax = !IsDax(mount) });
        using var lease = file.AcquireLease();
        Assert.That(lease.Type, Is.EqualTo(LeaseType.Read));
        Exception? refused = null;
        LeasedMemoryRegion? mr = null;
        try
        {
            mr = pair.PdB.Register(lease, RemoteWritable, new LeasedRegistrationOptions { Mode = mode });
        }
        catch (Exception e)
        {
            refused = e;
        }
        string outcome = "refused";
        string block0 = "initial";
        if (mr is not null)
        {
            var remote = mr.ToRemote();
            var read = ReadOnce(pair, remote, 0);                    // faults the page in for reading, as a reading peer would
            var write = WriteOnce(pair, remote, 0, LateSeed);
            block0 = Classify(ReadFile(path).AsSpan(0, Block));
            outcome = $"registered ({(mr.IsOnDemand ? "ODP" : "pinned")}); peer read {read}, peer write {write}, block 0 now '{block0}'";
            mr.Dispose();
        }
        TestContext.Out.WriteLine($"{mount}: RemoteWrite over a read-only file: {outcome}; exception: {refused?.GetType().Name}: {refused?.Message}");
        Assert.Multiple(() =>
        {
            Assert.That(block0, Is.EqualTo("initial"), "a peer wrote into a file this process may only read");
            Assert.That(refused, Is.InstanceOf<ArgumentException>(), $"write access over a read-only mapping must be refused up front, clearly ({outcome}; {refused?.Message})");
            Assert.That(refused?.Message ?? "", Does.Contain("read-only").Or.Contain("DaxFileAccess.Read"), "the message says why");
        });
    }

    /// <summary>
    /// ATTACK: the deadline protection (the signal handler's PROT_NONE placeholder) only works for ODP. A pinned region
    /// (a non-DAX file, LeasedRegistrationMode.Pinned) holds its pages, whatever becomes of the mapping. When the managed
    /// teardown misses lease-break-time (stuck thread, long GC), the kernel removes the lease, the truncate goes on, and
    /// the peer's old key still writes, with Success, into pages that are no longer the file's ("a Success whose data
    /// went nowhere"). That is the documented weaker guarantee of an explicitly pinned region (LeasedRegistrationMode.Pinned;
    /// Auto never pins): asserted here is what does hold — the file's new blocks are never reached, the miss is counted —
    /// and the Success is recorded, so a change in it shows.
    /// </summary>
    [Test]
    public void APinnedRegionPastTheKernelsDeadlineNeverReachesTheFilesNewBlocks()
    {
        const string Mount = "/mnt/tmpfs";
        using var dir = CreateTempDir(Mount);
        string path = dir.File("pinned");
        using var pair = Pair();
        using var file = OpenFile(path, Mount, Size);
        FillBlocks(file.Span, InitialSeed);
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, RemoteWritable, new LeasedRegistrationOptions { Mode = LeasedRegistrationMode.Pinned });
        Assert.That(mr.IsOnDemand, Is.False);
        var remote = mr.ToRemote();
        Assert.That(WriteOnce(pair, remote, 0, PeerSeed), Is.EqualTo(WorkCompletionStatus.Success));
        TimeSpan breakTime = FileLease.LeaseBreakTime;
        FileLease.InjectedBreakDelay = breakTime + TimeSpan.FromSeconds(3);
        WorkCompletionStatus late;
        string[] blocks;
        try
        {
            var p = RunProbe(breakTime * 3, "truncate", path, "0");
            Assert.That(p.Ok, Is.True, p.Output);
            Assert.That(KernelView.LocksOn(file), Is.Empty, "the kernel removed the lease at its deadline");
            using (var fs = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            {
                byte[] block = BlockPattern(NewFileSeed);
                for (int i = 0; i < Size / Block; i++)
                    fs.Write(block);
            }
            late = WriteOnce(pair, remote, 0, LateSeed);
            blocks = ClassifyAll(File.ReadAllBytes(path));
        }
        finally
        {
            FileLease.InjectedBreakDelay = TimeSpan.Zero;
        }
        Assert.That(broke.Task.Wait(Generous), Is.True);
        TestContext.Out.WriteLine($"pinned region, managed teardown past the deadline: the old key's write after the kernel took the lease completed with {late} (into pages no longer the file's)");
        Assert.Multiple(() =>
        {
            Assert.That(blocks, Is.All.EqualTo("new"), "the regrown file holds only what its writer wrote");
            Assert.That(mr.IsDeregistered, Is.True, "the late teardown still deregisters");
            Assert.That(LeaseDiagnostics.DeadlineMisses, Is.GreaterThan(0), "the miss is counted");
            Assert.That(WriteOnce(pair, remote, 0, LateSeed), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "once deregistered, the key is dead");
        });
    }

    /// <summary>
    /// ATTACK: DaxFile documents BaseAddress/Length as "for memory registration", and ProtectionDomain.Register takes
    /// any address. A region registered that way over a leased file (raw ODP) is not a dependent of the lease: it
    /// survives the release, and after DaxFile.Dispose unmaps the range it follows whatever is mapped there next. The
    /// invariant ("no memory region that rdma-lease registered over that file's mapping exists once the lease is given
    /// back; no address range a region covered is handed to other memory") fails through the public API alone. Either
    /// refuse a raw registration that overlaps a DaxFile mapping, or tie it to the file like a LeasedMemoryRegion.
    /// </summary>
    [Test]
    public void ARawRegistrationOverALeasedMappingDoesNotOutliveTheLease()
    {
        const string Mount = "/mnt/xfs";
        using var dir = CreateTempDir(Mount);
        string path = dir.File("raw");
        using var pair = Pair();
        using var file = OpenFile(path, Mount, Size);
        using var lease = file.AcquireLease();
        // Fixed by refusing it: both of the file's mappings, whole or in part, are registered only through the lease.
        foreach (nint start in new[] { (nint)file.BaseAddress, (nint)file.RegistrationAddress })
        {
            var e = Assert.Throws<ArgumentException>(() => pair.PdB.Register((void*)(start + Block), Block, RemoteWritable | AccessFlags.OnDemand));
            Assert.That(e!.Message, Does.Contain(path).And.Contain("pd.Register(lease.Range(offset, length), access)"));
        }
        Assert.That(KernelView.RegisteredRemoteKeys(), Is.Empty, "nothing was registered");
        using var leased = pair.PdB.Register(lease, RemoteWritable);
        Assert.That(WriteOnce(pair, leased.ToRemote(), 0, PeerSeed), Is.EqualTo(WorkCompletionStatus.Success), "through the lease it works");
    }

    /// <summary>
    /// ATTACK: a post taking a list of segments (SendBatch.Write, QueuePair.PostReceive with a scatter list) takes a
    /// reference on each segment's region (RegionReferences.Enter) and later gives back one on the region each segment
    /// names THEN; were that read again from the caller's memory (the old PostSend(ReadOnlySpan&lt;SendRequest&gt;) did
    /// until it copied the list), the references taken and given back could differ. A caller whose array another
    /// thread changes meanwhile (a data race in the caller, but no reason for the library to corrupt its own state)
    /// makes one region lose a reference it never had (its ibv_dereg_mr can run under a post) and another keep one
    /// for ever (never deregistered: the leak class of issue item 1, "by construction" no longer true). Run on a
    /// disposed QP, so nothing reaches the device: only the reference counts are at stake.
    /// </summary>
    [Test]
    public void APostListWhoseArrayChangesDuringThePostLeaksNoReference()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(16);
        var qp = pd.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq });
        qp.Dispose();
        using var target = pd.AllocateBuffer(Block, RemoteWritable);
        var one = pd.AllocateBuffer(Block, AccessFlags.LocalWrite);
        var two = pd.AllocateBuffer(Block, AccessFlags.LocalWrite);
        var a = one.Slice(0, 64);
        var b = two.Slice(0, 64);
        var requests = new[] { a };
        bool stop = false;
        var flipper = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                requests[0] = b;
                requests[0] = a;
            }
        }) { IsBackground = true };
        flipper.Start();
        var other = new List<string>();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int round = 0;
        while (sw.Elapsed < TimeSpan.FromSeconds(3))
        {
            try
            {
                if (round++ % 2 == 0)
                {
                    qp.PostReceive(1, requests);
                }
                else
                {
                    var batch = qp.StartPost();
                    batch.Write(1, requests, target.ToRemote());
                    batch.Post();
                }
            }
            catch (ObjectDisposedException)
            {
                // the expected refusal: the QP is disposed (or, once the counts are corrupted, a region closed under us)
            }
            catch (Exception e)
            {
                if (other.Count < 5)
                    other.Add($"{e.GetType().Name}: {e.Message}");
            }
        }
        Volatile.Write(ref stop, true);
        flipper.Join();
        var disposeErrors = new List<string>();
        foreach (var r in new[] { one, two })
        {
            try
            {
                r.Dispose();
            }
            catch (Exception e)
            {
                disposeErrors.Add($"{e.GetType().Name}: {e.Message}");
            }
        }
        var states = (one: one.DeregistrationState, two: two.DeregistrationState);
        // Contain the damage, so the rest of the run survives: give back references that were taken and never
        // returned (the region then deregisters), and keep the finalizer off a handle that lost one it never had (its
        // SafeHandle finalizer throws ObjectDisposedException on the finalizer thread, which kills the process).
        foreach (var r in new[] { one, two })
        {
            var h = r.HandleForChildren;
            while (h.DestroyState == DestroyState.Pending)
            {
                try
                {
                    h.DangerousRelease();
                }
                catch (ObjectDisposedException)
                {
                    break;
                }
            }
#pragma warning disable CA1816 // not a Dispose: keeping a corrupted handle's finalizer from killing the test host
            GC.SuppressFinalize(h);
#pragma warning restore CA1816
        }
        Assert.Multiple(() =>
        {
            Assert.That(states.one, Is.EqualTo(DestroyState.Destroyed), "region one was never deregistered: a reference taken for a post was never given back");
            Assert.That(states.two, Is.EqualTo(DestroyState.Destroyed), "region two was never deregistered: a reference taken for a post was never given back");
            Assert.That(disposeErrors, Is.Empty, "Dispose threw (a reference was given back that was never taken; the same handle's finalizer then kills the process)");
            Assert.That(other, Is.Empty, "posts failed with something else than the disposed QP");
        });
    }

    /// <summary>
    /// Unclear error: registering on a lease that was released says "the memory region ... was deregistered because its
    /// lease was released", about a region that never existed, and does not say what to do.
    /// </summary>
    [Test]
    public void RegisteringOnAReleasedLeaseSaysWhatIsWrongAndWhatToDo()
    {
        const string Mount = "/mnt/xfs";
        using var dir = CreateTempDir(Mount);
        using var pair = Pair();
        using var file = OpenFile(dir.File("released"), Mount, Size);
        var lease = file.AcquireLease();
        lease.Release();
        var e = Assert.Throws<LeaseRevokedException>(() => pair.PdB.Register(lease, RemoteWritable));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.Not.Contain("was deregistered"), "no region was ever registered: " + e.Message);
            Assert.That(e.Message, Does.Contain("AcquireLease").Or.Contain("new lease"), "say what to do: " + e.Message);
        });
    }

    /// <summary>
    /// Withstood: Prefetch on a revoked region throws the revocation; a post list that mixes a live and a revoked
    /// region throws, posts nothing and gives back the live region's reference (it deregisters at once afterwards).
    /// </summary>
    [Test]
    public void PrefetchAndMixedPostListsOnARevokedRegionFailCleanly()
    {
        const string Mount = "/mnt/xfs";
        using var dir = CreateTempDir(Mount);
        using var pair = Pair();
        using var liveFile = OpenFile(dir.File("live"), Mount, Size);
        using var deadFile = OpenFile(dir.File("dead"), Mount, Size);
        var liveLease = liveFile.AcquireLease();
        var deadLease = deadFile.AcquireLease();
        var live = pair.PdB.Register(liveLease, RemoteWritable);
        var dead = pair.PdB.Register(deadLease, RemoteWritable);
        using var target = pair.PdA.AllocateBuffer(Block, RemoteWritable);
        deadLease.Release();
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(dead.RemoteKey));
        Assert.Throws<LeaseRevokedException>(() => dead.Region.Prefetch(0, Block, forWrite: true));
        Assert.Throws<LeaseRevokedException>(() =>
        {
            var batch = pair.B.StartPost();
            batch.Write(1, live.Slice(0, 64), target.ToRemote());
            batch.Write(2, dead.Slice(0, 64), target.ToRemote());
            batch.Post();
        });
        Thread.Sleep(200);
        Span<WorkCompletion> wc = stackalloc WorkCompletion[4];
        Assert.That(pair.CqB.Poll(wc), Is.Zero, "nothing of the refused list was posted");
        live.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(live.IsDeregistered, Is.True, "the live region's reference was given back by the rollback");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(live.RemoteKey));
        });
        liveLease.Release();
    }

}
