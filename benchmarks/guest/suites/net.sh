#!/usr/bin/env bash
# Suite "net" (docs/benchmarks.md "Network"): rdma-lease against perftest and ibv_rc_pingpong, two processes on one
# guest over rxelo (soft-RoCE on lo, GID index 1), path MTU 4096 everywhere, perftest's default settings (iterations,
# tx depth 128, completion every 100th write up to 8 KiB; inline off: perftest does not know rxe and sets 0).
# Each case runs C and C# back to back, the order flipping every round. usage: net.sh ROUND OUTDIR (cwd: repository).
set -uo pipefail
round=${1:?usage: net.sh ROUND OUTDIR}
out=${2:?usage: net.sh ROUND OUTDIR}
config=${RDMA_LEASE_BENCH_CONFIG:-release}
# cs runs with tiered compilation off: the measured loops run optimized code from the first call, as a long-running
# service does once warm (with tiering on, a 1000-iteration run is mostly tier-0 code; docs/benchmarks.md).
export DOTNET_TieredCompilation=0
twin="dotnet exec artifacts/bin/RdmaLease.Benchmarks/$config/RdmaLease.Benchmarks.dll net"
pingpong="dotnet exec artifacts/bin/RdmaLease.PingPong/$config/RdmaLease.PingPong.dll"
dev=rxelo gid=1 mtu=4096
work=/tmp/netbench.$$
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

if [ "${RDMA_LEASE_BENCH_QUICK:-0}" = 1 ]; then
    lat_iters=200 lat_sizes="64 4096" bw_sizes="64 4096" odp_sizes="4096" pp_iters=200
else
    lat_iters=1000 lat_sizes="64 4096" bw_sizes="64 1024 4096 65536 1048576" odp_sizes="4096 65536 1048576" pp_iters=1000
fi
# ib_write_bw's default is 5000 writes; large ones are fewer so a run stays short under TCG (about 32 MiB each,
# at least 100 writes). The same count goes to both sides.
bw_iters() { local n=$((32 * 1024 * 1024 / $1)); ((n > 5000)) && n=5000; ((n < 100)) && n=100
    [ "${RDMA_LEASE_BENCH_QUICK:-0}" = 1 ] && ((n > 500)) && n=500; echo $n; }

# FS-DAX files for the ODP cases: perftest's --mmap needs them to exist; one per process (a lease wants a sole opener).
odp_dir=/mnt/xfs/netbench
mkdir -p "$odp_dir"
for f in c-server c-client cs-server cs-client; do
    [ -f "$odp_dir/$f" ] || dd if=/dev/zero of="$odp_dir/$f" bs=1M count=8 status=none
done

port=$((18600 + (round % 50) * 40))
failures=0
row() { echo "net,$1,$2,$3,$round,$4,$5,$6" >> "$out/results.csv"; }

