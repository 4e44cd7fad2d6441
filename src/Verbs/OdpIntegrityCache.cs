using System.Globalization;
using System.Text.Json;

namespace RdmaLease.Verbs;

/// <summary>
/// The probe's results, per device name + kernel release + path MTU: in memory for the process, and in a
/// JSON file (<see cref="FilePath"/>) so the next process on the same kernel does not probe again. The file
/// is best effort: when it cannot be read or written the probe simply runs again.
/// </summary>
internal static class OdpIntegrityCache
{
    static readonly Lock s_lock = new();
    static readonly Dictionary<(string Device, string Kernel, Mtu Mtu), OdpIntegrityResult> s_memory = [];
    static Dictionary<(string Device, string Kernel, Mtu Mtu), OdpIntegrityResult>? s_disk;

    /// <summary>The running kernel's release (<c>uname -r</c>).</summary>
    public static string KernelRelease { get; } = ReadKernelRelease();

    static string ReadKernelRelease()
    {
        try
        {
            return File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        }
        catch (IOException)
        {
            return Environment.OSVersion.Version.ToString();
        }
    }

    /// <summary>
    /// <c>$RDMA_LEASE_CACHE/odp-integrity.json</c>, else <c>$XDG_CACHE_HOME/rdma-lease/odp-integrity.json</c>,
    /// else <c>~/.cache/rdma-lease/odp-integrity.json</c>; null when none of those is known.
    /// </summary>
    public static string? FilePath
    {
        get
        {
            if (Environment.GetEnvironmentVariable("RDMA_LEASE_CACHE") is { Length: > 0 } cache)
                return Path.Combine(cache, "odp-integrity.json");
            if (Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg)
                return Path.Combine(xdg, "rdma-lease", "odp-integrity.json");
            if (Environment.GetEnvironmentVariable("HOME") is { Length: > 0 } home)
                return Path.Combine(home, ".cache", "rdma-lease", "odp-integrity.json");
            return null;
        }
    }

    /// <summary>The cached result, or the probe's (run now) when there is none or <paramref name="refresh"/>.</summary>
    public static OdpIntegrityResult Get(Device device, Mtu mtu, byte port, bool refresh)
    {
        var key = (device.Name, KernelRelease, mtu);
        lock (s_lock)
        {
            if (!refresh)
            {
                if (s_memory.TryGetValue(key, out var known))
                    return known;
                s_disk ??= Load();
                if (s_disk.TryGetValue(key, out var stored))
                {
                    s_memory[key] = stored;
                    return stored;
                }
            }
            var result = OdpIntegrityProbe.Run(device, mtu, port, KernelRelease);
            s_memory[key] = result;
            s_disk ??= Load();
            s_disk[key] = result with { FromDiskCache = true };
            Save(s_disk);
            return result;
        }
    }

    /// <summary>Forgets the in-memory results (tests: the next lookup reads the file).</summary>
    internal static void ClearMemory()
    {
        lock (s_lock)
        {
            s_memory.Clear();
            s_disk = null;
        }
    }

    static Dictionary<(string, string, Mtu), OdpIntegrityResult> Load()
    {
        var entries = new Dictionary<(string, string, Mtu), OdpIntegrityResult>();
        string? path = FilePath;
        if (path == null || !File.Exists(path))
            return entries;
        try
        {
            foreach (var r in Parse(File.ReadAllBytes(path)))
                entries[(r.DeviceName, r.KernelRelease, r.PathMtu)] = r;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or FormatException or KeyNotFoundException or InvalidOperationException or ArgumentException)
        {
            // An unreadable or foreign file is ignored; the next save replaces it.
        }
        return entries;
    }

    static void Save(Dictionary<(string, string, Mtu), OdpIntegrityResult> entries)
    {
        string? path = FilePath;
        if (path == null)
            return;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string temp = path + "." + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + ".tmp";
            File.WriteAllBytes(temp, Serialize(entries.Values));
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Read-only or missing cache directory: results stay in memory only.
        }
    }

    internal static byte[] Serialize(IEnumerable<OdpIntegrityResult> results)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteNumber("version", 2);
            w.WriteStartArray("results");
            foreach (var r in results)
            {
                w.WriteStartObject();
                w.WriteString("device", r.DeviceName);
                w.WriteString("kernel", r.KernelRelease);
                w.WriteNumber("pathMtu", r.PathMtu.Bytes());
                w.WriteNumber("maxSafeTransfer", r.MaxSafeTransfer);
                w.WriteNumber("requiredAlignment", r.RequiredAlignment);
                w.WriteString("testedAt", r.TestedAt);
                w.WriteStartArray("checks");
                foreach (var c in r.Checks)
                {
                    w.WriteStartObject();
                    w.WriteString("operation", c.Operation.ToString());
                    w.WriteNumber("offset", c.Offset);
                    w.WriteNumber("length", c.Length);
                    w.WriteNumber("workRequests", c.WorkRequests);
                    w.WriteNumber("wrongBytes", c.WrongBytes);
                    w.WriteNumber("firstWrong", c.FirstWrong);
                    if (c.Error != null)
                        w.WriteString("error", c.Error);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return stream.ToArray();
    }

    internal static List<OdpIntegrityResult> Parse(ReadOnlySpan<byte> json)
    {
        var reader = new Utf8JsonReader(json);
        using var doc = JsonDocument.ParseValue(ref reader);
        var list = new List<OdpIntegrityResult>();
        if (doc.RootElement.GetProperty("version").GetInt32() != 2)
            return list;
        foreach (var e in doc.RootElement.GetProperty("results").EnumerateArray())
        {
            var checks = new List<OdpIntegrityCheck>();
            foreach (var c in e.GetProperty("checks").EnumerateArray())
            {
                checks.Add(new OdpIntegrityCheck(
                    Enum.Parse<OdpIntegrityOperation>(c.GetProperty("operation").GetString()!),
                    c.GetProperty("offset").GetInt32(), c.GetProperty("length").GetInt32(), c.GetProperty("workRequests").GetInt32(),
                    c.GetProperty("wrongBytes").GetInt32(), c.GetProperty("firstWrong").GetInt32(),
                    c.TryGetProperty("error", out var err) ? err.GetString() : null));
            }
            list.Add(new OdpIntegrityResult(e.GetProperty("device").GetString()!, e.GetProperty("kernel").GetString()!,
                MtuExtensions.FromBytes(e.GetProperty("pathMtu").GetInt32()), e.GetProperty("maxSafeTransfer").GetUInt32(), e.GetProperty("requiredAlignment").GetUInt32(),
                e.GetProperty("testedAt").GetDateTimeOffset(), checks) { FromDiskCache = true });
        }
        return list;
    }
}
