/* mmap tools for Ferry's DAX tests (guest side):
 *   ferry-dax cat PATH                  write the file to stdout through mmap
 *   ferry-dax poke PATH OFFSET TEXT     store TEXT through a shared mapping, msync
 *   ferry-dax copy SRC DST              write(2) SRC's mapping into DST: the
 *                                       buffer handed to the FUSE server is
 *                                       itself a DAX mapping
 *   ferry-dax wait PATH OFFSET TEXT SEC poll one mapping until TEXT shows there
 *   ferry-dax spin PATH SEC [write]     read a mapping over and over; count
 *                                       SIGBUS and zero pages (host truncation);
 *                                       with "write", store to every page too
 * wait and spin create PATH.mapped once their mapping is in use, so a host
 * side test knows when to act.
 *   ferry-dax fuzz PATH SEED OPS [MIB]  random read/write/mmap/truncate/fsync
 *                                       on a file of up to MIB MiB (8)
 *                                       checked against an in-memory model
 *                                       (FERRY_DAX_RETRY_BUSY=1: retry EBUSY)
 *   ferry-dax bench PATH                sequential read(2) and mmap read
 *                                       throughput, guest caches dropped first
 * Exits 0 on success; failures print a line starting with "error". */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what)
{
    printf("error %s: %s\n", what, strerror(errno));
    return 1;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *map_file(const char *path, int writable, size_t *len)
{
    int fd = open(path, writable ? O_RDWR : O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st))
        return NULL;
    *len = st.st_size;
    void *p = mmap(NULL, st.st_size ? st.st_size : 1,
                   writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

static int cmd_cat(const char *path)
{
    size_t len;
    char *p = map_file(path, 0, &len);
    if (!p)
        return fail("mmap");
    for (size_t done = 0; done < len;) {
        ssize_t n = write(1, p + done, len - done);
        if (n <= 0)
            return fail("write");
        done += n;
    }
    return 0;
}

static int cmd_poke(const char *path, size_t off, const char *text)
{
    size_t len, n = strlen(text);
    char *p = map_file(path, 1, &len);
    if (!p)
        return fail("mmap");
    if (off + n > len) {
        printf("error poke: past the end of the file\n");
        return 1;
    }
    memcpy(p + off, text, n);
    if (msync(p, len, MS_SYNC))
        return fail("msync");
    return 0;
}

/* Tells the host side that PATH's mapping is in use. */
static void signal_mapped(const char *path)
{
    char name[4096];
    snprintf(name, sizeof(name), "%s.mapped", path);
    close(open(name, O_WRONLY | O_CREAT, 0644));
}

static int cmd_copy(const char *src, const char *dst)
{
    size_t len;
    char *p = map_file(src, 0, &len);
    if (!p)
        return fail("mmap");
    int fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fail("open");
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, p + done, len - done);
        if (n <= 0)
            return fail("write");
        done += n;
    }
    if (close(fd))
        return fail("close");
    return 0;
}

static int cmd_wait(const char *path, size_t off, const char *text, double secs)
{
    size_t len, n = strlen(text);
    volatile char *p = map_file(path, 0, &len);
    if (!p)
        return fail("mmap");
    if (off + n > len) {
        printf("error wait: past the end of the file\n");
        return 1;
    }
    signal_mapped(path);
    for (double end = now() + secs; now() < end; usleep(20000)) {
        size_t i = 0;
        while (i < n && p[off + i] == text[i])
            i++;
        if (i == n) {
            printf("seen %s\n", text);
            return 0;
        }
    }
    printf("error wait: '%s' never showed through the mapping\n", text);
    return 1;
}

static sigjmp_buf bus_jump;

static void on_sigbus(int sig)
{
    (void)sig;
    siglongjmp(bus_jump, 1);
}

static int cmd_spin(const char *path, double secs, int write)
{
    size_t len;
    volatile unsigned char *p = map_file(path, write, &len);
    if (!p)
        return fail("mmap");
    signal(SIGBUS, on_sigbus);
    unsigned long rounds = 0, sigbus = 0, zero_pages = 0;
    for (double end = now() + secs; now() < end; rounds++) {
        if (rounds == 1)
            signal_mapped(path);
        for (volatile size_t off = 0; off < len; off += 4096) {
            if (sigsetjmp(bus_jump, 1)) {
                sigbus++;
                break;
            }
            if (p[off] == 0)
                zero_pages++;
            if (write)
                p[off] = (unsigned char)(rounds | 1);
        }
    }
    printf("spin done rounds=%lu sigbus=%lu zero-pages=%lu\n", rounds, sigbus, zero_pages);
    return 0;
}

/* ---- fuzz ---- */

#define FUZZ_IO (64u << 10)

/* The file's largest size: 8 MiB (four 2 MiB DAX ranges) unless given. */
static size_t fuzz_max = 8u << 20;

