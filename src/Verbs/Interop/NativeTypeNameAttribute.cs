using System.Diagnostics;

namespace RdmaLease.Interop;

/// <summary>
/// The C type a generated field, parameter or return value was declared with (for example
/// <c>__be32</c> or <c>struct ibv_pd *</c>), kept for readers of the bindings. Compiled into
/// DEBUG builds only.
/// </summary>
[Conditional("DEBUG")]
[AttributeUsage(AttributeTargets.Struct | AttributeTargets.Enum | AttributeTargets.Field | AttributeTargets.Parameter | AttributeTargets.ReturnValue | AttributeTargets.Property,
    AllowMultiple = false, Inherited = false)]
internal sealed class NativeTypeNameAttribute(string name) : Attribute
{
    /// <summary>The C spelling of the type.</summary>
    public string Name { get; } = name;
}

/// <summary>
/// The C type a generated struct mirrors, as C spells it (<c>struct ibv_qp</c>,
/// <c>union ibv_gid</c>, <c>pthread_mutex_t</c>). Unlike <see cref="NativeTypeNameAttribute"/>
/// it is kept in every build: the layout conformance tests read it to write their C checks.
/// </summary>
[AttributeUsage(AttributeTargets.Struct, AllowMultiple = false, Inherited = false)]
internal sealed class NativeRecordAttribute(string cSpelling) : Attribute
{
    /// <summary>The C spelling of the mirrored type.</summary>
    public string CSpelling { get; } = cSpelling;
}
