using System.Reflection;
using System.Text.RegularExpressions;

namespace RdmaLease.Tests.Adversary;

/// <summary>
/// docs/security.md says "every claim below names the test that tries to break it": each test it names exists, and the
/// page has no section still waiting for its numbers (a line that is one upper-case word, such as RESULTS or COST, is a
/// placeholder, not a measurement).
/// </summary>
public partial class TrustDocsTests
{
    static string Page => File.ReadAllText(RepoPaths.File("docs/security.md"));

    [Test]
    public void SecurityMdHasNoPlaceholderWhereItsMeasurementsShouldBe()
    {
        var placeholders = Page.Split('\n').Select((line, i) => (Line: line.Trim(), Number: i + 1))
            .Where(l => Placeholder().IsMatch(l.Line)).Select(l => $"line {l.Number}: {l.Line}").ToList();
        Assert.That(placeholders, Is.Empty, "docs/security.md announces measured results (the attack, the wider sweep, the cost) that are not there");
    }

    [Test]
    public void EveryTestSecurityMdNamesExists()
    {
        var types = typeof(TrustDocsTests).Assembly.GetTypes().Where(t => t.GetCustomAttributes<TestFixtureAttribute>().Any()
            || t.GetMethods().Any(m => m.GetCustomAttributes<TestAttribute>().Any() || m.GetCustomAttributes<TestCaseAttribute>().Any())).ToDictionary(t => t.Name);
        var named = TestName().Matches(Page).Select(m => (Type: m.Groups[1].Value, Method: m.Groups[2].Success ? m.Groups[2].Value : null)).Distinct().ToList();
        Assert.That(named, Is.Not.Empty, "the page names its tests in backticks");
        var missing = named.Where(n => !types.TryGetValue(n.Type, out var t) || (n.Method is not null && t.GetMethod(n.Method) is null))
            .Select(n => n.Method is null ? n.Type : n.Type + "." + n.Method).ToList();
        Assert.That(missing, Is.Empty, "tests docs/security.md names that do not exist");
    }

    [GeneratedRegex(@"^[A-Z]{3,}$")]
    private static partial Regex Placeholder();

    [GeneratedRegex(@"`(\w+Tests)(?:\.(\w+))?`")]
    private static partial Regex TestName();
}
