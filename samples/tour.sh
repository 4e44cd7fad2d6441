#!/bin/bash
# The tour `./build.sh demo` gives, run inside the guest from the repository: the devices, ping-pong between two
# processes (ours against rdma-core's), and RDMA into a pmem file whose lease a truncate breaks. Plain lines, one step
# at a time; exits non-zero at the first step that fails. Usage: samples/tour.sh [CONFIG] [STORE_FILE] [DEMO_FILE]
set -euo pipefail
cfg=${1:-release}
store_file=${2:-/mnt/xfs/tour-store.pmem}
demo_file=${3:-/mnt/xfs/demo.pmem}
bin=artifacts/bin
cli=(dotnet exec "$bin/RdmaLease.Cli/$cfg/rdma-lease.dll")
step() { printf '\n== %s\n' "$*"; }
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT   # a step that fails leaves no server behind

step "1. The RDMA devices, as rdma-lease sees them (rdma-lease devices)"
"${cli[@]}" devices --device rxelo

step "2. Ping-pong between two processes: rdma-lease's server, rdma-core's ibv_rc_pingpong client"
port=18515
args=(-d rxelo -g 1 -s 4096 -m 4096 -n 100 -e -p "$port")
"${cli[@]}" pingpong "${args[@]}" > /tmp/tour-server.txt 2>&1 &
server=$!
# The server is ready when something listens on the port (state 0A in /proc/net/tcp*).
hexport=$(printf ':%04X' "$port")
for _ in $(seq 1 600); do
    if awk -v p="$hexport" '$2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then break; fi
    kill -0 "$server" 2>/dev/null || { cat /tmp/tour-server.txt; echo "the server exited before listening"; exit 1; }
    sleep 0.1
done
echo "-- rdma-core's client:"
ibv_rc_pingpong "${args[@]}" 127.0.0.1
wait "$server"
echo "-- rdma-lease's server:"
cat /tmp/tour-server.txt

step "3. RDMA into a persistent-memory file, and a truncate that breaks the lease (samples/Demo)"
dotnet exec "$bin/RdmaLease.Demo/$cfg/RdmaLease.Demo.dll" "$demo_file"

step "4. The pmem store: a hosted server leases a file, a client appends records (RDMA WRITE + FLUSH), a truncate breaks the lease mid-way"
# rdma_cm does not route over 127.0.0.1 on this kernel: the store uses rxecm, an rxe device on a dummy interface.
wait_for() {   # wait_for FILE PATTERN PID: until FILE has a line matching PATTERN (or PID died)
    for _ in $(seq 1 1200); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { cat "$1"; echo "exited before: $2"; return 1; }
        sleep 0.1
    done
    cat "$1"; echo "timed out waiting for: $2"; return 1
}
rm -f "$store_file" /tmp/tour-acked.log
"${cli[@]}" store serve "$store_file" --address 198.51.100.1 --port 7480 --device rxecm --clients 1 --area-records 256 \
    --verify /tmp/tour-acked.log > /tmp/tour-store-server.txt 2>&1 &
store=$!
wait_for /tmp/tour-store-server.txt "generation 1: leased" "$store"
"${cli[@]}" store write --server 198.51.100.1:7480 --device rxecm --client-id 0 --records 200 --interval-ms 20 --acked-log /tmp/tour-acked.log \
    > /tmp/tour-store-client.txt 2>&1 &
client=$!
wait_for /tmp/tour-store-client.txt "progress: " "$client"
echo "-- another process truncates the file (growing it: acknowledged records stay) while the client writes"
artifacts/native/rdmalease-lease-probe truncate "$store_file" $(( $(stat -c %s "$store_file") + 4096 ))
wait "$client"
echo "-- the client:"
cat /tmp/tour-store-client.txt
kill -TERM "$store"
wait "$store"
echo "-- the server (SIGTERM: stop, verify every acknowledged record, tear down in order):"
cat /tmp/tour-store-server.txt

step "The tour is over"
