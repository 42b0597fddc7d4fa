/*
 * test_engine_eval.c — the whole engine against the labelled pictures in ../shared/eval.
 *
 *   every single-face picture: exactly one face
 *   every same-identity pair below 0.6, every different-identity pair at 0.6 or above, for
 *   both alignments, and with the default (similarity) alignment a margin (smallest different
 *   minus largest same distance) at least as wide as the reference's 0.166
 *   every group picture: a distinct face for each identity listed in it
 *   every face the reference (face-api) found is found too (IoU >= 0.5)
 *   coordinates survive EXIF rotation and decode-time downscaling: the same face comes back
 *   at the same place (in the displayed picture's pixels) with the same descriptor
 * bin/facewire's JSON and exit codes (FW_BIN, default bin, says where it is),
 * and the engine API's own contract: argument checks, error codes for bad pictures, the
 * max_faces cap, what `want` fills in, and randomly damaged real pictures through the whole
 * pipeline (OK or BAD_IMAGE, never a crash).
 *
 * FW_SHARED (default ../shared) and FW_MODELS (default models) say where the data is. A
 * missing data set is a failure, not a skip.
 */
#include <math.h>
#include <stdio.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include <turbojpeg.h>

#include "engine/engine.h"
#include "engine/image.h"
#include "tests/check.h"
#include "tests/tu_data.h"

#define MAX_PICS 64
#define MAX_IDS 4
#define MAX_FACES 8
#define REF_MARGIN 0.166f

typedef struct pic {
    char name[64];
    char ident[64];          /* single-face pictures */
    int nid;                 /* group pictures: identities present */
    char ids[MAX_IDS][64];
    int multi;
    int n;                   /* faces found */
    fw_face faces[MAX_FACES];
} pic;

typedef struct eval {
    char dir[512];
    int npics;
    pic pics[MAX_PICS];
} eval;

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && n < (64L << 20) && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc((size_t)n + 1);
            if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
                buf[n] = 0;
                *len = (size_t)n;
            } else {
                free(buf);
                buf = NULL;
            }
        }
    }
    fclose(f);
    return buf;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

