/* vk_write.c -- sizes and geometry for new images, fresh footers and headers,
 * and the in-place rewrites: modify (fields, size) and repair (footer copies).
 *
 * In-place rewrites are ordered so that every intermediate state is an image
 * that vk_repair brings back to a consistent one: the end footer is the
 * commit point (readers trust it), the copy at offset 0 is the backup.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vk_write.h"
#include "vkx.h"

/* ---- sizes ------------------------------------------------------------- */
int vk_size_plan_make(uint64_t requested, int rule, vk_size_plan *p, vk_err *err)
{
    memset(p, 0, sizeof *p);
    p->requested = requested;
    if (requested == 0) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "size must be greater than 0");
    if (requested > VK_MAX_VIRTUAL_SIZE)
        return vk_fail(err, VK_E_RANGE, UINT64_MAX,
                       "size %llu bytes is over the VHD limit of %u GiB", (unsigned long long)requested,
                       (unsigned)VK_MAX_VIRTUAL_GIB);
    uint64_t size = (requested + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
    if (rule == VK_RULE_AZURE) {
        const uint64_t mib = 1024u * 1024u;
        size = (requested + mib - 1) / mib * mib;
    } else if (rule == VK_RULE_CHS) {
        uint64_t want = size / VK_SECTOR;
        if (want > VK_MAX_CHS_SECTORS)
            return vk_fail(err, VK_E_RANGE, UINT64_MAX,
                           "size %llu bytes is beyond what CHS geometry addresses (about 127 GiB); "
                           "use the exact size rule", (unsigned long long)requested);
        /* The algorithm maps a sector count to a geometry addressing at most
         * that many sectors; ask for more until it addresses enough. */
        for (uint64_t t = want;; t++) {
            uint16_t c; uint8_t h, s;
            vk_chs_from_sectors(t, &c, &h, &s);
            uint64_t got = (uint64_t)c * h * s;
            if (got >= want) { size = got * VK_SECTOR; break; }
            if (t >= VK_MAX_CHS_SECTORS)
                return vk_fail(err, VK_E_RANGE, UINT64_MAX, "no CHS geometry addresses %llu sectors",
                               (unsigned long long)want);
        }
    } else if (rule != VK_RULE_EXACT) {
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "unknown size rule %d", rule);
    }
    if (size > VK_MAX_VIRTUAL_SIZE)
        return vk_fail(err, VK_E_RANGE, UINT64_MAX,
                       "size %llu bytes (after rounding) is over the VHD limit of %u GiB",
                       (unsigned long long)size, (unsigned)VK_MAX_VIRTUAL_GIB);
    p->size = size;
    p->adjusted = size != requested;
    vk_chs_from_sectors(size / VK_SECTOR, &p->cylinders, &p->heads, &p->sectors);
    return VK_OK;
}

const uint8_t *vk_default_creator(const vk_size_plan *plan)
{
    static const uint8_t vhdk[4] = { 'v', 'h', 'd', 'k' }, qem2[4] = { 'q', 'e', 'm', '2' };
    return vk_chs_size(plan->cylinders, plan->heads, plan->sectors) == plan->size ? vhdk : qem2;
}

void vk_footer_new(vk_footer *f, uint32_t disk_type, const vk_size_plan *plan,
                   const uint8_t uuid[16], uint32_t timestamp, const uint8_t creator[4])
{
    memset(f, 0, sizeof *f);
    memcpy(f->cookie, "conectix", 8);
    f->features = VK_FEATURE_RESERVED;
    f->version = VK_VERSION_1_0;
    f->data_offset = disk_type == VK_DISK_FIXED ? UINT64_MAX : VK_FOOTER_SIZE;
    f->timestamp = timestamp;
    memcpy(f->creator_app, creator, 4);
    f->creator_version = 0x00000001u;   /* vhdkit 0.1 */
    memcpy(f->creator_os, "Wi2k", 4);   /* what Windows and qemu write */
    f->original_size = plan->size;
    f->current_size = plan->size;
    f->cylinders = plan->cylinders;
    f->heads = plan->heads;
    f->sectors = plan->sectors;
    f->disk_type = disk_type;
    memcpy(f->uuid, uuid, 16);
}

void vk_dynhdr_new(vk_dynhdr *h, uint32_t max_entries, uint32_t block_size)
{
    memset(h, 0, sizeof *h);
    memcpy(h->cookie, "cxsparse", 8);
    h->data_offset = UINT64_MAX;
    h->table_offset = VK_BAT_OFFSET;
    h->version = VK_VERSION_1_0;
    h->max_table_entries = max_entries;
    h->block_size = block_size;
}

