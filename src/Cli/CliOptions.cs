using System.CommandLine;

namespace RdmaLease.Cli;

/// <summary>Options several commands share.</summary>
internal static class CliOptions
{
    public static Option<bool> Json() => new("--json") { Description = "Write JSON for scripts instead of text" };
}
