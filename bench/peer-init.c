/*
 * The peer's guest init for bench/run.sh: what `ferry run`'s init does, for
 * a QEMU + virtiofsd guest booted the way virtme-ng and vmtest boot one
 * (the host's / as a read-only virtiofs root, the working directory as a
 * second, writable share). It mounts the same file systems, brings lo up,
 * runs the command given as `peer_cmd=` (one word, from the kernel command
 * line) in `peer_cwd=`, syncs, prints `peer-init: status N` on the console
 * and reboots (QEMU runs with -no-reboot, so it exits). Port I/O to QEMU's
 * isa-debug-exit raised #GP in this nested guest despite ioperm(), so the
 * status travels on the console instead.
 *
 * A compiled init, as virtme-ng's is: a shell script would add a fork and
 * exec per mount and make the peer look slower than it is.
 */
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int status)
{
    sync();
    printf("peer-init: status %d\n", status);
    fflush(stdout);
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();
}

static void mnt(const char *src, const char *at, const char *type, unsigned long flags,
                const char *data)
{
    mkdir(at, 0755);
    if (mount(src, at, type, flags, data) != 0) {
        fprintf(stderr, "peer-init: mount %s at %s: %s\n", type, at, strerror(errno));
        leave(125);
    }
}

int main(void)
{
    const char *cmd = getenv("peer_cmd");
    const char *cwd = getenv("peer_cwd");
    if (!cmd || !cwd) {
        fprintf(stderr, "peer-init: peer_cmd= and peer_cwd= are needed\n");
        leave(125);
    }
    mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
    mnt("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
    mnt("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666");
    mnt("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mnt("tmpfs", "/var/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mnt("cwd", cwd, "virtiofs", 0, "");
    sethostname("peer", 4);

    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq req = {0};
    strcpy(req.ifr_name, "lo");
    if (s >= 0 && ioctl(s, SIOCGIFFLAGS, &req) == 0) {
        req.ifr_flags |= IFF_UP;
        ioctl(s, SIOCSIFFLAGS, &req);
    }

    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (chdir(cwd) != 0)
            _exit(125);
        execlp(cmd, cmd, (char *)NULL);
        _exit(errno == ENOENT ? 127 : 126);
    }
    int status = 125;
    int raw;
    while (pid > 0 && waitpid(-1, &raw, 0) != pid)
        ;
    if (pid > 0)
        status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
    leave(status);
    return 0;
}
