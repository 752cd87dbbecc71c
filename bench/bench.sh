#!/usr/bin/env bash
# Ferry side by side with QEMU + virtiofsd: one command, one report.
#
#   bench/bench.sh [ROUNDS] [WORKLOAD...]     (default: 5 rounds, all)
#
# Workloads: boot seqread randread write mmap smallfiles walk run, and the
# network ones net-tx net-rx net-rr (`net` names all three). `run` is
# `ferry run -- true` end to end, with the project kernel and with the
# newest distribution kernel in /boot, against the same job done the way
# virtme-ng and vmtest do it: QEMU, the host's / read-only through virtiofsd
# as the guest's root, the working directory as a second, writable
# virtiofsd share, and a compiled init (bench/peer-init.c) that mounts what
# Ferry's init mounts, runs the command and powers off.
#
# The network workloads run Ferry with `--net user` against QEMU with the
# same passt backend, started the way passt shows for QEMU (`passt
# --socket`, QEMU on a connected descriptor as passt's `qrap` does,
# `-netdev socket,fd=N`: Debian's QEMU 7.2 lacks the `-netdev stream` fix
# passt asks for; `bench/net-connect.py`) and a default virtio-net-pci; both
# guests take passt's DHCP lease in the kernel (ip=dhcp). The guest talks
# to bench/net-server.py on the host's loopback through passt: TCP
# throughput guest to host (net-tx, 256 MiB) and host to guest (net-rx,
# 256 MiB), and the time of a one-byte request/response (net-rr, 2,000
# round trips on one TCP_NODELAY connection). The VMM columns leave passt
# out on both sides: Ferry does not wait for its passt (a parent-death
# signal ends it), so /usr/bin/time cannot count it, and the peer's passt
# (the same program moving the same bytes) is left out to match.
#
# Prepares both (the peer: Debian's qemu-system-x86 and virtiofsd built from
# crates.io, run the standard way: vhost-user-fs-pci, memfd-backed shared
# guest memory, --cache=auto), then for every workload runs Ferry and the
# peer alternately (A B A B ...), ROUNDS times each, with the same guest
# kernel and initramfs, 1 vCPU and 1 GiB. Where this CPU has no vmx/svm
# everything runs inside the emulated KVM host, as the tests do.
#
# Each run boots a fresh VM that mounts the shared data directory and runs
# one workload (resources/guest/ferry-bench.c), timed inside the guest; the
# host times the whole VM and records the VMM's CPU seconds and peak RSS
# (QEMU plus its virtiofsd processes for the peer). It never asserts a
# timing: it reports. Results: bench/results/latest.{md,json,png} and the raw
# samples beside them (a run of some workloads only: latest-NAMES.*, so
# the full run's report stays); the table is printed too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
rounds=5
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    rounds=$1
    shift
fi
only=()
for w in "$@"; do
    if [ "$w" = net ]; then only+=(net-tx net-rx net-rr); else only+=("$w"); fi
