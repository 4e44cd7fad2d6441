// rdma-lease demo: what the guest offers, read through the library.
using RdmaLease.Verbs;

Console.WriteLine("rdma-lease demo: verbs devices in this guest");
foreach (var name in Device.List())
{
    using var device = Device.Open(name);
    var a = device.Attributes;
    var port = device.QueryPort();
    string maxMr = a.MaxMrSize == ulong.MaxValue ? "unlimited" : $"{a.MaxMrSize >> 20} MiB";
    Console.WriteLine($"  {name,-6} port 1 {port.State} {port.LinkLayer}, active MTU {port.ActiveMtu.Bytes()}, max MR {maxMr}, max QP {a.MaxQp}");
    Console.WriteLine($"         ODP {(a.Odp.Supported ? "yes" : "no")}: RC {a.Odp.Rc}; UD {a.Odp.Ud}");
    Console.WriteLine($"         FLUSH global {a.FlushGlobal}, persistent {a.FlushPersistent}; ATOMIC WRITE {a.AtomicWrite}");
    Console.WriteLine($"         ODP integrity at MTU {port.ActiveMtu.Bytes()}: {device.OdpIntegrity(port.ActiveMtu).Verdict}");
    foreach (var gid in device.QueryGidTable())
        Console.WriteLine($"         GID[{gid.Index}] {gid.Address} {gid.Type}");
}
