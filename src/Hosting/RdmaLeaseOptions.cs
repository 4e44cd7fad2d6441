using RdmaLease.Verbs;

namespace RdmaLease.Hosting;

/// <summary>
/// What <see cref="RdmaLeaseServiceCollectionExtensions.AddRdmaLease(Microsoft.Extensions.DependencyInjection.IServiceCollection, Microsoft.Extensions.Configuration.IConfiguration)"/>
/// binds from configuration (a section such as <c>"RdmaLease": { "Device": "rxe0", "GidIndex": 1 }</c>).
/// </summary>
public sealed class RdmaLeaseOptions
{
    /// <summary>The RDMA device to open (<c>ibv_devices</c> lists them). Null or empty: the only device there is.</summary>
    public string? Device { get; set; }

    /// <summary>The device port connections use.</summary>
    public byte Port { get; set; } = 1;

    /// <summary>The GID index connections send from (on RoCE, the entry of the address to use; <c>rdma-lease devices</c> lists them).</summary>
    public int GidIndex { get; set; }

    /// <summary>How the device's known ODP defect is handled (docs/known-defects.md).</summary>
    public OdpQuirkMode OdpQuirk { get; set; } = OdpQuirkMode.Auto;

    /// <summary>The lease-break signal as an offset from SIGRTMIN (null: the library's default, SIGRTMIN+5).</summary>
    public int? LeaseSignalOffset { get; set; }

    /// <summary>How long shutdown may take to tear everything down before it reports what is left.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(10);
}
