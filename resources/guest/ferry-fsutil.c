/* File-system calls busybox lacks, for Ferry's guest tests:
 *   ferry-fsutil setxattr PATH NAME VALUE | getxattr PATH NAME | listxattr PATH
 *              | removexattr PATH NAME | fsync PATH | flock PATH | statfs PATH
 *              | byhandle PATH   (name_to_handle_at + open_by_handle_at, then a
 *                                 forged handle on the same mount)
 *              | rename OLD NEW  (rename(2) itself: busybox mv copies on EXDEV)
 *              | as UID GID CMD [ARGS]  (runs CMD as UID:GID, no other groups;
 *                                 busybox's setpriv cannot change ids)
 * A setxattr VALUE that starts with 0x is hex (binary values such as
 * security.capability hold NUL bytes).
 * Prints results on stdout; exits non-zero with the errno text on failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <unistd.h>

/* Decodes "0x..." hex into buf; returns the length, or -1. */
static ssize_t hex_value(const char *s, char *buf, size_t size)
{
    size_t n = 0;
    unsigned int byte;

    for (s += 2; s[0] && s[1]; s += 2) {
        if (n == size || sscanf(s, "%2x", &byte) != 1)
            return -1;
        buf[n++] = (char)byte;
    }
    return s[0] ? -1 : (ssize_t)n;
}

static int fail(const char *what)
{
    printf("error %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    char buf[4096];
    ssize_t n;

    if (argc < 3) {
        fprintf(stderr, "usage: ferry-fsutil OP PATH [ARGS]\n");
        return 2;
    }
    const char *op = argv[1], *path = argv[2];
    if (!strcmp(op, "as") && argc >= 5) {
        uid_t uid = (uid_t)strtoul(argv[2], NULL, 10);
        gid_t gid = (gid_t)strtoul(argv[3], NULL, 10);
        if (setgroups(0, NULL) || setresgid(gid, gid, gid) || setresuid(uid, uid, uid))
            return fail("as");
        execvp(argv[4], argv + 4);
        return fail("exec");
    }
    if (!strcmp(op, "setxattr") && argc == 5) {
        const char *value = argv[4];
        size_t len = strlen(value);
        if (!strncmp(value, "0x", 2)) {
            n = hex_value(value, buf, sizeof(buf));
            if (n < 0) {
                fprintf(stderr, "ferry-fsutil: bad hex value\n");
                return 2;
            }
            value = buf;
            len = (size_t)n;
        }
        if (setxattr(path, argv[3], value, len, 0))
            return fail("setxattr");
    } else if (!strcmp(op, "getxattr") && argc == 4) {
        n = getxattr(path, argv[3], buf, sizeof(buf) - 1);
        if (n < 0)
            return fail("getxattr");
        buf[n] = 0;
        printf("%s\n", buf);
    } else if (!strcmp(op, "listxattr")) {
        n = listxattr(path, buf, sizeof(buf));
        if (n < 0)
            return fail("listxattr");
        for (char *p = buf; p < buf + n; p += strlen(p) + 1)
            printf("%s\n", p);
    } else if (!strcmp(op, "removexattr") && argc == 4) {
        if (removexattr(path, argv[3]))
            return fail("removexattr");
    } else if (!strcmp(op, "rename") && argc == 4) {
        if (rename(path, argv[3]))
            return fail("rename");
        printf("rename ok\n");
    } else if (!strcmp(op, "fsync")) {
        int fd = open(path, O_RDWR);
        if (fd < 0 || fsync(fd))
            return fail("fsync");
        printf("fsync ok\n");
    } else if (!strcmp(op, "flock")) {
        int a = open(path, O_RDONLY), b = open(path, O_RDONLY);
        if (a < 0 || b < 0 || flock(a, LOCK_EX | LOCK_NB))
            return fail("flock");
        /* A second open file description must now be refused. */
        if (flock(b, LOCK_EX | LOCK_NB) == 0)
            printf("flock not exclusive\n");
        else if (errno == EWOULDBLOCK)
            printf("flock exclusive\n");
        else
            return fail("second flock");
        flock(a, LOCK_UN);
        if (flock(b, LOCK_EX | LOCK_NB))
            return fail("flock after unlock");
        printf("flock released\n");
    } else if (!strcmp(op, "statfs")) {
        struct statfs s;
        if (statfs(path, &s))
            return fail("statfs");
        printf("bsize=%ld blocks=%llu bfree=%llu files=%llu\n", (long)s.f_bsize,
               (unsigned long long)s.f_blocks, (unsigned long long)s.f_bfree,
               (unsigned long long)s.f_files);
    } else if (!strcmp(op, "byhandle")) {
        /* Its own handle may open (the guest can reach PATH anyway). Exits
         * 0 only if a forged handle opened something: an escape route. */
        struct file_handle *h = malloc(sizeof(*h) + MAX_HANDLE_SZ);
        int mount_id;
        h->handle_bytes = MAX_HANDLE_SZ;
        int mfd = open(path, O_RDONLY);
        if (mfd < 0)
            return fail("open");
        if (name_to_handle_at(AT_FDCWD, path, h, &mount_id, 0) == 0) {
            int fd = open_by_handle_at(mfd, h, O_RDONLY);
            printf("own handle (type %#x): %s\n", h->handle_type,
                   fd >= 0 ? "opened" : strerror(errno));
        } else {
            printf("name_to_handle_at: %s\n", strerror(errno));
        }
        /* FUSE's handle layout (type 0x81: nodeid high, low, generation)
         * with node ids the guest was never given. */
        static const unsigned nodeids[] = {0xdeadbeef, 0x7fffffff, 0x100000};
        int opened = 0;
        for (unsigned i = 0; i < sizeof(nodeids) / sizeof(nodeids[0]); i++) {
            unsigned words[3] = {0, nodeids[i], 0};
            h->handle_bytes = sizeof(words);
            h->handle_type = 0x81;
            memcpy(h->f_handle, words, sizeof(words));
            int fd = open_by_handle_at(mfd, h, O_RDONLY);
            printf("forged handle for node %#x: %s\n", nodeids[i],
                   fd >= 0 ? "opened" : strerror(errno));
            opened |= fd >= 0;
        }
        return opened ? 0 : 1;
    } else {
        fprintf(stderr, "ferry-fsutil: bad arguments\n");
        return 2;
    }
    return 0;
}
