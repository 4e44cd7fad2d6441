#!/bin/bash
# PID 1 inside the guest (Debian trixie root, read-only over 9p). Prepares what the guest
# tests build on, runs the command the host left in /mnt/out/command, reports its exit
# status in /mnt/out/exit-status and powers off. Every stage prints its duration.
#
# What the tests can rely on afterwards:
#   rxelo             soft-RoCE on lo (GID index 1 = ::ffff:127.0.0.1)
#   rdma_cm           rdma_ucm loaded (/dev/infiniband/rdma_cm): librdmacm connections
#   rxecm             soft-RoCE on dummy rdmacm0 (198.51.100.1, MTU 9000): where rdma_cm tests connect
#   rxe0 / rxe1       soft-RoCE on a veth pair veth0 (192.0.2.1) <-> veth1 (192.0.2.2, netns "peer")
#   rxenode           on a node guest (./build.sh vm --nodes 2): soft-RoCE on eth0, the socket link to the other
#                     node, 203.0.113.1 (node 0) or .2 (node 1), MTU 9000; RDMA_LEASE_NODE and RDMA_LEASE_PEER say which
#   /mnt/xfs          XFS on /dev/pmem0, mounted -o dax=always
#   /mnt/ext4         ext4 on /dev/pmem1, mounted -o dax=always
#   /mnt/tmpfs        an ordinary tmpfs (no DAX)
#   /proc/sys/fs/lease-break-time   RDMA_LEASE_BREAK_TIME seconds (printed)
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
T0=$(date +%s%N)
say() { echo "guest-init: $*"; }
stage() { # stage NAME CMD...: run and time one step; a failing step ends the run.
    local n=$1 t=$(date +%s%N); shift
    if ! "$@"; then say "stage $n FAILED"; finish 126; fi
    say "stage $n: $(( ($(date +%s%N) - t) / 1000000 )) ms"
}
finish() {
    echo "$1" > /mnt/out/exit-status
    sync
    say "exit status $1, total $(( ($(date +%s%N) - T0) / 1000000 )) ms"
    echo o > /proc/sysrq-trigger 2>/dev/null   # power off at once; nothing to unmount cleanly
    busybox poweroff -f
}

mounts() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
    mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
    for d in /tmp /run /var/tmp /var/log /root; do mount -t tmpfs tmpfs "$d"; done
    local ro=trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro
    mount -t 9p -o "$ro" dotnet /mnt/dotnet &&
    mount -t 9p -o "$ro" kernel /mnt/kernel &&
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none out /mnt/out &&
    mount --bind /mnt/kernel/usr/lib/modules /usr/lib/modules || return 1
    # ./build.sh vm --share DIR: the user's own folder, read-write.
    if grep -qw rl_share=1 /proc/cmdline; then
        mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none share /mnt/share || return 1
    fi
}

modules() {
    # -C /dev/null: ndctl's modprobe.d hook for libnvdimm would make nfit/nd_pmem fail.
    # rdma_ucm (/dev/infiniband/rdma_cm, librdmacm's kernel side) brings rdma_cm, ib_cm and iw_cm.
    local all="rdma_rxe ib_uverbs rdma_ucm veth dummy nfit nd_pmem dax_pmem xfs ext4"
    [ -z "$LEAN" ] || all="rdma_rxe ib_uverbs rdma_ucm nfit nd_pmem dax_pmem xfs"
    # One modprobe for all (each process reads the module index again; under TCG that shows).
    modprobe -C /dev/null -a $all || { say "modprobe -a $all failed (modprobe said which, above)"; return 1; }
}

soft_roce() {
    ip link set lo up &&
    rdma link add rxelo type rxe netdev lo &&
    ip netns add peer &&
    ip link add veth0 type veth peer name veth1 &&
    ip link set veth1 netns peer &&
    ip addr add 192.0.2.1/24 dev veth0 && ip link set veth0 up &&
    ip -n peer addr add 192.0.2.2/24 dev veth1 && ip -n peer link set veth1 up && ip -n peer link set lo up &&
    rdma link add rxe0 type rxe netdev veth0 &&
    ip netns exec peer rdma link add rxe1 type rxe netdev veth1 &&
    # rdma_cm cannot resolve a route over lo (rdma_resolve_route: ENODEV, perftest -R too): its tests connect to
    # 198.51.100.1 on a dummy interface with MTU 9000 (RoCE path MTU 4096, as on rxelo) through rxecm, which
    # delivers to its own address internally.
    ip link add rdmacm0 type dummy && ip link set rdmacm0 mtu 9000 up && ip addr add 198.51.100.1/24 dev rdmacm0 &&
    rdma link add rxecm type rxe netdev rdmacm0 &&
    rdma link show
}