# wait_listen PORT PID: until something listens on 127.0.0.1:PORT (the server is ready), or the server died.
wait_listen() {
    local i
    for ((i = 0; i < 600; i++)); do
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# pair NAME SERVER_CMD CLIENT_CMD: runs both; the client's output in $work/NAME.client, the server's in .server.
pair() {
    local name=$1 server=$2 client=$3 spid rc=0 src=0
    port=$((port + 1))
    server=${server//@PORT@/$port} client=${client//@PORT@/$port}
    timeout 300 bash -c "$server" > "$work/$name.server" 2>&1 &
    spid=$!
    if ! wait_listen "$port" "$spid"; then
        echo "net: $name: the server did not listen on port $port" >&2; cat "$work/$name.server" >&2
        kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; return 1
    fi
    timeout 300 bash -c "$client" > "$work/$name.client" 2>&1 || rc=$?
    wait "$spid" || src=$?
    if [ $rc -ne 0 ] || [ $src -ne 0 ]; then
        echo "net: $name failed (client exit $rc, server exit $src)" >&2
        echo "--- client: $client" >&2; cat "$work/$name.client" >&2
        echo "--- server: $server" >&2; cat "$work/$name.server" >&2
        return 1
    fi
}

# perftest's result line: "#bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%" or
# "#bytes #iterations BW_peak BW_average MsgRate"; the twin's: "RESULT test bytes iterations ...".
perftest_line() { awk -v s="$2" '$1 == s && $2 ~ /^[0-9]+$/ && NF >= 5 { line = $0 } END { print line }' "$1"; }
twin_line() { awk '$1 == "RESULT" { line = $0 } END { print line }' "$1"; }

lat_case() {   # lat_case CASE TOOL SIZE IMPL
    local case=$1 tool=$2 size=$3 impl=$4 name="$1-$3-$4-$round" line typical p99 samples
    samples=$work/$name.samples
    if [ "$impl" = c ]; then
        local args="-d $dev -x $gid -m $mtu -F -s $size -n $lat_iters -p @PORT@ -U"
        pair "$name" "$tool $args" "$tool $args 127.0.0.1" || return 1
        line=$(perftest_line "$work/$name.client" "$size")
        read -r _ _ _ _ typical _ _ p99 _ <<<"$line"
        awk -F', ' 'NF == 2 && $1 ~ /^[0-9]+$/ { print $2 }' "$work/$name.client" > "$samples"
    else
        local args="$case --device $dev --gid $gid --mtu $mtu --size $size --iters $lat_iters --port @PORT@"
        pair "$name" "$twin $args" "$twin $args --connect 127.0.0.1 --samples $samples" || return 1
        line=$(twin_line "$work/$name.client")
        read -r _ _ _ _ typical p99 _ <<<"$line"
    fi
    [ -n "${p99:-}" ] || { echo "net: $name: no result line in the client's output" >&2; cat "$work/$name.client" >&2; return 1; }
    finite "$typical" "$p99" || { echo "net: $name: typical '$typical', p99 '$p99'" >&2; return 3; }
    row "$case" "$impl" "$size" lat_typical_us "$typical" us
    row "$case" "$impl" "$size" lat_p99_us "$p99" us
    awk -v p="net,$case,$impl,$size,$round" '{ printf "%s,%d,%s,us\n", p, NR - 1, $1 }' "$samples" >> "$out/samples.csv"
}

bw_case() {   # bw_case CASE SIZE IMPL: CASE write_bw (pinned) or write_bw_odp (leased ODP over FS-DAX)
    local case=$1 size=$2 impl=$3 name="$1-$2-$3-$round" line bw rate iters
    iters=$(bw_iters "$size")
    if [ "$impl" = c ]; then
        local args="-d $dev -x $gid -m $mtu -F -s $size -n $iters -p @PORT@" server client
        server="ib_write_bw $args" client="ib_write_bw $args"
        if [ "$case" = write_bw_odp ]; then
            server+=" --odp --mmap=$odp_dir/c-server" client+=" --odp --mmap=$odp_dir/c-client"
        fi
        pair "$name" "$server" "$client 127.0.0.1" || return 1
        line=$(perftest_line "$work/$name.client" "$size")
        read -r _ _ _ bw rate <<<"$line"
    else
        local args="write_bw --device $dev --gid $gid --mtu $mtu --size $size --iters $iters --port @PORT@" server client
        server="$twin $args" client="$twin $args --connect 127.0.0.1"
        if [ "$case" = write_bw_odp ]; then
            server+=" --odp $odp_dir/cs-server" client+=" --odp $odp_dir/cs-client"
        fi
        pair "$name" "$server" "$client" || return 1
        line=$(twin_line "$work/$name.client")
        read -r _ _ _ _ bw rate <<<"$line"
        # Where the C# client's time went: the mean time inside PostWrite, and the share of polls that found nothing.
        read -r _ _ post_us _ polls _ empty _ <<<"$(awk '$1 == "PROFILE"' "$work/$name.client")"
        if [ -n "${empty:-}" ]; then
            row "$case" "$impl" "$size" post_us "$post_us" us
            row "$case" "$impl" "$size" empty_poll_share "$(awk -v e="$empty" -v p="$polls" 'BEGIN { printf "%.4f", p ? e / p : 0 }')" ratio
        fi
    fi
    [ -n "${rate:-}" ] || { echo "net: $name: no result line in the client's output" >&2; cat "$work/$name.client" >&2; return 1; }
    finite "$bw" "$rate" || { echo "net: $name: bandwidth '$bw', message rate '$rate'" >&2; return 3; }
    row "$case" "$impl" "$size" bw_mib_s "$bw" MiB/s
    row "$case" "$impl" "$size" msg_rate_mpps "$rate" Mpps
}

pingpong_case() {   # pingpong_case SIZE IMPL: ibv_rc_pingpong against samples/PingPong, same options
    local size=$1 impl=$2 name="pingpong-$1-$2-$round" tool us
    [ "$impl" = c ] && tool=ibv_rc_pingpong || tool=$pingpong
    local args="-d $dev -g $gid -m $mtu -s $size -n $pp_iters -p @PORT@"
    pair "$name" "$tool $args" "$tool $args 127.0.0.1" || return 1
    us=$(sed -n 's/.* iters in .* seconds = \([0-9.]*\) usec\/iter.*/\1/p' "$work/$name.client" | tail -n 1)
    [ -n "$us" ] || { echo "net: $name: no 'usec/iter' line in the client's output" >&2; cat "$work/$name.client" >&2; return 1; }
    finite "$us" || return 3
    row pingpong "$impl" "$size" lat_iter_us "$us" us
}

# both FUNCTION ARGS...: the C and the C# run of one case, C first in odd rounds, C# first in even ones. A run whose
# figures are not finite numbers is run again, at most twice: perftest turns cycles into time with a CPU frequency it
# samples at start, and under load on TCG that sampling can give 0 ("inf" usec, seen in a development run).
both() {
    local order="c cs" impl attempt rc
    ((round % 2 == 0)) && order="cs c"
    for impl in $order; do
        for attempt in 1 2 3; do
            rc=0; "$@" "$impl" || rc=$?
            [ $rc -eq 3 ] && [ $attempt -lt 3 ] && { echo "net: $* $impl gave a figure that is not a number; running it again" >&2; continue; }
            break
        done
        [ $rc -eq 0 ] || failures=$((failures + 1))
    done
}

# finite VALUE...: all are plain positive decimal numbers (not inf, nan, empty or zero: perftest prints 0.00 MiB/s
# when the frequency sample fails the other way, seen in a development run).
finite() { local v; for v in "$@"; do [[ $v =~ ^[0-9]+(\.[0-9]+)?$ && $v =~ [1-9] ]] || return 1; done; }

for s in $lat_sizes; do both lat_case send_lat ib_send_lat "$s"; done
for s in $lat_sizes; do both pingpong_case "$s"; done
both lat_case write_lat ib_write_lat 64
for s in $bw_sizes; do both bw_case write_bw "$s"; done
for s in $odp_sizes; do both bw_case write_bw_odp "$s"; done

[ "$failures" -eq 0 ] || { echo "net: $failures runs failed in round $round" >&2; exit 1; }
