using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace RdmaLease.Verbs;

/// <summary>
/// The ODP integrity probe: on one device, two RC QPs connected to each other at a given path MTU, an ODP
/// region over a shared file mapping (a memfd) and a pinned buffer; moves 4 path-MTUs in one work request
/// each way (WRITE and READ with the ODP region as responder and as requester, SEND into and out of it),
/// at a page-aligned offset and at one that starts mid-page, and compares every byte of the window. When
/// any of that is wrong it repeats everything split into one path MTU per work request (per message for
/// SEND), through the same splitting code <see cref="QueuePair"/> posts with. Its queue pairs ignore the device's
/// <see cref="OdpQuirk"/>: they measure the device itself.
/// </summary>
internal static unsafe class OdpIntegrityProbe
{
    /// <summary>The mid-page start: not MTU-aligned, and the first packet crosses a page boundary.</summary>
    internal const int UnalignedOffset = 3576;

    static readonly OdpIntegrityOperation[] Operations = Enum.GetValues<OdpIntegrityOperation>();
    static int s_runs;

    /// <summary>How many probes this process has started (tests: what did not run one).</summary>
    internal static int Runs => Volatile.Read(ref s_runs);

    public static OdpIntegrityResult Run(Device device, Mtu mtu, byte port)
    {
        Interlocked.Increment(ref s_runs);
        int m = mtu.Bytes();
        int length = 4 * m;
        int page = Environment.SystemPageSize;
        int window = (UnalignedOffset + length + 512 + page - 1) / page * page;
        var checks = new List<OdpIntegrityCheck>();
        var testedAt = DateTimeOffset.UtcNow;
        using var memory = new SharedMemory(window);
        using var pd = device.AllocateProtectionDomain();
        using var cq = device.CreateCompletionQueue(256);
        const AccessFlags access = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;
        using var odp = pd.Register(memory.Pointer, (ulong)window, access | AccessFlags.OnDemand);
        using var pinned = pd.AllocateBuffer((ulong)window, access);
        using var session = new Session(device, pd, cq, mtu, port, odp, pinned, memory);

        // 1. Four packets in one work request, at a page-aligned and at a mid-page ODP address.
        foreach (var op in Operations)
        {
            checks.Add(session.Check(op, 0, length, split: false));
            checks.Add(session.Check(op, UnalignedOffset, length, split: false));
        }
        bool multiAligned = checks.Where(c => c.Offset == 0).All(c => c.Passed);
        bool multiUnaligned = checks.Where(c => c.Offset != 0).All(c => c.Passed);
        uint limit, alignment = 1;
        if (multiAligned && multiUnaligned)
        {
            limit = OdpIntegrityResult.Unlimited;
        }
        else
        {
            // 2. The same split into one path MTU per work request (per message for SEND), through the
            //    QP's splitting code, from both addresses.
            int before = checks.Count;
            foreach (var op in Operations)
            {
                checks.Add(session.Check(op, 0, length, split: true));
                checks.Add(session.Check(op, UnalignedOffset, length, split: true));
            }
            if (checks.Skip(before).All(c => c.Passed))
            {
                limit = (uint)m;
            }
            else if (multiAligned)
            {
                // Whole transfers from a page boundary are right; only the address's in-page offset is lost.
                limit = OdpIntegrityResult.Unlimited;
                alignment = (uint)page;
            }
            else
            {
                // 3. One packet at a page boundary (the second page: not the region's first byte).
                int single = checks.Count;
                foreach (var op in Operations)
                    checks.Add(session.Check(op, page, m, split: false));
                bool singleAligned = checks.Skip(single).All(c => c.Passed);
                limit = singleAligned ? (uint)m : 0;
                alignment = singleAligned ? (uint)page : 1;
            }
        }
        return new OdpIntegrityResult(device.Name, OdpQuirk.KernelRelease, mtu, limit, alignment, testedAt, checks);
    }

