using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace RdmaLease.Interop;

/// <summary>
/// Loads rdma-core's libraries for the generated bindings. One <see cref="NativeLibrary"/>
/// resolver, registered by a module initializer, maps the names the bindings import
/// (<c>ibverbs</c>, <c>rdmacm</c>) to the sonames Debian installs (<c>libibverbs.so.1</c>,
/// <c>librdmacm.so.1</c>), so no <c>-dev</c> package is needed at run time.
/// </summary>
/// <remarks>
/// <para>Overrides, in the order they are consulted: <see cref="Resolver"/> (a hook of your own);
/// the environment variables <c>RDMA_LEASE_LIBIBVERBS</c> and <c>RDMA_LEASE_LIBRDMACM</c> (a path
/// or soname to load instead); then the default soname.</para>
/// <para>Opt out of the resolver entirely with the AppContext switch
/// <c>RdmaLease.Interop.DisableNativeLibraryResolver</c> (for example
/// <c>&lt;RuntimeHostConfigurationOption Include="RdmaLease.Interop.DisableNativeLibraryResolver" Value="true" /&gt;</c>)
/// or the environment variable <c>RDMA_LEASE_DISABLE_RESOLVER=1</c>; the runtime's default
/// probing then applies.</para>
/// <para>The safe layer calls <see cref="EnsureLoaded"/> before its first native call, so a
/// machine without rdma-core gets <see cref="RdmaLibraryNotFoundException"/> naming the packages
/// to install instead of a <see cref="DllNotFoundException"/> from deep inside a call.</para>
/// </remarks>
public static class NativeLibraries
{
    /// <summary>The library name the bindings import libibverbs by.</summary>
    public const string IbVerbs = "ibverbs";
    /// <summary>The library name the bindings import librdmacm by.</summary>
    public const string RdmaCm = "rdmacm";

    /// <summary>AppContext switch that keeps the resolver from being registered.</summary>
    public const string DisableResolverSwitch = "RdmaLease.Interop.DisableNativeLibraryResolver";

    private static readonly Lock Gate = new();
    private static readonly Dictionary<string, LoadedLibrary> Loaded = new(StringComparer.Ordinal);

    private sealed record LoadedLibrary(nint Handle, string? Path);

    internal sealed record LibraryInfo(string Name, string Soname, string EnvironmentVariable, string DisplayName, string Packages);

    internal static readonly LibraryInfo IbVerbsInfo =
        new(IbVerbs, "libibverbs.so.1", "RDMA_LEASE_LIBIBVERBS", "libibverbs", "libibverbs1 ibverbs-providers");
    internal static readonly LibraryInfo RdmaCmInfo =
        new(RdmaCm, "librdmacm.so.1", "RDMA_LEASE_LIBRDMACM", "librdmacm", "librdmacm1 libibverbs1 ibverbs-providers");

    /// <summary>
    /// A resolver consulted before ours for every library the bindings import
    /// (<c>ibverbs</c>, <c>rdmacm</c>). Return a handle to use it, or zero to fall through to the
    /// environment overrides and the default sonames. Set it before the first native call.
    /// </summary>
    public static Func<string, nint>? Resolver { get; set; }

