/*
 * tinydet.c — face-api's tiny face detector (a MobileNet-style Tiny YOLO v2) and its decoder.
 *
 *   input S x S x 3, (rgb - mean) / 255
 *   conv0   3x3 "valid" 3->16 + leaky(0.1)           S-2
 *   pool    2x2 stride 2                              (S-2)/2
 *   conv1..conv5: pad 1, depthwise 3x3 + pointwise + bias + leaky, each followed by a 2x2 max
 *   pool with TF "same" padding (stride 2, the last one stride 1)      ... S/32
 *   conv8   1x1 512->25, no activation: 5 anchors x (tx, ty, tw, th, score logit)
 *
 * The convolutions' outputs before their stride-2 pools are the largest tensors of the net
 * (conv0's: 16 channels at nearly full resolution), so each of those convolutions runs with
 * its pool a band of rows at a time and only the pooled maps are ever stored whole: the
 * workspace is half as large, and the band stays in cache between conv and pool.
 */
#include "engine/nets_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const float det_mean[3] = { 117.001f, 114.697f, 97.404f };

static const float det_anchors[FW_DET_ANCHORS][2] = {
    { 1.603231f, 2.094468f }, { 6.041143f, 7.080126f }, { 2.882459f, 3.518061f },
    { 4.266906f, 5.178857f }, { 9.041765f, 10.66308f },
};

static const int det_channels[7] = { 3, 16, 32, 64, 128, 256, 512 };

int tinydet_load(fw_model *m, tinydet_net *net, char *err, size_t errlen)
{
    char prefix[16];
    if (nets_take_conv(m, "conv0", "filters", 3, 3, 3, 16, &net->conv0, err, errlen) != 0)
        return -1;
    for (int i = 0; i < 5; i++) {
        snprintf(prefix, sizeof prefix, "conv%d", i + 1);
        if (nets_take_sepconv(m, prefix, det_channels[i + 1], det_channels[i + 2], &net->conv[i],
                              err, errlen) != 0)
            goto err;
    }
    if (nets_take_conv(m, "conv8", "filters", 1, 1, 512, 5 * FW_DET_ANCHORS, &net->conv8, err,
                       errlen) != 0)
        goto err;
    return 0;
err:
    tinydet_free(net);
    return -1;
}

void tinydet_free(tinydet_net *net)
{
    nets_conv_free(&net->conv0);
    for (int i = 0; i < 5; i++)
        nets_sepconv_free(&net->conv[i]);
    nets_conv_free(&net->conv8);
}

/* The largest activations of this net are the outputs of conv0..conv4 before their 2x2/2 max
 * pools. Those run a band of rows at a time, so only the pooled maps are ever stored whole;
 * a band is as many row pairs as fit DET_BAND_FLOATS (1 MB: stays in L2).
 * Each band also ends with a pause point (nets.h), so a band is kept short too: at most
 * DET_BAND_PIXELS outputs (conv0's direct kernel, ~0.3 ms) and DET_BAND_MACS multiply-adds
 * (the separable convs on BLAS, ~0.2 ms). Whole, a band of conv0 at 416 was 3 ms and one of
 * conv4 1.5 ms; the smaller GEMMs cost no measurable time. */
#define DET_BAND_FLOATS ((size_t)1 << 18)
#define DET_BAND_PIXELS 2048
#define DET_BAND_MACS ((size_t)3 << 20)

/* Row pairs per band of a w-wide conv with c outputs of macs multiply-adds each. */
static int band_pairs(int w, int c, size_t macs)
{
    size_t r = DET_BAND_FLOATS / ((size_t)2 * (size_t)w * (size_t)c);
    size_t p = DET_BAND_PIXELS / ((size_t)2 * (size_t)w);
    size_t m = DET_BAND_MACS / ((size_t)2 * (size_t)w * macs);
    if (p < r)
        r = p;
    if (m < r)
        r = m;
    return r < 1 ? 1 : (int)r;
}

/* Multiply-adds per output pixel of a separable conv (depthwise 3x3, then pointwise). */
static size_t sep_macs(const nn_sepconv *sc)
{
    return (size_t)sc->cin * (9 + (size_t)sc->cout);
}

/* Largest map of the ping-pong pair, from the same arithmetic as fw_tinydet_run(). */
static size_t det_max_act(int size)
{
    size_t best = (size_t)size * (size_t)size * 3;
    int h = (size - 2) / 2; /* after conv0 + pool */
    for (int i = 0; i < 5; i++) {
        size_t m = (size_t)h * (size_t)h * (size_t)det_channels[i + 1]; /* conv[i]'s input */
        if (m > best)
            best = m;
        if (i < 4)
            h = (h + 1) / 2;
    }
    size_t last = (size_t)h * (size_t)h * 512; /* conv5's output, pooled at stride 1 */
    return last > best ? last : best;
}

