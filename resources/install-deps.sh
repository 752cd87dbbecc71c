#!/usr/bin/env bash
# Installs what building and testing Ferry needs on Debian bookworm: the
# guest kernel's source and build tools, busybox-static and a static libc for
# the initramfs, QEMU for the emulated KVM host, the ACL tools (the
# tests run the host's setfacl/getfacl in a guest) and Debian's packaged
# kernel (`ferry run` is tested with a distribution kernel too; INITRD=No:
# Ferry brings its own initramfs), with xz and zstd to compress its modules
# as other distributions ship them, vim (a full-screen program through
# `ferry run`'s terminal) and passt (`--net user`). Idempotent: does nothing when
# everything is there.
set -euo pipefail

packages=(
    linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev
    xz-utils zstd cpio file busybox-static qemu-system-x86 acl linux-image-amd64 vim-tiny
    passt
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
echo "[deps] installing: ${missing[*]}" >&2
$sudo apt-get update -qq
$sudo env INITRD=No DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