# A node booted again on its own backing files (rl_keep_pmem=1, read into KEEP_PMEM once /proc is mounted): the
# namespaces are fsdax already (their info blocks are on the NVDIMM) and the filesystems are mounted as they are; XFS
# replays its log. Nothing is made again.

pmem() {
    if [ -z "$KEEP_PMEM" ]; then
        ndctl create-namespace -f -e namespace0.0 -m fsdax >/dev/null &&
        ndctl create-namespace -f -e namespace1.0 -m fsdax >/dev/null || return 1
    fi
    udevadm settle 2>/dev/null; for i in $(seq 50); do [ -b /dev/pmem1 ] && [ -b /dev/pmem0 ] && break; sleep 0.1; done
    # The bigger NVDIMM (1 GiB, or RDMA_LEASE_XFS_SIZE) is the XFS one; which region enumerates first is not fixed.
    local big small
    if [ "$(blockdev --getsize64 /dev/pmem0)" -gt "$(blockdev --getsize64 /dev/pmem1)" ]; then big=pmem0 small=pmem1; else big=pmem1 small=pmem0; fi
    if [ -n "$LEAN" ]; then
        [ -n "$KEEP_PMEM" ] || mkfs.xfs -q -f /dev/$big || return 1
        mount -o dax=always /dev/$big /mnt/xfs && mount -t tmpfs -o size=256M tmpfs /mnt/tmpfs &&
        chmod 1777 /mnt/xfs /mnt/tmpfs && say "lean: xfs on /dev/$big$([ -n "$KEEP_PMEM" ] && echo ' (kept, mounted without mkfs)'), no ext4"
        return
    fi
    if [ -z "$KEEP_PMEM" ]; then
        mkfs.xfs -q -f /dev/$big && mkfs.ext4 -q -F -b 4096 /dev/$small || return 1
    else
        say "kept NVDIMMs: $(blkid -o value -s TYPE /dev/$big) on /dev/$big, $(blkid -o value -s TYPE /dev/$small) on /dev/$small, mounted without mkfs"
    fi
    mount -o dax=always /dev/$big /mnt/xfs &&
    mount -o dax=always /dev/$small /mnt/ext4 &&
    mount -t tmpfs -o size=256M tmpfs /mnt/tmpfs &&
    chmod 1777 /mnt/xfs /mnt/ext4 /mnt/tmpfs &&
    say "xfs on /dev/$big, ext4 on /dev/$small"
}

# node_link: on a node guest (rl_node=N, read into NODE once /proc is mounted), the virtio NIC of the socket link
# (the guest's only NIC) and rxenode on it.
node_link() {
    modprobe -C /dev/null virtio_net && ip link set lo up || return 1
    for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
    ip link set eth0 mtu 9000 up &&
    ip addr add "203.0.113.$((NODE + 1))/24" dev eth0 &&
    rdma link add rxenode type rxe netdev eth0 &&
    say "node $NODE: eth0 $(cat /sys/class/net/eth0/address) 203.0.113.$((NODE + 1)), peer 203.0.113.$((2 - NODE))"
}

leases() {
    echo "${RDMA_LEASE_BREAK_TIME:-5}" > /proc/sys/fs/lease-break-time &&
    say "lease-break-time = $(cat /proc/sys/fs/lease-break-time) s"
}

stage mounts mounts
KEEP_PMEM=$(grep -qw rl_keep_pmem=1 /proc/cmdline && echo 1)
# rl_lean=1 (rl_run_vm --lean, the two-node tests): a node with only what they use: no rxelo, veth pair or rxecm, no
# ext4 (its namespace is made, nothing on it), fewer modules.
LEAN=$(grep -qw rl_lean=1 /proc/cmdline && echo 1)
NODE=$(sed -n 's/.*rl_node=\([01]\).*/\1/p' /proc/cmdline)
say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2/1024 " MiB"}' /proc/meminfo)"
stage modules modules
[ -n "$LEAN" ] || stage soft-roce soft_roce
stage pmem pmem
[ -z "$NODE" ] || stage node-link node_link
stage leases leases
[ -z "$NODE" ] || export RDMA_LEASE_NODE=$NODE RDMA_LEASE_PEER=203.0.113.$((2 - NODE))

export HOME=/root DOTNET_ROOT=/mnt/dotnet PATH=/mnt/dotnet:$PATH \
       DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 \
       RDMA_LEASE_GUEST=1 TERM=dumb
cd /mnt/repo
say "running: $(cat /mnt/out/command)"
t=$(date +%s%N)
bash -c "$(cat /mnt/out/command)" > /mnt/out/output.log 2>&1 < /dev/null
rc=$?
say "command: $(( ($(date +%s%N) - t) / 1000000 )) ms"
finish $rc