done
memory=1G
report=latest
[ ${#only[@]} -eq 0 ] || report="latest-$(IFS=-; echo "${only[*]}")"
[ "$report" != latest-net-tx-net-rx-net-rr ] || report=latest-net

if [ -z "${FERRY_BENCH_INSIDE:-}" ]; then
    bench_prepare
    "$here/install-peer.sh"
    mode=$(bench_kvm_mode)
    export FERRY_BENCH_INSIDE=1 FERRY_BENCH_MODE=$mode
    results="$repo/bench/results"
    mkdir -p "$results"
    raw="$results/$report-samples.txt"
    {
        echo "meta date $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "meta host $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores, $(($(awk '/MemTotal/ {print $2}' /proc/meminfo) >> 20)) GiB"
        echo "meta mode $mode"
        echo "meta rounds $rounds"
        echo "meta guest 1 vCPU, $memory, $(basename "$(readlink -f "$kernel")")"
        echo "meta ferry $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
        echo "meta peer $(qemu-system-x86_64 --version | head -1), $("$virtiofsd" --version | head -1)"
    } > "$raw"
    if [ "$mode" = emulated ]; then
        echo "[bench] no vmx/svm on this CPU: running inside the emulated KVM host" >&2
        "$repo/resources/emulated-host.sh" "$0" "$rounds" "${only[@]}" | tee -a "$raw"
    else
        "$0" "$rounds" "${only[@]}" | tee -a "$raw"
    fi
    python3 "$here/report.py" "$raw" "$results" "$report"
    exit 0
fi

data=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
# `run` needs a working directory outside the guests' own /tmp.
scratch=${FERRY_TEST_SCRATCH:-$repo/target/scratch}
mkdir -p "$scratch"
work=$(mktemp -d "$scratch/bench.XXXXXX")
trap 'rm -rf "$data" "$work"' EXIT

echo "[bench] preparing data: a 256 MiB file and a tree of 20,000 entries" >&2
head -c $((256 << 20)) /dev/urandom > "$data/big.bin"
for d in $(seq 1 200); do
    mkdir -p "$data/tree/d$d"
    (cd "$data/tree/d$d" && touch $(seq -f 'f%g' 1 99))
done
mkdir -p "$work/cwd"

# The host's end of the network workloads (see the top).
net_sink=47001 net_source=47002 net_echo=47003 net_mib=256
if [[ " ${only[*]:-net-tx} " == *" net-"* ]]; then
    python3 "$here/net-server.py" $net_sink $net_source $net_echo $net_mib &
    net_server=$!
    trap 'kill $net_server 2>/dev/null; rm -rf "$data" "$work"' EXIT
fi

sample() { echo "sample $*"; }

# Emits the samples of one VM run: wall time, VMM CPU seconds and peak RSS
# (summed over the /usr/bin/time files given), and every `result k=v` the
# guest printed in $out.
emit() {
    local workload=$1 system=$2 wall=$3 out=$4
    shift 4
    local cpu rss
    cpu=$(cat "$@" | awk '{ s += $1 + $2 } END { printf "%.2f", s }')
    rss=$(cat "$@" | awk '{ s += $3 } END { printf "%.1f", s / 1024 }')
    sample "$workload" "$system" wall-ms "$wall"
    sample "$workload" "$system" vmm-cpu-s "$cpu"
    sample "$workload" "$system" vmm-rss-mib "$rss"
    local kv
    for kv in $(grep -o 'result .*' "$out" | head -1 | cut -d' ' -f2-); do
        case $kv in
            *=[0-9]*) sample "$workload" "$system" "${kv%%=*}" "${kv#*=}" ;;
        esac
    done
}

guest_failed() {
    echo "[bench] $1 failed on $2; its output:" >&2
    tail -20 "$3" >&2
    exit 1
}

# A VM booted from the initramfs with the data shared as "bench" and
# mounted at /mnt (no mount for the boot workload), running $3.
ferry_vm() {
    local workload=$1 system=$2 cmd=$3 fsopt="" mopt="" t0 t1 net=() ip=""
    if [ "$system" = ferry-dax ]; then fsopt=",dax=on" mopt="-o dax"; fi
    case $workload in
        boot) ;;
        net-*) net=(--net user) ip="ip=dhcp " ;;
        *) cmd="mount -t virtiofs $mopt bench /mnt && $cmd" ;;
    esac
    t0=$(now_ms)
    /usr/bin/time -f '%U %S %M' -o "$work/ferry.time" \
        "$ferry" --kernel "$kernel" --initramfs "$initramfs" --memory "$memory" --cpus 1 \
        --fs "tag=bench,path=$data$fsopt" "${net[@]}" --cmdline "quiet ${ip}cmd=\"$cmd\"" \
        </dev/null >"$work/out.txt" 2>&1 || true
    t1=$(now_ms)
    grep -q 'ferry-init: exit status 0' "$work/out.txt" || guest_failed "$workload" "$system" "$work/out.txt"
    emit "$workload" "$system" $((t1 - t0)) "$work/out.txt" "$work/ferry.time"
}

# The peer: QEMU with virtiofsd sharing the data, or, for the network
# workloads, QEMU with passt (see the top).
peer_vm() {
    local workload=$1 cmd=$2 t0 t1 devices=() ip="" helper_time launch=()
    t0=$(now_ms)
    case $workload in
        net-*)
            # passt binds its socket once it has dropped to nobody (as
            # root it does, as it does under Ferry): a directory nobody
            # may write.
            chmod 0711 "$work"
            rm -rf "$work/passt"
            mkdir -m 0777 "$work/passt"
            /usr/bin/time -f '%U %S %M' -o "$work/passt.time" \
                passt --foreground --quiet --one-off --socket "$work/passt/sock" 2>"$work/passt.log" &
            peer_pid=$!
            launch=(python3 "$here/net-connect.py" "$work/passt/sock")
            devices=(-netdev "socket,id=net0,fd=@FD@" -device virtio-net-pci,netdev=net0)
            # passt's own cost is left out, as it is for Ferry (see the top).
            ip="ip=dhcp " helper_time=""
            ;;
        *)
            [ "$workload" = boot ] || cmd="mount -t virtiofs bench /mnt && $cmd"
            peer_time="$work/vfs.time" peer_virtiofsd "$work/bench.sock" "$data"
            devices=(-chardev "socket,id=fs,path=$work/bench.sock"
                -device vhost-user-fs-pci,chardev=fs,tag=bench)
            helper_time=$work/vfs.time
            ;;
    esac
    # shellcheck disable=SC2046
    "${launch[@]}" /usr/bin/time -f '%U %S %M' -o "$work/qemu.time" \
        qemu-system-x86_64 $(peer_qemu_base "$memory") "${devices[@]}" \
        -kernel "$kernel" -initrd "$initramfs" -serial file:"$work/out.txt" \
        -append "console=ttyS0 quiet reboot=k panic=-1 ${ip}cmd=\"$cmd\"" </dev/null || true
    t1=$(now_ms)
    # virtiofsd (or passt, --one-off) leaves when QEMU disconnects; its
    # time file follows.
    wait "$peer_pid" || true
    grep -q 'ferry-init: exit status 0' "$work/out.txt" || guest_failed "$workload" peer "$work/out.txt"
    emit "$workload" peer $((t1 - t0)) "$work/out.txt" "$work/qemu.time" ${helper_time:+"$helper_time"}
}

