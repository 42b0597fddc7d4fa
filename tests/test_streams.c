/*
 * test_streams.c — camera streams (issue 8) end to end, against bin/facewired started with
 * --enable-test-ops: ring overflow drops the oldest, the newest frame is analysed and the
 * ones before it counted as superseded, sequence gaps and reordering, fair turns between two
 * streams, fifo order, close and disconnect with frames buffered and a job waiting or running
 * (every slot freed: run under ASan), the memory cap, ordinary requests answered while a
 * stream floods, hostile STREAM_* bodies, and real faces (detect, identify) from
 * $FW_SHARED/eval with the models of $FW_MODELS.
 *
 * Determinism: one worker, held by TEST_HOLD until the test sends TEST_RELEASE. Everything
 * sent on one connection between the two is handled by the server before the release (the
 * loop reads a connection's frames in order), so which frames sit in which ring when the
 * worker frees up follows from what we sent, not from timing. The stream's "test" analysis
 * mode (zero faces, no models) keeps the server start fast under the sanitizers. Nothing
 * sleeps to synchronise; the one wait for a state (a stream job running) polls INFO.
 */
// run-under: tsan
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/streams.h"
#include "tests/check.h"
#include "tests/tu_req.h"
#include "tests/tu_server.h"

static tu_server srv; /* large: static storage, one server at a time */

/* Start with the test ops, one worker, no models, plus extra args (NULL-terminated). */
static int start(const char *a0, const char *a1)
{
    const char *args[16];
    int n = 0;
    args[n++] = "--enable-test-ops";
    args[n++] = "--workers";
    args[n++] = "1";
    args[n++] = "--models";
    args[n++] = "/nonexistent/facewire-models";
    if (a0)
        args[n++] = a0;
    if (a1)
        args[n++] = a1;
    args[n] = NULL;
    return tu_server_start(&srv, args);
}

static void cleanup(void)
{
    if (srv.pid > 0)
        tu_server_stop(&srv);
}

static int send_req(int fd, uint8_t op, uint32_t rid, uint8_t prio, const void *body, uint32_t len)
{
    fw_header h = tu_request(op, rid, len);
    h.priority = prio;
    return tu_send_frame(fd, &h, body);
}

/* ---- events and responses ------------------------------------------------------------------ */

typedef struct face {
    float box[4], score;
    int has_match;
    char subject[130];
    uint64_t face_id;
    float distance;
} face;

typedef struct event {
    uint8_t kind;
    uint32_t stream;
    uint64_t seq;          /* faces, error */
    uint16_t status;       /* error */
    char msg[200];         /* error */
    uint32_t width, height;
    uint16_t nfaces;
    face faces[8];
} event;

typedef struct stats {
    int final;
    uint64_t received, analysed, failed, overflow, superseded, deadline, memory, rate, gaps, ooo;
    uint32_t p50_us, p99_us;
    uint8_t pending;
} stats;

#define MAX_EVENTS 512
static event evs[MAX_EVENTS];
static int nevs;

static int parse_stats(fw_reader *r, stats *s)
{
    s->final = fw_get_u8(r);
    s->received = fw_get_u64(r);
    s->analysed = fw_get_u64(r);
    s->failed = fw_get_u64(r);
    s->overflow = fw_get_u64(r);
    s->superseded = fw_get_u64(r);
    s->deadline = fw_get_u64(r);
    s->memory = fw_get_u64(r);
    s->rate = fw_get_u64(r);
    s->gaps = fw_get_u64(r);
    s->ooo = fw_get_u64(r);
    s->p50_us = fw_get_u32(r);
    s->p99_us = fw_get_u32(r);
    s->pending = fw_get_u8(r);
    return r->err ? -1 : 0;
}

/* Parse an event body strictly; -1 if malformed. */
static int parse_event(const uint8_t *b, uint32_t len, event *e)
{
    fw_reader r;
    fw_reader_init(&r, b, len);
    memset(e, 0, sizeof *e);
    e->kind = fw_get_u8(&r);
    e->stream = fw_get_u32(&r);
    if (e->kind == FW_STREAM_EV_FACES) {
        e->seq = fw_get_u64(&r);
        (void)fw_get_u64(&r); /* capture ts */
        (void)fw_get_u32(&r); /* latency */
        e->width = fw_get_u32(&r);
        e->height = fw_get_u32(&r);
        e->nfaces = fw_get_u16(&r);
        for (int i = 0; i < e->nfaces && !r.err; i++) {
            face f;
            memset(&f, 0, sizeof f);
            for (int k = 0; k < 4; k++)
                f.box[k] = fw_get_f32(&r);
            f.score = fw_get_f32(&r);
            f.has_match = fw_get_u8(&r);
            if (f.has_match) {
                uint16_t n = 0;
                const char *s = fw_get_str(&r, &n);
                if (!s || n >= sizeof f.subject)
                    return -1;
                memcpy(f.subject, s, n);
                f.face_id = fw_get_u64(&r);
                f.distance = fw_get_f32(&r);
            }
            if (i < 8)
                e->faces[i] = f;
        }
    } else if (e->kind == FW_STREAM_EV_STATS) {
        stats s;
        if (parse_stats(&r, &s) != 0)
            return -1;
    } else if (e->kind == FW_STREAM_EV_ERROR) {
        e->seq = fw_get_u64(&r);
        e->status = fw_get_u16(&r);
        uint16_t n = 0;
        const char *s = fw_get_str(&r, &n);
        if (!s || n >= sizeof e->msg)
            return -1;
        memcpy(e->msg, s, n);
    } else {
        return -1;
    }
    return r.err || fw_reader_left(&r) ? -1 : 0;
}

