using System.IO.Compression;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Text;
using System.Xml.Linq;

namespace RdmaLease.Tests.Packaging;

/// <summary>
/// The packages `./build.sh pack` makes (artifacts/packages): what is in them, their metadata, and that they are
/// reproducible and source-linked. The guest test PackageConsumerGuestTests runs a program built against them.
/// </summary>
public class PackageTests
{
    static readonly XNamespace Nuspec = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd";
    static readonly Guid SourceLinkKind = new("CC110556-A091-4D38-9FEC-25AB9A351A6A");

    /// <summary>The one package of <paramref name="id"/> in <paramref name="feed"/> (id.VERSION.nupkg).</summary>
    internal static string Package(string feed, string id)
    {
        var found = Directory.Exists(feed)
            ? Directory.EnumerateFiles(feed, $"{id}.*.nupkg").Where(f => char.IsAsciiDigit(Path.GetFileName(f)[id.Length + 1])).ToList()
            : [];
        Assert.That(found, Has.Count.EqualTo(1), $"one {id} package in {feed} (run ./build.sh pack)");
        return found[0];
    }

    static string Head(string repo) => Tool.Output("git", "-C", repo, "rev-parse", "HEAD").Trim();

    static byte[] Entry(ZipArchive zip, string name)
    {
        var e = zip.GetEntry(name);
        Assert.That(e, Is.Not.Null, $"{name} is in the package");
        using var s = e!.Open();
        using var m = new MemoryStream();
        s.CopyTo(m);
        return m.ToArray();
    }

    static XElement Metadata(ZipArchive zip, string id) =>
        XDocument.Parse(Encoding.UTF8.GetString(Entry(zip, $"{id}.nuspec")).TrimStart('\uFEFF')).Root!.Element(Nuspec + "metadata")!;

    [TestCase("RdmaLease.Verbs", "src/Verbs", "librdmalease_verbs.so", new string[0])]
    [TestCase("RdmaLease.Leases", "src/Leases", "librdmalease_leases.so", new[] { "RdmaLease.Verbs" })]
    public void APackageHasItsAssemblyNativeLibraryAndMetadata(string id, string project, string native, string[] ourDependencies)
    {
        string nupkg = Package(RepoPaths.File("artifacts/packages"), id);
        string version = Path.GetFileNameWithoutExtension(nupkg)[(id.Length + 1)..];
        using var zip = ZipFile.OpenRead(nupkg);
        var names = zip.Entries.Select(e => e.FullName).ToHashSet(StringComparer.Ordinal);
        Assert.That(names, Is.SupersetOf(new[] { $"lib/net10.0/{id}.dll", $"lib/net10.0/{id}.xml", $"runtimes/linux-x64/native/{native}", "README.md", "LICENSE" }));
        Assert.That(names.Where(n => n.StartsWith("runtimes/", StringComparison.Ordinal)), Is.EqualTo(new[] { $"runtimes/linux-x64/native/{native}" }),
            "one native library, for the one runtime it is built for");
        Assert.That(names.Where(n => n.EndsWith(".pdb", StringComparison.Ordinal)), Is.Empty, "the PDB is embedded in the assembly");
        Assert.That(Entry(zip, $"runtimes/linux-x64/native/{native}"), Is.EqualTo(File.ReadAllBytes(RepoPaths.File($"artifacts/native/{native}"))),
            "the package carries the native library this tree built (stale packages: ./build.sh pack)");
        Assert.That(Entry(zip, "README.md"), Is.EqualTo(File.ReadAllBytes(RepoPaths.File($"{project}/README.md"))));
        Assert.That(Entry(zip, "LICENSE"), Is.EqualTo(File.ReadAllBytes(RepoPaths.File("LICENSE"))));

        var m = Metadata(zip, id);
        Assert.That(m.Element(Nuspec + "id")?.Value, Is.EqualTo(id));
        Assert.That(m.Element(Nuspec + "version")?.Value, Is.EqualTo(version));
        Assert.That(m.Element(Nuspec + "description")?.Value, Has.Length.GreaterThan(80));
        Assert.That(m.Element(Nuspec + "authors")?.Value, Is.Not.Empty);
        Assert.That(m.Element(Nuspec + "license")?.Value, Is.EqualTo("MIT"));
        Assert.That(m.Element(Nuspec + "license")?.Attribute("type")?.Value, Is.EqualTo("expression"));
        Assert.That(m.Element(Nuspec + "readme")?.Value, Is.EqualTo("README.md"));
        var repository = m.Element(Nuspec + "repository");
        Assert.That(repository?.Attribute("type")?.Value, Is.EqualTo("git"));
        Assert.That(repository?.Attribute("commit")?.Value, Is.EqualTo(Head(RepoPaths.Root)),
            "the package names the commit it was packed from (stale packages: ./build.sh pack)");

        var dependencies = m.Descendants(Nuspec + "dependency").ToDictionary(d => d.Attribute("id")!.Value, d => d.Attribute("version")!.Value);
        Assert.That(dependencies.Keys, Is.EquivalentTo(ourDependencies.Append("Tmds.LibC")),
            "build-time tools (SourceLink, the API analyzers) are no dependencies");
        foreach (var ours in ourDependencies)
            Assert.That(dependencies[ours], Is.EqualTo(version), $"{id} depends on {ours} of the same version");
    }

