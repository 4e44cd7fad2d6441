using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using RdmaLease.Hosting;

namespace RdmaLease.PmemStore;

// PmemStore serve|write|verify|verify-crash|snapshot|verify-snapshot (docs/pmem-store.md). Exit codes: 0 ok, 1 failed (records
// missing or corrupt, a client that could not store everything, a snapshot refused, an error), 2 bad command line or
// refused by the server.
public static class PmemStoreProgram
{
    /// <summary>Runs <c>serve</c>, <c>write</c>, <c>verify</c>, <c>snapshot</c> or <c>verify-snapshot</c> with its command line; returns the exit code.</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        try
        {
            if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
            {
                Console.WriteLine(Usage);
                return args.Length == 0 ? 2 : 0;
            }
            string[] rest = args[1..];
            switch (args[0])
            {
                case "serve":
                    return await ServeAsync(new CommandLine("serve", rest, new HashSet<string> { "size", "address", "port", "clients", "area-records", "device", "verify" }));
                case "write":
                    return await WriteAsync(new CommandLine("write", rest, new HashSet<string> { "server", "device", "client-id", "records", "window", "interval-ms", "timeout-s", "acked-log", "give-up-s" }));
                case "verify":
                    return Verify(new CommandLine("verify", rest, new HashSet<string> { "acked", "area-records" }));
                case "verify-crash":
                    return VerifyCrash(new CommandLine("verify-crash", rest, new HashSet<string> { "acked", "area-records" }));
                case "snapshot":
                    return SnapshotCommands.Snapshot(new CommandLine("snapshot", rest, SnapshotCommands.SnapshotOptions));
                case "verify-snapshot":
                    return SnapshotCommands.VerifySnapshot(new CommandLine("verify-snapshot", rest, SnapshotCommands.VerifyOptions));
                default:
                    throw new UsageException($"unknown command '{args[0]}': serve, write, verify, verify-crash, snapshot or verify-snapshot");
            }
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine("PmemStore: " + e.Message);
            Console.WriteLine(Usage);
            return 2;
        }
    }

    static async Task<int> ServeAsync(CommandLine cl)
    {
        uint clients = (uint)cl.Number("clients", 2, 1, 1024);
        ulong area = (ulong)cl.Number("area-records", 1024, 1, 1 << 20) * RecordFormat.Size;
        var options = new ServerOptions(Path.GetFullPath(cl.Operand("FILE")), new IPEndPoint(Address(cl.String("address") ?? "0.0.0.0"),
            (int)cl.Number("port", 7471, 0, 65535)), clients, area, [.. cl.All("verify").Select(Path.GetFullPath)]);
        if (cl.String("size") is not null && cl.Number("size", 0, 0, long.MaxValue) != options.FileSize)
            throw new UsageException($"serve: --size must be (clients + 1) * area-records * 4096 = {options.FileSize} (one area per client and a spare one), or left out");

        // No command-line configuration source: our own options are parsed above. RdmaLease:* comes from the environment
        // (RdmaLease__Device=...) or appsettings.json, and --device overrides the device.
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = [] });
        if (cl.String("device") is { } device)
            builder.Configuration["RdmaLease:Device"] = device;
        builder.Services.AddRdmaLease(builder.Configuration.GetSection("RdmaLease"));
        builder.Services.AddSingleton(options);
        builder.Services.AddHostedService<StoreService>();   // after AddRdmaLease: stopped before the context tears down
        using var host = builder.Build();
        await host.RunAsync();
        return Environment.ExitCode;
    }

    static async Task<int> WriteAsync(CommandLine cl)
    {
        if (cl.Operands.Count > 0)
            throw new UsageException($"write: unexpected operand '{cl.Operands[0]}'");
        string server = cl.Required("server");
        if (!IPEndPoint.TryParse(server, out var endpoint) || endpoint.Port == 0)
            throw new UsageException($"write: --server must be ADDRESS:PORT, got '{server}'");
        var options = new ClientOptions(endpoint, cl.String("device"), (uint)cl.Number("client-id", -1, 0, 1023),
            (int)cl.Number("records", 100, 1, 1 << 20), (int)cl.Number("window", 4, 1, 64),
            TimeSpan.FromMilliseconds(cl.Number("interval-ms", 0, 0, 60_000)), TimeSpan.FromSeconds(cl.Number("timeout-s", 300, 1, 86_400)),
            cl.String("acked-log"), cl.String("give-up-s") is null ? null : TimeSpan.FromSeconds(cl.Number("give-up-s", 0, 1, 86_400)));
        if (cl.String("client-id") is null)
            throw new UsageException("write: --client-id is required (it picks the client's area of the file)");
        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        try
        {
            return await new StoreClient(options, Console.Out).RunAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("PmemStore write: cancelled");
            return 1;
        }
        catch (Exception e) when (e is RdmaLease.Verbs.VerbsException or InvalidOperationException or FormatException)
        {
            Console.Error.WriteLine($"PmemStore write: {e.Message}");
            return 1;
        }
    }

    static int Verify(CommandLine cl) =>
        VerifyAgainstLogs(cl, "verify", (logs, area, records) => Verifier.Verify(logs, area, records, Console.Out).Ok);

    static int VerifyCrash(CommandLine cl) =>
        VerifyAgainstLogs(cl, "verify-crash", (logs, area, records) => CrashVerifier.Verify(logs, area, records, Console.Out).Ok);

    /// <summary>verify and verify-crash: FILE and its clients' acked logs, read and handed to <paramref name="verify"/>.</summary>
    static int VerifyAgainstLogs(CommandLine cl, string verb, Func<List<AckedLog>, ulong, Func<long, byte[]>, bool> verify)
    {
        string file = cl.Operand("FILE");
        var logs = cl.All("acked");
        if (logs.Count == 0)
            throw new UsageException($"{verb}: give at least one --acked LOG (written by 'PmemStore write --acked-log')");
        ulong area = (ulong)cl.Number("area-records", 1024, 1, 1 << 20) * RecordFormat.Size;
        try
        {
            var loaded = logs.Select(AckedLog.Load).ToList();
            using var handle = File.OpenHandle(file);
            return verify(loaded, area, Verifier.ReadFrom(handle)) ? 0 : 1;
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"PmemStore {verb}: {e.Message}");
            return 1;
        }
    }

    static IPAddress Address(string s) =>
        IPAddress.TryParse(s, out var a) ? a : throw new UsageException($"serve: --address must be an IP address, got '{s}'");

    const string Usage = """
        usage:
          PmemStore serve FILE [--address IP] [--port P] [--clients N] [--area-records R] [--device NAME] [--verify ACKED-LOG]...
          PmemStore write --server IP:PORT --client-id N [--records M] [--window W] [--interval-ms MS] [--timeout-s S] [--give-up-s S] [--device NAME] [--acked-log PATH]
          PmemStore verify FILE --acked ACKED-LOG... [--area-records R]
          PmemStore verify-crash FILE --acked ACKED-LOG... [--area-records R]
          PmemStore snapshot FILE DEST
          PmemStore verify-snapshot SNAPSHOT... --acked ACKED-LOG... --taken-at NS... [--area-records R]
        serve leases FILE (created with (N + 1) * R * 4096 bytes) on FS-DAX and serves it over rdma_cm until Ctrl+C/SIGTERM;
        write appends M records into client N's area with RDMA WRITE + FLUSH, across lease breaks; verify checks them;
        verify-crash checks a store whose server machine crashed: every acknowledged record intact, every other page
        empty, a whole record, or partial (counted, never taken for a record).
        snapshot reflinks the live FILE into the new file DEST (same XFS filesystem) while clients write; verify-snapshot
        checks each SNAPSHOT against the acked logs and its taken_at_ns (one --taken-at per SNAPSHOT, in order).
        """;
}
