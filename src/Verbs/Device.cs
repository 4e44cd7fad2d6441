using System.Net;
using System.Runtime.InteropServices;
using RdmaLease.Interop;
using RdmaLease.Verbs.Internal;

namespace RdmaLease.Verbs;

/// <summary>
/// An opened verbs device (an <c>ibv_context</c>): attributes, ports and GIDs, and the factory of
/// protection domains and completion queues. Disposing it disposes everything created from it.
/// </summary>
/// <remarks>Thread-safe: queries and object creation may run on any thread concurrently.</remarks>
/// <example>
/// <code>
/// using var device = Device.Open("rxelo");
/// Console.WriteLine(device.Attributes.Odp.Rc);
/// using var pd = device.AllocateProtectionDomain();
/// </code>
/// </example>
public sealed unsafe partial class Device : VerbsObject
{
    /// <summary>The device name, e.g. <c>rxelo</c>.</summary>
    public string Name { get; }

    /// <summary>The device's attributes, read when it was opened.</summary>
    public DeviceAttributes Attributes { get; }

    internal ibv_context* Context => (ibv_context*)Handle.DangerousGetHandle();

    AsyncEventReader? _events;

    Device(NativeHandle context, string name)
        : base(context, parent: null)
    {
        Name = name;
        Attributes = QueryAttributes();
        Driver = DriverOf(Context);
    }

    static int CloseDevice(nint context) => libibverbs.ibv_close_device((ibv_context*)context);

    /// <summary>The names of the verbs devices on this machine.</summary>
    /// <exception cref="VerbsException">libibverbs could not list the devices.</exception>
    public static IReadOnlyList<string> List()
    {
        ibv_device** list = GetDeviceList(out int n);
        try
        {
            var names = new List<string>(n);
            for (int i = 0; i < n; i++)
                names.Add(NameOf(list[i]));
            return names;
        }
        finally
        {
            libibverbs.ibv_free_device_list(list);
        }
    }

    /// <summary>Opens the device called <paramref name="name"/>.</summary>
    /// <param name="name">The device name.</param>
    /// <param name="options">How to open it; by default its ODP quirk, if the library knows one for its driver, is in
    /// force (<see cref="DeviceOptions.OdpQuirk"/>).</param>
    /// <exception cref="ArgumentException">No device has that name (the message lists the ones there are).</exception>
    /// <exception cref="VerbsException">The device exists but could not be opened.</exception>
    public static Device Open(string name, DeviceOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        VerbsMetrics.EnsureCreated();   // the meter is visible to dotnet-counters from the first device on
        options ??= new DeviceOptions();
        if (!Enum.IsDefined(options.OdpQuirk))
            throw new ArgumentOutOfRangeException(nameof(options), options.OdpQuirk, "unknown OdpQuirkMode");
        ibv_device** list = GetDeviceList(out int n);
        try
        {
            for (int i = 0; i < n; i++)
            {
                if (NameOf(list[i]) != name)
                    continue;
                var context = NativeCalls.Create(null, (nint)list[i], static (_, d) => (nint)libibverbs.ibv_open_device((ibv_device*)d), &CloseDevice,
                    "ibv_open_device", "device " + name, "device " + name, _ => "Check the permissions of /dev/infiniband/uverbs*.");
                var device = new Device(context, name);
                try
                {
                    device.ApplyQuirks(options);
                }
                catch
                {
                    device.Dispose();
                    throw;
                }
                return device;
            }
            string present = n == 0
                ? "none (is rdma_rxe/ib_uverbs loaded? 'rdma link add rxe0 type rxe netdev eth0' creates a soft-RoCE device)"
                : string.Join(", ", Enumerable.Range(0, n).Select(i => NameOf(list[i])));
            throw new ArgumentException($"No verbs device is called '{name}'. Devices here: {present}.", nameof(name));
        }
        finally
        {
            libibverbs.ibv_free_device_list(list);
        }
    }

    // The caller frees the list with ibv_free_device_list.
    static ibv_device** GetDeviceList(out int count)
    {
        NativeLibraries.EnsureLoaded();
        int n;
        ibv_device** list = libibverbs.ibv_get_device_list(&n);
        if (list == null)
            throw new VerbsException("ibv_get_device_list", "this machine", Marshal.GetLastPInvokeError(),
                "Is the ib_uverbs module loaded and /dev/infiniband accessible?");
        count = n;
        return list;
    }

    static string NameOf(ibv_device* device) => Marshal.PtrToStringUTF8((nint)libibverbs.ibv_get_device_name(device))!;

    DeviceAttributes QueryAttributes()
    {
        ibv_device_attr_ex attr;
        NativeCalls.Call(Handle, (nint)(&attr), static (ctx, a) => RdmaLeaseNative.QueryDeviceEx((ibv_context*)ctx, (ibv_device_attr_ex*)a, (ulong)sizeof(ibv_device_attr_ex)),
            "ibv_query_device_ex", this);
        return DeviceAttributes.From(attr);
    }

