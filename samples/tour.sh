#!/bin/bash
# The tour `./build.sh demo` gives, run inside the guest from the repository: the devices, ping-pong between two
# processes (ours against rdma-core's), and RDMA into a pmem file whose lease a truncate breaks. Plain lines, one step
# at a time; exits non-zero at the first step that fails. Usage: samples/tour.sh [CONFIG] [DEMO_FILE]
set -euo pipefail
cfg=${1:-release}
demo_file=${2:-/mnt/xfs/demo.pmem}
bin=artifacts/bin
cli=(dotnet exec "$bin/RdmaLease.Cli/$cfg/rdma-lease.dll")
step() { printf '\n== %s\n' "$*"; }

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

step "The tour is over"
