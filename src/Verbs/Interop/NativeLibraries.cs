using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace RdmaLease.Interop;

/// <summary>
/// Loads every native library rdma-lease uses, for every assembly of it: rdma-core's (<c>ibverbs</c>,
/// <c>rdmacm</c>, mapped to the sonames Debian installs, <c>libibverbs.so.1</c> and <c>librdmacm.so.1</c>, so
/// no <c>-dev</c> package is needed at run time) and our own two shims (<see cref="VerbsShim"/>, which needs
/// libibverbs, and <see cref="LeasesShim"/>, which needs only libc). One <see cref="NativeLibrary"/> resolver
/// per assembly, registered by module initializers, does it, so a missing library is reported with our
/// guidance (the packages to install) rather than a bare <see cref="DllNotFoundException"/>, and our shims
/// are checked against the ABI version the assembly was built for.
/// </summary>
/// <remarks>
/// <para>Overrides, in the order they are consulted: <see cref="Resolver"/> (a hook of your own, asked for
/// every library above); for rdma-core's libraries the environment variables <c>RDMA_LEASE_LIBIBVERBS</c>
/// and <c>RDMA_LEASE_LIBRDMACM</c> (a path or soname to load instead); then the default soname, or for our
/// shims the runtime's own probing (the application directory and the native assets its
/// <c>.deps.json</c> lists, such as a package's <c>runtimes/linux-x64/native/</c>).</para>
/// <para>Opt out of the resolver entirely with the AppContext switch
/// <c>RdmaLease.Interop.DisableNativeLibraryResolver</c> (for example
/// <c>&lt;RuntimeHostConfigurationOption Include="RdmaLease.Interop.DisableNativeLibraryResolver" Value="true" /&gt;</c>)
/// or the environment variable <c>RDMA_LEASE_DISABLE_RESOLVER=1</c>; the runtime's default
/// probing then applies.</para>
/// <para>The safe layer calls <see cref="EnsureLoaded"/> before its first native call, so a
/// machine without rdma-core gets <see cref="RdmaLibraryNotFoundException"/> naming the packages
/// to install instead of a <see cref="DllNotFoundException"/> from deep inside a call. Nothing in
/// <c>RdmaLease.Leases</c> except a registration of leased memory loads libibverbs: DAX files and leases
/// work on a machine without rdma-core.</para>
/// </remarks>
public static class NativeLibraries
{
    /// <summary>The library name the bindings import libibverbs by.</summary>
    public const string IbVerbs = "ibverbs";
    /// <summary>The library name the bindings import librdmacm by.</summary>
    public const string RdmaCm = "rdmacm";
    /// <summary>The library name of <c>librdmalease_verbs.so</c>, our shim for libibverbs' static inline verbs (needs libibverbs).</summary>
    public const string VerbsShim = "rdmalease_verbs";
    /// <summary>The library name of <c>librdmalease_leases.so</c>, our lease, break-signal and cache-flush code (needs only libc).</summary>
    public const string LeasesShim = "rdmalease_leases";

    /// <summary>AppContext switch that keeps the resolver from being registered.</summary>
    public const string DisableResolverSwitch = "RdmaLease.Interop.DisableNativeLibraryResolver";

    private static readonly Lock Gate = new();
    private static readonly Dictionary<string, LoadedLibrary> Loaded = new(StringComparer.Ordinal);

    private sealed record LoadedLibrary(nint Handle, string? Path);

    /// <summary>
    /// One native library: the name LibraryImport uses, the file the loader looks for, what to tell the user when
    /// it cannot be loaded. rdma-core's libraries have an override variable; our shims have an owning assembly
    /// (whose probing finds them), an ABI version export that must return <see cref="AbiVersion"/>, and possibly a
    /// library they need loaded first (<see cref="Requires"/>).
    /// </summary>
    internal sealed record LibraryInfo(string Name, string FileName, string DisplayName, string Remedy)
    {
        public string? EnvironmentVariable { get; init; }
        public Assembly? Owner { get; init; }
        public string? AbiExport { get; init; }
        public int AbiVersion { get; init; }
        public LibraryInfo? Requires { get; init; }
    }

    /// <summary>rdma-core's library <paramref name="soname"/>, from the Debian <paramref name="packages"/>.</summary>
    private static LibraryInfo RdmaCore(string name, string soname, string variable, string packages) =>
        new(name, soname, soname[..soname.IndexOf(".so", StringComparison.Ordinal)],
            $"rdma-lease needs rdma-core's user-space libraries: install the Debian packages '{packages}' " +
            $"(apt-get install {packages}), or set {variable} to the library's path.")
        { EnvironmentVariable = variable };

