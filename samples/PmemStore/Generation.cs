using RdmaLease.Leases;
using RdmaLease.Verbs;

namespace RdmaLease.PmemStore;

/// <summary>
/// One lease's worth of server state: the file opened at its current size, the lease, the region registered on it,
/// and the connections accepted while it stood. A break ends the generation; the next one starts from the file.
/// </summary>
internal sealed class Generation(int number, DaxFile file, FileLease lease, LeasedMemoryRegion region, Advert advert)
{
    readonly Lock _gate = new();
    readonly List<(QueuePair Qp, RdmaConnection? Connection)> _peers = [];
    bool _ended;

    public int Number { get; } = number;
    public DaxFile File { get; } = file;
    public FileLease Lease { get; } = lease;
    public LeasedMemoryRegion Region { get; } = region;
    public Advert Advert { get; } = advert;

    /// <summary>Completes when the lease breaks (the library has revoked the region and failed its QPs already).</summary>
    public TaskCompletionSource Broken { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public bool IsLive => !Broken.Task.IsCompleted && !Region.IsDeregistered;

    /// <summary>Adds a QP about to be accepted; false when the generation has ended (then the caller disposes it).</summary>
    public bool TryAdd(QueuePair qp)
    {
        lock (_gate)
        {
            if (_ended)
                return false;
            _peers.Add((qp, null));
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
            _peers[i] = (qp, connection);
            return true;
        }
    }

    /// <summary>Disposes one peer's connection, then its QP (a QP outlives its connection, never the reverse).</summary>
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
        qp.Dispose();
    }

    /// <summary>Ends the generation's connections and QPs; the region, lease and file are the caller's to dispose.</summary>
    public int EndConnections()
    {
        (QueuePair Qp, RdmaConnection? Connection)[] peers;
        lock (_gate)
        {
            _ended = true;
            peers = [.. _peers];
            _peers.Clear();
        }
        foreach (var (qp, c) in peers)
        {
            c?.Dispose();
            qp.Dispose();
        }
        return peers.Length;
    }
}
