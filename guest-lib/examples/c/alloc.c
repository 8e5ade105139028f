/* Allocate one NV12 1920x1080 buffer through the bufbroker C API, write a test pattern into
 * it, export its UUID.
 *
 *   alloc --socket PATH [PARTICIPANT...]   host process: the broker's local socket
 *   alloc --device [PARTICIPANT...]        inside a guest: the virtio device (root)
 *
 * Build: cc alloc.c $(pkg-config --cflags --libs bufbroker)
 */
#include <stdio.h>
#include <string.h>

#include "bufbroker.h"

#define NV12 0x3231564eu /* DRM_FORMAT_NV12 */

static int fail(const char *what, bb_status s) {
    fprintf(stderr, "%s failed (%d): %s\n", what, (int)s, bb_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s --socket PATH | --device [PARTICIPANT...]\n", argv[0]);
        return 2;
    }
    bb_client *client = NULL;
    int first_name = 2;
    bb_status s;
    if (strcmp(argv[1], "--socket") == 0 && argc >= 3) {
        s = bb_connect_local(argv[2], &client);
        first_name = 3;
    } else {
        s = bb_connect_device(NULL, &client);
    }
    if (s != BB_OK) return fail("connect", s);

    uint64_t rtt = 0;
    if ((s = bb_ping(client, &rtt)) != BB_OK) return fail("ping", s);
    printf("ping %llu ns\n", (unsigned long long)rtt);

    bb_request req = {
        .width = 1920,
        .height = 1080,
        .fourcc = NV12,
        .usage = 0,
        .placement = strcmp(argv[1], "--device") == 0 ? BB_PLACEMENT_HOST_WINDOW : BB_PLACEMENT_HOST_CLIENT,
        .named = (const char *const *)(argv + first_name),
        .named_count = (size_t)(argc - first_name),
    };
    bb_buffer_info info;
    if ((s = bb_allocate(client, &req, &info)) != BB_OK) return fail("allocate", s);
    printf("buffer %llu size %llu planes %u\n", (unsigned long long)info.id,
           (unsigned long long)info.size, info.num_planes);
    for (uint32_t i = 0; i < info.num_planes; i++)
        printf("plane %u offset %llu stride %u\n", i, (unsigned long long)info.planes[i].offset,
               info.planes[i].stride);

    uint8_t *p = NULL;
    size_t len = 0;
    if ((s = bb_map(client, info.id, &p, &len)) != BB_OK) return fail("map", s);
    for (uint32_t y = 0; y < info.height; y++)
        for (uint32_t x = 0; x < info.width; x++)
            p[info.planes[0].offset + (uint64_t)y * info.planes[0].stride + x] = (uint8_t)x;
    memset(p + info.planes[1].offset, 128, info.planes[1].size);
    printf("pattern written (%zu bytes mapped)\n", len);

    uint8_t uuid[16];
    if ((s = bb_export(client, info.id, uuid)) != BB_OK) return fail("export", s);
    printf("uuid ");
    for (int i = 0; i < 16; i++) printf("%02x%s", uuid[i], (i == 3 || i == 5 || i == 7 || i == 9) ? "-" : "");
    printf("\n");

    if ((s = bb_free(client, info.id)) != BB_OK) return fail("free", s);
    bb_client_destroy(client);
    return 0;
}