/* labels.json -> ev->pics (names and identities). 0 or -1. */
static int load_labels(eval *ev)
{
    memset(ev, 0, sizeof(*ev));
    snprintf(ev->dir, sizeof(ev->dir), "%s/eval", tu_shared_dir());
    char path[600];
    snprintf(path, sizeof(path), "%s/labels.json", ev->dir);
    size_t len = 0;
    char *text = read_all(path, &len);
    if (!text) {
        fprintf(stderr, "  cannot read %s (set FW_SHARED)\n", path);
        return -1;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(root, "single_face");
    const cJSON *multi = cJSON_GetObjectItemCaseSensitive(root, "multi_face");
    const cJSON *it;
    cJSON_ArrayForEach(it, single) {
        if (ev->npics == MAX_PICS || !cJSON_IsString(it))
            break;
        pic *p = &ev->pics[ev->npics++];
        copy_str(p->name, sizeof(p->name), it->string);
        copy_str(p->ident, sizeof(p->ident), it->valuestring);
    }
    cJSON_ArrayForEach(it, multi) {
        if (ev->npics == MAX_PICS)
            break;
        pic *p = &ev->pics[ev->npics++];
        copy_str(p->name, sizeof(p->name), it->string);
        p->multi = 1;
        const cJSON *id;
        cJSON_ArrayForEach(id, cJSON_GetObjectItemCaseSensitive(it, "identities_present")) {
            if (p->nid < MAX_IDS && cJSON_IsString(id))
                copy_str(p->ids[p->nid++], sizeof(p->ids[0]), id->valuestring);
        }
    }
    const int ok = root && single && multi && ev->npics > 0;
    cJSON_Delete(root);
    return ok ? 0 : -1;
}

/* Label and analyse every picture with the given alignment. 0 or -1 (message printed). */
static int run_eval(eval *ev, fw_align_mode align)
{
    if (load_labels(ev) != 0)
        return -1;
    fw_engine_options o;
    fw_engine_options_default(&o);
    o.align = align;
    fw_engine *e = NULL;
    fw_engine_ws *ws = NULL;
    char err[256];
    int rc = -1;
    if (fw_engine_open(tu_models_dir(), &o, &e, err, sizeof(err)) != FWE_OK) {
        fprintf(stderr, "  models: %s (set FW_MODELS)\n", err);
        return -1;
    }
    ws = fw_engine_ws_new(e);
    if (!ws)
        goto err;
    for (int i = 0; i < ev->npics; i++) {
        pic *p = &ev->pics[i];
        char path[700];
        snprintf(path, sizeof(path), "%s/%s", ev->dir, p->name);
        size_t len = 0;
        char *jpeg = read_all(path, &len);
        if (!jpeg) {
            fprintf(stderr, "  cannot read %s\n", path);
            goto err;
        }
        fw_engine_err r = fw_engine_analyze(e, ws, (const uint8_t *)jpeg, len, FW_WANT_DESCRIPTORS,
                                            p->faces, MAX_FACES, &p->n, NULL, NULL, NULL, err,
                                            sizeof(err));
        free(jpeg);
        if (r != FWE_OK) {
            fprintf(stderr, "  %s: %s\n", p->name, err);
            goto err;
        }
    }
    rc = 0;
err:
    fw_engine_ws_free(ws);
    fw_engine_close(e);
    return rc;
}

static void t_one_face_per_single_picture(void)
{
    eval *ev = calloc(1, sizeof(*ev));
    CHECK(ev);
    const int rc = run_eval(ev, FW_ALIGN_SIMILARITY);
    int bad = -1, singles = 0;
    for (int i = 0; rc == 0 && i < ev->npics; i++) {
        if (ev->pics[i].multi)
            continue;
        singles++;
        if (ev->pics[i].n != 1 && bad < 0)
            bad = i;
    }
    char name[64] = "";
    int nbad = 0;
    if (bad >= 0) {
        copy_str(name, sizeof(name), ev->pics[bad].name);
        nbad = ev->pics[bad].n;
    }
    free(ev);
    CHECK_EQ_INT(rc, 0);
    CHECK(singles >= 17);
    CHECK_MSG(bad < 0, "%s: %d faces", name, nbad);
}

typedef struct margin {
    float max_same, min_diff;
    char same_a[64], same_b[64], diff_a[64], diff_b[64];
    int nsame, ndiff;
} margin;

/* Distances between the best faces of every pair of single-face pictures. */
static void pair_margin(const eval *ev, margin *m)
{
    memset(m, 0, sizeof(*m));
    m->min_diff = INFINITY;
    for (int i = 0; i < ev->npics; i++)
        for (int j = i + 1; j < ev->npics; j++) {
            const pic *a = &ev->pics[i], *b = &ev->pics[j];
            if (a->multi || b->multi || a->n < 1 || b->n < 1)
                continue;
            const float d = fw_descriptor_distance(a->faces[0].descriptor, b->faces[0].descriptor);
            if (!strcmp(a->ident, b->ident)) {
                m->nsame++;
                if (d > m->max_same) {
                    m->max_same = d;
                    copy_str(m->same_a, sizeof(m->same_a), a->name);
                    copy_str(m->same_b, sizeof(m->same_b), b->name);
                }
            } else {
                m->ndiff++;
                if (d < m->min_diff) {
                    m->min_diff = d;
                    copy_str(m->diff_a, sizeof(m->diff_a), a->name);
                    copy_str(m->diff_b, sizeof(m->diff_b), b->name);
                }
            }
        }
}

static void check_pairs(fw_align_mode align, int need_reference_margin)
{
    eval *ev = calloc(1, sizeof(*ev));
    CHECK(ev);
    const int rc = run_eval(ev, align);
    margin m;
    pair_margin(ev, &m);
    free(ev);
    CHECK_EQ_INT(rc, 0);
    printf("  %s alignment: %d same pairs, max %.4f (%s, %s); %d different pairs, min %.4f "
           "(%s, %s); margin %.4f (reference %.3f)\n",
           align == FW_ALIGN_BOX ? "box" : "similarity", m.nsame, m.max_same, m.same_a, m.same_b,
           m.ndiff, m.min_diff, m.diff_a, m.diff_b, m.min_diff - m.max_same, REF_MARGIN);
    CHECK(m.nsame > 0 && m.ndiff > 0);
    CHECK_MSG(m.max_same < 0.6f, "same identity at %.4f: %s, %s", m.max_same, m.same_a, m.same_b);
    CHECK_MSG(m.min_diff >= 0.6f, "different identities at %.4f: %s, %s", m.min_diff, m.diff_a, m.diff_b);
    if (need_reference_margin)
        CHECK(m.min_diff - m.max_same >= REF_MARGIN);
}

static void t_pairs_similarity(void) { check_pairs(FW_ALIGN_SIMILARITY, 1); }
static void t_pairs_box(void) { check_pairs(FW_ALIGN_BOX, 0); }

/* Each identity listed for a group picture is the nearest match (< 0.6 to one of its
 * single-face pictures) of a face of its own. */
static void t_group_pictures(void)
{
    eval *ev = calloc(1, sizeof(*ev));
    CHECK(ev);
    const int rc = run_eval(ev, FW_ALIGN_SIMILARITY);
    char fail[160] = "";
    int groups = 0;
    for (int g = 0; rc == 0 && g < ev->npics && !fail[0]; g++) {
        const pic *p = &ev->pics[g];
        if (!p->multi)
            continue;
        groups++;
        if (p->n < p->nid) {
            snprintf(fail, sizeof(fail), "%s: %d faces for %d people", p->name, p->n, p->nid);
            break;
        }
        int used[MAX_FACES] = {0};
        for (int k = 0; k < p->nid && !fail[0]; k++) {
            float best = INFINITY;
            int best_face = -1;
            for (int f = 0; f < p->n; f++)
                for (int s = 0; s < ev->npics; s++) {
                    const pic *q = &ev->pics[s];
                    if (q->multi || q->n < 1 || strcmp(q->ident, p->ids[k]))
                        continue;
                    const float d = fw_descriptor_distance(p->faces[f].descriptor, q->faces[0].descriptor);
                    if (d < best) {
                        best = d;
                        best_face = f;
                    }
                }
            if (best_face < 0 || best >= 0.6f || used[best_face])
                snprintf(fail, sizeof(fail), "%s: %s not matched (best %.3f, face %d)", p->name,
                         p->ids[k], best, best_face);
            else
                used[best_face] = 1;
        }
    }
    free(ev);
    CHECK_EQ_INT(rc, 0);
    CHECK(groups >= 5);
    CHECK_MSG(!fail[0], "%s", fail);
}

static float box_iou(const float *a, const float *b)
{
    const float x0 = fmaxf(a[0], b[0]), y0 = fmaxf(a[1], b[1]);
    const float x1 = fminf(a[0] + a[2], b[0] + b[2]), y1 = fminf(a[1] + a[3], b[1] + b[3]);
    const float inter = fmaxf(0, x1 - x0) * fmaxf(0, y1 - y0);
    const float uni = a[2] * a[3] + b[2] * b[3] - inter;
    return uni > 0 ? inter / uni : 0;
}

/* Every face in reference-faceapi.json has one of ours over it. */
static void t_reference_faces_found(void)
{
    eval *ev = calloc(1, sizeof(*ev));
    CHECK(ev);
    const int rc = run_eval(ev, FW_ALIGN_SIMILARITY);
    char path[600];
    snprintf(path, sizeof(path), "%s/reference-faceapi.json", ev->dir);
    size_t len = 0;
    char *text = rc == 0 ? read_all(path, &len) : NULL;
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    char fail[160] = "";
    int ref_faces = 0, ours = 0;
    const cJSON *img;
    cJSON_ArrayForEach(img, cJSON_GetObjectItemCaseSensitive(root, "images")) {
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(img, "file");
        const pic *p = NULL;
        for (int i = 0; cJSON_IsString(file) && i < ev->npics; i++)
            if (!strcmp(ev->pics[i].name, file->valuestring))
                p = &ev->pics[i];
        if (!p)
            continue;
        ours += p->n;
        const cJSON *face;
        cJSON_ArrayForEach(face, cJSON_GetObjectItemCaseSensitive(img, "faces")) {
            const cJSON *box = cJSON_GetObjectItemCaseSensitive(face, "box");
            if (cJSON_GetArraySize(box) != 4)
                continue;
            float rb[4];
            for (int k = 0; k < 4; k++)
                rb[k] = (float)cJSON_GetNumberValue(cJSON_GetArrayItem(box, k));
            ref_faces++;
            float best = 0;
            for (int f = 0; f < p->n; f++)
                best = fmaxf(best, box_iou(rb, p->faces[f].box));
            if (best < 0.5f && !fail[0])
                snprintf(fail, sizeof(fail), "%s: reference face at %.0f,%.0f not found (IoU %.2f)",
                         p->name, rb[0], rb[1], best);
        }
    }
    cJSON_Delete(root);
    free(ev);
    CHECK_EQ_INT(rc, 0);
    CHECK_MSG(ref_faces >= 20, "only %d reference faces read from %s", ref_faces, path);
    printf("  reference found %d faces, we find %d\n", ref_faces, ours);
    CHECK_MSG(!fail[0], "%s", fail);
}

/* One eval picture transformed (pixels oriented by `store`, scaled by `scale`), re-encoded,
 * optionally tagged with EXIF orientation `exif`, and analysed next to the original. */
typedef struct variant_result {
    int ok, n0, n1, w1, h1;
    fw_face f0, f1;
} variant_result;

static uint8_t *encode_rgb(const uint8_t *px, int w, int h, size_t *len)
{
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long size = 0;
    uint8_t *out = NULL;
    if (tj && tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, &size, TJSAMP_444, 95, 0) == 0) {
        out = malloc(size + 64);
        if (out) {
            memcpy(out, buf, size);
            *len = size;
        }
    }
    tjFree(buf);
    if (tj)
        tjDestroy(tj);
    return out;
}

