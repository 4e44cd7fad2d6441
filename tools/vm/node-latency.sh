#!/bin/bash
# Latency across the two node guests (./build.sh vm --nodes 2 -- tools/vm/node-latency.sh [N]): ibv_rc_pingpong at
# 64 B and 4 KiB (busy polling) and 64 B with completion events (-e), and perftest's ib_send_lat at 64 B, node 1 ->
# node 0 over rxenode; ICMP ping first, and eth0's counters before and after (drops, errors). Node 0 serves, node 1
# connects.
N=${1:-200}
peer=$RDMA_LEASE_PEER
show() { ip -s link show eth0 | sed -n '3,4p;5,6p'; }
show
if [ "$RDMA_LEASE_NODE" = 0 ]; then
    ibv_rc_pingpong -d rxenode -g 1 -n "$N" -s 64 || exit 1
    ibv_rc_pingpong -d rxenode -g 1 -n "$N" -s 4096 -m 4096 || exit 1
    ibv_rc_pingpong -d rxenode -g 1 -n "$N" -s 64 -e || exit 1
    ib_send_lat -d rxenode -x 1 -s 64 -n "$N" >/dev/null || exit 1
else
    for i in $(seq 100); do busybox ping -c 1 -W 1 "$peer" >/dev/null 2>&1 && break; sleep 0.3; done
    busybox ping -c 10 "$peer" | tail -n 1
    # The server needs a moment to listen again between runs.
    try() { for i in $(seq 20); do "$@" && return 0; sleep 1; done; return 1; }
    sleep 1; try ibv_rc_pingpong -d rxenode -g 1 -n "$N" -s 64 "$peer" || exit 1
    sleep 1; try ibv_rc_pingpong -d rxenode -g 1 -n "$N" -s 4096 -m 4096 "$peer" || exit 1
    sleep 1; try ibv_rc_pingpong -d rxenode -g 1 -n "$N" -s 64 -e "$peer" || exit 1
    sleep 2; try ib_send_lat -d rxenode -x 1 -s 64 -n "$N" "$peer" | grep -A1 't_typical' || exit 1
fi
show
