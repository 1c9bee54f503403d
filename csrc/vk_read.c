/* vk_read.c -- reading the virtual disk through a chain, and the
 * allocation map.
 *
 * Spec, "Block Allocation Table and Data Blocks": each block is a sector
 * bitmap followed by the data; "the bitmap is an array of bits in big-endian
 * order" -- bit 7 of byte 0 is sector 0 (MSB first).  In a dynamic disk a
 * clear bit (or an unallocated block) reads as zeros; in a differencing disk
 * it means "read this sector from the parent".
 *
 * Sectors with the same bit are coalesced into runs, so a fully written
 * block is one pread of the whole block. */
#include <string.h>

#include "vkx.h"

int vk_layer_bitmap(vk_layer *L, uint32_t block, const uint8_t **bm, vk_err *err)
{
    if (L->bm_block != block) {
        uint64_t off = (uint64_t)L->bat[block] * VK_SECTOR;
        int rc = vk_pread_full(L->fd, L->bm, L->bitmap_size, off, err);
        if (rc) { L->bm_block = VK_BAT_UNUSED; return rc; }
        L->bm_block = block;
        L->bm_reads += L->bitmap_size;
    }
    *bm = L->bm;
    return VK_OK;
}

/* Length in sectors of the run of equal bits starting at sector s, not past
 * sector `end` (exclusive).  Whole 0x00/0xFF bytes are skipped at once. */
static uint64_t bit_run(const uint8_t *bm, uint64_t s, uint64_t end, int *bit)
{
    int b = vk_bitmap_bit(bm, s);
    uint8_t full = b ? 0xFF : 0x00;
    uint64_t i = s + 1;
    while (i < end) {
        if ((i & 7) == 0 && i + 8 <= end && bm[i >> 3] == full) { i += 8; continue; }
        if (vk_bitmap_bit(bm, i) != b) break;
        i++;
    }
    *bit = b;
    return i - s;
}

static int read_layer(vk_image *img, int li, uint8_t *buf, size_t len, uint64_t off, vk_err *err);

/* Data not present in layer li: zeros in a dynamic disk, the parent's data
 * in a differencing disk. */
static int read_absent(vk_image *img, int li, uint8_t *buf, size_t len, uint64_t off, vk_err *err)
{
    vk_layer *L = &img->layer[li];
    if (L->footer.disk_type != VK_DISK_DIFF) { memset(buf, 0, len); return VK_OK; }
    if (li + 1 >= img->n)
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX,
                       "%s is a differencing disk opened without its parent", L->path);
    return read_layer(img, li + 1, buf, len, off, err);
}

static int read_layer(vk_image *img, int li, uint8_t *buf, size_t len, uint64_t off, vk_err *err)
{
    vk_layer *L = &img->layer[li];
    int rc;

    /* Past this layer's end (a smaller parent): zeros. */
    if (off >= L->virtual_size) { memset(buf, 0, len); return VK_OK; }
    if (len > L->virtual_size - off) {
        size_t keep = (size_t)(L->virtual_size - off);
        memset(buf + keep, 0, len - keep);
        len = keep;
    }
    while (L->vx && len > 0) {
        uint64_t n, foff;
        int st;
        if ((rc = vkx_classify(L->vx, off, len, &n, &st, &foff, err))) return rc;
        if (st > 0) {
            rc = vkx_pread(L->vx, buf, (size_t)n, foff, err);
            img->bytes_read += n;
        } else if (st == 0) {
            memset(buf, 0, (size_t)n);
        } else {
            rc = read_absent(img, li, buf, (size_t)n, off, err);
        }
        if (rc) return rc;
        buf += n; off += n; len -= (size_t)n;
    }
    if (L->vx) return VK_OK;
    if (L->footer.disk_type == VK_DISK_FIXED)
        return vk_pread_full(L->fd, buf, len, off, err);

    while (len > 0) {
        uint64_t blk = off / L->block_size;
        uint64_t in = off % L->block_size;
        size_t n = len < L->block_size - in ? len : (size_t)(L->block_size - in);
        uint32_t e = blk < L->n_bat ? L->bat[blk] : VK_BAT_UNUSED;
        if (e == VK_BAT_UNUSED) {
            if ((rc = read_absent(img, li, buf, n, off, err))) return rc;
        } else {
            const uint8_t *bm;
            uint64_t data = (uint64_t)e * VK_SECTOR + L->bitmap_size;
            if ((rc = vk_layer_bitmap(L, (uint32_t)blk, &bm, err))) return rc;
            uint64_t p = in, stop = in + n;
            while (p < stop) {
                int bit;
                uint64_t s = p / VK_SECTOR;
                uint64_t s_end = (stop + VK_SECTOR - 1) / VK_SECTOR;
                uint64_t run = bit_run(bm, s, s_end, &bit);
                uint64_t q = (s + run) * VK_SECTOR;
                if (q > stop) q = stop;
                uint8_t *dst = buf + (p - in);
                if (bit) {
                    rc = vk_pread_full(L->fd, dst, (size_t)(q - p), data + p, err);
                    img->bytes_read += q - p;
                }
                else rc = read_absent(img, li, dst, (size_t)(q - p), off + (p - in), err);
                if (rc) {
                    /* Reading past the end of a truncated file is a range error. */
                    return rc;
                }
                p = q;
            }
        }
        buf += n; off += n; len -= n;
    }
    return VK_OK;
}

