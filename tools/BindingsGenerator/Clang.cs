using System.Runtime.InteropServices;

namespace RdmaLease.BindingsGenerator;

// The few libclang C API entry points the generator uses (clang-c/Index.h of LLVM 16).
// Layouts of the by-value structs follow Index.h; all are blittable.

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXCursor
{
    public CXCursorKind kind;
    public int xdata;
    public void* data0, data1, data2;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXType
{
    public CXTypeKind kind;
    public void* data0, data1;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXString
{
    public void* data;
    public uint flags;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXSourceLocation
{
    public void* ptr0, ptr1;
    public uint intData;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXSourceRange
{
    public void* ptr0, ptr1;
    public uint begin, end;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXToken
{
    public uint i0, i1, i2, i3;
    public void* ptr;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXUnsavedFile
{
    public byte* Filename;
    public byte* Contents;
    public nuint Length;
}

internal enum CXCursorKind
{
    StructDecl = 2, UnionDecl = 3, EnumDecl = 5, FieldDecl = 6, EnumConstantDecl = 7,
    FunctionDecl = 8, VarDecl = 9, ParmDecl = 10, TypedefDecl = 20,
    MacroDefinition = 501,
}

internal enum CXTypeKind
{
    Invalid = 0, Unexposed = 1, Void = 2, Bool = 3, Char_U = 4, UChar = 5, Char16 = 6, Char32 = 7,
    UShort = 8, UInt = 9, ULong = 10, ULongLong = 11, UInt128 = 12, Char_S = 13, SChar = 14,
    WChar = 15, Short = 16, Int = 17, Long = 18, LongLong = 19, Int128 = 20, Float = 21,
    Double = 22, LongDouble = 23,
    Pointer = 101, Record = 105, Enum = 106, Typedef = 107, FunctionNoProto = 110,
    FunctionProto = 111, ConstantArray = 112, IncompleteArray = 114, Elaborated = 119,
    Attributed = 163,
}

internal static unsafe partial class Clang
{
    /// <summary>The library name of the imports; Program loads the file generate.rsp names for it.</summary>
    public const string Lib = "libclang";

    public const uint DetailedPreprocessingRecord = 0x01;
    public const uint SkipFunctionBodies = 0x40;
    public const int StorageClassStatic = 3;
    public const int EvalInt = 1;

    [LibraryImport(Lib)] public static partial CXString clang_getClangVersion();
    [LibraryImport(Lib)] public static partial nint clang_createIndex(int excludePch, int displayDiagnostics);
    [LibraryImport(Lib)] public static partial void clang_disposeIndex(nint index);
    [LibraryImport(Lib)]
    public static partial nint clang_parseTranslationUnit(nint index, byte* sourceFile, byte** args, int numArgs,
        CXUnsavedFile* unsaved, uint numUnsaved, uint options);
    [LibraryImport(Lib)] public static partial void clang_disposeTranslationUnit(nint tu);
    [LibraryImport(Lib)] public static partial uint clang_getNumDiagnostics(nint tu);
    [LibraryImport(Lib)] public static partial nint clang_getDiagnostic(nint tu, uint index);
    [LibraryImport(Lib)] public static partial int clang_getDiagnosticSeverity(nint diag);
    [LibraryImport(Lib)] public static partial CXString clang_formatDiagnostic(nint diag, uint options);
    [LibraryImport(Lib)] public static partial void clang_disposeDiagnostic(nint diag);

    [LibraryImport(Lib)] public static partial CXCursor clang_getTranslationUnitCursor(nint tu);
    [LibraryImport(Lib)]
    public static partial uint clang_visitChildren(CXCursor parent,
        delegate* unmanaged<CXCursor, CXCursor, nint, int> visitor, nint clientData);
    [LibraryImport(Lib)] public static partial CXString clang_getCursorSpelling(CXCursor c);
    [LibraryImport(Lib)] public static partial CXString clang_getCursorUSR(CXCursor c);
    [LibraryImport(Lib)] public static partial CXCursor clang_getCursorDefinition(CXCursor c);
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isNull(CXCursor c);
    [LibraryImport(Lib)] public static partial CXType clang_getCursorType(CXCursor c);
    [LibraryImport(Lib)] public static partial CXSourceLocation clang_getCursorLocation(CXCursor c);
    [LibraryImport(Lib)] public static partial CXSourceRange clang_getCursorExtent(CXCursor c);
    [LibraryImport(Lib)]
    public static partial void clang_getExpansionLocation(CXSourceLocation loc, nint* file, uint* line, uint* column, uint* offset);
    [LibraryImport(Lib)] public static partial CXString clang_getFileName(nint file);
    [LibraryImport(Lib)] public static partial CXType clang_getTypedefDeclUnderlyingType(CXCursor c);
    [LibraryImport(Lib)] public static partial CXType clang_getEnumDeclIntegerType(CXCursor c);
    [LibraryImport(Lib)] public static partial long clang_getEnumConstantDeclValue(CXCursor c);
    [LibraryImport(Lib)] public static partial ulong clang_getEnumConstantDeclUnsignedValue(CXCursor c);
    [LibraryImport(Lib)] public static partial long clang_Cursor_getOffsetOfField(CXCursor c);
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isBitField(CXCursor c);
    [LibraryImport(Lib)] public static partial int clang_getFieldDeclBitWidth(CXCursor c);
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isAnonymous(CXCursor c);
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isAnonymousRecordDecl(CXCursor c);
    [LibraryImport(Lib)] public static partial int clang_Cursor_getStorageClass(CXCursor c);
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isFunctionInlined(CXCursor c);
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isMacroFunctionLike(CXCursor c);
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isMacroBuiltin(CXCursor c);
    [LibraryImport(Lib)] public static partial int clang_Cursor_getNumArguments(CXCursor c);
    [LibraryImport(Lib)] public static partial CXCursor clang_Cursor_getArgument(CXCursor c, uint i);
    [LibraryImport(Lib)] public static partial nint clang_Cursor_Evaluate(CXCursor c);
    [LibraryImport(Lib)] public static partial int clang_EvalResult_getKind(nint e);
    [LibraryImport(Lib)] public static partial uint clang_EvalResult_isUnsignedInt(nint e);
    [LibraryImport(Lib)] public static partial long clang_EvalResult_getAsLongLong(nint e);
    [LibraryImport(Lib)] public static partial ulong clang_EvalResult_getAsUnsigned(nint e);
    [LibraryImport(Lib)] public static partial void clang_EvalResult_dispose(nint e);

    [LibraryImport(Lib)] public static partial CXString clang_getTypeSpelling(CXType t);
    [LibraryImport(Lib)] public static partial CXType clang_getCanonicalType(CXType t);
    [LibraryImport(Lib)] public static partial CXType clang_getPointeeType(CXType t);
    [LibraryImport(Lib)] public static partial CXCursor clang_getTypeDeclaration(CXType t);
    [LibraryImport(Lib)] public static partial CXType clang_getArrayElementType(CXType t);
    [LibraryImport(Lib)] public static partial long clang_getArraySize(CXType t);
    [LibraryImport(Lib)] public static partial CXType clang_getResultType(CXType t);
    [LibraryImport(Lib)] public static partial int clang_getNumArgTypes(CXType t);
    [LibraryImport(Lib)] public static partial CXType clang_getArgType(CXType t, uint i);
    [LibraryImport(Lib)] public static partial uint clang_isFunctionTypeVariadic(CXType t);
    [LibraryImport(Lib)] public static partial long clang_Type_getSizeOf(CXType t);
    [LibraryImport(Lib)] public static partial long clang_Type_getAlignOf(CXType t);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial long clang_Type_getOffsetOf(CXType t, string field);
    [LibraryImport(Lib)] public static partial CXType clang_Type_getNamedType(CXType t);
    [LibraryImport(Lib)] public static partial CXType clang_Type_getModifiedType(CXType t);
    [LibraryImport(Lib)] public static partial CXString clang_getTypedefName(CXType t);

    [LibraryImport(Lib)] public static partial void clang_tokenize(nint tu, CXSourceRange range, CXToken** tokens, uint* count);
    [LibraryImport(Lib)] public static partial CXString clang_getTokenSpelling(nint tu, CXToken token);
    [LibraryImport(Lib)] public static partial void clang_disposeTokens(nint tu, CXToken* tokens, uint count);

    [LibraryImport(Lib)] private static partial byte* clang_getCString(CXString s);
    [LibraryImport(Lib)] private static partial void clang_disposeString(CXString s);

    /// <summary>Copies a CXString into a managed string and disposes it.</summary>
    public static string Str(CXString s)
    {
        try { return Marshal.PtrToStringUTF8((nint)clang_getCString(s)) ?? ""; }
        finally { clang_disposeString(s); }
    }

    public static string Spelling(CXCursor c) => Str(clang_getCursorSpelling(c));
    public static string Usr(CXCursor c) => Str(clang_getCursorUSR(c));
    public static string Spelling(CXType t) => Str(clang_getTypeSpelling(t));

    /// <summary>The cursor's children, in source order.</summary>
    public static List<CXCursor> Children(CXCursor parent)
    {
        var list = new List<CXCursor>();
        var handle = GCHandle.Alloc(list);
        try { _ = clang_visitChildren(parent, &Visit, GCHandle.ToIntPtr(handle)); }
        finally { handle.Free(); }
        return list;
    }

    [UnmanagedCallersOnly]
    private static int Visit(CXCursor cursor, CXCursor parent, nint data)
    {
        ((List<CXCursor>)GCHandle.FromIntPtr(data).Target!).Add(cursor);
        return 1; // CXChildVisit_Continue
    }

    /// <summary>File, line and column where the cursor is (after macro expansion).</summary>
    public static (string File, uint Line, uint Column) Location(CXCursor c)
    {
        nint file; uint line, col, off;
        clang_getExpansionLocation(clang_getCursorLocation(c), &file, &line, &col, &off);
        return (file == 0 ? "" : Str(clang_getFileName(file)), line, col);
    }

    public static List<string> Tokens(nint tu, CXCursor c)
    {
        CXToken* tokens; uint n;
        clang_tokenize(tu, clang_getCursorExtent(c), &tokens, &n);
        var list = new List<string>((int)n);
        for (uint i = 0; i < n; i++) list.Add(Str(clang_getTokenSpelling(tu, tokens[i])));
        if (tokens != null) clang_disposeTokens(tu, tokens, n);
        return list;
    }
}