    /// <summary>Whether the module initializer registered the resolver (false when opted out).</summary>
    public static bool ResolverRegistered { get; private set; }

    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255",
        Justification = "The resolver must be in place before any generated LibraryImport binds, whoever calls first.")]
    internal static void Register()
    {
        if (AppContext.TryGetSwitch(DisableResolverSwitch, out var disabled) && disabled) return;
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_DISABLE_RESOLVER") is "1" or "true") return;
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
        ResolverRegistered = true;
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        var info = libraryName switch { IbVerbs => IbVerbsInfo, RdmaCm => RdmaCmInfo, _ => null };
        // Throwing here (rather than returning zero) turns the runtime's DllNotFoundException
        // into our message with the packages to install.
        return info is null ? 0 : Get(info).Handle;
    }

    /// <summary>
    /// Loads libibverbs now (and librdmacm too when <paramref name="rdmaCm"/> is true), or throws
    /// <see cref="RdmaLibraryNotFoundException"/> naming the Debian packages to install. Cheap after
    /// the first success; a failure is retried on the next call.
    /// </summary>
    public static void EnsureLoaded(bool rdmaCm = false)
    {
        Get(IbVerbsInfo);
        if (rdmaCm) Get(RdmaCmInfo);
    }

    private static LoadedLibrary Get(LibraryInfo info)
    {
        lock (Gate)
        {
            if (Loaded.TryGetValue(info.Name, out var lib)) return lib;
            lib = LoadCore(info, Environment.GetEnvironmentVariable(info.EnvironmentVariable));
            Loaded[info.Name] = lib;
            return lib;
        }
    }

    /// <summary>Loads one library as <see cref="EnsureLoaded"/> would, without caching the result
    /// (for tests): the hook, then the environment override, then the soname.</summary>
    internal static (nint Handle, string? Path) LoadUncached(LibraryInfo info)
    {
        var lib = LoadCore(info, Environment.GetEnvironmentVariable(info.EnvironmentVariable));
        return (lib.Handle, lib.Path);
    }

    private static LoadedLibrary LoadCore(LibraryInfo info, string? overridePath)
    {
        var hook = Resolver;
        if (hook is not null)
        {
            var h = hook(info.Name);
            if (h != 0) return new LoadedLibrary(h, FindMappedPath(info));
        }
        var target = string.IsNullOrWhiteSpace(overridePath) ? info.Soname : overridePath;
        if (NativeLibrary.TryLoad(target, out var handle)) return new LoadedLibrary(handle, FindMappedPath(info, target));
        var why = string.IsNullOrWhiteSpace(overridePath)
            ? $"{info.Soname} was not found by the dynamic loader"
            : $"{info.EnvironmentVariable} names '{overridePath}', which could not be loaded";
        throw new RdmaLibraryNotFoundException(info.DisplayName,
            $"{info.DisplayName} could not be loaded: {why}. rdma-lease needs rdma-core's user-space libraries: " +
            $"install the Debian packages '{info.Packages}' (apt-get install {info.Packages}), " +
            $"or set {info.EnvironmentVariable} to the library's path.");
    }

    // The file the loader actually mapped, from /proc/self/maps (its name carries the version).
    private static string? FindMappedPath(LibraryInfo info, string? loaded = null)
    {
        try
        {
            var stem = loaded is not null && loaded.Contains('/') ? System.IO.Path.GetFileName(loaded) : info.Soname;
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                var slash = line.IndexOf('/');
                if (slash < 0) continue;
                var path = line[slash..];
                var name = System.IO.Path.GetFileName(path);
                if (name.StartsWith(stem, StringComparison.Ordinal) || name.StartsWith(info.Soname, StringComparison.Ordinal))
                    return path;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    // --- versions ---------------------------------------------------------------------------

    /// <summary>
    /// The rdma-core release of the loaded libibverbs (e.g. 56.1), read from the name of the file
    /// the loader mapped (<c>libibverbs.so.1.14.56.1</c>: ABI 1.14, rdma-core 56.1), or from
    /// <c>RDMA_LEASE_LIBIBVERBS_VERSION</c> when set; null when neither tells. Loads the library.
    /// </summary>
    public static Version? IbVerbsVersion
    {
        get
        {
            var forced = Environment.GetEnvironmentVariable("RDMA_LEASE_LIBIBVERBS_VERSION");
            if (!string.IsNullOrWhiteSpace(forced) && Version.TryParse(forced, out var v)) return v;
            return VersionFromFileName(Get(IbVerbsInfo).Path);
        }
    }

    /// <summary>The path of the loaded libibverbs, when it can be told. Loads the library.</summary>
    public static string? IbVerbsPath => Get(IbVerbsInfo).Path;

    /// <summary>rdma-core's version from a library file name such as libibverbs.so.1.14.56.1.</summary>
    internal static Version? VersionFromFileName(string? path)
    {
        if (path is null) return null;
        var name = System.IO.Path.GetFileName(path);
        var so = name.IndexOf(".so.", StringComparison.Ordinal);
        if (so < 0) return null;
        // .so.<abi major>.<abi minor>.<rdma-core major>.<rdma-core minor>
        var parts = name[(so + 4)..].Split('.');
        if (parts.Length < 4) return null;
        return int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var major)
            && int.TryParse(parts[3], NumberStyles.None, CultureInfo.InvariantCulture, out var minor)
            ? new Version(major, minor) : null;
    }

    /// <summary>
    /// Entry points whose structures or function-pointer slots are newer than some rdma-core
    /// releases: the minimum release we have verified to carry them. The static-inline
    /// <c>ibv_wr_flush</c>/<c>ibv_wr_atomic_write</c> call through slots appended to
    /// <c>struct ibv_qp_ex</c>; with an older libibverbs those slots lie past the end of the
    /// structure the library allocated. rdma-core 44 (Debian bookworm) verifiably lacks them and
    /// 56 (Debian trixie) has them; releases in between are refused until checked.
    /// </summary>
    public static IReadOnlyDictionary<string, Version> MinimumIbVerbsVersion { get; } = new Dictionary<string, Version>(StringComparer.Ordinal)
    {
        ["ibv_wr_flush"] = new(56, 0),
        ["ibv_wr_atomic_write"] = new(56, 0),
    };

    /// <summary>
    /// Throws <see cref="NotSupportedException"/> unless the loaded libibverbs is recent enough
    /// for <paramref name="entryPoint"/> (see <see cref="MinimumIbVerbsVersion"/>); entry points not
    /// listed there need no particular release.
    /// </summary>
    public static void RequireIbVerbs(string entryPoint)
    {
        ArgumentNullException.ThrowIfNull(entryPoint);
        if (!MinimumIbVerbsVersion.TryGetValue(entryPoint, out var min)) { EnsureLoaded(); return; }
        var have = IbVerbsVersion;
        if (have is not null && have >= min) return;
        var what = have is null
            ? $"the version of the loaded libibverbs ({IbVerbsPath ?? "path unknown"}) cannot be told from its file name; " +
              "set RDMA_LEASE_LIBIBVERBS_VERSION (e.g. 56.1) if you know it"
            : $"the loaded libibverbs is rdma-core {have} ({IbVerbsPath})";
        throw new NotSupportedException(
            $"{entryPoint} needs libibverbs from rdma-core {min} or newer, but {what}. " +
            "Install a newer libibverbs1 (Debian trixie has 56.1).");
    }
}

/// <summary>rdma-core's user-space library could not be loaded; the message names the packages to install.</summary>
public sealed class RdmaLibraryNotFoundException : DllNotFoundException
{
    /// <summary>Creates the exception.</summary>
    public RdmaLibraryNotFoundException() { }

    /// <summary>Creates the exception with a message.</summary>
    public RdmaLibraryNotFoundException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public RdmaLibraryNotFoundException(string message, Exception inner) : base(message, inner) { }

    internal RdmaLibraryNotFoundException(string library, string message) : base(message) => Library = library;

    /// <summary>The library that could not be loaded (libibverbs or librdmacm).</summary>
    public string? Library { get; }
}
