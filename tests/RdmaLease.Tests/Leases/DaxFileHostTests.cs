using RdmaLease.Leases;
using static RdmaLease.Tests.Leases.LeaseTestSupport;

namespace RdmaLease.Tests.Leases;

/// <summary>DaxFile on the host: /tmp is an ordinary (non-DAX) filesystem there.</summary>
public class DaxFileHostTests
{
    private TempDir _dir = null!;

    [SetUp]
    public void SetUp() => _dir = CreateTempDir(Path.GetTempPath());

    [TearDown]
    public void TearDown() => _dir.Dispose();

    [Test]
    public void ArgumentsAreChecked()
    {
        string path = _dir.File("f");
        Assert.Multiple(() =>
        {
            Assert.Throws<ArgumentNullException>(() => DaxFile.Open(null!));
            Assert.Throws<ArgumentException>(() => DaxFile.Open(""));
            Assert.Throws<ArgumentException>(() => DaxFile.Open("a\0b", new DaxFileOptions { Size = 1, AllowNonDax = true }));
            Assert.Throws<ArgumentOutOfRangeException>(() => DaxFile.Open(path, new DaxFileOptions { Size = 0 }));
            Assert.Throws<ArgumentOutOfRangeException>(() => DaxFile.Open(path, new DaxFileOptions { Size = -4096 }));
            Assert.Throws<ArgumentException>(() => DaxFile.Open(path, new DaxFileOptions { Size = 4096, Access = DaxFileAccess.Read }));
            Assert.Throws<ArgumentOutOfRangeException>(() => DaxFile.Open(path, new DaxFileOptions { Access = (DaxFileAccess)7 }));
        });
        Assert.That(File.Exists(path), Is.False, "no argument error may leave a file behind");
    }

    [Test]
    public void MissingFileWithoutSizeIsENOENT()
    {
        var e = Assert.Throws<UnixIOException>(() => DaxFile.Open(_dir.File("missing"), new DaxFileOptions { AllowNonDax = true }));
        Assert.That(e!.Errno, Is.EqualTo(2));
        Assert.That(e.Message, Does.Contain("missing"));
    }

    [Test]
    public void DirectoriesAndEmptyFilesAreRefused()
    {
        Assert.Throws<ArgumentException>(() => DaxFile.Open(_dir.FullName, new DaxFileOptions { Access = DaxFileAccess.Read, AllowNonDax = true }));
        Assert.That(Assert.Throws<UnixIOException>(() => DaxFile.Open(_dir.FullName, new DaxFileOptions { AllowNonDax = true }))!.Errno, Is.EqualTo(21)); // EISDIR
        File.WriteAllBytes(_dir.File("empty"), []);
        var e = Assert.Throws<ArgumentException>(() => DaxFile.Open(_dir.File("empty"), new DaxFileOptions { AllowNonDax = true }));
        Assert.That(e!.Message, Does.Contain("empty"));
    }

    [Test]
    public void NonDaxFileIsRefusedWithAFixAndACreatedFileIsRemoved()
    {
        string path = _dir.File("refused");
        var e = Assert.Throws<FileNotOnDaxException>(() => DaxFile.Open(path, new DaxFileOptions { Size = 4096 }));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Path, Is.EqualTo(path));
            Assert.That(e.Message, Does.Contain("not on an FS-DAX filesystem"));
            Assert.That(e.Message, Does.Contain("dax=always"));
            Assert.That(e.Message, Does.Contain("AllowNonDax"));
            Assert.That(File.Exists(path), Is.False, "the file this call created is removed again");
        });

        File.WriteAllBytes(path, new byte[4096]);
        Assert.Throws<FileNotOnDaxException>(() => DaxFile.Open(path));
        Assert.That(File.Exists(path), Is.True, "a file that existed before is left alone");
    }

    [Test]
    public void AllowNonDaxMapsSharedAndEveryByteReachesTheFile()
    {
        string path = _dir.File("mapped");
        const int Size = 3 * 4096 + 100;
        using (var file = DaxFile.Open(path, new DaxFileOptions { Size = Size, AllowNonDax = true }))
        {
            Assert.Multiple(() =>
            {
                Assert.That(file.IsDax, Is.False);
                Assert.That(file.IsMapSync, Is.False);
                Assert.That(file.Created, Is.True);
                Assert.That(file.Length, Is.EqualTo(Size));
                Assert.That(file.Access, Is.EqualTo(DaxFileAccess.ReadWrite));
                Assert.That(file.IsMapped, Is.True);
                Assert.That(file.Memory.Length, Is.EqualTo(Size));
            });
            Fill(file.Span, seed: 11);
            Assert.That(file.Flush(4096 + 5, 100), Is.EqualTo(FlushMethod.Msync));
            Assert.That(file.Flush(), Is.EqualTo(FlushMethod.Msync));
            unsafe
            {
                using var pin = file.Memory.Pin();
                Assert.That((nint)pin.Pointer, Is.EqualTo((nint)file.BaseAddress));
                Assert.That(file.Memory.Span[Size - 1], Is.EqualTo(Pattern(Size - 1, 11)));
            }
            Assert.Throws<ArgumentOutOfRangeException>(() => file.Flush(Size - 1, 2));
            Assert.Throws<ArgumentOutOfRangeException>(() => file.Flush(-1, 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => _ = file.GetSpan(Size, 1).Length);
            Assert.That(file.GetSpan(Size - 1, 1)[0], Is.EqualTo(Pattern(Size - 1, 11)));
        }
        byte[] contents = ReadFile(path);
        Assert.That(contents, Has.Length.EqualTo(Size));
        AssertPattern(contents, 11, "file written through the mapping");
    }

    [Test]
    public void SizeExtendsButNeverShrinks()
    {
        string path = _dir.File("sized");
        File.WriteAllBytes(path, new byte[8192]);
        using (var file = DaxFile.Open(path, new DaxFileOptions { Size = 4096, AllowNonDax = true }))
        {
            Assert.That(file.Length, Is.EqualTo(4096));
            Assert.That(file.Created, Is.False);
        }
        Assert.That(new FileInfo(path).Length, Is.EqualTo(8192));
        using (var file = DaxFile.Open(path, new DaxFileOptions { Size = 16384, AllowNonDax = true }))
            Assert.That(file.Length, Is.EqualTo(16384));
        Assert.That(new FileInfo(path).Length, Is.EqualTo(16384));
        using (var whole = DaxFile.Open(path, new DaxFileOptions { Access = DaxFileAccess.Read, AllowNonDax = true }))
        {
            Assert.That(whole.Length, Is.EqualTo(16384));
            Assert.That(whole.Flush(), Is.EqualTo(FlushMethod.Msync));
        }
    }

    [Test]
    public void DisposeIsIdempotentAndLaterUseThrows()
    {
        var file = DaxFile.Open(_dir.File("disposed"), new DaxFileOptions { Size = 4096, AllowNonDax = true });
        file.Dispose();
        file.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(file.IsMapped, Is.False);
            Assert.Throws<ObjectDisposedException>(() => _ = file.Span.Length);
            Assert.Throws<ObjectDisposedException>(() => _ = file.Memory);
            Assert.Throws<ObjectDisposedException>(() => file.Flush());
            Assert.Throws<ObjectDisposedException>(() => _ = file.FileDescriptor);
            Assert.Throws<ObjectDisposedException>(() => file.AcquireLease());
        });
    }

    [Test]
    public void CpuFlushMethodIsAnInstruction() =>
        Assert.That(DaxFile.CpuFlushMethod, Is.AnyOf(FlushMethod.Clwb, FlushMethod.ClflushOpt, FlushMethod.Clflush));
}
