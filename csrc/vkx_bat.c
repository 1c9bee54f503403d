/* vkx_bat.c -- the VHDX block allocation table and sector bitmaps.
 *
 * Spec 2.5: 64-bit entries, State in bits 0-2, FileOffsetMB in bits 20-63.
 * ChunkRatio = 2^23 * LogicalSectorSize / BlockSize payload entries are
 * followed by one sector bitmap entry, so payload block i is entry
 * i + i / ChunkRatio.  Payload states: NOT_PRESENT 0, UNDEFINED 1, ZERO 2,
 * UNMAPPED 3, FULLY_PRESENT 6, PARTIALLY_PRESENT 7 (differencing only);
 * sector bitmap states NOT_PRESENT 0, PRESENT 6.  A sector bitmap block is
 * 1 MiB: one bit per logical sector of its chunk, least significant bit
 * first; a set bit means the sector is in this file, a clear one that it
 * comes from the parent.
 *
 * Reads: FULLY_PRESENT from the file; NOT_PRESENT from the parent in a
 * differencing disk, else zeros; UNDEFINED, ZERO and UNMAPPED as zeros (what
 * qemu reads, and what the spec allows for content it calls undefined). */
#include <stdlib.h>
#include <string.h>

#include "vkx.h"

/* 64 TiB in 1 MiB blocks plus their sector bitmap entries. */
#define VKX_MAX_BAT_ENTRIES ((1ull << 26) + (1ull << 16))

static uint64_t payload_index(const vkx_disk *D, uint64_t i) { return i + i / D->chunk_ratio; }

int vkx_read_bat(vkx_disk *D, vk_err *err)
{
    uint64_t bs = D->block_size, cr;
    int rc;

    cr = D->chunk_ratio = ((1ull << 23) * D->logical_sector) / bs;
    D->data_blocks = (D->virtual_size + bs - 1) / bs;
    D->sb_blocks = (D->data_blocks + cr - 1) / cr;
    D->n_bat = D->has_parent ? D->sb_blocks * (cr + 1) : D->data_blocks + (D->data_blocks - 1) / cr;
    if (D->n_bat > VKX_MAX_BAT_ENTRIES || D->n_bat * 8 > D->bat_length)
        return vkx_fail(D, "VHDX_BAT_SIZE", err, VK_E_FORMAT, D->bat_offset,
                        "the BAT region (%llu bytes) cannot hold the %llu entries the disk needs",
                        (unsigned long long)D->bat_length, (unsigned long long)D->n_bat);
    if (!(D->bat = malloc((size_t)D->n_bat * 8))) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory for the BAT");
    if ((rc = vkx_pread(D, D->bat, (size_t)D->n_bat * 8, D->bat_offset, err))) return rc;
    for (uint64_t j = 0; j < D->n_bat; j++) {
        uint64_t e = vkx_le64((const uint8_t *)&D->bat[j]), eo = D->bat_offset + 8 * j, end;
        D->bat[j] = e;
        uint32_t st = (uint32_t)(e & 7);
        uint64_t at = (e >> 20) * VKX_MIB;
        if (j % (cr + 1) == cr) {          /* a sector bitmap entry */
            if (st != VKX_SB_NOT_PRESENT && st != VKX_SB_PRESENT)
                return vkx_fail(D, "VHDX_BAT_STATE", err, VK_E_FORMAT, eo, "sector bitmap entry %llu has state %u",
                                (unsigned long long)j, st);
            if (st == VKX_SB_PRESENT) {
                if (at < VKX_MIB || vk_add_ovf(at, VKX_MIB, &end) || end > D->eff_size)
                    return vkx_fail(D, "VHDX_BAT_RANGE", err, VK_E_RANGE, eo,
                                    "sector bitmap entry %llu points to offset %llu, outside the file",
                                    (unsigned long long)j, (unsigned long long)at);
                D->sb_present++;
            }
            continue;
        }
        uint64_t i = j - j / (cr + 1);     /* payload block number */
        int ok = st == VKX_PAYLOAD_NOT_PRESENT || st == VKX_PAYLOAD_UNDEFINED || st == VKX_PAYLOAD_ZERO ||
                 st == VKX_PAYLOAD_UNMAPPED || st == VKX_PAYLOAD_FULLY_PRESENT ||
                 (st == VKX_PAYLOAD_PARTIALLY && D->has_parent);
        if (!ok)
            return vkx_fail(D, "VHDX_BAT_STATE", err, VK_E_FORMAT, eo,
                            "payload block %llu has state %u, not valid in a %s disk", (unsigned long long)i, st,
                            D->has_parent ? "differencing" : "non-differencing");
        if (i >= D->data_blocks) continue;   /* padding of the last chunk */
        D->state_count[st]++;
        if (st == VKX_PAYLOAD_FULLY_PRESENT || st == VKX_PAYLOAD_PARTIALLY) {
            uint64_t need = D->virtual_size - i * bs < bs ? D->virtual_size - i * bs : bs;
            if (at < VKX_MIB || vk_add_ovf(at, need, &end) || end > D->eff_size)
                return vkx_fail(D, "VHDX_BAT_RANGE", err, VK_E_RANGE, eo,
                                "payload block %llu points to offset %llu, outside the file", (unsigned long long)i,
                                (unsigned long long)at);
        }
    }
    if (!(D->sb = malloc(VKX_MIB))) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
    D->sb_index = UINT64_MAX;
    return VK_OK;
}

