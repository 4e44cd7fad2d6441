using System.Diagnostics;
using System.Globalization;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;
using static RdmaLease.Tests.Leases.LeasedRdma;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// The safety invariant, attacked in the guest and checked against the kernel's own view: from the moment a lease is
/// given back no region registered over the file exists in the kernel (`rdma resource show mr`), no address range such
/// a region covered is handed to other memory while a region might still cover it (/proc/self/maps), and a peer with an
/// old key gets an error completion, never Success.
/// </summary>
[Category("Guest")]
[NonParallelizable]
public unsafe class SafetyInvariantGuestTests
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);
    private const int Size = 16 * Block;

    /// <summary>
    /// The reproduction of the safety issue, through the public API: a post naming the leased region fails on a
    /// disposed QP; a truncate then breaks the lease. The region's key must be gone from the kernel by the time the
    /// truncate returns, and a buffer disposed after the same failed post must be gone at once.
    /// </summary>
    [Test]
    public void AFailedPostLeaksNoReferenceThatKeepsARegionRegistered()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("victim");
        using var pair = Pair();
        using var file = OpenFile(path, "/mnt/xfs", Size);
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, RemoteWritable);
        nint address = (nint)mr.Region.Address;
        var remote = mr.ToRemote();
        using var other = pair.PdA.AllocateBuffer(Block, RemoteWritable);

        var doomed = pair.PdB.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = pair.CqB, ReceiveCompletionQueue = pair.CqB });
        doomed.Dispose();
        Assert.Throws<ObjectDisposedException>(() => doomed.PostWrite(1, mr.Slice(0, Block), other.ToRemote()));
        Assert.Throws<ObjectDisposedException>(() => doomed.PostReceive(2, mr.Slice(0, Block)));
        var plain = pair.PdB.AllocateBuffer(Block, RemoteWritable);
        uint plainKey = plain.RemoteKey;
        Assert.Throws<ObjectDisposedException>(() => doomed.PostWrite(3, plain.Slice(0, 64), other.ToRemote()));
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(plainKey).And.Contain(mr.RemoteKey), "both registered before");
        plain.Dispose();
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(plainKey), "a buffer disposed after a failed post must be deregistered");

        var p = RunProbe(Generous, "truncate", path, "16384");
        Assert.That(p.Ok, Is.True, p.Output);
        // The truncate returned, so the lease was given back: the region must already be gone.
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey), "the region outlived its lease");
        Assert.That(broke.Task.Wait(Generous), Is.True);
        Assert.Multiple(() =>
        {
            Assert.That(mr.IsDeregistered, Is.True);
            Assert.That(lease.TeardownErrors, Is.Empty);
            Assert.That(WriteOnce(pair, remote, 0, LateSeed), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the old key");
        });
    }

    public static IEnumerable<TestCaseData> BreakCases() =>
        from mount in new[] { "/mnt/xfs", "/mnt/ext4", "/mnt/tmpfs" }
        from op in new[] { "truncate", "punch", "open-rdonly" }
        select new TestCaseData(mount, op);

    /// <summary>Every view of the system, before the break, when the breaker continues, and after the file is disposed.</summary>
    [TestCaseSource(nameof(BreakCases))]
    public void EveryKernelViewAgreesAcrossABreak(string mount, string op)
    {
        using var dir = CreateTempDir(mount);
        string path = dir.File("f");
        using var pair = Pair();
        var file = OpenFile(path, mount, Size);
        nint view = (nint)file.BaseAddress;   // the application's mapping; regions are registered over another one
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, RemoteWritable);
        nint address = (nint)mr.Region.Address;
        var remote = mr.ToRemote();
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.LocksOn(file), Has.Count.EqualTo(1), "the kernel holds the lease");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(mr.RemoteKey));
            Assert.That(KernelView.PermissionsAt(address), Is.EqualTo("rw-s"), "the file mapping");
            Assert.That(KernelView.PermissionsAt(view), Is.EqualTo("rw-s"), "the application's mapping of the file");
            Assert.That(KernelView.DescriptorsOf(path), Has.Count.EqualTo(1));
        });
        string[] args = op switch
        {
            "truncate" => ["truncate", path, "16384"],
            "punch" => ["punch", path, "0", Size.ToString(CultureInfo.InvariantCulture)],
            _ => [op, path],
        };
        var p = RunProbe(Generous, args);
        Assert.That(p.Ok, Is.True, p.Output);
        // The breaker went on: the lease is back with the kernel, so the region is gone from it.
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey), "the region outlived its lease");
            Assert.That(KernelView.LocksOn(file), Is.Empty, "/proc/locks after the breaker returned");
            Assert.That(lease.IsActive, Is.False);
        });
        Assert.That(broke.Task.Wait(Generous), Is.True);
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.PermissionsAt(address), Is.EqualTo("---p"), "the placeholder reserves the range, inaccessible");
            Assert.That(KernelView.PermissionsAt(view), Is.EqualTo("rw-p"), "the application's view became scratch memory");
            Assert.That(WriteOnce(pair, remote, 0, LateSeed), Is.EqualTo(WorkCompletionStatus.RemoteAccessError), "the old key");
            Assert.That(lease.TeardownErrors, Is.Empty);
        });
        file.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.MappingAt(address), Is.Null, "the region is confirmed gone, so the range is released");
            Assert.That(KernelView.MappingAt(view), Is.Null);
            Assert.That(KernelView.DescriptorsOf(path), Is.Empty);
            Assert.That(KernelView.MappingsOf(path), Is.Empty);
        });
    }

    /// <summary>
    /// Threads keep posting work requests that name the region while the lease breaks: each post either goes through
    /// before the revocation or throws <see cref="LeaseRevokedException"/>; none reaches libibverbs after the
    /// deregistration (the deregistration waits for the posts that hold the region), and the key is gone in the kernel.
    /// </summary>
    [Test]
    public void PostsRacingABreakEitherGoThroughBeforeOrFailWithTheRevocation()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        using var pair = Pair();
        using var file = OpenFile(path, "/mnt/xfs", Size);
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, RemoteWritable);
        nint address = (nint)mr.Region.Address;
        mr.AttachQueuePair(pair.B);
        using var sink = pair.PdA.AllocateBuffer(Block, RemoteWritable);
        var sinkRemote = sink.ToRemote();
        int posted = 0, revoked = 0;
        var unexpected = new List<Exception>();
        using var stop = new CancellationTokenSource();
        var posters = Enumerable.Range(0, 3).Select(t => new Thread(() =>
        {
            var wc = new WorkCompletion[16];
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    // B writes FROM the leased region (a local use of it) into A's sink.
                    pair.B.PostWrite((ulong)t, mr.Slice((ulong)(t * Block), Block), sinkRemote, 0, SendFlags.None);
                    Interlocked.Increment(ref posted);
                }
                catch (LeaseRevokedException)
                {
                    Interlocked.Increment(ref revoked);
                    return;
                }
                catch (VerbsException e) when (e.Errno == 12)
                {
                    // the send queue is full: completions are reaped below
                }
                catch (Exception e)
                {
                    lock (unexpected)
                        unexpected.Add(e);
                    return;
                }
                lock (wc)
                    pair.CqB.Poll(wc);
            }
        })).ToList();
        posters.ForEach(t => t.Start());
        var sw = Stopwatch.StartNew();
        while (Volatile.Read(ref posted) < 50 && sw.Elapsed < Generous)
            Thread.Sleep(1);
        var p = RunProbe(Generous, "open-rdonly", path);
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey), "deregistered before the breaker went on");
        Assert.That(broke.Task.Wait(Generous), Is.True);
        stop.Cancel();
        posters.ForEach(t => t.Join());
        Assert.Multiple(() =>
        {
            Assert.That(unexpected, Is.Empty, "a post failed with something other than the revocation");
            Assert.That(posted, Is.GreaterThanOrEqualTo(50));
            Assert.That(revoked, Is.EqualTo(3), "every poster saw the revocation");
            Assert.That(mr.IsDeregistered, Is.True);
            Assert.That(lease.TeardownErrors, Is.Empty);
        });
    }

    /// <summary>
    /// ibv_dereg_mr fails (injected, on the real region) during the break of an ODP region. The lease is still given
    /// back (loudly): the range stays reserved behind the inaccessible placeholder, so the still-registered key reaches
    /// nothing, and it stays reserved after the file is disposed, until the deregistration finally succeeds.
    /// </summary>
    [Test]
    public void AFailedDeregistrationOfAnOdpRegionLeavesItsKeyReachingNothing()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        using var pair = Pair();
        var file = OpenFile(path, "/mnt/xfs", Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, RemoteWritable);
        nint address = (nint)mr.Region.Address;
        var remote = mr.ToRemote();
        NativeHandle handle = mr.Region.HandleForChildren;
        handle.InjectDestroyFailures = 1000;
        long failedBefore = LeaseDiagnostics.FailedDeregistrations;
        try
        {
            var p = RunProbe(Generous, "open-rdonly", path);
            Assert.That(p.Ok, Is.True, p.Output);
            Assert.That(broke.Task.Wait(Generous), Is.True);
            Assert.Multiple(() =>
            {
                Assert.That(lease.TeardownErrors.OfType<RegionDeregistrationException>().Single().Message, Does.Contain("EBUSY").And.Contain("placeholder"));
                Assert.That(LeaseDiagnostics.FailedDeregistrations, Is.GreaterThan(failedBefore));
                Assert.That(mr.IsDeregistered, Is.False);
                Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(mr.RemoteKey), "the injected failure left the region in the kernel");
                Assert.That(KernelView.PermissionsAt(address), Is.EqualTo("---p"));
                Assert.That(WriteOnce(pair, remote, 0, LateSeed), Is.Not.EqualTo(WorkCompletionStatus.Success), "a key of a region over the placeholder must fail");
                Assert.That(ClassifyAll(ReadByDescriptor(file)), Is.All.EqualTo("initial"), "nothing reached the file");
            });
            file.Dispose();
            Assert.Multiple(() =>
            {
                Assert.That(KernelView.PermissionsAt(address), Is.EqualTo("---p"), "the range stays reserved while the region may exist");
                Assert.That(KernelView.DescriptorsOf(path), Has.Count.EqualTo(1), "and the descriptor open");
            });
        }
        finally
        {
            handle.InjectDestroyFailures = 0;
            Assert.That(handle.RetryFailedDestroy(), Is.True, "the real deregistration");
        }
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey));
            Assert.That(KernelView.MappingAt(address), Is.Null, "released once the region is confirmed gone");
            Assert.That(KernelView.DescriptorsOf(path), Is.Empty);
        });
    }

    /// <summary>
    /// The same failure for a pinned region (a non-DAX file): the placeholder does not cut pinned pages off, so the
    /// region's protection domain is quarantined: every QP in it moved to the error state, no new QP created in it.
    /// </summary>
    [Test]
    public void AFailedDeregistrationOfAPinnedRegionQuarantinesItsDomain()
    {
        using var dir = CreateTempDir("/mnt/tmpfs");
        string path = dir.File("f");
        using var pair = Pair();
        var file = OpenFile(path, "/mnt/tmpfs", Size);
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, RemoteWritable, new LeasedRegistrationOptions { Mode = LeasedRegistrationMode.Pinned });
        nint address = (nint)mr.Region.Address;
        Assert.That(mr.IsOnDemand, Is.False);
        var remote = mr.ToRemote();
        WriteOnce(pair, remote, 0, PeerSeed);
        NativeHandle handle = mr.Region.HandleForChildren;
        handle.InjectDestroyFailures = 1000;
        long before = LeaseDiagnostics.QuarantinedDomains;
        try
        {
            var p = RunProbe(Generous, "open-rdonly", path);
            Assert.That(p.Ok, Is.True, p.Output);
            Assert.That(broke.Task.Wait(Generous), Is.True);
            Assert.Multiple(() =>
            {
                Assert.That(pair.PdB.QuarantineReason, Does.Contain("could not be confirmed deregistered"));
                Assert.That(LeaseDiagnostics.QuarantinedDomains, Is.GreaterThan(before));
                Assert.That(pair.B.QueryState(), Is.EqualTo(QueuePairState.Error), "every QP of the domain");
                Assert.That(lease.TeardownErrors.OfType<RegionDeregistrationException>().Single().Message, Does.Contain("quarantine").Or.Contain("error state"));
                Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(mr.RemoteKey));
            });
            var e = Assert.Throws<InvalidOperationException>(() =>
                pair.PdB.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = pair.CqB, ReceiveCompletionQueue = pair.CqB }));
            Assert.That(e!.Message, Does.Contain("quarantined"));
            // The peer's QP is connected to B, which is in the error state: B drops the write, so the peer never gets a
            // Success (it retries, then fails); within the time we watch it, nothing may succeed.
            using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
            pair.A.PostWrite(9, source.Slice(0, Block), remote, 0);
            var wc = new WorkCompletion[1];
            var watch = Stopwatch.StartNew();
            int n = 0;
            while (n == 0 && watch.Elapsed < TimeSpan.FromSeconds(3))
                n = pair.CqA.Poll(wc);
            Assert.That(n == 0 || wc[0].Status != WorkCompletionStatus.Success, Is.True, $"the old key's write completed: {wc[0]}");
            pair.A.MoveToError();   // flush it, if it is still retrying
            file.Dispose();
        }
        finally
        {
            handle.InjectDestroyFailures = 0;
            Assert.That(handle.RetryFailedDestroy(), Is.True);
        }
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey));
    }

    /// <summary>
    /// A post holds the region (it is inside libibverbs, or descheduled there) when the lease is released: the release
    /// waits for it, bounded; if the bound passes, the range is put behind the placeholder before F_UNLCK, and the
    /// deregistration happens when the post gives the region back.
    /// </summary>
    [Test]
    public void AReleaseWaitsForAPostHoldingTheRegionAndNeverUnmapsUnderIt()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        using var pair = Pair();
        var file = OpenFile(path, "/mnt/xfs", Size);
        var lease = file.AcquireLease();
        var mr = pair.PdB.Register(lease, RemoteWritable);
        nint address = (nint)mr.Region.Address;
        NativeHandle handle = mr.Region.HandleForChildren;
        bool added = false;
        handle.DangerousAddRef(ref added);   // what a post holds while inside libibverbs; this one never returns in time
        var release = Task.Run(lease.Release);
        Assert.That(release.Wait(TimeSpan.FromSeconds(FileLease.LeaseBreakTime.TotalSeconds + 5)), Is.True, "the release must be bounded");
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.LocksOn(file), Is.Empty);
            Assert.That(mr.IsDeregistered, Is.False);
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(mr.RemoteKey), "the post still holds it");
            Assert.That(KernelView.PermissionsAt(address), Is.EqualTo("---p"), "so the range went behind the placeholder before F_UNLCK");
            Assert.That(lease.TeardownErrors.OfType<RegionDeregistrationException>().Single().Message, Does.Contain("a post still held the region"));
        });
        file.Dispose();
        Assert.That(KernelView.PermissionsAt(address), Is.EqualTo("---p"), "still reserved");
        handle.DangerousRelease();   // the post returns
        Assert.Multiple(() =>
        {
            Assert.That(mr.IsDeregistered, Is.True);
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey));
            Assert.That(KernelView.MappingAt(address), Is.Null);
        });
    }

    /// <summary>
    /// The managed teardown is stuck (an injected delay past lease-break-time, standing in for a long pause or a dead
    /// thread): the kernel removes the lease by force and the truncater goes on while the region is still registered.
    /// The signal handler had already put the placeholder over the mapping, so the old key reaches nothing, not even
    /// after the file regrew into new blocks.
    /// </summary>
    [Test]
    public void WhenTheManagedTeardownMissesTheDeadlineTheSignalHandlerHasCutTheFileOff()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("f");
        using var pair = Pair();
        using var file = OpenFile(path, "/mnt/xfs", Size);
        FillBlocks(file.Span, InitialSeed);
        file.Flush();
        nint view = (nint)file.BaseAddress;   // the application's mapping; regions are registered over another one
        var lease = file.AcquireLease();
        var broke = OnBreak(lease);
        var mr = pair.PdB.Register(lease, RemoteWritable);
        nint address = (nint)mr.Region.Address;
        var remote = mr.ToRemote();
        WriteOnce(pair, remote, 0, PeerSeed);
        TimeSpan breakTime = FileLease.LeaseBreakTime;
        long guardBefore = LeaseDiagnostics.SignalHandlerRevocations, missesBefore = LeaseDiagnostics.DeadlineMisses;
        FileLease.InjectedBreakDelay = breakTime + TimeSpan.FromSeconds(3);
        try
        {
            var p = RunProbe(breakTime * 3, "truncate", path, "0");
            Assert.That(p.Ok, Is.True, p.Output);
            Assert.That(p.Elapsed, Is.GreaterThan(breakTime - TimeSpan.FromSeconds(1)), "the kernel waited out its deadline");
            // The managed teardown has not run: the region is registered, and the kernel has let the truncate through.
            Assert.Multiple(() =>
            {
                Assert.That(mr.IsDeregistered, Is.False);
                Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(mr.RemoteKey));
                Assert.That(KernelView.LocksOn(file), Is.Empty, "the kernel removed the lease");
                Assert.That(KernelView.PermissionsAt(address), Is.EqualTo("---p"), "the signal handler replaced the mapping");
                Assert.That(KernelView.PermissionsAt(view), Is.EqualTo("rw-p"), "and the application's view with scratch memory");
                Assert.That(LeaseDiagnostics.SignalHandlerRevocations, Is.GreaterThan(guardBefore));
            });
            // The file regrows into fresh blocks, written by someone else; the old key must reach none of them.
            using (var fs = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            {
                byte[] block = BlockPattern(NewFileSeed);
                for (int i = 0; i < Size / Block; i++)
                    fs.Write(block);
                fs.Flush(flushToDisk: true);
            }
            Assert.That(WriteOnce(pair, remote, 0, LateSeed), Is.Not.EqualTo(WorkCompletionStatus.Success), "the old key reached the file");
            Assert.That(ClassifyAll(File.ReadAllBytes(path)), Is.All.EqualTo("new"), "the regrown file holds only what its writer wrote");
        }
        finally
        {
            FileLease.InjectedBreakDelay = TimeSpan.Zero;
        }
        Assert.That(broke.Task.Wait(Generous), Is.True);
        Assert.Multiple(() =>
        {
            Assert.That(mr.IsDeregistered, Is.True, "the late teardown still deregisters");
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(mr.RemoteKey));
            Assert.That(LeaseDiagnostics.DeadlineMisses, Is.GreaterThan(missesBefore), "the miss is counted");
        });
    }

    /// <summary>A read-only file under a read lease is registered for remote reads; write access is refused before ibv_reg_mr.</summary>
    [Test]
    public void AReadOnlyFileIsRegisteredForReadsOnly()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("ro");
        using (var w = OpenFile(path, "/mnt/xfs", Size))
        {
            FillBlocks(w.Span, InitialSeed);
            w.Flush();
        }
        using var pair = Pair();
        using var file = DaxFile.Open(path, new DaxFileOptions { Access = DaxFileAccess.Read });
        using var lease = file.AcquireLease();
        Assert.That(lease.Type, Is.EqualTo(LeaseType.Read));
        var e = Assert.Throws<ArgumentException>(() => pair.PdB.Register(lease, RemoteWritable));
        Assert.That(e!.Message, Does.Contain("read-only"));
        using var mr = pair.PdB.Register(lease, AccessFlags.RemoteRead);
        using var sink = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        pair.A.PostRead(5, sink.Slice(0, Block), mr.ToRemote(), 2 * Block);
        Assert.That(RcPair.WaitOne(pair.CqA).Status, Is.EqualTo(WorkCompletionStatus.Success));
        Assert.That(Classify(sink.Span), Is.EqualTo("initial"), "a peer reads the file through the read-only region");
    }

    /// <summary>The after-suite gate's own view can fail: it lists a live registration, and not once it is gone.</summary>
    [Test]
    public void TheLeakGateSeesALiveRegistration()
    {
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        var buffer = pd.AllocateBuffer(Block, RemoteWritable);
        string key = $"rkey 0x{buffer.RemoteKey:x} ";
        Assert.That(GuestSuiteChecks.Leftovers(), Has.Some.Contains(key), "a registered buffer is a leftover");
        buffer.Dispose();
        Assert.That(GuestSuiteChecks.Leftovers(), Has.None.Contains(key));
    }

    [Test]
    public void TheLeakGateSeesARegistrationWhoseCreatingThreadHasExited()
    {
        // The kernel tags an object with the thread that made it; once that thread is gone its line has no "pid".
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        RegisteredBuffer? buffer = null;
        var maker = new Thread(() => buffer = pd.AllocateBuffer(Block, RemoteWritable));
        maker.Start();
        maker.Join();
        Thread.Sleep(200);   // the thread's exit reaches the kernel
        string key = $"rkey 0x{buffer!.RemoteKey:x} ";
        TestContext.Out.WriteLine(RdmaLease.Tests.Packaging.Tool.Output("rdma", "resource", "show", "mr"));
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(buffer.RemoteKey), "the kernel view lists it");
        Assert.That(GuestSuiteChecks.Leftovers(), Has.Some.Contains(key), "the leak gate sees it");
        buffer.Dispose();
        Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(buffer.RemoteKey));
    }

    /// <summary>Hundreds of leases (a quarter with a registered region) broken at once by one other process.</summary>
    [Test]
    public void AFloodOfBreaksIsHandledWithinTheDeadline()
    {
        const int Files = 240;
        using var dir = CreateTempDir("/mnt/xfs");
        using var pair = Pair();
        var files = new List<DaxFile>();
        var leases = new List<FileLease>();
        var regions = new List<LeasedMemoryRegion>();
        var released = new CountdownEvent(Files);
        long missesBefore = LeaseDiagnostics.DeadlineMisses;
        try
        {
            for (int i = 0; i < Files; i++)
            {
                var f = OpenFile(dir.File($"f{i}"), "/mnt/xfs", 2 * Block);
                files.Add(f);
                var l = f.AcquireLease();
                l.BreakRequested += (_, _) => released.Signal();
                leases.Add(l);
                if (i % 4 == 0)
                    regions.Add(pair.PdB.Register(l, RemoteWritable));
            }
            var keys = regions.Select(r => r.RemoteKey).ToList();
            Assert.That(KernelView.RegisteredRemoteKeys(), Is.SupersetOf(keys));
            var sw = Stopwatch.StartNew();
            var p = RunProbe(Generous, ["open-each-nonblock", .. files.Select(f => f.Path)]);
            Assert.That(p.Ok, Is.True, "every file was leased when the flood began: " + p.Output);
            Assert.That(released.Wait(Generous), Is.True, $"{released.CurrentCount} of {Files} breaks not handled");
            var all = sw.Elapsed;
            var worst = leases.Max(l => l.BreakToRelease!.Value);
            TestContext.Out.WriteLine($"{Files} leases ({regions.Count} with a region) broken at once: all given back {Ms(all)} after the flood began; worst signal->release {Ms(worst)}");
            Assert.Multiple(() =>
            {
                Assert.That(worst, Is.LessThan(FileLease.LeaseBreakTime / 2), "a break came close to the kernel's deadline");
                Assert.That(LeaseDiagnostics.DeadlineMisses, Is.EqualTo(missesBefore));
                Assert.That(KernelView.OwnLeases(), Is.Empty, "/proc/locks");
                Assert.That(KernelView.RegisteredRemoteKeys().Intersect(keys), Is.Empty, "every region deregistered");
                Assert.That(leases.SelectMany(l => l.TeardownErrors), Is.Empty);
            });
        }
        finally
        {
            files.ForEach(f => f.Dispose());
        }
    }
}