/* ---- an opened image for in-place rewrites ------------------------------ */
typedef struct vk_rw {
    int       fd;
    uint64_t  file_size;
    uint8_t   endb[VK_FOOTER_SIZE], c0b[VK_FOOTER_SIZE], hb[VK_DYNHDR_SIZE];
    vk_footer end, c0;
    int       end_ok, c0_ok, hdr_ok;
    vk_dynhdr hdr;
    uint32_t *bat;          /* host order, hdr.max_table_entries entries     */
    long      abort_after;  /* test hook: stop after this many writes, or -1 */
    uint32_t  writes;
} vk_rw;

static int vk_rw_step(vk_rw *rw, const void *buf, size_t len, uint64_t off, vk_err *err)
{
    if (rw->abort_after >= 0 && rw->writes >= (uint32_t)rw->abort_after)
        return vk_fail(err, VK_E_INTERRUPTED, off, "stopped by the abort_after_writes test hook after %u writes",
                       rw->writes);
    int rc = vk_pwrite_full(rw->fd, buf, len, off, err);
    if (!rc) rw->writes++;
    return rc;
}

static int vk_rw_truncate(vk_rw *rw, uint64_t size, vk_err *err)
{
    if (rw->abort_after >= 0 && rw->writes >= (uint32_t)rw->abort_after)
        return vk_fail(err, VK_E_INTERRUPTED, size, "stopped by the abort_after_writes test hook after %u writes",
                       rw->writes);
    if (ftruncate(rw->fd, (off_t)size) != 0) return vk_fail_errno(err, errno, size, "cannot resize the image");
    rw->writes++;
    return VK_OK;
}

/* Read and validate the dynamic header at f->data_offset and the BAT.  The
 * table rule is the writer's policy, stricter than the reader's
 * (vk_bat_table_validate): every declared entry inside the file, since
 * modify rewrites and relocates the whole table. */
static int vk_rw_load_header(vk_rw *rw, const vk_footer *f, vk_err *err)
{
    uint64_t end;
    if (f->data_offset < VK_FOOTER_SIZE || vk_add_ovf(f->data_offset, VK_DYNHDR_SIZE, &end) || end > rw->file_size)
        return vk_fail(err, VK_E_RANGE, f->data_offset, "dynamic header offset %llu is outside the file",
                       (unsigned long long)f->data_offset);
    int rc = vk_pread_full(rw->fd, rw->hb, sizeof rw->hb, f->data_offset, err);
    if (rc) return rc;
    if ((rc = vk_dynhdr_validate(rw->hb, &rw->hdr, f->data_offset, NULL, NULL, err))) return rc;
    uint64_t n = rw->hdr.max_table_entries, bat_end;
    if (n == 0 || n > (VK_MAX_VIRTUAL_SIZE / VK_SECTOR) || n * 4 > rw->file_size ||
        vk_add_ovf(rw->hdr.table_offset, n * 4, &bat_end) || bat_end > rw->file_size)
        return vk_fail(err, VK_E_RANGE, rw->hdr.table_offset, "BAT (%llu entries at %llu) is outside the file",
                       (unsigned long long)n, (unsigned long long)rw->hdr.table_offset);
    uint8_t *raw = malloc(n * 4);
    rw->bat = malloc(n * 4);
    if (!raw || !rw->bat) { free(raw); return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "cannot allocate the BAT"); }
    rc = vk_pread_full(rw->fd, raw, n * 4, rw->hdr.table_offset, err);
    for (uint64_t i = 0; !rc && i < n; i++) rw->bat[i] = vk_be32(raw + 4 * i);
    free(raw);
    if (!rc) rw->hdr_ok = 1;
    return rc;
}

/* The BAT entries the footer f's disk addresses, as the opener judges them
 * (vk_bat_entry_class): the first it would refuse fails. */
static int vk_rw_check_bat(const vk_rw *rw, const vk_footer *f, vk_err *err)
{
    vk_bat_layout g;
    vk_bat_layout_of(&g, &rw->hdr, f->data_offset, rw->file_size, rw->file_size - VK_FOOTER_SIZE, f->current_size);
    for (uint64_t i = 0; i < g.disk_entries; i++)
        if (vk_bat_class_fatal(vk_bat_entry_class(&g, i, rw->bat[i])))
            return vk_bat_entry_validate(&g, i, rw->bat[i], NULL, NULL, err);
    return VK_OK;
}

static void vk_rw_close(vk_rw *rw)
{
    if (rw->fd >= 0) close(rw->fd);
    free(rw->bat);
    rw->fd = -1;
    rw->bat = NULL;
}

