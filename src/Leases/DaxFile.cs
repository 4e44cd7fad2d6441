using System.Buffers;
using System.Text;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace RdmaLease.Leases;

/// <summary>
/// A file mapped MAP_SHARED into this process, normally on FS-DAX (the mapping then reaches persistent memory
/// directly and is MAP_SYNC, so CPU stores are durable once their cache lines are written back with
/// <see cref="Flush(long, long)"/>). The mapping is exposed as <see cref="Span"/>/<see cref="Memory"/> and as a raw
/// <see cref="BaseAddress"/>/<see cref="Length"/> for memory registration. Take a <see cref="FileLease"/> with
/// <see cref="AcquireLease"/> before handing the memory to an RDMA device.
/// </summary>
/// <example>
/// <code>
/// using var file = DaxFile.Open("/mnt/pmem/log", new DaxFileOptions { Size = 1 &lt;&lt; 20 });
/// using var lease = file.AcquireLease();
/// "hello"u8.CopyTo(file.Span);
/// file.Flush(0, 5);
/// </code>
/// </example>
/// <remarks>
/// Thread safety: the members may be used from any thread; <see cref="Dispose"/> and a lease break race safely
/// with each other, but not with code still using a span it took earlier (see <see cref="FileLease"/>: when a
/// break revokes the mapping the address range is atomically replaced by anonymous memory, so such late stores
/// land in scratch memory instead of faulting).
/// </remarks>
public sealed unsafe class DaxFile : IDisposable
{
    private const ulong STATX_ATTR_DAX = 0x200000;

    private readonly Lock _gate = new();
    private int _fd;
    private byte* _address;
    private readonly DaxMemoryManager _memory;
    private bool _revoked;
    private bool _disposed;
    private FileLease? _lease;

    private DaxFile(string path, DaxFileAccess access, int fd, byte* address, long length, bool isDax, bool isMapSync,
        uint devMajor, uint devMinor, ulong inode, bool created)
    {
        Path = path;
        Access = access;
        _fd = fd;
        _address = address;
        Length = length;
        IsDax = isDax;
        IsMapSync = isMapSync;
        DeviceMajor = devMajor;
        DeviceMinor = devMinor;
        Inode = inode;
        Created = created;
        _memory = new DaxMemoryManager(this);
    }

    /// <summary>The path the file was opened with.</summary>
    public string Path { get; }

    /// <summary>Read-write or read-only (also the kind of lease <see cref="AcquireLease"/> takes).</summary>
    public DaxFileAccess Access { get; }

    /// <summary>True when statx reported STATX_ATTR_DAX: the file's pages are persistent memory, not page cache.</summary>
    public bool IsDax { get; }

    /// <summary>True when the mapping was made with MAP_SHARED_VALIDATE|MAP_SYNC (FS-DAX and read-write).</summary>
    public bool IsMapSync { get; }

    /// <summary>True when this call created the file.</summary>
    public bool Created { get; }

    /// <summary>The mapped length in bytes.</summary>
    public long Length { get; }

    /// <summary>Major number of the device holding the file (as /proc/locks prints it).</summary>
    public uint DeviceMajor { get; }

    /// <summary>Minor number of the device holding the file.</summary>
    public uint DeviceMinor { get; }

    /// <summary>The file's inode number.</summary>
    public ulong Inode { get; }

