/* vk_convert.c -- the conversion engine: any source of virtual-disk bytes to
 * a raw file, a fixed VHD or a dynamic VHD.
 *
 * A reader thread fills a ring of chunk buffers (read + zero map), the
 * calling thread writes them, so reading and writing overlap.  All-zero
 * granules are never written to a seekable output (holes in raw and fixed
 * output; unallocated blocks in dynamic output).  Memory is bounded by the
 * ring (VK_RING_SLOTS chunks) and, for dynamic output, the BAT.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "vk_write.h"

#define VK_CHUNK        (4u * 1024u * 1024u)
#define VK_GRANULE      4096u
#define VK_WRITE_PIECE  (256u * 1024u)
#define VK_RING_SLOTS   6
/* Hysteresis: a blocked side is woken only when this many slots are ready
 * for it, so the threads run in bursts instead of ping-ponging per chunk
 * (which costs a scheduler round trip each on a busy machine). */
#define VK_RING_WAKE    3
#define VK_WORKERS      8
#define VK_SEGS         32

static int vk_raw_read(vk_src *s, uint8_t *buf, size_t len, uint64_t off, size_t *got, vk_err *err);


/* ---- the ring between reader thread and writer ------------------------ */
typedef struct vk_slot {
    uint8_t  *buf;
    uint64_t  off;       /* virtual offset of buf[0]                       */
    size_t    len;       /* bytes valid                                    */
    int       zero;      /* 1: whole chunk is zero (buf may be stale)      */
    uint8_t  *gz;        /* per granule: 1 = all zero                      */
} vk_slot;


typedef struct vk_ring {
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    vk_slot   slot[VK_RING_SLOTS];
    uint64_t  produced, consumed;
    int       eof;       /* producer finished (all produced)               */
    int       stop;      /* consumer asks producer to stop                 */
    int       producer_waiting, consumer_waiting;
    int       rc;        /* producer's error code                          */
    vk_err    err;       /* producer's error                               */
    vk_src   *src;
    size_t    chunk;
    int       need_bytes; /* 1: zero chunks must be materialised (stream out) */
    int      *cancel;
} vk_ring;

static void vk_zero_map(vk_slot *s)
{
    size_t ng = (s->len + VK_GRANULE - 1) / VK_GRANULE;
    int all = 1;
    for (size_t g = 0; g < ng; g++) {
        size_t a = g * VK_GRANULE, n = s->len - a < VK_GRANULE ? s->len - a : VK_GRANULE;
        s->gz[g] = (uint8_t)vk_is_zero(s->buf + a, n);
        all &= s->gz[g];
    }
    s->zero = all;
}

