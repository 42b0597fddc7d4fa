/*
 * test_galleryops.c — ENROLL, IDENTIFY, DELETE, LIST and GALLERY_INFO on the wire, against
 * bin/facewired with --data in a fresh mkdtemp directory per test, the real models
 * ($FW_MODELS, default ./models) and the labelled pictures of $FW_SHARED/eval (default
 * ../shared).
 *
 * Descriptor inputs are checked byte for byte (responses are fully determined by them); JPEG
 * inputs by their meaning (the right person nearest, under 0.6). Also: a restart on the same
 * directory keeps everything, LIST paging follows next_cursor, every malformed body gets its
 * exact BAD_REQUEST and the connection goes on, start-up refuses a directory in use and a log
 * corrupt in the middle (unless --repair), and shutdown waits for gallery writes in flight,
 * including the write of a request whose connection is gone. --gallery-key: an encrypted
 * gallery survives a restart; a wrong key, no key or a key file mode 0644 stop start-up.
 */
// run-under: tsan
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/tu_data.h"
#include "tests/tu_http.h"
#include "tests/tu_req.h"
#include "tests/tu_server.h"

static tu_server srv;
static char data_dir[64];

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

static int new_data_dir(void)
{
    snprintf(data_dir, sizeof data_dir, "/tmp/fw-galops-XXXXXX");
    return mkdtemp(data_dir) ? 0 : -1;
}

static int start_server(const char *extra)
{
    const char *args[] = { "--workers", "2", "--models", tu_models_dir(), "--data", data_dir, extra, NULL };
    return tu_server_start(&srv, args);
}

/* ---- framing ------------------------------------------------------------------------------- */

typedef tu_resp resp;

/* Ten-minute deadlines: the defaults are for production, not for sanitizer builds. */
static int send_req(int fd, uint8_t op, uint32_t rid, const void *body, size_t len)
{
    fw_header h = tu_request(op, rid, (uint32_t)len);
    h.deadline_ms = 600000;
    return tu_send_frame(fd, &h, body);
}

static uint32_t next_rid = 1;

static int roundtrip(int fd, uint8_t op, const void *body, size_t len, resp *r)
{
    uint32_t want = ++next_rid;
    if (send_req(fd, op, want, body, len) != 0 || tu_read_resp(fd, r) != 0)
        return -1;
    return r->rid == want ? 0 : -1;
}

static int ping_ok(int fd)
{
    resp r;
    int ok = roundtrip(fd, FW_OP_PING, "hi", 2, &r) == 0 && r.status == FW_STATUS_OK && r.len == 2 &&
             memcmp(r.body, "hi", 2) == 0;
    tu_resp_free(&r);
    return ok;
}

/* ---- bodies -------------------------------------------------------------------------------- */

typedef struct buf {
    uint8_t b[1 << 16];
    fw_writer w;
} buf;

static buf *buf_new(void)
{
    buf *b = malloc(sizeof *b);
    if (b)
        fw_writer_init(&b->w, b->b, sizeof b->b);
    return b;
}

static int enroll_desc(int fd, const char *subject, const char *meta, const float *d, uint64_t *id, resp *r)
{
    buf *b = buf_new();
    if (!b)
        return -1;
    fw_put_str(&b->w, subject, strlen(subject));
    fw_put_bytes(&b->w, meta, (uint32_t)strlen(meta));
    tu_put_desc(&b->w, d);
    int rc = roundtrip(fd, FW_OP_ENROLL, b->b, b->w.len, r);
    free(b);
    if (rc == 0 && r->status == FW_STATUS_OK) {
        fw_reader rd;
        fw_reader_init(&rd, r->body, r->len);
        *id = fw_get_u64(&rd);
        rc = fw_reader_done(&rd) ? 0 : -1;
    }
    return rc;
}

/* ENROLL (or IDENTIFY when k > 0) of an eval picture. */
static int pic_request(int fd, const char *subject, const char *pic, uint16_t k, resp *r)
{
    size_t bl;
    uint8_t *body = tu_pic_body(subject, pic, k, &bl);
    if (!body)
        return -1;
    int rc = roundtrip(fd, subject ? FW_OP_ENROLL : FW_OP_IDENTIFY, body, bl, r);
    free(body);
    return rc;
}

static int gallery_info(int fd, uint64_t v[4])
{
    resp r;
    int rc = roundtrip(fd, FW_OP_GALLERY_INFO, NULL, 0, &r);
    if (rc == 0 && (r.status != FW_STATUS_OK || r.len != 32))
        rc = -1;
    if (rc == 0) {
        fw_reader rd;
        fw_reader_init(&rd, r.body, r.len);
        for (int i = 0; i < 4; i++)
            v[i] = fw_get_u64(&rd);
    }
    tu_resp_free(&r);
    return rc;
}

/* A parsed IDENTIFY response (up to 4 faces, 8 matches each). */
typedef struct ident {
    uint16_t n;
    float box[4][4];
    uint16_t nm[4];
    char subject[4][8][129];
    uint64_t id[4][8];
    float dist[4][8];
} ident;

static int parse_ident(const resp *r, ident *o)
{
    fw_reader rd;
    memset(o, 0, sizeof *o);
    fw_reader_init(&rd, r->body, r->len);
    o->n = fw_get_u16(&rd);
    if (rd.err || o->n > 4)
        return -1;
    for (int i = 0; i < o->n; i++) {
        for (int c = 0; c < 4; c++)
            o->box[i][c] = fw_get_f32(&rd);
        o->nm[i] = fw_get_u16(&rd);
        if (rd.err || o->nm[i] > 8)
            return -1;
        for (int m = 0; m < o->nm[i]; m++) {
            uint16_t sl = 0;
            const char *s = fw_get_str(&rd, &sl);
            if (!s || sl > 128)
                return -1;
            memcpy(o->subject[i][m], s, sl);
            o->subject[i][m][sl] = '\0';
            o->id[i][m] = fw_get_u64(&rd);
            o->dist[i][m] = fw_get_f32(&rd);
        }
    }
    return fw_reader_done(&rd) ? 0 : -1;
}


/* ---- tests --------------------------------------------------------------------------------- */

