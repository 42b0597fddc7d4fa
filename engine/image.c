/*
 * image.c — JPEG decode/encode and the pixel operations of the face engine (see image.h).
 *
 * Decoding runs libjpeg-turbo's libjpeg API scanline by scanline rather than one
 * tjDecompress2() call, for one reason: pause points (engine/pause.h). A single tjDecompress2
 * is milliseconds of uninterrupted CPU (2 ms for 853x480, far more for big or progressive
 * files); reading row groups in a loop, with a progress monitor, lets the decoder call the
 * caller's hook between bounded pieces: every iMCU row while jpeg_start_decompress reads a
 * multi-scan (progressive) file's scans in, every output row group after that, and every
 * FW_PAUSE_PIXELS pixels of the CMYK conversion and the EXIF rotation that follow.
 * The result is what tjDecompress2(..., TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) gave, pixel
 * for pixel and error for error (tests/test_engine_image.c checks it against tjDecompress2):
 *   - the same decode parameters: TurboJPEG's defaults (JDCT_ISLOW, fancy upsampling), RGB
 *     out (CMYK for CMYK/YCCK files), the scaling factor tjDecompress2 would pick
 *   - errors never exit: error_exit longjmps back, and so does every warning (emit_message
 *     with msg_level -1), which is TJFLAG_STOPONWARNING: a truncated or corrupt stream is an
 *     error, not a half-grey picture
 *   - the progress monitor refuses a file past 500 scans, which is TJFLAG_LIMITSCANS (a
 *     progressive file with thousands of tiny scans is a known CPU DoS)
 *   - a fresh libjpeg object per picture, so no table of an earlier upload is ever used
 * The header is still read first with tjDecompressHeader3 (it is microseconds), because its
 * rules decide which files are accepted at all (subsampling and colour space it can name, a
 * header warning is a failure) and its dimensions are checked against the caller's limits
 * before any pixel buffer is sized. Big pictures are decoded already reduced by 1/2, 1/4 or
 * 1/8 in the IDCT (the reductions libjpeg-turbo has SIMD code for), which is several times
 * cheaper than decoding everything and resizing afterwards. Encoding stays on TurboJPEG.
 *
 * The resampling follows TensorFlow.js's resizeBilinear (align_corners = false,
 * half_pixel_centers = false), because that is what the networks saw in face-api.
 */
#include "engine/image.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include <jpeglib.h>

/* tjDecompress2's limit for TJFLAG_LIMITSCANS */
#define FW_JPEG_MAX_SCANS 500

/* libjpeg's error manager, made to return instead of exit: error_exit and every warning
 * format the message into msg and longjmp to jb (set by decode_rows around each decode). */
typedef struct fw_jpeg_err {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} fw_jpeg_err;

struct fw_decoder {
    tjhandle tj; /* the header check only (tjDecompressHeader3) */
    struct jpeg_decompress_struct jd; /* live only inside decode_rows (see there) */
    fw_jpeg_err jerr;
    struct jpeg_progress_mgr progress;
    fw_pause pause;
    uint8_t *buf; /* decoded pixels (RGB, or CMYK before conversion) */
    size_t cap;
    uint8_t *rot; /* the oriented copy, only used when EXIF asks for a rotation/mirror */
    size_t rotcap;
};

static void set_err(char *err, size_t errlen, const char *fmt, const char *arg)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, arg);
}

static void jpeg_fail(j_common_ptr c)
{
    fw_jpeg_err *e = (fw_jpeg_err *)c->err;
    e->pub.format_message(c, e->msg);
    longjmp(e->jb, 1);
}

/* msg_level -1 is a warning ("Premature end of JPEG file", "Corrupt JPEG data: ..."): an
 * error for us (TJFLAG_STOPONWARNING). Trace messages (level >= 0) are ignored. */
static void jpeg_message(j_common_ptr c, int msg_level)
{
    if (msg_level < 0)
        jpeg_fail(c);
}

static void jpeg_quiet(j_common_ptr c)
{
    (void)c; /* never print to stderr */
}

/* Called by libjpeg once per iMCU row while jpeg_start_decompress reads a multi-scan file in,
 * and at the start of every jpeg_read_scanlines call. */
static void jpeg_progress(j_common_ptr c)
{
    j_decompress_ptr jd = (j_decompress_ptr)c;
    fw_decoder *d = jd->client_data;
    if (jd->input_scan_number > FW_JPEG_MAX_SCANS) {
        snprintf(d->jerr.msg, sizeof d->jerr.msg,
                 "Progressive JPEG image has more than %d scans", FW_JPEG_MAX_SCANS);
        longjmp(d->jerr.jb, 1);
    }
    fw_pause_point(&d->pause);
}

