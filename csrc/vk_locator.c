/* vk_locator.c -- parent locators and parent resolution.
 *
 * Locator codes: 'W2ru' relative Windows path, 'W2ku' absolute Windows path
 * (both UTF-16LE), 'MacX' a file:// URL in UTF-8.  "Data space" is the
 * number of sectors reserved according to the spec, but Microsoft writes it
 * in bytes; only data length (bytes) is needed to read the locator.
 *
 * Resolution order: parents given by the caller; else relative locators
 * (next to the child), then absolute ones, then the header's parent name in
 * the child's directory.  The parent must be a regular file, inside
 * allowed_root if one is given, and carry the UUID the child names.  With
 * no_locators (server code) only the caller's parent is tried; the message
 * of that refusal names no path, since it may reach a customer. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vkx.h"

#define VK_LOCATOR_MAX 8192u   /* longest locator data we accept (bytes) */

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
    uint8_t raw[VK_LOCATOR_MAX];
    uint64_t end;
    int rc;

    out[0] = '\0';
    if (loc->data_length == 0 || loc->data_length > VK_LOCATOR_MAX)
        return vk_fail(err, VK_E_FORMAT, UINT64_MAX, "locator data length %u is not plausible", loc->data_length);
    if (vk_add_ovf(loc->data_offset, loc->data_length, &end) || end > file_size)
        return vk_fail(err, VK_E_RANGE, loc->data_offset, "locator data at offset %llu is past the end of the file",
                       (unsigned long long)loc->data_offset);
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
        uint8_t tmp[2 * VK_LOCATOR_MAX];
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

static int inside_root(const char *real, const char *root_real)
{
    size_t n = strlen(root_real);
    if (n == 1 && root_real[0] == '/') return 1;
    return strncmp(real, root_real, n) == 0 && (real[n] == '/' || real[n] == '\0');
}

/* Try one candidate.  0 = opened and matches; otherwise *reason says why. */
static int try_candidate(const vk_layer *child, const char *cand, const char *root_real, int size_rule,
                         vk_layer *parent, int *reason, vk_err *err)
{
    struct stat st;
    char *real;
    int rc;

    if (stat(cand, &st) < 0) {
        *reason = VK_PARENT_MISSING;
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "parent %s of %s not found", cand, child->path);
    }
    if (!S_ISREG(st.st_mode)) {
        *reason = VK_PARENT_INVALID;
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "parent %s of %s is not a regular file", cand, child->path);
    }
    real = realpath(cand, NULL);
    if (!real) return vk_fail_errno(err, errno, UINT64_MAX, "cannot resolve %s", cand);
    if (root_real && !inside_root(real, root_real)) {
        *reason = VK_PARENT_OUTSIDE;
        rc = vk_fail(err, VK_E_CHAIN, UINT64_MAX, "parent %s of %s is outside the allowed root %s", real,
                     child->path, root_real);
        free(real);
        return rc;
    }
    rc = vk_layer_open(parent, real, size_rule, err);
    free(real);
    if (rc) {
        *reason = VK_PARENT_INVALID;
        vk_layer_close(parent);
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, " (parent of %s)", child->path);
        err->code = VK_E_CHAIN;
        return VK_E_CHAIN;
    }
    if (child->vx || parent->vx) {
        if ((rc = vkx_parent_matches(child, parent, reason, err))) vk_layer_close(parent);
        return rc;
    }
    if (memcmp(parent->footer.uuid, child->hdr.parent_uuid, 16) != 0) {
        *reason = VK_PARENT_UUID;
        rc = vk_fail(err, VK_E_CHAIN, UINT64_MAX, "parent %s has a different UUID than %s expects", parent->path,
                     child->path);
        vk_layer_close(parent);
        return rc;
    }
    *reason = VK_PARENT_OK;
    return VK_OK;
}

int vk_parent_open(const vk_layer *child, const char *explicit_path, int no_locators, const char *allowed_root,
                   int *reason, int size_rule, vk_layer *parent, vk_err *err)
{
    char dir[VK_PATH_MAX], cand[VK_PATH_MAX], dec[1024];
    char *root_real = NULL;
    int rc, best_reason = VK_PARENT_MISSING, have_err = 0;
    vk_err first;

    memset(parent, 0, sizeof *parent);
    parent->fd = -1;
    *reason = VK_PARENT_MISSING;
    if (!explicit_path && no_locators)
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX,
                       "the differencing disk's parent was not given (its locators are not followed)");
    if (allowed_root) {
        root_real = realpath(allowed_root, NULL);
        if (!root_real) return vk_fail_errno(err, errno, UINT64_MAX, "cannot resolve allowed root %s", allowed_root);
    }
    if (explicit_path) {
        rc = try_candidate(child, explicit_path, root_real, size_rule, parent, reason, err);
        free(root_real);
        return rc;
    }
    vk_dirname(child->path, dir, sizeof dir);
    /* pass 1: relative locators, pass 2: absolute ones, pass 3: the name */
    for (int pass = 1; pass <= 3; pass++) {
        for (int i = 0; i < (pass == 3 ? 1 : 8); i++) {
            vk_err tmp;
            if (child->vx) {
                if (vkx_parent_candidate(child, pass, i, dir, cand, sizeof cand)) continue;
            } else if (pass < 3) {
                const vk_locator *l = &child->hdr.loc[i];
                if (!l->code || vk_locator_decode(child->fd, child->file_size, l, dec, sizeof dec, &tmp))
                    continue;
                if (vk_locator_candidate(l->code, dec, dir, cand, sizeof cand) != pass) continue;
            } else {
                char name[1024];
                if (vk_utf16_to_utf8(child->hdr.parent_name, sizeof child->hdr.parent_name, 1, name,
                                     sizeof name) <= 0)
                    continue;
                for (char *c = name; *c; c++) if (*c == '\\') *c = '/';
                const char *base = strrchr(name, '/');
                base = base ? base + 1 : name;
                if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) continue;
                if ((size_t)snprintf(cand, sizeof cand, "%s/%s", dir, base) >= sizeof cand) continue;
            }
            int why;
            rc = try_candidate(child, cand, root_real, size_rule, parent, &why, &tmp);
            if (rc == 0) { free(root_real); *reason = VK_PARENT_OK; return VK_OK; }
            /* keep the most telling failure: anything beats "missing" */
            if (!have_err || (best_reason == VK_PARENT_MISSING && why != VK_PARENT_MISSING)) {
                first = tmp; best_reason = why; have_err = 1;
            }
        }
    }
    free(root_real);
    *reason = best_reason;
    if (have_err && best_reason != VK_PARENT_MISSING) { *err = first; return first.code; }
    return vk_fail(err, VK_E_CHAIN, UINT64_MAX,
                   "parent of %s not found (tried its locators and the parent name next to it)", child->path);
}
