/*
 * test_engine_image.c — the engine's pixel side: JPEG decoding of hostile and unusual input,
 * EXIF orientation, resampling, cropping, warping, drawing, encoding, chip geometry.
 *
 * Every test JPEG is made here with libjpeg-turbo's compressor (tjCompress2), and EXIF blocks
 * are spliced in by hand, so no binary fixtures are needed and each case says what it is.
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include <jpeglib.h>

#include "engine/align.h"
#include "engine/image.h"
#include "tests/check.h"
#include "tests/tu_data.h"

static const fw_decode_limits LIM = {40000000ull, 20000, 0};

/* A JPEG of the given RGB pixels (pf TJPF_RGB or TJPF_CMYK). malloc'ed, *len set. */
static uint8_t *make_jpeg(const uint8_t *px, int w, int h, int pf, int subsamp, int flags, int q,
                          size_t *len)
{
    tjhandle tj = tjInitCompress();
    if (!tj)
        return NULL;
    unsigned char *buf = NULL;
    unsigned long size = 0;
    uint8_t *out = NULL;
    if (tjCompress2(tj, px, w, 0, h, pf, &buf, &size, subsamp, q, flags) == 0) {
        out = malloc(size);
        if (out) {
            memcpy(out, buf, size);
            *len = size;
        }
    }
    tjFree(buf);
    tjDestroy(tj);
    return out;
}

/* A w x h picture: TL red, TR green, BL blue, BR white quadrants. */
static uint8_t *quadrants(int w, int h)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    if (!p)
        return NULL;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *d = p + ((size_t)y * w + x) * 3;
            const int right = x >= w / 2, bottom = y >= h / 2;
            const uint32_t c = !right && !bottom ? 0xFF0000 : right && !bottom ? 0x00FF00
                             : !right ? 0x0000FF : 0xFFFFFF;
            d[0] = (uint8_t)(c >> 16);
            d[1] = (uint8_t)(c >> 8);
            d[2] = (uint8_t)c;
        }
    return p;
}

/* Colour class of a pixel: 0 red, 1 green, 2 blue, 3 white, -1 unclear. */
static int colour_at(const fw_image *im, int x, int y)
{
    const uint8_t *p = im->px + ((size_t)y * im->w + x) * 3;
    const int r = p[0] > 160, g = p[1] > 160, b = p[2] > 160;
    if (r && g && b) return 3;
    if (r && !g && !b) return 0;
    if (!r && g && !b) return 1;
    if (!r && !g && b) return 2;
    return -1;
}

/* Splice an APP1 Exif segment holding only the orientation tag right after SOI. */
static uint8_t *with_exif(const uint8_t *jpeg, size_t len, int orientation, int little, size_t *outlen)
{
    uint8_t seg[2 + 2 + 6 + 8 + 2 + 12 + 4];
    size_t n = 0;
    seg[n++] = 0xFF; seg[n++] = 0xE1;
    const size_t seglen = sizeof(seg) - 2;
    seg[n++] = (uint8_t)(seglen >> 8); seg[n++] = (uint8_t)seglen;
    memcpy(seg + n, "Exif\0\0", 6); n += 6;
#define P16(v) do { unsigned v_ = (v); if (little) { seg[n++] = (uint8_t)v_; seg[n++] = (uint8_t)(v_ >> 8); } \
                    else { seg[n++] = (uint8_t)(v_ >> 8); seg[n++] = (uint8_t)v_; } } while (0)
#define P32(v) do { uint32_t w_ = (v); if (little) { P16(w_ & 0xFFFF); P16(w_ >> 16); } \
                    else { P16(w_ >> 16); P16(w_ & 0xFFFF); } } while (0)
    seg[n++] = little ? 'I' : 'M'; seg[n++] = little ? 'I' : 'M';
    P16(42);
    P32(8);          /* IFD0 right after the header */
    P16(1);          /* one entry */
    P16(0x0112); P16(3); P32(1); P16((unsigned)orientation); P16(0);
    P32(0);          /* no next IFD */
#undef P16
#undef P32
    uint8_t *out = malloc(len + n);
    if (!out)
        return NULL;
    memcpy(out, jpeg, 2);
    memcpy(out + 2, seg, n);
    memcpy(out + 2 + n, jpeg + 2, len - 2);
    *outlen = len + n;
    return out;
}

static void t_decode_roundtrip(void)
{
    const int w = 64, h = 48;
    uint8_t *px = malloc((size_t)w * h * 3);
    CHECK(px);
    for (int i = 0; i < w * h; i++) {
        px[3 * i] = (uint8_t)(i % w * 4);
        px[3 * i + 1] = (uint8_t)(i / w * 5);
        px[3 * i + 2] = 128;
    }
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, w, h, TJPF_RGB, TJSAMP_444, 0, 95, &len);
    fw_decoder *d = fw_decoder_new();
    fw_image im;
    fw_decode_info info;
    char err[128];
    fw_engine_err rc = jpg && d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, &info, err, sizeof(err)) : FWE_NOMEM;
    int maxdiff = 0;
    if (rc == FWE_OK && im.w == w && im.h == h)
        for (int i = 0; i < w * h * 3; i++) {
            const int dd = abs((int)im.px[i] - (int)px[i]);
            maxdiff = dd > maxdiff ? dd : maxdiff;
        }
    fw_decoder_free(d);
    free(jpg);
    free(px);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK_EQ_INT(im.w, w);
    CHECK_EQ_INT(im.h, h);
    CHECK_EQ_INT(info.width, w);
    CHECK_EQ_INT(info.orientation, 1);
    CHECK_EQ_INT(info.scale_denom, 1);
    CHECK(maxdiff <= 8);
}

static void t_decode_empty_and_garbage(void)
{
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    fw_image im;
    char err[128] = "";
    const uint8_t junk[] = "hello, this is not a picture";
    const uint8_t soi_only[] = {0xFF, 0xD8, 0xFF, 0xD9};
    fw_engine_err e1 = fw_decode_jpeg(d, junk, 0, &LIM, &im, NULL, err, sizeof(err));
    fw_engine_err e2 = fw_decode_jpeg(d, junk, sizeof(junk), &LIM, &im, NULL, err, sizeof(err));
    fw_engine_err e3 = fw_decode_jpeg(d, soi_only, sizeof(soi_only), &LIM, &im, NULL, err, sizeof(err));
    fw_engine_err e4 = fw_decode_jpeg(d, soi_only, 2, &LIM, &im, NULL, err, sizeof(err));
    fw_engine_err e5 = fw_decode_jpeg(NULL, soi_only, 4, &LIM, &im, NULL, err, sizeof(err));
    fw_decoder_free(d);
    CHECK_EQ_INT(e1, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e2, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e3, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e4, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e5, FWE_ARG);
}

/* Every proper prefix of a valid JPEG is refused: libjpeg's "premature end" warning is an
 * error for us, so a cut-off upload never becomes a half-grey picture. */
static void t_decode_truncated(void)
{
    uint8_t *px = quadrants(40, 24);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, 40, 24, TJPF_RGB, TJSAMP_420, 0, 90, &len);
    free(px);
    CHECK(jpg);
    fw_decoder *d = fw_decoder_new();
    size_t bad_ok = 0, first_ok_prefix = 0;
    fw_image im;
    char err[128];
    fw_engine_err full = d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, NULL, err, sizeof(err)) : FWE_NOMEM;
    for (size_t n = 0; d && n < len; n++) {
        fw_engine_err rc = fw_decode_jpeg(d, jpg, n, &LIM, &im, NULL, err, sizeof(err));
        if (rc != FWE_BAD_IMAGE && !bad_ok) {
            bad_ok = 1;
            first_ok_prefix = n;
        }
    }
    fw_decoder_free(d);
    free(jpg);
    CHECK_EQ_INT(full, FWE_OK);
    CHECK_MSG(!bad_ok, "prefix of %zu bytes was not refused", first_ok_prefix);
}

/* A header libjpeg-turbo rejects (here an unsupported marker 0xF9) used to leave the
 * decoder's TurboJPEG handle failing every later picture: one hostile upload would poison the
 * worker thread that owns the decoder. The same decoder must decode a good picture next. */
static void t_decode_recovers_after_bad_header(void)
{
    uint8_t *px = quadrants(32, 32);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, 32, 32, TJPF_RGB, TJSAMP_420, 0, 90, &len);
    free(px);
    CHECK(jpg);
    static const uint8_t bad_marker[] = {0xFF, 0xD8, 0xFF, 0xF9, 0x00, 0x04, 0x00, 0x00,
                                         0xFF, 0xD9};
    fw_decoder *d = fw_decoder_new();
    fw_image im;
    char err[128] = "";
    fw_engine_err before = d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err bad = d ? fw_decode_jpeg(d, bad_marker, sizeof bad_marker, &LIM, &im, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err after1 = d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_engine_err after2 = d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_decoder_free(d);
    free(jpg);
    CHECK_EQ_INT(before, FWE_OK);
    CHECK_EQ_INT(bad, FWE_BAD_IMAGE);
    CHECK_EQ_INT(after1, FWE_OK);
    CHECK_EQ_INT(after2, FWE_OK);
    CHECK_EQ_INT(im.w, 32);
}

