/* vkx_log.c -- the VHDX log: finding the active sequence and replaying it.
 *
 * Spec 2.3: the log is a circular buffer of entries (signature "loge",
 * CRC-32C over the whole entry with the checksum field zero, a LogGuid equal
 * to the header's).  An entry is a 64-byte header, descriptors of 32 bytes
 * ("zero": ZeroLength bytes at FileOffset become zeros; "desc": one 4 KiB
 * data sector), padded to 4 KiB, then one 4 KiB "data" sector per data
 * descriptor whose content is LeadingBytes (8, from the descriptor) + 4084
 * bytes + TrailingBytes (4, from the descriptor).  The active sequence is the
 * run of valid entries with consecutive sequence numbers and the largest
 * head sequence number whose head's Tail names one of its entries; replay
 * applies its entries from that tail to the head, in order.
 *
 * Hostile input: descriptors writing into the first 192 KiB (identifier and
 * headers) or past the head's LastFileOffset (and the file's end) make the
 * log corrupt; the log replayed in memory is at most VKX_MAX_LOG_REPLAY.
 *
 * Reading never writes: the replay is kept in memory (vkx_op list) and
 * vkx_pread lays it over the file.  vkx_log_apply writes it (vkx_repair). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vkx.h"

#define ENTRY_HDR 64u
#define DESC_SIZE 32u

typedef struct {
    uint64_t pos, len, seq, tail, flushed, last;
    uint32_t ndesc;
} entry;

/* Validate the entry at log offset pos (log doubled in memory so an entry
 * may wrap).  0 if valid. */
static int entry_at(const vkx_disk *D, const uint8_t *log, uint64_t L, uint64_t pos, entry *e)
{
    const uint8_t *p = log + pos;
    const vkx_header *h = &D->hdr[D->current];
    if (memcmp(p, "loge", 4) != 0) return -1;
    e->pos = pos;
    e->len = vkx_le32(p + 8);
    e->tail = vkx_le32(p + 12);
    e->seq = vkx_le64(p + 16);
    e->ndesc = vkx_le32(p + 24);
    e->flushed = vkx_le64(p + 48);
    e->last = vkx_le64(p + 56);
    if (e->len < VKX_LOG_SECTOR || e->len % VKX_LOG_SECTOR || e->len > L) return -1;
    if (e->tail % VKX_LOG_SECTOR || e->tail >= L || e->seq == 0) return -1;
    if (memcmp(p + 32, h->log_guid, 16) != 0) return -1;
    uint64_t hdr_bytes = ENTRY_HDR + (uint64_t)DESC_SIZE * e->ndesc;
    hdr_bytes = (hdr_bytes + VKX_LOG_SECTOR - 1) / VKX_LOG_SECTOR * VKX_LOG_SECTOR;
    if (hdr_bytes > e->len) return -1;
    uint64_t ndata = 0;
    for (uint32_t i = 0; i < e->ndesc; i++) {
        const uint8_t *d = p + ENTRY_HDR + (uint64_t)DESC_SIZE * i;
        if (vkx_le64(d + 24) != e->seq) return -1;
        if (memcmp(d, "zero", 4) == 0) {
            if (vkx_le64(d + 8) % VKX_LOG_SECTOR || vkx_le64(d + 16) % VKX_LOG_SECTOR) return -1;
        } else if (memcmp(d, "desc", 4) == 0) {
            if (vkx_le64(d + 16) % VKX_LOG_SECTOR) return -1;
            if (hdr_bytes + (ndata + 1) * VKX_LOG_SECTOR > e->len) return -1;
            const uint8_t *s = p + hdr_bytes + ndata * VKX_LOG_SECTOR;
            if (memcmp(s, "data", 4) != 0) return -1;
            if ((((uint64_t)vkx_le32(s + 4) << 32) | vkx_le32(s + 4092)) != e->seq) return -1;
            ndata++;
        } else {
            return -1;
        }
    }
    if (hdr_bytes + ndata * VKX_LOG_SECTOR != e->len) return -1;
    if (vk_crc32c(p, (size_t)e->len, 4) != vkx_le32(p + 4)) return -1;
    return 0;
}

