using RdmaLease.Verbs;

// rdma-lease devices [--check] [--device NAME]: the verbs devices, their ports and ODP support; with --check,
// the ODP integrity probe's verdict for every path MTU up to each port's active MTU (docs/known-defects.md).
const string Usage = "usage: rdma-lease devices [--check] [--device NAME]";
if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
{
    Console.WriteLine(Usage);
    return args.Length == 0 ? 2 : 0;
}
if (args[0] != "devices")
{
    Console.Error.WriteLine($"rdma-lease: unknown command '{args[0]}'\n{Usage}");
    return 2;
}
bool check = false;
string? only = null;
for (int i = 1; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--check":
            check = true;
            break;
        case "--device" when i + 1 < args.Length:
            only = args[++i];
            break;
        default:
            Console.Error.WriteLine($"rdma-lease devices: unexpected argument '{args[i]}'\n{Usage}");
            return 2;
    }
}

IReadOnlyList<string> names;
try
{
    names = only != null ? [only] : Device.List();
}
catch (VerbsException e)
{
    Console.Error.WriteLine("rdma-lease: " + e.Message);
    return 1;
}
if (names.Count == 0)
{
    Console.WriteLine("no verbs devices (is rdma_rxe/ib_uverbs loaded?)");
    return 1;
}
int unsound = 0;
foreach (string name in names)
{
    using var device = Device.Open(name);
    var odp = device.Attributes.Odp;
    Console.WriteLine($"{name}: driver {device.Driver}, {device.Attributes.PortCount} port(s), ODP {(odp.Supported ? $"yes (RC: {odp.Rc}; UD: {odp.Ud})" : "no")}");
    Console.WriteLine($"  ODP quirk: {device.OdpQuirk?.Reason ?? "none"}");
    for (byte p = 1; p <= device.Attributes.PortCount; p++)
    {
        var port = device.QueryPort(p);
        Console.WriteLine($"  port {p}: {port.State}, {port.LinkLayer}, active MTU {port.ActiveMtu.Bytes()}, max MTU {port.MaxMtu.Bytes()}");
        if (!check || !odp.Supported)
            continue;
        for (var mtu = Mtu.Mtu256; mtu <= port.ActiveMtu; mtu++)
        {
            var r = device.CheckOdpIntegrity(mtu, p);
            Console.WriteLine("    " + r.Verdict);
            foreach (var c in r.Checks.Where(c => !c.Passed).Take(3))
                Console.WriteLine("      e.g. " + c);
            if (!r.IsSound)
                unsound++;
        }
    }
}
if (check && unsound > 0)
    Console.WriteLine($"{unsound} device/MTU combination(s) need the library's ODP protection; see docs/known-defects.md");
return 0;
