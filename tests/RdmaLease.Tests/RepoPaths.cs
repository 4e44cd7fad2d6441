namespace RdmaLease.Tests;

/// <summary>Finds files of the repository from the test binary (artifacts/bin/... on the host,
/// the same path under /mnt/repo in the guest).</summary>
static class RepoPaths
{
    public static string Root { get; } = FindRoot();

    public static string File(string relative) => Path.Combine(Root, relative);

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (System.IO.File.Exists(Path.Combine(dir.FullName, "rdma-lease.sln")))
                return dir.FullName;
        }
        throw new InvalidOperationException($"rdma-lease.sln not found above {AppContext.BaseDirectory}");
    }
}

/// <summary>A temporary directory removed on dispose.</summary>
sealed class TempDir : IDisposable
{
    public string Path { get; }

    public TempDir(string? under = null)
    {
        Path = Directory.CreateTempSubdirectory("rdma-lease-test-").FullName;
        if (under != null)
        {
            Directory.Delete(Path);
            Path = System.IO.Path.Combine(under, "rdma-lease-test-" + Guid.NewGuid().ToString("N")[..8]);
            Directory.CreateDirectory(Path);
        }
    }

    public string Write(string name, string text)
    {
        var file = System.IO.Path.Combine(Path, name);
        System.IO.File.WriteAllText(file, text.ReplaceLineEndings("\n") + "\n");
        return file;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
