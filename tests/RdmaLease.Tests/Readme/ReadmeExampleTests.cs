using System.Net;
using RdmaLease.Verbs;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Readme;

/// <summary>The README's example cannot drift from code that compiles and runs.</summary>
public class ReadmeExampleTests
{
    [TestCase("## What using it looks like", "readme")]
    [TestCase("## A complete example: connect, write, flush, break", "readme-complete")]
    public void TheReadmeShowsExactlyTheCompiledExample(string Heading, string name)
    {
        var source = File.ReadAllLines(Path.Combine(RepoPaths.Root, "tests/RdmaLease.Tests/Readme/ReadmeExample.cs"));
        int start = Array.FindIndex(source, l => l.Trim() == "#region " + name);
        int end = Array.FindIndex(source, Math.Max(start, 0), l => l.Trim() == "#endregion");
        Assert.That(start, Is.GreaterThan(0).And.LessThan(end), $"ReadmeExample.cs has a {name} region");
        string indent = source[start][..source[start].IndexOf('#')];
        var expected = source[(start + 1)..end].Select(l => l.StartsWith(indent, StringComparison.Ordinal) ? l[indent.Length..] : l).ToList();

        var readme = File.ReadAllLines(Path.Combine(RepoPaths.Root, "README.md"));
        int heading = Array.IndexOf(readme, Heading);
        Assert.That(heading, Is.GreaterThan(0), $"README.md has '{Heading}'");
        int open = Array.FindIndex(readme, heading, l => l.StartsWith("```", StringComparison.Ordinal));
        int close = Array.FindIndex(readme, open + 1, l => l == "```");
        Assert.That(readme[open], Is.EqualTo("```csharp"));
        Assert.That(readme[(open + 1)..close], Is.EqualTo(expected),
            $"README.md's example must be ReadmeExample.cs's {name} region (dedented): change both together");
    }

    [Test, Category("Guest")]
    public async Task TheCompleteReadmeExampleConnectsWritesFlushesAndSurvivesABreak()
    {
        string path = $"/mnt/xfs/readme-complete-{Environment.ProcessId}.pmem";
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        try
        {
            var (afterBreak, region) = await ReadmeExample.RunComplete(path, IPAddress.Parse("198.51.100.1"),
                () => Task.Run(() => Assert.That(RunProbe(TimeSpan.FromSeconds(60), "truncate", path, "0").Ok, Is.True)), cts.Token);
            Assert.Multiple(() =>
            {
                Assert.That(afterBreak, Is.Not.EqualTo(WorkCompletionStatus.Success), "the old rkey reaches nothing after the break");
                Assert.That(region.IsDeregistered, Is.True);
                Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(region.RemoteKey));
                Assert.That(new FileInfo(path).Length, Is.Zero, "the truncate went through");
            });
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test, Category("Guest")]
    public void TheReadmeExampleRunsAgainstRxeAndFsDax()
    {
        string path = $"/mnt/xfs/readme-{Environment.ProcessId}.pmem";
        try
        {
            RemoteRegion forPeers = ReadmeExample.Run(path);
            Assert.That(forPeers.Length, Is.EqualTo(1UL << 20));
            Assert.That(forPeers.RemoteKey, Is.Not.Zero);
            Assert.That(KernelView.RegisteredRemoteKeys(), Does.Not.Contain(forPeers.RemoteKey), "the example disposed its region");
        }
        finally
        {
            File.Delete(path);
        }
    }
}
