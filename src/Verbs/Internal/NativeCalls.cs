using System.Runtime.InteropServices;

namespace RdmaLease.Verbs.Internal;

/// <summary>
/// The one way the verbs layer creates a native object and makes a native call that reports an errno: enter the
/// handles, call, check, throw a <see cref="VerbsException"/> with the errno, give the references back. Creators and
/// queries go through here so none of them can forget the errno, leak a reference or leave a half-made handle.
/// </summary>
internal static unsafe class NativeCalls
{
    /// <summary>
    /// Creates a native object under <paramref name="parent"/> (null for none): the new handle takes its references on
    /// the parent and <paramref name="dependencies"/> first, so none of them can be closed between the creation and
    /// the moment the object depends on them; then <paramref name="create"/> runs with the parent's pointer and
    /// <paramref name="argument"/>. A null result throws a <see cref="VerbsException"/> with the errno
    /// <paramref name="create"/> left (it must return right after its P/Invoke), and <paramref name="hint"/> for it.
    /// </summary>
    /// <param name="parent">The object's parent (its pointer goes to <paramref name="create"/>), or null.</param>
    /// <param name="argument">Passed to <paramref name="create"/>: a value, or the address of a local struct of arguments.</param>
    /// <param name="create">The native create; a static lambda, so nothing is captured or allocated.</param>
    /// <param name="destroy">The native destroy of the handle.</param>
    /// <param name="operation">The verb, for the exception.</param>
    /// <param name="target">What it was applied to, for the exception.</param>
    /// <param name="what">The handle's description.</param>
    /// <param name="hint">Advice for an errno, or null.</param>
    /// <param name="onFailure">Runs when no object was made (the call failed or threw), e.g. to free memory meant for it.</param>
    /// <param name="dependencies">Further handles that must outlive the object.</param>
    internal static NativeHandle Create(NativeHandle? parent, nint argument, Func<nint, nint, nint> create, delegate*<nint, int> destroy,
        string operation, string target, string what, Func<int, string?>? hint = null, Action? onFailure = null,
        params ReadOnlySpan<SafeHandle?> dependencies)
    {
        NativeHandle handle;
        try
        {
            handle = new NativeHandle(0, destroy, what, [parent, .. dependencies]);
        }
        catch
        {
            onFailure?.Invoke();
            throw;
        }
        nint created;
        int errno = 0;
        try
        {
            using var p = parent is null ? default : parent.Enter();
            created = create(p.Pointer, argument);
            if (created == 0)
                errno = Marshal.GetLastPInvokeError();
        }
        catch
        {
            handle.ReleaseDependenciesOfUnusedHandle();
            onFailure?.Invoke();
            throw;
        }
        if (created == 0)
        {
            handle.ReleaseDependenciesOfUnusedHandle();
            onFailure?.Invoke();
            throw new VerbsException(operation, target, errno, hint?.Invoke(errno));
        }
        handle.Attach(created, what);
        return handle;
    }

    /// <summary>
    /// Runs <paramref name="call"/> (a verb that returns 0 or an errno) on <paramref name="handle"/>'s pointer with
    /// <paramref name="argument"/>; a non-zero result throws a <see cref="VerbsException"/> for
    /// <paramref name="target"/> with <paramref name="hint"/>'s advice.
    /// </summary>
    internal static void Call(NativeHandle handle, nint argument, Func<nint, nint, int> call, string operation, object target,
        Func<int, string?>? hint = null)
    {
        int rc;
        using (var h = handle.Enter())
            rc = call(h.Pointer, argument);
        if (rc != 0)
            throw new VerbsException(operation, target.ToString() ?? operation, rc, hint?.Invoke(rc));
    }
}
