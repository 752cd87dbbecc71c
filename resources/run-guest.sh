#!/usr/bin/env bash
# Boots the project guest under Ferry and runs a command in it:
#
#   resources/run-guest.sh [FERRY_ARGS...] [-- GUEST_COMMAND]
#
# The repository's resources/ directory is shared read-only with tag
# "ferry"; the default command mounts it on /mnt and lists it.
#
# Prepares what is missing first. Where this CPU has no vmx/svm, Ferry runs
# inside the emulated KVM host (FERRY_KVM_MODE=direct|emulated overrides).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
"$here/prepare.sh"

ferry_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do ferry_args+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
default_cmd='mount -t virtiofs ferry /mnt && echo "Hello from a Ferry guest ($(uname -sr), $(nproc) CPU). The host directory shared over virtio-fs:" && ls -l /mnt'
guest_cmd="${*:-$default_cmd}"
cmd64=$(printf '%s' "$guest_cmd" | base64 -w0)

set -- "$repo/target/debug/ferry" --kernel "$repo/target/guest/bzImage" \
    --initramfs "$repo/target/guest/initramfs.cpio" \
    --fs "tag=ferry,path=$repo/resources,readonly=on" \
    --cmdline "quiet cmd64=$cmd64" "${ferry_args[@]}"

mode=${FERRY_KVM_MODE:-auto}
if [ "$mode" = auto ]; then
    if grep -qwE 'vmx|svm' /proc/cpuinfo; then mode=direct; else mode=emulated; fi
fi
if [ "$mode" = emulated ]; then
    echo "[run] no vmx/svm on this CPU: running Ferry inside the emulated KVM host" >&2
    exec "$here/emulated-host.sh" "$@"
fi
exec "$@"
