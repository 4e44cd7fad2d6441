#!/usr/bin/env bash
# generate.sh HEADERS_DIR: build the bindings generator and regenerate
# src/Verbs/Interop/Generated from the rdma-core headers in HEADERS_DIR (a directory with
# usr/include inside, named after the Debian package version, e.g. .../rdma-core/56.1-1).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 HEADERS_DIR" >&2; exit 2; }
[ -f "$1/usr/include/infiniband/verbs.h" ] || { echo "error: $1 has no usr/include/infiniband/verbs.h (run ./build.sh setup)" >&2; exit 1; }
dotnet build "$here/RdmaLease.BindingsGenerator.csproj" -c Release -nologo -clp:ErrorsOnly -v:q
# The generator loads libclang from the path generate.rsp names and checks clang's builtin headers.
dotnet "$repo/artifacts/bin/RdmaLease.BindingsGenerator/release/RdmaLease.BindingsGenerator.dll" \
    "@$here/generate.rsp" --headers-dir "$1" --output "$repo/src/Verbs/Interop/Generated"
