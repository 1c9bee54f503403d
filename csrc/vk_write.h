/*
 * vk_write.h -- private declarations of the writer (vk_write.c, vk_convert.c).
 * Not part of the cffi boundary.
 */
#ifndef VK_WRITE_H
#define VK_WRITE_H

#include "vk_internal.h"

/* A source of virtual-disk bytes for the conversion engine. */
typedef struct vk_src vk_src;
struct vk_src {
    uint64_t size;     /* content length, or UINT64_MAX while unknown (stream) */
    int      stream;   /* reads must be sequential; size known only at EOF   */
    /* Read up to len bytes at off; *got < len only at the end of the input. */
    int (*read)(vk_src *s, uint8_t *buf, size_t len, uint64_t off, size_t *got, vk_err *err);
    /* First offset >= off that may hold non-zero data (size if none), or
     * NULL when the source knows nothing about holes. */
    uint64_t (*next_data)(vk_src *s, uint64_t off);
    void    *ctx;
    int      fd;
};

/* Sources: a raw file or pipe (in_size UINT64_MAX = until EOF / file size),
 * an opened image.  vk_src_fini releases what an init allocated. */
int  vk_src_raw_init(vk_src *src, int in_fd, uint64_t in_size, vk_err *err);
int  vk_src_image_init(vk_src *src, vk_image *img, vk_err *err);
void vk_src_fini(vk_src *src);

/* Convert any source into opts->kind on out_fd (the engine of vk_create,
 * vk_convert_raw and vk_convert_image). */
int vk_convert_src(vk_src *src, int out_fd, const vk_write_opts *o,
                   vk_write_result *res, vk_err *err);

/* A fresh footer for a new image of the given type and plan. */
void vk_footer_new(vk_footer *f, uint32_t disk_type, const vk_size_plan *plan,
                   const uint8_t uuid[16], uint32_t timestamp, const uint8_t creator[4]);
/* A fresh dynamic header: BAT at VK_BAT_OFFSET, no parent. */
void vk_dynhdr_new(vk_dynhdr *h, uint32_t max_entries, uint32_t block_size);
/* The file offset where a block's bitmap goes so that its data starts on a
 * VK_ALIGN_DATA boundary, at or after `next`. */
static inline uint64_t vk_block_place(uint64_t next, uint32_t bitmap_bytes) {
    uint64_t d = (next + bitmap_bytes + VK_ALIGN_DATA - 1) / VK_ALIGN_DATA * VK_ALIGN_DATA;
    return d - bitmap_bytes;
}

/* The creator application written by default.  qemu derives the size from
 * the CHS geometry for every creator outside its list (win , qem2, d2v ,
 * tap\0, CTXS) and would truncate a disk whose size is not CHS-exact: such
 * images get "qem2" (qemu's own "current size is the size" marker), the
 * others "vhdk". */
const uint8_t *vk_default_creator(const vk_size_plan *plan);

#endif
