using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// The post references of every region a post names, one per segment, taken all at once (rolled back if one is
/// revoked or disposed) and given back together: the list form of <see cref="MemoryRegion.EnterForPost"/>. The span
/// must be memory only the posting thread can change (a <see cref="SendBatch"/>, or a copy on the post's stack), so
/// what is given back is exactly what was taken. Immutable once made: a <c>using</c> copy gives back the same.
/// </summary>
internal readonly ref struct RegionReferences
{
    readonly ReadOnlySpan<LocalSegment> _segments;

    RegionReferences(ReadOnlySpan<LocalSegment> segments) => _segments = segments;

    public static RegionReferences Enter(ReadOnlySpan<LocalSegment> segments)
    {
        int entered = 0;
        try
        {
            for (; entered < segments.Length; entered++)
                segments[entered].Region.EnterForPost();   // the reference is given back by Dispose (or below)
        }
        catch
        {
            Release(segments[..entered]);
            throw;
        }
        return new RegionReferences(segments);
    }

    public void Dispose() => Release(_segments);

    static void Release(ReadOnlySpan<LocalSegment> segments)
    {
        foreach (ref readonly LocalSegment s in segments)
            s.Region.ExitPost();
    }
}

/// <summary>
/// References on the address handles of a post's UD sends, held across the native call like the regions' (a handle
/// disposed meanwhile is destroyed after the post returns); their native pointers go to <c>pointers</c> (0: no handle).
/// </summary>
internal readonly unsafe ref struct AddressReferences
{
    readonly ReadOnlySpan<SendWork> _work;

    AddressReferences(ReadOnlySpan<SendWork> work) => _work = work;

    public static AddressReferences Enter(ReadOnlySpan<SendWork> work, nint* pointers)
    {
        int entered = 0;
        try
        {
            for (; entered < work.Length; entered++)
            {
                NativeHandle? handle = work[entered].Address?.HandleForChildren;
                pointers[entered] = handle is null ? 0 : handle.Enter().Pointer;   // given back by Dispose (or below)
            }
        }
        catch
        {
            Release(work[..entered]);
            throw;
        }
        return new AddressReferences(work);
    }

    public void Dispose() => Release(_work);

    static void Release(ReadOnlySpan<SendWork> work)
    {
        foreach (ref readonly SendWork w in work)
            w.Address?.HandleForChildren.DangerousRelease();
    }
}