static void t_descriptor_roundtrip_body(void)
{
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    float a[128], b[128];
    tu_unit_desc(a, 0, 0.5f);
    tu_unit_desc(b, 1, 0.5f);
    uint64_t ida = 0, idb = 0;
    resp r;
    CHECK(enroll_desc(fd, "alice", "door 3", a, &ida, &r) == 0);
    CHECK_EQ_INT(r.len, 8);
    tu_resp_free(&r);
    CHECK(enroll_desc(fd, "bob", "", b, &idb, &r) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(ida, 1);
    CHECK_EQ_INT(idb, 2);

    /* IDENTIFY a, k=2, no threshold: alice at exactly 0, bob at sqrt(0.5); box zeros */
    buf *q = buf_new(), *want = buf_new();
    CHECK(q && want);
    tu_put_desc(&q->w, a);
    fw_put_u16(&q->w, 2);
    fw_put_u8(&q->w, 0);
    fw_put_f32(&q->w, 0);
    CHECK(roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &r) == 0);
    CHECK_MSG(r.status == FW_STATUS_OK, "IDENTIFY: %u %s", r.status, r.msg);
    fw_put_u16(&want->w, 1);
    for (int c = 0; c < 4; c++)
        fw_put_f32(&want->w, 0);
    fw_put_u16(&want->w, 2);
    fw_put_str(&want->w, "alice", 5);
    fw_put_u64(&want->w, 1);
    fw_put_f32(&want->w, 0.0f);
    fw_put_str(&want->w, "bob", 3);
    fw_put_u64(&want->w, 2);
    fw_put_f32(&want->w, (float)sqrt(0.5));
    CHECK_EQ_INT(r.len, want->w.len);
    CHECK(memcmp(r.body, want->b, want->w.len) == 0);
    tu_resp_free(&r);

    /* with threshold 0.5 only alice is left (distance < threshold) */
    fw_writer_init(&q->w, q->b, sizeof q->b);
    tu_put_desc(&q->w, a);
    fw_put_u16(&q->w, 5);
    fw_put_u8(&q->w, 1);
    fw_put_f32(&q->w, 0.5f);
    CHECK(roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &r) == 0);
    static ident id;
    CHECK(parse_ident(&r, &id) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id.n, 1);
    CHECK_EQ_INT(id.nm[0], 1);
    CHECK_EQ_STR(id.subject[0][0], "alice");
    free(q);
    free(want);

    /* GALLERY_INFO: 2 faces, 2 subjects, bytes on disk, seq 2; INFO has the same */
    uint64_t gi[4];
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], 2);
    CHECK_EQ_INT(gi[1], 2);
    CHECK(gi[2] > 0);
    CHECK_EQ_INT(gi[3], 2);
    CHECK_EQ_INT(tu_info_get(fd, "gallery_faces"), 2);
    CHECK_EQ_INT(tu_info_get(fd, "gallery_subjects"), 2);
    CHECK_EQ_INT(tu_info_get(fd, "gallery_bytes"), (long long)gi[2]);
    CHECK_EQ_INT(tu_info_get(fd, "gallery_last_seq"), 2);
    CHECK_EQ_INT(tu_info_get(fd, "op_enroll_responses_ok"), 2);

    /* DELETE by face, again (NOT_FOUND with its message), by subject */
    uint8_t del[16];
    fw_writer w;
    fw_writer_init(&w, del, sizeof del);
    fw_put_u8(&w, 0);
    fw_put_u64(&w, 2);
    CHECK(roundtrip(fd, FW_OP_DELETE, del, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK_EQ_INT(r.len, 4);
    CHECK_EQ_INT(fw_rd32(r.body), 1);
    tu_resp_free(&r);
    CHECK(roundtrip(fd, FW_OP_DELETE, del, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(r.msg, "no face with id 2");
    tu_resp_free(&r);
    fw_writer_init(&w, del, sizeof del);
    fw_put_u8(&w, 1);
    fw_put_str(&w, "alice", 5);
    CHECK(roundtrip(fd, FW_OP_DELETE, del, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK_EQ_INT(fw_rd32(r.body), 1);
    tu_resp_free(&r);
    CHECK(roundtrip(fd, FW_OP_DELETE, del, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(r.msg, "no subject \"alice\"");
    tu_resp_free(&r);
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], 0);
    CHECK_EQ_INT(gi[1], 0);
    CHECK_EQ_INT(gi[3], 4);

    /* an empty gallery: IDENTIFY answers one face with no match */
    q = buf_new();
    CHECK(q);
    tu_put_desc(&q->w, b);
    fw_put_u16(&q->w, 1);
    fw_put_u8(&q->w, 0);
    fw_put_f32(&q->w, 0);
    int rc = roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &r);
    free(q);
    CHECK(rc == 0);
    CHECK(parse_ident(&r, &id) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id.n, 1);
    CHECK_EQ_INT(id.nm[0], 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_jpeg_inputs_body(void)
{
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    CHECK(pic_request(fd, "obama", "barack_obama_1.jpg", 0, &r) == 0);
    CHECK_MSG(r.status == FW_STATUS_OK && r.len == 8, "ENROLL obama: %u %s", r.status, r.msg);
    tu_resp_free(&r);
    CHECK(pic_request(fd, "biden", "joe_biden_1.jpg", 0, &r) == 0);
    CHECK_MSG(r.status == FW_STATUS_OK && r.len == 8, "ENROLL biden: %u %s", r.status, r.msg);
    tu_resp_free(&r);

    /* another picture of Obama: one face, nearest obama under 0.6, biden second */
    static ident id;
    CHECK(pic_request(fd, NULL, "barack_obama_2.jpg", 2, &r) == 0);
    CHECK_MSG(r.status == FW_STATUS_OK, "IDENTIFY: %u %s", r.status, r.msg);
    CHECK(parse_ident(&r, &id) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id.n, 1);
    CHECK(id.box[0][2] > 20 && id.box[0][3] > 20);
    CHECK_EQ_INT(id.nm[0], 2);
    CHECK_EQ_STR(id.subject[0][0], "obama");
    CHECK_EQ_INT(id.id[0][0], 1);
    CHECK(id.dist[0][0] < 0.6f);
    CHECK_EQ_STR(id.subject[0][1], "biden");
    CHECK(id.dist[0][1] > id.dist[0][0]);

    /* a picture with two people: one face entry each, one search */
    CHECK(pic_request(fd, NULL, "group_two_people.jpg", 1, &r) == 0);
    CHECK(parse_ident(&r, &id) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id.n, 2);

    /* ENROLL needs exactly one face */
    CHECK(pic_request(fd, "both", "group_two_people.jpg", 0, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(r.msg, "2 faces in picture; enroll needs exactly one");
    tu_resp_free(&r);
    size_t bl, jl;
    uint8_t *blank = blank_jpeg(&jl);
    CHECK(blank);
    uint8_t *body = tu_jpeg_body("nobody", blank, jl, 0, &bl);
    free(blank);
    CHECK(body);
    int rc = roundtrip(fd, FW_OP_ENROLL, body, bl, &r);
    free(body);
    CHECK(rc == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_NO_FACE);
    CHECK_EQ_STR(r.msg, "no face in picture");
    tu_resp_free(&r);
    /* IDENTIFY of a picture without a face: OK, no face ("nobody"), not NO_FACE */
    blank = blank_jpeg(&jl);
    CHECK(blank);
    body = tu_jpeg_body(NULL, blank, jl, 3, &bl);
    free(blank);
    CHECK(body);
    rc = roundtrip(fd, FW_OP_IDENTIFY, body, bl, &r);
    free(body);
    CHECK(rc == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(parse_ident(&r, &id) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id.n, 0);
    /* a JPEG that does not decode */
    body = tu_jpeg_body("broken", (const uint8_t *)"\xff\xd8garbage", 9, 0, &bl);
    CHECK(body);
    rc = roundtrip(fd, FW_OP_ENROLL, body, bl, &r);
    free(body);
    CHECK(rc == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_IMAGE);
    tu_resp_free(&r);

    uint64_t gi[4];
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], 2);
    CHECK_EQ_INT(gi[1], 2);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* LIST pages of 100 over 250 subjects, then a restart on the same directory keeps it all. */
static int list_all(int fd, uint16_t limit, char (*names)[16], uint32_t *faces_of, int max, int *pages)
{
    char cursor[129] = "";
    uint16_t clen = 0;
    int total = 0;
    *pages = 0;
    for (;;) {
        uint8_t req[160];
        fw_writer w;
        fw_writer_init(&w, req, sizeof req);
        fw_put_str(&w, cursor, clen);
        fw_put_u16(&w, limit);
        resp r;
        if (roundtrip(fd, FW_OP_LIST, req, w.len, &r) != 0 || r.status != FW_STATUS_OK) {
            tu_resp_free(&r);
            return -1;
        }
        (*pages)++;
        fw_reader rd;
        fw_reader_init(&rd, r.body, r.len);
        uint16_t n = fw_get_u16(&rd);
        for (int i = 0; i < n && !rd.err; i++) {
            uint16_t sl = 0;
            const char *s = fw_get_str(&rd, &sl);
            uint32_t faces = fw_get_u32(&rd);
            if (!s || sl >= 16 || faces == 0 || total >= max)
                break;
            faces_of[total] = faces;
            memcpy(names[total], s, sl);
            names[total++][sl] = '\0';
        }
        const char *next = fw_get_str(&rd, &clen);
        int ok = fw_reader_done(&rd) && clen <= 128;
        if (ok && clen)
            memcpy(cursor, next, clen);
        tu_resp_free(&r);
        if (!ok)
            return -1;
        if (clen == 0)
            return total;
        if (n != limit)
            return -1; /* a page short of the limit that is not the last */
    }
}

static void t_list_paging_and_restart_body(void)
{
    enum { N = 250 };
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    /* 250 enrolls pipelined (the gallery commits them in groups), answers in any order */
    buf *b = buf_new();
    CHECK(b);
    int sent = 1;
    for (int i = 0; i < N && sent; i++) {
        char s[16];
        float d[128];
        snprintf(s, sizeof s, "s%03d", (i * 7) % N); /* not in order */
        tu_unit_desc(d, i % 128, 1.0f + (float)i);
        fw_writer_init(&b->w, b->b, sizeof b->b);
        fw_put_str(&b->w, s, strlen(s));
        fw_put_bytes(&b->w, "", 0);
        tu_put_desc(&b->w, d);
        sent = send_req(fd, FW_OP_ENROLL, 1000 + (uint32_t)i, b->b, b->w.len) == 0;
    }
    free(b);
    CHECK(sent);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        resp r;
        if (tu_read_resp(fd, &r) != 0)
            break;
        ok += r.status == FW_STATUS_OK && r.rid >= 1000 && r.rid < 1000 + N;
        tu_resp_free(&r);
    }
    CHECK_EQ_INT(ok, N);

    static char names[N + 8][16];
    static uint32_t faces[N + 8];
    int pages = 0;
    CHECK_EQ_INT(list_all(fd, 100, names, faces, N + 8, &pages), N);
    CHECK_EQ_INT(pages, 3);
    for (int i = 0; i < N; i++) {
        char s[16];
        snprintf(s, sizeof s, "s%03d", i);
        CHECK_EQ_STR(names[i], s);
        CHECK_EQ_INT(faces[i], 1);
    }
    uint64_t before[4], after[4];
    CHECK(gallery_info(fd, before) == 0);
    CHECK_EQ_INT(before[0], N);
    CHECK_EQ_INT(before[3], N);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    /* the same directory again: the same gallery */
    CHECK(start_server(NULL) == 0);
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(gallery_info(fd, after) == 0);
    CHECK(memcmp(before, after, sizeof before) == 0);
    CHECK_EQ_INT(list_all(fd, 65535, names, faces, N + 8, &pages), N);
    CHECK_EQ_INT(pages, 1);
    CHECK_EQ_STR(names[N - 1], "s249");
    /* and the next id continues after the last */
    float d[128];
    uint64_t id = 0;
    resp r;
    tu_unit_desc(d, 5, 3.0f);
    CHECK(enroll_desc(fd, "late", "", d, &id, &r) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id, N + 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* A page never holds more than FW_GALOPS_LIST_PAGE_MAX (4096) subjects, whatever the limit:
 * 4100 subjects with limit 65535 come in two pages. */
static void t_list_page_cap_body(void)
{
    enum { N = 4100 };
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    buf *b = buf_new();
    CHECK(b);
    int sent = 1;
    for (int i = 0; i < N && sent; i++) {
        char s[16];
        float d[128];
        snprintf(s, sizeof s, "c%05d", i);
        tu_unit_desc(d, i % 128, 1.0f);
        fw_writer_init(&b->w, b->b, sizeof b->b);
        fw_put_str(&b->w, s, strlen(s));
        fw_put_bytes(&b->w, "", 0);
        tu_put_desc(&b->w, d);
        sent = send_req(fd, FW_OP_ENROLL, 10000 + (uint32_t)i, b->b, b->w.len) == 0;
    }
    free(b);
    CHECK(sent);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        resp r;
        if (tu_read_resp(fd, &r) != 0)
            break;
        ok += r.status == FW_STATUS_OK;
        tu_resp_free(&r);
    }
    CHECK_EQ_INT(ok, N);
    static char names[N + 8][16];
    static uint32_t faces[N + 8];
    int pages = 0;
    CHECK_EQ_INT(list_all(fd, 4096, names, faces, N + 8, &pages), N);
    CHECK_EQ_INT(pages, 2);
    /* limit 65535: list_all insists on full pages, so read the first one by hand */
    uint8_t req[8];
    fw_writer w;
    fw_writer_init(&w, req, sizeof req);
    fw_put_str(&w, "", 0);
    fw_put_u16(&w, 65535);
    resp r;
    CHECK(roundtrip(fd, FW_OP_LIST, req, w.len, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK_EQ_INT(fw_rd16(r.body), 4096);
    /* the cursor after the page is its last subject */
    CHECK(r.len > 8);
    CHECK(memcmp(r.body + r.len - 8, "\x00\x06" "c04095", 8) == 0);
    tu_resp_free(&r);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Writes and reads at once, on three connections: enrolls (direct), deletes (direct) and
 * IDENTIFY/LIST jobs on the workers, all pipelined. Every request is answered, searches
 * never see a half-present face (each match's distance is one a whole face gives), and the
 * final counts add up. Under TSan this is the race check of the whole wire path. */
static void t_concurrent_reads_and_writes_body(void)
{
    enum { N = 120 };
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int w = tu_connect_server(&srv), d = tu_connect_server(&srv), q = tu_connect_server(&srv);
    CHECK(w >= 0 && d >= 0 && q >= 0);
    buf *b = buf_new();
    CHECK(b);
    int sent = 1;
    float v[128];
    for (int i = 0; i < N && sent; i++) {
        char s[16];
        snprintf(s, sizeof s, "w%03d", i);
        tu_unit_desc(v, 0, 1.0f + (float)i); /* face i+1 is at distance |i + 1 - 1| = i from e0 */
        fw_writer_init(&b->w, b->b, sizeof b->b);
        fw_put_str(&b->w, s, strlen(s));
        fw_put_bytes(&b->w, "", 0);
        tu_put_desc(&b->w, v);
        sent = send_req(w, FW_OP_ENROLL, 1 + (uint32_t)i, b->b, b->w.len) == 0;
        /* delete every other earlier face (ids 1, 3, 5, ... as they are enrolled) */
        if (sent && i % 2 == 1) {
            fw_writer_init(&b->w, b->b, sizeof b->b);
            fw_put_u8(&b->w, 0);
            fw_put_u64(&b->w, (uint64_t)i); /* enrolled before: FIFO on w, but d races it */
            sent = send_req(d, FW_OP_DELETE, 1 + (uint32_t)i, b->b, b->w.len) == 0;
        }
        if (sent && i % 4 == 0) {
            fw_writer_init(&b->w, b->b, sizeof b->b);
            tu_unit_desc(v, 0, 1.0f);
            tu_put_desc(&b->w, v);
            fw_put_u16(&b->w, 100);
            fw_put_u8(&b->w, 0);
            fw_put_f32(&b->w, 0);
            sent = send_req(q, FW_OP_IDENTIFY, 1 + (uint32_t)i, b->b, b->w.len) == 0;
            fw_writer_init(&b->w, b->b, sizeof b->b);
            fw_put_str(&b->w, "", 0);
            fw_put_u16(&b->w, 1000);
            sent = sent && send_req(q, FW_OP_LIST, 100000 + (uint32_t)i, b->b, b->w.len) == 0;
        }
    }
    free(b);
    CHECK(sent);
    int enrolled = 0, deleted = 0, not_found = 0, searches = 0, lists = 0, bad = 0;
    for (int i = 0; i < N; i++) {
        resp r;
        CHECK(tu_read_resp(w, &r) == 0);
        enrolled += r.status == FW_STATUS_OK;
        tu_resp_free(&r);
    }
    for (int i = 0; i < N / 2; i++) {
        resp r;
        CHECK(tu_read_resp(d, &r) == 0);
        deleted += r.status == FW_STATUS_OK;
        not_found += r.status == FW_STATUS_NOT_FOUND; /* the delete overtook its enroll */
        tu_resp_free(&r);
    }
    for (int i = 0; i < N / 4 * 2; i++) {
        resp r;
        CHECK(tu_read_resp(q, &r) == 0);
        if (r.rid >= 100000) {
            lists += r.status == FW_STATUS_OK;
        } else if (r.status == FW_STATUS_OK && r.len >= 2 && fw_rd16(r.body) == 1) {
            /* up to 100 matches (parse_ident holds 8): each distance checked as it is read */
            fw_reader rd;
            fw_reader_init(&rd, r.body, r.len);
            fw_get_u16(&rd);
            for (int c = 0; c < 4; c++)
                fw_get_f32(&rd);
            uint16_t nm = fw_get_u16(&rd);
            for (int m = 0; m < nm && !rd.err; m++) {
                uint16_t sl;
                fw_get_str(&rd, &sl);
                uint64_t fid = fw_get_u64(&rd);
                float dist = fw_get_f32(&rd);
                bad += dist != (float)(fid - 1); /* whole faces only */
            }
            bad += !fw_reader_done(&rd);
            searches++;
        }
        tu_resp_free(&r);
    }
    CHECK_EQ_INT(enrolled, N);
    CHECK_EQ_INT(deleted + not_found, N / 2);
    CHECK_EQ_INT(searches, (N + 3) / 4);
    CHECK_EQ_INT(lists, (N + 3) / 4);
    CHECK_EQ_INT(bad, 0);
    uint64_t gi[4];
    CHECK(gallery_info(w, gi) == 0);
    CHECK_EQ_INT(gi[0], N - deleted);
    close(w);
    close(d);
    close(q);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_malformed_bodies_body(void)
{
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    buf *b = buf_new();
    CHECK(b);
    float d[128];
    tu_unit_desc(d, 0, 1.0f);
    char long_s[130];
    memset(long_s, 'x', sizeof long_s);
    resp r;

#define BEGIN() fw_writer_init(&b->w, b->b, sizeof b->b)
#define EXPECT(opcode, message) do { \
        CHECK(!b->w.err); \
        CHECK(roundtrip(fd, (opcode), b->b, b->w.len, &r) == 0); \
        CHECK_MSG(r.status == FW_STATUS_BAD_REQUEST, "%s: status %u %s", (message), r.status, r.msg); \
        CHECK_EQ_STR(r.msg, (message)); \
        tu_resp_free(&r); \
        CHECK(ping_ok(fd)); \
    } while (0)

    /* ENROLL */
    BEGIN();
    EXPECT(FW_OP_ENROLL, "ENROLL: truncated subject");
    BEGIN(); fw_put_str(&b->w, "", 0); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, d);
    EXPECT(FW_OP_ENROLL, "ENROLL: subject must be 1-128 bytes, not 0");
    BEGIN(); fw_put_str(&b->w, long_s, 129); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, d);
    EXPECT(FW_OP_ENROLL, "ENROLL: subject must be 1-128 bytes, not 129");
    BEGIN(); fw_put_str(&b->w, "a\xff", 2); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, d);
    EXPECT(FW_OP_ENROLL, "ENROLL: subject is not valid UTF-8 (or holds a NUL byte)");
    BEGIN(); fw_put_str(&b->w, "a\0b", 3); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, d);
    EXPECT(FW_OP_ENROLL, "ENROLL: subject is not valid UTF-8 (or holds a NUL byte)");
    BEGIN(); fw_put_str(&b->w, "\xc0\xaf", 2); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, d);
    EXPECT(FW_OP_ENROLL, "ENROLL: subject is not valid UTF-8 (or holds a NUL byte)");
    BEGIN(); fw_put_str(&b->w, "a", 1);
    EXPECT(FW_OP_ENROLL, "ENROLL: truncated body (metadata expected)");
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_u32(&b->w, 10);
    EXPECT(FW_OP_ENROLL, "ENROLL: truncated metadata");
    {
        static uint8_t meta[1025];
        BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, meta, 1025); tu_put_desc(&b->w, d);
        EXPECT(FW_OP_ENROLL, "ENROLL: metadata is 1025 bytes, at most 1024");
    }
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0);
    EXPECT(FW_OP_ENROLL, "ENROLL: truncated body (input expected)");
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); fw_put_u8(&b->w, 7);
    EXPECT(FW_OP_ENROLL, "ENROLL: input kind 7 unknown (0 JPEG, 1 descriptor)");
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); fw_put_u8(&b->w, 1); fw_put_f32(&b->w, 1);
    EXPECT(FW_OP_ENROLL, "ENROLL: truncated descriptor");
    {
        float bad[128];
        tu_unit_desc(bad, 3, NAN);
        BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, bad);
        EXPECT(FW_OP_ENROLL, "ENROLL: descriptor value 3 is not a finite number within +-10000");
        tu_unit_desc(bad, 127, -20000.0f);
        BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, bad);
        EXPECT(FW_OP_ENROLL, "ENROLL: descriptor value 127 is not a finite number within +-10000");
    }
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); tu_put_desc(&b->w, d); fw_put_u8(&b->w, 0);
    EXPECT(FW_OP_ENROLL, "ENROLL: 1 trailing bytes");
    /* JPEG inputs take the worker path: the same checks on the copy */
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); fw_put_u8(&b->w, 0); fw_put_bytes(&b->w, "", 0);
    EXPECT(FW_OP_ENROLL, "ENROLL: empty JPEG");
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); fw_put_u8(&b->w, 0); fw_put_u32(&b->w, 100);
    fw_put_raw(&b->w, "\xff\xd8\xff", 3);
    EXPECT(FW_OP_ENROLL, "ENROLL: truncated JPEG");
    BEGIN(); fw_put_str(&b->w, "", 0); fw_put_bytes(&b->w, "", 0); fw_put_u8(&b->w, 0); fw_put_bytes(&b->w, "\xff\xd8", 2);
    EXPECT(FW_OP_ENROLL, "ENROLL: subject must be 1-128 bytes, not 0");
    BEGIN(); fw_put_str(&b->w, "a", 1); fw_put_bytes(&b->w, "", 0); fw_put_u8(&b->w, 0); fw_put_bytes(&b->w, "\xff\xd8", 2);
    fw_put_u8(&b->w, 9);
    EXPECT(FW_OP_ENROLL, "ENROLL: 1 trailing bytes");

    /* IDENTIFY */
    BEGIN();
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: truncated body (input expected)");
    BEGIN(); tu_put_desc(&b->w, d); fw_put_u16(&b->w, 1);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: truncated body (k, has_threshold and threshold expected)");
    BEGIN(); tu_put_desc(&b->w, d); fw_put_u16(&b->w, 0); fw_put_u8(&b->w, 0); fw_put_f32(&b->w, 0);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: k must be 1-100, not 0");
    BEGIN(); tu_put_desc(&b->w, d); fw_put_u16(&b->w, 101); fw_put_u8(&b->w, 0); fw_put_f32(&b->w, 0);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: k must be 1-100, not 101");
    BEGIN(); tu_put_desc(&b->w, d); fw_put_u16(&b->w, 1); fw_put_u8(&b->w, 2); fw_put_f32(&b->w, 0);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: has_threshold must be 0 or 1, not 2");
    BEGIN(); tu_put_desc(&b->w, d); fw_put_u16(&b->w, 1); fw_put_u8(&b->w, 1); fw_put_f32(&b->w, -1);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: threshold must be a positive finite number");
    BEGIN(); tu_put_desc(&b->w, d); fw_put_u16(&b->w, 1); fw_put_u8(&b->w, 1); fw_put_f32(&b->w, INFINITY);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: threshold must be a positive finite number");
    BEGIN(); tu_put_desc(&b->w, d); fw_put_u16(&b->w, 1); fw_put_u8(&b->w, 0); fw_put_f32(&b->w, 0); fw_put_u8(&b->w, 0);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: 1 trailing bytes");
    BEGIN(); fw_put_u8(&b->w, 3);
    EXPECT(FW_OP_IDENTIFY, "IDENTIFY: input kind 3 unknown (0 JPEG, 1 descriptor)");

    /* DELETE */
    BEGIN();
    EXPECT(FW_OP_DELETE, "DELETE: empty body (kind expected)");
    BEGIN(); fw_put_u8(&b->w, 2);
    EXPECT(FW_OP_DELETE, "DELETE: kind 2 unknown (0 face id, 1 subject)");
    BEGIN(); fw_put_u8(&b->w, 0); fw_put_u32(&b->w, 1);
    EXPECT(FW_OP_DELETE, "DELETE: truncated face id");
    BEGIN(); fw_put_u8(&b->w, 0); fw_put_u64(&b->w, 1); fw_put_u8(&b->w, 1);
    EXPECT(FW_OP_DELETE, "DELETE: 1 trailing bytes");
    BEGIN(); fw_put_u8(&b->w, 1); fw_put_str(&b->w, "", 0);
    EXPECT(FW_OP_DELETE, "DELETE: subject must be 1-128 bytes, not 0");
    BEGIN(); fw_put_u8(&b->w, 1); fw_put_u16(&b->w, 5); fw_put_raw(&b->w, "ab", 2);
    EXPECT(FW_OP_DELETE, "DELETE: truncated subject");
    BEGIN(); fw_put_u8(&b->w, 1); fw_put_str(&b->w, "\xed\xa0\x80", 3);
    EXPECT(FW_OP_DELETE, "DELETE: subject is not valid UTF-8 (or holds a NUL byte)");

    /* LIST */
    BEGIN();
    EXPECT(FW_OP_LIST, "LIST: truncated cursor");
    BEGIN(); fw_put_str(&b->w, "", 0);
    EXPECT(FW_OP_LIST, "LIST: truncated body (limit expected)");
    BEGIN(); fw_put_str(&b->w, "", 0); fw_put_u16(&b->w, 0);
    EXPECT(FW_OP_LIST, "LIST: limit must be 1-65535");
    BEGIN(); fw_put_str(&b->w, long_s, 129); fw_put_u16(&b->w, 1);
    EXPECT(FW_OP_LIST, "LIST: cursor must be at most 128 bytes, not 129");
    BEGIN(); fw_put_str(&b->w, "", 0); fw_put_u16(&b->w, 1); fw_put_u8(&b->w, 0);
    EXPECT(FW_OP_LIST, "LIST: 1 trailing bytes");

    /* GALLERY_INFO */
    BEGIN(); fw_put_u8(&b->w, 0);
    EXPECT(FW_OP_GALLERY_INFO, "GALLERY_INFO: the body must be empty, not 1 bytes");
