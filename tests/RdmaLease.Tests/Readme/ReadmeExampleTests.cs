using RdmaLease.Verbs;

namespace RdmaLease.Tests.Readme;

/// <summary>The README's example cannot drift from code that compiles and runs.</summary>
public class ReadmeExampleTests
{
    const string Heading = "## What using it looks like";

    [Test]
    public void TheReadmeShowsExactlyTheCompiledExample()
    {
        var source = File.ReadAllLines(Path.Combine(RepoPaths.Root, "tests/RdmaLease.Tests/Readme/ReadmeExample.cs"));
        int start = Array.FindIndex(source, l => l.Trim() == "#region readme"), end = Array.FindIndex(source, l => l.Trim() == "#endregion");
        Assert.That(start, Is.GreaterThan(0).And.LessThan(end), "ReadmeExample.cs has a readme region");
        string indent = source[start][..source[start].IndexOf('#')];
        var expected = source[(start + 1)..end].Select(l => l.StartsWith(indent, StringComparison.Ordinal) ? l[indent.Length..] : l).ToList();

        var readme = File.ReadAllLines(Path.Combine(RepoPaths.Root, "README.md"));
        int heading = Array.IndexOf(readme, Heading);
        Assert.That(heading, Is.GreaterThan(0), $"README.md has '{Heading}'");
        int open = Array.FindIndex(readme, heading, l => l.StartsWith("```", StringComparison.Ordinal));
        int close = Array.FindIndex(readme, open + 1, l => l == "```");
        Assert.That(readme[open], Is.EqualTo("```csharp"));
        Assert.That(readme[(open + 1)..close], Is.EqualTo(expected),
            "README.md's example must be ReadmeExample.cs's readme region (dedented): change both together");
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
