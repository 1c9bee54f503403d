/* vk_chain.c -- differencing chains: snapshot (a new child), the in-place
 * merge of a child into its parent, and reparenting.
 *
 * Layout of a new child (as the writer lays out dynamic disks): footer copy
 * at 0, dynamic header at 512, BAT at 1536 (all entries unused, padded to a
 * sector), then the parent locators' data (each sector-aligned), then the
 * footer.  No blocks: everything reads from the parent until written. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vk_chain.h"
#include "vk_write.h"

#define VK_MERGE_CHUNK (4u * 1024u * 1024u)  /* merge copy buffer */

typedef struct enc_loc {
    uint32_t code;
    size_t   len;
    uint8_t  data[VK_LOCATOR_MAX_BYTES];
} enc_loc;

/* Encode a parent reference: the UTF-16BE name and up to three locators. */
static int encode_ref(const vk_parent_ref *ref, uint8_t name16[512], enc_loc *loc, int *n, vk_err *err)
{
    *n = 0;
    memset(name16, 0, 512);
    if (!ref || !ref->name || !*ref->name)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no parent name given");
    if (vk_utf8_to_utf16(ref->name, strlen(ref->name), 1, name16, 512) < 0)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "parent name is not valid UTF-8 or longer than 256 UTF-16 units");
    const char *text[3] = { ref->w2ru, ref->w2ku, ref->macx };
    const uint32_t code[3] = { VK_LOC_W2RU, VK_LOC_W2KU, VK_LOC_MACX };
    for (int i = 0; i < 3; i++) {
        if (!text[i] || !*text[i]) continue;
        enc_loc *l = &loc[*n];
        size_t tl = strlen(text[i]);
        long got;
        if (code[i] == VK_LOC_MACX) {
            got = tl <= VK_LOCATOR_MAX_BYTES ? (long)tl : -1;
            if (got >= 0) memcpy(l->data, text[i], tl);
        } else {
            got = vk_utf8_to_utf16(text[i], tl, 0, l->data, VK_LOCATOR_MAX_BYTES);
        }
        if (got <= 0)
            return vk_fail(err, VK_E_INVALID, UINT64_MAX, "parent locator text is invalid or longer than %u bytes",
                           VK_LOCATOR_MAX_BYTES);
        l->code = code[i];
        l->len = (size_t)got;
        (*n)++;
    }
    if (*n == 0) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no parent locator given");
    return VK_OK;
}