fw_decoder *fw_decoder_new(void)
{
    fw_decoder *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->tj = tjInitDecompress();
    if (!d->tj) {
        free(d);
        return NULL;
    }
    /* jpeg_create_decompress keeps err and client_data; decode_rows sets progress */
    d->jd.err = jpeg_std_error(&d->jerr.pub);
    d->jerr.pub.error_exit = jpeg_fail;
    d->jerr.pub.emit_message = jpeg_message;
    d->jerr.pub.output_message = jpeg_quiet;
    d->jd.client_data = d;
    d->progress.progress_monitor = jpeg_progress;
    return d;
}

void fw_decoder_set_pause(fw_decoder *d, fw_pause pause)
{
    if (d)
        d->pause = pause;
}

/* libjpeg-turbo 2.1 leaves a TurboJPEG handle unusable after some failures (a header it
 * rejects, e.g. an unsupported marker, makes every later picture fail too): one hostile JPEG
 * would poison the worker that decoded it for everyone after. So a failed header check throws
 * the handle away; the next call makes a new one (and reports out-of-memory if it cannot).
 * (The decode itself no longer uses the handle; its libjpeg object lives for one picture.) */
static void decoder_reset(fw_decoder *d)
{
    tjDestroy(d->tj);
    d->tj = tjInitDecompress();
}

void fw_decoder_free(fw_decoder *d)
{
    if (!d)
        return;
    if (d->tj)
        tjDestroy(d->tj);
    free(d->buf);
    free(d->rot);
    free(d);
}

/* Grow *buf to at least need bytes. The buffers only ever grow: a thread's decoder settles at
 * the size of the largest picture it has seen (bounded by the decode limits), after which
 * decoding allocates nothing of its own. */
static int reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    uint8_t *p = realloc(*buf, need);
    if (!p)
        return -1;
    *buf = p;
    *cap = need;
    return 0;
}

/* ---- EXIF ------------------------------------------------------------------------------- */

static unsigned rd16(const uint8_t *p, int le)
{
    return le ? (unsigned)p[0] | (unsigned)p[1] << 8 : (unsigned)p[0] << 8 | (unsigned)p[1];
}