static void t_decode_corrupt(void)
{
    uint8_t *px = quadrants(64, 64);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, 64, 64, TJPF_RGB, TJSAMP_420, 0, 90, &len);
    free(px);
    CHECK(jpg);
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    fw_image im;
    char err[128];
    /* find SOF0 and SOS */
    size_t sof = 0, sos = 0;
    for (size_t i = 2; i + 1 < len; i++) {
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0 && !sof) sof = i;
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xDA) { sos = i; break; }
    }
    uint8_t *c = malloc(len);
    CHECK(c);
    /* 1. header: 7-bit samples do not exist in baseline JPEG */
    memcpy(c, jpg, len);
    c[sof + 4] = 7;
    fw_engine_err e1 = fw_decode_jpeg(d, c, len, &LIM, &im, NULL, err, sizeof(err));
    /* 2. entropy data: a marker in the middle of the scan ends it early */
    memcpy(c, jpg, len);
    const size_t mid = sos + (len - sos) / 2;
    c[mid] = 0xFF;
    c[mid + 1] = 0xC4;
    fw_engine_err e2 = fw_decode_jpeg(d, c, len, &LIM, &im, NULL, err, sizeof(err));
    /* 3. a segment length pointing past the end of the file */
    memcpy(c, jpg, len);
    c[sof + 2] = 0xFF;
    c[sof + 3] = 0xF0;
    fw_engine_err e3 = fw_decode_jpeg(d, c, len, &LIM, &im, NULL, err, sizeof(err));
    free(c);
    free(jpg);
    fw_decoder_free(d);
    CHECK(sof && sos);
    CHECK_EQ_INT(e1, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e2, FWE_BAD_IMAGE);
    CHECK_EQ_INT(e3, FWE_BAD_IMAGE);
}

/* A well-formed header (SOI, DQT, SOF0, DHT, SOS) claiming w x h, with no pixel data: the size
 * check must happen on the header alone. */
static size_t huge_header(uint8_t *b, int w, int h)
{
    size_t n = 0;
    b[n++] = 0xFF; b[n++] = 0xD8;
    b[n++] = 0xFF; b[n++] = 0xDB; b[n++] = 0; b[n++] = 67; b[n++] = 0; /* DQT, table 0 */
    for (int i = 0; i < 64; i++) b[n++] = 1;
    b[n++] = 0xFF; b[n++] = 0xC0; b[n++] = 0; b[n++] = 11; b[n++] = 8;  /* SOF0, 1 component */
    b[n++] = (uint8_t)(h >> 8); b[n++] = (uint8_t)h;
    b[n++] = (uint8_t)(w >> 8); b[n++] = (uint8_t)w;
    b[n++] = 1; b[n++] = 1; b[n++] = 0x11; b[n++] = 0;
    b[n++] = 0xFF; b[n++] = 0xC4; b[n++] = 0; b[n++] = 20; b[n++] = 0x00; /* DHT DC 0: one code */
    b[n++] = 1; for (int i = 1; i < 16; i++) b[n++] = 0;
    b[n++] = 0;
    b[n++] = 0xFF; b[n++] = 0xDA; b[n++] = 0; b[n++] = 8; b[n++] = 1;    /* SOS */
    b[n++] = 1; b[n++] = 0x00; b[n++] = 0; b[n++] = 63; b[n++] = 0;
    b[n++] = 0x00; b[n++] = 0x00;
    b[n++] = 0xFF; b[n++] = 0xD9;
    return n;
}

static void t_decode_huge_header(void)
{
    uint8_t b[256];
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    fw_image im;
    char err[160] = "";
    size_t n = huge_header(b, 60000, 60000);
    fw_engine_err e1 = fw_decode_jpeg(d, b, n, &LIM, &im, NULL, err, sizeof(err));
    const int mentions = strstr(err, "60000x60000") != NULL;
    /* per-side limit with few pixels: 30000 x 8 = 240 000 pixels, side above 20000 */
    n = huge_header(b, 30000, 8);
    fw_engine_err e2 = fw_decode_jpeg(d, b, n, &LIM, &im, NULL, err, sizeof(err));
    /* a tighter pixel limit from the caller */
    const fw_decode_limits small = {1000, 20000, 0};
    n = huge_header(b, 100, 11);
    fw_engine_err e3 = fw_decode_jpeg(d, b, n, &small, &im, NULL, err, sizeof(err));
    fw_decoder_free(d);
    CHECK_EQ_INT(e1, FWE_TOO_LARGE);
    CHECK(mentions);
    CHECK_EQ_INT(e2, FWE_TOO_LARGE);
    CHECK_EQ_INT(e3, FWE_TOO_LARGE);
}

/* Random byte damage anywhere in a valid (progressive, to exercise more decoder paths) JPEG:
 * the decoder says OK or BAD_IMAGE and never crashes or reads out of bounds (ASan). */
static void t_decode_mutations(void)
{
    uint8_t *px = quadrants(48, 32);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, 48, 32, TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE, 85, &len);
    free(px);
    CHECK(jpg);
    uint8_t *m = malloc(len);
    fw_decoder *d = fw_decoder_new();
    int unexpected = 0, refused = 0;
    uint32_t seed = 777;
    for (int round = 0; m && d && round < 1500; round++) {
        memcpy(m, jpg, len);
        const int flips = 1 + round % 4;
        for (int k = 0; k < flips; k++) {
            seed = seed * 1103515245u + 12345u;
            const size_t at = 2 + (seed >> 8) % (len - 2);
            seed = seed * 1103515245u + 12345u;
            m[at] = (uint8_t)(seed >> 16);
        }
        fw_image im;
        char err[128];
        fw_engine_err rc = fw_decode_jpeg(d, m, len, &LIM, &im, NULL, err, sizeof(err));
        if (rc == FWE_BAD_IMAGE)
            refused++;
        else if (rc != FWE_OK && rc != FWE_TOO_LARGE)
            unexpected++;
    }
    fw_decoder_free(d);
    free(m);
    free(jpg);
    CHECK_EQ_INT(unexpected, 0);
    CHECK(refused > 0);
}

/* Inverted (Adobe) CMYK, the way libjpeg-turbo's own tools write it. */
static void rgb_to_cmyk(const uint8_t *rgb, uint8_t *cmyk)
{
    const double r = rgb[0] / 255.0, g = rgb[1] / 255.0, b = rgb[2] / 255.0;
    double c = 1 - r, m = 1 - g, y = 1 - b;
    double k = fmin(c, fmin(m, y));
    if (k >= 1.0) {
        c = m = y = 0;
    } else {
        c = (c - k) / (1 - k); m = (m - k) / (1 - k); y = (y - k) / (1 - k);
    }
    cmyk[0] = (uint8_t)(255 - c * 255 + 0.5);
    cmyk[1] = (uint8_t)(255 - m * 255 + 0.5);
    cmyk[2] = (uint8_t)(255 - y * 255 + 0.5);
    cmyk[3] = (uint8_t)(255 - k * 255 + 0.5);
}

static void t_decode_cmyk(void)
{
    const int w = 32, h = 32;
    uint8_t *rgb = quadrants(w, h), *cmyk = malloc((size_t)w * h * 4);
    CHECK(rgb && cmyk);
    for (int i = 0; i < w * h; i++) {
        /* darken a little so K is not trivial */
        uint8_t p[3] = {(uint8_t)(rgb[3 * i] * 3 / 4), (uint8_t)(rgb[3 * i + 1] * 3 / 4),
                        (uint8_t)(rgb[3 * i + 2] * 3 / 4)};
        memcpy(rgb + 3 * i, p, 3);
        rgb_to_cmyk(p, cmyk + 4 * i);
    }
    size_t len = 0;
    uint8_t *jpg = make_jpeg(cmyk, w, h, TJPF_CMYK, TJSAMP_444, 0, 95, &len);
    fw_decoder *d = fw_decoder_new();
    fw_image im;
    fw_decode_info info;
    char err[128];
    fw_engine_err rc = jpg && d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, &info, err, sizeof(err)) : FWE_NOMEM;
    int maxdiff = 0;
    if (rc == FWE_OK)
        for (int y = 4; y < h; y += 16) /* block centres-ish, away from edges */
            for (int x = 4; x < w; x += 16)
                for (int k = 0; k < 3; k++) {
                    const int i = (y * w + x) * 3 + k;
                    const int dd = abs((int)im.px[i] - (int)rgb[i]);
                    maxdiff = dd > maxdiff ? dd : maxdiff;
                }
    fw_decoder_free(d);
    free(jpg);
    free(rgb);
    free(cmyk);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK(info.colorspace == TJCS_CMYK || info.colorspace == TJCS_YCCK);
    CHECK_EQ_INT(im.w, w);
    CHECK_MSG(maxdiff <= 10, "CMYK -> RGB off by %d", maxdiff);
}

static void t_decode_grayscale(void)
{
    const int w = 32, h = 16;
    uint8_t *px = malloc((size_t)w * h * 3);
    CHECK(px);
    for (int i = 0; i < w * h; i++)
        px[3 * i] = px[3 * i + 1] = px[3 * i + 2] = (uint8_t)(i % w * 8);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, w, h, TJPF_RGB, TJSAMP_GRAY, 0, 95, &len);
    fw_decoder *d = fw_decoder_new();
    fw_image im;
    fw_decode_info info;
    char err[128];
    fw_engine_err rc = jpg && d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, &info, err, sizeof(err)) : FWE_NOMEM;
    int grey = 1, maxdiff = 0;
    if (rc == FWE_OK)
        for (int i = 0; i < w * h; i++) {
            grey &= im.px[3 * i] == im.px[3 * i + 1] && im.px[3 * i] == im.px[3 * i + 2];
            const int dd = abs((int)im.px[3 * i] - (int)px[3 * i]);
            maxdiff = dd > maxdiff ? dd : maxdiff;
        }
    fw_decoder_free(d);
    free(jpg);
    free(px);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK_EQ_INT(info.colorspace, TJCS_GRAY);
    CHECK(grey);
    CHECK(maxdiff <= 6);
}

