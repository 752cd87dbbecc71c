#!/usr/bin/env bash
# `ferry run -- true`, end to end, against the same job done the way
# virtme-ng and vmtest do it: QEMU with KVM, the host's / shared read-only
# through virtiofsd as the guest's root (vhost-user-fs-pci, memfd-backed
# shared guest memory, --cache=auto), the working directory as a second,
# writable virtiofsd share, and a compiled init (bench/peer-init.c) that
# mounts what Ferry's init mounts, runs the command and powers off. Same
# kernel, same memory and CPUs; rounds alternate Ferry and the peer. A
# benchmark, not a test: it reports, it asserts no timing.
#
#   bench/run.sh [ROUNDS]        (default 7)
#
# Where this CPU has no vmx/svm it runs inside the emulated KVM host (as the
# tests do): the figures are then nested-virtualization figures.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
rounds=${1:-7}
cache=${FERRY_CACHE:-$HOME/.cache/ferry}

if [ -z "${FERRY_BENCH_INSIDE:-}" ]; then
    resources/prepare.sh
    bench/install-peer.sh
    cargo build --release --quiet -p ferry
    mode=${FERRY_KVM_MODE:-auto}
    if [ "$mode" = auto ]; then
        if grep -qwE 'vmx|svm' /proc/cpuinfo; then mode=direct; else mode=emulated; fi
    fi
    export FERRY_BENCH_INSIDE=1 FERRY_BENCH_MODE=$mode
    if [ "$mode" = emulated ]; then
        echo "[bench] no vmx/svm on this CPU: running inside the emulated KVM host" >&2
        exec resources/emulated-host.sh "$0" "$@"
    fi
fi

ferry="$repo/target/release/ferry"
kernel="$repo/target/guest/bzImage"
virtiofsd="$cache/peer/bin/virtiofsd"
peer_init="$repo/target/bench/peer-init"
for f in "$ferry" "$kernel" "$virtiofsd" "$peer_init"; do
    [ -x "$f" ] || [ -r "$f" ] || { echo "[bench] missing $f" >&2; exit 1; }
done
memory=512M
# Outside /tmp: both guests get a tmpfs of their own there.
mkdir -p "$repo/target/scratch"
work=$(mktemp -d "$repo/target/scratch/bench-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

ferry_once() {
    local t0 t1
    t0=$(now_ms)
    "$ferry" run --kernel "$kernel" --memory "$memory" --cpus 1 -- true ||
        { echo "[bench] ferry run failed ($?)" >&2; exit 1; }
    t1=$(now_ms)
    echo $((t1 - t0))
}

wait_socket() {
    local i
    for i in $(seq 1 500); do
        [ -S "$1" ] && return 0
        sleep 0.01
    done
    echo "[bench] virtiofsd never made $1" >&2
    exit 1
}

peer_once() {
    local t0 t1 status sock_root="$work/root.sock" sock_cwd="$work/cwd.sock"
    rm -f "$sock_root" "$sock_cwd"
    t0=$(now_ms)
    "$virtiofsd" --socket-path="$sock_root" --shared-dir=/ --cache=auto --readonly \
        --log-level=error &
    local root_pid=$!
    "$virtiofsd" --socket-path="$sock_cwd" --shared-dir="$work" --cache=auto \
        --log-level=error &
    local cwd_pid=$!
    wait_socket "$sock_root"
    wait_socket "$sock_cwd"
    set +e
    qemu-system-x86_64 -enable-kvm -cpu host -M pc -m "$memory" -smp 1 \
        -nodefaults -no-user-config -display none -no-reboot \
        -serial file:"$work/peer-console.log" \
        -object memory-backend-memfd,id=mem,size="$memory",share=on -numa node,memdev=mem \
        -chardev socket,id=root,path="$sock_root" -device vhost-user-fs-pci,chardev=root,tag=root \
        -chardev socket,id=cwd,path="$sock_cwd" -device vhost-user-fs-pci,chardev=cwd,tag=cwd \
        -device isa-debug-exit,iobase=0xf4,iosize=1 \
        -kernel "$kernel" \
        -append "console=ttyS0 quiet reboot=k panic=-1 root=root rootfstype=virtiofs ro init=$peer_init peer_cmd=true peer_cwd=$work"
    status=$?
    set -e
    t1=$(now_ms)
    kill "$root_pid" "$cwd_pid" 2>/dev/null || true
    wait "$root_pid" "$cwd_pid" 2>/dev/null || true
    # isa-debug-exit: QEMU exits with (status << 1) | 1; `true` gives 1.
    if [ "$status" != 1 ]; then
        echo "[bench] the peer guest failed (QEMU exit $status); its console:" >&2
        tail -20 "$work/peer-console.log" >&2
        exit 1
    fi
    echo $((t1 - t0))
}

stats() { # numbers on stdin -> "median min max"
    sort -n | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%d %d %d\n", m, v[1], v[NR] }'
}

echo "[bench] warming up (page cache, one run each)" >&2
ferry_once >/dev/null
peer_once >/dev/null
ferry_times=() peer_times=()
for r in $(seq 1 "$rounds"); do
    ferry_times+=("$(ferry_once)")
    peer_times+=("$(peer_once)")
    echo "[bench] round $r/$rounds: ferry ${ferry_times[-1]} ms, qemu+virtiofsd ${peer_times[-1]} ms" >&2
done
read -r fm fmin fmax < <(printf '%s\n' "${ferry_times[@]}" | stats)
read -r pm pmin pmax < <(printf '%s\n' "${peer_times[@]}" | stats)
ratio=$(awk -v f="$fm" -v p="$pm" 'BEGIN { printf "%.2f", p / f }')
echo
echo "\`run -- true\`, end to end, $rounds rounds, 1 vCPU, $memory, mode ${FERRY_BENCH_MODE:-direct}"
echo
echo "| | median | min–max |"
echo "| --- | --- | --- |"
echo "| ferry run | $fm ms | $fmin–$fmax ms |"
echo "| QEMU + 2 virtiofsd | $pm ms | $pmin–$pmax ms |"
echo "| peer / ferry | ${ratio}x | |"
