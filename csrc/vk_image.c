/* vk_image.c -- opening a VHD read-only: footer (end of file, 511-byte old
 * footers, the copy at offset 0), dynamic header, BAT, size rules, and the
 * parent chain; info about each layer.
 *
 * Everything read from the file is untrusted: offsets and counts are checked
 * against the file size before use, and no allocation is sized by a field
 * that has not been bounded by the file size first. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vkx.h"

static int footer_cookie_ok(const uint8_t *b) { return memcmp(b, "conectix", 8) == 0; }

/* Pick the footer: the last 512 bytes; else the last 511 (very old images);
 * else, for dynamic/differencing disks, the copy at offset 0 (as qemu does).
 * A footer whose checksum fails is replaced by a valid copy at 0 if there is
 * one; otherwise that is an error. */
int vk_read_footer(int fd, uint64_t file_size, vk_footer *f, int *fsize, int *fsource,
                   uint8_t raw[512], vk_err *err)
{
    uint8_t end[512], copy[512];
    int rc, have_end = 0, end_size = 512, have_copy = 0;

    if (file_size < 511)
        return vk_fail(err, VK_E_FORMAT, 0, "not a VHD: file is %llu bytes, smaller than a footer",
                       (unsigned long long)file_size);
    memset(end, 0, sizeof end);
    if (file_size >= 512) {
        if ((rc = vk_pread_full(fd, end, 512, file_size - 512, err))) return rc;
        if (footer_cookie_ok(end)) have_end = 1;
    }
    if (!have_end) {
        memset(end, 0, sizeof end);
        if ((rc = vk_pread_full(fd, end, 511, file_size - 511, err))) return rc;
        if (footer_cookie_ok(end)) { have_end = 1; end_size = 511; }
    }
    if (file_size >= 1536) {
        if ((rc = vk_pread_full(fd, copy, 512, 0, err))) return rc;
        if (footer_cookie_ok(copy) && vk_footer_checksum_of(copy) == vk_be32(copy + 64)) {
            uint32_t t = vk_be32(copy + 60);
            if (t == VK_DISK_DYNAMIC || t == VK_DISK_DIFF) have_copy = 1;
        }
    }
    if (have_end && vk_footer_checksum_of(end) == vk_be32(end + 64)) {
        memcpy(raw, end, 512);
        *fsize = end_size; *fsource = 0;
    } else if (have_copy) {
        memcpy(raw, copy, 512);
        *fsize = 512; *fsource = 1;
    } else if (have_end) {
        return vk_fail(err, VK_E_CHECKSUM, file_size - (uint64_t)end_size,
                       "footer checksum mismatch (stored 0x%08x, computed 0x%08x)",
                       vk_be32(end + 64), vk_footer_checksum_of(end));
    } else {
        return vk_fail(err, VK_E_FORMAT, file_size - 512,
                       "not a VHD: no 'conectix' footer at the end of the file");
    }
    vk_footer_decode(raw, f);
    return VK_OK;
}

uint64_t vk_size_by_rule(const vk_footer *f, int rule, int *applied)
{
    uint64_t chs = vk_chs_size(f->cylinders, f->heads, f->sectors);
    if (rule == VK_SIZE_AUTO) {
        int chs_creator = memcmp(f->creator_app, "vpc ", 4) == 0 || memcmp(f->creator_app, "qemu", 4) == 0;
        int chs_max = f->cylinders == 65535 && f->heads == 16 && f->sectors == 255;
        rule = (chs_creator && !chs_max && chs != 0) ? VK_SIZE_CHS : VK_SIZE_CURRENT;
    }
    *applied = rule;
    switch (rule) {
    case VK_SIZE_CHS: return chs;
    case VK_SIZE_ORIGINAL: return f->original_size;
    default: return f->current_size;
    }
}

void vk_layer_close(vk_layer *L)
{
    if (L->fd >= 0) close(L->fd);
    L->fd = -1;
    free(L->path); L->path = NULL;
    free(L->bat); L->bat = NULL;
    free(L->bm); L->bm = NULL;
    vkx_free(L->vx); L->vx = NULL;
}