static void t_decode_progressive(void)
{
    uint8_t *px = quadrants(48, 40);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, 48, 40, TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE, 90, &len);
    free(px);
    CHECK(jpg);
    int progressive = 0;
    for (size_t i = 2; i + 1 < len; i++)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC2)
            progressive = 1;
    fw_decoder *d = fw_decoder_new();
    fw_image im;
    char err[128];
    fw_engine_err rc = d ? fw_decode_jpeg(d, jpg, len, &LIM, &im, NULL, err, sizeof(err)) : FWE_NOMEM;
    int c0 = -1, c3 = -1;
    if (rc == FWE_OK) {
        c0 = colour_at(&im, 6, 6);
        c3 = colour_at(&im, 40, 34);
    }
    /* and truncated in the middle of its scans */
    fw_engine_err rt = d ? fw_decode_jpeg(d, jpg, len * 2 / 3, &LIM, &im, NULL, err, sizeof(err)) : FWE_NOMEM;
    fw_decoder_free(d);
    free(jpg);
    CHECK(progressive);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK_EQ_INT(c0, 0);
    CHECK_EQ_INT(c3, 3);
    CHECK_EQ_INT(rt, FWE_BAD_IMAGE);
}

/* Where each source corner (TL, TR, BL, BR) must land for EXIF orientations 1..8. */
enum { TL, TR, BL, BR };
static const int corner_dest[9][4] = {
    {0},
    {TL, TR, BL, BR}, /* 1 as stored */
    {TR, TL, BR, BL}, /* 2 mirrored left-right */
    {BR, BL, TR, TL}, /* 3 rotated 180 */
    {BL, BR, TL, TR}, /* 4 mirrored top-bottom */
    {TL, BL, TR, BR}, /* 5 transposed */
    {TR, BR, TL, BL}, /* 6 rotated 90 clockwise */
    {BR, TR, BL, TL}, /* 7 transversed */
    {BL, TL, BR, TR}, /* 8 rotated 90 anticlockwise */
};

static void t_exif_orientation(void)
{
    const int w = 64, h = 32;
    uint8_t *px = quadrants(w, h);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, w, h, TJPF_RGB, TJSAMP_444, 0, 95, &len);
    free(px);
    CHECK(jpg);
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    int failures = 0, fail_o = 0;
    for (int o = 1; o <= 8 && !failures; o++) {
        size_t elen = 0;
        uint8_t *e = with_exif(jpg, len, o, o % 2, &elen);
        fw_image im;
        fw_decode_info info;
        char err[128];
        const int parsed = e ? fw_exif_orientation(e, elen) : -1;
        fw_engine_err rc = e ? fw_decode_jpeg(d, e, elen, &LIM, &im, &info, err, sizeof(err)) : FWE_NOMEM;
        free(e);
        const int swap = o >= 5;
        if (parsed != o || rc != FWE_OK || im.w != (swap ? h : w) || im.h != (swap ? w : h) ||
            info.width != im.w || info.orientation != o) {
            failures++;
            fail_o = o;
            break;
        }
        const int cx[4] = {4, im.w - 5, 4, im.w - 5}, cy[4] = {4, 4, im.h - 5, im.h - 5};
        for (int src = 0; src < 4; src++) {
            const int dst = corner_dest[o][src];
            if (colour_at(&im, cx[dst], cy[dst]) != src) {
                failures++;
                fail_o = o;
            }
        }
    }
    fw_decoder_free(d);
    free(jpg);
    CHECK_MSG(!failures, "orientation %d decoded wrong", fail_o);
}

/* Malformed EXIF never crashes, never reads out of bounds (ASan) and falls back to 1. */
static void t_exif_hostile(void)
{
    uint8_t b[64];
    const uint8_t head[] = {0xFF, 0xD8, 0xFF, 0xE1};
    /* segment length beyond the buffer */
    memcpy(b, head, 4); b[4] = 0xFF; b[5] = 0xFF; memcpy(b + 6, "Exif\0\0II*\0", 10);
    CHECK_EQ_INT(fw_exif_orientation(b, 16), 1);
    /* IFD offset past the end of the segment */
    memset(b, 0, sizeof(b));
    memcpy(b, head, 4); b[5] = 2 + 6 + 8; memcpy(b + 6, "Exif\0\0II*\0\xF0\xFF\xFF\x7F", 14);
    CHECK_EQ_INT(fw_exif_orientation(b, 20), 1);
    /* entry count larger than the segment holds, the tag itself cut off */
    memset(b, 0, sizeof(b));
    memcpy(b, head, 4); b[5] = 2 + 6 + 8 + 2 + 6; memcpy(b + 6, "Exif\0\0II*\0\x08\0\0\0\xFF\xFF\x12\x01\x03\0\x01\0", 22);
    CHECK_EQ_INT(fw_exif_orientation(b, 28), 1);
    /* orientation out of range, and the wrong type */
    size_t len = 0;
    uint8_t *px = quadrants(16, 16);
    CHECK(px);
    uint8_t *jpg = make_jpeg(px, 16, 16, TJPF_RGB, TJSAMP_444, 0, 90, &len);
    free(px);
    CHECK(jpg);
    size_t elen = 0;
    uint8_t *e = with_exif(jpg, len, 9, 1, &elen);
    const int o9 = e ? fw_exif_orientation(e, elen) : -1;
    if (e)
        e[2 + 10 + 8 + 2 + 3] = 4; /* type LONG instead of SHORT (little-endian, low byte) */
    const int olong = e ? fw_exif_orientation(e, elen) : -1;
    /* random bytes after a valid Exif header, every length: must stay in bounds */
    int bad = 0;
    uint32_t seed = 12345;
    for (int round = 0; round < 2000 && e; round++) {
        const size_t seg = 8 + round % 40;
        uint8_t r[80];
        memcpy(r, head, 4);
        r[4] = 0; r[5] = (uint8_t)seg;
        memcpy(r + 6, "Exif\0\0", 6);
        for (size_t i = 12; i < sizeof(r); i++) {
            seed = seed * 1103515245u + 12345u;
            r[i] = (uint8_t)(seed >> 16);
        }
        r[12] = round & 1 ? 'I' : 'M'; r[13] = r[12]; r[14] = round & 1 ? 42 : 0; r[15] = round & 1 ? 0 : 42;
        const size_t total = 4 + seg; /* buffer ends exactly where the segment does */
        const int o = fw_exif_orientation(r, total);
        bad |= o < 1 || o > 8;
    }
    free(e);
    free(jpg);
    CHECK_EQ_INT(o9, 1);
    CHECK_EQ_INT(olong, 1);
    CHECK(!bad);
}

static void t_decode_scaled(void)
{
    const int w = 800, h = 400;
    uint8_t *px = quadrants(w, h);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, w, h, TJPF_RGB, TJSAMP_420, 0, 85, &len);
    free(px);
    CHECK(jpg);
    fw_decoder *d = fw_decoder_new();
    fw_image im;
    fw_decode_info info;
    char err[128];
    /* 800/4 = 200 still reaches 200, 800/8 = 100 would not: a quarter */
    const fw_decode_limits lim = {40000000ull, 20000, 200};
    fw_engine_err rc = d ? fw_decode_jpeg(d, jpg, len, &lim, &im, &info, err, sizeof(err)) : FWE_NOMEM;
    int c3 = rc == FWE_OK ? colour_at(&im, 190, 90) : -1;
    /* asking for more than the picture has: no reduction */
    const fw_decode_limits big = {40000000ull, 20000, 1000};
    fw_image im2 = {0};
    fw_decode_info info2;
    fw_engine_err rc2 = d ? fw_decode_jpeg(d, jpg, len, &big, &im2, &info2, err, sizeof(err)) : FWE_NOMEM;
    fw_decoder_free(d);
    free(jpg);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK_EQ_INT(info.scale_denom, 4);
    CHECK_EQ_INT(im.w, 200);
    CHECK_EQ_INT(im.h, 100);
    CHECK_EQ_INT(info.width, 800);
    CHECK_EQ_INT(info.height, 400);
    CHECK_EQ_INT(c3, 3);
    CHECK_EQ_INT(rc2, FWE_OK);
    CHECK_EQ_INT(info2.scale_denom, 1);
    CHECK_EQ_INT(im2.w, 800);
}

static void fill_gray(uint8_t *p, const uint8_t *v, int n)
{
    for (int i = 0; i < n; i++)
        p[3 * i] = p[3 * i + 1] = p[3 * i + 2] = v[i];
}

/* TensorFlow's legacy bilinear: 2 -> 4 reads source 0, 0.5, 1, 1.5 (clamped). */
static void t_resize_tf_semantics(void)
{
    uint8_t s[4 * 3], dpx[16 * 3];
    const uint8_t v[4] = {0, 100, 100, 200};
    fill_gray(s, v, 4);
    fw_image src = {s, 2, 2}, dst = {dpx, 4, 4};
    fw_resize_bilinear(&src, &dst);
    const uint8_t want[16] = {0, 50, 100, 100, 50, 100, 150, 150, 100, 150, 200, 200, 100, 150, 200, 200};
    for (int i = 0; i < 16; i++)
        CHECK_MSG(dpx[3 * i] == want[i] && dpx[3 * i + 2] == want[i], "pixel %d: %d != %d", i, dpx[3 * i], want[i]);
    /* a constant picture stays constant under any resize */
    uint8_t big[7 * 5 * 3], small[3 * 2 * 3];
    memset(big, 77, sizeof(big));
    fw_image b = {big, 7, 5}, sm = {small, 3, 2};
    fw_resize_bilinear(&b, &sm);
    for (size_t i = 0; i < sizeof(small); i++)
        CHECK_EQ_INT(small[i], 77);
}

