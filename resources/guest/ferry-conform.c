/* Differential POSIX conformance suite for Ferry's virtio-fs share.
 *
 *   ferry-conform setup DIR [--only PREFIX] [--acl]
 *       (root, host side) creates one fixture directory per case inside the
 *       existing empty DIR, with exact owners, modes, xattrs and mtimes.
 *   ferry-conform run DIR [--only PREFIX] [--acl]
 *       (root, host or guest) runs every case in a forked child that has
 *       switched to the case's persona, and prints one line per case:
 *         CASE <id> <result> | <name>:<TYPE,MODE,UID,GID,NLINK,SIZE,MT[,maj:min]> ...
 *       then "ferry-conform: N cases".
 *
 * The same binary runs on a host directory and inside a guest on a virtio-fs
 * share of an identically prepared directory; a Rust test diffs the outputs,
 * so nothing printed on stdout may depend on times, inodes, devices or pids.
 * <result> is "ok" or the errno name of the first failing syscall, followed
 * by data for ops that return some (data="escaped" or hex=...).  Metadata is
 * taken by the parent, as root, with lstat after the child has finished; MT
 * is "old" while the mtime still equals the fixture's (1000000000.0).
 *
 * Personas: root 0/0 {0}; owner 1000/1000 {1000,2000};
 *           member 1001/1001 {1001,2000}; other 1002/1002 {1002}.
 * Fixtures are owned by 1000:2000 unless a case says otherwise.
 * Exit status: 0 after running (even when cases fail), 1 when setup fails,
 * 2 on usage errors or when a persona switch fails.
 *
 * Build: gcc -static -O2 -Wall -Wextra -o ferry-conform ferry-conform.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

#define FIXTURE_MTIME 1000000000LL
#define UTIME_SET 2000000000LL
#define PERSONA_FAIL 99 /* child exit status: the persona switch failed */

/* ---------------------------------------------------------------- errnos */

static const struct {
    int num;
    const char *name;
} errnames[] = {
#define E(x) { x, #x }
    E(EPERM), E(ENOENT), E(ESRCH), E(EINTR), E(EIO), E(ENXIO), E(E2BIG),
    E(ENOEXEC), E(EBADF), E(ECHILD), E(EAGAIN), E(ENOMEM), E(EACCES),
    E(EFAULT), E(ENOTBLK), E(EBUSY), E(EEXIST), E(EXDEV), E(ENODEV),
    E(ENOTDIR), E(EISDIR), E(EINVAL), E(ENFILE), E(EMFILE), E(ENOTTY),
    E(ETXTBSY), E(EFBIG), E(ENOSPC), E(ESPIPE), E(EROFS), E(EMLINK),
    E(EPIPE), E(EDOM), E(ERANGE), E(EDEADLK), E(ENAMETOOLONG), E(ENOLCK),
    E(ENOSYS), E(ENOTEMPTY), E(ELOOP), E(ENOMSG), E(EIDRM), E(ENODATA),
    E(ENOLINK), E(EPROTO), E(EBADMSG), E(EOVERFLOW), E(EILSEQ), E(EUSERS),
    E(ENOTSOCK), E(EMSGSIZE), E(EOPNOTSUPP), E(ENOTCONN), E(ECONNREFUSED),
    E(ETIMEDOUT), E(ESTALE), E(EDQUOT), E(ECANCELED), E(ENOKEY),
    E(EKEYEXPIRED), E(EKEYREJECTED), E(EKEYREVOKED), E(EUCLEAN),
    E(ENOMEDIUM), E(EREMOTEIO), E(ENOTUNIQ),
#undef E
};

static const char *errname(int e, char *buf, size_t size)
{
    for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
        if (errnames[i].num == e)
            return errnames[i].name;
    snprintf(buf, size, "E%d", e);
    return buf;
}

/* -------------------------------------------------------------- personas */

static const struct persona {
    const char *name;
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[2];
} personas[4] = {
    { "root", 0, 0, 1, { 0 } },
    { "owner", 1000, 1000, 2, { 1000, 2000 } },
    { "member", 1001, 1001, 2, { 1001, 2000 } },
    { "other", 1002, 1002, 1, { 1002 } },
};

/* ----------------------------------------------------------------- cases */

