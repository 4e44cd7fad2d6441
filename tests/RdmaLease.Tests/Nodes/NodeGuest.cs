using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace RdmaLease.Tests.Nodes;

/// <summary>
/// One node guest of the two-node tests, booted from the host through the harness (tools/vm/lib.sh, <c>rl_run_vm
/// --node</c>) with its own kernel, NVDIMM backing files (kept in <see cref="PmemDir"/> across boots) and a UDP socket
/// link to the other node on 127.0.0.1. Inside, node-agent.sh runs the scripts this class drops into its output share;
/// the host can SIGKILL the node's QEMU at any moment and boot it again on the same backing files.
/// </summary>
sealed class NodeGuest : IDisposable
{
    static readonly string Agent = "tests/RdmaLease.Tests/Nodes/node-agent.sh";
    readonly Process _harness;
    int _next = 1;

    public int Node { get; }
    public string Out { get; }
    public string PmemDir { get; }
    string Ctl => Path.Combine(Out, "ctl");

    NodeGuest(int node, string outDir, string pmemDir, Process harness)
    {
        Node = node;
        Out = outDir;
        PmemDir = pmemDir;
        _harness = harness;
    }

    /// <summary>Two free UDP ports on 127.0.0.1 (the link: node 0 listens on the first, node 1 on the second).</summary>
    public static (int, int) FreePorts()
    {
        using var a = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        using var b = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        return (((IPEndPoint)a.Client.LocalEndPoint!).Port, ((IPEndPoint)b.Client.LocalEndPoint!).Port);
    }

    /// <summary>Boots node <paramref name="node"/> (0 or 1) and waits until its agent is ready.</summary>
    public static NodeGuest Boot(int node, (int Node0, int Node1) ports, string outDir, string pmemDir, TimeSpan timeout)
    {
        var guest = Launch(node, ports, outDir, pmemDir, timeout);
        guest.WaitReady();
        return guest;
    }

    /// <summary>Waits until the agent runs (boot and guest-init take 30–70 s under TCG with both nodes booting).</summary>
    public void WaitReady() => WaitUntil(() => File.Exists(Path.Combine(Ctl, "ready")), TimeSpan.FromSeconds(180), "its agent to start");

    /// <summary>Starts booting node <paramref name="node"/>; <see cref="WaitReady"/> waits for it (two nodes boot at once).</summary>
    public static NodeGuest Launch(int node, (int Node0, int Node1) ports, string outDir, string pmemDir, TimeSpan timeout)
    {
        Directory.CreateDirectory(outDir);
        Directory.CreateDirectory(pmemDir);
        var (local, remote) = node == 0 ? (ports.Node0, ports.Node1) : (ports.Node1, ports.Node0);
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.Environment["RL_REPO"] = RepoPaths.Root;
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"source tools/vm/lib.sh && rl_run_vm --timeout {(int)timeout.TotalSeconds} --memory 2048 --lean --node {node} " +
            $"--link udp:{local}:{remote} --pmem '{pmemDir}' --out '{outDir}' -- {Agent}");
        psi.WorkingDirectory = RepoPaths.Root;
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) File.AppendAllText(Path.Combine(outDir, "harness.log"), e.Data + "\n"); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return new NodeGuest(node, outDir, pmemDir, p);
    }

    /// <summary>Starts <paramref name="script"/> (bash, cwd the repository) in the guest; returns its number.</summary>
    public int Start(string script)
    {
        int n = _next++;
        string tmp = Path.Combine(Ctl, $"{n}.cmd.tmp");
        File.WriteAllText(tmp, script + "\n");
        File.Move(tmp, Path.Combine(Ctl, $"{n}.cmd"));
        return n;
    }

    /// <summary>Runs <paramref name="script"/> and waits for it: its exit status and output.</summary>
    public (int Exit, string Output) Run(string script, TimeSpan timeout)
    {
        int n = Start(script);
        return (WaitFor(n, timeout), Log(n));
    }

    public string Log(int n) => File.Exists(Path.Combine(Ctl, $"{n}.log")) ? File.ReadAllText(Path.Combine(Ctl, $"{n}.log")) : "";

    public bool Done(int n) => File.Exists(Path.Combine(Ctl, $"{n}.exit"));

    public int WaitFor(int n, TimeSpan timeout)
    {
        WaitUntil(() => Done(n), timeout, $"script {n} to finish (output so far:\n{Log(n)})");
        return int.Parse(File.ReadAllText(Path.Combine(Ctl, $"{n}.exit")).Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Waits until <paramref name="condition"/> holds; fails the test naming what it waited for.</summary>
    public void WaitUntil(Func<bool> condition, TimeSpan timeout, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (_harness.HasExited)
                Assert.Fail($"node {Node} stopped (harness exit {_harness.ExitCode}) while the test waited for {what}\n{Tail()}");
            if (clock.Elapsed > timeout)
                Assert.Fail($"node {Node}: no sign of {what} within {timeout.TotalSeconds:0} s\n{Tail()}");
            Thread.Sleep(100);
        }
    }

    /// <summary>SIGKILL to the node's QEMU: no shutdown, nothing flushed, as a power cut.</summary>
    public void Kill()
    {
        int pid = QemuPid() ?? throw new InvalidOperationException($"node {Node}: no qemu.pid in {Out}");
        Process.GetProcessById(pid).Kill();
        Assert.That(_harness.WaitForExit(30_000), Is.True, $"node {Node}: the harness did not notice its QEMU died");
    }

    /// <summary>Ends the agent with <paramref name="status"/> and waits for the node to power off; the harness's exit.</summary>
    public int Stop(int status, TimeSpan timeout)
    {
        File.WriteAllText(Path.Combine(Ctl, "exit"), status.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.That(_harness.WaitForExit((int)timeout.TotalMilliseconds), Is.True, $"node {Node} did not power off\n{Tail()}");
        return _harness.ExitCode;
    }

    int? QemuPid()
    {
        string f = Path.Combine(Out, "qemu.pid");
        return File.Exists(f) && int.TryParse(File.ReadAllText(f).Trim(), out int pid) ? pid : null;
    }

    public string Tail()
    {
        string console = Path.Combine(Out, "console.log");
        string harness = Path.Combine(Out, "harness.log");
        return (File.Exists(harness) ? File.ReadAllText(harness) : "") +
            (File.Exists(console) ? string.Join('\n', File.ReadLines(console).TakeLast(30)) : "(no console)");
    }

    public void Dispose()
    {
        if (!_harness.HasExited && QemuPid() is int pid)
        {
            try
            {
                Process.GetProcessById(pid).Kill();
            }
            catch (ArgumentException)
            {
                // already gone
            }
        }
        _harness.WaitForExit(30_000);
        _harness.Dispose();
    }
}
