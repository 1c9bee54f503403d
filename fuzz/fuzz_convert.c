/* fuzz_convert.c -- libFuzzer target: the converter's input side.  Opens
 * the input as a VHD and converts it to raw, fixed and dynamic output (a
 * scratch file, truncated between runs; one kind per input), compares it
 * with itself, and for some inputs feeds the bytes to the raw converter.
 * Fixed output is only made for disks up to 64 MiB (it writes every byte). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = fz_path(0, "a.vhd");
    const char *q = fz_path(1, "out.img");
    vk_err err;
    vk_image *img = NULL;
    vk_write_result res;
    vk_write_opts w;
    fz_write(p, data, size);
    int out = open(q, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) abort();
    if (vk_image_open(p, NULL, &img, &err) == 0) {
        int kinds[3] = {VK_OUT_RAW, VK_OUT_DYNAMIC, VK_OUT_FIXED};
        uint64_t vsize = vk_image_size(img);
        /* one output kind per input (the converter's ring is 16 MiB: keep
         * executions fast), chosen by a byte of the input */
        int k0 = size ? data[size / 2] % 3 : 0;
        for (int k = k0; k < k0 + 1; k++) {
            /* fixed output writes the whole disk; keep it small */
            if (kinds[k] == VK_OUT_FIXED && vsize > (64u << 20)) continue;
            memset(&w, 0, sizeof w);
            w.kind = kinds[k];
            w.block_size = size & 1 ? 512 * 1024 : 0;
            w.size_rule = VK_RULE_EXACT;
            if (ftruncate(out, 0) != 0) abort();
            vk_convert_image(img, out, &w, &res, &err);
        }
        vk_compare_result cr;
        if (vsize <= (64u << 20)) vk_compare(img, -1, img, -1, &cr, &err);   /* reads every byte */
        vk_image_close(img);
    }
    /* raw input side: the same bytes as a raw disk (every 4th input) */
    if (!size || data[0] % 4) { close(out); return 0; }
    int in = open(p, O_RDONLY | O_CLOEXEC);
    if (in < 0) abort();
    memset(&w, 0, sizeof w);
    w.kind = VK_OUT_DYNAMIC;
    w.size_rule = size & 2 ? VK_RULE_CHS : VK_RULE_EXACT;
    if (ftruncate(out, 0) != 0) abort();
    vk_convert_raw(in, size, out, &w, &res, &err);
    close(in);
    close(out);
    return 0;
}
