using Microsoft.Extensions.Logging;

namespace RdmaLease.Hosting;

// Every message the host logs, source-generated (no boxing, no formatting unless the level is on).
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "RDMA device {Device} opened (driver {Driver}, port {Port}, GID index {GidIndex}); lease breaks arrive on signal {Signal}")]
    public static partial void Started(ILogger logger, string device, string driver, byte port, int gidIndex, int signal);

    [LoggerMessage(2, LogLevel.Information, "Lease on {Path} acquired ({Mechanism})")]
    public static partial void LeaseAcquired(ILogger logger, string path, string mechanism);

    [LoggerMessage(3, LogLevel.Warning, "Lease on {Path} broken by another process: regions revoked and deregistered, lease given back {BreakToReleaseMs:0.0} ms after the signal")]
    public static partial void LeaseBroken(ILogger logger, string path, double breakToReleaseMs);

    [LoggerMessage(4, LogLevel.Error, "Lease on {Path}: a teardown step failed")]
    public static partial void TeardownError(ILogger logger, string path, Exception error);

    [LoggerMessage(5, LogLevel.Information, "Shutting down: tearing down {Count} owned objects, newest first")]
    public static partial void ShuttingDown(ILogger logger, int count);

    [LoggerMessage(6, LogLevel.Debug, "Disposed {Resource}")]
    public static partial void Disposed(ILogger logger, string resource);

    [LoggerMessage(7, LogLevel.Error, "Disposing {Resource} failed")]
    public static partial void DisposeFailed(ILogger logger, string resource, Exception error);

    [LoggerMessage(8, LogLevel.Information, "Shut down in {ElapsedMs:0.0} ms: {Leases} leases still held, {RegisteredBytes} bytes still registered in this process")]
    public static partial void ShutDown(ILogger logger, double elapsedMs, long leases, long registeredBytes);

    [LoggerMessage(9, LogLevel.Error, "Shutdown passed its {TimeoutMs} ms budget with {Count} objects not yet disposed")]
    public static partial void ShutdownTimedOut(ILogger logger, double timeoutMs, int count);
}
