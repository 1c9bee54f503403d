/* fuzz_open.c -- libFuzzer target: vk_probe and vk_image_open (top only,
 * with parents resolved from the locators inside the private directory,
 * with each size rule) over one arbitrary file, then info, locators, map and
 * reads (fz_exercise); and the buffer entry points Python reads stream
 * structures through (footer, dynamic header, BAT) over the same bytes. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = fz_path(0, "a.vhd");
    vk_err err;
    uint32_t type;
    vk_image *img = NULL;
    fz_write(p, data, size);
    vk_probe(p, &type, &err);
    {
        vk_footer_fields ff;
        vk_dynhdr_fields hf;
        uint8_t renewed[512], id[16] = { 0 };
        static uint64_t offs[4096];
        if (size >= 512) {
            vk_footer_peek(data + size - 512, 512, &ff, &err);
            vk_footer_renew(data, 512, id, 0, renewed, &err);
        }
        if (size >= 1536) vk_dynhdr_peek(data + 512, 1024, &hf, &err);
        vk_bat_blocks(data, size / 4 < 4096 ? size / 4 : 4096, offs);
    }
    for (int mode = 0; mode < 3; mode++) {
        vk_open_opts o;
        memset(&o, 0, sizeof o);
        o.top_only = mode == 0;
        o.size_rule = mode == 0 ? VK_SIZE_AUTO : mode == 1 ? VK_SIZE_CHS : VK_SIZE_ORIGINAL;
        o.allowed_root = mode == 2 ? fz_tmpdir() : NULL;
        if (vk_image_open(p, &o, &img, &err) == 0) {
            fz_exercise(img);
            vk_image_close(img);
        }
    }
    return 0;
}