    /// <summary>The open file descriptor (owned by this object; do not close it).</summary>
    public int FileDescriptor
    {
        get
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                return _fd;
            }
        }
    }

    /// <summary>True while the file mapping is in place (false after a lease break revoked it, or after Dispose).</summary>
    public bool IsMapped
    {
        get
        {
            lock (_gate)
                return !_disposed && !_revoked;
        }
    }

    /// <summary>The lease currently held on this file, if any.</summary>
    public FileLease? Lease
    {
        get
        {
            lock (_gate)
                return _lease is { IsActive: true } l ? l : null;
        }
    }

    /// <summary>The start of the mapping, for memory registration. Throws once the mapping is revoked or disposed.</summary>
    public byte* BaseAddress
    {
        get
        {
            lock (_gate)
            {
                ThrowIfUnusable();
                return _address;
            }
        }
    }

    /// <summary>The whole mapping. Needs <see cref="Length"/> &lt;= int.MaxValue; use <see cref="GetSpan"/> otherwise.</summary>
    public Span<byte> Span => GetSpan(0, checked((int)Length));

    /// <summary>The whole mapping as <see cref="Memory{T}"/> (backed by a <see cref="MemoryManager{T}"/>; pinning is free).</summary>
    public Memory<byte> Memory
    {
        get
        {
            lock (_gate)
                ThrowIfUnusable();
            return _memory.Memory;
        }
    }

    /// <summary><paramref name="length"/> bytes of the mapping from <paramref name="offset"/>.</summary>
    public Span<byte> GetSpan(long offset, int length)
    {
        CheckRange(offset, length);
        lock (_gate)
        {
            ThrowIfUnusable();
            return new Span<byte>(_address + offset, length);
        }
    }

    /// <summary>
    /// Opens (or, with <see cref="DaxFileOptions.Size"/>, creates) <paramref name="path"/> and maps it MAP_SHARED.
    /// On FS-DAX a read-write mapping uses MAP_SHARED_VALIDATE|MAP_SYNC. A file that is not on FS-DAX is refused with
    /// <see cref="FileNotOnDaxException"/> unless <see cref="DaxFileOptions.AllowNonDax"/> is set (a file this call
    /// created is removed again then).
    /// </summary>
    /// <exception cref="ArgumentException">Bad path or options.</exception>
    /// <exception cref="FileNotOnDaxException">Not on FS-DAX and not allowed.</exception>
    /// <exception cref="UnixIOException">open, statx, ftruncate or mmap failed.</exception>
    public static DaxFile Open(string path, DaxFileOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new DaxFileOptions();
        if (!Enum.IsDefined(options.Access))
            throw new ArgumentOutOfRangeException(nameof(options), options.Access, "unknown DaxFileAccess");
        if (options.Size is { } requested)
        {
            if (requested <= 0)
                throw new ArgumentOutOfRangeException(nameof(options), requested, "DaxFileOptions.Size must be positive");
            if (options.Access == DaxFileAccess.Read)
                throw new ArgumentException("DaxFileOptions.Size creates or extends the file, which needs DaxFileAccess.ReadWrite", nameof(options));
        }
        if (path.Contains('\0', StringComparison.Ordinal))
            throw new ArgumentException("path contains a NUL character", nameof(path));

        bool write = options.Access == DaxFileAccess.ReadWrite;
        byte[] cpath = Encoding.UTF8.GetBytes(path + "\0");
        int fd;
        bool created = false;
        fixed (byte* p = cpath)
        {
            int flags = O_CLOEXEC | (write ? O_RDWR : O_RDONLY);
            fd = open(p, flags, 0);
            if (fd < 0 && errno == ENOENT && options.Size is not null)
            {
                fd = open(p, flags | O_CREAT | O_EXCL, (mode_t)(uint)options.CreateMode);
                created = fd >= 0;
                if (fd < 0 && errno == EEXIST)
                    fd = open(p, flags, 0);   // lost a race with another creator: open theirs
            }
            if (fd < 0)
                throw UnixIOException.Last($"open '{path}'");
        }

        try
        {
            statx stx;
            byte empty = 0;
            if (statx(fd, &empty, AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) != 0)
                throw UnixIOException.Last($"statx '{path}'");
            if ((stx.stx_mode & 0xF000) != 0x8000)   // S_IFMT, S_IFREG
                throw new ArgumentException($"'{path}' is not a regular file", nameof(path));
            bool isDax = (stx.stx_attributes & STATX_ATTR_DAX) != 0;
            if (!isDax && !options.AllowNonDax)
                throw new FileNotOnDaxException(path);

            long length = options.Size ?? (long)stx.stx_size;
            if (length <= 0)
                throw new ArgumentException($"'{path}' is empty: pass DaxFileOptions.Size to give it a length", nameof(path));
            if (options.Size is { } size && (long)stx.stx_size < size)
            {
                if (ftruncate(fd, size) != 0)
                    throw UnixIOException.Last($"ftruncate '{path}' to {size} bytes");
                if (fsync(fd) != 0)   // the new size must survive a crash as well as the data will
                    throw UnixIOException.Last($"fsync '{path}'");
            }

            bool mapSync = isDax && write;
            int prot = write ? PROT_READ | PROT_WRITE : PROT_READ;
            int mapFlags = mapSync ? MAP_SHARED_VALIDATE | MAP_SYNC : MAP_SHARED;
            void* address = mmap(null, SizeT(length), prot, mapFlags, fd, 0);
            if (address == MAP_FAILED)
                throw UnixIOException.Last($"mmap '{path}' ({length} bytes, {(mapSync ? "MAP_SHARED_VALIDATE|MAP_SYNC" : "MAP_SHARED")})");
            return new DaxFile(path, options.Access, fd, (byte*)address, length, isDax, mapSync,
                stx.stx_dev_major, stx.stx_dev_minor, stx.stx_ino, created);
        }
        catch
        {
            _ = close(fd);
            if (created)
            {
                fixed (byte* p = cpath)
                    _ = unlink(p);
            }
            throw;
        }
    }

    /// <summary>
    /// Takes a lease on this file (see <see cref="FileLease"/>): a write lease for a read-write file, a read lease for a
    /// read-only one; a delegation where the kernel has F_SETDELEG. One lease at a time per file.
    /// </summary>
    public FileLease AcquireLease(LeaseOptions? options = null) => FileLease.Acquire(this, options);

    /// <summary>
    /// Makes the stores to [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>) durable.
    /// On a MAP_SYNC mapping (FS-DAX, read-write) the CPU cache lines are written back from user space (clwb, else
    /// clflushopt, else clflush, then sfence; no system call: MAP_SYNC guarantees the file's metadata for every
    /// written page is already durable). Otherwise msync(MS_SYNC) over the pages of the range.
    /// </summary>
    /// <returns>How it was done.</returns>
    public FlushMethod Flush(long offset, long length)
    {
        CheckRange(offset, length);
        lock (_gate)
        {
            ThrowIfUnusable();
            if (IsMapSync)
                return (FlushMethod)Interop.CacheFlush.FlushCpuCaches(_address + offset, (ulong)length);
            long page = getpagesize();
            long start = offset / page * page;
            if (msync(_address + start, SizeT(offset + length - start), MS_SYNC) != 0)
                throw UnixIOException.Last($"msync '{Path}'");
            return FlushMethod.Msync;
        }
    }

    /// <summary>Flushes the whole mapping (see <see cref="Flush(long, long)"/>).</summary>
    public FlushMethod Flush() => Flush(0, Length);

    /// <summary>The method <see cref="Flush(long, long)"/> uses on a MAP_SYNC mapping on this CPU.</summary>
    public static FlushMethod CpuFlushMethod => (FlushMethod)Interop.CacheFlush.GetCpuFlushMethod();

    /// <summary>Releases the lease (running its teardown callbacks), unmaps and closes the file. Idempotent.</summary>
    public void Dispose()
    {
        FileLease? lease;
        lock (_gate)
        {
            if (_disposed)
                return;
            lease = _lease;
        }
        lease?.Release();
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            _ = munmap(_address, SizeT(Length));
            _ = close(_fd);
            _fd = -1;
            _address = null;
        }
    }

    internal Lock Gate => _gate;

    internal void Attach(FileLease lease)
    {
        lock (_gate)
        {
            ThrowIfUnusable();
            if (_lease is { IsActive: true })
                throw new InvalidOperationException($"'{Path}' already has an active lease; release it first");
            _lease = lease;
        }
    }

    internal void Detach(FileLease lease)
    {
        lock (_gate)
        {
            if (ReferenceEquals(_lease, lease))
                _lease = null;
        }
    }

    /// <summary>F_UNLCK on the descriptor, unless it has been closed already (closing released the lease).</summary>
    internal void ReleaseKernelLease(bool delegation)
    {
        lock (_gate)
        {
            if (_disposed)
                return;
            if (delegation)
                _ = Interop.Fcntl.SetDeleg(_fd, LibC.F_UNLCK);
            else
                _ = Interop.Fcntl.SetLease(_fd, LibC.F_UNLCK);
        }
    }

    /// <summary>
    /// Takes the file's pages out of this process after a lease break: the range is atomically replaced by
    /// anonymous memory (MAP_FIXED), so a store racing with the break lands in scratch memory instead of faulting or
    /// reaching the file. The placeholder is unmapped on Dispose.
    /// </summary>
    internal void RevokeMapping()
    {
        lock (_gate)
        {
            if (_disposed || _revoked)
                return;
            void* r = mmap(_address, SizeT(Length), PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
            if (r == MAP_FAILED)
                _ = munmap(_address, SizeT(Length));   // out of memory for the placeholder: a fault beats a stale mapping
            _revoked = true;
        }
    }

    private static size_t SizeT(long value) => (size_t)(ulong)value;

    private void ThrowIfUnusable()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_revoked)
            throw new InvalidOperationException($"the mapping of '{Path}' was revoked because its lease was broken; open the file again");
    }

    private void CheckRange(long offset, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (offset > Length - length)
            throw new ArgumentOutOfRangeException(nameof(length), $"[{offset}, {offset}+{length}) is outside the {Length}-byte mapping");
    }

    private sealed class DaxMemoryManager(DaxFile file) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => file.Span;

        // The mapping never moves; pinning only checks that it is still there.
        public override MemoryHandle Pin(int elementIndex = 0)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(elementIndex);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(elementIndex, file.Length);
            return new MemoryHandle(file.BaseAddress + elementIndex);
        }

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