static uint64_t round_sector(uint64_t v) { return (v + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR; }

/* ---- snapshot ------------------------------------------------------------ */
int vk_snapshot(vk_image *parent, int out_fd, uint64_t size, uint32_t block_size,
                const vk_parent_ref *ref, vk_snapshot_result *res, vk_err *err)
{
    vk_size_plan plan;
    vk_footer f;
    vk_dynhdr h;
    uint8_t fb[VK_FOOTER_SIZE], hb[VK_DYNHDR_SIZE], name16[512];
    enc_loc *loc = NULL;
    uint8_t *bat = NULL;
    int nloc = 0, rc;

    vk_err_clear(err);
    memset(res, 0, sizeof *res);
    if (!parent) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "no parent image");
    const vk_layer *P = &parent->layer[0];
    if (P->vx)
        return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "%s is a VHDX: a VHD snapshot cannot have a VHDX parent "
                       "(convert it to a VHD first)", P->path);
    if (size == 0) size = P->virtual_size;
    if ((rc = vk_size_plan_make(size, VK_RULE_EXACT, &plan, err))) return rc;
    /* Any block size the format allows: a snapshot buffers no block, and its
     * parent's (the default) must stay possible whatever the parent has. */
    uint32_t bs = block_size ? block_size : (P->footer.disk_type == VK_DISK_FIXED ? VK_NEW_BLOCK_DEFAULT : P->block_size);
    if (!vk_block_size_ok(bs))
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "block size %u is not a power of two from %u bytes to %u MiB",
                       bs, (unsigned)VK_BLOCK_SIZE_MIN, (unsigned)(VK_BLOCK_SIZE_MAX >> 20));
    uint64_t entries = (plan.size + bs - 1) / bs;
    if (entries > (VK_MAX_VIRTUAL_SIZE / VK_SECTOR))
        return vk_fail(err, VK_E_RANGE, UINT64_MAX, "too many blocks (%llu) for a block size of %u",
                       (unsigned long long)entries, bs);
    loc = calloc(3, sizeof *loc);
    if (!loc) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
    if ((rc = encode_ref(ref, name16, loc, &nloc, err))) goto out;

    vk_dynhdr_new(&h, (uint32_t)entries, bs);
    memcpy(h.parent_uuid, P->footer.uuid, 16);
    h.parent_timestamp = P->footer.timestamp;
    memcpy(h.parent_name, name16, 512);
    uint64_t bat_bytes = round_sector(entries * 4), pos = VK_BAT_OFFSET + bat_bytes;
    for (int i = 0; i < nloc; i++) {
        uint64_t space = round_sector(loc[i].len);
        h.loc[i].code = loc[i].code;
        h.loc[i].data_space = (uint32_t)space;   /* in bytes, as Microsoft writes it */
        h.loc[i].data_length = (uint32_t)loc[i].len;
        h.loc[i].data_offset = pos;
        pos += space;
    }
    uint8_t uuid[16];
    if ((rc = vk_uuid_generate(uuid, err))) goto out;
    uint32_t now = vk_time_now();
    vk_footer_new(&f, VK_DISK_DIFF, &plan, uuid, now, vk_default_creator(&plan));
    vk_footer_encode(&f, fb);
    vk_dynhdr_encode(&h, hb);

    /* the BAT (all unused), in pieces of at most 1 MiB */
    size_t piece = bat_bytes < (1u << 20) ? (size_t)bat_bytes : (1u << 20);
    bat = malloc(piece);
    if (!bat) { rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory"); goto out; }
    memset(bat, 0xFF, piece);
    for (uint64_t done = 0; done < bat_bytes && !rc; done += piece) {
        size_t n = bat_bytes - done < piece ? (size_t)(bat_bytes - done) : piece;
        rc = vk_pwrite_full(out_fd, bat, n, VK_BAT_OFFSET + done, err);
    }
    for (int i = 0; i < nloc && !rc; i++) {
        uint8_t pad[VK_LOCATOR_MAX_BYTES + VK_SECTOR];
        size_t space = (size_t)round_sector(loc[i].len);
        memset(pad, 0, space);
        memcpy(pad, loc[i].data, loc[i].len);
        rc = vk_pwrite_full(out_fd, pad, space, h.loc[i].data_offset, err);
    }
    if (!rc) rc = vk_pwrite_full(out_fd, hb, sizeof hb, VK_FOOTER_SIZE, err);
    if (!rc) rc = vk_pwrite_full(out_fd, fb, sizeof fb, 0, err);
    if (!rc) rc = vk_pwrite_full(out_fd, fb, sizeof fb, pos, err);
    if (rc) goto out;
    memcpy(res->uuid, uuid, 16);
    res->timestamp = now;
    res->virtual_size = plan.size;
    res->block_size = bs;
    res->max_table_entries = (uint32_t)entries;
    memcpy(res->parent_uuid, P->footer.uuid, 16);
    res->parent_timestamp = P->footer.timestamp;
    res->file_size = pos + VK_FOOTER_SIZE;
out:
    free(bat);
    free(loc);
    return rc;
}

/* ---- the merge journal ------------------------------------------------------
 * A small text file next to the parent, created (and fsynced, with its
 * directory) before the first write to the parent and removed after the
 * parent's final fsync.  While it exists the parent is mid-merge: its own
 * content is a mix, but every sector changed so far is one the child covers,
 * so the child still reads exactly as before.  A rerun finds the journal,
 * checks it names the same child and parent, and redoes the (idempotent)
 * copy. */
static void hex16(const uint8_t u[16], char out[33])
{
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", u[i]);
}

