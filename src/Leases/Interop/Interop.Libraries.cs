namespace RdmaLease.Leases;

internal static partial class Interop
{
    internal static class Libraries
    {
        /// <summary>The C shim (native/*.c), copied next to the assemblies by src/Verbs's project.</summary>
        internal const string RdmaLeaseNative = "rdmalease_native";
    }

    /// <summary>The ABI version this assembly was written against (RDMALEASE_NATIVE_ABI_VERSION).</summary>
    internal const int ExpectedNativeAbiVersion = 2;

    [System.Runtime.InteropServices.LibraryImport(Libraries.RdmaLeaseNative, EntryPoint = "RdmaLeaseNative_GetAbiVersion")]
    internal static partial int GetNativeAbiVersion();

    private static int s_abiChecked;

    /// <summary>Throws when the loaded librdmalease_native is not the one this assembly expects (a stale build).</summary>
    internal static void EnsureNativeAbi()
    {
        if (Volatile.Read(ref s_abiChecked) != 0)
            return;
        int version = GetNativeAbiVersion();
        if (version != ExpectedNativeAbiVersion)
            throw new InvalidOperationException(
                $"librdmalease_native has ABI version {version}, RdmaLease.Leases needs {ExpectedNativeAbiVersion}: rebuild with ./build.sh build.");
        Volatile.Write(ref s_abiChecked, 1);
    }
}
