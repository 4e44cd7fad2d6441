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
        NativeHandle parent = pd.HandleForChildren;
        using var pRef = parent.Enter();
        nint p = pRef.Pointer;
        var attr = new ibv_ah_attr { dlid = remote.Lid, port_num = port, is_global = 1 };
        attr.grh.sgid_index = (byte)gidIndex;
        attr.grh.hop_limit = 64;
        if (!remote.Gid.MapToIPv6().TryWriteBytes(new Span<byte>(attr.grh.dgid.raw, 16), out _))
            throw new ArgumentException($"{remote.Gid} is not a GID", nameof(remote));
        ibv_ah* ah = libibverbs.ibv_create_ah((ibv_pd*)p, &attr);
        if (ah == null)
            throw new VerbsException("ibv_create_ah", $"address handle to {remote.Gid} in {pd}", Marshal.GetLastPInvokeError());
        return new NativeHandle((nint)ah, &Destroy, $"address handle to {remote.Gid}", parent);
    }

    static int Destroy(nint ah) => libibverbs.ibv_destroy_ah((ibv_ah*)ah);

    /// <inheritdoc/>
    public override string ToString() => $"address handle to {Remote.Gid}";
}
