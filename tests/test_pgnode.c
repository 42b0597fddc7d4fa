/*
 * test_pgnode.c — one facewired with --gallery-url against a throw-away PostgreSQL
 * (tests/tu_pg.h): the server side of issue #9 as a client sees it, one node at a time
 * (tests/test_cluster*.c has several nodes behind HAProxy).
 *
 * The story, in one test because each step starts from the state the previous one left:
 *   1. the database is down when the node starts: it listens, /health is 503 "gallery
 *      loading", reads are refused UNAVAILABLE "gallery loading" with retry_after_ms (a partly
 *      loaded gallery would answer "no match" for faces that exist), ENROLL UNAVAILABLE too;
 *   2. the database comes up: the node loads (log line), /health turns 200;
 *   3. ENROLL by descriptor is OK (after COMMIT), IDENTIFY finds it once the follower applied
 *      it, GALLERY_INFO and INFO show the applied sequence, /metrics the PostgreSQL families;
 *      ENROLL from a JPEG (a worker computes the descriptor, then the write goes to the
 *      database) is found by IDENTIFY with another picture of the same person;
 *   4. the database stops: ENROLL and DELETE are UNAVAILABLE with retry_after_ms while
 *      IDENTIFY, LIST and GALLERY_INFO still answer from memory and /health stays 200 (no node
 *      can be fresher than one serving from memory then);
 *   5. the database starts again: ENROLL is OK again once the node reconnected (the client
 *      waits what retry_after_ms says, within a deadline), and every acknowledged face is there;
 *   6. DELETE by subject reaches memory the same way; SIGTERM stops the node cleanly;
 *   7. a new node on the same database loads what is there (binary COPY) and finds it.
 * The flags that exclude --gallery-url are in test_health.c (no database needed for them).
 *
 * Nothing sleeps to synchronise except waiting the retry_after_ms the server asks for; every
 * other wait is for a log line, a response, or a condition polled against a deadline.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/tu_data.h"
#include "tests/tu_http.h"
#include "tests/tu_pg.h"
#include "tests/tu_req.h"
#include "tests/tu_server.h"

static tu_server srv; /* large: static storage */
static tu_pg pg;

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- HTTP (the metrics port) --------------------------------------------------------------- */

/* GET path; the whole response, read until the server closes, into out. */
static int http_get(int port, const char *path, char *out, size_t cap)
{
    char req[128];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    if (n < 0 || (size_t)n >= sizeof req)
        return -1;
    return tu_http_exchange("127.0.0.1", port, req, (size_t)n, out, cap) < 0 ? -1 : 0;
}

/* ---- protocol ------------------------------------------------------------------------------ */

typedef struct resp {
    tu_resp r;
    int64_t retry_after; /* of an error body that carries one, else -1 */
} resp;

static uint32_t next_rid = 1;

static int roundtrip(int fd, uint8_t op, const void *body, size_t len, resp *out)
{
    uint32_t want = ++next_rid;
    fw_header h = tu_request(op, want, (uint32_t)len);
    h.deadline_ms = 600000; /* sanitizer builds are slow; the defaults are for production */
    out->retry_after = -1;
    if (tu_send_frame(fd, &h, body) != 0 || tu_read_resp(fd, &out->r) != 0)
        return -1;
    if (out->r.status != FW_STATUS_OK && out->r.len >= 2) {
        uint16_t n = fw_rd16(out->r.body);
        if ((uint32_t)n + 2 + 4 == out->r.len)
            out->retry_after = fw_rd32(out->r.body + 2 + n);
    }
    return out->r.rid == want ? 0 : -1;
}

static uint64_t rd64(const uint8_t *p)
{
    return ((uint64_t)fw_rd32(p) << 32) | fw_rd32(p + 4);
}

/* An IDENTIFY body: descriptor d, k = 1, no threshold. */
static void put_identify(fw_writer *w, const float *d)
{
    tu_put_desc(w, d);
    fw_put_u16(w, 1);
    fw_put_u8(w, 0);
    fw_put_f32(w, 0);
}