/* The detector's input: padded to a square at the bottom with zeros, then resized. */
static void t_sample_square_pads(void)
{
    uint8_t s[4 * 2 * 3], dpx[4 * 4 * 3];
    memset(s, 200, sizeof(s));
    fw_image src = {s, 4, 2};
    fw_sample_square(&src, 0, 0, 4, 0, 0, 4, 2, dpx, 4);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            CHECK_EQ_INT(dpx[(y * 4 + x) * 3 + 1], y < 2 ? 200 : 0);
    /* halving: rows read 0 and 2 of the padded square */
    uint8_t half[2 * 2 * 3];
    fw_sample_square(&src, 0, 0, 4, 0, 0, 4, 2, half, 2);
    CHECK_EQ_INT(half[0], 200);
    CHECK_EQ_INT(half[2 * 3], 0);
    /* the valid rectangle masks picture content too */
    fw_sample_square(&src, 0, 0, 4, 1, 0, 4, 2, dpx, 4);
    CHECK_EQ_INT(dpx[0], 0);
    CHECK_EQ_INT(dpx[3], 200);
}

/* Area reduction: every output pixel is the mean of what it covers, padding counted as black. */
static void t_area_square(void)
{
    /* 8 x 4 checkerboard of 0/200, padded to 8 x 8, reduced to 4 x 4: each 2 x 2 cell holds
     * two of each, so the top half is 100 and the bottom half (padding) 0 */
    uint8_t s[8 * 4 * 3], d[4 * 4 * 3];
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 8; x++)
            memset(s + (y * 8 + x) * 3, (x + y) % 2 ? 200 : 0, 3);
    fw_image src = {s, 8, 4};
    fw_area_square(&src, 8, d, 4, NULL);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            CHECK_EQ_INT(d[(y * 4 + x) * 3 + 1], y < 2 ? 100 : 0);
    /* a non-integer factor (7 -> 3) keeps a constant picture constant */
    uint8_t c[7 * 7 * 3], o[3 * 3 * 3];
    memset(c, 90, sizeof(c));
    fw_image cs = {c, 7, 7};
    fw_area_square(&cs, 7, o, 3, NULL);
    for (size_t i = 0; i < sizeof(o); i++)
        CHECK_EQ_INT(o[i], 90);
    /* enlarging falls back to bilinear sampling */
    uint8_t big[16 * 16 * 3];
    fw_area_square(&cs, 7, big, 16, NULL);
    CHECK_EQ_INT(big[0], 90);
}

/* Against a direct (slow, double) integral of each output pixel's area, on a random picture
 * wider than one 2048-pixel strip, with a non-integer factor and padding at the bottom. */
static void t_area_square_vs_integral(void)
{
    const int w = 3001, h = 1200, size = 64;
    uint8_t *px = malloc((size_t)w * h * 3), *d = malloc((size_t)size * size * 3);
    CHECK(px && d);
    uint32_t seed = 99;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        seed = seed * 1103515245u + 12345u;
        px[i] = (uint8_t)(seed >> 20);
    }
    fw_image src = {px, w, h};
    fw_area_square(&src, w, d, size, NULL);
    const double f = (double)w / size;
    int worst = 0;
    for (int i = 0; i < size; i += 7)
        for (int j = 0; j < size; j += 5) {
            double acc = 0;
            for (int y = (int)floor(i * f); y < (int)ceil((i + 1) * f) && y < h; y++) {
                const double wy = fmin(y + 1, (i + 1) * f) - fmax(y, i * f);
                for (int x = (int)floor(j * f); x < (int)ceil((j + 1) * f) && x < w; x++) {
                    const double wx = fmin(x + 1, (j + 1) * f) - fmax(x, j * f);
                    acc += wx * wy * px[((size_t)y * w + x) * 3 + 1];
                }
            }
            const int want = (int)lrint(acc / (f * f));
            const int diff = abs(want - d[(i * size + j) * 3 + 1]);
            worst = diff > worst ? diff : worst;
        }
    free(px);
    free(d);
    CHECK_MSG(worst <= 1, "off by %d", worst);
}

static void t_crop_outside(void)
{
    uint8_t s[2 * 2 * 3], d[3 * 3 * 3];
    const uint8_t v[4] = {10, 20, 30, 40};
    fill_gray(s, v, 4);
    fw_image src = {s, 2, 2};
    fw_crop(&src, -1, -1, 3, 3, d);
    const uint8_t want[9] = {0, 0, 0, 0, 10, 20, 0, 30, 40};
    for (int i = 0; i < 9; i++)
        CHECK_EQ_INT(d[3 * i], want[i]);
    /* entirely outside: all black, nothing read */
    memset(d, 99, sizeof(d));
    fw_crop(&src, 1000, -1000, 3, 3, d);
    for (size_t i = 0; i < sizeof(d); i++)
        CHECK_EQ_INT(d[i], 0);
}

static void t_warp_affine(void)
{
    uint8_t s[8 * 8 * 3], d[8 * 8 * 3];
    for (int i = 0; i < 64; i++)
        s[3 * i] = s[3 * i + 1] = s[3 * i + 2] = (uint8_t)(i * 3);
    fw_image src = {s, 8, 8};
    const double id[6] = {1, 0, 0, 0, 1, 0};
    fw_warp_affine(&src, id, d, 8, 8, 1, NULL);
    CHECK(memcmp(s, d, sizeof(s)) == 0);
    /* shift by one pixel right: dst(u) = src(u + 1), last column half black, half outside */
    const double sh[6] = {1, 0, 1, 0, 1, 0};
    fw_warp_affine(&src, sh, d, 8, 8, 1, NULL);
    CHECK_EQ_INT(d[(2 * 8 + 3) * 3], s[(2 * 8 + 4) * 3]);
    CHECK_EQ_INT(d[(2 * 8 + 7) * 3], 0);
    /* a quarter turn: dst(u, v) = src(v, 7 - u) */
    const double rot[6] = {0, 1, 0, -1, 0, 7};
    fw_warp_affine(&src, rot, d, 8, 8, 1, NULL);
    CHECK_EQ_INT(d[(1 * 8 + 2) * 3], s[((7 - 2) * 8 + 1) * 3]);
    /* supersampling a constant region keeps it constant; a 2x reduction averages 2x2 */
    uint8_t c[16 * 16 * 3], o[4 * 4 * 3];
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++)
            memset(c + (y * 16 + x) * 3, (x + y) % 2 ? 200 : 0, 3);
    fw_image cb = {c, 16, 16};
    const double half[6] = {2, 0, 0.5, 0, 2, 0.5};
    fw_warp_affine(&cb, half, o, 4, 4, 2, NULL);
    CHECK_NEAR(o[(1 * 4 + 1) * 3], 100, 1);
}

static void t_square_chip(void)
{
    uint8_t s[20 * 20 * 3], d[10 * 10 * 3];
    memset(s, 50, sizeof(s));
    fw_image src = {s, 20, 20};
    int ox, oy, side;
    /* 10 wide, 4 high: 6 rows of padding, round(3) after and 3 before */
    fw_square_chip(&src, 5, 8, 10, 4, 0, d, 10, &ox, &oy, &side);
    CHECK_EQ_INT(side, 10);
    CHECK_EQ_INT(ox, 5);
    CHECK_EQ_INT(oy, 5);
    CHECK_EQ_INT(d[(2 * 10 + 5) * 3], 0);
    CHECK_EQ_INT(d[(3 * 10 + 5) * 3], 50);
    CHECK_EQ_INT(d[(6 * 10 + 5) * 3], 50);
    CHECK_EQ_INT(d[(7 * 10 + 5) * 3], 0);
    /* clipped at the left border (face-api's clipAtImageBorders): x -3, w 10 -> x 0, w 7 */
    fw_square_chip(&src, -3, 0, 10, 10, 1, d, 10, &ox, &oy, &side);
    CHECK_EQ_INT(side, 10);
    CHECK_EQ_INT(ox, -1);
    CHECK_EQ_INT(oy, 0);
    /* not clipped: the square stays where the box is */
    fw_square_chip(&src, -3, 0, 10, 10, 0, d, 10, &ox, &oy, &side);
    CHECK_EQ_INT(ox, -3);
    CHECK_EQ_INT(d[0], 0);
    CHECK_EQ_INT(d[3 * 3], 50);
}

/* The least-squares similarity commutes with moving the landmarks: landmarks moved by a known
 * similarity S give the chip map S o T, so scale ratio, angle difference and the chip centre's
 * image must come out exactly. Checked in dlib's corner convention (k = (150 s - 1) / 149, the
 * chip centre 74.5 lands on T(75, 75)). */