static int layer_load_dynamic(vk_layer *L, vk_err *err)
{
    uint8_t hb[1024];
    vk_footer *f = &L->footer;
    vk_dynhdr *h = &L->hdr;
    uint64_t n, bytes;
    int rc;

    if (f->data_offset > L->file_size || L->file_size - f->data_offset < 1024)
        return vk_fail(err, VK_E_RANGE, f->data_offset,
                       "dynamic header offset %llu is outside the file (%llu bytes)",
                       (unsigned long long)f->data_offset, (unsigned long long)L->file_size);
    if ((rc = vk_pread_full(L->fd, hb, 1024, f->data_offset, err))) return rc;
    if ((rc = vk_dynhdr_validate(hb, h, f->data_offset, NULL, NULL, err))) return rc;
    L->block_size = h->block_size;
    L->bitmap_size = vk_bitmap_bytes(h->block_size);

    /* The entries the virtual size addresses (never more than the header
     * says), inside the file and the limit (this bounds the allocation). */
    vk_bat_layout g;
    vk_bat_layout_of(&g, h, f->data_offset, L->file_size, L->file_size - (uint64_t)L->footer_size, L->virtual_size);
    if ((rc = vk_bat_table_validate(h, &g, L->virtual_size, NULL, NULL, err))) return rc;
    n = g.disk_entries;
    bytes = n * 4;
    L->n_bat = (uint32_t)n;
    L->bat = malloc(bytes ? bytes : 4);
    L->bm = malloc(L->bitmap_size);
    if (!L->bat || !L->bm) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory for the BAT");
    L->bm_block = VK_BAT_UNUSED;
    if (bytes && (rc = vk_pread_full(L->fd, L->bat, bytes, h->table_offset, err))) return rc;
    L->bat_used = L->bat_overlaps = 0;
    for (uint32_t i = 0; i < L->n_bat; i++) {
        uint32_t e = vk_be32((const uint8_t *)&L->bat[i]);
        L->bat[i] = e;
        int c = vk_bat_entry_class(&g, i, e);
        if (vk_bat_class_fatal(c)) return vk_bat_entry_validate(&g, i, e, NULL, NULL, err);
        if (c == VK_BATE_UNUSED) continue;
        L->bat_overlaps += c == VK_BATE_OVERLAP;
        L->bat_used++;
    }
    return VK_OK;
}

int vk_layer_open(vk_layer *L, const char *path, int size_rule, vk_err *err)
{
    return vk_layer_open_noted(L, path, size_rule, NULL, NULL, err);
}

int vk_layer_open_noted(vk_layer *L, const char *path, int size_rule, vkx_note_fn note, void *note_ctx, vk_err *err)
{
    struct stat st;
    uint8_t raw[512];
    int rc;

    memset(L, 0, sizeof *L);
    L->fd = -1;
    if (size_rule < VK_SIZE_AUTO || size_rule > VK_SIZE_ORIGINAL)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid size rule %d", size_rule);
    /* O_NONBLOCK: opening a FIFO for reading must not wait for a writer
     * (it is refused below); it changes nothing for files and devices. */
    L->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (L->fd < 0) {
        int e = errno;
        if (e == ENOENT) return vk_fail(err, VK_E_NOTFOUND, UINT64_MAX, "%s: no such file", path);
        return vk_fail_errno(err, e, UINT64_MAX, "cannot open %s", path);
    }
    if (fstat(L->fd, &st) < 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot stat %s", path);
    if (S_ISDIR(st.st_mode)) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "%s is a directory", path);
    if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "%s is a FIFO or socket, not a file", path);
    L->dev = st.st_dev;
    L->ino = st.st_ino;
    if (S_ISREG(st.st_mode)) {
        L->file_size = (uint64_t)st.st_size;
    } else {
        off_t e = lseek(L->fd, 0, SEEK_END);
        if (e < 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot size %s", path);
        L->file_size = (uint64_t)e;
    }
    L->path = realpath(path, NULL);
    if (!L->path) L->path = strdup(path);
    if (!L->path) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
    if (vkx_is_vhdx(L->fd, L->file_size)) return vkx_layer_open(L, note, note_ctx, err);

    if ((rc = vk_read_footer(L->fd, L->file_size, &L->footer, &L->footer_size, &L->footer_source, raw, err)))
        return rc;
    vk_footer *f = &L->footer;
    uint64_t foff = L->footer_source ? 0 : L->file_size - (uint64_t)L->footer_size;
    if ((rc = vk_footer_validate(raw, f, foff, L->file_size, NULL, NULL, err))) return rc;
    L->virtual_size = vk_size_by_rule(f, size_rule, &L->size_rule);
    switch (f->disk_type) {
    case VK_DISK_FIXED:
        L->fixed_data_end = L->file_size - (uint64_t)L->footer_size;
        if (L->virtual_size > L->fixed_data_end)
            return vk_fail(err, VK_E_RANGE, L->file_size - 512 + 48,
                           "fixed disk of %llu bytes in a file holding only %llu bytes of data (truncated?)",
                           (unsigned long long)L->virtual_size, (unsigned long long)L->fixed_data_end);
        return VK_OK;
    case VK_DISK_DYNAMIC:
    case VK_DISK_DIFF:
        if (L->virtual_size > VK_MAX_VIRTUAL_SIZE)
            return vk_fail(err, VK_E_UNSUPPORTED, L->file_size - 512 + 48,
                           "virtual size %llu exceeds the VHD maximum of %u GiB",
                           (unsigned long long)L->virtual_size, (unsigned)VK_MAX_VIRTUAL_GIB);
        return layer_load_dynamic(L, err);
    default:   /* refused by vk_footer_validate */
        return vk_fail(err, VK_E_FORMAT, foff + 60, "unknown disk type %u", f->disk_type);
    }
}

