#!/usr/bin/env bash
# Suite "break" (issue 12): lease break to release. benchmarks/c/lease_breaker (C, so its own timing has no managed
# noise) starts a holder and breaks its lease BREAKS+1 times by opening the file O_RDWR, measuring how long its open(2)
# was blocked (breaker_blocked_us); the holder reports signal -> F_UNLCK (break_release_us) for each. The holder takes a
# new lease (a delegation), maps the file and registers an ODP region over the whole 1 MiB file for every break.
# Holders, alternating per case: c (benchmarks/c/lease_holder: handler -> pipe -> ibv_dereg_mr -> F_UNLCK),
# cs (RdmaLease.Benchmarks break, JIT), cs-aot (the same, NativeAOT: artifacts/aot/RdmaLease.Benchmarks).
# Cases: break_idle; break_traffic (4 KiB RDMA WRITEs into the region until the break); break_gc (a thread forcing
# blocking, compacting gen2 collections; the C holder has no GC and runs idle there); the first break of every process
# is left out of those and measured apart: break_first, FIRSTS fresh processes per holder and round.
# Rows: median and p99 per case, impl and round (results.csv); every break_release_us to samples.csv.
#   usage: break.sh ROUND OUTDIR      (cwd: the repository; RDMA_LEASE_BENCH_QUICK=1: 5 breaks, 2 first breaks)
set -euo pipefail
round=$1 out=$2
device=${RDMA_LEASE_BENCH_DEVICE:-rxelo}
config=${CONFIGURATION:-Release}
breaks=${RDMA_LEASE_BENCH_BREAKS:-70} firsts=${RDMA_LEASE_BENCH_FIRSTS:-4}
if [ "${RDMA_LEASE_BENCH_QUICK:-0}" = 1 ]; then breaks=5 firsts=2; fi
region=$((1 << 20))
file=/mnt/xfs/rdma-lease-break
breaker=artifacts/native/lease_breaker
aot=artifacts/aot/RdmaLease.Benchmarks/RdmaLease.Benchmarks
impls=(c cs cs-aot)
if [ ! -x "$aot" ]; then
    echo "break.sh: $aot is missing (./build.sh bench publishes it): no cs-aot rows" >&2
    impls=(c cs)
fi
work=$(mktemp -d /tmp/rdma-lease-break.XXXXXX)
trap 'rm -rf "$work"; rm -f "$file"' EXIT

# run IMPL VARIANT N: N breaks of one holder process; "break INDEX BLOCKED_US RELEASED_US [MORE...]" per break.
run() {
    local impl=$1 variant=$2 n=$3 holder
    case $impl in
        c) holder=(artifacts/native/lease_holder)
           [ "$variant" = gc ] && variant=idle ;;
        cs) holder=(dotnet exec "artifacts/bin/RdmaLease.Benchmarks/${config,,}/RdmaLease.Benchmarks.dll" break) ;;
        cs-aot) holder=("$aot" break) ;;
    esac
    rm -f "$file"
    "$breaker" "$file" "$n" "${holder[@]}" "$device" "$file" "$region" "$n" "$variant"
}

# summarize CASE IMPL FILE: FILE holds "released blocked [alloc watcher dispatch dereg unlock]" per break (the
# holder's fields after "released"); rows: median and p99 (nearest rank) of the first two, medians of the others.
summarize() {
    local case=$1 impl=$2 f=$3 col metric
    for col in 1 2 3 4 5 6 7; do
        metric=$(case $col in 1) echo break_release;; 2) echo breaker_blocked;; 3) echo alloc_bytes_per_op;;
            4) echo phase_signal_to_worker;; 5) echo phase_worker_to_teardown;; 6) echo phase_deregister;; 7) echo phase_to_unlock;; esac)
        # The C holder reports no phases; the gc case's allocations are the collector thread's.
        [ "$col" -ge 3 ] && { [ "$impl" = c ] || { [ "$col" = 3 ] && [ "$case" = break_gc ]; }; } && continue
        cut -d' ' -f$col "$f" | sort -g | awk -v s="break,$case,$impl,$region,$round" -v m="$metric" '
            $1 != "" { v[++n] = $1 }
            END {
                if (n == 0) exit
                med = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
                if (m == "alloc_bytes_per_op") { printf "%s,%s,%s,B\n", s, m, med; exit }
                printf "%s,%s_us,%s,us\n", s, m, med
                if (m ~ /^phase/) exit
                p = int(0.99 * n); if (p < 0.99 * n) p++
                printf "%s,%s_p99_us,%s,us\n", s, m, v[p] }' >> "$out/results.csv"
    done
    awk -v s="break,$case,$impl,$region,$round" '{ printf "%s,%d,%s,us\n", s, NR - 1, $1 }' "$f" >> "$out/samples.csv"
}

for variant in idle traffic gc; do
    for impl in "${impls[@]}"; do
        # breaks+1: the process's first break belongs to break_first, not here
        run "$impl" "$variant" $((breaks + 1)) > "$work/raw"
        awk '$2 > 0 { $1 = $2 = ""; t = $3; $3 = $4; $4 = t; print substr($0, 3) }' "$work/raw" > "$work/$variant-$impl"
        summarize "break_$variant" "$impl" "$work/$variant-$impl"
    done
done
: > "$work/first"
for ((k = 0; k < firsts; k++)); do
    for impl in "${impls[@]}"; do
        run "$impl" idle 1 | awk -v impl="$impl" '{ $1 = impl; $2 = ""; t = $3; $3 = $4; $4 = t; sub(/  /, " "); print }' >> "$work/first"
    done
done
for impl in "${impls[@]}"; do
    awk -v impl="$impl" '$1 == impl { sub(/^[^ ]+ /, ""); print }' "$work/first" > "$work/first-$impl"
    summarize break_first "$impl" "$work/first-$impl"
done
