/*
 * vkx.h -- private structures of the VHDX reader (vkx_*.c).  Not part of the
 * cffi boundary (see vhdkit.h for that).
 *
 * Layout (Microsoft VHDX specification v1.0, [MS-VHDX]): the file type
 * identifier at 0, two 4 KiB headers at 64 KiB and 128 KiB, two 64 KiB
 * region tables at 192 KiB and 256 KiB, then the log, the metadata region
 * and the BAT where the current header and the region table put them, and
 * the payload and sector bitmap blocks at whole MiB offsets.  All integers
 * are little-endian; GUIDs are stored as Windows writes them (first three
 * fields little-endian).
 */
#ifndef VKX_H
#define VKX_H

#include "vk_image.h"

#define VKX_KIB                 1024ull
#define VKX_MIB                 (1024ull * 1024ull)
#define VKX_HEADER1_OFFSET      (64ull * VKX_KIB)
#define VKX_HEADER2_OFFSET      (128ull * VKX_KIB)
#define VKX_HEADER_SIZE         4096u
#define VKX_REGION1_OFFSET      (192ull * VKX_KIB)
#define VKX_REGION2_OFFSET      (256ull * VKX_KIB)
#define VKX_REGION_SIZE         (64u * 1024u)
#define VKX_REGION_MAX_ENTRIES  2047u
#define VKX_METADATA_TABLE_SIZE (64u * 1024u)
#define VKX_METADATA_MAX_ENTRIES 2047u
#define VKX_METADATA_ITEM_MAX   (1024u * 1024u)
#define VKX_MIN_BLOCK           (1u << 20)
#define VKX_MAX_BLOCK           (256u << 20)
#define VKX_MAX_VIRTUAL_SIZE    (64ull << 40)      /* 64 TiB, the spec's limit */
#define VKX_LOG_SECTOR          4096u
/* The largest log we replay in memory (Hyper-V writes 1 MiB logs). */
#define VKX_MAX_LOG_REPLAY      (64u << 20)

/* BAT entry states (low three bits): payload blocks in vhdkit.h
 * (vk_vhdx_block_state), sector bitmap blocks here. */
#define VKX_SB_NOT_PRESENT        0u
#define VKX_SB_PRESENT            6u

static inline uint16_t vkx_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t vkx_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t vkx_le64(const uint8_t *p) { return (uint64_t)vkx_le32(p) | ((uint64_t)vkx_le32(p + 4) << 32); }
static inline void vkx_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void vkx_put64(uint8_t *p, uint64_t v) { vkx_put32(p, (uint32_t)v); vkx_put32(p + 4, (uint32_t)(v >> 32)); }

/* A GUID as stored (16 bytes); known ones are compared bytewise. */
extern const uint8_t VKX_GUID_BAT[16], VKX_GUID_METADATA[16], VKX_GUID_FILE_PARAMS[16],
    VKX_GUID_VIRTUAL_SIZE[16], VKX_GUID_PAGE83[16], VKX_GUID_LOGICAL_SECTOR[16],
    VKX_GUID_PHYSICAL_SECTOR[16], VKX_GUID_PARENT_LOCATOR[16], VKX_GUID_LOCATOR_TYPE_VHDX[16];
/* "{xxxxxxxx-xxxx-...}" as Windows prints it, into out[39]. */
void vkx_guid_text(const uint8_t g[16], char out[39]);
int vkx_guid_is_zero(const uint8_t g[16]);

typedef struct vkx_header {
    int      valid;              /* signature, checksum and version verify */
    uint32_t checksum;
    uint64_t seq;
    uint8_t  file_write_guid[16];
    uint8_t  data_write_guid[16];
    uint8_t  log_guid[16];
    uint16_t log_version;
    uint16_t version;
    uint32_t log_length;
    uint64_t log_offset;
} vkx_header;

typedef struct vkx_region {
    uint8_t  guid[16];
    uint64_t offset;
    uint32_t length;
    int      required;
} vkx_region;

/* One replayed write of the log, kept in memory: 4 KiB of data, or zeros
 * over [offset, offset + length). */
typedef struct vkx_op {
    uint64_t offset;
    uint64_t length;
    uint8_t *data;               /* NULL: zeros */
} vkx_op;