    /// <summary>
    /// One of our shims, shipped in <paramref name="owner"/>'s package under <c>runtimes/linux-x64/native</c>;
    /// refused unless its <paramref name="abiExport"/> returns <paramref name="abiVersion"/>.
    /// </summary>
    internal static LibraryInfo Shim(string name, Assembly owner, string abiExport, int abiVersion, LibraryInfo? requires = null)
    {
        string file = $"lib{name}.so", package = owner.GetName().Name!;
        return new(name, file, $"lib{name}",
            $"{file} ships in the {package} package under runtimes/linux-x64/native (linux-x64 is the only runtime it is " +
            $"built for), and a build or publish of the application puts it where the runtime finds it; in a source tree, " +
            "./build.sh build builds it.")
        { Owner = owner, AbiExport = abiExport, AbiVersion = abiVersion, Requires = requires };
    }

    internal static readonly LibraryInfo IbVerbsInfo =
        RdmaCore(IbVerbs, "libibverbs.so.1", "RDMA_LEASE_LIBIBVERBS", "libibverbs1 ibverbs-providers");
    internal static readonly LibraryInfo RdmaCmInfo =
        RdmaCore(RdmaCm, "librdmacm.so.1", "RDMA_LEASE_LIBRDMACM", "librdmacm1 libibverbs1 ibverbs-providers");

    /// <summary>The ABI version of native/rdmalease_verbs.h (RDMALEASE_VERBS_ABI_VERSION) this assembly was built against.</summary>
    internal const int VerbsShimAbiVersion = 1;
    internal static readonly LibraryInfo VerbsShimInfo =
        Shim(VerbsShim, typeof(NativeLibraries).Assembly, "RdmaLeaseNative_GetVerbsAbiVersion", VerbsShimAbiVersion, requires: IbVerbsInfo);

    /// <summary>
    /// A resolver consulted before ours for every library rdma-lease loads (<c>ibverbs</c>, <c>rdmacm</c>,
    /// <see cref="VerbsShim"/>, <see cref="LeasesShim"/>). Return a handle to use it, or zero to fall through to
    /// the environment overrides and the default locations. Set it before the first native call.
    /// </summary>
    public static Func<string, nint>? Resolver { get; set; }

