/* vk_compare.c -- content comparison of two images (raw or any VHD), like
 * `qemu-img compare`: ranges unallocated on both sides are skipped, and
 * where the sizes differ the longer side must be zero past the shorter. */
#include <stdlib.h>
#include <string.h>

#include "vk_write.h"

#define VK_CMP_CHUNK (1u << 20)

static int vk_cmp_init(vk_src *s, vk_image *img, int fd, vk_err *err)
{
    return img ? vk_src_image_init(s, img, err) : vk_src_raw_init(s, fd, UINT64_MAX, err);
}

static uint64_t vk_cmp_next(vk_src *s, uint64_t off)
{
    if (off >= s->size) return UINT64_MAX;
    return s->next_data ? s->next_data(s, off) : off;
}

/* Read exactly n bytes (zeros past the source's end). */
static int vk_cmp_read(vk_src *s, uint8_t *buf, size_t n, uint64_t off, vk_err *err)
{
    size_t got = 0;
    if (off < s->size) {
        size_t want = s->size - off < n ? (size_t)(s->size - off) : n;
        int rc = s->read(s, buf, want, off, &got, err);
        if (rc) return rc;
        if (got < want)
            return vk_fail(err, VK_E_RANGE, off + got, "input ended early at offset %llu",
                           (unsigned long long)(off + got));
    }
    memset(buf + got, 0, n - got);
    return VK_OK;
}

int vk_compare(vk_image *a, int a_fd, vk_image *b, int b_fd, vk_compare_result *res, vk_err *err)
{
    vk_src sa, sb;
    vk_err_clear(err);
    memset(res, 0, sizeof *res);
    res->first_difference = UINT64_MAX;
    int rc = vk_cmp_init(&sa, a, a_fd, err);
    if (rc) return rc;
    rc = vk_cmp_init(&sb, b, b_fd, err);
    if (rc) { vk_src_fini(&sa); return rc; }
    if (sa.stream || sb.stream) {
        rc = vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "compare needs files, not streams");
        goto out;
    }
    res->size_a = sa.size;
    res->size_b = sb.size;
    uint64_t total = sa.size > sb.size ? sa.size : sb.size;
    uint8_t *ba = malloc(VK_CMP_CHUNK), *bb = malloc(VK_CMP_CHUNK);
    if (!ba || !bb) { free(ba); free(bb); rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory"); goto out; }
    uint64_t off = 0;
    while (off < total) {
        /* Skip what neither side holds. */
        uint64_t na = vk_cmp_next(&sa, off), nb = vk_cmp_next(&sb, off);
        uint64_t nx = na < nb ? na : nb;
        if (nx >= total) break;
        off = nx / VK_SECTOR * VK_SECTOR;
        size_t n = total - off < VK_CMP_CHUNK ? (size_t)(total - off) : VK_CMP_CHUNK;
        if ((rc = vk_cmp_read(&sa, ba, n, off, err)) || (rc = vk_cmp_read(&sb, bb, n, off, err))) break;
        if (memcmp(ba, bb, n) != 0) {
            size_t i = 0;
            while (ba[i] == bb[i]) i++;
            res->first_difference = off + i;
            break;
        }
        off += n;
    }
    free(ba);
    free(bb);
    if (!rc) res->identical = res->first_difference == UINT64_MAX;
out:
    vk_src_fini(&sa);
    vk_src_fini(&sb);
    return rc;
}