    /// <summary>
    /// Deterministic (the Reproducible debug entry), built with ContinuousIntegrationBuild (every source path in the
    /// embedded PDB is mapped to /_/, none names this checkout), and every zip entry stamped with the commit's time.
    /// </summary>
    [Test]
    public void TheHostingPackageIsManagedOnlyAndDependsOnLeasesAndTheExtensions()
    {
        const string Id = "RdmaLease.Hosting";
        string nupkg = Package(RepoPaths.File("artifacts/packages"), Id);
        string version = Path.GetFileNameWithoutExtension(nupkg)[(Id.Length + 1)..];
        using var zip = ZipFile.OpenRead(nupkg);
        var names = zip.Entries.Select(e => e.FullName).ToHashSet(StringComparer.Ordinal);
        Assert.That(names, Is.SupersetOf(new[] { $"lib/net10.0/{Id}.dll", $"lib/net10.0/{Id}.xml", "README.md", "LICENSE" }));
        Assert.That(names.Where(n => n.StartsWith("runtimes/", StringComparison.Ordinal)), Is.Empty, "no native code of its own");
        Assert.That(Entry(zip, "README.md"), Is.EqualTo(File.ReadAllBytes(RepoPaths.File("src/Hosting/README.md"))));
        var m = Metadata(zip, Id);
        Assert.That(m.Element(Nuspec + "license")?.Value, Is.EqualTo("MIT"));
        var dependencies = m.Descendants(Nuspec + "dependency").ToDictionary(d => d.Attribute("id")!.Value, d => d.Attribute("version")!.Value);
        Assert.That(dependencies.Keys, Is.EquivalentTo(new[] { "RdmaLease.Leases", "Microsoft.Extensions.Hosting.Abstractions",
            "Microsoft.Extensions.Options.ConfigurationExtensions", "Microsoft.Extensions.Logging.Abstractions" }));
        Assert.That(dependencies["RdmaLease.Leases"], Is.EqualTo(version));
    }

    [TestCase("RdmaLease.Verbs")]
    [TestCase("RdmaLease.Leases")]
    [TestCase("RdmaLease.Hosting")]
    public void APackageIsReproducible(string id)
    {
        using var zip = ZipFile.OpenRead(Package(RepoPaths.File("artifacts/packages"), id));
        var documents = EmbeddedPdbDocuments(Entry(zip, $"lib/net10.0/{id}.dll"), out bool reproducible, out _);
        Assert.That(reproducible, Is.True, "the assembly was compiled deterministically");
        Assert.That(documents, Is.Not.Empty);
        Assert.That(documents.Where(d => !d.StartsWith("/_/", StringComparison.Ordinal)), Is.Empty, "every source path is mapped");
        Assert.That(documents.Where(d => d.Contains(RepoPaths.Root, StringComparison.Ordinal)), Is.Empty);
        AssertCommitTimestamps(zip, RepoPaths.Root);
    }

    internal static void AssertCommitTimestamps(ZipArchive zip, string repo)
    {
        long commit = long.Parse(Tool.Output("git", "-C", repo, "log", "-1", "--format=%ct").Trim(), System.Globalization.CultureInfo.InvariantCulture);
        var stamps = zip.Entries.Select(e => e.LastWriteTime.DateTime).Distinct().ToList();
        Assert.That(stamps, Has.Count.EqualTo(1), "every entry has the same time");
        // Zip keeps a local date and time (2 s resolution) without a zone: accept the commit's time read either way.
        var asUtc = new DateTimeOffset(stamps[0], TimeSpan.Zero).ToUnixTimeSeconds();
        var asLocal = new DateTimeOffset(stamps[0], TimeZoneInfo.Local.GetUtcOffset(stamps[0])).ToUnixTimeSeconds();
        Assert.That(Math.Min(Math.Abs(asUtc - commit), Math.Abs(asLocal - commit)), Is.LessThanOrEqualTo(2),
            $"the entries carry the commit's time ({DateTimeOffset.FromUnixTimeSeconds(commit):u}), not the time of packing ({stamps[0]:u})");
    }

