using System.Globalization;
using System.Text;
using static RdmaLease.BindingsGenerator.Clang;

namespace RdmaLease.BindingsGenerator;

/// <summary>
/// Walks one translation unit made of the requested headers and writes one C# file per
/// C header that declares something we emit. Output order is source order, so the result
/// only changes when the headers do.
/// </summary>
internal sealed unsafe class Generator(Options opt, nint tu, string version, string tools)
{
    private enum Origin { Traversed, Uapi, System }

    private sealed record Decl(string File, uint Line, uint Column, string Name, string Kind, CXCursor Cursor);

    private readonly string _include = Path.Combine(opt.HeadersDir, "usr/include");
    private readonly Dictionary<string, Decl> _types = new(StringComparer.Ordinal);       // USR -> record/enum to emit
    private readonly Dictionary<string, string> _typedefNames = new(StringComparer.Ordinal); // USR of anonymous record/enum -> typedef
    private readonly Dictionary<string, int> _alignCache = new(StringComparer.Ordinal);
    private readonly Queue<Decl> _pending = new();
    private readonly List<Decl> _functions = [];
    private readonly List<Decl> _anonEnums = [];
    public readonly List<(string File, uint Line, string Name)> Macros = [];
    private readonly Dictionary<string, List<string>> _constants = new(StringComparer.Ordinal); // file -> emitted const lines
    public readonly List<string> Warnings = [];

    // --- where a declaration comes from --------------------------------------------------

    private (string Rel, Origin Origin) Classify(string file)
    {
        file = Path.GetFullPath(file);
        foreach (var root in new[] { Path.Combine(_include, "x86_64-linux-gnu"), _include })
            if (file.StartsWith(root + "/", StringComparison.Ordinal))
            {
                var rel = file[(root.Length + 1)..];
                return (rel, opt.Traverse.Contains(rel) ? Origin.Traversed : Origin.Uapi);
            }
        foreach (var root in new[] { "/usr/include/x86_64-linux-gnu", "/usr/include" })
            if (file.StartsWith(root + "/", StringComparison.Ordinal))
                return ("libc/" + file[(root.Length + 1)..], Origin.System);
        var i = file.IndexOf("/include/", StringComparison.Ordinal);
        return ("libc/" + (i >= 0 ? file[(i + 9)..] : Path.GetFileName(file)), Origin.System);
    }

    private Decl MakeDecl(CXCursor c, string name, string kind)
    {
        var (file, line, col) = Location(c);
        return new Decl(Classify(file).Rel, line, col, name, kind, c);
    }

    // --- pass 1: what the traversed headers declare -----------------------------------------

    public void Collect()
    {
        var top = Children(clang_getTranslationUnitCursor(tu));
        foreach (var c in top)
            if (c.kind == CXCursorKind.TypedefDecl)
            {
                var u = Desugar(clang_getTypedefDeclUnderlyingType(c));
                if (u.kind is CXTypeKind.Record or CXTypeKind.Enum)
                {
                    var d = clang_getTypeDeclaration(u);
                    if (clang_Cursor_isAnonymous(d) != 0) _typedefNames.TryAdd(Key(d), Spelling(c));
                }
            }

        var seenFunctions = new HashSet<string>(StringComparer.Ordinal);
        foreach (var c in top)
        {
            var (file, line, _) = Location(c);
            if (file.Length == 0) continue;
            var (rel, origin) = Classify(file);
            if (origin != Origin.Traversed) continue;
            switch (c.kind)
            {
                case CXCursorKind.StructDecl or CXCursorKind.UnionDecl or CXCursorKind.EnumDecl:
                    {
                        var def = clang_getCursorDefinition(c);
                        if (clang_Cursor_isNull(def) != 0 || !Same(def, c)) break;
                        if (clang_Cursor_isAnonymous(c) != 0 && !_typedefNames.ContainsKey(Key(c)))
                        {
                            if (c.kind == CXCursorKind.EnumDecl) _anonEnums.Add(MakeDecl(c, "", "enum"));
                            break;
                        }
                        Require(c);
                        break;
                    }
                case CXCursorKind.FunctionDecl:
                    {
                        var name = Spelling(c);
                        if (clang_Cursor_getStorageClass(c) == StorageClassStatic || clang_Cursor_isFunctionInlined(c) != 0) break;
                        if (opt.Exclude.Contains(name) || !seenFunctions.Add(name)) break;
                        _functions.Add(MakeDecl(c, name, "function"));
                        break;
                    }
                case CXCursorKind.MacroDefinition:
                    {
                        var name = Spelling(c);
                        if (clang_Cursor_isMacroFunctionLike(c) != 0 || clang_Cursor_isMacroBuiltin(c) != 0) break;
                        if (name.StartsWith('_') || opt.Exclude.Contains(name)) break;
                        if (Tokens(tu, c).Count < 2) break; // include guards and empty markers
                        Macros.Add((rel, line, name));
                        break;
                    }
            }
        }
    }

