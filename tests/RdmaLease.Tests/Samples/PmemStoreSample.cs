using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using RdmaLease.Tests.Packaging;

namespace RdmaLease.Tests.Samples;

/// <summary>Runs samples/PmemStore: to completion (<see cref="Run"/>) or live, reading its lines as they come (<see cref="Live"/>).</summary>
internal static partial class PmemStoreSample
{
    public static string Dll => RepoPaths.File($"artifacts/bin/RdmaLease.PmemStore/{Tool.Configuration}/RdmaLease.PmemStore.dll");

    public static Tool.Result Run(params string[] args) => Tool.Run("dotnet", ["exec", Dll, .. args], timeoutMs: 120_000);

    public static LiveProcess Live(params string[] args) => new("dotnet", ["exec", Dll, .. args]);

    /// <summary>A client's closing line: "client N: M records, A acknowledged, R resent, C connections, S s".</summary>
    public static (int Records, int Acknowledged, int Resent, int Connections) ClientSummary(string output, int client)
    {
        var m = Regex.Match(output, $@"client {client}: (\d+) records, (\d+) acknowledged, (\d+) resent, (\d+) connections");
        Assert.That(m.Success, Is.True, $"client {client} printed no summary:\n{output}");
        int G(int i) => int.Parse(m.Groups[i].Value, CultureInfo.InvariantCulture);
        return (G(1), G(2), G(3), G(4));
    }

    /// <summary>The verification total: "N records acknowledged, N verified, N missing, N corrupt".</summary>
    public static (long Acknowledged, long Verified, long Missing, long Corrupt) VerifyTotal(string output)
    {
        var m = VerifyLine().Match(output);
        Assert.That(m.Success, Is.True, $"no verification total in:\n{output}");
        long G(int i) => long.Parse(m.Groups[i].Value, CultureInfo.InvariantCulture);
        return (G(1), G(2), G(3), G(4));
    }

    [GeneratedRegex(@"PmemStore verify: (\d+) records acknowledged, (\d+) verified, (\d+) missing, (\d+) corrupt")]
    private static partial Regex VerifyLine();

    /// <summary>A snapshot's CLOCK_MONOTONIC stamps (ns) from its line "... taken_at_ns=S opened_ns=O cloned_ns=C synced_ns=Y done_ns=D".</summary>
    public static (long TakenAt, long Opened, long Cloned, long Synced, long Done) SnapshotTimes(string output)
    {
        var m = SnapshotLine().Match(output);
        Assert.That(m.Success, Is.True, $"no snapshot line in:\n{output}");
        long G(int i) => long.Parse(m.Groups[i].Value, CultureInfo.InvariantCulture);
        return (G(1), G(2), G(3), G(4), G(5));
    }

    [GeneratedRegex(@"taken_at_ns=(\d+) opened_ns=(\d+) cloned_ns=(\d+) synced_ns=(\d+) done_ns=(\d+)")]
    private static partial Regex SnapshotLine();

    /// <summary>An acked log read by the test itself (docs/pmem-store.md): (sequence, acknowledgement time in ns) in order.</summary>
    public static List<(ulong Sequence, long AckedAtNs)> AckedLog(string path)
    {
        var lines = File.ReadAllLines(path);
        Assert.That(lines[0], Does.StartWith("# pmem-store acked client="), path);
        return [.. lines.Skip(1).Where(l => l.Length > 0).Select(l =>
        {
            var f = l.Split(' ');
            Assert.That(f, Has.Length.EqualTo(2), $"{path}: '{l}' has no acknowledgement time");
            return (ulong.Parse(f[0], CultureInfo.InvariantCulture), long.Parse(f[1], CultureInfo.InvariantCulture));
        })];
    }

    /// <summary>
    /// Whether <paramref name="page"/> is record <paramref name="sequence"/> of <paramref name="client"/> as docs/pmem-store.md
    /// lays it out (magic, client, sequence, length, CRC-32 of bytes 0..20 and the payload): the test's own check, not the sample's.
    /// </summary>
    public static bool IsDocumentedRecord(ReadOnlySpan<byte> page, uint client, ulong sequence)
    {
        if (page.Length < 4096 || BinaryPrimitives.ReadUInt32LittleEndian(page) != 0x31524D50
            || BinaryPrimitives.ReadUInt32LittleEndian(page[4..]) != client || BinaryPrimitives.ReadUInt64LittleEndian(page[8..]) != sequence)
            return false;
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(page[16..]);
        return length <= 4096 - 24 && Crc32([.. page[..20], .. page.Slice(24, (int)length)]) == BinaryPrimitives.ReadUInt32LittleEndian(page[20..]);
    }

    /// <summary>CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), a byte at a time from a table built here.</summary>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
            crc = CrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return ~crc;
    }

    static readonly uint[] CrcTable = [.. Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) != 0 ? (c >> 1) ^ 0xEDB88320 : c >> 1;
        return c;
    })];
}

/// <summary>A child process whose stdout and stderr lines are collected as they arrive, to wait on.</summary>
internal sealed class LiveProcess : IDisposable
{
    readonly Process _process;
    readonly List<string> _lines = [];
    readonly object _gate = new();   // Monitor.Wait/PulseAll, which System.Threading.Lock has not

    public LiveProcess(string file, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = RepoPaths.Root };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        _process = new Process { StartInfo = psi };
        _process.OutputDataReceived += (_, e) => Add(e.Data);
        _process.ErrorDataReceived += (_, e) => Add(e.Data);
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    void Add(string? line)
    {
        if (line is null)
            return;
        lock (_gate)
        {
            _lines.Add(line);
            Monitor.PulseAll(_gate);
        }
    }

    public int Id => _process.Id;

    public int Count
    {
        get
        {
            lock (_gate)
                return _lines.Count;
        }
    }

    public string Output
    {
        get
        {
            lock (_gate)
                return string.Join('\n', _lines);
        }
    }

    /// <summary>The index of the first line at or after <paramref name="from"/> containing <paramref name="text"/>.</summary>
    public int WaitFor(string text, TimeSpan timeout, int from = 0, string? why = null)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_gate)
        {
            while (true)
            {
                for (int i = from; i < _lines.Count; i++)
                    if (_lines[i].Contains(text, StringComparison.Ordinal))
                        return i;
                from = Math.Max(from, _lines.Count);
                long left = deadline - Environment.TickCount64;
                if (left <= 0 || (_process.HasExited && Monitor.Wait(_gate, 200) is false))
                {
                    string state = _process.HasExited ? $"exited {_process.ExitCode}" : "still running";
                    Assert.Fail($"'{text}' not printed within {timeout.TotalSeconds:0} s{(why is null ? "" : " (" + why + ")")}; the process is {state}:\n{string.Join('\n', _lines)}");
                }
                Monitor.Wait(_gate, (int)Math.Min(left, 500));
            }
        }
    }

    public bool HasExited => _process.HasExited;

    /// <summary>Waits for the exit and the last lines; fails the test after <paramref name="timeout"/>.</summary>
    public int WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout))
            Assert.Fail($"the process did not exit within {timeout.TotalSeconds:0} s:\n{Output}");
        _process.WaitForExit();   // drains the redirected streams
        return _process.ExitCode;
    }

    public void Signal(string signal) => Tool.Output("kill", "-" + signal, _process.Id.ToString(CultureInfo.InvariantCulture));

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
        _process.Dispose();
    }
}
