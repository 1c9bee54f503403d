/* vkx_header.c -- the VHDX file type identifier and the two headers.
 *
 * Spec 2.2.1-2.2.2: "vhdxfile" at offset 0 with the creator (UTF-16LE, 256
 * units); headers at 64 KiB and 128 KiB, 4 KiB each, signature "head",
 * CRC-32C over the 4 KiB with the checksum field zero.  The current header
 * is the valid one with the larger SequenceNumber; one valid header is
 * enough to open the file (the other may have been torn by a crash). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vkx.h"

#define G(d1, d2, d3, a, b, c, d, e, f, g, h) \
    { (uint8_t)(d1), (uint8_t)((d1) >> 8), (uint8_t)((d1) >> 16), (uint8_t)((d1) >> 24), \
      (uint8_t)(d2), (uint8_t)((d2) >> 8), (uint8_t)(d3), (uint8_t)((d3) >> 8), a, b, c, d, e, f, g, h }
const uint8_t VKX_GUID_BAT[16] = G(0x2DC27766u, 0xF623, 0x4200, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08);
const uint8_t VKX_GUID_METADATA[16] = G(0x8B7CA206u, 0x4790, 0x4B9A, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E);
const uint8_t VKX_GUID_FILE_PARAMS[16] = G(0xCAA16737u, 0xFA36, 0x4D43, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B);
const uint8_t VKX_GUID_VIRTUAL_SIZE[16] = G(0x2FA54224u, 0xCD1B, 0x4876, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8);
const uint8_t VKX_GUID_PAGE83[16] = G(0xBECA12ABu, 0xB2E6, 0x4523, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46);
const uint8_t VKX_GUID_LOGICAL_SECTOR[16] = G(0x8141BF1Du, 0xA96F, 0x4709, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F);
const uint8_t VKX_GUID_PHYSICAL_SECTOR[16] = G(0xCDA348C7u, 0x445D, 0x4471, 0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56);
const uint8_t VKX_GUID_PARENT_LOCATOR[16] = G(0xA8D35F2Du, 0xB30B, 0x454D, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C);
const uint8_t VKX_GUID_LOCATOR_TYPE_VHDX[16] = G(0xB04AEFB7u, 0xD19E, 0x4A81, 0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13);
#undef G

void vkx_guid_text(const uint8_t g[16], char out[39])
{
    snprintf(out, 39, "{%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X}", vkx_le32(g), vkx_le16(g + 4),
             vkx_le16(g + 6), g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
}

int vkx_guid_is_zero(const uint8_t g[16])
{
    for (int i = 0; i < 16; i++)
        if (g[i]) return 0;
    return 1;
}

int vkx_fail(vkx_disk *D, const char *pcode, vk_err *err, int code, uint64_t off, const char *fmt, ...)
{
    char msg[480];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(D->fail_code, sizeof D->fail_code, "%s", pcode);
    return vk_fail(err, code, off, "%s", msg);
}

void vkx_note(vkx_disk *D, const char *code, uint64_t off, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    if (!D->note) return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    D->note(D->note_ctx, code, off, msg);
}

int vkx_is_vhdx(int fd, uint64_t file_size)
{
    uint8_t sig[8];
    vk_err tmp;
    if (file_size < 8 || vk_pread_full(fd, sig, 8, 0, &tmp)) return 0;
    return memcmp(sig, "vhdxfile", 8) == 0;
}

static void header_decode(const uint8_t *b, vkx_header *h)
{
    memset(h, 0, sizeof *h);
    h->checksum = vkx_le32(b + 4);
    h->seq = vkx_le64(b + 8);
    memcpy(h->file_write_guid, b + 16, 16);
    memcpy(h->data_write_guid, b + 32, 16);
    memcpy(h->log_guid, b + 48, 16);
    h->log_version = vkx_le16(b + 64);
    h->version = vkx_le16(b + 66);
    h->log_length = vkx_le32(b + 68);
    h->log_offset = vkx_le64(b + 72);
}

int vkx_read_headers(vkx_disk *D, vk_err *err)
{
    uint8_t id[1024], b[VKX_HEADER_SIZE];
    const uint64_t at[2] = { VKX_HEADER1_OFFSET, VKX_HEADER2_OFFSET };
    int rc;

    if (D->file_size < VKX_MIB)
        return vkx_fail(D, "VHDX_TRUNCATED", err, VK_E_RANGE, 0,
                        "VHDX file of %llu bytes is shorter than its 1 MiB of headers and region tables",
                        (unsigned long long)D->file_size);
    if ((rc = vk_pread_full(D->fd, id, sizeof id, 0, err))) return rc;
    if (memcmp(id, "vhdxfile", 8) != 0)
        return vkx_fail(D, "VHDX_SIGNATURE", err, VK_E_FORMAT, 0, "not a VHDX: no 'vhdxfile' identifier at offset 0");
    if (vk_utf16_to_utf8(id + 8, 512, 0, D->creator, sizeof D->creator) < 0) {
        D->creator[0] = '\0';
        vkx_note(D, "VHDX_CREATOR", 8, "the creator in the file identifier is not valid UTF-16");
    }
    for (int i = 0; i < 2; i++) {
        vkx_header *h = &D->hdr[i];
        if ((rc = vk_pread_full(D->fd, b, sizeof b, at[i], err))) return rc;
        header_decode(b, h);
        if (memcmp(b, "head", 4) != 0) {
            vkx_note(D, "VHDX_HEADER_SIGNATURE", at[i], "header %d has no 'head' signature", i + 1);
            continue;
        }
        uint32_t c = vk_crc32c(b, sizeof b, 4);
        if (c != h->checksum) {
            vkx_note(D, "VHDX_HEADER_CHECKSUM", at[i] + 4,
                     "header %d checksum mismatch (stored 0x%08x, computed 0x%08x)", i + 1, h->checksum, c);
            continue;
        }
        h->valid = 1;
    }
    if (!D->hdr[0].valid && !D->hdr[1].valid)
        return vkx_fail(D, "VHDX_HEADER_CHECKSUM", err, VK_E_CHECKSUM, VKX_HEADER1_OFFSET,
                        "neither VHDX header has a valid signature and CRC-32C checksum");
    if (D->hdr[0].valid && D->hdr[1].valid && D->hdr[0].seq == D->hdr[1].seq &&
        memcmp(&D->hdr[0], &D->hdr[1], sizeof D->hdr[0]) != 0)
        vkx_note(D, "VHDX_HEADER_SEQUENCE", VKX_HEADER2_OFFSET + 8,
                 "both headers have sequence number %llu but differ", (unsigned long long)D->hdr[0].seq);
    D->current = (!D->hdr[0].valid || (D->hdr[1].valid && D->hdr[1].seq > D->hdr[0].seq)) ? 1 : 0;
    const vkx_header *h = &D->hdr[D->current];
    uint64_t ho = at[D->current];
    if (h->version != 1)
        return vkx_fail(D, "VHDX_VERSION", err, VK_E_UNSUPPORTED, ho + 66, "unsupported VHDX version %u", h->version);
    if (h->log_version != 0)
        return vkx_fail(D, "VHDX_LOG_VERSION", err, VK_E_UNSUPPORTED, ho + 64, "unsupported VHDX log version %u",
                        h->log_version);
    if (h->log_offset % VKX_MIB || h->log_offset < VKX_MIB || h->log_length % VKX_MIB)
        return vkx_fail(D, "VHDX_LOG_PLACEMENT", err, VK_E_FORMAT, ho + 68,
                        "log at offset %llu, %u bytes, is not placed on whole MiB after the first MiB",
                        (unsigned long long)h->log_offset, h->log_length);
    return VK_OK;
}