#undef EXPECT
#undef BEGIN
    free(b);
    /* nothing got in */
    uint64_t gi[4];
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], 0);
    CHECK_EQ_INT(gi[3], 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Shutdown with gallery writes in flight: a JPEG ENROLL on a connection that stays is
 * answered OK before the server exits; one on a connection reset meanwhile is still written
 * (closing a connection does not cancel an accepted request). Both are there after a restart. */
static void t_shutdown_waits_for_writes_body(void)
{
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int a = tu_connect_server(&srv), b = tu_connect_server(&srv);
    CHECK(a >= 0 && b >= 0);
    size_t jl, bl;
    uint8_t *jpeg = tu_eval_pic("kit_harington_1.jpg", &jl);
    CHECK(jpeg);
    uint8_t *body = tu_jpeg_body("kit", jpeg, jl, 0, &bl);
    free(jpeg);
    CHECK(body);
    int ok = send_req(a, FW_OP_ENROLL, 1, body, bl) == 0 && send_req(b, FW_OP_ENROLL, 2, body, bl) == 0;
    free(body);
    CHECK(ok);
    /* INFO is answered on the loop after the ENROLL before it was handed to compute (the
     * embedding takes far longer than an INFO, so its answer comes first) */
    CHECK(tu_info_get(a, "connections") == 2);
    CHECK(tu_info_get(b, "connections") == 2);
    struct linger lg = { 1, 0 };
    CHECK(setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(b); /* a reset: the server drops the answer, not the write */
    CHECK_EQ_INT(tu_server_kill(&srv, SIGTERM), 0);
    resp r;
    CHECK(tu_read_resp(a, &r) == 0);
    CHECK_MSG(r.status == FW_STATUS_OK && r.rid == 1, "ENROLL during shutdown: %u %s", r.status, r.msg);
    tu_resp_free(&r);
    close(a);
    CHECK_EQ_INT(tu_server_wait(&srv), 0);

    CHECK(start_server(NULL) == 0);
    a = tu_connect_server(&srv);
    CHECK(a >= 0);
    static char names[4][16];
    uint32_t faces[4];
    int pages;
    CHECK_EQ_INT(list_all(a, 10, names, faces, 4, &pages), 1);
    CHECK_EQ_STR(names[0], "kit");
    CHECK_EQ_INT(faces[0], 2);
    uint64_t gi[4];
    CHECK(gallery_info(a, gi) == 0);
    CHECK_EQ_INT(gi[0], 2);
    close(a);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Start-up refuses a directory another server holds and a log corrupt in the middle; --repair
 * starts with what is intact. */
static void t_startup_refusals_body(void)
{
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    for (int i = 0; i < 3; i++) {
        float d[128];
        uint64_t id;
        resp r;
        tu_unit_desc(d, i, 1.0f);
        CHECK(enroll_desc(fd, i == 0 ? "first" : "later", "", d, &id, &r) == 0);
        tu_resp_free(&r);
    }
    close(fd);
    static char out[65536];
    const char *args[] = { "--listen", "127.0.0.1:0", "--models", "/nonexistent/facewire-models", "--data",
                           data_dir, NULL, NULL };
    CHECK_EQ_INT(tu_run("facewired", args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "is in use by another process") && strstr(out, "cannot open the gallery"), "%s", out);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    /* flip a byte inside the first record of the log (after its 24-byte header) */
    char path[128];
    snprintf(path, sizeof path, "%s/gallery.log", data_dir);
    int lf = open(path, O_RDWR);
    CHECK(lf >= 0);
    uint8_t byte = 0;
    int flipped = pread(lf, &byte, 1, 24 + 20) == 1;
    byte ^= 0x5a;
    flipped = flipped && pwrite(lf, &byte, 1, 24 + 20) == 1;
    close(lf);
    CHECK(flipped);
    CHECK_EQ_INT(tu_run("facewired", args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "corrupt record") && strstr(out, "--repair"), "%s", out);

    /* a missing directory is made, but only one level of it */
    char deep[128];
    snprintf(deep, sizeof deep, "%s/no/such", data_dir);
    args[5] = deep;
    CHECK_EQ_INT(tu_run("facewired", args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "cannot open the gallery: mkdir ") && strstr(out, "No such file or directory"), "%s", out);
    args[5] = data_dir;

    CHECK(start_server("--repair") == 0);
    CHECK(tu_server_log_has(&srv, "msg=\"gallery recovered\""));
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    uint64_t gi[4];
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], 2);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* An ENROLL answered DEADLINE_EXCEEDED while its worker ran is never written: the server is
 * stopped (which waits for the worker) and restarted, and the gallery is empty. */
static void t_timed_out_enroll_not_written_body(void)
{
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    size_t jl, bl;
    uint8_t *jpeg = tu_eval_pic("rose_leslie_1.jpg", &jl);
    CHECK(jpeg);
    uint8_t *body = tu_jpeg_body("rose", jpeg, jl, 0, &bl);
    free(jpeg);
    CHECK(body);
    fw_header h = tu_request(FW_OP_ENROLL, 77, (uint32_t)bl);
    h.deadline_ms = 1;
    int sent = tu_send_frame(fd, &h, body) == 0;
    free(body);
    CHECK(sent);
    resp r;
    CHECK(tu_read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_DEADLINE_EXCEEDED);
    tu_resp_free(&r);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
    CHECK(start_server(NULL) == 0);
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    uint64_t gi[4];
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], 0);
    CHECK_EQ_INT(gi[3], 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* IDENTIFY hands its worker's CPU back during the gallery search (the slot's pause hook, as
 * the engine's; docs/scheduling.md): over a gallery of several search blocks
 * (galidx_search_block: 4096 rows for one query), INFO op_identify_yields is > 0 at the default
 * --worker-yield-us and 0 with --worker-yield-us 0, and the answer is byte for byte the same. */
static void t_identify_yields_body(void)
{
    enum { N = 3 * 4096 + 1000, WINDOW = 200 };
    CHECK(new_data_dir() == 0);
    CHECK(start_server(NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    buf *b = buf_new(), *q = buf_new();
    CHECK(b && q);
    float d[128], probe[128];
    int ok = 0;
    for (int base = 0; base < N; base += WINDOW) {
        int cnt = N - base < WINDOW ? N - base : WINDOW, sent = 0;
        for (int i = 0; i < cnt; i++) {
            char s[16];
            snprintf(s, sizeof s, "y%d", (base + i) % 97);
            tu_desc_for(4242 + (uint64_t)(base + i), d);
            if (base + i == N / 2)
                memcpy(probe, d, sizeof d);
            fw_writer_init(&b->w, b->b, sizeof b->b);
            fw_put_str(&b->w, s, strlen(s));
            fw_put_bytes(&b->w, "", 0);
            tu_put_desc(&b->w, d);
            sent += send_req(fd, FW_OP_ENROLL, 100000 + (uint32_t)(base + i), b->b, b->w.len) == 0;
        }
        CHECK_EQ_INT(sent, cnt);
        for (int i = 0; i < cnt; i++) {
            resp r;
            CHECK(tu_read_resp(fd, &r) == 0);
            ok += r.status == FW_STATUS_OK;
            tu_resp_free(&r);
        }
    }
    CHECK_EQ_INT(ok, N);
    tu_put_desc(&q->w, probe);
    fw_put_u16(&q->w, 5);
    fw_put_u8(&q->w, 0);
    fw_put_f32(&q->w, 0);
    resp with, without;
    CHECK(roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &with) == 0);
    CHECK_MSG(with.status == FW_STATUS_OK, "IDENTIFY: %u %s", with.status, with.msg);
    static ident id;
    CHECK(parse_ident(&with, &id) == 0);
    CHECK_EQ_INT(id.n, 1);
    CHECK_EQ_INT(id.nm[0], 5);
    CHECK_EQ_INT(id.id[0][0], N / 2 + 1); /* ids from 1, in enroll order */
    CHECK(id.dist[0][0] == 0.0f);
    long long y = tu_info_get(fd, "op_identify_yields");
    CHECK_MSG(y > 0, "op_identify_yields %lld after an IDENTIFY over %d faces at the default", y, N);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    /* the same gallery, never yielding */
    const char *args[] = { "--workers", "2", "--models", tu_models_dir(), "--data", data_dir,
                           "--worker-yield-us", "0", NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &without) == 0);
    CHECK_MSG(without.status == FW_STATUS_OK, "IDENTIFY: %u %s", without.status, without.msg);
    CHECK_EQ_INT(tu_info_get(fd, "op_identify_yields"), 0);
    CHECK_EQ_INT(tu_info_get(fd, "op_identify_ran"), 1);
    CHECK_EQ_INT(without.len, with.len);
    CHECK(memcmp(without.body, with.body, with.len) == 0);
    CHECK(ping_ok(fd));
    tu_resp_free(&without);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    /* a node without models (descriptors only, as the scale-out nodes may run) yields too */
    const char *bare[] = { "--workers", "2", "--models", "/nonexistent/facewire-models", "--data",
                           data_dir, NULL };
    CHECK(tu_server_start(&srv, bare) == 0);
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &without) == 0);
    CHECK_MSG(without.status == FW_STATUS_OK, "IDENTIFY: %u %s", without.status, without.msg);
    y = tu_info_get(fd, "op_identify_yields");
    CHECK_MSG(y > 0, "op_identify_yields %lld without models", y);
    CHECK_EQ_INT(without.len, with.len);
    CHECK(memcmp(without.body, with.body, with.len) == 0);
    tu_resp_free(&with);
    tu_resp_free(&without);
    close(fd);
    free(b);
    free(q);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Without models: descriptor inputs work, JPEG inputs are UNAVAILABLE with the reason. */
static void t_without_models_body(void)
{
    CHECK(new_data_dir() == 0);
    char fresh[128]; /* does not exist yet: the server makes it */
    snprintf(fresh, sizeof fresh, "%s/fresh", data_dir);
    const char *args[] = { "--data", fresh, "--models", "/nonexistent/facewire-models", NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    float d[128];
    uint64_t id = 0;
    resp r;
    tu_unit_desc(d, 9, 2.0f);
    CHECK(enroll_desc(fd, "desc", "", d, &id, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    tu_resp_free(&r);
    buf *q = buf_new();
    CHECK(q);
    tu_put_desc(&q->w, d);
    fw_put_u16(&q->w, 1);
    fw_put_u8(&q->w, 0);
    fw_put_f32(&q->w, 0);
    int rc = roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &r);
    free(q);
    CHECK(rc == 0);
    static ident id2;
    CHECK(parse_ident(&r, &id2) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id2.nm[0], 1);
    CHECK_EQ_INT(id2.id[0][0], id);
    CHECK(pic_request(fd, "obama", "barack_obama_1.jpg", 0, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    CHECK_MSG(strncmp(r.msg, "models not loaded: ", 19) == 0, "%s", r.msg);
    tu_resp_free(&r);
    CHECK(pic_request(fd, NULL, "barack_obama_1.jpg", 1, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    tu_resp_free(&r);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* The gallery's figures in /metrics. */
static void t_metrics_body(void)
{
    CHECK(new_data_dir() == 0);
    CHECK(start_server("--metrics-listen=127.0.0.1:0") == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"metrics listening\" addr=127.0.0.1:"));
    int port = tu_server_metrics_port(&srv);
    CHECK(port > 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    float d[128];
    uint64_t id;
    resp r;
    tu_unit_desc(d, 1, 1.0f);
    CHECK(enroll_desc(fd, "m", "", d, &id, &r) == 0);
    tu_resp_free(&r);
    close(fd);
    static const char get[] = "GET /metrics HTTP/1.0\r\n\r\n";
    static char page[1 << 18];
    CHECK(tu_http_exchange("127.0.0.1", port, get, sizeof get - 1, page, sizeof page) >= 0);
    CHECK_MSG(strstr(page, "\nfacewire_gallery_faces 1\n") && strstr(page, "\nfacewire_gallery_subjects 1\n") &&
              strstr(page, "\nfacewire_gallery_last_seq 1\n") && strstr(page, "\nfacewire_gallery_bytes ") &&
              strstr(page, "\nfacewire_gallery_write_seconds_count 1\n") &&
              strstr(page, "facewire_breaker_state{class=\"gallery_write\"} 0\n") &&
              strstr(page, "facewire_requests_total{op=\"ENROLL\"} 1\n"),
              "metrics: %.2000s", page);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* A full disk on the wire: an ENROLL that cannot be written is INTERNAL with the reason; the
 * gallery_write breaker then opens (failure threshold 1 %) and writes are refused fast, while
 * IDENTIFY (gallery_read) and GALLERY_INFO go on; everything acknowledged survives a restart.
 * Needs root for a 64 KiB tmpfs as --data; says SKIPPED when mount(2) is refused. */
static void disk_full_body(void)
{
    const char *args[] = { "--workers", "2", "--models", tu_models_dir(), "--data", data_dir,
                           "--breaker-min-requests", "5", "--breaker-failure-pct", "1",
                           "--breaker-cooldown-ms", "600000", NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    int acked = 0, internal = 0, unavailable = 0;
    char internal_msg[256] = "", unavailable_msg[256] = "";
    float d[128];
    for (int i = 0; i < 1000 && !unavailable; i++) {
        uint64_t id;
        resp r;
        tu_unit_desc(d, i % 128, 1.0f + (float)i);
        CHECK(enroll_desc(fd, "fill", "", d, &id, &r) == 0);
        if (r.status == FW_STATUS_OK) {
            acked++;
        } else if (r.status == FW_STATUS_INTERNAL) {
            internal++;
            snprintf(internal_msg, sizeof internal_msg, "%s", r.msg);
        } else if (r.status == FW_STATUS_UNAVAILABLE) {
            unavailable++;
            snprintf(unavailable_msg, sizeof unavailable_msg, "%s", r.msg);
            CHECK_EQ_INT(r.len, 2 + strlen(r.msg) + 4); /* retry_after_ms follows */
        } else {
            CHECK_MSG(0, "enroll %d: status %u %s", i, r.status, r.msg);
        }
        tu_resp_free(&r);
    }
    CHECK(acked > 10);
    CHECK(internal >= 1);
    CHECK_EQ_STR(internal_msg, "gallery write failed: No space left on device");
    CHECK_EQ_INT(unavailable, 1);
    CHECK_EQ_STR(unavailable_msg, "circuit breaker open for gallery_write operations");
    /* reads go on */
    buf *q = buf_new();
    CHECK(q);
    tu_unit_desc(d, 0, 1.0f);
    tu_put_desc(&q->w, d);
    fw_put_u16(&q->w, 1);
    fw_put_u8(&q->w, 0);
    fw_put_f32(&q->w, 0);
    resp r;
    int rc = roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &r);
    free(q);
    CHECK(rc == 0);
    static ident id;
    CHECK(parse_ident(&r, &id) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id.nm[0], 1);
    CHECK_EQ_INT(id.id[0][0], 1);
    CHECK_EQ_INT(id.dist[0][0], 0);
    uint64_t gi[4];
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], acked);
    CHECK_EQ_INT(tu_info_get(fd, "gallery_write_errors"), internal);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
    CHECK(start_server(NULL) == 0);
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(gallery_info(fd, gi) == 0);
    CHECK_EQ_INT(gi[0], acked);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_disk_full(void)
{
    if (new_data_dir() != 0) {
        CHECK_FAIL_("mkdtemp: %s", strerror(errno));
        return;
    }
    if (mount("tmpfs", data_dir, "tmpfs", 0, "size=64k") != 0) {
        printf("SKIPPED t_disk_full: mount tmpfs refused (%s)\n", strerror(errno));
        rmdir(data_dir);
        data_dir[0] = '\0';
        return;
    }
    disk_full_body(); /* its CHECKs return here: the server is stopped and the mount undone */
    if (srv.pid > 0)
        tu_server_stop(&srv);
    if (umount(data_dir) != 0)
        CHECK_FAIL_("umount %s: %s", data_dir, strerror(errno));
    rmdir(data_dir);
    data_dir[0] = '\0';
}

/* --gallery-key: the gallery is written encrypted and read back across a restart; a wrong
 * key, no key, and a key file others can read all stop start-up with the reason. */
static void t_gallery_key_body(void)
{
    static char out[65536];
    char key[128], other[128], flag[160], path[128];
    CHECK(new_data_dir() == 0);
    snprintf(key, sizeof key, "%s/gallery.key", data_dir);
    snprintf(other, sizeof other, "%s/other.key", data_dir);
    const char *kg[] = { "keygen", "--symmetric", key, NULL };
    CHECK_EQ_INT(tu_run("facewired", kg, out, sizeof out), 0);
    kg[2] = other;
    CHECK_EQ_INT(tu_run("facewired", kg, out, sizeof out), 0);
    snprintf(flag, sizeof flag, "--gallery-key=%s", key);

    CHECK(start_server(flag) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    float a[128], b[128];
    tu_unit_desc(a, 0, 0.5f);
    tu_unit_desc(b, 1, 0.5f);
    uint64_t ida = 0, idb = 0;
    resp r;
    CHECK(enroll_desc(fd, "alicesecret", "door 3", a, &ida, &r) == 0);
    tu_resp_free(&r);
    CHECK(enroll_desc(fd, "bob", "", b, &idb, &r) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(ida, 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    /* on disk: the encrypted format, and not the subject's name */
    snprintf(path, sizeof path, "%s/gallery.log", data_dir);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    size_t n = f ? fread(out, 1, sizeof out, f) : 0;
    if (f)
        fclose(f);
    CHECK(n > 8 && memcmp(out, "FWGLOGE1", 8) == 0);
    CHECK(memmem(out, n, "alicesecret", 11) == NULL);

    CHECK(start_server(flag) == 0);
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    buf *q = buf_new();
    CHECK(q);
    tu_put_desc(&q->w, a);
    fw_put_u16(&q->w, 1);
    fw_put_u8(&q->w, 0);
    fw_put_f32(&q->w, 0);
    CHECK(roundtrip(fd, FW_OP_IDENTIFY, q->b, q->w.len, &r) == 0);
    free(q);
    ident id;
    CHECK_MSG(r.status == FW_STATUS_OK, "IDENTIFY: %u %s", r.status, r.msg);
    CHECK(parse_ident(&r, &id) == 0);
    tu_resp_free(&r);
    CHECK_EQ_INT(id.n, 1);
    CHECK_EQ_INT(id.nm[0], 1);
    CHECK_EQ_STR(id.subject[0][0], "alicesecret");
    CHECK_EQ_INT(id.id[0][0], ida);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    const char *args[] = { "--listen", "127.0.0.1:0", "--models", "/nonexistent/facewire-models",
                           "--data", data_dir, "--gallery-key", other, NULL };
    CHECK_EQ_INT(tu_run("facewired", args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "cannot open the gallery: gallery.log: wrong --gallery-key (the key "
                     "check value does not match)"), "%s", out);
    args[6] = NULL;
    CHECK_EQ_INT(tu_run("facewired", args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "cannot open the gallery: gallery.log: the gallery is encrypted: start "
                     "with --gallery-key"), "%s", out);
    args[6] = "--gallery-key";
    args[7] = key;
    CHECK(chmod(key, 0644) == 0);
    CHECK_EQ_INT(tu_run("facewired", args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "--gallery-key: ") && strstr(out, key) &&
              strstr(out, "permissions 0644 are too open"), "%s", out);
}

static void cleanup(void)
{
    if (srv.pid > 0)
        tu_server_stop(&srv);
    if (data_dir[0])
        (void)tu_rmtree(data_dir);
    data_dir[0] = '\0';
}

#define T(name) static void name(void) { name##_body(); cleanup(); }
T(t_descriptor_roundtrip)
T(t_jpeg_inputs)
T(t_list_paging_and_restart)
T(t_list_page_cap)
T(t_concurrent_reads_and_writes)
T(t_malformed_bodies)
T(t_shutdown_waits_for_writes)
T(t_startup_refusals)
T(t_timed_out_enroll_not_written)
T(t_without_models)
T(t_identify_yields)
T(t_metrics)
T(t_gallery_key)

static const struct check_test tests[] = {
    CHECK_TEST(t_descriptor_roundtrip),
    CHECK_TEST(t_jpeg_inputs),
    CHECK_TEST(t_list_paging_and_restart),
    CHECK_TEST(t_list_page_cap),
    CHECK_TEST(t_concurrent_reads_and_writes),
    CHECK_TEST(t_malformed_bodies),
    CHECK_TEST(t_shutdown_waits_for_writes),
    CHECK_TEST(t_startup_refusals),
    CHECK_TEST(t_timed_out_enroll_not_written),
    CHECK_TEST(t_without_models),
    CHECK_TEST(t_identify_yields),
    CHECK_TEST(t_metrics),
    CHECK_TEST(t_disk_full),
    CHECK_TEST(t_gallery_key),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
