#!/usr/bin/env bash
# Runs a command inside an *emulated KVM host*: QEMU TCG with `-cpu max`
# (AMD SVM with nested paging) booting Ferry's own kernel, with this host's
# `/` shared read-only over virtio-9p as its root. There /dev/kvm is a real
# kvm_amd, so Ferry can boot guests even where this CPU has no vmx/svm.
#
#   resources/emulated-host.sh CMD [ARGS...]
#
# The command runs in the same directory with the same environment; /tmp,
# /run and /var/tmp are fresh tmpfs inside, and this repository is mounted
# read-only at its own path on top (so a clone under /tmp works too), and
# /mnt is a fresh tmpfs named by FERRY_TEST_SCRATCH (scratch space outside
# the paths `ferry run` guests replace). Its output streams to the
# console (stdout and stderr merged) and its exit status becomes this
# script's. QEMU writes the console to a file that `tail` copies here, not
# to stdout itself: QEMU's stdio backend, with stdout a slow pipe or file
# and stdin at EOF, can stop draining the emulated UART, which blocks every
# writer to the console inside for good (a CI run of 2026-11-27 froze so:
# the emulated kernel still printed, its processes' writes never returned,
# QEMU sat idle; osbuild and coreos-assembler met the same and moved off
# stdio). Environment: FERRY_EMU_MEMORY (default 6G), FERRY_EMU_CPUS
# (default: this host's CPU count, at least 4: with only 2, guests with 2
# vCPUs under load triple-faulted or took the emulated host down now and
# then; with 4, 10 runs in a row passed), FERRY_EMU_KERNEL (default: the project kernel),
# FERRY_EMU_LOGLEVEL (the emulated host kernel's console loglevel, default 0;
# 4 shows its warnings, such as soft lockups), FERRY_EMU_TIMEOUT (seconds
# the command may run, default 3600, 0 for no bound: past it the emulated
# host prints its blocked tasks and kills the command, and QEMU itself is
# stopped 120 s later if the emulated host no longer answers).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
[ $# -ge 1 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

qemu=$(command -v qemu-system-x86_64 || true)
if [ -z "$qemu" ]; then
    echo "emulated-host: qemu-system-x86_64 not found (apt-get install qemu-system-x86, or run resources/install-deps.sh)" >&2
    exit 1
fi
kernel=${FERRY_EMU_KERNEL:-$repo/target/guest/bzImage}
if [ ! -r "$kernel" ]; then
    echo "emulated-host: kernel $kernel not found (run resources/build-kernel.sh)" >&2
    exit 1
fi
exit_helper=$repo/target/guest/ferry-exit
if [ ! -x "$exit_helper" ]; then
    echo "emulated-host: $exit_helper not found (run resources/build-initramfs.sh)" >&2
    exit 1
fi

emu_cpus=${FERRY_EMU_CPUS:-$(nproc)}
[ -n "${FERRY_EMU_CPUS:-}" ] || [ "$emu_cpus" -ge 4 ] || emu_cpus=4

case "$repo" in
    *[[:space:]]*) echo "emulated-host: the repository path '$repo' contains white space; move it" >&2; exit 1 ;;
esac

job=$(mktemp -d "${TMPDIR:-/tmp}/ferry-emu.XXXXXX")
sentinel= copier=
# (|| true: under set -e a failing kill of copiers already gone would
# become the script's exit status.)
trap 'kill $sentinel $copier 2>/dev/null || true; rm -rf "$job"' EXIT
{
    echo "cd $(printf %q "$PWD")"
    # The caller's environment, less what only describes this host session.
    export -p | grep -v -E '^declare -x (OLDPWD|PWD|SHLVL|_|TMPDIR|FERRY_TEST_SCRATCH)='
    printf 'exec'
    printf ' %q' "$@"
    echo
} > "$job/job.sh"

cmdline="console=ttyS0 quiet loglevel=${FERRY_EMU_LOGLEVEL:-0} panic=-1 root=hostroot rootfstype=9p"
cmdline+=" rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose ro"
# A network card of its own (QEMU's user mode, restricted: no way out)
# with QEMU's usual addresses, set by the kernel (its DHCP answer has no
# router when restricted), so passt (`--net user`) finds an interface with
# a default route to copy for its guests.
cmdline+=" ip=10.0.2.15::10.0.2.2:255.255.255.0:emuhost:eth0:off"
timeout=${FERRY_EMU_TIMEOUT:-3600}
[[ $timeout =~ ^[0-9]+$ ]] || { echo "emulated-host: FERRY_EMU_TIMEOUT=$timeout: expected seconds" >&2; exit 2; }
timeout=$((10#$timeout))
cmdline+=" init=$here/emulated-host-init.sh ferry_exit=$exit_helper ferry_repo=$repo ferry_timeout=$timeout"
# Output to a pipe or file: plain "\n" line ends, as the command wrote them.
[ -t 1 ] || cmdline+=" ferry_plain_console=1"

bound=()
# --foreground: QEMU stays in the caller's process group, so Ctrl-C still
# reaches it.
[ "$timeout" = 0 ] || bound=(timeout --foreground --kill-after=10 $((timeout + 120)))
console=$job/console
: > "$console"
# The copier ends once the sentinel does, after a last read to the end.
sleep infinity &
sentinel=$!
tail -n +1 -f --pid="$sentinel" "$console" &
copier=$!
set +e
"${bound[@]}" "$qemu" -accel tcg,thread=multi -M pc -cpu max \
    -m "${FERRY_EMU_MEMORY:-6G}" -smp "$emu_cpus" \
    -display none -vga none -no-reboot -monitor none \
    -nic user,model=virtio-net-pci,restrict=on \
    -chardev file,id=console,path="$console" -serial chardev:console \
    -device isa-debug-exit,iobase=0xf4,iosize=1 \
    -kernel "$kernel" -append "$cmdline" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=repo,path="$repo",security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=repo,mount_tag=ferryrepo \
    -fsdev local,id=job,path="$job",security_model=none \
    -device virtio-9p-pci,fsdev=job,mount_tag=ferryjob \
    </dev/null
qemu_status=$?
kill "$sentinel"
wait "$sentinel" 2>/dev/null
wait "$copier"
set -e

if { [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; } && [ "$timeout" != 0 ] && [ ! -s "$job/status" ]; then
    echo "emulated-host: the emulated KVM host stopped answering: QEMU killed after $((timeout + 120)) s (FERRY_EMU_TIMEOUT=$timeout)" >&2
    exit 1
fi
if [ ! -s "$job/status" ]; then
    echo "emulated-host: the emulated KVM host stopped before the command finished (QEMU exit $qemu_status)" >&2
    exit 1
fi
exit "$(cat "$job/status")"
