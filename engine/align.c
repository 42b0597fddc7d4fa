/*
 * align.c — chips for the landmark and recognition networks (see align.h).
 *
 * The recognition ResNet is dlib's, trained on dlib's face chips; face-api feeds it a plain
 * box crop instead. Both are here: the similarity-aligned chip reproduces dlib's geometry (a
 * least-squares similarity from its mean face shape, then dlib's own corner mapping), the box
 * crop reproduces face-api's rounding and clipping, so the two can be compared on the same
 * landmarks (docs/engine.md has the numbers).
 */
#include "engine/align.h"

#include <math.h>

/* dlib's mean face shape (get_face_chip_details, interpolation.h): points 17..67 in a unit
 * square. Boost Software Licence data, restated. */
static const double mean_x[51] = {
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689};
static const double mean_y[51] = {
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182};

/* dlib leaves out the eyebrows (17-26) and the lower lip (55-59, 65-67): they move with
 * expression, the rest of the face does not. */
static int used_point(int i)
{
    return i >= 27 && !(i >= 55 && i <= 59) && !(i >= 65 && i <= 67);
}

/* Float coordinates from a network can be anything; keep them where int conversion is
 * defined. NaN becomes 0. */
static double sane(double v)
{
    if (!(v == v))
        return 0;
    return v < -1e7 ? -1e7 : v > 1e7 ? 1e7 : v;
}

void fw_square_chip(const fw_image *img, int x, int y, int w, int h, int clip, uint8_t *dst,
                    int size, int *ox_out, int *oy_out, int *side_out)
{
    if (clip) {
        /* Box.clipAtImageBorders: move the top-left inside, keep the bottom-right, cap at the
         * picture's size */
        const long long r = (long long)x + w, b = (long long)y + h;
        if (x < 0) x = 0;
        if (y < 0) y = 0;
        w = (int)((r < img->w ? r : img->w) - x);
        h = (int)((b < img->h ? b : img->h) - y);
    }
    if (w < 1) w = 1;
    if (h < 1) h = 1;
    /* padToSquare(isCenterImage = true): round(diff / 2) zeros after, the rest before */
    const int side = w > h ? w : h;
    const int diff = side - (w > h ? h : w);
    const int before = diff - (diff + 1) / 2;
    const int ox = w < h ? x - before : x;
    const int oy = h < w ? y - before : y;
    fw_sample_square(img, ox, oy, side, x, y, x + w, y + h, dst, size);
    if (ox_out) *ox_out = ox;
    if (oy_out) *oy_out = oy;
    if (side_out) *side_out = side;
}

double fw_align_similarity(const float lm[136], int size, double padding, double m[6])
{
    /* Least-squares similarity chip -> picture (Umeyama's solution, which in 2-D is the
     * closed form below: the best scaled rotation [a -b; b a] between the centred sets). */
    double fx[51], fy[51], tx[51], ty[51];
    double mfx = 0, mfy = 0, mtx = 0, mty = 0;
    int n = 0;
    for (int i = 17; i < 68; i++) {
        if (!used_point(i))
            continue;
        fx[n] = (padding + mean_x[i - 17]) / (2 * padding + 1) * size;
        fy[n] = (padding + mean_y[i - 17]) / (2 * padding + 1) * size;
        tx[n] = sane(lm[2 * i]);
        ty[n] = sane(lm[2 * i + 1]);
        mfx += fx[n]; mfy += fy[n]; mtx += tx[n]; mty += ty[n];
        n++;
    }
    mfx /= n; mfy /= n; mtx /= n; mty /= n;
    double sff = 0, sa = 0, sb = 0;
    for (int k = 0; k < n; k++) {
        const double ax = fx[k] - mfx, ay = fy[k] - mfy, bx = tx[k] - mtx, by = ty[k] - mty;
        sff += ax * ax + ay * ay;
        sa += ax * bx + ay * by;
        sb += ax * by - ay * bx;
    }
    const double a = sa / sff, b = sb / sff;
    /* dlib's chip_details keeps angle and scale of that transform and a rectangle centred on
     * the image of the chip centre (size/2, size/2), size*scale - 1 wide; extract_image_chips
     * then maps the chip's corner pixels (0 and size-1) onto the rotated rectangle's corners.
     * Restated as one affine map: */
    const double scale = sqrt(a * a + b * b);
    const double cosv = scale > 0 ? a / scale : 1, sinv = scale > 0 ? b / scale : 0;
    const double h = size / 2.0;
    const double cx = a * h - b * h + (mtx - (a * mfx - b * mfy));
    const double cy = b * h + a * h + (mty - (b * mfx + a * mfy));
    const double k = size > 1 ? (size * scale - 1) / (size - 1) : scale;
    const double c = (size - 1) / 2.0;
    m[0] = k * cosv;
    m[1] = -k * sinv;
    m[2] = cx - m[0] * c - m[1] * c;
    m[3] = k * sinv;
    m[4] = k * cosv;
    m[5] = cy - m[3] * c - m[4] * c;
    return k;
}

