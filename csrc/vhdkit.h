/*
 * vhdkit.h -- the public C API of the vhdkit native core.
 *
 * This file is read verbatim by vhdkit/_build.py into ffi.cdef(), so it must
 * stay free of #include, #define and preprocessor conditionals.  C sources
 * include <stdint.h> and <stddef.h> (via vk_internal.h) before this header.
 *
 * Conventions: every function returns 0 (VK_OK) or a negative vk_code, and on
 * failure fills the caller-owned vk_err.  Nothing is printed; nothing exits.
 * Buffers are owned by the caller.  Handles are released with their *_close.
 */

/* ---- errors: the one enum that crosses into Python (vhdkit/errors.py) --- */
typedef enum {
    VK_OK              = 0,
    VK_E_IO            = -1,   /* system call failed; sys_errno is set       */
    VK_E_NOMEM         = -2,   /* allocation failed or a sane limit exceeded */
    VK_E_INVALID       = -3,   /* bad argument from the caller               */
    VK_E_FORMAT        = -4,   /* malformed on-disk structure                */
    VK_E_CHECKSUM      = -5,   /* a structure's checksum does not verify     */
    VK_E_UNSUPPORTED   = -6,   /* valid but not supported (e.g. version)     */
    VK_E_RANGE         = -7,   /* offset or length outside the image/file    */
    VK_E_CHAIN         = -8,   /* parent missing, mismatched, cycle, depth   */
    VK_E_NOTFOUND      = -9,   /* a file that should exist does not          */
    VK_E_EXISTS        = -10,  /* refusing to overwrite (or to lose data)    */
    VK_E_INTERRUPTED   = -11,  /* stopped by a cancel flag or a test hook    */
    VK_E_READONLY      = -12,  /* write to an image opened read-only         */
    VK_E_NOSPACE       = -13   /* image/BAT has no room for the operation    */
} vk_code;

typedef struct vk_err {
    int      code;        /* a vk_code                                     */
    int      sys_errno;   /* errno for VK_E_IO, else 0                     */
    uint64_t offset;      /* file offset involved, or UINT64_MAX if none   */
    char     msg[512];    /* one line, NUL-terminated, names what failed   */
} vk_err;

/* Compared at import by vhdkit/native.py: a stale build fails loudly. */
int vk_abi_version(void);
const char *vk_code_name(int code);

/* ---- the VHD format's numbers: each one defined here, once ---------------
 * C uses them through csrc/vk_format.h, Python as lib.VK_* (cffi). */
typedef enum {
    VK_DISK_FIXED   = 2,
    VK_DISK_DYNAMIC = 3,
    VK_DISK_DIFF    = 4     /* differencing */
} vk_disk_type;

typedef enum {
    VK_SECTOR_BYTES    = 512,
    VK_FOOTER_BYTES    = 512,
    VK_DYNHDR_BYTES    = 1024,
    VK_VHD_EPOCH       = 946684800,   /* Unix time of 2000-01-01 00:00 UTC, where
                                         VHD timestamps count from          */
    VK_MAX_VIRTUAL_GIB = 2040,        /* the largest virtual size, in GiB    */
    /* The block sizes a file may have (open, check, modify, repair, chains,
     * conversion from it): a power of two from MIN to MAX.  The spec asks a
     * power of two of sectors and sets no maximum; qemu takes any up to
     * 2 GiB, libvhdi any multiple of 512.  1 GiB bounds what one block
     * costs a reader of untrusted files (a 256 KiB bitmap). */
    VK_BLOCK_SIZE_MIN  = 512,
    VK_BLOCK_SIZE_MAX  = 1073741824,
    /* Policy for the images vhdkit creates (create, convert), stricter than
     * the format: a block from 512 KiB (the converter's unit of work) to
     * 256 MiB (the converter buffers whole blocks); 2 MiB unless asked. */
    VK_NEW_BLOCK_MIN     = 524288,
    VK_NEW_BLOCK_MAX     = 268435456,
    VK_NEW_BLOCK_DEFAULT = 2097152
} vk_format_limit;

/* A footer, decoded and validated (vk_footer_peek). */
typedef struct vk_footer_fields {
    uint32_t disk_type;
    uint64_t data_offset;
    uint64_t current_size;
    uint32_t timestamp;          /* seconds since 2000-01-01 UTC             */
    uint8_t  uuid[16];
} vk_footer_fields;

