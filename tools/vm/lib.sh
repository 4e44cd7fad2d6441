# shellcheck shell=bash
# Guest harness for rdma-lease: fetches a Debian kernel and a trixie root, builds a tiny
# initramfs and boots QEMU (TCG) with soft-RoCE and emulated NVDIMMs. Sourced by build.sh
# and by the host tests (which call the pure functions below directly).
#
# Everything downloaded is cached under $RL_CACHE, keyed by version, so a second run
# downloads nothing. Nothing here touches the host's apt configuration.

RL_CACHE=${RDMA_LEASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rdma-lease}
RL_MIN_KERNEL=6.19        # rxe ODP for RC/UD and F_SETDELEG both need at least this
RL_GUEST_SUITE=trixie
RL_KERNEL_SUITES="trixie-backports unstable"   # first suite whose linux-image-amd64 is new enough wins
RL_RDMA_PACKAGES="libibverbs-dev librdmacm-dev linux-libc-dev"

rl_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
rl_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# rl_stage NAME CMD...: run one set-up stage, saying what it does and how long it took.
rl_stage() {
    local name=$1 t0=$SECONDS; shift
    rl_log "stage $name: start"
    "$@" || rl_die "stage $name failed"
    rl_log "stage $name: done in $((SECONDS - t0)) s"
}

