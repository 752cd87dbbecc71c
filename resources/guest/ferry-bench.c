/*
 * ferry-bench: file system workloads timed inside the guest, for
 * bench/bench.sh. Each prints one line `result NAME=VALUE ...` (throughput
 * in MB/s, 1 MB = 10^6 bytes; operations per second; milliseconds).
 *
 *   ferry-bench seqread FILE         cold (guest cache dropped) and warm read
 *   ferry-bench randread FILE N      N random 4 KiB preads, guest cache dropped
 *   ferry-bench seqwrite FILE MIB    write MIB MiB in 1 MiB writes, then fsync
 *   ferry-bench mmapread FILE        touch every byte of a shared mapping
 *   ferry-bench smallfiles DIR N     create+write, stat, unlink N small files
 *   ferry-bench manyfiles DIR N      create N empty files (mknod), then stat
 *                                    each, all held at once (limits tests)
 *   ferry-bench walk DIR             stat every entry of a tree (as find -exec stat)
 *   ferry-bench tcpsend HOST PORT MIB   send MIB MiB to a sink, until it closes
 *   ferry-bench tcprecv HOST PORT       receive from a source until it closes
 *   ferry-bench tcprr HOST PORT N       N one-byte request/response round trips
 *                                    with an echo server (TCP_NODELAY)
 *   (HOST `gw`: the default gateway, from /proc/net/route)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char chunk[1 << 20];

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int fail(const char *what)
{
    fprintf(stderr, "ferry-bench: %s: %s\n", what, strerror(errno));
    return 1;
}

static void drop_caches(void)
{
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "3", 1) != 1)
            fail("drop_caches");
        close(fd);
    }
}

/* Reads the whole file; returns the bytes read, or -1. */
static long long read_all(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    long long total = 0;
    for (ssize_t n; (n = read(fd, chunk, sizeof(chunk))) > 0;)
        total += n;
    close(fd);
    return total;
}

static int cmd_seqread(const char *path)
{
    drop_caches();
    double t0 = now();
    long long cold = read_all(path);
    double t1 = now();
    long long warm = read_all(path);
    double t2 = now();
    if (cold <= 0 || warm != cold)
        return fail("read");
    printf("result cold-read-mbps=%.1f warm-read-mbps=%.1f\n", cold / (t1 - t0) / 1e6,
           warm / (t2 - t1) / 1e6);
    return 0;
}

static int cmd_randread(const char *path, long n)
{
    drop_caches();
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open");
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 4096)
        return fail("fstat");
    uint64_t blocks = st.st_size / 4096, x = 0x9e3779b97f4a7c15ull;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (pread(fd, chunk, 4096, (off_t)(x % blocks) * 4096) != 4096)
            return fail("pread");
    }
    double t = now() - t0;
    close(fd);
    printf("result rand4k-read-iops=%.0f\n", n / t);
    return 0;
}

static int cmd_seqwrite(const char *path, long mib)
{
    memset(chunk, 0x5a, sizeof(chunk));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fail("open");
    double t0 = now();
    for (long i = 0; i < mib; i++)
        if (write(fd, chunk, sizeof(chunk)) != (ssize_t)sizeof(chunk))
            return fail("write");
    if (fsync(fd) != 0)
        return fail("fsync");
    double t = now() - t0;
    close(fd);
    unlink(path);
    printf("result write-fsync-mbps=%.1f\n", mib * (double)sizeof(chunk) / t / 1e6);
    return 0;
}

static int cmd_mmapread(const char *path)
{
    drop_caches();
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open");
    struct stat st;
    if (fstat(fd, &st) != 0)
        return fail("fstat");
    double t0 = now();
    const volatile uint64_t *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return fail("mmap");
    uint64_t sum = 0;
    for (off_t i = 0; i < st.st_size / 8; i++)
        sum += p[i];
    double t = now() - t0;
    printf("result mmap-read-mbps=%.1f (sum %llx)\n", st.st_size / t / 1e6,
           (unsigned long long)sum);
    return 0;
}

static int cmd_smallfiles(const char *dir, long n)
{
    char path[4096];
    struct stat st;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return fail("mkdir");
    double t0 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/f%ld", dir, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, "small file\n", 11) != 11 || close(fd) != 0)
            return fail("create");
    }
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/f%ld", dir, i);
        if (stat(path, &st) != 0)
            return fail("stat");
    }
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/f%ld", dir, i);
        if (unlink(path) != 0)
            return fail("unlink");
    }
    double t = now() - t0;
    rmdir(dir);
    printf("result smallfiles-ms=%.1f\n", t * 1e3);
    return 0;
}

