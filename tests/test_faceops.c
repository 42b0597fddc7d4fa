/*
 * test_faceops.c — DETECT, EMBED and VERIFY on the wire, against bin/facewired with the real
 * models ($FW_MODELS, default ./models) on the labelled pictures of $FW_SHARED/eval (default
 * ../shared): response layouts byte for byte, same person -> same=1 and different -> 0, JPEG
 * and descriptor inputs giving the same distance, bad JPEGs -> BAD_IMAGE with the server
 * going on, pictures without a face, every malformed body with its exact message, pipelined
 * requests over two workers, degraded mode, the workers' CPU hand-backs (--worker-yield-us)
 * changing nothing in the answers, and descriptor-only VERIFY without models.
 */
// run-under: tsan
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/tu_data.h"
#include "tests/tu_req.h"
#include "tests/tu_server.h"

static tu_server srv;

static int start_with(const char *extra)
{
    const char *args[] = { "--workers", "2", "--models", tu_models_dir(), extra, NULL };
    return tu_server_start(&srv, args);
}

/* ---- framing helpers ----------------------------------------------------------------------- */

typedef tu_resp resp;

/* Every request carries a deadline of ten minutes: the ops' defaults (seconds) are meant for
 * production, not for eight EMBEDs queued on two workers under ThreadSanitizer. */
static int send_req(int fd, uint8_t op, uint32_t rid, const void *body, size_t len)
{
    fw_header h = tu_request(op, rid, (uint32_t)len);
    h.deadline_ms = 600000;
    return tu_send_frame(fd, &h, body);
}

/* Body of a DETECT/EMBED request: bytes jpeg. */
static uint8_t *image_body(const uint8_t *jpeg, size_t len, size_t *out_len)
{
    uint8_t *b = malloc(4 + len);
    if (!b)
        return NULL;
    fw_be32(b, (uint32_t)len);
    memcpy(b + 4, jpeg, len);
    *out_len = 4 + len;
    return b;
}

/* A VERIFY input: kind 0 + bytes, or kind 1 + 128 f32. */
static void put_jpeg_input(fw_writer *w, const uint8_t *jpeg, size_t len)
{
    fw_put_u8(w, 0);
    fw_put_bytes(w, jpeg, (uint32_t)len);
}

static void put_desc_input(fw_writer *w, const float *d)
{
    fw_put_u8(w, 1);
    for (int i = 0; i < 128; i++)
        fw_put_f32(w, d[i]);
}

static int roundtrip(int fd, uint8_t op, const void *body, size_t len, resp *r)
{
    static uint32_t rid = 1;
    uint32_t want = ++rid;
    if (send_req(fd, op, want, body, len) != 0 || tu_read_resp(fd, r) != 0)
        return -1;
    return r->rid == want ? 0 : -1;
}

/* VERIFY result fields. */
typedef struct verdict {
    float distance, threshold;
    int same;
} verdict;

static int parse_verdict(const resp *r, verdict *v)
{
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->len);
    v->distance = fw_get_f32(&rd);
    v->same = fw_get_u8(&rd);
    v->threshold = fw_get_f32(&rd);
    return fw_reader_done(&rd) ? 0 : -1;
}

/* A parsed DETECT/EMBED response. */
typedef struct faces {
    uint32_t width, height;
    uint16_t n;
    float box[8][4], score[8], lm[8][136], desc[8][128];
} faces;

static int parse_faces(const resp *r, int with_desc, faces *f)
{
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->len);
    f->width = fw_get_u32(&rd);
    f->height = fw_get_u32(&rd);
    f->n = fw_get_u16(&rd);
    if (rd.err || f->n > 8)
        return -1;
    for (int i = 0; i < f->n; i++) {
        for (int k = 0; k < 4; k++)
            f->box[i][k] = fw_get_f32(&rd);
        f->score[i] = fw_get_f32(&rd);
        for (int k = 0; k < 136; k++)
            f->lm[i][k] = fw_get_f32(&rd);
        if (with_desc)
            for (int k = 0; k < 128; k++)
                f->desc[i][k] = fw_get_f32(&rd);
    }
    return fw_reader_done(&rd) ? 0 : -1;
}

