/* vkx_region.c -- the VHDX region table.
 *
 * Spec 2.2.3: two 64 KiB copies at 192 KiB and 256 KiB, signature "regi",
 * CRC-32C over the 64 KiB, EntryCount <= 2047, entries of 32 bytes (GUID,
 * FileOffset u64, Length u32, Required bit).  Regions start on a whole MiB
 * at or after 1 MiB, have a length of whole MiB, lie inside the file and do
 * not overlap each other or the log.  The BAT and metadata regions must be
 * present once; an unknown region marked required cannot be opened. */
#include <stdlib.h>
#include <string.h>

#include "vkx.h"

static int parse_table(vkx_disk *D, const uint8_t *b, uint64_t at, vkx_region *out, uint32_t *n,
                       vk_err *err)
{
    if (memcmp(b, "regi", 4) != 0)
        return vkx_fail(D, "VHDX_REGION_SIGNATURE", err, VK_E_FORMAT, at, "region table has no 'regi' signature");
    uint32_t c = vk_crc32c(b, VKX_REGION_SIZE, 4);
    if (c != vkx_le32(b + 4))
        return vkx_fail(D, "VHDX_REGION_CHECKSUM", err, VK_E_CHECKSUM, at + 4,
                        "region table checksum mismatch (stored 0x%08x, computed 0x%08x)", vkx_le32(b + 4), c);
    uint32_t count = vkx_le32(b + 8);
    if (count > VKX_REGION_MAX_ENTRIES)
        return vkx_fail(D, "VHDX_REGION_COUNT", err, VK_E_FORMAT, at + 8,
                        "region table has %u entries (at most %u allowed)", count, VKX_REGION_MAX_ENTRIES);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = b + 16 + 32ull * i;
        memcpy(out[i].guid, e, 16);
        out[i].offset = vkx_le64(e + 16);
        out[i].length = vkx_le32(e + 24);
        out[i].required = (int)(vkx_le32(e + 28) & 1u);
    }
    *n = count;
    return VK_OK;
}

int vkx_read_regions(vkx_disk *D, vk_err *err)
{
    uint8_t *b = malloc(2 * (size_t)VKX_REGION_SIZE);
    vkx_region *alt = malloc(sizeof D->regions);
    const uint64_t at[2] = { VKX_REGION1_OFFSET, VKX_REGION2_OFFSET };
    uint32_t n[2] = { 0, 0 };
    int ok[2] = { 0, 0 }, rc = VK_OK;
    vk_err first;

    if (!b || !alt) { rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory"); goto out; }
    vk_err_clear(&first);
    for (int i = 0; i < 2; i++) {
        vk_err tmp;
        uint8_t *t = b + (size_t)i * VKX_REGION_SIZE;
        if ((rc = vkx_pread(D, t, VKX_REGION_SIZE, at[i], err))) goto out;
        char keep[32];
        memcpy(keep, D->fail_code, sizeof keep);
        if (parse_table(D, t, at[i], i == 0 ? D->regions : alt, &n[i], &tmp) == 0) {
            ok[i] = 1;
            memcpy(D->fail_code, keep, sizeof keep);
        } else {
            if (i == 0) first = tmp;
            vkx_note(D, D->fail_code, at[i], "region table %d: %s", i + 1, tmp.msg);
            if (i == 1) memcpy(D->fail_code, keep, sizeof keep);
        }
    }
    if (!ok[0] && !ok[1]) { *err = first; rc = first.code; goto out; }
    if (!ok[0]) { memcpy(D->regions, alt, sizeof D->regions); n[0] = n[1]; D->region_source = 1; }
    else if (ok[1] && (n[0] != n[1] || memcmp(b + 8, b + VKX_REGION_SIZE + 8, 8 + 32ull * n[0]) != 0))
        vkx_note(D, "VHDX_REGION_MISMATCH", VKX_REGION2_OFFSET, "the two region tables differ");
    D->fail_code[0] = '\0';
    D->n_regions = n[0];

    const vkx_header *h = &D->hdr[D->current];
    int have_bat = 0, have_meta = 0;
    for (uint32_t i = 0; i < D->n_regions; i++) {
        const vkx_region *r = &D->regions[i];
        uint64_t eoff = VKX_REGION1_OFFSET + 16 + 32ull * i, end;
        if (r->offset % VKX_MIB || r->offset < VKX_MIB || r->length % VKX_MIB || r->length == 0) {
            rc = vkx_fail(D, "VHDX_REGION_PLACEMENT", err, VK_E_FORMAT, eoff,
                          "region %u (offset %llu, length %u) is not on whole MiB after the first MiB", i,
                          (unsigned long long)r->offset, r->length);
            goto out;
        }
        if (vk_add_ovf(r->offset, r->length, &end) || end > D->file_size) {
            rc = vkx_fail(D, "VHDX_REGION_RANGE", err, VK_E_RANGE, eoff,
                          "region %u (offset %llu, length %u) extends past the end of the file", i,
                          (unsigned long long)r->offset, r->length);
            goto out;
        }
        for (uint32_t k = 0; k < i; k++) {
            const vkx_region *q = &D->regions[k];
            if (r->offset < q->offset + q->length && q->offset < end) {
                rc = vkx_fail(D, "VHDX_REGION_OVERLAP", err, VK_E_FORMAT, eoff, "regions %u and %u overlap", k, i);
                goto out;
            }
        }
        if (h->log_length && r->offset < vkx_log_end(D) && h->log_offset < end) {
            rc = vkx_fail(D, "VHDX_REGION_OVERLAP", err, VK_E_FORMAT, eoff, "region %u overlaps the log", i);
            goto out;
        }
        int *seen = memcmp(r->guid, VKX_GUID_BAT, 16) == 0 ? &have_bat
                  : memcmp(r->guid, VKX_GUID_METADATA, 16) == 0 ? &have_meta : NULL;
        if (!seen) {
            if (r->required) {
                char g[39];
                vkx_guid_text(r->guid, g);
                rc = vkx_fail(D, "VHDX_REGION_UNKNOWN", err, VK_E_UNSUPPORTED, eoff,
                              "region %u has the unknown required type %s", i, g);
                goto out;
            }
            continue;
        }
        if ((*seen)++) {
            rc = vkx_fail(D, "VHDX_REGION_DUPLICATE", err, VK_E_FORMAT, eoff, "region %u appears twice", i);
            goto out;
        }
        if (seen == &have_bat) { D->bat_offset = r->offset; D->bat_length = r->length; }
        else { D->meta_offset = r->offset; D->meta_length = r->length; }
    }
    if (!have_bat || !have_meta)
        rc = vkx_fail(D, "VHDX_REGION_MISSING", err, VK_E_FORMAT, VKX_REGION1_OFFSET,
                      "region table lacks the %s region", have_bat ? "metadata" : "BAT");
out:
    free(b);
    free(alt);
    return rc;
}
