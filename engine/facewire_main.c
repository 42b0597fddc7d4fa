/*
 * facewire_main.c — bin/facewire, the face engine on the command line (no server involved).
 *
 *   facewire detect PIC...            faces: box, score, 68 landmarks
 *   facewire embed PIC...             the same plus the 128-d descriptor
 *   facewire compare A.jpg B.jpg      distance between the best faces; exit 0 same, 1 not
 *   facewire draw PIC -o OUT.jpg      boxes and landmarks drawn on the picture
 *
 * --json prints one JSON object per picture per line (cJSON), for scripts and tests; the plain
 * output is for people. --repeat N times each picture N times after a warm-up and reports the
 * median of each stage. Exit status: 0 success (compare: same person), 1 compare: different
 * people, 2 any error.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "engine/engine.h"
#include "engine/image.h"

/* A picture file bigger than this is refused before it is read (the decoder's pixel limits
 * would refuse it anyway; this bounds the read itself). */
#define MAX_FILE_BYTES (256u << 20)

typedef struct cli {
    const char *cmd;
    const char *models;
    const char *output;
    int json, timings, repeat;
    double threshold;
    fw_engine_options opts;
} cli;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: facewire COMMAND [options] PICTURE...\n"
        "\n"
        "Commands:\n"
        "  detect PIC...          find faces: box, detector score, 68 landmarks\n"
        "  embed PIC...           the same plus each face's 128-d descriptor\n"
        "  compare A B            distance between the best face of A and of B; prints\n"
        "                         same/different and exits 0 (same) or 1 (different)\n"
        "  draw PIC -o OUT.jpg    draw boxes and landmarks on PIC, write OUT.jpg\n"
        "\n"
        "Options:\n"
        "  --json                 one JSON object per picture per line:\n"
        "                         {\"image\", \"width\", \"height\", \"faces\": [{\"box\": [x, y, w, h],\n"
        "                         \"score\", \"landmarks\": [[x, y] x 68], \"descriptor\" (embed)}]}\n"
        "                         or {\"image\", \"error\"}\n"
        "  --timings              add per-stage times (ms): decode, detect, landmarks,\n"
        "                         describe, total\n"
        "  --repeat N             run each picture N times after one warm-up run and report\n"
        "                         the median time of each stage\n"
        "  --models DIR           model directory (default ./models)\n"
        "  --align MODE           similarity (dlib chip, default) or box (face-api's crop)\n"
        "  --size N               detector input size, a multiple of 32 (default 416)\n"
        "  --score S              detector score threshold (default 0.5)\n"
        "  --no-mirror            run the detector once, not also on the mirror image\n"
        "                         (faster; may miss faces near the score threshold)\n"
        "  --threshold T          compare: same person below this distance (default 0.6)\n"
        "  -o, --output FILE      draw: where to write the JPEG\n"
        "  -h, --help             this text\n"
        "  --version              print the version\n"
        "\n"
        "Coordinates are pixels of the picture as displayed (EXIF orientation applied).\n"
        "Exit status: 0 success, 1 compare found different people, 2 error.\n");
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double round_to(double v, double unit)
{
    return round(v / unit) * unit;
}

typedef struct result {
    fw_engine_err rc;
    char err[256];
    int width, height, nfaces;
    fw_face *faces;
    fw_timings t;
} result;