    /// <summary>
    /// What a clone from GitHub packs: SourceLink maps every source to raw.githubusercontent.com at the commit, the
    /// package names the repository and the commit, and the native library is the same bytes as one built from the
    /// same sources at another path. The clone is of HEAD (uncommitted changes are not in it), with a GitHub remote
    /// of our choosing: this checkout may have none.
    /// </summary>
    [Test]
    public void ACloneFromGitHubPacksSourceLinkedAndReproducible()
    {
        const string Remote = "https://github.com/example/rdma-lease";
        string head = Head(RepoPaths.Root);
        using var dir = new TempDir();
        string clone = Path.Combine(dir.Path, "clone");
        Tool.Output("git", "clone", "--quiet", "--shared", "--no-checkout", RepoPaths.Root, clone);
        Tool.Output("git", "-C", clone, "checkout", "--quiet", "--detach", head);
        Tool.Output("git", "-C", clone, "remote", "set-url", "origin", Remote + ".git");
        var pack = Tool.Run(Path.Combine(clone, "build.sh"), ["pack"], workingDirectory: clone, timeoutMs: 900_000);
        Assert.That(pack.ExitCode, Is.Zero, $"./build.sh pack in the clone failed:\n{pack.Output}");

        foreach (var (id, native) in new[] { ("RdmaLease.Verbs", "librdmalease_verbs.so"), ("RdmaLease.Leases", "librdmalease_leases.so") })
        {
            using var zip = ZipFile.OpenRead(Package(Path.Combine(clone, "artifacts/packages"), id));
            var repository = Metadata(zip, id).Element(Nuspec + "repository");
            Assert.That(repository?.Attribute("url")?.Value, Is.EqualTo(Remote).Or.EqualTo(Remote + ".git"), id);
            Assert.That(repository?.Attribute("commit")?.Value, Is.EqualTo(head), id);

            EmbeddedPdbDocuments(Entry(zip, $"lib/net10.0/{id}.dll"), out _, out string? sourceLink);
            Assert.That(sourceLink, Is.Not.Null, $"{id}: the embedded PDB has SourceLink");
            using var json = System.Text.Json.JsonDocument.Parse(sourceLink!);
            var map = json.RootElement.GetProperty("documents").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString());
            Assert.That(map, Does.ContainKey("/_/*"), sourceLink);
            Assert.That(map["/_/*"], Is.EqualTo($"https://raw.githubusercontent.com/example/rdma-lease/{head}/*"), sourceLink);
            AssertCommitTimestamps(zip, clone);

            // The same native sources built again at another path: the same bytes.
            string elsewhere = Path.Combine(dir.Path, "elsewhere", "tree");
            CopyDirectory(Path.Combine(clone, "native"), Path.Combine(elsewhere, "native"));
            // What build.sh passes to make: the fetched headers and the guest root's libibverbs (tools/vm/lib.sh).
            string guestLibs = Tool.Output("bash", "-c", "source \"$0\"; echo \"$RL_CACHE/rootfs-$RL_GUEST_SUITE/usr/lib/x86_64-linux-gnu\"",
                RepoPaths.File("tools/vm/lib.sh")).Trim();
            Tool.Output("make", "-s", "-C", Path.Combine(elsewhere, "native"), $"RDMA_CORE={Interop.LayoutChecks.HeadersDir()}",
                $"RDMA_LIBDIR={guestLibs}", Path.Combine("../artifacts/native", native));
            Assert.That(Entry(zip, $"runtimes/linux-x64/native/{native}"), Is.EqualTo(File.ReadAllBytes(Path.Combine(elsewhere, "artifacts/native", native))),
                $"{native} built at {elsewhere} is byte for byte the packaged one");
        }
    }

    static void CopyDirectory(string from, string to)
    {
        foreach (var f in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(to, Path.GetRelativePath(from, f));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(f, target, overwrite: true);
        }
    }

    /// <summary>The document paths of the PDB embedded in <paramref name="assembly"/>, whether it is marked reproducible, and its SourceLink JSON.</summary>
    static List<string> EmbeddedPdbDocuments(byte[] assembly, out bool reproducible, out string? sourceLink)
    {
        using var pe = new PEReader(new MemoryStream(assembly));
        var entries = pe.ReadDebugDirectory();
        reproducible = entries.Any(e => e.Type == DebugDirectoryEntryType.Reproducible);
        var embedded = entries.Where(e => e.Type == DebugDirectoryEntryType.EmbeddedPortablePdb).ToList();
        Assert.That(embedded, Has.Count.EqualTo(1), "one embedded portable PDB");
        using var provider = pe.ReadEmbeddedPortablePdbDebugDirectoryData(embedded[0]);
        var pdb = provider.GetMetadataReader();
        sourceLink = null;
        foreach (var h in pdb.GetCustomDebugInformation(EntityHandle.ModuleDefinition))
        {
            var cdi = pdb.GetCustomDebugInformation(h);
            if (pdb.GetGuid(cdi.Kind) == SourceLinkKind)
                sourceLink = Encoding.UTF8.GetString(pdb.GetBlobBytes(cdi.Value));
        }
        return [.. pdb.Documents.Select(d => pdb.GetString(pdb.GetDocument(d).Name))];
    }
}
