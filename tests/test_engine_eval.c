/*
 * test_engine_eval.c — the whole engine against the labelled pictures in ../shared/eval.
 *
 *   every single-face picture: exactly one face
 *   every same-identity pair below 0.6, every different-identity pair at 0.6 or above, for
 *   both alignments, and with the default (similarity) alignment a margin (smallest different
 *   minus largest same distance) at least as wide as the reference's 0.166
 *   every group picture: a distinct face for each identity listed in it
 *   every face the reference (face-api) found is found too (IoU >= 0.5)
 *
 * FW_SHARED (default ../shared) and FW_MODELS (default models) say where the data is. A
 * missing data set is a failure, not a skip.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "engine/engine.h"
#include "tests/check.h"

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

static const char *shared_dir(void)
{
    const char *s = getenv("FW_SHARED");
    return s && *s ? s : "../shared";
}

static const char *models_dir(void)
{
    const char *s = getenv("FW_MODELS");
    return s && *s ? s : "models";
}

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
    snprintf(ev->dir, sizeof(ev->dir), "%s/eval", shared_dir());
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
    if (fw_engine_open(models_dir(), &o, &e, err, sizeof(err)) != FWE_OK) {
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

static const struct check_test tests[] = {
    CHECK_TEST(t_one_face_per_single_picture),
    CHECK_TEST(t_pairs_similarity),
    CHECK_TEST(t_pairs_box),
    CHECK_TEST(t_group_pictures),
    CHECK_TEST(t_reference_faces_found),
};

int main(int argc, char **argv)
{
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
