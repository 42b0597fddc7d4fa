/*
 * recog.c — face-api's face recognition net (a dlib-style ResNet-34 variant, 128-d output).
 *
 *   input 150 x 150 x 3, (rgb - mean) / 255
 *   conv32_down  7x7 stride 2 "valid" + scale + relu        72 x 72 x 32
 *   max pool 3x3 stride 2 "valid"                           35 x 35 x 32
 *   14 residual blocks (conv 3x3 + scale + relu, conv 3x3 + scale, add shortcut, relu); the
 *   "down" blocks start with a stride-2 "valid" conv and take as shortcut the 2x2 average pool
 *   of their input, zero-padded in channels, with the conv result zero-extended by a row and a
 *   column when the pooled map is larger (35 -> 17 -> 8 -> 4 -> 2)
 *   global average -> 256, times fc (256 x 128, no bias)
 *
 * Each "scale" layer (x * weights + biases after the conv bias) is folded into its conv at
 * load time.
 */
#include "engine/nets_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const float rec_mean[3] = { 122.782f, 117.001f, 104.298f };

/* map: the size of the block's conv outputs (before a down block's padding to the shortcut). */
static const struct {
    const char *name;
    int cin, cout, down, map;
} rec_blocks[RECOG_RES_BLOCKS] = {
    { "conv32_1", 32, 32, 0, 35 },      { "conv32_2", 32, 32, 0, 35 },
    { "conv32_3", 32, 32, 0, 35 },      { "conv64_down", 32, 64, 1, 17 },
    { "conv64_1", 64, 64, 0, 17 },      { "conv64_2", 64, 64, 0, 17 },
    { "conv64_3", 64, 64, 0, 17 },      { "conv128_down", 64, 128, 1, 8 },
    { "conv128_1", 128, 128, 0, 8 },    { "conv128_2", 128, 128, 0, 8 },
    { "conv256_down", 128, 256, 1, 3 }, { "conv256_1", 256, 256, 0, 4 },
    { "conv256_2", 256, 256, 0, 4 },    { "conv256_down_out", 256, 256, 1, 1 },
};

#ifndef REC_WINO2_MIN_MAP
#define REC_WINO2_MIN_MAP 8
#endif
#ifndef REC_WINO4_MIN_MAP
#define REC_WINO4_MIN_MAP 8
#endif

/* How a stride-1 3x3 conv on a map x map input runs. Winograd trades 9 weights per
 * (cin, cout) pair for 16 (F(2x2)) or 36 (F(4x4)): worth it while the map has enough tiles to
 * reuse them. The net's weights only just fit the L3, so on the 4x4 maps (4 tiles of F(2x2),
 * 1 of F(4x4)) the extra weight traffic costs more than the multiplies saved. Measured with
 * bin/bench_nets 30 recog, variants back to back (medians, ms): F(4x4) from 8x8 up 4.3-4.7
 * (chosen); F(4x4) from 17x17 up and F(2x2) on 8x8 4.5-4.8; F(2x2) only, from 8x8 up 5.2-5.6;
 * F(4x4) on the 4x4 maps too 5.1-5.4; F(2x2) on the 4x4 maps 4.3-5.1, no clear gain.
 * So F(2x2) goes unused by default; both thresholds can be set with -D to repeat this. */
static enum nn_pack rec_pack_kind(int map)
{
    if (map >= REC_WINO4_MIN_MAP)
        return NN_PACK_WINO4;
    return map >= REC_WINO2_MIN_MAP ? NN_PACK_WINO2 : NN_PACK_GEMM;
}

#define REC_ACT ((size_t)72 * 72 * 32) /* the largest activation: conv32_down's output */

static void recog_conv_free(recog_conv *rc)
{
    nets_conv_free(&rc->conv);
    nn_packed_free(&rc->pk);
}

/* prefix/conv/{filters,bias} and prefix/scale/{weights,biases}, folded into one conv:
 * ((x*w + b) * s + t) = x*(w*s) + (b*s + t). */