static uint32_t rd32(const uint8_t *p, int le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* t: the TIFF structure inside the Exif segment, n bytes. Every offset in it is attacker
 * controlled, so each one is checked against n before it is followed. */
static int tiff_orientation(const uint8_t *t, size_t n)
{
    if (n < 8)
        return 1;
    int le;
    if (t[0] == 'I' && t[1] == 'I')
        le = 1;
    else if (t[0] == 'M' && t[1] == 'M')
        le = 0;
    else
        return 1;
    if (rd16(t + 2, le) != 42)
        return 1;
    uint32_t ifd = rd32(t + 4, le);
    if (ifd > n - 2)
        return 1;
    size_t count = rd16(t + ifd, le);
    size_t room = (n - ifd - 2) / 12;
    if (count > room)
        count = room;
    for (size_t k = 0; k < count; k++) {
        const uint8_t *e = t + ifd + 2 + 12 * k;
        if (rd16(e, le) != 0x0112)
            continue;
        /* type 3 = SHORT, one value, stored left-justified in the 4-byte value field */
        if (rd16(e + 2, le) != 3 || rd32(e + 4, le) != 1)
            return 1;
        unsigned v = rd16(e + 8, le);
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

int fw_exif_orientation(const uint8_t *p, size_t len)
{
    if (!p || len < 4 || p[0] != 0xFF || p[1] != 0xD8)
        return 1;
    size_t i = 2;
    while (i + 4 <= len) {
        if (p[i] != 0xFF)
            return 1; /* not at a marker: the stream is malformed, libjpeg will say so */
        uint8_t m = p[i + 1];
        if (m == 0xFF) { /* fill byte */
            i++;
            continue;
        }
        if (m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) { /* no length field */
            i += 2;
            continue;
        }
        if (m == 0xDA || m == 0xD9) /* start of scan / end of image: metadata is over */
            return 1;
        size_t seg = (size_t)p[i + 2] << 8 | p[i + 3];
        if (seg < 2 || seg > len - i - 2)
            return 1;
        if (m == 0xE1 && seg >= 2 + 6 && memcmp(p + i + 4, "Exif\0\0", 6) == 0)
            return tiff_orientation(p + i + 10, seg - 8);
        i += 2 + seg;
    }
    return 1;
}

/* ---- orientation ------------------------------------------------------------------------ */

/* Pixels handled between two pause points by the whole-picture loops of the decode (the
 * orientation, the CMYK conversion): about 0.05 ms of work. */
#define FW_PAUSE_PIXELS 32768

/* fw_image_orient, calling fw_pause_point(pause) about every FW_PAUSE_PIXELS pixels. */
static void orient(const fw_image *src, int o, fw_image *dst, const fw_pause *pause)
{
    const int W = src->w, H = src->h;
    /* Source coordinates as an affine function of the destination's:
     *   sx = ax * x + bx * y + cx,   sy = ay * x + by * y + cy */
    int ax = 1, bx = 0, cx = 0, ay = 0, by = 1, cy = 0;
    switch (o) {
    case 2: ax = -1; cx = W - 1; break;                                  /* mirror */
    case 3: ax = -1; cx = W - 1; by = -1; cy = H - 1; break;             /* 180 */
    case 4: by = -1; cy = H - 1; break;                                  /* flip */
    case 5: ax = 0; bx = 1; ay = 1; by = 0; break;                       /* transpose */
    case 6: ax = 0; bx = 1; ay = -1; by = 0; cy = H - 1; break;          /* 90 clockwise */
    case 7: ax = 0; bx = -1; cx = W - 1; ay = -1; by = 0; cy = H - 1; break; /* transverse */
    case 8: ax = 0; bx = -1; cx = W - 1; ay = 1; by = 0; break;          /* 90 anticlockwise */
    default: break;
    }
    const int swap = o >= 5 && o <= 8;
    dst->w = swap ? H : W;
    dst->h = swap ? W : H;
    const ptrdiff_t step = ((ptrdiff_t)ay * W + ax) * 3;
    const int every = dst->w > 0 && dst->w < FW_PAUSE_PIXELS ? FW_PAUSE_PIXELS / dst->w : 1;
    for (int y = 0; y < dst->h; y++) {
        if (y && y % every == 0)
            fw_pause_point(pause);
        const int sx = bx * y + cx, sy = by * y + cy;
        const uint8_t *s = src->px + ((ptrdiff_t)sy * W + sx) * 3;
        uint8_t *d = dst->px + (size_t)y * dst->w * 3;
        for (int x = 0; x < dst->w; x++, s += step, d += 3) {
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
}

void fw_image_orient(const fw_image *src, int o, fw_image *dst)
{
    orient(src, o, dst, NULL);
}

/* ---- decode ----------------------------------------------------------------------------- */

/* The scaling factor tjDecompress2 uses for a sw x sh destination: the first of TurboJPEG's
 * factors (largest first) whose output fits. For {1, denom} that is 1/denom except for tiny
 * pictures, where a larger factor can give the same size; picking the same one keeps the
 * pixels identical. */
static tjscalingfactor tj_scale(int w, int h, int sw, int sh)
{
    int n = 0;
    const tjscalingfactor *f = tjGetScalingFactors(&n);
    for (int i = 0; f && i < n; i++)
        if (TJSCALED(w, f[i]) <= sw && TJSCALED(h, f[i]) <= sh)
            return f[i];
    return (tjscalingfactor){1, 1}; /* unreachable: 1/denom itself fits */
}

/* Decode the whole picture (w x h as the header said) into d->buf: sw x sh pixels, RGB, or
 * CMYK when cmyk. Returns 0, or -1 with d->jerr.msg saying why.
 *
 * The decompress object is created here and destroyed before returning, success or not.
 * Reusing one would carry libjpeg's permanent state from picture to picture: quantisation and
 * Huffman tables stay defined in the object, so a later file that lacks them would decode with
 * an earlier upload's tables (or fail differently) depending on what the worker decoded last.
 * A fresh object per picture is what tjDecompress2 on a fresh handle does, and costs a few
 * small allocations next to the decode's own pools.
 *
 * Nothing that changes after the setjmp is read after a longjmp back to it (the cleanup uses
 * only d), so no local needs to be volatile. */
static int decode_rows(fw_decoder *d, const uint8_t *jpeg, size_t len, int w, int h, int sw,
                       int sh, int cmyk)
{
    struct jpeg_decompress_struct *jd = &d->jd;
    if (setjmp(d->jerr.jb)) {
        jpeg_destroy_decompress(jd); /* frees every pool; safe after a failed create too */
        return -1;
    }
    jpeg_create_decompress(jd); /* may fail (out of memory) through jpeg_fail */
    jd->progress = &d->progress;
    jpeg_mem_src(jd, jpeg, (unsigned long)len);
    jpeg_read_header(jd, TRUE);
    if (jd->image_width != (JDIMENSION)w || jd->image_height != (JDIMENSION)h) {
        snprintf(d->jerr.msg, sizeof d->jerr.msg, "%s", "header changed between two reads");
        longjmp(d->jerr.jb, 1);
    }
    /* tjDecompress2's settings: its pixel format's colour space, its scaling factor, and
     * libjpeg's defaults (JDCT_ISLOW, fancy upsampling) left alone */
    jd->out_color_space = cmyk ? JCS_CMYK : JCS_EXT_RGB;
    const tjscalingfactor f = tj_scale(w, h, sw, sh);
    jd->scale_num = (unsigned)f.num;
    jd->scale_denom = (unsigned)f.denom;
    jpeg_start_decompress(jd); /* a multi-scan file is read in here, iMCU row by row */
    const int comps = cmyk ? 4 : 3;
    if (jd->output_width != (JDIMENSION)sw || jd->output_height != (JDIMENSION)sh ||
        jd->output_components != comps) {
        /* never expected; it would overrun d->buf, so it is checked */
        snprintf(d->jerr.msg, sizeof d->jerr.msg, "unexpected output %ux%ux%d",
                 (unsigned)jd->output_width, (unsigned)jd->output_height, jd->output_components);
        longjmp(d->jerr.jb, 1);
    }
    const size_t stride = (size_t)sw * (size_t)comps;
    /* Each jpeg_read_scanlines call returns at most one row group (max_v_samp_factor rows, at
     * most 4; the iMCU row behind it is decoded when its first row group is asked for) and
     * calls the progress monitor first, so there is a pause point at least that often. */
    enum { ROWS = 16 };
    while (jd->output_scanline < jd->output_height) {
        JSAMPROW rows[ROWS];
        const JDIMENSION at = jd->output_scanline;
        JDIMENSION n = jd->output_height - at;
        if (n > ROWS)
            n = ROWS;
        for (JDIMENSION k = 0; k < n; k++)
            rows[k] = d->buf + (size_t)(at + k) * stride;
        if (jpeg_read_scanlines(jd, rows, n) == 0) {
            /* only a suspending source returns no rows; the memory source never does */
            snprintf(d->jerr.msg, sizeof d->jerr.msg, "%s", "decoder made no progress");
            longjmp(d->jerr.jb, 1);
        }
    }
    /* Reads to EOI (trailing damage still warns, so fails) and frees the image's pools: for a
     * big progressive file that free (its coefficient buffer, ~9 MB at 2000x1428) is the
     * longest stretch left without a pause, about 1 ms, as it was inside tjDecompress2. */
    jpeg_finish_decompress(jd);
    jpeg_destroy_decompress(jd);
    return 0;
}

fw_engine_err fw_decode_jpeg(fw_decoder *d, const uint8_t *jpeg, size_t len,
                             const fw_decode_limits *lim, fw_image *out, fw_decode_info *info,
                             char *err, size_t errlen)
{
    if (!d || !lim || !out || (!jpeg && len)) {
        set_err(err, errlen, "%s", "invalid argument");
        return FWE_ARG;
    }
    if (len == 0) {
        set_err(err, errlen, "%s", "empty input");
        return FWE_BAD_IMAGE;
    }
    if (len < 4 || jpeg[0] != 0xFF || jpeg[1] != 0xD8) {
        set_err(err, errlen, "%s", "not a JPEG (no SOI marker)");
        return FWE_BAD_IMAGE;
    }
    if (len > (size_t)(unsigned long)-1) {
        set_err(err, errlen, "%s", "input too long");
        return FWE_TOO_LARGE;
    }
    int w = 0, h = 0, subsamp = 0, cs = 0;
    if (!d->tj && !(d->tj = tjInitDecompress())) {
        set_err(err, errlen, "%s", "out of memory for the JPEG decoder");
        return FWE_NOMEM;
    }
    if (tjDecompressHeader3(d->tj, jpeg, (unsigned long)len, &w, &h, &subsamp, &cs) != 0) {
        set_err(err, errlen, "bad JPEG header: %s", tjGetErrorStr2(d->tj));
        decoder_reset(d);
        return FWE_BAD_IMAGE;
    }
    if (w <= 0 || h <= 0) {
        set_err(err, errlen, "%s", "bad JPEG header: zero dimension");
        return FWE_BAD_IMAGE;
    }
    if ((lim->max_dimension > 0 && (w > lim->max_dimension || h > lim->max_dimension)) ||
        (uint64_t)w * (uint64_t)h > lim->max_pixels) {
        if (err && errlen)
            snprintf(err, errlen, "picture is %dx%d, above the limit (%d per side, %llu pixels)",
                     w, h, lim->max_dimension, (unsigned long long)lim->max_pixels);
        return FWE_TOO_LARGE;
    }

    /* The largest of 1/8, 1/4, 1/2 that still leaves the long side >= min_long_side. */
    int denom = 1;
    if (lim->min_long_side > 0) {
        const int longest = w > h ? w : h;
        for (int dd = 8; dd >= 2; dd /= 2) {
            if ((longest + dd - 1) / dd >= lim->min_long_side) {
                denom = dd;
                break;
            }
        }
    }
    tjscalingfactor sf = {1, denom};
    const int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
    const int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    const size_t npx = (size_t)sw * (size_t)sh;
    if (reserve(&d->buf, &d->cap, npx * (cmyk ? 4 : 3)) != 0) {
        set_err(err, errlen, "%s", "out of memory for the decoded picture");
        return FWE_NOMEM;
    }
    if (decode_rows(d, jpeg, len, w, h, sw, sh, cmyk) != 0) {
        set_err(err, errlen, "corrupt JPEG: %s", d->jerr.msg);
        return FWE_BAD_IMAGE;
    }
    if (cmyk) {
        /* libjpeg-turbo hands CMYK out the way Adobe stores it (inverted, 255 = no ink), so
         * each channel times K gives RGB. In place: the write index (3i) never passes the
         * read index (4i). */
        uint8_t *p = d->buf;
        for (size_t i0 = 0; i0 < npx; i0 += FW_PAUSE_PIXELS) {
            if (i0)
                fw_pause_point(&d->pause);
            const size_t i1 = npx - i0 < FW_PAUSE_PIXELS ? npx : i0 + FW_PAUSE_PIXELS;
            for (size_t i = i0; i < i1; i++) {
                const unsigned c = p[4 * i], m = p[4 * i + 1], y = p[4 * i + 2], k = p[4 * i + 3];
                p[3 * i] = (uint8_t)((c * k + 127) / 255);
                p[3 * i + 1] = (uint8_t)((m * k + 127) / 255);
                p[3 * i + 2] = (uint8_t)((y * k + 127) / 255);
            }
        }
    }
    fw_image dec = {d->buf, sw, sh};
    const int o = fw_exif_orientation(jpeg, len);
    if (o != 1) {
        if (reserve(&d->rot, &d->rotcap, npx * 3) != 0) {
            set_err(err, errlen, "%s", "out of memory for the oriented picture");
            return FWE_NOMEM;
        }
        fw_image r = {d->rot, 0, 0};
        orient(&dec, o, &r, &d->pause);
        *out = r;
    } else {
        *out = dec;
    }
    if (info) {
        const int swap = o >= 5;
        info->width = swap ? h : w;
        info->height = swap ? w : h;
        info->orientation = o;
        info->scale_denom = denom;
        info->colorspace = cs;
    }
    return FWE_OK;
}

/* ---- resampling ------------------------------------------------------------------------- */

/* Resample the rw x rh region at (ox, oy) to dw x dh. Pixels outside [vx0,vx1) x [vy0,vy1)
 * (already clipped to the picture by the callers) read as 0. TensorFlow's legacy bilinear:
 * source = dest * (region / dest), the second neighbour clamped to the region's last pixel. */
static void resample(const fw_image *src, int ox, int oy, int rw, int rh, int vx0, int vy0,
                     int vx1, int vy1, uint8_t *dst, int dw, int dh)
{
    const float scx = (float)rw / (float)dw, scy = (float)rh / (float)dh;
    const size_t stride = (size_t)src->w * 3;
    static const uint8_t zero[3] = {0, 0, 0};
    for (int i = 0; i < dh; i++) {
        const float in_y = (float)i * scy;
        int y0 = (int)floorf(in_y);
        const float fy = in_y - (float)y0;
        int y1 = y0 + 1 < rh ? y0 + 1 : rh - 1;
        y0 += oy;
        y1 += oy;
        const int y0ok = y0 >= vy0 && y0 < vy1, y1ok = y1 >= vy0 && y1 < vy1;
        const uint8_t *r0 = y0ok ? src->px + (size_t)y0 * stride : NULL;
        const uint8_t *r1 = y1ok ? src->px + (size_t)y1 * stride : NULL;
        uint8_t *d = dst + (size_t)i * dw * 3;
        for (int j = 0; j < dw; j++, d += 3) {
            const float in_x = (float)j * scx;
            int x0 = (int)floorf(in_x);
            const float fx = in_x - (float)x0;
            int x1 = x0 + 1 < rw ? x0 + 1 : rw - 1;
            x0 += ox;
            x1 += ox;
            const int x0ok = x0 >= vx0 && x0 < vx1, x1ok = x1 >= vx0 && x1 < vx1;
            const uint8_t *tl = r0 && x0ok ? r0 + (size_t)x0 * 3 : zero;
            const uint8_t *tr = r0 && x1ok ? r0 + (size_t)x1 * 3 : zero;
            const uint8_t *bl = r1 && x0ok ? r1 + (size_t)x0 * 3 : zero;
            const uint8_t *br = r1 && x1ok ? r1 + (size_t)x1 * 3 : zero;
            for (int c = 0; c < 3; c++) {
                const float top = tl[c] + ((float)tr[c] - tl[c]) * fx;
                const float bot = bl[c] + ((float)br[c] - bl[c]) * fx;
                const float v = top + (bot - top) * fy;
                d[c] = (uint8_t)(v <= 0.f ? 0 : v >= 255.f ? 255 : lrintf(v));
            }
        }
    }
}

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

void fw_sample_square(const fw_image *src, int ox, int oy, int side, int vx0, int vy0, int vx1,
                      int vy1, uint8_t *dst, int size)
{
    if (side <= 0 || size <= 0)
        return;
    resample(src, ox, oy, side, side, imax(vx0, 0), imax(vy0, 0), imin(vx1, src->w),
             imin(vy1, src->h), dst, size, size);
}

void fw_resize_bilinear(const fw_image *src, fw_image *dst)
{
    if (src->w <= 0 || src->h <= 0 || dst->w <= 0 || dst->h <= 0)
        return;
    resample(src, 0, 0, src->w, src->h, 0, 0, src->w, src->h, dst->px, dst->w, dst->h);
}

/* Source pixels summed vertically at a time (a strip of output columns); bounds the stack. */
#define AREA_STRIP 2048

void fw_area_square(const fw_image *src, int side, uint8_t *dst, int size,
                    const fw_pause *pause)
{
    if (side <= size || size > FW_AREA_MAX_SIZE) {
        fw_sample_square(src, 0, 0, side, 0, 0, src->w, src->h, dst, size);
        return;
    }
    /* Output column j covers source [j f, (j + 1) f): pixel lo[j] with weight wlo[j], whole
     * pixels in between with weight 1, pixel hi[j] with weight whi[j]. Rows use the same
     * table (the area is square). Columns are clipped to the picture's width (chi, cwhi: the
     * right padding adds nothing), rows to its height in the loop. */
    int lo[FW_AREA_MAX_SIZE], hi[FW_AREA_MAX_SIZE], chi[FW_AREA_MAX_SIZE];
    float wlo[FW_AREA_MAX_SIZE], whi[FW_AREA_MAX_SIZE], cwhi[FW_AREA_MAX_SIZE];
    float col[AREA_STRIP * 3];
    const double f = (double)side / size;
    if (f + 2 > AREA_STRIP) { /* one output pixel wider than a strip: only absurd sizes */
        fw_sample_square(src, 0, 0, side, 0, 0, src->w, src->h, dst, size);
        return;
    }
    int cols = size; /* output columns that touch the picture */
    for (int j = 0; j < size; j++) {
        const double a = j * f, b = (j + 1) * f;
        lo[j] = (int)floor(a);
        hi[j] = (int)ceil(b) - 1;
        if (hi[j] >= side)
            hi[j] = side - 1;
        wlo[j] = (float)(lo[j] + 1 - a);
        whi[j] = (float)fmin(1.0, b - hi[j]);
        if (lo[j] >= src->w && cols == size)
            cols = j;
        chi[j] = hi[j] < src->w ? hi[j] : src->w - 1;
        cwhi[j] = hi[j] < src->w ? whi[j] : 1.f;
    }
    const float norm = (float)(1.0 / (f * f));
    memset(dst, 0, (size_t)size * size * 3);
    for (int i = 0; i < size; i++) {
        const int last = hi[i] < src->h ? hi[i] : src->h - 1;
        uint8_t *d = dst + (size_t)i * size * 3;
        for (int j0 = 0, j1; j0 < cols; j0 = j1) {
            for (j1 = j0 + 1; j1 < cols && chi[j1] - lo[j0] + 1 <= AREA_STRIP; j1++)
                ;
            /* 1. the strip's source columns summed down the rows (contiguous, vectorises) */
            const int x0 = lo[j0], n = (chi[j1 - 1] - x0 + 1) * 3;
            memset(col, 0, sizeof(float) * (size_t)n);
            for (int sy = lo[i]; sy <= last; sy++) {
                const float wy = sy == lo[i] ? wlo[i] : sy == hi[i] ? whi[i] : 1.f;
                const uint8_t *s = src->px + ((size_t)sy * src->w + (size_t)x0) * 3;
                for (int k = 0; k < n; k++)
                    col[k] += wy * s[k];
            }
            /* 2. each output column: its span of that row, weighted at the ends */
            for (int j = j0; j < j1; j++) {
                const float *p = col + (lo[j] - x0) * 3, *q = col + (chi[j] - x0) * 3;
                float acc[3] = {wlo[j] * p[0], wlo[j] * p[1], wlo[j] * p[2]};
                if (q > p) {
                    for (const float *x = p + 3; x < q; x += 3) {
                        acc[0] += x[0];
                        acc[1] += x[1];
                        acc[2] += x[2];
                    }
                    for (int c = 0; c < 3; c++)
                        acc[c] += cwhi[j] * q[c];
                }
                for (int c = 0; c < 3; c++) {
                    const float v = acc[c] * norm;
                    d[3 * j + c] = (uint8_t)(v >= 255.f ? 255 : lrintf(v));
                }
            }
        }
        if ((i + 1) % 8 == 0) /* 8 rows: ~0.1 ms for a 853x480 picture into 416 */
            fw_pause_point(pause);
    }
}

void fw_crop(const fw_image *src, int x, int y, int w, int h, uint8_t *dst)
{
    if (w <= 0 || h <= 0)
        return;
    /* the part of the rectangle that overlaps the picture, in picture coordinates */
    const long long ix0 = imax(x, 0), ix1 = (long long)x + w < src->w ? (long long)x + w : src->w;
    for (int r = 0; r < h; r++) {
        uint8_t *d = dst + (size_t)r * w * 3;
        const long long sy = (long long)y + r;
        if (sy < 0 || sy >= src->h || ix0 >= ix1) {
            memset(d, 0, (size_t)w * 3);
            continue;
        }
        const size_t left = (size_t)(ix0 - x), n = (size_t)(ix1 - ix0);
        memset(d, 0, left * 3);
        memcpy(d + left * 3, src->px + ((size_t)sy * src->w + (size_t)ix0) * 3, n * 3);
        memset(d + (left + n) * 3, 0, ((size_t)w - left - n) * 3);
    }
}

/* Bilinear sample at (x, y) with black outside the picture; accumulates into acc[3]. */
static void sample_add(const fw_image *src, double x, double y, float acc[3])
{
    if (!(x > -1.0 && y > -1.0 && x < src->w && y < src->h)) /* also rejects NaN */
        return;
    const int x0 = (int)floor(x), y0 = (int)floor(y);
    const float fx = (float)(x - x0), fy = (float)(y - y0);
    const float wgt[4] = {(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy};
    const int xs[4] = {x0, x0 + 1, x0, x0 + 1}, ys[4] = {y0, y0, y0 + 1, y0 + 1};
    for (int k = 0; k < 4; k++) {
        if (xs[k] < 0 || ys[k] < 0 || xs[k] >= src->w || ys[k] >= src->h)
            continue;
        const uint8_t *p = src->px + ((size_t)ys[k] * src->w + (size_t)xs[k]) * 3;
        acc[0] += wgt[k] * p[0];
        acc[1] += wgt[k] * p[1];
        acc[2] += wgt[k] * p[2];
    }
}

void fw_warp_affine(const fw_image *src, const double m[6], uint8_t *dst, int dw, int dh, int n,
                    const fw_pause *pause)
{
    if (n < 1)
        n = 1;
    if (n > 16)
        n = 16;
    const float inv = 1.0f / (float)(n * n);
    const size_t stride = (size_t)src->w * 3;
    const double xmax = src->w - 1, ymax = src->h - 1;
    /* sub-sample b of pixel u sits at u + (b + 0.5) / n - 0.5: consecutive ones are 1/n apart */
    const double sx = m[0] / n, sy = m[3] / n;
    for (int v = 0; v < dh; v++) {
        for (int u = 0; u < dw; u++) {
            float acc[3] = {0, 0, 0};
            for (int a = 0; a < n; a++) {
                const double sv = v + (a + 0.5) / n - 0.5, su = u + 0.5 / n - 0.5;
                double x = m[0] * su + m[1] * sv + m[2], y = m[3] * su + m[4] * sv + m[5];
                for (int b = 0; b < n; b++, x += sx, y += sy) {
                    if (x >= 0 && y >= 0 && x < xmax && y < ymax) {
                        /* inside: all four neighbours exist, no checks per tap */
                        const int x0 = (int)x, y0 = (int)y;
                        const float fx = (float)(x - x0), fy = (float)(y - y0);
                        const uint8_t *p = src->px + (size_t)y0 * stride + (size_t)x0 * 3, *q = p + stride;
                        for (int c = 0; c < 3; c++) {
                            const float top = p[c] + (p[c + 3] - p[c]) * fx;
                            const float bot = q[c] + (q[c + 3] - q[c]) * fx;
                            acc[c] += top + (bot - top) * fy;
                        }
                    } else {
                        sample_add(src, x, y, acc);
                    }
                }
            }
            uint8_t *d = dst + ((size_t)v * dw + u) * 3;
            for (int c = 0; c < 3; c++) {
                const float val = acc[c] * inv;
                d[c] = (uint8_t)(val <= 0.f ? 0 : val >= 255.f ? 255 : lrintf(val));
            }
        }
        if (v % 16 == 15)
            fw_pause_point(pause);
    }
}

/* ---- drawing ---------------------------------------------------------------------------- */

static void fill(fw_image *img, long x0, long y0, long x1, long y1, uint32_t rgb)
{
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > img->w) x1 = img->w;
    if (y1 > img->h) y1 = img->h;
    for (long y = y0; y < y1; y++) {
        uint8_t *p = img->px + ((size_t)y * img->w + (size_t)x0) * 3;
        for (long x = x0; x < x1; x++, p += 3) {
            p[0] = (uint8_t)(rgb >> 16);
            p[1] = (uint8_t)(rgb >> 8);
            p[2] = (uint8_t)rgb;
        }
    }
}

/* Coordinates come from detections and may be anything; keep them in a range where the
 * integer arithmetic below cannot overflow. */
static long clampl(float v)
{
    if (!(v > -1e7f)) /* also NaN */
        return -10000000L;
    if (v > 1e7f)
        return 10000000L;
    return lrintf(v);
}

void fw_draw_rect(fw_image *img, float x, float y, float w, float h, int t, uint32_t rgb)
{
    if (t < 1)
        t = 1;
    const long x0 = clampl(x), y0 = clampl(y), x1 = clampl(x + w), y1 = clampl(y + h);
    fill(img, x0, y0, x1, y0 + t, rgb);
    fill(img, x0, y1 - t, x1, y1, rgb);
    fill(img, x0, y0, x0 + t, y1, rgb);
    fill(img, x1 - t, y0, x1, y1, rgb);
}

void fw_draw_dot(fw_image *img, float x, float y, int r, uint32_t rgb)
{
    if (r < 0)
        r = 0;
    const long cx = clampl(x), cy = clampl(y);
    for (long dy = -r; dy <= r; dy++) {
        long half = 0;
        while ((half + 1) * (half + 1) + dy * dy <= (long)r * r)
            half++;
        fill(img, cx - half, cy + dy, cx + half + 1, cy + dy + 1, rgb);
    }
}

/* ---- encode ----------------------------------------------------------------------------- */

fw_engine_err fw_jpeg_encode(const fw_image *img, int quality, uint8_t **out, size_t *outlen,
                             char *err, size_t errlen)
{
    if (!img || !img->px || img->w <= 0 || img->h <= 0 || !out || !outlen || quality < 1 ||
        quality > 100) {
        set_err(err, errlen, "%s", "invalid argument");
        return FWE_ARG;
    }
    fw_engine_err rc = FWE_INTERNAL;
    unsigned char *buf = NULL;
    unsigned long size = 0;
    tjhandle tj = tjInitCompress();
    if (!tj) {
        set_err(err, errlen, "%s", "cannot create a JPEG compressor");
        return FWE_NOMEM;
    }
    if (tjCompress2(tj, img->px, img->w, 0, img->h, TJPF_RGB, &buf, &size, TJSAMP_420, quality,
                    0) != 0) {
        set_err(err, errlen, "JPEG encoding failed: %s", tjGetErrorStr2(tj));
        goto err;
    }
    /* hand out plain malloc memory so callers do not need to know about tjFree() */
    *out = malloc(size);
    if (!*out) {
        set_err(err, errlen, "%s", "out of memory");
        rc = FWE_NOMEM;
        goto err;
    }
    memcpy(*out, buf, size);
    *outlen = size;
    rc = FWE_OK;
err:
    tjFree(buf);
    tjDestroy(tj);
    return rc;
}
