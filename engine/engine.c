/*
 * engine.c — the face pipeline behind engine.h: JPEG -> picture -> detections -> 68 landmarks
 * -> aligned chip -> 128-d descriptor.
 *
 *   decode      image.c: header checked against the limits first, EXIF orientation applied,
 *               big pictures reduced in the IDCT (see FW_DECODE_MIN_LONG below)
 *   detect      the picture zero-padded to a square on the right/bottom and resized to the
 *               detector size (face-api's toBatchTensor(size, false)), area-averaged rather
 *               than sampled when that is a reduction; a second pass on the mirror image
 *               when the first saw a borderline face (detect() below); boxes scaled back
 *   landmarks   each box, floored, padded to a centred square, resized to 112 (face-api's
 *               extractFaceTensors + toBatchTensor(112, true)); points mapped back through
 *               the same square. Unlike face-api the box is not clipped to the picture first:
 *               a face cut by the border keeps its place in the chip instead of being shifted
 *               to the centre, and the landmark net sees the face where the box put it.
 *   describe    align.c's chip (dlib similarity by default, face-api box crop on request)
 *
 * Everything runs in the decoded picture's coordinates; results are scaled to the picture's
 * full-resolution, oriented coordinates at the end.
 *
 * Memory: a workspace holds every buffer a request needs. The detector input, grid, boxes and
 * chips are sized when it is made; the decoder's pixel buffers grow on demand and then stay
 * (bounded: see FW_DECODE_MIN_LONG), so a warm workspace does not allocate. libjpeg-turbo's
 * own per-picture bookkeeping (its small pools, and for progressive files the coefficient
 * buffer) is the one allocation left in the per-request path; it is bounded by max_pixels.
 */
#include "engine/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/align.h"
#include "engine/image.h"
#include "engine/nets.h"

/* Decode-time reduction keeps the long side at least this many times the detector size. The
 * detector's smallest faces are about 1/20 of its input, so at 4x a face still has >= 80
 * pixels for the 112-pixel landmark chip and the 150-pixel recognition chip (face-api itself
 * upsamples faces that small). Since a reduction halves the side, the decoded long side stays
 * below 8x the detector size (3328 pixels at 416, 33 MB of RGB) for any picture; the decoder's
 * buffers never grow past that. */
#define FW_DECODE_MIN_LONG 4

struct fw_engine {
    fw_nets *nets;
    fw_engine_options opts;
};

struct fw_engine_ws {
    const fw_engine *e;
    fw_nets_ws *nets;
    fw_decoder *dec;
    uint8_t *det_in;    /* detector_size^2 * 3 */
    float *grid;        /* (detector_size / 32)^2 * 25 */
    fw_det_box *boxes;  /* 2 * opts.max_faces: the direct and the mirrored detections */
    uint8_t lm_chip[FW_LANDMARK_SIZE * FW_LANDMARK_SIZE * 3];
    uint8_t rec_chip[FW_RECOG_SIZE * FW_RECOG_SIZE * 3];
    fw_pause pause; /* fw_engine_ws_set_pause(); also handed to nets */
};

/* A pause point between the stages (engine/pause.h); the networks have their own. */
static void stage_pause(const fw_engine_ws *ws)
{
    fw_pause_point(&ws->pause);
}

const char *fw_engine_strerror(fw_engine_err e)
{
    switch (e) {
    case FWE_OK: return "ok";
    case FWE_BAD_IMAGE: return "bad image";
    case FWE_TOO_LARGE: return "image too large";
    case FWE_NO_FACE: return "no face found";
    case FWE_NOMEM: return "out of memory";
    case FWE_MODEL: return "model error";
    case FWE_ARG: return "invalid argument";
    case FWE_INTERNAL: return "internal error";
    }
    return "unknown error";
}

void fw_engine_options_default(fw_engine_options *o)
{
    if (!o)
        return;
    o->detector_size = 416;
    o->score_threshold = 0.5f;
    o->iou_threshold = 0.4f;
    o->max_pixels = 40000000ull;
    o->max_dimension = 20000;
    o->max_faces = 32;
    o->align = FW_ALIGN_SIMILARITY;
    o->detect_mirror = 1;
}

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