static void *vk_producer(void *arg)
{
    vk_ring *r = arg;
    vk_src *src = r->src;
    uint64_t off = 0;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        if (r->produced - r->consumed == VK_RING_SLOTS) {
            r->producer_waiting = 1;
            while (r->produced - r->consumed > VK_RING_SLOTS - VK_RING_WAKE && !r->stop)
                pthread_cond_wait(&r->cv, &r->mu);
            r->producer_waiting = 0;
        }
        int stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (stop) break;
        if (r->cancel && __atomic_load_n(r->cancel, __ATOMIC_RELAXED)) {
            r->rc = vk_fail(&r->err, VK_E_INTERRUPTED, off, "cancelled");
            break;
        }
        if (src->size != UINT64_MAX && off >= src->size) break;
        vk_slot *s = &r->slot[r->produced % VK_RING_SLOTS];
        size_t want = r->chunk;
        if (src->size != UINT64_MAX && src->size - off < want) want = (size_t)(src->size - off);
        s->off = off;
        if (src->next_data && !src->stream && src->next_data(src, off) >= off + want) {
            s->len = want;
            s->zero = 1;
            memset(s->gz, 1, (want + VK_GRANULE - 1) / VK_GRANULE);
            if (r->need_bytes) memset(s->buf, 0, want);
        } else {
            size_t got = 0;
            int rc = src->read(src, s->buf, want, off, &got, &r->err);
            if (rc) { r->rc = rc; break; }
            if (got == 0) { src->size = off; break; }
            s->len = got;
            vk_zero_map(s);
            if (got < want) src->size = off + got;
        }
        off += s->len;
        pthread_mutex_lock(&r->mu);
        r->produced++;
        if (r->consumer_waiting && r->produced - r->consumed >= VK_RING_WAKE) pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (r->rc == 0 && src->size == UINT64_MAX) src->size = off;
    pthread_mutex_lock(&r->mu);
    r->eof = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Next produced slot, or NULL at the end (check r->rc). */
static vk_slot *vk_ring_next(vk_ring *r)
{
    vk_slot *s = NULL;
    pthread_mutex_lock(&r->mu);
    if (r->consumed == r->produced && !r->eof) {
        r->consumer_waiting = 1;
        while (r->produced - r->consumed < VK_RING_WAKE && !r->eof) pthread_cond_wait(&r->cv, &r->mu);
        r->consumer_waiting = 0;
    }
    if (r->consumed != r->produced) s = &r->slot[r->consumed % VK_RING_SLOTS];
    pthread_mutex_unlock(&r->mu);
    return s;
}

static void vk_ring_release(vk_ring *r)
{
    pthread_mutex_lock(&r->mu);
    r->consumed++;
    if (r->producer_waiting && r->produced - r->consumed <= VK_RING_SLOTS - VK_RING_WAKE)
        pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* ---- output helpers ---------------------------------------------------- */
typedef struct vk_out {
    int       fd;
    int       stream;       /* sequential writes only                     */
    uint64_t  pos;          /* stream: bytes written so far               */
    uint64_t  data_bytes;
} vk_out;

static const uint8_t *vk_zeros(void)
{
    static const uint8_t z[64 * 1024];
    return z;
}

/* Write len bytes at off (stream: off must be the current position). */
static int vk_out_write(vk_out *o, const uint8_t *buf, size_t len, uint64_t off, vk_err *err)
{
    if (!o->stream) return vk_pwrite_full(o->fd, buf, len, off, err);
    if (off != o->pos)
        return vk_fail(err, VK_E_INVALID, off, "internal: non-sequential write to a stream");
    while (len > 0) {
        ssize_t n = write(o->fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return vk_fail_errno(err, errno, off, "write to output stream failed");
        }
        buf += n; len -= (size_t)n; o->pos += (uint64_t)n;
    }
    return VK_OK;
}

/* pwrite in pieces of VK_WRITE_PIECE.  A single large pwrite into the page
 * cache can cost the kernel many times the system time of the same bytes in
 * pieces (large-folio copies on ext4); pieces of the order cp writes keep a
 * write at the cost of copying its pages. */
static int vk_out_pwrite(vk_out *o, const uint8_t *buf, size_t len, uint64_t off, vk_err *err)
{
    int rc = VK_OK;
    for (size_t a = 0; a < len && !rc; a += VK_WRITE_PIECE)
        rc = vk_pwrite_full(o->fd, buf + a, len - a < VK_WRITE_PIECE ? len - a : VK_WRITE_PIECE, off + a, err);
    return rc;
}

/* Stream: write zeros up to `upto`.  Seekable: nothing (holes). */
static int vk_out_zero_to(vk_out *o, uint64_t upto, vk_err *err)
{
    if (!o->stream) return VK_OK;
    while (o->pos < upto) {
        size_t n = upto - o->pos < 64 * 1024 ? (size_t)(upto - o->pos) : 64 * 1024;
        int rc = vk_out_write(o, vk_zeros(), n, o->pos, err);
        if (rc) return rc;
    }
    return VK_OK;
}


/* Write the non-zero granule runs of a slot at file offset base + (run - slot start). */
static int vk_out_slot_runs(vk_out *o, const vk_slot *s, size_t from, size_t to,
                            uint64_t file_off, vk_err *err)
{
    if (o->stream) {
        int rc = vk_out_zero_to(o, file_off, err);
        if (rc) return rc;
        __atomic_fetch_add(&o->data_bytes, to - from, __ATOMIC_RELAXED);
        return vk_out_write(o, s->buf + from, to - from, file_off, err);
    }
    size_t i = from;
    while (i < to) {
        size_t g = i / VK_GRANULE;
        if (s->gz[g]) { i = (g + 1) * VK_GRANULE; continue; }
        size_t j = i;
        while (j < to && !s->gz[j / VK_GRANULE]) j = (j / VK_GRANULE + 1) * VK_GRANULE;
        if (j > to) j = to;
        /* From the buffer: the bytes were read anyway for the zero map, so a
         * pwrite of them costs less than copy_file_range, which would read
         * the page cache a second time. */
        int rc = vk_out_pwrite(o, s->buf + i, j - i, file_off + (i - from), err);
        if (rc) return rc;
        __atomic_fetch_add(&o->data_bytes, j - i, __ATOMIC_RELAXED);
        i = j;
    }
    return VK_OK;
}

static int vk_slot_range_zero(const vk_slot *s, size_t from, size_t to)
{
    if (s->zero) return 1;
    for (size_t g = from / VK_GRANULE; g * VK_GRANULE < to; g++)
        if (!s->gz[g]) return 0;
    return 1;
}

/* ---- dynamic output state ---------------------------------------------- */
typedef struct vk_dyn {
    uint32_t  bs;          /* block size                                   */
    uint32_t  bm;          /* bitmap bytes                                 */
    uint32_t  entries;     /* BAT entries reserved                         */
    uint64_t  bat_bytes;
    uint32_t *bat;         /* host order; VK_BAT_UNUSED = not allocated     */
    uint64_t  next;        /* next free file offset                        */
    uint8_t  *bitmap;      /* all ones                                     */
    uint32_t  allocated;
    pthread_mutex_t mu;    /* block allocation (parallel workers)          */
} vk_dyn;

static int vk_dyn_block(vk_dyn *d, vk_out *o, const vk_slot *s, size_t from, size_t to,
                        uint64_t block_index, vk_err *err)
{
    if (vk_slot_range_zero(s, from, to)) return VK_OK;
    if (block_index >= d->entries)
        return vk_fail(err, VK_E_RANGE, s->off + from,
                       "input is larger than the %u blocks the BAT was sized for", d->entries);
    pthread_mutex_lock(&d->mu);
    uint64_t pos = vk_block_place(d->next, d->bm);
    int fits = pos / VK_SECTOR <= UINT32_MAX;
    if (fits) {
        d->bat[block_index] = (uint32_t)(pos / VK_SECTOR);
        d->next = pos + d->bm + d->bs;
        d->allocated++;
    }
    pthread_mutex_unlock(&d->mu);
    if (!fits)
        return vk_fail(err, VK_E_RANGE, pos, "dynamic image would exceed the BAT's 32-bit sector offsets");
    int rc = vk_pwrite_full(o->fd, d->bitmap, d->bm, pos, err);
    if (rc) return rc;
    return vk_out_slot_runs(o, s, from, to, pos + d->bm, err);
}

static int vk_dyn_finish(vk_dyn *d, vk_out *o, const vk_footer *ft, vk_write_result *res, vk_err *err)
{
    uint8_t fb[VK_FOOTER_SIZE], hb[VK_DYNHDR_SIZE];
    vk_footer f = *ft;
    vk_dynhdr h;
    vk_dynhdr_new(&h, d->entries, d->bs);
    vk_dynhdr_encode(&h, hb);
    vk_footer_encode(&f, fb);
    /* BAT, big-endian, padded with 0xFF to its sector-rounded size. */
    uint8_t *raw = malloc(d->bat_bytes);
    if (!raw) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "cannot allocate the BAT");
    memset(raw, 0xFF, d->bat_bytes);
    for (uint32_t i = 0; i < d->entries; i++) vk_put32(raw + 4ull * i, d->bat[i]);
    int rc = vk_pwrite_full(o->fd, raw, d->bat_bytes, VK_BAT_OFFSET, err);
    free(raw);
    uint64_t end = d->next;
    if (end < VK_BAT_OFFSET + d->bat_bytes) end = VK_BAT_OFFSET + d->bat_bytes;
    if (!rc) rc = vk_pwrite_full(o->fd, hb, sizeof hb, VK_FOOTER_SIZE, err);
    if (!rc) rc = vk_pwrite_full(o->fd, fb, sizeof fb, 0, err);
    if (!rc) rc = vk_pwrite_full(o->fd, fb, sizeof fb, end, err);
    if (!rc && ftruncate(o->fd, (off_t)(end + VK_FOOTER_SIZE)) != 0)
        rc = vk_fail_errno(err, errno, end, "cannot set the output's size");
    res->file_size = end + VK_FOOTER_SIZE;
    res->blocks_allocated = d->allocated;
    res->max_table_entries = d->entries;
    res->block_size = d->bs;
    return rc;
}

/* ---- one chunk to the output (ring consumer and parallel workers) ------- */
typedef struct vk_job {
    vk_src   *src;
    vk_out   *out;
    vk_dyn   *dyn;           /* dynamic output, else NULL                     */
    size_t    chunk;
    const vk_write_opts *o;
    pthread_mutex_t mu;      /* errors; source access if it is not thread-safe */
    pthread_mutex_t wmu;     /* writes to the output (one writer at a time)   */
    int       src_shared;    /* 1: calls into src must hold mu                */
    uint64_t  next_chunk;    /* atomic                                        */
    uint64_t  done;          /* atomic: input bytes processed                 */
    int       failed;        /* atomic                                        */
    int       rc;
    vk_err    err;
} vk_job;

static int vk_chunk_out(vk_job *j, const vk_slot *s, vk_err *err)
{
    if (j->dyn) {
        int rc = VK_OK;
        for (size_t a = 0; a < s->len && !rc; a += j->dyn->bs) {
            size_t b = s->len - a < j->dyn->bs ? s->len : a + j->dyn->bs;
            rc = vk_dyn_block(j->dyn, j->out, s, a, b, (s->off + a) / j->dyn->bs, err);
        }
        return rc;
    }
    if (!s->zero || j->out->stream) return vk_out_slot_runs(j->out, s, 0, s->len, s->off, err);
    return VK_OK;
}

static void vk_job_progress(vk_job *j, size_t len)
{
    uint64_t d = __atomic_add_fetch(&j->done, len, __ATOMIC_RELAXED);
    if (j->o->progress) __atomic_store_n(j->o->progress, d, __ATOMIC_RELAXED);
}

typedef struct vk_worker {
    vk_job   *job;
    vk_slot   slot;
    pthread_t th;
    int       started;
} vk_worker;

/* Parallel path (seekable input and output): each worker (one per CPU, 2..4;
 * vk_options.io_threads overrides, 1..8) reads a chunk,
 * maps its zeros and writes it at its own offset, so reads and writes of
 * different chunks overlap without a hand-off between threads. */
static void *vk_worker_main(void *arg)
{
    vk_worker *w = arg;
    vk_job *j = w->job;
    vk_src *src = j->src;
    vk_slot *s = &w->slot;
    vk_err err;
    vk_err_clear(&err);
    int rc = VK_OK;
    while (!__atomic_load_n(&j->failed, __ATOMIC_RELAXED)) {
        if (j->o->cancel && __atomic_load_n(j->o->cancel, __ATOMIC_RELAXED)) {
            rc = vk_fail(&err, VK_E_INTERRUPTED, UINT64_MAX, "cancelled");
            break;
        }
        uint64_t idx = __atomic_fetch_add(&j->next_chunk, 1, __ATOMIC_RELAXED);
        uint64_t off;
        if (vk_mul_ovf(idx, j->chunk, &off) || off >= src->size) break;
        size_t want = src->size - off < j->chunk ? (size_t)(src->size - off) : j->chunk;
        s->off = off;
        s->len = want;
        if (j->src_shared) pthread_mutex_lock(&j->mu);
        int hole = src->next_data && src->next_data(src, off) >= off + want;
        size_t got = 0;
        s->zero = hole;
        if (!hole) rc = src->read(src, s->buf, want, off, &got, &err);
        if (j->src_shared) pthread_mutex_unlock(&j->mu);
        if (rc) break;
        if (hole) {
            s->zero = 1;
            memset(s->gz, 1, (want + VK_GRANULE - 1) / VK_GRANULE);
        } else {
            if (got < want) {
                rc = vk_fail(&err, VK_E_RANGE, off + got, "the input ended early at offset %llu (did it shrink?)",
                             (unsigned long long)(off + got));
                break;
            }
            vk_zero_map(s);
        }
        /* Reads and zero maps run in parallel; writes take turns.  Two
         * threads writing one file contend for its inode lock, and the
         * kernel spins the waiter on it, which costs far more system time
         * than the writes themselves. */
        pthread_mutex_lock(&j->wmu);
        rc = vk_chunk_out(j, s, &err);
        pthread_mutex_unlock(&j->wmu);
        if (rc) break;
        vk_job_progress(j, want);
    }
    if (rc) {
        pthread_mutex_lock(&j->mu);
        if (!j->rc) { j->rc = rc; j->err = err; }
        pthread_mutex_unlock(&j->mu);
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static int vk_run_parallel(vk_job *j, int nworkers, vk_err *err)
{
    vk_worker w[VK_WORKERS];
    int n = 0, rc = VK_OK;
    memset(w, 0, sizeof w);
    for (; n < nworkers; n++) {
        void *p = NULL;
        w[n].job = j;
        if (posix_memalign(&p, VK_GRANULE, j->chunk) != 0) break;
        w[n].slot.buf = p;
        w[n].slot.gz = malloc(j->chunk / VK_GRANULE + 1);
        if (!w[n].slot.gz) break;
        if (pthread_create(&w[n].th, NULL, vk_worker_main, &w[n]) != 0) break;
        w[n].started = 1;
    }
    if (n < nworkers) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "cannot start %d I/O threads", nworkers);
    }
    for (int i = 0; i <= n && i < nworkers; i++) {
        if (w[i].started) pthread_join(w[i].th, NULL);
        free(w[i].slot.buf);
        free(w[i].slot.gz);
    }
    if (!rc && j->rc) { rc = j->rc; *err = j->err; }
    return rc;
}

/* Sequential path (a pipe on either side): one reader thread fills a ring,
 * the calling thread writes in order. */
static int vk_run_ring(vk_job *j, uint64_t *vend_out, vk_err *err)
{
    vk_ring ring;
    int rc = VK_OK;
    memset(&ring, 0, sizeof ring);
    ring.src = j->src;
    ring.chunk = j->chunk;
    ring.need_bytes = j->out->stream;
    ring.cancel = j->o->cancel;
    vk_err_clear(&ring.err);
    pthread_mutex_init(&ring.mu, NULL);
    pthread_cond_init(&ring.cv, NULL);
    int nslots = 0;
    for (; nslots < VK_RING_SLOTS; nslots++) {
        void *p = NULL;
        if (posix_memalign(&p, VK_GRANULE, j->chunk) != 0) break;
        ring.slot[nslots].buf = p;
        ring.slot[nslots].gz = malloc(j->chunk / VK_GRANULE + 1);
        if (!ring.slot[nslots].gz) { free(p); ring.slot[nslots].buf = NULL; break; }
    }
    pthread_t th;
    int started = 0;
    if (nslots < VK_RING_SLOTS) rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "cannot allocate I/O buffers");
    else if (pthread_create(&th, NULL, vk_producer, &ring) != 0)
        rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "cannot start the reader thread");
    else started = 1;

    uint64_t vend = 0;
    while (started && !rc) {
        vk_slot *s = vk_ring_next(&ring);
        if (!s) break;
        if (j->o->cancel && __atomic_load_n(j->o->cancel, __ATOMIC_RELAXED))
            rc = vk_fail(err, VK_E_INTERRUPTED, s->off, "cancelled");
        else
            rc = vk_chunk_out(j, s, err);
        vend = s->off + s->len;
        vk_job_progress(j, s->len);
        vk_ring_release(&ring);
    }
    if (started) {
        pthread_mutex_lock(&ring.mu);
        ring.stop = 1;
        pthread_cond_broadcast(&ring.cv);
        pthread_mutex_unlock(&ring.mu);
        pthread_join(th, NULL);
        if (!rc && ring.rc) { rc = ring.rc; *err = ring.err; }
    }
    for (int i = 0; i < nslots; i++) { free(ring.slot[i].buf); free(ring.slot[i].gz); }
    pthread_mutex_destroy(&ring.mu);
    pthread_cond_destroy(&ring.cv);
    *vend_out = vend;
    return rc;
}