/* Insert an APP1 Exif segment (big-endian TIFF, orientation only) after SOI; buf has room. */
static void add_exif(uint8_t *buf, size_t *len, int orientation)
{
    static const uint8_t seg[] = {0xFF, 0xE1, 0, 34, 'E', 'x', 'i', 'f', 0, 0, 'M', 'M', 0, 42,
                                  0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0,
                                  0, 0, 0, 0};
    memmove(buf + 2 + sizeof(seg), buf + 2, *len - 2);
    memcpy(buf + 2, seg, sizeof(seg));
    buf[2 + 29] = (uint8_t)orientation;
    *len += sizeof(seg);
}

static void run_variant(const char *name, int store, int scale, int exif, variant_result *r)
{
    memset(r, 0, sizeof(*r));
    char path[600];
    snprintf(path, sizeof(path), "%s/eval/%s", tu_shared_dir(), name);
    size_t len = 0, len2 = 0;
    char *jpeg = read_all(path, &len);
    fw_engine *e = NULL;
    fw_engine_ws *ws = NULL;
    fw_decoder *d = fw_decoder_new();
    uint8_t *big = NULL, *rot = NULL, *jpeg2 = NULL;
    char err[256];
    const fw_decode_limits lim = {40000000ull, 20000, 0};
    fw_image im;
    if (!jpeg || !d || fw_engine_open(tu_models_dir(), NULL, &e, err, sizeof(err)) != FWE_OK ||
        !(ws = fw_engine_ws_new(e)) ||
        fw_decode_jpeg(d, (const uint8_t *)jpeg, len, &lim, &im, NULL, err, sizeof(err)) != FWE_OK)
        goto err;
    big = malloc((size_t)im.w * scale * im.h * scale * 3);
    rot = malloc((size_t)im.w * scale * im.h * scale * 3);
    if (!big || !rot)
        goto err;
    fw_image b = {big, im.w * scale, im.h * scale}, o = {rot, 0, 0};
    fw_resize_bilinear(&im, &b);
    fw_image_orient(&b, store, &o);
    jpeg2 = encode_rgb(o.px, o.w, o.h, &len2);
    if (!jpeg2)
        goto err;
    if (exif)
        add_exif(jpeg2, &len2, exif);
    if (fw_engine_analyze(e, ws, (const uint8_t *)jpeg, len, FW_WANT_DESCRIPTORS, &r->f0, 1, &r->n0,
                          NULL, NULL, NULL, err, sizeof(err)) != FWE_OK ||
        fw_engine_analyze(e, ws, jpeg2, len2, FW_WANT_DESCRIPTORS, &r->f1, 1, &r->n1, &r->w1,
                          &r->h1, NULL, err, sizeof(err)) != FWE_OK)
        goto err;
    r->ok = 1;
err:
    if (!r->ok)
        fprintf(stderr, "  %s: %s\n", name, err);
    free(jpeg2);
    free(rot);
    free(big);
    free(jpeg);
    fw_decoder_free(d);
    fw_engine_ws_free(ws);
    fw_engine_close(e);
}