    private static bool Same(CXCursor a, CXCursor b) => Location(a) == Location(b);

    // Anonymous records nested in one record can share a USR: add the location.
    private static string Key(CXCursor decl) => $"{Usr(decl)}@{Location(decl)}";

    private static CXType Desugar(CXType t)
    {
        while (true)
        {
            if (t.kind == CXTypeKind.Elaborated) t = clang_Type_getNamedType(t);
            else if (t.kind == CXTypeKind.Attributed) t = clang_Type_getModifiedType(t);
            else return t;
        }
    }

    /// <summary>Marks a record or enum for emission and returns its C# name.</summary>
    private string Require(CXCursor decl)
    {
        var def = clang_getCursorDefinition(decl);
        if (clang_Cursor_isNull(def) == 0) decl = def;
        var usr = Key(decl);
        if (_types.TryGetValue(usr, out var known)) return known.Name;
        string name;
        if (clang_Cursor_isAnonymous(decl) != 0)
            name = _typedefNames.TryGetValue(usr, out var td) ? td : throw new InvalidOperationException($"anonymous type at {Location(decl)} has no name");
        else name = Spelling(decl);
        var kind = decl.kind switch { CXCursorKind.StructDecl => "struct", CXCursorKind.UnionDecl => "union", _ => "enum" };
        var d = MakeDecl(decl, name, kind);
        if (clang_Cursor_isNull(def) != 0) throw new InvalidOperationException($"incomplete type {name} used by value");
        _types[usr] = d;
        _pending.Enqueue(d);
        return name;
    }

    // --- C types to C# types ------------------------------------------------------------------

    private static readonly HashSet<string> FixedElementTypes = ["byte", "sbyte", "short", "ushort", "int", "uint", "long", "ulong", "float", "double"];

    private static string? Primitive(CXTypeKind k) => k switch
    {
        CXTypeKind.Void => "void",
        CXTypeKind.Bool => "byte",
        CXTypeKind.Char_S or CXTypeKind.SChar => "sbyte",
        CXTypeKind.Char_U or CXTypeKind.UChar => "byte",
        CXTypeKind.Short => "short",
        CXTypeKind.UShort => "ushort",
        CXTypeKind.Int => "int",
        CXTypeKind.UInt => "uint",
        CXTypeKind.Long or CXTypeKind.LongLong => "long",
        CXTypeKind.ULong or CXTypeKind.ULongLong => "ulong",
        CXTypeKind.Int128 => "Int128",
        CXTypeKind.UInt128 => "UInt128",
        CXTypeKind.Float => "float",
        CXTypeKind.Double => "double",
        _ => null,
    };

    private string Cs(CXType t)
    {
        t = Desugar(t);
        switch (t.kind)
        {
            case CXTypeKind.Typedef:
                {
                    var decl = clang_getTypeDeclaration(t);
                    var name = Spelling(decl);
                    if (opt.Remap.TryGetValue(name, out var remapped)) return remapped;
                    var under = Desugar(clang_getTypedefDeclUnderlyingType(decl));
                    if (under.kind is CXTypeKind.Record or CXTypeKind.Enum
                        && clang_Cursor_isAnonymous(clang_getTypeDeclaration(under)) != 0)
                        return Require(clang_getTypeDeclaration(under));
                    return Cs(under);
                }
            case CXTypeKind.Pointer:
                {
                    var p = Desugar(clang_getPointeeType(t));
                    var pc = clang_getCanonicalType(p);
                    if (pc.kind is CXTypeKind.FunctionProto or CXTypeKind.FunctionNoProto) return FunctionPointer(pc);
                    if (pc.kind == CXTypeKind.Record && IsIncomplete(pc)) return "void*";
                    return Cs(p) + "*";
                }
            case CXTypeKind.Record:
            case CXTypeKind.Enum:
                {
                    var decl = clang_getTypeDeclaration(t);
                    if (t.kind == CXTypeKind.Record && IsIncomplete(t)) throw new InvalidOperationException($"incomplete type {Spelling(t)} used by value");
                    return Require(decl);
                }
            case CXTypeKind.ConstantArray:
            case CXTypeKind.IncompleteArray:
                return Cs(clang_getArrayElementType(t)) + "*";
            case CXTypeKind.FunctionProto:
            case CXTypeKind.FunctionNoProto:
                return FunctionPointer(t);
            default:
                return Primitive(t.kind) ?? throw new NotSupportedException($"C type '{Spelling(t)}' (kind {t.kind})");
        }
    }

