using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using RdmaLease.Hosting;
using RdmaLease.Leases;
using RdmaLease.Tests.Verbs;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Hosting;

/// <summary>
/// The Generic Host on rxe and FS-DAX: a shutdown tears everything down (checked with the kernel's own lists), a break is
/// logged, and the meters count what happened.
/// </summary>
[Category("Guest")]
[NonParallelizable]   // the meters are process-wide
public class HostingGuestTests
{
    const AccessFlags RemoteWritable = AccessFlags.LocalWrite | AccessFlags.RemoteWrite;
    static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    static IHost BuildHost()
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["RdmaLease:Device"] = "rxelo", ["RdmaLease:GidIndex"] = "1" });
        builder.Logging.AddFakeLogging();
        builder.Services.AddRdmaLease(builder.Configuration.GetSection("RdmaLease"));
        return builder.Build();
    }

    [Test]
    public async Task StoppingTheHostDeregistersReleasesAndDestroysEverythingItOwns()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        int pds = KernelView.RdmaResources("pd").Count, qps = KernelView.RdmaResources("qp").Count, mrs = KernelView.RdmaResources("mr").Count;
        int leases = KernelView.OwnLeases().Count;
        using var host = BuildHost();
        await host.StartAsync();
        var context = host.Services.GetRequiredService<RdmaLeaseContext>();
        var file = context.OpenFile(dir.File("data"), new DaxFileOptions { Size = 1 << 20 });
        var lease = context.AcquireLease(file);
        var region = context.Own(context.ProtectionDomain.Register(lease, RemoteWritable));
        var cq = context.Own(context.Device.CreateCompletionQueue(16));
        var qp = context.Own(context.ProtectionDomain.CreateQueuePair(new QueuePairOptions { SendCompletionQueue = cq, ReceiveCompletionQueue = cq }));
        region.AttachQueuePair(qp);
        Assert.Multiple(() =>
        {
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Contain(region.RemoteKey));
            Assert.That(KernelView.RdmaResources("qp"), Has.Count.EqualTo(qps + 1));
            Assert.That(KernelView.OwnLeases(), Has.Count.EqualTo(leases + 1));
            Assert.That(LeaseDiagnostics.ActiveLeases, Is.GreaterThanOrEqualTo(1));
        });

        await host.StopAsync();

        Assert.Multiple(() =>
        {
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(region.RemoteKey), "the region outlived the host");
            Assert.That(KernelView.RdmaResources("mr"), Has.Count.EqualTo(mrs));
            Assert.That(KernelView.RdmaResources("qp"), Has.Count.EqualTo(qps), "a QP outlived the host");
            Assert.That(KernelView.RdmaResources("pd"), Has.Count.EqualTo(pds), "the context's PD outlived the host");
            Assert.That(KernelView.OwnLeases(), Has.Count.EqualTo(leases), "the lease outlived the host");
            Assert.That(KernelView.MappingsOf(file.Path), Is.Empty);
            Assert.That(KernelView.DescriptorsOf(file.Path), Is.Empty);
            Assert.That(lease.IsActive, Is.False);
            Assert.That(region.IsDeregistered, Is.True);
            Assert.That(() => context.Device, Throws.InvalidOperationException);
        });
        var log = host.Services.GetFakeLogCollector().GetSnapshot();
        Assert.That(log.Any(r => r.Message.StartsWith("Shut down in", StringComparison.Ordinal)), Is.True, string.Join("\n", log.Select(r => r.Message)));
        Assert.That(log.Where(r => r.Level >= LogLevel.Error), Is.Empty, "no teardown step failed");
    }

    [Test]
    public async Task ABreakOfALeaseTakenThroughTheHostIsLoggedAndMeasured()
    {
        using var dir = CreateTempDir("/mnt/xfs");
        string path = dir.File("data");
        using var host = BuildHost();
        await host.StartAsync();
        var context = host.Services.GetRequiredService<RdmaLeaseContext>();
        using var breaks = new MetricCollector<double>(null, LeaseDiagnostics.MeterName, "rdmalease.leases.break_to_release");
        using var active = new MetricCollector<long>(null, LeaseDiagnostics.MeterName, "rdmalease.leases.active");
        using var broken = new MetricCollector<long>(null, LeaseDiagnostics.MeterName, "rdmalease.leases.breaks");
        broken.RecordObservableInstruments();
        long breaksBefore = broken.LastMeasurement!.Value;

        var file = context.OpenFile(path, new DaxFileOptions { Size = 64 * 1024 });
        var lease = context.AcquireLease(file);
        var region = context.Own(context.ProtectionDomain.Register(lease, RemoteWritable));
        active.RecordObservableInstruments();
        long activeWhileHeld = active.LastMeasurement!.Value;

        var p = RunProbe(Generous, "truncate", path, "0");
        Assert.That(p.Ok, Is.True, p.Output);
        Assert.That(SpinWait.SpinUntil(() => host.Services.GetFakeLogCollector().GetSnapshot().Any(r => r.Level == LogLevel.Warning
            && r.Message.Contains("broken by another process", StringComparison.Ordinal)), Generous), Is.True, "the break was not logged");
        active.RecordObservableInstruments();
        broken.RecordObservableInstruments();
        Assert.Multiple(() =>
        {
            Assert.That(region.IsDeregistered, Is.True);
            Assert.That(activeWhileHeld - active.LastMeasurement!.Value, Is.EqualTo(1), "the active-leases gauge went down by the broken lease");
            Assert.That(broken.LastMeasurement!.Value - breaksBefore, Is.EqualTo(1));
            Assert.That(breaks.GetMeasurementSnapshot(), Has.Count.EqualTo(1), "one signal-to-release measurement per break");
            Assert.That(breaks.LastMeasurement!.Value, Is.GreaterThan(0).And.LessThan(FileLease.LeaseBreakTime.TotalMilliseconds));
            Assert.That(breaks.Instrument?.Unit, Is.EqualTo("ms"));
        });
        await host.StopAsync();
    }

    [Test]
    public void TheVerbsMeterCountsRegisteredBytesCompletionsErrorsAndRevokedPosts()
    {
        using var bytes = new MetricCollector<long>(null, VerbsMetrics.MeterName, "rdmalease.verbs.registered_bytes");
        using var completions = new MetricCollector<long>(null, VerbsMetrics.MeterName, "rdmalease.verbs.completions");
        using var errors = new MetricCollector<long>(null, VerbsMetrics.MeterName, "rdmalease.verbs.error_completions");
        using var revoked = new MetricCollector<long>(null, VerbsMetrics.MeterName, "rdmalease.verbs.revoked_posts");
        long Read(MetricCollector<long> c)
        {
            c.RecordObservableInstruments();
            return c.LastMeasurement!.Value;
        }

        using var pair = RcPair.Loopback();
        long bytes0 = Read(bytes), completions0 = Read(completions), errors0 = Read(errors), revoked0 = Read(revoked);
        var local = pair.PdA.AllocateBuffer(64 * 1024, RemoteWritable);
        using var remote = pair.PdB.AllocateBuffer(4096, RemoteWritable);
        Assert.That(Read(bytes) - bytes0, Is.EqualTo(64 * 1024 + 4096));

        Span<WorkCompletion> wc = stackalloc WorkCompletion[4];
        pair.A.PostWrite(1, local.Slice(0, 64), remote.ToRemote());
        pair.A.PostWrite(2, local.Slice(64, 64), remote.ToRemote());
        int seen = 0;
        var deadline = DateTime.UtcNow + Generous;
        while (seen < 2 && DateTime.UtcNow < deadline)
            seen += pair.CqA.Poll(wc);
        Assert.That(seen, Is.EqualTo(2));
        Assert.That(Read(completions) - completions0, Is.EqualTo(2));
        Assert.That(Read(errors) - errors0, Is.Zero);

        local.Revoke(new InvalidOperationException("revoked by the test"));
        Assert.That(() => pair.A.PostWrite(3, local.Slice(0, 64), remote.ToRemote()), Throws.InvalidOperationException);
        Assert.That(Read(revoked) - revoked0, Is.EqualTo(1));

        // A write with an rkey nobody registered: a remote access error completion.
        using var other = pair.PdA.AllocateBuffer(4096, RemoteWritable);
        pair.A.PostWrite(4, other.Slice(0, 64), remote.ToRemote() with { RemoteKey = remote.RemoteKey ^ 0x5a5a00 });
        seen = 0;
        while (seen < 1 && DateTime.UtcNow < deadline)
            seen += pair.CqA.Poll(wc);
        Assert.That(seen, Is.EqualTo(1));
        Assert.That(wc[0].IsSuccess, Is.False, wc[0].ToString());
        Assert.That(Read(errors) - errors0, Is.EqualTo(1));

        local.Dispose();
        Assert.That(Read(bytes) - bytes0, Is.EqualTo(4096 + 4096), "a deregistered region leaves the gauge");
    }
}
