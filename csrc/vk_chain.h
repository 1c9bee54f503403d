/*
 * vk_chain.h -- private declarations of the chains code (vk_rw.c,
 * vk_chain.c).  Not part of the cffi boundary.
 */
#ifndef VK_CHAIN_H
#define VK_CHAIN_H

#include "vk_image.h"

/* One counted write to the leaf of a writable image (test hook aware). */
int vk_rw_pwrite(vk_image *img, const void *buf, size_t len, uint64_t off, vk_err *err);
/* Make the leaf's file extend to at least `end` by first copying its footer
 * there (no-op when the footer is already at or past end). */
int vk_rw_grow(vk_image *img, uint64_t end, vk_err *err);

#endif