    /// <summary>A shared mapping of a memfd: file-backed shared memory, as the real use (a mapped file) is.</summary>
    sealed class SharedMemory : IDisposable
    {
        readonly int _fd;
        public void* Pointer { get; }
        public int Length { get; }

        public SharedMemory(int length)
        {
            Length = length;
            fixed (byte* name = "rdma-lease-odp-probe\0"u8)
                _fd = memfd_create(name, MFD_CLOEXEC);
            if (_fd < 0)
                throw new VerbsException("memfd_create", "the ODP integrity probe's memory", errno);
            if (ftruncate(_fd, length) != 0)
            {
                int e = errno;
                _ = close(_fd);
                throw new VerbsException("ftruncate", "the ODP integrity probe's memfd", e);
            }
            void* p = mmap(null, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED, _fd, 0);
            if (p == MAP_FAILED)
            {
                int e = errno;
                _ = close(_fd);
                throw new VerbsException("mmap", "the ODP integrity probe's memfd", e);
            }
            Pointer = p;
        }

        public Span<byte> Span => new(Pointer, Length);

        public void Dispose()
        {
            _ = munmap(Pointer, (size_t)Length);
            _ = close(_fd);
        }
    }

    sealed class Session : IDisposable
    {
        readonly ProtectionDomain _pd;
        readonly CompletionQueue _cq;
        readonly Mtu _mtu;
        readonly byte _port;
        readonly int _gidIndex;
        readonly MemoryRegion _odp;
        readonly RegisteredBuffer _pinned;
        readonly SharedMemory _memory;
        QueuePair _a = null!, _b = null!;
        ulong _nextId = 1;

        public Session(Device device, ProtectionDomain pd, CompletionQueue cq, Mtu mtu, byte port, MemoryRegion odp, RegisteredBuffer pinned, SharedMemory memory)
        {
            _pd = pd;
            _cq = cq;
            _mtu = mtu;
            _port = port;
            _odp = odp;
            _pinned = pinned;
            _memory = memory;
            _gidIndex = PickGid(device, port);
            Connect();
        }

        /// <summary>A RoCE v2 GID of the port (IPv4-mapped first), else the first entry (InfiniBand).</summary>
        static int PickGid(Device device, byte port)
        {
            var table = device.QueryGidTable().Where(e => e.Port == port).ToList();
            var pick = table.FirstOrDefault(e => e.Type == GidType.RoceV2 && e.Address.IsIPv4MappedToIPv6)
                ?? table.FirstOrDefault(e => e.Type == GidType.RoceV2 && e.Address.AddressFamily == AddressFamily.InterNetworkV6)
                ?? table.FirstOrDefault();
            return pick?.Index ?? throw new InvalidOperationException($"{device} port {port} has no GID to connect its own queue pairs to each other for the ODP integrity probe.");
        }

        void Connect()
        {
            _a?.Dispose();
            _b?.Dispose();
            var options = new QueuePairOptions { SendCompletionQueue = _cq, ReceiveCompletionQueue = _cq, MaxSendRequests = 64, MaxReceiveRequests = 16, WithoutOdpQuirk = true };
            _a = _pd.CreateQueuePair(options);
            _b = _pd.CreateQueuePair(options);
            var connect = new ConnectOptions { GidIndex = _gidIndex, Port = _port, PathMtu = _mtu, RnrRetry = 7, RemoteAccess = AccessFlags.RemoteWrite | AccessFlags.RemoteRead };
            _a.Connect(_b.LocalEndpoint(_gidIndex, _port), connect);
            _b.Connect(_a.LocalEndpoint(_gidIndex, _port), connect);
        }

