/*
 * bench_pipeline.c — the whole engine (decode, detect, landmarks, descriptor) on one JPEG,
 * one thread, the way the server's workers run it.
 *
 *   bin/bench_pipeline [--models DIR] [--iterations N] [--align similarity|box] [--no-mirror]
 *                      PICTURE.jpg
 *
 * The JPEG is read once; then 3 warm-up analyses (the workspace's buffers reach their working
 * size), then N >= 20 timed ones (default 30). Prints one JSON line:
 *   {"what":"pipeline_<file name>","median_ms":..,"min_ms":..,"decode_ms":..,"detect_ms":..,
 *    "landmarks_ms":..,"describe_ms":..,"faces":..,"runs":..}
 * the stage figures being medians too (so they need not add up to median_ms). The "what"
 * matches the reference's anchor.js line for the same picture, so perf/bench_engine.sh can
 * print the ratio; unlike anchor.js the file is not re-read on every run.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

#define WARMUP 3
#define MIN_RUNS 20
#define MAX_FACES 32

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The file name goes into a JSON string: escape what JSON requires. */
static void put_json_chars(const char *s)
{
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_pipeline [--models DIR] [--iterations N>=20] "
                    "[--align similarity|box] [--no-mirror] PICTURE.jpg\n");
}

int main(int argc, char **argv)
{
    const char *models = getenv("FW_MODELS") && *getenv("FW_MODELS") ? getenv("FW_MODELS") : "models";
    int runs = 30;
    fw_engine_options o;
    fw_engine_options_default(&o);
    static const struct option longopts[] = {
        {"models", required_argument, NULL, 'm'},
        {"iterations", required_argument, NULL, 'n'},
        {"align", required_argument, NULL, 'a'},
        {"no-mirror", no_argument, NULL, 'M'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm': models = optarg; break;
        case 'n': runs = atoi(optarg); break;
        case 'a':
            if (!strcmp(optarg, "box"))
                o.align = FW_ALIGN_BOX;
            else if (strcmp(optarg, "similarity")) {
                usage();
                return 2;
            }
            break;
        case 'M': o.detect_mirror = 0; break;
        default: usage(); return ch == 'h' ? 0 : 2;
        }
    }
    if (optind != argc - 1 || runs < MIN_RUNS || runs > 100000) {
        usage();
        return 2;
    }
    const char *path = argv[optind];
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;

    int status = 1;
    fw_engine *e = NULL;
    fw_engine_ws *ws = NULL;
    uint8_t *jpeg = NULL;
    double *v = NULL;
    fw_face *faces = NULL;
    size_t len = 0;
    char err[256];
    if (fw_engine_open(models, &o, &e, err, sizeof(err)) != FWE_OK) {
        fprintf(stderr, "bench_pipeline: %s: %s\n", models, err);
        goto err;
    }
    ws = fw_engine_ws_new(e);
    jpeg = fw_read_file(path, (size_t)256 << 20, &len, NULL, err, sizeof(err));
    if (!jpeg) {
        fprintf(stderr, "bench_pipeline: %s\n", err);
        goto err;
    }
    v = malloc(sizeof(double) * (size_t)runs * 6);
    faces = malloc(sizeof(fw_face) * MAX_FACES);
    if (!ws || !v || !faces) {
        fprintf(stderr, "bench_pipeline: out of memory\n");
        goto err;
    }
    int n = 0;
    fw_timings t;
    for (int i = 0; i < WARMUP + runs; i++) {
        fw_engine_err rc = fw_engine_analyze(e, ws, jpeg, len, FW_WANT_DESCRIPTORS, faces, MAX_FACES,
                                             &n, NULL, NULL, &t, err, sizeof(err));
        if (rc != FWE_OK) {
            fprintf(stderr, "bench_pipeline: %s: %s\n", path, err);
            goto err;
        }
        if (i < WARMUP)
            continue;
        const int k = i - WARMUP;
        v[k] = t.total_ms;
        v[runs + k] = t.decode_ms;
        v[2 * runs + k] = t.detect_ms;
        v[3 * runs + k] = t.landmarks_ms;
        v[4 * runs + k] = t.describe_ms;
    }
    const double med = median(v, runs), min = v[0];
    printf("{\"what\":\"pipeline_");
    put_json_chars(name);
    printf("\",\"median_ms\":%.2f,\"min_ms\":%.2f,\"decode_ms\":%.2f,"
           "\"detect_ms\":%.2f,\"landmarks_ms\":%.2f,\"describe_ms\":%.2f,\"faces\":%d,"
           "\"align\":\"%s\",\"mirror\":%s,\"runs\":%d}\n",
           med, min, median(v + runs, runs), median(v + 2 * runs, runs),
           median(v + 3 * runs, runs), median(v + 4 * runs, runs), n,
           o.align == FW_ALIGN_BOX ? "box" : "similarity", o.detect_mirror ? "true" : "false", runs);
    status = 0;
err:
    free(faces);
    free(v);
    free(jpeg);
    fw_engine_ws_free(ws);
    fw_engine_close(e);
    return status;
}
