/* File-system calls busybox lacks, for Ferry's guest tests:
 *   ferry-fsutil setxattr PATH NAME VALUE | getxattr PATH NAME | listxattr PATH
 *              | removexattr PATH NAME | fsync PATH | flock PATH | statfs PATH
 * Prints results on stdout; exits non-zero with the errno text on failure. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <unistd.h>

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
    if (!strcmp(op, "setxattr") && argc == 5) {
        if (setxattr(path, argv[3], argv[4], strlen(argv[4]), 0))
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
    } else {
        fprintf(stderr, "ferry-fsutil: bad arguments\n");
        return 2;
    }
    return 0;
}