/* Analyse one picture (repeat times after a warm-up when repeat > 0), medians in r->t. */
static void analyze_file(const cli *c, const fw_engine *e, fw_engine_ws *ws, const char *path,
                         int want, int max_faces, result *r)
{
    size_t len = 0;
    r->nfaces = 0;
    r->err[0] = 0;
    uint8_t *jpeg = fw_read_file(path, MAX_FILE_BYTES, &len, NULL, r->err, sizeof(r->err));
    if (!jpeg) {
        r->rc = FWE_ARG;
        return;
    }
    const int runs = c->repeat > 0 ? c->repeat : 1;
    double *v = c->repeat > 0 ? calloc((size_t)runs * 5, sizeof(double)) : NULL;
    if (c->repeat > 0 && !v) {
        snprintf(r->err, sizeof(r->err), "out of memory");
        r->rc = FWE_NOMEM;
        free(jpeg);
        return;
    }
    if (c->repeat > 0) /* warm-up: caches, page faults, the decoder's buffers */
        fw_engine_analyze(e, ws, jpeg, len, want, r->faces, max_faces, &r->nfaces, NULL, NULL,
                          NULL, NULL, 0);
    for (int i = 0; i < runs; i++) {
        r->rc = fw_engine_analyze(e, ws, jpeg, len, want, r->faces, max_faces, &r->nfaces,
                                  &r->width, &r->height, &r->t, r->err, sizeof(r->err));
        if (r->rc != FWE_OK)
            break;
        if (v) {
            v[i] = r->t.decode_ms;
            v[runs + i] = r->t.detect_ms;
            v[2 * runs + i] = r->t.landmarks_ms;
            v[3 * runs + i] = r->t.describe_ms;
            v[4 * runs + i] = r->t.total_ms;
        }
    }
    if (v && r->rc == FWE_OK) {
        r->t.decode_ms = median(v, runs);
        r->t.detect_ms = median(v + runs, runs);
        r->t.landmarks_ms = median(v + 2 * runs, runs);
        r->t.describe_ms = median(v + 3 * runs, runs);
        r->t.total_ms = median(v + 4 * runs, runs);
    }
    free(v);
    free(jpeg);
}

static cJSON *timings_json(const fw_timings *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "decode", round_to(t->decode_ms, 1e-3));
    cJSON_AddNumberToObject(o, "detect", round_to(t->detect_ms, 1e-3));
    cJSON_AddNumberToObject(o, "landmarks", round_to(t->landmarks_ms, 1e-3));
    cJSON_AddNumberToObject(o, "describe", round_to(t->describe_ms, 1e-3));
    cJSON_AddNumberToObject(o, "total", round_to(t->total_ms, 1e-3));
    return o;
}

/* Print one line of JSON and free the object. Returns 0, or -1 when printing failed. */
static int print_json(cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s)
        return -1;
    puts(s);
    cJSON_free(s);
    return 0;
}

static int report_json(const cli *c, const char *path, const result *r, int descriptors)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return -1;
    cJSON_AddStringToObject(o, "image", path);
    if (r->rc != FWE_OK) {
        cJSON_AddStringToObject(o, "error", r->err[0] ? r->err : fw_engine_strerror(r->rc));
        return print_json(o);
    }
    cJSON_AddNumberToObject(o, "width", r->width);
    cJSON_AddNumberToObject(o, "height", r->height);
    cJSON *arr = cJSON_AddArrayToObject(o, "faces");
    for (int i = 0; arr && i < r->nfaces; i++) {
        const fw_face *f = &r->faces[i];
        cJSON *jf = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, jf);
        cJSON *box = cJSON_AddArrayToObject(jf, "box");
        for (int k = 0; k < 4; k++)
            cJSON_AddItemToArray(box, cJSON_CreateNumber(round_to(f->box[k], 0.01)));
        cJSON_AddNumberToObject(jf, "score", round_to(f->score, 1e-4));
        cJSON *lms = cJSON_AddArrayToObject(jf, "landmarks");
        for (int k = 0; k < 68; k++) {
            cJSON *p = cJSON_CreateArray();
            cJSON_AddItemToArray(p, cJSON_CreateNumber(round_to(f->landmarks[2 * k], 0.01)));
            cJSON_AddItemToArray(p, cJSON_CreateNumber(round_to(f->landmarks[2 * k + 1], 0.01)));
            cJSON_AddItemToArray(lms, p);
        }
        if (descriptors) {
            cJSON *d = cJSON_AddArrayToObject(jf, "descriptor");
            for (int k = 0; k < 128; k++)
                cJSON_AddItemToArray(d, cJSON_CreateNumber(round_to(f->descriptor[k], 1e-6)));
        }
    }
    if (c->timings)
        cJSON_AddItemToObject(o, "timings_ms", timings_json(&r->t));
    return print_json(o);
}

