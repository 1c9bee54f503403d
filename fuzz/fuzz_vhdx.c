/* fuzz_vhdx.c -- libFuzzer target: the VHDX reader (vkx_*.c).
 *
 * A VHDX puts its regions at whole MiB offsets, past libFuzzer's -max_len,
 * so the input is a list of patches laid over a sparse file rather than the
 * file itself: records of u16 offset in KiB, u16 length, then that many
 * bytes (little-endian), up to a 64 MiB file.  "VHDKIT-FUZZ-SPLIT" splits the
 * input into a.vhdx and parent.vhdx (a differencing leaf and its parent,
 * found through the parent locator's relative_path).  Drives probe, open
 * (top only and with the chain), info of every layer, map and reads
 * (fz_exercise), check with and without parents, and repair of a pending log
 * replay (which writes into the file).  fuzz/make_seeds.py encodes real
 * images this way (vhdxref's differencing chains and logs, qemu-img's).
 *
 * Each input runs twice: as written, then with the CRC-32C of its headers,
 * region tables and log entries made right (so mutations get past the
 * checksums into the structures behind them). */
#include "fuzz_common.h"

/* csrc/vk_common.c (vk_internal.h cannot follow vhdkit.h here) */
uint32_t vk_crc32c(const uint8_t *buf, size_t len, size_t cksum_off);

#define SPLIT "VHDKIT-FUZZ-SPLIT"

static void write_patched(const char *path, const uint8_t *d, size_t n)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) { perror(path); abort(); }
    uint64_t end = 0;
    size_t i = 0;
    while (i + 4 <= n) {
        uint64_t off = ((uint64_t)d[i] | ((uint64_t)d[i + 1] << 8)) * 1024;
        size_t len = (size_t)(d[i + 2] | (d[i + 3] << 8));
        i += 4;
        if (len > n - i) len = n - i;
        if (len && pwrite(fd, d + i, len, (off_t)off) != (ssize_t)len) { perror("pwrite"); abort(); }
        if (off + len > end) end = off + len;
        i += len;
    }
    /* round the file up to a whole MiB, as VHDX files are */
    end = (end + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
    if (ftruncate(fd, (off_t)end) != 0) { perror("ftruncate"); abort(); }
    close(fd);
}

static void fix_crc(int fd, uint64_t off, size_t len)
{
    static uint8_t b[64 * 1024];
    if (len > sizeof b || pread(fd, b, len, (off_t)off) != (ssize_t)len) return;
    uint32_t c = vk_crc32c(b, len, 4);
    uint8_t le[4] = {(uint8_t)c, (uint8_t)(c >> 8), (uint8_t)(c >> 16), (uint8_t)(c >> 24)};
    if (pwrite(fd, le, 4, (off_t)off + 4) != 4) abort();
}

static uint32_t rd32(const uint8_t *p) { return p[0] | (p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }

static void fix_checksums(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    uint8_t h[80], e[16];
    if (fd < 0) return;
    for (uint64_t off = 64 * 1024; off <= 128 * 1024; off += 64 * 1024) {
        if (pread(fd, h, sizeof h, (off_t)off) != (ssize_t)sizeof h || memcmp(h, "head", 4) != 0) continue;
        fix_crc(fd, off, 4096);
        uint64_t lo = rd32(h + 72) | ((uint64_t)rd32(h + 76) << 32), ll = rd32(h + 68);
        for (uint64_t p = 0; ll <= (8u << 20) && p < ll; p += 4096) {   /* log entries */
            if (pread(fd, e, sizeof e, (off_t)(lo + p)) != (ssize_t)sizeof e || memcmp(e, "loge", 4) != 0) continue;
            if (rd32(e + 8) && rd32(e + 8) <= 64 * 1024 && p + rd32(e + 8) <= ll) fix_crc(fd, lo + p, rd32(e + 8));
        }
    }
    for (uint64_t off = 192 * 1024; off <= 256 * 1024; off += 64 * 1024)
        if (pread(fd, h, 4, (off_t)off) == 4 && memcmp(h, "regi", 4) == 0) fix_crc(fd, off, 64 * 1024);
    close(fd);
}

static void run(const char *a)
{
    vk_err err;
    int is_vhdx;
    vk_probe_vhdx(a, &is_vhdx, &err);
    for (int mode = 0; mode < 2; mode++) {
        vk_open_opts o;
        vk_image *img = NULL;
        memset(&o, 0, sizeof o);
        o.top_only = mode == 0;
        o.allowed_root = fz_tmpdir();
        if (vk_image_open(a, &o, &img, &err) == 0) {
            vk_vhdx_info x;
            for (int l = 0; l <= vk_image_depth(img); l++) vk_image_vhdx_info(img, l, &x, &err);
            fz_exercise(img);
            vk_image_close(img);
        }
    }
    vk_problem probs[8];
    size_t n = 0;
    vk_check(a, NULL, 1, probs, 8, &n, &err);
    vk_check(a, NULL, 0, probs, 1, &n, &err);
    vk_vhdx_repair_result r;
    vk_vhdx_repair(a, 1, &r, &err);
    vk_vhdx_repair(a, 0, &r, &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *a = fz_path(0, "a.vhdx"), *p = fz_path(1, "parent.vhdx");
    const uint8_t *cut = size >= sizeof SPLIT - 1 ? memmem(data, size, SPLIT, sizeof SPLIT - 1) : NULL;
    size_t alen = cut ? (size_t)(cut - data) : size;
    write_patched(a, data, alen);
    if (cut) write_patched(p, cut + sizeof SPLIT - 1, size - alen - (sizeof SPLIT - 1));
    else unlink(p);
    run(a);
    write_patched(a, data, alen);   /* repair may have written into it */
    fix_checksums(a);
    if (cut) fix_checksums(p);
    run(a);
    return 0;
}
