using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>Helpers of the leased-registration guest tests: block patterns, a peer that keeps writing, reading by fd.</summary>
internal static class LeasedRdma
{
    /// <summary>One RDMA write per block; rxelo's path MTU is 4096, so every write is one packet (docs/known-defects.md).</summary>
    public const int Block = 4096;

    public const int InitialSeed = 11;     // the file's blocks before the test
    public const int PeerSeed = 22;        // what the peer keeps writing
    public const int CloneSeed = 33;       // the reflink source
    public const int LateSeed = 44;        // a write with the old rkey after the break: must never land
    public const int NewFileSeed = 55;     // the file written over the freed blocks

    public const AccessFlags RemoteWritable = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;

    /// <summary>False for the guest's tmpfs (non-DAX, opened with AllowNonDax).</summary>
    public static bool IsDax(string mount) => mount != "/mnt/tmpfs";

    public static DaxFile OpenFile(string path, string mount, long size) =>
        DaxFile.Open(path, new DaxFileOptions { Size = size, AllowNonDax = !IsDax(mount) });

    /// <summary>Completes with the break's event arguments once the lease was broken and given back.</summary>
    public static TaskCompletionSource<LeaseBreakEventArgs> OnBreak(FileLease lease)
    {
        var broke = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        lease.BreakRequested += (_, e) => broke.TrySetResult(e);
        return broke;
    }

    /// <summary>rxelo, both QPs in one process, path MTU 4096 (one packet per 4 KiB write: correct with ODP).</summary>
    public static RcPair Pair() => RcPair.Loopback(Mtu.Mtu4096);

    public static byte[] BlockPattern(int seed)
    {
        var b = new byte[Block];
        Fill(b, seed);
        return b;
    }

    /// <summary>Fills every 4 KiB block of <paramref name="span"/> with the block pattern of <paramref name="seed"/>.</summary>
    public static void FillBlocks(Span<byte> span, int seed)
    {
        byte[] b = BlockPattern(seed);
        for (int off = 0; off < span.Length; off += Block)
            b.AsSpan(0, Math.Min(Block, span.Length - off)).CopyTo(span[off..]);
    }

    /// <summary>What a 4 KiB block holds: the name of the seed whose pattern it is, "zero", or "mixed".</summary>
    public static string Classify(ReadOnlySpan<byte> block)
    {
        if (block.IndexOfAnyExcept((byte)0) < 0)
            return "zero";
        foreach (var (seed, name) in new[] { (InitialSeed, "initial"), (PeerSeed, "peer"), (CloneSeed, "clone"), (LateSeed, "LATE"), (NewFileSeed, "new") })
        {
            if (block.SequenceEqual(BlockPattern(seed).AsSpan(0, block.Length)))
                return name;
        }
        return "mixed";
    }

    /// <summary>Classifies every block of <paramref name="data"/>.</summary>
    public static string[] ClassifyAll(ReadOnlySpan<byte> data)
    {
        var result = new string[(data.Length + Block - 1) / Block];
        for (int i = 0; i < result.Length; i++)
            result[i] = Classify(data.Slice(i * Block, Math.Min(Block, data.Length - i * Block)));
        return result;
    }

    /// <summary>The file's current contents, read with pread(2) through our own descriptor (works after unlink/rename too).</summary>
    public static byte[] ReadByDescriptor(DaxFile file)
    {
        using var handle = new SafeFileHandle(file.FileDescriptor, ownsHandle: false);
        long length = RandomAccess.GetLength(handle);
        var data = new byte[length];
        int done = 0;
        while (done < data.Length)
        {
            int n = RandomAccess.Read(handle, data.AsSpan(done), done);
            if (n == 0)
                break;
            done += n;
        }
        Assert.That(done, Is.EqualTo(data.Length), "short read");
        return data;
    }

