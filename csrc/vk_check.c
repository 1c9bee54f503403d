/* vk_check.c -- structural validation, at least what blktap's `vhd-util
 * check` validates.  Unlike the opener, the checker keeps going after a
 * problem wherever the rest can still be examined, and reports each problem
 * with a stable code, the file offset involved and a message. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vkx.h"

typedef struct {
    vk_problem *out;
    size_t cap;
    size_t n;
    int layer;
} probs;

__attribute__((format(printf, 4, 5)))
static void add(probs *P, const char *code, uint64_t off, const char *fmt, ...)
{
    if (P->n < P->cap) {
        vk_problem *p = &P->out[P->n];
        va_list ap;
        snprintf(p->code, sizeof p->code, "%s", code);
        p->offset = off;
        p->layer = P->layer;
        va_start(ap, fmt);
        vsnprintf(p->msg, sizeof p->msg, fmt, ap);
        va_end(ap);
    }
    P->n++;
}

typedef struct { uint64_t start, end; const char *what; uint32_t idx; } region;

static int cmp_region(const void *a, const void *b)
{
    const region *x = a, *y = b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static const char *name_base(const char *p)
{
    const char *a = strrchr(p, '/'), *b = strrchr(p, '\\');
    const char *s = a > b ? a : b;
    return s ? s + 1 : p;
}

static int same_name(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return 0;
    }
    return *a == *b;
}

/* Each finding of a format validator is one problem, under its stable code. */
static void finding(void *ctx, int code, const char *id, uint64_t off, const char *msg)
{
    add(ctx, id, off, "%s", msg);
}

/* The checks of one file.  Returns 0; fills *opened with an open layer when
 * the file is a differencing disk that the opener accepts (for parents). */
static void check_file(probs *P, const char *path, const vk_open_opts *opts, int check_parents,
                       dev_t *seen_dev, ino_t *seen_ino, int depth);

static void check_dynamic(probs *P, int fd, uint64_t file_size, const vk_footer *f, int fsize,
                          const uint8_t *raw, uint64_t virtual_size, vk_dynhdr *h, int *hdr_ok)
{
    uint8_t hb[1024], copy[512];
    int rc;
    vk_err e;

    *hdr_ok = 0;
    /* the footer copy at offset 0 must equal the end footer */
    if (file_size >= 512 && vk_pread_full(fd, copy, 512, 0, &e) == 0) {
        if (memcmp(copy, raw, (size_t)fsize) != 0)
            add(P, "FOOTER_COPY_MISMATCH", 0, "the footer copy at offset 0 differs from the footer at the end");
    }
    if (f->data_offset == UINT64_MAX || f->data_offset > file_size || file_size - f->data_offset < 1024) return;
    if ((rc = vk_pread_full(fd, hb, 1024, f->data_offset, &e))) {
        add(P, "HEADER_READ", f->data_offset, "%s", e.msg);
        return;
    }
    uint64_t ho = f->data_offset;
    /* a wrong checksum or version is reported; the rest can still be examined */
    vk_dynhdr_validate(hb, h, ho, finding, P, NULL);
    if (memcmp(hb, "cxsparse", 8) != 0) return;
    vk_bat_layout g;
    vk_bat_layout_of(&g, h, ho, file_size, file_size - (uint64_t)fsize, virtual_size);
    if (vk_bat_table_validate(h, &g, virtual_size, finding, P, NULL) || !vk_block_size_ok(h->block_size)) return;
    *hdr_ok = 1;
}

/* The BAT's entries (vk_bat_entry_validate, as the opener judges them, the
 * disk size by the caller's size rule), then overlaps between blocks, the
 * locators' data and the metadata (blocks over metadata are the
 * validator's finding already). */