static int add_op(vkx_disk *D, uint64_t off, uint64_t len, const uint8_t *lead, const uint8_t *body,
                  const uint8_t *trail, uint64_t limit, vk_err *err)
{
    uint64_t end;
    if (vk_add_ovf(off, len, &end) || end > limit || off < VKX_REGION1_OFFSET)
        return vkx_fail(D, "VHDX_LOG_TARGET", err, VK_E_RANGE, UINT64_MAX,
                        "a log entry writes %llu bytes at offset %llu, outside the file's data",
                        (unsigned long long)len, (unsigned long long)off);
    vkx_op *op = &D->ops[D->n_ops++];
    op->offset = off;
    op->length = len;
    op->data = NULL;
    if (body) {
        if (!(op->data = malloc(VKX_LOG_SECTOR))) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory");
        memcpy(op->data, lead, 8);
        memcpy(op->data + 8, body + 8, 4084);
        memcpy(op->data + 4092, trail, 4);
    }
    return VK_OK;
}

int vkx_log_load(vkx_disk *D, vk_err *err)
{
    const vkx_header *h = &D->hdr[D->current];
    uint64_t L = h->log_length, end;
    uint8_t *log = NULL;
    int rc;

    D->eff_size = D->file_size;
    if (vkx_guid_is_zero(h->log_guid)) return VK_OK;
    if (L == 0)
        return vkx_fail(D, "VHDX_LOG_PLACEMENT", err, VK_E_FORMAT, UINT64_MAX, "the log GUID is set but the log is empty");
    if (vk_add_ovf(h->log_offset, L, &end) || end > D->file_size)
        return vkx_fail(D, "VHDX_LOG_RANGE", err, VK_E_RANGE, h->log_offset,
                        "the log (%llu bytes at offset %llu) extends past the end of the file",
                        (unsigned long long)L, (unsigned long long)h->log_offset);
    if (L > VKX_MAX_LOG_REPLAY)
        return vkx_fail(D, "VHDX_LOG_SIZE", err, VK_E_UNSUPPORTED, h->log_offset,
                        "a log of %llu bytes to replay exceeds the limit of %u bytes", (unsigned long long)L,
                        VKX_MAX_LOG_REPLAY);
    if (!(log = malloc((size_t)(2 * L)))) return vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory for the log");
    if ((rc = vk_pread_full(D->fd, log, (size_t)L, h->log_offset, err))) goto out;
    memcpy(log + L, log, (size_t)L);

    /* The active sequence: scan every 4 KiB for a start, extend it while the
     * next entry is valid with the next sequence number, keep the best one
     * whose head's Tail is one of its entries, and resume after it. */
    entry best_head, e, head;
    memset(&best_head, 0, sizeof best_head);
    uint64_t best_tail = 0, best_count = 0;
    for (uint64_t start = 0; start < L;) {
        if (entry_at(D, log, L, start, &e)) { start += VKX_LOG_SECTOR; continue; }
        entry first = e;
        head = e;
        uint64_t count = 1, span = e.len;
        while (span < L) {
            entry n;
            uint64_t next = (head.pos + head.len) % L;
            if (entry_at(D, log, L, next, &n) || n.seq != head.seq + 1) break;
            head = n; count++; span += n.len;
        }
        /* does the head's tail name an entry of this sequence? */
        uint64_t tail_count = 0, p = first.pos;
        int found = 0;
        for (uint64_t i = 0; i < count; i++) {
            entry x;
            if (p == head.tail) { found = 1; tail_count = count - i; break; }
            entry_at(D, log, L, p, &x);
            p = (p + x.len) % L;
        }
        if (found && (best_count == 0 || head.seq > best_head.seq)) {
            best_head = head; best_tail = head.tail; best_count = tail_count;
        }
        if (first.pos + span >= L) break;
        start = first.pos + span;
    }
    if (best_count == 0) {   /* spec 2.3.3: corrupt, MUST fail to open */
        rc = vkx_fail(D, "VHDX_LOG_EMPTY", err, VK_E_FORMAT, h->log_offset,
                      "the log GUID is set but the log holds no valid sequence of entries");
        goto out;
    }
    if (best_head.flushed > D->file_size) {
        rc = vkx_fail(D, "VHDX_LOG_FLUSHED", err, VK_E_RANGE, h->log_offset,
                      "the log says the file was %llu bytes long, but it is %llu (truncated?)",
                      (unsigned long long)best_head.flushed, (unsigned long long)D->file_size);
        goto out;
    }
    uint64_t limit = best_head.last > D->file_size ? best_head.last : D->file_size;
    /* at most one op per descriptor; descriptors are bounded by the log */
    size_t cap = (size_t)(L / DESC_SIZE) + 1;
    if (!(D->ops = calloc(cap, sizeof *D->ops))) { rc = vk_fail(err, VK_E_NOMEM, UINT64_MAX, "out of memory"); goto out; }
    uint64_t p = best_tail;
    for (uint64_t i = 0; i < best_count; i++) {
        entry_at(D, log, L, p, &e);
        const uint8_t *ep = log + p;
        uint64_t hdr_bytes = (ENTRY_HDR + (uint64_t)DESC_SIZE * e.ndesc + VKX_LOG_SECTOR - 1) / VKX_LOG_SECTOR * VKX_LOG_SECTOR;
        uint64_t nd = 0;
        for (uint32_t k = 0; k < e.ndesc && D->n_ops < cap; k++) {
            const uint8_t *d = ep + ENTRY_HDR + (uint64_t)DESC_SIZE * k;
            if (memcmp(d, "zero", 4) == 0)
                rc = add_op(D, vkx_le64(d + 16), vkx_le64(d + 8), NULL, NULL, NULL, limit, err);
            else
                rc = add_op(D, vkx_le64(d + 16), VKX_LOG_SECTOR, d + 8, ep + hdr_bytes + VKX_LOG_SECTOR * nd++, d + 4,
                            limit, err);
            if (rc) goto out;
        }
        p = (p + e.len) % L;
    }
    D->log_pending = 1;
    D->log_entries = (uint32_t)best_count;
    D->log_seq_head = best_head.seq;
    D->log_last_file_offset = best_head.last;
    D->eff_size = limit;
out:
    free(log);
    return rc;
}

