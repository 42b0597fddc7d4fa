/*
 * nets_impl.h — what engine/nets.c, tinydet.c, landmark68.c and recog.c share, and nobody
 * else needs: the layout of struct fw_nets / fw_nets_ws and each network's load, free and
 * workspace-size functions.
 *
 * Each network is built in two steps: *_load() takes its tensors from a fw_model by name and
 * expected shape, folds batch-norm/scale into the convolutions and keeps packed copies (owned
 * by the network, freed by *_free()); *_ws_floats() says how many floats of scratch one forward
 * pass needs, from the same shape arithmetic the forward pass uses, so fw_nets_ws_new() can
 * size a workspace once and the forward passes never allocate.
 */
#ifndef FW_NETS_IMPL_H
#define FW_NETS_IMPL_H

#include "engine/model.h"
#include "engine/nets.h"
#include "engine/nn.h"

typedef struct tinydet_net {
    nn_conv conv0;        /* 3x3, 3 -> 16, "valid" */
    nn_sepconv conv[5];   /* conv1..conv5: 16->32->64->128->256->512 */
    nn_conv conv8;        /* 1x1, 512 -> 25 */
} tinydet_net;

typedef struct landmark_block {
    nn_conv first;        /* dense0/conv0: a plain 3x3 convolution (first block only) */
    nn_sepconv conv[4];   /* conv[0] is conv0 of blocks 1..3 (stride 2); conv[1..3] stride 1 */
} landmark_block;

typedef struct landmark_net {
    landmark_block dense[4];
    float *fc_w;          /* 256 x 136 */
    float *fc_b;          /* 136 */
} landmark_net;

#define RECOG_RES_BLOCKS 14

/* A recognition conv: scale layer folded in, weights packed for nn.c's GEMM. */
typedef struct recog_conv {
    nn_conv conv;
    nn_packed pk;         /* owned; pk.w NULL until loaded */
} recog_conv;

typedef struct recog_block {
    recog_conv conv1, conv2;
    int down;             /* conv1 is 3x3 stride 2 "valid" plus the pooled shortcut */
} recog_block;

typedef struct recog_net {
    recog_conv conv32_down; /* 7x7 stride 2 "valid" */
    recog_block block[RECOG_RES_BLOCKS];
    float *fc;            /* 256 x 128, no bias */
} recog_net;

struct fw_nets {
    tinydet_net det;
    landmark_net lm;
    recog_net rec;
};

struct fw_nets_ws {
    float *buf;           /* cap floats, 64-byte aligned, owned */
    size_t cap;
    int max_det_size;
    fw_pause pause;       /* fw_nets_ws_set_pause(); fn NULL when unset */
};

/* A pause point of the forward passes (nets.h, fw_pause). */
static inline void nets_pause(const fw_nets_ws *ws)
{
    fw_pause_point(&ws->pause);
}

/* Workspace regions start on 64-byte boundaries: counts are rounded up to 16 floats. */
#define NETS_ROUND(n) (((size_t)(n) + 15) & ~(size_t)15)

/* Loading helpers (nets.c). Each copies what it takes; the nn_* structs own their arrays. */
int nets_take_conv(fw_model *m, const char *prefix, const char *wname, int kh, int kw, int cin,
                   int cout, nn_conv *out, char *err, size_t errlen);
int nets_take_sepconv(fw_model *m, const char *prefix, int cin, int cout, nn_sepconv *out,
                      char *err, size_t errlen);
float *nets_take_copy(fw_model *m, const char *name, int ndim, const int *shape, char *err,
                      size_t errlen);
void nets_conv_free(nn_conv *c);
void nets_sepconv_free(nn_sepconv *s);

int tinydet_load(fw_model *m, tinydet_net *net, char *err, size_t errlen);
void tinydet_free(tinydet_net *net);
size_t tinydet_ws_floats(int size);

int landmark_load(fw_model *m, landmark_net *net, char *err, size_t errlen);
void landmark_free(landmark_net *net);
size_t landmark_ws_floats(void);

int recog_load(fw_model *m, recog_net *net, char *err, size_t errlen);
void recog_free(recog_net *net);
size_t recog_ws_floats(void);

#endif
