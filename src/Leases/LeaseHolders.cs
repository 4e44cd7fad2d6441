using System.Globalization;
using System.Text;
using Tmds.Linux;

namespace RdmaLease.Leases;

/// <summary>Finds who else has a file open or locked, to explain an EAGAIN from F_SETLEASE/F_SETDELEG.</summary>
internal static class LeaseHolders
{
    /// <summary>
    /// Entries of /proc/locks on the file's inode (other than our own lease), then every descriptor in /proc/*/fd that
    /// resolves to the same device and inode (other than the leased descriptor itself). Unreadable entries are skipped:
    /// this runs on an error path and must not throw.
    /// </summary>
    internal static IReadOnlyList<LeaseHolder> Find(DaxFile file)
    {
        var found = new List<LeaseHolder>();
        int self = Environment.ProcessId;
        int ownFd = file.FileDescriptor;
        try
        {
            foreach (string line in File.ReadLines("/proc/locks"))
            {
                if (ParseLocksLine(line, file.DeviceMajor, file.DeviceMinor, file.Inode) is { } entry)
                    found.Add(new LeaseHolder(entry.Pid, Comm(entry.Pid), entry.What));
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        foreach (string dir in SafeEnumerate("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                continue;
            foreach (string fdPath in SafeEnumerate(Path.Combine(dir, "fd")))
            {
                if (!int.TryParse(Path.GetFileName(fdPath), NumberStyles.None, CultureInfo.InvariantCulture, out int fd))
                    continue;
                if (pid == self && fd == ownFd)
                    continue;
                if (!SameFile(fdPath, file))
                    continue;
                found.Add(new LeaseHolder(pid, Comm(pid), $"fd {fd} ({AccessMode(pid, fd)})"));
            }
        }
        return found;
    }

    /// <summary>
    /// Parses one /proc/locks line ("1: LEASE  ACTIVE    READ  1234 fd:01:5678 0 EOF", "2: DELEG ..."; blocked
    /// waiters start with "1: -> ") for the given device and inode.
    /// </summary>
    internal static (int Pid, string What)? ParseLocksLine(string line, uint major, uint minor, ulong inode)
    {
        string[] t = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        for (int i = 1; i < t.Length; i++)
        {
            string[] id = t[i].Split(':');
            if (id.Length != 3)
                continue;
            if (!uint.TryParse(id[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint maj) ||
                !uint.TryParse(id[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint min) ||
                !ulong.TryParse(id[2], NumberStyles.None, CultureInfo.InvariantCulture, out ulong ino))
                continue;
            if (maj != major || min != minor || ino != inode)
                return null;
            if (!int.TryParse(t[i - 1], NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                return null;
            // Between "N:" (and "->") and the pid: class, mode/state and type, e.g. "LEASE ACTIVE READ".
            int first = t.Length > 1 && t[1] == "->" ? 2 : 1;
            string what = string.Join(' ', t[first..(i - 1)]);
            if (first == 2)
                what = "waiting for " + what;
            return (pid, what);
        }
        return null;
    }

    private static string[] SafeEnumerate(string dir)
    {
        try
        {
            return Directory.GetFileSystemEntries(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    private static unsafe bool SameFile(string path, DaxFile file)
    {
        byte[] p = Encoding.UTF8.GetBytes(path + "\0");
        statx stx;
        fixed (byte* pp = p)
        {
            if (LibC.statx(LibC.AT_FDCWD, pp, 0, LibC.STATX_INO, &stx) != 0)
                return false;
        }
        return stx.stx_ino == file.Inode && stx.stx_dev_major == file.DeviceMajor && stx.stx_dev_minor == file.DeviceMinor;
    }

    private static string? Comm(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").TrimEnd('\n');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string AccessMode(int pid, int fd)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/fdinfo/{fd}"))
            {
                if (!line.StartsWith("flags:", StringComparison.Ordinal))
                    continue;
                int flags = Convert.ToInt32(line["flags:".Length..].Trim(), 8);
                return (flags & 3) switch { 0 => "O_RDONLY", 1 => "O_WRONLY", _ => "O_RDWR" };
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
        }
        return "open";
    }
}
