// `break DEVICE FILE REGION_BYTES BREAKS idle|traffic|gc`: the holder of the lease-break benchmark, driven by
// benchmarks/c/lease_breaker (its C twin is benchmarks/c/lease_holder.c). Per break: DaxFile.Open, AcquireLease (the
// library's default: a delegation where the kernel has F_SETDELEG), an ODP region over the whole file, "ready" on
// stdout; the breaker's open(2) breaks it; once the lease is back, "released US BYTES WATCHER DISPATCH DEREG UNLOCK":
// BreakToRelease (the signal handler's stamp to F_UNLCK), the managed bytes the whole process allocated for this
// lease's cycle, and that time in phases (us: handler -> a break worker has it -> teardown started -> region
// deregistered -> F_UNLCK). Then
// the breaker's "go" on stdin. traffic: a thread keeps 4 KiB RDMA WRITEs going into the region until the break stops
// them (the bytes are checked in the file); gc: a thread forces blocking, compacting gen2 collections throughout.
// A break is the process's first when BREAKS is 1: the suite runs fresh processes for that.
using System.Diagnostics;
using System.Globalization;
using RdmaLease.Leases;
using RdmaLease.Verbs;

static class BreakCost
{
    const AccessFlags Access = AccessFlags.LocalWrite | AccessFlags.RemoteWrite;

    public static int Run(string deviceName, string path, long regionBytes, int breaks, string variant)
    {
        if (variant is not ("idle" or "traffic" or "gc"))
            throw new ArgumentException($"unknown variant '{variant}': idle, traffic or gc", nameof(variant));
        using var device = Device.Open(deviceName);
        using var pd = device.AllocateProtectionDomain();
        using var source = pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        source.Span.Fill(0x5a);
        using var stop = new CancellationTokenSource();
        if (variant == "gc")
            new Thread(() => Collect(stop.Token)) { IsBackground = true, Name = "gen2 pressure" }.Start();
        var stdin = Console.In;
        var stdout = Console.Out;
        long allocated = GC.GetTotalAllocatedBytes(precise: true);
        for (int b = 0; b < breaks; b++)
        {
            using var file = DaxFile.Open(path, new DaxFileOptions { Size = regionBytes });
            if (!file.IsDax)
                throw new InvalidOperationException($"'{path}' is not on FS-DAX: run in the guest (/mnt/xfs)");
            using var lease = file.AcquireLease();
            if (variant == "traffic")
                file.Span.Clear();   // so the check after the break sees this cycle's writes only
            using var region = pd.Register(lease, Access);
            Traffic? traffic = variant == "traffic" ? new Traffic(pd, source, region) : null;
            LeaseBreakEventArgs? broke = null;
            using var told = new ManualResetEventSlim();
            lease.BreakRequested += (_, e) => { broke = e; told.Set(); };   // raised after F_UNLCK
            stdout.WriteLine("ready");
            stdout.Flush();
            told.Wait();
            traffic?.Stop(path);
            long now = GC.GetTotalAllocatedBytes(precise: true);
            // Where the time went: handler -> a break worker has it (watcher, F_GETDELEG, hand-over), -> teardown started,
            // the deregistration (confirmed), and the rest up to F_UNLCK.
            double Us(long from, long to) => Stopwatch.GetElapsedTime(from, to).TotalMicroseconds;
            long started = region.TeardownStartedTimestamp, deregistered = region.DeregisteredTimestamp;
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"released {broke!.BreakToRelease.TotalMicroseconds:F1} {now - allocated} {Us(broke.SignalTimestamp, broke.ObservedTimestamp):F1} " +
                $"{Us(broke.ObservedTimestamp, started):F1} {Us(started, deregistered):F1} {Us(deregistered, broke.ReleasedTimestamp):F1}"));
            stdout.Flush();
            allocated = now;
            if (b + 1 < breaks && stdin.ReadLine() != "go")
                throw new InvalidOperationException("the breaker did not say 'go'");
        }
        stop.Cancel();
        return 0;
    }

    /// <summary>Blocking, compacting gen2 collections over a changing 200 MiB heap, as BreakUnderGcGuestTests does.</summary>
    static void Collect(CancellationToken stop)
    {
        var keep = new List<byte[]>();
        for (int i = 0; i < 200; i++)
            keep.Add(new byte[1 << 20]);
        while (!stop.IsCancellationRequested)
        {
            for (int i = 0; i < 20; i++)
                keep[Random.Shared.Next(keep.Count)] = new byte[1 << 20];
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        }
        GC.KeepAlive(keep);
    }

    /// <summary>4 KiB RDMA WRITEs into the region, one outstanding, over a fresh loopback pair, until one fails.</summary>
    sealed class Traffic
    {
        readonly CompletionQueue _cq;
        readonly QueuePair _a, _b;
        readonly Thread _thread;
        long _writes;
        volatile bool _stop;
        string? _failure;

        public Traffic(ProtectionDomain pd, RegisteredBuffer source, LeasedMemoryRegion region)
        {
            _cq = pd.Device.CreateCompletionQueue(64);
            (_a, _b) = InteropCost.LoopbackPair(pd, _cq, Mtu.Mtu4096);   // one packet per write (docs/known-defects.md)
            var target = region.ToRemote();
            ulong pages = region.Length / 4096;
            _thread = new Thread(() =>
            {
                var one = new WorkCompletion[1];
                for (ulong i = 0; !_stop; i++)
                {
                    try
                    {
                        _a.PostWrite(i, source.Slice(0, 4096), target, i % pages * 4096);
                    }
                    catch (Exception e)
                    {
                        _failure = e.Message;   // the QP went to the error state with the failed write
                        return;
                    }
                    while (_cq.Poll(one) == 0) { }
                    if (!one[0].IsSuccess)
                        return;   // the break deregistered the region
                    Interlocked.Increment(ref _writes);
                }
            }) { IsBackground = true, Name = "traffic" };
            _thread.Start();
            while (Interlocked.Read(ref _writes) < 2)   // flowing before the lease can break
                Thread.Sleep(0);
        }

        /// <summary>Stops the writes (after the break) and checks that the ones that completed are in the file.</summary>
        public void Stop(string path)
        {
            _stop = true;
            _thread.Join();
            _a.Dispose();
            _b.Dispose();
            _cq.Dispose();
            long writes = Interlocked.Read(ref _writes);
            var bytes = new byte[Math.Min(writes, 256) * 4096];
            using (var handle = File.OpenHandle(path))
                RandomAccess.Read(handle, bytes, 0);
            if (bytes.AsSpan().IndexOfAnyExcept((byte)0x5a) >= 0)
                throw new InvalidOperationException($"the first {writes} completed writes are not all in '{path}'{(_failure is null ? "" : $" (the traffic stopped on: {_failure})")}");
        }
    }
}
