/*
 * bench_streams_frames.c — camera frames for perf/bench_streams.sh: one JPEG cut to WxH
 * (scaled to cover, centred) and written N times, each rolled by a few pixels, so a stream
 * sends frames that differ like those of a still camera with a little jitter.
 *
 *   bin/bench_streams_frames IN.jpg OUTDIR N [W H]   -> OUTDIR/f000.jpg ... (N <= 1000)
 *
 * The engine's own JPEG code (libturbojpeg underneath; no ImageMagick on the test box): the
 * input goes through fw_read_file and fw_decode_jpeg, which check its size and its header
 * before allocating, like any picture the server is sent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/image.h"

#define IN_MAX_BYTES ((size_t)64 << 20)
#define IN_MAX_PIXELS ((uint64_t)100 << 20)

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: %s IN.jpg OUTDIR N [W H]\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[3]), W = argc == 6 ? atoi(argv[4]) : 640, H = argc == 6 ? atoi(argv[5]) : 480;
    if (n < 1 || n > 1000 || W < 16 || W > 4096 || H < 16 || H > 4096) {
        fprintf(stderr, "%s: N must be 1..1000, W and H 16..4096\n", argv[0]);
        return 2;
    }
    char err[256];
    size_t len = 0;
    uint8_t *jpeg = fw_read_file(argv[1], IN_MAX_BYTES, &len, NULL, err, sizeof err);
    uint8_t *dst = NULL, *out = NULL;
    fw_decoder *d = fw_decoder_new();
    const fw_decode_limits lim = { IN_MAX_PIXELS, 65535, 0 };
    fw_image img;
    int rc = 1;
    if (!jpeg || !d) {
        fprintf(stderr, "%s: %s\n", argv[0], jpeg ? "out of memory" : err);
        goto out;
    }
    if (fw_decode_jpeg(d, jpeg, len, &lim, &img, NULL, err, sizeof err) != FWE_OK) {
        fprintf(stderr, "%s: cannot decode %s: %s\n", argv[0], argv[1], err);
        goto out;
    }
    const uint8_t *src = img.px;
    int w = img.w, h = img.h;
    dst = malloc((size_t)W * (size_t)H * 3);
    if (!dst) {
        fprintf(stderr, "%s: out of memory\n", argv[0]);
        goto out;
    }
    /* scale to cover W x H (nearest neighbour is enough for load), centre, roll per frame */
    double s = (double)w / W < (double)h / H ? (double)w / W : (double)h / H;
    int ox = (int)((w - W * s) / 2), oy = (int)((h - H * s) / 2);
    for (int f = 0; f < n; f++) {
        int dx = f % 10, dy = f / 10 % 10;
        for (int y = 0; y < H; y++) {
            int sy = oy + (int)(((y + dy) % H) * s);
            for (int x = 0; x < W; x++) {
                int sx = ox + (int)(((x + dx) % W) * s);
                sx = sx < 0 ? 0 : sx >= w ? w - 1 : sx;
                sy = sy < 0 ? 0 : sy >= h ? h - 1 : sy;
                memcpy(dst + ((size_t)y * W + x) * 3, src + ((size_t)sy * w + sx) * 3, 3);
            }
        }
        size_t olen = 0;
        free(out);
        out = NULL;
        const fw_image frame = { dst, W, H };
        if (fw_jpeg_encode(&frame, 85, &out, &olen, err, sizeof err) != FWE_OK) {
            fprintf(stderr, "%s: cannot encode: %s\n", argv[0], err);
            goto out;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/f%03d.jpg", argv[2], f);
        FILE *o = fopen(path, "wb");
        int bad = !o || fwrite(out, 1, olen, o) != olen;
        if ((o && fclose(o) != 0) || bad) {
            fprintf(stderr, "%s: cannot write %s\n", argv[0], path);
            goto out;
        }
    }
    rc = 0;
out:
    free(out);
    free(dst);
    free(jpeg);
    fw_decoder_free(d);
    return rc;
}
