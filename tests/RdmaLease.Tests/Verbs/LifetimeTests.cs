using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>Dispose order, double dispose, use after dispose, and dispose racing a poller.</summary>
[Category("Guest")]
public class LifetimeTests
{
    const AccessFlags Rw = AccessFlags.LocalWrite | AccessFlags.RemoteWrite | AccessFlags.RemoteRead;

    [Test]
    public void DisposingTheDeviceDisposesEverythingCreatedFromIt()
    {
        var pair = RcPair.Loopback();
        var buffer = pair.PdA.AllocateBuffer(4096, Rw);
        var srq = pair.PdA.CreateSharedReceiveQueue(8);
        pair.DeviceA.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(pair.A.IsDisposed, "QP");
            Assert.That(pair.B.IsDisposed, "QP B (same device)");
            Assert.That(buffer.IsDisposed, "MR");
            Assert.That(srq.IsDisposed, "SRQ");
            Assert.That(pair.CqA.IsDisposed, "CQ");
            Assert.That(pair.PdA.IsDisposed, "PD");
        });
        pair.Dispose();   // idempotent, through every path
    }

    [Test]
    public void DisposingAProtectionDomainLeavesCompletionQueuesAlone()
    {
        using var pair = RcPair.Loopback();
        var buffer = pair.PdA.AllocateBuffer(4096, Rw);
        pair.PdA.Dispose();
        Assert.That(buffer.IsDisposed && pair.A.IsDisposed, "children of the PD");
        Assert.That(pair.CqA.IsDisposed, Is.False, "the CQ belongs to the device");
        Span<WorkCompletion> wc = stackalloc WorkCompletion[4];
        Assert.That(pair.CqA.Poll(wc), Is.Zero, "the CQ still works");
    }

    [Test]
    public void DoubleDisposeIsHarmless()
    {
        using var device = Device.Open("rxelo");
        var pd = device.AllocateProtectionDomain();
        var mr = pd.AllocateBuffer(4096);
        mr.Dispose();
        mr.Dispose();
        pd.Dispose();
        pd.Dispose();
        device.Dispose();
        Assert.That(device.IsDisposed && pd.IsDisposed && mr.IsDisposed);
    }

    [Test]
    public void UseAfterDisposeThrowsObjectDisposedException()
    {
        using var pair = RcPair.Loopback();
        var local = pair.PdA.AllocateBuffer(4096, Rw);
        var remote = pair.PdB.AllocateBuffer(4096, Rw);
        var target = remote.ToRemote();
        var segment = local.Slice(0, 64);

        local.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pair.A.PostWrite(1, segment, target), "post with a disposed MR");
        Assert.Throws<ObjectDisposedException>(() => _ = local.Span, "span of a disposed buffer");

        pair.CqA.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pair.CqA.Poll(new WorkCompletion[1]), "poll a disposed CQ");

        pair.A.Dispose();
        using var other = pair.PdA.AllocateBuffer(4096, Rw);
        Assert.Throws<ObjectDisposedException>(() => pair.A.PostWrite(2, other.Slice(0, 8), target), "post on a disposed QP");
        Assert.Throws<ObjectDisposedException>(() => pair.A.PostReceive(3, other.Slice(0, 8)));

        pair.PdA.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pair.PdA.AllocateBuffer(4096), "register in a disposed PD");
        pair.DeviceA.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pair.DeviceA.QueryPort(), "query a disposed device");
        Assert.Throws<ObjectDisposedException>(() => pair.DeviceA.AllocateProtectionDomain());
    }

    [Test]
    public void DisposeFromAnotherThreadWhilePolling()
    {
        using var pair = RcPair.Loopback();
        using var started = new ManualResetEventSlim();
        Exception? pollerEnd = null;
        long polls = 0;
        var poller = new Thread(() =>
        {
            var wc = new WorkCompletion[16];
            started.Set();
            try
            {
                while (true)
                {
                    pair.CqA.Poll(wc);
                    polls++;
                }
            }
            catch (Exception e)
            {
                pollerEnd = e;
            }
        });
        poller.Start();
        started.Wait();
        Thread.Sleep(50);
        pair.DeviceA.Dispose();   // the CQ with it, while the poller is inside Poll
        Assert.That(poller.Join(TimeSpan.FromSeconds(10)), "the poller stopped");
        Assert.That(pollerEnd, Is.InstanceOf<ObjectDisposedException>(), $"after {polls} polls");
    }
}
