using System.CommandLine;
using RdmaLease.PingPong;

namespace RdmaLease.Cli;

/// <summary>
/// <c>rdma-lease pingpong [ibv_rc_pingpong's options] [HOST]</c>: samples/PingPong itself (one implementation), wire-compatible
/// with rdma-core's ibv_rc_pingpong. Its command line is ibv_rc_pingpong's, not ours, so it is handed over untouched.
/// </summary>
internal static class PingPongCommand
{
    public const string Name = "pingpong";

    /// <summary>Runs the sample with everything after <c>pingpong</c>, before our parser could reinterpret its short options.</summary>
    public static Task<int> RunAsync(string[] argsAfterCommand) => PingPongProgram.RunAsync(argsAfterCommand);

    /// <summary>The command as help lists it (invocation goes through <see cref="RunAsync"/>).</summary>
    public static Command Create() =>
        new(Name, "Ping-pong with ibv_rc_pingpong's options and wire format: server without HOST, client with it (`rdma-lease pingpong -h` lists the options)");
}