static void report_text(const cli *c, const char *path, const result *r, int descriptors)
{
    if (r->rc != FWE_OK) {
        fprintf(stderr, "facewire: %s: %s\n", path, r->err[0] ? r->err : fw_engine_strerror(r->rc));
        return;
    }
    printf("%s: %dx%d, %d face%s\n", path, r->width, r->height, r->nfaces, r->nfaces == 1 ? "" : "s");
    for (int i = 0; i < r->nfaces; i++) {
        const fw_face *f = &r->faces[i];
        printf("  face %d: x %.1f y %.1f w %.1f h %.1f  score %.3f\n", i, f->box[0], f->box[1],
               f->box[2], f->box[3], f->score);
        if (descriptors) {
            printf("    descriptor:");
            for (int k = 0; k < 128; k++)
                printf(" %.4f", f->descriptor[k]);
            printf("\n");
        }
    }
    if (c->timings)
        printf("  timings (ms%s): decode %.2f  detect %.2f  landmarks %.2f  describe %.2f  total %.2f\n",
               c->repeat > 0 ? ", median" : "", r->t.decode_ms, r->t.detect_ms,
               r->t.landmarks_ms, r->t.describe_ms, r->t.total_ms);
}

static int cmd_analyze(const cli *c, const fw_engine *e, fw_engine_ws *ws, char **pics, int n,
                       int descriptors)
{
    const int max_faces = c->opts.max_faces;
    int status = 0;
    result r;
    memset(&r, 0, sizeof(r));
    r.faces = calloc((size_t)max_faces, sizeof(fw_face));
    if (!r.faces) {
        fprintf(stderr, "facewire: out of memory\n");
        return 2;
    }
    const int want = FW_WANT_LANDMARKS | (descriptors ? FW_WANT_DESCRIPTORS : 0);
    for (int i = 0; i < n; i++) {
        analyze_file(c, e, ws, pics[i], want, max_faces, &r);
        if (r.rc != FWE_OK)
            status = 2;
        if (c->json) {
            if (report_json(c, pics[i], &r, descriptors) != 0)
                status = 2;
        } else {
            report_text(c, pics[i], &r, descriptors);
        }
    }
    free(r.faces);
    return status;
}

static int cmd_compare(const cli *c, const fw_engine *e, fw_engine_ws *ws, char **pics, int n)
{
    if (n != 2) {
        fprintf(stderr, "facewire: compare takes exactly two pictures\n");
        return 2;
    }
    fw_face best[2];
    result r[2];
    memset(r, 0, sizeof(r));
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        r[i].faces = &best[i];
        analyze_file(c, e, ws, pics[i], FW_WANT_DESCRIPTORS, 1, &r[i]);
        if (r[i].rc == FWE_OK && r[i].nfaces == 0) {
            r[i].rc = FWE_NO_FACE;
            snprintf(r[i].err, sizeof(r[i].err), "no face found");
        }
        if (r[i].rc != FWE_OK) {
            ok = 0;
            if (c->json) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "image", pics[i]);
                cJSON_AddStringToObject(o, "error", r[i].err[0] ? r[i].err : fw_engine_strerror(r[i].rc));
                print_json(o);
            } else {
                fprintf(stderr, "facewire: %s: %s\n", pics[i],
                        r[i].err[0] ? r[i].err : fw_engine_strerror(r[i].rc));
            }
        }
    }
    if (!ok)
        return 2;
    const float d = fw_descriptor_distance(best[0].descriptor, best[1].descriptor);
    const int same = d < c->threshold;
    if (c->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "a", pics[0]);
        cJSON_AddStringToObject(o, "b", pics[1]);
        cJSON_AddNumberToObject(o, "distance", round_to(d, 1e-6));
        cJSON_AddNumberToObject(o, "threshold", c->threshold);
        cJSON_AddBoolToObject(o, "same", same);
        if (c->timings) {
            cJSON_AddItemToObject(o, "timings_ms_a", timings_json(&r[0].t));
            cJSON_AddItemToObject(o, "timings_ms_b", timings_json(&r[1].t));
        }
        if (print_json(o) != 0)
            return 2;
    } else {
        printf("distance %.4f: %s (threshold %.2f)\n", d, same ? "same" : "different", c->threshold);
    }
    return same ? 0 : 1;
}

