/* vk_format.c -- the VHD structures as the specification describes them:
 * decode/encode of the footer and the dynamic disk header, the checksum,
 * CHS geometry, and the one validator of each structure (vk_format.h),
 * plus the entry points that let Python read a footer or header. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
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

/* ---- decode/encode -----------------------------------------------------------
 * Each structure is one table of its fields (offset on disk, the struct
 * member); integers are big-endian of the member's width, byte arrays are
 * copied.  Decoding and encoding walk the same table, so a field's place is
 * written down once. */
enum { F_INT, F_RAW, F_INT_IN };   /* F_INT_IN: reserved, decoded but written as 0 */
typedef struct { uint16_t at, len, member; uint8_t kind; } vk_field;

#define F(type, kind, at, m) { at, (uint16_t)sizeof(((type *)0)->m), (uint16_t)offsetof(type, m), kind }

static const vk_field footer_fields[] = {
    F(vk_footer, F_RAW, 0, cookie),          F(vk_footer, F_INT, 8, features),
    F(vk_footer, F_INT, 12, version),        F(vk_footer, F_INT, 16, data_offset),
    F(vk_footer, F_INT, 24, timestamp),      F(vk_footer, F_RAW, 28, creator_app),
    F(vk_footer, F_INT, 32, creator_version), F(vk_footer, F_RAW, 36, creator_os),
    F(vk_footer, F_INT, 40, original_size),  F(vk_footer, F_INT, 48, current_size),
    F(vk_footer, F_INT, 56, cylinders),      F(vk_footer, F_INT, 58, heads),
    F(vk_footer, F_INT, 59, sectors),        F(vk_footer, F_INT, 60, disk_type),
    F(vk_footer, F_RAW, 68, uuid),           F(vk_footer, F_INT, 84, saved_state),
};

static const vk_field dynhdr_fields[] = {
    F(vk_dynhdr, F_RAW, 0, cookie),          F(vk_dynhdr, F_INT, 8, data_offset),
    F(vk_dynhdr, F_INT, 16, table_offset),   F(vk_dynhdr, F_INT, 24, version),
    F(vk_dynhdr, F_INT, 28, max_table_entries), F(vk_dynhdr, F_INT, 32, block_size),
    F(vk_dynhdr, F_RAW, 40, parent_uuid),    F(vk_dynhdr, F_INT, 56, parent_timestamp),
    F(vk_dynhdr, F_INT_IN, 60, reserved1),   F(vk_dynhdr, F_RAW, 64, parent_name),
};

/* One of the 8 parent locator entries, at 576 + 24 * i of the header. */
static const vk_field locator_fields[] = {
    F(vk_locator, F_INT, 0, code),           F(vk_locator, F_INT, 4, data_space),
    F(vk_locator, F_INT, 8, data_length),    F(vk_locator, F_INT_IN, 12, reserved),
    F(vk_locator, F_INT, 16, data_offset),
};
#undef F

#define N_FIELDS(t) (sizeof t / sizeof t[0])

static void fields_decode(const vk_field *t, size_t n, const uint8_t *b, void *s)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t *m = (uint8_t *)s + t[i].member;
        const uint8_t *p = b + t[i].at;
        uint64_t v = 0;
        if (t[i].kind == F_RAW) { memcpy(m, p, t[i].len); continue; }
        for (unsigned k = 0; k < t[i].len; k++) v = v << 8 | p[k];
        switch (t[i].len) {
        case 1: *m = (uint8_t)v; break;
        case 2: { uint16_t x = (uint16_t)v; memcpy(m, &x, 2); break; }
        case 4: { uint32_t x = (uint32_t)v; memcpy(m, &x, 4); break; }
        default: memcpy(m, &v, 8); break;
        }
    }
}

static void fields_encode(const vk_field *t, size_t n, const void *s, uint8_t *b)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *m = (const uint8_t *)s + t[i].member;
        uint8_t *p = b + t[i].at;
        uint64_t v;
        if (t[i].kind == F_RAW) { memcpy(p, m, t[i].len); continue; }
        if (t[i].kind == F_INT_IN) continue;
        switch (t[i].len) {
        case 1: v = *m; break;
        case 2: { uint16_t x; memcpy(&x, m, 2); v = x; break; }
        case 4: { uint32_t x; memcpy(&x, m, 4); v = x; break; }
        default: memcpy(&v, m, 8); break;
        }
        for (unsigned k = t[i].len; k-- > 0; v >>= 8) p[k] = (uint8_t)v;
    }
}