static int take_scaled_conv(fw_model *m, const char *prefix, int k, int cin, int cout,
                            enum nn_pack kind, recog_conv *rc, char *err, size_t errlen)
{
    char name[300];
    const float *s, *t;
    nn_conv *out = &rc->conv;
    rc->pk.w = NULL;
    snprintf(name, sizeof name, "%s/conv", prefix);
    if (nets_take_conv(m, name, "filters", k, k, cin, cout, out, err, errlen) != 0)
        return -1;
    snprintf(name, sizeof name, "%s/scale/weights", prefix);
    if (!(s = fw_model_take(m, name, 1, &cout, err, errlen)))
        goto err;
    snprintf(name, sizeof name, "%s/scale/biases", prefix);
    if (!(t = fw_model_take(m, name, 1, &cout, err, errlen)))
        goto err;
    size_t rows = (size_t)k * (size_t)k * (size_t)cin;
    for (size_t r = 0; r < rows; r++)
        for (int o = 0; o < cout; o++)
            out->w[r * (size_t)cout + (size_t)o] *= s[o];
    for (int o = 0; o < cout; o++)
        out->b[o] = out->b[o] * s[o] + t[o];
    if (nn_conv_pack(out, kind, &rc->pk) != 0) {
        snprintf(err, errlen, "%s: out of memory", m->label);
        goto err;
    }
    return 0;
err:
    recog_conv_free(rc);
    return -1;
}

int recog_load(fw_model *m, recog_net *net, char *err, size_t errlen)
{
    char prefix[64];
    int fc[2] = { 256, FW_DESCRIPTOR_LEN };
    if (take_scaled_conv(m, "conv32_down", 7, 3, 32, NN_PACK_GEMM, &net->conv32_down, err,
                         errlen) != 0)
        return -1;
    for (int i = 0; i < RECOG_RES_BLOCKS; i++) {
        recog_block *b = &net->block[i];
        b->down = rec_blocks[i].down;
        snprintf(prefix, sizeof prefix, "%s/conv1", rec_blocks[i].name);
        if (take_scaled_conv(m, prefix, 3, rec_blocks[i].cin, rec_blocks[i].cout,
                             b->down ? NN_PACK_GEMM : rec_pack_kind(rec_blocks[i].map), &b->conv1,
                             err, errlen) != 0)
            goto err;
        snprintf(prefix, sizeof prefix, "%s/conv2", rec_blocks[i].name);
        if (take_scaled_conv(m, prefix, 3, rec_blocks[i].cout, rec_blocks[i].cout,
                             rec_pack_kind(rec_blocks[i].map), &b->conv2, err, errlen) != 0)
            goto err;
    }
    if (!(net->fc = nets_take_copy(m, "fc", 2, fc, err, errlen)))
        goto err;
    return 0;
err:
    recog_free(net);
    return -1;
}

void recog_free(recog_net *net)
{
    recog_conv_free(&net->conv32_down);
    for (int i = 0; i < RECOG_RES_BLOCKS; i++) {
        recog_conv_free(&net->block[i].conv1);
        recog_conv_free(&net->block[i].conv2);
    }
    free(net->fc);
    net->fc = NULL;
}

size_t recog_ws_floats(void)
{
    return 3 * NETS_ROUND(REC_ACT) + NETS_ROUND(NN_COL_FLOATS);
}

double fw_recog_flops(void)
{
    double f = 72.0 * 72 * 147 * 32;
    int h = 35;
    for (int i = 0; i < RECOG_RES_BLOCKS; i++) {
        double cin = rec_blocks[i].cin, cout = rec_blocks[i].cout;
        int oh = rec_blocks[i].down ? (h - 3) / 2 + 1 : h;
        f += (double)oh * oh * 9 * (cin * cout + cout * cout);
        h = rec_blocks[i].down ? (h - 2) / 2 + 1 : h;
    }
    f += 256.0 * FW_DESCRIPTOR_LEN;
    return 2 * f;
}

/* The end of a down block: out = relu(extend(conv) + pad_channels(avgpool2x2(x))), shaped
 * like the pooled map. conv is at most as large as it (face-api pads it by one row/column). */
