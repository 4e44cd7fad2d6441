namespace RdmaLease.Tests;

public class Smoke
{
    [Test]
    public void Runs() => Assert.That(Environment.ProcessorCount, Is.GreaterThan(0));

    [Test, Category("Guest")]
    public void GuestOnly() => Assert.That(Environment.ProcessorCount, Is.GreaterThan(0));
}
