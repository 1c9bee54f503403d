/* vk_locator.c -- parent locators: decoding them and turning them into
 * path candidates (the opener, vk_image.c, resolves parents with them).
 *
 * Locator codes: 'W2ru' relative Windows path, 'W2ku' absolute Windows path
 * (both UTF-16LE), 'MacX' a file:// URL in UTF-8.  "Data space" is the
 * number of sectors reserved according to the spec, but Microsoft writes it
 * in bytes; only data length (bytes) is needed to read the locator.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vk_image.h"

void vk_dirname(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    size_t n;
    if (!slash) { snprintf(out, cap, "."); return; }
    n = (size_t)(slash - path);
    if (n == 0) n = 1;   /* "/x" -> "/" */
    if (n >= cap) n = cap - 1;
    memcpy(out, path, n);
    out[n] = '\0';
}

int vk_locator_decode(int fd, uint64_t file_size, const vk_locator *loc, char *out, size_t cap, vk_err *err)
{
    uint8_t raw[VK_LOCATOR_MAX_BYTES];
    int rc;

    out[0] = '\0';
    if ((rc = vk_locator_validate(loc, -1, UINT64_MAX, file_size, NULL, NULL, err))) return rc;
    if (loc->data_length == 0 || loc->data_length > VK_LOCATOR_MAX_BYTES)
        return vk_fail(err, VK_E_FORMAT, UINT64_MAX, "locator data length %u is not plausible", loc->data_length);
    if ((rc = vk_pread_full(fd, raw, loc->data_length, loc->data_offset, err))) return rc;
    switch (loc->code) {
    case VK_LOC_W2RU:
    case VK_LOC_W2KU:
        if (loc->data_length % 2 || vk_utf16_to_utf8(raw, loc->data_length, 0, out, cap) < 0)
            return vk_fail(err, VK_E_FORMAT, loc->data_offset, "locator is not valid UTF-16LE");
        return VK_OK;
    case VK_LOC_MACX: {
        size_t n = loc->data_length;
        while (n > 0 && raw[n - 1] == 0) n--;
        if (n + 1 > cap || memchr(raw, 0, n))
            return vk_fail(err, VK_E_FORMAT, loc->data_offset, "MacX locator is not a plausible URL");
        /* validate UTF-8 by round-tripping through the UTF-16 encoder */
        uint8_t tmp[2 * VK_LOCATOR_MAX_BYTES];
        if (vk_utf8_to_utf16((const char *)raw, n, 1, tmp, sizeof tmp) < 0)
            return vk_fail(err, VK_E_FORMAT, loc->data_offset, "MacX locator is not valid UTF-8");
        memcpy(out, raw, n);
        out[n] = '\0';
        return VK_OK;
    }
    default:
        return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "locator code 0x%08x is not supported", loc->code);
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Produce a local path from a decoded locator: 1 relative, 2 absolute,
 * 0 when the locator names no usable local path (e.g. "C:\..."). */
int vk_locator_candidate(uint32_t code, const char *decoded, const char *child_dir, char *out, size_t cap)
{
    char p[VK_PATH_MAX];
    size_t n = 0;
    const char *s = decoded;

    if (code == VK_LOC_MACX) {
        if (strncmp(s, "file://localhost/", 17) == 0) s += 16;
        else if (strncmp(s, "file://", 7) == 0) s += 7;
        for (; *s && n + 1 < sizeof p; s++) {
            if (*s == '%' && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
                char c = (char)(hexval(s[1]) * 16 + hexval(s[2]));
                if (c == 0) return 0;
                p[n++] = c; s += 2;
            } else p[n++] = *s;
        }
    } else if (code == VK_LOC_W2RU || code == VK_LOC_W2KU) {
        for (; *s && n + 1 < sizeof p; s++) p[n++] = *s == '\\' ? '/' : *s;
    } else {
        return 0;
    }
    if (*s) return 0;    /* too long */
    p[n] = '\0';
    if (n == 0) return 0;
    /* A drive letter means a Windows absolute path: not usable here. */
    if (n >= 2 && p[1] == ':') return 0;
    if (p[0] == '/') {
        if ((size_t)snprintf(out, cap, "%s", p) >= cap) return 0;
        return 2;
    }
    const char *rel = p;
    while (rel[0] == '.' && rel[1] == '/') rel += 2;
    if ((size_t)snprintf(out, cap, "%s/%s", child_dir, rel) >= cap) return 0;
    return 1;
}