/* ---- the engine --------------------------------------------------------- */
static int vk_opts_check(const vk_write_opts *o, vk_err *err)
{
    if (o->kind != VK_OUT_RAW && o->kind != VK_OUT_FIXED && o->kind != VK_OUT_DYNAMIC)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "unknown output kind %d", o->kind);
    if (o->kind == VK_OUT_DYNAMIC) {
        uint32_t bs = o->block_size ? o->block_size : VK_NEW_BLOCK_DEFAULT;
        if (!vk_new_block_size_ok(bs))
            return vk_fail(err, VK_E_INVALID, UINT64_MAX, "block size %u is not a power of two between %u KiB and %u MiB",
                           bs, (unsigned)(VK_NEW_BLOCK_MIN >> 10), (unsigned)(VK_NEW_BLOCK_MAX >> 20));
        if (o->stream_out)
            return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX,
                           "a dynamic VHD cannot be written to a stream (its BAT is written last); write to a file");
    }
    if (o->size_rule == VK_RULE_AZURE && o->kind != VK_OUT_FIXED)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "the Azure size rule makes fixed VHDs only");
    if (o->size_rule < VK_RULE_EXACT || o->size_rule > VK_RULE_AZURE)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "unknown size rule %d", o->size_rule);
    return VK_OK;
}

