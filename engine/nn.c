/*
 * nn.c — tensor operations for the face-api networks (see nn.h).
 *
 * The inner loops run over channels, which are contiguous in HWC, so the compiler vectorises
 * them (the engine is built with -O3 -march=native). Heavy lifting is left to cblas_sgemm.
 * nn_conv2d picks, in order: Winograd F(2x2,3x3) for 3x3 stride-1 convs the network prepared
 * for it; the single live tap when the map is 1x1; a direct kernel for the detector's 3->16
 * first layer; a plain GEMM for 1x1 convs; otherwise im2col + GEMM in blocks of pixels. Each
 * choice is measured, see the comments at the functions.
 */
#include "engine/nn.h"

/* In ISO C mode (-std=c11) GCC never fuses a*b + c into one FMA instruction, which halves the
 * throughput of every multiply-add loop below; clang fuses within an expression already. The
 * rounding differs from TF.js's by far less than our tolerances either way. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

#include <cblas.h>
#include <float.h>
#include <stdlib.h>
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
 * the window hangs over the edge. A window row that lies wholly inside the image is one
 * contiguous run of kw*cin floats in HWC, so it is copied in one go. */
static void im2col_block(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t,
                         int pad_l, int ow, size_t p0, size_t p1, float *restrict col)
{
    size_t k = (size_t)cv->kh * (size_t)cv->kw * (size_t)in->c;
    size_t cin = (size_t)in->c, run = (size_t)cv->kw * cin;
    for (size_t p = p0; p < p1; p++) {
        int oy = (int)(p / (size_t)ow), ox = (int)(p % (size_t)ow);
        int ix0 = ox * stride - pad_l;
        int inside = ix0 >= 0 && ix0 + cv->kw <= in->w;
        float *row = col + (p - p0) * k;
        for (int ky = 0; ky < cv->kh; ky++) {
            int iy = oy * stride - pad_t + ky;
            float *dst = row + (size_t)ky * run;
            if (iy < 0 || iy >= in->h) {
                memset(dst, 0, run * sizeof(float));
                continue;
            }
            const float *src = in->d + ((size_t)iy * (size_t)in->w) * cin;
            if (inside) {
                memcpy(dst, src + (size_t)ix0 * cin, run * sizeof(float));
                continue;
            }
            for (int kx = 0; kx < cv->kw; kx++, dst += cin) {
                int ix = ix0 + kx;
                if (ix < 0 || ix >= in->w)
                    memset(dst, 0, cin * sizeof(float));
                else
                    memcpy(dst, src + (size_t)ix * cin, cin * sizeof(float));
            }
        }
    }
}

/* Output value with bias already in v. */
static inline float act_apply(float v, enum nn_act act)
{
    if (v > 0.0f || act == NN_ACT_NONE)
        return v;
    return act == NN_ACT_RELU ? 0.0f : 0.1f * v;
}

/* 16 floats as one value: GCC/Clang vector extension, lowered to whatever the target has
 * (one AVX-512 register, two AVX2 ones, ...). Loads/stores go through memcpy, so no alignment
 * is assumed. */
typedef float v16f __attribute__((vector_size(64)));

