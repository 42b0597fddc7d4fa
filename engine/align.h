/*
 * align.h — where the networks' input chips come from.
 *
 *   fw_square_chip          crop a rectangle, pad it to a centred square with black, resize:
 *                           face-api's way of feeding a detection box to the landmark net
 *                           (and, in FW_ALIGN_BOX mode, the aligned box to the recognition net)
 *   fw_align_similarity     dlib's face chip: the similarity transform (rotation, scale,
 *                           translation) that best maps dlib's mean face shape, padded by 0.25,
 *                           onto landmarks 17-67 (eyebrows and lower lip left out, as in dlib's
 *                           get_face_chip_details); returned as the chip -> picture affine map
 *   fw_align_box_rect       face-api's own alignment (FaceLandmarks.align with
 *                           useDlibAlignment, what its descriptor task uses): a square from the
 *                           eye and mouth centres, clipped to the picture
 *   fw_align_chip           the 150 x 150 recognition chip in either mode
 *
 * Landmarks are 68 (x, y) pairs in the coordinates of the picture passed alongside them.
 * Nothing here allocates or keeps state; every output buffer belongs to the caller.
 */
#ifndef FW_ALIGN_H
#define FW_ALIGN_H

#include <stdint.h>

#include "engine/engine.h"
#include "engine/image.h"

#define FW_CHIP_SIZE 150
#define FW_CHIP_PADDING 0.25

/* dst: size * size * 3. The square that was sampled is reported through ox/oy/side (any may be
 * NULL) so points predicted on the chip map back as (ox + u * side / size, oy + v * side / size).
 * With clip, the rectangle is first clipped to the picture (face-api's clipAtImageBorders);
 * without, parts outside the picture read as black and the face stays where the box says. */
void fw_square_chip(const fw_image *img, int x, int y, int w, int h, int clip, uint8_t *dst,
                    int size, int *ox, int *oy, int *side);

/* m: chip pixel (u, v) -> picture (m[0] u + m[1] v + m[2], m[3] u + m[4] v + m[5]), following
 * dlib's chip_details/extract_image_chips geometry exactly. Returns the picture pixels per chip
 * pixel (the downscale factor). */
double fw_align_similarity(const float lm[136], int size, double padding, double m[6]);

/* rect: x, y, w, h in picture pixels, inside the picture (w or h may be 0 for a face entirely
 * outside it). */
void fw_align_box_rect(const float lm[136], int img_w, int img_h, int rect[4]);

/* The FW_CHIP_SIZE x FW_CHIP_SIZE recognition chip. Returns FWE_OK or FWE_ARG (unknown mode).
 * pause (may be NULL): pause points inside the warp (engine/pause.h). */
fw_engine_err fw_align_chip(const fw_image *img, const float lm[136], fw_align_mode mode,
                            uint8_t *dst, const fw_pause *pause);

#endif
