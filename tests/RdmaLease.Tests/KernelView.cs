using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using RdmaLease.Leases;

namespace RdmaLease.Tests;

/// <summary>
/// The system's own view of what this process holds, to prove claims against it rather than against our objects'
/// flags: the kernel's RDMA resource tracking (`rdma resource show`), /proc/locks, /proc/self/maps, /proc/self/fd,
/// and a file's extents (FIEMAP).
/// </summary>
internal static partial class KernelView
{
    /// <summary>
    /// `rdma resource show KIND` lines of user-space objects (KIND: qp, cq, mr, pd; see IsUserObject). The kernel
    /// records the id of the THREAD that created the object, not the process id (a test's objects show the pid of an
    /// NUnit worker thread), so the lines cannot be attributed by Environment.ProcessId; in the guest, where no other
    /// program holds verbs objects once the probes have exited, every user-space object is ours.
    /// </summary>
    public static List<string> RdmaResources(string kind)
    {
        var psi = new ProcessStartInfo("rdma", $"resource show {kind}") { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot run rdma");
        string output = p.StandardOutput.ReadToEnd();
        string error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"rdma resource show {kind} exited {p.ExitCode}: {error}");
        return [.. output.Split('\n').Where(IsUserObject).Select(l => l.Trim())];
    }

    /// <summary>
    /// A user-space object's line: "pid P comm NAME" while the creating thread lives; once that thread has exited the
    /// kernel prints neither (observed: "dev rxelo mrn 1 rkey 0x366 lkey 0x366 mrlen 4096 pdn 2"). Kernel objects always
    /// name their module ("comm [ib_core]").
    /// </summary>
    static bool IsUserObject(string line) =>
        (line.Contains("dev ", StringComparison.Ordinal) || line.Contains("link ", StringComparison.Ordinal))
        && (line.Contains(" pid ", StringComparison.Ordinal) || !line.Contains(" comm ", StringComparison.Ordinal));

