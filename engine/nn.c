/*
 * nn.c — tensor operations for the face-api networks (see nn.h).
 *
 * The inner loops run over channels, which are contiguous in HWC, so the compiler vectorises
 * them (the engine is built with -O3 -march=native). GEMMs run on cblas_sgemm, or on our own
 * kernel (gemm_packed) when the network packed the conv's weights at load (nn_conv_pack).
 * nn_conv2d(_packed) picks, in order: Winograd F(2x2,3x3) or F(4x4,3x3) for 3x3 stride-1
 * convs the network prepared for it; the single live tap when the map is 1x1; a direct kernel
 * for the detector's 3->16 first layer; a plain GEMM for 1x1 convs; otherwise im2col + GEMM in
 * blocks of pixels. Each choice is measured, see the comments at the functions.
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

/* vf: a vector of the target's own width (16 floats with AVX-512, 8 with AVX/AVX2, 4 with
 * SSE/NEON), as a GCC/Clang vector extension. Every vector kernel here is written on it: a
 * generic vector wider than the target's registers compiles to slow piecewise code (a 16-float
 * one ran the detector's first layer ~10x slower on AVX2 than this, and the GEMM 30x). Loads
 * go through memcpy, so no alignment is assumed. NN_NR / NN_MR: the GEMM's panel width and
 * tile height (below). */
#define NN_NR 32
#if defined(__AVX512F__)
#define NN_VW 16
#define NN_MR 8
#elif defined(__AVX__)
#define NN_VW 8
#define NN_MR 3
#else
#define NN_VW 4
#define NN_MR 1
#endif
#define NN_NV (NN_NR / NN_VW) /* vectors per panel row */

typedef float vf __attribute__((vector_size(NN_VW * 4)));
typedef int32_t vi __attribute__((vector_size(NN_VW * 4)));

static inline __attribute__((always_inline)) vf vf_load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) vf vf_act(vf v, enum nn_act act)
{
    if (act == NN_ACT_NONE)
        return v;
    vi pos = v > (vf){ 0 };
    vf alt = act == NN_ACT_RELU ? (vf){ 0 } : v * 0.1f;
    return (vf)((pos & (vi)v) | (~pos & (vi)alt));
}

static inline __attribute__((always_inline)) void vf_store(float *p, vf v)
{
    memcpy(p, &v, sizeof v);
}

/* 16 outputs are C16_NV vectors; C16_PIX pixels per step keep 8 vector accumulators (16 with
 * SSE) in registers on every target, to hide the FMA latency. */
#define C16_NV (16 / NN_VW)
#define C16_PIX (C16_NV >= 4 ? 2 : 8 / C16_NV)

/* Direct 3x3 convolution, 3 input channels, 16 outputs (the detector's first layer): as a
 * GEMM its K is 27 and N 16, far too thin for BLAS, while here each output pixel is 27
 * broadcast-multiply-adds into C16_NV accumulators, C16_PIX pixels at a time; the weights come
 * from L1 with each step. Windows that cross the border take the one-pixel path, which skips
 * the taps outside. Each output is bias + the 27 taps in order, as a naive loop sums. */
