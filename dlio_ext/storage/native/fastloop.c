/* The posix backend's bare verbs as compiled loops over many paths (dlio_ext/storage/native).
 *
 * A cached stat on tmpfs costs 2-4 us; CPython's own loop around it (the call, two clock reads, a
 * size check, a stamp and a hash) costs about as much again. These loops make the same system
 * calls as PosixBackend's bare verbs (os.open sets O_CLOEXEC, so they do too), time each op with
 * the clock time.perf_counter reads (CLOCK_MONOTONIC), and check what the Python checks check,
 * exactly (a read's body is compared byte for byte with the template the writer wrote from).
 *
 * A loop runs ops start..stop-1 and stops at the first op it cannot finish on its own (a system
 * call that failed, a check that failed, a create whose directory is missing): `res` says which
 * op and why, and the caller handles that op in Python (the error message, the retry) and goes on
 * from the next one. A failed op records no latency. Ops done record their latency in `lat`.
 * Nothing here allocates or keeps a pointer past its return. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define ALIGN 4096

/* A call interrupted by a signal is made again, as CPython's os functions do (PEP 475); the
 * signal's Python handler runs when the loop returns, a chunk later. */
#define AGAIN(call) ({ int r_; do { r_ = (call); } while (r_ < 0 && errno == EINTR); r_; })

enum { DONE = 0, FAILED = 1, MISMATCH = 2, TOO_BIG = 3, MISSING_DIR = 4 };

typedef struct {
    int64_t index; /* the op that stopped the loop (stop when none did) */
    int64_t kind;  /* DONE, or why it stopped */
    int64_t err;   /* errno of a FAILED op */
    int64_t value; /* MISMATCH: the size stat gave or the bytes read; TOO_BIG: the file's size */
    int64_t ops;   /* latencies written to lat */
    int64_t moved; /* bytes moved by the ops done */
} result_t;

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void stop_at(result_t *res, int64_t i, int64_t kind, int64_t err, int64_t value) {
    res->index = i;
    res->kind = kind;
    res->err = err;
    res->value = value;
}

/* Close fd; the first error of the op (`err`, else close's own), 0 for none. */
static inline int closed(int fd, int err) {
    return close(fd) != 0 && !err ? errno : err;
}

/* The 16-byte head stamp of HeadStamped: two little-endian 64-bit words (a, b). */
static inline void pack_stamp(unsigned char out[16], uint64_t a, uint64_t b) {
    for (int k = 0; k < 8; k++) {
        out[k] = (unsigned char)(a >> (8 * k));
        out[8 + k] = (unsigned char)(b >> (8 * k));
    }
}

/* Read fd from offset 0 into buf: the first read asks for `ask` bytes, the next ones for what is
 * still missing of `want` (ask >= want), until `want` bytes are in or EOF; a read interrupted by a
 * signal is made again. *got: the bytes read. Returns 0, or the errno of a failed read. */