/* A dynamic disk header, decoded and validated (vk_dynhdr_peek). */
typedef struct vk_dynhdr_fields {
    uint64_t table_offset;
    uint32_t max_table_entries;
    uint32_t block_size;
    uint32_t bitmap_bytes;       /* a block's sector bitmap, whole sectors   */
    int      n_locators;         /* entries with a non-zero code             */
} vk_dynhdr_fields;

/* The footer in buf[0..len) (len must be 512): VK_OK when its cookie,
 * checksum and disk type are right (out filled), else VK_E_FORMAT or
 * VK_E_CHECKSUM with err filled. */
int vk_footer_peek(const uint8_t *buf, size_t len, vk_footer_fields *out, vk_err *err);
/* The same footer with a new unique id and timestamp and its checksum
 * recomputed, into out (512 bytes); buf must pass vk_footer_peek. */
int vk_footer_renew(const uint8_t *buf, size_t len, const uint8_t uuid[16], uint32_t timestamp,
                    uint8_t *out, vk_err *err);
/* The dynamic header in buf[0..len) (len must be 1024), validated as the
 * opener validates it (cookie, checksum, version, block size). */
int vk_dynhdr_peek(const uint8_t *buf, size_t len, vk_dynhdr_fields *out, vk_err *err);
/* The allocated entries of a BAT (n_entries big-endian entries in buf): the
 * file offsets (bytes) of their blocks into out[0..n_entries), in entry
 * order.  Returns how many. */
size_t vk_bat_blocks(const uint8_t *buf, size_t n_entries, uint64_t *out);

/* ==== reading and checking (vk_image.c, vk_check.c, ...) ================= */

/* How the virtual size is chosen (vk_open_opts.size_rule, vk_info.size_rule).
 * AUTO follows qemu: creators "vpc " and "qemu" use the CHS-derived size
 * unless the geometry is at its maximum (65535/16/255); all others use the
 * footer's current size. */
typedef enum {
    VK_SIZE_AUTO     = 0,
    VK_SIZE_CURRENT  = 1,
    VK_SIZE_CHS      = 2,
    VK_SIZE_ORIGINAL = 3
} vk_size_rule;

typedef struct vk_open_opts {
    const char *const *parents;  /* explicit parent paths: parents[0] is the
                                    leaf's parent, parents[1] its parent...;
                                    used before the locators               */
    int         n_parents;
    const char *allowed_root;    /* NULL, or a directory every resolved
                                    parent must lie inside                 */
    int         size_rule;       /* a vk_size_rule                           */
    int         top_only;        /* 1: do not open parents (info, probe)     */
    int         no_locators;     /* 1: parents come only from `parents`; a
                                    differencing layer beyond them fails
                                    (VK_E_CHAIN) without touching the file
                                    system.  Locators are still decoded for
                                    display (vk_image_locator), never
                                    followed: the mode for server code.     */
} vk_open_opts;

typedef struct vk_image vk_image;   /* an opened VHD with its parent chain */

/* Decoded, validated facts about one layer of an opened image. */
typedef struct vk_info {
    uint32_t disk_type;          /* a vk_disk_type                           */
    uint64_t virtual_size;       /* chosen by size_rule                      */
    int      size_rule;          /* the rule that was applied (not AUTO)     */
    uint64_t current_size;
    uint64_t original_size;
    uint64_t chs_size;           /* cylinders*heads*sectors*512              */
    uint16_t cylinders;
    uint8_t  heads;
    uint8_t  sectors_per_track;
    char     creator_app[5];     /* NUL-terminated, raw 4 bytes              */
    uint32_t creator_version;
    char     creator_os[5];
    uint8_t  uuid[16];
    uint32_t timestamp;          /* seconds since 2000-01-01 UTC             */
    uint8_t  saved_state;
    uint32_t features;
    uint32_t version;
    uint64_t data_offset;
    int      footer_size;        /* 512, or 511 for very old images         */
    int      footer_source;      /* 0 end of file, 1 the copy at offset 0    */
    uint64_t file_size;
    /* dynamic and differencing only (0 otherwise) */
    uint64_t table_offset;
    uint32_t block_size;
    uint32_t max_table_entries;
    uint32_t bat_entries_used;   /* allocated BAT entries                    */
    uint64_t allocated_bytes;    /* data bytes in allocated blocks (fixed:
                                    the virtual size)                        */
    uint8_t  parent_uuid[16];
    uint32_t parent_timestamp;
    char     parent_name[1024];  /* UTF-8 of the header's UTF-16BE name     */
    int      parent_name_valid;  /* 0 if the name is not valid UTF-16        */
    int      n_locators;         /* locator entries with a non-zero code     */
    int      format;             /* 0 VHD, 1 VHDX (vk_image_vhdx_info has the rest;
                                    disk_type is then fixed when
                                    LeaveBlocksAllocated is set, differencing
                                    when HasParent is)                       */
} vk_info;