static void down_sum(const nn_tensor *x, const nn_tensor *conv, nn_tensor *out)
{
    int cin = x->c, c = out->c;
    for (int i = 0; i < out->h; i++) {
        for (int j = 0; j < out->w; j++) {
            float *restrict o = out->d + ((size_t)i * (size_t)out->w + (size_t)j) * (size_t)c;
            if (i < conv->h && j < conv->w)
                memcpy(o, conv->d + ((size_t)i * (size_t)conv->w + (size_t)j) * (size_t)c,
                       (size_t)c * sizeof(float));
            else
                memset(o, 0, (size_t)c * sizeof(float));
            const float *p00 = x->d + ((size_t)(2 * i) * (size_t)x->w + (size_t)(2 * j)) * (size_t)cin;
            const float *p01 = p00 + cin;
            const float *p10 = p00 + (size_t)x->w * (size_t)cin;
            const float *p11 = p10 + cin;
            for (int ch = 0; ch < cin; ch++)
                o[ch] += (p00[ch] + p01[ch] + p10[ch] + p11[ch]) * 0.25f;
            for (int ch = 0; ch < c; ch++)
                o[ch] = o[ch] > 0.0f ? o[ch] : 0.0f;
        }
    }
}

/* One conv of the net (all of them pad alike on every side), with pause points (nets.h)
 * inside and after it. */
static void conv(const fw_nets_ws *ws, const nn_tensor *in, const recog_conv *rc, int stride,
                 int pad, enum nn_act act, float *col, nn_tensor *out)
{
    nn_conv2d_packed(in, &rc->conv, &rc->pk, stride, pad, pad, act, col, &ws->pause, out);
    nets_pause(ws);
}

int fw_recog_run(const fw_nets *nets, fw_nets_ws *ws, const uint8_t *rgb, float out[128])
{
    if (!nets || !ws || !rgb || !out || ws->cap < recog_ws_floats())
        return -1;
    const recog_net *net = &nets->rec;
    size_t act = NETS_ROUND(REC_ACT);
    float *buf[3] = { ws->buf, ws->buf + act, ws->buf + 2 * act };
    float *col = ws->buf + 3 * act;

    nn_tensor in = { buf[1], FW_RECOG_SIZE, FW_RECOG_SIZE, 3 };
    nn_normalize(rgb, in.h, in.w, rec_mean, in.d);
    nn_tensor c0 = { buf[0], 72, 72, 32 };
    conv(ws, &in, &net->conv32_down, 2, 0, NN_ACT_RELU, col, &c0);
    nn_tensor x = { buf[1], 35, 35, 32 };
    nn_maxpool(&c0, 3, 2, 0, 0, &x);

    /* x lives in one of the three buffers; the block's two convs use the other two. */
    int xi = 1;
    for (int i = 0; i < RECOG_RES_BLOCKS; i++) {
        const recog_block *b = &net->block[i];
        float *p = buf[(xi + 1) % 3], *q = buf[(xi + 2) % 3];
        int cout = b->conv1.conv.cout;
        if (!b->down) {
            nn_tensor t1 = { p, x.h, x.w, cout }, t2 = { q, x.h, x.w, cout };
            conv(ws, &x, &b->conv1, 1, 1, NN_ACT_RELU, col, &t1);
            conv(ws, &t1, &b->conv2, 1, 1, NN_ACT_NONE, col, &t2);
            size_t n = (size_t)x.h * (size_t)x.w * (size_t)cout;
            nn_add(t2.d, x.d, n);
            nn_relu(t2.d, n);
            x = t2;
            xi = (xi + 2) % 3;
        } else {
            int oh = (x.h - 3) / 2 + 1, ph = (x.h - 2) / 2 + 1;
            nn_tensor t1 = { p, oh, oh, cout }, t2 = { q, oh, oh, cout };
            conv(ws, &x, &b->conv1, 2, 0, NN_ACT_RELU, col, &t1);
            conv(ws, &t1, &b->conv2, 1, 1, NN_ACT_NONE, col, &t2);
            nn_tensor sum = { p, ph, ph, cout };
            down_sum(&x, &t2, &sum);
            x = sum;
            xi = (xi + 1) % 3;
        }
    }
    /* Global average over the 2x2 map, then the projection to 128-d. */
    float avg[256];
    size_t npix = (size_t)x.h * (size_t)x.w;
    for (int ch = 0; ch < 256; ch++) {
        float s = 0.0f;
        for (size_t k = 0; k < npix; k++)
            s += x.d[k * 256 + (size_t)ch];
        avg[ch] = s / (float)npix;
    }
    nn_fc(avg, 256, FW_DESCRIPTOR_LEN, net->fc, NULL, out);
    return 0;
}
