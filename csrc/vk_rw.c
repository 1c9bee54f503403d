/* vk_rw.c -- writing into the leaf of an opened image (r+ mode).
 *
 * Order of writes, so that an interruption at any point (kill -9, a full
 * disk, the test hook) leaves an image that opens and checks clean:
 *
 *   1. a new block needs room: the footer is first copied to the new end of
 *      the file (the old footer bytes become unreferenced block space);
 *   2. the data sectors are written (partial sectors read-modify-written
 *      through the chain below, so a sub-sector write in a differencing disk
 *      keeps the parent's bytes around it);
 *   3. the bitmap sector(s) with the new bits;
 *   4. for a new block, last, the 4-byte BAT entry that makes it visible.
 *
 * Until step 3 the new data is invisible (bits clear); until step 4 a new
 * block is unreferenced space between the last block and the footer, which
 * the next allocation reuses (allocation starts at the end of everything the
 * header, BAT and locators reference, not at the footer).  The footer's
 * content never changes, so a child's recorded parent timestamp stays valid.
 * Durability against power loss is by vk_image_flush (fsync), which the
 * Python stream calls on flush()/close(). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vk_image.h"
#include "vk_chain.h"

int vk_image_make_writable(vk_image *img, vk_err *err)
{
    vk_err_clear(err);
    if (!img) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no image");
    if (img->rw) return VK_OK;
    vk_layer *L = &img->layer[0];
    if (L->vx)
        return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "%s is a VHDX, which vhdkit reads but does not write "
                       "(convert it to a VHD first)", L->path);
    if (L->footer_source != 0 || L->footer_size != VK_FOOTER_SIZE)
        return vk_fail(err, VK_E_FORMAT, UINT64_MAX,
                       "%s: the footer at the end of the file is damaged; run 'vhdkit repair' first", L->path);
    if (L->virtual_size % VK_SECTOR)
        return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "%s: virtual size %llu is not a whole number of sectors",
                       L->path, (unsigned long long)L->virtual_size);
    if (L->footer.disk_type == VK_DISK_FIXED && L->fixed_data_end != L->virtual_size)
        return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "%s: fixed disk whose data size differs from its virtual size",
                       L->path);
    if (L->bat_overlaps)
        return vk_fail(err, VK_E_FORMAT, UINT64_MAX, "%s: %u block(s) overlap its footer, header or BAT, which a write "
                       "into them would damage ('vhdkit check' lists them)", L->path, L->bat_overlaps);
    int fd = open(L->path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == EACCES || e == EROFS || e == EPERM)
            return vk_fail(err, VK_E_READONLY, UINT64_MAX, "%s cannot be opened for writing", L->path);
        return vk_fail_errno(err, e, UINT64_MAX, "cannot open %s for writing", L->path);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_dev != L->dev || st.st_ino != L->ino || (uint64_t)st.st_size != L->file_size) {
        close(fd);
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "%s changed while it was being opened", L->path);
    }
    close(L->fd);
    L->fd = fd;
    vk_options opts;
    vk_get_options(&opts);
    img->abort_after = opts.abort_after_writes;
    img->writes = 0;
    /* allocation starts after everything the leaf references (never past the footer) */
    img->alloc_next = L->footer.disk_type == VK_DISK_FIXED ? 0 :
        vk_dyn_used_end(&L->hdr, L->footer.data_offset, L->bat, L->n_bat, L->file_size - VK_FOOTER_SIZE);
    img->rw = 1;
    return VK_OK;
}

int vk_rw_pwrite(vk_image *img, const void *buf, size_t len, uint64_t off, vk_err *err)
{
    if (img->abort_after >= 0 && img->writes >= (uint32_t)img->abort_after)
        return vk_fail(err, VK_E_INTERRUPTED, off, "stopped by the abort_after_writes test hook after %u writes",
                       img->writes);
    int rc = vk_pwrite_full(img->layer[0].fd, buf, len, off, err);
    if (!rc) img->writes++;
    return rc;
}