static int cmd_draw(const cli *c, const fw_engine *e, fw_engine_ws *ws, char **pics, int n)
{
    if (n != 1 || !c->output) {
        fprintf(stderr, "facewire: draw takes one picture and -o OUT.jpg\n");
        return 2;
    }
    int status = 2;
    result r;
    memset(&r, 0, sizeof(r));
    fw_decoder *dec = NULL;
    uint8_t *jpeg = NULL, *out = NULL;
    size_t len = 0, outlen = 0;
    FILE *f = NULL;
    r.faces = calloc((size_t)c->opts.max_faces, sizeof(fw_face));
    if (!r.faces) {
        fprintf(stderr, "facewire: out of memory\n");
        goto err;
    }
    analyze_file(c, e, ws, pics[0], FW_WANT_LANDMARKS, c->opts.max_faces, &r);
    if (c->json)
        report_json(c, pics[0], &r, 0);
    else
        report_text(c, pics[0], &r, 0);
    if (r.rc != FWE_OK)
        goto err;
    /* the picture itself, at full resolution (the engine may have decoded it reduced) */
    char err[256];
    jpeg = fw_read_file(pics[0], MAX_FILE_BYTES, &len, NULL, err, sizeof(err));
    dec = fw_decoder_new();
    fw_image img;
    const fw_decode_limits lim = {c->opts.max_pixels, c->opts.max_dimension, 0};
    if (!jpeg || !dec || fw_decode_jpeg(dec, jpeg, len, &lim, &img, NULL, err, sizeof(err)) != FWE_OK) {
        fprintf(stderr, "facewire: %s: %s\n", pics[0], jpeg && dec ? err : "cannot read");
        goto err;
    }
    const int longest = img.w > img.h ? img.w : img.h;
    const int thick = longest / 400 > 2 ? longest / 400 : 2;
    const int dot = longest / 500 > 1 ? longest / 500 : 1;
    for (int i = 0; i < r.nfaces; i++) {
        const fw_face *fc = &r.faces[i];
        fw_draw_rect(&img, fc->box[0], fc->box[1], fc->box[2], fc->box[3], thick, 0x00FF00);
        for (int k = 0; k < 68; k++)
            fw_draw_dot(&img, fc->landmarks[2 * k], fc->landmarks[2 * k + 1], dot, 0xFF2020);
    }
    if (fw_jpeg_encode(&img, 90, &out, &outlen, err, sizeof(err)) != FWE_OK) {
        fprintf(stderr, "facewire: %s\n", err);
        goto err;
    }
    f = fopen(c->output, "wb");
    if (!f || fwrite(out, 1, outlen, f) != outlen) {
        fprintf(stderr, "facewire: %s: %s\n", c->output, strerror(errno));
        goto err;
    }
    if (fclose(f) != 0) {
        f = NULL;
        fprintf(stderr, "facewire: %s: %s\n", c->output, strerror(errno));
        goto err;
    }
    f = NULL;
    status = 0;
err:
    if (f)
        fclose(f);
    free(out);
    free(jpeg);
    fw_decoder_free(dec);
    free(r.faces);
    return status;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    cli c;
    memset(&c, 0, sizeof(c));
    c.models = "./models";
    c.threshold = 0.6;
    fw_engine_options_default(&c.opts);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("facewire %s\n", FW_VERSION_STRING);
        return 0;
    }
    c.cmd = argv[1];
    if (strcmp(c.cmd, "detect") && strcmp(c.cmd, "embed") && strcmp(c.cmd, "compare") &&
        strcmp(c.cmd, "draw")) {
        fprintf(stderr, "facewire: unknown command '%s' (try --help)\n", c.cmd);
        return 2;
    }
    enum { O_JSON = 256, O_TIMINGS, O_REPEAT, O_MODELS, O_ALIGN, O_SIZE, O_SCORE, O_THRESHOLD, O_VERSION, O_NO_MIRROR };
    static const struct option longopts[] = {
        {"json", no_argument, NULL, O_JSON},
        {"timings", no_argument, NULL, O_TIMINGS},
        {"repeat", required_argument, NULL, O_REPEAT},
        {"models", required_argument, NULL, O_MODELS},
        {"align", required_argument, NULL, O_ALIGN},
        {"size", required_argument, NULL, O_SIZE},
        {"score", required_argument, NULL, O_SCORE},
        {"threshold", required_argument, NULL, O_THRESHOLD},
        {"no-mirror", no_argument, NULL, O_NO_MIRROR},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, O_VERSION},
        {NULL, 0, NULL, 0},
    };
    int ch;
    double dv;
    optind = 1;
    while ((ch = getopt_long(argc - 1, argv + 1, "o:h", longopts, NULL)) != -1) {
        switch (ch) {
        case O_JSON: c.json = 1; break;
        case O_TIMINGS: c.timings = 1; break;
        case O_REPEAT:
            if (parse_int(optarg, 1, 100000, &c.repeat) != 0) {
                fprintf(stderr, "facewire: --repeat wants a count in 1..100000\n");
                return 2;
            }
            break;
        case O_MODELS: c.models = optarg; break;
        case O_ALIGN:
            if (!strcmp(optarg, "similarity"))
                c.opts.align = FW_ALIGN_SIMILARITY;
            else if (!strcmp(optarg, "box"))
                c.opts.align = FW_ALIGN_BOX;
            else {
                fprintf(stderr, "facewire: --align is similarity or box\n");
                return 2;
            }
            break;
        case O_SIZE:
            if (parse_int(optarg, 32, 1024, &c.opts.detector_size) != 0 || c.opts.detector_size % 32) {
                fprintf(stderr, "facewire: --size wants a multiple of 32 in 32..1024\n");
                return 2;
            }
            break;
        case O_SCORE:
            if (parse_double(optarg, 1e-6, 1.0, &dv) != 0) {
                fprintf(stderr, "facewire: --score wants a number in (0, 1]\n");
                return 2;
            }
            c.opts.score_threshold = (float)dv;
            break;
        case O_THRESHOLD:
            if (parse_double(optarg, 0.0, 100.0, &c.threshold) != 0) {
                fprintf(stderr, "facewire: --threshold wants a non-negative number\n");
                return 2;
            }
            break;
        case O_NO_MIRROR: c.opts.detect_mirror = 0; break;
        case 'o': c.output = optarg; break;
        case 'h': usage(stdout); return 0;
        case O_VERSION: printf("facewire %s\n", FW_VERSION_STRING); return 0;
        default: usage(stderr); return 2;
        }
    }
    char **pics = argv + 1 + optind;
    const int npics = argc - 1 - optind;
    if (npics < 1) {
        fprintf(stderr, "facewire: %s: no picture given (try --help)\n", c.cmd);
        return 2;
    }
    if (c.output && strcmp(c.cmd, "draw")) {
        fprintf(stderr, "facewire: -o is for draw\n");
        return 2;
    }

    fw_engine *e = NULL;
    char err[256];
    fw_engine_err rc = fw_engine_open(c.models, &c.opts, &e, err, sizeof(err));
    if (rc != FWE_OK) {
        fprintf(stderr, "facewire: cannot load models from %s: %s\n", c.models, err);
        return 2;
    }
    fw_engine_ws *ws = fw_engine_ws_new(e);
    if (!ws) {
        fprintf(stderr, "facewire: out of memory\n");
        fw_engine_close(e);
        return 2;
    }
    int status;
    if (!strcmp(c.cmd, "detect"))
        status = cmd_analyze(&c, e, ws, pics, npics, 0);
    else if (!strcmp(c.cmd, "embed"))
        status = cmd_analyze(&c, e, ws, pics, npics, 1);
    else if (!strcmp(c.cmd, "compare"))
        status = cmd_compare(&c, e, ws, pics, npics);
    else
        status = cmd_draw(&c, e, ws, pics, npics);
    fw_engine_ws_free(ws);
    fw_engine_close(e);
    if (fflush(stdout) != 0 && status == 0)
        status = 2;
    return status;
}