enum op {
    OP_OPEN,     /* open(p1, a, b); reads up to 64 bytes unless O_WRONLY */
    OP_MKDIR,    /* mkdir(p1, b) */
    OP_RMDIR,    /* rmdir(p1) */
    OP_UNLINK,   /* unlink(p1) */
    OP_RENAME,   /* renameat2(p1, p2, c) (plain renameat when c == 0) */
    OP_LINK,     /* link(p1, p2) */
    OP_SYMLINK,  /* symlink(p1, p2) */
    OP_READLINK, /* readlink(p1) -> data */
    OP_MKNOD,    /* mknod(p1, a, b) */
    OP_CHMOD,    /* chmod(p1, a) */
    OP_CHOWN,    /* chown(p1, a, b) */
    OP_LCHOWN,   /* lchown(p1, a, b) */
    OP_TRUNC,    /* truncate(p1, a) */
    OP_FTRUNC,   /* open(p1, O_WRONLY) + ftruncate(a) */
    OP_WRITE,    /* open(p1, O_WRONLY) + pwrite("abc", 0) */
    OP_UTIME,    /* utimensat(p1): a = 1 explicit times (-> mt=), else UTIME_NOW */
    OP_SETX,     /* setxattr(p1, p2, v) */
    OP_GETX,     /* getxattr(p1, p2) -> data, or hex when c */
    OP_LISTX,    /* listxattr(p1) -> sorted user.* names */
    OP_RMX,      /* removexattr(p1, p2) */
    OP_ACCESS,   /* faccessat(p1, a, AT_EACCESS) */
    OP_SETACL,   /* setxattr(p1, system.posix_acl_access, user 1002 rw-) */
    OP_ACLNEW,   /* create p1 (0666), then getxattr system.posix_acl_access -> hex */
};

/* Extra fixture objects. */
#define EX_ROOTF 1 /* r: 0600 root:root "secret\n" */
#define EX_XATTR 2 /* user.test="v0" on f */
#define EX_ACLF 4  /* access ACL on f granting user 1002 rw- */
#define EX_ACLD 8  /* ad: 0755 dir with a default ACL granting user 1002 rwx */

struct kase {
    char id[48];
    enum op op;
    const char *p1, *p2, *v;
    long a, b, c;
    unsigned dmode, fmode; /* modes of the case dir and of f */
    gid_t fgid;            /* group of f */
    int ex;                /* EX_* */
    const char *meta;      /* space-separated names to lstat afterwards */
    int who;               /* index into personas */
};

#define MAX_CASES 1024
static struct kase cases[MAX_CASES];
static int ncases;
static const char *only_prefix;

static struct kase K(enum op op, const char *p1, const char *p2, const char *meta)
{
    struct kase k;

    memset(&k, 0, sizeof(k));
    k.op = op;
    k.p1 = p1;
    k.p2 = p2;
    k.meta = meta;
    k.dmode = 0755;
    k.fmode = 0644;
    k.fgid = 2000;
    return k;
}