/* Read frames until the response to rid; events seen meanwhile are appended to evs. The
 * response's status, and its body (malloc'd) when body is not NULL. -1 on a broken stream. */
static int wait_resp(int fd, uint32_t rid, uint16_t *status, uint8_t **body, uint32_t *len)
{
    for (;;) {
        fw_header h;
        uint8_t *b = NULL;
        if (tu_read_frame(fd, &h, &b) != 1)
            return -1;
        if (h.flags & FW_FLAG_EVENT) {
            if (h.opcode != FW_OP_STREAM_EVENT || h.request_id != 0 || nevs >= MAX_EVENTS ||
                parse_event(b, h.body_len, &evs[nevs]) != 0) {
                fprintf(stderr, "  bad event: op 0x%02x rid %u len %u\n", h.opcode, h.request_id, h.body_len);
                free(b);
                return -1;
            }
            nevs++;
            free(b);
            continue;
        }
        if (h.request_id != rid) {
            fprintf(stderr, "  unexpected response rid %u (waiting for %u)\n", h.request_id, rid);
            free(b);
            return -1;
        }
        *status = h.status;
        if (len)
            *len = h.body_len;
        if (body)
            *body = b;
        else
            free(b);
        return 0;
    }
}

/* Read until n events of `kind` are collected (in evs). Responses read meanwhile (a
 * TEST_HOLD's) are skipped. */
static int wait_events(int fd, int kind, int n)
{
    for (;;) {
        int have = 0;
        for (int i = 0; i < nevs; i++)
            have += evs[i].kind == kind;
        if (have >= n)
            return 0;
        fw_header h;
        uint8_t *b = NULL;
        if (tu_read_frame(fd, &h, &b) != 1)
            return -1;
        if (!(h.flags & FW_FLAG_EVENT)) {
            free(b);
            continue;
        }
        if (nevs >= MAX_EVENTS || parse_event(b, h.body_len, &evs[nevs]) != 0) {
            free(b);
            return -1;
        }
        nevs++;
        free(b);
    }
}

static int roundtrip(int fd, uint8_t op, uint32_t rid, const void *body, uint32_t len, uint16_t *status,
                     char *msg, size_t msgcap)
{
    uint8_t *b = NULL;
    uint32_t bl = 0;
    if (send_req(fd, op, rid, FW_PRIO_NORMAL, body, len) != 0 || wait_resp(fd, rid, status, &b, &bl) != 0)
        return -1;
    if (msg) {
        msg[0] = '\0';
        if (*status != FW_STATUS_OK)
            tu_error_message(b, bl, msg, msgcap);
    }
    free(b);
    return 0;
}

/* ---- stream requests ----------------------------------------------------------------------- */

typedef struct open_args {
    const char *name;
    uint8_t capacity, mode, policy;
    uint16_t min_face, max_fps;
    float max_distance;
    uint32_t max_age_ms;
    uint16_t stats_every;
    uint32_t sleep_ms;
    uint8_t prio;
} open_args;

static size_t open_body(const open_args *a, uint8_t *out, size_t cap)
{
    fw_writer w;
    fw_writer_init(&w, out, cap);
    fw_put_str(&w, a->name, strlen(a->name));
    fw_put_u8(&w, a->capacity);
    fw_put_u8(&w, a->mode);
    fw_put_u8(&w, a->policy);
    fw_put_u16(&w, a->min_face);
    fw_put_u16(&w, a->max_fps);
    fw_put_f32(&w, a->max_distance);
    fw_put_u32(&w, a->max_age_ms);
    fw_put_u16(&w, a->stats_every);
    fw_put_u32(&w, a->sleep_ms);
    return w.len;
}

/* A test-mode stream; returns its id, 0 on failure. */
static uint32_t open_stream(int fd, uint32_t rid, const open_args *a)
{
    uint8_t body[256];
    size_t n = open_body(a, body, sizeof body);
    uint16_t st;
    uint8_t *b = NULL;
    uint32_t bl = 0;
    if (send_req(fd, FW_OP_STREAM_OPEN, rid, a->prio, body, (uint32_t)n) != 0 ||
        wait_resp(fd, rid, &st, &b, &bl) != 0)
        return 0;
    uint32_t id = st == FW_STATUS_OK && bl == 4 ? fw_rd32(b) : 0;
    if (!id)
        fprintf(stderr, "  STREAM_OPEN: status %u\n", st);
    free(b);
    return id;
}

static open_args test_stream(const char *name, uint8_t capacity, uint8_t policy)
{
    open_args a = { name, capacity, FW_STREAM_MODE_TEST, policy, 0, 0, 0.0f, 0, 0, 0, FW_PRIO_NORMAL };
    return a;
}

static int send_frame(int fd, uint32_t id, uint64_t seq, const void *jpeg, uint32_t len)
{
    uint8_t *b = malloc(4 + 8 + 8 + 4 + (size_t)len);
    if (!b)
        return -1;
    fw_writer w;
    fw_writer_init(&w, b, 24 + (size_t)len);
    fw_put_u32(&w, id);
    fw_put_u64(&w, seq);
    fw_put_u64(&w, seq * 66666); /* capture ts: 15 fps */
    fw_put_bytes(&w, jpeg, len);
    int rc = send_req(fd, FW_OP_STREAM_FRAME, 0, FW_PRIO_NORMAL, b, (uint32_t)w.len);
    free(b);
    return rc;
}

