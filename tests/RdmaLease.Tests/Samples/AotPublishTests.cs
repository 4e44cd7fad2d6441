using System.Text.RegularExpressions;

namespace RdmaLease.Tests.Samples;

/// <summary>
/// `./build.sh aot` published samples/Demo with NativeAOT, trimming and AOT analysis warnings as errors
/// (TreatWarningsAsErrors, IlcTreatWarningsAsErrors, TrimmerSingleWarn off so each warning would be shown). Its log
/// is kept: nothing in it is a warning, and the result is a native executable. DemoTests runs it in the guest.
/// </summary>
public class AotPublishTests
{
    [Test]
    public void TheDemoWasPublishedWithNativeAotWithoutWarnings()
    {
        string log = RepoPaths.File("artifacts/aot/RdmaLease.Demo.publish.log");
        string demo = RepoPaths.File("artifacts/aot/RdmaLease.Demo/RdmaLease.Demo");
        Assert.That(File.Exists(log) && File.Exists(demo), $"{demo} or its publish log is missing: ./build.sh aot");
        string text = File.ReadAllText(log);
        Assert.That(text, Does.Contain("Generating native code"), "the log is of a NativeAOT publish");
        Assert.That(text.Split('\n').Where(l => Regex.IsMatch(l, @"\bwarning\b", RegexOptions.IgnoreCase)), Is.Empty);
        var head = new byte[4];
        using (var f = File.OpenRead(demo))
            f.ReadExactly(head);
        Assert.That(head, Is.EqualTo(new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' }), "a native executable");
        var size = new FileInfo(demo).Length;
        TestContext.Out.WriteLine($"NativeAOT demo: {size / 1024} KiB");
        Assert.That(size, Is.GreaterThan(1 << 20), "the runtime and the libraries are compiled in");
    }
}
