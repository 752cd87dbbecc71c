#!/usr/bin/env bash
# Prepares the peer Ferry is measured against: QEMU (Debian's
# qemu-system-x86) and virtiofsd (from crates.io, built once per machine into
# $FERRY_CACHE/peer, default ~/.cache/ferry/peer), plus the peer's guest init
# (bench/peer-init.c -> target/bench/peer-init). Prints nothing when all is
# there already.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${FERRY_CACHE:-$HOME/.cache/ferry}
peer="$cache/peer"

need=()
for p in qemu-system-x86 libseccomp-dev libcap-ng-dev pkg-config build-essential time gnuplot-nox python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "[peer] installing: ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x "$peer/bin/virtiofsd" ]; then
    echo "[peer] building virtiofsd from crates.io into $peer (a few minutes, once)" >&2
    cargo install --quiet --locked --root "$peer" virtiofsd
fi
mkdir -p "$repo/target/bench"
init="$repo/target/bench/peer-init"
if [ ! -x "$init" ] || [ "$here/peer-init.c" -nt "$init" ]; then
    gcc -O2 -Wall -o "$init" "$here/peer-init.c"
fi
