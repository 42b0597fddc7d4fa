/*
 * bench_streams_frames.c — camera frames for perf/bench_streams.sh: one JPEG cut to WxH
 * (scaled to cover, centred) and written N times, each rolled by a few pixels, so a stream
 * sends frames that differ like those of a still camera with a little jitter.
 *
 *   bin/bench_streams_frames IN.jpg OUTDIR N [W H]   -> OUTDIR/f000.jpg ... (N <= 1000)
 *
 * libturbojpeg only (it is linked for the engine already); no ImageMagick on the test box.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

static unsigned char *read_all(const char *path, unsigned long *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *b = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && n < (64L << 20) && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)n)) != NULL &&
            fread(b, 1, (size_t)n, f) != (size_t)n) {
            free(b);
            b = NULL;
        }
        *len = n > 0 ? (unsigned long)n : 0;
    }
    fclose(f);
    return b;
}

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
    unsigned long len = 0;
    unsigned char *jpeg = read_all(argv[1], &len), *src = NULL, *dst = NULL, *out = NULL;
    tjhandle d = tjInitDecompress(), c = tjInitCompress();
    int rc = 1, w, h, sub, cs;
    if (!jpeg || !d || !c || tjDecompressHeader3(d, jpeg, len, &w, &h, &sub, &cs) != 0) {
        fprintf(stderr, "%s: cannot read %s\n", argv[0], argv[1]);
        goto out;
    }
    src = malloc((size_t)w * (size_t)h * 3);
    dst = malloc((size_t)W * (size_t)H * 3);
    if (!src || !dst || tjDecompress2(d, jpeg, len, src, w, 0, h, TJPF_RGB, 0) != 0) {
        fprintf(stderr, "%s: cannot decode %s\n", argv[0], argv[1]);
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
        unsigned long olen = 0;
        tjFree(out); /* a buffer passed back in would need its size in olen */
        out = NULL;
        if (tjCompress2(c, dst, W, 0, H, TJPF_RGB, &out, &olen, TJSAMP_420, 85, 0) != 0) {
            fprintf(stderr, "%s: cannot encode\n", argv[0]);
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
    tjFree(out);
    free(src);
    free(dst);
    free(jpeg);
    if (d)
        tjDestroy(d);
    if (c)
        tjDestroy(c);
    return rc;
}
