// `reg DEVICE KIND MAX_BYTES ITERATIONS [FILE]`: the C# side of benchmarks/c/reg_cost.c (the same kinds, sizes, order
// and output), through rdma-lease: odp-fsdax is a leased registration (DaxFile, FileLease, pd.Register(lease.Range)),
// ODP as the library chooses it on FS-DAX; pinned-pagecache is a leased registration with Mode = Pinned over a file
// on a page-cache file system; pinned-anon is ProtectionDomain.Register over anonymous memory. Register and deregister
// (Dispose) are timed alone; also the managed bytes allocated per register + deregister pair, in steady state.
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using RdmaLease.Leases;
using RdmaLease.Verbs;
using Tmds.Linux;
using static Tmds.Linux.LibC;

static unsafe class RegCost
{
    const AccessFlags Access = AccessFlags.LocalWrite | AccessFlags.RemoteWrite;

    public static void Run(string deviceName, string kind, ulong max, int iterations, string? path)
    {
        bool odp = kind == "odp-fsdax", file = odp || kind == "pinned-pagecache";
        if (!file && kind != "pinned-anon")
            throw new ArgumentException($"unknown kind '{kind}': odp-fsdax, pinned-anon or pinned-pagecache", nameof(kind));
        if (file && path is null)
            throw new ArgumentException($"{kind} needs a FILE", nameof(path));
        string name = odp ? "reg_odp_fsdax" : file ? "reg_pinned_pagecache" : "reg_pinned_anon";
        using var device = Device.Open(deviceName);
        using var pd = device.AllocateProtectionDomain();
        DaxFile? dax = null;
        FileLease? lease = null;
        void* anonymous = null;
        try
        {
            Func<ulong, IDisposable> register;
            if (file)
            {
                File.Delete(path!);
                dax = DaxFile.Open(path!, new DaxFileOptions { Size = (long)max, AllowNonDax = !odp });
                if (dax.IsDax != odp)
                    throw new InvalidOperationException($"'{path}' is {(dax.IsDax ? "" : "not ")}on FS-DAX, which {kind} needs {(odp ? "" : "not ")}");
                lease = dax.AcquireLease();
                Touch(dax.BaseAddress, max);
                var options = new LeasedRegistrationOptions { Mode = odp ? LeasedRegistrationMode.OnDemand : LeasedRegistrationMode.Pinned };
                register = size => pd.Register(lease.Range(0, size), Access, options);
            }
            else
            {
                anonymous = mmap(null, (size_t)max, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (anonymous == MAP_FAILED)
                    throw new InvalidOperationException($"mmap of {max} anonymous bytes failed: errno {Marshal.GetLastPInvokeError()}");
                Touch((byte*)anonymous, max);
                void* memory = anonymous;
                register = size => pd.Register(memory, size, Access);
            }
            // Tiered JIT: enough unrecorded 4 KiB rounds for the path to run tier-1 code when measured (C has none).
            for (int i = 0; i < 60; i++)
                register(4096).Dispose();
            var reg = new long[iterations];
            var dereg = new long[iterations];
            for (ulong size = 4096; size <= max; size *= 4)
            {
                register(size).Dispose();   // the unrecorded one, as in C
                long allocated = GC.GetAllocatedBytesForCurrentThread();
                for (int i = 0; i < iterations; i++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    var region = register(size);
                    long t1 = Stopwatch.GetTimestamp();
                    region.Dispose();
                    reg[i] = t1 - t0;
                    dereg[i] = Stopwatch.GetTimestamp() - t1;
                }
                allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name} {size} reg_us {MedianUs(reg):F1}"));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name} {size} dereg_us {MedianUs(dereg):F1}"));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name} {size} alloc_bytes_per_op {(double)allocated / iterations:F0}"));
            }
        }
        finally
        {
            lease?.Dispose();
            dax?.Dispose();
            if (file)
                File.Delete(path!);
            if (anonymous != null && munmap(anonymous, (size_t)max) != 0)
                Console.Error.WriteLine($"munmap: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>Writes every page, so the data is present before the first registration (as reg_cost.c does).</summary>
    static void Touch(byte* memory, ulong length)
    {
        for (ulong i = 0; i < length; i += 4096)
            memory[i] = (byte)((i >> 12) | 1);
    }

    internal static double MedianUs(long[] ticks)
    {
        var sorted = (long[])ticks.Clone();
        Array.Sort(sorted);
        int n = sorted.Length;
        double median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
        return median * 1e6 / Stopwatch.Frequency;
    }
}