typedef struct vk_locator_info {
    char     code[5];            /* "W2ru", "W2ku", "MacX", ...              */
    uint32_t data_space;         /* as stored (bytes or sectors)             */
    uint32_t data_length;
    uint64_t data_offset;
    int      valid;              /* 1 if in the file and decodable           */
    char     path[1024];         /* decoded UTF-8 path (MacX: the URL)       */
} vk_locator_info;

/* One run of the virtual disk: [offset, offset+length) is allocated in layer
 * `layer` (0 = the leaf) at file offset `file_offset`, or unallocated
 * (allocated = 0, layer = -1: reads as zeros). */
typedef struct vk_extent {
    uint64_t offset;
    uint64_t length;
    int      allocated;
    int      layer;
    uint64_t file_offset;
} vk_extent;

/* One problem found by vk_check: a stable code ("FOOTER_CHECKSUM", ...). */
typedef struct vk_problem {
    char     code[32];
    uint64_t offset;             /* file offset involved, UINT64_MAX if none */
    int      layer;              /* 0 the image itself, 1 its parent, ...    */
    char     msg[256];
} vk_problem;

/* Is this file a VHD?  *disk_type = 2/3/4, or 0 if not (returns 0 then). */
int vk_probe(const char *path, uint32_t *disk_type, vk_err *err);

/* Open read-only, with its parent chain (unless opts->top_only).  opts may
 * be NULL (auto size rule, parents from the locators, no root limit). */
int vk_image_open(const char *path, const vk_open_opts *opts, vk_image **out, vk_err *err);
void vk_image_close(vk_image *img);
uint64_t vk_image_size(const vk_image *img);       /* virtual size of the leaf */
int vk_image_depth(const vk_image *img);           /* number of layers, >= 1   */
int vk_image_info(const vk_image *img, int layer, vk_info *out, vk_err *err);
int vk_image_locator(const vk_image *img, int layer, int index, vk_locator_info *out, vk_err *err);
/* The resolved absolute path of a layer (NUL-terminated into buf). */
int vk_image_path(const vk_image *img, int layer, char *buf, size_t cap, vk_err *err);
/* Read exactly len bytes of the virtual disk at off (off+len <= size). */
int vk_image_pread(vk_image *img, void *buf, size_t len, uint64_t off, vk_err *err);
/* Fill up to cap extents describing [start, size) in order, merging equal
 * neighbours; *n_out = number filled.  Continue from the end of the last. */
int vk_image_map(vk_image *img, uint64_t start, vk_extent *out, size_t cap, size_t *n_out, vk_err *err);

/* Validate a file as `vhd-util check` does (and more).  Problems go into
 * out[0..cap); *n_found is the total found (may exceed cap).  Returns 0 even
 * when problems are found; a negative code only for an internal failure.
 * check_parents: also resolve and check the parent chain (opts as for open). */
int vk_check(const char *path, const vk_open_opts *opts, int check_parents,
             vk_problem *out, size_t cap, size_t *n_found, vk_err *err);

/* ---- VHDX (vkx_*.c): read-only, through the same vk_image ------------- */
/* VHDX payload block states (a BAT entry's low three bits), the index of
 * vk_vhdx_info.blocks_by_state. */
typedef enum {
    VKX_PAYLOAD_NOT_PRESENT   = 0,
    VKX_PAYLOAD_UNDEFINED     = 1,
    VKX_PAYLOAD_ZERO          = 2,
    VKX_PAYLOAD_UNMAPPED      = 3,
    VKX_PAYLOAD_FULLY_PRESENT = 6,
    VKX_PAYLOAD_PARTIALLY     = 7
} vk_vhdx_block_state;

