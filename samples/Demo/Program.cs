// rdma-lease demo (foundation stage): what the guest offers, read from C#.
using RdmaLease.Verbs;

Console.WriteLine("rdma-lease demo: verbs devices in this guest");
foreach (var d in DeviceInfo.ListAll())
{
    Console.WriteLine($"  {d.Name,-8} fw {(d.FirmwareVersion.Length == 0 ? "-" : d.FirmwareVersion),-10} ports {d.PortCount}  " +
                      $"ODP {(d.Odp.Supported ? "yes" : "no")} (rc 0x{d.Odp.Rc:x2}, ud 0x{d.Odp.Ud:x2})");
}