static void t_align_similarity(void)
{
    float lm[136], moved[136];
    const double ang = 30 * M_PI / 180, s = 2.0, tx = 100, ty = 50;
    for (int i = 0; i < 68; i++) {
        lm[2 * i] = (float)(i % 9 * 7);
        lm[2 * i + 1] = (float)(i / 9 * 11 + (i % 3));
        const double x = lm[2 * i], y = lm[2 * i + 1];
        moved[2 * i] = (float)(s * (cos(ang) * x - sin(ang) * y) + tx);
        moved[2 * i + 1] = (float)(s * (sin(ang) * x + cos(ang) * y) + ty);
    }
    double a[6], b[6];
    const double ka = fw_align_similarity(lm, 150, 0.25, a);
    const double kb = fw_align_similarity(moved, 150, 0.25, b);
    /* the chip -> picture maps differ by exactly that similarity: scale, angle, and the
     * chip centre lands on the moved image of the first centre */
    const double sa = hypot(a[0], a[3]), sb = hypot(b[0], b[3]);
    const double scale_a = (sa * 149 + 1) / 150, scale_b = (sb * 149 + 1) / 150;
    CHECK_NEAR(scale_b / scale_a, s, 1e-4);
    CHECK_NEAR(ka, sa, 1e-12);
    CHECK_NEAR(kb, sb, 1e-12);
    const double da = atan2(a[3], a[0]), db = atan2(b[3], b[0]);
    CHECK_NEAR(db - da, ang, 1e-5);
    const double ca_x = a[0] * 74.5 + a[1] * 74.5 + a[2], ca_y = a[3] * 74.5 + a[4] * 74.5 + a[5];
    const double cb_x = b[0] * 74.5 + b[1] * 74.5 + b[2], cb_y = b[3] * 74.5 + b[4] * 74.5 + b[5];
    CHECK_NEAR(cb_x, s * (cos(ang) * ca_x - sin(ang) * ca_y) + tx, 1e-3);
    CHECK_NEAR(cb_y, s * (sin(ang) * ca_x + cos(ang) * ca_y) + ty, 1e-3);
}

static void t_align_box_rect(void)
{
    float lm[136];
    for (int i = 0; i < 68; i++) {
        float x = 50, y = 85; /* mouth and the rest */
        if (i >= 36 && i < 42) { x = 40; y = 40; }
        if (i >= 42 && i < 48) { x = 60; y = 40; }
        lm[2 * i] = x;
        lm[2 * i + 1] = y;
    }
    int r[4];
    fw_align_box_rect(lm, 200, 200, r);
    /* eye-mouth distance hypot(10, 45) = 46.10; size floor(46.10 / 0.45) = 102; centre of the
     * three points (50, 55): x = max(0, 50 - 51) = 0, y = floor(55 - 43.86) = 11 */
    CHECK_EQ_INT(r[0], 0);
    CHECK_EQ_INT(r[1], 11);
    CHECK_EQ_INT(r[2], 102);
    CHECK_EQ_INT(r[3], 102);
    /* clipped by a small picture */
    fw_align_box_rect(lm, 80, 60, r);
    CHECK_EQ_INT(r[2], 80);
    CHECK_EQ_INT(r[3], 49);
    /* garbage landmarks give a rectangle inside the picture, not a crash */
    for (int i = 0; i < 136; i++)
        lm[i] = i % 2 ? NAN : 1e30f;
    fw_align_box_rect(lm, 80, 60, r);
    CHECK(r[0] >= 0 && r[1] >= 0 && r[2] >= 0 && r[3] >= 0);
    uint8_t px[80 * 60 * 3], chip[FW_CHIP_SIZE * FW_CHIP_SIZE * 3];
    memset(px, 9, sizeof(px));
    fw_image im = {px, 80, 60};
    CHECK_EQ_INT(fw_align_chip(&im, lm, FW_ALIGN_BOX, chip, NULL), FWE_OK);
    CHECK_EQ_INT(fw_align_chip(&im, lm, FW_ALIGN_SIMILARITY, chip, NULL), FWE_OK);
    CHECK_EQ_INT(fw_align_chip(&im, lm, (fw_align_mode)7, chip, NULL), FWE_ARG);
}

static void t_draw_and_encode(void)
{
    const int w = 64, h = 64;
    uint8_t *px = calloc((size_t)w * h, 3);
    CHECK(px);
    fw_image im = {px, w, h};
    fw_draw_rect(&im, 10, 10, 40, 40, 3, 0xFF0000);
    fw_draw_dot(&im, 30, 30, 2, 0x00FF00);
    fw_draw_rect(&im, -1e30f, NAN, 1e30f, 5, 2, 0x0000FF); /* clipped, no crash */
    const int edge_red = px[(11 * w + 30) * 3] == 255 && px[(11 * w + 30) * 3 + 1] == 0;
    const int dot = px[(30 * w + 30) * 3 + 1] == 255;
    uint8_t *jpg = NULL;
    size_t len = 0;
    char err[128];
    fw_engine_err rc = fw_jpeg_encode(&im, 95, &jpg, &len, err, sizeof(err));
    fw_engine_err bad = fw_jpeg_encode(&im, 0, &jpg, &len, err, sizeof(err));
    fw_decoder *d = fw_decoder_new();
    fw_image back = {0};
    fw_engine_err rd = rc == FWE_OK && d ? fw_decode_jpeg(d, jpg, len, &LIM, &back, NULL, err, sizeof(err)) : FWE_NOMEM;
    const int red_back = rd == FWE_OK && back.px[(11 * w + 30) * 3] > 200 && back.px[(11 * w + 30) * 3 + 1] < 60;
    const int black_back = rd == FWE_OK && back.px[(40 * w + 40) * 3] < 30;
    fw_decoder_free(d);
    free(jpg);
    free(px);
    CHECK(edge_red);
    CHECK(dot);
    CHECK_EQ_INT(rc, FWE_OK);
    CHECK_EQ_INT(bad, FWE_ARG);
    CHECK_EQ_INT(rd, FWE_OK);
    CHECK(red_back);
    CHECK(black_back);
}

/* ---- the libjpeg decode against tjDecompress2 --------------------------------------------- */

/* fw_decode_jpeg as it was when it decoded with one tjDecompress2 call (TJFLAG_STOPONWARNING |
 * TJFLAG_LIMITSCANS), kept here as the oracle the scanline decoder must match: same return
 * code, same message, and when it succeeds the same pixels, size and info. A fresh TurboJPEG
 * handle per call, so no handle state leaks between pictures. */
typedef struct tj_ref {
    fw_engine_err rc;
    char err[256];
    uint8_t *px; /* malloc'ed, w * h * 3, oriented; NULL unless rc == FWE_OK */
    int w, h;
    fw_decode_info info;
} tj_ref;

static void tj_ref_decode(const uint8_t *jpeg, size_t len, const fw_decode_limits *lim, tj_ref *r)
{
    memset(r, 0, sizeof *r);
    r->rc = FWE_BAD_IMAGE;
    if (len == 0) {
        snprintf(r->err, sizeof r->err, "empty input");
        return;
    }
    if (len < 4 || jpeg[0] != 0xFF || jpeg[1] != 0xD8) {
        snprintf(r->err, sizeof r->err, "not a JPEG (no SOI marker)");
        return;
    }
    tjhandle tj = tjInitDecompress();
    uint8_t *buf = NULL;
    int w = 0, h = 0, ss = 0, cs = 0;
    if (!tj) {
        r->rc = FWE_NOMEM;
        return;
    }
    if (tjDecompressHeader3(tj, jpeg, (unsigned long)len, &w, &h, &ss, &cs) != 0) {
        snprintf(r->err, sizeof r->err, "bad JPEG header: %s", tjGetErrorStr2(tj));
        goto out;
    }
    if (w <= 0 || h <= 0) {
        snprintf(r->err, sizeof r->err, "bad JPEG header: zero dimension");
        goto out;
    }
    if ((lim->max_dimension > 0 && (w > lim->max_dimension || h > lim->max_dimension)) ||
        (uint64_t)w * (uint64_t)h > lim->max_pixels) {
        snprintf(r->err, sizeof r->err, "picture is %dx%d, above the limit (%d per side, %llu pixels)",
                 w, h, lim->max_dimension, (unsigned long long)lim->max_pixels);
        r->rc = FWE_TOO_LARGE;
        goto out;
    }
    int denom = 1;
    if (lim->min_long_side > 0) {
        const int longest = w > h ? w : h;
        for (int dd = 8; dd >= 2; dd /= 2)
            if ((longest + dd - 1) / dd >= lim->min_long_side) {
                denom = dd;
                break;
            }
    }
    tjscalingfactor sf = {1, denom};
    const int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
    const int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    const size_t npx = (size_t)sw * sh;
    buf = malloc(npx * 4);
    if (!buf) {
        r->rc = FWE_NOMEM;
        goto out;
    }
    if (tjDecompress2(tj, jpeg, (unsigned long)len, buf, sw, 0, sh, cmyk ? TJPF_CMYK : TJPF_RGB,
                      TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) != 0) {
        snprintf(r->err, sizeof r->err, "corrupt JPEG: %s", tjGetErrorStr2(tj));
        goto out;
    }
    if (cmyk)
        for (size_t i = 0; i < npx; i++) {
            const unsigned c = buf[4 * i], m = buf[4 * i + 1], y = buf[4 * i + 2], k = buf[4 * i + 3];
            buf[3 * i] = (uint8_t)((c * k + 127) / 255);
            buf[3 * i + 1] = (uint8_t)((m * k + 127) / 255);
            buf[3 * i + 2] = (uint8_t)((y * k + 127) / 255);
        }
    const int o = fw_exif_orientation(jpeg, len);
    r->px = malloc(npx * 3);
    if (!r->px) {
        r->rc = FWE_NOMEM;
        goto out;
    }
    fw_image dec = {buf, sw, sh}, rot = {r->px, 0, 0};
    fw_image_orient(&dec, o, &rot);
    r->w = rot.w;
    r->h = rot.h;
    r->info.width = o >= 5 ? h : w;
    r->info.height = o >= 5 ? w : h;
    r->info.orientation = o;
    r->info.scale_denom = denom;
    r->info.colorspace = cs;
    r->rc = FWE_OK;
out:
    free(buf);
    tjDestroy(tj);
}