static void check_bat_and_locators(probs *P, int fd, uint64_t file_size, const vk_footer *f, int fsize,
                                   const vk_dynhdr *h, uint64_t virtual_size)
{
    vk_bat_layout g;
    uint64_t footer_at = file_size - (uint64_t)fsize;
    vk_bat_layout_of(&g, h, f->data_offset, file_size, footer_at, virtual_size);
    uint64_t n = g.table_entries;   /* all declared ones, if inside the file */
    uint64_t bat_bytes = n * 4;
    uint8_t *bat = NULL;
    region *r = NULL;
    size_t nr = 0, n_alloc = 0;
    vk_err e;

    if (n > VK_MAX_BAT_ENTRIES) {
        add(P, "BAT_TOO_LARGE", h->table_offset + 0, "%llu BAT entries exceed the limit of %u; blocks not checked",
            (unsigned long long)n, VK_MAX_BAT_ENTRIES);
        return;
    }
    bat = malloc(bat_bytes ? bat_bytes : 1);   /* bounded: inside the file, and by the limit */
    if (!bat) { add(P, "INTERNAL", UINT64_MAX, "out of memory checking the BAT"); goto out; }
    if (bat_bytes && vk_pread_full(fd, bat, bat_bytes, h->table_offset, &e)) {
        add(P, "BAT_READ", h->table_offset, "%s", e.msg);
        goto out;
    }
    for (uint64_t i = 0; i < n; i++) n_alloc += vk_be32(bat + 4 * i) != VK_BAT_UNUSED;
    r = malloc((n_alloc + 12) * sizeof *r);
    if (!r) { add(P, "INTERNAL", UINT64_MAX, "out of memory checking the BAT"); goto out; }
    r[nr++] = (region){0, 512, "footer copy", 0};
    r[nr++] = (region){f->data_offset, f->data_offset + 1024, "dynamic header", 0};
    r[nr++] = (region){h->table_offset, h->table_offset + g.table_bytes, "BAT", 0};
    r[nr++] = (region){footer_at, file_size, "footer", 0};
    for (int i = 0; i < 8; i++) {
        const vk_locator *l = &h->loc[i];
        if (!l->code) continue;
        uint64_t space = vk_locator_space(l);
        if (l->data_offset < file_size && l->data_offset + l->data_length <= file_size && l->data_length)
            r[nr++] = (region){l->data_offset, l->data_offset + (space > l->data_length ? l->data_length : space),
                               "parent locator", (uint32_t)i};
    }
    for (uint64_t i = 0; i < n; i++) {
        uint32_t v = vk_be32(bat + 4 * i);
        vk_bat_entry_validate(&g, i, v, finding, P, NULL);
        int c = vk_bat_entry_class(&g, i, v);
        uint64_t start = (uint64_t)v * 512;
        if (c == VK_BATE_UNUSED || start >= file_size) continue;
        r[nr++] = (region){start, start + g.bitmap_bytes + h->block_size, "block", (uint32_t)i};
    }
    qsort(r, nr, sizeof *r, cmp_region);
    for (size_t i = 1, last = 0; i < nr; i++) {
        const region *a = &r[last], *b = &r[i];
        int blocks = !strcmp(a->what, "block") + !strcmp(b->what, "block");
        int locs = !strcmp(a->what, "parent locator") + !strcmp(b->what, "parent locator");
        /* a block over metadata is the validator's BAT_OVERLAP (reported above) */
        if (b->start < a->end && (blocks != 1 || locs == 1)) {
            const char *code = blocks ? "BAT_OVERLAP" : locs == 2 ? "LOCATOR_OVERLAP" : "LAYOUT_OVERLAP";
            add(P, code, b->start, "%s %u [%llu, %llu) overlaps %s %u [%llu, %llu)", b->what, b->idx,
                (unsigned long long)b->start, (unsigned long long)b->end, a->what, a->idx,
                (unsigned long long)a->start, (unsigned long long)a->end);
        }
        if (r[i].end > r[last].end) last = i;
    }
out:
    free(bat);
    free(r);
}