static inline v16f v16_load(const float *p)
{
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void v16_store_act(float *p, v16f v, enum nn_act act)
{
    float tmp[16];
    memcpy(tmp, &v, sizeof tmp);
    for (int o = 0; o < 16; o++)
        p[o] = act_apply(tmp[o], act);
}

#define C16_PIX 8 /* pixels per step: independent accumulators hide the FMA latency */

/* Direct 3x3 convolution, 3 input channels, 16 outputs (the detector's first layer): as a
 * GEMM its K is 27 and N 16, far too thin for BLAS, while here each output pixel is 27
 * broadcast-multiply-adds into one 16-float accumulator, 8 pixels at a time. Windows that
 * cross the border take the scalar path. */
static void conv3x3_c3_c16(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t,
                           int pad_l, enum nn_act act, nn_tensor *out)
{
    int off[27];
    v16f w[27], bias = v16_load(cv->b);
    for (int ky = 0, t = 0; ky < 3; ky++)
        for (int kx = 0; kx < 3; kx++)
            for (int ci = 0; ci < 3; ci++, t++)
                off[t] = (ky * in->w + kx) * 3 + ci;
    for (int t = 0; t < 27; t++)
        w[t] = v16_load(cv->w + t * 16);
    /* Output columns [x_lo, x_hi) have their whole window inside the image horizontally. */
    int x_lo = (pad_l + stride - 1) / stride, x_hi = (in->w - 3 + pad_l) / stride + 1;
    if (x_hi > out->w)
        x_hi = out->w;
    for (int oy = 0; oy < out->h; oy++) {
        int iy0 = oy * stride - pad_t;
        int row_inside = iy0 >= 0 && iy0 + 3 <= in->h;
        float *drow = out->d + (size_t)oy * (size_t)out->w * 16;
        int ox = 0;
        while (ox < out->w) {
            if (row_inside && ox >= x_lo && ox + C16_PIX <= x_hi) {
                const float *src = in->d + ((size_t)iy0 * (size_t)in->w +
                                            (size_t)(ox * stride - pad_l)) * 3;
                size_t step = (size_t)stride * 3;
                v16f acc[C16_PIX];
                for (int p = 0; p < C16_PIX; p++)
                    acc[p] = bias;
                for (int t = 0; t < 27; t++)
                    for (int p = 0; p < C16_PIX; p++)
                        acc[p] += src[(size_t)p * step + (size_t)off[t]] * w[t];
                for (int p = 0; p < C16_PIX; p++)
                    v16_store_act(drow + (size_t)(ox + p) * 16, acc[p], act);
                ox += C16_PIX;
                continue;
            }
            int ix0 = ox * stride - pad_l;
            v16f acc = bias;
            for (int t = 0; t < 27; t++) {
                int iy = iy0 + t / 9, ix = ix0 + (t / 3) % 3;
                if (iy >= 0 && iy < in->h && ix >= 0 && ix < in->w)
                    acc += in->d[((size_t)iy * (size_t)in->w + (size_t)ix) * 3 + (size_t)(t % 3)] * w[t];
            }
            v16_store_act(drow + (size_t)ox * 16, acc, act);
            ox++;
        }
    }
}

/*
 * Our own GEMM for weights packed once at load (nn_conv_pack, nn_conv_winograd_prepare).
 * cblas_sgemm repacks its B operand (the weights) on every call: profiled on the recognition
 * net, OpenBLAS spent ~20% of the forward pass in that copy (sgemm_itcopy), because the
 * networks' GEMMs are thin (K 32..2304, M often under 400) and each call sees its weights once.
 * Here the weights already sit in the order the micro-kernel reads them: panels of NN_NR
 * columns, each K rows of NN_NR contiguous floats (the last panel zero-padded), so the kernel
 * streams a panel linearly while it broadcasts NN_MR rows of A straight from the activations.
 * With AVX-512 an NN_MR x 32 tile is 16 accumulators of 16 floats, enough to hide the FMA
 * latency; elsewhere v16f is two or four registers, so fewer rows keep it from spilling.
 * Each output is one sequential sum over k, the same order a naive loop uses.
 */
#define NN_NR 32
#ifdef __AVX512F__
#define NN_MR 8
#else
#define NN_MR 3
#endif

typedef int32_t v16i __attribute__((vector_size(64)));

size_t nn_packed_floats(size_t k, size_t n)
{
    return k * ((n + NN_NR - 1) / NN_NR * NN_NR);
}

/* Element (kk, j) of a k x n matrix in the packed layout. */
static inline size_t packed_index(size_t k, size_t kk, size_t j)
{
    return (j / NN_NR) * k * NN_NR + kk * NN_NR + j % NN_NR;
}

static inline v16f v16_act(v16f v, enum nn_act act)
{
    if (act == NN_ACT_NONE)
        return v;
    v16i pos = v > (v16f){ 0 };
    v16f alt = act == NN_ACT_RELU ? (v16f){ 0 } : v * 0.1f;
    return (v16f)((pos & (v16i)v) | (~pos & (v16i)alt));
}

/* c[0..mr) x [0..nv) = act(init + a[0..mr) x panel), mr a compile-time constant after
 * inlining so the accumulators live in registers. */
static inline __attribute__((always_inline)) void
gemm_tile(int mr, size_t k, const float *restrict a, size_t lda, const float *restrict bp,
          const float *restrict init, size_t nv, enum nn_act act, float *restrict c, size_t ldc)
{
    v16f acc[NN_MR][2];
    v16f i0 = v16_load(init), i1 = v16_load(init + 16);
    for (int r = 0; r < mr; r++) {
        acc[r][0] = i0;
        acc[r][1] = i1;
    }
    for (size_t kk = 0; kk < k; kk++) {
        v16f b0 = v16_load(bp + kk * NN_NR), b1 = v16_load(bp + kk * NN_NR + 16);
        for (int r = 0; r < mr; r++) {
            float av = a[(size_t)r * lda + kk];
            acc[r][0] += av * b0;
            acc[r][1] += av * b1;
        }
    }
    for (int r = 0; r < mr; r++) {
        v16f y[2] = { v16_act(acc[r][0], act), v16_act(acc[r][1], act) };
        memcpy(c + (size_t)r * ldc, y, nv * sizeof(float));
    }
}

/* c (m x n, row stride ldc) = act(a (m x k, row stride lda) x B + bias), B packed as above;
 * bias may be NULL. */
static void gemm_packed(size_t m, size_t n, size_t k, const float *a, size_t lda,
                        const float *bp, const float *bias, enum nn_act act, float *c, size_t ldc)
{
    /* Panel-outer: a panel (K x 32 floats, at most 295 KB here) is fetched once and reused
     * by every row block from L1/L2; the activations are small and stay in L2. */
    for (size_t j0 = 0; j0 < n; j0 += NN_NR) {
        size_t nv = n - j0 < NN_NR ? n - j0 : NN_NR;
        float init[NN_NR] = { 0 };
        if (bias)
            memcpy(init, bias + j0, nv * sizeof(float));
        const float *panel = bp + j0 * k;
        float *cj = c + j0;
        size_t i = 0;
        for (; i + NN_MR <= m; i += NN_MR)
            gemm_tile(NN_MR, k, a + i * lda, lda, panel, init, nv, act, cj + i * ldc, ldc);
        const float *ai = a + i * lda;
        float *ci = cj + i * ldc;
        switch (m - i) {
#if NN_MR > 4
        case 7: gemm_tile(7, k, ai, lda, panel, init, nv, act, ci, ldc); break;
        case 6: gemm_tile(6, k, ai, lda, panel, init, nv, act, ci, ldc); break;
        case 5: gemm_tile(5, k, ai, lda, panel, init, nv, act, ci, ldc); break;
        case 4: gemm_tile(4, k, ai, lda, panel, init, nv, act, ci, ldc); break;
        case 3: gemm_tile(3, k, ai, lda, panel, init, nv, act, ci, ldc); break;
#endif
        case 2: gemm_tile(2, k, ai, lda, panel, init, nv, act, ci, ldc); break;
        case 1: gemm_tile(1, k, ai, lda, panel, init, nv, act, ci, ldc); break;
        default: break;
        }
    }
}

float *nn_conv_pack(const nn_conv *cv)
{
    size_t k = (size_t)cv->kh * (size_t)cv->kw * (size_t)cv->cin, n = (size_t)cv->cout;
    float *p = calloc(nn_packed_floats(k, n), sizeof(float));
    if (!p)
        return NULL;
    for (size_t kk = 0; kk < k; kk++)
        for (size_t j = 0; j < n; j++)
            p[packed_index(k, kk, j)] = cv->w[kk * n + j];
    return p;
}

/*
 * Winograd F(2x2, 3x3): each 2x2 block of output comes from a 4x4 input tile d as
 * Y = A^T [ (G g G^T) .* (B^T d B) ] A, so a 3x3 convolution becomes 16 independent GEMMs
 * (one per tile position, tiles x cin times cin x cout) with 16 instead of 36 multiplies per
 * output block: 2.25x fewer FLOPs, paid for with two cheap elementwise transforms.
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 */
/* A run of zeros standing in for input cells outside the map (the widest map has 512
 * channels). Read-only. */
static const float nn_zeros[512];

int nn_conv_winograd_prepare(nn_conv *cv)
{
    size_t cin = (size_t)cv->cin, cout = (size_t)cv->cout;
    if (cv->kh != 3 || cv->kw != 3 || cin > sizeof nn_zeros / sizeof nn_zeros[0])
        return -1;
    /* 16 matrices cin x cout, each packed for gemm_packed. */
    size_t per = nn_packed_floats(cin, cout);
    float *u = calloc(16 * per, sizeof(float));
    if (!u)
        return -1;
    for (size_t ci = 0; ci < cin; ci++) {
        for (size_t co = 0; co < cout; co++) {
            float g[3][3], t[4][3];
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++)
                    g[ky][kx] = cv->w[((size_t)(ky * 3 + kx) * cin + ci) * cout + co];
            for (int j = 0; j < 3; j++) { /* t = G g */
                t[0][j] = g[0][j];
                t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
                t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
                t[3][j] = g[2][j];
            }
            for (int i = 0; i < 4; i++) { /* u = t G^T */
                float r[4] = { t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                               0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2] };
                for (int j = 0; j < 4; j++)
                    u[(size_t)(i * 4 + j) * per + packed_index(cin, ci, co)] = r[j];
            }
        }
    }
    free(cv->wu);
    cv->wu = u;
    return 0;
}