    /// <summary>The rkeys of the user-space memory regions the kernel lists.</summary>
    public static HashSet<uint> RegisteredRemoteKeys()
    {
        var keys = new HashSet<uint>();
        foreach (string line in RdmaResources("mr"))
        {
            string[] t = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            int i = Array.IndexOf(t, "rkey");
            if (i < 0 || i + 1 >= t.Length)
                throw new FormatException($"no rkey in '{line}' (rdma resource show mr)");
            keys.Add(uint.Parse(t[i + 1].Replace("0x", "", StringComparison.Ordinal), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
        }
        return keys;
    }

    /// <summary>/proc/locks lease and delegation entries on <paramref name="file"/>'s inode (not flock/POSIX locks).</summary>
    public static List<string> LocksOn(DaxFile file) =>
        [.. File.ReadLines("/proc/locks").Where(l => IsLease(l) && LeaseHolders.ParseLocksLine(l, file.DeviceMajor, file.DeviceMinor, file.Inode) is not null)];

    static bool IsLease(string line)
    {
        string[] t = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return t.Length > 1 && (t[1] is "LEASE" or "DELEG" || (t[1] == "->" && t.Length > 2 && t[2] is "LEASE" or "DELEG"));
    }

    /// <summary>/proc/locks lease and delegation entries held by this process (any file).</summary>
    public static List<string> OwnLeases()
    {
        string pid = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        return [.. File.ReadLines("/proc/locks").Where(l =>
        {
            string[] t = l.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return IsLease(l) && t.Length > 5 && t[4] == pid;
        })];
    }

    /// <summary>The /proc/self/maps line whose range contains <paramref name="address"/>, or null.</summary>
    public static string? MappingAt(nint address)
    {
        ulong a = (ulong)address;
        foreach (string line in File.ReadLines("/proc/self/maps"))
        {
            int dash = line.IndexOf('-', StringComparison.Ordinal), space = line.IndexOf(' ', StringComparison.Ordinal);
            ulong start = ulong.Parse(line.AsSpan(0, dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            ulong end = ulong.Parse(line.AsSpan(dash + 1, space - dash - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            if (a >= start && a < end)
                return line;
        }
        return null;
    }

    /// <summary>The permissions ("rw-s", "---p") of the mapping at <paramref name="address"/>, or null when nothing is mapped there.</summary>
    public static string? PermissionsAt(nint address) => MappingAt(address)?.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1];

    /// <summary>/proc/self/maps lines that map <paramref name="path"/>.</summary>
    public static List<string> MappingsOf(string path) =>
        [.. File.ReadLines("/proc/self/maps").Where(l => l.EndsWith(" " + path, StringComparison.Ordinal) || l.EndsWith(" " + path + " (deleted)", StringComparison.Ordinal))];

    /// <summary>This process's descriptors (/proc/self/fd) that refer to <paramref name="path"/>.</summary>
    public static List<int> DescriptorsOf(string path)
    {
        var fds = new List<int>();
        foreach (string entry in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            string? target;
            try
            {
                target = new FileInfo(entry).LinkTarget;
            }
            catch (IOException)
            {
                continue;   // closed meanwhile
            }
            if (target == path || target == path + " (deleted)")
                fds.Add(int.Parse(Path.GetFileName(entry), CultureInfo.InvariantCulture));
        }
        return fds;
    }

    /// <summary>
    /// The kernel's own count of users of this process's protection domains (`rdma resource show pd`, the "users"
    /// field: every MR, QP, SRQ, AH and memory window holds one). `rdma resource` has no memory window listing of its
    /// own; this is where the kernel shows them.
    /// </summary>
    public static int ProtectionDomainUsers()
    {
        int total = 0;
        foreach (string line in KernelView.RdmaResources("pd"))
        {
            string[] t = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            int i = Array.IndexOf(t, "users");
            if (i < 0 || i + 1 >= t.Length)
                throw new FormatException($"no users in '{line}' (rdma resource show pd)");
            total += int.Parse(t[i + 1], CultureInfo.InvariantCulture);
        }
        return total;
    }

    /// <summary>One FIEMAP extent: logical and physical offsets and length in bytes, and FIEMAP_EXTENT_* flags.</summary>
    public readonly record struct Extent(long Logical, long Physical, long Length, uint Flags)
    {
        public const uint Last = 0x1, Unwritten = 0x800, Shared = 0x2000;

        public bool IsShared => (Flags & Shared) != 0;
    }

    /// <summary>
    /// FS_IOC_FIEMAP (with FIEMAP_FLAG_SYNC) on <paramref name="path"/>: every extent, however many. Opening a file
    /// breaks a write lease on it, even ours: for a leased file use the <see cref="Extents(int)"/> overload with the
    /// lease's descriptor.
    /// </summary>
    public static List<Extent> Extents(string path)
    {
        int fd = open(path, 0 /* O_RDONLY */);
        if (fd < 0)
            throw new IOException($"open {path} for FIEMAP: errno {Marshal.GetLastPInvokeError()}");
        try
        {
            return Extents(fd);
        }
        finally
        {
            _ = close(fd);
        }
    }

    /// <summary>FIEMAP through an open descriptor (no new open: a lease on the file is not broken).</summary>
    public static unsafe List<Extent> Extents(int fd)
    {
        const uint FS_IOC_FIEMAP = 0xC020660B;
        const int Batch = 256, Header = 32, Size = 56;
        var list = new List<Extent>();
        byte[] buffer = new byte[Header + Batch * Size];
        ulong start = 0;
        while (true)
        {
            Array.Clear(buffer);
            fixed (byte* buf = buffer)
            {
                *(ulong*)buf = start;                        // fm_start
                *(ulong*)(buf + 8) = ulong.MaxValue - start; // fm_length
                *(uint*)(buf + 16) = 1;                      // fm_flags = FIEMAP_FLAG_SYNC
                *(uint*)(buf + 24) = Batch;                  // fm_extent_count
                if (ioctl(fd, FS_IOC_FIEMAP, buf) != 0)
                    throw new IOException($"FS_IOC_FIEMAP on fd {fd}: errno {Marshal.GetLastPInvokeError()}");
                uint n = *(uint*)(buf + 20);
                for (int i = 0; i < n; i++)
                {
                    byte* e = buf + Header + i * Size;
                    list.Add(new Extent((long)*(ulong*)e, (long)*(ulong*)(e + 8), (long)*(ulong*)(e + 16), *(uint*)(e + 40)));
                }
                if (n < Batch || (list[^1].Flags & Extent.Last) != 0)
                    return list;
                start = (ulong)(list[^1].Logical + list[^1].Length);
            }
        }
    }

    /// <summary>Bytes of <paramref name="extents"/> whose physical blocks the filesystem reports as shared (FIEMAP_EXTENT_SHARED).</summary>
    public static long SharedBytes(IEnumerable<Extent> extents) => extents.Where(e => e.IsShared).Sum(e => e.Length);

    /// <summary>Whether every byte of [<paramref name="offset"/>, +<paramref name="length"/>) is in an extent flagged shared (false for holes).</summary>
    public static bool IsShared(List<Extent> extents, long offset, long length) =>
        extents.Where(e => e.IsShared && e.Logical < offset + length && e.Logical + e.Length > offset)
            .Sum(e => Math.Min(e.Logical + e.Length, offset + length) - Math.Max(e.Logical, offset)) == length;

    /// <summary>Whether no byte of [<paramref name="offset"/>, +<paramref name="length"/>) is in an extent flagged shared.</summary>
    public static bool IsUnshared(List<Extent> extents, long offset, long length) =>
        !extents.Any(e => e.IsShared && e.Logical < offset + length && e.Logical + e.Length > offset);

    /// <summary>The physical byte address where logical <paramref name="offset"/> lives, or -1 in a hole.</summary>
    public static long PhysicalAt(List<Extent> extents, long offset)
    {
        foreach (var e in extents)
        {
            if (offset >= e.Logical && offset < e.Logical + e.Length)
                return e.Physical + (offset - e.Logical);
        }
        return -1;
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static unsafe partial int ioctl(int fd, nuint request, void* arg);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int close(int fd);
}
