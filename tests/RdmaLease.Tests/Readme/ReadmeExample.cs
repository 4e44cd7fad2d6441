using RdmaLease.Leases;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Readme;

/// <summary>
/// The README's "What using it looks like" example, compiled here: <see cref="ReadmeExampleTests"/> checks that the
/// README's code block is exactly the region below and runs it in the guest against rxe and FS-DAX.
/// </summary>
static class ReadmeExample
{
    /// <summary>Runs the example on a file at <paramref name="path"/>; returns what it would give peers.</summary>
    public static RemoteRegion Run(string path)
    {
        #region readme
        using var device = Device.Open("rxelo");
        using var pd = device.AllocateProtectionDomain();
        using var file = DaxFile.Open(path, new DaxFileOptions { Size = 1 << 20 });   // a file on FS-DAX, mapped MAP_SYNC
        using var lease = file.AcquireLease();                 // a write delegation (F_SETDELEG) or lease
        using var region = pd.Register(lease, AccessFlags.LocalWrite | AccessFlags.RemoteWrite);  // ODP: nothing pinned
        RemoteRegion forPeers = region.ToRemote();             // address, length, rkey (+ limits the device needs)
        lease.Broken.Register(() => Console.WriteLine("truncated: region already deregistered, lease given back"));
        #endregion
        return forPeers;
    }
}
