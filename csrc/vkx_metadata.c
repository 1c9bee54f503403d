/* vkx_metadata.c -- the VHDX metadata region: table and known items.
 *
 * Spec 2.6: a 64 KiB table at the start of the region (signature
 * "metadata", EntryCount <= 2047, entries of 32 bytes: ItemId GUID, Offset
 * u32 from the start of the region (>= 64 KiB), Length u32 (<= 1 MiB),
 * flags IsUser/IsVirtualDisk/IsRequired).  Items: File Parameters
 * (BlockSize 1..256 MiB, a power of two; LeaveBlocksAllocated; HasParent),
 * Virtual Disk Size (a multiple of the logical sector size, <= 64 TiB),
 * Page 83 Data (a GUID), Logical and Physical Sector Size (512 or 4096),
 * and for differencing disks the Parent Locator (type GUID, key/value
 * pairs in UTF-16LE).  An unknown item marked required cannot be opened. */
#include <stdlib.h>
#include <string.h>

#include "vkx.h"

#define LOC_KEYS_MAX 256u

static int item_need(vkx_disk *D, uint32_t len, uint32_t want, uint64_t at, const char *what, vk_err *err)
{
    if (len < want)
        return vkx_fail(D, "VHDX_METADATA_ITEM", err, VK_E_FORMAT, at, "metadata item %s is %u bytes, needs %u", what,
                        len, want);
    return VK_OK;
}

static int parse_locator(vkx_disk *D, const uint8_t *p, uint32_t len, uint64_t at, vk_err *err)
{
    if (len < 20)
        return vkx_fail(D, "VHDX_PARENT_LOCATOR", err, VK_E_FORMAT, at, "parent locator of %u bytes is too short", len);
    if (memcmp(p, VKX_GUID_LOCATOR_TYPE_VHDX, 16) != 0)
        return vkx_fail(D, "VHDX_PARENT_LOCATOR", err, VK_E_UNSUPPORTED, at, "parent locator type is not the VHDX one");
    uint32_t n = vkx_le16(p + 18);
    if (n > LOC_KEYS_MAX || 20ull + 12ull * n > len)
        return vkx_fail(D, "VHDX_PARENT_LOCATOR", err, VK_E_FORMAT, at + 18,
                        "parent locator has %u entries that do not fit its %u bytes", n, len);
    D->n_locator_entries = n;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = p + 20 + 12ull * i;
        uint64_t ko = vkx_le32(e), vo = vkx_le32(e + 4), kl = vkx_le16(e + 8), vl = vkx_le16(e + 10);
        char key[64], val[1024];
        if (ko + kl > len || vo + vl > len || kl == 0 || vl == 0 || kl % 2 || vl % 2 ||
            vk_utf16_to_utf8(p + ko, kl, 0, key, sizeof key) < 0 ||
            vk_utf16_to_utf8(p + vo, vl, 0, val, sizeof val) < 0)
            return vkx_fail(D, "VHDX_PARENT_LOCATOR", err, VK_E_FORMAT, at + 20 + 12ull * i,
                            "parent locator entry %u is outside the item or not valid UTF-16", i);
        char *dst = NULL;
        size_t cap = 0;
        if (!strcmp(key, "parent_linkage")) { dst = D->parent_linkage; cap = sizeof D->parent_linkage; }
        else if (!strcmp(key, "parent_linkage2")) { dst = D->parent_linkage2; cap = sizeof D->parent_linkage2; }
        else if (!strcmp(key, "relative_path")) { dst = D->relative_path; cap = sizeof D->relative_path; }
        else if (!strcmp(key, "volume_path")) { dst = D->volume_path; cap = sizeof D->volume_path; }
        else if (!strcmp(key, "absolute_win32_path")) { dst = D->absolute_win32_path; cap = sizeof D->absolute_win32_path; }
        if (!dst) continue;
        if (dst[0] || strlen(val) >= cap)
            return vkx_fail(D, "VHDX_PARENT_LOCATOR", err, VK_E_FORMAT, at + 20 + 12ull * i,
                            "parent locator key %s is repeated or its value too long", key);
        memcpy(dst, val, strlen(val) + 1);
    }
    if (!D->parent_linkage[0])
        return vkx_fail(D, "VHDX_PARENT_LOCATOR", err, VK_E_FORMAT, at, "parent locator has no parent_linkage");
    return VK_OK;
}

