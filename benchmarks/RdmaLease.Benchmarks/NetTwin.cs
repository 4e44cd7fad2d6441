// `net TEST [options]`: the C# twins of perftest's ib_send_lat, ib_write_lat and ib_write_bw (docs/benchmarks.md
// "Network"), run as two processes like perftest: the server without --connect, the client with it. Same method as
// perftest (read from its source, not copied): send_lat pre-posts receives and ping-pongs, each side posting its next
// SEND once the peer's arrived; write_lat ping-pongs RDMA WRITEs, each side spinning on the last byte of the area the
// peer writes; write_bw keeps --tx-depth writes outstanding and signals every --cq-mod. Latency statistics as perftest:
// deltas between consecutive posts, halved (a round trip is two one-way trips), the two largest dropped, then the median
// ("typical") and the 99th percentile. Unlike perftest, every run checks the bytes it moved before it reports.
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using RdmaLease.Leases;
using RdmaLease.Verbs;

static class NetTwin
{
    public const string Usage = "RdmaLease.Benchmarks net send_lat|write_lat|write_bw [--connect HOST] [--port N] [--device NAME] " +
        "[--gid N] [--size BYTES] [--iters N] [--mtu 256..4096] [--tx-depth N] [--cq-mod N] [--odp FILE] [--samples FILE]";

    const int PageSize = 4096;

    sealed record Options
    {
        public required string Test { get; init; }
        public string? Connect { get; init; }
        public int Port { get; init; } = 18515;
        public string Device { get; init; } = "rxelo";
        public int Gid { get; init; } = 1;
        public int Size { get; init; } = 2;
        public int Iters { get; init; } = 1000;
        public int Mtu { get; init; } = 4096;
        public int TxDepth { get; init; } = 128;
        public int CqMod { get; init; } = 100;
        public string? OdpFile { get; init; }
        public string? SamplesFile { get; init; }
        public bool IsServer => Connect is null;
    }

    public static int Run(string[] args)
    {
        Options o;
        try
        {
            o = Parse(args);
        }
        catch (FormatException e)
        {
            Console.Error.WriteLine($"net: {e.Message}\nusage: {Usage}");
            return 2;
        }
        using var rig = Rig.Open(o);
        switch (o.Test)
        {
            case "send_lat": SendLatency(rig, o); break;
            case "write_lat": WriteLatency(rig, o); break;
            default: WriteBandwidth(rig, o); break;
        }
        return 0;
    }