/* ---- parent resolution -----------------------------------------------------
 * Parents given by the caller; else relative locators (next to the child),
 * then absolute ones, then the header's parent name in the child's
 * directory.  The parent must be a regular file, inside allowed_root if one
 * is given, and carry the UUID the child names.  With no_locators (server
 * code) only the caller's parent is tried; the message of that refusal names
 * no path, since it may reach a customer. */
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

void vk_image_close(vk_image *img)
{
    if (!img) return;
    for (int i = 0; i < img->n; i++) vk_layer_close(&img->layer[i]);
    free(img);
}

int vk_image_open(const char *path, const vk_open_opts *opts, vk_image **out, vk_err *err)
{
    vk_open_opts none;
    vk_image *img;
    int rc;

    vk_err_clear(err);
    *out = NULL;
    if (!path) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no path given");
    if (!opts) { memset(&none, 0, sizeof none); opts = &none; }
    if (opts->n_parents < 0 || (opts->n_parents > 0 && !opts->parents))
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid parents list");
    img = calloc(1, sizeof *img);
    if (!img) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
    img->n = 1;
    if ((rc = vk_layer_open(&img->layer[0], path, opts->size_rule, err))) goto fail;
    while (!opts->top_only && img->layer[img->n - 1].footer.disk_type == VK_DISK_DIFF) {
        const char *explicit_path = img->n - 1 < opts->n_parents ? opts->parents[img->n - 1] : NULL;
        int reason;
        if (img->n >= VK_MAX_CHAIN_DEPTH) {
            rc = vk_fail(err, VK_E_CHAIN, UINT64_MAX, "differencing chain is deeper than %d layers",
                         VK_MAX_CHAIN_DEPTH);
            goto fail;
        }
        vk_layer *P = &img->layer[img->n];
        rc = vk_parent_open(&img->layer[img->n - 1], explicit_path, opts->no_locators, opts->allowed_root, &reason,
                            opts->size_rule, P, err);
        img->n++;   /* so a partly opened parent is closed on failure */
        if (rc) goto fail;
        for (int i = 0; i < img->n - 1; i++) {
            if (img->layer[i].dev == P->dev && img->layer[i].ino == P->ino) {
                rc = vk_fail(err, VK_E_CHAIN, UINT64_MAX, "parent chain has a cycle: %s appears twice",
                             P->path);
                goto fail;
            }
        }
    }
    *out = img;
    return VK_OK;
fail:
    vk_image_close(img);
    return rc;
}

uint64_t vk_image_size(const vk_image *img) { return img->layer[0].virtual_size; }

int vk_image_depth(const vk_image *img) { return img->n; }

int vk_layer_arg(const vk_image *img, int layer, vk_err *err)
{
    vk_err_clear(err);
    if (!img || layer < 0 || layer >= img->n)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no layer %d in this image", layer);
    return VK_OK;
}