/* Adds the case once per persona, as "<base>.<persona>". */
static void add4(struct kase k, const char *fmt, ...)
{
    char base[40];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(base, sizeof(base), fmt, ap);
    va_end(ap);
    for (int p = 0; p < 4; p++) {
        k.who = p;
        snprintf(k.id, sizeof(k.id), "%s.%s", base, personas[p].name);
        if (only_prefix && strncmp(k.id, only_prefix, strlen(only_prefix)) != 0)
            continue;
        if (ncases == MAX_CASES) {
            fprintf(stderr, "ferry-conform: too many cases\n");
            exit(2);
        }
        cases[ncases++] = k;
    }
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

static char longname[257];

static void build(int acl)
{
    static const unsigned dv5[] = { 0755, 0775, 0777, 01777, 02775 };
    static const unsigned dv3[] = { 0755, 0775, 01777 };
    static const unsigned dv4[] = { 0755, 0775, 0777, 01777 };
    static const unsigned dv2[] = { 0755, 0777 };
    static const unsigned cmodes[] = { 04755, 02755, 02644 };
    static const unsigned fv5[] = { 0644, 0664, 0600, 0666, 0000 };
    static const unsigned fv2[] = { 0644, 0666 };
    static const unsigned fvt[] = { 0644, 0666, 06777 };
    static const unsigned fvw[] = { 0666, 06777, 02767, 04666 };
    static const unsigned fva[] = { 0644, 0755, 0600 };
    static const unsigned chmods[] = { 0600, 04755, 02755, 02644, 01755 };
    static const struct {
        const char *n, *p;
        int fl;
    } opens[] = {
        { "rdonly", "f", O_RDONLY },
        { "wronly", "f", O_WRONLY },
        { "rdwr", "f", O_RDWR },
        { "trunc", "f", O_WRONLY | O_TRUNC },
        { "append", "f", O_WRONLY | O_APPEND },
        { "dir", "f", O_RDONLY | O_DIRECTORY },
        { "nofollow", "ln", O_RDONLY | O_NOFOLLOW },
    };
    static const struct {
        const char *n, *p1, *p2, *meta;
        int fl;
    } renames[] = {
        { "fg", "f", "g", ". f g", 0 },
        { "fsub", "f", "sub", ". f sub", 0 },
        { "subfull", "sub", "full", ". sub full", 0 },
        { "norepl", "f", "ln", ". f ln", RENAME_NOREPLACE },
        { "xchg", "f", "sub", ". f sub", RENAME_EXCHANGE },
    };
    static const struct {
        const char *n;
        long uid, gid;
    } chowns[] = {
        { "u1001", 1001, -1 }, { "g2000", -1, 2000 }, { "g1001", -1, 1001 }, { "root", 0, 0 },
    };
    static const struct {
        const char *n;
        int mode;
    } accs[] = { { "r", R_OK }, { "w", W_OK }, { "x", X_OK } };
    static const struct {
        const char *n, *p;
        int mode;
        int dev;
    } nodes[] = {
        { "fifo", "p", S_IFIFO | 0644, 0 },
        { "chr", "c", S_IFCHR | 0600, 1 },
        { "blk", "b", S_IFBLK | 0600, 2 },
        { "sock", "s", S_IFSOCK | 0644, 0 },
    };
    static const char *node_meta[] = { ". p", ". c", ". b", ". s" };
    struct kase k;
    size_t i, j;

    /* create */
    for (i = 0; i < N(dv5); i++) {
        k = K(OP_OPEN, "new", NULL, ". new");
        k.a = O_CREAT | O_EXCL | O_WRONLY;
        k.b = 0666;
        k.dmode = dv5[i];
        add4(k, "create.d%04o", dv5[i]);
    }
    for (i = 0; i < N(cmodes); i++) {
        k = K(OP_OPEN, "new", NULL, ". new");
        k.a = O_CREAT | O_EXCL | O_WRONLY;
        k.b = cmodes[i];
        k.dmode = 0777;
        add4(k, "create.m%04o", cmodes[i]);
    }
    k = K(OP_OPEN, "new", NULL, ". new"); /* setgid+group-exec in a setgid dir */
    k.a = O_CREAT | O_EXCL | O_WRONLY;
    k.b = 02755;
    k.dmode = 02777;
    add4(k, "create.m2755s");
    k = K(OP_OPEN, "f", NULL, ". f");
    k.a = O_CREAT | O_EXCL | O_WRONLY;
    k.b = 0666;
    add4(k, "create.excl");
    k.a = O_CREAT | O_WRONLY;
    add4(k, "create.noexcl");
    memset(longname, 'a', 256);
    k = K(OP_OPEN, longname, NULL, ".");
    k.a = O_CREAT | O_EXCL | O_WRONLY;
    k.b = 0666;
    k.dmode = 0777;
    add4(k, "create.long");

    /* open */
    for (i = 0; i < N(opens); i++)
        for (j = 0; j < N(fv5); j++) {
            k = K(OP_OPEN, opens[i].p, NULL, "f");
            k.a = opens[i].fl;
            k.fmode = fv5[j];
            add4(k, "open.%s.f%04o", opens[i].n, fv5[j]);
        }

    /* mkdir */
    for (i = 0; i < N(dv5); i++) {
        k = K(OP_MKDIR, "nd", NULL, ". nd");
        k.b = 0777;
        k.dmode = dv5[i];
        add4(k, "mkdir.d%04o", dv5[i]);
    }
    k = K(OP_MKDIR, "sub", NULL, ". sub");
    k.b = 0777;
    add4(k, "mkdir.exist");

    /* rmdir */
    for (i = 0; i < N(dv3); i++) {
        k = K(OP_RMDIR, "sub", NULL, ". sub");
        k.dmode = dv3[i];
        add4(k, "rmdir.sub.d%04o", dv3[i]);
        k = K(OP_RMDIR, "full", NULL, ". full full/x");
        k.dmode = dv3[i];
        add4(k, "rmdir.full.d%04o", dv3[i]);
        k = K(OP_RMDIR, "f", NULL, ". f");
        k.dmode = dv3[i];
        add4(k, "rmdir.file.d%04o", dv3[i]);
    }

    /* unlink */
    for (i = 0; i < N(dv4); i++) {
        k = K(OP_UNLINK, "f", NULL, ". f");
        k.dmode = dv4[i];
        add4(k, "unlink.d%04o", dv4[i]);
    }

    /* rename */
    for (i = 0; i < N(renames); i++)
        for (j = 0; j < N(dv3); j++) {
            k = K(OP_RENAME, renames[i].p1, renames[i].p2, renames[i].meta);
            k.c = renames[i].fl;
            k.dmode = dv3[j];
            add4(k, "rename.%s.d%04o", renames[i].n, dv3[j]);
        }

    /* link */
    for (i = 0; i < N(dv2); i++) {
        k = K(OP_LINK, "f", "hard", ". f hard");
        k.dmode = dv2[i];
        add4(k, "link.d%04o", dv2[i]);
    }
    k = K(OP_LINK, "r", "hard", ". r hard");
    k.dmode = 0777;
    k.ex = EX_ROOTF;
    add4(k, "link.rootf");

    /* symlink, readlink */
    for (i = 0; i < N(dv2); i++) {
        k = K(OP_SYMLINK, "target", "sl", ". sl");
        k.dmode = dv2[i];
        add4(k, "symlink.d%04o", dv2[i]);
        k = K(OP_READLINK, "ln", NULL, "ln");
        k.dmode = dv2[i];
        add4(k, "readlink.d%04o", dv2[i]);
    }

    /* mknod */
    for (i = 0; i < N(nodes); i++) {
        k = K(OP_MKNOD, nodes[i].p, NULL, node_meta[i]);
        k.a = nodes[i].mode;
        k.b = nodes[i].dev == 1 ? (long)makedev(1, 3) : nodes[i].dev == 2 ? (long)makedev(7, 0) : 0;
        k.dmode = 0777;
        add4(k, "mknod.%s", nodes[i].n);
    }

    /* chmod */
    for (i = 0; i < N(chmods); i++) {
        k = K(OP_CHMOD, "f", NULL, "f");
        k.a = chmods[i];
        add4(k, "chmod.f%04o", chmods[i]);
    }
    k = K(OP_CHMOD, "sub", NULL, "sub");
    k.a = 02755;
    add4(k, "chmod.sub2755");
    k = K(OP_CHMOD, "f", NULL, "f"); /* f's group 3000: nobody but root is in it */
    k.a = 02755;
    k.fgid = 3000;
    add4(k, "chmod.f2755g3000");

    /* chown */
    for (i = 0; i < N(chowns); i++) {
        k = K(OP_CHOWN, "f", NULL, "f");
        k.a = chowns[i].uid;
        k.b = chowns[i].gid;
        add4(k, "chown.%s", chowns[i].n);
    }
    k = K(OP_LCHOWN, "ln", NULL, "f ln");
    k.a = -1;
    k.b = 1000;
    add4(k, "chown.ln");
    k = K(OP_CHOWN, "f", NULL, "f");
    k.a = 1000;
    k.b = 2000;
    k.fmode = 06755;
    add4(k, "chown.suid");

    /* truncate, ftruncate */
    for (i = 0; i < N(fvt); i++) {
        k = K(OP_TRUNC, "f", NULL, "f");
        k.a = 3;
        k.fmode = fvt[i];
        add4(k, "trunc.path.f%04o", fvt[i]);
        k.op = OP_FTRUNC;
        add4(k, "trunc.fd.f%04o", fvt[i]);
    }

    /* write */
    for (i = 0; i < N(fvw); i++) {
        k = K(OP_WRITE, "f", NULL, "f");
        k.fmode = fvw[i];
        add4(k, "write.f%04o", fvw[i]);
    }

    /* utimensat */
    for (i = 0; i < N(fv2); i++) {
        k = K(OP_UTIME, "f", NULL, "f");
        k.fmode = fv2[i];
        k.a = 1;
        add4(k, "utime.set.f%04o", fv2[i]);
        k.a = 0;
        add4(k, "utime.now.f%04o", fv2[i]);
    }

    /* xattrs */
    for (i = 0; i < N(fv2); i++) {
        k = K(OP_SETX, "f", "user.test", "f");
        k.v = "v1";
        k.fmode = fv2[i];
        k.ex = EX_XATTR;
        add4(k, "xattr.set.f%04o", fv2[i]);
        k.op = OP_GETX;
        add4(k, "xattr.get.f%04o", fv2[i]);
        k.op = OP_LISTX;
        add4(k, "xattr.list.f%04o", fv2[i]);
        k.op = OP_RMX;
        add4(k, "xattr.rm.f%04o", fv2[i]);
        k.op = OP_SETX;
        k.p2 = "trusted.t";
        k.v = "x";
        add4(k, "xattr.trusted.f%04o", fv2[i]);
    }

    /* access */
    for (i = 0; i < N(accs); i++)
        for (j = 0; j < N(fva); j++) {
            k = K(OP_ACCESS, "f", NULL, "f");
            k.a = accs[i].mode;
            k.fmode = fva[j];
            add4(k, "access.%s.f%04o", accs[i].n, fva[j]);
        }

    if (!acl)
        return;
    k = K(OP_SETACL, "f", NULL, "f");
    add4(k, "acl.set");
    k = K(OP_OPEN, "f", NULL, "f");
    k.a = O_RDWR;
    k.ex = EX_ACLF;
    add4(k, "acl.open");
    k = K(OP_ACLNEW, "ad/new", NULL, "ad ad/new");
    k.ex = EX_ACLD;
    add4(k, "acl.dflt");
    k = K(OP_GETX, "f", "system.posix_acl_access", "f");
    k.c = 1;
    k.ex = EX_ACLF;
    add4(k, "acl.get");
}

/* ------------------------------------------------------------------ ACLs */

#define ACL_USER_OBJ 0x01
#define ACL_USER 0x02
#define ACL_GROUP_OBJ 0x04
#define ACL_MASK 0x10
#define ACL_OTHER 0x20
#define ACL_NOID 0xffffffffu

static size_t put_le(unsigned char *p, unsigned long v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return (size_t)bytes;
}

/* Builds the posix_acl xattr: version 2, then {tag, perm, id} entries.
 * uperm/gperm/operm are the USER_OBJ, GROUP_OBJ and OTHER permissions; the
 * named USER 1002 entry and the MASK get xperm. */
static size_t build_acl(unsigned char *buf, int uperm, int xperm, int gperm, int operm)
{
    const struct {
        unsigned tag, perm, id;
    } e[] = {
        { ACL_USER_OBJ, (unsigned)uperm, ACL_NOID }, { ACL_USER, (unsigned)xperm, 1002 },
        { ACL_GROUP_OBJ, (unsigned)gperm, ACL_NOID }, { ACL_MASK, (unsigned)xperm, ACL_NOID },
        { ACL_OTHER, (unsigned)operm, ACL_NOID },
    };
    size_t n = put_le(buf, 2, 4);

    for (size_t i = 0; i < N(e); i++) {
        n += put_le(buf + n, e[i].tag, 2);
        n += put_le(buf + n, e[i].perm, 2);
        n += put_le(buf + n, e[i].id, 4);
    }
    return n;
}

/* ----------------------------------------------------------------- setup */

static const char *setup_id;

static void must(int r, const char *what, const char *path)
{
    if (r < 0) {
        fprintf(stderr, "ferry-conform: setup %s: %s %s: %s\n", setup_id, what, path,
                strerror(errno));
        exit(1);
    }
}

static void mkfile(const char *path, const char *content, uid_t uid, gid_t gid, mode_t mode)
{
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    size_t len = strlen(content);

    must(fd, "create", path);
    must(write(fd, content, len) == (ssize_t)len ? 0 : -1, "write", path);
    must(close(fd), "close", path);
    must(chown(path, uid, gid), "chown", path);
    must(chmod(path, mode), "chmod", path); /* after chown, which clears setuid bits */
}

static void mkdirp(const char *path, uid_t uid, gid_t gid, mode_t mode)
{
    must(mkdir(path, 0700), "mkdir", path);
    must(chown(path, uid, gid), "chown", path);
    must(chmod(path, mode), "chmod", path);
}

static void setup_case(int top, const struct kase *k)
{
    static const char *const objs[] = { "full/x", "full", "f", "sub", "ln", "r", "ad", "." };
    const struct timespec ts[2] = { { FIXTURE_MTIME, 0 }, { FIXTURE_MTIME, 0 } };
    unsigned char acl[64];
    size_t n;

    setup_id = k->id;
    must(fchdir(top), "fchdir", "DIR");
    must(mkdir(k->id, 0700), "mkdir", k->id);
    must(chdir(k->id), "chdir", k->id);
    mkfile("f", "hello\n", 1000, k->fgid, k->fmode);
    mkdirp("sub", 1000, 2000, 0755);
    mkdirp("full", 1000, 2000, 0700);
    mkfile("full/x", "", 1000, 2000, 0644);
    must(chmod("full", 0755), "chmod", "full");
    must(symlink("f", "ln"), "symlink", "ln");
    must(lchown("ln", 1000, 2000), "lchown", "ln");
    if (k->ex & EX_ROOTF)
        mkfile("r", "secret\n", 0, 0, 0600);
    if (k->ex & EX_XATTR)
        must(setxattr("f", "user.test", "v0", 2, 0), "setxattr user.test", "f");
    if (k->ex & EX_ACLF) {
        n = build_acl(acl, 6, 6, 4, 4);
        must(setxattr("f", "system.posix_acl_access", acl, n, 0), "setxattr acl", "f");
    }
    if (k->ex & EX_ACLD) {
        mkdirp("ad", 1000, 2000, 0755);
        n = build_acl(acl, 7, 7, 5, 5);
        must(setxattr("ad", "system.posix_acl_default", acl, n, 0), "setxattr acl", "ad");
    }
    must(chown(".", 1000, 2000), "chown", ".");
    must(chmod(".", k->dmode), "chmod", ".");
    for (size_t i = 0; i < N(objs); i++) {
        struct stat st;
        if (lstat(objs[i], &st) < 0 && errno == ENOENT)
            continue;
        must(utimensat(AT_FDCWD, objs[i], ts, AT_SYMLINK_NOFOLLOW), "utimensat", objs[i]);
    }
}

/* ------------------------------------------------------------------- run */

/* Appends " data=\"...\"" with non-printable bytes escaped. */
static void put_data(char *out, size_t size, const char *key, const char *data, size_t len)
{
    size_t o = strlen(out);

    o += (size_t)snprintf(out + o, size - o, " %s=\"", key);
    for (size_t i = 0; i < len && o + 8 < size; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '\n')
            o += (size_t)snprintf(out + o, size - o, "\\n");
        else if (c == '"' || c == '\\')
            o += (size_t)snprintf(out + o, size - o, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, size - o, "\\x%02x", c);
    }
    snprintf(out + o, size - o, "\"");
}