size_t nn_winograd_floats(int h, int w, int cin, int cout)
{
    size_t tiles = (size_t)((h + 1) / 2) * (size_t)((w + 1) / 2);
    size_t m = tiles * (size_t)cout > (size_t)cin ? tiles * (size_t)cout : (size_t)cin;
    return 16 * (tiles * (size_t)cin + m); /* V, then M (also the input transform's scratch) */
}

static void winograd_conv(const nn_tensor *in, const nn_conv *cv, enum nn_act act, float *col,
                          nn_tensor *out)
{
    int th = (in->h + 1) / 2, tw = (in->w + 1) / 2;
    size_t tiles = (size_t)th * (size_t)tw, cin = (size_t)cv->cin, cout = (size_t)cv->cout;
    float *v = col, *m = col + 16 * tiles * cin;
    size_t vstride = tiles * cin, mstride = tiles * cout;

    /* Input transform, vectorised across channels (each of the 16 inputs and outputs is a
     * contiguous run of cin floats); cells outside the map read a zero run. */
    for (int ty = 0; ty < th; ty++) {
        for (int tx = 0; tx < tw; tx++) {
            const float *d[16];
            for (int i = 0; i < 4; i++) {
                int iy = 2 * ty - 1 + i;
                for (int j = 0; j < 4; j++) {
                    int ix = 2 * tx - 1 + j;
                    d[i * 4 + j] = iy < 0 || iy >= in->h || ix < 0 || ix >= in->w
                                       ? nn_zeros
                                       : in->d + ((size_t)iy * (size_t)in->w + (size_t)ix) * cin;
                }
            }
            float *o = v + ((size_t)ty * (size_t)tw + (size_t)tx) * cin;
            for (int j = 0; j < 4; j++) { /* t = B^T d, column j, kept in the m scratch */
                float *restrict t0 = m, *restrict t1 = m + cin, *restrict t2 = m + 2 * cin,
                                *restrict t3 = m + 3 * cin;
                t0 += (size_t)j * 4 * cin;
                t1 += (size_t)j * 4 * cin;
                t2 += (size_t)j * 4 * cin;
                t3 += (size_t)j * 4 * cin;
                const float *restrict d0 = d[j], *restrict d1 = d[4 + j], *restrict d2 = d[8 + j],
                                      *restrict d3 = d[12 + j];
                for (size_t c = 0; c < cin; c++) {
                    t0[c] = d0[c] - d2[c];
                    t1[c] = d1[c] + d2[c];
                    t2[c] = d2[c] - d1[c];
                    t3[c] = d1[c] - d3[c];
                }
            }
            for (int i = 0; i < 4; i++) { /* (t B) row i: t[i][j] is at m + (j*4 + i)*cin */
                const float *restrict a0 = m + (size_t)(0 * 4 + i) * cin;
                const float *restrict a1 = m + (size_t)(1 * 4 + i) * cin;
                const float *restrict a2 = m + (size_t)(2 * 4 + i) * cin;
                const float *restrict a3 = m + (size_t)(3 * 4 + i) * cin;
                float *restrict o0 = o + (size_t)(i * 4 + 0) * vstride;
                float *restrict o1 = o + (size_t)(i * 4 + 1) * vstride;
                float *restrict o2 = o + (size_t)(i * 4 + 2) * vstride;
                float *restrict o3 = o + (size_t)(i * 4 + 3) * vstride;
                for (size_t c = 0; c < cin; c++) {
                    o0[c] = a0[c] - a2[c];
                    o1[c] = a1[c] + a2[c];
                    o2[c] = a2[c] - a1[c];
                    o3[c] = a1[c] - a3[c];
                }
            }
        }
    }
    size_t per = nn_packed_floats(cin, cout);
    for (int xi = 0; xi < 16; xi++)
        gemm_packed(tiles, cout, cin, v + (size_t)xi * vstride, cin, cv->wu + (size_t)xi * per,
                    NULL, NN_ACT_NONE, m + (size_t)xi * mstride, cout);
    /* Output transform, bias and activation, vectorised across channels; the last tile
     * row/column may hang over the map. */
    for (int ty = 0; ty < th; ty++) {
        for (int tx = 0; tx < tw; tx++) {
            const float *q = m + ((size_t)ty * (size_t)tw + (size_t)tx) * cout;
            int oy = 2 * ty, ox = 2 * tx;
            int h2 = oy + 1 < out->h, w2 = ox + 1 < out->w;
            float *restrict y00 = out->d + ((size_t)oy * (size_t)out->w + (size_t)ox) * cout;
            float *restrict y01 = y00 + cout;
            float *restrict y10 = y00 + (size_t)out->w * cout;
            float *restrict y11 = y10 + cout;
            float r[4][2 * 64];
            for (size_t c0 = 0; c0 < cout; c0 += 64) {
                size_t n = cout - c0 < 64 ? cout - c0 : 64;
                for (int j = 0; j < 4; j++) { /* r = A^T q: rows 0, 1 of columns j */
                    const float *restrict q0 = q + (size_t)j * mstride + c0;
                    const float *restrict q1 = q + (size_t)(4 + j) * mstride + c0;
                    const float *restrict q2 = q + (size_t)(8 + j) * mstride + c0;
                    const float *restrict q3 = q + (size_t)(12 + j) * mstride + c0;
                    float *restrict r0 = r[j], *restrict r1 = r[j] + 64;
                    for (size_t c = 0; c < n; c++) {
                        r0[c] = q0[c] + q1[c] + q2[c];
                        r1[c] = q1[c] - q2[c] - q3[c];
                    }
                }
                for (int row = 0; row < 2; row++) {
                    if (row == 1 && !h2)
                        break;
                    const float *restrict a0 = r[0] + row * 64, *restrict a1 = r[1] + row * 64;
                    const float *restrict a2 = r[2] + row * 64, *restrict a3 = r[3] + row * 64;
                    const float *restrict bias = cv->b + c0;
                    float *restrict p0 = (row ? y10 : y00) + c0, *restrict p1 = (row ? y11 : y01) + c0;
                    for (size_t c = 0; c < n; c++)
                        p0[c] = act_apply(a0[c] + a1[c] + a2[c] + bias[c], act);
                    if (w2)
                        for (size_t c = 0; c < n; c++)
                            p1[c] = act_apply(a1[c] - a2[c] - a3[c] + bias[c], act);
                }
            }
        }
    }
}

