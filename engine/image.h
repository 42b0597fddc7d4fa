/*
 * image.h — the pixel side of the face engine: JPEG in and out, and the few geometric
 * operations the pipeline needs, all on packed 8-bit RGB (HWC, stride = 3 * width).
 *
 *   fw_decoder           a reusable JPEG decoder (libjpeg-turbo) with its own growable pixel
 *                        buffers, so a thread that keeps one decodes without allocating once
 *                        the buffers have reached their working size; it calls an optional
 *                        pause hook between bounded pieces of the decode (engine/pause.h)
 *   fw_exif_orientation  the EXIF orientation tag (1..8), parsed from hostile bytes
 *   fw_image_orient      apply an orientation (rotate / mirror) into another buffer
 *   fw_sample_square     the resampling primitive behind the networks' inputs: a square window
 *                        of the picture (zeros outside a "valid" rectangle) resized bilinearly
 *                        the way TensorFlow.js's resizeBilinear does it (no half-pixel centres)
 *   fw_resize_bilinear   the same resampling for a whole picture to any size
 *   fw_area_square       the detector's input when it is a reduction: the picture padded to a
 *                        square (right/bottom, black) and area-averaged, so nothing aliases
 *   fw_crop              a rectangle that may reach outside the picture (outside = black)
 *   fw_warp_affine       bilinear affine warp with optional supersampling (anti-aliasing)
 *   fw_draw_*            boxes and dots, for `facewire draw`
 *   fw_jpeg_encode       RGB -> JPEG
 *
 * Ownership: an fw_image never owns its pixels; whoever filled px owns them (a decoder's
 * images point into that decoder's buffers and stay valid until its next decode or free).
 * Nothing here keeps global state; a decoder belongs to one thread at a time.
 */
#ifndef FW_IMAGE_H
#define FW_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/pause.h"

typedef struct fw_image {
    uint8_t *px; /* w * h * 3 bytes, RGB, row-major */
    int w, h;
} fw_image;

typedef struct fw_decode_limits {
    uint64_t max_pixels; /* of the picture as stored (before any decode-time scaling) */
    int max_dimension;   /* per side, likewise */
    int min_long_side;   /* decode-time downscaling keeps the long side at least this long;
                            0 = never downscale */
} fw_decode_limits;

typedef struct fw_decode_info {
    int width, height;   /* of the picture after EXIF orientation, at full resolution */
    int orientation;     /* EXIF orientation that was applied, 1..8 */
    int scale_denom;     /* decode-time reduction: 1, 2, 4 or 8 */
    int colorspace;      /* TurboJPEG's TJCS_* of the stored data */
} fw_decode_info;

typedef struct fw_decoder fw_decoder;

/* NULL on out of memory. */
fw_decoder *fw_decoder_new(void);
void fw_decoder_free(fw_decoder *d);

/* The hook later decodes call between bounded pieces of work (every iMCU row while a
 * progressive file's scans are read in, every output row group after that, every few tens of
 * thousands of pixels of the CMYK conversion and EXIF rotation); {NULL, NULL}, the default,
 * means none. Copied; pause.arg must stay valid while the decoder is used. */
void fw_decoder_set_pause(fw_decoder *d, fw_pause pause);

/* Decode a JPEG to RGB with EXIF orientation applied. The header is checked against lim before
 * any pixel memory is touched. out->px points into the decoder (valid until the next call).
 * Returns FWE_OK, FWE_BAD_IMAGE (not a JPEG, corrupt, truncated — any libjpeg warning counts),
 * FWE_TOO_LARGE, FWE_NOMEM or FWE_ARG; err gets a one-line reason. */
fw_engine_err fw_decode_jpeg(fw_decoder *d, const uint8_t *jpeg, size_t len,
                             const fw_decode_limits *lim, fw_image *out, fw_decode_info *info,
                             char *err, size_t errlen);

/* EXIF orientation (1..8) from the first APP1 "Exif" segment; 1 when absent or malformed. */
int fw_exif_orientation(const uint8_t *jpeg, size_t len);

/* dst->px must hold src->w * src->h * 3 bytes; sets dst->w/h (swapped for 5..8). src and dst
 * must not overlap. Orientation values outside 1..8 are treated as 1. */
void fw_image_orient(const fw_image *src, int orientation, fw_image *dst);

/* Resample the square [ox, ox + side) x [oy, oy + side) of src to size x size into dst
 * (size * size * 3 bytes). Pixels outside the valid rectangle [vx0, vx1) x [vy0, vy1)
 * (clipped to the picture) read as 0. Sampling is TensorFlow's resizeBilinear with
 * align_corners = false and half_pixel_centers = false: output (i, j) reads source
 * (i * side / size, j * side / size), neighbours clamped to the square; values rounded. */
void fw_sample_square(const fw_image *src, int ox, int oy, int side,
                      int vx0, int vy0, int vx1, int vy1, uint8_t *dst, int size);

/* Bilinear resize of the whole picture (same sampling as above). dst->w/h set by the caller. */
void fw_resize_bilinear(const fw_image *src, fw_image *dst);

/* The square [0, side) x [0, side) of src (black beyond the picture, i.e. padded on the right
 * and bottom) reduced to size x size by area averaging: each output pixel is the mean of the
 * side/size x side/size source area it covers. For side <= size, or size above
 * FW_AREA_MAX_SIZE, it falls back to fw_sample_square (enlarging needs no low-pass).
 * No allocation: the scratch lives on the stack (about 50 KB). The area path calls
 * fw_pause_point(pause) after every 8 output rows (pause may be NULL); the output does not
 * depend on it. */
#define FW_AREA_MAX_SIZE 1024
void fw_area_square(const fw_image *src, int side, uint8_t *dst, int size,
                    const fw_pause *pause);

/* Copy the w x h rectangle at (x, y) — which may reach outside src — into dst (w * h * 3 bytes);
 * what lies outside the picture is black. */
void fw_crop(const fw_image *src, int x, int y, int w, int h, uint8_t *dst);

/* dst (dw x dh) pixel (u, v) = src at (m[0] u + m[1] v + m[2], m[3] u + m[4] v + m[5]),
 * bilinear, black outside. supersample n >= 1 averages n x n samples per output pixel spread
 * over the pixel's footprint, which is what keeps a strong downscale from aliasing. Calls
 * fw_pause_point(pause) after every 16 output rows (pause may be NULL; the output does not
 * depend on it): a supersampled 150 x 150 chip is ~0.8 ms. */
void fw_warp_affine(const fw_image *src, const double m[6], uint8_t *dst, int dw, int dh,
                    int supersample, const fw_pause *pause);

/* Drawing, clipped to the picture. Coordinates in pixels; rgb packed as 0xRRGGBB. */
void fw_draw_rect(fw_image *img, float x, float y, float w, float h, int thickness, uint32_t rgb);
void fw_draw_dot(fw_image *img, float x, float y, int radius, uint32_t rgb);

/* Encode RGB as a baseline JPEG (4:2:0) at quality 1..100. *out is malloc'ed (caller frees).
 * Returns FWE_OK, FWE_ARG, FWE_NOMEM or FWE_INTERNAL. */
fw_engine_err fw_jpeg_encode(const fw_image *img, int quality, uint8_t **out, size_t *outlen,
                             char *err, size_t errlen);

#endif
