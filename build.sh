#!/usr/bin/env bash
# rdma-lease's one entry point. `./build.sh help` lists the verbs.
set -euo pipefail
RL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RL_LIB_DIR=$RL_REPO/tools/vm
# shellcheck source=tools/vm/lib.sh
source "$RL_LIB_DIR/lib.sh"

CONFIG=${CONFIGURATION:-Release}
# Relative to the repository: the guest sees it at /mnt/repo (its working directory).
TESTS_DLL=artifacts/bin/RdmaLease.Tests/${CONFIG,,}/RdmaLease.Tests.dll
GUEST_TIMEOUT=${RDMA_LEASE_GUEST_TIMEOUT:-1800}

# Host packages the harness needs, by the command (or file) that proves each is there.
HOST_PACKAGES=(
    "qemu-system-x86_64:qemu-system-x86" "qemu-img:qemu-utils" "debootstrap:debootstrap"
    "/bin/busybox:busybox-static" "depmod:kmod" "cpio:cpio" "xz:xz-utils" "cc:gcc" "make:make"
    # The packaging tests read the native libraries' ELF headers; a lease-only program runs in a mount namespace.
    "readelf:binutils" "unshare:util-linux" "git:git"
    # The bindings generator (./build.sh bindings, and the host test that checks the checked-in
    # bindings are what it generates): libclang, and clang's builtin headers (stddef.h, ...), which
    # Debian packages apart from it.
    "/usr/lib/llvm-16/lib/libclang.so.1:libclang1-16"
    "/usr/lib/llvm-16/lib/clang/16/include/stddef.h:libclang-common-16-dev"
    # The host's own rdma-core (44): the layout tests check our bindings against its headers too.
    "/usr/include/infiniband/verbs.h:libibverbs-dev" "/usr/include/rdma/rdma_cma.h:librdmacm-dev"
)