/* 1 when d decodes jpeg exactly as the oracle does (code, message; pixels, size and info when
 * OK); otherwise prints the first difference, labelled with what, and returns 0. */
static int same_as_tj(fw_decoder *d, const uint8_t *jpeg, size_t len, const fw_decode_limits *lim,
                      const char *what, tj_ref *keep)
{
    tj_ref r;
    tj_ref_decode(jpeg, len, lim, &r);
    fw_image im = {NULL, 0, 0};
    fw_decode_info info;
    memset(&info, 0x5A, sizeof info);
    char err[256] = "";
    const fw_engine_err rc = fw_decode_jpeg(d, jpeg, len, lim, &im, &info, err, sizeof err);
    int ok = 1;
    if (rc != r.rc || strcmp(err, r.err) != 0) {
        fprintf(stderr, "  %s (%zu bytes): got %d \"%s\", tjDecompress2 %d \"%s\"\n", what, len,
                (int)rc, err, (int)r.rc, r.err);
        ok = 0;
    } else if (rc == FWE_OK) {
        if (im.w != r.w || im.h != r.h || memcmp(&info, &r.info, sizeof info) != 0) {
            fprintf(stderr, "  %s: got %dx%d (%dx%d o%d 1/%d cs%d), tjDecompress2 %dx%d (%dx%d o%d 1/%d cs%d)\n",
                    what, im.w, im.h, info.width, info.height, info.orientation, info.scale_denom,
                    info.colorspace, r.w, r.h, r.info.width, r.info.height, r.info.orientation,
                    r.info.scale_denom, r.info.colorspace);
            ok = 0;
        } else if (memcmp(im.px, r.px, (size_t)r.w * r.h * 3) != 0) {
            fprintf(stderr, "  %s: pixels differ from tjDecompress2's\n", what);
            ok = 0;
        }
    }
    if (keep && ok)
        *keep = r;
    else
        free(r.px);
    return ok;
}

/* The picture's size as stored, its largest vertical sampling factor (from the SOF) and its
 * number of scans (SOS markers: 0xFF in entropy-coded data is always stuffed, so every
 * 0xFF 0xDA is a marker). 0 when there is no SOF0/1/2. */
static int jpeg_layout(const uint8_t *p, size_t len, int *w, int *h, int *maxv, int *scans)
{
    int found = 0;
    *scans = 0;
    for (size_t i = 2; i + 9 < len;) {
        if (p[i] != 0xFF) {
            i++;
            continue;
        }
        const uint8_t m = p[i + 1];
        if (m == 0xDA)
            (*scans)++;
        if (!found && (m == 0xC0 || m == 0xC1 || m == 0xC2)) {
            *h = p[i + 5] << 8 | p[i + 6];
            *w = p[i + 7] << 8 | p[i + 8];
            const int nc = p[i + 9];
            *maxv = 1;
            for (int c = 0; c < nc && i + 11 + 3 * (size_t)c < len; c++) {
                const int v = p[i + 11 + 3 * c] & 15;
                *maxv = v > *maxv ? v : *maxv;
            }
            found = 1;
        }
        i += 2;
    }
    return found;
}

typedef struct pause_count {
    long calls;
} pause_count;

static void count_pause(void *arg) { ((pause_count *)arg)->calls++; }

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The limits that make fw_decode_jpeg pick 1/denom for a picture whose long side is longest. */
static fw_decode_limits lim_for(int longest, int denom)
{
    fw_decode_limits l = LIM;
    l.min_long_side = denom == 1 ? 0 : (longest + denom - 1) / denom;
    return l;
}

/* Every shared eval picture, at 1/1, 1/2, 1/4 and 1/8: byte-identical to tjDecompress2 (pixels,
 * size, info), with and without a pause hook, and the hook is called. */
static void t_decode_same_as_tj_eval(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/eval", tu_shared_dir());
    DIR *dp = opendir(dir);
    CHECK_MSG(dp, "cannot open %s (set FW_SHARED)", dir);
    char *names[256];
    int n = 0;
    for (struct dirent *e; (e = readdir(dp)) && n < 256;) {
        const size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".jpg") == 0)
            names[n++] = strdup(e->d_name);
    }
    closedir(dp);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    fw_decoder *plain = fw_decoder_new(), *hooked = fw_decoder_new();
    pause_count pc = {0};
    if (hooked)
        fw_decoder_set_pause(hooked, (fw_pause){count_pause, &pc});
    int compared = 0, bad = 0, no_pause = 0, denoms_seen = 0;
    for (int k = 0; plain && hooked && k < n; k++) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        size_t len = 0;
        uint8_t *jpg = tu_read_file(path, &len);
        int w = 0, h = 0, maxv = 0, scans = 0;
        if (!jpg || !jpeg_layout(jpg, len, &w, &h, &maxv, &scans)) {
            fprintf(stderr, "  %s: unreadable\n", path);
            bad++;
            free(jpg);
            continue;
        }
        for (int denom = 1; denom <= 8; denom *= 2) {
            const fw_decode_limits l = lim_for(w > h ? w : h, denom);
            char what[1500];
            snprintf(what, sizeof what, "%s at 1/%d", names[k], denom);
            tj_ref r;
            memset(&r, 0, sizeof r);
            bad += !same_as_tj(plain, jpg, len, &l, what, &r);
            pc.calls = 0;
            bad += !same_as_tj(hooked, jpg, len, &l, what, NULL);
            no_pause += pc.calls == 0;
            denoms_seen |= r.rc == FWE_OK && r.info.scale_denom == denom ? denom : 0;
            bad += r.rc != FWE_OK;
            free(r.px);
            compared++;
        }
        free(jpg);
    }
    for (int k = 0; k < n; k++)
        free(names[k]);
    fw_decoder_free(plain);
    fw_decoder_free(hooked);
    CHECK_MSG(n >= 20, "only %d pictures in %s", n, dir);
    CHECK_EQ_INT(compared, 4 * n);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(no_pause, 0);
    CHECK_EQ_INT(denoms_seen, 1 | 2 | 4 | 8);
}

/* A noisy gradient: enough detail that a different IDCT or upsampling would show. */
static uint8_t *noisy(int w, int h, int comps, uint32_t seed)
{
    uint8_t *p = malloc((size_t)w * h * comps);
    if (!p)
        return NULL;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < comps; c++) {
                seed = seed * 1103515245u + 12345u;
                p[((size_t)y * w + x) * comps + c] =
                    (uint8_t)((x * 255 / (w > 1 ? w - 1 : 1) * (c + 1) + y * 3 + (int)(seed >> 27)) & 255);
            }
    return p;
}

/* Made-up pictures covering what the eval set may not: every subsampling TurboJPEG names,
 * baseline and progressive, grayscale, CMYK (stored as YCCK), odd and tiny sizes (where
 * tjDecompress2 may pick a scaling factor other than 1/denom for the same output size),
 * every EXIF orientation, and many min_long_side values. */
static void t_decode_same_as_tj_synthetic(void)
{
    static const int subsamps[] = {TJSAMP_444, TJSAMP_422, TJSAMP_420, TJSAMP_GRAY, TJSAMP_440,
                                   TJSAMP_411};
    static const int sizes[][2] = {{1, 1}, {3, 2}, {7, 5}, {37, 23}, {23, 37}, {130, 97}};
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    int bad = 0, cases = 0, made = 0;
    char what[160];
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int w = sizes[si][0], h = sizes[si][1], longest = w > h ? w : h;
        for (int kind = 0; kind < 14; kind++) {
            /* 0..11: 6 subsamplings x baseline/progressive; 12, 13: CMYK baseline/progressive */
            const int cmyk = kind >= 12, prog = kind % 2;
            const int ss = cmyk ? TJSAMP_420 : subsamps[kind / 2];
            uint8_t *px = noisy(w, h, cmyk ? 4 : 3, (uint32_t)(kind * 31 + si));
            size_t len = 0;
            uint8_t *jpg = px ? make_jpeg(px, w, h, cmyk ? TJPF_CMYK : TJPF_RGB, ss,
                                          prog ? TJFLAG_PROGRESSIVE : 0, 90, &len) : NULL;
            free(px);
            if (!jpg)
                continue;
            made++;
            for (int mls = 0; mls <= longest + 1; mls += mls < 20 ? 1 : 1 + longest / 16) {
                fw_decode_limits l = LIM;
                l.min_long_side = mls;
                snprintf(what, sizeof what, "%dx%d kind %d min_long_side %d", w, h, kind, mls);
                bad += !same_as_tj(d, jpg, len, &l, what, NULL);
                cases++;
            }
            for (int o = 1; o <= 8 && w > 1; o++) {
                size_t elen = 0;
                uint8_t *e = with_exif(jpg, len, o, o % 2, &elen);
                for (int denom = 1; e && denom <= 8; denom *= 2) {
                    const fw_decode_limits l = lim_for(longest, denom);
                    snprintf(what, sizeof what, "%dx%d kind %d orientation %d 1/%d", w, h, kind, o, denom);
                    bad += !same_as_tj(d, e, elen, &l, what, NULL);
                    cases++;
                }
                free(e);
            }
            free(jpg);
        }
    }
    fw_decoder_free(d);
    CHECK_EQ_INT(made, 6 * 14);
    CHECK(cases > 3000);
    CHECK_EQ_INT(bad, 0);
}