/* ENROLL subject with descriptor d; *id on OK. */
static int enroll(int fd, const char *subject, const float *d, uint64_t *id, resp *r)
{
    uint8_t b[1024];
    fw_writer w;
    fw_writer_init(&w, b, sizeof b);
    fw_put_str(&w, subject, strlen(subject));
    fw_put_bytes(&w, "meta", 4);
    tu_put_desc(&w, d);
    if (roundtrip(fd, FW_OP_ENROLL, b, w.len, r) != 0)
        return -1;
    if (r->r.status == FW_STATUS_OK) {
        if (r->r.len != 8)
            return -1;
        *id = rd64(r->r.body);
    }
    return 0;
}

/* IDENTIFY with descriptor d, k = 1: *found = 1 and the match when the nearest face is at
 * distance 0 (the descriptor itself). */
static int identify(int fd, const float *d, int *found, char *subject, size_t cap, uint64_t *id, resp *r)
{
    uint8_t b[1024];
    fw_writer w;
    fw_writer_init(&w, b, sizeof b);
    put_identify(&w, d);
    *found = 0;
    if (roundtrip(fd, FW_OP_IDENTIFY, b, w.len, r) != 0)
        return -1;
    if (r->r.status != FW_STATUS_OK)
        return 0;
    fw_reader rd;
    fw_reader_init(&rd, r->r.body, r->r.len);
    uint16_t nq = fw_get_u16(&rd);
    for (int c = 0; c < 4; c++)
        (void)fw_get_f32(&rd);
    uint16_t nm = fw_get_u16(&rd);
    if (rd.err || nq != 1 || nm > 1)
        return -1;
    if (nm == 1) {
        uint16_t sl = 0;
        const char *s = fw_get_str(&rd, &sl);
        uint64_t fid = fw_get_u64(&rd);
        float dist = fw_get_f32(&rd);
        if (!s || sl >= cap || rd.err)
            return -1;
        memcpy(subject, s, sl);
        subject[sl] = '\0';
        *id = fid;
        *found = dist == 0.0f;
    }
    return fw_reader_done(&rd) ? 0 : -1;
}

/* ENROLL (subject set) or IDENTIFY (k = 1, no threshold) of an eval picture. */
static int pic_request(int fd, const char *subject, const char *pic, resp *r)
{
    size_t bl;
    uint8_t *body = tu_pic_body(subject, pic, 1, &bl);
    if (!body)
        return -1;
    int rc = roundtrip(fd, subject ? FW_OP_ENROLL : FW_OP_IDENTIFY, body, bl, r);
    free(body);
    return rc;
}

/* Poll IDENTIFY of the picture until its one face's nearest match is face id (under 0.6). */
static int wait_identify_pic(int fd, const char *pic, uint64_t want_id)
{
    int64_t until = tu_now_ms() + tu_timeout_ms();
    while (tu_now_ms() < until) {
        resp r;
        if (pic_request(fd, NULL, pic, &r) != 0 || r.r.status != FW_STATUS_OK) {
            tu_resp_free(&r.r);
            return -1;
        }
        fw_reader rd;
        fw_reader_init(&rd, r.r.body, r.r.len);
        uint16_t nq = fw_get_u16(&rd);
        for (int c = 0; c < 4; c++)
            (void)fw_get_f32(&rd);
        uint16_t nm = fw_get_u16(&rd), sl = 0;
        int found = 0;
        if (!rd.err && nq == 1 && nm == 1 && fw_get_str(&rd, &sl)) {
            uint64_t id = fw_get_u64(&rd);
            float dist = fw_get_f32(&rd);
            found = !rd.err && id == want_id && dist < 0.6f;
        }
        tu_resp_free(&r.r);
        if (rd.err || nq != 1)
            return -1;
        if (found)
            return 0;
    }
    return -1;
}

/* Poll IDENTIFY until the descriptor is found with the given id (want 1) or is gone (want 0):
 * the node's own writes reach its memory through the follower, like everybody else's. */
