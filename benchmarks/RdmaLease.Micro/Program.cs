// Microbenchmarks of the post path's managed work, which needs no device: building and checking a work request
// (QueuePair.MakeTransfer, the checks PostWrite runs), encoding it into ibv_send_wr/ibv_sge (FillPieces, FillOne), the
// segment and range checks, and the encodings peers exchange. docs/benchmarks.md ("Per-call costs") has the command
// and a summary. BenchmarkSwitcher: pass --filter '*' (or a class name) and BenchmarkDotNet's other options.
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

var config = DefaultConfig.Instance
    // In process: BenchmarkDotNet's own rebuild of the project would miss the native libraries ./build.sh builds.
    // ShortRun (3 warm-ups, 3 iterations): minutes, not an hour, and enough for calls of tens of nanoseconds.
    .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance).WithId("short-inprocess"))
    .WithArtifactsPath(Path.Combine("artifacts", "BenchmarkDotNet"));
BenchmarkSwitcher.FromAssembly(typeof(RdmaLease.Micro.PostPathBenchmarks).Assembly).Run(args, config);