    private static bool IsIncomplete(CXType t) => clang_Cursor_isNull(clang_getCursorDefinition(clang_getTypeDeclaration(t))) != 0;

    private string FunctionPointer(CXType fn)
    {
        if (clang_isFunctionTypeVariadic(fn) != 0) return "void*";
        var parts = new List<string>();
        var n = fn.kind == CXTypeKind.FunctionProto ? clang_getNumArgTypes(fn) : 0;
        for (uint i = 0; i < n; i++) parts.Add(Cs(clang_getArgType(fn, i)));
        parts.Add(Cs(clang_getResultType(fn)));
        return $"delegate* unmanaged<{string.Join(", ", parts)}>";
    }

    /// <summary>The alignment .NET gives the C# image of a C type (natural, recursive).</summary>
    private int ManagedAlign(CXType t)
    {
        var c = clang_getCanonicalType(t);
        switch (c.kind)
        {
            case CXTypeKind.Pointer: return 8;
            case CXTypeKind.ConstantArray: return ManagedAlign(clang_getArrayElementType(c));
            case CXTypeKind.Enum: return (int)clang_Type_getSizeOf(c);
            case CXTypeKind.Record:
                {
                    var decl = clang_getCursorDefinition(clang_getTypeDeclaration(c));
                    var usr = Key(decl);
                    if (_alignCache.TryGetValue(usr, out var a)) return a;
                    if (opt.Opaque.Contains(RecordName(decl))) a = OpaqueAlign(c);
                    else
                    {
                        a = 1;
                        foreach (var m in Children(decl))
                            if (m.kind == CXCursorKind.FieldDecl) a = Math.Max(a, ManagedAlign(clang_getCursorType(m)));
                    }
                    return _alignCache[usr] = a;
                }
            default: return (int)clang_Type_getSizeOf(c);
        }
    }

    private static int OpaqueAlign(CXType t) => (int)Math.Min(8, clang_Type_getAlignOf(t));

    private string RecordName(CXCursor decl) =>
        clang_Cursor_isAnonymous(decl) != 0 ? _typedefNames.GetValueOrDefault(Key(decl), "") : Spelling(decl);

    // --- emission -----------------------------------------------------------------------------

    private sealed class FileOut
    {
        public readonly List<(uint Line, uint Column, string Text)> Items = [];
        public readonly List<(uint Line, string Text)> ClassMembers = [];
    }

    private readonly SortedDictionary<string, FileOut> _files = new(StringComparer.Ordinal);
    private FileOut Out(string rel) => _files.TryGetValue(rel, out var f) ? f : _files[rel] = new FileOut();

    public void Emit(Dictionary<string, (string Type, string Value)> macroValues)
    {
        while (_pending.Count > 0)
        {
            var d = _pending.Dequeue();
            var sb = new StringBuilder();
            if (d.Kind == "enum") EmitEnum(sb, d);
            else EmitRecord(sb, d);
            Out(d.File).Items.Add((d.Line, d.Column, sb.ToString()));
        }
        foreach (var f in _functions) EmitFunction(f);
        foreach (var e in _anonEnums)
        {
            var type = Cs(clang_getEnumDeclIntegerType(e.Cursor));
            foreach (var m in Children(e.Cursor))
                if (m.kind == CXCursorKind.EnumConstantDecl)
                    Out(e.File).ClassMembers.Add((Location(m).Line, $"public const {type} {Spelling(m)} = {EnumValue(m, type)};"));
        }
        foreach (var (file, line, name) in Macros)
            if (macroValues.TryGetValue(name, out var v))
                Out(file).ClassMembers.Add((line, $"public const {v.Type} {name} = {v.Value};"));
        // Pending types discovered while emitting functions.
        while (_pending.Count > 0)
        {
            var d = _pending.Dequeue();
            var sb = new StringBuilder();
            if (d.Kind == "enum") EmitEnum(sb, d); else EmitRecord(sb, d);
            Out(d.File).Items.Add((d.Line, d.Column, sb.ToString()));
        }
    }