int vk_image_pread(vk_image *img, void *buf, size_t len, uint64_t off, vk_err *err)
{
    uint64_t end;
    vk_err_clear(err);
    if (!img || (!buf && len)) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid arguments");
    if (vk_add_ovf(off, len, &end) || end > img->layer[0].virtual_size)
        return vk_fail(err, VK_E_RANGE, off, "read of %zu bytes at %llu is past the end of the disk (%llu bytes)",
                       len, (unsigned long long)off, (unsigned long long)img->layer[0].virtual_size);
    return read_layer(img, 0, buf, len, off, err);
}

/* ---- allocation map ------------------------------------------------------ */

/* Classify the run starting at off (at most maxlen bytes) in layer li:
 * *len gets its length, *layer the layer holding it (-1 = zeros) and *foff
 * the file offset there. */
static int classify(vk_image *img, int li, uint64_t off, uint64_t maxlen, uint64_t *len, int *layer,
                    uint64_t *foff, vk_err *err)
{
    vk_layer *L = &img->layer[li];
    int rc;
    *foff = 0;
    if (off >= L->virtual_size) { *len = maxlen; *layer = -1; return VK_OK; }
    if (maxlen > L->virtual_size - off) maxlen = L->virtual_size - off;
    int diff = L->footer.disk_type == VK_DISK_DIFF;
    if (L->vx) {
        int st;
        if ((rc = vkx_classify(L->vx, off, maxlen, len, &st, foff, err))) return rc;
        if (st > 0) { *layer = li; return VK_OK; }
        *layer = -1;
        if (st == 0) return VK_OK;
        if (li + 1 < img->n) return classify(img, li + 1, off, *len, len, layer, foff, err);
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "%s opened without its parent", L->path);
    }
    if (L->footer.disk_type == VK_DISK_FIXED) { *len = maxlen; *layer = li; *foff = off; return VK_OK; }

    uint64_t blk = off / L->block_size, in = off % L->block_size;
    if (blk >= L->n_bat) {
        /* Past the table every block is absent: one run to maxlen, not one
         * per block (2040 GiB of 512-byte blocks is 4e9 blocks). */
        if (diff && li + 1 < img->n) return classify(img, li + 1, off, maxlen, len, layer, foff, err);
        if (diff) return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "%s opened without its parent", L->path);
        *len = maxlen; *layer = -1; return VK_OK;
    }
    if (maxlen > L->block_size - in) maxlen = L->block_size - in;
    uint32_t e = L->bat[blk];
    if (e == VK_BAT_UNUSED) {
        if (diff && li + 1 < img->n) return classify(img, li + 1, off, maxlen, len, layer, foff, err);
        if (diff) return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "%s opened without its parent", L->path);
        *len = maxlen; *layer = -1; return VK_OK;
    }
    const uint8_t *bm;
    int bit;
    if ((rc = vk_layer_bitmap(L, (uint32_t)blk, &bm, err))) return rc;
    uint64_t s = in / VK_SECTOR, s_end = (in + maxlen + VK_SECTOR - 1) / VK_SECTOR;
    uint64_t q = (s + bit_run(bm, s, s_end, &bit)) * VK_SECTOR;
    uint64_t run = (q > in + maxlen ? in + maxlen : q) - in;
    if (bit) { *len = run; *layer = li; *foff = (uint64_t)e * VK_SECTOR + L->bitmap_size + in; return VK_OK; }
    if (diff && li + 1 < img->n) return classify(img, li + 1, off, run, len, layer, foff, err);
    if (diff) return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "%s opened without its parent", L->path);
    *len = run; *layer = -1;
    return VK_OK;
}

int vk_image_map(vk_image *img, uint64_t start, vk_extent *out, size_t cap, size_t *n_out, vk_err *err)
{
    size_t n = 0;
    uint64_t size, off = start;
    vk_err_clear(err);
    *n_out = 0;
    if (!img || (!out && cap)) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid arguments");
    size = img->layer[0].virtual_size;
    while (off < size) {
        uint64_t len = 0, foff = 0;
        int layer = -1, rc;
        if ((rc = classify(img, 0, off, size - off, &len, &layer, &foff, err))) return rc;
        if (n > 0) {
            vk_extent *x = &out[n - 1];
            int same = x->layer == layer && x->allocated == (layer >= 0) &&
                       (layer < 0 || x->file_offset + x->length == foff);
            if (same) { x->length += len; off += len; continue; }
        }
        if (n == cap) break;
        out[n].offset = off;
        out[n].length = len;
        out[n].allocated = layer >= 0;
        out[n].layer = layer;
        out[n].file_offset = foff;
        n++;
        off += len;
    }
    *n_out = n;
    return VK_OK;
}