typedef struct vk_vhdx_info {
    char     creator[512];          /* UTF-8 of the file identifier's creator */
    int      current_header;        /* 1 or 2                                 */
    int      header_valid[2];
    uint64_t header_seq[2];
    uint8_t  file_write_guid[16];   /* of the current header, as stored      */
    uint8_t  data_write_guid[16];
    uint8_t  log_guid[16];
    uint16_t version;
    uint16_t log_version;
    uint64_t log_offset;
    uint32_t log_length;
    int      log_replay_pending;    /* reads show the replayed disk          */
    uint32_t log_entries;           /* entries of the active sequence        */
    uint64_t log_sequence;          /* its head's sequence number            */
    int      region_table;          /* 1 or 2: the copy in use               */
    uint32_t n_regions;
    uint64_t bat_offset;
    uint64_t bat_length;
    uint64_t metadata_offset;
    uint64_t metadata_length;
    uint32_t n_metadata;
    uint32_t block_size;
    uint32_t logical_sector_size;
    uint32_t physical_sector_size;
    int      leave_blocks_allocated;
    int      has_parent;
    uint64_t virtual_size;
    uint8_t  page83[16];
    uint64_t chunk_ratio;
    uint64_t bat_entries;
    uint64_t payload_blocks;
    uint64_t blocks_by_state[8];    /* payload blocks by vk_vhdx_block_state */
    uint64_t sector_bitmaps_present;
    uint32_t n_locator_entries;
    char     parent_linkage[64];
    char     parent_linkage2[64];
    char     relative_path[1024];
    char     volume_path[1024];
    char     absolute_win32_path[1024];
} vk_vhdx_info;

/* Is this file a VHDX ("vhdxfile" at offset 0)?  *is_vhdx = 1 or 0. */
int vk_probe_vhdx(const char *path, int *is_vhdx, vk_err *err);
int vk_image_vhdx_info(const vk_image *img, int layer, vk_vhdx_info *out, vk_err *err);

typedef struct vk_vhdx_repair_result {
    int      replayed;      /* 1 the log was written into the file          */
    uint32_t log_entries;   /* entries of the active sequence (0: clean)    */
    uint32_t writes;        /* replayed writes                              */
} vk_vhdx_repair_result;

/* Write a pending log replay into the file (crash-safe as the spec makes
 * it: the log stays active until the replayed data is fsynced). */
int vk_vhdx_repair(const char *path, int dry_run, vk_vhdx_repair_result *res, vk_err *err);

/* ==== writing and converting (vk_write.c, vk_convert.c, ...) ============= */
/*
 * Sizes: VK_RULE_EXACT keeps the requested size (rounded up to a whole
 * sector); VK_RULE_CHS rounds up to the next size the spec's CHS algorithm
 * represents exactly (classic Virtual PC); VK_RULE_AZURE rounds up to a whole
 * MiB (fixed images only).  Sizes over 2040 GiB are refused (VK_E_RANGE).
 */
typedef enum { VK_RULE_EXACT = 0, VK_RULE_CHS = 1, VK_RULE_AZURE = 2 } vk_write_rule;
/* Output kinds of vk_create / vk_convert_*: a raw file or a VHD type. */
typedef enum { VK_OUT_RAW = 0, VK_OUT_FIXED = 2, VK_OUT_DYNAMIC = 3 } vk_out_kind;

typedef struct vk_size_plan {
    uint64_t requested;    /* bytes asked for                                */
    uint64_t size;         /* the virtual (current) size that will be written */
    uint16_t cylinders;    /* geometry by the spec's algorithm for `size`    */
    uint8_t  heads;
    uint8_t  sectors;
    int      adjusted;     /* 1 if size != requested                         */
} vk_size_plan;

int vk_size_plan_make(uint64_t requested, int rule, vk_size_plan *out, vk_err *err);

typedef struct vk_write_opts {
    int       kind;            /* vk_out_kind                                 */
    uint32_t  block_size;      /* dynamic: power of two, VK_NEW_BLOCK_MIN..MAX; 0 = the default */
    int       size_rule;       /* vk_write_rule                                */
    int       has_uuid;        /* 1: use uuid below, else a random v4 one     */
    uint8_t   uuid[16];
    int       has_timestamp;   /* 1: use timestamp (VHD epoch), else now      */
    uint32_t  timestamp;
    uint8_t   creator_app[4];  /* all zero = "vhdk"                           */
    int       stream_out;      /* output is a pipe: strictly sequential, zeros written */
    uint64_t  size_hint;       /* stream input of unknown length: expected size, or 0 */
    uint64_t *progress;        /* optional: bytes of input processed so far   */
    int      *cancel;          /* optional: set non-zero to stop (VK_E_INTERRUPTED) */
} vk_write_opts;

typedef struct vk_write_result {
    vk_size_plan plan;           /* requested/virtual size and geometry      */
    int      kind;
    uint32_t block_size;         /* dynamic only                             */
    uint32_t max_table_entries;  /* dynamic only                             */
    uint32_t blocks_allocated;   /* dynamic only                             */
    uint8_t  uuid[16];
    uint32_t timestamp;
    uint64_t input_bytes;        /* bytes of input content read              */
    uint64_t data_bytes;         /* non-zero data bytes written              */
    uint64_t file_size;          /* size of the output file                  */
} vk_write_result;

