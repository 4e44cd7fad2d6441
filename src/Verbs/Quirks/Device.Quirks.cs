using System.Runtime.InteropServices;
using RdmaLease.Interop;
using Tmds.Linux;

namespace RdmaLease.Verbs;

/// <summary>How to open a <see cref="Device"/>.</summary>
public sealed record DeviceOptions
{
    /// <summary>
    /// How the device's known On-Demand-Paging defects are handled: by default (<see cref="OdpQuirkMode.Auto"/>) only
    /// where the library knows one (the rxe driver); <see cref="OdpQuirkMode.Probe"/> measures the device instead,
    /// <see cref="OdpQuirkMode.Off"/> turns the protection off. See docs/known-defects.md.
    /// </summary>
    public OdpQuirkMode OdpQuirk { get; init; } = OdpQuirkMode.Auto;
}

// The device's quirks (Quirks/OdpQuirk.cs): chosen once, when the device is opened.
public sealed unsafe partial class Device
{
    /// <summary>
    /// The libibverbs provider driving the device, e.g. <c>rxe</c> or <c>mlx5</c> (the provider library
    /// <c>lib&lt;driver&gt;-rdmav&lt;N&gt;.so</c> that libibverbs chose for it); empty when it cannot be told.
    /// </summary>
    public string Driver { get; }

    /// <summary>
    /// The On-Demand-Paging quirk in force (<see cref="DeviceOptions.OdpQuirk"/>), null when none is: then transfers
    /// touching ODP regions are posted as they are, and the post path does nothing more for them than test this.
    /// </summary>
    public OdpQuirk? OdpQuirk { get; private set; }

    /// <summary>
    /// Runs the ODP integrity probe now: two RC queue pairs on this device connected to each other at <paramref name="pathMtu"/>;
    /// RDMA WRITE into and out of, RDMA READ out of and into, SEND into and out of an ODP region over a shared memfd mapping,
    /// 4 path MTUs per work request at a page-aligned and a mid-page offset, every byte compared; when anything is wrong,
    /// the same split into one path MTU per work request. Takes tens to hundreds of milliseconds on soft-RoCE under emulation.
    /// Nothing runs it implicitly except a device opened with <see cref="OdpQuirkMode.Probe"/>, whose rule at that MTU this
    /// result then replaces (for queue pairs connected from now on). Nothing is written to disk.
    /// </summary>
    /// <param name="pathMtu">The path MTU of the queue pairs that will move the data.</param>
    /// <param name="port">The port the probe connects its queue pairs on.</param>
    /// <exception cref="NotSupportedException">The device has no ODP support.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="pathMtu"/> exceeds the port's active MTU (no QP can use it).</exception>
    public OdpIntegrityResult CheckOdpIntegrity(Mtu pathMtu, byte port = 1)
    {
        _ = pathMtu.Bytes();
        if (!Attributes.Odp.Supported)
            throw new NotSupportedException($"{this} does not support On-Demand Paging; there is nothing to check.");
        var active = QueryPort(port).ActiveMtu;
        if (pathMtu > active)
            throw new ArgumentOutOfRangeException(nameof(pathMtu), pathMtu,
                $"{this} port {port} has active MTU {active.Bytes()}; no queue pair on it can use path MTU {pathMtu.Bytes()}.");
        var result = OdpIntegrityProbe.Run(this, pathMtu, port);
        OdpQuirk?.Record(result);
        return result;
    }

    void ApplyQuirks(DeviceOptions options)
    {
        if (OdpQuirk.Choose(options.OdpQuirk, Driver, OdpQuirk.KernelRelease, Attributes.Odp.Supported) is not { } choice)
            return;
        var quirk = new OdpQuirk(this, choice.Mode, choice.Known);
        if (choice.Mode == OdpQuirkMode.Probe)
            quirk.ProbeActivePorts();   // before OdpQuirk is set: the probe's own queue pairs see none
        OdpQuirk = quirk;
    }

    /// <summary>The provider library that holds the context's poll_cq: libibverbs' own choice of driver.</summary>
    static string DriverOf(ibv_context* context)
    {
        Dl_info info;
        if (LibC.dladdr(context->ops.poll_cq, &info) == 0 || info.dli_fname == null)
            return "";
        return DriverFromProviderLibrary(Path.GetFileName(Marshal.PtrToStringUTF8((nint)info.dli_fname)) ?? "");
    }

    /// <summary>"librxe-rdmav34.so" is rxe; anything else (libibverbs itself, with static providers) is "".</summary>
    internal static string DriverFromProviderLibrary(string fileName) =>
        fileName.StartsWith("lib", StringComparison.Ordinal) && fileName.IndexOf("-rdmav", StringComparison.Ordinal) is int end and > 3
            ? fileName[3..end] : "";
}