# `ferry run -- true` against the virtme-ng/vmtest way (see the top),
# with the project kernel (system ferry) or a distribution kernel from
# /boot (ferry-distro: Ferry builds its module initramfs on each run).
ferry_run_vm() {
    local system=$1 kernel=$2 t0 t1
    t0=$(now_ms)
    (cd "$work/cwd" && /usr/bin/time -f '%U %S %M' -o "$work/ferry.time" \
        "$ferry" run --kernel "$kernel" --memory "$memory" --cpus 1 -- true \
        >"$work/out.txt" 2>&1) || guest_failed run "$system" "$work/out.txt"
    t1=$(now_ms)
    echo "result" > "$work/out.txt"
    emit run "$system" $((t1 - t0)) "$work/out.txt" "$work/ferry.time"
}

# The distribution kernel for the ferry-distro column: the newest in /boot
# (resources/install-deps.sh installs Debian's linux-image-amd64).
distro_kernel() {
    local k
    k=$(ls -v /boot/vmlinuz-* 2>/dev/null | tail -1)
    [ -n "$k" ] || {
        echo "[bench] no /boot/vmlinuz-*: the run workload measures a distribution kernel too (apt-get install linux-image-amd64)" >&2
        exit 1
    }
    echo "$k"
}

peer_run_vm() {
    local t0 t1 root_pid
    t0=$(now_ms)
    peer_time="$work/vfs-root.time" peer_virtiofsd "$work/root.sock" / --readonly
    root_pid=$peer_pid
    peer_time="$work/vfs.time" peer_virtiofsd "$work/cwd.sock" "$work/cwd"
    # shellcheck disable=SC2046
    /usr/bin/time -f '%U %S %M' -o "$work/qemu.time" \
        qemu-system-x86_64 $(peer_qemu_base "$memory") \
        -chardev socket,id=root,path="$work/root.sock" -device vhost-user-fs-pci,chardev=root,tag=root \
        -chardev socket,id=cwd,path="$work/cwd.sock" -device vhost-user-fs-pci,chardev=cwd,tag=cwd \
        -kernel "$kernel" -serial file:"$work/out.txt" \
        -append "console=ttyS0 quiet reboot=k panic=-1 root=root rootfstype=virtiofs ro init=$peer_init peer_cmd=true peer_cwd=$work/cwd" \
        </dev/null || true
    t1=$(now_ms)
    wait "$root_pid" "$peer_pid" || true
    grep -q 'peer-init: status 0' "$work/out.txt" || guest_failed run peer "$work/out.txt"
    emit run peer $((t1 - t0)) "$work/out.txt" "$work/qemu.time" "$work/vfs.time" "$work/vfs-root.time"
}

workloads=(
    "boot|true"
    "seqread|ferry-bench seqread /mnt/big.bin"
    "randread|ferry-bench randread /mnt/big.bin 2000"
    "write|ferry-bench seqwrite /mnt/written.bin 128"
    "mmap|ferry-bench mmapread /mnt/big.bin"
    "smallfiles|ferry-bench smallfiles /mnt/small 2000"
    "walk|ferry-bench walk /mnt/tree"
    "run|"
    "net-tx|ferry-bench tcpsend gw $net_sink $net_mib"
    "net-rx|ferry-bench tcprecv gw $net_source"
    "net-rr|ferry-bench tcprr gw $net_echo 2000"
)
for entry in "${workloads[@]}"; do
    workload=${entry%%|*} cmd=${entry#*|}
    if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $workload "* ]]; then
        continue
    fi
    for r in $(seq 1 "$rounds"); do
        echo "[bench] $workload round $r/$rounds" >&2
        if [ "$workload" = run ]; then
            ferry_run_vm ferry "$kernel"
            ferry_run_vm ferry-distro "$(distro_kernel)"
            peer_run_vm
            continue
        fi
        ferry_vm "$workload" ferry "$cmd"
        # DAX changes how file data moves: worth a column where data moves.
        case $workload in seqread | randread | mmap) ferry_vm "$workload" ferry-dax "$cmd" ;; esac
        peer_vm "$workload" "$cmd"
    done
done
echo "[bench] done" >&2
