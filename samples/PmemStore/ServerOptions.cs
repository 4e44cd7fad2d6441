using System.Net;

namespace RdmaLease.PmemStore;

/// <summary>What <c>PmemStore serve</c> was asked to do.</summary>
internal sealed record ServerOptions(string File, IPEndPoint Listen, uint Clients, ulong AreaBytes, IReadOnlyList<string> VerifyLogs)
{
    /// <summary>One area per client and a spare one at the end nobody writes (a place to punch holes in).</summary>
    public long FileSize => checked((long)((Clients + 1) * AreaBytes));
}