    private static string EnumValue(CXCursor m, string type) =>
        type is "uint" or "ulong" or "ushort" or "byte"
            ? FormatUnsigned(clang_getEnumConstantDeclUnsignedValue(m))
            : clang_getEnumConstantDeclValue(m).ToString(CultureInfo.InvariantCulture);

    public static string FormatUnsigned(ulong v) => v >= 0x100 ? "0x" + v.ToString("X", CultureInfo.InvariantCulture) : v.ToString(CultureInfo.InvariantCulture);

    private void EmitEnum(StringBuilder sb, Decl d)
    {
        var type = Cs(clang_getEnumDeclIntegerType(d.Cursor));
        sb.Append(CultureInfo.InvariantCulture, $"[NativeTypeName(\"enum {d.Name}\")]\n");
        sb.Append(CultureInfo.InvariantCulture, $"{opt.Accessibility} enum {d.Name} : {type}\n{{\n");
        foreach (var m in Children(d.Cursor))
            if (m.kind == CXCursorKind.EnumConstantDecl)
                sb.Append(CultureInfo.InvariantCulture, $"    {Spelling(m)} = {EnumValue(m, type)},\n");
        sb.Append("}\n");
    }

    private void EmitRecord(StringBuilder sb, Decl d)
    {
        var origin = Classify(Location(d.Cursor).File).Origin;
        var cSpelling = Spelling(clang_getCursorType(d.Cursor));
        var type = clang_getCursorType(d.Cursor);
        if (opt.Opaque.Contains(d.Name))
        {
            if (origin != Origin.System) throw new InvalidOperationException($"--opaque {d.Name}: only C library types may be opaque");
            var size = clang_Type_getSizeOf(type);
            var align = OpaqueAlign(type);
            var slot = align switch { 8 => "ulong", 4 => "uint", 2 => "ushort", _ => "byte" };
            sb.Append(CultureInfo.InvariantCulture, $"/// <summary>C's <c>{cSpelling}</c>, opaque here: only its size ({size}) and alignment ({align}) are mirrored.</summary>\n");
            sb.Append(CultureInfo.InvariantCulture, $"[NativeRecord(\"{cSpelling}\")]\n");
            sb.Append(CultureInfo.InvariantCulture, $"[StructLayout(LayoutKind.Explicit, Size = {size})]\n");
            sb.Append(CultureInfo.InvariantCulture, $"{opt.Accessibility} partial struct {d.Name}\n{{\n    [FieldOffset(0)] private {slot} _alignment;\n}}\n");
            return;
        }
        sb.Append(CultureInfo.InvariantCulture, $"[NativeRecord(\"{cSpelling}\")]\n");
        EmitRecordBody(sb, d.Cursor, d.Name, d.Kind == "union", "");
    }

    private sealed class Member
    {
        public required string Name;          // C# field name
        public string? CName;                 // C member name, null for anonymous members
        public required long Offset;          // bytes, from clang
        public required long Size;            // bytes, from clang
        public required int Align;            // what .NET will use
        public required List<string> Lines;   // the field's declaration (attributes + field)
        public string? NestedType;            // nested type definition
        public List<(string Name, string Path, string Type)> Promoted = [];
        public int FieldLine = -1;            // index in Lines of the field itself (-1: the last) // members an anonymous member lifts into the parent
    }