static int fsync_dir_of(const char *path, vk_err *err)
{
    char dir[VK_PATH_MAX];
    vk_dirname(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot open directory %s", dir);
    int rc = fsync(fd) == 0 ? VK_OK : vk_fail_errno(err, errno, UINT64_MAX, "cannot fsync directory %s", dir);
    close(fd);
    return rc;
}

static int journal_begin(const char *jpath, const vk_layer *child, const vk_layer *parent, int *resumed, vk_err *err)
{
    char cu[33], pu[33], text[256];
    hex16(child->footer.uuid, cu);
    hex16(parent->footer.uuid, pu);
    int n = snprintf(text, sizeof text, "vhdkit-coalesce-journal 1\nchild-uuid %s\nparent-uuid %s\n", cu, pu);
    *resumed = 0;
    int fd = open(jpath, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char old[256];
        ssize_t got = read(fd, old, sizeof old - 1);
        close(fd);
        if (got == n && memcmp(old, text, (size_t)n) == 0) { *resumed = 1; return VK_OK; }
        if (got >= 0 && got < (ssize_t)sizeof old) old[got] = '\0';
        return vk_fail(err, VK_E_EXISTS, UINT64_MAX,
                       "%s records another merge into this parent (finish it with that child, or remove the journal "
                       "if that merge is abandoned)", jpath);
    }
    if (errno != ENOENT) return vk_fail_errno(err, errno, UINT64_MAX, "cannot read journal %s", jpath);
    /* Written under a temporary name and renamed, so a journal is never
     * seen half-written (a kill during its creation leaves only the .tmp). */
    char tmp[VK_PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", jpath) >= sizeof tmp)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "journal path too long");
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return vk_fail_errno(err, errno, UINT64_MAX, "cannot create journal %s", tmp);
    int rc = vk_pwrite_full(fd, text, (size_t)n, 0, err);
    if (!rc && fsync(fd) != 0) rc = vk_fail_errno(err, errno, UINT64_MAX, "cannot fsync journal %s", tmp);
    close(fd);
    if (!rc && rename(tmp, jpath) != 0) rc = vk_fail_errno(err, errno, UINT64_MAX, "cannot create journal %s", jpath);
    if (rc) unlink(tmp);
    if (!rc) rc = fsync_dir_of(jpath, err);
    return rc;
}

/* The end (virtual byte offset) of the last sector the child holds itself. */
static int child_data_end(vk_layer *L, uint64_t *end, vk_err *err)
{
    *end = 0;
    uint64_t spb = L->block_size / VK_SECTOR;
    for (uint32_t b = 0; b < L->n_bat; b++) {
        if (L->bat[b] == VK_BAT_UNUSED) continue;
        const uint8_t *bm;
        int rc = vk_layer_bitmap(L, b, &bm, err);
        if (rc) return rc;
        for (uint64_t s = spb; s > 0; s--) {
            if (!vk_bitmap_bit(bm, s - 1)) continue;
            uint64_t e = (uint64_t)b * L->block_size + s * VK_SECTOR;
            if (e > L->virtual_size) e = L->virtual_size;
            if (e > *end) *end = e;
            break;
        }
    }
    return VK_OK;
}

int vk_coalesce_into_parent(vk_image *C, const char *journal_path, vk_merge_result *res, vk_err *err)
{
    vk_image *P = NULL;
    uint8_t *buf = NULL, *bm = NULL;
    int rc;

    vk_err_clear(err);
    memset(res, 0, sizeof *res);
    if (!C || !journal_path) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid arguments");
    vk_layer *L = &C->layer[0];
    if (L->vx) return vk_fail(err, VK_E_UNSUPPORTED, UINT64_MAX, "%s is a VHDX: vhdkit does not write VHDX", L->path);
    if (L->footer.disk_type != VK_DISK_DIFF || C->n < 2)
        return vk_fail(err, VK_E_INVALID, UINT64_MAX, "%s is not a differencing disk: nothing to merge", L->path);

    /* The parent as an image of its own, its chain as the child found it. */
    const char *pp[VK_MAX_CHAIN_DEPTH];
    vk_open_opts o;
    memset(&o, 0, sizeof o);
    for (int i = 2; i < C->n; i++) pp[i - 2] = C->layer[i].path;
    o.parents = pp;
    o.n_parents = C->n - 2;
    o.size_rule = C->layer[1].size_rule;
    if ((rc = vk_image_open(C->layer[1].path, &o, &P, err))) return rc;
    vk_layer *PL = &P->layer[0];
    if (PL->dev != C->layer[1].dev || PL->ino != C->layer[1].ino) {
        rc = vk_fail(err, VK_E_CHAIN, UINT64_MAX, "the parent of %s changed while it was being opened", L->path);
        goto out;
    }

    /* Preflight (nothing written yet): the parent must hold all the child's data. */
    uint64_t dend;
    if ((rc = child_data_end(L, &dend, err))) goto out;
    if (dend > PL->virtual_size) {
        rc = vk_fail(err, VK_E_RANGE, UINT64_MAX,
                     "the parent %s (%llu bytes) is smaller than the data of %s (up to byte %llu); "
                     "enlarge the parent first (vhdkit modify --size)", PL->path,
                     (unsigned long long)PL->virtual_size, L->path, (unsigned long long)dend);
        goto out;
    }
    if (PL->footer.disk_type != VK_DISK_FIXED && (dend + PL->block_size - 1) / PL->block_size > PL->n_bat) {
        rc = vk_fail(err, VK_E_NOSPACE, UINT64_MAX, "the parent's block allocation table cannot hold the child's data");
        goto out;
    }
    buf = malloc(VK_MERGE_CHUNK);
    bm = malloc(L->bitmap_size);
    if (!buf || !bm) { rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory"); goto out; }
    if ((rc = vk_image_make_writable(P, err))) goto out;
    if ((rc = journal_begin(journal_path, L, PL, &res->resumed, err))) goto out;

    uint32_t used0 = PL->bat_used;
    uint64_t spb = L->block_size / VK_SECTOR;
    for (uint32_t b = 0; b < L->n_bat; b++) {
        if (L->bat[b] == VK_BAT_UNUSED) continue;
        const uint8_t *cur;
        if ((rc = vk_layer_bitmap(L, b, &cur, err))) goto out;
        memcpy(bm, cur, L->bitmap_size);
        res->bytes_read += L->bitmap_size;
        uint64_t data = (uint64_t)L->bat[b] * VK_SECTOR + L->bitmap_size;
        uint64_t vbase = (uint64_t)b * L->block_size;
        for (uint64_t s = 0; s < spb;) {
            if (!vk_bitmap_bit(bm, s)) { s++; continue; }
            uint64_t e = s + 1;
            while (e < spb && vk_bitmap_bit(bm, e)) e++;
            uint64_t from = vbase + s * VK_SECTOR, to = vbase + e * VK_SECTOR;
            if (to > L->virtual_size) to = L->virtual_size;
            for (uint64_t p = from; p < to;) {
                size_t n = to - p < VK_MERGE_CHUNK ? (size_t)(to - p) : VK_MERGE_CHUNK;
                if ((rc = vk_pread_full(L->fd, buf, n, data + (p - vbase), err))) goto out;
                res->bytes_read += n;
                if ((rc = vk_image_pwrite(P, buf, n, p, err))) goto out;
                res->bytes_merged += n;
                p += n;
            }
            s = e;
        }
    }
    /* Commit: the parent durable, then the journal gone. */
    if ((rc = vk_image_flush(P, err))) goto out;
    if (unlink(journal_path) != 0 && errno != ENOENT) {
        rc = vk_fail_errno(err, errno, UINT64_MAX, "cannot remove journal %s", journal_path);
        goto out;
    }
    rc = fsync_dir_of(journal_path, err);
    res->blocks_allocated = PL->bat_used - used0;
out:
    if (P) res->writes = P->writes;
    free(buf);
    free(bm);
    vk_image_close(P);
    return rc;
}

/* ---- reparent ------------------------------------------------------------ */
int vk_reparent(const char *child_path, vk_image *NP, const vk_parent_ref *ref, int unsafe, vk_err *err)
{
    vk_image *C = NULL;
    enc_loc *loc = NULL;
    uint8_t name16[512], hb[VK_DYNHDR_SIZE];
    int nloc = 0, rc;
    char a[33], b[33];

    vk_err_clear(err);
    if (!child_path || !NP) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "invalid arguments");
    vk_open_opts o;
    memset(&o, 0, sizeof o);
    o.top_only = 1;
    if ((rc = vk_image_open(child_path, &o, &C, err))) return rc;
    vk_layer *L = &C->layer[0];
    if (L->footer.disk_type != VK_DISK_DIFF || L->vx) {
        rc = vk_fail(err, VK_E_INVALID, UINT64_MAX, "%s is not a differencing disk", L->path);
        goto out;
    }
    for (int i = 0; i < NP->n; i++)
        if (NP->layer[i].dev == L->dev && NP->layer[i].ino == L->ino) {
            rc = vk_fail(err, VK_E_CHAIN, UINT64_MAX, "%s would become its own ancestor (through %s): refusing a cycle",
                         L->path, NP->layer[0].path);
            goto out;
        }
    const vk_layer *N = &NP->layer[0];
    if (!unsafe && memcmp(N->footer.uuid, L->hdr.parent_uuid, 16) != 0) {
        hex16(N->footer.uuid, a);
        hex16(L->hdr.parent_uuid, b);
        rc = vk_fail(err, VK_E_CHAIN, UINT64_MAX,
                     "%s has UUID %s but %s expects its parent to be %s (--unsafe skips this check)", N->path, a,
                     L->path, b);
        goto out;
    }
    loc = calloc(3, sizeof *loc);
    if (!loc) { rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory"); goto out; }
    if ((rc = encode_ref(ref, name16, loc, &nloc, err))) goto out;
    if ((rc = vk_image_make_writable(C, err))) goto out;

    vk_dynhdr h = L->hdr;
    memcpy(h.parent_uuid, N->footer.uuid, 16);
    h.parent_timestamp = N->footer.timestamp;
    memcpy(h.parent_name, name16, 512);
    /* Old locator slots (offset, space) to reuse; the rest are dropped. */
    uint64_t slot_off[8], slot_space[8];
    int nslot = 0;
    uint64_t foot = L->file_size - VK_FOOTER_SIZE;
    for (int i = 0; i < 8; i++) {
        const vk_locator *l = &L->hdr.loc[i];
        if (!l->code || !l->data_length || l->data_offset % VK_SECTOR) continue;
        uint64_t space = vk_locator_space(l) / VK_SECTOR * VK_SECTOR;
        if (space == 0 || l->data_offset < VK_BAT_OFFSET || l->data_offset + space > foot) continue;
        slot_off[nslot] = l->data_offset;
        slot_space[nslot++] = space;
    }
    memset(h.loc, 0, sizeof h.loc);
    for (int i = 0; i < nloc; i++) {
        uint64_t need = round_sector(loc[i].len), at = UINT64_MAX, space = need;
        for (int k = 0; k < nslot; k++)
            if (slot_space[k] >= need) {
                at = slot_off[k]; space = slot_space[k];
                slot_space[k] = 0;
                break;
            }
        if (at == UINT64_MAX) {
            at = C->alloc_next;
            if ((rc = vk_rw_grow(C, at + need, err))) goto out;
            C->alloc_next = at + need;
        }
        uint8_t pad[VK_LOCATOR_MAX_BYTES + VK_SECTOR];
        memset(pad, 0, (size_t)need);
        memcpy(pad, loc[i].data, loc[i].len);
        if ((rc = vk_rw_pwrite(C, pad, (size_t)need, at, err))) goto out;
        h.loc[i].code = loc[i].code;
        h.loc[i].data_space = (uint32_t)space;
        h.loc[i].data_length = (uint32_t)loc[i].len;
        h.loc[i].data_offset = at;
    }
    vk_dynhdr_encode(&h, hb);
    if ((rc = vk_rw_pwrite(C, hb, sizeof hb, L->footer.data_offset, err))) goto out;
    rc = vk_image_flush(C, err);
out:
    free(loc);
    vk_image_close(C);
    return rc;
}
