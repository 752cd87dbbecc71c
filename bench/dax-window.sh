#!/usr/bin/env bash
# How small a DAX window can be (a measurement, not a test). Runs
# `ferry-dax fuzz` (random read/write/mmap/truncate/fsync checked against a
# model) through windows of several sizes, several seeds each, and counts
# for each window the runs that passed, failed (an error in the guest) or
# hung (no end within the deadline). Files larger than the window make the
# guest take ranges back from them (reclaim) all the time.
# FERRY_DAX_RETRY_BUSY=1 makes the guest retry a read or write the guest
# kernel refused with EBUSY (see ferry-dax.c) and count the retries.
#
#   bench/dax-window.sh [-w "2M 4M 8M 16M"] [-r RUNS] [-o OPS] [-s FILE_MIB]
#                       [-p PROCS] [-j JOBS] [-t DEADLINE_S]
#
#   -w  windows to try (Ferry refuses those below its minimum unless
#       FERRY_DAX_SMALL_WINDOWS is set, which this script does)
#   -r  runs per window (seeds 1..RUNS)          default 5
#   -o  operations per guest process             default 10000
#   -s  largest file size in MiB                 default 8
#   -p  guest processes, each on its own file    default 1
#   -j  VMs at a time                            default nproc/4 (direct), 1
#   -t  seconds before a run counts as hung      default 300
#
# A hung run leaves its evidence in the results folder: the guest's blocked
# tasks (sysrq-w, taken by the guest init's watchdog before the deadline) and
# what each Ferry thread waits in (wchan and kernel stack). If the guest's
# tasks wait for a free DAX range while Ferry's threads sit idle in
# epoll_wait, the guest's reclaim is stuck; a Ferry thread in a futex wait
# points at Ferry. Where this CPU has no vmx/svm, guests run nested in the
# emulated KVM host and are far slower: raise -t.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"

windows="2M 4M 8M 16M" runs=5 ops=10000 mib=8 procs=1 jobs="" deadline=300
while getopts w:r:o:s:p:j:t: opt; do
    case $opt in
        w) windows=$OPTARG ;;
        r) runs=$OPTARG ;;
        o) ops=$OPTARG ;;
        s) mib=$OPTARG ;;
        p) procs=$OPTARG ;;
        j) jobs=$OPTARG ;;
        t) deadline=$OPTARG ;;
        *) sed -n '9,20p' "$0" >&2; exit 2 ;;
    esac
done

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
bench_enter "$0" "$@"
if [ -z "$jobs" ]; then
    jobs=1
    [ "$FERRY_BENCH_MODE" = emulated ] || jobs=$(($(nproc) / 4 > 0 ? $(nproc) / 4 : 1))
fi
export FERRY_DAX_SMALL_WINDOWS=1

out=${FERRY_DAX_WINDOW_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ferry-dax-window.XXXXXX")}
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-dax-window-work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The guest: mount with DAX, run the processes, report each one's end (the
# guest init's ferry_watchdog dumps blocked tasks just before the deadline).
guest_script() { # $1: seed
    local p
    echo "mount -t virtiofs -o dax share /mnt || exit 90"
    echo "export FERRY_DAX_RETRY_BUSY=${FERRY_DAX_RETRY_BUSY:-0}"
    echo "pids="
    for p in $(seq 1 "$procs"); do
        echo "ferry-dax fuzz /mnt/f$p.bin $(($1 * 1000 + 2 * p)) $ops $mib > /tmp/p$p.out 2>&1 & pids=\"\$pids \$!\""
    done
    # One wait per process, to get each one's status.
    echo "rc=0; for pid in \$pids; do wait \$pid || rc=1; done"
    echo "for p in \$(seq 1 $procs); do cat /tmp/p\$p.out; done; exit \$rc"
}

# What every thread of process $1 waits in.
thread_waits() {
    local t
    for t in /proc/"$1"/task/*; do
        echo "--- $(cat "$t/comm" 2>/dev/null) ($(basename "$t")): $(cat "$t/wchan" 2>/dev/null)"
        cat "$t/stack" 2>/dev/null | head -12
    done
}

one_run() { # $1: window, $2: seed; prints "window seed result seconds"
    local w=$1 seed=$2 name="w$1-s$2"
    local dir="$work/$name" log="$out/$name.log"
    mkdir -p "$dir"
    local start=$SECONDS
    "$ferry" --kernel "$kernel" --initramfs "$initramfs" --memory 512M \
        --fs "tag=share,path=$dir,dax=on,cache-size=$w" \
        --cmdline "quiet ferry_watchdog=$((deadline - 20)) cmd64=$(guest_script "$seed" | base64 -w0)" \
        </dev/null >"$log" 2>&1 &
    local pid=$! result
    while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - start)) -lt "$deadline" ]; do
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        # Printed at once as well: a Ferry stuck in the kernel may outlive
        # SIGKILL, and this run's log would then never be shown.
        { echo "=== dax-window: no end after ${deadline}s; Ferry's threads:"; thread_waits "$pid"; } |
            tee -a "$log" | sed "s/^/[$name] /" >&2
        kill -9 "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            { echo "=== dax-window: Ferry survives SIGKILL for 10 s; its threads:"; thread_waits "$pid"; } |
                tee -a "$log" | sed "s/^/[$name] /" >&2
            result=unkillable
        else
            wait "$pid" 2>/dev/null || true
            result=hang
        fi
    elif wait "$pid"; then
        result=ok
    else
        result=fail
    fi
    echo "[dax-window] window $w seed $seed: $result after $((SECONDS - start)) s" \
        "($(grep -c 'fuzz progress' "$log") progress lines," \
        "$(grep -o 'busy=[0-9]*' "$log" | awk -F= '{ n += $2 } END { print n + 0 }') EBUSY retried)" >&2
    if [ "$result" != ok ]; then
        # The evidence, also where $out is not reachable (the emulated
        # KVM host's /tmp is its own).
        tail -n "${FERRY_DAX_WINDOW_TAIL:-150}" "$log" | sed "s/^/[$name] /" >&2
    else
        rm -f "$log"
    fi
    rm -rf "$dir"
    echo "$w $seed $result $((SECONDS - start))"
}

echo "DAX window sizes: ferry-dax fuzz, $procs process(es) x $ops operations on files up to ${mib} MiB, $runs runs per window, $jobs at a time ($FERRY_BENCH_MODE KVM, $(nproc) CPUs, $(uname -r))"
results="$work/results"
: >"$results"
for w in $windows; do
    for seed in $(seq 1 "$runs"); do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
        one_run "$w" "$seed" >>"$results" &
    done
done
wait
printf '%-8s %5s %5s %5s %5s %10s %12s\n' window runs ok fail hang unkillable "median ok s"
for w in $windows; do
    count() { awk -v w="$w" -v r="$1" '$1 == w && (r == "" || $3 == r)' "$results" | wc -l; }
    median=-
    [ "$(count ok)" -eq 0 ] ||
        median=$(awk -v w="$w" '$1 == w && $3 == "ok" { print $4 }' "$results" | stats | cut -d' ' -f1)
    printf '%-8s %5d %5d %5d %5d %10d %12s\n' "$w" "$(count "")" "$(count ok)" "$(count fail)" \
        "$(count hang)" "$(count unkillable)" "$median"
done
if ls "$out"/*.log >/dev/null 2>&1; then
    echo "logs of the runs that did not pass: $out"
fi
