/* vk_common.c -- errors, full-length I/O, UTF-16 conversion, time, UUIDs. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vk_internal.h"

int vk_abi_version(void) { return VK_ABI_VERSION; }

static vk_options vk_opts = {0, -1};

void vk_set_options(const vk_options *opts) { vk_opts = *opts; }
void vk_get_options(vk_options *opts) { *opts = vk_opts; }

const char *vk_code_name(int code)
{
    switch (code) {
    case VK_OK: return "VK_OK";
    case VK_E_IO: return "VK_E_IO";
    case VK_E_NOMEM: return "VK_E_NOMEM";
    case VK_E_INVALID: return "VK_E_INVALID";
    case VK_E_FORMAT: return "VK_E_FORMAT";
    case VK_E_CHECKSUM: return "VK_E_CHECKSUM";
    case VK_E_UNSUPPORTED: return "VK_E_UNSUPPORTED";
    case VK_E_RANGE: return "VK_E_RANGE";
    case VK_E_CHAIN: return "VK_E_CHAIN";
    case VK_E_NOTFOUND: return "VK_E_NOTFOUND";
    case VK_E_EXISTS: return "VK_E_EXISTS";
    case VK_E_INTERRUPTED: return "VK_E_INTERRUPTED";
    case VK_E_READONLY: return "VK_E_READONLY";
    case VK_E_NOSPACE: return "VK_E_NOSPACE";
    default: return "VK_E_UNKNOWN";
    }
}

void vk_err_clear(vk_err *err)
{
    if (!err) return;
    err->code = VK_OK;
    err->sys_errno = 0;
    err->offset = UINT64_MAX;
    err->msg[0] = '\0';
}

static int vk_vfail(vk_err *err, int code, int sys_errno, uint64_t offset,
                    const char *fmt, va_list ap)
{
    if (!err) return code;
    err->code = code;
    err->sys_errno = sys_errno;
    err->offset = offset;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    if (sys_errno) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(sys_errno));
    }
    return code;
}

int vk_fail(vk_err *err, int code, uint64_t offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vk_vfail(err, code, 0, offset, fmt, ap);
    va_end(ap);
    return rc;
}

int vk_fail_errno(vk_err *err, int saved_errno, uint64_t offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int code = saved_errno == ENOSPC ? VK_E_NOSPACE : VK_E_IO;
    int rc = vk_vfail(err, code, saved_errno, offset, fmt, ap);
    va_end(ap);
    return rc;
}

/* The one loop behind vk_pread_full and vk_pwrite_full: EINTR retried,
 * short transfers continued; a read that meets the end of the file is a
 * range error, as is a write that makes no progress. */
static int io_full(int fd, uint8_t *p, size_t len, uint64_t off, int writing, vk_err *err)
{
    const char *what = writing ? "write" : "read";
    while (len > 0) {
        ssize_t n = writing ? pwrite(fd, p, len, (off_t)off) : pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return vk_fail_errno(err, errno, off, "%s of %zu bytes at offset %llu failed", what, len,
                                 (unsigned long long)off);
        }
        if (n == 0)
            return vk_fail(err, VK_E_RANGE, off, "unexpected end of file %s %zu bytes at offset %llu",
                           writing ? "writing" : "reading", len, (unsigned long long)off);
        p += n; len -= (size_t)n; off += (uint64_t)n;
    }
    return VK_OK;
}

int vk_pread_full(int fd, void *buf, size_t len, uint64_t off, vk_err *err)
{
    return io_full(fd, buf, len, off, 0, err);
}

int vk_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, vk_err *err)
{
    return io_full(fd, (uint8_t *)(uintptr_t)buf, len, off, 1, err);
}

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of
 * VHDX structures; the 4 bytes at cksum_off count as zero. */
uint32_t vk_crc32c(const uint8_t *buf, size_t len, size_t cksum_off)
{
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
            table[i] = c;
        }
        ready = 1;
    }
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (i >= cksum_off && i - cksum_off < 4) ? 0 : buf[i];
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
    }
    return ~crc;
}

uint32_t vk_time_now(void)
{
    long long t = (long long)time(NULL) - VK_EPOCH_OFFSET;
    if (t < 0) t = 0;
    if (t > (long long)UINT32_MAX) t = UINT32_MAX;
    return (uint32_t)t;
}