static void put_hex(char *out, size_t size, const unsigned char *data, size_t len)
{
    size_t o = strlen(out);

    o += (size_t)snprintf(out + o, size - o, " hex=");
    for (size_t i = 0; i < len && o + 3 < size; i++)
        o += (size_t)snprintf(out + o, size - o, "%02x", data[i]);
}

static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

#define TRY(x)            \
    do {                  \
        if ((x) < 0)      \
            return errno; \
    } while (0)
#define DO(x)      \
    do {           \
        TRY(x);    \
        return 0;  \
    } while (0)

/* Performs the case's operation; returns 0 or the errno of the first
 * failing syscall, and appends any data to out. */
static int do_op(const struct kase *k, char *out, size_t size)
{
    char buf[4096];
    unsigned char acl[64];
    ssize_t n;
    int fd, e;

    switch (k->op) {
    case OP_OPEN:
        TRY(fd = open(k->p1, (int)k->a | O_CLOEXEC, (mode_t)k->b));
        if ((k->a & O_ACCMODE) != O_WRONLY) {
            n = read(fd, buf, 64);
            if (n < 0) {
                e = errno;
                close(fd);
                return e;
            }
            put_data(out, size, "data", buf, (size_t)n);
        }
        TRY(close(fd));
        return 0;
    case OP_MKDIR:
        DO(mkdir(k->p1, (mode_t)k->b));
    case OP_RMDIR:
        DO(rmdir(k->p1));
    case OP_UNLINK:
        DO(unlink(k->p1));
    case OP_RENAME:
        if (k->c == 0)
            TRY(renameat(AT_FDCWD, k->p1, AT_FDCWD, k->p2));
        else
            TRY(syscall(SYS_renameat2, AT_FDCWD, k->p1, AT_FDCWD, k->p2, (unsigned)k->c));
        return 0;
    case OP_LINK:
        DO(link(k->p1, k->p2));
    case OP_SYMLINK:
        DO(symlink(k->p1, k->p2));
    case OP_READLINK:
        TRY(n = readlink(k->p1, buf, sizeof(buf)));
        put_data(out, size, "data", buf, (size_t)n);
        return 0;
    case OP_MKNOD:
        DO(mknod(k->p1, (mode_t)k->a, (dev_t)k->b));
    case OP_CHMOD:
        DO(chmod(k->p1, (mode_t)k->a));
    case OP_CHOWN:
        DO(chown(k->p1, (uid_t)k->a, (gid_t)k->b));
    case OP_LCHOWN:
        DO(lchown(k->p1, (uid_t)k->a, (gid_t)k->b));
    case OP_TRUNC:
        DO(truncate(k->p1, (off_t)k->a));
    case OP_FTRUNC:
    case OP_WRITE:
        TRY(fd = open(k->p1, O_WRONLY | O_CLOEXEC));
        if (k->op == OP_FTRUNC)
            n = ftruncate(fd, (off_t)k->a);
        else if ((n = pwrite(fd, "abc", 3, 0)) >= 0 && n != 3)
            errno = EIO, n = -1; /* a short write */
        e = errno;
        close(fd);
        return n < 0 ? e : 0;
    case OP_UTIME: {
        struct timespec ts[2] = { { 0, UTIME_NOW }, { 0, UTIME_NOW } };
        struct stat st;
        if (k->a) {
            ts[0].tv_sec = ts[1].tv_sec = UTIME_SET;
            ts[0].tv_nsec = ts[1].tv_nsec = 0;
        }
        TRY(utimensat(AT_FDCWD, k->p1, ts, 0));
        if (k->a) {
            TRY(stat(k->p1, &st));
            snprintf(out + strlen(out), size - strlen(out), " mt=%lld", (long long)st.st_mtime);
        }
        return 0;
    }
    case OP_SETX:
        DO(setxattr(k->p1, k->p2, k->v, strlen(k->v), 0));
    case OP_GETX:
        TRY(n = getxattr(k->p1, k->p2, buf, sizeof(buf)));
        if (k->c)
            put_hex(out, size, (unsigned char *)buf, (size_t)n);
        else
            put_data(out, size, "data", buf, (size_t)n);
        return 0;
    case OP_LISTX: {
        const char *names[64];
        char joined[1024] = "";
        int cnt = 0;
        TRY(n = listxattr(k->p1, buf, sizeof(buf)));
        for (char *p = buf; p < buf + n && cnt < 64; p += strlen(p) + 1)
            if (strncmp(p, "user.", 5) == 0)
                names[cnt++] = p;
        qsort(names, (size_t)cnt, sizeof(names[0]), cmpstr);
        for (int i = 0; i < cnt; i++) {
            if (i)
                strncat(joined, ",", sizeof(joined) - strlen(joined) - 1);
            strncat(joined, names[i], sizeof(joined) - strlen(joined) - 1);
        }
        put_data(out, size, "data", joined, strlen(joined));
        return 0;
    }
    case OP_RMX:
        DO(removexattr(k->p1, k->p2));
    case OP_ACCESS:
        DO(faccessat(AT_FDCWD, k->p1, (int)k->a, AT_EACCESS));
    case OP_SETACL:
        n = (ssize_t)build_acl(acl, 6, 6, 4, 4);
        TRY(setxattr(k->p1, "system.posix_acl_access", acl, (size_t)n, 0));
        return 0;
    case OP_ACLNEW:
        TRY(fd = open(k->p1, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666));
        TRY(close(fd));
        TRY(n = getxattr(k->p1, "system.posix_acl_access", buf, sizeof(buf)));
        put_hex(out, size, (unsigned char *)buf, (size_t)n);
        return 0;
    }
    return EINVAL;
}