static uint64_t rng;
static unsigned char *model, *buf;
static size_t model_size;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static size_t below(size_t n)
{
    return n ? next() % n : 0;
}

static void fill(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = next() >> 24;
}

static int mismatch(unsigned long op, const char *how, size_t off, const unsigned char *got,
                    size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != model[off + i]) {
            printf("error fuzz op %lu (%s): byte %zu is %02x, model says %02x\n", op, how,
                   off + i, got[i], model[off + i]);
            return 1;
        }
    return 0;
}

/* The guest kernel's DAX reclaim refuses a read or write with EBUSY when
 * it cannot take back the one range it needs (fs/fuse/dax.c:
 * dmap_writeback_invalidate), which small windows under files larger than
 * them meet now and then. A call that spans 2 MiB ranges and meets it
 * after the first range returns what it moved so far: a short transfer,
 * not -1 (seen in CI: pread 18311@10481972 returned 3788, the bytes up to
 * the range boundary at 10 MiB). With FERRY_DAX_RETRY_BUSY=1 in the
 * environment such a call is retried, 10 ms apart, up to 100 times, and a
 * short one goes on from where it stopped; both are counted, so the run
 * checks the data under that pressure instead of ending there. Without it,
 * either ends the run: the default window never reclaims. */
static int retry_busy;
static unsigned long busy, resumed;

static ssize_t io_retrying(int write, int fd, void *p, size_t n, size_t off)
{
    size_t done = 0;
    for (int tries = 0;; tries++) {
        char *at = (char *)p + done;
        ssize_t got = write ? pwrite(fd, at, n - done, off + done)
                            : pread(fd, at, n - done, off + done);
        if (got > 0)
            done += (size_t)got;
        if (!retry_busy || tries == 100)
            return got < 0 && !done ? got : (ssize_t)done;
        if (got == 0 || done == n || (got < 0 && errno != EBUSY))
            return got < 0 && !done ? got : (ssize_t)done;
        if (got > 0) {
            resumed++;
        } else {
            busy++;
            usleep(10000);
        }
    }
}

/* Reads [off, off + n) with pread and compares it with the model. */
static int check_pread(int fd, unsigned long op, size_t off, size_t n)
{
    if (n == 0)
        return 0;
    ssize_t got = io_retrying(0, fd, buf, n, off);
    if (got != (ssize_t)n) {
        printf("error fuzz op %lu: pread %zu@%zu returned %zd (%s)\n", op, n, off, got,
               strerror(errno));
        return 1;
    }
    return mismatch(op, "pread", off, buf, n);
}

/* The same through a fresh mapping. */
static int check_mmap(int fd, unsigned long op, size_t off, size_t n)
{
    if (n == 0)
        return 0;
    size_t start = off & ~4095ul, len = off + n - start;
    unsigned char *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, start);
    if (p == MAP_FAILED)
        return fail("fuzz mmap");
    int bad = mismatch(op, "mmap load", off, p + (off - start), n);
    munmap(p, len);
    return bad;
}

static int check_size(int fd, unsigned long op)
{
    struct stat st;
    if (fstat(fd, &st))
        return fail("fstat");
    if ((size_t)st.st_size != model_size) {
        printf("error fuzz op %lu: size %lld, model says %zu\n", op, (long long)st.st_size,
               model_size);
        return 1;
    }
    return 0;
}