static void conv3x3_c3_c16(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t,
                           int pad_l, enum nn_act act, nn_tensor *out)
{
    int off[27];
    vf bias[C16_NV];
    for (int v = 0; v < C16_NV; v++)
        bias[v] = vf_load(cv->b + v * NN_VW);
    for (int ky = 0, t = 0; ky < 3; ky++)
        for (int kx = 0; kx < 3; kx++)
            for (int ci = 0; ci < 3; ci++, t++)
                off[t] = (ky * in->w + kx) * 3 + ci;
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
                vf acc[C16_PIX][C16_NV];
                for (int p = 0; p < C16_PIX; p++)
                    for (int v = 0; v < C16_NV; v++)
                        acc[p][v] = bias[v];
                for (int t = 0; t < 27; t++) {
                    vf w[C16_NV];
                    for (int v = 0; v < C16_NV; v++)
                        w[v] = vf_load(cv->w + t * 16 + v * NN_VW);
                    for (int p = 0; p < C16_PIX; p++) {
                        float x = src[(size_t)p * step + (size_t)off[t]];
                        for (int v = 0; v < C16_NV; v++)
                            acc[p][v] += x * w[v];
                    }
                }
                for (int p = 0; p < C16_PIX; p++)
                    for (int v = 0; v < C16_NV; v++)
                        vf_store(drow + (size_t)(ox + p) * 16 + (size_t)(v * NN_VW), vf_act(acc[p][v], act));
                ox += C16_PIX;
                continue;
            }
            int ix0 = ox * stride - pad_l;
            vf acc[C16_NV];
            for (int v = 0; v < C16_NV; v++)
                acc[v] = bias[v];
            for (int t = 0; t < 27; t++) {
                int iy = iy0 + t / 9, ix = ix0 + (t / 3) % 3;
                if (iy < 0 || iy >= in->h || ix < 0 || ix >= in->w)
                    continue;
                float x = in->d[((size_t)iy * (size_t)in->w + (size_t)ix) * 3 + (size_t)(t % 3)];
                for (int v = 0; v < C16_NV; v++)
                    acc[v] += x * vf_load(cv->w + t * 16 + v * NN_VW);
            }
            for (int v = 0; v < C16_NV; v++)
                vf_store(drow + (size_t)ox * 16 + (size_t)(v * NN_VW), vf_act(acc[v], act));
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
 * The kernel and the Winograd transforms below work on vf, a vector of the target's own
 * width (a generic vector wider than the target's registers compiles to slow piecewise code:
 * measured 30x slower with v16f on AVX2). An NN_MR x 32 tile is then 16 accumulators with
 * AVX-512, 12 with AVX2, 8 with SSE/NEON: enough to hide the FMA latency without spilling out
 * of 32, 16 and 16 registers. Each output is one sequential sum over k, the order a naive
 * loop uses.
 */
size_t nn_packed_floats(size_t k, size_t n)
{
    return k * ((n + NN_NR - 1) / NN_NR * NN_NR);
}

/* Element (kk, j) of a k x n matrix in the packed layout. */
static inline size_t packed_index(size_t k, size_t kk, size_t j)
{
    return (j / NN_NR) * k * NN_NR + kk * NN_NR + j % NN_NR;
}

/* c[0..mr) x [0..nv) = act(init + a[0..mr) x panel), mr a compile-time constant after
 * inlining so the accumulators live in registers. */
static inline __attribute__((always_inline)) void
gemm_tile(int mr, size_t k, const float *restrict a, size_t lda, const float *restrict bp,
          const float *restrict init, size_t nv, enum nn_act act, float *restrict c, size_t ldc)
{
    vf acc[NN_MR][NN_NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < NN_NV; v++)
            acc[r][v] = vf_load(init + v * NN_VW);
    for (size_t kk = 0; kk < k; kk++) {
        vf b[NN_NV];
        for (int v = 0; v < NN_NV; v++)
            b[v] = vf_load(bp + kk * NN_NR + (size_t)(v * NN_VW));
        for (int r = 0; r < mr; r++) {
            float av = a[(size_t)r * lda + kk];
            for (int v = 0; v < NN_NV; v++)
                acc[r][v] += av * b[v];
        }
    }
    for (int r = 0; r < mr; r++) {
        vf y[NN_NV];
        for (int v = 0; v < NN_NV; v++)
            y[v] = vf_act(acc[r][v], act);
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
        /* The last m % NN_MR rows, with the tile height again a constant. */
#define GEMM_TAIL(r) \
    case r: gemm_tile(r, k, a + i * lda, lda, panel, init, nv, act, cj + i * ldc, ldc); break
        switch (m - i) {
#if NN_MR > 4
        GEMM_TAIL(7);
        GEMM_TAIL(6);
        GEMM_TAIL(5);
        GEMM_TAIL(4);
        GEMM_TAIL(3);
#endif
#if NN_MR > 2
        GEMM_TAIL(2);
#endif
#if NN_MR > 1
        GEMM_TAIL(1);
#endif
        default: break;
        }
#undef GEMM_TAIL
    }
}

