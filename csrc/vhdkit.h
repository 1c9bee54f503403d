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
    VK_E_EXISTS        = -10,  /* refusing to overwrite                      */
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

/* ==== reading and checking (vk_image.c, vk_check.c, ...) ================= */

/* ==== writing and converting (vk_write.c, vk_convert.c, ...) ============= */

/* ==== chains: snapshot, coalesce, reparent (vk_chain.c, ...) ============= */