static void check_locators(probs *P, int fd, uint64_t file_size, const vk_footer *f, uint64_t ho, const vk_dynhdr *h)
{
    char name[1024], dec[1024];
    int name_ok = vk_utf16_to_utf8(h->parent_name, sizeof h->parent_name, 1, name, sizeof name) >= 0;
    static const uint8_t zero[16];
    int any = 0;

    if (f->disk_type != VK_DISK_DIFF) {
        if (memcmp(h->parent_uuid, zero, 16) != 0 || h->parent_name[0] || h->parent_name[1])
            add(P, "PARENT_FIELDS", ho + 40, "a disk that is not differencing has parent fields set");
        for (int i = 0; i < 8; i++)
            if (h->loc[i].code) {
                add(P, "PARENT_FIELDS", ho + 576 + 24 * i, "a disk that is not differencing has parent locator %d", i);
                break;
            }
        return;
    }
    if (!name_ok) add(P, "PARENT_NAME", ho + 64, "the parent name is not valid UTF-16");
    else if (!name[0]) add(P, "PARENT_NAME", ho + 64, "the parent name is empty");
    if (memcmp(h->parent_uuid, zero, 16) == 0) add(P, "PARENT_UUID", ho + 40, "the parent UUID is all zeros");
    for (int i = 0; i < 8; i++) {
        const vk_locator *l = &h->loc[i];
        vk_err e;
        if (!l->code) continue;
        any = 1;
        if (vk_locator_validate(l, i, ho + 576 + 24 * i, file_size, finding, P, NULL)) continue;
        if (l->code == VK_LOC_WI2R || l->code == VK_LOC_WI2K) continue;   /* deprecated, not decoded */
        if (vk_locator_decode(fd, file_size, l, dec, sizeof dec, &e)) {
            add(P, "LOCATOR_DECODE", l->data_offset, "locator %d: %s", i, e.msg);
            continue;
        }
        if (name_ok && name[0] && !same_name(name_base(dec), name_base(name)))
            add(P, "LOCATOR_NAME_MISMATCH", l->data_offset, "locator %d names %s but the parent name is %s", i,
                dec, name);
    }
    if (!any) add(P, "LOCATOR_MISSING", ho + 576, "a differencing disk without parent locators");
}

/* The problem code of a vk_parent_open failure reason. */
static const char *parent_code(int reason)
{
    static const char *codes[] = {"PARENT_MISSING", "PARENT_MISSING", "PARENT_UUID", "PARENT_OUTSIDE_ROOT",
                                  "PARENT_INVALID"};
    return codes[reason >= 0 && reason <= 4 ? reason : 1];
}

/* Check the parent ppath of the layer at depth, as layer depth + 1. */
static void check_parent_file(probs *P, const char *ppath, const vk_open_opts *opts, int check_parents,
                              dev_t *seen_dev, ino_t *seen_ino, int depth)
{
    int saved = P->layer;
    P->layer = depth + 1;
    check_file(P, ppath, opts, check_parents, seen_dev, seen_ino, depth + 1);
    P->layer = saved;
}

static void note_problem(void *ctx, const char *code, uint64_t off, const char *msg)
{
    add(ctx, code, off, "%s", msg);
}

/* A VHDX layer: what the opener refuses (one problem with its code), what
 * it tolerates (a torn header or region table copy), block overlaps, a
 * pending log replay; then its parent, if asked. */
