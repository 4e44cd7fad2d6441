using System.CommandLine;
using RdmaLease.Cli;

// rdma-lease: the library's command-line tool. Each command lives in its own file; `--json` gives scripts one JSON
// document (devices) or one JSON object per line (lease events) on standard output.
if (args.Length > 0 && args[0] == PingPongCommand.Name)
    return await PingPongCommand.RunAsync(args[1..]);   // ibv_rc_pingpong's own command line
var root = new RootCommand("rdma-lease: RDMA devices, file leases and their breaks, ping-pong, as the library sees them")
{
    DevicesCommand.Create(),
    LeaseCommand.Create(),
    PingPongCommand.Create(),
};
return await root.Parse(args).InvokeAsync();