/* Stored rotated 90 degrees anticlockwise with EXIF 6 ("rotate clockwise to display"): the
 * engine must see, and report in, the upright picture. */
static void t_exif_rotated_picture(void)
{
    variant_result r;
    run_variant("barack_obama_5.jpg", 8, 1, 6, &r);
    CHECK(r.ok);
    CHECK_EQ_INT(r.n0, 1);
    CHECK_EQ_INT(r.n1, 1);
    CHECK_EQ_INT(r.w1, 320);
    CHECK_EQ_INT(r.h1, 240);
    CHECK(box_iou(r.f0.box, r.f1.box) > 0.9f);
    CHECK_NEAR(r.f1.landmarks[2 * 30], r.f0.landmarks[2 * 30], 3.0); /* nose tip */
    CHECK_NEAR(r.f1.landmarks[2 * 30 + 1], r.f0.landmarks[2 * 30 + 1], 3.0);
    printf("  rotated: IoU %.3f, nose %.1f,%.1f vs %.1f,%.1f, distance %.4f\n", box_iou(r.f0.box, r.f1.box), r.f1.landmarks[60], r.f1.landmarks[61], r.f0.landmarks[60], r.f0.landmarks[61], fw_descriptor_distance(r.f0.descriptor, r.f1.descriptor));
    CHECK(fw_descriptor_distance(r.f0.descriptor, r.f1.descriptor) < 0.15f);
}