typedef struct vkx_disk {
    int        fd;
    uint64_t   file_size;        /* as on disk */
    uint64_t   eff_size;         /* after the in-memory replay (>= file_size) */
    char       creator[512];     /* UTF-8 of the identifier's creator */
    vkx_header hdr[2];
    int        current;          /* index of the current header */
    int        region_source;    /* 0 table 1, 1 table 2 */
    uint32_t   n_regions;
    vkx_region regions[VKX_REGION_MAX_ENTRIES];
    uint64_t   bat_offset, bat_length, meta_offset, meta_length;
    /* metadata */
    uint32_t   block_size;
    int        leave_allocated, has_parent;
    uint64_t   virtual_size;
    uint32_t   logical_sector, physical_sector;
    uint8_t    page83[16];
    uint32_t   n_meta;
    /* parent locator (differencing) */
    char       parent_linkage[64], parent_linkage2[64];
    char       relative_path[1024], volume_path[1024], absolute_win32_path[1024];
    uint32_t   n_locator_entries;
    /* BAT */
    uint64_t   chunk_ratio;
    uint64_t   data_blocks, sb_blocks, n_bat;
    uint64_t  *bat;
    uint64_t   state_count[8];   /* payload entries by state */
    uint64_t   sb_present;
    /* log */
    int        log_pending;      /* log GUID set and an active sequence found */
    uint32_t   log_entries;      /* entries in the active sequence */
    uint64_t   log_seq_head;
    uint64_t   log_last_file_offset;
    uint32_t   n_ops;
    vkx_op    *ops;
    /* one-entry sector bitmap cache (1 MiB) */
    uint8_t   *sb;
    uint64_t   sb_index;         /* UINT64_MAX when empty */
    /* failure bookkeeping */
    char       fail_code[32];
    vkx_note_fn note;
    void      *note_ctx;
} vkx_disk;

/* End of the current header's log, saturating (the offset is untrusted). */
static inline uint64_t vkx_log_end(const vkx_disk *D)
{
    uint64_t end;
    const vkx_header *h = &D->hdr[D->current];
    return vk_add_ovf(h->log_offset, h->log_length, &end) ? UINT64_MAX : end;
}

/* Fail with a stable problem code remembered for the checker. */
int vkx_fail(vkx_disk *D, const char *pcode, vk_err *err, int code, uint64_t off, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
void vkx_note(vkx_disk *D, const char *code, uint64_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Is this file a VHDX (the "vhdxfile" identifier at offset 0)? */
int vkx_is_vhdx(int fd, uint64_t file_size);

/* vkx_header.c: identifier and both headers; picks the current one. */
int vkx_read_headers(vkx_disk *D, vk_err *err);
/* vkx_log.c: find the active log sequence and replay it in memory. */
int vkx_log_load(vkx_disk *D, vk_err *err);
/* Read from the file as the replayed log makes it look. */
int vkx_pread(vkx_disk *D, void *buf, size_t len, uint64_t off, vk_err *err);
/* Write the replay into the file and clear the log GUID (vkx_repair). */
int vkx_log_apply(vkx_disk *D, int fd, vk_err *err);
/* vkx_region.c */
int vkx_read_regions(vkx_disk *D, vk_err *err);
/* vkx_metadata.c */
int vkx_read_metadata(vkx_disk *D, vk_err *err);
/* vkx_bat.c */
int vkx_read_bat(vkx_disk *D, vk_err *err);
/* Check allocated blocks against each other and the other structures. */
void vkx_check_bat(vkx_disk *D);
/* Classify [off, off+maxlen) inside one block: *len of the run, *state
 * 1 present (at *foff in the file), 0 zeros, -1 from the parent. */
int vkx_classify(vkx_disk *D, uint64_t off, uint64_t maxlen, uint64_t *len, int *state, uint64_t *foff,
                 vk_err *err);

/* vkx_image.c: the hooks of the generic reader (vk_image.c, vk_locator.c).
 * Open L->fd as a VHDX layer (disk_type, virtual size, block size set for
 * the generic code); a fatal failure is also passed to note, if any. */
int vkx_layer_open(vk_layer *L, vkx_note_fn note, void *note_ctx, vk_err *err);
void vkx_free(vkx_disk *D);
/* Parent path candidate number i of pass 1 (relative_path) or pass 2
 * (absolute_win32_path, volume_path).  0 if one was produced. */
int vkx_parent_candidate(const vk_layer *child, int pass, int i, const char *child_dir, char *out, size_t cap);
/* 0 if parent is the disk the child's parent_linkage names; else a
 * VK_E_CHAIN with *reason (VK_PARENT_UUID or VK_PARENT_INVALID). */
int vkx_parent_matches(const vk_layer *child, const vk_layer *parent, int *reason, vk_err *err);

#endif
