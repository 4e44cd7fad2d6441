using System.Globalization;
using System.Net.Sockets;
using RdmaLease.Verbs;

namespace RdmaLease.PingPong;

// rdma-core's ibv_rc_pingpong on rdma-lease: with no host it is the server, with one the client; either side may be
// rdma-core's program. Same options, TCP exchange and output; exit code 1 on any failure, as there.
public static class PingPongProgram
{
    /// <summary>Runs ping-pong with ibv_rc_pingpong's command line; returns the exit code (0, or 1 on any failure).</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        PingPongOptions options;
        try
        {
            options = PingPongOptions.Parse(args);
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine("PingPong: " + e.Message);
            Console.WriteLine(PingPongOptions.Usage);
            return 1;
        }
        if (options.Help)
        {
            Console.WriteLine(PingPongOptions.Usage);
            return 0;
        }

        // The exchange itself may take this long once the TCP connection is up (rc_pingpong waits forever; a dead peer should not).
        var exchangeTimeout = TimeSpan.FromSeconds(60);
        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
        try
        {
            using var session = PingPongSession.Open(options);
            Console.WriteLine("  local address:  " + Describe(session.Local));
            QueuePairEndpoint remote;
            if (options.ServerName is null)
            {
                await using var stream = await TcpExchange.AcceptAsync(options.Port, cancel.Token);
                remote = await OutOfBandExchange.PingPongServerAsync(stream, session.Local, session.Connect, exchangeTimeout, cancel.Token);
            }
            else
            {
                await using var stream = await TcpExchange.ConnectAsync(options.ServerName, options.Port, cancel.Token);
                remote = await OutOfBandExchange.PingPongClientAsync(stream, session.Local, exchangeTimeout, cancel.Token);
            }
            Console.WriteLine("  remote address: " + Describe(remote));
            if (options.ServerName is not null)
                session.Connect(remote);

            TimeSpan elapsed = await session.RunAsync(sendFirst: options.ServerName is not null, cancel.Token);

            double usec = elapsed.TotalMicroseconds;
            long bytes = (long)options.Size * options.Iterations * 2;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{bytes} bytes in {usec / 1e6:F2} seconds = {bytes * 8.0 / usec:F2} Mbit/sec"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{options.Iterations} iters in {usec / 1e6:F2} seconds = {usec / options.Iterations:F2} usec/iter"));
            return 0;
        }
        catch (NotSupportedException e)
        {
            // The device's ODP quirk (docs/known-defects.md): rxe would corrupt this ODP transfer at this path MTU.
            Console.Error.WriteLine($"PingPong: refused: {e.Message}");
            Console.Error.WriteLine(options.OnDemandPaging
                ? $"PingPong: -o with -s {options.Size} at -m {options.Mtu.Bytes()} is not safe on this device; use -m 4096, a size of at most one MTU, or no -o"
                : "PingPong: the device does not support this");
            return 1;
        }
        catch (Exception e) when (e is PingPongException or VerbsException or WorkCompletionException or IOException or SocketException
                                      or TimeoutException or FormatException or ArgumentException or OperationCanceledException)
        {
            Console.Error.WriteLine("PingPong: " + e.Message);
            return 1;
        }
    }

    // rc_pingpong's "LID 0x%04x, QPN 0x%06x, PSN 0x%06x, GID %s" (the GID as inet_ntop prints an IPv6 address).
    static string Describe(QueuePairEndpoint e) =>
        $"LID 0x{e.Lid:x4}, QPN 0x{e.QueuePairNumber:x6}, PSN 0x{e.PacketSequenceNumber:x6}, GID {e.Gid.MapToIPv6()}";
}
