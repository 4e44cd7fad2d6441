using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace RdmaLease.PmemStore;

/// <summary>
/// A consistent online snapshot of a live store file: a reflink (FICLONE) taken by another opener of the file.
/// Opening the file breaks the server's lease, and the kernel lets the open return only once the server has given
/// the lease back, which rdma-lease does only after revoking and deregistering the region (no RDMA write can land
/// from then on). So the clone holds every record whose FLUSH had completed before the snapshot began; the server
/// re-leases once the snapshot has closed the file, and the clients reconnect and resend (docs/pmem-store.md,
/// "Snapshots").
/// </summary>
internal static partial class Snapshot
{
    /// <summary>What a snapshot took: CLOCK_MONOTONIC nanoseconds of each step (comparable across processes).</summary>
    public sealed record Result(string File, string Destination, long Bytes, long StartNs, long OpenedNs, long ClonedNs, long SyncedNs, long ClosedNs)
    {
        public override string ToString()
        {
            static string Ms(long ns) => (ns / 1e6).ToString("F1", CultureInfo.InvariantCulture) + " ms";
            return string.Create(CultureInfo.InvariantCulture,
                $"{File} -> {Destination}: {Bytes} bytes; open {Ms(OpenedNs - StartNs)} (the lease holder's break), FICLONE {Ms(ClonedNs - OpenedNs)}, " +
                $"fsync {Ms(SyncedNs - ClonedNs)}, file held open {Ms(ClosedNs - OpenedNs)}, total {Ms(ClosedNs - StartNs)}; " +
                $"taken_at_ns={StartNs} opened_ns={OpenedNs} cloned_ns={ClonedNs} synced_ns={SyncedNs} done_ns={ClosedNs}");
        }
    }

    const int O_RDONLY = 0, O_RDWR = 2, O_CREAT = 0x40, O_EXCL = 0x80, O_CLOEXEC = 0x80000, O_TMPFILE = 0x410000;
    const nuint FICLONE = 0x40049409;   // _IOW(0x94, 9, int)
    const int ENOENT = 2, EEXIST = 17, EXDEV = 18, EOPNOTSUPP = 95;

    /// <summary>Clones <paramref name="file"/> into the new file <paramref name="destination"/>.</summary>
    /// <exception cref="SnapshotException">What was wrong (DEST exists, another filesystem, no reflink...), with the errno.</exception>
    public static Result Take(string file, string destination)
    {
        file = Path.GetFullPath(file);
        destination = Path.GetFullPath(destination);
        if (System.IO.File.Exists(destination) || Directory.Exists(destination))
            throw new SnapshotException(EEXIST, $"DEST '{destination}' exists: a snapshot never overwrites anything; choose a new name or remove it first");
        if (!System.IO.File.Exists(file))
            throw new SnapshotException(ENOENT, $"FILE '{file}' does not exist (or is not a regular file)");
        string destDir = Path.GetDirectoryName(destination)!;
        if (!Directory.Exists(destDir))
            throw new SnapshotException(ENOENT, $"the directory of DEST, '{destDir}', does not exist");

        int dest = open(destination, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0b110_100_100);
        if (dest < 0)
        {
            int e = Marshal.GetLastPInvokeError();
            throw new SnapshotException(e, e == EEXIST
                ? $"DEST '{destination}' exists: a snapshot never overwrites anything; choose a new name or remove it first"
                : $"cannot create DEST '{destination}'");
        }
        bool done = false;
        try
        {
            // Ask the filesystems first with an unnamed file next to FILE, so a snapshot that cannot work does not
            // break the server's lease for nothing (EXDEV, EOPNOTSUPP). Without O_TMPFILE there, the clone itself tells.
            int probe = open(Path.GetDirectoryName(file)!, O_TMPFILE | O_RDWR | O_CLOEXEC, 0b110_000_000);
            if (probe >= 0)
            {
                int r = ioctl(dest, FICLONE, probe);
                int e = Marshal.GetLastPInvokeError();
                _ = close(probe);
                if (r != 0)
                    throw CloneFailed(e, file, destination);
            }

            long start = AckedLog.NowNs();
            int src = open(file, O_RDONLY | O_CLOEXEC, 0);   // blocks until the lease holder has revoked and released
            if (src < 0)
                throw new SnapshotException(Marshal.GetLastPInvokeError(), $"cannot open FILE '{file}'");
            long opened = AckedLog.NowNs(), cloned, synced;
            try
            {
                if (ioctl(dest, FICLONE, src) != 0)
                    throw CloneFailed(Marshal.GetLastPInvokeError(), file, destination);
                cloned = AckedLog.NowNs();
                if (fsync(dest) != 0)
                    throw new SnapshotException(Marshal.GetLastPInvokeError(), $"fsync of DEST '{destination}' failed: the snapshot may not survive a crash");
                synced = AckedLog.NowNs();
            }
            finally
            {
                _ = close(src);   // the server may lease the file again from here on
            }
            long closed = AckedLog.NowNs();
            done = true;
            return new Result(file, destination, new FileInfo(destination).Length, start, opened, cloned, synced, closed);
        }
        finally
        {
            _ = close(dest);
            if (!done)
                _ = unlink(destination);   // only what this call created: O_EXCL made it ours
        }
    }

    static SnapshotException CloneFailed(int errno, string file, string destination) => errno switch
    {
        EXDEV => new SnapshotException(errno, $"DEST '{destination}' is on another filesystem (or mount) than FILE '{file}': " +
            "a reflink shares blocks within one filesystem; put DEST beside FILE, then copy it elsewhere if needed"),
        EOPNOTSUPP => new SnapshotException(errno, $"the filesystem of '{file}' cannot share blocks (no reflink: ext4 and tmpfs " +
            "have none): snapshots need XFS with reflink, which mkfs.xfs enables by default ('xfs_info MOUNT' shows reflink=1)"),
        _ => new SnapshotException(errno, $"FICLONE of '{file}' into '{destination}' failed"),
    };

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, int arg);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int close(int fd);

    [LibraryImport("libc", EntryPoint = "unlink", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int unlink(string path);
}

/// <summary>A snapshot that could not be taken: what was wrong, the errno and its meaning, what to do.</summary>
internal sealed class SnapshotException(int errno, string message)
    : IOException($"{message} ({ErrnoNames.Name(errno)}: {Marshal.GetPInvokeErrorMessage(errno)})")
{
    public int Errno { get; } = errno;
}

/// <summary>errno names for messages.</summary>
internal static class ErrnoNames
{
    public static string Name(int errno) => errno switch
    {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        9 => "EBADF",
        11 => "EAGAIN",
        13 => "EACCES",
        17 => "EEXIST",
        18 => "EXDEV",
        21 => "EISDIR",
        22 => "EINVAL",
        27 => "EFBIG",
        28 => "ENOSPC",
        30 => "EROFS",
        95 => "EOPNOTSUPP",
        _ => "errno " + errno.ToString(CultureInfo.InvariantCulture),
    };
}