/* A progressive grayscale 16 x 16 JPEG with exactly nscans scans (64..631), written with
 * libjpeg's compressor and a scan script: the DC scan, then for each AC coefficient k a first
 * scan at point transform a_k followed by a_k refinement scans (a_k <= 9). malloc'ed. */
static uint8_t *many_scans_jpeg(int nscans, size_t *len)
{
    if (nscans < 64 || nscans > 1 + 63 * 10)
        return NULL;
    jpeg_scan_info *s = calloc((size_t)nscans, sizeof *s);
    if (!s)
        return NULL;
    int n = 0, extra = nscans - 64;
    s[n++] = (jpeg_scan_info){1, {0}, 0, 0, 0, 0};
    for (int k = 1; k < 64; k++) {
        const int a = extra > 9 ? 9 : extra;
        extra -= a;
        s[n++] = (jpeg_scan_info){1, {0}, k, k, 0, a};
        for (int al = a - 1; al >= 0; al--)
            s[n++] = (jpeg_scan_info){1, {0}, k, k, al + 1, al};
    }
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr); /* the script is valid by construction */
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    unsigned long outlen = 0;
    jpeg_mem_dest(&c, &out, &outlen);
    c.image_width = 16;
    c.image_height = 16;
    c.input_components = 1;
    c.in_color_space = JCS_GRAYSCALE;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 100, TRUE); /* small quantisers: every coefficient has bits to refine */
    c.scan_info = s;
    c.num_scans = n;
    jpeg_start_compress(&c, TRUE);
    uint8_t row[16];
    while (c.next_scanline < c.image_height) {
        for (int x = 0; x < 16; x++)
            row[x] = (uint8_t)((x * 37 + (int)c.next_scanline * 91) * 7);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(s);
    uint8_t *copy = malloc(outlen);
    if (copy) {
        memcpy(copy, out, outlen);
        *len = outlen;
    }
    free(out);
    return copy;
}

/* The pause hook: called at least once per 16 decoded rows of a baseline picture, and for a
 * progressive one also at least once per iMCU row of every scan (while jpeg_start_decompress
 * reads the scans in, which is where a progressive decode spends its time). */
static void t_decode_pause_points(void)
{
    pause_count pc = {0};
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    fw_decoder_set_pause(d, (fw_pause){count_pause, &pc});
    struct {
        const char *name; /* eval picture, or NULL for the made-up ones */
        int prog;
    } cases[] = {{"barack_obama_3.jpg", 0}, {"group_obama_biden.jpg", 1}, {NULL, 0}, {NULL, 1}};
    int checked = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t len = 0;
        uint8_t *jpg;
        if (cases[c].name) {
            jpg = tu_eval_pic(cases[c].name, &len);
        } else {
            uint8_t *px = noisy(320, 240, 3, 5);
            jpg = px ? make_jpeg(px, 320, 240, TJPF_RGB, TJSAMP_420,
                                 cases[c].prog ? TJFLAG_PROGRESSIVE : 0, 85, &len) : NULL;
            free(px);
        }
        CHECK_MSG(jpg, "case %zu: no picture", c);
        int w = 0, h = 0, maxv = 1, scans = 0;
        jpeg_layout(jpg, len, &w, &h, &maxv, &scans);
        const long imcu_rows = (h + 8 * maxv - 1) / (8 * maxv);
        for (int denom = 1; denom <= 8; denom *= 2) {
            const fw_decode_limits l = lim_for(w > h ? w : h, denom);
            fw_image im;
            fw_decode_info info;
            char err[256] = "";
            pc.calls = 0;
            const fw_engine_err rc = fw_decode_jpeg(d, jpg, len, &l, &im, &info, err, sizeof err);
            CHECK_MSG(rc == FWE_OK, "case %zu: %s", c, err);
            const int rows = info.orientation >= 5 ? im.w : im.h; /* as decoded */
            const long want = rows / 16 + (cases[c].prog ? scans * imcu_rows : 0);
            CHECK_MSG(pc.calls >= want, "case %zu at 1/%d: %ld pause calls, want >= %ld (%d rows, %d scans)",
                      c, denom, pc.calls, want, rows, scans);
            CHECK(!cases[c].prog || scans > 1);
            checked++;
        }
        free(jpg);
    }
    /* CMYK and rotated: the conversion and the rotation after the decode pause too, and the
     * result is tjDecompress2's */
    {
        uint8_t *px = noisy(640, 480, 4, 12);
        size_t clen = 0, elen = 0;
        uint8_t *cj = px ? make_jpeg(px, 640, 480, TJPF_CMYK, TJSAMP_420, 0, 90, &clen) : NULL;
        uint8_t *ej = cj ? with_exif(cj, clen, 6, 1, &elen) : NULL;
        free(px);
        free(cj);
        CHECK(ej);
        pc.calls = 0;
        const int same = same_as_tj(d, ej, elen, &LIM, "CMYK rotated, with pauses", NULL);
        const long calls = pc.calls;
        free(ej);
        CHECK(same);
        /* rows / 16 while decoding, then 640 x 480 / 32768 for each of the two loops */
        CHECK_MSG(calls >= 480 / 16 + 2 * (640 * 480 / 32768), "%ld pause calls", calls);
    }
    /* 500 tiny scans: still a picture, and still a pause in every one of them */
    size_t len = 0;
    uint8_t *jpg = many_scans_jpeg(500, &len);
    CHECK(jpg);
    fw_image im;
    char err[256] = "";
    pc.calls = 0;
    const fw_engine_err rc = fw_decode_jpeg(d, jpg, len, &LIM, &im, NULL, err, sizeof err);
    free(jpg);
    fw_decoder_free(d);
    CHECK_MSG(rc == FWE_OK, "%s", err);
    CHECK_MSG(pc.calls >= 500 * 2, "%ld pause calls for 500 scans of 2 iMCU rows", pc.calls);
    CHECK_EQ_INT(checked, 16);
}

/* Hostile and broken input fails exactly as it did with tjDecompress2 (same code and message),
 * and the decoder that failed decodes the next good picture identically: every prefix of a
 * baseline and a progressive file, random damage to both, the t_decode_corrupt cases, headers
 * TurboJPEG refuses, and TJFLAG_LIMITSCANS (500 scans pass, 501 do not). */