    private void EmitRecordBody(StringBuilder sb, CXCursor rec, string name, bool isUnion, string indent)
    {
        var recType = clang_getCursorType(rec);
        var clangSize = clang_Type_getSizeOf(recType);
        var clangAlign = clang_Type_getAlignOf(recType);
        var members = new List<Member>();
        var anonymousCount = 0;
        var children = Children(rec);
        (string Field, int Index)? bitGroup = null; long bitGroupOffset = -1; long bitGroupSize = 0;

        for (var i = 0; i < children.Count; i++)
        {
            var c = children[i];
            if (c.kind is CXCursorKind.StructDecl or CXCursorKind.UnionDecl)
            {
                if (clang_Cursor_isAnonymousRecordDecl(c) != 0)
                {
                    // C11 anonymous member: a nested type plus a field named AnonymousN whose members
                    // the parent exposes as ref properties.
                    var fname = $"Anonymous{++anonymousCount}";
                    var tname = $"{fname}_{(c.kind == CXCursorKind.UnionDecl ? "union" : "struct")}";
                    var nested = new StringBuilder();
                    EmitRecordBody(nested, c, tname, c.kind == CXCursorKind.UnionDecl, indent + "    ");
                    var ct = clang_getCursorType(c);
                    var m = new Member
                    {
                        Name = fname, CName = null, Offset = FirstLeafOffset(rec, c), Size = clang_Type_getSizeOf(ct),
                        Align = ManagedAlign(ct), Lines = [$"public {tname} {fname};"], NestedType = nested.ToString(),
                    };
                    foreach (var (pn, pp, pt) in PromotableMembers(c, tname)) m.Promoted.Add((pn, $"{fname}.{pp}", pt));
                    members.Add(m);
                    bitGroup = null;
                }
                else if (clang_Cursor_isAnonymous(c) == 0 && clang_Cursor_isNull(clang_getCursorDefinition(c)) == 0
                         && Same(clang_getCursorDefinition(c), c))
                    Require(c); // a tagged definition nested in a record still has file scope in C
                continue;
            }
            if (c.kind != CXCursorKind.FieldDecl) continue;
            var cname = Spelling(c);
            var ft = clang_getCursorType(c);
            var canon = clang_getCanonicalType(ft);
            var offBits = clang_Cursor_getOffsetOfField(c);
            var native = Spelling(ft);

            if (clang_Cursor_isBitField(c) != 0)
            {
                var width = clang_getFieldDeclBitWidth(c);
                var unitSize = clang_Type_getSizeOf(canon);
                var unitOffset = offBits / (unitSize * 8) * unitSize;
                var unitType = unitSize switch { 1 => "byte", 2 => "ushort", 4 => "uint", 8 => "ulong", _ => throw new NotSupportedException("bitfield unit") };
                if (bitGroup is null || bitGroupOffset != unitOffset || bitGroupSize != unitSize)
                {
                    var field = $"_bitfield{members.Count(x => x.Name.StartsWith("_bitfield", StringComparison.Ordinal)) + 1}";
                    members.Add(new Member
                    {
                        Name = field, CName = null, Offset = unitOffset, Size = unitSize, Align = (int)unitSize,
                        Lines = [$"public {unitType} {field};"], FieldLine = 0,
                    });
                    bitGroup = (field, members.Count - 1); bitGroupOffset = unitOffset; bitGroupSize = unitSize;
                }
                var shift = offBits - unitOffset * 8;
                var mask = width == 64 ? ulong.MaxValue : (1UL << width) - 1;
                var valueType = Cs(ft);
                var g = bitGroup.Value.Field;
                members[bitGroup.Value.Index].Lines.Add(
                    $"[NativeTypeName(\"{native} : {width}\")]\n" +
                    $"public {valueType} {Escape(cname)}\n{{\n" +
                    $"    readonly get => ({valueType})(({g} >> {shift}) & 0x{mask:X}UL);\n" +
                    $"    set => {g} = ({unitType})(({g} & ~(0x{mask:X}UL << {shift})) | (((ulong)value & 0x{mask:X}UL) << {shift}));\n}}");
                continue;
            }
            bitGroup = null;

            var lines = new List<string>();
            string? nestedText = null;
            if (canon.kind == CXTypeKind.ConstantArray)
            {
                var elem = clang_getArrayElementType(Desugar(ft).kind == CXTypeKind.ConstantArray ? Desugar(ft) : canon);
                var count = clang_getArraySize(canon);
                if (clang_getCanonicalType(elem).kind == CXTypeKind.ConstantArray) throw new NotSupportedException($"{name}.{cname}: multi-dimensional array");
                var ec = Cs(elem);
                lines.Add($"[NativeTypeName(\"{native}\")]");
                if (FixedElementTypes.Contains(ec)) lines.Add($"public fixed {ec} {Escape(cname)}[{count}];");
                else
                {
                    var tname = $"{cname}_array";
                    var nb = new StringBuilder();
                    var ni = indent + "    ";
                    nb.Append(CultureInfo.InvariantCulture, $"{ni}/// <summary>Storage for C's <c>{native} {cname}</c>.</summary>\n");
                    nb.Append(CultureInfo.InvariantCulture, $"{ni}[StructLayout(LayoutKind.Sequential)]\n{ni}public partial struct {tname}\n{ni}{{\n");
                    for (var k = 0; k < count; k++) nb.Append(CultureInfo.InvariantCulture, $"{ni}    public {ec} e{k};\n");
                    if (!ec.EndsWith('*') && !ec.StartsWith("delegate*", StringComparison.Ordinal))
                    {
                        nb.Append(CultureInfo.InvariantCulture, $"\n{ni}    /// <summary>The {count} elements as a span over this storage.</summary>\n");
                        nb.Append(CultureInfo.InvariantCulture, $"{ni}    [UnscopedRef] public Span<{ec}> AsSpan() => MemoryMarshal.CreateSpan(ref e0, {count});\n");
                        nb.Append(CultureInfo.InvariantCulture, $"\n{ni}    /// <summary>Element <paramref name=\"index\"/>.</summary>\n");
                        nb.Append(CultureInfo.InvariantCulture, $"{ni}    [UnscopedRef] public ref {ec} this[int index] => ref AsSpan()[index];\n");
                    }
                    nb.Append(CultureInfo.InvariantCulture, $"{ni}}}\n");
                    nestedText = nb.ToString();
                    lines.Add($"public {tname} {Escape(cname)};");
                }
            }
            else if (canon.kind == CXTypeKind.Record && clang_Cursor_isAnonymous(clang_getTypeDeclaration(canon)) != 0
                     && !_typedefNames.ContainsKey(Key(clang_getTypeDeclaration(canon))))
            {
                var decl = clang_getTypeDeclaration(canon);
                var isU = decl.kind == CXCursorKind.UnionDecl;
                var tname = $"{cname}_{(isU ? "union" : "struct")}";
                var nb = new StringBuilder();
                EmitRecordBody(nb, decl, tname, isU, indent + "    ");
                nestedText = nb.ToString();
                
                lines.Add($"public {tname} {Escape(cname)};");
            }
            else
            {
                var cs = Cs(ft);
                if (native != cs) lines.Add($"[NativeTypeName(\"{native}\")]");
                lines.Add($"public {cs} {Escape(cname)};");
            }
            members.Add(new Member
            {
                Name = cname, CName = cname, Offset = offBits / 8, Size = clang_Type_getSizeOf(ft), Align = ManagedAlign(ft),
                Lines = lines, NestedType = nestedText,
            });
        }

        // Does .NET's sequential layout reproduce clang's? Otherwise place every field explicitly.
        long cur = 0; var maxAlign = 1; var explicitNeeded = isUnion;
        foreach (var m in members)
        {
            maxAlign = Math.Max(maxAlign, m.Align);
            var off = isUnion ? 0 : AlignUp(cur, m.Align);
            if (off != m.Offset) explicitNeeded = true;
            cur = isUnion ? Math.Max(cur, m.Size) : m.Offset + m.Size;
        }
        var naturalSize = AlignUp(cur, maxAlign);
        var layoutArgs = new List<string> { explicitNeeded ? "LayoutKind.Explicit" : "LayoutKind.Sequential" };
        if (clangAlign < maxAlign) { explicitNeeded = true; layoutArgs[0] = "LayoutKind.Explicit"; layoutArgs.Add($"Pack = {clangAlign}"); }
        if (naturalSize != clangSize || clangAlign < maxAlign) layoutArgs.Add($"Size = {clangSize}");
        if (clangAlign > maxAlign) Warnings.Add($"{name}: C alignment {clangAlign} exceeds the C# image's {maxAlign}");

        sb.Append(CultureInfo.InvariantCulture, $"{indent}[StructLayout({string.Join(", ", layoutArgs)})]\n");
        // Nested types stay public: the top-level type's accessibility bounds theirs.
        var access = indent.Length == 0 ? opt.Accessibility : "public";
        sb.Append(CultureInfo.InvariantCulture, $"{indent}{access} unsafe partial struct {name}\n{indent}{{\n");
        var first = true;
        foreach (var m in members)
        {
            if (!first) sb.Append('\n');
            first = false;
            var fieldLine = m.FieldLine >= 0 ? m.FieldLine : m.Lines.Count - 1;
            for (var k = 0; k < m.Lines.Count; k++)
            {
                var text = explicitNeeded && k == fieldLine ? $"[FieldOffset({m.Offset})]\n{m.Lines[k]}" : m.Lines[k];
                foreach (var l in text.Split('\n')) sb.Append(indent).Append("    ").Append(l).Append('\n');
            }
        }
        foreach (var m in members.Where(m => m.Promoted.Count > 0))
            foreach (var (pn, path, type) in m.Promoted)
            {
                sb.Append(CultureInfo.InvariantCulture, $"\n{indent}    /// <summary>C's <c>{pn}</c>, a member of anonymous member {m.Name}.</summary>\n");
                sb.Append(CultureInfo.InvariantCulture, $"{indent}    [UnscopedRef] public ref {type} {Escape(pn)} => ref {Escape(path)};\n");
            }
        foreach (var m in members.Where(m => m.NestedType is not null))
            sb.Append('\n').Append(m.NestedType);
        sb.Append(CultureInfo.InvariantCulture, $"{indent}}}\n");
    }