static float *gemm_weights(const nn_conv *cv)
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
 * Winograd F(m x m, 3x3), m = 2 or 4: each m x m block of output comes from an a x a input
 * tile d (a = m + 2) as Y = A^T [ (G g G^T) .* (B^T d B) ] A, so a 3x3 convolution becomes
 * a*a independent GEMMs (one per tile position: tiles x cin times cin x cout) with a*a
 * instead of 9*m*m multiplies per output block: 2.25x fewer for F(2x2), 4x for F(4x4).
 *   F(2x2): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
 *           A^T = [1 1 1 0; 0 1 -1 -1]
 *   F(4x4) (Lavin & Gray; points 0, +-1, +-2 and infinity):
 *           B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
 *                  0 4 0 -5 0 1]
 *           G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *           A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * F(4x4)'s larger constants cost some accuracy (still ~1e-6 relative in float32) and its
 * transformed weights are 36/16 the size of F(2x2)'s, so it pays only where enough tiles
 * reuse each weight: the network picks per layer (recog.c).
 *
 * The tiles are processed in blocks: transform a block's inputs, run the a*a GEMMs on it,
 * transform its outputs (with bias and activation) straight into the output map. That bounds
 * the scratch for any map size (it must fit the col buffer) and keeps a block's transformed
 * inputs and GEMM results in L2 between the three steps. On the recognition net's maps it
 * measured the same as whole-map blocks (within the +-3% noise, F(2x2) and F(4x4) alike):
 * there the whole-map buffers nearly fit L2 anyway.
 */
/* The most input or output channels a Winograd conv may have (wino_weights refuses more):
 * it sizes the zero run below and guarantees winograd_conv's blocks a few tiles each. */
#define WINO_MAX_C 512

/* A run of zeros standing in for input cells outside the map. Read-only. */
static const float nn_zeros[WINO_MAX_C];

/* Transformed inputs + GEMM results of one block aim at this many floats (640 KB, inside a
 * 1 MB L2 with the block's weights streaming past; 256 KB and 1.3 MB measured the same). */
#define WINO_BLOCK_FLOATS ((size_t)160 * 1024)
_Static_assert(WINO_BLOCK_FLOATS <= NN_COL_FLOATS &&
                   WINO_BLOCK_FLOATS / (36 * 2 * WINO_MAX_C) >= 1,
               "a Winograd block must fit the col buffer and hold at least one F(4x4) tile");

static const double wino_g2[4][3] = {
    { 1, 0, 0 }, { 0.5, 0.5, 0.5 }, { 0.5, -0.5, 0.5 }, { 0, 0, 1 }
};
static const double wino_g4[6][3] = {
    { 1.0 / 4, 0, 0 },
    { -1.0 / 6, -1.0 / 6, -1.0 / 6 },
    { -1.0 / 6, 1.0 / 6, -1.0 / 6 },
    { 1.0 / 24, 1.0 / 12, 1.0 / 6 },
    { 1.0 / 24, -1.0 / 12, 1.0 / 6 },
    { 0, 0, 1 },
};

/* U = G g G^T for every (cin, cout) pair, as a*a matrices cin x cout each packed for
 * gemm_packed. Computed in double: the weights are transformed once. */
static float *wino_weights(const nn_conv *cv, int m)
{
    int a = m + 2;
    const double(*g)[3] = m == 2 ? wino_g2 : wino_g4;
    size_t cin = (size_t)cv->cin, cout = (size_t)cv->cout;
    if (cv->kh != 3 || cv->kw != 3 || cin > WINO_MAX_C || cout > WINO_MAX_C)
        return NULL;
    size_t per = nn_packed_floats(cin, cout);
    float *u = calloc((size_t)(a * a) * per, sizeof(float));
    if (!u)
        return NULL;
    for (size_t ci = 0; ci < cin; ci++) {
        for (size_t co = 0; co < cout; co++) {
            double k[3][3], t[6][3];
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++)
                    k[ky][kx] = cv->w[((size_t)(ky * 3 + kx) * cin + ci) * cout + co];
            for (int i = 0; i < a; i++) /* t = G k */
                for (int j = 0; j < 3; j++)
                    t[i][j] = g[i][0] * k[0][j] + g[i][1] * k[1][j] + g[i][2] * k[2][j];
            for (int i = 0; i < a; i++) /* u = t G^T */
                for (int j = 0; j < a; j++)
                    u[(size_t)(i * a + j) * per + packed_index(cin, ci, co)] =
                        (float)(t[i][0] * g[j][0] + t[i][1] * g[j][1] + t[i][2] * g[j][2]);
        }
    }
    return u;
}