    /// <summary>Another RC QP pair in the same PDs as <paramref name="pair"/> (its QPs may be in the error state already).</summary>
    public static (QueuePair Peer, QueuePair Target, CompletionQueue PeerCq) ExtraQueuePairs(RcPair pair)
    {
        var cqA = pair.DeviceA.CreateCompletionQueue(16);
        var cqB = pair.DeviceB.CreateCompletionQueue(16);
        var a = pair.PdA.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cqA, ReceiveCompletionQueue = cqA });
        var b = pair.PdB.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cqB, ReceiveCompletionQueue = cqB });
        int gid = pair.DeviceA.FindGidIndex(IPAddress.Loopback);
        var endA = a.LocalEndpoint(gid);
        var endB = b.LocalEndpoint(gid);
        // The default ACK timeout (67 ms, 7 retries): the first write into a freshly registered ODP region faults
        // its pages in, which under TCG has taken longer than a 4 ms timeout allows (RetryExceeded).
        a.Connect(endB, new ConnectOptions { GidIndex = gid, PathMtu = Mtu.Mtu4096, RemoteAccess = RdmaLease.Tests.Verbs.RcPair.AllRemoteOperations(a.ProtectionDomain.Device) });
        b.Connect(endA, new ConnectOptions { GidIndex = gid, PathMtu = Mtu.Mtu4096, RemoteAccess = RdmaLease.Tests.Verbs.RcPair.AllRemoteOperations(a.ProtectionDomain.Device) });
        return (a, b, cqA);
    }

    /// <summary>
    /// One RDMA WRITE of a block of <paramref name="seed"/> from a fresh QP pair in <paramref name="pair"/>'s PDs to
    /// <paramref name="target"/>+<paramref name="offset"/>; returns the completion status.
    /// </summary>
    public static WorkCompletionStatus WriteOnce(RcPair pair, RemoteRegion target, ulong offset, int seed)
    {
        var (peer, _, cq) = ExtraQueuePairs(pair);
        using var source = pair.PdA.AllocateBuffer(Block, AccessFlags.LocalWrite);
        BlockPattern(seed).CopyTo(source.Span);
        peer.PostWrite(1, source.Slice(0, Block), target, offset);
        return RcPair.WaitOne(cq).Status;
    }

    /// <summary>FIEMAP: the file's extents as (logical, physical, length) in bytes (<see cref="KernelView.Extents(string)"/>).</summary>
    public static List<(long Logical, long Physical, long Length)> PhysicalExtents(string path) =>
        [.. KernelView.Extents(path).Select(e => (e.Logical, e.Physical, e.Length))];

    /// <summary>Bytes of physical storage that two extent lists share.</summary>
    public static long SharedPhysicalBytes(List<(long Logical, long Physical, long Length)> a, List<(long Logical, long Physical, long Length)> b)
    {
        long shared = 0;
        foreach (var x in a)
        {
            foreach (var y in b)
                shared += Math.Max(0, Math.Min(x.Physical + x.Length, y.Physical + y.Length) - Math.Max(x.Physical, y.Physical));
        }
        return shared;
    }

    public static string Ms(TimeSpan t) => t.TotalMilliseconds.ToString("F1", CultureInfo.InvariantCulture) + " ms";

    public static string ErrnoName(int errno) => errno switch
    {
        0 => "ok",
        1 => "EPERM",
        11 => "EAGAIN",
        18 => "EXDEV",
        22 => "EINVAL",
        95 => "EOPNOTSUPP",
        _ => "errno " + errno.ToString(CultureInfo.InvariantCulture),
    };

    public static (double Median, double Max) MedianMax(List<double> values)
    {
        var sorted = values.Order().ToList();
        return (sorted[sorted.Count / 2], sorted[^1]);
    }
}

/// <summary>
/// The file mapped MAP_SHARED by the test itself, outside rdma-lease (no DaxFile, no lease): for the unsafe baselines
/// that show what the kernel does when a registration is not tied to a lease.
/// </summary>
internal sealed unsafe class RawFileMapping : IDisposable
{
    public RawFileMapping(string path, long length)
    {
        _fd = open(path, 2 /* O_RDWR */);
        Assert.That(_fd, Is.GreaterThanOrEqualTo(0), $"open {path}: errno {Marshal.GetLastPInvokeError()}");
        Length = length;
        Address = mmap(null, (nuint)length, 3 /* PROT_READ|PROT_WRITE */, 1 /* MAP_SHARED */, _fd, 0);
        Assert.That((nint)Address, Is.Not.EqualTo((nint)(-1)), $"mmap {path}: errno {Marshal.GetLastPInvokeError()}");
    }

    private readonly int _fd;

    public void* Address { get; }

    public long Length { get; }

    public void Dispose()
    {
        _ = munmap(Address, (nuint)Length);
        _ = close(_fd);
    }

    [DllImport("libc", SetLastError = true, EntryPoint = "open")]
    private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern void* mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    [DllImport("libc")]
    private static extern int munmap(void* addr, nuint length);

    [DllImport("libc")]
    private static extern int close(int fd);
}

