using System.Diagnostics;

namespace RdmaLease.Tests.Foundation;

/// <summary>Host tests of the guest harness (tools/vm/lib.sh): the pure functions are run
/// through bash exactly as build.sh runs them.</summary>
public class GuestHarnessTests
{
    static (int ExitCode, string Stdout, string Stderr) RunLib(string script, params string[] args)
    {
        var psi = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"source \"{RepoPaths.File("tools/vm/lib.sh")}\"; {script}");
        psi.ArgumentList.Add("lib-test");
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd(), stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Trim(), stderr.Trim());
    }

    [TestCase("6.1.0-28-amd64")]
    [TestCase("6.18.44-fc")]
    [TestCase("5.10.0")]
    [TestCase("not-a-version")]
    [TestCase("")]
    public void RefusesUnsupportedKernel(string version)
    {
        var (rc, _, err) = RunLib("rl_kernel_version_ok \"$1\"", version);
        Assert.That(rc, Is.Not.Zero, $"kernel '{version}' was accepted");
        Assert.That(err, Does.Contain("unsupported guest kernel"));
    }

    [TestCase("6.19.0")]
    [TestCase("7.3.4+deb13-amd64")]
    [TestCase("7.2.13-amd64")]
    [TestCase("10.0.1")]
    public void AcceptsSupportedKernel(string version)
    {
        var (rc, _, err) = RunLib("rl_kernel_version_ok \"$1\"", version);
        Assert.That(rc, Is.Zero, err);
    }

    // A node guest's link is checked before anything is made or booted (docs/testing.md, "Two nodes").
    [TestCase("--node 2 --link udp:1:2", "--node must be 0 or 1, got '2'")]
    [TestCase("--node 0", "--node needs --link listen:PORT, connect:PORT or udp:LOCALPORT:REMOTEPORT, got ''")]
    [TestCase("--node 1 --link udp:1", "got 'udp:1'")]
    [TestCase("--node 1 --link listen:127.0.0.1:5", "got 'listen:127.0.0.1:5'")]
    public void RefusesABadNodeOrLink(string options, string message)
    {
        var (rc, _, err) = RunLib($"rl_run_vm {options} -- true");
        Assert.That(rc, Is.EqualTo(2), err);
        Assert.That(err, Does.Contain(message));
    }

    [Test]
    public void FreePortIsFreeForTcpAndUdp()
    {
        var (rc, port, err) = RunLib("rl_free_port");
        Assert.That(rc, Is.Zero, err);
        int p = int.Parse(port, System.Globalization.CultureInfo.InvariantCulture);
        Assert.That(p, Is.InRange(20000, 49999));
        // Both kinds of socket can bind it on 127.0.0.1 (nothing else holds it a moment later).
        using var tcp = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, p);
        tcp.Start();
        using var udp = new System.Net.Sockets.UdpClient(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, p));
        tcp.Stop();
    }

    [Test]
    public void ParsesDeb822Sources()
    {
        using var dir = new TempDir();
        var file = dir.Write("debian.sources", """
            Types: deb
            # a comment
            URIs: http://mirror.example.test/debian-security
            Suites: bookworm-security
            Components: main

            Types: deb-src
            URIs: http://src.example.test/debian
            Suites: bookworm
            Components: main

            Types: deb
            URIs: http://mirror.example.test/debian/
            Suites: bookworm bookworm-updates
            Components: main
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
            """);
        var (rc, uri, err) = RunLib("rl_apt_mirror \"$1\"", file);
        Assert.That(rc, Is.Zero, err);
        Assert.That(uri, Is.EqualTo("http://mirror.example.test/debian"));
    }

    [Test]
    public void ParsesOneLineSources()
    {
        using var dir = new TempDir();
        var file = dir.Write("sources.list", """
            # deb http://commented.example.test/debian bookworm main
            deb https://thirdparty.example.test/apt cloud-sdk main
            deb http://security.example.test/debian-security bookworm-security main
            deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://one.example.test/debian trixie main contrib
            """);
        var (rc, uri, err) = RunLib("rl_apt_mirror \"$1\"", file);
        Assert.That(rc, Is.Zero, err);
        Assert.That(uri, Is.EqualTo("http://one.example.test/debian"));
    }

    [Test]
    public void NoDebianEntryIsAnError()
    {
        using var dir = new TempDir();
        var file = dir.Write("sources.list", "deb https://thirdparty.example.test/apt cloud-sdk main\n");
        var (rc, uri, _) = RunLib("rl_apt_mirror \"$1\"", file);
        Assert.That(rc, Is.Not.Zero);
        Assert.That(uri, Is.Empty);
    }

    [Test]
    public void ModuleOrderPutsDependenciesFirst()
    {
        using var dir = new TempDir();
        dir.Write("modules.dep", """
            kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
            kernel/fs/netfs/netfs.ko.xz:
            kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
            kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz
            """);
        var (rc, order, err) = RunLib("rl_module_order \"$1\" 9p 9pnet_virtio", dir.Path);
        Assert.That(rc, Is.Zero, err);
        Assert.That(order.Split('\n'), Is.EqualTo(new[]
        {
            "kernel/fs/netfs/netfs.ko.xz", "kernel/net/9p/9pnet.ko.xz", "kernel/fs/9p/9p.ko.xz", "kernel/net/9p/9pnet_virtio.ko.xz",
        }));
    }
}