static int read_to(int fd, unsigned char *buf, int64_t ask, int64_t want, int64_t *got) {
    int64_t upto = ask;
    *got = 0;
    for (;;) {
        struct iovec iov = {buf + *got, (size_t)(upto - *got)};
        ssize_t r = preadv(fd, &iov, 1, (off_t)*got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (r == 0)
            return 0;
        *got += r;
        if (*got >= want)
            return 0;
        upto = want;
    }
}

/* stat each path; with verify_size >= 0, a size other than it stops the loop (MISMATCH). */
void fl_stat(const char *blob, const int64_t *off, int64_t start, int64_t stop, double *lat,
             int64_t verify_size, result_t *res) {
    struct stat st;
    int64_t k = 0;
    stop_at(res, stop, DONE, 0, 0);
    for (int64_t i = start; i < stop; i++) {
        double t0 = now();
        if (AGAIN(stat(blob + off[i], &st)) != 0) {
            stop_at(res, i, FAILED, errno, 0);
            break;
        }
        double t1 = now();
        if (verify_size >= 0 && (int64_t)st.st_size != verify_size) {
            stop_at(res, i, MISMATCH, 0, (int64_t)st.st_size);
            break;
        }
        lat[k++] = t1 - t0;
    }
    res->ops = k;
    res->moved = 0;
}

/* unlink each path. */
void fl_unlink(const char *blob, const int64_t *off, int64_t start, int64_t stop, double *lat,
               result_t *res) {
    int64_t k = 0;
    stop_at(res, stop, DONE, 0, 0);
    for (int64_t i = start; i < stop; i++) {
        double t0 = now();
        if (AGAIN(unlink(blob + off[i])) != 0) {
            stop_at(res, i, FAILED, errno, 0);
            break;
        }
        lat[k++] = now() - t0;
    }
    res->ops = k;
    res->moved = 0;
}

/* Create each path and write buf[:n] into it (open O_WRONLY|O_CREAT|O_TRUNC, pwrite until all is
 * written, close); before the clock, stamp (a, i) into buf's first stamp_len bytes. A missing
 * directory stops the loop (MISSING_DIR): the caller's Python verb makes it and creates the file. */
void fl_put(const char *blob, const int64_t *off, int64_t start, int64_t stop, double *lat,
            unsigned char *buf, int64_t n, int64_t stamp_len, uint64_t a, result_t *res) {
    unsigned char stamp[16];
    int64_t k = 0, moved = 0;
    stop_at(res, stop, DONE, 0, 0);
    for (int64_t i = start; i < stop; i++) {
        if (stamp_len > 0) {
            pack_stamp(stamp, a, (uint64_t)i);
            memcpy(buf, stamp, (size_t)stamp_len);
        }
        double t0 = now();
        int fd = AGAIN(open(blob + off[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
        if (fd < 0) {
            stop_at(res, i, errno == ENOENT ? MISSING_DIR : FAILED, errno, 0);
            break;
        }
        int64_t done = 0;
        int err = 0;
        while (done < n) {
            ssize_t w = pwrite(fd, buf + done, (size_t)(n - done), (off_t)done);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                err = errno;
                break;
            }
            done += w;
        }
        if ((err = closed(fd, err)) != 0) {
            stop_at(res, i, FAILED, err, 0);
            break;
        }
        lat[k++] = now() - t0;
        moved += n;
    }
    res->ops = k;
    res->moved = moved;
}

/* Read each path into buf and check it. whole: open, fstat, a file larger than cap stops the loop
 * (TOO_BIG), else read until its size is in; not whole: read until cap bytes are in or EOF. Then
 * close. With check_n >= 0 the bytes read must be check_n, open with the stamp (a, order[i]) (or
 * (a, i) without an order; its first head bytes) and go on as template does up to check_n;
 * otherwise the loop stops (MISMATCH) with the data still in buf for the caller to explain. */
void fl_get(const char *blob, const int64_t *off, int64_t start, int64_t stop, double *lat,
            unsigned char *buf, int64_t cap, int64_t whole, int64_t check_n, int64_t head,
            uint64_t a, const int64_t *order, const unsigned char *template, result_t *res) {
    struct stat st;
    unsigned char stamp[16];
    int64_t k = 0, moved = 0;
    stop_at(res, stop, DONE, 0, 0);
    for (int64_t i = start; i < stop; i++) {
        double t0 = now();
        int fd = AGAIN(open(blob + off[i], O_RDONLY | O_CLOEXEC));
        if (fd < 0) {
            stop_at(res, i, FAILED, errno, 0);
            break;
        }
        int64_t want = cap, got = 0;
        int err = 0;
        if (whole) {
            if (AGAIN(fstat(fd, &st)) != 0) {
                err = errno;
            } else if ((int64_t)st.st_size > cap) {
                close(fd);
                stop_at(res, i, TOO_BIG, 0, (int64_t)st.st_size);
                break;
            } else {
                want = (int64_t)st.st_size;
            }
        }
        /* the first read asks for all of cap, as PosixBackend's preadv does (even for an empty
         * file); then what is still missing */
        if (!err)
            err = read_to(fd, buf, cap, want, &got);
        if ((err = closed(fd, err)) != 0) {
            stop_at(res, i, FAILED, err, 0);
            break;
        }
        double t1 = now();
        if (check_n >= 0) {
            int ok = got == check_n;
            if (ok && head > 0) {
                pack_stamp(stamp, a, (uint64_t)(order ? order[i] : i));
                ok = memcmp(buf, stamp, (size_t)head) == 0;
            }
            if (ok && check_n > head)
                ok = memcmp(buf + head, template + head, (size_t)(check_n - head)) == 0;
            if (!ok) {
                stop_at(res, i, MISMATCH, 0, got);
                break;
            }
        }
        lat[k++] = t1 - t0;
        moved += got;
    }
    res->ops = k;
    res->moved = moved;
}

/* PosixBackend.get in one call (the KV cache's chunk reads, hundreds of thousands a run): open
 * (O_DIRECT when direct), fstat, a file larger than cap stops (TOO_BIG with value = its size), read
 * until its size is in (under O_DIRECT: its size rounded up to 4 KiB, within cap; buf and cap are
 * then 4 KiB aligned, as the caller checks) or EOF, close. DONE: value = the file's size, moved =
 * the bytes read. Open, fstat, read and close are the calls
 * the Python verb makes; made from here they release the GIL once instead of four times. */
void fl_read(const char *path, unsigned char *buf, int64_t cap, int64_t direct, result_t *res) {
    struct stat st;
    stop_at(res, 1, DONE, 0, 0);
    res->ops = res->moved = 0;
    int fd = AGAIN(open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0)));
    if (fd < 0) {
        stop_at(res, 0, FAILED, errno, 0);
        return;
    }
    if (AGAIN(fstat(fd, &st)) != 0) {
        stop_at(res, 0, FAILED, closed(fd, errno), 0);
        return;
    }
    int64_t size = (int64_t)st.st_size, span = size, got = 0;
    if (size > cap) {
        close(fd);
        stop_at(res, 0, TOO_BIG, 0, size);
        return;
    }
    if (direct && (span = (size + ALIGN - 1) / ALIGN * ALIGN) > cap)
        span = cap;
    /* as the Python verb: no read at all for an empty file */
    int err = span > 0 ? read_to(fd, buf, span, span, &got) : 0;
    if ((err = closed(fd, err)) != 0) {
        stop_at(res, 0, FAILED, err, 0);
        return;
    }
    res->value = size;
    res->ops = 1;
    res->moved = got;
}
