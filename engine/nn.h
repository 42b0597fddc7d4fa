/*
 * nn.h — the handful of tensor operations the three face-api networks are made of.
 *
 * Tensors are plain HWC float32 arrays (no batch: we always run one image). Every operation
 * writes into memory the caller gives it and allocates nothing, so a forward pass can run
 * entirely inside a pre-sized workspace. Shapes are the caller's business: the networks work
 * them out once, from the same formulas that size the workspace, and the operations trust them.
 *
 * Padding follows TensorFlow: nn_same_pad() gives the "same" split, which puts the odd extra
 * row/column at the bottom/right; max pooling ignores padded cells, convolution reads them as 0.
 *
 * Convolutions are GEMMs (row-major: pixels x K times K x cout) with im2col done in blocks of
 * output pixels so the column buffer stays a fixed, cache-sized scratch: on OpenBLAS, or on
 * nn.c's own kernel over weights packed once at load (nn_conv_pack, nn_conv2d_packed); 3x3
 * stride-1 convs can run as Winograd F(2x2,3x3) or F(4x4,3x3) instead, and a few shapes BLAS
 * handles badly have direct kernels (nn.c says which and why).
 */
#ifndef FW_NN_H
#define FW_NN_H

#include <stddef.h>
#include <stdint.h>

#include "engine/pause.h"

typedef struct nn_tensor {
    float *d; /* h*w*c floats, not owned */
    int h, w, c;
} nn_tensor;

enum nn_act { NN_ACT_NONE, NN_ACT_RELU, NN_ACT_LEAKY };

/* A convolution with its batch-norm/scale already folded in. w is (kh*kw*cin) x cout row-major,
 * i.e. TF.js's HWIO order, so an im2col row (ky, kx, ci) multiplies it directly. */
typedef struct nn_conv {
    int kh, kw, cin, cout;
    float *w; /* owned by the network that holds it */
    float *b; /* cout floats, owned likewise */
    float *wu; /* NULL, or the Winograd F(2x2,3x3) transform of w (16 matrices cin x cout,
                * each packed for nn.c's own GEMM; owned likewise): 3x3 stride-1 pad-1
                * convolutions then take that path */
} nn_conv;

/* Depthwise (3x3, multiplier 1) followed by pointwise (1x1) and a bias, as tf.separableConv2d
 * plus tf.add. dw is 9*cin floats in (ky, kx, c) order; pw is cin x cout. */
typedef struct nn_sepconv {
    int cin, cout;
    float *dw; /* owned by the network */
    float *pw; /* owned by the network */
    float *b;  /* owned by the network */
} nn_sepconv;

/* Floats of column scratch an nn_conv2d/nn_sepconv2d call needs at most. */
#define NN_COL_FLOATS ((size_t)1 << 19)

/* TensorFlow "same" padding: output size ceil(in/stride), total padding split with the larger
 * half after. Writes the leading pad; returns the output size. */
int nn_same_pad(int in, int k, int stride, int *pad_before);

/* out = (rgb - mean) / 255, HWC. */
void nn_normalize(const uint8_t *rgb, int h, int w, const float mean[3], float *out);

/* out (already shaped: out->h, out->w, out->c == conv->cout) = act(conv(in) + b), with zero
 * padding pad_t/pad_l before and whatever the output size implies after. col: NN_COL_FLOATS.
 * kh*kw*cin must not exceed NN_COL_FLOATS (it is at most 2304 here). */
void nn_conv2d(const nn_tensor *in, const nn_conv *conv, int stride, int pad_t, int pad_l,
               enum nn_act act, float *col, nn_tensor *out);

/* Floats a k x n matrix takes packed for nn.c's GEMM (n rounded up to its panel width). */
size_t nn_packed_floats(size_t k, size_t n);

/* A conv's weights prepared once for nn.c's own GEMM kernel, which (unlike cblas_sgemm)
 * does not repack them on every call: */
enum nn_pack {
    NN_PACK_GEMM,  /* w packed as is: the im2col and 1x1 paths use it */
    NN_PACK_WINO2, /* 3x3 only: the Winograd F(2x2,3x3) transform, for 3x3 stride-1 pad-1 */
    NN_PACK_WINO4, /* 3x3 only: the F(4x4,3x3) transform, likewise (4x fewer multiplies than
                    * direct instead of 2.25x, but 36/16 the weights: for maps with many tiles) */
};
typedef struct nn_packed {
    float *w; /* owned (nn_packed_free) */
    enum nn_pack kind;
} nn_packed;

/* Fills out from conv->w. 0, or -1 when out of memory or a Winograd kind is asked of a conv
 * that is not 3x3 (or has more than 512 input or output channels). */
int nn_conv_pack(const nn_conv *conv, enum nn_pack kind, nn_packed *out);
void nn_packed_free(nn_packed *pk);

/* nn_conv2d with conv's weights as nn_conv_pack(conv, ...) prepared them (pk may be NULL).
 * A Winograd kind takes effect for 3x3 stride-1 pad-1 same-size calls, NN_PACK_GEMM for the
 * im2col and 1x1 GEMMs, which then apply bias and activation as they store; every other call
 * runs as nn_conv2d would. With a pause (engine/pause.h; NULL for none), the im2col and
 * Winograd paths work in blocks of at most about NN_PAUSE_MACS multiply-adds and call it
 * after each; the output is the same either way. */
#define NN_PAUSE_MACS ((size_t)1 << 21)
void nn_conv2d_packed(const nn_tensor *in, const nn_conv *conv, const nn_packed *pk, int stride,
                      int pad_t, int pad_l, enum nn_act act, float *col, const fw_pause *pause,
                      nn_tensor *out);

/* Prepares conv (3x3) for the Winograd F(2x2,3x3) path of nn_conv2d: fills conv->wu.
 * 0, or -1 as nn_conv_pack. */
int nn_conv_winograd_prepare(nn_conv *conv);

/* The same for a separable convolution (3x3 depthwise). col: NN_COL_FLOATS. */
void nn_sepconv2d(const nn_tensor *in, const nn_sepconv *sc, int stride, int pad_t, int pad_l,
                  enum nn_act act, float *col, nn_tensor *out);

/* Max pooling k x k; padded cells never win (TensorFlow semantics). out is pre-shaped. */
void nn_maxpool(const nn_tensor *in, int k, int stride, int pad_t, int pad_l, nn_tensor *out);

/* Average pooling k x k, "valid" (no padding). out is pre-shaped. */
void nn_avgpool_valid(const nn_tensor *in, int k, int stride, nn_tensor *out);

/* out[j] = sum_i in[i] * w[i*n + j] (+ b[j] when b). w is m x n row-major. */
void nn_fc(const float *in, int m, int n, const float *w, const float *b, float *out);

/* In-place elementwise helpers over n floats. */
void nn_add(float *acc, const float *x, size_t n);
void nn_relu(float *x, size_t n);
void nn_relu_to(const float *x, float *out, size_t n);

#endif
