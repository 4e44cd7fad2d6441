using System.CommandLine;
using System.Text.Json;
using RdmaLease.Verbs;

namespace RdmaLease.Cli;

/// <summary>
/// <c>rdma-lease devices [--device NAME] [--check] [--json]</c>: an ibv_devinfo with what this library cares about (ODP per
/// transport, FLUSH, ATOMIC WRITE, the ODP quirk in force) and, with --check, the ODP integrity probe's verdict for every
/// path MTU up to each port's active MTU (docs/known-defects.md).
/// </summary>
internal static class DevicesCommand
{
    public static Command Create()
    {
        var device = new Option<string?>("--device", "-d") { Description = "Only this device" };
        var check = new Option<bool>("--check") { Description = "Run the ODP integrity probe at every path MTU (takes a few seconds per MTU)" };
        var json = CliOptions.Json();
        var command = new Command("devices", "List the RDMA devices: ports, GIDs, ODP, FLUSH, ATOMIC WRITE, the ODP quirk") { device, check, json };
        command.SetAction(r => Run(r.GetValue(device), r.GetValue(check), r.GetValue(json)));
        return command;
    }

    static int Run(string? only, bool check, bool json)
    {
        IReadOnlyList<string> names;
        try
        {
            names = only != null ? [only] : Device.List();
        }
        catch (Exception e) when (e is VerbsException or NotSupportedException or DllNotFoundException)
        {
            Console.Error.WriteLine("rdma-lease: " + e.Message);
            return 1;
        }
        if (names.Count == 0)
        {
            Console.Error.WriteLine("rdma-lease: no RDMA devices (load rdma_rxe and ib_uverbs and add one: rdma link add rxe0 type rxe netdev IFACE)");
            return 1;
        }
        using var writer = json ? new Utf8JsonWriter(Console.OpenStandardOutput(), new JsonWriterOptions { Indented = true }) : null;
        writer?.WriteStartArray();
        int unsound = 0;
        foreach (string name in names)
        {
            Device device;
            try
            {
                device = Device.Open(name);
            }
            catch (Exception e) when (e is ArgumentException or VerbsException)
            {
                Console.Error.WriteLine("rdma-lease: " + e.Message);
                return 1;
            }
            using (device)
                unsound += writer is null ? WriteText(device, check) : WriteJson(writer, device, check);
        }
        writer?.WriteEndArray();
        writer?.Flush();
        if (writer is null && check && unsound > 0)
            Console.WriteLine($"{unsound} device/MTU combination(s) need the library's ODP quirk; see docs/known-defects.md");
        return 0;
    }

    static int WriteText(Device device, bool check)
    {
        var a = device.Attributes;
        var odp = a.Odp;
        Console.WriteLine($"{device.Name}: driver {device.Driver}, firmware {a.FirmwareVersion}, {a.PortCount} port(s)");
        Console.WriteLine($"  ODP: {(odp.Supported ? $"yes (RC: {odp.Rc}; UD: {odp.Ud}; implicit: {(odp.Implicit ? "yes" : "no")})" : "no")}");
        Console.WriteLine($"  FLUSH: global {YesNo(a.FlushGlobal)}, persistent {YesNo(a.FlushPersistent)}; ATOMIC WRITE: {YesNo(a.AtomicWrite)}");
        Console.WriteLine($"  ODP quirk: {device.OdpQuirk?.Reason ?? "none"}");
        int unsound = 0;
        for (byte p = 1; p <= a.PortCount; p++)
        {
            var port = device.QueryPort(p);
            Console.WriteLine($"  port {p}: {port.State}, {port.LinkLayer}, active MTU {port.ActiveMtu.Bytes()}, max MTU {port.MaxMtu.Bytes()}");
            foreach (var gid in device.QueryGidTable().Where(g => g.Port == p))
                Console.WriteLine($"    GID {gid.Index}: {gid.Address} ({gid.Type})");
            foreach (var r in Probe(device, p, port, check))
            {
                Console.WriteLine("    " + r.Verdict);
                foreach (var c in r.Checks.Where(c => !c.Passed).Take(3))
                    Console.WriteLine("      e.g. " + c);
                unsound += r.IsSound ? 0 : 1;
            }
        }
        return unsound;
    }

    static int WriteJson(Utf8JsonWriter w, Device device, bool check)
    {
        var a = device.Attributes;
        w.WriteStartObject();
        w.WriteString("name", device.Name);
        w.WriteString("driver", device.Driver);
        w.WriteString("firmware", a.FirmwareVersion);
        w.WriteStartObject("odp");
        w.WriteBoolean("supported", a.Odp.Supported);
        w.WriteBoolean("implicit", a.Odp.Implicit);
        w.WriteString("rc", a.Odp.Rc.ToString());
        w.WriteString("ud", a.Odp.Ud.ToString());
        w.WriteEndObject();
        w.WriteBoolean("flushGlobal", a.FlushGlobal);
        w.WriteBoolean("flushPersistent", a.FlushPersistent);
        w.WriteBoolean("atomicWrite", a.AtomicWrite);
        if (device.OdpQuirk?.Reason is { } reason)
            w.WriteString("odpQuirk", reason);
        else
            w.WriteNull("odpQuirk");
        w.WriteStartArray("ports");
        int unsound = 0;
        for (byte p = 1; p <= a.PortCount; p++)
        {
            var port = device.QueryPort(p);
            w.WriteStartObject();
            w.WriteNumber("port", p);
            w.WriteString("state", port.State.ToString());
            w.WriteString("linkLayer", port.LinkLayer.ToString());
            w.WriteNumber("activeMtu", port.ActiveMtu.Bytes());
            w.WriteNumber("maxMtu", port.MaxMtu.Bytes());
            w.WriteStartArray("gids");
            foreach (var gid in device.QueryGidTable().Where(g => g.Port == p))
            {
                w.WriteStartObject();
                w.WriteNumber("index", gid.Index);
                w.WriteString("address", gid.Address.ToString());
                w.WriteString("type", gid.Type.ToString());
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (check)
            {
                w.WriteStartArray("odpIntegrity");
                foreach (var r in Probe(device, p, port, check))
                {
                    w.WriteStartObject();
                    w.WriteBoolean("sound", r.IsSound);
                    w.WriteString("verdict", r.Verdict);
                    w.WriteEndObject();
                    unsound += r.IsSound ? 0 : 1;
                }
                w.WriteEndArray();
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
        return unsound;
    }

    static IEnumerable<OdpIntegrityResult> Probe(Device device, byte port, PortAttributes attributes, bool check)
    {
        if (!check || !device.Attributes.Odp.Supported)
            yield break;
        for (var mtu = Mtu.Mtu256; mtu <= attributes.ActiveMtu; mtu++)
            yield return device.CheckOdpIntegrity(mtu, port);
    }

    static string YesNo(bool b) => b ? "yes" : "no";
}