static void centre(const float lm[136], int from, int to, double *x, double *y)
{
    double sx = 0, sy = 0;
    for (int i = from; i < to; i++) {
        sx += sane(lm[2 * i]);
        sy += sane(lm[2 * i + 1]);
    }
    *x = sx / (to - from);
    *y = sy / (to - from);
}

void fw_align_box_rect(const float lm[136], int img_w, int img_h, int rect[4])
{
    /* FaceLandmarks.alignDlib: eye centres and mouth centre; the square's side is the mean
     * eye-to-mouth distance / 0.45, placed at (0.5, 0.43) of the side around their mean. */
    double lx, ly, rx, ry, mx, my;
    centre(lm, 36, 42, &lx, &ly);
    centre(lm, 42, 48, &rx, &ry);
    centre(lm, 48, 68, &mx, &my);
    const double d = (hypot(mx - lx, my - ly) + hypot(mx - rx, my - ry)) / 2;
    const double size = floor(sane(d / 0.45));
    const double cx = (lx + rx + mx) / 3, cy = (ly + ry + my) / 3;
    const double x = floor(sane(fmax(0, cx - 0.5 * size)));
    const double y = floor(sane(fmax(0, cy - 0.43 * size)));
    /* then clipAtImageBorders when the crop is taken */
    const double w = fmin(size, img_w - x), hh = fmin(size, img_h - y);
    rect[0] = (int)x;
    rect[1] = (int)y;
    rect[2] = w > 0 ? (int)w : 0;
    rect[3] = hh > 0 ? (int)hh : 0;
}

fw_engine_err fw_align_chip(const fw_image *img, const float lm[136], fw_align_mode mode,
                            uint8_t *dst, const fw_pause *pause)
{
    if (mode == FW_ALIGN_SIMILARITY) {
        double m[6];
        const double k = fw_align_similarity(lm, FW_CHIP_SIZE, FW_CHIP_PADDING, m);
        /* dlib samples bilinearly up to a 2x reduction and goes through a blurred image
         * pyramid beyond. Our low-pass: ceil(k / 2) x ceil(k / 2) bilinear samples spread over
         * each chip pixel's footprint (samples ~2 px apart, each already a 2x2 average).
         * On the eval set (mirror pass on every picture): margin 0.168 without it, 0.1730
         * with ceil(k) samples, 0.1736 with ceil(k / 2) at a quarter of the sampling cost. */
        const int n = k > 2.0 ? (int)ceil(k / 2) : 1;
        fw_warp_affine(img, m, dst, FW_CHIP_SIZE, FW_CHIP_SIZE, n, pause);
        return FWE_OK;
    }
    if (mode == FW_ALIGN_BOX) {
        int r[4];
        fw_align_box_rect(lm, img->w, img->h, r);
        fw_square_chip(img, r[0], r[1], r[2], r[3], 1, dst, FW_CHIP_SIZE, NULL, NULL, NULL);
        return FWE_OK;
    }
    return FWE_ARG;
}
