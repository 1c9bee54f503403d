/* vkx_image.c -- a VHDX as one layer of the generic reader: open (headers,
 * log replay in memory, region table, metadata, BAT), the facts info shows,
 * parent resolution from the parent locator, and repair (the log replay
 * written into the file).
 *
 * Every offset and length read from the file is bounded by the file size
 * (or the size the replayed log gives it) before it is used, and nothing is
 * allocated by a count not so bounded. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vkx.h"

void vkx_free(vkx_disk *D)
{
    if (!D) return;
    for (uint32_t i = 0; i < D->n_ops; i++) free(D->ops[i].data);
    free(D->ops);
    free(D->bat);
    free(D->sb);
    free(D);
}

static int vkx_open(vkx_disk *D, vk_err *err)
{
    int rc;
    if ((rc = vkx_read_headers(D, err))) return rc;
    if ((rc = vkx_log_load(D, err))) return rc;
    if ((rc = vkx_read_regions(D, err))) return rc;
    if ((rc = vkx_read_metadata(D, err))) return rc;
    return vkx_read_bat(D, err);
}

int vkx_layer_open(vk_layer *L, vkx_note_fn note, void *note_ctx, vk_err *err)
{
    vkx_disk *D = calloc(1, sizeof *D);
    if (!D) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
    D->fd = L->fd;
    D->file_size = L->file_size;
    D->note = note;
    D->note_ctx = note_ctx;
    L->vx = D;
    int rc = vkx_open(D, err);
    if (rc) {
        if (note) note(note_ctx, D->fail_code[0] ? D->fail_code : "VHDX_INVALID", err->offset, err->msg);
        return rc;
    }
    L->virtual_size = D->virtual_size;
    L->size_rule = VK_SIZE_CURRENT;
    L->footer.disk_type = D->has_parent ? VK_DISK_DIFF : D->leave_allocated ? VK_DISK_FIXED : VK_DISK_DYNAMIC;
    L->block_size = D->block_size;
    L->bm_block = VK_BAT_UNUSED;
    L->bat_used = (uint32_t)(D->state_count[VKX_PAYLOAD_FULLY_PRESENT] + D->state_count[VKX_PAYLOAD_PARTIALLY]);
    return VK_OK;
}

int vkx_parent_candidate(const vk_layer *child, int pass, int i, const char *child_dir, char *out, size_t cap)
{
    const vkx_disk *D = child->vx;
    const char *text = pass == 1 ? (i == 0 ? D->relative_path : NULL)
                     : pass == 2 ? (i == 0 ? D->absolute_win32_path : i == 1 ? D->volume_path : NULL) : NULL;
    if (!text || !*text) return -1;
    /* the VHD locators' path rules: backslashes, no drive letters */
    int kind = vk_locator_candidate(pass == 1 ? VK_LOC_W2RU : VK_LOC_W2KU, text, child_dir, out, cap);
    return kind == pass ? 0 : -1;
}

int vkx_parent_matches(const vk_layer *child, const vk_layer *parent, int *reason, vk_err *err)
{
    *reason = VK_PARENT_INVALID;
    if (!child->vx && parent->vx)
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX, "%s is a VHDX, but the VHD %s cannot have a VHDX parent",
                       parent->path, child->path);
    if (child->vx && !parent->vx)
        return vk_fail(err, VK_E_CHAIN, UINT64_MAX,
                       "%s is a VHD, but the VHDX %s needs a VHDX parent (a VHD parent under a VHDX child is refused)",
                       parent->path, child->path);
    const vkx_disk *C = child->vx, *P = parent->vx;
    char g[39];
    vkx_guid_text(P->hdr[P->current].data_write_guid, g);
    if (strcasecmp(g, C->parent_linkage) == 0 || (C->parent_linkage2[0] && strcasecmp(g, C->parent_linkage2) == 0)) {
        *reason = VK_PARENT_OK;
        return VK_OK;
    }
    *reason = VK_PARENT_UUID;
    return vk_fail(err, VK_E_CHAIN, UINT64_MAX,
                   "parent %s has DataWriteGuid %s but %s expects parent_linkage %s (the parent changed since the child was made)",
                   parent->path, g, child->path, C->parent_linkage);
}

/* ---- the public face: info and repair ------------------------------------ */

int vk_image_vhdx_info(const vk_image *img, int layer, vk_vhdx_info *o, vk_err *err)
{
    int rc = vk_layer_arg(img, layer, err);
    if (rc) return rc;
    const vkx_disk *D = img->layer[layer].vx;
    if (!D) return vk_fail(err, VK_E_INVALID, UINT64_MAX, "layer %d is not a VHDX", layer);
    memset(o, 0, sizeof *o);
    memcpy(o->creator, D->creator, sizeof o->creator);
    o->current_header = D->current + 1;
    for (int i = 0; i < 2; i++) { o->header_valid[i] = D->hdr[i].valid; o->header_seq[i] = D->hdr[i].seq; }
    const vkx_header *h = &D->hdr[D->current];
    memcpy(o->file_write_guid, h->file_write_guid, 16);
    memcpy(o->data_write_guid, h->data_write_guid, 16);
    memcpy(o->log_guid, h->log_guid, 16);
    o->version = h->version;
    o->log_version = h->log_version;
    o->log_offset = h->log_offset;
    o->log_length = h->log_length;
    o->log_replay_pending = D->log_pending;
    o->log_entries = D->log_entries;
    o->log_sequence = D->log_seq_head;
    o->region_table = D->region_source + 1;
    o->n_regions = D->n_regions;
    o->bat_offset = D->bat_offset;
    o->bat_length = D->bat_length;
    o->metadata_offset = D->meta_offset;
    o->metadata_length = D->meta_length;
    o->n_metadata = D->n_meta;
    o->block_size = D->block_size;
    o->logical_sector_size = D->logical_sector;
    o->physical_sector_size = D->physical_sector;
    o->leave_blocks_allocated = D->leave_allocated;
    o->has_parent = D->has_parent;
    o->virtual_size = D->virtual_size;
    memcpy(o->page83, D->page83, 16);
    o->chunk_ratio = D->chunk_ratio;
    o->bat_entries = D->n_bat;
    o->payload_blocks = D->data_blocks;
    memcpy(o->blocks_by_state, D->state_count, sizeof o->blocks_by_state);
    o->sector_bitmaps_present = D->sb_present;
    o->n_locator_entries = D->n_locator_entries;
    memcpy(o->parent_linkage, D->parent_linkage, sizeof o->parent_linkage);
    memcpy(o->parent_linkage2, D->parent_linkage2, sizeof o->parent_linkage2);
    memcpy(o->relative_path, D->relative_path, sizeof o->relative_path);
    memcpy(o->volume_path, D->volume_path, sizeof o->volume_path);
    memcpy(o->absolute_win32_path, D->absolute_win32_path, sizeof o->absolute_win32_path);
    return VK_OK;
}

int vk_probe_vhdx(const char *path, int *is_vhdx, vk_err *err)
{
    struct stat st;
    vk_err_clear(err);
    *is_vhdx = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return vk_fail(err, VK_E_NOTFOUND, UINT64_MAX, "%s: no such file", path);
        return vk_fail_errno(err, e, UINT64_MAX, "cannot open %s", path);
    }
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) *is_vhdx = vkx_is_vhdx(fd, (uint64_t)st.st_size);
    close(fd);
    return VK_OK;
}