typedef struct { uint64_t start, end, idx; const char *what; } span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

void vkx_check_bat(vkx_disk *D)
{
    uint64_t n = 0, cr = D->chunk_ratio;
    const vkx_header *h = &D->hdr[D->current];
    span *s = malloc((size_t)(D->n_bat + 4) * sizeof *s);
    if (!s) return;
    s[n++] = (span){ 0, VKX_MIB, 0, "the headers and region tables" };
    s[n++] = (span){ D->meta_offset, D->meta_offset + D->meta_length, 0, "the metadata region" };
    s[n++] = (span){ D->bat_offset, D->bat_offset + D->bat_length, 0, "the BAT region" };
    if (h->log_length) s[n++] = (span){ h->log_offset, vkx_log_end(D), 0, "the log" };
    for (uint64_t j = 0; j < D->n_bat; j++) {
        uint64_t e = D->bat[j], st = e & 7, at = (e >> 20) * VKX_MIB;
        int sbe = j % (cr + 1) == cr;
        uint64_t i = j - j / (cr + 1);
        if (sbe ? st != VKX_SB_PRESENT : (st != VKX_PAYLOAD_FULLY_PRESENT && st != VKX_PAYLOAD_PARTIALLY)) continue;
        if (!sbe && i >= D->data_blocks) continue;
        s[n++] = (span){ at, at + (sbe ? VKX_MIB : D->block_size), j, sbe ? "sector bitmap" : "payload block" };
    }
    qsort(s, (size_t)n, sizeof *s, cmp_span);
    for (uint64_t k = 1; k < n; k++) {
        if (s[k].start < s[k - 1].end) {
            vkx_note(D, "VHDX_BAT_OVERLAP", D->bat_offset + 8 * (s[k].what[0] == 't' ? s[k - 1].idx : s[k].idx),
                     "%s (BAT entry %llu) at offset %llu overlaps %s%s", s[k].what, (unsigned long long)s[k].idx,
                     (unsigned long long)s[k].start, s[k - 1].what, s[k - 1].what[0] == 't' ? "" : " of another entry");
        }
    }
    free(s);
    (void)payload_index;
}

static int sb_load(vkx_disk *D, uint64_t chunk, vk_err *err)
{
    if (D->sb_index == chunk) return VK_OK;
    uint64_t e = D->bat[chunk * (D->chunk_ratio + 1) + D->chunk_ratio];
    if ((e & 7) != VKX_SB_PRESENT)
        return vkx_fail(D, "VHDX_BAT_STATE", err, VK_E_FORMAT, D->bat_offset,
                        "a partially present block in chunk %llu has no sector bitmap", (unsigned long long)chunk);
    D->sb_index = UINT64_MAX;
    int rc = vkx_pread(D, D->sb, VKX_MIB, (e >> 20) * VKX_MIB, err);
    if (!rc) D->sb_index = chunk;
    return rc;
}

int vkx_classify(vkx_disk *D, uint64_t off, uint64_t maxlen, uint64_t *len, int *state, uint64_t *foff, vk_err *err)
{
    uint64_t bs = D->block_size, i = off / bs, in = off % bs;
    if (maxlen > bs - in) maxlen = bs - in;
    uint64_t e = D->bat[payload_index(D, i)], at = (e >> 20) * VKX_MIB;
    *len = maxlen;
    *foff = 0;
    switch (e & 7) {
    case VKX_PAYLOAD_FULLY_PRESENT:
        *state = 1; *foff = at + in;
        return VK_OK;
    case VKX_PAYLOAD_NOT_PRESENT:
        *state = D->has_parent ? -1 : 0;
        return VK_OK;
    case VKX_PAYLOAD_PARTIALLY: break;
    default:
        *state = 0;
        return VK_OK;
    }
    int rc = sb_load(D, i / D->chunk_ratio, err);
    if (rc) return rc;
    uint64_t ls = D->logical_sector;
    uint64_t s = (i % D->chunk_ratio) * (bs / ls) + in / ls;
    uint64_t s_end = (i % D->chunk_ratio) * (bs / ls) + (in + maxlen + ls - 1) / ls;
    int bit = (D->sb[s >> 3] >> (s & 7)) & 1;
    uint64_t k = s + 1;
    while (k < s_end) {
        if ((k & 7) == 0 && k + 8 <= s_end && D->sb[k >> 3] == (bit ? 0xFF : 0x00)) { k += 8; continue; }
        if (((D->sb[k >> 3] >> (k & 7)) & 1) != bit) break;
        k++;
    }
    uint64_t run_end = (k - (i % D->chunk_ratio) * (bs / ls)) * ls;   /* offset in the block */
    *len = (run_end > in + maxlen ? in + maxlen : run_end) - in;
    *state = bit ? 1 : -1;
    if (bit) *foff = at + in;
    return VK_OK;
}
