/*
 * test_engine_nets.c — the three networks against face-api's golden outputs, the detector
 * decoder, and the weight loader's refusal of damaged model files.
 *
 * Golden data: $FW_SHARED/golden (default ../shared), described by its manifest.json; every
 * case listed there is run. Models: $FW_MODELS (default models). The damaged-model tests copy
 * the models into a fresh temporary directory, break one thing, and assert the exact error.
 * The nn_* tests check every convolution path (im2col GEMM, 1x1, Winograd, the direct 3->16
 * kernel, the 1x1-map shortcut, separable) against a naive loop on shapes, strides and
 * paddings the golden networks do not all reach. Several threads share one fw_nets (each with
 * its own workspace), hence the TSan run.
 */
// run-under: tsan
#include "engine/nets.h"
#include "engine/nn.h"
#include "tests/check.h"
#include "tests/tu_data.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reads a whole file of exactly want bytes (want 0: any size up to 16 MB). */
static void *slurp(const char *path, size_t want, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = want ? want : (size_t)16 << 20;
    unsigned char *buf = malloc(cap + 1);
    size_t n = buf ? fread(buf, 1, cap + 1, f) : 0;
    fclose(f);
    if (!buf || (want && n != want) || n > cap) {
        free(buf);
        return NULL;
    }
    buf[n < cap + 1 ? n : cap] = 0;
    if (len)
        *len = n;
    return buf;
}

static void *golden_file(const char *rel, size_t want)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/golden/%s", tu_shared_dir(), rel);
    return slurp(path, want, NULL);
}

static cJSON *golden_manifest(void)
{
    size_t len;
    char *txt = golden_file("manifest.json", 0);
    if (!txt)
        return NULL;
    len = strlen(txt);
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    return root;
}

