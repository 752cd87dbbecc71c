#!/usr/bin/env bash
# Builds the guest initramfs: busybox-static, Ferry's /init, the exit-port
# helper, ferry-fsutil (xattr, flock, fsync, statfs for tests), ferry-dax
# (mmap tools and the DAX model checker), ferry-udp (UDP for the network
# tests), ferry-bench (the workloads of bench/bench.sh) and ferry-conform (the differential POSIX suite, also
# kept at target/guest/ferry-conform for its host half), as a newc
# cpio archive at target/guest/initramfs.cpio.
# Prints the archive's path on its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out="$repo/target/guest"
log() { printf '[initramfs] %s\n' "$*" >&2; }

busybox=/bin/busybox
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    log "error: $busybox is missing or not static (apt-get install busybox-static)"
    exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# mktemp makes it 0700: the guest's / must let other users in.
chmod 0755 "$root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,etc,root}
cp "$busybox" "$root/bin/busybox"
install -m 0755 "$here/guest/init" "$root/init"
mkdir -p "$out"
gcc -static -Os -s -o "$out/ferry-exit" "$here/guest/ferry-exit.c"
cp "$out/ferry-exit" "$root/bin/ferry-exit"
gcc -static -Os -s -o "$root/bin/ferry-fsutil" "$here/guest/ferry-fsutil.c"
gcc -static -Os -s -o "$root/bin/ferry-dax" "$here/guest/ferry-dax.c"
gcc -static -Os -s -o "$root/bin/ferry-udp" "$here/guest/ferry-udp.c"
gcc -static -O2 -s -o "$root/bin/ferry-bench" "$here/guest/ferry-bench.c"
gcc -static -O2 -s -o "$out/ferry-conform" "$here/guest/ferry-conform.c"
cp "$out/ferry-conform" "$root/bin/ferry-conform"

mkdir -p "$out"
# Fixed owners and times: the same inputs give the same archive.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --quiet) > "$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
log "built $out/initramfs.cpio ($(stat -c %s "$out/initramfs.cpio") bytes)"
echo "$out/initramfs.cpio"