static int options_valid(const fw_engine_options *o, char *err, size_t errlen)
{
    const char *why = NULL;
    if (o->detector_size < 32 || o->detector_size > FW_DET_MAX_SIZE || o->detector_size % 32)
        why = "detector_size must be a multiple of 32 in 32..1024";
    else if (!(o->score_threshold > 0.f && o->score_threshold <= 1.f))
        why = "score_threshold must be in (0, 1]";
    else if (!(o->iou_threshold > 0.f && o->iou_threshold <= 1.f))
        why = "iou_threshold must be in (0, 1]";
    else if (o->max_pixels == 0)
        why = "max_pixels must be positive";
    else if (o->max_dimension < 1 || o->max_dimension > 65535)
        why = "max_dimension must be in 1..65535";
    else if (o->max_faces < 1 || o->max_faces > 1024)
        why = "max_faces must be in 1..1024";
    else if (o->align != FW_ALIGN_SIMILARITY && o->align != FW_ALIGN_BOX)
        why = "unknown alignment mode";
    if (why)
        set_err(err, errlen, why);
    return why == NULL;
}

fw_engine_err fw_engine_open(const char *models_dir, const fw_engine_options *opts,
                             fw_engine **out, char *err, size_t errlen)
{
    if (!out) {
        set_err(err, errlen, "out is NULL");
        return FWE_ARG;
    }
    *out = NULL;
    if (!models_dir) {
        set_err(err, errlen, "no models directory");
        return FWE_ARG;
    }
    fw_engine_options o;
    fw_engine_options_default(&o);
    if (opts)
        o = *opts;
    if (!options_valid(&o, err, errlen))
        return FWE_ARG;
    fw_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        set_err(err, errlen, "out of memory");
        return FWE_NOMEM;
    }
    e->opts = o;
    if (fw_nets_load(models_dir, &e->nets, err, errlen) != 0) {
        free(e);
        return FWE_MODEL;
    }
    *out = e;
    return FWE_OK;
}

void fw_engine_close(fw_engine *e)
{
    if (!e)
        return;
    fw_nets_free(e->nets);
    free(e);
}

const fw_engine_options *fw_engine_get_options(const fw_engine *e)
{
    return e ? &e->opts : NULL;
}

fw_engine_ws *fw_engine_ws_new(const fw_engine *e)
{
    if (!e)
        return NULL;
    const int s = e->opts.detector_size, cells = s / 32;
    fw_engine_ws *ws = calloc(1, sizeof(*ws));
    if (!ws)
        return NULL;
    ws->e = e;
    ws->nets = fw_nets_ws_new(e->nets, s);
    ws->dec = fw_decoder_new();
    ws->det_in = malloc((size_t)s * s * 3);
    ws->grid = malloc((size_t)cells * cells * 25 * sizeof(float));
    ws->boxes = malloc((size_t)e->opts.max_faces * 2 * sizeof(fw_det_box));
    if (!ws->nets || !ws->dec || !ws->det_in || !ws->grid || !ws->boxes) {
        fw_engine_ws_free(ws);
        return NULL;
    }
    return ws;
}

void fw_engine_ws_set_pause(fw_engine_ws *ws, void (*fn)(void *arg), void *arg)
{
    if (!ws)
        return;
    ws->pause = (fw_pause){ fn, arg };
    fw_nets_ws_set_pause(ws->nets, ws->pause);
    fw_decoder_set_pause(ws->dec, ws->pause);
}

