/*
 * nets.c — loading the three networks and sizing per-thread workspaces (see nets.h).
 *
 * The per-network code lives in tinydet.c, landmark68.c and recog.c; this file owns what they
 * share: opening the three TF.js models, the tensor-taking helpers, and fw_nets_ws.
 */
#include "engine/nets_impl.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

float *nets_take_copy(fw_model *m, const char *name, int ndim, const int *shape, char *err,
                      size_t errlen)
{
    const float *src = fw_model_take(m, name, ndim, shape, err, errlen);
    if (!src)
        return NULL;
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    float *dst = malloc(n * sizeof(float));
    if (!dst) {
        snprintf(err, errlen, "%s: out of memory", m->label);
        return NULL;
    }
    memcpy(dst, src, n * sizeof(float));
    return dst;
}

void nets_conv_free(nn_conv *c)
{
    free(c->w);
    free(c->b);
    free(c->wu);
    c->w = c->b = c->wu = NULL;
}

void nets_sepconv_free(nn_sepconv *s)
{
    free(s->dw);
    free(s->pw);
    free(s->b);
    s->dw = s->pw = s->b = NULL;
}

int nets_take_conv(fw_model *m, const char *prefix, const char *wname, int kh, int kw, int cin,
                   int cout, nn_conv *out, char *err, size_t errlen)
{
    char name[300];
    int wshape[4] = { kh, kw, cin, cout };
    memset(out, 0, sizeof *out);
    out->kh = kh;
    out->kw = kw;
    out->cin = cin;
    out->cout = cout;
    snprintf(name, sizeof name, "%s/%s", prefix, wname);
    out->w = nets_take_copy(m, name, 4, wshape, err, errlen);
    if (!out->w)
        return -1;
    snprintf(name, sizeof name, "%s/bias", prefix);
    out->b = nets_take_copy(m, name, 1, &cout, err, errlen);
    if (!out->b) {
        nets_conv_free(out);
        return -1;
    }
    return 0;
}

int nets_take_sepconv(fw_model *m, const char *prefix, int cin, int cout, nn_sepconv *out,
                      char *err, size_t errlen)
{
    char name[300];
    int dshape[4] = { 3, 3, cin, 1 }, pshape[4] = { 1, 1, cin, cout };
    memset(out, 0, sizeof *out);
    out->cin = cin;
    out->cout = cout;
    snprintf(name, sizeof name, "%s/depthwise_filter", prefix);
    if (!(out->dw = nets_take_copy(m, name, 4, dshape, err, errlen)))
        goto err;
    snprintf(name, sizeof name, "%s/pointwise_filter", prefix);
    if (!(out->pw = nets_take_copy(m, name, 4, pshape, err, errlen)))
        goto err;
    snprintf(name, sizeof name, "%s/bias", prefix);
    if (!(out->b = nets_take_copy(m, name, 1, &cout, err, errlen)))
        goto err;
    return 0;
err:
    nets_sepconv_free(out);
    return -1;
}

/* Loads one model file and hands it to its network's builder; the dequantised model is only
 * needed while building. */
static int load_one(const char *dir, const char *file, int (*build)(fw_model *, void *, char *, size_t),
                    void *net, char *err, size_t errlen)
{
    fw_model *m = fw_model_load(dir, file, err, errlen);
    if (!m)
        return -1;
    int rc = build(m, net, err, errlen);
    if (rc == 0)
        rc = fw_model_check_all_taken(m, err, errlen);
    fw_model_free(m);
    return rc;
}

static int build_det(fw_model *m, void *net, char *err, size_t errlen)
{
    return tinydet_load(m, net, err, errlen);
}

static int build_lm(fw_model *m, void *net, char *err, size_t errlen)
{
    return landmark_load(m, net, err, errlen);
}

static int build_rec(fw_model *m, void *net, char *err, size_t errlen)
{
    return recog_load(m, net, err, errlen);
}

int fw_nets_load(const char *dir, fw_nets **out, char *err, size_t errlen)
{
    *out = NULL;
    fw_nets *n = calloc(1, sizeof *n);
    if (!n) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* The server's thread pool is the parallelism; OpenBLAS threads would only fight it. */
    openblas_set_num_threads(1);
    if (load_one(dir, "tiny_face_detector_model", build_det, &n->det, err, errlen) != 0 ||
        load_one(dir, "face_landmark_68_model", build_lm, &n->lm, err, errlen) != 0 ||
        load_one(dir, "face_recognition_model", build_rec, &n->rec, err, errlen) != 0)
        goto err;
    *out = n;
    return 0;
err:
    fw_nets_free(n);
    return -1;
}

void fw_nets_free(fw_nets *nets)
{
    if (!nets)
        return;
    tinydet_free(&nets->det);
    landmark_free(&nets->lm);
    recog_free(&nets->rec);
    free(nets);
}

fw_nets_ws *fw_nets_ws_new(const fw_nets *nets, int max_det_size)
{
    if (!nets || max_det_size < 32 || max_det_size > FW_DET_MAX_SIZE || max_det_size % 32 != 0)
        return NULL;
    /* The detector's needs grow with the size, but not strictly (its conv0 band is rounded to
     * whole row pairs), so take the largest over every size it may be run at. */
    size_t need = 0;
    for (int s = 32; s <= max_det_size; s += 32)
        if (tinydet_ws_floats(s) > need)
            need = tinydet_ws_floats(s);
    size_t l = landmark_ws_floats(), r = recog_ws_floats();
    if (l > need)
        need = l;
    if (r > need)
        need = r;
    fw_nets_ws *ws = calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    size_t bytes = (need * sizeof(float) + 63) & ~(size_t)63;
    ws->buf = aligned_alloc(64, bytes);
    if (!ws->buf) {
        free(ws);
        return NULL;
    }
    ws->cap = need;
    ws->max_det_size = max_det_size;
    return ws;
}

void fw_nets_ws_set_pause(fw_nets_ws *ws, fw_pause pause)
{
    if (ws)
        ws->pause = pause;
}

void fw_nets_ws_free(fw_nets_ws *ws)
{
    if (!ws)
        return;
    free(ws->buf);
    free(ws);
}
