#!/usr/bin/env bash
# Suite "reg" (issue 12): memory registration time, 4 KiB to 1 GiB in powers of 4, register and deregister each timed
# alone (median of ITERATIONS per size and process, after one unrecorded), for three kinds of memory, C twin
# (benchmarks/c/reg_cost) and rdma-lease (RdmaLease.Benchmarks reg) alternating per kind:
#   reg_odp_fsdax         a file on /mnt/xfs (FS-DAX), ODP: C ibv_reg_mr(IBV_ACCESS_ON_DEMAND) over a MAP_SHARED mapping,
#                         C# DaxFile + FileLease + pd.Register(lease.Range(...)) (the leased registration)
#   reg_pinned_anon       anonymous memory, pinned: C ibv_reg_mr, C# ProtectionDomain.Register
#   reg_pinned_pagecache  a file on a tmpfs this suite mounts (page cache; /mnt/tmpfs holds only 256 MiB), MAP_SHARED,
#                         pinned: C ibv_reg_mr, C# a leased registration with Mode = Pinned (AllowNonDax)
# Every page is written before the first registration; a file's region goes over a second mapping of it (rdma-lease's
# DaxFile registers one, and the C twin does the same). The FS-DAX sizes stop at what /mnt/xfs holds (1 GiB NVDIMM:
# 256 MiB; RDMA_LEASE_XFS_SIZE=2G: 1 GiB). Also alloc_bytes_per_op (C#: managed bytes per register + deregister).
#   usage: reg.sh ROUND OUTDIR      (cwd: the repository; RDMA_LEASE_BENCH_QUICK=1: up to 1 MiB, 2 iterations)
set -euo pipefail
round=$1 out=$2
device=${RDMA_LEASE_BENCH_DEVICE:-rxelo}
config=${CONFIGURATION:-Release}
bench=(dotnet exec "artifacts/bin/RdmaLease.Benchmarks/${config,,}/RdmaLease.Benchmarks.dll" reg)
creg=artifacts/native/reg_cost
max=$((1 << 30)) iterations=3
if [ "${RDMA_LEASE_BENCH_QUICK:-0}" = 1 ]; then max=$((1 << 20)) iterations=2; fi

# The largest size of 4 KiB x 4^k that fits in the file system at $1 (90% of its free space) and in $max.
fits() {
    local free size=4096
    free=$(( $(stat -f -c '%a * %S' "$1") * 9 / 10 ))
    while [ $((size * 4)) -le "$free" ] && [ $((size * 4)) -le "$max" ]; do size=$((size * 4)); done
    echo "$size"
}

pagecache=/tmp/rdma-lease-reg-pagecache
mkdir -p "$pagecache"
# 1.25 x the largest size: fits() keeps 10% of the free space back.
mountpoint -q "$pagecache" || mount -t tmpfs -o size=$((max / 1048576 * 5 / 4 + 64))M tmpfs "$pagecache"
trap 'umount "$pagecache" 2>/dev/null || true' EXIT

# emit IMPL: program lines "CASE SIZE METRIC VALUE" on stdin -> results.csv rows.
emit() {
    awk -v impl="$1" -v round="$round" 'NF == 4 {
        unit = $3 ~ /_us$/ ? "us" : "B"
        printf "reg,%s,%s,%s,%s,%s,%s,%s\n", $1, impl, $2, round, $3, $4, unit }' >> "$out/results.csv"
}

for kind in odp-fsdax pinned-anon pinned-pagecache; do
    case $kind in
        odp-fsdax) file=/mnt/xfs/rdma-lease-reg; size=$(fits /mnt/xfs) ;;
        pinned-pagecache) file=$pagecache/region; size=$(fits "$pagecache") ;;
        *) file="" size=$max ;;
    esac
    "$creg" "$device" "$kind" "$size" "$iterations" $file | emit c
    "${bench[@]}" "$device" "$kind" "$size" "$iterations" $file | emit cs
done