size_t tinydet_ws_floats(int size)
{
    return 2 * NETS_ROUND(det_max_act(size)) + NETS_ROUND(NN_COL_FLOATS) +
           NETS_ROUND(DET_BAND_FLOATS);
}

/* conv = leaky(sepconv(in)) for conv rows [r0, r0 + conv->h), stride 1, "same" padding. They
 * need input rows r0-1 .. r0 + conv->h: the view starts there, padded above only at the top
 * edge and below only where it ends at the map's edge. */
static void sepconv_band(const nn_tensor *in, const nn_sepconv *sc, float *col, int r0,
                         nn_tensor *conv)
{
    int r1 = r0 + conv->h;
    int v0 = r0 > 0 ? r0 - 1 : 0, v1 = r1 + 1 < in->h ? r1 + 1 : in->h;
    nn_tensor src = { in->d + (size_t)v0 * (size_t)in->w * (size_t)in->c, v1 - v0, in->w, in->c };
    nn_sepconv2d(&src, sc, 1, r0 == 0 ? 1 : 0, 1, NN_ACT_LEAKY, col, conv);
}

/* out = maxpool2x2/2(leaky(sepconv(in))), "same" padding on both, one band of rows at a time
 * through band (sepconv_band), with a pause point after each. */
static void sepconv_pool(const fw_nets_ws *ws, const nn_tensor *in, const nn_sepconv *sc,
                         float *col, float *band, nn_tensor *out)
{
    int pairs = band_pairs(in->w, sc->cout, sep_macs(sc));
    for (int y = 0; y < out->h; y += pairs) {
        int n = out->h - y < pairs ? out->h - y : pairs;
        int r0 = 2 * y, r1 = 2 * (y + n) < in->h ? 2 * (y + n) : in->h;
        nn_tensor conv = { band, r1 - r0, in->w, sc->cout };
        sepconv_band(in, sc, col, r0, &conv);
        nn_tensor dst = { out->d + (size_t)y * (size_t)out->w * (size_t)out->c, n, out->w, out->c };
        nn_maxpool(&conv, 2, 2, 0, 0, &dst);
        nets_pause(ws);
    }
}

/* out = leaky(sepconv(in)), stride 1, "same" padding, a few rows at a time (sepconv_band) with
 * a pause point after each (conv5: 13 rows of 256 -> 512 at 416, 1.2 ms whole). */
static void sepconv_rows(const fw_nets_ws *ws, const nn_tensor *in, const nn_sepconv *sc,
                         float *col, nn_tensor *out)
{
    size_t per = (size_t)in->w * sep_macs(sc), rows = DET_BAND_MACS / (per ? per : 1);
    int step = rows < 1 ? 1 : rows > (size_t)out->h ? out->h : (int)rows;
    for (int r0 = 0; r0 < out->h; r0 += step) {
        int r1 = r0 + step < out->h ? r0 + step : out->h;
        nn_tensor dst = { out->d + (size_t)r0 * (size_t)out->w * (size_t)out->c, r1 - r0, out->w, out->c };
        sepconv_band(in, sc, col, r0, &dst);
        nets_pause(ws);
    }
}

double fw_tinydet_flops(int size)
{
    double h = size - 2, f = h * h * 27 * 16; /* conv0 */
    h /= 2;
    for (int i = 0; i < 5; i++) {
        f += h * h * (9.0 * det_channels[i + 1] + (double)det_channels[i + 1] * det_channels[i + 2]);
        if (i < 4)
            h = ceil(h / 2);
    }
    f += h * h * 512 * 25;
    return 2 * f;
}