/// <summary>
/// A remote peer's worker thread: one operation on the peer's QP at a time, waiting for its completion, until an
/// operation fails, <see cref="Check"/> refuses what it brought, or the worker is stopped.
/// </summary>
internal abstract class PeerWorker : IDisposable
{
    private readonly Thread _thread;
    private readonly ManualResetEventSlim _done = new(false);
    private readonly string _what;
    private volatile bool _stop;
    private int _successes;

    protected PeerWorker(RcPair pair, RemoteRegion target, string what)
    {
        Qp = pair.A;
        Cq = pair.CqA;
        Target = target;
        _what = what;
        _thread = new Thread(Run) { IsBackground = true, Name = "peer " + what };
    }

    protected QueuePair Qp { get; }
    protected CompletionQueue Cq { get; }
    protected RemoteRegion Target { get; }

    public int Successes => Volatile.Read(ref _successes);

    /// <summary>The failed completion that stopped the worker, if one did.</summary>
    public WorkCompletion? Failure { get; private set; }

    public Exception? Error { get; private set; }

    public long FailureTimestamp { get; private set; }

    public bool WaitForSuccesses(int n, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (Successes < n && !_done.IsSet && sw.Elapsed < timeout)
            Thread.Sleep(1);
        return Successes >= n;
    }

    public bool WaitEnded(TimeSpan timeout) => _done.Wait(timeout);

    /// <summary>Called by the derived constructor once its own fields are set.</summary>
    protected void Start() => _thread.Start();

    /// <summary>Posts operation <paramref name="id"/>.</summary>
    protected abstract void Post(ulong id);

    /// <summary>After operation <paramref name="id"/> succeeded: false stops the worker (what it brought was wrong).</summary>
    protected abstract bool Check(ulong id);

    protected abstract void DisposeBuffers();

    private void Run()
    {
        Span<WorkCompletion> wc = stackalloc WorkCompletion[1];
        try
        {
            for (ulong id = 0; !_stop; id++)
            {
                Post(id);
                long deadline = Environment.TickCount64 + 10_000;
                while (Cq.Poll(wc) == 0)
                {
                    if (Environment.TickCount64 > deadline)
                        throw new TimeoutException($"no completion for the peer's {_what} within 10 s");
                    Thread.Yield();
                }
                if (!wc[0].IsSuccess)
                {
                    FailureTimestamp = Stopwatch.GetTimestamp();
                    Failure = wc[0];
                    return;
                }
                if (!Check(id))
                    return;
                Interlocked.Increment(ref _successes);
                Thread.Sleep(1);   // one vCPU: leave room for the other process and the lease watcher
            }
        }
        catch (Exception e)
        {
            Error = e;
        }
        finally
        {
            _done.Set();
        }
    }

    public void Dispose()
    {
        _stop = true;
        _done.Wait(TimeSpan.FromSeconds(15));
        DisposeBuffers();
    }
}

/// <summary>
/// The remote peer: a thread that keeps RDMA-writing the peer pattern into the leased region, block after block, one
/// 4 KiB write per work request, until a write fails or it is stopped. With <c>sequenced</c>, write N carries
/// <see cref="SequencedBlock"/>(N) instead, so the file (or a clone of it) shows which writes had landed: after N
/// writes it is <see cref="Model"/>(N).
/// </summary>
internal sealed class PeerWriter : PeerWorker
{
    private readonly RegisteredBuffer _source;
    private readonly int _blocks;
    private readonly bool _sequenced;
    private readonly List<(long Posted, long Completed)> _times = [];
    private long _posted;

    /// <param name="blocks">The writes cycle over the first <paramref name="blocks"/> blocks (default: the whole region).</param>
    public PeerWriter(RcPair pair, RemoteRegion target, int? blocks = null, bool sequenced = false)
        : base(pair, target, "write")
    {
        _blocks = blocks ?? (int)(target.Length / LeasedRdma.Block);
        _sequenced = sequenced;
        _source = pair.PdA.AllocateBuffer(LeasedRdma.Block, AccessFlags.LocalWrite);
        LeasedRdma.BlockPattern(LeasedRdma.PeerSeed).CopyTo(_source.Span);
        Start();
    }

    /// <summary>The block write <paramref name="id"/> of a sequenced writer carries: the id (8 bytes, little endian), then a pattern of it.</summary>
    public static byte[] SequencedBlock(ulong id)
    {
        var b = new byte[LeasedRdma.Block];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(b, id);
        LeaseTestSupport.Fill(b.AsSpan(8), (int)(id * 7 + 3));
        return b;
    }

    /// <summary>The write id a block of a sequenced writer holds, when it is exactly <see cref="SequencedBlock"/> of it.</summary>
    public static ulong? SequencedId(ReadOnlySpan<byte> block)
    {
        if (block.Length != LeasedRdma.Block)
            return null;
        ulong id = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(block);
        return block.SequenceEqual(SequencedBlock(id)) ? id : null;
    }

