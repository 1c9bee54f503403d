/*
 * vk_image.h -- private structures of the reader (vk_image.c, vk_read.c,
 * vk_locator.c, vk_check.c).  Not part of the cffi boundary.
 */
#ifndef VK_IMAGE_H
#define VK_IMAGE_H

#include <sys/types.h>
#include "vk_internal.h"

#define VK_PATH_MAX         4096

struct vkx_disk;

/* One opened file of a chain. */
typedef struct vk_layer {
    int        fd;
    struct vkx_disk *vx;        /* a VHDX (vkx.h), else NULL: a VHD */
    char      *path;            /* absolute (realpath) */
    dev_t      dev;
    ino_t      ino;
    uint64_t   file_size;
    vk_footer  footer;
    int        footer_size;     /* 512 or 511 */
    int        footer_source;   /* 0 end, 1 copy at 0 */
    vk_dynhdr  hdr;             /* dynamic/diff only */
    uint64_t   virtual_size;    /* by size rule */
    int        size_rule;
    uint32_t   block_size;      /* dynamic/diff */
    uint32_t   bitmap_size;     /* bytes, rounded up to 512 */
    uint32_t   n_bat;           /* entries held in bat[] */
    uint32_t  *bat;             /* host-order sector offsets */
    uint32_t   bat_used;
    uint32_t   bat_overlaps;    /* entries whose block overlaps metadata (VK_BATE_OVERLAP) */
    uint64_t   fixed_data_end;  /* fixed: bytes of data in the file */
    /* one-entry bitmap cache */
    uint8_t   *bm;
    uint32_t   bm_block;        /* VK_BAT_UNUSED when empty */
    uint64_t   bm_reads;        /* bytes of bitmaps read (chains: I/O count) */
} vk_layer;

struct vk_image {
    int       n;
    vk_layer  layer[VK_MAX_CHAIN_DEPTH];   /* 0 = leaf */
    /* chains (vk_rw.c): bytes read from the layer files (data + bitmaps),
     * and the state of a leaf opened for writing (rw = 1). */
    uint64_t  bytes_read;
    int       rw;
    long      abort_after;      /* test hook vk_options.abort_after_writes, or -1 */
    uint32_t  writes;
    uint64_t  alloc_next;       /* end of everything the leaf references */
};

/* vk_image.c */
int  vk_layer_open(vk_layer *L, const char *path, int size_rule, vk_err *err);
/* The same, passing a VHDX's non-fatal findings (and a fatal one) to note. */
typedef void (*vkx_note_fn)(void *ctx, const char *code, uint64_t off, const char *msg);
int  vk_layer_open_noted(vk_layer *L, const char *path, int size_rule, vkx_note_fn note, void *note_ctx,
                         vk_err *err);
void vk_layer_close(vk_layer *L);
int  vk_read_footer(int fd, uint64_t file_size, vk_footer *f, int *fsize, int *fsource,
                    uint8_t raw[512], vk_err *err);
uint64_t vk_size_by_rule(const vk_footer *f, int rule, int *applied);
/* err cleared; VK_E_INVALID unless img has that layer (the info calls). */
int vk_layer_arg(const vk_image *img, int layer, vk_err *err);

/* vk_read.c */
int vk_layer_bitmap(vk_layer *L, uint32_t block, const uint8_t **bm, vk_err *err);

/* vk_locator.c */
/* Decode locator i of a header into UTF-8 (MacX: the URL as stored).
 * Returns 0, or a negative code with err filled (range, encoding). */
int vk_locator_decode(int fd, uint64_t file_size, const vk_locator *loc,
                      char *out, size_t cap, vk_err *err);
/* Turn a decoded locator into a local path candidate (relative ones joined
 * to the child's directory).  Returns 0 if a candidate was produced. */
int vk_locator_candidate(uint32_t code, const char *decoded, const char *child_dir,
                         char *out, size_t cap);
/* Why a parent could not be opened (vk_parent_open's *reason). */
enum { VK_PARENT_OK = 0, VK_PARENT_MISSING, VK_PARENT_UUID, VK_PARENT_OUTSIDE, VK_PARENT_INVALID };
/* Resolve and open the parent of layer `child` into `parent`.  explicit may
 * be NULL.  Checks regular file, allowed_root, UUID. */
int vk_parent_open(const vk_layer *child, const char *explicit_path, int no_locators, const char *allowed_root,
                   int *reason,
                   int size_rule, vk_layer *parent, vk_err *err);
void vk_dirname(const char *path, char *out, size_t cap);

#endif
