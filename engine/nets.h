/*
 * nets.h — the three face-api networks, run with our own C on OpenBLAS.
 *
 *   tiny face detector   RGB size x size (size a multiple of 32)   -> grid (size/32)^2 x 25
 *   68-point landmarks   RGB 112 x 112                             -> 136 floats in [0,1]
 *   recognition ResNet   RGB 150 x 150                             -> 128-d descriptor
 *
 * Weights are the TF.js files of @vladmandic/face-api 1.7.15 (see engine/models.sha256),
 * loaded once by fw_nets_load(): manifest parsed with cJSON, uint8 weights dequantised, every
 * tensor's name and shape checked against the architecture, batch-norm/scale layers folded into
 * the convolutions and weights packed once. The result is immutable and shared by all threads.
 *
 * All per-call memory comes from a fw_nets_ws (one per thread): sized when it is created, so
 * no forward pass allocates. OpenBLAS must be single-threaded (the server's pool is the
 * parallelism): fw_nets_load() sets that.
 *
 * Ownership: fw_nets_load() returns a fw_nets the caller frees with fw_nets_free() after every
 * workspace made from it is freed. Input and output buffers belong to the caller.
 */
#ifndef FW_NETS_H
#define FW_NETS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/pause.h"

typedef struct fw_nets fw_nets;       /* immutable after load; thread-safe to share */
typedef struct fw_nets_ws fw_nets_ws; /* per-thread scratch; never shared between threads */

#define FW_DET_ANCHORS 5
#define FW_DET_MAX_SIZE 1024 /* largest detector input size (a multiple of 32) */
#define FW_LANDMARK_SIZE 112
#define FW_RECOG_SIZE 150
#define FW_DESCRIPTOR_LEN 128

/* Load the three networks from dir (the files listed in engine/models.sha256).
 * Returns 0, or -1 with a one-line reason in err (missing file, truncated .bin, bad manifest,
 * unexpected tensor name or shape). */
int fw_nets_load(const char *dir, fw_nets **out, char *err, size_t errlen);
void fw_nets_free(fw_nets *nets);

/* A workspace big enough for the detector at input sizes up to max_det_size (multiple of 32,
 * 32..1024) and for the other two nets. NULL on out of memory or a bad size. Size: about
 * 8.6 MB for max_det_size 416, 37 MB for 1024 (at least the 4.1 MB the recognition net needs). */
fw_nets_ws *fw_nets_ws_new(const fw_nets *nets, int max_det_size);
void fw_nets_ws_free(fw_nets_ws *ws);

/* Pause points (engine/pause.h): the forward passes call pause between a band of detector
 * rows or a layer and the next. Set once per workspace; fn NULL turns them off. */
void fw_nets_ws_set_pause(fw_nets_ws *ws, fw_pause pause);

/* Tiny face detector. rgb: size*size*3 bytes HWC (already padded to a square and resized).
 * grid: (size/32)^2 * 25 floats, the raw output before sigmoid/exp, laid out as
 * [(row*cols + col)*25 + anchor*5 + k], k = tx, ty, tw, th, score_logit.
 * Returns 0, or -1 if size is not a multiple of 32 or exceeds the workspace. */
int fw_tinydet_run(const fw_nets *nets, fw_nets_ws *ws, const uint8_t *rgb, int size, float *grid);

typedef struct fw_det_box {
    float x, y, w, h; /* in input pixels (0..size) */
    float score;
} fw_det_box;

/* Decode a grid: sigmoid/exp with the 5 anchors, keep score >= score_threshold, IoU NMS at
 * iou_threshold (0.4 in face-api), best first. Writes at most max_boxes, returns the count
 * (0 also for a size that is not a multiple of 32 in 32..FW_DET_MAX_SIZE). */
int fw_tinydet_decode(const float *grid, int size, float score_threshold, float iou_threshold,
                      fw_det_box *boxes, int max_boxes);

/* 68-point landmarks. rgb: 112*112*3 HWC. out: 136 floats, (x, y) pairs relative to the chip. */
int fw_landmark68_run(const fw_nets *nets, fw_nets_ws *ws, const uint8_t *rgb, float out[136]);

/* Recognition. rgb: 150*150*3 HWC. out: the 128-d descriptor. */
int fw_recog_run(const fw_nets *nets, fw_nets_ws *ws, const uint8_t *rgb, float out[128]);

/* FLOPs of one forward pass (multiply-adds x 2), for benchmarks' GFLOP/s figures. */
double fw_tinydet_flops(int size);
double fw_landmark68_flops(void);
double fw_recog_flops(void);

#endif