void vk_footer_decode(const uint8_t b[512], vk_footer *f)
{
    memset(f, 0, sizeof *f);
    fields_decode(footer_fields, N_FIELDS(footer_fields), b, f);
    f->checksum = vk_be32(b + 64);
    for (size_t i = 85; i < 512; i++)
        if (b[i]) { f->reserved_nonzero = 1; break; }
}

void vk_footer_encode(vk_footer *f, uint8_t b[512])
{
    memset(b, 0, 512);
    fields_encode(footer_fields, N_FIELDS(footer_fields), f, b);
    f->checksum = vk_checksum(b, 512, 64);
    vk_put32(b + 64, f->checksum);
}

void vk_dynhdr_decode(const uint8_t b[1024], vk_dynhdr *h)
{
    memset(h, 0, sizeof *h);
    fields_decode(dynhdr_fields, N_FIELDS(dynhdr_fields), b, h);
    h->checksum = vk_be32(b + 36);
    for (int i = 0; i < 8; i++) fields_decode(locator_fields, N_FIELDS(locator_fields), b + 576 + 24 * i, &h->loc[i]);
}

void vk_dynhdr_encode(vk_dynhdr *h, uint8_t b[1024])
{
    memset(b, 0, 1024);
    fields_encode(dynhdr_fields, N_FIELDS(dynhdr_fields), h, b);
    for (int i = 0; i < 8; i++) fields_encode(locator_fields, N_FIELDS(locator_fields), &h->loc[i], b + 576 + 24 * i);
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

/* ---- validation ----------------------------------------------------------- */
int vk_block_size_ok(uint32_t bs)
{
    return bs >= VK_BLOCK_SIZE_MIN && bs <= VK_BLOCK_SIZE_MAX && !(bs & (bs - 1));
}

int vk_new_block_size_ok(uint32_t bs)
{
    return vk_block_size_ok(bs) && bs >= VK_NEW_BLOCK_MIN && bs <= VK_NEW_BLOCK_MAX;
}

typedef struct {
    vk_finding_fn fn;
    void *ctx;
    vk_err *err;
    int first;          /* the first fatal code, 0 while none */
} findings;

__attribute__((format(printf, 5, 6)))
static void found(findings *F, int code, const char *id, uint64_t off, const char *fmt, ...)
{
    char msg[sizeof ((vk_err *)0)->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (F->fn) F->fn(F->ctx, code, id, off, msg);
    if (code < 0 && !F->first) {
        F->first = code;
        vk_fail(F->err, code, off, "%s", msg);
    }
}

int vk_footer_validate(const uint8_t b[512], const vk_footer *f, uint64_t foff, uint64_t file_size,
                       vk_finding_fn fn, void *ctx, vk_err *err)
{
    findings F = { fn, ctx, err, 0 };
    if (memcmp(f->cookie, "conectix", 8) != 0) {
        found(&F, VK_E_FORMAT, "FOOTER_COOKIE", foff, "no 'conectix' footer cookie");
        return F.first;
    }
    uint32_t sum = vk_footer_checksum_of(b);
    if (sum != f->checksum)
        found(&F, VK_E_CHECKSUM, "FOOTER_CHECKSUM", foff + 64, "footer checksum 0x%08x, computed 0x%08x",
              f->checksum, sum);
    if (!(f->features & VK_FEATURE_RESERVED))
        found(&F, 0, "FOOTER_FEATURES", foff + 8, "footer features 0x%08x lack the always-set bit 0x2", f->features);
    if (f->features & ~(VK_FEATURE_RESERVED | VK_FEATURE_TEMPORARY))
        found(&F, 0, "FOOTER_FEATURES", foff + 8, "footer features 0x%08x have unknown bits", f->features);
    if ((f->version >> 16) != 1)
        found(&F, VK_E_UNSUPPORTED, "FOOTER_VERSION", foff + 12, "unsupported VHD format version 0x%08x",
              f->version);
    else if (f->version != VK_VERSION_1_0)
        found(&F, 0, "FOOTER_VERSION", foff + 12, "footer file format version 0x%08x, expected 0x00010000",
              f->version);
    if (f->timestamp > vk_time_now() + 24u * 3600u)
        found(&F, 0, "FOOTER_TIMESTAMP", foff + 24, "footer timestamp %u lies in the future", f->timestamp);
    if (f->saved_state != 0 && f->saved_state != 1)
        found(&F, 0, "FOOTER_SAVED_STATE", foff + 84, "saved state byte is %u (must be 0 or 1)", f->saved_state);
    else if (f->saved_state)
        found(&F, 0, "FOOTER_SAVED_STATE", foff + 84, "the disk is in a saved state (a suspended VM owns it)");
    if (f->current_size % VK_SECTOR)
        found(&F, 0, "FOOTER_SIZE", foff + 48, "current size %llu is not a multiple of 512",
              (unsigned long long)f->current_size);
    uint64_t chs = vk_chs_size(f->cylinders, f->heads, f->sectors);
    if (f->cylinders == 0 || f->heads == 0 || f->sectors == 0)
        found(&F, 0, "FOOTER_GEOMETRY", foff + 56, "geometry %u/%u/%u has a zero field", f->cylinders, f->heads,
              f->sectors);
    /* 65535/16/255 is the marker qemu (force_size) and others use for
     * "size is not CHS-derived": not a problem. */
    else if (chs > f->current_size && !(f->cylinders == 65535 && f->heads == 16 && f->sectors == 255))
        found(&F, 0, "FOOTER_GEOMETRY", foff + 56, "geometry %u/%u/%u (%llu bytes) exceeds the current size %llu",
              f->cylinders, f->heads, f->sectors, (unsigned long long)chs, (unsigned long long)f->current_size);
    switch (f->disk_type) {
    case VK_DISK_FIXED:
        if (f->data_offset != UINT64_MAX)
            found(&F, 0, "FOOTER_DATA_OFFSET", foff + 16, "fixed disk with data offset %llu (must be all ones)",
                  (unsigned long long)f->data_offset);
        break;
    case VK_DISK_DYNAMIC:
    case VK_DISK_DIFF:
        if (f->data_offset == UINT64_MAX || f->data_offset % VK_SECTOR || f->data_offset > file_size ||
            file_size - f->data_offset < VK_DYNHDR_SIZE)
            found(&F, 0, "FOOTER_DATA_OFFSET", foff + 16, "dynamic header offset %llu is invalid or outside the file",
                  (unsigned long long)f->data_offset);
        if (f->current_size > VK_MAX_VIRTUAL_SIZE)
            found(&F, 0, "FOOTER_SIZE", foff + 48, "virtual size %llu exceeds %u GiB",
                  (unsigned long long)f->current_size, (unsigned)VK_MAX_VIRTUAL_GIB);
        break;
    default:
        found(&F, VK_E_FORMAT, "FOOTER_DISK_TYPE", foff + 60, "unknown disk type %u", f->disk_type);
    }
    return F.first;
}

int vk_dynhdr_validate(const uint8_t b[1024], vk_dynhdr *h, uint64_t ho, vk_finding_fn fn, void *ctx, vk_err *err)
{
    findings F = { fn, ctx, err, 0 };
    if (memcmp(b, "cxsparse", 8) != 0) {
        found(&F, VK_E_FORMAT, "HEADER_COOKIE", ho, "no 'cxsparse' dynamic header at offset %llu",
              (unsigned long long)ho);
        return F.first;
    }
    vk_dynhdr_decode(b, h);
    uint32_t sum = vk_checksum(b, VK_DYNHDR_SIZE, 36);
    if (sum != h->checksum)
        found(&F, VK_E_CHECKSUM, "HEADER_CHECKSUM", ho + 36,
              "dynamic header checksum 0x%08x, computed 0x%08x", h->checksum, sum);
    if ((h->version >> 16) != 1)
        found(&F, VK_E_UNSUPPORTED, "HEADER_VERSION", ho + 24, "unsupported dynamic header version 0x%08x",
              h->version);
    else if (h->version != VK_VERSION_1_0)
        found(&F, 0, "HEADER_VERSION", ho + 24, "dynamic header version 0x%08x, expected 0x00010000", h->version);
    if (h->data_offset != UINT64_MAX)
        found(&F, 0, "HEADER_DATA_OFFSET", ho + 8, "dynamic header data offset is not all ones");
    if (h->table_offset % VK_SECTOR)
        found(&F, 0, "HEADER_TABLE_OFFSET", ho + 16, "BAT offset %llu is not sector-aligned",
              (unsigned long long)h->table_offset);
    if (!vk_block_size_ok(h->block_size))
        found(&F, VK_E_FORMAT, "HEADER_BLOCK_SIZE", ho + 32,
              "block size %u is not a power of two from %u bytes to %u MiB", h->block_size,
              (unsigned)VK_BLOCK_SIZE_MIN, (unsigned)(VK_BLOCK_SIZE_MAX >> 20));
    return F.first;
}

typedef struct { vk_err *err; int first; } intact_ctx;

static void intact_note(void *ctx, int code, const char *id, uint64_t off, const char *msg)
{
    intact_ctx *c = ctx;
    if ((code == VK_E_FORMAT || code == VK_E_CHECKSUM) && !c->first) {
        c->first = code;
        vk_fail(c->err, code, off, "%s", msg);
    }
}

int vk_footer_intact(const uint8_t b[512], vk_footer *f, vk_err *err)
{
    intact_ctx c = { err, 0 };
    vk_footer_decode(b, f);
    vk_footer_validate(b, f, 0, UINT64_MAX, intact_note, &c, NULL);
    return c.first;
}

/* ---- the entry points Python reads structures through ---------------------- */
int vk_footer_peek(const uint8_t *buf, size_t len, vk_footer_fields *out, vk_err *err)
{
    vk_footer f;
    vk_err_clear(err);
    memset(out, 0, sizeof *out);
    if (len != VK_FOOTER_SIZE)
        return vk_fail(err, VK_E_FORMAT, 0, "a VHD footer is %u bytes, not %zu", VK_FOOTER_SIZE, len);
    int rc = vk_footer_intact(buf, &f, err);
    if (rc) return rc;
    out->disk_type = f.disk_type;
    out->data_offset = f.data_offset;
    out->current_size = f.current_size;
    out->timestamp = f.timestamp;
    memcpy(out->uuid, f.uuid, 16);
    return VK_OK;
}

int vk_footer_renew(const uint8_t *buf, size_t len, const uint8_t uuid[16], uint32_t timestamp, uint8_t *out,
                    vk_err *err)
{
    vk_footer_fields ff;
    int rc = vk_footer_peek(buf, len, &ff, err);
    if (rc) return rc;
    /* the bytes as they are (reserved ones too), three fields replaced */
    memcpy(out, buf, VK_FOOTER_SIZE);
    vk_put32(out + 24, timestamp);
    memcpy(out + 68, uuid, 16);
    vk_put32(out + 64, vk_footer_checksum_of(out));
    return VK_OK;
}

int vk_dynhdr_peek(const uint8_t *buf, size_t len, vk_dynhdr_fields *out, vk_err *err)
{
    vk_dynhdr h;
    vk_err_clear(err);
    memset(out, 0, sizeof *out);
    if (len != VK_DYNHDR_SIZE)
        return vk_fail(err, VK_E_FORMAT, 0, "a dynamic header is %u bytes, not %zu", VK_DYNHDR_SIZE, len);
    int rc = vk_dynhdr_validate(buf, &h, 0, NULL, NULL, err);
    if (rc) return rc;
    out->table_offset = h.table_offset;
    out->max_table_entries = h.max_table_entries;
    out->block_size = h.block_size;
    out->bitmap_bytes = vk_bitmap_bytes(h.block_size);
    for (int i = 0; i < 8; i++)
        if (h.loc[i].code) out->n_locators++;
    return VK_OK;
}

size_t vk_bat_blocks(const uint8_t *buf, size_t n_entries, uint64_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < n_entries; i++) {
        uint32_t e = vk_be32(buf + 4 * i);
        if (e != VK_BAT_UNUSED) out[n++] = (uint64_t)e * VK_SECTOR;
    }
    return n;
}

/* ---- BAT entries ------------------------------------------------------------ */
void vk_bat_layout_of(vk_bat_layout *g, const vk_dynhdr *h, uint64_t header_offset, uint64_t file_size,
                      uint64_t footer_at, uint64_t virtual_size)
{
    /* no valid block size (vk_dynhdr_validate's finding): no entries */
    uint64_t need = vk_block_size_ok(h->block_size) ? vk_bat_entries_for(virtual_size, h->block_size) : 0;
    g->file_size = file_size;
    g->footer_at = footer_at;
    g->header_offset = header_offset;
    g->table_offset = h->table_offset;
    g->block_size = h->block_size;
    g->bitmap_bytes = vk_bitmap_bytes(h->block_size);
    g->disk_entries = h->max_table_entries < need ? h->max_table_entries : need;
    /* the declared table, or (when that runs past the end of the file) the
     * part the disk uses: what readers and writers touch */
    uint64_t n = h->table_offset < file_size && (uint64_t)h->max_table_entries * 4 <= file_size - h->table_offset
                     ? h->max_table_entries : g->disk_entries;
    g->table_entries = n;
    g->table_bytes = (n * 4 + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
}

static int overlaps(uint64_t a, uint64_t a_end, uint64_t b, uint64_t b_len)
{
    return a < b + b_len && b < a_end;
}

int vk_bat_table_validate(const vk_dynhdr *h, const vk_bat_layout *g, uint64_t virtual_size, vk_finding_fn fn,
                          void *ctx, vk_err *err)
{
    findings F = { fn, ctx, err, 0 };
    uint64_t to = h->table_offset, end, declared;
    if (to >= g->file_size) {
        found(&F, VK_E_RANGE, "HEADER_TABLE_OFFSET", g->header_offset + 16, "BAT offset %llu is past the end of the file",
              (unsigned long long)to);
        return F.first;
    }
    if (vk_add_ovf(to, g->disk_entries * 4, &end) || end > g->file_size) {
        found(&F, VK_E_RANGE, "BAT_PAST_EOF", to,
              "block allocation table (%llu entries at offset %llu) extends past the end of the file",
              (unsigned long long)g->disk_entries, (unsigned long long)to);
        return F.first;
    }
    if (g->disk_entries > VK_MAX_BAT_ENTRIES) {
        found(&F, VK_E_NOMEM, "BAT_TOO_LARGE", to, "block allocation table of %llu entries exceeds the limit of %u",
              (unsigned long long)g->disk_entries, VK_MAX_BAT_ENTRIES);
        return F.first;
    }
    if (vk_block_size_ok(h->block_size) && h->max_table_entries < vk_bat_entries_for(virtual_size, h->block_size))
        found(&F, 0, "HEADER_MAX_ENTRIES", g->header_offset + 28,
              "%u BAT entries cannot cover %llu bytes in %u-byte blocks", h->max_table_entries,
              (unsigned long long)virtual_size, h->block_size);
    declared = (uint64_t)h->max_table_entries * 4;
    if (declared > g->file_size - to)
        found(&F, 0, "BAT_PAST_EOF", to, "the BAT (%u entries) extends past the end of the file", h->max_table_entries);
    return F.first;
}

int vk_bat_entry_class(const vk_bat_layout *g, uint64_t i, uint32_t v)
{
    if (v == VK_BAT_UNUSED) return VK_BATE_UNUSED;
    if (i >= g->disk_entries) return VK_BATE_BEYOND_DISK;
    uint64_t start = (uint64_t)v * VK_SECTOR;   /* < 2^41: no overflow below */
    uint64_t end = start + g->bitmap_bytes + g->block_size;
    if (start + g->bitmap_bytes > g->file_size) return VK_BATE_PAST_EOF;
    if (end > g->file_size) return VK_BATE_RUNS_PAST_EOF;
    if (overlaps(start, end, 0, VK_FOOTER_SIZE) || overlaps(start, end, g->header_offset, VK_DYNHDR_SIZE) ||
        overlaps(start, end, g->table_offset, g->table_bytes) ||
        overlaps(start, end, g->footer_at, g->file_size - g->footer_at))
        return VK_BATE_OVERLAP;
    return VK_BATE_OK;
}

int vk_bat_entry_validate(const vk_bat_layout *g, uint64_t i, uint32_t v, vk_finding_fn fn, void *ctx, vk_err *err)
{
    findings F = { fn, ctx, err, 0 };
    uint64_t eo = g->table_offset + 4 * i, start = (uint64_t)v * VK_SECTOR;
    unsigned long long n = (unsigned long long)i;
    switch (vk_bat_entry_class(g, i, v)) {
    case VK_BATE_BEYOND_DISK:
        found(&F, 0, "BAT_BEYOND_DISK", eo, "BAT entry %llu (sector %u) is allocated beyond the disk size", n, v);
        break;
    case VK_BATE_PAST_EOF:
        found(&F, VK_E_RANGE, "BAT_PAST_EOF", eo, "BAT entry %llu points to sector %u, past the end of the file",
              n, v);
        break;
    case VK_BATE_RUNS_PAST_EOF:
        found(&F, VK_E_RANGE, "BAT_PAST_EOF", eo,
              "block %llu at %llu runs past the end of the file (%llu bytes): the image is truncated", n,
              (unsigned long long)start, (unsigned long long)g->file_size);
        break;
    case VK_BATE_OVERLAP:
        found(&F, 0, "BAT_OVERLAP", start, "block %llu [%llu, %llu) overlaps the footer, the header or the BAT", n,
              (unsigned long long)start, (unsigned long long)(start + g->bitmap_bytes + g->block_size));
        break;
    default:
        break;
    }
    return F.first;
}

/* ---- parent locators --------------------------------------------------------- */
int vk_locator_validate(const vk_locator *l, int i, uint64_t eo, uint64_t file_size, vk_finding_fn fn, void *ctx,
                        vk_err *err)
{
    findings F = { fn, ctx, NULL, 0 };
    if (l->code != VK_LOC_W2RU && l->code != VK_LOC_W2KU && l->code != VK_LOC_MACX && l->code != VK_LOC_WI2R &&
        l->code != VK_LOC_WI2K) {
        found(&F, 0, "LOCATOR_CODE", eo, "locator %d has unknown code 0x%08x", i, l->code);
        return vk_fail(err, VK_E_UNSUPPORTED, eo, "locator code 0x%08x is not supported", l->code);
    }
    if (l->data_offset % VK_SECTOR)
        found(&F, 0, "LOCATOR_OFFSET", eo + 16, "locator %d data offset %llu is not sector-aligned", i,
              (unsigned long long)l->data_offset);
    if (l->data_offset >= file_size || l->data_length > file_size - l->data_offset) {
        found(&F, 0, "LOCATOR_RANGE", eo + 16, "locator %d data [%llu, +%u) is past the end of the file", i,
              (unsigned long long)l->data_offset, l->data_length);
        return vk_fail(err, VK_E_RANGE, l->data_offset, "locator data at offset %llu is past the end of the file",
                       (unsigned long long)l->data_offset);
    }
    if (l->data_length > vk_locator_space(l))
        found(&F, 0, "LOCATOR_SPACE", eo + 4, "locator %d data length %u exceeds its data space %u", i,
              l->data_length, l->data_space);
    return VK_OK;
}

uint64_t vk_dyn_used_end(const vk_dynhdr *h, uint64_t ho, const uint32_t *bat, uint64_t n, uint64_t limit)
{
    uint32_t bm = vk_bitmap_bytes(h->block_size);
    uint64_t end = ho + VK_DYNHDR_SIZE, e;
    uint64_t table = ((uint64_t)h->max_table_entries * 4 + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
    if (!vk_add_ovf(h->table_offset, table, &e) && e > end && e <= limit) end = e;
    for (uint64_t i = 0; i < n; i++) {
        if (bat[i] == VK_BAT_UNUSED) continue;
        e = (uint64_t)bat[i] * VK_SECTOR + bm + h->block_size;
        if (e > end) end = e;
    }
    for (int i = 0; i < 8; i++) {
        const vk_locator *l = &h->loc[i];
        if (!l->code || !l->data_length) continue;
        uint64_t space = vk_locator_space(l);
        if (space < l->data_length) space = l->data_length;
        e = l->data_offset + (space + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
        if (e > l->data_offset && e > end && e <= limit) end = e;
    }
    return (end + VK_SECTOR - 1) / VK_SECTOR * VK_SECTOR;
}