static const char *case_str(const cJSON *c, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double case_num(const cJSON *c, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static fw_nets *load_nets(void)
{
    char err[256] = "";
    fw_nets *n = NULL;
    if (fw_nets_load(tu_models_dir(), &n, err, sizeof err) != 0)
        fprintf(stderr, "  fw_nets_load: %s\n", err);
    return n;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) /* NaN counts as a difference */
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* ---- golden: recognition ------------------------------------------------------------------ */

static void t_recognition_golden(void)
{
    cJSON *man = golden_manifest();
    fw_nets *nets = load_nets();
    fw_nets_ws *ws = nets ? fw_nets_ws_new(nets, 416) : NULL;
    const cJSON *cases = man ? cJSON_GetObjectItemCaseSensitive(man, "recognition") : NULL;
    int ok = man && nets && ws && cJSON_GetArraySize(cases) > 0, count = 0;
    double worst = 0, worst_l2 = 0;
    const cJSON *c;
    const cJSON *list = ok ? cases : NULL;
    int ncases = cJSON_GetArraySize(list);
    cJSON_ArrayForEach(c, list) {
        uint8_t *rgb = golden_file(case_str(c, "input"), 150 * 150 * 3);
        float *want = golden_file(case_str(c, "output"), 128 * sizeof(float)), got[128];
        int rc = rgb && want ? fw_recog_run(nets, ws, rgb, got) : -2;
        double md = rc == 0 ? max_abs_diff(got, want, 128) : INFINITY, l2 = 0;
        for (int i = 0; rc == 0 && i < 128; i++)
            l2 += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        l2 = sqrt(l2);
        free(rgb);
        free(want);
        if (rc != 0 || !(md <= 1e-3) || !(l2 <= 1e-3)) {
            fprintf(stderr, "  %s: rc %d max|diff| %g L2 %g\n", case_str(c, "input"), rc, md, l2);
            ok = 0;
            break;
        }
        worst = md > worst ? md : worst;
        worst_l2 = l2 > worst_l2 ? l2 : worst_l2;
        count++;
    }
    printf("  recognition: %d cases, max|diff| %.3g, max L2 %.3g\n", count, worst, worst_l2);
    fw_nets_ws_free(ws);
    fw_nets_free(nets);
    cJSON_Delete(man);
    CHECK(ok);
    CHECK(count == ncases);
}

/* ---- golden: landmarks -------------------------------------------------------------------- */

static void t_landmark_golden(void)
{
    cJSON *man = golden_manifest();
    fw_nets *nets = load_nets();
    fw_nets_ws *ws = nets ? fw_nets_ws_new(nets, 416) : NULL;
    const cJSON *cases = man ? cJSON_GetObjectItemCaseSensitive(man, "landmark68") : NULL;
    int ok = man && nets && ws && cJSON_GetArraySize(cases) > 0, count = 0;
    double worst = 0;
    const cJSON *c;
    const cJSON *list = ok ? cases : NULL;
    int ncases = cJSON_GetArraySize(list);
    cJSON_ArrayForEach(c, list) {
        uint8_t *rgb = golden_file(case_str(c, "input"), 112 * 112 * 3);
        float *want = golden_file(case_str(c, "output"), 136 * sizeof(float)), got[136];
        int rc = rgb && want ? fw_landmark68_run(nets, ws, rgb, got) : -2;
        double md = rc == 0 ? max_abs_diff(got, want, 136) : INFINITY;
        free(rgb);
        free(want);
        if (rc != 0 || !(md <= 1e-3)) {
            fprintf(stderr, "  %s: rc %d max|diff| %g\n", case_str(c, "input"), rc, md);
            ok = 0;
            break;
        }
        worst = md > worst ? md : worst;
        count++;
    }
    printf("  landmark68: %d cases, max|diff| %.3g\n", count, worst);
    fw_nets_ws_free(ws);
    fw_nets_free(nets);
    cJSON_Delete(man);
    CHECK(ok);
    CHECK(count == ncases);
}

/* ---- golden: detector --------------------------------------------------------------------- */

static double iou(const fw_det_box *a, double x, double y, double w, double h)
{
    double iw = fmin(a->x + a->w, x + w) - fmax(a->x, x);
    double ih = fmin(a->y + a->h, y + h) - fmax(a->y, y);
    if (iw <= 0 || ih <= 0)
        return 0;
    return iw * ih / ((double)a->w * a->h + w * h - iw * ih);
}

static void t_detector_golden(void)
{
    cJSON *man = golden_manifest();
    fw_nets *nets = load_nets();
    fw_nets_ws *ws = nets ? fw_nets_ws_new(nets, 416) : NULL;
    const cJSON *cases = man ? cJSON_GetObjectItemCaseSensitive(man, "tiny_detector") : NULL;
    int ok = man && nets && ws && cJSON_GetArraySize(cases) > 0, count = 0, nbox = 0;
    double worst = 0, worst_iou = 1;
    const size_t gn = 13 * 13 * 25;
    const cJSON *c;
    const cJSON *list = ok ? cases : NULL;
    int ncases = cJSON_GetArraySize(list);
    cJSON_ArrayForEach(c, list) {
        uint8_t *rgb = golden_file(case_str(c, "input"), 416 * 416 * 3);
        float *want = golden_file(case_str(c, "output"), gn * sizeof(float)), got[13 * 13 * 25];
        int rc = rgb && want ? fw_tinydet_run(nets, ws, rgb, 416, got) : -2;
        double md = rc == 0 ? max_abs_diff(got, want, gn) : INFINITY;
        free(rgb);
        free(want);
        if (rc != 0 || !(md <= 2e-3)) {
            fprintf(stderr, "  %s: rc %d grid max|diff| %g\n", case_str(c, "input"), rc, md);
            ok = 0;
            break;
        }
        worst = md > worst ? md : worst;

        fw_det_box boxes[64];
        int n = fw_tinydet_decode(got, 416, (float)case_num(c, "score_threshold"),
                                  (float)case_num(c, "iou_threshold"), boxes, 64);
        const cJSON *gb = cJSON_GetObjectItemCaseSensitive(c, "boxes");
        if (n != cJSON_GetArraySize(gb)) {
            fprintf(stderr, "  %s: %d boxes, golden %d\n", case_str(c, "input"), n,
                    cJSON_GetArraySize(gb));
            ok = 0;
            break;
        }
        /* Same order too: both are sorted by score. */
        int i = 0;
        const cJSON *b;
        cJSON_ArrayForEach(b, gb) {
            double v = iou(&boxes[i], case_num(b, "x"), case_num(b, "y"), case_num(b, "w"),
                           case_num(b, "h"));
            if (!(v >= 0.98) || !(fabs(boxes[i].score - case_num(b, "score")) <= 1e-3)) {
                fprintf(stderr, "  %s box %d: IoU %g score %g vs %g\n", case_str(c, "input"), i,
                        v, boxes[i].score, case_num(b, "score"));
                ok = 0;
            }
            worst_iou = v < worst_iou ? v : worst_iou;
            i++;
        }
        nbox += n;
        count++;
    }
    printf("  tiny_detector: %d cases, grid max|diff| %.3g, %d boxes, min IoU %.5f\n", count,
           worst, nbox, worst_iou);
    fw_nets_ws_free(ws);
    fw_nets_free(nets);
    cJSON_Delete(man);
    CHECK(ok);
    CHECK(count == ncases);
}

/* ---- one fw_nets, several threads ---------------------------------------------------------- */

/* Each thread has its own workspace and runs all three nets on its own inputs; the results
 * must be exactly what one thread alone computes (the model is shared read-only). */
struct share_job {
    const fw_nets *nets;
    const uint8_t *rec, *lm, *det;
    float desc[128], marks[136], grid[13 * 13 * 25];
    int rc;
};

static void *share_thread(void *arg)
{
    struct share_job *j = arg;
    fw_nets_ws *ws = fw_nets_ws_new(j->nets, 416);
    j->rc = -1;
    for (int rep = 0; ws && rep < 3; rep++) {
        if (fw_recog_run(j->nets, ws, j->rec, j->desc) != 0 ||
            fw_landmark68_run(j->nets, ws, j->lm, j->marks) != 0 ||
            fw_tinydet_run(j->nets, ws, j->det, 416, j->grid) != 0)
            break;
        j->rc = rep == 2 ? 0 : -1;
    }
    fw_nets_ws_free(ws);
    return NULL;
}

static void t_threads_share_nets(void)
{
    enum { N = 3 };
    static const char *const rec[N] = { "recognition/chip00.rgb", "recognition/chip01.rgb",
                                        "recognition/chip02.rgb" };
    static const char *const lm[N] = { "landmark68/chip00.rgb", "landmark68/chip01.rgb",
                                       "landmark68/chip02.rgb" };
    static const char *const det[N] = { "tiny_detector/sample1.rgb", "tiny_detector/sample2.rgb",
                                        "tiny_detector/sample3.rgb" };
    fw_nets *nets = load_nets();
    struct share_job *jobs = calloc(2 * N, sizeof *jobs); /* N threaded, then N alone */
    void *bufs[3 * N] = { 0 };
    int ok = nets && jobs;
    for (int i = 0; ok && i < N; i++) {
        bufs[3 * i] = golden_file(rec[i], 150 * 150 * 3);
        bufs[3 * i + 1] = golden_file(lm[i], 112 * 112 * 3);
        bufs[3 * i + 2] = golden_file(det[i], 416 * 416 * 3);
        ok = bufs[3 * i] && bufs[3 * i + 1] && bufs[3 * i + 2];
        for (int k = 0; k < 2; k++) {
            struct share_job *j = &jobs[k * N + i];
            j->nets = nets;
            j->rec = bufs[3 * i];
            j->lm = bufs[3 * i + 1];
            j->det = bufs[3 * i + 2];
        }
    }
    pthread_t th[N];
    int started = 0;
    for (; ok && started < N; started++)
        if (pthread_create(&th[started], NULL, share_thread, &jobs[started]) != 0)
            break;
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    ok = ok && started == N;
    for (int i = 0; ok && i < N; i++) {
        share_thread(&jobs[N + i]);
        const struct share_job *t = &jobs[i], *a = &jobs[N + i];
        ok = t->rc == 0 && a->rc == 0 && memcmp(t->desc, a->desc, sizeof t->desc) == 0 &&
             memcmp(t->marks, a->marks, sizeof t->marks) == 0 &&
             memcmp(t->grid, a->grid, sizeof t->grid) == 0;
    }
    for (int i = 0; i < 3 * N; i++)
        free(bufs[i]);
    free(jobs);
    fw_nets_free(nets);
    CHECK(ok);
}

/* ---- pause points --------------------------------------------------------------------------- */

struct pause_count {
    int calls;
};

static void count_pause(void *arg)
{
    ((struct pause_count *)arg)->calls++;
}

/* Each net calls the workspace's pause hook many times per pass (the detector once per band
 * of rows, the others inside and after every conv), with the caller's arg, and computes
 * exactly what it computes without one; a hook set back to NULL is not called. */
static void t_pause_points(void)
{
    fw_nets *nets = load_nets();
    fw_nets_ws *plain = nets ? fw_nets_ws_new(nets, 416) : NULL;
    fw_nets_ws *paused = nets ? fw_nets_ws_new(nets, 416) : NULL;
    uint8_t *rec = golden_file("recognition/chip00.rgb", 150 * 150 * 3);
    uint8_t *lm = golden_file("landmark68/chip00.rgb", 112 * 112 * 3);
    uint8_t *det = golden_file("tiny_detector/sample1.rgb", 416 * 416 * 3);
    static float d0[128], d1[128], m0[136], m1[136], g0[13 * 13 * 25], g1[13 * 13 * 25];
    struct pause_count pc = { 0 };
    CHECK(nets && plain && paused && rec && lm && det);
    fw_nets_ws_set_pause(paused, (fw_pause){ count_pause, &pc });

    CHECK_EQ_INT(fw_recog_run(nets, plain, rec, d0), 0);
    CHECK_EQ_INT(fw_recog_run(nets, paused, rec, d1), 0);
    int rec_calls = pc.calls;
    CHECK(memcmp(d0, d1, sizeof d0) == 0);
    CHECK_EQ_INT(fw_landmark68_run(nets, plain, lm, m0), 0);
    CHECK_EQ_INT(fw_landmark68_run(nets, paused, lm, m1), 0);
    int lm_calls = pc.calls - rec_calls;
    CHECK(memcmp(m0, m1, sizeof m0) == 0);
    CHECK_EQ_INT(fw_tinydet_run(nets, plain, det, 416, g0), 0);
    CHECK_EQ_INT(fw_tinydet_run(nets, paused, det, 416, g1), 0);
    int det_calls = pc.calls - rec_calls - lm_calls;
    CHECK(memcmp(g0, g1, sizeof g0) == 0);
    printf("  pause points per pass: recognition %d, landmarks %d, detector at 416 %d\n",
           rec_calls, lm_calls, det_calls);
    /* at least one per conv of the recognition net (33) and of the landmark net (16); the
     * detector's conv0 alone is 104 bands of 2 pooled rows */
    CHECK_MSG(rec_calls > 33, "recognition: %d", rec_calls);
    CHECK_MSG(lm_calls >= 16, "landmarks: %d", lm_calls);
    CHECK_MSG(det_calls > 104, "detector: %d", det_calls);

    fw_nets_ws_set_pause(paused, (fw_pause){ NULL, &pc });
    int before = pc.calls;
    CHECK_EQ_INT(fw_recog_run(nets, paused, rec, d1), 0);
    CHECK_EQ_INT(pc.calls, before);
    CHECK(memcmp(d0, d1, sizeof d0) == 0);
    free(rec);
    free(lm);
    free(det);
    fw_nets_ws_free(plain);
    fw_nets_ws_free(paused);
    fw_nets_free(nets);
}

/* ---- API edges ---------------------------------------------------------------------------- */

static void t_detector_sizes(void)
{
    fw_nets *nets = load_nets();
    CHECK(nets);
    CHECK(fw_nets_ws_new(nets, 0) == NULL);
    CHECK(fw_nets_ws_new(nets, 100) == NULL);
    CHECK(fw_nets_ws_new(nets, 1056) == NULL);
    fw_nets_ws *ws = fw_nets_ws_new(nets, 64);
    uint8_t *rgb = calloc(128 * 128 * 3, 1);
    float grid[2 * 2 * 25]; /* size 64: 2 x 2 cells */
    int ok = ws && rgb;
    /* not a multiple of 32; larger than the workspace; the smallest size works */
    ok = ok && fw_tinydet_run(nets, ws, rgb, 48, grid) == -1;
    ok = ok && fw_tinydet_run(nets, ws, rgb, 128, grid) == -1;
    ok = ok && fw_tinydet_run(nets, ws, rgb, 32, grid) == 0;
    ok = ok && fw_tinydet_run(nets, ws, rgb, 64, grid) == 0;
    for (int i = 0; ok && i < 2 * 2 * 25; i++)
        ok = isfinite(grid[i]);
    free(rgb);
    fw_nets_ws_free(ws);
    fw_nets_free(nets);
    CHECK(ok);
}

/* One workspace for the largest size serves every smaller one (ASan sees any overrun). */
static void t_detector_all_sizes(void)
{
    static const int sizes[] = { 1024, 32, 96, 608 };
    fw_nets *nets = load_nets();
    fw_nets_ws *ws = nets ? fw_nets_ws_new(nets, 1024) : NULL;
    uint8_t *rgb = malloc(1024 * 1024 * 3);
    float *grid = malloc(32 * 32 * 25 * sizeof(float));
    int ok = ws && rgb && grid;
    for (size_t i = 0; ok && i < 1024 * 1024 * 3; i++)
        rgb[i] = (uint8_t)(i * 7 + i / 3072);
    for (size_t s = 0; ok && s < sizeof sizes / sizeof sizes[0]; s++) {
        int n = (sizes[s] / 32) * (sizes[s] / 32) * 25;
        ok = fw_tinydet_run(nets, ws, rgb, sizes[s], grid) == 0;
        for (int i = 0; ok && i < n; i++)
            ok = isfinite(grid[i]);
        if (!ok)
            fprintf(stderr, "  size %d failed\n", sizes[s]);
    }
    free(rgb);
    free(grid);
    fw_nets_ws_free(ws);
    fw_nets_free(nets);
    CHECK(ok);
}

/* A hand-made 2x2 grid (size 64): two overlapping boxes and one apart. */
static void t_decode_nms(void)
{
    float grid[2 * 2 * 25];
    for (int i = 0; i < 2 * 2 * 5; i++) {
        float *g = grid + i * 5;
        g[0] = g[1] = g[2] = g[3] = 0.0f;
        g[4] = -10.0f; /* score ~ 4.5e-5 */
    }
    /* cell (0,0) anchor 0 and anchor 2: centres both at (16,16); anchor 2 is bigger. */
    grid[(0 * 5 + 0) * 5 + 4] = 2.0f;  /* 0.881 */
    grid[(0 * 5 + 2) * 5 + 4] = 1.0f;  /* 0.731, IoU with the first = 0.248 ... */
    grid[(0 * 5 + 2) * 5 + 2] = -0.5f; /* ... until shrunk: then it overlaps a lot */
    grid[(0 * 5 + 2) * 5 + 3] = -0.5f;
    grid[(3 * 5 + 1) * 5 + 4] = 0.5f;  /* cell (1,1): 0.622, far away */
    fw_det_box b[8];
    int n = fw_tinydet_decode(grid, 64, 0.5f, 0.4f, b, 8);
    CHECK_EQ_INT(n, 2);
    CHECK_NEAR(b[0].score, 1.0 / (1.0 + exp(-2.0)), 1e-6);
    CHECK_NEAR(b[0].x + b[0].w / 2, 16.0, 1e-4);
    CHECK_NEAR(b[0].w, 1.603231 * 32, 1e-3);
    CHECK_NEAR(b[0].h, 2.094468 * 32, 1e-3);
    CHECK_NEAR(b[1].score, 1.0 / (1.0 + exp(-0.5)), 1e-6);
    CHECK_NEAR(b[1].x + b[1].w / 2, 48.0, 1e-4);
    CHECK_NEAR(b[1].y + b[1].h / 2, 48.0, 1e-4);
    /* max_boxes caps the output; a higher threshold drops the weaker box */
    CHECK_EQ_INT(fw_tinydet_decode(grid, 64, 0.5f, 0.4f, b, 1), 1);
    CHECK_EQ_INT(fw_tinydet_decode(grid, 64, 0.7f, 0.4f, b, 8), 1);
    /* with NMS off (IoU threshold 1) the overlapping box comes back */
    CHECK_EQ_INT(fw_tinydet_decode(grid, 64, 0.5f, 1.0f, b, 8), 3);
    CHECK_EQ_INT(fw_tinydet_decode(grid, 48, 0.5f, 0.4f, b, 8), 0);
    CHECK_EQ_INT(fw_tinydet_decode(grid, 2048, 0.5f, 0.4f, b, 8), 0);
}

/* ---- nn: every convolution path against a naive loop ----------------------------------------- */

/* Deterministic values in [-1, 1). */
static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

static float ref_act(float v, enum nn_act act)
{
    if (act == NN_ACT_RELU)
        return v > 0 ? v : 0;
    if (act == NN_ACT_LEAKY)
        return v > 0 ? v : 0.1f * v;
    return v;
}

static void ref_conv(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t, int pad_l,
                     enum nn_act act, nn_tensor *out)
{
    for (int oy = 0; oy < out->h; oy++)
        for (int ox = 0; ox < out->w; ox++)
            for (int o = 0; o < cv->cout; o++) {
                double acc = cv->b[o];
                for (int ky = 0; ky < cv->kh; ky++)
                    for (int kx = 0; kx < cv->kw; kx++) {
                        int iy = oy * stride - pad_t + ky, ix = ox * stride - pad_l + kx;
                        if (iy < 0 || iy >= in->h || ix < 0 || ix >= in->w)
                            continue;
                        for (int c = 0; c < cv->cin; c++)
                            acc += (double)in->d[((size_t)iy * in->w + ix) * cv->cin + c] *
                                   cv->w[((size_t)(ky * cv->kw + kx) * cv->cin + c) * cv->cout + o];
                    }
                out->d[((size_t)oy * out->w + ox) * cv->cout + o] = ref_act((float)acc, act);
            }
}

/* Runs one conv configuration through nn_conv2d (optionally Winograd) and the reference. */
static double conv_case(int h, int w, int k, int cin, int cout, int stride, int pad_t, int pad_l,
                        enum nn_act act, int winograd)
{
    /* the same padding after as before */
    int oh = (h + 2 * pad_t - k) / stride + 1, ow = (w + 2 * pad_l - k) / stride + 1;
    size_t nin = (size_t)h * w * cin, nw = (size_t)k * k * cin * cout, nout = (size_t)oh * ow * cout;
    float *x = malloc(nin * 4), *y = malloc(nout * 4), *r = malloc(nout * 4);
    float *col = malloc(NN_COL_FLOATS * 4);
    nn_conv cv = { k, k, cin, cout, malloc(nw * 4), malloc((size_t)cout * 4), NULL };
    double md = INFINITY;
    if (!x || !y || !r || !col || !cv.w || !cv.b)
        goto done;
    fill(x, nin, 1);
    fill(cv.w, nw, 2);
    fill(cv.b, (size_t)cout, 3);
    if (winograd && nn_conv_winograd_prepare(&cv) != 0)
        goto done;
    nn_tensor in = { x, h, w, cin }, out = { y, oh, ow, cout }, ref = { r, oh, ow, cout };
    nn_conv2d(&in, &cv, stride, pad_t, pad_l, act, col, &out);
    ref_conv(&in, &cv, stride, pad_t, pad_l, act, &ref);
    md = max_abs_diff(y, r, nout);
done:
    free(x);
    free(y);
    free(r);
    free(col);
    free(cv.w);
    free(cv.b);
    free(cv.wu);
    return md;
}

static void t_nn_conv_paths(void)
{
    static const struct {
        int h, w, k, cin, cout, stride, pad_t, pad_l, act, wino;
    } cases[] = {
        { 9, 7, 3, 5, 6, 1, 1, 1, NN_ACT_NONE, 0 },    /* im2col, pad on every side */
        { 10, 11, 3, 4, 8, 2, 0, 0, NN_ACT_RELU, 0 },  /* stride 2 valid, odd width */
        { 12, 12, 3, 4, 8, 2, 0, 0, NN_ACT_LEAKY, 0 }, /* stride 2 valid, even size */
        { 9, 9, 7, 3, 32, 2, 0, 0, NN_ACT_RELU, 0 },   /* the recognition stem's shape */
        { 6, 5, 1, 24, 40, 1, 0, 0, NN_ACT_LEAKY, 0 }, /* 1x1: a plain GEMM */
        { 7, 9, 3, 16, 24, 1, 1, 1, NN_ACT_RELU, 1 },  /* Winograd, odd sizes: partial tiles */
        { 8, 8, 3, 32, 32, 1, 1, 1, NN_ACT_NONE, 1 },  /* Winograd, even */
        { 1, 1, 3, 64, 48, 1, 1, 1, NN_ACT_RELU, 0 },  /* 1x1 map: centre tap only */
        { 1, 1, 3, 16, 16, 1, 1, 1, NN_ACT_RELU, 1 },  /* 1x1 map with a Winograd conv */
        { 20, 21, 3, 3, 16, 1, 0, 0, NN_ACT_LEAKY, 0 }, /* direct 3->16, valid */
        { 20, 21, 3, 3, 16, 1, 1, 1, NN_ACT_RELU, 0 },  /* direct 3->16, border windows */
        { 21, 20, 3, 3, 16, 2, 0, 0, NN_ACT_NONE, 0 },  /* direct 3->16, stride 2 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double md = conv_case(cases[i].h, cases[i].w, cases[i].k, cases[i].cin, cases[i].cout,
                              cases[i].stride, cases[i].pad_t, cases[i].pad_l,
                              (enum nn_act)cases[i].act, cases[i].wino);
        CHECK_MSG(md <= 1e-4, "conv case %zu: max|diff| %g", i, md);
    }
}

static void t_nn_sepconv(void)
{
    /* 9x8x8 -> 5x4x12 at stride 2 with TF "same" padding */
    int h = 9, w = 8, cin = 8, cout = 12, pt, pl;
    int oh = nn_same_pad(h, 3, 2, &pt), ow = nn_same_pad(w, 3, 2, &pl);
    CHECK_EQ_INT(oh, 5);
    CHECK_EQ_INT(ow, 4);
    CHECK_EQ_INT(pt, 1); /* total 2: one on each side */
    CHECK_EQ_INT(pl, 0); /* total 1: after only */
    float x[9 * 8 * 8], dw[9 * 8], pw[8 * 12], b[12], y[5 * 4 * 12], r[5 * 4 * 12];
    float *col = malloc(NN_COL_FLOATS * 4);
    CHECK(col);
    fill(x, sizeof x / 4, 4);
    fill(dw, sizeof dw / 4, 5);
    fill(pw, sizeof pw / 4, 6);
    fill(b, 12, 7);
    nn_sepconv sc = { cin, cout, dw, pw, b };
    nn_tensor in = { x, h, w, cin }, out = { y, oh, ow, cout };
    nn_sepconv2d(&in, &sc, 2, pt, pl, NN_ACT_LEAKY, col, &out);
    free(col);
    for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++) {
            double mid[8] = { 0 };
            for (int c = 0; c < cin; c++)
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) {
                        int iy = oy * 2 - pt + ky, ix = ox * 2 - pl + kx;
                        if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                            mid[c] += (double)x[(iy * w + ix) * cin + c] * dw[(ky * 3 + kx) * cin + c];
                    }
            for (int o = 0; o < cout; o++) {
                double acc = b[o];
                for (int c = 0; c < cin; c++)
                    acc += mid[c] * pw[c * cout + o];
                r[(oy * ow + ox) * cout + o] = ref_act((float)acc, NN_ACT_LEAKY);
            }
        }
    CHECK(max_abs_diff(y, r, sizeof y / 4) <= 1e-5);
}

static void t_nn_maxpool_same(void)
{
    /* 3x3 map, 2x2 pool stride 2 "same": the right column and bottom row pool alone, and
     * padding never wins even when everything is negative. */
    float x[9] = { -5, -4, -3, -2, -1, -6, -7, -8, -9 }, y[4];
    int pad, o = nn_same_pad(3, 2, 2, &pad);
    CHECK_EQ_INT(o, 2);
    CHECK_EQ_INT(pad, 0);
    nn_tensor in = { x, 3, 3, 1 }, out = { y, 2, 2, 1 };
    nn_maxpool(&in, 2, 2, pad, pad, &out);
    CHECK(y[0] == -1 && y[1] == -3 && y[2] == -7 && y[3] == -9);
}

/* ---- loader errors ------------------------------------------------------------------------ */

static const char *const model_files[] = {
    "tiny_face_detector_model-weights_manifest.json", "tiny_face_detector_model.bin",
    "face_landmark_68_model-weights_manifest.json",   "face_landmark_68_model.bin",
    "face_recognition_model-weights_manifest.json",   "face_recognition_model.bin",
};
#define N_MODEL_FILES ((int)(sizeof model_files / sizeof model_files[0]))

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int rc = fwrite(data, 1, len, f) == len ? 0 : -1;
    return fclose(f) == 0 ? rc : -1;
}

