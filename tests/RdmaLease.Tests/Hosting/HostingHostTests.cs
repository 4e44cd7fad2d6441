using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using RdmaLease.Hosting;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Hosting;

/// <summary>The Generic Host integration where no RDMA device is needed: configuration, validation, failures at start.</summary>
public class HostingHostTests
{
    static IHost Build(Dictionary<string, string?> settings)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Configuration.AddInMemoryCollection(settings);
        builder.Services.AddRdmaLease(builder.Configuration.GetSection("RdmaLease"));
        return builder.Build();
    }

    [Test]
    public void OptionsAreBoundFromConfiguration()
    {
        using var host = Build(new()
        {
            ["RdmaLease:Device"] = "rxe9",
            ["RdmaLease:Port"] = "2",
            ["RdmaLease:GidIndex"] = "3",
            ["RdmaLease:OdpQuirk"] = "Off",
            ["RdmaLease:LeaseSignalOffset"] = "7",
            ["RdmaLease:ShutdownTimeout"] = "00:00:04",
        });
        var o = host.Services.GetRequiredService<IOptions<RdmaLeaseOptions>>().Value;
        Assert.Multiple(() =>
        {
            Assert.That(o.Device, Is.EqualTo("rxe9"));
            Assert.That(o.Port, Is.EqualTo(2));
            Assert.That(o.GidIndex, Is.EqualTo(3));
            Assert.That(o.OdpQuirk, Is.EqualTo(OdpQuirkMode.Off));
            Assert.That(o.LeaseSignalOffset, Is.EqualTo(7));
            Assert.That(o.ShutdownTimeout, Is.EqualTo(TimeSpan.FromSeconds(4)));
            Assert.That(host.Services.GetServices<IHostedService>().Count(s => s.GetType().Name == "RdmaLeaseHostedService"), Is.EqualTo(1));
        });
    }

    [Test]
    public void AddingTwiceRegistersOneHostedService()
    {
        var services = new ServiceCollection().AddLogging();
        services.AddRdmaLease(_ => { });
        services.AddRdmaLease(_ => { });
        using var sp = services.BuildServiceProvider();
        Assert.That(sp.GetServices<IHostedService>().Count(), Is.EqualTo(1));
    }

    [TestCase("RdmaLease:Port", "0")]
    [TestCase("RdmaLease:GidIndex", "-1")]
    [TestCase("RdmaLease:ShutdownTimeout", "00:00:00")]
    [TestCase("RdmaLease:LeaseSignalOffset", "40")]
    public void InvalidOptionsStopTheHostAtStart(string key, string value)
    {
        using var host = Build(new() { ["RdmaLease:Device"] = "rxe0", [key] = value });
        var e = Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.That(e!.Message, Does.Contain("RdmaLease options are invalid"));
    }

    [Test]
    public void AMissingDeviceFailsTheStartNamingIt()
    {
        using var host = Build(new() { ["RdmaLease:Device"] = "no-such-rdma-device" });
        var e = Assert.CatchAsync(() => host.StartAsync());
        Assert.That(e, Is.InstanceOf<ArgumentException>().Or.InstanceOf<VerbsException>().Or.InstanceOf<NotSupportedException>().Or.InstanceOf<DllNotFoundException>());
        // Without libibverbs the resolver's guidance names the package to install; without the kernel's verbs (this host)
        // the module to load; with both, the device is named.
        Assert.That(e!.Message, Does.Contain("no-such-rdma-device").Or.Contain("libibverbs").Or.Contain("ib_uverbs"));
        var context = host.Services.GetRequiredService<RdmaLeaseContext>();
        Assert.That(() => context.Device, Throws.InvalidOperationException.With.Message.Contains("not running"));
    }

    [Test]
    public void TheContextRefusesObjectsAfterShutdownAndDisposesThem()
    {
        using var host = Build(new() { ["RdmaLease:Device"] = "unused" });
        var context = host.Services.GetRequiredService<RdmaLeaseContext>();
        context.Dispose();
        var late = new Probe();
        Assert.That(() => context.Own(late), Throws.InvalidOperationException);
        Assert.That(late.Disposed, Is.True, "a resource handed to a stopped context is disposed, not leaked");
    }

    [Test]
    public void OwnedObjectsAreDisposedNewestFirstAndAFailureDoesNotStopTheRest()
    {
        var services = new ServiceCollection().AddLogging();
        services.AddRdmaLease(o => o.Device = "unused");
        using var sp = services.BuildServiceProvider();
        var context = sp.GetRequiredService<RdmaLeaseContext>();
        var order = new List<int>();
        var a = context.Own(new Probe(order, 1));
        context.Own(new Probe(order, 2, fail: true));
        context.Own(new Probe(order, 3));
        Assert.That(context.OwnedCount, Is.EqualTo(3));
        context.Dispose();
        context.Dispose();
        Assert.That(order, Is.EqualTo(new[] { 3, 2, 1 }));
        Assert.That(a.Disposed, Is.True);
    }

    sealed class Probe(List<int>? order = null, int id = 0, bool fail = false) : IDisposable
    {
        public bool Disposed { get; private set; }

        public void Dispose()
        {
            if (Disposed)
                return;
            Disposed = true;
            order?.Add(id);
            if (fail)
                throw new InvalidOperationException("injected");
        }
    }
}