int nn_conv_winograd_prepare(nn_conv *cv)
{
    float *u = wino_weights(cv, 2);
    if (!u)
        return -1;
    free(cv->wu);
    cv->wu = u;
    return 0;
}

/* y = B^T x for one column/row of a tile: a vectors at stride xs, written at stride ys. */
static inline __attribute__((always_inline)) void wino_bt(int a, const vf *x, int xs,
                                                          vf *y, int ys)
{
#define X(i) x[(i) * xs]
#define Y(i) y[(i) * ys]
    if (a == 4) {
        Y(0) = X(0) - X(2);
        Y(1) = X(1) + X(2);
        Y(2) = X(2) - X(1);
        Y(3) = X(1) - X(3);
    } else {
        vf x1 = X(1), x2 = X(2), x3 = X(3), x4 = X(4);
        Y(0) = 4.0f * X(0) - 5.0f * x2 + x4;
        Y(1) = (x3 + x4) - 4.0f * (x1 + x2);
        Y(2) = 4.0f * (x1 - x2) + (x4 - x3);
        Y(3) = 2.0f * (x3 - x1) + (x4 - x2);
        Y(4) = 2.0f * (x1 - x3) + (x4 - x2);
        Y(5) = 4.0f * x1 - 5.0f * x3 + X(5);
    }
}

/* y = A^T x: a vectors in, m = a - 2 out. */
static inline __attribute__((always_inline)) void wino_at(int a, const vf *x, int xs,
                                                          vf *y, int ys)
{
    if (a == 4) {
        Y(0) = X(0) + X(1) + X(2);
        Y(1) = X(1) - X(2) - X(3);
    } else {
        vf s1 = X(1) + X(2), d1 = X(1) - X(2), s2 = X(3) + X(4), d2 = X(3) - X(4);
        Y(0) = X(0) + s1 + s2;
        Y(1) = d1 + 2.0f * d2;
        Y(2) = s1 + 4.0f * s2;
        Y(3) = d1 + 8.0f * d2 + X(5);
    }
#undef X
#undef Y
}

/* Up to NN_VW floats as a vector, zeros past n. */
static inline __attribute__((always_inline)) vf vf_load_n(const float *p, size_t n)
{
    if (n == NN_VW)
        return vf_load(p);
    vf v = { 0 };
    memcpy(&v, p, n * sizeof(float));
    return v;
}

/* B^T d B of tile (ty, tx) into o: element xi of the tile for channel c at o[xi*xs + c]. */
static inline __attribute__((always_inline)) void wino_in_tile(const nn_tensor *in, int m,
                                                               int ty, int tx, float *o,
                                                               size_t xs)
{
    int a = m + 2;
    size_t cin = (size_t)in->c;
    const float *d[36];
    for (int i = 0; i < a; i++) {
        int iy = ty * m - 1 + i;
        for (int j = 0; j < a; j++) {
            int ix = tx * m - 1 + j;
            d[i * a + j] = iy < 0 || iy >= in->h || ix < 0 || ix >= in->w
                               ? nn_zeros
                               : in->d + ((size_t)iy * (size_t)in->w + (size_t)ix) * cin;
        }
    }
    for (size_t c = 0; c < cin; c += NN_VW) {
        size_t n = cin - c < NN_VW ? cin - c : NN_VW;
        vf x[36], t[36];
        for (int k = 0; k < a * a; k++)
            x[k] = vf_load_n(d[k] + c, n);
        for (int j = 0; j < a; j++) /* columns */
            wino_bt(a, x + j, a, t + j, a);
        for (int i = 0; i < a; i++) /* rows */
            wino_bt(a, t + i * a, 1, x + i * a, 1);
        for (int k = 0; k < a * a; k++)
            memcpy(o + (size_t)k * xs + c, &x[k], n * sizeof(float));
    }
}

