/* fuzz_check.c -- libFuzzer target: vk_check over one arbitrary file, with
 * and without parent checking, and with a problem buffer too small to hold
 * everything (the count must still be right and nothing overflow). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = fz_path(0, "a.vhd");
    vk_err err;
    vk_problem probs[8];
    size_t n = 0;
    vk_open_opts o;
    fz_write(p, data, size);
    memset(&o, 0, sizeof o);
    o.allowed_root = fz_tmpdir();
    vk_check(p, &o, 1, probs, 8, &n, &err);
    vk_check(p, NULL, 0, probs, 1, &n, &err);
    vk_check(p, NULL, 0, NULL, 0, &n, &err);
    return 0;
}
