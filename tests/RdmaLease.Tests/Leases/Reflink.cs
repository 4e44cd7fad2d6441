using System.Runtime.InteropServices;

namespace RdmaLease.Tests.Leases;

/// <summary>
/// FICLONE / FICLONERANGE in this process, through descriptors (linux/fs.h). Cloning FROM a leased file through the
/// lease's own descriptor opens nothing, so it breaks nothing; the other process's clones are the lease probe's.
/// </summary>
internal static partial class Reflink
{
    const uint FICLONE = 0x40049409;        // _IOW(0x94, 9, int)
    const uint FICLONERANGE = 0x4020940D;   // _IOW(0x94, 13, struct file_clone_range)

    /// <summary>ioctl(<paramref name="destFd"/>, FICLONE, <paramref name="srcFd"/>): 0, or the errno.</summary>
    public static int Clone(int destFd, int srcFd) =>
        ioctl(destFd, FICLONE, srcFd) == 0 ? 0 : Marshal.GetLastPInvokeError();

    /// <summary>FICLONERANGE of <paramref name="length"/> bytes: 0, or the errno.</summary>
    public static unsafe int CloneRange(int destFd, int srcFd, long srcOffset, long length, long destOffset)
    {
        // struct file_clone_range { __s64 src_fd; __u64 src_offset, src_length, dest_offset; }
        long* range = stackalloc long[4];
        range[0] = srcFd;
        range[1] = srcOffset;
        range[2] = length;
        range[3] = destOffset;
        return ioctl(destFd, FICLONERANGE, range) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>Creates <paramref name="dest"/> as a reflink of <paramref name="source"/> (all of it, or one range of it at 0).</summary>
    public static void CloneFile(string source, string dest, long offset = 0, long length = 0)
    {
        using var src = File.OpenHandle(source, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var dst = File.OpenHandle(dest, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite);
        int fdSrc = (int)src.DangerousGetHandle(), fdDst = (int)dst.DangerousGetHandle();
        int errno = length == 0 ? Clone(fdDst, fdSrc) : CloneRange(fdDst, fdSrc, offset, length, 0);
        Assert.That(errno, Is.Zero, $"{(length == 0 ? "FICLONE" : "FICLONERANGE")} {source} -> {dest}: {LeasedRdma.ErrnoName(errno)}");
    }

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, int arg);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static unsafe partial int ioctl(int fd, nuint request, void* arg);
}