int vkx_pread(vkx_disk *D, void *buf, size_t len, uint64_t off, vk_err *err)
{
    uint64_t end;
    uint8_t *b = buf;
    int rc;
    if (vk_add_ovf(off, len, &end) || end > D->eff_size)
        return vk_fail(err, VK_E_RANGE, off, "unexpected end of file reading %zu bytes at offset %llu", len,
                       (unsigned long long)off);
    if (off < D->file_size) {
        size_t n = end <= D->file_size ? len : (size_t)(D->file_size - off);
        if ((rc = vk_pread_full(D->fd, b, n, off, err))) return rc;
        memset(b + n, 0, len - n);
    } else {
        memset(b, 0, len);
    }
    for (uint32_t i = 0; i < D->n_ops; i++) {
        const vkx_op *op = &D->ops[i];
        uint64_t a = op->offset > off ? op->offset : off;
        uint64_t z = op->offset + op->length < end ? op->offset + op->length : end;
        if (a >= z) continue;
        if (op->data) memcpy(b + (a - off), op->data + (a - op->offset), (size_t)(z - a));
        else memset(b + (a - off), 0, (size_t)(z - a));
    }
    return VK_OK;
}

int vkx_log_apply(vkx_disk *D, int fd, vk_err *err)
{
    static const uint8_t zeros[VKX_LOG_SECTOR];
    int rc;
    for (uint32_t i = 0; i < D->n_ops; i++) {
        const vkx_op *op = &D->ops[i];
        if (op->data) {
            if ((rc = vk_pwrite_full(fd, op->data, VKX_LOG_SECTOR, op->offset, err))) return rc;
            continue;
        }
        for (uint64_t done = 0; done < op->length; done += VKX_LOG_SECTOR)
            if ((rc = vk_pwrite_full(fd, zeros, VKX_LOG_SECTOR, op->offset + done, err))) return rc;
    }
    if (D->eff_size > D->file_size && ftruncate(fd, (off_t)D->eff_size) != 0)
        return vk_fail_errno(err, errno, UINT64_MAX, "cannot extend the file to %llu bytes",
                             (unsigned long long)D->eff_size);
    if (fsync(fd) != 0) return vk_fail_errno(err, errno, UINT64_MAX, "fsync failed");
    return VK_OK;
}