    /// <summary>Whether the module initializer registered the resolver (false when opted out).</summary>
    public static bool ResolverRegistered { get; private set; }

    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255",
        Justification = "The resolver must be in place before any generated LibraryImport binds, whoever calls first.")]
    internal static void Register() =>
        ResolverRegistered = RegisterResolver(typeof(NativeLibraries).Assembly, IbVerbsInfo, RdmaCmInfo, VerbsShimInfo);

    /// <summary>
    /// Registers the resolver for <paramref name="assembly"/>, which imports <paramref name="libraries"/> (each
    /// rdma-lease assembly calls this from its module initializer). Returns false when the resolver is opted out.
    /// </summary>
    internal static bool RegisterResolver(Assembly assembly, params LibraryInfo[] libraries)
    {
        if (AppContext.TryGetSwitch(DisableResolverSwitch, out var disabled) && disabled) return false;
        if (Environment.GetEnvironmentVariable("RDMA_LEASE_DISABLE_RESOLVER") is "1" or "true") return false;
        var byName = libraries.ToDictionary(l => l.Name, StringComparer.Ordinal);
        // Throwing (rather than returning zero) turns the runtime's DllNotFoundException into our message.
        NativeLibrary.SetDllImportResolver(assembly, (name, _, searchPath) =>
            byName.TryGetValue(name, out var info) ? Get(info, searchPath).Handle : 0);
        return true;
    }

    /// <summary>
    /// Loads libibverbs and our verbs shim now (and librdmacm too when <paramref name="rdmaCm"/> is true), or
    /// throws <see cref="RdmaLibraryNotFoundException"/> naming the Debian packages to install (or what is wrong
    /// with the shim). Cheap after the first success; a failure is retried on the next call.
    /// </summary>
    public static void EnsureLoaded(bool rdmaCm = false)
    {
        Get(VerbsShimInfo);
        if (rdmaCm) Get(RdmaCmInfo);
    }

    /// <summary>Loads <paramref name="info"/> (and what it requires) now, or throws <see cref="RdmaLibraryNotFoundException"/>.</summary>
    internal static void Load(LibraryInfo info) => Get(info);

    private static LoadedLibrary Get(LibraryInfo info, DllImportSearchPath? searchPath = null)
    {
        if (info.Requires is { } first) Get(first);
        lock (Gate)
        {
            if (Loaded.TryGetValue(info.Name, out var lib)) return lib;
            lib = LoadCore(info, searchPath);
            Loaded[info.Name] = lib;
            return lib;
        }
    }

    /// <summary>Loads one library as <see cref="EnsureLoaded(bool)"/> would, without caching the result
    /// (for tests): the hook, then the environment override, then the default location; the ABI check.</summary>
    internal static (nint Handle, string? Path) LoadUncached(LibraryInfo info)
    {
        var lib = LoadCore(info, null);
        return (lib.Handle, lib.Path);
    }

    private static LoadedLibrary LoadCore(LibraryInfo info, DllImportSearchPath? searchPath)
    {
        var hook = Resolver;
        if (hook is not null)
        {
            var h = hook(info.Name);
            if (h != 0) return Checked(info, new LoadedLibrary(h, FindMappedPath(info)));
        }
        if (info.Owner is { } owner)
        {
            // Our shim: the runtime's probing, from the assembly that ships it (deps.json native assets, app directory).
            try
            {
                return Checked(info, new LoadedLibrary(NativeLibrary.Load(info.Name, owner, searchPath), FindMappedPath(info)));
            }
            catch (DllNotFoundException e)
            {
                throw new RdmaLibraryNotFoundException(info.DisplayName,
                    $"{info.DisplayName} could not be loaded: {info.FileName} was not found or could not be opened ({FirstLine(e.Message)}). {info.Remedy}", e);
            }
        }
        var overridePath = info.EnvironmentVariable is { } variable ? Environment.GetEnvironmentVariable(variable) : null;
        var target = string.IsNullOrWhiteSpace(overridePath) ? info.FileName : overridePath;
        if (NativeLibrary.TryLoad(target, out var handle)) return new LoadedLibrary(handle, FindMappedPath(info, target));
        var why = string.IsNullOrWhiteSpace(overridePath)
            ? $"{info.FileName} was not found by the dynamic loader"
            : $"{info.EnvironmentVariable} names '{overridePath}', which could not be loaded";
        throw new RdmaLibraryNotFoundException(info.DisplayName, $"{info.DisplayName} could not be loaded: {why}. {info.Remedy}");
    }

    private static string FirstLine(string message) => message.Split('\n', 2)[0].Trim();

    /// <summary>A shim whose ABI version export is missing or returns another version is refused: it comes from
    /// another build than the assembly that calls it, and a changed export would corrupt memory.</summary>
    private static unsafe LoadedLibrary Checked(LibraryInfo info, LoadedLibrary lib)
    {
        if (info.AbiExport is null) return lib;
        string where = lib.Path ?? info.FileName;
        string problem;
        if (!NativeLibrary.TryGetExport(lib.Handle, info.AbiExport, out var export))
            problem = $"it has no {info.AbiExport} export";
        else if (((delegate* unmanaged<int>)export)() is var version && version != info.AbiVersion)
            problem = $"it has ABI version {version}";
        else
            return lib;
        var package = info.Owner?.GetName();
        throw new RdmaLibraryNotFoundException(info.DisplayName,
            $"{where} is not the {info.DisplayName} that {package?.Name} {package?.Version} was built with: {problem}, " +
            $"it needs ABI version {info.AbiVersion}. The native library and the assembly come from different builds: " +
            "rebuild with ./build.sh build, or restore the package again.");
    }

    // The file the loader actually mapped, from /proc/self/maps (its name carries the version).
    private static string? FindMappedPath(LibraryInfo info, string? loaded = null)
    {
        try
        {
            var stem = loaded is not null && loaded.Contains('/') ? System.IO.Path.GetFileName(loaded) : info.FileName;
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                var slash = line.IndexOf('/');
                if (slash < 0) continue;
                var path = line[slash..];
                var name = System.IO.Path.GetFileName(path);
                if (name.StartsWith(stem, StringComparison.Ordinal) || name.StartsWith(info.FileName, StringComparison.Ordinal))
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

/// <summary>
/// A native library rdma-lease needs could not be loaded: rdma-core's (the message names the Debian packages to
/// install) or one of our shims (missing beside the application, or from another build than the assembly).
/// </summary>
public sealed class RdmaLibraryNotFoundException : DllNotFoundException
{
    /// <summary>Creates the exception.</summary>
    public RdmaLibraryNotFoundException() { }

    /// <summary>Creates the exception with a message.</summary>
    public RdmaLibraryNotFoundException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public RdmaLibraryNotFoundException(string message, Exception inner) : base(message, inner) { }

    internal RdmaLibraryNotFoundException(string library, string message, Exception? inner = null) : base(message, inner) => Library = library;

    /// <summary>The library that could not be loaded (libibverbs, librdmacm, librdmalease_verbs or librdmalease_leases).</summary>
    public string? Library { get; }
}