static void check_vhdx(probs *P, const char *path, const vk_open_opts *opts, int check_parents,
                       dev_t *seen_dev, ino_t *seen_ino, int depth)
{
    vk_layer L, parent;
    vk_err e;
    int reason;
    if (vk_layer_open_noted(&L, path, VK_SIZE_AUTO, note_problem, P, &e)) goto out;
    vkx_check_bat(L.vx);
    if (L.vx->log_pending)
        add(P, "VHDX_LOG_REPLAY_PENDING", L.vx->hdr[L.vx->current].log_offset,
            "the log holds %u entries never applied (not closed cleanly): reads show the replayed disk; "
            "'vhdkit repair' writes the replay into the file", L.vx->log_entries);
    if (L.footer.disk_type != VK_DISK_DIFF || !check_parents) goto out;
    const char *explicit_path = depth < opts->n_parents ? opts->parents[depth] : NULL;
    if (vk_parent_open(&L, explicit_path, opts->no_locators, opts->allowed_root, &reason, opts->size_rule, &parent, &e)) {
        add(P, parent_code(reason), UINT64_MAX, "%s", e.msg);
        goto out;
    }
    char *ppath = strdup(parent.path);
    int cycle = 0;
    for (int i = 0; i <= depth; i++)
        cycle |= seen_dev[i] == parent.dev && seen_ino[i] == parent.ino;
    vk_layer_close(&parent);
    if (!ppath) add(P, "INTERNAL", UINT64_MAX, "out of memory");
    else if (cycle) add(P, "CHAIN_CYCLE", UINT64_MAX, "parent chain has a cycle: %s appears twice", ppath);
    else if (depth + 1 >= VK_MAX_CHAIN_DEPTH)
        add(P, "CHAIN_DEPTH", UINT64_MAX, "differencing chain is deeper than %d layers", VK_MAX_CHAIN_DEPTH);
    else check_parent_file(P, ppath, opts, check_parents, seen_dev, seen_ino, depth);
    free(ppath);
out:
    vk_layer_close(&L);
}

