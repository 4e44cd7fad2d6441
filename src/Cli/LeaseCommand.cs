using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using RdmaLease.Leases;

namespace RdmaLease.Cli;

/// <summary>
/// <c>rdma-lease lease FILE [--size BYTES] [--breaks N] [--allow-non-dax] [--json]</c>: holds a lease on FILE as the
/// library does for a registration, prints each break as it happens (signal to release, what the breaker asked for),
/// takes the lease again after each one, and stops after N breaks or on Ctrl+C/SIGTERM.
/// </summary>
internal static class LeaseCommand
{
    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "The file (on an FS-DAX mount; created when --size is given and it does not exist)" };
        var size = new Option<long?>("--size", "-s") { Description = "Create the file with this many bytes if it does not exist" };
        var breaks = new Option<int>("--breaks", "-n") { Description = "Exit after this many breaks (0: until Ctrl+C)", DefaultValueFactory = _ => 0 };
        var nonDax = new Option<bool>("--allow-non-dax") { Description = "Accept a file that is not on FS-DAX (tmpfs, ext4 without dax)" };
        var json = CliOptions.Json();
        var command = new Command("lease", "Hold a lease on FILE and print each break live, with its timings") { file, size, breaks, nonDax, json };
        command.Validators.Add(r =>
        {
            if (r.GetValue(breaks) < 0)
                r.AddError("--breaks must be 0 (no limit) or more");
            if (r.GetValue(size) is <= 0)
                r.AddError("--size must be a positive number of bytes");
        });
        command.SetAction((r, ct) => RunAsync(r.GetValue(file)!, r.GetValue(size), r.GetValue(breaks), r.GetValue(nonDax), r.GetValue(json), ct));
        return command;
    }

    static async Task<int> RunAsync(string path, long? size, int maxBreaks, bool allowNonDax, bool json, CancellationToken ct)
    {
        var output = new EventWriter(json);
        LeaseSignals.Start();
        int breaks = 0;
        while (!ct.IsCancellationRequested && (maxBreaks == 0 || breaks < maxBreaks))
        {
            DaxFile? file = null;
            FileLease? lease = null;
            try
            {
                // Opened again each time: a break may have come from a truncate, so the mapping must match the new size.
                file = DaxFile.Open(path, new DaxFileOptions { Size = File.Exists(path) ? null : size, AllowNonDax = allowNonDax });
                lease = file.AcquireLease();
            }
            catch (LeaseUnavailableException e)
            {
                lease?.Dispose();
                file?.Dispose();
                output.Unavailable(path, e);
                await Task.Delay(TimeSpan.FromMilliseconds(500), ct).ContinueWith(_ => { }, TaskScheduler.Default);
                continue;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                lease?.Dispose();
                file?.Dispose();
                Console.Error.WriteLine($"rdma-lease lease: {e.Message}");
                return 1;
            }
            using (file)
            using (lease)
            {
                output.Acquired(file, lease);
                var broke = new TaskCompletionSource<LeaseBreakEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
                lease.BreakRequested += (_, e) => broke.TrySetResult(e);
                using var cancelled = ct.Register(() => broke.TrySetCanceled(ct));
                try
                {
                    var e = await broke.Task;
                    breaks++;
                    output.Broken(file, e, breaks);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
        }
        output.Done(breaks);
        return 0;
    }

    /// <summary>Text lines for people, or one JSON object per line for scripts.</summary>
    sealed class EventWriter(bool json)
    {
        readonly long _start = Stopwatch.GetTimestamp();

        double Now => Stopwatch.GetElapsedTime(_start).TotalSeconds;

        public void Acquired(DaxFile file, FileLease lease)
        {
            if (!json)
            {
                Console.WriteLine($"[{Now,8:0.000} s] holding a {lease.Type} {lease.Mechanism.ToString().ToLowerInvariant()} on {file.Path} ({file.Length} bytes, {(file.IsDax ? "FS-DAX" : "not DAX")})");
                return;
            }
            Line(w =>
            {
                w.WriteString("event", "acquired");
                w.WriteString("path", file.Path);
                w.WriteNumber("length", file.Length);
                w.WriteBoolean("dax", file.IsDax);
                w.WriteString("mechanism", lease.Mechanism.ToString());
            });
        }

        public void Broken(DaxFile file, LeaseBreakEventArgs e, int count)
        {
            double signalToRelease = e.BreakToRelease.TotalMilliseconds;
            double signalToObserved = Stopwatch.GetElapsedTime(e.SignalTimestamp, e.ObservedTimestamp).TotalMilliseconds;
            string wanted = e.PendingLeaseType switch { 0 => "read", 1 => "write", 2 => "none (unlock)", _ => "unknown" };
            if (!json)
            {
                Console.WriteLine($"[{Now,8:0.000} s] break #{count} on {file.Path}: the breaker wants {wanted}; signal to handler {signalToObserved:0.0} ms, " +
                    $"signal to lease given back {signalToRelease:0.0} ms{(e.TeardownErrors.Count > 0 ? $", {e.TeardownErrors.Count} teardown error(s): {e.TeardownErrors[0].Message}" : "")}");
                return;
            }
            Line(w =>
            {
                w.WriteString("event", "break");
                w.WriteNumber("count", count);
                w.WriteString("path", file.Path);
                w.WriteString("breakerWants", wanted);
                w.WriteNumber("signalToObservedMs", Math.Round(signalToObserved, 3));
                w.WriteNumber("signalToReleaseMs", Math.Round(signalToRelease, 3));
                w.WriteNumber("teardownErrors", e.TeardownErrors.Count);
            });
        }

        public void Unavailable(string path, LeaseUnavailableException e)
        {
            if (!json)
            {
                Console.WriteLine($"[{Now,8:0.000} s] cannot take the lease on {path} yet: {e.Message}; retrying");
                return;
            }
            Line(w =>
            {
                w.WriteString("event", "unavailable");
                w.WriteString("path", path);
                w.WriteNumber("errno", e.Errno);
                w.WriteString("holders", string.Join("; ", e.Holders));
            });
        }

        public void Done(int breaks)
        {
            if (!json)
            {
                Console.WriteLine($"[{Now,8:0.000} s] done after {breaks} break(s)");
                return;
            }
            Line(w =>
            {
                w.WriteString("event", "done");
                w.WriteNumber("breaks", breaks);
            });
        }

        void Line(Action<Utf8JsonWriter> body)
        {
            using var stream = Console.OpenStandardOutput();
            using (var w = new Utf8JsonWriter(stream))
            {
                w.WriteStartObject();
                w.WriteNumber("time", Math.Round(Now, 6));
                body(w);
                w.WriteEndObject();
            }
            stream.WriteByte((byte)'\n');
            stream.Flush();
        }
    }
}