/* act(A^T q A + bias) of tile (ty, tx) into the output map; q as o above. The last tile
 * row/column may hang over the map. */
static inline __attribute__((always_inline)) void wino_out_tile(const float *q, size_t xs,
                                                                const float *bias,
                                                                enum nn_act act, int m, int ty,
                                                                int tx, nn_tensor *out)
{
    int a = m + 2;
    size_t cout = (size_t)out->c;
    int oy = ty * m, ox = tx * m;
    int mh = out->h - oy < m ? out->h - oy : m, mw = out->w - ox < m ? out->w - ox : m;
    for (size_t c = 0; c < cout; c += NN_VW) {
        size_t n = cout - c < NN_VW ? cout - c : NN_VW;
        vf x[36], r[24], y[16];
        for (int k = 0; k < a * a; k++)
            x[k] = vf_load_n(q + (size_t)k * xs + c, n);
        for (int j = 0; j < a; j++)
            wino_at(a, x + j, a, r + j, a);
        for (int i = 0; i < m; i++)
            wino_at(a, r + i * a, 1, y + i * m, 1);
        vf b = vf_load_n(bias + c, n);
        for (int i = 0; i < mh; i++) {
            float *row = out->d + ((size_t)(oy + i) * (size_t)out->w + (size_t)ox) * cout + c;
            for (int j = 0; j < mw; j++) {
                vf v = vf_act(y[i * m + j] + b, act);
                memcpy(row + (size_t)j * cout, &v, n * sizeof(float));
            }
        }
    }
}

/* The convolution through F(m x m, 3x3) with u = wino_weights(cv, m); col: NN_COL_FLOATS. */
static void winograd_conv(const nn_tensor *in, const nn_conv *cv, const float *u, int m,
                          enum nn_act act, float *col, const fw_pause *pause, nn_tensor *out)
{
    int a = m + 2, th = (in->h + m - 1) / m, tw = (in->w + m - 1) / m;
    size_t aa = (size_t)(a * a), tiles = (size_t)th * (size_t)tw;
    size_t cin = (size_t)cv->cin, cout = (size_t)cv->cout;
    size_t per = nn_packed_floats(cin, cout);
    /* Tiles per block: as many as fit the cache budget (at least one: see the assertion at
     * WINO_BLOCK_FLOATS), spread evenly over the blocks. */
    size_t nb = WINO_BLOCK_FLOATS / (aa * (cin + cout));
    if (pause && nb > NN_PAUSE_MACS / (aa * cin * cout))
        nb = NN_PAUSE_MACS / (aa * cin * cout);
    if (nb < 1)
        nb = 1;
    if (nb > tiles)
        nb = tiles;
    size_t nblocks = (tiles + nb - 1) / nb;
    nb = (tiles + nblocks - 1) / nblocks;
    float *v = col, *mm = col + aa * nb * cin;
    for (size_t t0 = 0; t0 < tiles; t0 += nb) {
        size_t n = tiles - t0 < nb ? tiles - t0 : nb;
        for (size_t t = 0; t < n; t++) {
            int ty = (int)((t0 + t) / (size_t)tw), tx = (int)((t0 + t) % (size_t)tw);
            if (m == 2)
                wino_in_tile(in, 2, ty, tx, v + t * cin, n * cin);
            else
                wino_in_tile(in, 4, ty, tx, v + t * cin, n * cin);
        }
        for (size_t xi = 0; xi < aa; xi++)
            gemm_packed(n, cout, cin, v + xi * n * cin, cin, u + xi * per, NULL, NN_ACT_NONE,
                        mm + xi * n * cout, cout);
        for (size_t t = 0; t < n; t++) {
            int ty = (int)((t0 + t) / (size_t)tw), tx = (int)((t0 + t) % (size_t)tw);
            if (m == 2)
                wino_out_tile(mm + t * cout, n * cout, cv->b, act, 2, ty, tx, out);
            else
                wino_out_tile(mm + t * cout, n * cout, cv->b, act, 4, ty, tx, out);
        }
        fw_pause_point(pause);
    }
}

