using Microsoft.Extensions.Hosting;

namespace RdmaLease.Hosting;

/// <summary>
/// Starts the <see cref="RdmaLeaseContext"/> with the host and stops it at shutdown. Registered first by
/// <c>AddRdmaLease</c>, so the host stops it last: the application's own hosted services stop (and stop posting)
/// before the objects they used are torn down.
/// </summary>
internal sealed class RdmaLeaseHostedService(RdmaLeaseContext context) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        context.Start();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        context.Stop();
        return Task.CompletedTask;
    }
}