static const uint8_t fake_jpeg[16] = { 0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xFF, 0xD9 };

static int close_stream(int fd, uint32_t rid, uint32_t id, stats *s)
{
    uint8_t body[4];
    fw_be32(body, id);
    uint16_t st;
    uint8_t *b = NULL;
    uint32_t bl = 0;
    if (send_req(fd, FW_OP_STREAM_CLOSE, rid, FW_PRIO_NORMAL, body, 4) != 0 || wait_resp(fd, rid, &st, &b, &bl) != 0)
        return -1;
    fw_reader r;
    fw_reader_init(&r, b, bl);
    int rc = st == FW_STATUS_OK && parse_stats(&r, s) == 0 && fw_reader_left(&r) == 0 ? 0 : -1;
    free(b);
    return rc;
}

static int hold(int fd, uint32_t rid) { return send_req(fd, FW_OP_TEST_HOLD, rid, FW_PRIO_NORMAL, NULL, 0); }

static int release(int fd, uint32_t rid)
{
    uint16_t st;
    if (send_req(fd, FW_OP_TEST_RELEASE, rid, FW_PRIO_NORMAL, NULL, 0) != 0 || wait_resp(fd, rid, &st, NULL, NULL) != 0)
        return -1;
    return st == FW_STATUS_OK ? 0 : -1;
}

/* The faces events of stream id, in arrival order: their sequence numbers into seqs. */
static int faces_seqs(uint32_t id, uint64_t *seqs, int cap)
{
    int n = 0;
    for (int i = 0; i < nevs; i++)
        if (evs[i].kind == FW_STREAM_EV_FACES && evs[i].stream == id && n < cap)
            seqs[n++] = evs[i].seq;
    return n;
}