int fw_tinydet_run(const fw_nets *nets, fw_nets_ws *ws, const uint8_t *rgb, int size, float *grid)
{
    if (!nets || !ws || !rgb || !grid || size < 32 || size % 32 != 0 ||
        size > ws->max_det_size || tinydet_ws_floats(size) > ws->cap)
        return -1;
    const tinydet_net *net = &nets->det;
    size_t act = NETS_ROUND(det_max_act(size));
    float *a = ws->buf, *b = a + act, *col = b + act, *band = col + NETS_ROUND(NN_COL_FLOATS);

    nn_tensor in = { a, size, size, 3 };
    nn_normalize(rgb, size, size, det_mean, in.d);

    /* conv0 + leaky + 2x2/2 max pool, band by band. S-2 is even (S is a multiple of 32), so
     * this pool needs no padding. */
    int c0 = size - 2, p0 = c0 / 2, pairs = band_pairs(c0, 16, 27 * 16);
    nn_tensor cur = { b, p0, p0, 16 };
    for (int y = 0; y < p0; y += pairs) {
        int n = p0 - y < pairs ? p0 - y : pairs;
        nn_tensor src = { in.d + (size_t)(2 * y) * (size_t)size * 3, 2 * n + 2, size, 3 };
        nn_tensor conv = { band, 2 * n, c0, 16 };
        nn_conv2d(&src, &net->conv0, 1, 0, 0, NN_ACT_LEAKY, col, &conv);
        nn_tensor dst = { cur.d + (size_t)y * (size_t)p0 * 16, n, p0, 16 };
        nn_maxpool(&conv, 2, 2, 0, 0, &dst);
        nets_pause(ws);
    }

    /* conv1..conv4 with their pools, ping-ponging between a and b. */
    float *other = a;
    for (int i = 0; i < 4; i++) {
        int oh = (cur.h + 1) / 2;
        nn_tensor pool = { other, oh, oh, net->conv[i].cout };
        sepconv_pool(ws, &cur, &net->conv[i], col, band, &pool);
        other = cur.d;
        cur = pool;
    }
    /* conv5 (S/32 square, 512 channels) and its stride-1 pool, which pads bottom/right. */
    nn_tensor c5 = { other, cur.h, cur.w, 512 };
    sepconv_rows(ws, &cur, &net->conv[4], col, &c5);
    int pad, ph = nn_same_pad(c5.h, 2, 1, &pad);
    nn_tensor p5 = { cur.d, ph, ph, 512 };
    nn_maxpool(&c5, 2, 1, pad, pad, &p5);
    cur = p5;
    nn_tensor out = { grid, cur.h, cur.w, 5 * FW_DET_ANCHORS };
    nn_conv2d(&cur, &net->conv8, 1, 0, 0, NN_ACT_NONE, col, &out);
    return 0;
}

static float sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

static float box_iou(const fw_det_box *p, const fw_det_box *q)
{
    float w = fminf(p->x + p->w, q->x + q->w) - fmaxf(p->x, q->x);
    float h = fminf(p->y + p->h, q->y + q->h) - fmaxf(p->y, q->y);
    if (w <= 0 || h <= 0)
        return 0;
    float inter = w * h;
    return inter / (p->w * p->h + q->w * q->h - inter);
}

/* Candidates best first; ties keep grid order so the result never depends on qsort. */
struct det_cand {
    float score;
    int idx;
};

static int cand_cmp(const void *pa, const void *pb)
{
    const struct det_cand *p = pa, *q = pb;
    if (p->score != q->score)
        return p->score > q->score ? -1 : 1;
    return (p->idx > q->idx) - (p->idx < q->idx);
}

int fw_tinydet_decode(const float *grid, int size, float score_threshold, float iou_threshold,
                      fw_det_box *boxes, int max_boxes)
{
    /* At most 32 x 32 cells x 5 anchors: the candidate list lives on the stack (40 KB). */
    struct det_cand cand[(FW_DET_MAX_SIZE / 32) * (FW_DET_MAX_SIZE / 32) * FW_DET_ANCHORS];
    if (!grid || !boxes || max_boxes <= 0 || size < 32 || size % 32 != 0 ||
        size > FW_DET_MAX_SIZE)
        return 0;
    int cells = size / 32, n = 0, kept = 0;
    float cell = (float)size / (float)cells;
    for (int i = 0; i < cells * cells * FW_DET_ANCHORS; i++) {
        float s = sigmoidf(grid[i * 5 + 4]);
        if (s >= score_threshold) {
            cand[n].score = s;
            cand[n].idx = i;
            n++;
        }
    }
    qsort(cand, (size_t)n, sizeof cand[0], cand_cmp);
    /* Greedy NMS as in face-api: a candidate survives unless it overlaps an already kept box
     * by more than the threshold (suppressed boxes suppress nothing). */
    for (int c = 0; c < n && kept < max_boxes; c++) {
        const float *g = grid + (size_t)cand[c].idx * 5;
        int a = cand[c].idx % FW_DET_ANCHORS, pos = cand[c].idx / FW_DET_ANCHORS;
        int row = pos / cells, col = pos % cells;
        fw_det_box bx;
        bx.w = expf(g[2]) * det_anchors[a][0] * cell;
        bx.h = expf(g[3]) * det_anchors[a][1] * cell;
        bx.x = ((float)col + sigmoidf(g[0])) * cell - bx.w / 2;
        bx.y = ((float)row + sigmoidf(g[1])) * cell - bx.h / 2;
        bx.score = cand[c].score;
        int keep = 1;
        for (int k = 0; k < kept && keep; k++)
            keep = box_iou(&boxes[k], &bx) <= iou_threshold;
        if (keep)
            boxes[kept++] = bx;
    }
    return kept;
}
