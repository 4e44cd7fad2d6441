using System.Diagnostics;
using System.Runtime.InteropServices;

namespace RdmaLease.Verbs.Internal;

/// <summary>
/// A reference to a native handle, taken by <see cref="NativeHandle.Enter"/> and given back by <see cref="Dispose"/>:
/// the one way code reaches a native pointer. Use it as <c>using var qp = Handle.Enter();</c>, one per handle, so a
/// second handle that throws on entry can never leak the first one's reference (a leaked reference defers the native
/// destroy for ever: an MR that stays registered, a PD that is never freed).
/// </summary>
internal readonly ref struct HandleScope
{
    readonly SafeHandle? _handle;

    internal HandleScope(SafeHandle handle, nint pointer)
    {
        _handle = handle;
        Pointer = pointer;
    }

    /// <summary>The native pointer, valid until <see cref="Dispose"/>.</summary>
    public nint Pointer { get; }

    public void Dispose() => _handle?.DangerousRelease();
}

/// <summary>What became of a handle's native destroy.</summary>
internal enum DestroyState
{
    /// <summary>Not destroyed yet (open, or closed while a reference is still held).</summary>
    Pending,
    /// <summary>The native destroy returned success: the kernel object is gone.</summary>
    Destroyed,
    /// <summary>The native destroy failed even after retries; the object may still exist in the kernel.</summary>
    Failed,
}

/// <summary>
/// The SafeHandle under every verbs object. It keeps the handles it depends on alive (its parent, and for a QP also its
/// CQs and SRQ, for a region over a file mapping the mapping and the descriptor): DangerousAddRef at creation,
/// DangerousRelease only after the native destroy SUCCEEDED. So nothing is destroyed natively before what uses it, and
/// memory a region covers is never unmapped or freed while the region might still exist, whatever order the
/// application, the GC or other threads release things in. Native calls take a reference with <see cref="Enter"/>
/// (a <see cref="HandleScope"/>), which throws ObjectDisposedException once the handle is closed: a disposed object
/// never reaches native code, and a dispose racing a call destroys the object when the call returns; a caller that
/// needs to know the kernel object is gone waits with <see cref="WaitForDestroy"/>.
/// </summary>
internal sealed unsafe class NativeHandle : SafeHandle
{
    /// <summary>Attempts of a native destroy that fails before it is declared failed (EBUSY-like transient refusals).</summary>
    internal const int DestroyAttempts = 3;

    readonly SafeHandle[] _dependencies;
    readonly delegate*<nint, int> _destroy;
    string _what;
    int _destroyState;   // DestroyState
    int _destroyErrno;
    int _destroyCalls;

    /// <summary>Memory (NativeMemory.AlignedAlloc) to free once the native destroy succeeded.</summary>
    public nint FreeAfterDestroy { get; set; }

    /// <summary>
    /// Test hook: the next this-many native destroys fail with <see cref="InjectedDestroyErrno"/> instead of running
    /// (the kernel object stays), so the failure paths can be driven on a real device.
    /// </summary>
    internal int InjectDestroyFailures;
    internal int InjectedDestroyErrno = Errno.EBUSY;

    /// <param name="handle">The native pointer (not 0).</param>
    /// <param name="destroy">The native destroy; returns 0 or an errno value.</param>
    /// <param name="what">A description for messages.</param>
    /// <param name="dependencies">Handles that must outlive this one (nulls are skipped).</param>
    public NativeHandle(nint handle, delegate*<nint, int> destroy, string what, params ReadOnlySpan<SafeHandle?> dependencies)
        : base(0, ownsHandle: true)
    {
        _destroy = destroy;
        _what = what;
        var deps = new List<SafeHandle>(dependencies.Length);
        try
        {
            foreach (var d in dependencies)
            {
                if (d == null)
                    continue;
                bool added = false;
                d.DangerousAddRef(ref added);
                deps.Add(d);
            }
        }
        catch
        {
            foreach (var d in deps)
                d.DangerousRelease();
            throw;
        }
        _dependencies = [.. deps];
        SetHandle(handle);
    }

