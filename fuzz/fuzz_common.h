/* fuzz_common.h -- shared helpers of the libFuzzer targets in fuzz/.
 *
 * The native core reads files by path, so each input is written to a file
 * in a private temporary directory (created once per process, under
 * $TMPDIR or /tmp) and the entry points are called on that path.  The
 * targets must never crash, leak file descriptors or read outside their
 * buffers whatever the bytes are; a returned error code is a pass. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhdkit.h"

static char fz_dir[512];

/* The per-process directory, created on first use and removed at exit. */
static void fz_cleanup(void);
static const char *fz_tmpdir(void)
{
    if (!fz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fz_dir, sizeof fz_dir, "%s/vhdkit-fuzz-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(fz_dir)) { perror("mkdtemp"); abort(); }
        atexit(fz_cleanup);
    }
    return fz_dir;
}

/* Path of `name` inside the private directory (static buffer per slot). */
static const char *fz_path(int slot, const char *name)
{
    static char buf[4][640];
    snprintf(buf[slot & 3], sizeof buf[0], "%s/%s", fz_tmpdir(), name);
    return buf[slot & 3];
}

/* Replace the file at path with exactly len bytes of data. */
static void fz_write(const char *path, const uint8_t *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) { perror(path); abort(); }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0) { if (errno == EINTR) continue; perror("write"); abort(); }
        done += (size_t)n;
    }
    close(fd);
}

static void fz_cleanup(void)
{
    static const char *names[] = {"a.vhd", "parent.vhd", "grand.vhd", "out.img", "a.vhdx", "parent.vhdx", NULL};
    for (int i = 0; names[i]; i++) unlink(fz_path(0, names[i]));
    rmdir(fz_dir);
}

/* Read every layer's info and locators, a map of the whole disk, and a few
 * ranges (start, middle, end, one crossing a block boundary). */
static void fz_exercise(vk_image *img)
{
    vk_err err;
    vk_info info;
    vk_locator_info loc;
    vk_extent ext[64];
    size_t n;
    char path[4096];
    int depth = vk_image_depth(img);
    for (int l = 0; l < depth; l++) {
        if (vk_image_info(img, l, &info, &err) == 0 && info.disk_type != 2)
            for (int i = 0; i < info.n_locators && i < 8; i++) vk_image_locator(img, l, i, &loc, &err);
        vk_image_path(img, l, path, sizeof path, &err);
    }
    vk_image_info(img, depth, &info, &err);   /* out of range: must fail cleanly */
    uint64_t size = vk_image_size(img);
    uint64_t start = 0;
    for (int round = 0; round < 4 && start < size; round++) {
        if (vk_image_map(img, start, ext, 64, &n, &err) || n == 0) break;
        start = ext[n - 1].offset + ext[n - 1].length;
    }
    static uint8_t buf[1 << 15];
    uint64_t offs[5] = {0, size / 2, size > sizeof buf ? size - sizeof buf : 0, size > 4096 ? 2 * 1024 * 1024 - 2048 : 0,
                        size > 1 ? size - 1 : 0};
    for (int i = 0; i < 5; i++) {
        uint64_t off = offs[i];
        if (off >= size && size) continue;
        size_t len = sizeof buf;
        if (size - off < len) len = (size_t)(size - off);
        vk_image_pread(img, buf, len, off, &err);
    }
    vk_image_pread(img, buf, 1, size, &err);          /* past the end: error */
    vk_image_pread(img, buf, 2, UINT64_MAX, &err);    /* overflow: error     */
}

#endif