void nn_conv2d(const nn_tensor *in, const nn_conv *cv, int stride, int pad_t, int pad_l,
               enum nn_act act, float *col, nn_tensor *out)
{
    nn_conv2d_packed(in, cv, NULL, stride, pad_t, pad_l, act, col, NULL, out);
}

int nn_conv_pack(const nn_conv *cv, enum nn_pack kind, nn_packed *out)
{
    out->kind = kind;
    out->w = kind == NN_PACK_GEMM ? gemm_weights(cv) : wino_weights(cv, kind == NN_PACK_WINO4 ? 4 : 2);
    return out->w ? 0 : -1;
}

void nn_packed_free(nn_packed *pk)
{
    free(pk->w);
    pk->w = NULL;
}

void nn_conv2d_packed(const nn_tensor *in, const nn_conv *cv, const nn_packed *pk, int stride,
                      int pad_t, int pad_l, enum nn_act act, float *col, const fw_pause *pause,
                      nn_tensor *out)
{
    size_t npix = (size_t)out->h * (size_t)out->w;
    size_t k = (size_t)cv->kh * (size_t)cv->kw * (size_t)cv->cin;
    const float *wp = pk && pk->kind == NN_PACK_GEMM ? pk->w : NULL;

    if (cv->kh == 3 && cv->kw == 3 && stride == 1 && pad_t == 1 && pad_l == 1 &&
        out->h == in->h && out->w == in->w) {
        if (pk && pk->kind != NN_PACK_GEMM) {
            winograd_conv(in, cv, pk->w, pk->kind == NN_PACK_WINO4 ? 4 : 2, act, col, pause, out);
            return;
        }
        if (cv->wu) {
            winograd_conv(in, cv, cv->wu, 2, act, col, pause, out);
            return;
        }
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
    if (pause && blk > NN_PAUSE_MACS / (k * (size_t)cv->cout))
        blk = NN_PAUSE_MACS / (k * (size_t)cv->cout);
    if (blk < 1)
        blk = 1;
    for (size_t p0 = 0; p0 < npix; p0 += blk) {
        size_t p1 = p0 + blk < npix ? p0 + blk : npix;
        im2col_block(in, cv, stride, pad_t, pad_l, out->w, p0, p1, col);
        float *y = out->d + p0 * (size_t)cv->cout;
        if (wp) {
            gemm_packed(p1 - p0, (size_t)cv->cout, k, col, k, wp, cv->b, act, y,
                        (size_t)cv->cout);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(p1 - p0), cv->cout,
                        (int)k, 1.0f, col, (int)k, cv->w, cv->cout, 0.0f, y, cv->cout);
            bias_act(y, p1 - p0, cv->cout, cv->b, act);
        }
        fw_pause_point(pause);
    }
}

/* Depthwise 3x3 for output pixels [p0, p1) into dst (one cin-vector per pixel). Windows wholly
 * inside the map (nearly all of them) take a branch-free path working on a vector of channels
 * at a time when the channel count allows; the rest skip the taps that fall outside. */
static void depthwise_block(const nn_tensor *in, const float *restrict dw, int stride, int pad_t,
                            int pad_l, int ow, size_t p0, size_t p1, float *restrict dst)
{
    int c = in->c;
    size_t rowc = (size_t)in->w * (size_t)c;
    for (size_t p = p0; p < p1; p++) {
        int oy = (int)(p / (size_t)ow), ox = (int)(p % (size_t)ow);
        int iy0 = oy * stride - pad_t, ix0 = ox * stride - pad_l;
        float *restrict acc = dst + (p - p0) * (size_t)c;
        if (c % NN_VW == 0 && iy0 >= 0 && iy0 + 3 <= in->h && ix0 >= 0 && ix0 + 3 <= in->w) {
            const float *src = in->d + (size_t)iy0 * rowc + (size_t)ix0 * (size_t)c;
            for (int cb = 0; cb < c; cb += NN_VW) {
                vf a = (vf){ 0 };
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++)
                        a += vf_load(src + (size_t)ky * rowc + (size_t)(kx * c + cb)) *
                             vf_load(dw + (size_t)((ky * 3 + kx) * c + cb));
                vf_store(acc + cb, a);
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
