/* fuzz_chain.c -- libFuzzer target: a child and its parent(s).  The input is
 * split at the first occurrence of the separator "VHDKIT-FUZZ-SPLIT" (17
 * bytes): child, parent, and optionally a grandparent.  The files are
 * named a.vhd, parent.vhd, grand.vhd in one directory, so locators and
 * parent names that say "parent.vhd" resolve too.  Opened with explicit
 * parents, through the locators, and checked; then read through. */
#include "fuzz_common.h"

static const char SEP[] = "VHDKIT-FUZZ-SPLIT";

static const uint8_t *find_sep(const uint8_t *d, size_t n)
{
    size_t k = sizeof SEP - 1;
    if (n < k) return NULL;
    for (size_t i = 0; i + k <= n; i++)
        if (d[i] == (uint8_t)SEP[0] && memcmp(d + i, SEP, k) == 0) return d + i;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *names[3] = {"a.vhd", "parent.vhd", "grand.vhd"};
    const char *paths[3];
    const uint8_t *part = data;
    size_t left = size;
    vk_err err;
    vk_image *img = NULL;
    for (int i = 0; i < 3; i++) {
        const uint8_t *s = i < 2 ? find_sep(part, left) : NULL;
        size_t len = s ? (size_t)(s - part) : left;
        paths[i] = fz_path(i, names[i]);
        fz_write(paths[i], part, len);
        if (s) { part = s + sizeof SEP - 1; left -= len + sizeof SEP - 1; }
        else { part += len; left = 0; }
    }
    const char *parents[2] = {paths[1], paths[2]};
    for (int mode = 0; mode < 3; mode++) {
        vk_open_opts o;
        memset(&o, 0, sizeof o);
        o.parents = mode == 0 ? parents : NULL;
        o.n_parents = mode == 0 ? 2 : 0;
        o.allowed_root = mode == 2 ? fz_tmpdir() : NULL;
        if (vk_image_open(paths[0], &o, &img, &err) == 0) {
            fz_exercise(img);
            vk_image_close(img);
        }
    }
    vk_problem probs[16];
    size_t n;
    vk_open_opts o;
    memset(&o, 0, sizeof o);
    o.allowed_root = fz_tmpdir();
    vk_check(paths[0], &o, 1, probs, 16, &n, &err);
    return 0;
}
