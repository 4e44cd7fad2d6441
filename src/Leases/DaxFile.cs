using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using RdmaLease.Verbs;
using RdmaLease.Verbs.Internal;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace RdmaLease.Leases;

/// <summary>
/// A file mapped MAP_SHARED into this process, normally on FS-DAX (the mapping then reaches persistent memory
/// directly and is MAP_SYNC, so CPU stores are durable once their cache lines are written back with
/// <see cref="Flush(long, long)"/>). The mapping is exposed as <see cref="Span"/>/<see cref="Memory"/> and as a raw
/// <see cref="BaseAddress"/>/<see cref="Length"/>. To hand the file to an RDMA device, take a <see cref="FileLease"/> with
/// <see cref="AcquireLease"/> and register through it (<c>pd.Register(lease, access)</c>); registering the mapping's
/// address directly is refused, since such a region would not be tied to the lease.
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
    // Held for a whole lease acquisition, and by Dispose before it looks at the lease: a Dispose never closes the
    // descriptor under F_SETSIG/F_SETLEASE (which would then act on a closed, or reused, descriptor).
    private readonly Lock _acquisition = new();
    // The descriptor and the mapping are SafeHandles so that a memory region over the mapping can keep both alive
    // (a region's handle depends on them): neither is closed or unmapped while a region might still exist, in
    // whatever order Dispose, a lease break or the finalizers run.
    private readonly DescriptorHandle _fd;
    // Two mappings of the same file: the application's view (Span, Memory, BaseAddress, Flush) and the one memory
    // regions are registered over. On a break the first becomes read-write scratch (a store through a span taken
    // earlier lands there instead of killing the process), the second an inaccessible placeholder (a stale key's
    // access faults and the peer gets an error). Raw registration over either is refused (ProtectedMappings).
    private readonly MappingHandle _mapping;
    private readonly byte* _address;
    private readonly MappingHandle _registrationMapping;
    private readonly byte* _registrationAddress;
    private readonly DaxMemoryManager _memory;
    private readonly List<MemoryRegion> _regions = [];   // registered over the mapping, until confirmed deregistered
    private bool _revoked;
    private bool _disposed;
    private bool _guarded;                               // the native mapping guard is armed for the current lease
    private FileLease? _lease;                           // from Attach until the lease is fully given back

    private DaxFile(string path, DaxFileAccess access, int fd, byte* address, byte* registrationAddress, long length, bool isDax, bool isMapSync,
        uint devMajor, uint devMinor, ulong inode, bool created)
    {
        Path = path;
        Access = access;
        _fd = new DescriptorHandle(fd);
        _mapping = new MappingHandle(address, length, path);
        _address = address;
        _registrationMapping = new MappingHandle(registrationAddress, length, path);
        _registrationAddress = registrationAddress;
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
                return (int)_fd.DangerousGetHandle();
            }
        }
    }

    /// <summary>True while the file mapping is in place (false after a lease break revoked it, or after Dispose).</summary>
    public bool IsMapped
    {
        get
        {
            lock (_gate)
                return !RevokedLocked() && !_mapping.IsClosed;
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

    /// <summary>
    /// The start of the mapping, for CPU access. Throws once the mapping is revoked or disposed. To register the file for
    /// RDMA use <c>pd.Register(lease, access)</c>: the registration then lives only while the lease does (registering
    /// this address with <c>ProtectionDomain.Register</c> is refused).
    /// </summary>
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
            void* registration = mmap(null, SizeT(length), prot, mapFlags, fd, 0);
            if (registration == MAP_FAILED)
            {
                var e = UnixIOException.Last($"mmap '{path}' a second time, for memory registration ({length} bytes)");
                _ = munmap(address, SizeT(length));
                throw e;
            }
            try
            {
                return new DaxFile(path, options.Access, fd, (byte*)address, (byte*)registration, length, isDax, mapSync,
                    stx.stx_dev_major, stx.stx_dev_minor, stx.stx_ino, created);
            }
            catch
            {
                _ = munmap(address, SizeT(length));
                _ = munmap(registration, SizeT(length));
                throw;
            }
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

    /// <summary>
    /// Releases the lease (deregistering the regions over the file first), unmaps and closes the file. Idempotent.
    /// If a region over the mapping could not be confirmed deregistered, the address range stays reserved (an
    /// inaccessible placeholder) and the descriptor open until it is: nothing else can be mapped where the region points.
    /// </summary>
    public void Dispose()
    {
        FileLease? lease;
        lock (_acquisition)
        {
            lock (_gate)
            {
                if (_disposed)
                    return;
                _disposed = true;   // from now on no lease can be attached
                lease = _lease;
            }
        }
        lease?.Release();
        lock (_gate)
        {
            if (HasUnconfirmedRegionsLocked())
                RevokeMappingLocked();
        }
        _mapping.Dispose();
        _registrationMapping.Dispose();   // munmap, once no region depends on the mapping any more
        _fd.Dispose();                    // close, likewise
        GC.SuppressFinalize(this);
    }

    internal Lock Gate => _gate;

    /// <summary>Held for a whole lease acquisition; Dispose waits for it.</summary>
    internal Lock AcquisitionGate => _acquisition;

    /// <summary>The handles a region over the mapping must keep alive: the registration mapping and the descriptor.</summary>
    internal (SafeHandle Mapping, SafeHandle Descriptor) MemoryOwners => (_registrationMapping, _fd);

    /// <summary>The start of the mapping memory regions are registered over. Throws once revoked or disposed.</summary>
    internal byte* RegistrationAddress
    {
        get
        {
            lock (_gate)
            {
                ThrowIfUnusable();
                return _registrationAddress;
            }
        }
    }

    /// <summary>
    /// Makes <paramref name="lease"/> the file's lease. Waits (up to <paramref name="timeout"/>) for a previous lease that
    /// is still being given back; refuses while another lease is active or the file is being disposed.
    /// </summary>
    internal void Attach(FileLease lease, TimeSpan timeout)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            FileLease? ending;
            lock (_gate)
            {
                ThrowIfUnusable();
                if (_lease is null)
                {
                    _lease = lease;
                    return;
                }
                if (_lease.IsActive)
                    throw new InvalidOperationException($"'{Path}' already has an active lease; release it first");
                ending = _lease;
            }
            // The previous lease is being given back on another thread: wait until the kernel has it back.
            if (!ending.WaitEnded(deadline))
                throw new TimeoutException($"the previous lease on '{Path}' was still being given back after {timeout.TotalSeconds:0.#} s");
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

    /// <summary>Notes a region registered over the mapping, so the file knows while one might still exist.</summary>
    internal void AddRegion(MemoryRegion region)
    {
        lock (_gate)
            _regions.Add(region);
    }

    /// <summary>True when a region over the mapping exists or may exist (its deregistration not confirmed).</summary>
    internal bool HasUnconfirmedRegions
    {
        get
        {
            lock (_gate)
                return HasUnconfirmedRegionsLocked();
        }
    }

    private bool HasUnconfirmedRegionsLocked()
    {
        _regions.RemoveAll(r => r.DeregistrationState == DestroyState.Destroyed);
        return _regions.Count > 0;
    }

    /// <summary>
    /// Arms the native mapping guard for a lease just granted: a break signal for it makes the signal handler replace
    /// the mapping with the placeholder before any managed code runs (see native/lease_signals.c).
    /// </summary>
    internal void ArmGuard(LeaseType type, bool delegation)
    {
        lock (_gate)
        {
            if (_guarded || _revoked || _mapping.IsClosed)
                return;
            int slot = Interop.LeaseGuard.Arm((int)_fd.DangerousGetHandle(), _registrationAddress, _address, (ulong)Length,
                type == LeaseType.Read ? LibC.F_RDLCK : LibC.F_WRLCK, delegation ? 1 : 0);
            if (slot < 0)
            {
                Trace.TraceWarning($"rdma-lease: no native mapping guard for '{Path}' ({Verbs.Errno.Describe(Marshal.GetLastPInvokeError())}); a break is handled by the managed teardown alone");
                return;
            }
            _guarded = true;
        }
    }

    /// <summary>Disarms the guard before the lease is given back; true when the signal handler had revoked the mapping.</summary>
    internal bool DisarmGuard()
    {
        lock (_gate)
        {
            if (!_guarded)
                return false;
            _guarded = false;
            if (Interop.LeaseGuard.Disarm((int)_fd.DangerousGetHandle(), _registrationAddress) == 0)
                return false;
            _revoked = true;
            return true;
        }
    }

    /// <summary>F_UNLCK on the descriptor, unless it has been closed already (closing released the lease).</summary>
    internal void ReleaseKernelLease(bool delegation)
    {
        lock (_gate)
        {
            bool added = false;
            try
            {
                _fd.DangerousAddRef(ref added);
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            try
            {
                int fd = (int)_fd.DangerousGetHandle();
                _ = delegation ? Interop.Fcntl.SetDeleg(fd, LibC.F_UNLCK) : Interop.Fcntl.SetLease(fd, LibC.F_UNLCK);
            }
            finally
            {
                _fd.DangerousRelease();
            }
        }
    }

    /// <summary>The file's size now (fstat), to check that nobody shrank it under the mapping.</summary>
    internal long CurrentSize()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            statx stx;
            byte empty = 0;
            if (statx((int)_fd.DangerousGetHandle(), &empty, AT_EMPTY_PATH, STATX_SIZE, &stx) != 0)
                throw UnixIOException.Last($"statx '{Path}'");
            return (long)stx.stx_size;
        }
    }

    /// <summary>
    /// Takes the file's pages out of this process (after a lease break, or when a region over them could not be
    /// confirmed deregistered): the range is atomically replaced (MAP_FIXED) by an anonymous PROT_NONE placeholder. A
    /// device's ODP access through a region over the range then faults and the peer gets an error completion, instead of
    /// reaching the file's blocks or "succeeding" into scratch memory; the range stays reserved, so nothing else is
    /// mapped there, until the mapping handle is released (after every region over it was deregistered).
    /// </summary>
    /// <exception cref="UnixIOException">Neither the placeholder nor mprotect(PROT_NONE) could be applied.</exception>
    internal void RevokeMapping()
    {
        lock (_gate)
            RevokeMappingLocked();
    }

    private void RevokeMappingLocked()
    {
        if (_revoked || _mapping.IsClosed)
            return;
        ReplaceWithPlaceholder(_registrationAddress, PROT_NONE);
        ReplaceWithPlaceholder(_address, PROT_READ | PROT_WRITE);
        _revoked = true;
    }

    /// <summary>
    /// MAP_FIXED anonymous memory over one of the file's mappings (never munmap: the range must stay reserved). Out of
    /// memory for a new mapping: at least take every access away from the file's.
    /// </summary>
    private void ReplaceWithPlaceholder(byte* at, int protection)
    {
        void* r = mmap(at, SizeT(Length), protection, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
        if (r != MAP_FAILED)
            return;
        int mmapErrno = errno;
        if (mprotect(at, SizeT(Length), PROT_NONE) != 0)
            throw UnixIOException.Last($"revoking the mapping of '{Path}' (mmap placeholder failed with errno {mmapErrno}, then mprotect PROT_NONE)");
    }

    private static size_t SizeT(long value) => (size_t)(ulong)value;

    /// <summary>Revoked by the managed teardown, or already by the signal handler (the guard is asked).</summary>
    private bool RevokedLocked()
    {
        if (!_revoked && _guarded && Interop.LeaseGuard.IsRevoked(_registrationAddress) != 0)
            _revoked = true;
        return _revoked;
    }

    private void ThrowIfUnusable()
    {
        // (callers hold _gate)
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (RevokedLocked())
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

    /// <summary>The file descriptor: closed when released (after every region that depends on it).</summary>
    private sealed class DescriptorHandle : SafeHandle
    {
        public DescriptorHandle(int fd)
            : base(-1, ownsHandle: true) => SetHandle(fd);

        public override bool IsInvalid => handle < 0;

        protected override bool ReleaseHandle()
        {
            _ = Interop.LeaseGuard.Disarm((int)handle, null);   // no handler may act on this number once it can be reused
            return close((int)handle) == 0;
        }
    }

    /// <summary>
    /// A mapping's address range: unmapped when released (after every region that depends on it). While it exists, the
    /// range is refused to raw registration (ProtectedMappings).
    /// </summary>
    private sealed class MappingHandle : SafeHandle
    {
        private readonly long _length;

        public MappingHandle(void* address, long length, string path)
            : base(0, ownsHandle: true)
        {
            _length = length;
            SetHandle((nint)address);
            ProtectedMappings.Add((nint)address, (nuint)length, path);
        }

        public override bool IsInvalid => handle == 0;

        protected override bool ReleaseHandle()
        {
            _ = Interop.LeaseGuard.Disarm(-1, (void*)handle);   // no handler may map over the range once it can be reused
            ProtectedMappings.Remove((nint)handle);
            return munmap((void*)handle, SizeT(_length)) == 0;
        }
    }
}
