using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;

namespace RdmaLease.Hosting;

/// <summary>Adds rdma-lease to a Generic Host.</summary>
public static class RdmaLeaseServiceCollectionExtensions
{
    /// <summary>
    /// Adds the <see cref="RdmaLeaseContext"/> (a singleton) and the hosted service that starts it with the host and tears
    /// it down at shutdown, with <see cref="RdmaLeaseOptions"/> bound from <paramref name="configuration"/> (for example
    /// <c>builder.Configuration.GetSection("RdmaLease")</c>). Call it before adding the application's own hosted services.
    /// </summary>
    public static IServiceCollection AddRdmaLease(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddRdmaLease(options => configuration.Bind(options));
    }

    /// <summary>As <see cref="AddRdmaLease(IServiceCollection, IConfiguration)"/>, with the options set in code.</summary>
    public static IServiceCollection AddRdmaLease(this IServiceCollection services, Action<RdmaLeaseOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<RdmaLeaseOptions>().Configure(configure).Validate(Validate, "RdmaLease options are invalid").ValidateOnStart();
        services.TryAddSingleton<RdmaLeaseContext>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, RdmaLeaseHostedService>());
        return services;
    }

    static bool Validate(RdmaLeaseOptions o) =>
        o.Port >= 1 && o.GidIndex >= 0 && o.ShutdownTimeout > TimeSpan.Zero && o.LeaseSignalOffset is null or >= 1 and <= 30;
}