static int wait_identify(int fd, const float *d, uint64_t want_id, int want)
{
    int64_t until = tu_now_ms() + tu_timeout_ms();
    while (tu_now_ms() < until) {
        resp r;
        char subject[160];
        uint64_t id = 0;
        int found = 0;
        int rc = identify(fd, d, &found, subject, sizeof subject, &id, &r);
        uint16_t st = r.r.status;
        tu_resp_free(&r.r);
        if (rc != 0 || st != FW_STATUS_OK)
            return -1;
        if (want ? found && id == want_id : !found)
            return 0;
    }
    return -1;
}

/* GALLERY_INFO: faces, subjects, bytes, last_seq. */
static int gallery_info(int fd, uint64_t v[4], resp *r)
{
    if (roundtrip(fd, FW_OP_GALLERY_INFO, NULL, 0, r) != 0)
        return -1;
    if (r->r.status != FW_STATUS_OK)
        return 0;
    if (r->r.len != 32)
        return -1;
    for (int i = 0; i < 4; i++)
        v[i] = rd64(r->r.body + 8 * i);
    return 0;
}

/* INFO's text, NUL-terminated, into out. */
static int info_text(int fd, char *out, size_t cap)
{
    resp r;
    if (roundtrip(fd, FW_OP_INFO, NULL, 0, &r) != 0 || r.r.status != FW_STATUS_OK || r.r.len >= cap) {
        tu_resp_free(&r.r);
        return -1;
    }
    memcpy(out, r.r.body, r.r.len);
    out[r.r.len] = '\0';
    tu_resp_free(&r.r);
    return 0;
}

/* A request that must be refused because the gallery is still loading. */
static int refused_loading(int fd, uint8_t op, const void *body, size_t len)
{
    resp r;
    if (roundtrip(fd, op, body, len, &r) != 0)
        return 0;
    int ok = r.r.status == FW_STATUS_UNAVAILABLE && strcmp(r.r.msg, "gallery loading") == 0 &&
             r.retry_after == 1000;
    if (!ok)
        fprintf(stderr, "  op 0x%02X: status %u \"%s\" retry_after %lld\n", op, r.r.status, r.r.msg,
                (long long)r.retry_after);
    tu_resp_free(&r.r);
    return ok;
}

/* ENROLL until OK within the deadline, waiting the retry_after_ms of each UNAVAILABLE. */
static int enroll_until_ok(int fd, const char *subject, const float *d, uint64_t *id, int *refusals)
{
    int64_t until = tu_now_ms() + tu_timeout_ms();
    *refusals = 0;
    while (tu_now_ms() < until) {
        resp r;
        if (enroll(fd, subject, d, id, &r) != 0) {
            tu_resp_free(&r.r);
            return -1;
        }
        uint16_t st = r.r.status;
        int64_t retry = r.retry_after;
        tu_resp_free(&r.r);
        if (st == FW_STATUS_OK)
            return 0;
        if (st != FW_STATUS_UNAVAILABLE || retry < 0)
            return -1;
        (*refusals)++;
        sleep_ms((uint32_t)(retry > 1000 ? 1000 : retry)); /* what the server asks of a client */
    }
    return -1;
}

/* ---- the test ------------------------------------------------------------------------------ */