static int vk_rw_open(vk_rw *rw, const char *path, int writable, vk_err *err)
{
    memset(rw, 0, sizeof *rw);
    rw->fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block */
    if (rw->fd < 0) {
        int e = errno;
        if (e == ENOENT) return vk_fail(err, VK_E_NOTFOUND, UINT64_MAX, "no such file: %s", path);
        return vk_fail_errno(err, e, UINT64_MAX, "cannot open %s", path);
    }
    struct stat st;
    if (fstat(rw->fd, &st) != 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot stat %s", path);
    if (!S_ISREG(st.st_mode)) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "%s is not a regular file", path);
    rw->file_size = (uint64_t)st.st_size;
    if (rw->file_size < VK_FOOTER_SIZE)
        return vk_fail(err, VK_E_FORMAT, 0, "%s is too small to be a VHD (%llu bytes)", path,
                       (unsigned long long)rw->file_size);
    int rc = vk_pread_full(rw->fd, rw->endb, VK_FOOTER_SIZE, rw->file_size - VK_FOOTER_SIZE, err);
    if (!rc) rc = vk_pread_full(rw->fd, rw->c0b, VK_FOOTER_SIZE, 0, err);
    if (rc) return rc;
    /* footers repair can trust: cookie, checksum and disk type intact */
    rw->end_ok = vk_footer_intact(rw->endb, &rw->end, NULL) == VK_OK;
    rw->c0_ok = vk_footer_intact(rw->c0b, &rw->c0, NULL) == VK_OK && rw->c0.disk_type != VK_DISK_FIXED;
    vk_options opts;
    vk_get_options(&opts);
    rw->abort_after = opts.abort_after_writes;
    return VK_OK;
}

/* Is a footer consistent with the loaded header (sizes fit the BAT)? */
static int vk_fits_header(const vk_rw *rw, const vk_footer *f)
{
    return rw->hdr_ok && f->data_offset == rw->c0.data_offset &&
           f->current_size <= (uint64_t)rw->hdr.max_table_entries * rw->hdr.block_size;
}

/* ---- modify ------------------------------------------------------------- */
static int vk_nonzero_in(vk_rw *rw, uint64_t from, uint64_t to, int *found, vk_err *err)
{
    uint8_t *buf = malloc(1u << 20);
    if (!buf) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
    int rc = VK_OK;
    *found = 0;
    while (from < to && !*found) {
        off_t d = lseek(rw->fd, (off_t)from, SEEK_DATA);
        if (d < 0 || (uint64_t)d >= to) break;
        from = (uint64_t)d;
        size_t n = to - from < (1u << 20) ? (size_t)(to - from) : (1u << 20);
        rc = vk_pread_full(rw->fd, buf, n, from, err);
        if (rc) break;
        if (!vk_is_zero(buf, n)) *found = 1;
        from += n;
    }
    free(buf);
    return rc;
}

static int vk_modify_fixed(vk_rw *rw, const vk_modify_opts *o, vk_footer *nf, vk_err *err)
{
    uint8_t fb[VK_FOOTER_SIZE];
    uint64_t old = rw->file_size - VK_FOOTER_SIZE, nsz = nf->current_size;
    vk_footer_encode(nf, fb);
    if (nsz == old) return vk_rw_step(rw, fb, sizeof fb, old, err);
    if (nsz < old && !o->force) {
        int found = 0;
        int rc = vk_nonzero_in(rw, nsz, old, &found, err);
        if (rc) return rc;
        if (found)
            return vk_fail(err, VK_E_NOSPACE, nsz, "shrinking to %llu bytes would discard non-zero data", (unsigned long long)nsz);
    }
    int rc;
    if (nsz > old) {
        /* Growing: (1) the OLD footer is copied to the new end, so the file
         * still reads as the old disk (its size fits the longer file);
         * (2) the old footer sector, now inside the new space, is zeroed;
         * (3) commit: the new footer at the new end.  A crash between the
         * steps leaves the old disk, never the new size with the old
         * footer's bytes showing as data (found by the crash harness). */
        static const uint8_t z[VK_FOOTER_SIZE];
        rc = vk_rw_step(rw, rw->endb, sizeof rw->endb, nsz, err);
        if (!rc) rc = vk_rw_step(rw, z, sizeof z, old, err);
        if (!rc) rc = vk_rw_step(rw, fb, sizeof fb, nsz, err);
        return rc;
    }
    if (o->force) {
        /* Shrinking with discard: commit point is the footer at the new end;
         * the old end footer stays valid until the truncate (a crash between
         * leaves the old disk with the footer's bytes in the part that was
         * being discarded on request). */
        rc = vk_rw_step(rw, fb, sizeof fb, nsz, err);
        if (rc) return rc;
        return vk_rw_truncate(rw, nsz + VK_FOOTER_SIZE, err);
    }
    /* Shrinking over zeros (checked above): (1) commit: the new footer
     * replaces the old one at the end, so the file reads as the new disk
     * with zeros past it, which repair cuts (vk_repair_fixed_tail);
     * (2) the footer at the new end; (3) truncate.  No state shows the old
     * disk with changed content. */
    rc = vk_rw_step(rw, fb, sizeof fb, old, err);
    if (!rc) rc = vk_rw_step(rw, fb, sizeof fb, nsz, err);
    if (rc) return rc;
    return vk_rw_truncate(rw, nsz + VK_FOOTER_SIZE, err);
}

