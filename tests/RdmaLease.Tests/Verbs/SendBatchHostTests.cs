using System.Runtime.CompilerServices;
using RdmaLease.Verbs;

namespace RdmaLease.Tests.Verbs;

/// <summary>What can be checked of SendBatch without a device: its stack size and a batch not made by StartPost.</summary>
public class SendBatchHostTests
{
    [Test]
    public void ABatchIsAFewKilobytesOfStack()
    {
        int size = Unsafe.SizeOf<SendBatch>();
        TestContext.Out.WriteLine($"sizeof(SendBatch) = {size} bytes");
        Assert.That(size, Is.GreaterThanOrEqualTo(SendBatch.MaxInlineBytes + SendBatch.MaxSegments * 16 + SendBatch.MaxRequests * 32), "the storage is inline");
        Assert.That(size, Is.LessThan(3 * 1024), "docs/verbs.md says 2584 bytes");
    }

    [Test]
    public void ABatchNotMadeByStartPostRefusesEverything()
    {
        var batch = default(SendBatch);
        var post = Catch(ref batch, static (ref SendBatch b) => b.Post());
        var add = Catch(ref batch, static (ref SendBatch b) => b.SendInline(1, [1, 2, 3]));
        int count = batch.Count;
        Assert.Multiple(() =>
        {
            Assert.That(post.Message, Does.Contain("StartPost"));
            Assert.That(add.Message, Does.Contain("StartPost"));
            Assert.That(count, Is.Zero);
        });
    }

    delegate void BatchAction(ref SendBatch batch);

    static InvalidOperationException Catch(ref SendBatch batch, BatchAction act)
    {
        try
        {
            act(ref batch);
        }
        catch (InvalidOperationException e)
        {
            return e;
        }
        Assert.Fail("InvalidOperationException expected, nothing thrown");
        return null!;
    }
}