/* DETECT or EMBED of an eval picture into f. */
static int analyze(int fd, uint8_t op, const char *pic, faces *f, resp *r)
{
    size_t jl, bl;
    uint8_t *jpeg = tu_eval_pic(pic, &jl);
    if (!jpeg)
        return -1;
    uint8_t *body = image_body(jpeg, jl, &bl);
    free(jpeg);
    if (!body)
        return -1;
    int rc = roundtrip(fd, op, body, bl, r);
    free(body);
    if (rc != 0 || r->status != FW_STATUS_OK)
        return -1;
    return parse_faces(r, op == FW_OP_EMBED, f);
}

/* VERIFY of two eval pictures (JPEG inputs) at the server's threshold. */
static int verify_pics(int fd, const char *a, const char *b, resp *r, verdict *v)
{
    size_t la, lb;
    uint8_t *ja = tu_eval_pic(a, &la), *jb = tu_eval_pic(b, &lb);
    uint8_t *body = malloc(la + lb + 64);
    int rc = -1;
    if (ja && jb && body) {
        fw_writer w;
        fw_writer_init(&w, body, la + lb + 64);
        put_jpeg_input(&w, ja, la);
        put_jpeg_input(&w, jb, lb);
        fw_put_u8(&w, 0);
        fw_put_f32(&w, 0);
        rc = roundtrip(fd, FW_OP_VERIFY, body, w.len, r);
        if (rc == 0 && r->status == FW_STATUS_OK)
            rc = parse_verdict(r, v);
    }
    free(ja);
    free(jb);
    free(body);
    return rc;
}

