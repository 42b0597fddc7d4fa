/*
 * nn.c — tensor operations for the face-api networks (see nn.h).
 *
 * The inner loops run over channels, which are contiguous in HWC, so the compiler vectorises
 * them (the engine is built with -O3 -march=native). Heavy lifting is left to cblas_sgemm.
 */
#include "engine/nn.h"

#include <cblas.h>
#include <float.h>
#include <string.h>

int nn_same_pad(int in, int k, int stride, int *pad_before)
{
    int out = (in + stride - 1) / stride;
    int total = (out - 1) * stride + k - in;
    if (total < 0)
        total = 0;
    *pad_before = total / 2;
    return out;
}

void nn_normalize(const uint8_t *rgb, int h, int w, const float mean[3], float *out)
{
    size_t n = (size_t)h * (size_t)w;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            out[i * 3 + c] = ((float)rgb[i * 3 + c] - mean[c]) / 255.0f;
}

/* Bias and activation over a block of rows x n outputs. Leaky ReLU is max(x, 0.1x), which is
 * what face-api's relu(x - 0.1x) + 0.1x computes up to rounding. */
static void bias_act(float *restrict y, size_t rows, int n, const float *restrict b,
                     enum nn_act act)
{
    for (size_t r = 0; r < rows; r++) {
        float *restrict row = y + r * (size_t)n;
        switch (act) {
        case NN_ACT_NONE:
            for (int j = 0; j < n; j++)
                row[j] += b[j];
            break;
        case NN_ACT_RELU:
            for (int j = 0; j < n; j++) {
                float v = row[j] + b[j];
                row[j] = v > 0.0f ? v : 0.0f;
            }
            break;
        case NN_ACT_LEAKY:
            for (int j = 0; j < n; j++) {
                float v = row[j] + b[j];
                row[j] = v > 0.0f ? v : 0.1f * v;
            }
            break;
        }
    }
}

/* One im2col row per output pixel in [p0, p1): the kh*kw*cin inputs it sees, zeros where
 * the window hangs over the edge. */
static void im2col_block(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t,
                         int pad_l, int ow, size_t p0, size_t p1, float *col)
{
    size_t k = (size_t)cv->kh * (size_t)cv->kw * (size_t)in->c;
    size_t cin = (size_t)in->c;
    for (size_t p = p0; p < p1; p++) {
        int oy = (int)(p / (size_t)ow), ox = (int)(p % (size_t)ow);
        float *row = col + (p - p0) * k;
        for (int ky = 0; ky < cv->kh; ky++) {
            int iy = oy * stride - pad_t + ky;
            for (int kx = 0; kx < cv->kw; kx++) {
                int ix = ox * stride - pad_l + kx;
                float *dst = row + ((size_t)ky * (size_t)cv->kw + (size_t)kx) * cin;
                if (iy < 0 || iy >= in->h || ix < 0 || ix >= in->w)
                    memset(dst, 0, cin * sizeof(float));
                else
                    memcpy(dst, in->d + ((size_t)iy * (size_t)in->w + (size_t)ix) * cin,
                           cin * sizeof(float));
            }
        }
    }
}

void nn_conv2d(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t, int pad_l,
               enum nn_act act, float *col, nn_tensor *out)
{
    size_t npix = (size_t)out->h * (size_t)out->w;
    size_t k = (size_t)cv->kh * (size_t)cv->kw * (size_t)cv->cin;

    if (cv->kh == 1 && cv->kw == 1 && stride == 1 && pad_t == 0 && pad_l == 0 &&
        out->h == in->h && out->w == in->w) {
        /* A 1x1 convolution is already a GEMM on the input. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)npix, cv->cout, (int)k,
                    1.0f, in->d, (int)k, cv->w, cv->cout, 0.0f, out->d, cv->cout);
        bias_act(out->d, npix, cv->cout, cv->b, act);
        return;
    }
    size_t blk = NN_COL_FLOATS / k;
    if (blk == 0)
        blk = 1; /* never for our nets: k <= 2304 */
    for (size_t p0 = 0; p0 < npix; p0 += blk) {
        size_t p1 = p0 + blk < npix ? p0 + blk : npix;
        im2col_block(in, cv, stride, pad_t, pad_l, out->w, p0, p1, col);
        float *y = out->d + p0 * (size_t)cv->cout;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(p1 - p0), cv->cout,
                    (int)k, 1.0f, col, (int)k, cv->w, cv->cout, 0.0f, y, cv->cout);
        bias_act(y, p1 - p0, cv->cout, cv->b, act);
    }
}