    static Options Parse(string[] args)
    {
        if (args.Length == 0 || args[0] is not ("send_lat" or "write_lat" or "write_bw"))
            throw new FormatException($"the first argument must be send_lat, write_lat or write_bw, not '{args.FirstOrDefault()}'");
        var o = new Options { Test = args[0] };
        // perftest's defaults per test: latency 2 B, 1000 iterations, one outstanding; bandwidth 64 KiB, 5000, 128.
        o = o.Test == "write_bw" ? o with { Size = 65536, Iters = 5000 } : o with { TxDepth = 1, CqMod = 1 };
        for (int i = 1; i < args.Length; i++)
        {
            string name = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{name} needs a value");
            int Int() => int.TryParse(Value(), NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v > 0
                ? v : throw new FormatException($"{name} needs a positive whole number, got '{args[i]}'");
            o = name switch
            {
                "--connect" => o with { Connect = Value() },
                "--port" => o with { Port = Int() },
                "--device" => o with { Device = Value() },
                "--gid" => o with { Gid = int.Parse(Value(), CultureInfo.InvariantCulture) },
                "--size" => o with { Size = Int() },
                "--iters" => o with { Iters = Int() },
                "--mtu" => o with { Mtu = Int() },
                "--tx-depth" => o with { TxDepth = Int() },
                "--cq-mod" => o with { CqMod = Int() },
                "--odp" => o with { OdpFile = Value() },
                "--samples" => o with { SamplesFile = Value() },
                _ => throw new FormatException($"unknown option '{name}'"),
            };
        }
        if (o.Mtu is not (256 or 512 or 1024 or 2048 or 4096))
            throw new FormatException($"--mtu must be 256, 512, 1024, 2048 or 4096, got {o.Mtu}");
        if (o.Iters < 4)
            throw new FormatException("--iters must be at least 4 (perftest drops the two largest samples)");
        // As perftest: never more outstanding than iterations; messages above 8 KiB complete one by one.
        int txDepth = Math.Min(o.TxDepth, o.Iters);
        int cqMod = o.Size > 8192 ? 1 : Math.Min(o.CqMod, txDepth);
        return o with { TxDepth = txDepth, CqMod = cqMod };
    }

    /// <summary>
    /// The connected QP (separate send and receive CQs, as perftest), the local buffer (pinned, or a leased ODP region over
    /// an FS-DAX file with --odp) of two page-aligned halves: the first is sent or written from, the peer writes into the
    /// second; the peer's second half as a remote region; the TCP stream to the peer for the barriers.
    /// </summary>
    sealed class Rig : IDisposable
    {
        readonly List<IDisposable> _owned = [];
        public required QueuePair Qp { get; init; }
        public required CompletionQueue SendCq { get; init; }
        public required CompletionQueue ReceiveCq { get; init; }
        public required MemoryRegion Region { get; init; }
        public required unsafe byte* Base { get; init; }
        public required ulong Half { get; init; }
        public required RemoteRegion Peer { get; init; }
        public required NetworkStream Stream { get; init; }

        public unsafe Span<byte> Source(int size) => new(Base, size);
        public unsafe Span<byte> Inbox(int size) => new(Base + Half, size);

        public static unsafe Rig Open(Options o)
        {
            var owned = new List<IDisposable>();
            try
            {
                var device = Own(owned, Device.Open(o.Device));
                var pd = Own(owned, device.AllocateProtectionDomain());
                var sendCq = Own(owned, device.CreateCompletionQueue(Math.Max(o.TxDepth, 16)));
                var receiveCq = Own(owned, device.CreateCompletionQueue(512));
                var qp = Own(owned, pd.CreateQueuePair(new QueuePairOptions
                {
                    SendCompletionQueue = sendCq, ReceiveCompletionQueue = receiveCq,
                    MaxSendRequests = Math.Max(o.TxDepth, 1), MaxReceiveRequests = 512,
                }));
                ulong half = ((ulong)o.Size + PageSize - 1) / PageSize * PageSize;
                MemoryRegion region;
                byte* baseAddress;
                var access = AccessFlags.LocalWrite | AccessFlags.RemoteWrite;
                if (o.OdpFile is null)
                {
                    var buffer = Own(owned, pd.AllocateBuffer(2 * half, access));
                    region = buffer;
                    baseAddress = (byte*)buffer.Address;
                }
                else
                {
                    // The benchmark this twin exists for: rdma-lease's leased registration of an FS-DAX file (ODP).
                    var file = Own(owned, DaxFile.Open(o.OdpFile));
                    if (!file.IsDax)
                        throw new InvalidOperationException($"'{o.OdpFile}' is not on an FS-DAX mount: run in the guest on /mnt/xfs");
                    if ((ulong)file.Length < 2 * half)
                        throw new InvalidOperationException($"'{o.OdpFile}' has {file.Length} bytes; --size {o.Size} needs {2 * half}");
                    var lease = Own(owned, file.AcquireLease());
                    var leased = Own(owned, pd.Register(lease.Range(0, 2 * half), access));
                    if (!leased.IsOnDemand)
                        throw new InvalidOperationException("the leased registration over FS-DAX is not ODP");
                    region = leased.Region;
                    baseAddress = file.BaseAddress;
                }
                int gid = o.Gid;
                var endpoint = qp.LocalEndpoint(gid);
                // The half the peer writes into; at MTU 4096 from a page boundary rxe's ODP is correct (docs/known-defects.md).
                var inbox = region.ToRemote((Mtu)MtuCode(o.Mtu)) with { Address = region.Address + half, Length = half };
                var stream = Own(owned, ConnectTcp(o));
                var remote = OutOfBandExchange.ExchangeAsync(stream, endpoint, inbox).GetAwaiter().GetResult();
                qp.Connect(remote.Endpoint, new ConnectOptions
                {
                    GidIndex = gid, PathMtu = (Mtu)MtuCode(o.Mtu), RemoteAccess = AccessFlags.RemoteWrite, MinRnrTimer = 12,
                });
                var rig = new Rig
                {
                    Qp = qp, SendCq = sendCq, ReceiveCq = receiveCq, Region = region, Base = baseAddress, Half = half,
                    Peer = remote.Region ?? throw new InvalidOperationException("the peer sent no region"), Stream = stream,
                };
                rig._owned.AddRange(owned);
                return rig;
            }
            catch
            {
                Dispose(owned);
                throw;
            }
        }

        static int MtuCode(int bytes) => bytes switch { 256 => 1, 512 => 2, 1024 => 3, 2048 => 4, _ => 5 };

        static T Own<T>(List<IDisposable> owned, T item) where T : IDisposable
        {
            owned.Add(item);
            return item;
        }

        static NetworkStream ConnectTcp(Options o)
        {
            if (o.IsServer)
            {
                using var listener = new TcpListener(IPAddress.Loopback, o.Port);
                listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                listener.Start();
                Console.WriteLine($"net: {o.Test} server waiting on 127.0.0.1:{o.Port}");
                return new NetworkStream(listener.AcceptSocket(), ownsSocket: true);
            }
            var deadline = Stopwatch.GetTimestamp() + 30 * Stopwatch.Frequency;
            while (true)
            {
                var client = new TcpClient { NoDelay = true };
                try
                {
                    client.Connect(o.Connect!, o.Port);
                    return client.GetStream();
                }
                catch (SocketException) when (Stopwatch.GetTimestamp() < deadline)
                {
                    client.Dispose();
                    Thread.Sleep(50);   // the server is not listening yet
                }
            }
        }

        /// <summary>Both sides write one byte and read the peer's: neither passes until both are here.</summary>
        public byte Barrier(byte mine = 1)
        {
            Stream.WriteByte(mine);
            int b = Stream.ReadByte();
            return b >= 0 ? (byte)b : throw new EndOfStreamException("the peer closed the TCP connection at a barrier");
        }

        public void Dispose() => Dispose(_owned);

        static void Dispose(List<IDisposable> owned)
        {
            for (int i = owned.Count - 1; i >= 0; i--)
                owned[i].Dispose();
        }
    }

    /// <summary>What each side sends: a pattern of its own, so a byte from the wrong side or place shows.</summary>
    static void Fill(Span<byte> span, bool server)
    {
        for (int i = 0; i < span.Length; i++)
            span[i] = (byte)(i * 7 + (server ? 101 : 13));
    }

    /// <summary>The peer's pattern with its counter byte last, or an exception naming the first wrong byte.</summary>
    static void Check(ReadOnlySpan<byte> got, bool peerIsServer, byte last, string what)
    {
        var expected = new byte[got.Length];
        Fill(expected, peerIsServer);
        expected[^1] = last;
        int i = got.SequenceEqual(expected) ? -1 : MismatchAt(got, expected);
        if (i >= 0)
            throw new InvalidDataException($"{what}: byte {i} of {got.Length} is {got[i]}, expected {expected[i]}: the transfer moved wrong bytes");
    }

    static int MismatchAt(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        for (int i = 0; i < a.Length; i++)
        {
            if (a[i] != b[i])
                return i;
        }
        return -1;
    }

    static void WaitOne(CompletionQueue cq, Span<WorkCompletion> wc)
    {
        while (cq.Poll(wc[..1]) == 0) { }
        if (!wc[0].IsSuccess)
            throw new WorkCompletionException(wc[0]);
    }

    /// <summary>ib_send_lat: receives pre-posted, the server waits first; each side posts its next signalled SEND once the
    /// peer's has arrived and polls for its own SEND's completion. The last byte of every SEND carries its number.</summary>
    static void SendLatency(Rig rig, Options o)
    {
        int size = o.Size, iters = o.Iters, rxDepth = Math.Min(512, iters);
        Fill(rig.Source(size), o.IsServer);
        var source = rig.Region.Slice(0, (uint)size);
        var inbox = rig.Region.Slice(rig.Half, (uint)size);
        for (int i = 0; i < rxDepth; i++)
            rig.Qp.PostReceive(2, inbox);
        var posted = new long[iters];
        Span<WorkCompletion> wc = new WorkCompletion[1];
        rig.Barrier();
        int scnt = 0, rcnt = 0;
        var outbox = rig.Source(size);
        var received = rig.Inbox(size);
        while (scnt < iters || rcnt < iters)
        {
            if (rcnt < iters && !(scnt < 1 && !o.IsServer))
            {
                WaitOne(rig.ReceiveCq, wc);
                rcnt++;
                if (wc[0].ByteLength != size || received[^1] != (byte)rcnt)
                    throw new InvalidDataException($"receive {rcnt}: {wc[0].ByteLength} bytes, counter byte {received[^1]}; expected {size} bytes, counter {(byte)rcnt}");
                if (rcnt + rxDepth <= iters)
                    rig.Qp.PostReceive(2, inbox);
            }
            if (scnt < iters)
            {
                posted[scnt] = Stopwatch.GetTimestamp();
                outbox[^1] = (byte)++scnt;
                rig.Qp.PostSend(1, source, SendFlags.Signaled);
                WaitOne(rig.SendCq, wc);
            }
        }
        Check(received, !o.IsServer, (byte)iters, "the last message received");
        rig.Barrier();
        ReportLatency(o, posted);
    }

    /// <summary>ib_write_lat: the client writes first; each side spins until the last byte of its inbox holds the peer's
    /// next counter, then writes its own counter into the peer's inbox (signalled) and polls for the completion.</summary>
    static unsafe void WriteLatency(Rig rig, Options o)
    {
        int size = o.Size, iters = o.Iters;
        Fill(rig.Source(size), o.IsServer);
        rig.Inbox(size).Clear();
        var source = rig.Region.Slice(0, (uint)size);
        var posted = new long[iters];
        Span<WorkCompletion> wc = new WorkCompletion[1];
        byte* poll = rig.Base + rig.Half + size - 1;
        byte* post = rig.Base + size - 1;
        rig.Barrier();
        int scnt = 0, rcnt = 0, ccnt = 0;
        while (scnt < iters || ccnt < iters || rcnt < iters)
        {
            if (rcnt < iters && !(scnt < 1 && !o.IsServer))
            {
                rcnt++;
                while (Volatile.Read(ref *poll) != (byte)rcnt) { }
            }
            if (scnt < iters)
            {
                posted[scnt] = Stopwatch.GetTimestamp();
                *post = (byte)++scnt;
                rig.Qp.PostWrite(1, source, rig.Peer, 0, SendFlags.Signaled);
            }
            if (ccnt < iters)
            {
                WaitOne(rig.SendCq, wc);
                ccnt++;
            }
        }
        rig.Barrier();   // the peer's last write has landed before it passes its own last completion
        Check(rig.Inbox(size), !o.IsServer, (byte)iters, "the inbox after the last write");
        rig.Barrier();
        ReportLatency(o, posted);
    }

    /// <summary>ib_write_bw: the client keeps up to --tx-depth writes outstanding, every --cq-mod'th (and the last) signalled,
    /// each completion standing for the writes up to it; the time runs from the first post to the last completion. The
    /// server only waits, then checks what landed.</summary>
    static void WriteBandwidth(Rig rig, Options o)
    {
        int size = o.Size, iters = o.Iters, depth = o.TxDepth, cqMod = o.CqMod;
        if (o.IsServer)
        {
            rig.Inbox(size).Clear();
            rig.Barrier();
            rig.Barrier();   // the client is done
            byte ok = 1;
            try
            {
                Check(rig.Inbox(size), peerIsServer: false, Pattern(size, server: false), "the server's area after the writes");
            }
            catch (InvalidDataException e)
            {
                Console.Error.WriteLine("net: " + e.Message);
                ok = 0;
            }
            rig.Barrier(ok);
            if (ok == 0)
                throw new InvalidDataException("write_bw moved wrong bytes");
            return;
        }
        Fill(rig.Source(size), server: false);
        var source = rig.Region.Slice(0, (uint)size);
        var wc = new WorkCompletion[16];
        // One untimed write first: the first call of a P/Invoke builds its stub (milliseconds under TCG), which C does
        // not pay; the clock starts at the first timed post. Same bytes, same place: the server's check is unchanged.
        rig.Qp.PostWrite(ulong.MaxValue, source, rig.Peer, 0, SendFlags.Signaled);
        WaitOne(rig.SendCq, wc);
        rig.Barrier();
        long start = 0, end = 0, posting = 0, polls = 0, emptyPolls = 0;
        int scnt = 0, ccnt = 0;
        while (scnt < iters || ccnt < iters)
        {
            // Where the time goes (printed after the result): the posts of each burst are timed together, so the
            // clock is read twice per burst, not per write.
            long burst = scnt < iters && scnt < depth + ccnt ? Stopwatch.GetTimestamp() : 0;
            if (scnt == 0)
                start = burst;
            while (scnt < iters && scnt < depth + ccnt)
            {
                var flags = scnt % cqMod == cqMod - 1 || scnt == iters - 1 ? SendFlags.Signaled : SendFlags.None;
                rig.Qp.PostWrite((ulong)scnt, source, rig.Peer, 0, flags);
                scnt++;
            }
            if (burst != 0)
                posting += Stopwatch.GetTimestamp() - burst;
            if (ccnt < iters)
            {
                int n = rig.SendCq.Poll(wc);
                polls++;
                emptyPolls += n == 0 ? 1 : 0;
                for (int i = 0; i < n; i++)
                {
                    if (!wc[i].IsSuccess)
                        throw new WorkCompletionException(wc[i]);
                    ccnt = (int)wc[i].WorkRequestId + 1;   // a signalled completion stands for every write before it
                }
                if (ccnt == iters)
                    end = Stopwatch.GetTimestamp();
            }
        }
        rig.Barrier();
        if (rig.Barrier() != 1)
            throw new InvalidDataException("the server found wrong bytes after write_bw");
        double seconds = (double)(end - start) / Stopwatch.Frequency;
        double bandwidth = (double)size * iters / seconds / (1 << 20);
        double rate = iters / seconds / 1e6;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"#bytes #iterations BW average[MiB/sec] MsgRate[Mpps]"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"RESULT write_bw {size} {iters} {bandwidth:F4} {rate:F6}"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"PROFILE post_us {posting * 1e6 / Stopwatch.Frequency / iters:F3} polls {polls} empty_polls {emptyPolls} total_us {seconds * 1e6:F0}"));
    }

    /// <summary>The last byte of <see cref="Fill"/>'s pattern (write_bw carries no counter there).</summary>
    static byte Pattern(int size, bool server) => (byte)((size - 1) * 7 + (server ? 101 : 13));

    /// <summary>perftest's statistics over the posting times (see the file's comment).</summary>
    static void ReportLatency(Options o, long[] posted)
    {
        int count = posted.Length - 1;
        var delta = new double[count];
        for (int i = 0; i < count; i++)
            delta[i] = (posted[i + 1] - posted[i]) * 1e6 / Stopwatch.Frequency / 2;
        if (o.SamplesFile is not null)
            File.WriteAllLines(o.SamplesFile, delta.Select(d => d.ToString("R", CultureInfo.InvariantCulture)));
        Array.Sort(delta);
        int n = count - 2;
        double typical = (n - 1) % 2 != 0 ? (delta[n / 2] + delta[n / 2 - 1]) / 2 : delta[n / 2];
        double p99 = delta[(int)Math.Ceiling(n * 0.99)];
        double average = delta.Take(n).Average();
        Console.WriteLine("#bytes #iterations t_typical[usec] t_99%[usec] t_avg[usec]");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"RESULT {o.Test} {o.Size} {o.Iters} {typical:F2} {p99:F2} {average:F2}"));
    }
}