static int vk_write_header(vk_rw *rw, vk_err *err)
{
    vk_dynhdr_encode(&rw->hdr, rw->hb);
    return vk_rw_step(rw, rw->hb, sizeof rw->hb, rw->c0.data_offset, err);
}

/* Bytes [*from, *to) of the file: the data of the block straddling disk
 * offset `size` past that offset, empty when they are all zeros (or the
 * block is unallocated or `size` ends on a block boundary).  A block lying
 * on the image's metadata (VK_BATE_OVERLAP) cannot be cleared there without
 * damaging the metadata: refused. */
static int vk_tail_past(vk_rw *rw, uint64_t size, uint64_t *from, uint64_t *to, vk_err *err)
{
    uint64_t bs = rw->hdr.block_size, b = size / bs;
    *from = *to = 0;
    if (size % bs == 0 || b >= rw->hdr.max_table_entries || rw->bat[b] == VK_BAT_UNUSED) return VK_OK;
    uint64_t data = (uint64_t)rw->bat[b] * VK_SECTOR + vk_bitmap_bytes((uint32_t)bs);
    uint64_t f = data + size % bs, t = data + bs < rw->file_size ? data + bs : rw->file_size;
    int found = 0;
    if (f < t) {
        int rc = vk_nonzero_in(rw, f, t, &found, err);
        if (rc) return rc;
    }
    if (!found) return VK_OK;
    vk_bat_layout g;
    vk_bat_layout_of(&g, &rw->hdr, rw->end.data_offset, rw->file_size, rw->file_size - VK_FOOTER_SIZE, size + bs);
    if (vk_bat_entry_class(&g, b, rw->bat[b]) != VK_BATE_OK)
        return vk_fail(err, VK_E_FORMAT, data, "block %llu overlaps the image's metadata, so its data past %llu bytes "
                       "cannot be cleared; run `vhdkit check`, then convert the image", (unsigned long long)b,
                       (unsigned long long)size);
    *from = f;
    *to = t;
    return VK_OK;
}

/* Make everything past disk offset `keep` read as zeros before a size
 * change commits: zero the straddling block's tail (vk_tail_past) and mark
 * every BAT entry from the first block wholly past `keep` unused.  When
 * growing, none of these bytes are part of the disk the current footer
 * describes (stale entries, the tail past its size), so any prefix of these
 * writes leaves that disk's content intact; when shrinking they are what
 * `force` discards. */
static int vk_forget_past(vk_rw *rw, uint64_t keep, uint64_t tail_from, uint64_t tail_to, vk_err *err)
{
    static const uint8_t z[64 * 1024], unused[4] = { 0xFF, 0xFF, 0xFF, 0xFF };
    uint64_t bs = rw->hdr.block_size;
    int rc = VK_OK;
    for (uint64_t p = tail_from; !rc && p < tail_to;) {
        size_t n = tail_to - p < sizeof z ? (size_t)(tail_to - p) : sizeof z;
        rc = vk_rw_step(rw, z, n, p, err);
        p += n;
    }
    for (uint64_t i = (keep + bs - 1) / bs; !rc && i < rw->hdr.max_table_entries; i++)
        if (rw->bat[i] != VK_BAT_UNUSED) {
            rc = vk_rw_step(rw, unused, sizeof unused, rw->hdr.table_offset + 4 * i, err);
            if (!rc) rw->bat[i] = VK_BAT_UNUSED;
        }
    return rc;
}

