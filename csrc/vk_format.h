/*
 * vk_format.h -- the VHD format as the core knows it, in one place: sizes
 * and limits (their values live in vhdkit.h's enums, which Python reads as
 * lib.VK_*), the on-disk structures, their decoders/encoders (vk_format.c)
 * and one validator per structure, used by open, check, write, chains and
 * convert alike.  Included through vk_internal.h.
 */
#ifndef VK_FORMAT_H
#define VK_FORMAT_H

/* ---- sizes and limits ------------------------------------------------- */
#define VK_SECTOR            ((uint32_t)VK_SECTOR_BYTES)
#define VK_FOOTER_SIZE       ((uint32_t)VK_FOOTER_BYTES)
#define VK_DYNHDR_SIZE       ((uint32_t)VK_DYNHDR_BYTES)
#define VK_BAT_UNUSED        0xFFFFFFFFu
#define VK_MAX_CHAIN_DEPTH   64
/* The spec's limit: 65535 cylinders * 16 heads * 255 sectors. */
#define VK_MAX_CHS_SECTORS   (65535ull * 16ull * 255ull)
/* VHD tops out at 2040 GiB (Hyper-V, qemu and the spec's note). */
#define VK_MAX_VIRTUAL_SIZE  ((uint64_t)VK_MAX_VIRTUAL_GIB << 30)
/* Seconds between the Unix epoch and the VHD epoch. */
#define VK_EPOCH_OFFSET      ((long long)VK_VHD_EPOCH)
/* BAT entries held in memory: 2040 GiB in 64 KiB blocks (128 MiB). */
#define VK_MAX_BAT_ENTRIES   (1u << 25)
/* Where a new image's BAT goes; new blocks' data start on 4 KiB. */
#define VK_BAT_OFFSET        1536u
#define VK_ALIGN_DATA        4096u

#define VK_FEATURE_TEMPORARY 0x1u
#define VK_FEATURE_RESERVED  0x2u   /* "must always be set" */
#define VK_VERSION_1_0       0x00010000u

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
/* The longest locator data read or written (bytes): a path of 4096 UTF-16
 * units; it bounds the reader's buffer, so what vhdkit writes stays below. */
#define VK_LOCATOR_MAX_BYTES 8192u

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

/* ---- validation -----------------------------------------------------------
 * A validator reports every finding to fn (when not NULL) and returns the
 * first fatal one's vk_code (VK_OK if none), filling err with it.  A fatal
 * finding (code < 0) is one the opener refuses; code 0 marks one only the
 * checker reports (the file still opens).  id is the checker's stable code. */
typedef void (*vk_finding_fn)(void *ctx, int code, const char *id, uint64_t off, const char *msg);

/* A block size a file may have: a power of two in [VK_BLOCK_SIZE_MIN, MAX]. */
int vk_block_size_ok(uint32_t block_size);
/* A block size for a new image (create/convert policy; vhdkit.h). */
int vk_new_block_size_ok(uint32_t block_size);
/* Bytes of a block's sector bitmap: one bit per sector, whole sectors. */
static inline uint32_t vk_bitmap_bytes(uint32_t block_size) {
    uint32_t bits = block_size / VK_SECTOR;
    return ((bits + 7u) / 8u + VK_SECTOR - 1u) / VK_SECTOR * VK_SECTOR;
}
/* BAT entries a virtual size needs in blocks of block_size. */
static inline uint64_t vk_bat_entries_for(uint64_t size, uint32_t block_size) {
    return size / block_size + (size % block_size ? 1 : 0);
}

/* Bit s of a sector bitmap ("an array of bits in big-endian order": bit 7
 * of byte 0 is sector 0); set = the sector is in this file's block. */
static inline int vk_bitmap_bit(const uint8_t *bm, uint64_t s) { return (bm[s >> 3] >> (7 - (s & 7))) & 1; }
static inline void vk_bitmap_set(uint8_t *bm, uint64_t s) { bm[s >> 3] |= (uint8_t)(0x80u >> (s & 7)); }

/* The footer b (decoded into f), at file offset off of a file of file_size
 * bytes: cookie, checksum, disk type (fatal), then features, version,
 * timestamp, saved state, size, geometry, data offset (findings). */
int vk_footer_validate(const uint8_t b[512], const vk_footer *f, uint64_t off, uint64_t file_size,
                       vk_finding_fn fn, void *ctx, vk_err *err);
/* Whether a footer is intact: decoded into f, its cookie, checksum and disk
 * type right (VK_OK), else VK_E_FORMAT or VK_E_CHECKSUM with err filled; the
 * rest the validator finds does not count (what modify and repair trust,
 * and what Python may read, vk_footer_peek). */
int vk_footer_intact(const uint8_t b[512], vk_footer *f, vk_err *err);
/* The dynamic header b at off (decoded into h when the cookie is right):
 * cookie, checksum, major version, block size (fatal), then minor version,
 * data offset, BAT offset alignment (findings). */