    /// <summary>Queries port <paramref name="port"/> (ports count from 1).</summary>
    public PortAttributes QueryPort(byte port = 1)
    {
        CheckPort(port);
        var query = new PortQuery { Port = port };
        NativeCalls.Call(Handle, (nint)(&query), static (ctx, q) => RdmaLeaseNative.QueryPort((ibv_context*)ctx, ((PortQuery*)q)->Port, &((PortQuery*)q)->Attr, (ulong)sizeof(ibv_port_attr)),
            "ibv_query_port", $"{this} port {port}");
        return PortAttributes.From(port, query.Attr);
    }

    /// <summary>One entry of the GID table of <paramref name="port"/>.</summary>
    /// <exception cref="VerbsException">The index is not populated (ENODATA) or out of range.</exception>
    public GidEntry QueryGid(byte port, int index)
    {
        CheckPort(port);
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        var query = new GidQuery { Port = port, Index = (uint)index };
        NativeCalls.Call(Handle, (nint)(&query), static (ctx, q) =>
            {
                var g = (GidQuery*)q;
                return libibverbs._ibv_query_gid_ex((ibv_context*)ctx, g->Port, g->Index, &g->Entry, 0, (nuint)sizeof(ibv_gid_entry));
            }, "ibv_query_gid_ex", $"{this} port {port} GID index {index}");
        return GidEntry.From(query.Entry);
    }

    struct PortQuery
    {
        public byte Port;
        public ibv_port_attr Attr;
    }

    struct GidQuery
    {
        public byte Port;
        public uint Index;
        public ibv_gid_entry Entry;
    }

    /// <summary>The populated entries of every port's GID table.</summary>
    public IReadOnlyList<GidEntry> QueryGidTable()
    {
        int max = 0;
        for (byte p = 1; p <= Attributes.PortCount; p++)
            max += QueryPort(p).GidTableLength;
        var entries = new ibv_gid_entry[Math.Max(max, 1)];
        long n;
        using var ctxRef = Handle.Enter();
        nint ctx = ctxRef.Pointer;
        fixed (ibv_gid_entry* e = entries)
            n = (long)libibverbs._ibv_query_gid_table((ibv_context*)ctx, e, (nuint)entries.Length, 0, (nuint)sizeof(ibv_gid_entry));
        if (n < 0)
            throw new VerbsException("ibv_query_gid_table", ToString(), (int)-n);
        return [.. entries.AsSpan(0, (int)n).ToArray().Select(GidEntry.From)];
    }

    /// <summary>
    /// The GID index of the RoCE v2 entry whose address is <paramref name="address"/> (IPv4 addresses
    /// match their IPv4-mapped GIDs), for connecting QPs over a given interface.
    /// </summary>
    /// <exception cref="ArgumentException">No such GID (the message lists the table).</exception>
    public int FindGidIndex(IPAddress address, byte port = 1)
    {
        var want = address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? address.MapToIPv6() : address;
        var table = QueryGidTable();
        foreach (var e in table)
        {
            if (e.Port == port && e.Type == GidType.RoceV2 && e.Address.Equals(want))
                return e.Index;
        }
        throw new ArgumentException($"{this} port {port} has no RoCE v2 GID for {address}; its table: " +
            string.Join(", ", table.Select(e => $"[{e.Index}] {e.Address} {e.Type}")), nameof(address));
    }

    void CheckPort(byte port)
    {
        if (port < 1 || port > Attributes.PortCount)
            throw new ArgumentOutOfRangeException(nameof(port), port, $"{this} has ports 1..{Attributes.PortCount}");
    }

    /// <summary>Allocates a protection domain.</summary>
    public ProtectionDomain AllocateProtectionDomain() => new(this);

    /// <summary>Creates a completion queue of at least <paramref name="entries"/> entries.</summary>
    /// <param name="entries">Minimum capacity; at most <see cref="DeviceAttributes.MaxCqe"/>.</param>
    /// <param name="withEvents">Give it a completion channel so <see cref="CompletionQueue.PollAsync"/> can wait without spinning.</param>
    public CompletionQueue CreateCompletionQueue(int entries, bool withEvents = false) =>
        new(this, new CompletionQueueOptions { Entries = entries, WithEvents = withEvents });

    /// <summary>Creates a completion queue as <paramref name="options"/> say (for example an extended one).</summary>
    public CompletionQueue CreateCompletionQueue(CompletionQueueOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new(this, options);
    }

    /// <summary>
    /// Asynchronous events of the device (port up/down, QP fatal, ...), raised on a thread-pool
    /// thread, in the order the device reported them when handlers are quick. Subscribing starts delivery.
    /// </summary>
    public event EventHandler<AsyncEvent>? AsyncEvent
    {
        add
        {
            lock (Handle)
            {
                ObjectDisposedException.ThrowIf(IsDisposed, this);
                _events ??= new AsyncEventReader(this);
                _events.Handlers += value;
            }
        }
        remove
        {
            lock (Handle)
            {
                if (_events != null)
                    _events.Handlers -= value;
            }
        }
    }

    private protected override void OnDisposing()
    {
        lock (Handle)
        {
            _events?.Dispose();
            _events = null;
        }
    }

    /// <inheritdoc/>
    public override string ToString() => "device " + Name;
}
