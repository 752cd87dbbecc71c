#!/usr/bin/env bash
# Builds Ferry's guest kernel (bzImage + vmlinux) from Debian's linux-source-6.12
# with resources/kernel.config applied on top of allnoconfig.
#
# The result is cached in $FERRY_CACHE (default ~/.cache/ferry), keyed by a hash
# of the fragment, this script and the source package version, so it is built
# once per machine. target/guest/{bzImage,vmlinux} link to the cached files.
# Prints the directory holding the kernel on its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
fragment="$here/kernel.config"
tarball=/usr/src/linux-source-6.12.tar.xz
log() { printf '[kernel] %s\n' "$*" >&2; }

[ -r "$tarball" ] || { log "error: $tarball missing (apt-get install linux-source-6.12, or run resources/install-deps.sh)"; exit 1; }
version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$(cat "$fragment" "$0" <(echo "$version") | sha256sum | cut -c1-16)
cache=${FERRY_CACHE:-$HOME/.cache/ferry}
out="$cache/kernel-$key"

link_into_target() {
    mkdir -p "$repo/target/guest"
    ln -sfn "$out/bzImage" "$repo/target/guest/bzImage"
    ln -sfn "$out/vmlinux" "$repo/target/guest/vmlinux"
}

if [ -s "$out/bzImage" ] && [ -s "$out/vmlinux" ]; then
    log "cached: $out (key $key)"
    link_into_target
    echo "$out"
    exit 0
fi

build="$cache/build-$key"
# Leftovers of an interrupted or failed build are of no use.
rm -rf "$cache"/build-*
mkdir -p "$build"
log "extracting linux-source $version"
tar -xf "$tarball" -C "$build" --strip-components=1

log "configuring: allnoconfig + $(basename "$fragment")"
make -C "$build" -s KCONFIG_ALLCONFIG="$fragment" allnoconfig >/dev/null

# kconfig drops options with unmet dependencies without a word: check each one.
missing=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    if ! grep -qxF "$line" "$build/.config"; then
        log "error: '$line' did not survive configuration"
        missing=1
    fi
done < "$fragment"
[ "$missing" = 0 ] || exit 1

jobs=$(nproc)
log "building bzImage and vmlinux with make -j$jobs (a few minutes on 2 cores)"
start=$SECONDS
count=0
make -C "$build" -j"$jobs" bzImage 2>&1 | tee "$build/build.log" | while IFS= read -r line; do
    case "$line" in
        *" CC "*|*" AS "*|*" LD "*|*" AR "*) count=$((count + 1))
            if [ $((count % 200)) = 0 ]; then log "$count steps done ($((SECONDS - start)) s)"; fi ;;
    esac
done
if [ ! -s "$build/arch/x86/boot/bzImage" ]; then
    tail -n 40 "$build/build.log" >&2
    log "error: build failed (log: $build/build.log)"
    exit 1
fi

mkdir -p "$out.tmp"
cp "$build/arch/x86/boot/bzImage" "$build/vmlinux" "$build/.config" "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$build"
log "built in $((SECONDS - start)) s: $out"
link_into_target
echo "$out"
