using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using RdmaLease.Interop;

namespace RdmaLease.Verbs;

/// <summary>librdmacm helpers: loading with our guidance, socket addresses, errno values of its calls.</summary>
internal static unsafe class RdmaCm
{
    internal const int ECONNREFUSED = 111, ENETUNREACH = 101, EHOSTUNREACH = 113, EADDRINUSE = 98, EADDRNOTAVAIL = 99,
        ETIMEDOUT = 110, ECONNRESET = 104;

    /// <summary>Loads libibverbs, our shim and librdmacm, or throws <see cref="RdmaLibraryNotFoundException"/> naming the packages.</summary>
    public static void EnsureLoaded() => NativeLibraries.EnsureLoaded(rdmaCm: true);

    public static sbyte* EventName(rdma_cm_event_type type) => librdmacm.rdma_event_str(type);

    public const int SockaddrSize = 128;   // sockaddr_storage

    /// <summary>Writes <paramref name="endPoint"/> as a sockaddr_in or sockaddr_in6 into <paramref name="storage"/> (128 bytes, zeroed).</summary>
    public static void ToSockaddr(IPEndPoint endPoint, Span<byte> storage)
    {
        storage.Clear();
        if (endPoint.AddressFamily == AddressFamily.InterNetwork)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(storage, 2);   // AF_INET, host order
            BinaryPrimitives.WriteUInt16BigEndian(storage[2..], (ushort)endPoint.Port);
            endPoint.Address.TryWriteBytes(storage[4..8], out _);
        }
        else if (endPoint.AddressFamily == AddressFamily.InterNetworkV6)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(storage, 10);  // AF_INET6
            BinaryPrimitives.WriteUInt16BigEndian(storage[2..], (ushort)endPoint.Port);
            endPoint.Address.TryWriteBytes(storage[8..24], out _);
            BinaryPrimitives.WriteUInt32LittleEndian(storage[24..], (uint)endPoint.Address.ScopeId);
        }
        else
        {
            throw new ArgumentException($"{endPoint} is neither IPv4 nor IPv6: rdma_cm connects by IP address", nameof(endPoint));
        }
    }

    /// <summary>Reads a sockaddr_in/sockaddr_in6 (null for other families, e.g. AF_IB).</summary>
    public static IPEndPoint? FromSockaddr(ReadOnlySpan<byte> storage)
    {
        ushort family = BinaryPrimitives.ReadUInt16LittleEndian(storage);
        int port = BinaryPrimitives.ReadUInt16BigEndian(storage[2..]);
        return family switch
        {
            2 => new IPEndPoint(new IPAddress(storage[4..8]), port),
            10 => new IPEndPoint(new IPAddress(storage[8..24], BinaryPrimitives.ReadUInt32LittleEndian(storage[24..])), port),
            _ => null,
        };
    }

    /// <summary>The errno after a failed librdmacm call (it returns -1 and sets errno).</summary>
    public static int LastErrno() => Marshal.GetLastPInvokeError();

    /// <summary>Checks private data against the transport's limit for <paramref name="what"/>.</summary>
    public static void CheckPrivateData(ReadOnlySpan<byte> data, int limit, string what, string paramName)
    {
        if (data.Length > limit)
            throw new ArgumentException(
                $"{data.Length} bytes of private data on {what}: RC over InfiniBand/RoCE carries at most {limit} " +
                $"(connect {RdmaPrivateDataLimits.Connect}, accept {RdmaPrivateDataLimits.Accept}, reject {RdmaPrivateDataLimits.Reject}). " +
                "Send the rest over the connection once it is established.", paramName);
    }
}