int vkx_read_metadata(vkx_disk *D, vk_err *err)
{
    uint8_t *t = malloc(VKX_METADATA_TABLE_SIZE), *item = malloc(VKX_METADATA_ITEM_MAX);
    int rc = VK_OK, seen_fp = 0, seen_vs = 0, seen_p83 = 0, seen_ls = 0, seen_ps = 0, seen_pl = 0;
    uint64_t mo = D->meta_offset;

    if (!t || !item) { rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory"); goto out; }
    if (D->meta_length < VKX_METADATA_TABLE_SIZE) {
        rc = vkx_fail(D, "VHDX_METADATA_RANGE", err, VK_E_FORMAT, mo, "metadata region is smaller than its table");
        goto out;
    }
    if ((rc = vkx_pread(D, t, VKX_METADATA_TABLE_SIZE, mo, err))) goto out;
    if (memcmp(t, "metadata", 8) != 0) {
        rc = vkx_fail(D, "VHDX_METADATA_SIGNATURE", err, VK_E_FORMAT, mo, "metadata table has no 'metadata' signature");
        goto out;
    }
    D->n_meta = vkx_le16(t + 10);
    if (D->n_meta > VKX_METADATA_MAX_ENTRIES) {
        rc = vkx_fail(D, "VHDX_METADATA_COUNT", err, VK_E_FORMAT, mo + 10, "metadata table has %u entries (at most %u)",
                      D->n_meta, VKX_METADATA_MAX_ENTRIES);
        goto out;
    }
    for (uint32_t i = 0; i < D->n_meta; i++) {
        const uint8_t *e = t + 32 + 32ull * i;
        uint64_t eo = mo + 32 + 32ull * i;
        uint32_t off = vkx_le32(e + 16), len = vkx_le32(e + 20), flags = vkx_le32(e + 24);
        int required = (flags >> 2) & 1;
        if (len > VKX_METADATA_ITEM_MAX || (len && (off < VKX_METADATA_TABLE_SIZE || (uint64_t)off + len > D->meta_length))) {
            rc = vkx_fail(D, "VHDX_METADATA_RANGE", err, VK_E_FORMAT, eo,
                          "metadata item %u (offset %u, length %u) lies outside the metadata region", i, off, len);
            goto out;
        }
        for (uint32_t k = 0; k < i; k++) {
            const uint8_t *q = t + 32 + 32ull * k;
            uint32_t qo = vkx_le32(q + 16), ql = vkx_le32(q + 20);
            if (memcmp(q, e, 16) == 0 && ((vkx_le32(q + 24) ^ flags) & 1u) == 0) {
                rc = vkx_fail(D, "VHDX_METADATA_DUPLICATE", err, VK_E_FORMAT, eo, "metadata item %u appears twice", i);
                goto out;
            }
            if (len && ql && off < (uint64_t)qo + ql && qo < (uint64_t)off + len) {
                rc = vkx_fail(D, "VHDX_METADATA_OVERLAP", err, VK_E_FORMAT, eo, "metadata items %u and %u overlap", k, i);
                goto out;
            }
        }
        if (len && (rc = vkx_pread(D, item, len, mo + off, err))) goto out;
        uint64_t io = mo + off;
        if (memcmp(e, VKX_GUID_FILE_PARAMS, 16) == 0) {
            if ((rc = item_need(D, len, 8, io, "File Parameters", err))) goto out;
            D->block_size = vkx_le32(item);
            D->leave_allocated = (int)(vkx_le32(item + 4) & 1u);
            D->has_parent = (int)((vkx_le32(item + 4) >> 1) & 1u);
            seen_fp = 1;
        } else if (memcmp(e, VKX_GUID_VIRTUAL_SIZE, 16) == 0) {
            if ((rc = item_need(D, len, 8, io, "Virtual Disk Size", err))) goto out;
            D->virtual_size = vkx_le64(item);
            seen_vs = 1;
        } else if (memcmp(e, VKX_GUID_PAGE83, 16) == 0) {
            if ((rc = item_need(D, len, 16, io, "Page 83 Data", err))) goto out;
            memcpy(D->page83, item, 16);
            seen_p83 = 1;
        } else if (memcmp(e, VKX_GUID_LOGICAL_SECTOR, 16) == 0) {
            if ((rc = item_need(D, len, 4, io, "Logical Sector Size", err))) goto out;
            D->logical_sector = vkx_le32(item);
            seen_ls = 1;
        } else if (memcmp(e, VKX_GUID_PHYSICAL_SECTOR, 16) == 0) {
            if ((rc = item_need(D, len, 4, io, "Physical Sector Size", err))) goto out;
            D->physical_sector = vkx_le32(item);
            seen_ps = 1;
        } else if (memcmp(e, VKX_GUID_PARENT_LOCATOR, 16) == 0) {
            if ((rc = parse_locator(D, item, len, io, err))) goto out;
            seen_pl = 1;
        } else if (required) {
            char g[39];
            vkx_guid_text(e, g);
            rc = vkx_fail(D, "VHDX_METADATA_UNKNOWN", err, VK_E_UNSUPPORTED, eo,
                          "metadata item %s is required but unknown", g);
            goto out;
        }
    }
    if (!seen_fp || !seen_vs || !seen_ls || !seen_ps || !seen_p83) {
        rc = vkx_fail(D, "VHDX_METADATA_MISSING", err, VK_E_FORMAT, mo, "metadata lacks the %s item",
                      !seen_fp ? "File Parameters" : !seen_vs ? "Virtual Disk Size" : !seen_ls ? "Logical Sector Size"
                      : !seen_ps ? "Physical Sector Size" : "Page 83 Data");
        goto out;
    }
    uint32_t bs = D->block_size;
    if (bs < VKX_MIN_BLOCK || bs > VKX_MAX_BLOCK || (bs & (bs - 1))) {
        rc = vkx_fail(D, "VHDX_BLOCK_SIZE", err, VK_E_FORMAT, mo,
                      "block size %u is not a power of two from 1 MiB to 256 MiB", bs);
        goto out;
    }
    if ((D->logical_sector != 512 && D->logical_sector != 4096) ||
        (D->physical_sector != 512 && D->physical_sector != 4096)) {
        rc = vkx_fail(D, "VHDX_SECTOR_SIZE", err, VK_E_FORMAT, mo, "sector sizes %u/%u are not 512 or 4096",
                      D->logical_sector, D->physical_sector);
        goto out;
    }
    if (D->virtual_size == 0 || D->virtual_size > VKX_MAX_VIRTUAL_SIZE || D->virtual_size % D->logical_sector) {
        rc = vkx_fail(D, "VHDX_VIRTUAL_SIZE", err, VK_E_FORMAT, mo,
                      "virtual size %llu is not a non-zero multiple of the %u-byte logical sector up to 64 TiB",
                      (unsigned long long)D->virtual_size, D->logical_sector);
        goto out;
    }
    if (D->has_parent != seen_pl)
        rc = vkx_fail(D, "VHDX_PARENT_LOCATOR", err, VK_E_FORMAT, mo,
                      D->has_parent ? "HasParent is set but there is no parent locator"
                                    : "a parent locator is present but HasParent is not set");
out:
    free(t);
    free(item);
    return rc;
}
