#!/usr/bin/env bash
# Suite "percall" (docs/benchmarks.md, "Per-call costs"): per-call costs of post and poll, C (benchmarks/c/verbs_cost.c)
# against C# (RdmaLease.Benchmarks interop), on rxelo (RC loopback). Usage: percall.sh ROUND OUTDIR, cwd = the repository,
# inside the guest (benchmarks/guest/run.sh). Appends rows to OUTDIR/results.csv: both programs print lines
# "row,CASE,IMPL,PARAM,METRIC,VALUE,UNIT" and this script adds the suite name and the round; anything else they print
# goes to OUTDIR/percall.log. The C and C# runs alternate, and which goes first alternates between rounds, so load from
# outside the guest falls on both alike.
#   RDMA_LEASE_BENCH_QUICK=1              a tiny run (500 iterations), to check that the suite works
#   RDMA_LEASE_BENCH_PERCALL_ITERATIONS   iterations (default 10000; polls are 10 per iteration)
set -euo pipefail
round=${1:?usage: percall.sh ROUND OUTDIR}
out=${2:?usage: percall.sh ROUND OUTDIR}
iterations=${RDMA_LEASE_BENCH_PERCALL_ITERATIONS:-10000}
[ "${RDMA_LEASE_BENCH_QUICK:-0}" = 1 ] && iterations=500
device=rxelo
c_bin=artifacts/native/verbs_cost
cs_dll=artifacts/bin/RdmaLease.Benchmarks/release/RdmaLease.Benchmarks.dll
for f in "$c_bin" "$cs_dll"; do
    [ -e "$f" ] || { echo "percall: $f is missing: run ./build.sh build on the host first" >&2; exit 1; }
done

# Lines "row,..." of stdin to results.csv rows; every line also to the log.
to_rows() {
    tee -a "$out/percall.log" | awk -F, -v round="$round" -v OFS=, \
        '$1 == "row" && NF == 7 { print "percall", $2, $3, $4, round, $5, $6, $7; rows++ }
         END { if (rows == 0) { print "percall: no rows" > "/dev/stderr"; exit 1 } }' >> "$out/results.csv"
}

run_c() { echo "percall round $round: $c_bin $device $iterations" >> "$out/percall.log"; "$c_bin" "$device" "$iterations" | to_rows; }
run_cs() { echo "percall round $round: dotnet exec $cs_dll interop $device $iterations" >> "$out/percall.log"; dotnet exec "$cs_dll" interop "$device" "$iterations" | to_rows; }

if (( round % 2 == 1 )); then run_c; run_cs; else run_cs; run_c; fi
