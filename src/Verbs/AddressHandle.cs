using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>An address handle (<c>ibv_ah</c>): the path to a peer, for UD sends.</summary>
/// <remarks>Immutable once created; any number of threads may post sends through it.</remarks>
public sealed unsafe class AddressHandle : VerbsObject
{
    /// <summary>The peer this handle reaches.</summary>
    public QueuePairEndpoint Remote { get; }

    internal AddressHandle(ProtectionDomain pd, QueuePairEndpoint remote, int gidIndex, byte port)
        : base(Create(pd, remote, gidIndex, port), pd)
    {
        Remote = remote;
    }

    static NativeHandle Create(ProtectionDomain pd, QueuePairEndpoint remote, int gidIndex, byte port)
    {
        ArgumentNullException.ThrowIfNull(remote);
        var attr = new ibv_ah_attr { dlid = remote.Lid, port_num = port, is_global = 1 };
        attr.grh.sgid_index = (byte)gidIndex;
        attr.grh.hop_limit = 64;
        if (!remote.Gid.MapToIPv6().TryWriteBytes(new Span<byte>(attr.grh.dgid.raw, 16), out _))
            throw new ArgumentException($"{remote.Gid} is not a GID", nameof(remote));
        return NativeCalls.Create(pd.HandleForChildren, (nint)(&attr), static (p, a) => (nint)libibverbs.ibv_create_ah((ibv_pd*)p, (ibv_ah_attr*)a),
            &Destroy, "ibv_create_ah", $"address handle to {remote.Gid} in {pd}", $"address handle to {remote.Gid}");
    }

    static int Destroy(nint ah) => libibverbs.ibv_destroy_ah((ibv_ah*)ah);

    /// <inheritdoc/>
    public override string ToString() => $"address handle to {Remote.Gid}";
}