# rl_apt_mirror [FILE...]: print the URI of the first Debian archive (not -security, not
# a third-party repository) listed in the given apt sources files (one-line or deb822
# format). Defaults to the machine's own sources. We never hard-code a mirror.
rl_apt_mirror() {
    local files=("$@")
    if [ ${#files[@]} -eq 0 ]; then
        files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    fi
    local f uri
    for f in "${files[@]}"; do
        [ -r "$f" ] || continue
        uri=$(awk '
            function keep(u, s) { return s !~ /-security/ && s ~ /^(bookworm|trixie|sid|forky|stable|testing|unstable|oldstable)/ && u ~ /^(https?|file):/ }
            # deb822 stanzas: collect URIs/Suites/Types per stanza, blank line ends it
            /^[ \t]*#/ { next }
            /^Types:/  { types = $0 }
            /^URIs:/   { uris = $2 }
            /^Suites:/ { suites = $2 }
            /^Enabled:[ \t]*no/ { disabled = 1 }
            /^[ \t]*$/ { if (types ~ /deb( |$)/ && !disabled && keep(uris, suites)) { print uris; exit }
                         types = uris = suites = ""; disabled = 0 }
            # one-line format: deb [opts] URI SUITE COMPONENTS...
            /^deb[ \t]/ { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                          if (keep($i, $(i + 1))) { print $i; exit } }
            END { if (types ~ /deb( |$)/ && !disabled && keep(uris, suites)) print uris }
        ' "$f" | head -n 1)
        if [ -n "$uri" ]; then printf '%s\n' "${uri%/}"; return 0; fi
    done
    return 1
}

# rl_kernel_version_ok VERSION: succeed when VERSION (e.g. 7.3.4+deb13-amd64) is at least
# RL_MIN_KERNEL; otherwise say why and fail.
rl_kernel_version_ok() {
    local v=$1 major minor min_major=${RL_MIN_KERNEL%%.*} min_minor=${RL_MIN_KERNEL#*.}
    if ! [[ $v =~ ^([0-9]+)\.([0-9]+) ]]; then
        echo "unsupported guest kernel '$v': not a kernel version string" >&2; return 1
    fi
    major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
    if (( major < min_major || (major == min_major && minor < min_minor) )); then
        echo "unsupported guest kernel '$v': rdma-lease needs $RL_MIN_KERNEL or newer (rxe ODP, F_SETDELEG)" >&2
        return 1
    fi
}

# --- private apt configuration -------------------------------------------------------
rl_apt_opts() {
    local d=$RL_CACHE/apt
    printf '%s\n' -o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o Dir::State::status=/dev/null \
        -o APT::Architecture=amd64 -o APT::Sandbox::User=root -o Acquire::Languages=none -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
        -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
        -o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false -o Debug::NoLocking=1
}
rl_apt() { local o; mapfile -t o < <(rl_apt_opts); "$@" "${o[@]}"; }

rl_private_apt_update() {
    local d=$RL_CACHE/apt mirror s
    mirror=$(rl_apt_mirror) || rl_die "no Debian mirror found in /etc/apt/sources.list*; rdma-lease reads the mirror from there"
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
    : > "$d/sources.list.new"
    for s in $RL_GUEST_SUITE $RL_KERNEL_SUITES; do
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $s main" >> "$d/sources.list.new"
    done
    mv "$d/sources.list.new" "$d/sources.list"
    # Refresh the lists at most once a day: a warm cache must not download again.
    if [ -z "$(find "$d/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n 1)" ]; then
        rl_apt apt-get -q update >&2 || rl_die "apt-get update with the private configuration failed"
    fi
}

# rl_candidate PKG SUITE: the version of PKG offered by SUITE (empty when none).
rl_candidate() {
    rl_apt apt-cache madison "$1" | awk -v s="$2" -F' *\\| *' '$3 ~ (" " s "/") || $3 ~ ("/" s "/") || $3 ~ (" " s " ") { print $2; exit }'
}

# rl_kernel_abi: the kernel ABI name (e.g. 7.3.4+deb13-amd64) we boot, chosen from the
# first suite that carries a new enough linux-image-amd64.
rl_kernel_abi() {
    local s v abi
    if [ -n "${RDMA_LEASE_KERNEL:-}" ]; then rl_kernel_version_ok "$RDMA_LEASE_KERNEL" || return 1; echo "$RDMA_LEASE_KERNEL"; return; fi
    for s in $RL_KERNEL_SUITES; do
        v=$(rl_candidate linux-image-amd64 "$s")
        [ -n "$v" ] || continue
        abi=$(rl_apt apt-cache show "linux-image-amd64=$v" | sed -n 's/^Depends:.*linux-image-\([0-9][^ ,]*\) (.*/\1/p' | head -n 1)
        [ -n "$abi" ] && rl_kernel_version_ok "$abi" 2>/dev/null && { echo "$abi"; return 0; }
    done
    echo "no suite among '$RL_KERNEL_SUITES' offers linux-image-amd64 >= $RL_MIN_KERNEL" >&2
    return 1
}

# rl_download_extract DEST PKG...: apt-get download PKGs (with progress) and dpkg -x them into DEST.
rl_download_extract() {
    local dest=$1 tmp p; shift
    tmp=$(mktemp -d "$RL_CACHE/dl.XXXXXX")
    ( cd "$tmp" && rl_apt apt-get download "$@" ) || { rm -rf "$tmp"; return 1; }
    for p in "$tmp"/*.deb; do dpkg -x "$p" "$dest"; done
    rm -rf "$tmp"
}

# rl_fetch_kernel ABI: vmlinuz + modules under $RL_CACHE/kernel/ABI (cached).
rl_fetch_kernel() {
    local abi=$1 dir=$RL_CACHE/kernel/$1
    [ -f "$dir/.complete" ] && return 0
    rl_kernel_version_ok "$abi" || return 1
    rm -rf "$dir"; mkdir -p "$dir"
    rl_download_extract "$dir" "linux-binary-$abi" "linux-modules-$abi" || return 1
    depmod -b "$dir/usr" "$abi" || return 1
    [ -f "$dir/usr/lib/modules/$abi/vmlinuz" ] || { echo "no vmlinuz in linux-binary-$abi" >&2; return 1; }
    touch "$dir/.complete"
}

# rl_fetch_rdma_headers: rdma-core's headers as the guest has them (for the bindings and the
# C shim), under $RL_CACHE/rdma-core/VERSION; prints that directory.
rl_fetch_rdma_headers() {
    local v dir p pv pins=()
    v=$(rl_candidate libibverbs-dev "$RL_GUEST_SUITE")
    [ -n "$v" ] || { echo "the $RL_GUEST_SUITE suite offers no libibverbs-dev" >&2; return 1; }
    dir=$RL_CACHE/rdma-core/$v
    if [ ! -f "$dir/.complete" ]; then
        # Pin every package to the guest suite's version: apt would otherwise take unstable's.
        for p in $RL_RDMA_PACKAGES; do
            pv=$(rl_candidate "$p" "$RL_GUEST_SUITE"); [ -n "$pv" ] || { echo "no $p in $RL_GUEST_SUITE" >&2; return 1; }
            pins+=("$p=$pv")
        done
        rm -rf "$dir"; mkdir -p "$dir"
        rl_download_extract "$dir" "${pins[@]}" >&2 || return 1
        touch "$dir/.complete"
    fi
    echo "$dir"
}

# rl_make_rootfs: the guest's Debian trixie root (read-only at run time), made once.
RL_ROOT_PACKAGES=ibverbs-providers,ibverbs-utils,rdma-core,perftest,iproute2,ndctl,xfsprogs,e2fsprogs,kmod,libicu76,libssl3t64,busybox,util-linux,procps
rl_make_rootfs() {
    local dir=$RL_CACHE/rootfs-$RL_GUEST_SUITE mirror
    [ -f "$dir/.complete" ] && { rl_rootfs_mountpoints "$dir"; return 0; }
    mirror=$(rl_apt_mirror) || rl_die "no Debian mirror in the apt sources"
    rm -rf "$dir"; mkdir -p "$dir"
    debootstrap --variant=minbase --include=$RL_ROOT_PACKAGES "$RL_GUEST_SUITE" "$dir" "$mirror" >&2 || return 1
    rl_rootfs_mountpoints "$dir"
    rm -rf "$dir"/var/cache/apt/archives/*.deb
    touch "$dir/.complete"
}

# Mount points for the shares the launcher exports and the filesystems guest-init makes.
rl_rootfs_mountpoints() {
    mkdir -p "$1"/mnt/{repo,dotnet,kernel,out,share,xfs,ext4,tmpfs} "$1"/usr/lib/modules
}

# rl_make_initramfs ABI: busybox + the 9p modules (decompressed: busybox insmod cannot read
# .ko.xz), enough to mount the trixie root over 9p and switch to it. Cached per ABI.
rl_make_initramfs() {
    local abi=$1 kdir=$RL_CACHE/kernel/$1 out=$RL_CACHE/kernel/$1/initramfs.cpio.gz tmp m mods=()
    [ -f "$out" ] && [ "$out" -nt "$RL_LIB_DIR/initramfs-init.sh" ] && return 0
    tmp=$(mktemp -d "$RL_CACHE/initramfs.XXXXXX")
    mkdir -p "$tmp"/{bin,proc,sys,dev,newroot,modules}
    cp /bin/busybox "$tmp/bin/busybox" || { echo "busybox-static is not installed" >&2; return 1; }
    file -b /bin/busybox 2>/dev/null | grep -q 'statically linked' || ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' \
        || { echo "/bin/busybox is not static: install busybox-static" >&2; return 1; }
    # modules.dep lists dependencies first-to-last reversed; load them in dependency order.
    mods=$(rl_module_order "$kdir/usr/lib/modules/$abi" 9p 9pnet_virtio) || return 1
    local i=0
    for m in $mods; do
        i=$((i + 1))
        xz -dc "$kdir/usr/lib/modules/$abi/$m" > "$tmp/modules/$(printf '%02d' $i)-$(basename "${m%.xz}")"
    done
    cp "$RL_LIB_DIR/initramfs-init.sh" "$tmp/init"; chmod +x "$tmp/init"
    ( cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1 ) > "$out.new" && mv "$out.new" "$out"
    rm -rf "$tmp"
}

# rl_module_order MODDIR NAME...: relative paths of NAMEs and their dependencies, each once,
# dependencies before dependents (read from modules.dep).
rl_module_order() {
    local dir=$1; shift
    awk -v want="$*" '
        { sub(":", "", $1); deps[$1] = ""; for (i = NF; i >= 2; i--) deps[$1] = deps[$1] " " $i
          n = $1; sub(".*/", "", n); sub("\\.ko.*", "", n); path[n] = $1 }
        function visit(p,   a, k, c) { if (p in seen) return; seen[p] = 1
            c = split(deps[p], a, " "); for (k = 1; k <= c; k++) visit(a[k]); print p }
        END { c = split(want, w, " "); for (k = 1; k <= c; k++) {
                if (!(w[k] in path)) { print "no module " w[k] > "/dev/stderr"; exit 1 }
                visit(path[w[k]]) } }
    ' "$dir/modules.dep"
}

# rl_run_vm [options] -- CMD...: boot a guest and run CMD (as root, in bash) inside it.
#   --timeout S     hard limit for the whole guest run (default 900)
#   --out DIR       the writable share (mounted at /mnt/out); default: a new temp dir
#   --memory M      guest RAM in MiB (default 3072)
#   --share DIR     a host folder of the user's, mounted read-write at /mnt/share in the guest
#   --node I        one of two node guests (I = 0 or 1): link address 203.0.113.(I+1), rxe device rxenode on it
#   --link listen:PORT | connect:PORT | udp:LOCALPORT:REMOTEPORT
#                   the node's only NIC: a QEMU socket netdev on 127.0.0.1, over TCP (listen first, then connect)
#                   or UDP (each node sends to the other's port)
#   --pmem DIR      keep the NVDIMM backing files in DIR (made when missing, never removed): a node booted again
#                   on the same DIR mounts the filesystems it left there (XFS recovers its log) instead of making them
#   --lean          only what the two-node tests use: XFS on FS-DAX, rdma_cm, rxenode; no rxelo, veth pair, rxecm or ext4
# QEMU's pid is written to OUT/qemu.pid (a node's crash test kills it). The guest's exit status becomes ours; on
# failure the tail of the guest console is printed.
rl_run_vm() {
    local timeout=900 out="" mem=3072 abi user_share="" share_args=() append_share=""
    local node="" link="" keep_pmem="" net_args=() lean=""
    while [ $# -gt 0 ]; do
        case $1 in
            --timeout) timeout=$2; shift 2 ;;
            --out) out=$2; shift 2 ;;
            --memory) mem=$2; shift 2 ;;
            --share) user_share=$2; shift 2 ;;
            --node) node=$2; shift 2 ;;
            --link) link=$2; shift 2 ;;
            --pmem) keep_pmem=$2; shift 2 ;;
            --lean) lean=1; shift ;;
            --) shift; break ;;
            *) echo "rl_run_vm: unknown option $1" >&2; return 2 ;;
        esac
    done
    [ $# -gt 0 ] || { echo "rl_run_vm: no command given" >&2; return 2; }
    if [ -n "$node" ]; then
        [[ $node =~ ^[01]$ ]] || { echo "rl_run_vm: --node must be 0 or 1, got '$node'" >&2; return 2; }
        # 127.0.0.1 only: the link reaches the other node's QEMU and nothing else.
        local netdev
        if [[ $link =~ ^(listen|connect):[0-9]+$ ]]; then netdev="socket,id=n0,${link%%:*}=127.0.0.1:${link#*:}"
        elif [[ $link =~ ^udp:([0-9]+):([0-9]+)$ ]]; then
            netdev="socket,id=n0,localaddr=127.0.0.1:${BASH_REMATCH[1]},udp=127.0.0.1:${BASH_REMATCH[2]}"
        else echo "rl_run_vm: --node needs --link listen:PORT, connect:PORT or udp:LOCALPORT:REMOTEPORT, got '$link'" >&2; return 2; fi
        net_args=(-netdev "$netdev" -device "virtio-net-pci,netdev=n0,mac=52:54:00:52:4c:0$((node + 1))")
    fi
    abi=$(cat "$RL_CACHE/kernel/current" 2>/dev/null) || { echo "no guest kernel prepared: run ./build.sh setup" >&2; return 1; }
    local kdir=$RL_CACHE/kernel/$abi root=$RL_CACHE/rootfs-$RL_GUEST_SUITE
    [ -n "$out" ] || out=$(mktemp -d /tmp/rdma-lease-vm.XXXXXX)
    mkdir -p "$out"; rm -f "$out/exit-status" "$out/qemu.pid"
    # Sparse backing files: a fresh, empty NVDIMM every run (XFS and ext4 DAX filesystems). The XFS one is 1 GiB
    # unless RDMA_LEASE_XFS_SIZE says otherwise (whole GiB: 2G holds the 1 GiB point of the snapshot measurements).
    local xfs_size=${RDMA_LEASE_XFS_SIZE:-1G}
    [[ $xfs_size =~ ^[1-9][0-9]*G$ ]] || { echo "rl_run_vm: RDMA_LEASE_XFS_SIZE must be whole GiB like 2G, got '$xfs_size'" >&2; return 2; }
    local pmemdir append_node=""
    [ -z "$node" ] || append_node=" rl_node=$node"
    [ -z "$lean" ] || append_node+=" rl_lean=1"
    if [ -n "$keep_pmem" ]; then
        pmemdir=$keep_pmem; mkdir -p "$pmemdir"
        [ -f "$pmemdir/pmem0.img" ] && append_node+=" rl_keep_pmem=1"
        [ -f "$pmemdir/pmem0.img" ] || truncate -s "$xfs_size" "$pmemdir/pmem0.img"
        [ -f "$pmemdir/pmem1.img" ] || truncate -s 512M "$pmemdir/pmem1.img"
    else
        pmemdir=$(mktemp -d /tmp/rdma-lease-pmem.XXXXXX)
        truncate -s "$xfs_size" "$pmemdir/pmem0.img"; truncate -s 512M "$pmemdir/pmem1.img"
    fi
    echo "$*" > "$out/command"   # like ssh: the words are joined into one shell command
    local share="security_model=none,multidevs=remap"
    if [ -n "$user_share" ]; then
        [ -d "$user_share" ] || { echo "rl_run_vm: --share $user_share is not a directory" >&2; return 2; }
        share_args=(-virtfs "local,path=$(readlink -f "$user_share"),mount_tag=share,$share")
        append_share=" rl_share=1"
    fi
    local dotnet_root; dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
    local console=$out/console.log
    rl_log "guest${node:+ node $node}: booting $abi (timeout ${timeout}s, console in $console)"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$timeout" qemu-system-x86_64 \
        -machine q35,nvdimm=on -accel tcg -cpu max,smap=off -smp "${RDMA_LEASE_GUEST_CPUS:-1}" \
        -m "${mem}M,slots=2,maxmem=$((mem + ${xfs_size%G} * 1024 + 1024))M" \
        -nographic -no-reboot -nic none "${net_args[@]}" -serial "file:$console" -monitor none -pidfile "$out/qemu.pid" \
        -kernel "$kdir/usr/lib/modules/$abi/vmlinuz" -initrd "$kdir/initramfs.cpio.gz" \
        -append "console=ttyS0 quiet panic=-1 rl_modules=/mnt/kernel/usr$append_share$append_node" \
        -object memory-backend-file,id=mem0,share=on,mem-path=$pmemdir/pmem0.img,size=$xfs_size -device nvdimm,id=nv0,memdev=mem0 \
        -object memory-backend-file,id=mem1,share=on,mem-path=$pmemdir/pmem1.img,size=512M -device nvdimm,id=nv1,memdev=mem1 \
        -virtfs "local,path=$root,mount_tag=rootfs,$share,readonly=on" \
        -virtfs "local,path=$RL_REPO,mount_tag=repo,$share,readonly=on" \
        -virtfs "local,path=$dotnet_root,mount_tag=dotnet,$share,readonly=on" \
        -virtfs "local,path=$kdir,mount_tag=kernel,$share,readonly=on" \
        -virtfs "local,path=$out,mount_tag=out,$share" "${share_args[@]}" \
        </dev/null >/dev/null 2>"$out/qemu.err"
    rc=$?
    [ -n "$keep_pmem" ] || rm -rf "$pmemdir"
    if [ $rc -eq 137 ] && [ $((SECONDS - t0)) -lt "$timeout" ] && [ ! -f "$out/exit-status" ]; then
        echo "guest${node:+ node $node}: QEMU was killed (SIGKILL) after $((SECONDS - t0)) s" >&2
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "guest: timed out after ${timeout}s" >&2
        rc=124
    elif [ -f "$out/exit-status" ]; then
        rc=$(cat "$out/exit-status")
    else
        echo "guest: QEMU exited ($rc) without the guest reporting a status" >&2
        cat "$out/qemu.err" >&2
        rc=125
    fi
    rl_log "guest${node:+ node $node}: finished with status $rc after $((SECONDS - t0)) s"
    if [ "$rc" != 0 ]; then
        echo "---- last 60 lines of the guest console ($console) ----" >&2
        tail -n 60 "$console" >&2
        echo "----" >&2
    fi
    return "$rc"
}

# rl_free_port: a port nobody uses on this machine now, for TCP or UDP (for the nodes' socket link).
rl_free_port() {
    local p i
    for i in $(seq 50); do
        p=$((20000 + RANDOM % 30000))
        ss -Htuan "sport = :$p" | grep -q . || { echo "$p"; return 0; }
    done
    echo "rl_free_port: no free port found" >&2; return 1
}

# rl_wait_listen PORT PID S: wait until something listens on 127.0.0.1:PORT (node 0's QEMU, PID), at most S seconds.
rl_wait_listen() {
    local port=$1 pid=$2 i
    for i in $(seq $(($3 * 10))); do
        ss -Htln "sport = :$port" | grep -q . && return 0
        kill -0 "$pid" 2>/dev/null || { echo "node 0's QEMU exited before listening on port $port" >&2; return 1; }
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$port after $3 s" >&2; return 1
}