/* Enlarged 4x (3412 x 1920) the picture is decoded at 1/2 in the IDCT; boxes and landmarks
 * must still come back in the full-size picture's pixels: 4x the original's. */
static void t_downscaled_decode_coordinates(void)
{
    variant_result r;
    run_variant("barack_obama_3.jpg", 1, 4, 0, &r);
    CHECK(r.ok);
    CHECK_EQ_INT(r.n0, 1);
    CHECK_EQ_INT(r.n1, 1);
    CHECK_EQ_INT(r.w1, 853 * 4);
    float scaled[4];
    for (int k = 0; k < 4; k++)
        scaled[k] = r.f0.box[k] * 4;
    CHECK_MSG(box_iou(scaled, r.f1.box) > 0.85f, "IoU %.3f", box_iou(scaled, r.f1.box));
    CHECK_NEAR(r.f1.landmarks[2 * 30], r.f0.landmarks[2 * 30] * 4, 4 * 3.0);
    CHECK_NEAR(r.f1.landmarks[2 * 30 + 1], r.f0.landmarks[2 * 30 + 1] * 4, 4 * 3.0);
    printf("  4x enlarged: IoU %.3f, nose %.1f,%.1f vs 4 x %.1f,%.1f, distance %.4f\n", box_iou(scaled, r.f1.box), r.f1.landmarks[60], r.f1.landmarks[61], r.f0.landmarks[60], r.f0.landmarks[61], fw_descriptor_distance(r.f0.descriptor, r.f1.descriptor));
    CHECK(fw_descriptor_distance(r.f0.descriptor, r.f1.descriptor) < 0.2f);
}

