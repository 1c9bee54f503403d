/* fuzz_modify.c -- libFuzzer target: the in-place writers' input side.
 * vk_repair (dry run, then for real) and vk_modify (new UUID; grow; shrink)
 * on an arbitrary file.  They may refuse; they must not crash or write
 * outside the file. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = fz_path(0, "a.vhd");
    vk_err err;
    vk_repair_result rr = {0};
    vk_modify_result mr;
    vk_modify_opts m;

    fz_write(p, data, size);
    vk_repair(p, 1, &rr, &err);
    vk_repair(p, VK_REPAIR_FORCE, &rr, &err);
    memset(&m, 0, sizeof m);
    m.set_uuid = 1;
    memset(m.uuid, 0xab, 16);
    vk_modify(p, &m, &mr, &err);
    if (size > 0) {
        memset(&m, 0, sizeof m);
        m.set_size = 1;
        /* sizes from the input: grow (bounded to 64 MiB) or shrink */
        m.size = (uint64_t)data[0] << 17;
        m.force = data[size - 1] & 1;
        vk_modify(p, &m, &mr, &err);
    }
    return 0;
}