/* Depthwise 3x3 for output pixels [p0, p1) into dst (one cin-vector per pixel). */
static void depthwise_block(const nn_tensor *in, const float *restrict dw, int stride, int pad_t,
                            int pad_l, int ow, size_t p0, size_t p1, float *restrict dst)
{
    int c = in->c;
    for (size_t p = p0; p < p1; p++) {
        int oy = (int)(p / (size_t)ow), ox = (int)(p % (size_t)ow);
        float *restrict acc = dst + (p - p0) * (size_t)c;
        for (int ch = 0; ch < c; ch++)
            acc[ch] = 0.0f;
        for (int ky = 0; ky < 3; ky++) {
            int iy = oy * stride - pad_t + ky;
            if (iy < 0 || iy >= in->h)
                continue;
            for (int kx = 0; kx < 3; kx++) {
                int ix = ox * stride - pad_l + kx;
                if (ix < 0 || ix >= in->w)
                    continue;
                const float *restrict src = in->d + ((size_t)iy * (size_t)in->w + (size_t)ix) * (size_t)c;
                const float *restrict wk = dw + (size_t)(ky * 3 + kx) * (size_t)c;
                for (int ch = 0; ch < c; ch++)
                    acc[ch] += src[ch] * wk[ch];
            }
        }
    }
}

void nn_sepconv2d(const nn_tensor *in, const nn_sepconv *sc, int stride, int pad_t, int pad_l,
                  enum nn_act act, float *col, nn_tensor *out)
{
    size_t npix = (size_t)out->h * (size_t)out->w;
    size_t blk = NN_COL_FLOATS / (size_t)sc->cin;
    for (size_t p0 = 0; p0 < npix; p0 += blk) {
        size_t p1 = p0 + blk < npix ? p0 + blk : npix;
        depthwise_block(in, sc->dw, stride, pad_t, pad_l, out->w, p0, p1, col);
        float *y = out->d + p0 * (size_t)sc->cout;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(p1 - p0), sc->cout,
                    sc->cin, 1.0f, col, sc->cin, sc->pw, sc->cout, 0.0f, y, sc->cout);
        bias_act(y, p1 - p0, sc->cout, sc->b, act);
    }
}

void nn_maxpool(const nn_tensor *in, int k, int stride, int pad_t, int pad_l, nn_tensor *out)
{
    int c = in->c;
    for (int oy = 0; oy < out->h; oy++) {
        for (int ox = 0; ox < out->w; ox++) {
            float *restrict dst = out->d + ((size_t)oy * (size_t)out->w + (size_t)ox) * (size_t)c;
            for (int ch = 0; ch < c; ch++)
                dst[ch] = -FLT_MAX;
            for (int ky = 0; ky < k; ky++) {
                int iy = oy * stride - pad_t + ky;
                if (iy < 0 || iy >= in->h)
                    continue;
                for (int kx = 0; kx < k; kx++) {
                    int ix = ox * stride - pad_l + kx;
                    if (ix < 0 || ix >= in->w)
                        continue;
                    const float *restrict src = in->d + ((size_t)iy * (size_t)in->w + (size_t)ix) * (size_t)c;
                    for (int ch = 0; ch < c; ch++)
                        dst[ch] = src[ch] > dst[ch] ? src[ch] : dst[ch];
                }
            }
        }
    }
}

void nn_avgpool_valid(const nn_tensor *in, int k, int stride, nn_tensor *out)
{
    int c = in->c;
    float inv = 1.0f / (float)(k * k);
    for (int oy = 0; oy < out->h; oy++) {
        for (int ox = 0; ox < out->w; ox++) {
            float *restrict dst = out->d + ((size_t)oy * (size_t)out->w + (size_t)ox) * (size_t)c;
            for (int ch = 0; ch < c; ch++)
                dst[ch] = 0.0f;
            for (int ky = 0; ky < k; ky++) {
                for (int kx = 0; kx < k; kx++) {
                    int iy = oy * stride + ky, ix = ox * stride + kx;
                    const float *restrict src = in->d + ((size_t)iy * (size_t)in->w + (size_t)ix) * (size_t)c;
                    for (int ch = 0; ch < c; ch++)
                        dst[ch] += src[ch];
                }
            }
            for (int ch = 0; ch < c; ch++)
                dst[ch] *= inv;
        }
    }
}

void nn_fc(const float *in, int m, int n, const float *w, const float *b, float *out)
{
    for (int j = 0; j < n; j++)
        out[j] = b ? b[j] : 0.0f;
    for (int i = 0; i < m; i++) {
        float v = in[i];
        const float *restrict row = w + (size_t)i * (size_t)n;
        for (int j = 0; j < n; j++)
            out[j] += v * row[j];
    }
}

void nn_add(float *restrict acc, const float *restrict x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        acc[i] += x[i];
}

void nn_relu(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void nn_relu_to(const float *restrict x, float *restrict out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