void nn_conv2d(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t, int pad_l,
               enum nn_act act, float *col, nn_tensor *out)
{
    nn_conv2d_packed(in, cv, NULL, stride, pad_t, pad_l, act, col, out);
}

void nn_conv2d_packed(const nn_tensor *in, const nn_conv *cv, const float *wp, int stride,
                      int pad_t, int pad_l, enum nn_act act, float *col, nn_tensor *out)
{
    size_t npix = (size_t)out->h * (size_t)out->w;
    size_t k = (size_t)cv->kh * (size_t)cv->kw * (size_t)cv->cin;

    if (cv->wu && stride == 1 && pad_t == 1 && pad_l == 1 && out->h == in->h &&
        out->w == in->w && nn_winograd_floats(in->h, in->w, cv->cin, cv->cout) <= NN_COL_FLOATS) {
        winograd_conv(in, cv, act, col, out);
        return;
    }
    if (in->h == 1 && in->w == 1 && out->h == 1 && out->w == 1 && stride == 1 &&
        pad_t < cv->kh && pad_l < cv->kw) {
        /* A 1x1 map only ever meets the kernel's tap (pad_t, pad_l): a matrix-vector product
         * with that tap's cin x cout slice instead of all kh*kw of them. */
        const float *w = cv->w + (size_t)(pad_t * cv->kw + pad_l) * (size_t)cv->cin * (size_t)cv->cout;
        cblas_sgemv(CblasRowMajor, CblasTrans, cv->cin, cv->cout, 1.0f, w, cv->cout, in->d, 1,
                    0.0f, out->d, 1);
        bias_act(out->d, 1, cv->cout, cv->b, act);
        return;
    }
    if (cv->kh == 3 && cv->kw == 3 && cv->cin == 3 && cv->cout == 16) {
        conv3x3_c3_c16(in, cv, stride, pad_t, pad_l, act, out);
        return;
    }
    if (cv->kh == 1 && cv->kw == 1 && stride == 1 && pad_t == 0 && pad_l == 0 &&
        out->h == in->h && out->w == in->w) {
        /* A 1x1 convolution is already a GEMM on the input. */
        if (wp) {
            gemm_packed(npix, (size_t)cv->cout, k, in->d, k, wp, cv->b, act, out->d,
                        (size_t)cv->cout);
            return;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)npix, cv->cout, (int)k,
                    1.0f, in->d, (int)k, cv->w, cv->cout, 0.0f, out->d, cv->cout);
        bias_act(out->d, npix, cv->cout, cv->b, act);
        return;
    }
    size_t blk = NN_COL_FLOATS / k; /* >= 227: k is at most 3*3*256 in these nets */
    for (size_t p0 = 0; p0 < npix; p0 += blk) {
        size_t p1 = p0 + blk < npix ? p0 + blk : npix;
        im2col_block(in, cv, stride, pad_t, pad_l, out->w, p0, p1, col);
        float *y = out->d + p0 * (size_t)cv->cout;
        if (wp) {
            gemm_packed(p1 - p0, (size_t)cv->cout, k, col, k, wp, cv->b, act, y,
                        (size_t)cv->cout);
            continue;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(p1 - p0), cv->cout,
                    (int)k, 1.0f, col, (int)k, cv->w, cv->cout, 0.0f, y, cv->cout);
        bias_act(y, p1 - p0, cv->cout, cv->b, act);
    }
}