static int info(int fd, uint32_t rid, char *buf, size_t cap)
{
    uint16_t st;
    uint8_t *b = NULL;
    uint32_t bl = 0;
    if (send_req(fd, FW_OP_INFO, rid, FW_PRIO_NORMAL, NULL, 0) != 0 || wait_resp(fd, rid, &st, &b, &bl) != 0 ||
        st != FW_STATUS_OK) {
        free(b);
        return -1;
    }
    size_t n = bl < cap - 1 ? bl : cap - 1;
    memcpy(buf, b, n);
    buf[n] = '\0';
    free(b);
    return 0;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* A whole eval picture (malloc'd), or NULL. */
static uint8_t *read_eval(const char *name, uint32_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/eval/%s", env_or("FW_SHARED", "../shared"), name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "  cannot read %s (set FW_SHARED)\n", path);
        return NULL;
    }
    uint8_t *b = malloc(16u << 20);
    size_t n = b ? fread(b, 1, 16u << 20, f) : 0;
    fclose(f);
    if (!b || n == 0) {
        free(b);
        return NULL;
    }
    *len = (uint32_t)n;
    return b;
}

/* ---- tests --------------------------------------------------------------------------------- */

/* Ten frames into a ring of four while the worker is held: six overflow (the oldest, 1-6),
 * the newest (10) is analysed when the worker frees up, 7-9 are superseded. */
static void t_overflow_and_newest_first_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    CHECK(hold(fd, 1) == 0);
    open_args a = test_stream("cam-a", 4, FW_STREAM_POLICY_RING);
    uint32_t id = open_stream(fd, 2, &a);
    CHECK(id != 0);
    for (uint64_t s = 1; s <= 10; s++)
        CHECK(send_frame(fd, id, s, fake_jpeg, sizeof fake_jpeg) == 0);
    char text[16384];
    CHECK(info(fd, 3, text, sizeof text) == 0);
    char line[256];
    snprintf(line, sizeof line, "stream_%u: name=cam-a mode=test policy=ring received=10 analysed=0 failed=0"
             " dropped_overflow=6 dropped_superseded=0", id);
    CHECK_MSG(strstr(text, line), "INFO lacks \"%s\":\n%s", line, text);
    CHECK(release(fd, 4) == 0);
    uint16_t st;
    CHECK(wait_resp(fd, 1, &st, NULL, NULL) == 0); /* the hold */
    CHECK_EQ_INT(st, FW_STATUS_OK);
    CHECK(wait_events(fd, FW_STREAM_EV_FACES, 1) == 0);
    uint64_t seqs[16];
    CHECK_EQ_INT(faces_seqs(id, seqs, 16), 1);
    CHECK_EQ_INT(seqs[0], 10);
    stats s;
    CHECK(close_stream(fd, 5, id, &s) == 0);
    CHECK_EQ_INT(s.final, 1);
    CHECK_EQ_INT(s.received, 10);
    CHECK_EQ_INT(s.analysed, 1);
    CHECK_EQ_INT(s.overflow, 6);
    CHECK_EQ_INT(s.superseded, 3);
    CHECK_EQ_INT(s.failed + s.deadline + s.memory + s.gaps + s.ooo + s.pending, 0);
    /* exactly one faces event: nothing else was analysed */
    CHECK_EQ_INT(faces_seqs(id, seqs, 16), 1);
    CHECK(info(fd, 6, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "streams_open"), 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* fifo analyses every frame, in order, even those that queued while the worker was held. */
static void t_fifo_in_order_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    CHECK(hold(fd, 1) == 0);
    open_args a = test_stream("recorded", 8, FW_STREAM_POLICY_FIFO);
    a.stats_every = 2;
    uint32_t id = open_stream(fd, 2, &a);
    CHECK(id != 0);
    for (uint64_t s = 1; s <= 5; s++)
        CHECK(send_frame(fd, id, s, fake_jpeg, sizeof fake_jpeg) == 0);
    CHECK(release(fd, 3) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_FACES, 5) == 0);
    uint64_t seqs[16];
    CHECK_EQ_INT(faces_seqs(id, seqs, 16), 5);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(seqs[i], i + 1);
    /* stats_every 2: a stats event after the 2nd and the 4th analysed frame */
    CHECK(wait_events(fd, FW_STREAM_EV_STATS, 2) == 0);
    stats s;
    CHECK(close_stream(fd, 4, id, &s) == 0);
    CHECK_EQ_INT(s.received, 5);
    CHECK_EQ_INT(s.analysed, 5);
    CHECK_EQ_INT(s.overflow + s.superseded + s.deadline + s.memory + s.failed + s.pending, 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Gaps and reordering are counted; ring drops a late frame at once, fifo keeps it in arrival
 * order. */
static void t_gaps_and_reordering_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    CHECK(hold(fd, 1) == 0);
    open_args ar = test_stream("ring", 8, FW_STREAM_POLICY_RING);
    open_args af = test_stream("fifo", 8, FW_STREAM_POLICY_FIFO);
    uint32_t r = open_stream(fd, 2, &ar), f = open_stream(fd, 3, &af);
    CHECK(r && f);
    static const uint64_t order[] = { 1, 2, 5, 4, 6, 9 }; /* gaps at 2->5 and 6->9, 4 is late */
    for (int i = 0; i < 6; i++) {
        CHECK(send_frame(fd, r, order[i], fake_jpeg, sizeof fake_jpeg) == 0);
        CHECK(send_frame(fd, f, order[i], fake_jpeg, sizeof fake_jpeg) == 0);
    }
    CHECK(release(fd, 4) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_FACES, 1 + 6) == 0);
    uint64_t seqs[16];
    CHECK_EQ_INT(faces_seqs(r, seqs, 16), 1);
    CHECK_EQ_INT(seqs[0], 9);
    CHECK_EQ_INT(faces_seqs(f, seqs, 16), 6);
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(seqs[i], order[i]);
    stats s;
    CHECK(close_stream(fd, 5, r, &s) == 0);
    CHECK_EQ_INT(s.gaps, 2);
    CHECK_EQ_INT(s.ooo, 1);
    CHECK_EQ_INT(s.analysed, 1);
    CHECK_EQ_INT(s.superseded, 5); /* the late 4 at once, 1 2 5 6 when 9 was taken */
    CHECK(close_stream(fd, 6, f, &s) == 0);
    CHECK_EQ_INT(s.gaps, 2);
    CHECK_EQ_INT(s.ooo, 1);
    CHECK_EQ_INT(s.analysed, 6);
    CHECK_EQ_INT(s.superseded, 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Two fifo streams whose frames all arrived while the worker was held, A's before B's: they
 * still take turns, A1 B1 A2 B2 ..., because a stream goes to the back of the queue after
 * each frame. */
static void t_fair_turns_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    CHECK(hold(fd, 1) == 0);
    open_args aa = test_stream("a", 8, FW_STREAM_POLICY_FIFO), ab = test_stream("b", 8, FW_STREAM_POLICY_FIFO);
    uint32_t a = open_stream(fd, 2, &aa), b = open_stream(fd, 3, &ab);
    CHECK(a && b);
    for (uint64_t s = 1; s <= 4; s++)
        CHECK(send_frame(fd, a, s, fake_jpeg, sizeof fake_jpeg) == 0);
    for (uint64_t s = 1; s <= 4; s++)
        CHECK(send_frame(fd, b, s, fake_jpeg, sizeof fake_jpeg) == 0);
    CHECK(release(fd, 4) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_FACES, 8) == 0);
    int k = 0;
    for (int i = 0; i < nevs; i++) {
        if (evs[i].kind != FW_STREAM_EV_FACES)
            continue;
        CHECK_MSG(evs[i].stream == (k % 2 == 0 ? a : b) && evs[i].seq == (uint64_t)(k / 2 + 1),
                  "event %d: stream %u seq %llu", k, evs[i].stream, (unsigned long long)evs[i].seq);
        k++;
    }
    CHECK_EQ_INT(k, 8);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* --stream-memory holds: 20000-byte frames into a 65536-byte budget; the fourth slot would
 * pass it, so the fourth and fifth frames are dropped (reason memory), nothing grows. */
static void t_memory_cap_body(void)
{
    CHECK(start("--stream-memory", "65536") == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    CHECK(hold(fd, 1) == 0);
    open_args a = test_stream("big", 16, FW_STREAM_POLICY_RING);
    uint32_t id = open_stream(fd, 2, &a);
    CHECK(id != 0);
    static uint8_t frame[20000];
    for (uint64_t s = 1; s <= 5; s++)
        CHECK(send_frame(fd, id, s, frame, sizeof frame) == 0);
    char text[16384];
    CHECK(info(fd, 3, text, sizeof text) == 0);
    CHECK_MSG(strstr(text, "\nstreams_buffer_bytes: 60000/65536\n"), "INFO:\n%s", text);
    CHECK(release(fd, 4) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_FACES, 1) == 0);
    uint64_t seqs[4];
    CHECK_EQ_INT(faces_seqs(id, seqs, 4), 1);
    CHECK_EQ_INT(seqs[0], 3);
    stats s;
    CHECK(close_stream(fd, 5, id, &s) == 0);
    CHECK_EQ_INT(s.received, 5);
    CHECK_EQ_INT(s.memory, 2);
    CHECK_EQ_INT(s.superseded, 2);
    CHECK_EQ_INT(s.analysed, 1);
    CHECK(info(fd, 6, text, sizeof text) == 0);
    CHECK_MSG(strstr(text, "\nstreams_buffer_bytes: 0/65536\n"), "INFO after close:\n%s", text);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Close with frames buffered and the stream's job waiting; disconnect with streams whose job
 * waits, and one whose job is running. Every buffer is freed (ASan's leak check at exit) and
 * the server goes on. */
static void t_close_and_disconnect_free_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    CHECK(hold(fd, 1) == 0);
    open_args a = test_stream("x", 8, FW_STREAM_POLICY_FIFO);
    uint32_t x = open_stream(fd, 2, &a);
    a.name = "y";
    uint32_t y = open_stream(fd, 3, &a);
    CHECK(x && y);
    for (uint64_t s = 1; s <= 3; s++) {
        CHECK(send_frame(fd, x, s, fake_jpeg, sizeof fake_jpeg) == 0);
        CHECK(send_frame(fd, y, s, fake_jpeg, sizeof fake_jpeg) == 0);
    }
    stats s;
    CHECK(close_stream(fd, 4, x, &s) == 0);
    CHECK_EQ_INT(s.received, 3);
    CHECK_EQ_INT(s.pending, 3);
    /* a frame for the closed stream is an error event, not a crash */
    CHECK(send_frame(fd, x, 4, fake_jpeg, sizeof fake_jpeg) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_ERROR, 1) == 0);
    CHECK_EQ_INT(evs[nevs - 1].status, FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(evs[nevs - 1].msg, "STREAM_FRAME: no such stream on this connection");

    /* a second connection: a slow stream whose job is running when it disconnects */
    int g = tu_connect_server(&srv);
    CHECK(g >= 0);
    open_args slow = test_stream("slow", 4, FW_STREAM_POLICY_RING);
    slow.sleep_ms = 300;
    uint32_t z = open_stream(g, 10, &slow);
    CHECK(z != 0);
    CHECK(send_frame(g, z, 1, fake_jpeg, sizeof fake_jpeg) == 0);
    CHECK(send_frame(g, z, 2, fake_jpeg, sizeof fake_jpeg) == 0);
    close(fd); /* y's job waits (the hold runs): cancelled, y freed */
    /* the hold's connection is gone; release it from g so z's job can run */
    CHECK(release(g, 11) == 0);
    char text[16384];
    int64_t polls = 0;
    for (;;) { /* wait for the state "z's job is running" (bounded by the read timeout) */
        CHECK(info(g, (uint32_t)(100 + polls++), text, sizeof text) == 0);
        if (tu_info_value(text, "op_stream_frame_in_flight") == 1)
            break;
        CHECK(polls < 100000);
    }
    close(g); /* z closed while its job runs: freed when the job finishes */
    int h = tu_connect_server(&srv);
    CHECK(h >= 0);
    for (;;) {
        CHECK(info(h, (uint32_t)(100 + polls++), text, sizeof text) == 0);
        if (tu_info_value(text, "op_stream_frame_in_flight") == 0 && tu_info_value(text, "streams_open") == 0)
            break;
        CHECK(polls < 200000);
    }
    CHECK_MSG(strstr(text, "\nstreams_buffer_bytes: 0/"), "INFO:\n%s", text);
    close(h);
    CHECK_EQ_INT(tu_server_stop(&srv), 0); /* under ASan: exit 0 means no leak */
}

/* Ordinary requests on the stream's own connection are answered while it floods: frames
 * never count as the connection's jobs, so reading never pauses for them. */
static void t_requests_during_flood_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    open_args a = test_stream("flood", 4, FW_STREAM_POLICY_RING);
    a.sleep_ms = 2;
    uint32_t id = open_stream(fd, 1, &a);
    CHECK(id != 0);
    static uint8_t frame[4096];
    uint8_t sleep0[4] = { 0, 0, 0, 0 };
    int answered = 0;
    for (int i = 1; i <= 400; i++) {
        CHECK(send_frame(fd, id, (uint64_t)i, frame, sizeof frame) == 0);
        if (i % 40 == 0) {
            uint16_t st;
            CHECK(send_req(fd, FW_OP_PING, (uint32_t)(1000 + i), FW_PRIO_NORMAL, "hi", 2) == 0);
            CHECK(wait_resp(fd, (uint32_t)(1000 + i), &st, NULL, NULL) == 0);
            CHECK_EQ_INT(st, FW_STATUS_OK);
            CHECK(send_req(fd, FW_OP_TEST_SLEEP, (uint32_t)(2000 + i), FW_PRIO_NORMAL, sleep0, 4) == 0);
            CHECK(wait_resp(fd, (uint32_t)(2000 + i), &st, NULL, NULL) == 0);
            CHECK_EQ_INT(st, FW_STATUS_OK);
            answered += 2;
        }
    }
    CHECK_EQ_INT(answered, 20);
    stats s;
    CHECK(close_stream(fd, 5, id, &s) == 0);
    CHECK_EQ_INT(s.received, 400);
    CHECK_EQ_INT(s.received,
                 s.analysed + s.failed + s.overflow + s.superseded + s.deadline + s.memory + s.rate + s.pending);
    CHECK(s.analysed >= 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Hostile STREAM_* bodies: the exact errors, and the server goes on. */
static void t_bad_input_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    uint16_t st;
    char msg[256];
    uint8_t body[256];
    open_args a = test_stream("ok", 4, FW_STREAM_POLICY_RING);
    size_t n = open_body(&a, body, sizeof body);

    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 1, body, 1, &st, msg, sizeof msg) == 0);
    CHECK_EQ_INT(st, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "STREAM_OPEN: truncated name");
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 2, body, (uint32_t)n - 1, &st, msg, sizeof msg) == 0);
    CHECK_EQ_STR(msg, "STREAM_OPEN: truncated body");
    body[n] = 0;
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 3, body, (uint32_t)n + 1, &st, msg, sizeof msg) == 0);
    CHECK_EQ_STR(msg, "STREAM_OPEN: 1 trailing bytes");
    a.capacity = 65;
    n = open_body(&a, body, sizeof body);
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 4, body, (uint32_t)n, &st, msg, sizeof msg) == 0);
    CHECK_EQ_STR(msg, "STREAM_OPEN: capacity must be 1-64, not 65");
    a.capacity = 4;
    a.policy = 2;
    n = open_body(&a, body, sizeof body);
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 5, body, (uint32_t)n, &st, msg, sizeof msg) == 0);
    CHECK_EQ_STR(msg, "STREAM_OPEN: policy 2 unknown (0 ring, 1 fifo)");
    a.policy = 0;
    a.name = "";
    n = open_body(&a, body, sizeof body);
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 6, body, (uint32_t)n, &st, msg, sizeof msg) == 0);
    CHECK_EQ_STR(msg, "STREAM_OPEN: name must be 1-64 bytes of UTF-8 without control characters");
    a.name = "cam\nstream_1: forged";
    n = open_body(&a, body, sizeof body);
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 9, body, (uint32_t)n, &st, msg, sizeof msg) == 0);
    CHECK_EQ_INT(st, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "STREAM_OPEN: name must be 1-64 bytes of UTF-8 without control characters");
    a.name = "ok";
    a.mode = FW_STREAM_MODE_DETECT; /* no models here */
    n = open_body(&a, body, sizeof body);
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 7, body, (uint32_t)n, &st, msg, sizeof msg) == 0);
    CHECK_EQ_INT(st, FW_STATUS_UNAVAILABLE);
    CHECK_EQ_STR(msg, "STREAM_OPEN: models not loaded");
    a.mode = 7;
    n = open_body(&a, body, sizeof body);
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 8, body, (uint32_t)n, &st, msg, sizeof msg) == 0);
    CHECK_EQ_STR(msg, "STREAM_OPEN: mode 7 unknown (0 detect, 1 identify)");

    /* sixteen streams per connection */
    a = test_stream("s", 1, FW_STREAM_POLICY_RING);
    for (uint32_t i = 0; i < FW_STREAMS_PER_CONN; i++)
        CHECK(open_stream(fd, 20 + i, &a) != 0);
    n = open_body(&a, body, sizeof body);
    CHECK(roundtrip(fd, FW_OP_STREAM_OPEN, 40, body, (uint32_t)n, &st, msg, sizeof msg) == 0);
    CHECK_EQ_INT(st, FW_STATUS_BUSY);
    CHECK_EQ_STR(msg, "STREAM_OPEN: this connection has 16 streams open");

    /* frames: truncated, empty JPEG, trailing bytes, unknown stream -> error events */
    uint8_t fb[64];
    memset(fb, 0, sizeof fb);
    CHECK(send_req(fd, FW_OP_STREAM_FRAME, 0, FW_PRIO_NORMAL, fb, 10) == 0);
    CHECK(send_req(fd, FW_OP_STREAM_FRAME, 0, FW_PRIO_NORMAL, fb, 24) == 0); /* id 0, len 0 */
    fw_be32(fb + 20, 2);
    CHECK(send_req(fd, FW_OP_STREAM_FRAME, 0, FW_PRIO_NORMAL, fb, 27) == 0); /* 2-byte JPEG + 1 */
    CHECK(send_frame(fd, 999999, 1, fake_jpeg, sizeof fake_jpeg) == 0);
    CHECK(roundtrip(fd, FW_OP_PING, 50, "x", 1, &st, NULL, 0) == 0);
    CHECK_EQ_INT(nevs, 4);
    CHECK_EQ_STR(evs[0].msg, "STREAM_FRAME: truncated body");
    CHECK_EQ_INT(evs[0].status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(evs[1].msg, "STREAM_FRAME: empty JPEG");
    CHECK_EQ_STR(evs[2].msg, "STREAM_FRAME: trailing bytes after the JPEG");
    CHECK_EQ_INT(evs[3].status, FW_STATUS_NOT_FOUND);
    CHECK_EQ_INT(evs[3].stream, 999999);

    /* close: bad body, unknown id, a stream of another connection */
    CHECK(roundtrip(fd, FW_OP_STREAM_CLOSE, 60, fb, 3, &st, msg, sizeof msg) == 0);
    CHECK_EQ_STR(msg, "STREAM_CLOSE: body must be a u32 stream id");
    int other = tu_connect_server(&srv);
    CHECK(other >= 0);
    uint8_t idb[4];
    fw_be32(idb, 1); /* fd's first stream */
    CHECK(roundtrip(other, FW_OP_STREAM_CLOSE, 61, idb, 4, &st, msg, sizeof msg) == 0);
    CHECK_EQ_INT(st, FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(msg, "STREAM_CLOSE: no such stream on this connection");
    close(other);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Real pictures with the models: a detect stream reports the face of an eval picture; an
 * identify stream names the enrolled subject with a different picture of her; a frame that is
 * not a JPEG comes back as a BAD_IMAGE error event carrying its sequence number. */
static void t_real_faces_body(void)
{
    const char *args[] = { "--workers", "1", "--models", env_or("FW_MODELS", "models"), NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    uint32_t l1 = 0, l2 = 0;
    uint8_t *p1 = read_eval("barack_obama_1.jpg", &l1), *p2 = read_eval("barack_obama_2.jpg", &l2);
    CHECK_MSG(p1 && p2, "eval pictures missing");

    /* ENROLL: str subject, bytes metadata, input (kind 0, bytes JPEG) */
    uint8_t *eb = malloc(64 + (size_t)l1);
    CHECK(eb != NULL);
    fw_writer w;
    fw_writer_init(&w, eb, 64 + (size_t)l1);
    fw_put_str(&w, "barack_obama", 12);
    fw_put_bytes(&w, NULL, 0);
    fw_put_u8(&w, 0);
    fw_put_bytes(&w, p1, l1);
    uint16_t st;
    uint8_t *rb = NULL;
    uint32_t rl = 0;
    CHECK(send_req(fd, FW_OP_ENROLL, 1, FW_PRIO_NORMAL, eb, (uint32_t)w.len) == 0);
    free(eb);
    CHECK(wait_resp(fd, 1, &st, &rb, &rl) == 0);
    CHECK_EQ_INT(st, FW_STATUS_OK);
    CHECK_EQ_INT(rl, 8);
    uint64_t face_id = ((uint64_t)fw_rd32(rb) << 32) | fw_rd32(rb + 4);
    free(rb);

    open_args ai = { "door", 4, FW_STREAM_MODE_IDENTIFY, FW_STREAM_POLICY_FIFO, 0, 0, 0.6f, 0, 0, 0, FW_PRIO_NORMAL };
    open_args ad = { "hall", 4, FW_STREAM_MODE_DETECT, FW_STREAM_POLICY_FIFO, 0, 0, 0.0f, 0, 0, 0, FW_PRIO_NORMAL };
    uint32_t si = open_stream(fd, 2, &ai), sd = open_stream(fd, 3, &ad);
    CHECK(si && sd);
    CHECK(send_frame(fd, si, 7, p2, l2) == 0);
    CHECK(send_frame(fd, sd, 1, fake_jpeg, sizeof fake_jpeg) == 0);
    CHECK(send_frame(fd, sd, 2, p1, l1) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_FACES, 2) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_ERROR, 1) == 0);
    for (int i = 0; i < nevs; i++) {
        const event *e = &evs[i];
        if (e->kind == FW_STREAM_EV_ERROR) {
            CHECK_EQ_INT(e->stream, sd);
            CHECK_EQ_INT(e->seq, 1);
            CHECK_EQ_INT(e->status, FW_STATUS_BAD_IMAGE);
        } else if (e->kind == FW_STREAM_EV_FACES && e->stream == si) {
            CHECK_EQ_INT(e->seq, 7);
            CHECK(e->width > 0 && e->height > 0);
            CHECK_EQ_INT(e->nfaces, 1);
            CHECK(e->faces[0].has_match);
            CHECK_EQ_STR(e->faces[0].subject, "barack_obama");
            CHECK_EQ_INT(e->faces[0].face_id, face_id);
            CHECK(e->faces[0].distance < 0.6f);
        } else if (e->kind == FW_STREAM_EV_FACES && e->stream == sd) {
            CHECK_EQ_INT(e->seq, 2);
            CHECK_EQ_INT(e->nfaces, 1);
            CHECK(!e->faces[0].has_match);
            CHECK(e->faces[0].box[2] > 20 && e->faces[0].box[0] + e->faces[0].box[2] <= (float)e->width + 1);
        }
    }
    stats s;
    CHECK(close_stream(fd, 4, sd, &s) == 0);
    CHECK_EQ_INT(s.received, 2);
    CHECK_EQ_INT(s.analysed, 1);
    CHECK_EQ_INT(s.failed, 1);
    free(p1);
    free(p2);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* fwcat stream: a folder of JPEGs (sorted by name) and a Motion-JPEG file, against the test
 * mode; every frame is accounted for in the final statistics line, one JSON line per event. */
static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int bad = fwrite(p, 1, n, f) != n;
    return fclose(f) != 0 || bad ? -1 : 0;
}

static long long json_int(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static void t_fwcat_stream_body(void)
{
    char dir[] = "/tmp/fw_test_streams.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256], port[16];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/f%d.jpg", dir, i);
        CHECK(write_bytes(path, fake_jpeg, sizeof fake_jpeg) == 0);
    }
    snprintf(path, sizeof path, "%s/notes.txt", dir); /* not a JPEG name: skipped */
    CHECK(write_bytes(path, "x", 1) == 0);
    uint8_t mjpeg[3 * sizeof fake_jpeg];
    for (int i = 0; i < 3; i++)
        memcpy(mjpeg + i * sizeof fake_jpeg, fake_jpeg, sizeof fake_jpeg);
    char mpath[256];
    snprintf(mpath, sizeof mpath, "%s/clip.mjpeg", dir);
    CHECK(write_bytes(mpath, mjpeg, sizeof mjpeg) == 0);

    CHECK(start(NULL, NULL) == 0);
    snprintf(port, sizeof port, "%d", srv.port);
    static char out[65536];
    const char *a1[] = { "-h", srv.host, "-p", port, "--json", "stream", "--frames", dir, "--fps", "500",
                         "--count", "7", "--fifo", "--capacity", "64", "--test-sleep", "0", "--name", "dir",
                         "--linger-ms", "20000", NULL }; /* returns as soon as seq 7 is in */
    int rc = tu_run("fwcat", a1, out, sizeof out);
    CHECK_MSG(rc == 0, "fwcat exit %d: %s", rc, out);
    /* fifo, 64 slots, 7 tiny frames: every one analysed, in order, then the final line */
    int faces = 0;
    const char *last = NULL;
    for (const char *l = out; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncmp(l, "{\"type\":\"faces\",", strlen("{\"type\":\"faces\",")) == 0) {
            faces++;
            CHECK_MSG(json_int(l, "seq") == faces, "seq out of order: %.80s", l);
        }
        if (*l == '{')
            last = l;
    }
    CHECK_EQ_INT(faces, 7);
    static const char final_prefix[] = "{\"type\":\"stats\",\"final\":true,";
    CHECK_MSG(last && strncmp(last, final_prefix, sizeof final_prefix - 1) == 0, "output:\n%s", out);
    CHECK_EQ_INT(json_int(last, "received"), 7);
    CHECK_EQ_INT(json_int(last, "analysed"), 7);
    CHECK_EQ_INT(json_int(last, "dropped"), 0);
    CHECK_EQ_INT(json_int(last, "dropped_at_source"), 0);

    const char *a2[] = { "-h", srv.host, "-p", port, "--json", "stream", "--frames", mpath, "--fps", "500",
                         "--fifo", "--test-sleep", "0", "--linger-ms", "20000", NULL };
    rc = tu_run("fwcat", a2, out, sizeof out);
    CHECK_MSG(rc == 0, "fwcat exit %d: %s", rc, out);
    last = strstr(out, "{\"type\":\"stats\",\"final\":true,");
    CHECK_MSG(last != NULL, "output:\n%s", out);
    CHECK_EQ_INT(json_int(last, "received"), 3); /* the Motion-JPEG file split in three */

    const char *a3[] = { "-h", srv.host, "-p", port, "stream", "--frames", dir, NULL };
    rc = tu_run("fwcat", a3, out, sizeof out);
    CHECK_EQ_INT(rc, 2);
    CHECK_MSG(strstr(out, "usage: stream --frames DIR|FILE --fps F"), "output: %s", out);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
    CHECK(tu_rmtree(dir) == 0);
}