static int vk_identity(const vk_write_opts *o, vk_write_result *res, vk_err *err)
{
    if (o->has_uuid) memcpy(res->uuid, o->uuid, 16);
    else {
        int rc = vk_uuid_generate(res->uuid, err);
        if (rc) return rc;
    }
    res->timestamp = o->has_timestamp ? o->timestamp : vk_time_now();
    return VK_OK;
}

int vk_convert_src(vk_src *src, int out_fd, const vk_write_opts *o, vk_write_result *res, vk_err *err)
{
    vk_err_clear(err);
    memset(res, 0, sizeof *res);
    int rc = vk_opts_check(o, err);
    if (rc) return rc;
    res->kind = o->kind;
    rc = vk_identity(o, res, err);
    if (rc) return rc;

    /* The size plan: known up front unless the input is a stream. */
    int known = src->size != UINT64_MAX;
    if (known && o->kind != VK_OUT_RAW) {
        rc = vk_size_plan_make(src->size, o->size_rule, &res->plan, err);
        if (rc) return rc;
    }
    if (known && src->size == 0 && o->kind == VK_OUT_RAW) res->plan.size = 0;

    vk_out out = { .fd = out_fd, .stream = o->stream_out };
    if (!out.stream) {
        struct stat st;
        if (fstat(out_fd, &st) != 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot stat the output");
        if (!S_ISREG(st.st_mode)) {
            if (o->kind == VK_OUT_DYNAMIC)
                return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "a dynamic VHD must be written to a regular file");
            out.stream = 1;
        } else if (st.st_size != 0 && ftruncate(out_fd, 0) != 0)
            return vk_fail_errno(err, errno, 0, "cannot truncate the output");
    }

    vk_dyn dyn;
    memset(&dyn, 0, sizeof dyn);
    size_t chunk = VK_CHUNK;
    if (o->kind == VK_OUT_DYNAMIC) {
        dyn.bs = o->block_size ? o->block_size : VK_NEW_BLOCK_DEFAULT;
        dyn.bm = vk_bitmap_bytes(dyn.bs);
        uint64_t span = known ? res->plan.size : (o->size_hint ? o->size_hint : VK_MAX_VIRTUAL_SIZE);
        if (!known && span > VK_MAX_VIRTUAL_SIZE) span = VK_MAX_VIRTUAL_SIZE;
        uint64_t entries = (span + dyn.bs - 1) / dyn.bs;
        if (entries == 0) entries = 1;
        dyn.entries = (uint32_t)entries;
        dyn.bat_bytes = (entries * 4 + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
        dyn.bat = malloc(entries * 4);
        dyn.bitmap = malloc(dyn.bm);
        if (!dyn.bat || !dyn.bitmap) { free(dyn.bat); free(dyn.bitmap);
            return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "cannot allocate the BAT"); }
        memset(dyn.bat, 0xFF, entries * 4);
        memset(dyn.bitmap, 0xFF, dyn.bm);
        dyn.next = VK_BAT_OFFSET + dyn.bat_bytes;
        if (dyn.bs > chunk) chunk = dyn.bs;
    }

    vk_job job;
    memset(&job, 0, sizeof job);
    job.src = src;
    job.out = &out;
    job.dyn = o->kind == VK_OUT_DYNAMIC ? &dyn : NULL;
    job.chunk = chunk;
    job.o = o;
    job.src_shared = src->read != vk_raw_read;     /* only raw preads are thread-safe */
    vk_err_clear(&job.err);
    pthread_mutex_init(&job.mu, NULL);
    pthread_mutex_init(&job.wmu, NULL);
    pthread_mutex_init(&dyn.mu, NULL);
    uint64_t vend = 0;
    if (!src->stream && !out.stream) {
        vk_options opts;
        vk_get_options(&opts);
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        int nw = opts.io_threads ? opts.io_threads : (int)(cpus < 2 ? 2 : cpus > 4 ? 4 : cpus);
        if (nw < 1 || nw > VK_WORKERS) nw = VK_WORKERS;
        rc = vk_run_parallel(&job, nw, err);
        vend = src->size;
    } else {
        rc = vk_run_ring(&job, &vend, err);
    }
    res->input_bytes = rc ? job.done : vend;
    pthread_mutex_destroy(&job.mu);
    pthread_mutex_destroy(&job.wmu);
    pthread_mutex_destroy(&dyn.mu);

    if (!rc && !known) {
        /* Stream input: the size is known now. */
        if (o->kind == VK_OUT_RAW) res->plan.size = vend;
        else rc = vk_size_plan_make(vend, o->size_rule, &res->plan, err);
        if (!rc && o->kind == VK_OUT_DYNAMIC && (res->plan.size + dyn.bs - 1) / dyn.bs > dyn.entries)
            rc = vk_fail(err, VK_E_RANGE, vend, "input is larger than the size hint");
    }
    if (!rc && o->kind == VK_OUT_RAW) {
        res->plan.requested = vend;
        res->plan.size = vend;
        rc = vk_out_zero_to(&out, vend, err);
        if (!rc && !out.stream && ftruncate(out_fd, (off_t)vend) != 0)
            rc = vk_fail_errno(err, errno, vend, "cannot set the output's size");
        res->file_size = vend;
    } else if (!rc) {
        vk_footer f;
        uint8_t fb[VK_FOOTER_SIZE];
        const uint8_t *creator = (o->creator_app[0] | o->creator_app[1] | o->creator_app[2] | o->creator_app[3])
                                 ? o->creator_app : vk_default_creator(&res->plan);
        vk_footer_new(&f, o->kind == VK_OUT_FIXED ? VK_DISK_FIXED : VK_DISK_DYNAMIC,
                      &res->plan, res->uuid, res->timestamp, creator);
        if (o->kind == VK_OUT_FIXED) {
            vk_footer_encode(&f, fb);
            rc = vk_out_zero_to(&out, res->plan.size, err);
            if (!rc) rc = vk_out_write(&out, fb, sizeof fb, res->plan.size, err);
            if (!rc && !out.stream && ftruncate(out_fd, (off_t)(res->plan.size + VK_FOOTER_SIZE)) != 0)
                rc = vk_fail_errno(err, errno, res->plan.size, "cannot set the output's size");
            res->file_size = res->plan.size + VK_FOOTER_SIZE;
        } else {
            /* Entries beyond the virtual size stay reserved but unused. */
            uint64_t need = (res->plan.size + dyn.bs - 1) / dyn.bs;
            if (need < dyn.entries) dyn.entries = (uint32_t)need;
            rc = vk_dyn_finish(&dyn, &out, &f, res, err);
        }
    }
    res->data_bytes = out.data_bytes;
    free(dyn.bat);
    free(dyn.bitmap);
    return rc;
}