static void t_decode_errors_same_as_tj(void)
{
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    uint8_t *px = noisy(48, 32, 3, 9);
    CHECK(px);
    size_t blen = 0, plen = 0;
    uint8_t *base = make_jpeg(px, 48, 32, TJPF_RGB, TJSAMP_420, 0, 90, &blen);
    uint8_t *prog = make_jpeg(px, 48, 32, TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE, 90, &plen);
    free(px);
    CHECK(base && prog);
    int bad = 0, refused = 0, premature = 0;
    char what[96];
    const fw_decode_limits half = lim_for(48, 2);
    for (int which = 0; which < 2; which++) {
        const uint8_t *jpg = which ? prog : base;
        const size_t len = which ? plen : blen;
        for (size_t n = 0; n < len; n++) {
            snprintf(what, sizeof what, "%s prefix", which ? "progressive" : "baseline");
            bad += !same_as_tj(d, jpg, n, n % 2 ? &half : &LIM, what, NULL);
            snprintf(what, sizeof what, "%s after a prefix", which ? "progressive" : "baseline");
            bad += !same_as_tj(d, jpg, len, &LIM, what, NULL);
            fw_image im;
            char err[256] = "";
            refused += fw_decode_jpeg(d, jpg, n, &LIM, &im, NULL, err, sizeof err) == FWE_BAD_IMAGE;
            premature += strcmp(err, "corrupt JPEG: Premature end of JPEG file") == 0;
        }
        uint8_t *m = malloc(len);
        CHECK(m);
        uint32_t seed = 4242 + (uint32_t)which;
        for (int round = 0; round < 1500; round++) {
            memcpy(m, jpg, len);
            for (int k = 0; k < 1 + round % 4; k++) {
                seed = seed * 1103515245u + 12345u;
                const size_t at = 2 + (seed >> 8) % (len - 2);
                seed = seed * 1103515245u + 12345u;
                m[at] = (uint8_t)(seed >> 16);
            }
            snprintf(what, sizeof what, "%s mutation %d", which ? "progressive" : "baseline", round);
            bad += !same_as_tj(d, m, len, round % 2 ? &half : &LIM, what, NULL);
        }
        free(m);
    }
    /* t_decode_corrupt's damage, on the baseline file */
    size_t sof = 0, sos = 0;
    for (size_t i = 2; i + 1 < blen; i++) {
        if (base[i] == 0xFF && base[i + 1] == 0xC0 && !sof) sof = i;
        if (base[i] == 0xFF && base[i + 1] == 0xDA) { sos = i; break; }
    }
    CHECK(sof && sos);
    uint8_t *c = malloc(blen);
    CHECK(c);
    memcpy(c, base, blen);
    c[sof + 4] = 7;
    bad += !same_as_tj(d, c, blen, &LIM, "7-bit samples", NULL);
    memcpy(c, base, blen);
    c[sos + (blen - sos) / 2] = 0xFF;
    c[sos + (blen - sos) / 2 + 1] = 0xC4;
    bad += !same_as_tj(d, c, blen, &LIM, "marker inside the scan", NULL);
    memcpy(c, base, blen);
    c[sof + 2] = 0xFF;
    c[sof + 3] = 0xF0;
    bad += !same_as_tj(d, c, blen, &LIM, "segment past the end", NULL);
    free(c);
    static const uint8_t bad_marker[] = {0xFF, 0xD8, 0xFF, 0xF9, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xD9};
    static const uint8_t soi_only[] = {0xFF, 0xD8, 0xFF, 0xD9};
    bad += !same_as_tj(d, bad_marker, sizeof bad_marker, &LIM, "unsupported marker", NULL);
    bad += !same_as_tj(d, soi_only, sizeof soi_only, &LIM, "SOI and EOI", NULL);
    uint8_t hh[256];
    size_t hn = huge_header(hh, 60000, 60000);
    bad += !same_as_tj(d, hh, hn, &LIM, "60000x60000", NULL);
    hn = huge_header(hh, 100, 11);
    bad += !same_as_tj(d, hh, hn, &LIM, "100x11 header without data", NULL);
    bad += !same_as_tj(d, base, blen, &LIM, "baseline after all that", NULL);
    /* TJFLAG_LIMITSCANS */
    size_t l500 = 0, l501 = 0;
    uint8_t *s500 = many_scans_jpeg(500, &l500), *s501 = many_scans_jpeg(501, &l501);
    CHECK(s500 && s501);
    bad += !same_as_tj(d, s500, l500, &LIM, "500 scans", NULL);
    bad += !same_as_tj(d, s501, l501, &LIM, "501 scans", NULL);
    fw_image im;
    char e500[256] = "", e501[256] = "", ehdr[256] = "";
    const fw_engine_err r500 = fw_decode_jpeg(d, s500, l500, &LIM, &im, NULL, e500, sizeof e500);
    const fw_engine_err r501 = fw_decode_jpeg(d, s501, l501, &LIM, &im, NULL, e501, sizeof e501);
    const fw_engine_err rhdr = fw_decode_jpeg(d, bad_marker, sizeof bad_marker, &LIM, &im, NULL, ehdr, sizeof ehdr);
    const fw_engine_err rok = fw_decode_jpeg(d, s500, l500, &LIM, &im, NULL, e500, sizeof e500);
    free(s500);
    free(s501);
    free(base);
    free(prog);
    fw_decoder_free(d);
    CHECK_EQ_INT(bad, 0);
    CHECK(refused >= 2 * 60);
    CHECK(premature > 10);
    CHECK_EQ_INT(r500, FWE_OK);
    CHECK_EQ_INT(r501, FWE_BAD_IMAGE);
    CHECK_EQ_STR(e501, "corrupt JPEG: Progressive JPEG image has more than 500 scans");
    CHECK_EQ_INT(rhdr, FWE_BAD_IMAGE);
    CHECK_MSG(strncmp(ehdr, "bad JPEG header: ", 17) == 0, "%s", ehdr);
    CHECK_EQ_INT(rok, FWE_OK);
}

/* Nothing carries over from one picture to the next: libjpeg keeps quantisation and Huffman
 * tables in a decompress object that is reused, so a file without tables (here: its DQT cut
 * out) would decode with the previous upload's. It must fail as it does on a fresh decoder. */
static void t_decode_no_tables_from_before(void)
{
    uint8_t *px = noisy(32, 16, 3, 3);
    CHECK(px);
    size_t len = 0;
    uint8_t *jpg = make_jpeg(px, 32, 16, TJPF_RGB, TJSAMP_420, 0, 90, &len);
    free(px);
    CHECK(jpg);
    uint8_t *cut = malloc(len);
    CHECK(cut);
    size_t n = 0, i = 2;
    memcpy(cut, jpg, 2);
    n = 2;
    while (i + 4 <= len && jpg[i] == 0xFF && jpg[i + 1] != 0xDA) {
        const size_t seg = 2 + ((size_t)jpg[i + 2] << 8 | jpg[i + 3]);
        if (jpg[i + 1] != 0xDB) {
            memcpy(cut + n, jpg + i, seg);
            n += seg;
        }
        i += seg;
    }
    CHECK(i < len && n < i);
    memcpy(cut + n, jpg + i, len - i);
    n += len - i;
    fw_decoder *d = fw_decoder_new();
    CHECK(d);
    fw_image im;
    char e1[256] = "", e2[256] = "";
    const fw_engine_err fresh = fw_decode_jpeg(d, cut, n, &LIM, &im, NULL, e1, sizeof e1);
    const fw_engine_err good = fw_decode_jpeg(d, jpg, len, &LIM, &im, NULL, e2, sizeof e2);
    const fw_engine_err after = fw_decode_jpeg(d, cut, n, &LIM, &im, NULL, e2, sizeof e2);
    const int same = same_as_tj(d, cut, n, &LIM, "without DQT", NULL);
    fw_decoder_free(d);
    free(cut);
    free(jpg);
    CHECK_EQ_INT(fresh, FWE_BAD_IMAGE);
    CHECK_EQ_STR(e1, "corrupt JPEG: Quantization table 0x00 was not defined");
    CHECK_EQ_INT(good, FWE_OK);
    CHECK_EQ_INT(after, FWE_BAD_IMAGE);
    CHECK_EQ_STR(e2, e1);
    CHECK(same);
}

/* The pause hook does not change fw_area_square's output and comes every 8 output rows. */
static void t_area_square_pauses(void)
{
    const int w = 853, h = 480, size = 416;
    uint8_t *px = noisy(w, h, 3, 77);
    uint8_t *a = malloc((size_t)size * size * 3), *b = malloc((size_t)size * size * 3);
    CHECK(px && a && b);
    fw_image src = {px, w, h};
    pause_count pc = {0};
    const fw_pause p = {count_pause, &pc}, none = {NULL, NULL};
    fw_area_square(&src, w, a, size, NULL);
    fw_area_square(&src, w, b, size, &p);
    const int same = memcmp(a, b, (size_t)size * size * 3) == 0;
    const long calls = pc.calls;
    memset(b, 0, (size_t)size * size * 3);
    fw_area_square(&src, w, b, size, &none);
    const int same2 = memcmp(a, b, (size_t)size * size * 3) == 0;
    /* 100 rows: 12 pauses */
    pc.calls = 0;
    fw_area_square(&src, w, a, 100, &p);
    const long calls100 = pc.calls;
    free(px);
    free(a);
    free(b);
    CHECK(same);
    CHECK(same2);
    CHECK_MSG(calls >= size / 8 - 1 && calls <= size / 8 + 1, "%ld pauses for %d rows", calls, size);
    CHECK_MSG(calls100 >= 100 / 8 - 1 && calls100 <= 100 / 8 + 1, "%ld pauses for 100 rows", calls100);
}

/* The warp pauses after every 16 rows of the chip, and its output does not depend on it. */
static void t_warp_affine_pauses(void)
{
    const int w = 640, h = 480, n = 150;
    uint8_t *px = noisy(w, h, 3, 91);
    uint8_t *a = malloc((size_t)n * n * 3), *b = malloc((size_t)n * n * 3);
    CHECK(px && a && b);
    fw_image src = {px, w, h};
    const double m[6] = {2.1, 0.4, 100.5, -0.4, 2.1, 60.25}; /* rotated 2x reduction */
    pause_count pc = {0};
    const fw_pause p = {count_pause, &pc};
    fw_warp_affine(&src, m, a, n, n, 2, NULL);
    fw_warp_affine(&src, m, b, n, n, 2, &p);
    const int same = memcmp(a, b, (size_t)n * n * 3) == 0;
    free(px);
    free(a);
    free(b);
    CHECK(same);
    CHECK_EQ_INT(pc.calls, n / 16);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_decode_roundtrip),
    CHECK_TEST(t_decode_empty_and_garbage),
    CHECK_TEST(t_decode_truncated),
    CHECK_TEST(t_decode_recovers_after_bad_header), CHECK_TEST(t_decode_corrupt),
    CHECK_TEST(t_decode_huge_header),
    CHECK_TEST(t_decode_mutations),
    CHECK_TEST(t_decode_cmyk),
    CHECK_TEST(t_decode_grayscale),
    CHECK_TEST(t_decode_progressive),
    CHECK_TEST(t_exif_orientation),
    CHECK_TEST(t_exif_hostile),
    CHECK_TEST(t_decode_scaled),
    CHECK_TEST(t_resize_tf_semantics),
    CHECK_TEST(t_sample_square_pads),
    CHECK_TEST(t_area_square),
    CHECK_TEST(t_area_square_vs_integral),
    CHECK_TEST(t_crop_outside),
    CHECK_TEST(t_warp_affine),
    CHECK_TEST(t_square_chip),
    CHECK_TEST(t_align_similarity),
    CHECK_TEST(t_align_box_rect),
    CHECK_TEST(t_draw_and_encode),
    CHECK_TEST(t_decode_same_as_tj_eval),
    CHECK_TEST(t_decode_same_as_tj_synthetic),
    CHECK_TEST(t_decode_pause_points),
    CHECK_TEST(t_decode_errors_same_as_tj),
    CHECK_TEST(t_decode_no_tables_from_before),
    CHECK_TEST(t_area_square_pauses),
    CHECK_TEST(t_warp_affine_pauses),
};

int main(int argc, char **argv)
{
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