/* A temporary copy of the models directory; dir receives its path. */
static int copy_models(char dir[64])
{
    snprintf(dir, 64, "/tmp/fw-nets-test-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    for (int i = 0; i < N_MODEL_FILES; i++) {
        char src[4096], dst[256];
        size_t len;
        snprintf(src, sizeof src, "%s/%s", tu_models_dir(), model_files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, model_files[i]);
        void *data = slurp(src, 0, &len);
        int rc = data ? write_file(dst, data, len) : -1;
        free(data);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static void remove_models(const char *dir)
{
    for (int i = 0; i < N_MODEL_FILES; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s/%s", dir, model_files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Replaces the first occurrence of from with to in dir/file. */
static int edit_file(const char *dir, const char *file, const char *from, const char *to)
{
    char p[256];
    size_t len;
    snprintf(p, sizeof p, "%s/%s", dir, file);
    char *s = slurp(p, 0, &len);
    char *at = s ? strstr(s, from) : NULL;
    int rc = -1;
    if (at) {
        size_t head = (size_t)(at - s), fl = strlen(from), tl = strlen(to);
        char *out = malloc(len - fl + tl);
        if (out) {
            memcpy(out, s, head);
            memcpy(out + head, to, tl);
            memcpy(out + head + tl, at + fl, len - head - fl);
            rc = write_file(p, out, len - fl + tl);
            free(out);
        }
    }
    free(s);
    return rc;
}

static int truncate_file(const char *dir, const char *file, long drop)
{
    char p[256];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, file);
    if (stat(p, &st) != 0)
        return -1;
    return truncate(p, st.st_size - drop);
}

/* Loads dir and returns the error (empty on success, which the callers treat as a failure). */
static void load_err(const char *dir, char *err, size_t errlen)
{
    fw_nets *n = NULL;
    err[0] = 0;
    if (fw_nets_load(dir, &n, err, errlen) == 0) {
        snprintf(err, errlen, "(loaded)");
        fw_nets_free(n);
    } else if (n) {
        snprintf(err, errlen, "(failed but returned a model)");
    }
}

static void t_load_ok_copy(void)
{
    char dir[64], err[256];
    CHECK(copy_models(dir) == 0);
    load_err(dir, err, sizeof err);
    remove_models(dir);
    CHECK_EQ_STR(err, "(loaded)");
}

static void t_load_missing_file(void)
{
    char dir[64], err[256], p[256];
    CHECK(copy_models(dir) == 0);
    snprintf(p, sizeof p, "%s/face_landmark_68_model.bin", dir);
    unlink(p);
    load_err(dir, err, sizeof err);
    remove_models(dir);
    char want[256];
    snprintf(want, sizeof want,
             "face_landmark_68_model: cannot open %s/face_landmark_68_model.bin: "
             "No such file or directory", dir);
    CHECK_EQ_STR(err, want);
}

static void t_load_missing_dir(void)
{
    char err[256];
    load_err("/nonexistent-fw-models", err, sizeof err);
    CHECK_EQ_STR(err, "tiny_face_detector_model: cannot open /nonexistent-fw-models/"
                      "tiny_face_detector_model-weights_manifest.json: No such file or directory");
}

static void t_load_truncated_bin(void)
{
    char dir[64], err[256];
    CHECK(copy_models(dir) == 0);
    int rc = truncate_file(dir, "face_recognition_model.bin", 100);
    load_err(dir, err, sizeof err);
    remove_models(dir);
    CHECK(rc == 0);
    /* fc is the last tensor: 256 x 128 uint8 at offset 6444032 - 32768 */
    CHECK_EQ_STR(err, "face_recognition_model: weights file truncated (tensor fc needs 32768 "
                      "bytes at offset 6411264, file has 6443932)");
}

static void t_load_trailing_bytes(void)
{
    char dir[64], err[256], p[256];
    CHECK(copy_models(dir) == 0);
    snprintf(p, sizeof p, "%s/tiny_face_detector_model.bin", dir);
    FILE *f = fopen(p, "ab");
    int ok = f && fwrite("xyz", 1, 3, f) == 3;
    if (f)
        fclose(f);
    load_err(dir, err, sizeof err);
    remove_models(dir);
    CHECK(ok);
    CHECK_EQ_STR(err, "tiny_face_detector_model: weights file has 3 trailing bytes");
}

static void t_load_wrong_shape(void)
{
    char dir[64], err[256];
    CHECK(copy_models(dir) == 0);
    /* conv1's pointwise filter claims 32 -> 16 instead of 16 -> 32: the same byte count, so
     * only the architecture check can notice */
    int rc = edit_file(dir, "tiny_face_detector_model-weights_manifest.json",
                       "\"shape\":[1,1,16,32]", "\"shape\":[1,1,32,16]");
    load_err(dir, err, sizeof err);
    remove_models(dir);
    CHECK(rc == 0);
    CHECK_EQ_STR(err, "tiny_face_detector_model: tensor conv1/pointwise_filter has shape "
                      "[1,1,32,16], expected [1,1,16,32]");
}

static void t_load_shape_changes_size(void)
{
    char dir[64], err[256];
    CHECK(copy_models(dir) == 0);
    /* 16 -> 16 instead of 16 -> 32: the manifest now accounts for fewer bytes than the file */
    int rc = edit_file(dir, "tiny_face_detector_model-weights_manifest.json",
                       "\"shape\":[1,1,16,32]", "\"shape\":[1,1,16,16]");
    load_err(dir, err, sizeof err);
    remove_models(dir);
    CHECK(rc == 0);
    CHECK_EQ_STR(err, "tiny_face_detector_model: weights file has 256 trailing bytes");
}

static void t_load_renamed_tensor(void)
{
    char dir[64], err[256];
    CHECK(copy_models(dir) == 0);
    int rc = edit_file(dir, "face_landmark_68_model-weights_manifest.json", "\"fc/bias\"",
                       "\"fc/biaz\"");
    load_err(dir, err, sizeof err);
    remove_models(dir);
    CHECK(rc == 0);
    CHECK_EQ_STR(err, "face_landmark_68_model: missing tensor fc/bias");
}

/* An extra (quantised, 1-byte) tensor just before the last one, with its byte in the .bin:
 * everything is consistent except that the architecture has no such tensor. */
static void t_load_unexpected_tensor(void)
{
    char dir[64], err[256], p[256];
    size_t len;
    CHECK(copy_models(dir) == 0);
    int rc = edit_file(dir, "tiny_face_detector_model-weights_manifest.json",
                       "{\"name\":\"conv8/bias\"",
                       "{\"name\":\"conv8/extra\",\"shape\":[1],\"dtype\":\"float32\","
                       "\"quantization\":{\"dtype\":\"uint8\",\"min\":0,\"scale\":1}},"
                       "{\"name\":\"conv8/bias\"");
    snprintf(p, sizeof p, "%s/tiny_face_detector_model.bin", dir);
    unsigned char *bin = slurp(p, 0, &len), *out = bin && len > 25 ? malloc(len + 1) : NULL;
    int spliced = out != NULL;
    if (out) { /* conv8/bias is the last 25 bytes */
        memcpy(out, bin, len - 25);
        out[len - 25] = 7;
        memcpy(out + len - 24, bin + len - 25, 25);
        if (write_file(p, out, len + 1) != 0)
            rc = -1;
    }
    free(bin);
    free(out);
    load_err(dir, err, sizeof err);
    remove_models(dir);
    CHECK(rc == 0 && spliced);
    CHECK_EQ_STR(err, "tiny_face_detector_model: unexpected tensor conv8/extra");
}

static void t_load_hostile_manifest(void)
{
    static const struct {
        const char *from, *to, *want;
    } cases[] = {
        { "tiny_face_detector_model.bin", "../tiny_face_detector_model.bin",
          "tiny_face_detector_model: bad manifest: shard path is not a plain file name" },
        { "[", "{", "tiny_face_detector_model: bad manifest: not a JSON array of weight groups" },
        { "\"uint8\"", "\"int4\"",
          "tiny_face_detector_model: bad manifest: tensor conv0/filters has unsupported "
          "quantization int4" },
        { "[3,3,3,16]", "[3,3,3,-16]",
          "tiny_face_detector_model: bad manifest: tensor conv0/filters has a bad dimension" },
        { "[3,3,3,16]", "[3,3,3,1e9]",
          "tiny_face_detector_model: bad manifest: tensor conv0/filters has a bad dimension" },
        { "\"float32\"", "\"float16\"",
          "tiny_face_detector_model: bad manifest: tensor conv0/filters is not float32" },
        { "\"conv0/bias\"", "\"conv0/filters\"",
          "tiny_face_detector_model: bad manifest: duplicate tensor conv0/filters" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[64], err[256];
        CHECK(copy_models(dir) == 0);
        int rc = edit_file(dir, "tiny_face_detector_model-weights_manifest.json", cases[i].from,
                           cases[i].to);
        load_err(dir, err, sizeof err);
        remove_models(dir);
        CHECK_MSG(rc == 0, "case %zu: could not edit the manifest", i);
        CHECK_EQ_STR(err, cases[i].want);
    }
}

static const struct check_test tests[] = {
    CHECK_TEST(t_recognition_golden),  CHECK_TEST(t_landmark_golden),
    CHECK_TEST(t_detector_golden),     CHECK_TEST(t_detector_sizes),
    CHECK_TEST(t_detector_all_sizes),  CHECK_TEST(t_threads_share_nets),
    CHECK_TEST(t_decode_nms),          CHECK_TEST(t_nn_conv_paths),
    CHECK_TEST(t_pause_points),
    CHECK_TEST(t_nn_sepconv),          CHECK_TEST(t_nn_maxpool_same),
    CHECK_TEST(t_load_ok_copy),
    CHECK_TEST(t_load_missing_file),   CHECK_TEST(t_load_missing_dir),
    CHECK_TEST(t_load_truncated_bin),  CHECK_TEST(t_load_trailing_bytes),
    CHECK_TEST(t_load_wrong_shape),    CHECK_TEST(t_load_shape_changes_size),
    CHECK_TEST(t_load_renamed_tensor), CHECK_TEST(t_load_unexpected_tensor),
    CHECK_TEST(t_load_hostile_manifest),
};

int main(int argc, char **argv)
{
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
