namespace RdmaLease.Leases;

/// <summary>How a <see cref="DaxFile"/> is opened and mapped.</summary>
public enum DaxFileAccess
{
    /// <summary>O_RDWR, PROT_READ|PROT_WRITE; a lease on it is a write lease (every other open breaks it).</summary>
    ReadWrite,

    /// <summary>O_RDONLY, PROT_READ; a lease on it is a read lease (other readers do not break it, writers do).</summary>
    Read,
}

/// <summary>Options for <see cref="DaxFile.Open(string, DaxFileOptions?)"/>.</summary>
public sealed class DaxFileOptions
{
    /// <summary>Read-write (the default) or read-only; decides the lease type too.</summary>
    public DaxFileAccess Access { get; init; } = DaxFileAccess.ReadWrite;

    /// <summary>
    /// The number of bytes to map. When set, a missing file is created with this length and a shorter one is
    /// extended to it (a file is never shrunk); needs <see cref="DaxFileAccess.ReadWrite"/>. When null (the default),
    /// the file must exist and is mapped whole.
    /// </summary>
    public long? Size { get; init; }

    /// <summary>Permissions of a file this call creates (default 0600).</summary>
    public UnixFileMode CreateMode { get; init; } = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>
    /// Map the file even when it is not on FS-DAX (tmpfs, a page-cache filesystem): MAP_SHARED without MAP_SYNC,
    /// and <see cref="DaxFile.Flush(long, long)"/> falls back to msync. Off by default: without it such a file is
    /// refused with <see cref="FileNotOnDaxException"/>.
    /// </summary>
    public bool AllowNonDax { get; init; }
}

/// <summary>How <see cref="DaxFile.Flush(long, long)"/> made a range durable.</summary>
public enum FlushMethod
{
    /// <summary>clwb per cache line, then sfence (MAP_SYNC mapping of an FS-DAX file).</summary>
    Clwb = 1,

    /// <summary>clflushopt per cache line, then sfence (MAP_SYNC mapping; the CPU has no clwb).</summary>
    ClflushOpt = 2,

    /// <summary>clflush per cache line, then sfence (MAP_SYNC mapping; the CPU has neither clwb nor clflushopt).</summary>
    Clflush = 3,

    /// <summary>msync(MS_SYNC) over the pages of the range: the mapping is not MAP_SYNC (non-DAX file or read-only).</summary>
    Msync = 4,
}
