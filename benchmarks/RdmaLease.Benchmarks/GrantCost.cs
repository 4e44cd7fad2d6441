// `grants DEVICE ITERATIONS`: the cost question of issue 15 (trust model). A server isolating peers with type 2 memory
// windows over leased ODP regions, against one giving each peer a protection domain with its area registered again in
// it: registration, window grant and revocation from 4 KiB to 1 GiB, and the per-operation cost of an RDMA WRITE through
// a window. Each row is the median and p90 of ITERATIONS repetitions after warm-up; each kind of measurement repeats in
// rounds over every size, so a burst of load from outside the guest falls on all sizes alike. Under TCG only ratios
// within one run mean anything (docs/interop.md).
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using RdmaLease.Leases;
using RdmaLease.Verbs;
using Tmds.Linux;
using static Tmds.Linux.LibC;

static unsafe class GrantCost
{
    const ulong KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;
    static readonly ulong[] Sizes = [4 * KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB, GiB];
    // The guest's 1 GiB XFS NVDIMM holds about 890 MiB of data: the file covers the points up to 256 MiB, and the 1 GiB
    // point of the ODP rows is anonymous memory (marked *), measured at 256 MiB too to compare.
    const ulong FileSize = 256 * MiB;
    const ulong AnonymousSize = GiB;
    const int Warmup = 2;
    // The issue's server: its own region grants no remote access; windows (bound with RemoteWrite) grant it.
    const AccessFlags WindowRegion = AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind | AccessFlags.FlushPersistent;
    // The alternative: the peer's own PD, its area registered with the rights the peer is given.
    const AccessFlags PeerRegion = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.FlushPersistent;

    // Each (row, size): whether its memory is the anonymous stand-in, and one time per repetition, in rows' first order.
    static readonly Dictionary<(string Row, ulong Size), (bool Anonymous, List<long> Ticks)> Samples = [];
    static readonly List<(string Row, ulong Size)> Order = [];
    static readonly List<string> WriteRows = [];   // markdown rows of the RDMA WRITE table
    static bool _recording;

    /// <summary>Where an ODP row's region lies: the leased file up to its size, anonymous memory beyond.</summary>
    sealed class Areas(FileLease lease, void* anonymous)
    {
        public FileLease Lease { get; } = lease;
        public void* Anonymous { get; } = anonymous;

        public bool OnFile(ulong size) => size <= (ulong)Lease.File.Length;

        public IDisposable Register(ProtectionDomain pd, ulong size, AccessFlags access) => OnFile(size)
            ? pd.Register(Lease.Range(0, size), access)
            // FlushPersistent needs persistent memory; the anonymous stand-in is registered without it.
            : pd.Register(Anonymous, size, (access & ~AccessFlags.FlushPersistent) | AccessFlags.OnDemand);
    }