static int vk_modify_dynamic(vk_rw *rw, const vk_modify_opts *o, vk_footer *nf, vk_modify_result *res, vk_err *err)
{
    uint8_t fb[VK_FOOTER_SIZE], ob[VK_FOOTER_SIZE];
    uint64_t end_off = rw->file_size - VK_FOOTER_SIZE;
    uint64_t bs = rw->hdr.block_size, nsz = nf->current_size, osz = rw->end.current_size;
    uint64_t need = (nsz + bs - 1) / bs, had = (osz + bs - 1) / bs;
    uint64_t keep = nsz < osz ? nsz : osz, tail_from = 0, tail_to = 0;
    int rc;
    memcpy(ob, rw->endb, sizeof ob);
    vk_footer_encode(nf, fb);
    if (nsz != osz && (rc = vk_tail_past(rw, keep, &tail_from, &tail_to, err))) return rc;
    if (nsz < osz) {
        /* Allocated blocks of the disk beyond the new size, and data past it
         * in the block that straddles it, would be lost.  Entries past the
         * old disk (stale) were never its data. */
        int lose = tail_from < tail_to;
        for (uint64_t i = need; i < had && i < rw->hdr.max_table_entries; i++)
            if (rw->bat[i] != VK_BAT_UNUSED) lose = 1;
        if (lose && !o->force)
            return vk_fail(err, VK_E_NOSPACE, nsz, "shrinking to %llu bytes would discard allocated data", (unsigned long long)nsz);
    }
    /* Forget what lies beyond the part that stays first (so a grown region
     * reads zeros, not stale blocks or an old tail, and no state has
     * allocated blocks past the size), then commit. */
    if (nsz != osz && (rc = vk_forget_past(rw, keep, tail_from, tail_to, err))) return rc;
    if (nsz < osz) {
        rc = vk_rw_step(rw, fb, sizeof fb, end_off, err);
        if (!rc) rc = vk_rw_step(rw, fb, sizeof fb, 0, err);
        return rc;
    }
    if (need <= rw->hdr.max_table_entries) {
        rc = vk_rw_step(rw, fb, sizeof fb, end_off, err);   /* commit */
        if (!rc) rc = vk_rw_step(rw, fb, sizeof fb, 0, err); /* backup */
        return rc;
    }
    /* The BAT has no room: write a larger one where the end footer is, put
     * the old footer after it, point the header at it, then commit. */
    uint64_t nbytes = (need * 4 + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
    uint8_t *raw = malloc(nbytes);
    if (!raw) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "cannot allocate the BAT");
    memset(raw, 0xFF, nbytes);
    for (uint64_t i = 0; i < rw->hdr.max_table_entries; i++) vk_put32(raw + 4 * i, rw->bat[i]);
    uint64_t new_bat = end_off;
    uint64_t new_end = new_bat + nbytes;
    if (new_end / VK_SECTOR > UINT32_MAX) { free(raw); return vk_fail(err, VK_E_RANGE, new_end, "file too large"); }
    rc = vk_rw_step(rw, raw, nbytes, new_bat, err);
    free(raw);
    if (!rc) rc = vk_rw_step(rw, ob, sizeof ob, new_end, err);
    if (!rc) {
        rw->hdr.table_offset = new_bat;
        rw->hdr.max_table_entries = (uint32_t)need;
        rc = vk_write_header(rw, err);
    }
    if (!rc) rc = vk_rw_step(rw, fb, sizeof fb, new_end, err);   /* commit */
    if (!rc) rc = vk_rw_step(rw, fb, sizeof fb, 0, err);         /* backup */
    if (!rc) res->bat_relocated = 1;
    return rc;
}