    /// <summary>
    /// Sets the native pointer of a handle made with 0 (its dependencies referenced before the native object was
    /// created, so none of them can go away in between).
    /// </summary>
    internal void Attach(nint pointer, string what)
    {
        if (handle != 0 || pointer == 0)
            throw new InvalidOperationException($"{_what}: already attached, or a null pointer");
        _what = what;
        SetHandle(pointer);
    }

    /// <summary>Replaces the description used in messages (e.g. with a key known only once the object exists).</summary>
    internal void Rename(string what) => _what = what;

    /// <summary>For a handle made with 0 whose native object could not be created: gives the references back.</summary>
    internal void ReleaseDependenciesOfUnusedHandle()
    {
        if (handle != 0)
            throw new InvalidOperationException($"{_what} is attached to a native object");
        foreach (var d in _dependencies)
            d.DangerousRelease();
        SetHandleAsInvalid();
    }

    public override bool IsInvalid => handle == 0;

    // Set by Dispose. SafeHandle itself only refuses new references once the count reaches zero,
    // and a parent's count stays up while children depend on it: this flag refuses them at once.
    volatile bool _disposeRequested;

    /// <summary>True once Dispose was called (new references are refused), whether or not the native object is gone yet.</summary>
    public bool DisposeRequested => _disposeRequested;

    /// <summary>Takes a reference for a native call; dispose the scope to give it back.</summary>
    /// <exception cref="ObjectDisposedException">The object was disposed.</exception>
    public HandleScope Enter()
    {
        ObjectDisposedException.ThrowIf(_disposeRequested, this);
        bool added = false;
        DangerousAddRef(ref added);
        return new HandleScope(this, handle);
    }

    /// <summary>The outcome of the native destroy so far.</summary>
    public DestroyState DestroyState => (DestroyState)Volatile.Read(ref _destroyState);

    /// <summary>How many times the native destroy was called (failed attempts and retries included).</summary>
    public int DestroyCalls => Volatile.Read(ref _destroyCalls);

    /// <summary>The errno of the last failed native destroy (0 when none failed).</summary>
    public int DestroyErrno => Volatile.Read(ref _destroyErrno);

