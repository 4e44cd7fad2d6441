using System.CommandLine;
using RdmaLease.Cli;

// rdma-lease: the library's command-line tool. Each command lives in its own file; `--json` gives scripts one JSON
// document (devices) or one JSON object per line (lease events) on standard output.
// pingpong and store take their samples' own command lines (ibv_rc_pingpong's short options, PmemStore's): handed over
// before our parser could reinterpret them.
if (args.Length > 0 && args[0] == PingPongCommand.Name)
    return await PingPongCommand.RunAsync(args[1..]);
if (args.Length > 0 && args[0] == StoreCommand.Name)
    return await StoreCommand.RunAsync(args[1..]);
var root = new RootCommand("rdma-lease: RDMA devices, file leases and their breaks, ping-pong, the pmem store")
{
    DevicesCommand.Create(),
    LeaseCommand.Create(),
    PingPongCommand.Create(),
    StoreCommand.Create(),
};
return await root.Parse(args).InvokeAsync();