    /// <summary>What a sequenced writer's first <paramref name="writes"/> writes make of <paramref name="initial"/> (cycling over <paramref name="blocks"/> blocks).</summary>
    public static byte[] Model(ReadOnlySpan<byte> initial, int blocks, long writes)
    {
        byte[] m = initial.ToArray();
        for (long id = Math.Max(0, writes - blocks); id < writes; id++)
            SequencedBlock((ulong)id).CopyTo(m.AsSpan((int)(id % blocks) * LeasedRdma.Block));
        return m;
    }

    /// <summary>Stopwatch timestamps of each successful write's post and completion (in order).</summary>
    public List<(long Posted, long Completed)> Times
    {
        get
        {
            lock (_times)
                return [.. _times];
        }
    }

    protected override void Post(ulong id)
    {
        ulong offset = id % (ulong)_blocks * LeasedRdma.Block;
        if (_sequenced)
            SequencedBlock(id).CopyTo(_source.Span);
        _posted = Stopwatch.GetTimestamp();
        Qp.PostWrite(id, _source.Slice(0, LeasedRdma.Block), Target, offset);
    }

    protected override bool Check(ulong id)
    {
        lock (_times)
            _times.Add((_posted, Stopwatch.GetTimestamp()));
        return true;
    }

    protected override void DisposeBuffers() => _source.Dispose();
}

/// <summary>
/// A remote peer of a read-only export: a thread that keeps RDMA-reading block after block of the region and
/// compares every byte with what the file holds, until a read fails, differs, or it is stopped.
/// </summary>
internal sealed class PeerReader : PeerWorker
{
    private readonly RegisteredBuffer _sink;
    private readonly byte[] _expected;
    private readonly int _blocks;

    public PeerReader(RcPair pair, RemoteRegion target, byte[] expected)
        : base(pair, target, "read")
    {
        _expected = expected;
        _blocks = (int)(target.Length / LeasedRdma.Block);
        _sink = pair.PdA.AllocateBuffer(LeasedRdma.Block, AccessFlags.LocalWrite);
        Start();
    }

    /// <summary>A read whose bytes were not the file's: "block N: byte I".</summary>
    public string? Mismatch { get; private set; }

    protected override void Post(ulong id)
    {
        int block = (int)(id % (ulong)_blocks);
        _sink.Span.Clear();
        Qp.PostRead(id, _sink.Slice(0, LeasedRdma.Block), Target, (ulong)block * LeasedRdma.Block);
    }

    protected override bool Check(ulong id)
    {
        int block = (int)(id % (ulong)_blocks);
        var want = _expected.AsSpan(block * LeasedRdma.Block, LeasedRdma.Block);
        int diff = _sink.Span[..LeasedRdma.Block].CommonPrefixLength(want);
        if (diff < LeasedRdma.Block)
        {
            Mismatch = $"block {block}: byte {diff}";
            return false;
        }
        return true;
    }

    protected override void DisposeBuffers() => _sink.Dispose();
}

/// <summary>rdmalease-lease-probe hold: another process that holds a delegation and never gives it back.</summary>
internal sealed class HoldingProcess : IDisposable
{
    private readonly Process _process;

    public HoldingProcess(string path, string? device)
    {
        var psi = new ProcessStartInfo(ProbePath) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("hold");
        psi.ArgumentList.Add(path);
        if (device is not null)
            psi.ArgumentList.Add(device);
        _process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start the probe");
        var line = _process.StandardOutput.ReadLineAsync();
        Assert.That(line.Wait(TimeSpan.FromSeconds(30)), Is.True, "the holder did not report");
        ReadyLine = line.Result ?? "";
        if (!ReadyLine.StartsWith("held ", StringComparison.Ordinal))
        {
            string stderr = _process.WaitForExit(5000) ? _process.StandardError.ReadToEnd() : "(still running)";
            Assert.Fail($"holder: '{ReadyLine}' {stderr}");
        }
    }

    public string ReadyLine { get; }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>SIGKILL; returns the Stopwatch timestamp just before the kill.</summary>
    public long Kill()
    {
        long t = Stopwatch.GetTimestamp();
        _process.Kill();
        _process.WaitForExit(10_000);
        return t;
    }

    public void Dispose()
    {
        if (!_process.HasExited)
            _process.Kill();
        _process.WaitForExit(10_000);
        _process.Dispose();
    }
}