int vk_dynhdr_validate(const uint8_t b[1024], vk_dynhdr *h, uint64_t off, vk_finding_fn fn, void *ctx,
                       vk_err *err);

/* ---- BAT entries (and the sector bitmap each one places) --------------------
 * Where the entries of one dynamic/differencing file may point.  disk_entries
 * are the entries the virtual size addresses (at most max_table_entries):
 * the ones a reader follows, and writes allocate. */
typedef struct vk_bat_layout {
    uint64_t file_size;
    uint64_t footer_at;        /* start of the end footer (file size - 512 or 511) */
    uint64_t header_offset;    /* the dynamic header, 1024 bytes */
    uint64_t table_offset;
    uint64_t table_entries;    /* max_table_entries, or disk_entries if those run past the file */
    uint64_t table_bytes;      /* table_entries * 4, whole sectors */
    uint32_t block_size, bitmap_bytes;
    uint64_t disk_entries;
} vk_bat_layout;

void vk_bat_layout_of(vk_bat_layout *g, const vk_dynhdr *h, uint64_t header_offset, uint64_t file_size,
                      uint64_t footer_at, uint64_t virtual_size);

/* The table itself (h's BAT in layout g, virtual_size the disk's size):
 * starting inside the file (HEADER_TABLE_OFFSET), the entries the disk
 * uses inside the file (BAT_PAST_EOF) and within VK_MAX_BAT_ENTRIES
 * (BAT_TOO_LARGE), all fatal; then enough entries for the size
 * (HEADER_MAX_ENTRIES: the rest read as unallocated) and the declared table
 * inside the file (BAT_PAST_EOF: entries past the disk's are never read). */
int vk_bat_table_validate(const vk_dynhdr *h, const vk_bat_layout *g, uint64_t virtual_size, vk_finding_fn fn,
                          void *ctx, vk_err *err);

/* What one entry is, by the first rule it breaks (one class per entry):
 *   UNUSED       0xFFFFFFFF, not allocated (reads as zeros / the parent)
 *   BEYOND_DISK  allocated at an index the virtual size does not address:
 *                never read (finding BAT_BEYOND_DISK)
 *   PAST_EOF     its bitmap is not inside the file (fatal VK_E_RANGE,
 *                finding BAT_PAST_EOF)
 *   RUNS_PAST_EOF  its bitmap is, its data runs past the end of the file:
 *                a truncated image (fatal VK_E_RANGE, BAT_PAST_EOF; qemu
 *                refuses it as truncated too)
 *   OVERLAP      it overlaps the footer copy, the header, the BAT or the end
 *                footer: reads tolerate it, a write into it would damage
 *                them (finding BAT_OVERLAP; the writer refuses the file)
 *   OK           none of these.
 * Overlaps between blocks need all entries: the checker finds those. */
enum {
    VK_BATE_OK = 0, VK_BATE_UNUSED, VK_BATE_BEYOND_DISK, VK_BATE_OVERLAP, VK_BATE_PAST_EOF, VK_BATE_RUNS_PAST_EOF
};
int vk_bat_entry_class(const vk_bat_layout *g, uint64_t i, uint32_t entry);
static inline int vk_bat_class_fatal(int c) { return c >= VK_BATE_PAST_EOF; }
/* The entry's finding (if any) to fn; its vk_code if fatal (err filled). */
int vk_bat_entry_validate(const vk_bat_layout *g, uint64_t i, uint32_t entry, vk_finding_fn fn, void *ctx,
                          vk_err *err);

/* ---- parent locators --------------------------------------------------------
 * Bytes reserved for a locator's data.  The spec gives data space in
 * sectors; Microsoft (and qemu, VirtualBox) write bytes: a space smaller
 * than the data length is taken as sectors, as blktap does. */
static inline uint64_t vk_locator_space(const vk_locator *l) {
    return l->data_space < l->data_length ? (uint64_t)l->data_space * VK_SECTOR : l->data_space;
}
/* Locator i (its entry at file offset eo) of a file of file_size bytes:
 * code known (LOCATOR_CODE), data offset sector-aligned (LOCATOR_OFFSET),
 * data inside the file (LOCATOR_RANGE), length within its space
 * (LOCATOR_SPACE).  No finding is fatal to the file: the opener skips a
 * locator it cannot read and tries the next.  Returns VK_OK when the data
 * can be read (code known, data inside the file), else VK_E_UNSUPPORTED or
 * VK_E_RANGE with err filled; vk_locator_decode then decodes the data. */
int vk_locator_validate(const vk_locator *l, int i, uint64_t eo, uint64_t file_size, vk_finding_fn fn, void *ctx,
                        vk_err *err);

/* The end of everything a dynamic header references: itself, the BAT, the
 * blocks of bat[0..n) and the locators' reserved space, rounded up to a
 * sector.  The BAT and locators count only when they end at or before
 * limit (where the footer is); blocks always count. */
uint64_t vk_dyn_used_end(const vk_dynhdr *h, uint64_t header_offset, const uint32_t *bat, uint64_t n,
                         uint64_t limit);

#endif