int vk_uuid_generate(uint8_t out[16], vk_err *err)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot open /dev/urandom");
    int rc = vk_pread_full(fd, out, 16, 0, err);
    close(fd);
    if (rc) return rc;
    out[6] = (uint8_t)((out[6] & 0x0f) | 0x40);   /* version 4 */
    out[8] = (uint8_t)((out[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
    return VK_OK;
}

/* Decode UTF-16 (BE or LE) into UTF-8, validating surrogates. Stops at the
 * first U+0000.  Returns bytes written (NUL excluded) or -1. */
long vk_utf16_to_utf8(const uint8_t *in, size_t in_len, int big_endian,
                      char *out, size_t out_cap)
{
    size_t o = 0;
    if (out_cap == 0) return -1;
    for (size_t i = 0; i + 1 < in_len; i += 2) {
        uint32_t u = big_endian ? (uint32_t)((in[i] << 8) | in[i + 1])
                                : (uint32_t)((in[i + 1] << 8) | in[i]);
        if (u == 0) break;
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (i + 3 >= in_len) return -1;
            uint32_t lo = big_endian ? (uint32_t)((in[i + 2] << 8) | in[i + 3])
                                     : (uint32_t)((in[i + 3] << 8) | in[i + 2]);
            if (lo < 0xDC00 || lo > 0xDFFF) return -1;
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            i += 2;
        } else if (u >= 0xDC00 && u <= 0xDFFF) {
            return -1;
        }
        uint8_t tmp[4];
        size_t n;
        if (u < 0x80) { tmp[0] = (uint8_t)u; n = 1; }
        else if (u < 0x800) { tmp[0] = (uint8_t)(0xC0 | (u >> 6)); tmp[1] = (uint8_t)(0x80 | (u & 0x3F)); n = 2; }
        else if (u < 0x10000) {
            tmp[0] = (uint8_t)(0xE0 | (u >> 12)); tmp[1] = (uint8_t)(0x80 | ((u >> 6) & 0x3F));
            tmp[2] = (uint8_t)(0x80 | (u & 0x3F)); n = 3;
        } else {
            tmp[0] = (uint8_t)(0xF0 | (u >> 18)); tmp[1] = (uint8_t)(0x80 | ((u >> 12) & 0x3F));
            tmp[2] = (uint8_t)(0x80 | ((u >> 6) & 0x3F)); tmp[3] = (uint8_t)(0x80 | (u & 0x3F)); n = 4;
        }
        if (o + n + 1 > out_cap) return -1;
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o] = '\0';
    return (long)o;
}

/* Encode UTF-8 as UTF-16 (BE or LE), validating the UTF-8.  No terminator
 * is written.  Returns bytes written or -1. */
long vk_utf8_to_utf16(const char *in, size_t in_len, int big_endian,
                      uint8_t *out, size_t out_cap)
{
    const uint8_t *s = (const uint8_t *)in;
    size_t o = 0;
    for (size_t i = 0; i < in_len;) {
        uint32_t u;
        uint8_t c = s[i];
        size_t n;
        if (c < 0x80) { u = c; n = 1; }
        else if ((c & 0xE0) == 0xC0) { u = c & 0x1F; n = 2; }
        else if ((c & 0xF0) == 0xE0) { u = c & 0x0F; n = 3; }
        else if ((c & 0xF8) == 0xF0) { u = c & 0x07; n = 4; }
        else return -1;
        if (i + n > in_len) return -1;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return -1;
            u = (u << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && u < 0x80) || (n == 3 && u < 0x800) || (n == 4 && u < 0x10000) ||
            u > 0x10FFFF || (u >= 0xD800 && u <= 0xDFFF))
            return -1;
        i += n;
        uint16_t units[2];
        size_t nu;
        if (u >= 0x10000) {
            u -= 0x10000;
            units[0] = (uint16_t)(0xD800 + (u >> 10));
            units[1] = (uint16_t)(0xDC00 + (u & 0x3FF));
            nu = 2;
        } else { units[0] = (uint16_t)u; nu = 1; }
        for (size_t k = 0; k < nu; k++) {
            if (o + 2 > out_cap) return -1;
            if (big_endian) { out[o] = (uint8_t)(units[k] >> 8); out[o + 1] = (uint8_t)units[k]; }
            else { out[o] = (uint8_t)units[k]; out[o + 1] = (uint8_t)(units[k] >> 8); }
            o += 2;
        }
    }
    return (long)o;
}

typedef uint64_t __attribute__((may_alias)) vk_u64a;

int vk_is_zero(const uint8_t *p, size_t len)
{
    size_t i = 0;
    /* Unaligned head, then 64 bytes per step (the compiler vectorises the
     * OR-reduction), then the tail. */
    while (i < len && ((uintptr_t)(p + i) & 7u)) if (p[i++]) return 0;
    if (len - i >= 8 && *(const vk_u64a *)(p + i)) return 0;   /* data exits here */
    for (; i + 64 <= len; i += 64) {
        const vk_u64a *w = (const vk_u64a *)(p + i);
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) return 0;
    }
    for (; i < len; i++) if (p[i]) return 0;
    return 1;
}