static int cmd_manyfiles(const char *dir, long n)
{
    char path[4096];
    struct stat st;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return fail("mkdir");
    double t0 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/f%ld", dir, i);
        if (mknod(path, S_IFREG | 0644, 0) != 0)
            return fail("mknod");
    }
    double t1 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/f%ld", dir, i);
        if (stat(path, &st) != 0)
            return fail("stat");
    }
    printf("result manyfiles created=%ld create-s=%.1f stat-s=%.1f\n", n, t1 - t0, now() - t1);
    return 0;
}

static long walked;

static int visit(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    struct stat st;
    (void)sb, (void)type, (void)ftw;
    if (lstat(path, &st) == 0)
        walked++;
    return 0;
}

static int cmd_walk(const char *dir)
{
    drop_caches();
    double t0 = now();
    if (nftw(dir, visit, 64, FTW_PHYS) != 0)
        return fail("nftw");
    double t = now() - t0;
    printf("result walk-ms=%.1f (entries %ld)\n", t * 1e3, walked);
    return 0;
}

/* HOST as an IPv4 address; `gw` is the default route's gateway. */
static int host_address(const char *host, struct in_addr *out)
{
    if (strcmp(host, "gw"))
        return inet_pton(AF_INET, host, out) == 1 ? 0 : -1;
    FILE *f = fopen("/proc/net/route", "r");
    if (!f)
        return -1;
    char line[256], dev[64];
    unsigned dst, gw;
    int found = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "%63s %x %x", dev, &dst, &gw) == 3 && dst == 0 && gw) {
            out->s_addr = gw; /* /proc prints it in network order */
            found = 0;
            break;
        }
    fclose(f);
    return found;
}

static int tcp_connect(const char *host, const char *port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(port)) };
    if (host_address(host, &sa.sin_addr)) {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
        return -1;
    return fd;
}

static int cmd_tcpsend(const char *host, const char *port, long mib)
{
    int fd = tcp_connect(host, port);
    if (fd < 0)
        return fail("connect");
    double t0 = now();
    for (long i = 0; i < mib; i++)
        for (size_t off = 0; off < sizeof(chunk);) {
            ssize_t n = write(fd, chunk + off, sizeof(chunk) - off);
            if (n <= 0)
                return fail("send");
            off += n;
        }
    /* Done when the sink has read it all: it closes after our FIN. */
    shutdown(fd, SHUT_WR);
    while (read(fd, chunk, sizeof(chunk)) > 0)
        ;
    double t = now() - t0;
    close(fd);
    printf("result tx-mbps=%.1f\n", mib * 1048576.0 / t / 1e6);
    return 0;
}

static int cmd_tcprecv(const char *host, const char *port)
{
    int fd = tcp_connect(host, port);
    if (fd < 0)
        return fail("connect");
    double t0 = now();
    long long total = 0;
    for (ssize_t n; (n = read(fd, chunk, sizeof(chunk))) > 0;)
        total += n;
    double t = now() - t0;
    close(fd);
    if (total <= 0)
        return fail("receive");
    printf("result rx-mbps=%.1f (bytes %lld)\n", total / t / 1e6, total);
    return 0;
}

static int cmd_tcprr(const char *host, const char *port, long n)
{
    int fd = tcp_connect(host, port);
    if (fd < 0)
        return fail("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char b = 'x';
    double t0 = now();
    for (long i = 0; i < n; i++)
        if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1)
            return fail("round trip");
    double t = now() - t0;
    close(fd);
    printf("result rr-us=%.1f\n", t / n * 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    const char *op = argc > 1 ? argv[1] : "";
    if (!strcmp(op, "seqread") && argc == 3)
        return cmd_seqread(argv[2]);
    if (!strcmp(op, "randread") && argc == 4)
        return cmd_randread(argv[2], atol(argv[3]));
    if (!strcmp(op, "seqwrite") && argc == 4)
        return cmd_seqwrite(argv[2], atol(argv[3]));
    if (!strcmp(op, "mmapread") && argc == 3)
        return cmd_mmapread(argv[2]);
    if (!strcmp(op, "manyfiles") && argc == 4)
        return cmd_manyfiles(argv[2], atol(argv[3]));
    if (!strcmp(op, "smallfiles") && argc == 4)
        return cmd_smallfiles(argv[2], atol(argv[3]));
    if (!strcmp(op, "walk") && argc == 3)
        return cmd_walk(argv[2]);
    if (!strcmp(op, "tcpsend") && argc == 5)
        return cmd_tcpsend(argv[2], argv[3], atol(argv[4]));
    if (!strcmp(op, "tcprecv") && argc == 4)
        return cmd_tcprecv(argv[2], argv[3]);
    if (!strcmp(op, "tcprr") && argc == 5)
        return cmd_tcprr(argv[2], argv[3], atol(argv[4]));
    fprintf(stderr, "usage: ferry-bench seqread|randread|seqwrite|mmapread|smallfiles|manyfiles|walk|"
                    "tcpsend|tcprecv|tcprr ...\n");
    return 2;
}