static void t_api_errors(void)
{
    fw_engine *e = NULL;
    char err[256] = "";
    fw_engine_options o;
    fw_engine_options_default(&o);
    o.detector_size = 100; /* not a multiple of 32 */
    CHECK_EQ_INT(fw_engine_open(tu_models_dir(), &o, &e, err, sizeof(err)), FWE_ARG);
    CHECK(e == NULL);
    fw_engine_options_default(&o);
    o.align = (fw_align_mode)5;
    CHECK_EQ_INT(fw_engine_open(tu_models_dir(), &o, &e, err, sizeof(err)), FWE_ARG);
    CHECK_EQ_INT(fw_engine_open("/nonexistent-models", NULL, &e, err, sizeof(err)), FWE_MODEL);
    CHECK(e == NULL && err[0]);
    CHECK_EQ_INT(fw_engine_open(tu_models_dir(), NULL, &e, err, sizeof(err)), FWE_OK);
    fw_engine_ws *ws = fw_engine_ws_new(e);
    fw_face faces[2];
    int n = -1;
    const uint8_t junk[] = "GIF89a definitely not a jpeg";
    /* a header claiming 60000 x 60000: refused before any decoding */
    uint8_t huge[] = {0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0xEA, 0x60, 0xEA, 0x60, 1, 1, 0x11, 0,
                      0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0, 0xFF, 0xD9};
    fw_engine_err e_null = ws ? fw_engine_analyze(e, ws, NULL, 0, 0, faces, 2, NULL, NULL, NULL, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err e_want = ws ? fw_engine_analyze(e, ws, junk, sizeof(junk), 8, faces, 2, &n, NULL, NULL, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err e_neg = ws ? fw_engine_analyze(e, ws, junk, sizeof(junk), 0, faces, -1, &n, NULL, NULL, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err e_empty = ws ? fw_engine_analyze(e, ws, junk, 0, 0, faces, 2, &n, NULL, NULL, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err e_junk = ws ? fw_engine_analyze(e, ws, junk, sizeof(junk), 0, faces, 2, &n, NULL, NULL, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err e_huge = ws ? fw_engine_analyze(e, ws, huge, sizeof(huge), 0, faces, 2, &n, NULL, NULL, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_ws_free(ws);
    fw_engine_close(e);
    CHECK(ws);
    CHECK_EQ_INT(e_null, FWE_ARG);
    CHECK_EQ_INT(e_want, FWE_ARG);
    CHECK_EQ_INT(e_neg, FWE_ARG);
    CHECK_EQ_INT(e_empty, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e_junk, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e_huge, FWE_TOO_LARGE);
    CHECK_EQ_INT(n, 0);
}

/* max_faces caps the output; want = 0 gives boxes only, LANDMARKS adds points but no
 * descriptor. group_two_people.jpg has two faces. */
static void t_api_caps_and_wants(void)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/eval/group_two_people.jpg", tu_shared_dir());
    size_t len = 0;
    char *jpeg = read_all(path, &len);
    CHECK(jpeg);
    fw_engine *e = NULL;
    char err[256];
    fw_engine_err rc = fw_engine_open(tu_models_dir(), NULL, &e, err, sizeof(err));
    fw_engine_ws *ws = rc == FWE_OK ? fw_engine_ws_new(e) : NULL;
    fw_face f[4];
    int n_all = -1, n_one = -1, n_zero = -1, n_lm = -1, w = 0, h = 0;
    fw_timings t = {0};
    float box_all = 0, box_one = 0, lm_none = 1, lm_some = 0, desc_lm = 1;
    if (ws) {
        fw_engine_analyze(e, ws, (const uint8_t *)jpeg, len, 0, f, 4, &n_all, &w, &h, &t, err, sizeof(err));
        box_all = f[0].box[0];
        lm_none = f[0].landmarks[0];
        fw_engine_analyze(e, ws, (const uint8_t *)jpeg, len, 0, f, 1, &n_one, NULL, NULL, NULL, err, sizeof(err));
        box_one = f[0].box[0];
        fw_engine_analyze(e, ws, (const uint8_t *)jpeg, len, 0, NULL, 0, &n_zero, NULL, NULL, NULL, err, sizeof(err));
        fw_engine_analyze(e, ws, (const uint8_t *)jpeg, len, FW_WANT_LANDMARKS, f, 4, &n_lm, NULL, NULL, NULL, err, sizeof(err));
        lm_some = f[0].landmarks[0];
        desc_lm = 0;
        for (int k = 0; k < 128; k++)
            desc_lm += fabsf(f[0].descriptor[k]);
    }
    fw_engine_ws_free(ws);
    fw_engine_close(e);
    free(jpeg);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK_EQ_INT(n_all, 2);
    CHECK_EQ_INT(w, 1126);
    CHECK_EQ_INT(h, 661);
    CHECK(t.total_ms > 0 && t.detect_ms > 0 && t.describe_ms == 0);
    CHECK_EQ_INT(n_one, 1);
    CHECK(box_one == box_all); /* the best face is kept */
    CHECK_EQ_INT(n_zero, 0);
    CHECK_EQ_INT(n_lm, 2);
    CHECK(lm_none == 0.f);
    CHECK(lm_some > 0.f);
    CHECK(desc_lm == 0.f);
}

/* Damaged copies of a real picture through the whole pipeline: decode errors are BAD_IMAGE,
 * and whatever decodes (garbage pixels included) goes through detection, landmarks and
 * descriptors without a crash or a sanitizer report. */
static void t_api_damaged_pictures(void)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/eval/barack_obama_5.jpg", tu_shared_dir());
    size_t len = 0;
    char *jpeg = read_all(path, &len);
    CHECK(jpeg && len > 100);
    uint8_t *m = malloc(len);
    fw_engine *e = NULL;
    char err[256];
    fw_engine_err rc = fw_engine_open(tu_models_dir(), NULL, &e, err, sizeof(err));
    fw_engine_ws *ws = rc == FWE_OK ? fw_engine_ws_new(e) : NULL;
    int unexpected = 0, decoded = 0, refused = 0;
    uint32_t seed = 4242;
    fw_face f[4];
    for (int round = 0; ws && m && round < 40; round++) {
        memcpy(m, jpeg, len);
        for (int k = 0; k < 1 + round % 3; k++) {
            seed = seed * 1103515245u + 12345u;
            const size_t at = 2 + (seed >> 8) % (len - 2);
            seed = seed * 1103515245u + 12345u;
            m[at] = (uint8_t)(seed >> 16);
        }
        int n = 0;
        fw_engine_err r = fw_engine_analyze(e, ws, m, round % 5 ? len : len / 2, FW_WANT_DESCRIPTORS,
                                            f, 4, &n, NULL, NULL, NULL, err, sizeof(err));
        if (r == FWE_OK)
            decoded++;
        else if (r == FWE_BAD_IMAGE)
            refused++;
        else
            unexpected++;
    }
    fw_engine_ws_free(ws);
    fw_engine_close(e);
    free(m);
    free(jpeg);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK_EQ_INT(unexpected, 0);
    CHECK(refused >= 8); /* at least the truncated ones */
    printf("  damaged pictures: %d decoded, %d refused\n", decoded, refused);
}

static const char *bin_dir(void)
{
    const char *s = getenv("FW_BIN");
    return s && *s ? s : "bin";
}

/* Run a shell command, keep at most cap-1 bytes of its stdout; returns the exit status or -1. */
static int run_cmd(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    while (fgetc(p) != EOF) /* drain the rest */
        ;
    const int st = pclose(p);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void t_cli(void)
{
    char cmd[2048];
    const size_t cap = 1 << 20;
    char *out = malloc(cap);
    CHECK(out);
    const char *E = tu_shared_dir(), *M = tu_models_dir(), *B = bin_dir();
    /* embed: one JSON object per picture per line, an error object for the missing one */
    snprintf(cmd, sizeof(cmd), "'%s/facewire' embed --json --timings --models '%s' "
             "'%s/eval/barack_obama_5.jpg' /nonexistent.jpg 2>/dev/null", B, M, E);
    const int st_embed = run_cmd(cmd, out, cap);
    char *nl = strchr(out, '\n');
    if (nl)
        *nl = 0;
    cJSON *a = cJSON_Parse(out), *b = nl ? cJSON_Parse(nl + 1) : NULL;
    const cJSON *faces = cJSON_GetObjectItemCaseSensitive(a, "faces");
    const cJSON *f0 = cJSON_GetArrayItem(faces, 0);
    const int ok_a = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(a, "width")) == 320 &&
                     cJSON_GetArraySize(faces) == 1 &&
                     cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(f0, "box")) == 4 &&
                     cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(f0, "landmarks")) == 68 &&
                     cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(f0, "descriptor")) == 128 &&
                     cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(
                         cJSON_GetObjectItemCaseSensitive(a, "timings_ms"), "total"));
    const int ok_b = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(b, "error")) &&
                     !strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "image")), "/nonexistent.jpg");
    cJSON_Delete(a);
    cJSON_Delete(b);
    /* compare: 0 same, 1 different, 2 error */
    snprintf(cmd, sizeof(cmd), "'%s/facewire' compare --models '%s' '%s/eval/barack_obama_1.jpg' "
             "'%s/eval/barack_obama_5.jpg' 2>/dev/null", B, M, E, E);
    const int st_same = run_cmd(cmd, out, cap);
    const int said_same = strstr(out, "same") != NULL;
    snprintf(cmd, sizeof(cmd), "'%s/facewire' compare --json --models '%s' '%s/eval/barack_obama_1.jpg' "
             "'%s/eval/joe_biden_1.jpg' 2>/dev/null", B, M, E, E);
    const int st_diff = run_cmd(cmd, out, cap);
    cJSON *c = cJSON_Parse(out);
    const int json_diff = cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "same")) &&
                          cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "distance")) >= 0.6;
    cJSON_Delete(c);
    snprintf(cmd, sizeof(cmd), "'%s/facewire' compare --models '%s' '%s/eval/barack_obama_1.jpg' "
             "'%s/eval/labels.json' 2>/dev/null", B, M, E, E);
    const int st_err = run_cmd(cmd, out, cap);
    snprintf(cmd, sizeof(cmd), "'%s/facewire' detect --size 100 x.jpg 2>/dev/null", B);
    const int st_usage = run_cmd(cmd, out, cap);
    free(out);
    CHECK_EQ_INT(st_embed, 2);
    CHECK(ok_a);
    CHECK(ok_b);
    CHECK_EQ_INT(st_same, 0);
    CHECK(said_same);
    CHECK_EQ_INT(st_diff, 1);
    CHECK(json_diff);
    CHECK_EQ_INT(st_err, 2);
    CHECK_EQ_INT(st_usage, 2);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_one_face_per_single_picture),
    CHECK_TEST(t_pairs_similarity),
    CHECK_TEST(t_pairs_box),
    CHECK_TEST(t_group_pictures),
    CHECK_TEST(t_reference_faces_found),
    CHECK_TEST(t_exif_rotated_picture),
    CHECK_TEST(t_downscaled_decode_coordinates),
    CHECK_TEST(t_api_errors),
    CHECK_TEST(t_api_caps_and_wants),
    CHECK_TEST(t_api_damaged_pictures),
    CHECK_TEST(t_cli),
};

int main(int argc, char **argv)
{
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
