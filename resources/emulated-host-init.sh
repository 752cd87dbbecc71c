#!/bin/bash
# PID 1 of the emulated KVM host (see emulated-host.sh): mount what a Linux
# userland needs on top of the read-only host root, run the job, record its
# status and power off through QEMU's isa-debug-exit port.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
for d in /tmp /run /var/tmp; do mount -t tmpfs tmpfs "$d"; done
[ "${ferry_plain_console:-0}" = 1 ] && stty -onlcr
# The repository again, in case it lies under one of those tmpfs mounts.
mkdir -p "$ferry_repo" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro ferryrepo "$ferry_repo"
# Writable scratch space outside /tmp, /run and /var/tmp (which `ferry run`
# guests replace with their own tmpfs), for tests and benchmarks.
if [ -d /mnt ] && mount -t tmpfs tmpfs /mnt; then
    export FERRY_TEST_SCRATCH=/mnt
fi
mkdir -p /run/job
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ferryjob /run/job

if [ ! -c /dev/kvm ]; then
    echo "emulated-host: no /dev/kvm inside the emulated host (does QEMU's -cpu max offer SVM here?)"
    status=1
else
    bash /run/job/job.sh &
    job=$!
    # The watchdog: a command past its time gets its blocked tasks and
    # process list printed, then is killed, so a hang fails the run with
    # evidence instead of stalling it (emulated-host.sh bounds QEMU too,
    # for an emulated host that stops altogether).
    case "${ferry_timeout:-0}" in
    0 | *[!0-9]*) ;;
    *)
        (
            sleep "$ferry_timeout"
            # Through the kernel log, all of it to the console: that path
            # does not wait for the tty, so it shows even when console
            # writers are stuck (a blocked task list at the default quiet
            # loglevel would print only its header). Builtins only so far:
            # no exec that could wait on the 9p root.
            echo 8 > /proc/sys/kernel/printk
            echo "emulated-host: the command ran past $ferry_timeout s (FERRY_EMU_TIMEOUT); blocked tasks and processes follow, then it is killed" > /dev/kmsg
            # Most telling first (a CI log may be shown by its tail): the
            # processes, naming the guest that hangs. ps reads each
            # process's command line, which waits for a process's mmap
            # lock: bounded, as is the write to the console, so the kill
            # below comes.
            timeout -s KILL 20 ps -ww --ppid 2 -p 2 --deselect -o pid,stat,etime,wchan:24,args
            # The kernel's messages so far (soft lockups, say), then the
            # blocked tasks.
            timeout -s KILL 20 sh -c 'dmesg | tail -n 200'
            echo w > /proc/sysrq-trigger
            # The job has no process group of its own (no job control):
            # its children end with the power-off that follows.
            kill -KILL "$job" 2>/dev/null
        ) &
        ;;
    esac
    wait "$job"
    status=$?
fi
echo "$status" > /run/job/status
sync
"$ferry_exit" "$status"
# Should not get here: QEMU leaves on the write above.
echo b > /proc/sysrq-trigger 2>/dev/null
sleep 1000000
