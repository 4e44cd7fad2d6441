using System.Runtime.InteropServices;

namespace RdmaLease.Verbs;

/// <summary>
/// A verb failed. The message names the operation, the object it was applied to, the errno
/// and its meaning, and where one is known, what to do about it.
/// </summary>
public class VerbsException : Exception
{
    /// <summary>The verb or operation that failed, e.g. <c>ibv_reg_mr</c>.</summary>
    public string Operation { get; }

    /// <summary>The object the operation was applied to, e.g. <c>device rxelo</c>.</summary>
    public string Target { get; }

    /// <summary>The errno value the verb reported (0 when it reported none).</summary>
    public int Errno { get; }

    /// <summary>Creates the exception; <paramref name="hint"/> is appended as advice.</summary>
    public VerbsException(string operation, string target, int errno, string? hint = null)
        : base(Format(operation, target, errno, hint))
    {
        Operation = operation;
        Target = target;
        Errno = errno;
    }

    /// <summary>Creates the exception with a message of the caller's.</summary>
    public VerbsException(string operation, string target, int errno, string message, Exception? inner)
        : base(message, inner)
    {
        Operation = operation;
        Target = target;
        Errno = errno;
    }

    static string Format(string operation, string target, int errno, string? hint)
    {
        string text = $"{operation} on {target} failed";
        if (errno != 0)
            text += ": " + RdmaLease.Verbs.Errno.Describe(errno);
        return hint is null ? text + "." : $"{text}. {hint}";
    }
}

/// <summary>Names of the errno values verbs report, for messages.</summary>
internal static class Errno
{
    internal const int EPERM = 1, ENOENT = 2, EINTR = 4, EIO = 5, EAGAIN = 11, ENOMEM = 12, EACCES = 13,
        EFAULT = 14, EBUSY = 16, EEXIST = 17, ENODEV = 19, EINVAL = 22, ENOSPC = 28, ENOSYS = 38,
        EOPNOTSUPP = 95, ETIMEDOUT = 110;

    internal static string Name(int errno) => errno switch
    {
        EPERM => "EPERM", ENOENT => "ENOENT", EINTR => "EINTR", EIO => "EIO", EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM", EACCES => "EACCES", EFAULT => "EFAULT", EBUSY => "EBUSY", EEXIST => "EEXIST",
        ENODEV => "ENODEV", EINVAL => "EINVAL", ENOSPC => "ENOSPC", ENOSYS => "ENOSYS",
        EOPNOTSUPP => "EOPNOTSUPP", ETIMEDOUT => "ETIMEDOUT",
        _ => "errno " + errno.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    /// <summary>"errno 16 (EBUSY: Device or resource busy)", for messages.</summary>
    internal static string Describe(int errno) => $"errno {errno} ({Name(errno)}: {Marshal.GetPInvokeErrorMessage(errno)})";
}