int vk_image_info(const vk_image *img, int layer, vk_info *o, vk_err *err)
{
    int rc;
    if ((rc = vk_layer_arg(img, layer, err))) return rc;
    const vk_layer *L = &img->layer[layer];
    const vk_footer *f = &L->footer;
    memset(o, 0, sizeof *o);
    o->disk_type = f->disk_type;
    o->virtual_size = L->virtual_size;
    o->size_rule = L->size_rule;
    o->current_size = f->current_size;
    o->original_size = f->original_size;
    o->chs_size = vk_chs_size(f->cylinders, f->heads, f->sectors);
    o->cylinders = f->cylinders;
    o->heads = f->heads;
    o->sectors_per_track = f->sectors;
    memcpy(o->creator_app, f->creator_app, 4);
    o->creator_version = f->creator_version;
    memcpy(o->creator_os, f->creator_os, 4);
    memcpy(o->uuid, f->uuid, 16);
    o->timestamp = f->timestamp;
    o->saved_state = f->saved_state;
    o->features = f->features;
    o->version = f->version;
    o->data_offset = f->data_offset;
    o->footer_size = L->footer_size;
    o->footer_source = L->footer_source;
    o->file_size = L->file_size;
    if (L->vx) {
        o->format = 1;
        o->current_size = o->original_size = L->virtual_size;
        o->block_size = L->block_size;
        o->bat_entries_used = L->bat_used;
        o->allocated_bytes = (uint64_t)L->bat_used * L->block_size;
        memcpy(o->uuid, L->vx->page83, 16);
        return VK_OK;
    }
    if (f->disk_type == VK_DISK_FIXED) {
        o->allocated_bytes = L->virtual_size;
        return VK_OK;
    }
    const vk_dynhdr *h = &L->hdr;
    o->table_offset = h->table_offset;
    o->block_size = h->block_size;
    o->max_table_entries = h->max_table_entries;
    o->bat_entries_used = L->bat_used;
    o->allocated_bytes = (uint64_t)L->bat_used * h->block_size;
    memcpy(o->parent_uuid, h->parent_uuid, 16);
    o->parent_timestamp = h->parent_timestamp;
    o->parent_name_valid = vk_utf16_to_utf8(h->parent_name, sizeof h->parent_name, 1,
                                            o->parent_name, sizeof o->parent_name) >= 0;
    if (!o->parent_name_valid) o->parent_name[0] = '\0';
    for (int i = 0; i < 8; i++)
        if (h->loc[i].code) o->n_locators++;
    return VK_OK;
}

int vk_image_locator(const vk_image *img, int layer, int index, vk_locator_info *o, vk_err *err)
{
    int rc, seen = 0;
    vk_err tmp;
    if ((rc = vk_layer_arg(img, layer, err))) return rc;
    const vk_layer *L = &img->layer[layer];
    memset(o, 0, sizeof *o);
    if (L->footer.disk_type == VK_DISK_FIXED || L->vx)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "a fixed disk or a VHDX has no VHD locators");
    for (int i = 0; i < 8; i++) {
        const vk_locator *l = &L->hdr.loc[i];
        if (!l->code) continue;
        if (seen++ != index) continue;
        vk_put32((uint8_t *)o->code, l->code);
        for (int k = 0; k < 4; k++)
            if ((unsigned char)o->code[k] < 0x20 || (unsigned char)o->code[k] > 0x7e) o->code[k] = '?';
        o->data_space = l->data_space;
        o->data_length = l->data_length;
        o->data_offset = l->data_offset;
        o->valid = vk_locator_decode(L->fd, L->file_size, l, o->path, sizeof o->path, &tmp) == 0;
        if (!o->valid) o->path[0] = '\0';
        return VK_OK;
    }
    return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no locator %d", index);
}

int vk_image_path(const vk_image *img, int layer, char *buf, size_t cap, vk_err *err)
{
    int rc;
    if ((rc = vk_layer_arg(img, layer, err))) return rc;
    size_t n = strlen(img->layer[layer].path);
    if (n + 1 > cap) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "path buffer too small");
    memcpy(buf, img->layer[layer].path, n + 1);
    return VK_OK;
}

int vk_probe(const char *path, uint32_t *disk_type, vk_err *err)
{
    struct stat st;
    vk_footer f;
    uint8_t raw[512];
    int fsize, fsource, rc;
    vk_err tmp;

    vk_err_clear(err);
    *disk_type = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block */
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return vk_fail(err, VK_E_NOTFOUND, UINT64_MAX, "%s: no such file", path);
        return vk_fail_errno(err, e, UINT64_MAX, "cannot open %s", path);
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) { close(fd); return VK_OK; }
    rc = vk_read_footer(fd, (uint64_t)st.st_size, &f, &fsize, &fsource, raw, &tmp);
    close(fd);
    if (rc == VK_E_IO) { *err = tmp; return rc; }
    if (rc == 0 && (f.disk_type == VK_DISK_FIXED || f.disk_type == VK_DISK_DYNAMIC || f.disk_type == VK_DISK_DIFF))
        *disk_type = f.disk_type;
    return VK_OK;
}
