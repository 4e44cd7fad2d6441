using RdmaLease.Verbs;

namespace RdmaLease.Tests.Integrity;

/// <summary>
/// rxe's ODP multi-packet defect through our own API, over FS-DAX and tmpfs, at path MTU 1024 and 4096: with the
/// protection forced off it corrupts at 1024 (so the probe cannot pass vacuously) and not at 4096; with it on,
/// every pattern arrives intact and what cannot be split is refused.
/// </summary>
[Category("Guest")]
[TestFixture("/mnt/xfs", 1024)]
[TestFixture("/mnt/xfs", 4096)]
[TestFixture("/mnt/tmpfs", 1024)]
[TestFixture("/mnt/tmpfs", 4096)]
public class OdpDefectGuestTests(string directory, int mtuBytes)
{
    static readonly int[] Packets = [2, 4, 16];
    static readonly OdpIntegrityOperation[] Required = [OdpIntegrityOperation.WriteInto, OdpIntegrityOperation.ReadOutOf, OdpIntegrityOperation.SendInto];
    OdpRig _rig = null!;

    [OneTimeSetUp]
    public void Open() => _rig = new OdpRig(directory, MtuExtensions.FromBytes(mtuBytes));

    [OneTimeTearDown]
    public void Close() => _rig.Dispose();

    [Test]
    public void UnprotectedMultiPacketTransfersCorruptOnlyBelowThePageSize()
    {
        _rig.Unprotected = true;
        try
        {
            var wrong = new Dictionary<(OdpIntegrityOperation, int), int>();
            foreach (int packets in Packets)
            {
                foreach (var op in Enum.GetValues<OdpIntegrityOperation>())
                {
                    int n = _rig.Run(op, packets * mtuBytes, _rig.OdpB.ToRemote());
                    wrong[(op, packets)] = n;
                    TestContext.Out.WriteLine($"{directory} mtu {mtuBytes} {op,-9} {packets,2} packets ({packets * mtuBytes,6} bytes): {(n == 0 ? "ok" : $"CORRUPT, {n} bytes wrong")}");
                }
            }
            Assert.Multiple(() =>
            {
                foreach (int packets in Packets)
                {
                    foreach (var op in Required)
                    {
                        if (mtuBytes < Environment.SystemPageSize)
                            Assert.That(wrong[(op, packets)], Is.Positive, $"{op} of {packets} packets at MTU {mtuBytes} must show the defect");
                        else
                            Assert.That(wrong[(op, packets)], Is.Zero, $"{op} of {packets} packets at MTU {mtuBytes}");
                    }
                }
                if (mtuBytes >= Environment.SystemPageSize)
                    Assert.That(wrong.Values, Is.All.Zero, "at MTU 4096 every transfer is intact");
            });
        }
        finally
        {
            _rig.Unprotected = false;
        }
    }

    static readonly OdpIntegrityOperation[] LocalOdp = [OdpIntegrityOperation.WriteFrom, OdpIntegrityOperation.ReadInto];
    static readonly OdpIntegrityOperation[] Messages = [OdpIntegrityOperation.SendInto, OdpIntegrityOperation.SendFrom];

    [Test]
    public void ProtectedTransfersArriveIntactOrAreRefused()
    {
        var wrong = new List<string>();
        void Expect(OdpIntegrityOperation op, int length, RemoteRegion remote, int offset)
        {
            int n = _rig.Run(op, length, remote, offset);
            if (n != 0)
                wrong.Add($"{op} of {length} bytes at {offset}: {n} bytes wrong");
        }
        int page = Environment.SystemPageSize;
        if (mtuBytes < page)
        {
            // One packet per work request is right only from a page boundary: no split of a larger transfer is,
            // so peers get no access and larger local transfers are refused.
            var toRemote = Assert.Throws<NotSupportedException>(() => _rig.OdpB.ToRemote(_rig.Mtu))!;
            Assert.That(toRemote.Message, Does.Contain("docs/known-defects.md").And.Contain("aligned"));
            foreach (int packets in Packets)
            {
                foreach (var op in LocalOdp)
                {
                    var e = Assert.Throws<NotSupportedException>(() => _rig.Run(op, packets * mtuBytes, default))!;
                    Assert.That(e.Message, Does.Contain("docs/known-defects.md").And.Contain("page"), op.ToString());
                }
            }
            foreach (var op in LocalOdp.Concat(Messages))
            {
                Expect(op, mtuBytes, default, 0);
                Expect(op, mtuBytes, default, page);
            }
        }
        else
        {
            // Multi-packet transfers from a page boundary are right: nothing is split or refused.
            var remote = _rig.OdpB.ToRemote(_rig.Mtu);
            Assert.That(remote.MaxTransferPerRequest, Is.Zero, "no limit to advertise at the page-size MTU");
            foreach (int packets in Packets)
            {
                foreach (var op in Enum.GetValues<OdpIntegrityOperation>())
                    Expect(op, packets * mtuBytes, remote, 0);
            }
            Expect(OdpIntegrityOperation.WriteFrom, 3 * mtuBytes, remote, page);
        }
        Assert.That(wrong, Is.Empty);
    }

    [Test]
    public void MisplacedOrOversizedMessagesAreRefused()
    {
        uint big = (uint)(4 * mtuBytes);
        if (mtuBytes < Environment.SystemPageSize)
        {
            var receive = Assert.Throws<NotSupportedException>(() => _rig.Pair.B.PostReceive(90, _rig.OdpB.Slice(0, big)))!;
            Assert.That(receive.Message, Does.Contain("docs/known-defects.md").And.Contain("receive").And.Contain($"at most {mtuBytes} bytes"));
            var send = Assert.Throws<NotSupportedException>(() => _rig.Pair.A.PostSend(91, _rig.OdpA.Slice(0, big)))!;
            Assert.That(send.Message, Does.Contain("docs/known-defects.md").And.Contain("cannot be split"));
        }
        // Not from a page boundary: refused at any MTU, even one packet's worth.
        var misaligned = Assert.Throws<NotSupportedException>(() => _rig.Pair.B.PostReceive(92, _rig.OdpB.Slice(1024, 512)))!;
        Assert.That(misaligned.Message, Does.Contain("1024 bytes into a page").And.Contain("docs/known-defects.md"));
        var write = Assert.Throws<NotSupportedException>(() => _rig.Pair.A.PostWrite(93, _rig.OdpA.Slice(8, 64), _rig.PinB.ToRemote()))!;
        Assert.That(write.Message, Does.Contain("8 bytes into a page"));
        // Nothing was posted: the QPs still work.
        Assert.That(_rig.Run(OdpIntegrityOperation.SendInto, mtuBytes, default), Is.Zero);
    }
}
