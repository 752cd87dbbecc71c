# Shared by the benchmarks in bench/ (sourced, not run). Expects $repo.

# Builds what every benchmark needs, once: the guest kernel and initramfs
# and a release build of Ferry. (The peer is bench/install-peer.sh's.)
bench_prepare() {
    (cd "$repo" && resources/prepare.sh && cargo build --release --quiet -p ferry)
}

# direct (this host's /dev/kvm has vmx/svm) or emulated (the emulated KVM
# host), or what FERRY_KVM_MODE says.
bench_kvm_mode() {
    local mode=${FERRY_KVM_MODE:-auto}
    if [ "$mode" = auto ]; then
        if grep -qwE 'vmx|svm' /proc/cpuinfo; then mode=direct; else mode=emulated; fi
    fi
    echo "$mode"
}

# Prepares, then, where this CPU has no vmx/svm, re-runs the calling script
# ("$@": itself and its arguments) inside the emulated KVM host, as the
# tests do. Inside, or with hardware virtualization, it returns.
bench_enter() {
    [ -z "${FERRY_BENCH_INSIDE:-}" ] || return 0
    bench_prepare
    FERRY_BENCH_MODE=$(bench_kvm_mode)
    export FERRY_BENCH_INSIDE=1 FERRY_BENCH_MODE
    if [ "$FERRY_BENCH_MODE" = emulated ]; then
        echo "[bench] no vmx/svm on this CPU: running inside the emulated KVM host" >&2
        exec "$repo/resources/emulated-host.sh" "$@"
    fi
}

# Benchmarks bound each of their runs themselves and may take hours in
# all: the emulated host's bound on the whole command (made for the tests)
# is off unless asked for.
export FERRY_EMU_TIMEOUT=${FERRY_EMU_TIMEOUT:-0}
cache=${FERRY_CACHE:-$HOME/.cache/ferry}
ferry="$repo/target/release/ferry"
kernel="$repo/target/guest/bzImage"
initramfs="$repo/target/guest/initramfs.cpio"
virtiofsd="$cache/peer/bin/virtiofsd"
peer_init="$repo/target/bench/peer-init"

# virtiofsd's default sandbox needs user and pid namespaces, which the
# emulated KVM host's kernel lacks: chroot (as root) is its fallback there.
peer_sandbox=namespace
[ -e /proc/self/ns/user ] && [ -e /proc/self/ns/pid ] || peer_sandbox=chroot

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Numbers on stdin -> "median min max".
stats() {
    sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%g %g %g\n", m, v[1], v[NR] }'
}

# Starts virtiofsd serving DIR on SOCKET, the standard way (--cache=auto),
# with any further options; waits for its socket. Run as
# `peer_virtiofsd SOCKET DIR [OPTIONS...] &`-free: it backgrounds itself
# and leaves its pid in $peer_pid. With $peer_time set, /usr/bin/time
# records its CPU time and peak RSS there.
peer_virtiofsd() {
    local sock=$1 dir=$2
    shift 2
    rm -f "$sock"
    if [ -n "${peer_time:-}" ]; then
        /usr/bin/time -f '%U %S %M' -o "$peer_time" \
            "$virtiofsd" --socket-path="$sock" --shared-dir="$dir" --cache=auto \
            --sandbox="$peer_sandbox" --log-level=error "$@" &
    else
        "$virtiofsd" --socket-path="$sock" --shared-dir="$dir" --cache=auto \
            --sandbox="$peer_sandbox" --log-level=error "$@" &
    fi
    peer_pid=$!
    local i
    for i in $(seq 1 1000); do
        [ -S "$sock" ] && return 0
        sleep 0.01
    done
    echo "[bench] virtiofsd never made $sock" >&2
    exit 1
}

# QEMU's options for a guest whose memory virtiofsd can share.
peer_qemu_base() {
    local memory=$1
    echo -enable-kvm -cpu host -M pc -m "$memory" -smp 1 -nodefaults -no-user-config \
        -display none -no-reboot \
        -object memory-backend-memfd,id=mem,size="$memory",share=on -numa node,memdev=mem
}
