/*
 * vk_internal.h -- private declarations shared by the C sources of the core.
 * Not part of the cffi boundary (see vhdkit.h for that).
 */
#ifndef VK_INTERNAL_H
#define VK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include "vhdkit.h"

#define VK_ABI_VERSION 6

/* ---- big-endian helpers ----------------------------------------------- */
static inline uint16_t vk_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t vk_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t vk_be64(const uint8_t *p) { return ((uint64_t)vk_be32(p) << 32) | vk_be32(p + 4); }
static inline void vk_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void vk_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void vk_put64(uint8_t *p, uint64_t v) { vk_put32(p, (uint32_t)(v >> 32)); vk_put32(p + 4, (uint32_t)v); }

/* Overflow-checked arithmetic: return 1 on overflow. */
static inline int vk_add_ovf(uint64_t a, uint64_t b, uint64_t *r) { *r = a + b; return *r < a; }
static inline int vk_mul_ovf(uint64_t a, uint64_t b, uint64_t *r) {
    if (a != 0 && b > UINT64_MAX / a) return 1;
    *r = a * b; return 0;
}

/* ---- errors ----------------------------------------------------------- */
/* Fill err (may be NULL) and return code.  printf-style message. */
int vk_fail(vk_err *err, int code, uint64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same, with errno captured into sys_errno and strerror appended. */
int vk_fail_errno(vk_err *err, int saved_errno, uint64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void vk_err_clear(vk_err *err);

#include "vk_format.h"

/* ---- geometry, time, identity ----------------------------------------- */
/* The spec's CHS algorithm (Appendix: "CHS Calculation"). */
void vk_chs_from_sectors(uint64_t total_sectors, uint16_t *cyl, uint8_t *heads, uint8_t *spt);
static inline uint64_t vk_chs_size(uint16_t c, uint8_t h, uint8_t s) {
    return (uint64_t)c * h * s * VK_SECTOR;
}
uint32_t vk_time_now(void);   /* seconds since 2000-01-01 UTC (clamped) */
int vk_uuid_generate(uint8_t out[16], vk_err *err);  /* random, v4 */

/* ---- text conversion (bounded, validating) -------------------------------
 * Return bytes written (excluding NUL) or -1 on invalid input / no room. */
long vk_utf16_to_utf8(const uint8_t *in, size_t in_len, int big_endian,
                      char *out, size_t out_cap);
long vk_utf8_to_utf16(const char *in, size_t in_len, int big_endian,
                      uint8_t *out, size_t out_cap);

/* CRC-32C (Castagnoli) over len bytes, the 4 bytes at cksum_off taken as
 * zero (SIZE_MAX: none): the checksum of every VHDX structure. */
uint32_t vk_crc32c(const uint8_t *buf, size_t len, size_t cksum_off);

/* ---- I/O helpers: full pread/pwrite with EINTR and short-I/O loops ------ */
int vk_pread_full(int fd, void *buf, size_t len, uint64_t off, vk_err *err);
int vk_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, vk_err *err);

#endif
