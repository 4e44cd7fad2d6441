using System.Runtime.InteropServices;
using RdmaLease.Interop;
using Tmds.Linux;

namespace RdmaLease.Verbs;

// NOTE for the merge with branch i10-odp-quirk: that branch defines the public Device.Driver (Quirks/Device.Quirks.cs,
// set in the constructor) the same way; this file is then deleted in favour of it (the duplicate member fails the build
// until it is).
public sealed unsafe partial class Device
{
    string? _driver;

    /// <summary>
    /// The libibverbs provider driving the device, e.g. <c>rxe</c> or <c>mlx5</c>: the provider library
    /// (<c>lib&lt;driver&gt;-rdmav&lt;N&gt;.so</c>) that holds the context's poll_cq; empty when it cannot be told.
    /// </summary>
    internal string Driver
    {
        get
        {
            if (_driver is { } known)
                return known;
            using var ctx = Handle.Enter();
            Dl_info info;
            string file = LibC.dladdr(((ibv_context*)ctx.Pointer)->ops.poll_cq, &info) != 0 && info.dli_fname != null
                ? Path.GetFileName(Marshal.PtrToStringUTF8((nint)info.dli_fname)) ?? "" : "";
            // "librxe-rdmav34.so" is rxe; anything else (libibverbs itself, with static providers) is "".
            return _driver = file.StartsWith("lib", StringComparison.Ordinal) && file.IndexOf("-rdmav", StringComparison.Ordinal) is int end and > 3
                ? file[3..end] : "";
        }
    }
}
