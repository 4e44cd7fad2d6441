using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using RdmaLease.Leases;
using RdmaLease.Verbs;

namespace RdmaLease.Hosting;

/// <summary>
/// The RDMA device, protection domain, files and leases of a hosted application, and the order they are torn down in.
/// Registered as a singleton by <c>AddRdmaLease</c>; the hosted service opens it at start and disposes it at shutdown.
/// </summary>
/// <remarks>
/// Objects the application creates and hands to <see cref="Own{T}"/> (queue pairs, completion queues, leased regions,
/// connections...) are disposed at shutdown newest first, before the files and leases opened through this context,
/// then the protection domain and the device: so regions are deregistered before their leases are released, and
/// queue pairs destroyed before the domain. An application may dispose what it owns earlier itself: disposing twice
/// does nothing.
/// </remarks>
public sealed class RdmaLeaseContext : IDisposable
{
    readonly ILogger<RdmaLeaseContext> _logger;
    readonly Lock _gate = new();
    readonly List<IDisposable> _owned = [];
    Device? _device;
    ProtectionDomain? _pd;
    bool _stopped;

    /// <summary>Made by dependency injection.</summary>
    public RdmaLeaseContext(IOptions<RdmaLeaseOptions> options, ILogger<RdmaLeaseContext> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        Options = options.Value;
        _logger = logger;
    }

    /// <summary>The options bound from configuration.</summary>
    public RdmaLeaseOptions Options { get; }

    /// <summary>The device (opened when the host starts).</summary>
    /// <exception cref="InvalidOperationException">The host has not started yet, or has stopped.</exception>
    public Device Device => _device ?? throw NotRunning();

    /// <summary>The protection domain the application's objects share (allocated when the host starts).</summary>
    /// <exception cref="InvalidOperationException">The host has not started yet, or has stopped.</exception>
    public ProtectionDomain ProtectionDomain => _pd ?? throw NotRunning();

    /// <summary>Objects waiting to be disposed at shutdown (disposed ones are dropped as new ones are added).</summary>
    public int OwnedCount
    {
        get
        {
            lock (_gate)
                return _owned.Count;
        }
    }

    /// <summary>Opens the device and allocates the protection domain, and starts lease-break delivery.</summary>
    internal void Start()
    {
        lock (_gate)
        {
            if (_stopped)
                throw new InvalidOperationException("the RDMA context has been shut down; it cannot start again");
            if (_device is not null)
                return;
            if (Options.LeaseSignalOffset is { } offset)
                LeaseSignals.UseSignal(Tmds.Linux.LibC.SIGRTMIN + offset);
            LeaseSignals.Start();   // now, so the first break does not wait for the JIT
            string name = string.IsNullOrEmpty(Options.Device) ? OnlyDevice() : Options.Device;
            var device = Device.Open(name, new DeviceOptions { OdpQuirk = Options.OdpQuirk });
            try
            {
                _pd = device.AllocateProtectionDomain();
            }
            catch
            {
                device.Dispose();
                throw;
            }
            _device = device;
            Log.Started(_logger, device.Name, device.Driver, Options.Port, Options.GidIndex, LeaseSignals.SignalNumber);
        }
    }

    static string OnlyDevice()
    {
        var names = Device.List();
        return names.Count switch
        {
            1 => names[0],
            0 => throw new InvalidOperationException(
                "no RDMA device on this machine (ibv_devices lists none): load a driver or add a soft-RoCE device (rdma link add rxe0 type rxe netdev IFACE), then set RdmaLease:Device"),
            _ => throw new InvalidOperationException(
                $"{names.Count} RDMA devices ({string.Join(", ", names)}): set RdmaLease:Device to the one to use"),
        };
    }

    /// <summary>Hands <paramref name="resource"/> to the host: it is disposed at shutdown, newest first.</summary>
    /// <returns><paramref name="resource"/>.</returns>
    /// <exception cref="InvalidOperationException">The host has shut down (the resource is disposed at once).</exception>
    public T Own<T>(T resource) where T : class, IDisposable
    {
        ArgumentNullException.ThrowIfNull(resource);
        lock (_gate)
        {
            if (!_stopped)
            {
                _owned.RemoveAll(IsFinished);   // a long-running service re-leasing after breaks must not grow this list
                _owned.Add(resource);
                return resource;
            }
        }
        resource.Dispose();
        throw NotRunning();
    }

    static bool IsFinished(IDisposable o) => o switch
    {
        Verbs.Internal.VerbsObject v => v.IsDisposed,
        FileLease l => !l.IsActive && l.ReleasedTimestamp != 0,
        LeasedMemoryRegion r => r.IsDeregistered,
        _ => false,
    };

    /// <summary>Opens an FS-DAX file (<see cref="DaxFile.Open"/>), owned by the host.</summary>
    public DaxFile OpenFile(string path, DaxFileOptions? options = null) => Own(DaxFile.Open(path, options));

    /// <summary>
    /// Acquires a lease on <paramref name="file"/> (<see cref="DaxFile.AcquireLease"/>), owned by the host, whose break is
    /// logged with its signal-to-release time and any teardown error.
    /// </summary>
    public FileLease AcquireLease(DaxFile file, LeaseOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        var lease = Own(file.AcquireLease(options));
        lease.BreakRequested += OnBreak;
        Log.LeaseAcquired(_logger, file.Path, lease.Mechanism.ToString());
        return lease;
    }

    void OnBreak(object? sender, LeaseBreakEventArgs e)
    {
        var lease = e.Lease;
        Log.LeaseBroken(_logger, lease.File.Path, lease.BreakToRelease?.TotalMilliseconds ?? double.NaN);
        foreach (var error in lease.TeardownErrors)
            Log.TeardownError(_logger, lease.File.Path, error);
    }

    /// <summary>Disposes everything owned (newest first), then the protection domain and the device. Idempotent.</summary>
    internal void Stop()
    {
        IDisposable[] owned;
        lock (_gate)
        {
            if (_stopped)
                return;
            _stopped = true;
            owned = [.. _owned];
            _owned.Clear();
        }
        long start = Stopwatch.GetTimestamp();
        Log.ShuttingDown(_logger, owned.Length);
        var order = new List<IDisposable>(owned.Length + 2);
        for (int i = owned.Length - 1; i >= 0; i--)
            order.Add(owned[i]);
        if (_pd is not null)
            order.Add(_pd);
        if (_device is not null)
            order.Add(_device);
        for (int i = 0; i < order.Count; i++)
        {
            if (Stopwatch.GetElapsedTime(start) > Options.ShutdownTimeout)
            {
                Log.ShutdownTimedOut(_logger, Options.ShutdownTimeout.TotalMilliseconds, order.Count - i);
                break;
            }
            try
            {
                order[i].Dispose();
                Log.Disposed(_logger, order[i].ToString() ?? order[i].GetType().Name);
            }
            catch (Exception e)
            {
                Log.DisposeFailed(_logger, order[i].ToString() ?? order[i].GetType().Name, e);
            }
        }
        _pd = null;
        _device = null;
        Log.ShutDown(_logger, Stopwatch.GetElapsedTime(start).TotalMilliseconds, LeaseDiagnostics.ActiveLeases, VerbsMetrics.RegisteredBytes);
    }

    /// <summary>Same as the host's shutdown.</summary>
    public void Dispose() => Stop();

    static InvalidOperationException NotRunning() =>
        new("the RDMA context is not running: it starts with the host (IHost.StartAsync) and stops at shutdown");
}
