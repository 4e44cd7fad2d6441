#!/usr/bin/env bash
# Runs inside the guest (./build.sh bench): every suite benchmarks/guest/suites/*.sh once per round, round-robin, so
# noise spreads over all of them. usage: run.sh ROUNDS [OUTDIR, default /mnt/out]
# Each suite is called as `SUITE.sh ROUND OUTDIR` with cwd = the repository and appends rows to OUTDIR/results.csv
# (suite,case,impl,param,round,metric,value,unit) and, for distributions, OUTDIR/samples.csv
# (suite,case,impl,param,round,index,value,unit); the headers are written here. docs/benchmarks.md has the contract.
# RDMA_LEASE_BENCH_SUITES="net reg": only those suites. RDMA_LEASE_BENCH_QUICK=1: each suite runs a tiny version.
set -uo pipefail
rounds=${1:?usage: run.sh ROUNDS [OUTDIR]}
out=${2:-/mnt/out}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: ROUNDS must be a positive whole number, got '$rounds'" >&2; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
mkdir -p "$out"
echo "suite,case,impl,param,round,metric,value,unit" > "$out/results.csv"
echo "suite,case,impl,param,round,index,value,unit" > "$out/samples.csv"

suites=()
for s in benchmarks/guest/suites/*.sh; do
    name=$(basename "$s" .sh)
    if [ -n "${RDMA_LEASE_BENCH_SUITES:-}" ] && [[ " $RDMA_LEASE_BENCH_SUITES " != *" $name "* ]]; then continue; fi
    suites+=("$s")
done
[ ${#suites[@]} -gt 0 ] || { echo "run.sh: no suite to run (RDMA_LEASE_BENCH_SUITES='${RDMA_LEASE_BENCH_SUITES:-}')" >&2; exit 2; }

pkgver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo unknown; }
{
    echo "command: ${RDMA_LEASE_BENCH_COMMAND:-benchmarks/guest/run.sh $*}"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "rounds: $rounds"
    echo "quick: ${RDMA_LEASE_BENCH_QUICK:-0}"
    echo "suites: $(for s in "${suites[@]}"; do basename "$s" .sh; done | tr '\n' ' ')"
    echo "kernel: $(uname -r)"
    echo "rdma-core: $(pkgver rdma-core) (libibverbs1 $(pkgver libibverbs1), ibverbs-providers $(pkgver ibverbs-providers))"
    echo "perftest: $(pkgver perftest)"
    echo "dotnet: $(dotnet --version 2>/dev/null || echo unknown) (runtime $(dotnet --list-runtimes 2>/dev/null | awk '/NETCore.App/ {print $2}' | tail -n 1))"
    echo "vcpus: $(nproc)"
    echo "cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)"
    echo "label: ${RDMA_LEASE_BENCH_LABEL:-development run}"
} > "$out/environment.txt"
cat "$out/environment.txt"

failed=()
for ((r = 1; r <= rounds; r++)); do
    for s in "${suites[@]}"; do
        name=$(basename "$s" .sh)
        echo "== round $r/$rounds: $name ($(date -u +%T))"
        t=$SECONDS
        bash "$s" "$r" "$out" || failed+=("$name (round $r, exit $?)")
        echo "== $name round $r took $((SECONDS - t)) s"
    done
done
rows=$(($(wc -l < "$out/results.csv") - 1))
echo "run.sh: $rows result rows, $(($(wc -l < "$out/samples.csv") - 1)) samples in $out"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'run.sh: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
[ "$rows" -gt 0 ] || { echo "run.sh: no suite wrote a result row" >&2; exit 1; }