/* Depthwise 3x3 for output pixels [p0, p1) into dst (one cin-vector per pixel). Windows wholly
 * inside the map (nearly all of them) take a branch-free path working on 16 channels at a
 * time when the channel count allows; the rest skip the taps that fall outside. */
static void depthwise_block(const nn_tensor *in, const float *restrict dw, int stride, int pad_t,
                            int pad_l, int ow, size_t p0, size_t p1, float *restrict dst)
{
    int c = in->c;
    size_t rowc = (size_t)in->w * (size_t)c;
    for (size_t p = p0; p < p1; p++) {
        int oy = (int)(p / (size_t)ow), ox = (int)(p % (size_t)ow);
        int iy0 = oy * stride - pad_t, ix0 = ox * stride - pad_l;
        float *restrict acc = dst + (p - p0) * (size_t)c;
        if (c % 16 == 0 && iy0 >= 0 && iy0 + 3 <= in->h && ix0 >= 0 && ix0 + 3 <= in->w) {
            const float *src = in->d + (size_t)iy0 * rowc + (size_t)ix0 * (size_t)c;
            for (int cb = 0; cb < c; cb += 16) {
                v16f a = (v16f){ 0 };
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++)
                        a += v16_load(src + (size_t)ky * rowc + (size_t)(kx * c + cb)) *
                             v16_load(dw + (size_t)((ky * 3 + kx) * c + cb));
                memcpy(acc + cb, &a, sizeof a);
            }
            continue;
        }
        for (int ch = 0; ch < c; ch++)
            acc[ch] = 0.0f;
        for (int ky = 0; ky < 3; ky++) {
            int iy = iy0 + ky;
            if (iy < 0 || iy >= in->h)
                continue;
            for (int kx = 0; kx < 3; kx++) {
                int ix = ix0 + kx;
                if (ix < 0 || ix >= in->w)
                    continue;
                const float *restrict src = in->d + (size_t)iy * rowc + (size_t)ix * (size_t)c;
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
    size_t rowc = (size_t)in->w * (size_t)c;
    for (int oy = 0; oy < out->h; oy++) {
        for (int ox = 0; ox < out->w; ox++) {
            int iy0 = oy * stride - pad_t, ix0 = ox * stride - pad_l;
            float *restrict dst = out->d + ((size_t)oy * (size_t)out->w + (size_t)ox) * (size_t)c;
            if (k == 2 && iy0 >= 0 && iy0 + 2 <= in->h && ix0 >= 0 && ix0 + 2 <= in->w) {
                /* The common case, a whole 2x2 window: one branch-free pass over channels. */
                const float *restrict a = in->d + (size_t)iy0 * rowc + (size_t)ix0 * (size_t)c;
                const float *restrict b = a + c, *restrict e = a + rowc, *restrict f = e + c;
                for (int ch = 0; ch < c; ch++) {
                    float m1 = a[ch] > b[ch] ? a[ch] : b[ch], m2 = e[ch] > f[ch] ? e[ch] : f[ch];
                    dst[ch] = m1 > m2 ? m1 : m2;
                }
                continue;
            }
            for (int ch = 0; ch < c; ch++)
                dst[ch] = -FLT_MAX;
            for (int ky = 0; ky < k; ky++) {
                int iy = iy0 + ky;
                if (iy < 0 || iy >= in->h)
                    continue;
                for (int kx = 0; kx < k; kx++) {
                    int ix = ix0 + kx;
                    if (ix < 0 || ix >= in->w)
                        continue;
                    const float *restrict src = in->d + (size_t)iy * rowc + (size_t)ix * (size_t)c;
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
