using System.CommandLine;
using RdmaLease.PmemStore;

namespace RdmaLease.Cli;

/// <summary>
/// <c>rdma-lease store serve|write|verify|snapshot|verify-snapshot ...</c>: samples/PmemStore itself (one
/// implementation): a hosted server leasing an FS-DAX file, clients appending records with RDMA WRITE + FLUSH across
/// lease breaks, reflink snapshots of the live file, and the verifiers (docs/pmem-store.md). Its command line is the
/// sample's, handed over untouched.
/// </summary>
internal static class StoreCommand
{
    public const string Name = "store";

    public static Task<int> RunAsync(string[] argsAfterCommand) => PmemStoreProgram.RunAsync(argsAfterCommand);

    /// <summary>The command as help lists it (invocation goes through <see cref="RunAsync"/>).</summary>
    public static Command Create() =>
        new(Name, "The pmem store: `store serve FILE`, `store write --server IP:PORT --client-id N`, `store verify FILE --acked LOG`, `store snapshot FILE DEST` (`rdma-lease store -h`)");
}