/* An empty image (or a raw file of zeros) of opts->kind into out_fd, which
 * must be an empty regular file (or a pipe with stream_out for fixed/raw). */
int vk_create(int out_fd, uint64_t size, const vk_write_opts *opts,
              vk_write_result *res, vk_err *err);
/* Raw bytes from in_fd (a regular file, or a pipe read to EOF) into out_fd.
 * in_size is the input's length, or UINT64_MAX for a stream read to EOF. */
int vk_convert_raw(int in_fd, uint64_t in_size, int out_fd, const vk_write_opts *opts,
                   vk_write_result *res, vk_err *err);

/* Any VHD vhdkit reads (a differencing leaf is flattened through its chain)
 * into opts->kind on out_fd.  Unallocated and all-zero ranges are skipped. */
int vk_convert_image(vk_image *img, int out_fd, const vk_write_opts *opts,
                     vk_write_result *res, vk_err *err);

/* compare: each side is an opened image, or (img NULL) a raw file's fd. */
typedef struct vk_compare_result {
    int      identical;         /* 1 same content                           */
    uint64_t size_a;
    uint64_t size_b;
    uint64_t first_difference;  /* byte offset, UINT64_MAX if identical     */
} vk_compare_result;

/* Like qemu-img compare: where the sizes differ, the longer side must be
 * all zeros past the shorter one for the images to count as identical. */
int vk_compare(vk_image *a, int a_fd, vk_image *b, int b_fd, vk_compare_result *res, vk_err *err);

/* modify: fields to change in place (footer copies + dynamic header). */
typedef struct vk_modify_opts {
    int      set_uuid;      uint8_t uuid[16];
    int      set_timestamp; uint32_t timestamp;
    int      set_creator;   uint8_t creator_app[4];
    int      set_size;      uint64_t size;
    int      size_rule;     /* vk_write_rule for set_size                    */
    int      force;         /* allow shrinking below allocated data         */
} vk_modify_opts;

typedef struct vk_modify_result {
    uint32_t disk_type;
    uint64_t old_size;
    uint64_t new_size;
    int      bat_relocated;
    uint32_t writes;         /* number of separate writes done              */
    uint8_t  uuid[16];
    uint32_t timestamp;
} vk_modify_result;

/* Rewrite footer (both copies), header and BAT as needed.  Every step leaves
 * an image that vk_repair (or check) can bring back: the end footer is
 * written last for dynamic images.  The test hook
 * vk_options.abort_after_writes=N stops with VK_E_INTERRUPTED after N writes. */
int vk_modify(const char *path, const vk_modify_opts *opts, vk_modify_result *res, vk_err *err);

/* A block whose data lay past the end of a cut-short dynamic image: after
 * the repair (action 3) the virtual bytes [start, end) read as zeros (or
 * from the parent) instead of what was written there. */
typedef struct vk_lost_range {
    uint64_t start, end;
    uint32_t block;
} vk_lost_range;

typedef enum {
    VK_REPAIR_NONE         = 0,   /* nothing to do                            */
    VK_REPAIR_END_RESTORED = 1,   /* end footer rewritten from the copy at 0  */
    VK_REPAIR_COPY_RESTORED = 2,  /* copy at 0 rewritten from the end footer  */
    VK_REPAIR_END_APPENDED = 3,   /* footer appended (end footer missing or
                                     truncated)                              */
    VK_REPAIR_FIXED_CUT    = 4    /* fixed image cut back to its size (an
                                     interrupted grow left zeros or footer
                                     copies after the data)                  */
} vk_repair_action;

typedef struct vk_repair_result {
    int action;             /* a vk_repair_action                            */
    uint32_t disk_type;
    uint64_t footer_offset; /* where the end footer now is                  */
    uint64_t lost_count;    /* blocks that read differently after the repair */
    vk_lost_range *lost;    /* in: caller's array of lost_cap entries (or NULL);
                               out: the first lost_cap of them, by block      */
    uint64_t lost_cap;      /* in                                            */
} vk_repair_result;

/* vk_repair's flags (bits). */
enum {
    VK_REPAIR_DRY_RUN = 1,  /* only report what would be done                */
    VK_REPAIR_FORCE   = 2   /* repair even when blocks are lost (lost_count)  */
};

