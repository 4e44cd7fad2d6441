using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Integrity;

/// <summary>The six transfers that touch an ODP region (as WorkRequests in OdpIntegrityOperation).</summary>
static class OdpTransfers
{
    public const AccessFlags All = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;
}

/// <summary>
/// A loopback RC pair at one path MTU with a file (FS-DAX on /mnt/xfs, or tmpfs) registered as an ODP region in
/// both domains (B's is the remote side, A's the local side of A's posts) and a pinned buffer in each domain.
/// </summary>
sealed unsafe class OdpRig : IDisposable
{
    public const int Window = 80 * 1024;   // 16 packets at 4096 plus room to see bytes past the transfer
    public RcPair Pair { get; }
    public DaxFile File { get; }
    // The regions go over the test's own mapping of the file: this rig tests the device's ODP data path, not leases
    // (a DaxFile's mappings are registered only through a lease).
    readonly Leases.RawFileMapping _raw;
    public MemoryRegion OdpA { get; }
    public MemoryRegion OdpB { get; }
    public RegisteredBuffer PinA { get; }
    public RegisteredBuffer PinB { get; }
    public Mtu Mtu { get; }
    ulong _id = 1;

    public OdpRig(string directory, Mtu mtu, bool veth = false)
    {
        Mtu = mtu;
        Pair = veth ? RcPair.Veth(mtu) : RcPair.Loopback(mtu);
        string path = Path.Combine(directory, "odp-" + Guid.NewGuid().ToString("N")[..8]);
        File = DaxFile.Open(path, new DaxFileOptions { Size = Window, AllowNonDax = !directory.StartsWith("/mnt/xfs", StringComparison.Ordinal) });
        if (directory.StartsWith("/mnt/xfs", StringComparison.Ordinal))
            Assert.That(File.IsDax, "the file on /mnt/xfs is on FS-DAX");
        _raw = new Leases.RawFileMapping(path, File.Length);
        OdpA = Pair.PdA.Register(_raw.Address, (nuint)File.Length, OdpTransfers.All | AccessFlags.OnDemand);
        OdpB = Pair.PdB.Register(_raw.Address, (nuint)File.Length, OdpTransfers.All | AccessFlags.OnDemand);
        PinA = Pair.PdA.AllocateBuffer(Window, OdpTransfers.All);
        PinB = Pair.PdB.AllocateBuffer(Window, OdpTransfers.All);
    }

    public Span<byte> FileSpan => File.Span;

    /// <summary>Turns the QPs' ODP protection off (true) or on.</summary>
    public bool Unprotected
    {
        set
        {
            Pair.A.UnsafeOdpProtectionOff = value;
            Pair.B.UnsafeOdpProtectionOff = value;
        }
    }

    /// <summary>
    /// Moves <paramref name="length"/> bytes through our API and returns how many bytes of the whole target window
    /// are not what they must be. <paramref name="remoteOdp"/> is what A is given for B's ODP region.
    /// </summary>
    public int Run(OdpIntegrityOperation op, int length, RemoteRegion remoteOdp, int offset = 0)
    {
        Patterns.Fill(FileSpan, 1 + (int)op);
        Patterns.Fill(PinA.Span, 20 + length);
        Patterns.Fill(PinB.Span, 40 + length);
        bool odpIsTarget = op is OdpIntegrityOperation.WriteInto or OdpIntegrityOperation.ReadInto or OdpIntegrityOperation.SendInto;
        RegisteredBuffer pin = op is OdpIntegrityOperation.WriteInto or OdpIntegrityOperation.ReadOutOf or OdpIntegrityOperation.SendInto ? PinA : PinB;
        Span<byte> source = odpIsTarget ? pin.Span : FileSpan, target = odpIsTarget ? FileSpan : pin.Span;
        byte[] expected = target.ToArray();
        source.Slice(offset, length).CopyTo(expected.AsSpan(offset));
        ulong id = _id++;
        uint len = (uint)length, off = (uint)offset;
        var a = Pair.A;
        switch (op)
        {
            case OdpIntegrityOperation.WriteInto:
                a.PostWrite(id, PinA.Slice(off, len), remoteOdp, off);
                RcPair.Expect(Pair.CqA, WorkCompletionOpcode.RdmaWrite, id);
                break;
            case OdpIntegrityOperation.ReadOutOf:
                a.PostRead(id, PinA.Slice(off, len), remoteOdp, off);
                RcPair.Expect(Pair.CqA, WorkCompletionOpcode.RdmaRead, id);
                break;
            case OdpIntegrityOperation.WriteFrom:
                a.PostWrite(id, OdpA.Slice(off, len), PinB.ToRemote(), off);
                RcPair.Expect(Pair.CqA, WorkCompletionOpcode.RdmaWrite, id);
                break;
            case OdpIntegrityOperation.ReadInto:
                a.PostRead(id, OdpA.Slice(off, len), PinB.ToRemote(), off);
                RcPair.Expect(Pair.CqA, WorkCompletionOpcode.RdmaRead, id);
                break;
            case OdpIntegrityOperation.SendInto:
                Pair.B.PostReceive(id, OdpB.Slice(off, len));
                a.PostSend(id, PinA.Slice(off, len));
                RcPair.Expect(Pair.CqA, WorkCompletionOpcode.Send, id);
                RcPair.Expect(Pair.CqB, WorkCompletionOpcode.Receive, id);
                break;
            case OdpIntegrityOperation.SendFrom:
                Pair.B.PostReceive(id, PinB.Slice(off, len));
                a.PostSend(id, OdpA.Slice(off, len));
                RcPair.Expect(Pair.CqA, WorkCompletionOpcode.Send, id);
                RcPair.Expect(Pair.CqB, WorkCompletionOpcode.Receive, id);
                break;
        }
        int wrong = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (target[i] != expected[i])
                wrong++;
        }
        return wrong;
    }

    public void Dispose()
    {
        Pair.Dispose();   // deregisters the regions before the mapping goes
        _raw.Dispose();
        string path = File.Path;
        File.Dispose();
        System.IO.File.Delete(path);
    }
}