    public static void Run(string deviceName, int iterations, string directory)
    {
        Console.WriteLine($"grants: device {deviceName}, kernel {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}, " +
            $"{Environment.ProcessorCount} CPU, {iterations} iterations after {Warmup} warm-up; times in us");
        using var device = Device.Open(deviceName);
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(64);
        // A is the peer, B the server's QP connected to it: windows are bound through B, A writes through them.
        var (a, b) = InteropCost.LoopbackPair(pd, cq, Mtu.Mtu4096);   // MTU 4096: 4 KiB ODP writes are one packet (docs/known-defects.md)

        string dir = Path.Combine(directory, $"grantbench-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        void* untouched = null, written = null;
        try
        {
            string path = Path.Combine(dir, "areas");
            long t = Stopwatch.GetTimestamp();
            WriteFile(path, FileSize);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"grants: {FileSize / MiB} MiB file on {directory} written (write(2)) in {Seconds(t):F1} s"));
            using var file = DaxFile.Open(path);
            if (!file.IsDax)
                throw new InvalidOperationException($"'{path}' is not on FS-DAX: run in the guest (/mnt/xfs)");
            using var lease = file.AcquireLease();
            t = Stopwatch.GetTimestamp();
            untouched = MapAnonymous(AnonymousSize, populate: false);
            written = MapAnonymous(AnonymousSize, populate: true);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"grants: {AnonymousSize / MiB} MiB anonymous memory mapped twice, once populated, in {Seconds(t):F1} s"));
            var fresh = new Areas(lease, untouched);
            var mapped = new Areas(lease, written);

            // A whole unrecorded pass at 4 KiB first, so every path runs tier-1 code (tiered JIT) when measured.
            using (var region = fresh.Register(pd, 4 * KiB, WindowRegion))
            {
                for (int i = 0; i < 30; i++)
                {
                    OdpRegistration(pd, fresh, 4 * KiB, "");
                    PinnedRegistration(pd, written, 4 * KiB);
                    PdPerPeer(device, 4 * KiB, false, "", domain => fresh.Register(domain, 4 * KiB, PeerRegion));
                    Window(pd, b, cq, Verbs(region), 4 * KiB, false);
                }
            }
            t = Stopwatch.GetTimestamp();
            Rounds(iterations, size => OdpRegistration(pd, fresh, size, ""));
            Rounds(iterations, size => PinnedRegistration(pd, written, size));
            Rounds(iterations, size => PdPerPeer(device, size, !fresh.OnFile(size), "", domain => fresh.Register(domain, size, PeerRegion)));
            // The regions the windows are bound to, one per size, registered throughout.
            var windowRegions = Sizes.Select(size => fresh.Register(pd, size, WindowRegion)).ToArray();
            Rounds(iterations, size => Window(pd, b, cq, Verbs(windowRegions[Array.IndexOf(Sizes, size)]), size, !fresh.OnFile(size)));
            foreach (var region in windowRegions)
                region.Dispose();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"grants: nothing mapped, {iterations + Warmup} rounds of each kind over every size in {Seconds(t):F1} s"));

            // rxe's ODP registration copies the pages already mapped in the range into the device's table (and the
            // deregistration unmaps them): again once every page of the file is mapped, as after a peer wrote them all.
            t = Stopwatch.GetTimestamp();
            MapEveryPage(pd, lease);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"grants: every page of the file mapped in {Seconds(t):F1} s"));
            t = Stopwatch.GetTimestamp();
            const string Mapped = ", every page mapped";
            Rounds(iterations, size => OdpRegistration(pd, mapped, size, Mapped));
            Rounds(iterations, size => PdPerPeer(device, size, !mapped.OnFile(size), Mapped, domain => mapped.Register(domain, size, PeerRegion)));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"grants: every page mapped, {iterations + Warmup} rounds of each kind in {Seconds(t):F1} s"));
            Writes(pd, a, b, cq, lease, iterations);
        }
        finally
        {
            foreach (var memory in new[] { (nint)untouched, (nint)written })
            {
                if (memory != 0 && munmap((void*)memory, (size_t)AnonymousSize) != 0)
                    Console.Error.WriteLine($"munmap: errno {Marshal.GetLastPInvokeError()}");
            }
            Directory.Delete(dir, recursive: true);
        }
        Report();
    }

    /// <summary>
    /// <paramref name="iterations"/> recorded rounds (after <see cref="Warmup"/> unrecorded ones) of one kind of
    /// measurement, each over every size: a burst of load from outside the guest falls on all sizes alike. Each kind has
    /// rounds of its own: window binds measured between 1 GiB registrations (one round over all kinds) took 2.9 ms
    /// at every size, in rounds of their own 0.2 ms.
    /// </summary>
    static void Rounds(int iterations, Action<ulong> measure)
    {
        for (int i = -Warmup; i < iterations; i++)
        {
            _recording = i >= 0;
            foreach (ulong size in Sizes)
                measure(size);
        }
        _recording = false;
    }

    /// <summary>An ODP region of <paramref name="size"/> bytes over <paramref name="areas"/> (and at 256 MiB over anonymous memory too, the bridge to the 1 GiB point).</summary>
    static void OdpRegistration(ProtectionDomain pd, Areas areas, ulong size, string suffix)
    {
        Registration($"register ODP{suffix}", $"deregister ODP{suffix}", size, !areas.OnFile(size), () => areas.Register(pd, size, WindowRegion));
        if (size == FileSize)
            Registration($"register ODP{suffix}, anonymous", $"deregister ODP{suffix}, anonymous", size, true,
                () => pd.Register(areas.Anonymous, size, AccessFlags.LocalWrite | AccessFlags.MemoryWindowBind | AccessFlags.OnDemand));
    }

    static void PinnedRegistration(ProtectionDomain pd, void* written, ulong size) =>
        Registration("register pinned (anonymous)", "deregister pinned (anonymous)", size, false,
            () => pd.Register(written, size, AccessFlags.LocalWrite | AccessFlags.RemoteWrite));

    static MemoryRegion Verbs(IDisposable region) => region is LeasedMemoryRegion leased ? leased.Region : (MemoryRegion)region;

    /// <summary>Register, then deregister; each timed on its own.</summary>
    static void Registration(string registerRow, string deregisterRow, ulong size, bool anonymous, Func<IDisposable> register)
    {
        long t0 = Stopwatch.GetTimestamp();
        var region = register();
        long t1 = Stopwatch.GetTimestamp();
        region.Dispose();
        long t2 = Stopwatch.GetTimestamp();
        Record(registerRow, size, anonymous, t1 - t0);
        Record(deregisterRow, size, anonymous, t2 - t1);
    }

    /// <summary>
    /// A PD per peer: allocate a protection domain, register the peer's area in it, deregister, deallocate. (The peer's
    /// QP is created in either design, so it is not counted.)
    /// </summary>
    static void PdPerPeer(Device device, ulong size, bool anonymous, string suffix, Func<ProtectionDomain, IDisposable> register)
    {
        long t0 = Stopwatch.GetTimestamp();
        var domain = device.AllocateProtectionDomain();
        long t1 = Stopwatch.GetTimestamp();
        var region = register(domain);
        long t2 = Stopwatch.GetTimestamp();
        region.Dispose();
        long t3 = Stopwatch.GetTimestamp();
        domain.Dispose();
        long t4 = Stopwatch.GetTimestamp();
        if (suffix.Length == 0)   // what is mapped changes the registration only
            Record("pd-per-peer alloc PD", size, false, t1 - t0);
        Record($"pd-per-peer register ODP in it{suffix}", size, anonymous, t2 - t1);
        Record($"pd-per-peer deregister{suffix}", size, anonymous, t3 - t2);
        if (suffix.Length == 0)
            Record("pd-per-peer dealloc PD", size, false, t4 - t3);
        Record($"pd-per-peer total (grant + revoke){suffix}", size, anonymous, t4 - t0);
    }

    /// <summary>
    /// A window's life over <paramref name="region"/>: ibv_alloc_mw, bind through <paramref name="qp"/> (RC, RTS) to its
    /// completion, local invalidate to its completion, rebind to its completion, ibv_dealloc_mw of the bound window.
    /// </summary>
    static void Window(ProtectionDomain pd, QueuePair qp, CompletionQueue cq, MemoryRegion region, ulong size, bool anonymous)
    {
        var one = new WorkCompletion[1];
        long t0 = Stopwatch.GetTimestamp();
        var window = pd.AllocateMemoryWindow();
        long t1 = Stopwatch.GetTimestamp();
        var remote = qp.PostBindMemoryWindow(1, window, region, 0, region.Length, AccessFlags.RemoteWrite);
        InteropCost.Wait(cq, one, WorkCompletionOpcode.BindMemoryWindow);
        long t2 = Stopwatch.GetTimestamp();
        qp.PostLocalInvalidate(2, window);
        InteropCost.Wait(cq, one, WorkCompletionOpcode.LocalInvalidate);
        long t3 = Stopwatch.GetTimestamp();
        var again = qp.PostBindMemoryWindow(3, window, region, 0, region.Length, AccessFlags.RemoteWrite);
        InteropCost.Wait(cq, one, WorkCompletionOpcode.BindMemoryWindow);
        long t4 = Stopwatch.GetTimestamp();
        window.Dispose();
        long t5 = Stopwatch.GetTimestamp();
        if (remote.Length != size || again.RemoteKey == remote.RemoteKey)
            throw new InvalidOperationException($"bound {remote} then {again} over a {size}-byte region");
        Record("window ibv_alloc_mw", size, anonymous, t1 - t0);
        Record("window bind + completion", size, anonymous, t2 - t1);
        Record("window grant (alloc_mw + bind + completion)", size, anonymous, t2 - t0);
        Record("window revoke (a): local invalidate + completion", size, anonymous, t3 - t2);
        Record("window rebind of the invalidated window + completion", size, anonymous, t4 - t3);
        Record("window revoke (b): ibv_dealloc_mw of the bound window", size, anonymous, t5 - t4);
    }

    /// <summary>
    /// RDMA WRITE, signaled, one outstanding, waited for by polling, into a leased ODP region through the region's own
    /// rkey and through a type 2 window bound over it; 64 B and 4 KiB at page-aligned offsets. Each write is timed from
    /// post to completion (median, p90; mean for ops/s). The two alternate in chunks, so load from outside the guest
    /// falls on both alike; every chunk's bytes are compared in the file.
    /// </summary>
    static void Writes(ProtectionDomain pd, QueuePair peer, QueuePair server, CompletionQueue cq, FileLease lease, int iterations)
    {
        const ulong Area = 64 * KiB;
        const int Chunks = 10;
        int perChunk = Math.Max(iterations * 5, 20);
        using var region = pd.Register(lease.Range(0, Area), AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.MemoryWindowBind);
        using var window = pd.AllocateMemoryWindow();
        var one = new WorkCompletion[1];
        var viaWindow = server.PostBindMemoryWindow(1, window, region.Region, 0, Area, AccessFlags.RemoteWrite);
        InteropCost.Wait(cq, one, WorkCompletionOpcode.BindMemoryWindow);
        RemoteRegion[] targets = [region.ToRemote(), viaWindow];
        string[] labels = ["region rkey", "window rkey"];
        using var source = pd.AllocateBuffer(4096, AccessFlags.LocalWrite);
        Span<byte> file = lease.File.GetSpan(0, (int)Area);
        foreach (uint length in new uint[] { 64, 4096 })
        {
            long[][] ops = [new long[Chunks * perChunk], new long[Chunks * perChunk]];   // each write, post to completion
            for (int round = 0; round < 2; round++)   // the first round (2 chunks) warms up the JIT and the pages
            {
                for (int c = 0; c < (round == 0 ? 2 : Chunks); c++)
                {
                    foreach (int k in c % 2 == 0 ? [0, 1] : (int[])[1, 0])   // each goes first in half the chunks
                    {
                        byte seed = (byte)(1 + c * 2 + k + round * 64 + (length == 64 ? 0 : 128));
                        ulong offset = (ulong)((c * 2 + k) % 4) * 4096;   // pages the warm-up round faulted in
                        source.Span.Fill(seed);
                        for (int i = 0; i < perChunk; i++)
                        {
                            long t = Stopwatch.GetTimestamp();
                            peer.PostWrite((ulong)i, source.Slice(0, length), targets[k], offset);
                            while (cq.Poll(one) == 0) { }
                            long elapsed = Stopwatch.GetTimestamp() - t;
                            if (!one[0].IsSuccess || one[0].Opcode != WorkCompletionOpcode.RdmaWrite)
                                throw new InvalidOperationException($"a write through the {labels[k]}: {one[0]}");
                            if (round == 1)
                                ops[k][c * perChunk + i] = elapsed;
                        }
                        if (file.Slice((int)offset, (int)length).IndexOfAnyExcept(seed) >= 0)
                            throw new InvalidOperationException($"the {length}-byte writes through the {labels[k]} did not land at {offset}");
                    }
                }
            }
            var median = new double[2];
            for (int k = 0; k < 2; k++)
            {
                double mean = Micros(ops[k].Sum()) / ops[k].Length;
                Array.Sort(ops[k]);
                median[k] = Micros(ops[k][ops[k].Length / 2]);
                double p90 = Micros(ops[k][ops[k].Length * 9 / 10]);
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"write {length} B, {labels[k]} | {median[k]:F1} | {p90:F1} | {mean:F1} | {1e6 / mean:F0} | {ops[k].Length}");
                WriteRows.Add(line + (k == 1 ? string.Create(CultureInfo.InvariantCulture, $" | {median[1] / median[0]:F3}") : " | "));
            }
        }
        window.Dispose();   // before the region's deregistration (the kernel refuses while a window is bound)
    }

    /// <summary>Writes <paramref name="length"/> bytes through write(2), so the blocks are allocated and written before the mapping.</summary>
    static void WriteFile(string path, ulong length)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0);
        var block = new byte[MiB];
        for (ulong done = 0; done < length; done += MiB)
        {
            block.AsSpan().Fill((byte)(done / MiB));
            stream.Write(block);
        }
    }

    /// <summary>
    /// Maps every page of the leased file in the mapping regions are registered over (a region's <see cref="MemoryRegion.Address"/>),
    /// writable, as the device's ODP write faults would leave it: by a CPU write of each page's first byte (its own
    /// value) through that mapping. (Faulting them with 4 KiB RDMA WRITEs took about 1.5 ms a page under TCG, 100 s
    /// for this file; rxe has no ibv_advise_mr prefetch.) Checked in /proc/self/pagemap.
    /// </summary>
    static void MapEveryPage(ProtectionDomain pd, FileLease lease)
    {
        ulong length = (ulong)lease.File.Length;
        ulong address;
        using (var region = pd.Register(lease, AccessFlags.LocalWrite))
            address = region.Region.Address;   // the mapping stays after the deregistration, with whatever is mapped in it
        long before = PresentPages(address, length);
        byte* memory = (byte*)address;
        for (ulong offset = 0; offset < length; offset += 4096)
            Volatile.Write(ref memory[offset], Volatile.Read(ref memory[offset]));
        long after = PresentPages(address, length);
        Console.WriteLine($"grants: pages of the file present in the registration mapping (/proc/self/pagemap): {before} before, {after} after, of {length / 4096}");
        if (after != (long)(length / 4096))
            throw new InvalidOperationException($"{length / 4096 - (ulong)after} pages of the file are still not mapped");
    }

    /// <summary>Pages of [<paramref name="address"/>, +<paramref name="length"/>) that /proc/self/pagemap shows present (bit 63).</summary>
    static long PresentPages(ulong address, ulong length)
    {
        var entries = new byte[length / 4096 * 8];
        using var pagemap = File.OpenHandle("/proc/self/pagemap");
        for (int done = 0; done < entries.Length;)
        {
            int n = RandomAccess.Read(pagemap, entries.AsSpan(done), (long)(address / 4096 * 8) + done);
            if (n <= 0)
                throw new InvalidOperationException($"/proc/self/pagemap ended after {done} of {entries.Length} bytes");
            done += n;
        }
        long present = 0;
        foreach (ulong entry in MemoryMarshal.Cast<byte, ulong>(entries))
            present += (long)(entry >> 63);
        return present;
    }

    /// <summary>
    /// MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE (as tests/.../LargeRegionTests.cs); with <paramref name="populate"/>
    /// also MAP_POPULATE, so every page is mapped (pinning would fault them in anyway), checked in /proc/self/pagemap.
    /// </summary>
    static void* MapAnonymous(ulong length, bool populate)
    {
        int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (populate ? MAP_POPULATE : 0);
        void* memory = mmap(null, (size_t)length, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (memory == MAP_FAILED)
            throw new InvalidOperationException($"mmap of {length} anonymous bytes failed: errno {Marshal.GetLastPInvokeError()}");
        long present = PresentPages((ulong)memory, length);
        if (present != (populate ? (long)(length / 4096) : 0))
            throw new InvalidOperationException($"{present} pages of {length / 4096} present in a fresh mapping (populate: {populate})");
        return memory;
    }

    static void Record(string row, ulong size, bool anonymous, long ticks)
    {
        if (!_recording)
            return;
        if (!Samples.TryGetValue((row, size), out var samples))
        {
            Samples[(row, size)] = samples = (anonymous, []);
            Order.Add((row, size));
        }
        samples.Ticks.Add(ticks);
    }

    /// <summary>Each row's median and p90, then the medians (and p90) as one markdown table, rows by measurement, columns by size.</summary>
    static void Report()
    {
        var results = new Dictionary<(string Row, ulong Size), string>();
        foreach (var key in Order)
        {
            var (anonymous, ticks) = Samples[key];
            ticks.Sort();
            double median = Micros(ticks.Count % 2 == 1 ? ticks[ticks.Count / 2] : (ticks[ticks.Count / 2 - 1] + ticks[ticks.Count / 2]) / 2);
            double p90 = Micros(ticks[(int)Math.Ceiling(ticks.Count * 0.9) - 1]);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"grants {key.Row} {Size(key.Size)}{(anonymous ? " anonymous" : "")}: median {median:F1} p90 {p90:F1} (n {ticks.Count})"));
            results[key] = $"{Format(median)} ({Format(p90)}){(anonymous ? " *" : "")}";
        }
        foreach (var row in WriteRows)
            Console.WriteLine($"grants {row}");
        Console.WriteLine();
        Console.WriteLine("| us, median (p90) | " + string.Join(" | ", Sizes.Select(Size)) + " |");
        Console.WriteLine("|---|" + string.Concat(Sizes.Select(_ => "---:|")));
        foreach (var row in Order.Select(k => k.Row).Distinct())
            Console.WriteLine($"| {row} | " + string.Join(" | ", Sizes.Select(s => results.GetValueOrDefault((row, s), ""))) + " |");
        Console.WriteLine("* anonymous memory (MAP_NORESERVE; written first in the \"every page mapped\" rows), not the leased file");
        Console.WriteLine();
        Console.WriteLine("| RDMA WRITE into the leased file, signaled, one outstanding | median us/op | p90 | mean us/op | ops/s (mean) | ops | window / region (medians) |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var row in WriteRows)
            Console.WriteLine($"| {row} |");
    }

    static string Format(double us) => us >= 100 ? us.ToString("F0", CultureInfo.InvariantCulture) : us.ToString("F1", CultureInfo.InvariantCulture);

    static string Size(ulong bytes) => bytes >= GiB ? $"{bytes / GiB} GiB" : bytes >= MiB ? $"{bytes / MiB} MiB" : $"{bytes / KiB} KiB";

    static double Micros(long ticks) => ticks * 1e6 / Stopwatch.Frequency;

    static double Seconds(long since) => (Stopwatch.GetTimestamp() - since) / (double)Stopwatch.Frequency;
}