static void check_file(probs *P, const char *path, const vk_open_opts *opts, int check_parents,
                       dev_t *seen_dev, ino_t *seen_ino, int depth)
{
    struct stat st;
    uint8_t raw[512], copy[512];
    vk_footer f;
    vk_dynhdr h;
    vk_err e;
    int fd, fsize = 512, hdr_ok = 0;
    uint64_t file_size, foff;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block */
    if (fd < 0) {
        add(P, errno == ENOENT ? "NOT_FOUND" : "OPEN_FAILED", UINT64_MAX, "cannot open %s: %s", path, strerror(errno));
        return;
    }
    if (fstat(fd, &st) < 0 || S_ISDIR(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
        add(P, "OPEN_FAILED", UINT64_MAX, "%s is not a file", path);
        goto out;
    }
    if (S_ISREG(st.st_mode)) file_size = (uint64_t)st.st_size;
    else {
        off_t end = lseek(fd, 0, SEEK_END);
        file_size = end < 0 ? 0 : (uint64_t)end;
    }
    seen_dev[depth] = st.st_dev;
    seen_ino[depth] = st.st_ino;
    if (vkx_is_vhdx(fd, file_size)) {
        close(fd);
        check_vhdx(P, path, opts, check_parents, seen_dev, seen_ino, depth);
        return;
    }
    if (file_size < 511) {
        add(P, "FILE_TOO_SMALL", 0, "file is %llu bytes, smaller than a VHD footer", (unsigned long long)file_size);
        goto out;
    }
    memset(raw, 0, sizeof raw);
    foff = file_size >= 512 ? file_size - 512 : 0;
    if (file_size >= 512 && vk_pread_full(fd, raw, 512, foff, &e) == 0 && memcmp(raw, "conectix", 8) == 0) {
        fsize = 512;
    } else {
        memset(raw, 0, sizeof raw);
        foff = file_size - 511;
        if (vk_pread_full(fd, raw, 511, foff, &e) == 0 && memcmp(raw, "conectix", 8) == 0) {
            fsize = 511;
        } else {
            foff = file_size >= 512 ? file_size - 512 : 0;
            add(P, "FOOTER_COOKIE", foff, "no 'conectix' footer at the end of the file");
            /* fall back on the copy at offset 0, as the opener does */
            if (file_size >= 1536 && vk_pread_full(fd, copy, 512, 0, &e) == 0 && memcmp(copy, "conectix", 8) == 0) {
                memcpy(raw, copy, 512);
                foff = 0;
            } else {
                goto out;
            }
        }
    }
    vk_footer_decode(raw, &f);
    vk_footer_validate(raw, &f, foff, file_size, finding, P, NULL);
    if (f.disk_type == VK_DISK_FIXED) {
        if (file_size - (uint64_t)fsize < f.current_size)
            add(P, "FILE_TRUNCATED", foff, "fixed disk of %llu bytes but the file holds %llu bytes of data",
                (unsigned long long)f.current_size, (unsigned long long)(file_size - (uint64_t)fsize));
        else if (file_size - (uint64_t)fsize > f.current_size)
            add(P, "FILE_SIZE", foff, "fixed disk file has %llu bytes more than its size",
                (unsigned long long)(file_size - (uint64_t)fsize - f.current_size));
        goto out;
    }
    if (f.disk_type != VK_DISK_DYNAMIC && f.disk_type != VK_DISK_DIFF) goto out;
    int applied;
    uint64_t vsize = vk_size_by_rule(&f, opts->size_rule, &applied);
    check_dynamic(P, fd, file_size, &f, fsize, raw, vsize, &h, &hdr_ok);
    if (!hdr_ok) goto out;
    check_bat_and_locators(P, fd, file_size, &f, fsize, &h, vsize);
    check_locators(P, fd, file_size, &f, f.data_offset, &h);

    if (f.disk_type == VK_DISK_DIFF && check_parents) {
        vk_layer child, parent;
        int reason;
        memset(&child, 0, sizeof child);
        child.fd = fd;
        child.file_size = file_size;
        child.hdr = h;
        child.path = realpath(path, NULL);
        if (!child.path) { add(P, "INTERNAL", UINT64_MAX, "cannot resolve %s", path); goto out; }
        const char *explicit_path = depth < opts->n_parents ? opts->parents[depth] : NULL;
        int rc = vk_parent_open(&child, explicit_path, opts->no_locators, opts->allowed_root, &reason, opts->size_rule,
                                &parent, &e);
        free(child.path);
        if (rc) {
            add(P, parent_code(reason), UINT64_MAX, "%s", e.msg);
            vk_layer_close(&parent);
            goto out;
        }
        if (parent.footer.timestamp != h.parent_timestamp)
            add(P, "PARENT_TIMESTAMP", f.data_offset + 56,
                "parent timestamp %u differs from the one recorded in the child (%u)", parent.footer.timestamp,
                h.parent_timestamp);
        char *ppath = strdup(parent.path);
        for (int i = 0; i <= depth; i++)
            if (seen_dev[i] == parent.dev && seen_ino[i] == parent.ino) {
                add(P, "CHAIN_CYCLE", UINT64_MAX, "parent chain has a cycle: %s appears twice", parent.path);
                vk_layer_close(&parent);
                free(ppath);
                goto out;
            }
        vk_layer_close(&parent);
        if (!ppath) { add(P, "INTERNAL", UINT64_MAX, "out of memory"); goto out; }
        if (depth + 1 >= VK_MAX_CHAIN_DEPTH) {
            add(P, "CHAIN_DEPTH", UINT64_MAX, "differencing chain is deeper than %d layers", VK_MAX_CHAIN_DEPTH);
            free(ppath);
            goto out;
        }
        close(fd);
        fd = -1;
        check_parent_file(P, ppath, opts, check_parents, seen_dev, seen_ino, depth);
        free(ppath);
    }
out:
    if (fd >= 0) close(fd);
}

int vk_check(const char *path, const vk_open_opts *opts, int check_parents, vk_problem *out, size_t cap,
             size_t *n_found, vk_err *err)
{
    vk_open_opts none;
    dev_t devs[VK_MAX_CHAIN_DEPTH];
    ino_t inos[VK_MAX_CHAIN_DEPTH];
    probs P = {out, cap, 0, 0};

    vk_err_clear(err);
    *n_found = 0;
    if (!path || (!out && cap)) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid arguments");
    if (!opts) { memset(&none, 0, sizeof none); opts = &none; }
    if (opts->n_parents < 0 || (opts->n_parents > 0 && !opts->parents))
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid parents list");
    check_file(&P, path, opts, check_parents, devs, inos, 0);
    *n_found = P.n;
    return VK_OK;
}