void fw_engine_ws_free(fw_engine_ws *ws)
{
    if (!ws)
        return;
    fw_nets_ws_free(ws->nets);
    fw_decoder_free(ws->dec);
    free(ws->det_in);
    free(ws->grid);
    free(ws->boxes);
    free(ws);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* floor() into an int, for coordinates that come out of a network and may be anything. */
static int floor_int(float v)
{
    if (!(v > -1e7f))
        return -10000000;
    if (v > 1e7f)
        return 10000000;
    return (int)floorf(v);
}

static double iou(const fw_det_box *a, const fw_det_box *b)
{
    const double x0 = fmax(a->x, b->x), y0 = fmax(a->y, b->y);
    const double x1 = fmin(a->x + a->w, b->x + b->w), y1 = fmin(a->y + a->h, b->y + b->h);
    const double inter = fmax(0, x1 - x0) * fmax(0, y1 - y0);
    const double uni = (double)a->w * a->h + (double)b->w * b->h - inter;
    return uni > 0 ? inter / uni : 0;
}

/* A candidate scoring at least this fraction of the threshold, and not overlapping a face
 * above it, makes detect() look at the mirror image too. */
#define MIRROR_FLOOR 0.6f

/* Detector on ws->det_in; with detect_mirror, when the direct pass saw a borderline candidate
 * (between MIRROR_FLOOR x threshold and the threshold), also on the mirror image, the two
 * lists merged by the same IoU suppression the detector uses. Boxes (detector pixels) go to
 * ws->boxes, best first; returns their count (<= cap), or -1 if a net failed.
 *
 * Why the mirror: the tiny detector's score for a face near the threshold swings with where
 * the face falls on its 32-pixel grid; the mirror image puts the face elsewhere on the grid.
 * On the eval set it is what finds the faces face-api misses at 0.5 (docs/engine.md). Why
 * only for borderline candidates: a picture whose faces all score well (most of them) does
 * not pay for a second pass. */
static int detect(const fw_engine *e, fw_engine_ws *ws, int cap)
{
    const fw_engine_options *o = &e->opts;
    const int S = o->detector_size;
    if (fw_tinydet_run(e->nets, ws->nets, ws->det_in, S, ws->grid) != 0)
        return -1;
    /* Candidates down to MIRROR_FLOOR x threshold: the ones at or above the threshold come
     * first (best first, and the suppression is greedy by score, so they are exactly what a
     * decode at the threshold would give); any below it is a borderline face. */
    const float floor_score = o->detect_mirror ? MIRROR_FLOOR * o->score_threshold : o->score_threshold;
    int nlow = fw_tinydet_decode(ws->grid, S, floor_score, o->iou_threshold, ws->boxes, cap);
    if (nlow < 0)
        nlow = 0;
    int n = 0;
    while (n < nlow && ws->boxes[n].score >= o->score_threshold)
        n++;
    if (!o->detect_mirror || nlow == n)
        return n;
    for (int y = 0; y < S; y++) {
        uint8_t *l = ws->det_in + (size_t)y * S * 3, *r = l + (size_t)(S - 1) * 3;
        for (; l < r; l += 3, r -= 3)
            for (int c = 0; c < 3; c++) {
                const uint8_t t = l[c];
                l[c] = r[c];
                r[c] = t;
            }
    }
    if (fw_tinydet_run(e->nets, ws->nets, ws->det_in, S, ws->grid) != 0)
        return -1;
    fw_det_box *all = ws->boxes;
    int m = fw_tinydet_decode(ws->grid, S, o->score_threshold, o->iou_threshold, all + n, cap);
    if (m < 0)
        m = 0;
    for (int i = n; i < n + m; i++)
        all[i].x = (float)S - all[i].x - all[i].w;
    /* best first (insertion sort: at most 2 * max_faces boxes), then greedy suppression */
    for (int i = 1; i < n + m; i++) {
        const fw_det_box t = all[i];
        int j = i;
        for (; j > 0 && all[j - 1].score < t.score; j--)
            all[j] = all[j - 1];
        all[j] = t;
    }
    int kept = 0;
    for (int i = 0; i < n + m && kept < cap; i++) {
        int keep = 1;
        for (int k = 0; k < kept && keep; k++)
            keep = iou(&all[i], &all[k]) <= o->iou_threshold;
        if (keep)
            all[kept++] = all[i];
    }
    return kept;
}

fw_engine_err fw_engine_analyze(const fw_engine *e, fw_engine_ws *ws,
                                const uint8_t *jpeg, size_t len, int want,
                                fw_face *faces, int max_faces, int *nfaces,
                                int *width, int *height, fw_timings *timings,
                                char *err, size_t errlen)
{
    const double t0 = now_ms();
    fw_timings tm = {0, 0, 0, 0, 0};
    if (nfaces)
        *nfaces = 0;
    if (!e || !ws || ws->e != e || !nfaces || max_faces < 0 || (max_faces > 0 && !faces) ||
        (!jpeg && len) || (want & ~(FW_WANT_LANDMARKS | FW_WANT_DESCRIPTORS))) {
        set_err(err, errlen, "invalid argument");
        return FWE_ARG;
    }
    if (want & FW_WANT_DESCRIPTORS)
        want |= FW_WANT_LANDMARKS;
    const fw_engine_options *o = &e->opts;
    const int S = o->detector_size;

    /* 1. decode */
    const fw_decode_limits lim = {o->max_pixels, o->max_dimension, FW_DECODE_MIN_LONG * S};
    fw_image img;
    fw_decode_info info;
    fw_engine_err rc = fw_decode_jpeg(ws->dec, jpeg, len, &lim, &img, &info, err, errlen);
    if (rc != FWE_OK)
        return rc;
    if (width)
        *width = info.width;
    if (height)
        *height = info.height;
    const double t1 = now_ms();
    tm.decode_ms = t1 - t0;
    stage_pause(ws);

    int cap = max_faces < o->max_faces ? max_faces : o->max_faces;
    int n = 0;
    if (cap > 0) {
        /* 2. detect: pad right/bottom to a square, resize to S */
        const int side = img.w > img.h ? img.w : img.h;
        fw_area_square(&img, side, ws->det_in, S, &ws->pause);
        stage_pause(ws);
        n = detect(e, ws, cap);
        if (n < 0) {
            set_err(err, errlen, "detector failed");
            return FWE_INTERNAL;
        }
        const double t2 = now_ms();
        tm.detect_ms = t2 - t1;

        /* decoded picture -> full-resolution picture, per axis (the IDCT rounds sizes up) */
        const float det2dec = (float)side / (float)S;
        const float sx = (float)info.width / (float)img.w, sy = (float)info.height / (float)img.h;
        for (int i = 0; i < n; i++) {
            fw_face *f = &faces[i];
            memset(f, 0, sizeof(*f));
            const fw_det_box *b = &ws->boxes[i];
            const float bx = b->x * det2dec, by = b->y * det2dec;
            const float bw = b->w * det2dec, bh = b->h * det2dec;
            f->box[0] = bx * sx;
            f->box[1] = by * sy;
            f->box[2] = bw * sx;
            f->box[3] = bh * sy;
            f->score = b->score;
            if (!(want & FW_WANT_LANDMARKS))
                continue;

            /* 3. landmarks on the box's square chip */
            double ta = now_ms();
            int ox, oy, sd;
            fw_square_chip(&img, floor_int(bx), floor_int(by), floor_int(bw), floor_int(bh), 0,
                           ws->lm_chip, FW_LANDMARK_SIZE, &ox, &oy, &sd);
            float rel[136], lm[136];
            stage_pause(ws);
            if (fw_landmark68_run(e->nets, ws->nets, ws->lm_chip, rel) != 0) {
                set_err(err, errlen, "landmark net failed");
                return FWE_INTERNAL;
            }
            for (int k = 0; k < 68; k++) {
                lm[2 * k] = (float)ox + rel[2 * k] * (float)sd;
                lm[2 * k + 1] = (float)oy + rel[2 * k + 1] * (float)sd;
                f->landmarks[2 * k] = lm[2 * k] * sx;
                f->landmarks[2 * k + 1] = lm[2 * k + 1] * sy;
            }
            double tb = now_ms();
            tm.landmarks_ms += tb - ta;
            if (!(want & FW_WANT_DESCRIPTORS))
                continue;

            /* 4. aligned chip, descriptor */
            int ok = fw_align_chip(&img, lm, o->align, ws->rec_chip, &ws->pause) == FWE_OK;
            if (ok) {
                stage_pause(ws);
                ok = fw_recog_run(e->nets, ws->nets, ws->rec_chip, f->descriptor) == 0;
            }
            if (!ok) {
                set_err(err, errlen, "recognition net failed");
                return FWE_INTERNAL;
            }
            tm.describe_ms += now_ms() - tb;
        }
    }
    *nfaces = n;
    tm.total_ms = now_ms() - t0;
    if (timings)
        *timings = tm;
    return FWE_OK;
}

float fw_descriptor_distance(const float *a, const float *b)
{
    if (!a || !b)
        return INFINITY;
    double s = 0;
    for (int i = 0; i < FW_DESCRIPTOR_LEN; i++) {
        const double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    return (float)sqrt(s);
}
