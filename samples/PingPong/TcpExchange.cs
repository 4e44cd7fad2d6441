using System.Net;
using System.Net.Sockets;

namespace RdmaLease.PingPong;

/// <summary>ibv_rc_pingpong's TCP side: the server accepts one connection on every address of the port, the client tries
/// each address of the host once.</summary>
static class TcpExchange
{
    /// <summary>Waits (without a time limit, as rc_pingpong does) for one client; the listener is closed once it came.</summary>
    public static async Task<NetworkStream> AcceptAsync(int port, CancellationToken cancellationToken)
    {
        var listener = Listen(port);
        try
        {
            listener.Start(backlog: 1);
            var socket = await listener.AcceptSocketAsync(cancellationToken).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch (SocketException e)
        {
            throw new PingPongException($"Couldn't listen to port {port}: {e.Message} ({e.SocketErrorCode})", e);
        }
        finally
        {
            listener.Stop();
        }
    }

    // IPv6 and IPv4 on one socket where the kernel has IPv6, as getaddrinfo(NULL, port, AI_PASSIVE) gives rc_pingpong.
    static TcpListener Listen(int port)
    {
        if (Socket.OSSupportsIPv6)
        {
            var listener = new TcpListener(IPAddress.IPv6Any, port);
            listener.Server.DualMode = true;
            return listener;
        }
        return new TcpListener(IPAddress.Any, port);
    }

    public static async Task<NetworkStream> ConnectAsync(string host, int port, CancellationToken cancellationToken)
    {
        IPAddress[] addresses;
        try
        {
            addresses = IPAddress.TryParse(host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(host, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            throw new PingPongException($"{e.Message} for {host}:{port}", e);
        }
        var failures = new List<string>();
        foreach (var address in addresses)
        {
            var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync(address, port, cancellationToken).ConfigureAwait(false);
                socket.NoDelay = true;
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch (SocketException e)
            {
                socket.Dispose();
                failures.Add($"{address}: {e.Message}");
            }
        }
        throw new PingPongException($"Couldn't connect to {host}:{port} ({(failures.Count == 0 ? "no address" : string.Join("; ", failures))}): " +
            "is the server running (PingPong or ibv_rc_pingpong without a host), with the same -p?");
    }
}