int vk_modify(const char *path, const vk_modify_opts *o, vk_modify_result *res, vk_err *err)
{
    vk_rw rw;
    vk_err_clear(err);
    memset(res, 0, sizeof *res);
    int rc = vk_rw_open(&rw, path, 1, err);
    if (rc) goto out;
    if (!rw.end_ok) {
        rc = vk_fail(err, rw.c0_ok ? VK_E_CHECKSUM : VK_E_FORMAT, rw.file_size - VK_FOOTER_SIZE,
                     "the footer at the end of %s is damaged; run `vhdkit repair` first", path);
        goto out;
    }
    vk_footer nf = rw.end;
    res->disk_type = nf.disk_type;
    res->old_size = nf.current_size;
    if (nf.disk_type == VK_DISK_FIXED) {
        if (nf.current_size != rw.file_size - VK_FOOTER_SIZE) {
            rc = vk_fail(err, VK_E_FORMAT, rw.file_size - VK_FOOTER_SIZE,
                         "fixed image's size %llu does not match its file size %llu",
                         (unsigned long long)nf.current_size, (unsigned long long)rw.file_size);
            goto out;
        }
    } else {
        if (!rw.c0_ok || memcmp(rw.c0b, rw.endb, VK_FOOTER_SIZE) != 0) {
            rc = vk_fail(err, VK_E_FORMAT, 0, "the footer copy at offset 0 of %s does not match the end footer; "
                         "run `vhdkit repair` first", path);
            goto out;
        }
        rc = vk_rw_load_header(&rw, &nf, err);
        if (!rc) rc = vk_rw_check_bat(&rw, &nf, err);
        if (rc) goto out;
    }
    if (o->set_uuid) memcpy(nf.uuid, o->uuid, 16);
    if (o->set_timestamp) nf.timestamp = o->timestamp;
    if (o->set_creator) memcpy(nf.creator_app, o->creator_app, 4);
    if (o->set_size) {
        if (nf.disk_type == VK_DISK_DIFF) {
            rc = vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "resizing a differencing image is not supported");
            goto out;
        }
        vk_size_plan plan;
        rc = vk_size_plan_make(o->size, o->size_rule, &plan, err);
        if (rc) goto out;
        if (nf.disk_type == VK_DISK_DYNAMIC && plan.size / rw.hdr.block_size >= UINT32_MAX) {
            rc = vk_fail(err, VK_E_RANGE, UINT64_MAX, "too many blocks");
            goto out;
        }
        /* Keep qemu reading the right size (see vk_default_creator). */
        if (!o->set_creator && memcmp(nf.creator_app, "vhdk", 4) == 0)
            memcpy(nf.creator_app, vk_default_creator(&plan), 4);
        nf.current_size = plan.size;
        nf.cylinders = plan.cylinders;
        nf.heads = plan.heads;
        nf.sectors = plan.sectors;
    }
    res->new_size = nf.current_size;
    memcpy(res->uuid, nf.uuid, 16);
    res->timestamp = nf.timestamp;
    if (nf.disk_type == VK_DISK_FIXED) rc = vk_modify_fixed(&rw, o, &nf, err);
    else rc = vk_modify_dynamic(&rw, o, &nf, res, err);
    if (!rc && fsync(rw.fd) != 0) rc = vk_fail_errno(err, errno, UINT64_MAX, "fsync of %s failed", path);
out:
    res->writes = rw.writes;
    vk_rw_close(&rw);
    return rc;
}

/* ---- repair ------------------------------------------------------------- */
/* Fields that define the layout: if these differ between the copies, which
 * one is right cannot be told from the footers alone. */
static int vk_same_structure(const vk_footer *a, const vk_footer *b)
{
    return a->disk_type == b->disk_type && a->data_offset == b->data_offset &&
           a->version == b->version;
}

/* A fixed image whose file is longer than its disk plus footer, where the
 * extra bytes are zeros or copies of the end footer, is what an interrupted
 * grow (vk_modify_fixed) leaves: roll it back to the old disk by putting the
 * footer right after the data and cutting the rest (VK_REPAIR_FIXED_CUT).  Extra bytes
 * holding anything else are left alone. */
static int vk_repair_fixed_tail(vk_rw *rw, int dry_run, vk_repair_result *res, vk_err *err)
{
    uint64_t size = rw->end.current_size, end = rw->file_size - VK_FOOTER_SIZE;
    if (size % VK_SECTOR || size >= end) return VK_OK;
    uint8_t b[VK_FOOTER_SIZE];
    static const uint8_t z[VK_FOOTER_SIZE];
    for (uint64_t off = size; off < end; off += VK_SECTOR) {
        int rc = vk_pread_full(rw->fd, b, VK_SECTOR, off, err);
        if (rc) return rc;
        if (memcmp(b, z, VK_SECTOR) != 0 && memcmp(b, rw->endb, VK_SECTOR) != 0) return VK_OK;
    }
    res->action = VK_REPAIR_FIXED_CUT;
    res->footer_offset = size;
    if (dry_run) return VK_OK;
    int rc = vk_pwrite_full(rw->fd, rw->endb, VK_FOOTER_SIZE, size, err);
    if (!rc && ftruncate(rw->fd, (off_t)(size + VK_FOOTER_SIZE)) != 0)
        rc = vk_fail_errno(err, errno, size, "cannot cut the image back to its size");
    if (!rc && fsync(rw->fd) != 0) rc = vk_fail_errno(err, errno, UINT64_MAX, "fsync failed");
    return rc;
}

/* The blocks of a dynamic image cut at rw->file_size whose bitmap or data
 * lay past the cut, and the virtual bytes of each that are gone. */