/* Repairs only what loses nothing unless VK_REPAIR_FORCE: a repair that
 * would lose blocks fails VK_E_EXISTS (lost_count and lost filled in). */
int vk_repair(const char *path, int flags, vk_repair_result *res, vk_err *err);

/* Zero detection (word-wise): 1 if len bytes at p are all zero. */
int vk_is_zero(const uint8_t *p, size_t len);

/* Process-wide options (vk_common.c).  The core reads no environment: the
 * caller sets these (vhdkit.native.set_options), before the calls they are
 * meant for. */
typedef struct vk_options {
    int  io_threads;          /* threads of a conversion between seekable files,
                                 1..8; 0 = one per CPU, 2..4                  */
    long abort_after_writes;  /* test hook: modify, repair, coalesce into the
                                 parent and writes through an image opened
                                 read-write stop with VK_E_INTERRUPTED after
                                 this many writes; -1 = never                 */
} vk_options;

void vk_set_options(const vk_options *opts);
void vk_get_options(vk_options *opts);

/* ==== chains: snapshot, coalesce, reparent (vk_chain.c, ...) ============= */
/*
 * A parent reference written into a differencing header: the parent's
 * name (UTF-8, stored UTF-16BE in the header) and the three locators
 * (W2ru relative path and W2ku absolute path, stored UTF-16LE; MacX a
 * file:// URL, stored UTF-8).  A NULL locator is not written.
 */
typedef struct vk_parent_ref {
    const char *name;
    const char *w2ru;
    const char *w2ku;
    const char *macx;
} vk_parent_ref;

typedef struct vk_snapshot_result {
    uint8_t  uuid[16];
    uint32_t timestamp;
    uint64_t virtual_size;
    uint32_t block_size;
    uint32_t max_table_entries;
    uint8_t  parent_uuid[16];
    uint32_t parent_timestamp;
    uint64_t file_size;
} vk_snapshot_result;

/* A new, empty differencing VHD over the (opened) image `parent` into
 * out_fd (an empty regular file).  size 0 = the parent's virtual size (it
 * may be larger than the parent's); block_size 0 = the parent's (2 MiB for a
 * fixed parent). */
int vk_snapshot(vk_image *parent, int out_fd, uint64_t size, uint32_t block_size,
                const vk_parent_ref *ref, vk_snapshot_result *res, vk_err *err);

/* Make the leaf of an opened image writable (reopens it read-write).  The
 * end footer must be intact (run repair first otherwise). */
int vk_image_make_writable(vk_image *img, vk_err *err);
/* Write len bytes of the virtual disk at off (any alignment).  New blocks
 * are allocated at the end of the leaf (footer moved first), data and
 * bitmap are written before the BAT entry that makes them visible; partial
 * sectors are read-modify-written through the chain below. */
int vk_image_pwrite(vk_image *img, const void *buf, size_t len, uint64_t off, vk_err *err);
int vk_image_flush(vk_image *img, vk_err *err);
/* Bytes read from the layer files since open (data sectors + bitmaps). */
uint64_t vk_image_bytes_read(const vk_image *img);
void vk_image_reset_bytes_read(vk_image *img);
/* Bytes of the virtual disk allocated in some layer (sum of the map's
 * allocated extents): the data a flattened copy needs. */
int vk_image_allocated(vk_image *img, uint64_t *bytes, vk_err *err);

typedef struct vk_merge_result {
    uint64_t bytes_merged;       /* child data copied into the parent          */
    uint64_t bytes_read;         /* read from the child                        */
    uint32_t blocks_allocated;   /* new blocks in the parent                   */
    uint32_t writes;             /* writes to the parent                       */
    int      resumed;            /* 1 if a journal of an earlier run was found */
} vk_merge_result;

/* Merge the leaf of `child` (a differencing disk with its chain opened)
 * into its parent, in place.  journal_path: the intent journal (created
 * before the first write to the parent, removed after the final fsync).
 * The test hook vk_options.abort_after_writes=N stops after N writes. */
int vk_coalesce_into_parent(vk_image *child, const char *journal_path, vk_merge_result *res, vk_err *err);

/* Point the differencing disk at child_path to the (opened) new parent:
 * parent UUID, timestamp, name and locators rewritten.  Unless unsafe, the
 * new parent must have the UUID the child names.  A new parent whose chain
 * contains the child is refused (cycle). */
int vk_reparent(const char *child_path, vk_image *new_parent, const vk_parent_ref *ref, int unsafe,
                vk_err *err);
