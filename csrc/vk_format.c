/* vk_format.c -- encode/decode of the footer and the dynamic disk header,
 * the checksum, and CHS geometry, as the VHD specification describes them.
 * Decoding never validates: the checker and the opener decide what to do
 * with the decoded fields. */
#include <string.h>

#include "vk_internal.h"

uint32_t vk_checksum(const uint8_t *buf, size_t len, size_t cksum_off)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++) {
        if (i >= cksum_off && i < cksum_off + 4) continue;
        sum += buf[i];
    }
    return ~sum;
}

uint32_t vk_footer_checksum_of(const uint8_t buf[512]) { return vk_checksum(buf, 512, 64); }

void vk_footer_decode(const uint8_t b[512], vk_footer *f)
{
    memset(f, 0, sizeof *f);
    memcpy(f->cookie, b, 8);
    f->features = vk_be32(b + 8);
    f->version = vk_be32(b + 12);
    f->data_offset = vk_be64(b + 16);
    f->timestamp = vk_be32(b + 24);
    memcpy(f->creator_app, b + 28, 4);
    f->creator_version = vk_be32(b + 32);
    memcpy(f->creator_os, b + 36, 4);
    f->original_size = vk_be64(b + 40);
    f->current_size = vk_be64(b + 48);
    f->cylinders = vk_be16(b + 56);
    f->heads = b[58];
    f->sectors = b[59];
    f->disk_type = vk_be32(b + 60);
    f->checksum = vk_be32(b + 64);
    memcpy(f->uuid, b + 68, 16);
    f->saved_state = b[84];
    for (size_t i = 85; i < 512; i++)
        if (b[i]) { f->reserved_nonzero = 1; break; }
}

void vk_footer_encode(vk_footer *f, uint8_t b[512])
{
    memset(b, 0, 512);
    memcpy(b, f->cookie, 8);
    vk_put32(b + 8, f->features);
    vk_put32(b + 12, f->version);
    vk_put64(b + 16, f->data_offset);
    vk_put32(b + 24, f->timestamp);
    memcpy(b + 28, f->creator_app, 4);
    vk_put32(b + 32, f->creator_version);
    memcpy(b + 36, f->creator_os, 4);
    vk_put64(b + 40, f->original_size);
    vk_put64(b + 48, f->current_size);
    vk_put16(b + 56, f->cylinders);
    b[58] = f->heads;
    b[59] = f->sectors;
    vk_put32(b + 60, f->disk_type);
    memcpy(b + 68, f->uuid, 16);
    b[84] = f->saved_state;
    f->checksum = vk_checksum(b, 512, 64);
    vk_put32(b + 64, f->checksum);
}

void vk_dynhdr_decode(const uint8_t b[1024], vk_dynhdr *h)
{
    memset(h, 0, sizeof *h);
    memcpy(h->cookie, b, 8);
    h->data_offset = vk_be64(b + 8);
    h->table_offset = vk_be64(b + 16);
    h->version = vk_be32(b + 24);
    h->max_table_entries = vk_be32(b + 28);
    h->block_size = vk_be32(b + 32);
    h->checksum = vk_be32(b + 36);
    memcpy(h->parent_uuid, b + 40, 16);
    h->parent_timestamp = vk_be32(b + 56);
    h->reserved1 = vk_be32(b + 60);
    memcpy(h->parent_name, b + 64, 512);
    for (int i = 0; i < 8; i++) {
        const uint8_t *e = b + 576 + 24 * i;
        h->loc[i].code = vk_be32(e);
        h->loc[i].data_space = vk_be32(e + 4);
        h->loc[i].data_length = vk_be32(e + 8);
        h->loc[i].reserved = vk_be32(e + 12);
        h->loc[i].data_offset = vk_be64(e + 16);
    }
}

void vk_dynhdr_encode(vk_dynhdr *h, uint8_t b[1024])
{
    memset(b, 0, 1024);
    memcpy(b, h->cookie, 8);
    vk_put64(b + 8, h->data_offset);
    vk_put64(b + 16, h->table_offset);
    vk_put32(b + 24, h->version);
    vk_put32(b + 28, h->max_table_entries);
    vk_put32(b + 32, h->block_size);
    memcpy(b + 40, h->parent_uuid, 16);
    vk_put32(b + 56, h->parent_timestamp);
    memcpy(b + 64, h->parent_name, 512);
    for (int i = 0; i < 8; i++) {
        uint8_t *e = b + 576 + 24 * i;
        vk_put32(e, h->loc[i].code);
        vk_put32(e + 4, h->loc[i].data_space);
        vk_put32(e + 8, h->loc[i].data_length);
        vk_put64(e + 16, h->loc[i].data_offset);
    }
    h->checksum = vk_checksum(b, 1024, 36);
    vk_put32(b + 36, h->checksum);
}

/* The specification's "CHS Calculation" appendix, verbatim in structure. */
void vk_chs_from_sectors(uint64_t total, uint16_t *cyl, uint8_t *heads, uint8_t *spt)
{
    uint64_t s, h, cth;
    if (total > VK_MAX_CHS_SECTORS) total = VK_MAX_CHS_SECTORS;
    if (total >= 65535ull * 16 * 63) {
        s = 255; h = 16; cth = total / s;
    } else {
        s = 17; cth = total / s;
        h = (cth + 1023) / 1024;
        if (h < 4) h = 4;
        if (cth >= h * 1024 || h > 16) { s = 31; h = 16; cth = total / s; }
        if (cth >= h * 1024) { s = 63; h = 16; cth = total / s; }
    }
    *cyl = (uint16_t)(cth / h);
    *heads = (uint8_t)h;
    *spt = (uint8_t)s;
}
