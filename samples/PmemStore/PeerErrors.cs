using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using RdmaLease.Verbs;

namespace RdmaLease.PmemStore;

/// <summary>
/// Per-peer counts of the errors peers caused on their connections while their grants stood, read from the library's own instrument
/// (<c>rdmalease.verbs.peer_errors</c> of the <c>RdmaLease.Verbs</c> meter, tagged by peer address) with a
/// MeterListener, as an operator's collector would: what the server prints is what the metric says.
/// </summary>
internal sealed class PeerErrors : IDisposable
{
    readonly MeterListener _listener = new();
    readonly ConcurrentDictionary<string, long> _byPeer = new(StringComparer.Ordinal);

    public PeerErrors()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == VerbsMetrics.MeterName && instrument.Name == "rdmalease.verbs.peer_errors")
                listener.EnableMeasurementEvents(instrument);
        };
        _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            string? peer = null;
            bool live = false;
            foreach (var tag in tags)
            {
                if (tag.Key == "peer.address")
                    peer = tag.Value?.ToString();
                else if (tag.Key == "grant.state")
                    live = tag.Value as string == "live";
            }
            // Writes in flight when a lease break ended a grant fail too: only errors on standing grants are the peer's doing.
            if (peer is not null && live)
                _byPeer.AddOrUpdate(peer, value, (_, v) => v + value);
        });
        _listener.Start();
    }

    /// <summary>The count for <paramref name="peer"/> so far.</summary>
    public long Of(string peer) => _byPeer.GetValueOrDefault(peer);

    /// <summary>"address: count" for every peer that caused an error, or "none".</summary>
    public string Summary() => _byPeer.IsEmpty ? "none" : string.Join(", ", _byPeer.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $"{p.Key}: {p.Value}"));

    public void Dispose() => _listener.Dispose();
}
