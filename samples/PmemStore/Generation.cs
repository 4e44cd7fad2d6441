using RdmaLease.Leases;
using RdmaLease.Verbs;

namespace RdmaLease.PmemStore;

/// <summary>
/// One lease's worth of server state: the file opened at its current size, the lease, one region per client area
/// (registered without remote access: peers reach an area only through the grant of their own connection), and the
/// connections accepted while it stood. A break ends the generation; the next one starts from the file.
/// </summary>
internal sealed class Generation(int number, DaxFile file, FileLease lease, IReadOnlyList<LeasedMemoryRegion?> areas)
{
    readonly Lock _gate = new();
    readonly List<(QueuePair Qp, RdmaConnection? Connection, uint Client)> _peers = [];
    bool _ended;

    public int Number { get; } = number;
    public DaxFile File { get; } = file;
    public FileLease Lease { get; } = lease;
    /// <summary>Client c's area, registered over [c * area bytes, +area bytes) of the file; null when the file is too short for it.</summary>
    public IReadOnlyList<LeasedMemoryRegion?> Areas { get; } = areas;

    /// <summary>Completes when the lease breaks (the library has revoked the region and failed its QPs already).</summary>
    public TaskCompletionSource Broken { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public bool IsLive => !Broken.Task.IsCompleted && Lease.IsActive;

    /// <summary>
    /// Adds a QP about to be accepted for <paramref name="client"/>; false when the generation has ended, or when that client
    /// id has a connection already (one grant per area: a second peer claiming the id must not get the area too).
    /// </summary>
    public bool TryAdd(QueuePair qp, uint client, out string? refusal)
    {
        lock (_gate)
        {
            refusal = _ended ? "retry: the region was revoked just now"
                : _peers.Any(p => p.Client == client) ? $"retry: client id {client} has a connection already (one connection per id; its area is granted to it)"
                : null;
            if (refusal is not null)
                return false;
            _peers.Add((qp, null, client));
            return true;
        }
    }

    public bool TrySetConnection(QueuePair qp, RdmaConnection connection)
    {
        lock (_gate)
        {
            int i = _peers.FindIndex(p => ReferenceEquals(p.Qp, qp));
            if (_ended || i < 0)
                return false;
            _peers[i] = (qp, connection, _peers[i].Client);
            return true;
        }
    }

    /// <summary>Disposes one peer's connection (which revokes its grant), then its QP and the QP's own send CQ.</summary>
    public void Drop(QueuePair qp)
    {
        RdmaConnection? c = null;
        lock (_gate)
        {
            int i = _peers.FindIndex(p => ReferenceEquals(p.Qp, qp));
            if (i >= 0)
            {
                c = _peers[i].Connection;
                _peers.RemoveAt(i);
            }
        }
        c?.Dispose();
        DisposePeer(qp);
    }

    /// <summary>A peer's QP has a send CQ of its own (its grant's bind completes there): both go together.</summary>
    public static void DisposePeer(QueuePair qp)
    {
        qp.Dispose();
        qp.SendCompletionQueue.Dispose();
    }

    /// <summary>Ends the generation's connections and QPs; the areas, lease and file are the caller's to dispose.</summary>
    public int EndConnections()
    {
        (QueuePair Qp, RdmaConnection? Connection, uint Client)[] peers;
        lock (_gate)
        {
            _ended = true;
            peers = [.. _peers];
            _peers.Clear();
        }
        foreach (var (qp, c, _) in peers)
        {
            c?.Dispose();
            DisposePeer(qp);
        }
        return peers.Length;
    }

    /// <summary>
    /// Disposes the areas after <see cref="EndConnections"/>. An area the kernel did not confirm deregistered
    /// (<see cref="RegionDeregistrationException"/>: on rxe, ibv_dereg_mr refused while it still counted a window) does
    /// not end the server: the library has already put the area's file range behind an inaccessible placeholder and
    /// given the lease back, and its client was disconnected with the others, so it is reported and the next
    /// generation registers the area anew over the file's new mapping, once <see cref="LeasedMemoryRegion.RetryDeregistration"/>
    /// has succeeded (until then the area keeps the old descriptor open, and no write lease can be taken). Returns the
    /// areas that failed, by client id.
    /// </summary>
    public List<(uint Client, RegionDeregistrationException Error)> DisposeAreas()
    {
        var failed = new List<(uint, RegionDeregistrationException)>();
        for (int c = 0; c < Areas.Count; c++)
        {
            try
            {
                Areas[c]?.Dispose();
            }
            catch (RegionDeregistrationException e)
            {
                failed.Add(((uint)c, e));
            }
        }
        return failed;
    }
}