/* ---- sources ------------------------------------------------------------ */
static int vk_raw_read(vk_src *s, uint8_t *buf, size_t len, uint64_t off, size_t *got, vk_err *err)
{
    size_t n = 0;
    while (n < len) {
        ssize_t r = s->stream ? read(s->fd, buf + n, len - n)
                              : pread(s->fd, buf + n, len - n, (off_t)(off + n));
        if (r < 0) {
            if (errno == EINTR) continue;
            return vk_fail_errno(err, errno, off + n, "read of the input failed at offset %llu",
                                 (unsigned long long)(off + n));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    *got = n;
    return VK_OK;
}

static uint64_t vk_raw_next_data(vk_src *s, uint64_t off)
{
    off_t d = lseek(s->fd, (off_t)off, SEEK_DATA);
    if (d < 0) return errno == ENXIO ? s->size : off;
    return (uint64_t)d;
}


static uint64_t vk_none_next_data(vk_src *s, uint64_t off) { (void)off; return s->size; }
static int vk_none_read(vk_src *s, uint8_t *buf, size_t len, uint64_t off, size_t *got, vk_err *err)
{
    (void)s; (void)off; (void)err;
    memset(buf, 0, len);
    *got = len;
    return VK_OK;
}

int vk_src_raw_init(vk_src *src, int in_fd, uint64_t in_size, vk_err *err)
{
    memset(src, 0, sizeof *src);
    src->size = in_size;
    src->fd = in_fd;
    src->read = vk_raw_read;
    struct stat st;
    if (fstat(in_fd, &st) != 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot stat the input");
    if (S_ISREG(st.st_mode)) {
        if (in_size == UINT64_MAX) src->size = (uint64_t)st.st_size;
        src->next_data = vk_raw_next_data;   /* skip holes */
    } else {
        src->stream = 1;                     /* a pipe: read sequentially */
    }
    return VK_OK;
}

int vk_convert_raw(int in_fd, uint64_t in_size, int out_fd, const vk_write_opts *opts,
                   vk_write_result *res, vk_err *err)
{
    vk_src src;
    int rc = vk_src_raw_init(&src, in_fd, in_size, err);
    if (rc) return rc;
    return vk_convert_src(&src, out_fd, opts, res, err);
}

int vk_create(int out_fd, uint64_t size, const vk_write_opts *opts, vk_write_result *res, vk_err *err)
{
    vk_src src = { .size = size, .fd = -1, .read = vk_none_read, .next_data = vk_none_next_data };
    if (size == 0) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "size must be greater than 0");
    return vk_convert_src(&src, out_fd, opts, res, err);
}

/* ---- a VHD (chain) as the source ------------------------------------------ */
#define VK_MAP_CACHE 256
typedef struct vk_img_src {
    vk_image  *img;
    vk_extent  ext[VK_MAP_CACHE];
    size_t     n;          /* extents cached, covering [ext[0].offset, end) */
    uint64_t   end;
    int        failed;     /* map failed: fall back to reading everything  */
} vk_img_src;

/* The extent holding off (refilling the cache), or NULL. */
static const vk_extent *vk_img_extent(vk_img_src *c, uint64_t off)
{
    if (c->failed) return NULL;
    if (c->n == 0 || off < c->ext[0].offset || off >= c->end) {
        vk_err e;
        size_t n = 0;
        if (vk_image_map(c->img, off, c->ext, VK_MAP_CACHE, &n, &e) != 0 || n == 0) { c->failed = 1; return NULL; }
        c->n = n;
        c->end = c->ext[n - 1].offset + c->ext[n - 1].length;
        if (c->end <= off) { c->failed = 1; return NULL; }
    }
    for (size_t i = 0; i < c->n; i++)
        if (c->ext[i].offset <= off && off < c->ext[i].offset + c->ext[i].length) return &c->ext[i];
    return NULL;
}


static int vk_img_read(vk_src *s, uint8_t *buf, size_t len, uint64_t off, size_t *got, vk_err *err)
{
    vk_img_src *c = s->ctx;
    if (off >= s->size) { *got = 0; return VK_OK; }
    if (len > s->size - off) len = (size_t)(s->size - off);
    int rc = vk_image_pread(c->img, buf, len, off, err);
    *got = rc ? 0 : len;
    return rc;
}

static uint64_t vk_img_next_data(vk_src *s, uint64_t off)
{
    vk_img_src *c = s->ctx;
    while (off < s->size) {
        const vk_extent *x = vk_img_extent(c, off);
        if (!x || x->allocated) return off;     /* unknown: read it */
        off = x->offset + x->length;
    }
    return s->size;
}

int vk_src_image_init(vk_src *src, vk_image *img, vk_err *err)
{
    memset(src, 0, sizeof *src);
    if (!img) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no image");
    vk_img_src *c = calloc(1, sizeof *c);
    if (!c) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
    c->img = img;
    src->size = vk_image_size(img);
    src->fd = -1;
    src->read = vk_img_read;
    src->next_data = vk_img_next_data;
    src->ctx = c;
    return VK_OK;
}

void vk_src_fini(vk_src *src)
{
    if (src->read == vk_img_read) free(src->ctx);
    src->ctx = NULL;
}

int vk_convert_image(vk_image *img, int out_fd, const vk_write_opts *opts, vk_write_result *res, vk_err *err)
{
    vk_src src;
    int rc = vk_src_image_init(&src, img, err);
    if (rc) return rc;
    rc = vk_convert_src(&src, out_fd, opts, res, err);
    vk_src_fini(&src);
    return rc;
}