    /// <summary>Members of an anonymous struct/union the parent exposes as ref properties:
    /// (C name, C# access path below the anonymous member, C# type). Fixed buffers, bitfields
    /// and function pointers are reached through the AnonymousN field instead.</summary>
    private List<(string Name, string Path, string Type)> PromotableMembers(CXCursor anon, string anonType)
    {
        var list = new List<(string, string, string)>();
        var count = 0;
        foreach (var c in Children(anon))
        {
            if (c.kind is CXCursorKind.StructDecl or CXCursorKind.UnionDecl && clang_Cursor_isAnonymousRecordDecl(c) != 0)
            {
                var inner = $"Anonymous{++count}";
                var innerType = $"{anonType}.{inner}_{(c.kind == CXCursorKind.UnionDecl ? "union" : "struct")}";
                foreach (var (n, p, it) in PromotableMembers(c, innerType)) list.Add((n, $"{inner}.{p}", it));
                continue;
            }
            if (c.kind != CXCursorKind.FieldDecl || clang_Cursor_isBitField(c) != 0) continue;
            var ft = clang_getCursorType(c);
            var canon = clang_getCanonicalType(ft);
            if (canon.kind == CXTypeKind.ConstantArray) continue;
            var n2 = Spelling(c);
            string t;
            var decl = clang_getTypeDeclaration(canon);
            if (canon.kind == CXTypeKind.Record && clang_Cursor_isAnonymous(decl) != 0 && !_typedefNames.ContainsKey(Key(decl)))
                t = $"{anonType}.{n2}_{(decl.kind == CXCursorKind.UnionDecl ? "union" : "struct")}";
            else t = Cs(ft);
            if (t.StartsWith("delegate*", StringComparison.Ordinal)) continue;
            list.Add((n2, n2, t));
        }
        return list;
    }