        public OdpIntegrityCheck Check(OdpIntegrityOperation op, int offset, int length, bool split)
        {
            int m = _mtu.Bytes();
            Span<byte> odp = _memory.Span, pin = _pinned.Span;
            Fill(odp, 0x5a + (int)op);
            Fill(pin, 0xa5 + 3 * (int)op);
            bool odpIsTarget = op is OdpIntegrityOperation.WriteInto or OdpIntegrityOperation.ReadInto or OdpIntegrityOperation.SendInto;
            Span<byte> source = odpIsTarget ? pin : odp, target = odpIsTarget ? odp : pin;
            byte[] expected = target.ToArray();
            source.Slice(offset, length).CopyTo(expected.AsSpan(offset));

            // Split: the QP splits writes and reads at the remote region's limit (the code under test); SENDs are one message per MTU.
            uint limit = split ? (uint)m : 0;
            var odpRemote = new RemoteRegion(_odp.Iova, _odp.Length, _odp.RemoteKey, limit);
            var pinRemote = new RemoteRegion(_pinned.Iova, _pinned.Length, _pinned.RemoteKey, limit);
            uint len = (uint)length, off = (uint)offset;
            int requests = split ? (length + m - 1) / m : 1;
            int completions = 1;
            ulong id = _nextId++;
            string? error = null;
            try
            {
                switch (op)
                {
                    case OdpIntegrityOperation.WriteInto:
                        _a.PostWrite(id, _pinned.Slice(off, len), odpRemote, off);
                        break;
                    case OdpIntegrityOperation.ReadOutOf:
                        _a.PostRead(id, _pinned.Slice(off, len), odpRemote, off);
                        break;
                    case OdpIntegrityOperation.WriteFrom:
                        _a.PostWrite(id, _odp.Slice(off, len), pinRemote, off);
                        break;
                    case OdpIntegrityOperation.ReadInto:
                        _a.PostRead(id, _odp.Slice(off, len), pinRemote, off);
                        break;
                    case OdpIntegrityOperation.SendInto:
                    case OdpIntegrityOperation.SendFrom:
                        MemoryRegion receiveIn = odpIsTarget ? _odp : _pinned, sendFrom = odpIsTarget ? _pinned : _odp;
                        uint piece = split ? (uint)m : len;
                        for (uint at = 0; at < len; at += piece)
                            _b.PostReceive(id, receiveIn.Slice(off + at, Math.Min(piece, len - at)));
                        for (uint at = 0; at < len; at += piece)
                            _a.PostSend(id, sendFrom.Slice(off + at, Math.Min(piece, len - at)));
                        completions = 2 * requests;
                        break;
                }
                error = Wait(completions);
            }
            catch (VerbsException e)
            {
                error = e.Message;
            }
            if (error != null)
                Connect();   // a failed completion leaves the QPs in the error state

            int wrong = 0, first = -1;
            for (int i = 0; i < expected.Length; i++)
            {
                if (target[i] != expected[i])
                {
                    wrong++;
                    if (first < 0)
                        first = i;
                }
            }
            return new OdpIntegrityCheck(op, offset, length, requests, wrong, first, error);
        }

        string? Wait(int count)
        {
            Span<WorkCompletion> wc = stackalloc WorkCompletion[16];
            long deadline = Stopwatch.GetTimestamp() + 5 * Stopwatch.Frequency;
            string? error = null;
            while (count > 0)
            {
                int n = _cq.Poll(wc);
                for (int i = 0; i < n; i++)
                {
                    if (!wc[i].IsSuccess)
                        error ??= wc[i].ToString();
                }
                count -= n;
                if (error != null)
                    return error;
                if (n == 0 && Stopwatch.GetTimestamp() > deadline)
                    return $"{count} completion(s) missing after 5 s";
            }
            return null;
        }

        static void Fill(Span<byte> span, int seed)
        {
            for (int i = 0; i < span.Length; i++)
                span[i] = (byte)(seed + i * 7 + (i >> 8) * 13 + (i >> 10));
        }

        public void Dispose()
        {
            _a?.Dispose();
            _b?.Dispose();
        }
    }
}