static int cmd_fuzz(const char *path, uint64_t seed, unsigned long ops, size_t max_mib)
{
    rng = seed | 1;
    const char *retry = getenv("FERRY_DAX_RETRY_BUSY");
    retry_busy = retry && !strcmp(retry, "1");
    if (max_mib)
        fuzz_max = max_mib << 20;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    model = calloc(fuzz_max, 1);
    buf = malloc(fuzz_max);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (!model || !buf || fd < 0)
        return fail("fuzz setup");
    unsigned long counts[6] = {0};
    for (unsigned long op = 0; op < ops; op++) {
        int kind = below(6);
        size_t off, n;
        counts[kind]++;
        switch (kind) {
        case 0: /* write */
            n = 1 + below(FUZZ_IO);
            off = below(fuzz_max - n);
            fill(model + off, n);
            if (io_retrying(1, fd, model + off, n, off) != (ssize_t)n)
                return fail("fuzz pwrite");
            if (off + n > model_size)
                model_size = off + n;
            if (check_mmap(fd, op, off, n))
                return 1;
            break;
        case 1: /* read */
            off = below(model_size);
            n = below(model_size - off < FUZZ_IO ? model_size - off : FUZZ_IO) + 1;
            if (model_size && check_pread(fd, op, off, n))
                return 1;
            break;
        case 2: /* mmap load */
            off = below(model_size);
            n = below(model_size - off < FUZZ_IO ? model_size - off : FUZZ_IO) + 1;
            if (model_size && check_mmap(fd, op, off, n))
                return 1;
            break;
        case 3: { /* mmap store, inside the file */
            if (!model_size)
                break;
            off = below(model_size);
            n = 1 + below(model_size - off < FUZZ_IO ? model_size - off : FUZZ_IO);
            size_t start = off & ~4095ul, len = off + n - start;
            unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, start);
            if (p == MAP_FAILED)
                return fail("fuzz mmap store");
            fill(model + off, n);
            memcpy(p + (off - start), model + off, n);
            if (below(2) && msync(p, len, MS_SYNC))
                return fail("fuzz msync");
            munmap(p, len);
            if (check_pread(fd, op, off, n))
                return 1;
            break;
        }
        case 4: /* truncate */
            n = below(4) ? below(fuzz_max) : below(8192);
            if (ftruncate(fd, n))
                return fail("fuzz ftruncate");
            /* Past the end the model stays zero, as a later hole reads. */
            if (n < model_size)
                memset(model + n, 0, model_size - n);
            model_size = n;
            /* The bytes around the new end: the tail of the last page. */
            off = n > 4096 ? n - 4096 : 0;
            if (check_pread(fd, op, off, n - off) || check_mmap(fd, op, off, n - off))
                return 1;
            break;
        case 5:
            if (below(2) ? fsync(fd) : fdatasync(fd))
                return fail("fuzz fsync");
            break;
        }
        if (check_size(fd, op))
            return 1;
        if (op % 512 == 511 && (check_pread(fd, op, 0, model_size) ||
                                check_mmap(fd, op, 0, model_size)))
            return 1;
        /* Progress, so a run that stops shows where (stderr: unbuffered). */
        if (op % 2000 == 1999) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            fprintf(stderr, "fuzz progress ops=%lu seconds=%ld\n", op + 1,
                    (long)(t.tv_sec - t0.tv_sec));
        }
    }
    if (check_pread(fd, ops, 0, model_size) || fsync(fd))
        return 1;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (size_t i = 0; i < model_size; i++)
        h = (h ^ model[i]) * 0x100000001b3ull;
    printf("fuzz ok ops=%lu write=%lu read=%lu load=%lu store=%lu truncate=%lu fsync=%lu "
           "busy=%lu resumed=%lu size=%zu fnv=%016llx\n",
           ops, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], busy,
           resumed, model_size, (unsigned long long)h);
    return 0;
}

/* ---- bench ---- */

static void drop_caches(void)
{
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    sync();
    if (fd >= 0) {
        if (write(fd, "3", 1) < 0)
            perror("drop_caches");
        close(fd);
    }
}

static int cmd_bench(const char *path)
{
    static char chunk[1 << 20];
    size_t total = 0;
    drop_caches();
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open");
    double t0 = now();
    for (ssize_t n; (n = read(fd, chunk, sizeof(chunk))) > 0;)
        total += n;
    double seq = now() - t0;
    close(fd);

    drop_caches();
    size_t len;
    t0 = now();
    const volatile uint64_t *p = map_file(path, 0, &len);
    if (!p)
        return fail("mmap");
    uint64_t sum = 0;
    for (size_t i = 0; i < len / 8; i++)
        sum += p[i];
    double mm = now() - t0;
    printf("bench bytes=%zu seq-read-mbps=%.1f mmap-read-mbps=%.1f (checksum %llx)\n", total,
           total / seq / 1e6, len / mm / 1e6, (unsigned long long)sum);
    return total == len ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *op = argc > 1 ? argv[1] : "";
    if (!strcmp(op, "cat") && argc == 3)
        return cmd_cat(argv[2]);
    if (!strcmp(op, "poke") && argc == 5)
        return cmd_poke(argv[2], strtoull(argv[3], NULL, 0), argv[4]);
    if (!strcmp(op, "copy") && argc == 4)
        return cmd_copy(argv[2], argv[3]);
    if (!strcmp(op, "wait") && argc == 6)
        return cmd_wait(argv[2], strtoull(argv[3], NULL, 0), argv[4], atof(argv[5]));
    if (!strcmp(op, "spin") && (argc == 4 || argc == 5))
        return cmd_spin(argv[2], atof(argv[3]), argc == 5 && !strcmp(argv[4], "write"));
    if (!strcmp(op, "fuzz") && (argc == 5 || argc == 6))
        return cmd_fuzz(argv[2], strtoull(argv[3], NULL, 0), strtoul(argv[4], NULL, 0),
                        argc == 6 ? strtoul(argv[5], NULL, 0) : 0);
    if (!strcmp(op, "bench") && argc == 3)
        return cmd_bench(argv[2]);
    fprintf(stderr, "usage: ferry-dax cat|poke|wait|spin|fuzz|bench ... (see the source)\n");
    return 2;
}
