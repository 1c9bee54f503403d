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

#define VK_ABI_VERSION 5

/* ---- sizes and limits ------------------------------------------------- */
#define VK_SECTOR            512u
#define VK_FOOTER_SIZE       512u
#define VK_DYNHDR_SIZE       1024u
#define VK_BAT_UNUSED        0xFFFFFFFFu
#define VK_MAX_CHAIN_DEPTH   64
/* The spec's limit: 65535 cylinders * 16 heads * 255 sectors. */
#define VK_MAX_CHS_SECTORS   (65535ull * 16ull * 255ull)
/* VHD tops out at 2040 GiB (Hyper-V, qemu and the spec's note). */
#define VK_MAX_VIRTUAL_SIZE  (2040ull * 1024ull * 1024ull * 1024ull)
/* Seconds between the Unix epoch and the VHD epoch, 2000-01-01 00:00 UTC. */
#define VK_EPOCH_OFFSET      946684800ll

#define VK_DISK_FIXED        2u
#define VK_DISK_DYNAMIC      3u
#define VK_DISK_DIFF         4u

#define VK_FEATURE_TEMPORARY 0x1u
#define VK_FEATURE_RESERVED  0x2u   /* "must always be set" */
#define VK_VERSION_1_0       0x00010000u

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

/* ---- footer (512 bytes, also 511 in very old images) --------------------
 *   0  8  cookie "conectix"        36  4  creator host OS
 *   8  4  features                 40  8  original size
 *  12  4  file format version      48  8  current size
 *  16  8  data offset              56  4  geometry: cyl u16, heads u8, spt u8
 *  24  4  timestamp (VHD epoch)    60  4  disk type
 *  28  4  creator application      64  4  checksum
 *  32  4  creator version          68 16  unique id
 *                                  84  1  saved state, 85..511 reserved
 */
typedef struct vk_footer {
    uint8_t  cookie[8];
    uint32_t features;
    uint32_t version;
    uint64_t data_offset;
    uint32_t timestamp;
    uint8_t  creator_app[4];
    uint32_t creator_version;
    uint8_t  creator_os[4];
    uint64_t original_size;
    uint64_t current_size;
    uint16_t cylinders;
    uint8_t  heads;
    uint8_t  sectors;
    uint32_t disk_type;
    uint32_t checksum;          /* as stored */
    uint8_t  uuid[16];
    uint8_t  saved_state;
    uint8_t  reserved_nonzero;  /* decode: 1 if any reserved byte is not 0 */
} vk_footer;

/* "The checksum is the one's complement of the sum of all the bytes in the
 * footer without the checksum field" -- computed with those 4 bytes as 0. */
uint32_t vk_checksum(const uint8_t *buf, size_t len, size_t cksum_off);
void vk_footer_decode(const uint8_t buf[512], vk_footer *f);
/* Encode, computing and storing the checksum into f->checksum and buf. */
void vk_footer_encode(vk_footer *f, uint8_t buf[512]);
uint32_t vk_footer_checksum_of(const uint8_t buf[512]);

/* ---- dynamic disk header (1024 bytes) -----------------------------------
 *   0  8  cookie "cxsparse"          40 16  parent unique id
 *   8  8  data offset (all ones)     56  4  parent timestamp
 *  16  8  table (BAT) offset         60  4  reserved
 *  24  4  header version             64 512 parent unicode name (UTF-16BE)
 *  28  4  max table entries         576 8*24 parent locator entries:
 *  32  4  block size                       code u32, data space u32,
 *  36  4  checksum                         data length u32, reserved u32,
 *                                          data offset u64
 */
typedef struct vk_locator {
    uint32_t code;          /* 'W2ru', 'W2ku', 'MacX', 'Wi2r', 'Wi2k', 0 */
    uint32_t data_space;    /* bytes (Microsoft) or sectors (spec) */
    uint32_t data_length;   /* bytes */
    uint32_t reserved;
    uint64_t data_offset;   /* absolute file offset */
} vk_locator;

#define VK_LOC_W2RU 0x57327275u
#define VK_LOC_W2KU 0x57326b75u
#define VK_LOC_MACX 0x4d616358u
#define VK_LOC_WI2R 0x57693272u
#define VK_LOC_WI2K 0x5769326bu

typedef struct vk_dynhdr {
    uint8_t    cookie[8];
    uint64_t   data_offset;
    uint64_t   table_offset;
    uint32_t   version;
    uint32_t   max_table_entries;
    uint32_t   block_size;
    uint32_t   checksum;          /* as stored */
    uint8_t    parent_uuid[16];
    uint32_t   parent_timestamp;
    uint32_t   reserved1;
    uint8_t    parent_name[512];  /* raw UTF-16BE */
    vk_locator loc[8];
} vk_dynhdr;

void vk_dynhdr_decode(const uint8_t buf[1024], vk_dynhdr *h);
void vk_dynhdr_encode(vk_dynhdr *h, uint8_t buf[1024]);

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