    private static long FirstLeafOffset(CXCursor parent, CXCursor anon)
    {
        foreach (var c in Children(anon))
        {
            if (c.kind == CXCursorKind.FieldDecl)
            {
                var o = clang_Type_getOffsetOf(clang_getCursorType(parent), Spelling(c));
                if (o >= 0) return o / 8;
            }
            if (c.kind is CXCursorKind.StructDecl or CXCursorKind.UnionDecl && clang_Cursor_isAnonymousRecordDecl(c) != 0)
                return FirstLeafOffset(parent, c);
        }
        throw new InvalidOperationException($"empty anonymous member at {Location(anon)}");
    }

    private static long AlignUp(long v, long a) => (v + a - 1) / a * a;

    private void EmitFunction(Decl f)
    {
        var fnType = clang_getCursorType(f.Cursor);
        if (clang_isFunctionTypeVariadic(fnType) != 0) { Warnings.Add($"{f.Name}: variadic, skipped"); return; }
        var (lib, _) = opt.LibraryFor(f.File);
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"[LibraryImport(\"{lib}\"{(opt.SetLastError ? ", SetLastError = true" : "")})]\n");
        var ret = clang_getResultType(fnType);
        var retCs = Cs(ret);
        if (Spelling(ret) != retCs) sb.Append(CultureInfo.InvariantCulture, $"[return: NativeTypeName(\"{Spelling(ret)}\")]\n");
        var ps = new List<string>();
        var n = clang_Cursor_getNumArguments(f.Cursor);
        for (uint i = 0; i < n; i++)
        {
            var p = clang_Cursor_getArgument(f.Cursor, i);
            var pt = clang_getCursorType(p);
            var pn = Spelling(p);
            if (pn.Length == 0) pn = $"arg{i}";
            var cs = Cs(pt);
            var native = Spelling(pt);
            ps.Add((native != cs ? $"[NativeTypeName(\"{native}\")] " : "") + $"{cs} {Escape(pn)}");
        }
        sb.Append(CultureInfo.InvariantCulture, $"public static partial {retCs} {f.Name}({string.Join(", ", ps)});");
        Out(f.File).ClassMembers.Add((f.Line, sb.ToString()));
    }

    private static readonly HashSet<string> Keywords =
    [
        "abstract", "as", "base", "bool", "break", "byte", "case", "catch", "char", "checked", "class", "const", "continue",
        "decimal", "default", "delegate", "do", "double", "else", "enum", "event", "explicit", "extern", "false", "finally",
        "fixed", "float", "for", "foreach", "goto", "if", "implicit", "in", "int", "interface", "internal", "is", "lock",
        "long", "namespace", "new", "null", "object", "operator", "out", "override", "params", "private", "protected",
        "public", "readonly", "ref", "return", "sbyte", "sealed", "short", "sizeof", "stackalloc", "static", "string",
        "struct", "switch", "this", "throw", "true", "try", "typeof", "uint", "ulong", "unchecked", "unsafe", "ushort",
        "using", "virtual", "void", "volatile", "while",
    ];

    private static string Escape(string name) =>
        string.Join('.', name.Split('.').Select(p => Keywords.Contains(p) ? "@" + p : p));

    // --- files ----------------------------------------------------------------------------------

    public IEnumerable<(string RelPath, string Text)> Files()
    {
        foreach (var (rel, f) in _files)
        {
            var sb = new StringBuilder();
            var source = rel.StartsWith("libc/", StringComparison.Ordinal)
                ? $"<{rel[5..]}> of the host's C library (glibc, x86_64; only the types rdma-core's headers use)"
                : opt.Traverse.Contains(rel)
                    ? $"<{rel}> of rdma-core {version}"
                    : rel.StartsWith("infiniband/", StringComparison.Ordinal)
                    ? $"<{rel}> of rdma-core {version} (only the declarations the bound headers use)"
                    : $"<{rel}> of the Linux UAPI headers fetched with rdma-core {version} (only the declarations rdma-core's headers use)";
            sb.Append("// <auto-generated>\n");
            sb.Append(CultureInfo.InvariantCulture, $"// Generated by RdmaLease.BindingsGenerator from {source}.\n");
            sb.Append(CultureInfo.InvariantCulture, $"// {tools}.\n");
            sb.Append("// Do not edit: put hand fixes in a *.Manual.cs partial beside this file and regenerate with\n");
            sb.Append("// `./build.sh bindings` (tools/BindingsGenerator/generate.rsp holds the options).\n");
            sb.Append("// </auto-generated>\n\n");
            sb.Append("using System.Diagnostics.CodeAnalysis;\nusing System.Runtime.CompilerServices;\nusing System.Runtime.InteropServices;\n\n");
            sb.Append(CultureInfo.InvariantCulture, $"#pragma warning disable CS0169 // opaque types keep a private alignment slot\n\n");
            sb.Append(CultureInfo.InvariantCulture, $"namespace {opt.Namespace};\n");
            foreach (var item in f.Items.OrderBy(i => i.Line).ThenBy(i => i.Column))
                sb.Append('\n').Append(item.Text);
            if (f.ClassMembers.Count > 0)
            {
                var (_, cls) = opt.LibraryFor(rel);
                sb.Append(CultureInfo.InvariantCulture, $"\n{opt.Accessibility} static unsafe partial class {cls}\n{{\n");
                var firstMember = true;
                foreach (var (_, text) in f.ClassMembers.OrderBy(m => m.Line))
                {
                    var isConst = text.StartsWith("public const", StringComparison.Ordinal);
                    if (!firstMember && !isConst) sb.Append('\n');
                    firstMember = false;
                    foreach (var l in text.Split('\n')) sb.Append("    ").Append(l).Append('\n');
                }
                sb.Append("}\n");
            }
            yield return (rel[..^2] + ".cs", sb.ToString());
        }
    }
}