static void vk_rw_lost(const vk_rw *rw, vk_repair_result *res)
{
    uint64_t cut = rw->file_size, bs = rw->hdr.block_size, vsize = rw->c0.current_size;
    uint64_t bm = vk_bitmap_bytes(rw->hdr.block_size);
    for (uint64_t i = 0; i < rw->hdr.max_table_entries; i++) {
        if (rw->bat[i] == VK_BAT_UNUSED) continue;
        uint64_t at = (uint64_t)rw->bat[i] * VK_SECTOR, data = at + bm;
        if (data + bs <= cut) continue;
        uint64_t start = i * bs, end = start + bs;
        if (data < cut) start += cut - data;  /* the bitmap and the bytes before the cut survive */
        if (end > vsize) end = vsize;
        if (start >= end) continue;
        if (res->lost && res->lost_count < res->lost_cap)
            res->lost[res->lost_count] = (vk_lost_range){ start, end, (uint32_t)i };
        res->lost_count++;
    }
}

/* A repair refused because of damage it cannot mend: the reason (err's
 * message) and what repair does mend, in one line. */
static int cannot_repair(const char *path, int rc, vk_err *err)
{
    char why[sizeof err->msg];
    snprintf(why, sizeof why, "%s", err->msg);
    return vk_fail(err, rc, err->offset, "cannot repair %s: %s; repair restores only the footer and its copy at "
                   "offset 0 ('vhdkit check' lists every problem)", path, why);
}

int vk_repair(const char *path, int flags, vk_repair_result *res, vk_err *err)
{
    vk_rw rw;
    int dry_run = flags & VK_REPAIR_DRY_RUN;
    vk_lost_range *lost = res->lost;
    uint64_t lost_cap = res->lost_cap;
    vk_err_clear(err);
    memset(res, 0, sizeof *res);
    res->lost = lost;
    res->lost_cap = lost_cap;
    int rc = vk_rw_open(&rw, path, !dry_run, err);
    if (rc) goto out;
    rw.abort_after = -1;
    res->footer_offset = rw.file_size - VK_FOOTER_SIZE;
    if (rw.end_ok && rw.end.disk_type == VK_DISK_FIXED) {
        res->disk_type = VK_DISK_FIXED;
        rc = vk_repair_fixed_tail(&rw, dry_run, res, err);
        goto out;   /* a fixed image's only footer is fine */
    }
    if (!rw.end_ok && !rw.c0_ok) {
        rc = vk_fail(err, VK_E_FORMAT, rw.file_size - VK_FOOTER_SIZE,
                     "neither the end footer nor a copy at offset 0 of %s verifies; cannot repair "
                     "(a fixed image has no backup copy)", path);
        goto out;
    }
    if (rw.end_ok && rw.c0_ok && memcmp(rw.endb, rw.c0b, VK_FOOTER_SIZE) == 0) {
        /* Both copies agree: nothing for repair to do, unless what they
         * point at is damaged, which restoring footers cannot fix. */
        res->disk_type = rw.end.disk_type;
        if (rw.end.disk_type != VK_DISK_FIXED &&
            ((rc = vk_rw_load_header(&rw, &rw.end, err)) || (rc = vk_rw_check_bat(&rw, &rw.end, err))))
            rc = cannot_repair(path, rc, err);
        goto out;
    }
    /* The header is found through whichever copy verifies (the copy at 0
     * when both do: it is the structural anchor of a dynamic image). */
    rc = vk_rw_load_header(&rw, rw.c0_ok ? &rw.c0 : &rw.end, err);
    if (rc) { rc = cannot_repair(path, rc, err); goto out; }
    if (!rw.c0_ok) rw.c0 = rw.end;    /* vk_fits_header compares data_offset */
    const uint8_t *src = NULL;
    uint64_t where = 0;
    if (rw.end_ok && rw.c0_ok) {
        if (!vk_same_structure(&rw.end, &rw.c0)) {
            rc = vk_fail(err, VK_E_FORMAT, 0, "the two footer copies of %s describe different layouts; "
                         "refusing to guess which is right", path);
            goto out;
        }
        if (vk_fits_header(&rw, &rw.end)) { src = rw.endb; where = 0; res->action = VK_REPAIR_COPY_RESTORED; }
        else if (vk_fits_header(&rw, &rw.c0)) { src = rw.c0b; where = rw.file_size - VK_FOOTER_SIZE; res->action = VK_REPAIR_END_RESTORED; }
        else {
            rc = vk_fail(err, VK_E_FORMAT, 0, "neither footer copy of %s fits its dynamic header; refusing", path);
            goto out;
        }
    } else if (rw.end_ok) {
        if (!vk_fits_header(&rw, &rw.end)) {
            rc = vk_fail(err, VK_E_FORMAT, 0, "the end footer of %s does not fit its dynamic header", path);
            goto out;
        }
        src = rw.endb; where = 0; res->action = VK_REPAIR_COPY_RESTORED;
    } else {
        if (!vk_fits_header(&rw, &rw.c0)) {
            rc = vk_fail(err, VK_E_FORMAT, 0, "the footer copy at 0 of %s does not fit its dynamic header", path);
            goto out;
        }
        /* Overwrite the damaged last sector, unless the file was cut short
         * into data: then the footer goes after everything referenced. */
        uint64_t used = vk_dyn_used_end(&rw.hdr, rw.c0.data_offset, rw.bat, rw.hdr.max_table_entries, rw.file_size);
        uint64_t last = (rw.file_size - VK_FOOTER_SIZE) / VK_SECTOR * VK_SECTOR;
        where = last >= used ? last : used;
        src = rw.c0b;
        res->action = where == rw.file_size - VK_FOOTER_SIZE ? VK_REPAIR_END_RESTORED : VK_REPAIR_END_APPENDED;
        if (res->action == VK_REPAIR_END_APPENDED) vk_rw_lost(&rw, res);
    }
    res->disk_type = rw.c0.disk_type;
    res->footer_offset = where == 0 ? rw.file_size - VK_FOOTER_SIZE : where;
    if (dry_run) goto out;
    if (res->lost_count && !(flags & VK_REPAIR_FORCE)) {
        rc = vk_fail(err, VK_E_EXISTS, rw.file_size, "repairing %s would lose the data of %llu block(s) "
                     "past the end of the cut file", path, (unsigned long long)res->lost_count);
        goto out;
    }
    rc = vk_pwrite_full(rw.fd, src, VK_FOOTER_SIZE, where, err);
    if (!rc && where != 0 && where + VK_FOOTER_SIZE != rw.file_size &&
        ftruncate(rw.fd, (off_t)(where + VK_FOOTER_SIZE)) != 0)
        rc = vk_fail_errno(err, errno, where, "cannot set the size of %s", path);
    if (!rc && fsync(rw.fd) != 0) rc = vk_fail_errno(err, errno, UINT64_MAX, "fsync of %s failed", path);
out:
    vk_rw_close(&rw);
    return rc;
}

