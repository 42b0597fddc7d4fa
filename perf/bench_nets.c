/*
 * bench_nets.c — forward-pass time of each network, one thread, on the golden inputs.
 *
 *   bin/bench_nets [runs [only]]  (runs >= 20, default 30; only: run just the networks whose
 *                                 name contains it; FW_SHARED, FW_MODELS as in the tests)
 *
 * For each network: 3 warm-up passes, then `runs` timed passes; prints one JSON line
 *   {"what":"recognition_150","median_ms":..,"min_ms":..,"gflops":..,"runs":..}
 * where gflops is the network's FLOP count (fw_*_flops) over the median time. perf/bench_engine.sh
 * puts these beside the TF.js reference's numbers.
 */
#include "engine/nets.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WARMUP 3

static const char *env_or(const char *name, const char *dflt)
{
    const char *s = getenv(name);
    return s && *s ? s : dflt;
}

static uint8_t *read_rgb(const char *rel, size_t want)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/golden/%s", env_or("FW_SHARED", "../shared"), rel);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_nets: cannot open %s\n", path);
        return NULL;
    }
    uint8_t *buf = malloc(want);
    size_t n = buf ? fread(buf, 1, want, f) : 0;
    fclose(f);
    if (n != want) {
        fprintf(stderr, "bench_nets: %s is not %zu bytes\n", path, want);
        free(buf);
        return NULL;
    }
    return buf;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum which { RECOG, LANDMARK, DETECTOR };

/* Times runs passes of one network; returns 0 and prints its JSON line, or -1. */
static int bench(const fw_nets *nets, fw_nets_ws *ws, enum which w, const uint8_t *rgb, int size,
                 int runs, const char *only, const char *what, double flops)
{
    float out[32 * 32 * 25];
    if (only && !strstr(what, only))
        return 0;
    double *t = malloc((size_t)runs * sizeof *t);
    if (!t)
        return -1;
    for (int i = 0; i < WARMUP + runs; i++) {
        double t0 = now_ms();
        int rc = w == RECOG      ? fw_recog_run(nets, ws, rgb, out)
                 : w == LANDMARK ? fw_landmark68_run(nets, ws, rgb, out)
                                 : fw_tinydet_run(nets, ws, rgb, size, out);
        double dt = now_ms() - t0;
        if (rc != 0) {
            fprintf(stderr, "bench_nets: %s failed\n", what);
            free(t);
            return -1;
        }
        if (i >= WARMUP)
            t[i - WARMUP] = dt;
    }
    qsort(t, (size_t)runs, sizeof *t, cmp_double);
    double med = runs % 2 ? t[runs / 2] : (t[runs / 2 - 1] + t[runs / 2]) / 2;
    printf("{\"what\":\"%s\",\"median_ms\":%.3f,\"min_ms\":%.3f,\"gflops\":%.2f,\"runs\":%d}\n",
           what, med, t[0], flops / (med * 1e6), runs);
    free(t);
    return 0;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 30;
    if (runs < 20 || runs > 100000) {
        fprintf(stderr, "usage: bench_nets [runs >= 20 [only]]\n");
        return 2;
    }
    const char *only = argc > 2 ? argv[2] : NULL;
    char err[256];
    fw_nets *nets = NULL;
    fw_nets_ws *ws = NULL;
    uint8_t *rec = NULL, *lm = NULL, *det = NULL;
    int rc = 1;
    if (fw_nets_load(env_or("FW_MODELS", "models"), &nets, err, sizeof err) != 0) {
        fprintf(stderr, "bench_nets: %s\n", err);
        goto done;
    }
    ws = fw_nets_ws_new(nets, 416);
    rec = read_rgb("recognition/chip00.rgb", 150 * 150 * 3);
    lm = read_rgb("landmark68/chip00.rgb", 112 * 112 * 3);
    det = read_rgb("tiny_detector/sample1.rgb", 416 * 416 * 3);
    if (!ws || !rec || !lm || !det)
        goto done;
    if (bench(nets, ws, RECOG, rec, 150, runs, only, "recognition_150", fw_recog_flops()) != 0 ||
        bench(nets, ws, LANDMARK, lm, 112, runs, only, "landmark68_112", fw_landmark68_flops()) != 0 ||
        bench(nets, ws, DETECTOR, det, 416, runs, only, "tinydet_416", fw_tinydet_flops(416)) != 0)
        goto done;
    rc = 0;
done:
    free(rec);
    free(lm);
    free(det);
    fw_nets_ws_free(ws);
    fw_nets_free(nets);
    return rc;
}