static void write_all(int fd, const char *s)
{
    size_t len = strlen(s);

    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n <= 0)
            return;
        s += n;
        len -= (size_t)n;
    }
}

/* In the forked child: enter the case dir (as root), become the persona,
 * run the op and write the result to fd. */
static void child(const struct kase *k, int top, int fd)
{
    const struct persona *p = &personas[k->who];
    char out[2048], eb[16];
    int e;

    if (fchdir(top) < 0 || chdir(k->id) < 0) {
        write_all(fd, "nofixture");
        _exit(0);
    }
    if (setgroups((size_t)p->ngroups, p->groups) < 0 ||
        setresgid(p->gid, p->gid, p->gid) < 0 || setresuid(p->uid, p->uid, p->uid) < 0) {
        fprintf(stderr, "ferry-conform: %s: cannot switch to persona %s: %s\n", k->id,
                p->name, strerror(errno));
        _exit(PERSONA_FAIL);
    }
    umask(022);
    out[0] = '\0';
    e = do_op(k, out, sizeof(out));
    if (e) {
        write_all(fd, errname(e, eb, sizeof(eb)));
    } else {
        write_all(fd, "ok");
        write_all(fd, out);
    }
    _exit(0);
}

static const char *ftype(mode_t m)
{
    switch (m & S_IFMT) {
    case S_IFREG: return "reg";
    case S_IFDIR: return "dir";
    case S_IFLNK: return "lnk";
    case S_IFIFO: return "fifo";
    case S_IFCHR: return "chr";
    case S_IFBLK: return "blk";
    case S_IFSOCK: return "sock";
    }
    return "unknown";
}