usage() {
    cat <<EOT
usage: ./build.sh VERB [ARGS]

  demo            set up (first run only), build, boot a guest and run samples/tour.sh in it: the devices,
                  ping-pong against rdma-core's ibv_rc_pingpong, RDMA into a pmem file and a lease break
  test            set up, build, run the host tests, the guest tests and the two-node tests; prints
                  'N passed, N failed, N skipped' and fails if any failed or the guest or node tests did not run
  setup           install host packages, fetch the guest kernel, rdma-core headers and the guest root (cached)
  build           build the native shim and the .NET solution ($CONFIG; CONFIGURATION=Debug to change)
  vm [--share DIR] -- CMD...
                  boot a guest with rxe and FS-DAX ready and run CMD in it (cwd: the repository);
                  --share DIR: a folder of yours, read-write at /mnt/share (your own programs, their output)
  vm --nodes 2 -- CMD...
                  boot two guests, each with its own kernel and NVDIMMs, linked only to each other (QEMU socket
                  netdev on 127.0.0.1; 203.0.113.1 and .2, rxe device rxenode) and run CMD on both;
                  \$RDMA_LEASE_NODE is 0 or 1, \$RDMA_LEASE_PEER the other node's address
  bench [ROUNDS]  build, boot ONE guest with two vCPUs and run every benchmark suite (benchmarks/guest/suites/*.sh)
                  ROUNDS times (default 3), C and C# interleaved; then docs/benchmarks/results.md and its PNG plots
                  (docs/benchmarks.md). RDMA_LEASE_BENCH_QUICK=1: tiny runs, report in artifacts/bench/report;
                  RDMA_LEASE_BENCH_SUITES="net ...": only those suites
  bench grants [M]
                  the memory-window grant costs of issue 15 (RdmaLease.Benchmarks grants, M iterations, default 100)
  pack            make the NuGet packages (RdmaLease.Verbs, RdmaLease.Leases, RdmaLease.Hosting) in artifacts/packages
  aot             publish samples/Demo with NativeAOT (trimming and AOT warnings are errors) to artifacts/aot
  consumer        build a fresh console project against artifacts/packages (a local folder feed,
                  offline) into artifacts/package-consumer, for the guest test that runs it
  bindings        regenerate src/Verbs/Interop/Generated from rdma-core's headers
  public-api      rewrite PublicAPI.Unshipped.txt of src/Verbs, src/Leases and src/Hosting from their public surface
  help            this text

Cache: $RL_CACHE (RDMA_LEASE_CACHE to move it). Guest kernel: newest linux-image-amd64 of
'$RL_KERNEL_SUITES' (RDMA_LEASE_KERNEL=ABI to pin one; at least $RL_MIN_KERNEL).
EOT
}

need_root() {
    [ "$(id -u)" -eq 0 ] || rl_die "$1 needs root (apt-get, debootstrap). Run as root, or have an administrator run './build.sh setup' once."
}

install_host_packages() {
    local entry missing=()
    for entry in "${HOST_PACKAGES[@]}"; do
        local probe=${entry%%:*} pkg=${entry#*:}
        if [[ $probe == /* ]]; then [ -e "$probe" ] || missing+=("$pkg")
        else command -v "$probe" >/dev/null || missing+=("$pkg"); fi
    done
    [ ${#missing[@]} -eq 0 ] && { rl_log "host packages: all present"; return 0; }
    need_root "installing ${missing[*]}"
    rl_log "host packages: installing ${missing[*]}"
    apt-get -q update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
}

setup() {
    command -v dotnet >/dev/null || rl_die "the .NET SDK (dotnet) is not on PATH; rdma-lease needs .NET 10"
    rl_stage host-packages install_host_packages
    mkdir -p "$RL_CACHE"
    rl_stage apt-lists rl_private_apt_update
    local abi; abi=$(rl_kernel_abi) || rl_die "cannot choose a guest kernel"
    rl_stage "kernel($abi)" rl_fetch_kernel "$abi"
    # Written whole and renamed into place: another checkout sharing the cache may read it at any moment.
    echo "$abi" > "$RL_CACHE/kernel/current.$$" && mv "$RL_CACHE/kernel/current.$$" "$RL_CACHE/kernel/current"
    rl_stage rdma-headers rl_fetch_rdma_headers >/dev/null
    rl_fetch_rdma_headers > "$RL_CACHE/rdma-core/current.$$" && mv "$RL_CACHE/rdma-core/current.$$" "$RL_CACHE/rdma-core/current"
    [ -f "$RL_CACHE/rootfs-$RL_GUEST_SUITE/.complete" ] || need_root "making the guest root with debootstrap"
    rl_stage guest-root rl_make_rootfs
    rl_stage initramfs rl_make_initramfs "$abi"
}

# The libraries: their public surface is declared in PublicAPI.Shipped.txt + PublicAPI.Unshipped.txt, and each
# is a package.
LIBRARY_PROJECTS=(src/Verbs/RdmaLease.Verbs.csproj src/Leases/RdmaLease.Leases.csproj src/Hosting/RdmaLease.Hosting.csproj)

# public_api: rewrite each PublicAPI.Unshipped.txt from the code. The file is emptied, then the
# analyzer's own code fix for RS0016 lists every public symbol PublicAPI.Shipped.txt lacks. (Its
# fix for RS0017, a listed symbol that is gone, also drops members of record structs that still
# exist, so the file is rebuilt rather than patched.)
public_api() {
    local p
    for p in "${LIBRARY_PROJECTS[@]}"; do
        printf '#nullable enable\n' > "$RL_REPO/$(dirname "$p")/PublicAPI.Unshipped.txt"
        rl_stage "public-api($p)" dotnet format analyzers "$RL_REPO/$p" --diagnostics RS0016
    done
}

rdma_headers() {
    local dir; dir=$(cat "$RL_CACHE/rdma-core/current" 2>/dev/null) || true
    [ -n "$dir" ] && [ -f "$dir/usr/include/infiniband/verbs.h" ] || rl_die "rdma-core headers not fetched: run ./build.sh setup"
    echo "$dir"
}

build_native() {
    local headers; headers=$(rdma_headers)
    rl_stage native make -s -C "$RL_REPO/native" RDMA_CORE="$headers" RDMA_LIBDIR="$RL_CACHE/rootfs-$RL_GUEST_SUITE/usr/lib/x86_64-linux-gnu"
}

build() {
    build_native
    rl_stage bench-c make -s -C "$RL_REPO/benchmarks/c" RDMA_CORE="$(rdma_headers)" GUEST_ROOT="$RL_CACHE/rootfs-$RL_GUEST_SUITE"
    rl_stage repro make -s -C "$RL_REPO/tools/repro" RDMA_CORE="$(rdma_headers)" GUEST_ROOT="$RL_CACHE/rootfs-$RL_GUEST_SUITE"
    rl_stage dotnet dotnet build "$RL_REPO/rdma-lease.sln" -c "$CONFIG" -nologo -clp:ErrorsOnly -v:q
}

# pack: the packages, into artifacts/packages. Built apart from the everyday build (their own bin/obj pivot) with
# ContinuousIntegrationBuild (build paths mapped to /_/, SourceLink from the git remote 'origin') and every zip
# entry stamped with the commit's time, so the same commit packs to the same bytes wherever it is checked out.
pack() {
    build_native
    local out=$RL_REPO/artifacts/packages stamp p
    stamp=$(git -C "$RL_REPO" log -1 --format=%ct) || rl_die "pack needs the git repository (the commit goes into the packages)"
    git -C "$RL_REPO" remote get-url origin >/dev/null 2>&1 ||
        rl_log "pack: the repository has no remote 'origin': the packages name the commit but carry no SourceLink URLs"
    rm -rf "$out"
    for p in "${LIBRARY_PROJECTS[@]}"; do
        rl_stage "pack($(basename "$p" .csproj))" dotnet pack "$RL_REPO/$p" -c "$CONFIG" -nologo -v:q -clp:ErrorsOnly \
            -o "$out" -p:ContinuousIntegrationBuild=true -p:ArtifactsPivots="pack-${CONFIG,,}" -p:DeterministicTimestamp="$stamp"
    done
    ls -l "$out" >&2
}

# aot: samples/Demo published with NativeAOT; any trimming or AOT warning fails it. The log is kept for the test
# that checks it (tests/RdmaLease.Tests/Samples/DemoTests.cs).
aot() {
    build_native
    rl_stage aot aot_publish "$RL_REPO/artifacts/aot/RdmaLease.Demo" "$RL_REPO/artifacts/aot/RdmaLease.Demo.publish.log"
    ls -l "$RL_REPO/artifacts/aot/RdmaLease.Demo/RdmaLease.Demo" >&2
}

aot_publish() {
    local out=$1 log=$2
    rm -rf "$out"; mkdir -p "$out"
    dotnet publish "$RL_REPO/samples/Demo/RdmaLease.Demo.csproj" -c "$CONFIG" -r linux-x64 -nologo -o "$out" \
        -p:PublishAot=true -p:TreatWarningsAsErrors=true -p:IlcTreatWarningsAsErrors=true -p:TrimmerSingleWarn=false \
        > "$log" 2>&1 || { tail -n 40 "$log" >&2; echo "the NativeAOT publish failed (log: $log)" >&2; return 1; }
}

# bench_aot: RdmaLease.Benchmarks published with NativeAOT into artifacts/aot/RdmaLease.Benchmarks, for the lease-break
# suite's cs-aot holder (benchmarks/guest/suites/break.sh). The log is kept beside it.
bench_aot() {
    build_native
    local out=$RL_REPO/artifacts/aot/RdmaLease.Benchmarks log=$RL_REPO/artifacts/aot/RdmaLease.Benchmarks.publish.log
    rm -rf "$out"; mkdir -p "$out"
    rl_stage bench-aot dotnet publish "$RL_REPO/benchmarks/RdmaLease.Benchmarks/RdmaLease.Benchmarks.csproj" -c "$CONFIG" \
        -r linux-x64 -nologo -o "$out" -p:PublishAot=true > "$log" 2>&1 ||
        { tail -n 40 "$log" >&2; rl_die "the benchmarks' NativeAOT publish failed (log: $log)"; }
}

# consumer: what a user does with the packages. A fresh `dotnet new console` outside the repository (so none of
# its build settings apply), a nuget.config naming only artifacts/packages and, for the packages ours depend on,
# this machine's global packages folder (as a local feed: nothing is downloaded), a private packages folder (so no
# earlier copy of our packages is reused), `dotnet add package RdmaLease.Leases`, tests/PackageConsumer/Program.cs,
# and a framework-dependent publish into artifacts/package-consumer. Built on the host: see docs/testing.md.
consumer() {
    local feed=$RL_REPO/artifacts/packages out=$RL_REPO/artifacts/package-consumer nupkg version work cache
    nupkg=$(find "$feed" -maxdepth 1 -name 'RdmaLease.Leases.*.nupkg' 2>/dev/null | head -n 1)
    [ -n "$nupkg" ] || rl_die "no RdmaLease.Leases package in $feed: run ./build.sh pack first"
    version=$(basename "$nupkg" .nupkg); version=${version#RdmaLease.Leases.}
    cache=$(dotnet nuget locals global-packages --list | sed -n 's/^global-packages: //p')
    work=$(mktemp -d /tmp/rdma-lease-consumer.XXXXXX)
    cat > "$work/nuget.config" <<EOT
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <config>
    <add key="globalPackagesFolder" value="$work/packages" />
  </config>
  <packageSources>
    <clear />
    <add key="rdma-lease" value="$feed" />
    <add key="machine-packages" value="$cache" />
  </packageSources>
</configuration>
EOT
    rm -rf "$out"
    rl_stage consumer consumer_build "$work" "$version" "$out"
}

consumer_build() {
    local work=$1 version=$2 out=$3
    (   set -e; cd "$work"
        dotnet new console --name RdmaLease.PackageConsumer --output . --no-restore --no-update-check >/dev/null
        dotnet add package RdmaLease.Leases --version "$version" >/dev/null
        cp "$RL_REPO/tests/PackageConsumer/Program.cs" Program.cs
        dotnet publish -c Release -nologo -v:q -clp:ErrorsOnly -o "$out"
    ) || { echo "building the package consumer in $work failed" >&2; return 1; }
    rm -rf "$work"
}

# test_args NAME RESULTS FILTER: dotnet arguments that run the tests matching an NUnit category filter.
test_args() {
    echo "exec $TESTS_DLL --progress off --no-ansi --report-trx --report-trx-filename $1.trx --results-directory $2 --filter $3"
}

# trx_counts FILE: "passed failed skipped" from a TRX file's <Counters>.
trx_counts() {
    local f=$1
    [ -f "$f" ] || { echo "0 0 0"; return; }
    local c; c=$(grep -o '<Counters [^>]*>' "$f" | head -n 1)
    attr() { sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p" <<<"$c"; }
    echo "$(attr passed) $(( $(attr failed) + $(attr error) + $(attr timeout) + $(attr aborted) )) $(attr notExecuted)"
}

test_all() {
    setup
    build
    pack
    consumer
    aot
    local results=$RL_REPO/artifacts/test-results
    rm -rf "$results"; mkdir -p "$results/host" "$results/guest" "$results/nodes"
    rl_log "host tests"
    local host_rc=0 guest_rc=0 nodes_rc=0 t0
    # shellcheck disable=SC2046
    (cd "$RL_REPO" && dotnet $(test_args host "$results/host" 'TestCategory!=Guest&TestCategory!=Nodes')) || host_rc=$?
    rl_log "guest tests"
    t0=$SECONDS
    run_guest --out "$results/guest" -- "dotnet $(test_args guest /mnt/out 'TestCategory=Guest') --minimum-expected-tests 1" || guest_rc=$?
    rl_log "guest tests: $((SECONDS - t0)) s"
    # Two-node tests: run on the host, which boots the node guests and drives them (tests/RdmaLease.Tests/Nodes).
    rl_log "two-node tests"
    t0=$SECONDS
    # shellcheck disable=SC2046
    (cd "$RL_REPO" && dotnet $(test_args nodes "$results/nodes" 'TestCategory=Nodes') --minimum-expected-tests 1 --output detailed) || nodes_rc=$?
    rl_log "two-node tests: $((SECONDS - t0)) s"

    read -r hp hf hs <<<"$(trx_counts "$results/host/host.trx")"
    read -r gp gf gs <<<"$(trx_counts "$results/guest/guest.trx")"
    read -r np nf ns <<<"$(trx_counts "$results/nodes/nodes.trx")"
    echo "host:  $hp passed, $hf failed, $hs skipped (exit $host_rc)"
    echo "guest: $gp passed, $gf failed, $gs skipped (exit $guest_rc)"
    echo "nodes: $np passed, $nf failed, $ns skipped (exit $nodes_rc)"
    local failed=$((hf + gf + nf)) why=()
    [ -f "$results/guest/guest.trx" ] || why+=("the guest tests did not run")
    [ "$((gp + gf))" -gt 0 ] || why+=("no guest test executed")
    [ "$gs" -eq 0 ] || why+=("$gs guest tests were skipped; in the guest a skip is a failure")
    [ -f "$results/nodes/nodes.trx" ] || why+=("the two-node tests did not run")
    [ "$((np + nf))" -gt 0 ] || why+=("no two-node test executed")
    [ "$ns" -eq 0 ] || why+=("$ns two-node tests were skipped; a skipped node test is a failure")
    [ "$hs" -eq 0 ] || why+=("$hs host tests were skipped")
    [ "$host_rc" -eq 0 ] || why+=("the host test run exited $host_rc")
    [ "$guest_rc" -eq 0 ] || why+=("the guest run exited $guest_rc")
    [ "$nodes_rc" -eq 0 ] || why+=("the two-node run exited $nodes_rc")
    local side
    for side in host guest; do
        [ ! -s "$results/$side/leaked-resources.txt" ] || why+=("the $side tests left resources behind: $(tr '\n' ';' < "$results/$side/leaked-resources.txt")")
    done
    echo "$((hp + gp + np)) passed, $failed failed, $((hs + gs + ns)) skipped"
    if [ ${#why[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${why[@]}" >&2; return 1; fi
}

# run_guest [rl_run_vm options] -- CMD: boot a guest, stream CMD's output while it runs.
run_guest() {
    local args=() out=""
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        [ "$1" = "--out" ] && out=$2
        args+=("$1"); shift
    done
    shift || true
    if [ -z "$out" ]; then out=$(mktemp -d /tmp/rdma-lease-vm.XXXXXX); args+=(--out "$out"); fi
    mkdir -p "$out"; : > "$out/output.log"
    tail -n +1 -F "$out/output.log" 2>/dev/null &
    local tail_pid=$! rc=0
    rl_run_vm --timeout "$GUEST_TIMEOUT" "${args[@]}" -- "$@" || rc=$?
    sleep 0.3; kill "$tail_pid" 2>/dev/null; wait "$tail_pid" 2>/dev/null || true
    return $rc
}

# bench [ROUNDS]: the benchmark contract of docs/benchmarks.md. One guest with two vCPUs (two-process figures need
# them), benchmarks/guest/run.sh inside it, then the report on the host. A guest that crashes while booting (the known
# TCG 2-vCPU Oops, docs/testing.md "Why one vCPU") is booted again, at most twice; a failure after run.sh started is not.
bench() {
    local quick=${RDMA_LEASE_BENCH_QUICK:-0} rounds=${1:-}
    [ -n "$rounds" ] || { [ "$quick" = 1 ] && rounds=1 || rounds=3; }
    [[ $rounds =~ ^[1-9][0-9]*$ ]] || rl_die "bench: ROUNDS must be a positive whole number, got '$rounds'"
    local out=$RL_REPO/artifacts/bench/run report=${RDMA_LEASE_BENCH_REPORT:-} attempt rc
    [ -n "$report" ] || { [ "$quick" = 1 ] && report=$RL_REPO/artifacts/bench/report || report=$RL_REPO/docs/benchmarks; }
    # Quoted for the guest's shell (a label may hold any character).
    local env
    env=$(printf 'RDMA_LEASE_BENCH_QUICK=%q RDMA_LEASE_BENCH_SUITES=%q RDMA_LEASE_BENCH_LABEL=%q RDMA_LEASE_BENCH_CONFIG=%q RDMA_LEASE_BENCH_COMMAND=%q' \
        "$quick" "${RDMA_LEASE_BENCH_SUITES:-}" "${RDMA_LEASE_BENCH_LABEL:-development run}" "${CONFIG,,}" "./build.sh bench $rounds (quick=$quick)")
    local knob
    for knob in BREAKS FIRSTS; do   # the break suite's sizes, when set on the host
        local v=RDMA_LEASE_BENCH_$knob
        [ -z "${!v:-}" ] || env+=" $v=$(printf %q "${!v}")"
    done
    for attempt in 1 2 3; do
        rm -rf "$out"; mkdir -p "$out"
        rc=0
        RDMA_LEASE_GUEST_CPUS=2 RDMA_LEASE_XFS_SIZE=${RDMA_LEASE_XFS_SIZE:-2G} run_guest --out "$out" -- "$env benchmarks/guest/run.sh $rounds /mnt/out" || rc=$?
        [ $rc -ne 0 ] && [ ! -f "$out/environment.txt" ] && grep -qE 'Oops|Kernel panic|BUG:' "$out/console.log" 2>/dev/null || break
        [ $attempt -lt 3 ] || break
        echo "bench: the 2-vCPU guest crashed while booting (the known TCG Oops, docs/testing.md \"Why one vCPU\"); booting again (attempt $((attempt + 1)) of 3)" >&2
    done
    [ $rc -eq 0 ] || rl_die "bench: the guest run failed (exit $rc); its output: $out/output.log"
    rl_stage bench-report dotnet exec "$RL_REPO/artifacts/bin/RdmaLease.BenchReport/${CONFIG,,}/RdmaLease.BenchReport.dll" "$out" "$report"
    mkdir -p "$report/raw"
    cp "$out/results.csv" "$out/samples.csv" "$out/environment.txt" "$report/raw/"
    echo "bench: report in $report/results.md, raw CSVs in $report/raw"
}

# run_nodes [--out DIR] -- CMD: boot two node guests linked by a QEMU socket netdev on 127.0.0.1 (a port free now) and
# run CMD on both (RDMA_LEASE_NODE says which, RDMA_LEASE_PEER is the other's address); their output is streamed with a
# [nodeN] prefix. When one node fails, the other gets 60 s to finish before its QEMU is stopped. Fails when either does.
run_nodes() {
    local out="" port p0 p1 rc0=0 rc1=0 tails=() i
    [ "${1:-}" = "--out" ] && { out=$2; shift 2; }
    [ "${1:-}" = "--" ] && shift
    [ -n "$out" ] || out=$(mktemp -d /tmp/rdma-lease-nodes.XXXXXX)
    local kind=${RDMA_LEASE_NODE_LINK:-udp} link0 link1 port2
    port=$(rl_free_port) || return 1
    case $kind in
        tcp) link0=listen:$port link1=connect:$port ;;
        udp) port2=$(rl_free_port) || return 1; [ "$port2" != "$port" ] || port2=$((port + 1))
             link0=udp:$port:$port2 link1=udp:$port2:$port ;;
        *) echo "RDMA_LEASE_NODE_LINK must be udp or tcp, got '$kind'" >&2; return 2 ;;
    esac
    for i in 0 1; do
        mkdir -p "$out/node$i"; : > "$out/node$i/output.log"
        tail -n +1 -F "$out/node$i/output.log" 2>/dev/null | sed -u "s/^/[node$i] /" &
        tails+=($!)
    done
    rl_log "nodes: $kind link on 127.0.0.1 ($link0 / $link1), output in $out/node0 and $out/node1"
    rl_run_vm --timeout "$GUEST_TIMEOUT" --memory 2048 --node 0 --link "$link0" --out "$out/node0" -- "$@" & p0=$!
    if [ "$kind" = udp ] || rl_wait_listen "$port" "$p0" 60; then
        rl_run_vm --timeout "$GUEST_TIMEOUT" --memory 2048 --node 1 --link "$link1" --out "$out/node1" -- "$@" & p1=$!
    else
        rc1=125
    fi
    # Whichever ends first: a failure gives the other 60 s (it may be waiting for its peer forever).
    while kill -0 "$p0" 2>/dev/null && { [ -z "${p1:-}" ] || kill -0 "$p1" 2>/dev/null; }; do sleep 1; done
    for i in 0 1; do
        local f=$out/node$i/exit-status
        if [ -f "$f" ] && [ "$(cat "$f")" != 0 ]; then
            local other=$((1 - i)) t
            for t in $(seq 60); do [ -f "$out/node$other/exit-status" ] && break; sleep 1; done
            [ -f "$out/node$other/exit-status" ] || kill "$(cat "$out/node$other/qemu.pid" 2>/dev/null)" 2>/dev/null
        fi
    done
    wait "$p0" || rc0=$?
    [ -z "${p1:-}" ] || wait "$p1" || rc1=$?
    sleep 0.3; kill "${tails[@]}" 2>/dev/null; wait "${tails[@]}" 2>/dev/null || true
    rl_log "nodes: node 0 exited $rc0, node 1 exited $rc1"
    [ "$rc0" -eq 0 ] && [ "$rc1" -eq 0 ]
}

verb=${1:-help}; shift || true
case $verb in
    help|-h|--help) usage ;;
    setup) setup ;;
    build) build ;;
    test) test_all ;;
    demo) setup; build; run_guest -- "samples/tour.sh ${CONFIG,,}" ;;
    vm) vm_args=() nodes=1
        while [ $# -gt 0 ] && [ "$1" != "--" ]; do
            case $1 in
                --share) [ -d "${2:-}" ] || rl_die "--share needs a directory (got '${2:-}')"; vm_args+=(--share "$2"); shift 2 ;;
                --nodes) [ "${2:-}" = 2 ] || [ "${2:-}" = 1 ] || rl_die "--nodes takes 1 or 2 (got '${2:-}')"; nodes=$2; shift 2 ;;
                *) rl_die "usage: ./build.sh vm [--share DIR | --nodes 2] -- CMD..." ;;
            esac
        done
        [ "${1:-}" = "--" ] && shift; [ $# -gt 0 ] || rl_die "usage: ./build.sh vm [--share DIR | --nodes 2] -- CMD..."
        [ "$nodes" = 1 ] || [ ${#vm_args[@]} -eq 0 ] || rl_die "--share is for one guest; with --nodes 2 each node has its own output share"
        setup >/dev/null
        if [ "$nodes" = 2 ]; then run_nodes -- "$@"; else run_guest "${vm_args[@]}" -- "$@"; fi ;;
    bench) setup; build
        if [ "${1:-}" = grants ]; then
            run_guest -- "dotnet exec artifacts/bin/RdmaLease.Benchmarks/${CONFIG,,}/RdmaLease.Benchmarks.dll grants rxelo ${2:-100}"
        else
            bench_aot; bench "$@"
        fi ;;
    pack) pack ;;
    aot) aot ;;
    consumer) consumer ;;
    bindings) "$RL_REPO/tools/BindingsGenerator/generate.sh" "$(rdma_headers)" ;;
    public-api) public_api ;;
    *) usage >&2; rl_die "unknown verb '$verb'" ;;
esac