/* ---- VHDX repair ------------------------------------------------------------ */
/* The log is replayed into the file the way the spec makes crash-safe:
 * every write of the replay is idempotent and the log stays active (the
 * header's LogGuid set) until the replayed data is fsynced; only then are
 * both headers rewritten, one after the other, each with a higher sequence
 * number and LogGuid zero.  A crash at any point leaves either the old
 * file with its log (replayed again on the next open) or the new one. */
int vk_vhdx_repair(const char *path, int dry_run, vk_vhdx_repair_result *res, vk_err *err)
{
    vk_layer L;
    int rc;
    vk_err_clear(err);
    memset(res, 0, sizeof *res);
    if ((rc = vk_layer_open(&L, path, VK_SIZE_AUTO, err))) goto out;
    vkx_disk *D = L.vx;
    if (!D) { rc = vk_fail(err, VK_E_INVALID, UINT64_MAX, "%s is not a VHDX", path); goto out; }
    res->log_entries = D->log_entries;
    res->writes = D->n_ops;
    if (!D->log_pending || dry_run) { res->replayed = D->log_pending && !dry_run; goto out; }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) { rc = vk_fail_errno(err, errno, UINT64_MAX, "cannot open %s for writing", path); goto out; }
    rc = vkx_log_apply(D, fd, err);
    uint8_t b[VKX_HEADER_SIZE];
    const uint64_t at[2] = { VKX_HEADER1_OFFSET, VKX_HEADER2_OFFSET };
    uint64_t seq = D->hdr[D->current].seq;
    for (int k = 1; k <= 2 && !rc; k++) {
        int slot = (D->current + k) % 2;   /* the other one first */
        if ((rc = vk_pread_full(fd, b, sizeof b, at[D->current], err))) break;
        vkx_put64(b + 8, seq + (uint64_t)k);
        memset(b + 48, 0, 16);             /* LogGuid: nothing left to replay */
        if ((rc = vk_uuid_generate(b + 16, err))) break;   /* FileWriteGuid: the file changed */
        vkx_put32(b + 4, 0);
        vkx_put32(b + 4, vk_crc32c(b, sizeof b, 4));
        if ((rc = vk_pwrite_full(fd, b, sizeof b, at[slot], err))) break;
        if (fsync(fd) != 0) rc = vk_fail_errno(err, errno, UINT64_MAX, "fsync of %s failed", path);
    }
    close(fd);
    if (!rc) res->replayed = 1;
out:
    vk_layer_close(&L);
    return rc;
}
