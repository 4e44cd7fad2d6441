using System.Runtime.InteropServices;

namespace RdmaLease.Verbs.Internal;

/// <summary>
/// The SafeHandle under every verbs object. It keeps the handles it depends on alive (its
/// parent, and for a QP also its CQs and SRQ: DangerousAddRef at creation, DangerousRelease
/// after the native destroy), so nothing is destroyed natively before what uses it, whatever
/// order the application, the GC or other threads release things in. Calls into native code take a reference with <see cref="Enter"/>,
/// which throws ObjectDisposedException once the handle is closed: a disposed object never
/// reaches native code, and a dispose racing a call waits for the call to return.
/// </summary>
internal sealed unsafe class NativeHandle : SafeHandle
{
    readonly NativeHandle[] _dependencies;
    readonly unsafe delegate*<nint, int> _destroy;
    readonly string _what;

    /// <summary>Memory (NativeMemory.AlignedAlloc) to free once the native destroy succeeded.</summary>
    public nint FreeAfterDestroy { get; set; }

    /// <summary>The errno of a failed native destroy, for diagnostics (0 when it succeeded).</summary>
    public int DestroyErrno { get; private set; }

    /// <param name="handle">The native pointer (not 0).</param>
    /// <param name="destroy">The native destroy; returns 0 or an errno value.</param>
    /// <param name="what">A description for messages.</param>
    /// <param name="dependencies">Handles that must outlive this one.</param>
    public unsafe NativeHandle(nint handle, delegate*<nint, int> destroy, string what, params ReadOnlySpan<NativeHandle?> dependencies)
        : base(0, ownsHandle: true)
    {
        _destroy = destroy;
        _what = what;
        var deps = new List<NativeHandle>(dependencies.Length);
        foreach (var d in dependencies)
        {
            if (d == null)
                continue;
            bool added = false;
            d.DangerousAddRef(ref added);
            deps.Add(d);
        }
        _dependencies = [.. deps];
        SetHandle(handle);
    }

    public override bool IsInvalid => handle == 0;

    // Set by Dispose. SafeHandle itself only refuses new references once the count reaches zero,
    // and a parent's count stays up while children depend on it: this flag refuses them at once.
    volatile bool _disposeRequested;

    /// <summary>The raw pointer, after taking a reference that <see cref="Exit"/> gives back.</summary>
    /// <exception cref="ObjectDisposedException">The object was disposed.</exception>
    public nint Enter()
    {
        ObjectDisposedException.ThrowIf(_disposeRequested, this);
        bool added = false;
        DangerousAddRef(ref added);
        return handle;
    }

    public void Exit() => DangerousRelease();

    protected override void Dispose(bool disposing)
    {
        _disposeRequested = true;
        base.Dispose(disposing);
    }

    protected override unsafe bool ReleaseHandle()
    {
        int rc = _destroy(handle);
        DestroyErrno = rc;
        // Memory still registered must not be reused: on a failed deregistration it leaks instead.
        if (rc == 0 && FreeAfterDestroy != 0)
            NativeMemory.AlignedFree((void*)FreeAfterDestroy);
        foreach (var d in _dependencies)
            d.DangerousRelease();
        return rc == 0;
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
        parent?.AddChild(this);
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
