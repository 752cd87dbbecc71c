#!/usr/bin/env bash
# What POSIX ACLs cost (a benchmark, not a test): the guest workloads that
# touch the most inodes (`smallfiles`: create, stat and unlink small files;
# `walk`: stat every entry of a tree) on a share with `acl=on` (the default)
# and `acl=off`, alternating, in one run. With ACLs on, the guest reads each
# inode's ACL (one GETXATTR) when it first checks a permission and again
# after each attribute timeout, and the server looks for a default ACL on
# the parent of every inode it makes.
#
#   bench/acl.sh [ROUNDS]        (default 3)
#
# Where this CPU has no vmx/svm, guests run nested in the emulated KVM host:
# say so when quoting the figures.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
rounds=${1:-3}

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
bench_enter "$0" "$@"

dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-acl.XXXXXX")
trap 'rm -rf "$dir"' EXIT
# The walk's tree: 20 directories of 500 files, made once on the host.
mkdir -p "$dir/tree" "$dir/work"
for d in $(seq 1 20); do
    mkdir "$dir/tree/d$d"
    (cd "$dir/tree/d$d" && touch $(seq -f 'f%g' 1 500))
done

run() { # $1: acl=on|off, $2: workload; prints its milliseconds
    local cmd out
    case $2 in
        smallfiles) cmd="ferry-bench smallfiles /mnt/work 2000" ;;
        walk) cmd="ferry-bench walk /mnt/tree" ;;
    esac
    out=$("$ferry" --kernel "$kernel" --initramfs "$initramfs" \
        --fs "tag=bench,path=$dir,$1" \
        --cmdline "quiet cmd=\"mount -t virtiofs bench /mnt && $cmd\"" \
        </dev/null 2>&1) || true
    local ms
    ms=$(grep -o "$2-ms=[0-9.]*" <<<"$out" | cut -d= -f2 || true)
    if [ -z "$ms" ]; then
        echo "[bench] $1 $2: no result; guest output:" >&2
        echo "$out" | tail -20 >&2
        exit 1
    fi
    echo "$ms"
}

echo "POSIX ACLs on a share: $rounds rounds, alternating ($(nproc) host CPUs, $(uname -r))"
printf '%-12s %12s %12s %10s\n' "workload" "acl=on ms" "acl=off ms" "on/off"
for w in smallfiles walk; do
    on=() off=()
    for _ in $(seq 1 "$rounds"); do
        on+=("$(run acl=on "$w")")
        off+=("$(run acl=off "$w")")
    done
    m_on=$(printf '%s\n' "${on[@]}" | stats | cut -d' ' -f1)
    m_off=$(printf '%s\n' "${off[@]}" | stats | cut -d' ' -f1)
    awk -v w="$w" -v a="$m_on" -v b="$m_off" \
        'BEGIN { printf "%-12s %12.0f %12.0f %9.2fx\n", w, a, b, a / b }'
done