int vk_rw_grow(vk_image *img, uint64_t end, vk_err *err)
{
    vk_layer *L = &img->layer[0];
    uint64_t foot = L->file_size - VK_FOOTER_SIZE;
    uint8_t fb[VK_FOOTER_SIZE];
    if (end <= foot) return VK_OK;
    end = (end + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
    /* the footer exactly as it is (reserved bytes included) */
    int rc = vk_pread_full(L->fd, fb, sizeof fb, foot, err);
    if (rc) return rc;
    if ((rc = vk_rw_pwrite(img, fb, sizeof fb, end, err))) return rc;
    L->file_size = end + VK_FOOTER_SIZE;
    return VK_OK;
}


/* Read-modify-write one sector of block data at file offset `at`: the
 * sector's current content (virtual offset voff) with len bytes at `skip`
 * replaced. */
static int rmw_sector(vk_image *img, uint64_t voff, uint64_t at, const uint8_t *src, size_t skip, size_t len,
                      vk_err *err)
{
    uint8_t sec[VK_SECTOR];
    int rc = vk_image_pread(img, sec, sizeof sec, voff, err);
    if (rc) return rc;
    memcpy(sec + skip, src, len);
    return vk_rw_pwrite(img, sec, sizeof sec, at, err);
}

/* Write [in, in+n) of block blk of the leaf from buf. */
static int write_block(vk_image *img, uint32_t blk, const uint8_t *buf, uint64_t in, size_t n, vk_err *err)
{
    vk_layer *L = &img->layer[0];
    uint64_t bs = L->block_size, vblock = (uint64_t)blk * bs, base;
    int fresh = L->bat[blk] == VK_BAT_UNUSED, rc;

    if (fresh) {
        uint64_t d = (img->alloc_next + L->bitmap_size + 4095u) / 4096u * 4096u;   /* data 4 KiB aligned */
        base = d - L->bitmap_size;
        if (base / VK_SECTOR >= VK_BAT_UNUSED)
            return vk_fail(err, VK_E_NOSPACE, base, "%s: no room for another block (sector numbers are 32-bit)",
                           L->path);
        uint64_t old_end = L->file_size;
        if ((rc = vk_rw_grow(img, base + L->bitmap_size + bs, err))) return rc;
        /* The new block may cover the old footer or space an interrupted run
         * left unreferenced: zero its data area there, so that readers that
         * ignore bitmaps (qemu does for dynamic disks) see zeros too. */
        if (d < old_end) {
            static const uint8_t zeros[65536];
            uint64_t stop = old_end < d + bs ? old_end : d + bs;
            for (uint64_t p = d; p < stop && !rc;) {
                size_t k = stop - p < sizeof zeros ? (size_t)(stop - p) : sizeof zeros;
                rc = vk_rw_pwrite(img, zeros, k, p, err);
                p += k;
            }
            if (rc) return rc;
        }
    } else {
        base = (uint64_t)L->bat[blk] * VK_SECTOR;
    }
    uint64_t data = base + L->bitmap_size;

    /* data: a partial head sector, whole sectors, a partial tail sector */
    uint64_t a = in, b = in + n;
    uint64_t a_up = (a + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR, b_dn = b / VK_SECTOR * VK_SECTOR;
    if (a_up > b_dn) {
        uint64_t s = a / VK_SECTOR * VK_SECTOR;
        rc = rmw_sector(img, vblock + s, data + s, buf, (size_t)(a - s), n, err);
    } else {
        rc = VK_OK;
        if (a < a_up)
            rc = rmw_sector(img, vblock + a - a % VK_SECTOR, data + a - a % VK_SECTOR, buf, (size_t)(a % VK_SECTOR),
                            (size_t)(a_up - a), err);
        if (!rc && b_dn > a_up) rc = vk_rw_pwrite(img, buf + (a_up - a), (size_t)(b_dn - a_up), data + a_up, err);
        if (!rc && b > b_dn) rc = rmw_sector(img, vblock + b_dn, data + b_dn, buf + (b_dn - a), 0, (size_t)(b - b_dn), err);
    }
    if (rc) return rc;

    /* bitmap: the sectors of it whose bits change */
    uint8_t *bm = malloc(L->bitmap_size);
    if (!bm) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory for a bitmap");
    if (fresh) {
        memset(bm, 0, L->bitmap_size);
    } else {
        const uint8_t *cur;
        if ((rc = vk_layer_bitmap(L, blk, &cur, err))) { free(bm); return rc; }
        memcpy(bm, cur, L->bitmap_size);
    }
    uint64_t s0 = a / VK_SECTOR, s1 = (b + VK_SECTOR - 1) / VK_SECTOR;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint64_t s = s0; s < s1; s++) {
        if (vk_bitmap_bit(bm, s)) continue;
        vk_bitmap_set(bm, s);
        if (lo == UINT64_MAX) lo = s;
        hi = s;
    }
    if (fresh) {
        rc = vk_rw_pwrite(img, bm, L->bitmap_size, base, err);
    } else if (lo != UINT64_MAX) {
        uint64_t from = lo / (8 * VK_SECTOR) * VK_SECTOR, to = (hi / (8 * VK_SECTOR) + 1) * VK_SECTOR;
        rc = vk_rw_pwrite(img, bm + from, (size_t)(to - from), base + from, err);
    }
    if (!rc) {
        memcpy(L->bm, bm, L->bitmap_size);
        L->bm_block = blk;
    } else {
        L->bm_block = VK_BAT_UNUSED;
    }
    free(bm);
    if (rc || !fresh) return rc;

    /* last: the BAT entry */
    uint8_t e[4];
    uint32_t sector = (uint32_t)(base / VK_SECTOR);
    vk_put32(e, sector);
    if ((rc = vk_rw_pwrite(img, e, sizeof e, L->hdr.table_offset + 4ull * blk, err))) return rc;
    L->bat[blk] = sector;
    L->bat_used++;
    img->alloc_next = base + L->bitmap_size + bs;
    return VK_OK;
}

int vk_image_pwrite(vk_image *img, const void *vbuf, size_t len, uint64_t off, vk_err *err)
{
    const uint8_t *buf = vbuf;
    uint64_t end;
    vk_err_clear(err);
    if (!img || (!buf && len)) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid arguments");
    vk_layer *L = &img->layer[0];
    if (!img->rw) return vk_fail(err, VK_E_READONLY, UINT64_MAX, "%s is open read-only", L->path);
    if (vk_add_ovf(off, len, &end) || end > L->virtual_size)
        return vk_fail(err, VK_E_RANGE, off, "write of %zu bytes at %llu is past the end of the disk (%llu bytes)",
                       len, (unsigned long long)off, (unsigned long long)L->virtual_size);
    if (L->footer.disk_type == VK_DISK_FIXED) return len ? vk_rw_pwrite(img, buf, len, off, err) : VK_OK;
    while (len > 0) {
        uint64_t blk = off / L->block_size, in = off % L->block_size;
        size_t n = len < L->block_size - in ? len : (size_t)(L->block_size - in);
        if (blk >= L->n_bat)
            return vk_fail(err, VK_E_NOSPACE, off, "%s: offset %llu is beyond its block allocation table", L->path,
                           (unsigned long long)off);
        int rc = write_block(img, (uint32_t)blk, buf, in, n, err);
        if (rc) return rc;
        buf += n; off += n; len -= n;
    }
    return VK_OK;
}

int vk_image_flush(vk_image *img, vk_err *err)
{
    vk_err_clear(err);
    if (!img || !img->rw) return VK_OK;
    if (fsync(img->layer[0].fd) != 0) return vk_fail_errno(err, errno, UINT64_MAX, "fsync of %s failed", img->layer[0].path);
    return VK_OK;
}

uint64_t vk_image_bytes_read(const vk_image *img)
{
    uint64_t n = img->bytes_read;
    for (int i = 0; i < img->n; i++) n += img->layer[i].bm_reads;
    return n;
}

void vk_image_reset_bytes_read(vk_image *img)
{
    img->bytes_read = 0;
    for (int i = 0; i < img->n; i++) img->layer[i].bm_reads = 0;
}

int vk_image_allocated(vk_image *img, uint64_t *bytes, vk_err *err)
{
    vk_extent ext[256];
    uint64_t off = 0, size = vk_image_size(img), total = 0;
    *bytes = 0;
    while (off < size) {
        size_t n = 0;
        int rc = vk_image_map(img, off, ext, 256, &n, err);
        if (rc) return rc;
        if (n == 0) break;
        for (size_t i = 0; i < n; i++)
            if (ext[i].allocated) total += ext[i].length;
        off = ext[n - 1].offset + ext[n - 1].length;
    }
    *bytes = total;
    return VK_OK;
}