static void t_real_faces(void) { t_real_faces_body(); cleanup(); }
static void t_fwcat_stream(void) { t_fwcat_stream_body(); cleanup(); }
/* max_fps thins the stream on the capture clock: at 15 fps in, max 5 out, of the frames
 * captured 66.666 ms apart (send_frame: seq * 66666 us) only every third one is kept. */
static void t_max_fps_body(void)
{
    CHECK(start(NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    nevs = 0;
    CHECK(hold(fd, 1) == 0);
    open_args a = test_stream("slowed", 64, FW_STREAM_POLICY_FIFO);
    a.max_fps = 5;
    uint32_t id = open_stream(fd, 2, &a);
    CHECK(id != 0);
    for (uint64_t s = 1; s <= 12; s++)
        CHECK(send_frame(fd, id, s, fake_jpeg, sizeof fake_jpeg) == 0);
    CHECK(release(fd, 3) == 0);
    CHECK(wait_events(fd, FW_STREAM_EV_FACES, 4) == 0);
    uint64_t seqs[16];
    CHECK_EQ_INT(faces_seqs(id, seqs, 16), 4);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(seqs[i], 1 + 3 * i); /* 1, 4, 7, 10: 200 ms of capture time apart */
    stats s;
    CHECK(close_stream(fd, 4, id, &s) == 0);
    CHECK_EQ_INT(s.received, 12);
    CHECK_EQ_INT(s.rate, 8);
    CHECK_EQ_INT(s.analysed, 4);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_max_fps(void) { t_max_fps_body(); cleanup(); }
static void t_overflow_and_newest_first(void) { t_overflow_and_newest_first_body(); cleanup(); }
static void t_fifo_in_order(void) { t_fifo_in_order_body(); cleanup(); }
static void t_gaps_and_reordering(void) { t_gaps_and_reordering_body(); cleanup(); }
static void t_fair_turns(void) { t_fair_turns_body(); cleanup(); }
static void t_memory_cap(void) { t_memory_cap_body(); cleanup(); }
static void t_close_and_disconnect_free(void) { t_close_and_disconnect_free_body(); cleanup(); }
static void t_requests_during_flood(void) { t_requests_during_flood_body(); cleanup(); }
static void t_bad_input(void) { t_bad_input_body(); cleanup(); }

static const struct check_test tests[] = {
    CHECK_TEST(t_overflow_and_newest_first),
    CHECK_TEST(t_fifo_in_order),
    CHECK_TEST(t_gaps_and_reordering),
    CHECK_TEST(t_fair_turns),
    CHECK_TEST(t_memory_cap),
    CHECK_TEST(t_max_fps),
    CHECK_TEST(t_close_and_disconnect_free),
    CHECK_TEST(t_requests_during_flood),
    CHECK_TEST(t_bad_input),
    CHECK_TEST(t_real_faces),
    CHECK_TEST(t_fwcat_stream),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
