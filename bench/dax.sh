#!/usr/bin/env bash
# DAX benchmark (not a test): guest sequential read(2) and mmap read
# throughput of one file, shared with `dax=on` and without DAX, in one run.
#
#   bench/dax.sh [SIZE_MIB]      (default 1024)
#
# The file lives on the host (in the emulated KVM host's memory where this
# CPU has no vmx/svm: figures are then nested-virtualization figures; say
# so when quoting them). The guest drops its caches before each pass; the
# host keeps the file in its page cache, as a shared directory in use would.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
size_mib=${1:-1024}

# shellcheck source=bench/lib.sh
source "$here/lib.sh"
bench_enter "$0" "$@"

dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-dax.XXXXXX")
trap 'rm -rf "$dir"' EXIT
echo "[bench] writing a ${size_mib} MiB file" >&2
head -c "$((size_mib << 20))" /dev/urandom > "$dir/big.bin"

run() { # $1: label, $2: extra --fs options, $3: mount options
    local out
    out=$("$ferry" --kernel "$kernel" \
        --initramfs "$initramfs" --memory 2G \
        --fs "tag=bench,path=$dir$2" \
        --cmdline "quiet cmd=\"mount -t virtiofs $3 bench /mnt && ferry-dax bench /mnt/big.bin\"" \
        </dev/null 2>&1) || true
    local line
    line=$(grep -o 'bench bytes=.*' <<<"$out" || true)
    if [ -z "$line" ]; then
        echo "[bench] $1: no result; guest output:" >&2
        echo "$out" | tail -20 >&2
        exit 1
    fi
    local seq mm
    seq=$(sed -n 's/.*seq-read-mbps=\([0-9.]*\).*/\1/p' <<<"$line")
    mm=$(sed -n 's/.*mmap-read-mbps=\([0-9.]*\).*/\1/p' <<<"$line")
    printf '%-10s %14s %14s\n' "$1" "$seq" "$mm"
    eval "${1//-/_}_seq=$seq ${1//-/_}_mmap=$mm"
}

echo "guest reading a ${size_mib} MiB file on a virtio-fs share ($(nproc) host CPUs, $(uname -r))"
printf '%-10s %14s %14s\n' "share" "read(2) MB/s" "mmap MB/s"
run dax ",dax=on,cache-size=1G" "-o dax"
run no-dax "" ""
awk -v a="$dax_seq" -v b="$no_dax_seq" -v c="$dax_mmap" -v d="$no_dax_mmap" \
    'BEGIN { printf "%-10s %13.2fx %13.2fx\n", "dax/no-dax", a / b, c / d }'