/* A plain grey JPEG: certainly no face in it. */
static uint8_t *blank_jpeg(size_t *len)
{
    enum { W = 160, H = 120 };
    static uint8_t px[W * H * 3];
    memset(px, 128, sizeof px);
    tjhandle tj = tjInitCompress();
    unsigned char *out = NULL;
    unsigned long n = 0;
    if (!tj || tjCompress2(tj, px, W, 0, H, TJPF_RGB, &out, &n, TJSAMP_420, 90, 0) != 0) {
        if (tj)
            tjDestroy(tj);
        return NULL;
    }
    tjDestroy(tj);
    uint8_t *copy = malloc(n);
    if (copy)
        memcpy(copy, out, n);
    tjFree(out);
    *len = n;
    return copy;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void t_detect_layout_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static faces f;
    resp r;
    CHECK(analyze(fd, FW_OP_DETECT, "barack_obama_1.jpg", &f, &r) == 0);
    CHECK_EQ_INT(r.len, 10 + 1 * (5 + 136) * 4);
    tu_resp_free(&r);
    CHECK_EQ_INT(f.width, 1480);
    CHECK_EQ_INT(f.height, 832);
    CHECK_EQ_INT(f.n, 1);
    CHECK(f.score[0] >= 0.5f && f.score[0] <= 1.0f);
    /* the box is in the picture and the landmarks are around the box */
    CHECK(f.box[0][0] >= 0 && f.box[0][1] >= 0 && f.box[0][2] > 50 && f.box[0][3] > 50);
    CHECK(f.box[0][0] + f.box[0][2] <= 1480 + 1 && f.box[0][1] + f.box[0][3] <= 832 + 1);
    for (int k = 0; k < 68; k++) {
        float x = f.lm[0][2 * k], y = f.lm[0][2 * k + 1];
        CHECK(x > f.box[0][0] - f.box[0][2] / 2 && x < f.box[0][0] + 1.5f * f.box[0][2]);
        CHECK(y > f.box[0][1] - f.box[0][3] / 2 && y < f.box[0][1] + 1.5f * f.box[0][3]);
    }
    /* two people, best score first */
    CHECK(analyze(fd, FW_OP_DETECT, "group_two_people.jpg", &f, &r) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(f.n, 2);
    CHECK(f.score[0] >= f.score[1]);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_embed_matches_detect_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static faces d, e;
    resp r;
    CHECK(analyze(fd, FW_OP_DETECT, "joe_biden_1.jpg", &d, &r) == 0);
    tu_resp_free(&r);
    CHECK(analyze(fd, FW_OP_EMBED, "joe_biden_1.jpg", &e, &r) == 0);
    CHECK_EQ_INT(r.len, 10 + e.n * (5 + 136 + 128) * 4);
    tu_resp_free(&r);
    CHECK_EQ_INT(e.n, 1);
    CHECK_EQ_INT(d.n, e.n);
    /* the same picture gives the same box and landmarks either way */
    for (int k = 0; k < 4; k++)
        CHECK_NEAR(d.box[0][k], e.box[0][k], 1e-3);
    for (int k = 0; k < 136; k++)
        CHECK_NEAR(d.lm[0][k], e.lm[0][k], 1e-3);
    double norm = 0;
    for (int k = 0; k < 128; k++) {
        CHECK(isfinite(e.desc[0][k]));
        norm += (double)e.desc[0][k] * e.desc[0][k];
    }
    CHECK(norm > 0.01);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_verify_same_and_different_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    verdict v;
    static const char *const same[][2] = {
        { "barack_obama_1.jpg", "barack_obama_2.jpg" },
        { "joe_biden_1.jpg", "joe_biden_2.jpg" },
        { "rose_leslie_1.jpg", "rose_leslie_2.jpg" },
    };
    static const char *const diff[][2] = {
        { "barack_obama_1.jpg", "joe_biden_1.jpg" },
        { "kit_harington_2.jpg", "rose_leslie_1.jpg" },
        { "alex_lacamoire_1.jpg", "lin_manuel_miranda_1.jpg" },
    };
    for (int i = 0; i < 3; i++) {
        CHECK(verify_pics(fd, same[i][0], same[i][1], &r, &v) == 0);
        tu_resp_free(&r);
        CHECK_MSG(v.same == 1, "%s vs %s: distance %.3f", same[i][0], same[i][1], v.distance);
        CHECK(v.distance < 0.6f);
        CHECK_NEAR(v.threshold, 0.6, 1e-6);
    }
    for (int i = 0; i < 3; i++) {
        CHECK(verify_pics(fd, diff[i][0], diff[i][1], &r, &v) == 0);
        tu_resp_free(&r);
        CHECK_MSG(v.same == 0, "%s vs %s: distance %.3f", diff[i][0], diff[i][1], v.distance);
        CHECK(v.distance >= 0.6f);
    }
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Descriptors from EMBED as VERIFY inputs give the distance the JPEGs give; a threshold in
 * the request is used and echoed. */
static void t_verify_descriptor_inputs_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static faces a, b;
    resp r;
    verdict vj, vd, vm;
    CHECK(analyze(fd, FW_OP_EMBED, "barack_obama_3.jpg", &a, &r) == 0);
    tu_resp_free(&r);
    CHECK(analyze(fd, FW_OP_EMBED, "joe_biden_2.jpg", &b, &r) == 0);
    tu_resp_free(&r);
    CHECK(verify_pics(fd, "barack_obama_3.jpg", "joe_biden_2.jpg", &r, &vj) == 0);
    tu_resp_free(&r);

    static uint8_t body[4096];
    size_t jl;
    fw_writer w;
    fw_writer_init(&w, body, sizeof body);
    put_desc_input(&w, a.desc[0]);
    put_desc_input(&w, b.desc[0]);
    fw_put_u8(&w, 1);
    fw_put_f32(&w, 5.0f);
    CHECK(roundtrip(fd, FW_OP_VERIFY, body, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(parse_verdict(&r, &vd) == 0);
    tu_resp_free(&r);
    CHECK_NEAR(vd.distance, vj.distance, 1e-4);
    CHECK_NEAR(vd.threshold, 5.0, 1e-6);
    CHECK_EQ_INT(vd.same, 1); /* everybody is the same person at 5.0 */
    CHECK_EQ_INT(vj.same, 0);

    /* mixed: a descriptor and a JPEG */
    uint8_t *jpeg = tu_eval_pic("joe_biden_2.jpg", &jl);
    CHECK(jpeg != NULL);
    uint8_t *mixed = malloc(jl + 1024);
    CHECK(mixed != NULL);
    fw_writer_init(&w, mixed, jl + 1024);
    put_desc_input(&w, a.desc[0]);
    put_jpeg_input(&w, jpeg, jl);
    fw_put_u8(&w, 0);
    fw_put_f32(&w, 123.0f); /* ignored: has_threshold = 0 */
    free(jpeg);
    int rc = roundtrip(fd, FW_OP_VERIFY, mixed, w.len, &r);
    free(mixed);
    CHECK(rc == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(parse_verdict(&r, &vm) == 0);
    tu_resp_free(&r);
    CHECK_NEAR(vm.distance, vj.distance, 1e-4);
    CHECK_NEAR(vm.threshold, 0.6, 1e-6);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_bad_images_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    static faces f;
    /* not a JPEG at all */
    static const uint8_t junk[] = { 0, 0, 0, 12, 'n', 'o', 't', ' ', 'a', ' ', 'j', 'p', 'e', 'g', '!', '!' };
    CHECK(roundtrip(fd, FW_OP_DETECT, junk, sizeof junk, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_IMAGE);
    CHECK(r.msg[0] != '\0');
    tu_resp_free(&r);
    /* a JPEG whose header has a marker libjpeg refuses: the decoder must recover from the
     * error, so the next picture on the same worker slot (sequential requests reuse it) is
     * still decoded (checked at the end) */
    static const uint8_t badmarker[] = { 0, 0, 0, 10, 0xFF, 0xD8, 0xFF, 0xF9, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xD9 };
    CHECK(roundtrip(fd, FW_OP_DETECT, badmarker, sizeof badmarker, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_IMAGE);
    tu_resp_free(&r);
    /* a real JPEG cut in the middle of its data */
    size_t jl, bl;
    uint8_t *jpeg = tu_eval_pic("barack_obama_1.jpg", &jl);
    CHECK(jpeg != NULL);
    uint8_t *body = image_body(jpeg, jl / 3, &bl);
    free(jpeg);
    CHECK(body != NULL);
    int rc = roundtrip(fd, FW_OP_EMBED, body, bl, &r);
    free(body);
    CHECK(rc == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_IMAGE);
    tu_resp_free(&r);
    /* a face-less picture: DETECT finds nothing (not an error), VERIFY says which input */
    uint8_t *blank = blank_jpeg(&jl);
    CHECK(blank != NULL);
    body = image_body(blank, jl, &bl);
    CHECK(body != NULL);
    rc = roundtrip(fd, FW_OP_DETECT, body, bl, &r);
    free(body);
    CHECK(rc == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(parse_faces(&r, 0, &f) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(f.n, 0);
    CHECK_EQ_INT(f.width, 160);
    CHECK_EQ_INT(f.height, 120);
    static float zero[128];
    static uint8_t vb[8192];
    fw_writer w;
    fw_writer_init(&w, vb, sizeof vb);
    put_desc_input(&w, zero);
    put_jpeg_input(&w, blank, jl);
    fw_put_u8(&w, 0);
    fw_put_f32(&w, 0);
    CHECK(roundtrip(fd, FW_OP_VERIFY, vb, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_NO_FACE);
    CHECK_EQ_STR(r.msg, "no face in input b");
    tu_resp_free(&r);
    fw_writer_init(&w, vb, sizeof vb);
    put_jpeg_input(&w, blank, jl);
    put_desc_input(&w, zero);
    fw_put_u8(&w, 0);
    fw_put_f32(&w, 0);
    free(blank);
    CHECK(roundtrip(fd, FW_OP_VERIFY, vb, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_NO_FACE);
    CHECK_EQ_STR(r.msg, "no face in input a");
    tu_resp_free(&r);
    /* the server goes on */
    rc = analyze(fd, FW_OP_DETECT, "kit_harington_2.jpg", &f, &r);
    CHECK_MSG(rc == 0, "a good picture after the bad ones: status %u %s", r.status, r.msg);
    tu_resp_free(&r);
    CHECK_EQ_INT(f.n, 1);
    /* client errors are not failures for the breaker */
    char text[16384];
    fw_header h = tu_request(FW_OP_INFO, 77, 0);
    uint8_t *ib = NULL;
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    CHECK(tu_read_frame(fd, &h, &ib) == 1);
    size_t n = h.body_len < sizeof text - 1 ? h.body_len : sizeof text - 1;
    memcpy(text, ib, n);
    text[n] = '\0';
    free(ib);
    CHECK_MSG(strstr(text, "\nbreaker_face_window: 7 requests, 0 failures\n") != NULL, "INFO:\n%s", text);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Malformed bodies: BAD_REQUEST with the exact message, on the loop, nothing queued. */
static void t_malformed_bodies_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static uint8_t b[2048];
    fw_writer w;
    resp r;
#define EXPECT(opcode, message) do { \
        CHECK(roundtrip(fd, (opcode), b, w.len, &r) == 0); \
        CHECK_EQ_INT(r.status, FW_STATUS_BAD_REQUEST); \
        CHECK_EQ_STR(r.msg, (message)); \
        tu_resp_free(&r); \
    } while (0)

    fw_writer_init(&w, b, sizeof b); /* empty */
    EXPECT(FW_OP_DETECT, "DETECT: truncated body");
    fw_writer_init(&w, b, sizeof b);
    fw_put_u32(&w, 100);
    fw_put_raw(&w, "\xFF\xD8\xFF", 3); /* says 100 bytes, has 3 */
    EXPECT(FW_OP_DETECT, "DETECT: truncated body");
    fw_writer_init(&w, b, sizeof b);
    fw_put_u32(&w, 0);
    EXPECT(FW_OP_EMBED, "EMBED: empty JPEG");
    fw_writer_init(&w, b, sizeof b);
    fw_put_u32(&w, 3);
    fw_put_raw(&w, "\xFF\xD8\xFF\x00\x00", 5);
    EXPECT(FW_OP_EMBED, "EMBED: 2 trailing bytes after the JPEG");

    fw_writer_init(&w, b, sizeof b);
    EXPECT(FW_OP_VERIFY, "VERIFY: input a: truncated body (input expected)");
    fw_writer_init(&w, b, sizeof b);
    fw_put_u8(&w, 7);
    EXPECT(FW_OP_VERIFY, "VERIFY: input a: input kind 7 unknown (0 JPEG, 1 descriptor)");
    fw_writer_init(&w, b, sizeof b);
    fw_put_u8(&w, 1);
    for (int i = 0; i < 127; i++)
        fw_put_f32(&w, 0.1f);
    EXPECT(FW_OP_VERIFY, "VERIFY: input a: truncated descriptor");
    static float d[128];
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    fw_put_u8(&w, 0);
    fw_put_u32(&w, 50); /* JPEG of 50 bytes announced, none sent */
    EXPECT(FW_OP_VERIFY, "VERIFY: input b: truncated JPEG");
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    fw_put_u8(&w, 0);
    fw_put_u32(&w, 0);
    EXPECT(FW_OP_VERIFY, "VERIFY: input b: empty JPEG");
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    d[3] = NAN;
    put_desc_input(&w, d);
    d[3] = 0;
    fw_put_u8(&w, 0);
    fw_put_f32(&w, 0);
    EXPECT(FW_OP_VERIFY, "VERIFY: input b: descriptor value 3 is not a finite number within +-10000");
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    put_desc_input(&w, d);
    EXPECT(FW_OP_VERIFY, "VERIFY: truncated body (has_threshold and threshold missing)");
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    put_desc_input(&w, d);
    fw_put_u8(&w, 2);
    fw_put_f32(&w, 0.5f);
    EXPECT(FW_OP_VERIFY, "VERIFY: has_threshold must be 0 or 1, not 2");
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    put_desc_input(&w, d);
    fw_put_u8(&w, 1);
    fw_put_f32(&w, -1.0f);
    EXPECT(FW_OP_VERIFY, "VERIFY: threshold must be a positive finite number");
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    put_desc_input(&w, d);
    fw_put_u8(&w, 1);
    fw_put_f32(&w, INFINITY);
    EXPECT(FW_OP_VERIFY, "VERIFY: threshold must be a positive finite number");
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d);
    put_desc_input(&w, d);
    fw_put_u8(&w, 0);
    fw_put_f32(&w, 0);
    fw_put_u8(&w, 9);
    EXPECT(FW_OP_VERIFY, "VERIFY: 1 trailing bytes");
#undef EXPECT
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Many EMBEDs pipelined over two workers (each with its own workspace) all come back with the
 * descriptors one request alone gets. */
static void t_pipelined_embeds_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static faces ref[2], got;
    static const char *const pics[2] = { "kit_harington_3.jpg", "alex_lacamoire_2.jpg" };
    resp r;
    for (int i = 0; i < 2; i++) {
        CHECK(analyze(fd, FW_OP_EMBED, pics[i], &ref[i], &r) == 0);
        tu_resp_free(&r);
    }
    uint8_t *bodies[2];
    size_t blen[2];
    for (int i = 0; i < 2; i++) {
        size_t jl;
        uint8_t *jpeg = tu_eval_pic(pics[i], &jl);
        CHECK(jpeg != NULL);
        bodies[i] = image_body(jpeg, jl, &blen[i]);
        free(jpeg);
        CHECK(bodies[i] != NULL);
    }
    enum { N = 8 };
    for (uint32_t k = 0; k < N; k++)
        CHECK(send_req(fd, FW_OP_EMBED, 1000 + k, bodies[k % 2], blen[k % 2]) == 0);
    free(bodies[0]);
    free(bodies[1]);
    int seen[N] = { 0 };
    for (int k = 0; k < N; k++) {
        CHECK(tu_read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
        CHECK(r.rid >= 1000 && r.rid < 1000 + N);
        int idx = (int)(r.rid - 1000);
        CHECK(!seen[idx]);
        seen[idx] = 1;
        int rc = parse_faces(&r, 1, &got);
        tu_resp_free(&r);
        CHECK(rc == 0);
        CHECK_EQ_INT(got.n, ref[idx % 2].n);
        for (int j = 0; j < 128; j++)
            CHECK_NEAR(got.desc[0][j], ref[idx % 2].desc[0][j], 1e-5);
    }
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Degraded mode (SIGUSR1) runs the smaller detector: still finds the face. */
static void t_degraded_detector_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static faces f;
    resp r;
    CHECK(tu_server_kill(&srv, SIGUSR1) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"degraded mode on\" detector_size=320"));
    CHECK(analyze(fd, FW_OP_DETECT, "barack_obama_2.jpg", &f, &r) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(f.n, 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* INFO's value for key over a connection of its own. */
static long long info_counter(const char *key)
{
    int fd = tu_connect_server(&srv);
    long long v = fd >= 0 ? tu_info_get(fd, key) : -1;
    if (fd >= 0)
        close(fd);
    return v;
}

/* --worker-yield-us: by default an EMBED hands its CPU back at the engine's pause points
 * (counted in INFO), with 0 it never does, and the faces are bit-identical either way. */
static void t_worker_yields_body(void)
{
    static faces with, without;
    resp r;
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(analyze(fd, FW_OP_EMBED, "barack_obama_3.jpg", &with, &r) == 0);
    tu_resp_free(&r);
    close(fd);
    long long y = info_counter("op_embed_yields");
    CHECK_MSG(y > 0, "op_embed_yields %lld after an EMBED at the default 200 us", y);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    const char *args[] = { "--workers", "2", "--models", tu_models_dir(), "--worker-yield-us", "0", NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(analyze(fd, FW_OP_EMBED, "barack_obama_3.jpg", &without, &r) == 0);
    tu_resp_free(&r);
    close(fd);
    CHECK_EQ_INT(info_counter("op_embed_yields"), 0);
    CHECK_EQ_INT(info_counter("op_embed_ran"), 1);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    CHECK_EQ_INT(with.n, 1);
    CHECK_EQ_INT(without.n, with.n);
    CHECK(memcmp(with.box, without.box, sizeof with.box) == 0);
    CHECK(memcmp(with.lm, without.lm, sizeof with.lm) == 0);
    CHECK(memcmp(with.desc, without.desc, sizeof with.desc) == 0);
}

/* Without models: JPEG inputs are UNAVAILABLE, but VERIFY of two descriptors still works. */
static void t_no_models_body(void)
{
    const char *args[] = { "--models", "/nonexistent/facewire-models", NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"models not loaded: face operations will answer UNAVAILABLE\""));
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static uint8_t b[2048];
    static float d1[128], d2[128];
    d2[0] = 0.3f;
    d2[1] = 0.4f;
    fw_writer w;
    fw_writer_init(&w, b, sizeof b);
    put_desc_input(&w, d1);
    put_desc_input(&w, d2);
    fw_put_u8(&w, 0);
    fw_put_f32(&w, 0);
    resp r;
    verdict v;
    CHECK(roundtrip(fd, FW_OP_VERIFY, b, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(parse_verdict(&r, &v) == 0);
    tu_resp_free(&r);
    CHECK_NEAR(v.distance, 0.5, 1e-6);
    CHECK_EQ_INT(v.same, 1);
    fw_writer_init(&w, b, sizeof b);
    fw_put_u32(&w, 2);
    fw_put_raw(&w, "\xFF\xD8", 2);
    CHECK(roundtrip(fd, FW_OP_EMBED, b, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    CHECK_MSG(strncmp(r.msg, "models not loaded: ", 19) == 0, "message: %s", r.msg);
    tu_resp_free(&r);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Hostile bodies: random bytes (a fixed seed, so a failure replays) with plausible prefixes,
 * for each face op. Every one gets one of the statuses a bad input may get, and the server
 * keeps serving. */
static void t_random_bodies_body(void)
{
    CHECK(start_with(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    static uint8_t b[4096];
    static const uint8_t ops3[] = { FW_OP_DETECT, FW_OP_EMBED, FW_OP_VERIFY };
    uint64_t x = 0x9E3779B97F4A7C15ull;
    resp r;
    for (int i = 0; i < 300; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint8_t op = ops3[x % 3];
        size_t n = (size_t)((x >> 8) % sizeof b);
        for (size_t k = 0; k < n; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            b[k] = (uint8_t)x;
        }
        size_t len = n;
        /* a third of them with a consistent length prefix (and a JPEG SOI), so they get past
         * the framing checks and reach the decoder */
        if (n >= 8 && i % 3 == 0) {
            size_t at = op == FW_OP_VERIFY ? 1 : 0;
            if (op == FW_OP_VERIFY)
                b[0] = 0;
            fw_be32(b + at, (uint32_t)(n - at - 4));
            b[at + 4] = 0xFF;
            b[at + 5] = 0xD8;
        }
        CHECK(roundtrip(fd, op, b, len, &r) == 0);
        CHECK_MSG(r.status == FW_STATUS_BAD_REQUEST || r.status == FW_STATUS_BAD_IMAGE ||
                  r.status == FW_STATUS_NO_FACE || r.status == FW_STATUS_OK,
                  "body %d (op 0x%02X, %zu bytes): status %u %s", i, op, len, r.status, r.msg);
        tu_resp_free(&r);
    }
    static faces f;
    int rc = analyze(fd, FW_OP_DETECT, "rose_leslie_2.jpg", &f, &r);
    CHECK_MSG(rc == 0, "after the random bodies: status %u %s", r.status, r.msg);
    tu_resp_free(&r);
    CHECK_EQ_INT(f.n, 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void cleanup(void)
{
    if (srv.pid > 0)
        tu_server_stop(&srv);
}

#define T(name) static void name(void) { name##_body(); cleanup(); }
T(t_detect_layout)
T(t_embed_matches_detect)
T(t_verify_same_and_different)
T(t_verify_descriptor_inputs)
T(t_bad_images)
T(t_malformed_bodies)
T(t_pipelined_embeds)
T(t_degraded_detector)
T(t_worker_yields)
T(t_no_models)
T(t_random_bodies)

static const struct check_test tests[] = {
    CHECK_TEST(t_detect_layout),
    CHECK_TEST(t_embed_matches_detect),
    CHECK_TEST(t_verify_same_and_different),
    CHECK_TEST(t_verify_descriptor_inputs),
    CHECK_TEST(t_bad_images),
    CHECK_TEST(t_malformed_bodies),
    CHECK_TEST(t_pipelined_embeds),
    CHECK_TEST(t_degraded_detector),
    CHECK_TEST(t_worker_yields),
    CHECK_TEST(t_no_models),
    CHECK_TEST(t_random_bodies),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