static void t_pg_node_body(void)
{
    static char out[65536];
    static char text[16384];
    CHECK(tu_pg_init(&pg) == 0);
    CHECK(tu_pg_start(&pg) == 0); /* sets pg.url; the port stays across restarts */
    CHECK(tu_pg_stop(&pg) == 0);

    /* 1. the node starts while the database is down */
    const char *args[] = { "--workers", "1", "--gallery-url", pg.url, "--metrics-listen", "127.0.0.1:0",
                           "--health-max-lag-ms", "60000", "--models", tu_models_dir(), NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    int port = tu_server_metrics_port(&srv);
    CHECK(port > 0);
    CHECK(http_get(port, "/health", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 503 ", 13) == 0, "got: %.200s", out);
    CHECK_EQ_STR(tu_http_body(out), "gallery loading\n");
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    float a[128], b[128], c[128];
    tu_unit_desc(a, 0, 0.5f);
    tu_unit_desc(b, 1, 0.5f);
    tu_unit_desc(c, 2, 0.5f);
    uint8_t q[1024];
    fw_writer w;
    fw_writer_init(&w, q, sizeof q);
    put_identify(&w, a);
    CHECK(refused_loading(fd, FW_OP_IDENTIFY, q, w.len));
    CHECK(refused_loading(fd, FW_OP_GALLERY_INFO, NULL, 0));
    uint8_t lq[4] = { 0, 0, 0, 10 }; /* LIST: empty cursor, limit 10 */
    CHECK(refused_loading(fd, FW_OP_LIST, lq, sizeof lq));
    resp r;
    uint64_t ida = 0, idb = 0, idc = 0;
    CHECK(enroll(fd, "alice", a, &ida, &r) == 0);
    CHECK_MSG(r.r.status == FW_STATUS_UNAVAILABLE && r.retry_after > 0, "ENROLL with the database down: %u %s",
              r.r.status, r.r.msg);
    tu_resp_free(&r.r);
    CHECK(info_text(fd, text, sizeof text) == 0);
    CHECK(strstr(text, "\ngallery_store: postgresql\n") != NULL);
    CHECK_EQ_INT(tu_info_value(text, "gallery_pg_loaded"), 0);
    CHECK(strstr(text, "\nhealth: gallery loading\n") != NULL);

    /* 2. the database comes up: the node loads it */
    CHECK(tu_pg_start(&pg) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"gallery loaded from postgresql\""));
    CHECK(http_get(port, "/health", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %.200s", out);
    CHECK_EQ_STR(tu_http_body(out), "ok\n");

    /* 3. writes through PostgreSQL, reads from memory */
    int refusals = 0;
    CHECK(enroll_until_ok(fd, "alice", a, &ida, &refusals) == 0);
    CHECK(ida > 0);
    CHECK(wait_identify(fd, a, ida, 1) == 0);
    uint64_t gi[4] = { 0 };
    CHECK(gallery_info(fd, gi, &r) == 0);
    CHECK_EQ_INT(r.r.status, FW_STATUS_OK);
    tu_resp_free(&r.r);
    CHECK_EQ_INT(gi[0], 1);
    CHECK_EQ_INT(gi[1], 1);
    CHECK(gi[3] >= 1);
    CHECK(info_text(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "gallery_pg_loaded"), 1);
    CHECK_EQ_INT(tu_info_value(text, "gallery_pg_applied_seq"), (long long)gi[3]);
    CHECK(tu_info_value(text, "gallery_pg_head_seq") >= (long long)gi[3]);
    CHECK(tu_info_value(text, "gallery_pg_commits") >= 1);
    CHECK_EQ_INT(tu_info_value(text, "gallery_pg_writer_connected"), 1);
    CHECK_EQ_INT(tu_info_value(text, "gallery_pg_follower_connected"), 1);
    CHECK(strstr(text, "\ngallery_pg_writes_breaker: closed\n") != NULL);
    CHECK(strstr(text, "\nhealth: ok\n") != NULL);
    CHECK(http_get(port, "/metrics", out, sizeof out) == 0);
    char line[96];
    snprintf(line, sizeof line, "\nfacewire_gallery_pg_applied_seq %llu\n", (unsigned long long)gi[3]);
    CHECK_MSG(strstr(out, line) != NULL, "no%s", line);
    CHECK(strstr(out, "\nfacewire_gallery_pg_loaded 1\n") != NULL);
    CHECK(strstr(out, "\nfacewire_gallery_pg_connected{role=\"writer\"} 1\n") != NULL);
    CHECK(strstr(out, "\nfacewire_healthy 1\n") != NULL);
    /* a JPEG: the worker's descriptor is handed over to the database write */
    uint64_t ido = 0;
    CHECK(pic_request(fd, "obama", "barack_obama_1.jpg", &r) == 0);
    CHECK_MSG(r.r.status == FW_STATUS_OK && r.r.len == 8, "ENROLL JPEG: %u %s", r.r.status, r.r.msg);
    ido = rd64(r.r.body);
    tu_resp_free(&r.r);
    CHECK(ido > ida);
    CHECK(wait_identify_pic(fd, "barack_obama_2.jpg", ido) == 0);

    /* 4. the database stops: writes refused at once, reads go on from memory */
    CHECK(tu_pg_stop(&pg) == 0);
    CHECK(enroll(fd, "bob", b, &idb, &r) == 0);
    CHECK_MSG(r.r.status == FW_STATUS_UNAVAILABLE && r.retry_after > 0, "ENROLL with the database stopped: %u %s",
              r.r.status, r.r.msg);
    tu_resp_free(&r.r);
    uint8_t del[1 + 2 + 5] = { 1, 0, 5, 'a', 'l', 'i', 'c', 'e' }; /* DELETE subject "alice" */
    CHECK(roundtrip(fd, FW_OP_DELETE, del, sizeof del, &r) == 0);
    CHECK_MSG(r.r.status == FW_STATUS_UNAVAILABLE && r.retry_after > 0, "DELETE with the database stopped: %u %s",
              r.r.status, r.r.msg);
    tu_resp_free(&r.r);
    CHECK(wait_identify(fd, a, ida, 1) == 0);
    CHECK(roundtrip(fd, FW_OP_LIST, lq, sizeof lq, &r) == 0);
    CHECK_EQ_INT(r.r.status, FW_STATUS_OK);
    tu_resp_free(&r.r);
    CHECK(gallery_info(fd, gi, &r) == 0);
    CHECK_EQ_INT(r.r.status, FW_STATUS_OK);
    tu_resp_free(&r.r);
    CHECK_EQ_INT(gi[0], 2);
    CHECK(http_get(port, "/health", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %.200s", out);

    /* 5. the database is back: writes resume once the node has reconnected */
    CHECK(tu_pg_start(&pg) == 0);
    CHECK(enroll_until_ok(fd, "bob", b, &idb, &refusals) == 0);
    CHECK(enroll_until_ok(fd, "carol", c, &idc, &refusals) == 0);
    CHECK(idb != ida && idc != idb && idc != ida);
    CHECK(wait_identify(fd, b, idb, 1) == 0);
    CHECK(wait_identify(fd, c, idc, 1) == 0);
    CHECK(wait_identify(fd, a, ida, 1) == 0); /* nothing acknowledged was lost */
    CHECK(pg.running);
    CHECK(tu_pg_psql(&pg, "SELECT count(*) FROM fw_face", out, sizeof out) == 0);
    CHECK_EQ_STR(out, "4\n");

    /* 6. DELETE reaches memory through the follower too */
    CHECK(roundtrip(fd, FW_OP_DELETE, del, sizeof del, &r) == 0);
    CHECK_MSG(r.r.status == FW_STATUS_OK && r.r.len == 4 && fw_rd32(r.r.body) == 1, "DELETE: %u %s", r.r.status,
              r.r.msg);
    tu_resp_free(&r.r);
    CHECK(wait_identify(fd, a, 0, 0) == 0);
    uint64_t before[4];
    CHECK(gallery_info(fd, before, &r) == 0);
    tu_resp_free(&r.r);
    CHECK_EQ_INT(before[0], 3);
    CHECK(info_text(fd, text, sizeof text) == 0);
    CHECK(tu_info_value(text, "gallery_pg_reconnects") >= 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);

    /* 7. a new node loads the three faces there are (binary COPY), at the same sequence */
    CHECK(tu_server_start(&srv, args) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"gallery loaded from postgresql\" faces=3 "));
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(gallery_info(fd, gi, &r) == 0);
    CHECK_EQ_INT(r.r.status, FW_STATUS_OK);
    tu_resp_free(&r.r);
    CHECK_EQ_INT(gi[0], before[0]);
    CHECK_EQ_INT(gi[1], before[1]);
    CHECK_EQ_INT(gi[3], before[3]);
    CHECK(wait_identify(fd, b, idb, 1) == 0);
    CHECK(wait_identify(fd, c, idc, 1) == 0);
    CHECK(wait_identify(fd, a, 0, 0) == 0);
    CHECK(wait_identify_pic(fd, "barack_obama_3.jpg", ido) == 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_pg_node(void)
{
    t_pg_node_body();
    if (srv.pid > 0)
        tu_server_stop(&srv);
    tu_pg_destroy(&pg);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_pg_node),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