static void print_meta(int top, const struct kase *k)
{
    char list[128], path[128], eb[16];
    char *save = NULL;

    snprintf(list, sizeof(list), "%s", k->meta);
    for (char *name = strtok_r(list, " ", &save); name; name = strtok_r(NULL, " ", &save)) {
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", k->id, name);
        if (fstatat(top, path, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            printf(" %s:%s", name, errname(errno, eb, sizeof(eb)));
            continue;
        }
        printf(" %s:%s,%04o,%u,%u,%lu,%lld,%s", name, ftype(st.st_mode),
               (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)st.st_gid,
               (unsigned long)st.st_nlink, (long long)st.st_size,
               st.st_mtim.tv_sec == FIXTURE_MTIME && st.st_mtim.tv_nsec == 0 ? "old" : "new");
        if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
            printf(",%u:%u", major(st.st_rdev), minor(st.st_rdev));
    }
}

static void run_case(int top, const struct kase *k)
{
    char res[4096];
    size_t len = 0;
    int pfd[2], status;
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        perror("ferry-conform: pipe");
        exit(1);
    }
    pid = fork();
    if (pid < 0) {
        perror("ferry-conform: fork");
        exit(1);
    }
    if (pid == 0) {
        close(pfd[0]);
        child(k, top, pfd[1]);
    }
    close(pfd[1]);
    for (;;) {
        ssize_t n = read(pfd[0], res + len, sizeof(res) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    res[len] = '\0';
    close(pfd[0]);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            perror("ferry-conform: waitpid");
            exit(1);
        }
    if (WIFEXITED(status) && WEXITSTATUS(status) == PERSONA_FAIL)
        exit(2);
    if (len == 0) {
        if (WIFSIGNALED(status))
            snprintf(res, sizeof(res), "SIG%d", WTERMSIG(status));
        else
            snprintf(res, sizeof(res), "noresult");
    }
    printf("CASE %s %s |", k->id, res);
    print_meta(top, k);
    printf("\n");
}

static void usage(void)
{
    fprintf(stderr, "usage: ferry-conform setup|run DIR [--only PREFIX] [--acl]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int acl = 0, top, setup;
    char ph[16] = "?";

    if (argc < 3)
        usage();
    if (strcmp(argv[1], "setup") == 0)
        setup = 1;
    else if (strcmp(argv[1], "run") == 0)
        setup = 0;
    else
        usage();
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--acl") == 0)
            acl = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only_prefix = argv[++i];
        else
            usage();
    }
    if (geteuid() != 0) {
        fprintf(stderr, "ferry-conform: must run as root\n");
        exit(2);
    }
    top = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (top < 0) {
        fprintf(stderr, "ferry-conform: %s: %s\n", argv[2], strerror(errno));
        exit(2);
    }
    build(acl);

    if (setup) {
        setup_id = "DIR";
        must(fchmod(top, 0755), "chmod", argv[2]);
        for (int i = 0; i < ncases; i++)
            setup_case(top, &cases[i]);
        printf("ferry-conform: set up %d cases\n", ncases);
        return 0;
    }

    int fd = open("/proc/sys/fs/protected_hardlinks", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, ph, sizeof(ph) - 1);
        ph[n > 0 ? n : 0] = '\0';
        ph[strcspn(ph, "\n")] = '\0';
        close(fd);
    }
    fprintf(stderr, "ferry-conform: fs.protected_hardlinks=%s\n", ph);
    for (int i = 0; i < ncases; i++)
        run_case(top, &cases[i]);
    printf("ferry-conform: %d cases\n", ncases);
    return 0;
}
