#!/bin/bash
# The in-guest agent of the two-node tests (NodeGuest.cs): the host drops numbered scripts into /mnt/out/ctl (N.cmd,
# written whole and renamed into place) and the agent runs each in the background as it appears, its output in N.log
# and its exit status in N.exit (renamed into place). /mnt/out/ctl/exit ends the agent with the status it holds.
# /mnt/out is the node's own 9p share (cache=none): the host sees each line as it is written.
ctl=/mnt/out/ctl
mkdir -p "$ctl"
echo "$RDMA_LEASE_NODE" > "$ctl/ready.tmp" && mv "$ctl/ready.tmp" "$ctl/ready"
n=1
while :; do
    if [ -f "$ctl/exit" ]; then
        wait
        exit "$(cat "$ctl/exit")"
    fi
    if [ -f "$ctl/$n.cmd" ]; then
        ( cd /mnt/repo && bash "$ctl/$n.cmd" > "$ctl/$n.log" 2>&1 < /dev/null
          echo $? > "$ctl/$n.exit.tmp" && mv "$ctl/$n.exit.tmp" "$ctl/$n.exit" ) &
        n=$((n + 1))
        continue
    fi
    sleep 0.2
done
