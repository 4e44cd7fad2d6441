using System.Net;
using System.Reflection;
using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using RdmaLease.Interop;
using RdmaLease.Verbs;

namespace RdmaLease.Micro;

/// <summary>
/// The managed part of one post, piece by piece, on objects made without a device: a <see cref="MemoryRegion"/> and a
/// <see cref="QueuePair"/> created uninitialized with only the fields these paths read set (their keys, lengths, type
/// and limits). Every benchmark returns a value computed from its result, so nothing is optimized away.
/// </summary>
[MemoryDiagnoser]
public unsafe class PostPathBenchmarks
{
    MemoryRegion _region = null!;
    QueuePair _qp = null!;
    LocalSegment _source;
    LocalSegment[] _four = null!;
    RemoteRegion _target;
    SendWork _gather;
    readonly byte[] _encoded = new byte[Math.Max(RemoteRegion.EncodedLength, QueuePairEndpoint.EncodedLength)];
    QueuePairEndpoint _endpoint = null!;

    [GlobalSetup]
    public void Setup()
    {
        _region = Fake<MemoryRegion>(("Address", 0x7f00_0000_0000UL), ("Length", 1UL << 20), ("LocalKey", 0x1234u), ("RemoteKey", 0x1234u),
            ("Access", AccessFlags.LocalWrite | AccessFlags.RemoteWrite));
        _qp = Fake<QueuePair>(("Type", QueuePairType.ReliableConnected), ("_postLimits", new PostLimits(4, 4, 64, false)), ("_maxSendRequests", 64));
        _source = _region.Slice(0, 8);
        _four = [_region.Slice(0, 64), _region.Slice(4096, 64), _region.Slice(8192, 64), _region.Slice(12288, 64)];
        _target = new RemoteRegion(0x7f10_0000_0000UL, 1UL << 20, 0x5678u);
        _gather = _qp.MakeTransfer(1, _four, _target, 0, SendFlags.Signaled, read: false, immediate: null);
        _endpoint = new QueuePairEndpoint(0, 0x11, 7, IPAddress.Parse("::ffff:127.0.0.1"));
    }

    /// <summary>The checks and the managed request of one PostWrite (QueuePair.MakeTransfer: type, gather list, range).</summary>
    [Benchmark(Baseline = true)]
    public uint BuildWrite() => _qp.MakeTransfer(1, new(in _source), _target, 64, SendFlags.Signaled, read: false, immediate: null).Length;

    /// <summary>The same for a four-segment gather list (SendBatch.Write with [a, b, c, d]).</summary>
    [Benchmark]
    public uint BuildGatherWrite() => _qp.MakeTransfer(1, _four, _target, 64, SendFlags.Signaled, read: false, immediate: null).Length;

    /// <summary>Encoding one single-segment WRITE into ibv_send_wr + ibv_sge, as PostWrite does (FillPieces, no split).</summary>
    [Benchmark]
    public ulong EncodeWrite()
    {
        ibv_send_wr wr;
        ibv_sge sge;
        QueuePair.FillPieces(&wr, &sge, 1, OdpIntegrityResult.Unlimited, 1, ibv_wr_opcode.IBV_WR_RDMA_WRITE, SendFlags.Signaled, 0, _source,
            _target.Address, _target.RemoteKey);
        return wr.wr.rdma.remote_addr + sge.addr;
    }

    /// <summary>Encoding the four-segment WRITE (FillOne: one ibv_send_wr, four ibv_sge).</summary>
    [Benchmark]
    public ulong EncodeGatherWrite()
    {
        ibv_send_wr wr;
        ibv_sge* sges = stackalloc ibv_sge[4];
        QueuePair.FillOne(&wr, sges, _gather, _four, null, 0);
        return wr.wr.rdma.remote_addr + sges[3].addr;
    }

    /// <summary>The segment check every post runs on each local segment (MemoryRegion.CheckRange).</summary>
    [Benchmark]
    public ulong CheckSegment()
    {
        _region.CheckRange(_source.Offset, _source.Length);
        return _source.Offset;
    }

    /// <summary>The remote range check of a WRITE or READ (RemoteRegion.CheckRange).</summary>
    [Benchmark]
    public ulong CheckRemoteRange()
    {
        _target.CheckRange(64, 8);
        return _target.Address;
    }

    /// <summary>The ODP/limit step of PostWrite on a device without a quirk (QueuePair.TransferLimit: one field test).</summary>
    [Benchmark]
    public uint TransferLimit() => _qp.TransferLimit(ibv_wr_opcode.IBV_WR_RDMA_WRITE, _source, 0);

    /// <summary>Encoding a RemoteRegion for a peer (28 bytes) and decoding it back.</summary>
    [Benchmark]
    public uint EncodeDecodeRemoteRegion()
    {
        _target.Encode(_encoded);
        return RemoteRegion.Decode(_encoded).RemoteKey;
    }

    /// <summary>Encoding a QueuePairEndpoint (26 bytes) and decoding it back.</summary>
    [Benchmark]
    public uint EncodeDecodeEndpoint()
    {
        _endpoint.Encode(_encoded);
        return QueuePairEndpoint.Decode(_encoded).QueuePairNumber;
    }

    /// <summary>An object of <typeparamref name="T"/> without its constructor (no device), with the named members set.</summary>
    static T Fake<T>(params (string Member, object Value)[] members) where T : class
    {
        var o = (T)RuntimeHelpers.GetUninitializedObject(typeof(T));
        foreach (var (member, value) in members)
        {
            var field = typeof(T).GetField(member, BindingFlags.Instance | BindingFlags.NonPublic)
                ?? typeof(T).GetField($"<{member}>k__BackingField", BindingFlags.Instance | BindingFlags.NonPublic)
                ?? throw new MissingFieldException(typeof(T).Name, member);
            field.SetValue(o, value);
        }
        return o;
    }
}
