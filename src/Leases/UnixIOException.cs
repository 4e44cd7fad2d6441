using System.Runtime.InteropServices;

namespace RdmaLease.Leases;

/// <summary>A system call failed; <see cref="Errno"/> is the errno it reported.</summary>
public class UnixIOException : IOException
{
    /// <summary>Creates the exception for <paramref name="errno"/>, with <paramref name="message"/> in front of strerror's text.</summary>
    public UnixIOException(string message, int errno)
        : base($"{message}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})")
    {
        Errno = errno;
        HResult = errno;
    }

    /// <summary>The errno value.</summary>
    public int Errno { get; }

    internal static UnixIOException Last(string message) => new(message, Marshal.GetLastPInvokeError());
}

/// <summary>
/// The file is not on a filesystem mounted with FS-DAX, and <see cref="DaxFileOptions.AllowNonDax"/> was not set.
/// </summary>
public sealed class FileNotOnDaxException : IOException
{
    internal FileNotOnDaxException(string path)
        : base($"'{path}' is not on an FS-DAX filesystem (statx reports no STATX_ATTR_DAX), so its pages go through the " +
               "page cache and stores cannot be made durable with MAP_SYNC. Put the file on XFS or ext4 on a pmem device " +
               "mounted with -o dax=always (e.g. `mount -o dax=always /dev/pmem0 /mnt/pmem`; for one file or directory on a " +
               "dax=inode mount: `xfs_io -c 'chattr +x' DIR`), or set DaxFileOptions.AllowNonDax to map it as an ordinary shared file.")
    {
        Path = path;
    }

    /// <summary>The file that is not on FS-DAX.</summary>
    public string Path { get; }
}