    /// <summary>
    /// Waits until the native destroy has run (it runs when the last reference is given back after Dispose), at most
    /// until <paramref name="deadline"/> (a Stopwatch timestamp). Returns the state then: Destroyed means the kernel
    /// object is confirmed gone.
    /// </summary>
    public DestroyState WaitForDestroy(long deadline)
    {
        var spin = new SpinWait();
        while (true)
        {
            var state = DestroyState;
            if (state != DestroyState.Pending || Stopwatch.GetTimestamp() >= deadline)
                return state;
            // A reference holder is inside a native call of microseconds (or descheduled): spin, then sleep briefly.
            if (spin.NextSpinWillYield && spin.Count > 40)
                Thread.Sleep(1);
            else
                spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    protected override void Dispose(bool disposing)
    {
        _disposeRequested = true;
        if (disposing)
        {
            base.Dispose(disposing);
            return;
        }
        try
        {
            base.Dispose(disposing);   // the finalizer: an exception here would end the process
        }
        catch (Exception e)
        {
            Trace.TraceError($"rdma-lease: finalizing {_what} failed: {e.Message}");
        }
    }

    protected override bool ReleaseHandle() => TryDestroy();

    /// <summary>
    /// After a failed destroy (<see cref="DestroyState.Failed"/>): tries once more; on success the dependencies are
    /// released as after a normal destroy. Returns true when the object is (now) destroyed.
    /// </summary>
    internal bool RetryFailedDestroy() => DestroyState == DestroyState.Destroyed || (DestroyState == DestroyState.Failed && TryDestroy());

    bool TryDestroy()
    {
        int rc = 0;
        for (int attempt = 0; attempt < DestroyAttempts; attempt++)
        {
            Interlocked.Increment(ref _destroyCalls);
            rc = InjectDestroyFailures > 0 && Interlocked.Decrement(ref InjectDestroyFailures) >= 0 ? InjectedDestroyErrno : _destroy(handle);
            if (rc == 0)
                break;
            Volatile.Write(ref _destroyErrno, rc);
            if (attempt + 1 < DestroyAttempts)
                Thread.Sleep(1);
        }
        if (rc != 0)
        {
            // The object may still exist: keep everything it depends on (its memory, mapping, parent) as it is.
            Volatile.Write(ref _destroyState, (int)DestroyState.Failed);
            Trace.TraceError($"rdma-lease: destroying {_what} failed with {Errno.Describe(rc)} after {DestroyAttempts} attempts; " +
                "the memory and objects it depends on are kept (never reused) so nothing can reach them through it");
            return false;
        }
        if (FreeAfterDestroy != 0)
            NativeMemory.AlignedFree((void*)FreeAfterDestroy);
        Volatile.Write(ref _destroyState, (int)DestroyState.Destroyed);
        foreach (var d in _dependencies)
            d.DangerousRelease();
        return true;
    }

    public override string ToString() => _what;
}

/// <summary>
/// Base of the public verbs objects: owns a <see cref="NativeHandle"/> and the children
/// created from it (as pyverbs does). Dispose closes the children first, then itself; it is
/// idempotent and safe from any thread.
/// </summary>
public abstract class VerbsObject : IDisposable
{
    private protected readonly NativeHandle Handle;
    readonly VerbsObject? _parent;
    // Child -> creation sequence, so Dispose can close the newest first.
    readonly Dictionary<VerbsObject, long> _children = new(ReferenceEqualityComparer.Instance);
    long _sequence;
    bool _disposed;

    private protected VerbsObject(NativeHandle handle, VerbsObject? parent)
    {
        Handle = handle;
        _parent = parent;
        try
        {
            parent?.AddChild(this);
        }
        catch
        {
            handle.Dispose();   // the parent was disposed meanwhile: the new native object must not outlive it
            throw;
        }
    }

    /// <summary>The handle children take as a dependency.</summary>
    internal NativeHandle HandleForChildren => Handle;

    /// <summary>True once <see cref="Dispose()"/> ran.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed);

    void AddChild(VerbsObject child)
    {
        lock (_children)
        {
            // A parent being disposed must not gain children it would never close.
            ObjectDisposedException.ThrowIf(_disposed, this);
            _children.Add(child, _sequence++);
        }
    }

    void RemoveChild(VerbsObject child)
    {
        lock (_children)
            _children.Remove(child);
    }

    /// <summary>
    /// Makes <paramref name="dependent"/>, created elsewhere, one of this object's children too: this object's Dispose
    /// closes it first. A memory window bound to a region is one (the region cannot be deregistered while a window is
    /// bound to it). Throws ObjectDisposedException when this object is disposed or being disposed.
    /// </summary>
    internal void AddDependent(VerbsObject dependent) => AddChild(dependent);

    /// <summary>Undoes <see cref="AddDependent"/> (nothing when it is not one).</summary>
    internal void RemoveDependent(VerbsObject dependent) => RemoveChild(dependent);

    /// <summary>The live children of type <typeparamref name="T"/>, oldest first.</summary>
    internal List<T> ChildrenOf<T>() where T : VerbsObject
    {
        lock (_children)
            return [.. _children.OrderBy(c => c.Value).Select(c => c.Key).OfType<T>()];
    }

    /// <summary>Destroys the children this object created, then the object itself.</summary>
    public void Dispose()
    {
        VerbsObject[] children;
        lock (_children)
        {
            if (_disposed)
                return;
            _disposed = true;
            children = [.. _children.OrderByDescending(c => c.Value).Select(c => c.Key)];
            _children.Clear();
        }
        // Newest first, the reverse of creation. Cross-links (a QP's CQs) are kept alive by
        // NativeHandle dependencies, so the native destroy order is right in any case.
        foreach (var child in children)
            child.Dispose();
        OnDisposing();
        Handle.Dispose();
        _parent?.RemoveChild(this);
        GC.SuppressFinalize(this);
    }

    /// <summary>Runs once, after the children are closed and before the native handle is.</summary>
    private protected virtual void OnDisposing() { }

    /// <summary>A short description for messages, e.g. <c>QP 0x11 on rxelo</c>.</summary>
    public abstract override string ToString();
}
