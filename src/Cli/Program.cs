using System.CommandLine;
using RdmaLease.Cli;

// rdma-lease: the library's command-line tool. Each command lives in its own file; `--json` gives scripts one JSON
// document (devices) or one JSON object per line (lease events) on standard output.
var root = new RootCommand("rdma-lease: RDMA devices, file leases and their breaks, as the library sees them")
{
    DevicesCommand.Create(),
    LeaseCommand.Create(),
};
return await root.Parse(args).InvokeAsync();
