/*
 * streams.c — camera streams (see streams.h for the model, docs/protocol.md for the bodies,
 * docs/scheduling.md for how stream jobs share the workers with requests).
 *
 * The ring. slots[] is a circular array of `capacity` frame slots; `head` is the oldest frame
 * and `count` frames follow it in arrival order. A slot's buffer is kept when its frame
 * leaves, so a camera whose frames stay about the same size stops allocating after its first
 * `capacity` frames. A full ring drops its oldest frame to make room (reason "overflow").
 *
 * One job per stream. A stream with frames and no job submits one owned job (sched.h) at
 * the stream's priority. When a worker takes it, start() chooses the frame then: with
 * policy ring the newest, and every older frame is dropped as superseded; with fifo the
 * oldest. The chosen slot's buffer is swapped with the stream's work buffer (no copy) and the
 * worker reads the work buffer, which nothing else touches until the job finishes. When it
 * finishes, the result goes out as an event and, if frames are waiting, the next job is
 * submitted: to the tail of its priority's queue, behind every other stream's job, so streams
 * take turns (round robin) whatever their frame rates.
 *
 * Out-of-order frames (a sequence number not above the highest seen) are counted; policy ring
 * drops them at once as superseded (a newer frame exists), fifo keeps them in arrival order.
 * Gaps (a sequence number more than one above the highest seen) are counted once per jump.
 *
 * Accounting: received = analysed + failed + dropped (overflow, superseded, deadline,
 * memory, rate) + pending (frames in the ring or being analysed). The stats record carries every
 * term, so a client (and tests/test_streams.c) can check it.
 */
#include "server/streams.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/galidx.h"
#include "server/hist.h"

enum { DROP_OVERFLOW = 0, DROP_SUPERSEDED, DROP_DEADLINE, DROP_MEMORY, DROP_RATE, NDROPS };
static const char *const drop_names[NDROPS] = { "overflow", "superseded", "deadline", "memory", "rate" };
static const char *const mode_names[] = { "detect", "identify", "test" };

typedef struct frame_slot {
    uint8_t *buf;          /* owned; grows, never shrinks while the stream lives */
    uint32_t cap, len;
    uint64_t seq, capture_us;
    uint64_t recv_us;      /* uv_hrtime at receipt, for the receipt-to-result latency */
} frame_slot;

typedef struct fw_stream fw_stream;
struct fw_stream {
    fw_streams *sx;
    fw_conn *conn;         /* NULL once closed (then only a running job keeps it alive) */
    uint32_t id;
    char name[FW_STREAM_NAME_MAX + 1];
    uint8_t mode, policy, prio;
    uint16_t min_face, stats_every;
    uint16_t max_fps;      /* 0 = no limit, see stream_frame() */
    int have_kept;
    uint64_t kept_capture_us; /* capture ts of the last frame let through the rate limit */
    float max_distance;    /* identify: INFINITY = no threshold */
    uint32_t max_age_ms, test_sleep_ms;

    frame_slot slots[FW_STREAM_RING_MAX];
    uint8_t capacity, head, count;
    frame_slot work;       /* the frame being analysed; its buffer is the worker's while job runs */
    int taken;             /* work holds a frame taken by the running job */
    fw_job *job;           /* waiting or running, NULL when idle; owned by the scheduler */
    uint64_t bytes;        /* buffer bytes of this stream (slots + work), counted in sx->bytes */

    uint64_t received, analysed, failed, dropped[NDROPS], seq_gaps, out_of_order;
    int have_seq;
    uint64_t max_seq;
    fw_hist latency_us;

    fw_stream *prev, *next;  /* sx's list of every stream, open or closing */
};

struct fw_streams {
    fw_streams_options opt;
    fw_stream *head;
    uint32_t open;          /* streams with a connection */
    uint32_t next_id;
    uint64_t bytes;         /* all frame buffers, <= opt.memory_cap */
    uint64_t opened_total, frames_total, bad_frames;
};

static void stream_kick(fw_stream *st);

/* ---- stream lifetime ------------------------------------------------------------------------ */

static void stream_unlink_free(fw_stream *st)
{
    fw_streams *sx = st->sx;
    for (int i = 0; i < FW_STREAM_RING_MAX; i++)
        free(st->slots[i].buf);
    free(st->work.buf);
    sx->bytes -= st->bytes;
    if (st->prev)
        st->prev->next = st->next;
    else
        sx->head = st->next;
    if (st->next)
        st->next->prev = st->prev;
    free(st);
}

/* Close: no more events. A waiting job is cancelled; a running one keeps the stream (its
 * worker reads st->work) until its finish frees it. */
static void stream_close(fw_stream *st)
{
    if (!st->conn)
        return;
    st->conn = NULL;
    st->sx->open--;
    if (st->job && fw_sched_cancel(st->sx->opt.sched, st->job) == 0)
        st->job = NULL;
    if (!st->job)
        stream_unlink_free(st);
}

/* Names appear in INFO lines and /metrics labels: UTF-8 without NUL or control characters,
 * so a name can never start a line of its own there. */
static int name_valid(const char *s, uint16_t n)
{
    if (n < 1 || n > FW_STREAM_NAME_MAX || !galidx_subject_valid(s, n))
        return 0;
    for (uint16_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
            return 0;
    return 1;
}

static fw_stream *stream_find(fw_streams *sx, fw_conn *c, uint32_t id)
{
    for (fw_stream *st = sx->head; st; st = st->next)
        if (st->id == id && st->conn == c)
            return st;
    return NULL;
}

/* ---- events ---------------------------------------------------------------------------------- */

static uint64_t now_us(void) { return uv_hrtime() / 1000; }

static uint32_t clamp_u32(uint64_t v) { return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v; }

static uint8_t pending_frames(const fw_stream *st) { return (uint8_t)(st->count + (st->taken ? 1 : 0)); }

/* The stats record (docs/protocol.md); out has FW_STREAM_STATS_LEN bytes. */
static void put_stats(const fw_stream *st, int final, uint8_t *out)
{
    fw_writer w;
    fw_writer_init(&w, out, FW_STREAM_STATS_LEN);
    fw_put_u8(&w, final ? 1 : 0);
    fw_put_u64(&w, st->received);
    fw_put_u64(&w, st->analysed);
    fw_put_u64(&w, st->failed);
    for (int k = 0; k < NDROPS; k++)
        fw_put_u64(&w, st->dropped[k]);
    fw_put_u64(&w, st->seq_gaps);
    fw_put_u64(&w, st->out_of_order);
    fw_put_u32(&w, clamp_u32(fw_hist_quantile(&st->latency_us, 0.5)));
    fw_put_u32(&w, clamp_u32(fw_hist_quantile(&st->latency_us, 0.99)));
    fw_put_u8(&w, pending_frames(st));
}

static void send_stats(fw_stream *st)
{
    uint8_t ev[5 + FW_STREAM_STATS_LEN];
    ev[0] = FW_STREAM_EV_STATS;
    fw_be32(ev + 1, st->id);
    put_stats(st, 0, ev + 5);
    fw_conn_send_event(st->conn, FW_OP_STREAM_EVENT, ev, sizeof ev);
}

/* An error event: kind, stream id, seq, u16 status, str message. */
static void send_error(fw_conn *c, uint32_t id, uint64_t seq, uint16_t status, const char *msg)
{
    uint8_t ev[1 + 4 + 8 + 2 + 2 + 200];
    size_t n = strnlen(msg, 200);
    fw_writer w;
    fw_writer_init(&w, ev, sizeof ev);
    fw_put_u8(&w, FW_STREAM_EV_ERROR);
    fw_put_u32(&w, id);
    fw_put_u64(&w, seq);
    fw_put_u16(&w, status);
    fw_put_str(&w, msg, n);
    fw_conn_send_event(c, FW_OP_STREAM_EVENT, ev, w.len);
}

/* ---- the ring ------------------------------------------------------------------------------- */

static frame_slot *ring_at(fw_stream *st, int i) { return &st->slots[(st->head + i) % st->capacity]; }

static void ring_pop_oldest(fw_stream *st)
{
    st->head = (uint8_t)((st->head + 1) % st->capacity);
    st->count--;
}

/* Make sure slot s can hold len bytes within the memory cap; 0, or -1 (frame to be dropped). */
static int slot_reserve(fw_stream *st, frame_slot *s, uint32_t len)
{
    fw_streams *sx = st->sx;
    if (s->cap >= len)
        return 0;
    uint64_t grow = (uint64_t)len - s->cap;
    if (sx->bytes + grow > sx->opt.memory_cap)
        return -1;
    uint8_t *p = realloc(s->buf, len);
    if (!p)
        return -1;
    s->buf = p;
    s->cap = len;
    st->bytes += grow;
    sx->bytes += grow;
    return 0;
}

static void stream_frame(fw_stream *st, uint64_t seq, uint64_t capture_us, const uint8_t *jpeg, uint32_t len)
{
    st->received++;
    int late = st->have_seq && seq <= st->max_seq;
    if (late) {
        st->out_of_order++;
    } else {
        if (st->have_seq && seq > st->max_seq + 1)
            st->seq_gaps++;
        st->have_seq = 1;
        st->max_seq = seq;
    }
    if (late && st->policy == FW_STREAM_POLICY_RING) {
        st->dropped[DROP_SUPERSEDED]++; /* a newer frame has already arrived */
        return;
    }
    /* max_fps thins the stream on the camera's own clock: a frame captured less than
     * 1/max_fps after the last frame let through is dropped at once. No timer, and the
     * outcome depends only on the timestamps the camera sent. An eighth of the interval is
     * forgiven, for the jitter of camera clocks: 15 fps thinned to 5 keeps every third frame
     * even when the third comes a microsecond early. */
    if (st->max_fps && !late) {
        uint64_t gap = 1000000u / st->max_fps;
        gap -= gap / 8;
        if (st->have_kept && capture_us >= st->kept_capture_us && capture_us - st->kept_capture_us < gap) {
            st->dropped[DROP_RATE]++;
            return;
        }
        st->have_kept = 1;
        st->kept_capture_us = capture_us;
    }
    /* the slot this frame goes to: the next free one, or the oldest frame's when full */
    int full = st->count == st->capacity;
    frame_slot *s = full ? ring_at(st, 0) : ring_at(st, st->count);
    if (slot_reserve(st, s, len) != 0) {
        st->dropped[DROP_MEMORY]++;
        return;
    }
    if (full) {
        st->dropped[DROP_OVERFLOW]++;
        ring_pop_oldest(st);
    }
    memcpy(s->buf, jpeg, len);
    s->len = len;
    s->seq = seq;
    s->capture_us = capture_us;
    s->recv_us = now_us();
    st->count++;
    stream_kick(st);
}

/* ---- the stream's job ------------------------------------------------------------------------ */

/* Dispatch: pick the frame now (see the header comment). */
static int job_start(fw_job *j)
{
    fw_stream *st = j->owner_arg;
    uint64_t now = now_us();
    if (st->max_age_ms) {
        while (st->count && now - ring_at(st, 0)->recv_us > (uint64_t)st->max_age_ms * 1000) {
            ring_pop_oldest(st);
            st->dropped[DROP_DEADLINE]++;
        }
    }
    if (st->count == 0) {
        st->job = NULL; /* freed by the scheduler, no finish */
        return -1;
    }
    int pick = 0;
    if (st->policy == FW_STREAM_POLICY_RING) {
        pick = st->count - 1;
        st->dropped[DROP_SUPERSEDED] += (uint64_t)(st->count - 1);
    }
    frame_slot *s = ring_at(st, pick);
    frame_slot tmp = st->work;   /* swap buffers: the slot keeps the old work buffer */
    st->work = *s;
    s->buf = tmp.buf;
    s->cap = tmp.cap;
    s->len = 0;
    if (st->policy == FW_STREAM_POLICY_RING) {
        st->count = 0;
        st->head = 0;
    } else {
        ring_pop_oldest(st);
    }
    st->taken = 1;
    j->args.stream.jpeg = st->work.buf;
    j->args.stream.len = st->work.len;
    return 0;
}

/* The faces event: the worker wrote width, height and the faces after a prefix left free;
 * the loop fills the prefix (kind, stream id, seq, capture ts, latency) in place. */
#define FACES_PREFIX (1 + 4 + 8 + 8 + 4)

static void job_finish(fw_job *j, uint16_t status)
{
    fw_stream *st = j->owner_arg;
    int taken = st->taken;
    st->job = NULL;
    st->taken = 0;
    if (!st->conn) {
        stream_unlink_free(st); /* closed while its job ran */
        return;
    }
    if (!taken) {
        /* refused before it ran (BUSY, UNAVAILABLE, SHUTTING_DOWN): the frames wait in the
         * ring, and the next frame to arrive tries again. Resubmitting here would spin. */
        return;
    }
    if (status == FW_STATUS_OK && j->out.body && j->out.len >= FACES_PREFIX) {
        uint64_t lat = now_us() - st->work.recv_us;
        st->analysed++;
        fw_hist_record(&st->latency_us, lat);
        fw_writer w;
        fw_writer_init(&w, j->out.body, FACES_PREFIX);
        fw_put_u8(&w, FW_STREAM_EV_FACES);
        fw_put_u32(&w, st->id);
        fw_put_u64(&w, st->work.seq);
        fw_put_u64(&w, st->work.capture_us);
        fw_put_u32(&w, clamp_u32(lat));
        fw_conn_send_event(st->conn, FW_OP_STREAM_EVENT, j->out.body, j->out.len);
        if (st->stats_every && st->analysed % st->stats_every == 0)
            send_stats(st);
    } else {
        st->failed++;
        send_error(st->conn, st->id, st->work.seq, status == FW_STATUS_OK ? FW_STATUS_INTERNAL : status,
                   status == FW_STATUS_OK ? "empty result" : j->out.msg[0] ? j->out.msg : fw_status_name(status));
    }
    stream_kick(st);
}

static const fw_job_owner stream_owner = { job_start, job_finish };

static void stream_kick(fw_stream *st)
{
    fw_streams *sx = st->sx;
    if (st->job || !st->conn || st->count == 0)
        return;
    fw_job *j = fw_job_new(0);
    if (!j)
        return; /* the next frame tries again */
    j->hdr.magic = FW_MAGIC;
    j->hdr.version = FW_PROTO_VERSION;
    j->hdr.opcode = FW_OP_STREAM_FRAME;
    j->hdr.priority = st->prio;
    j->op = sx->opt.frame_op;
    j->op_index = sx->opt.frame_op_index;
    j->env = sx->opt.env;
    j->budget_ms = 0; /* frame ages are the stream's business (max_age_ms, checked in start) */
    j->args.stream.mode = st->mode;
    j->args.stream.min_face = st->min_face;
    j->args.stream.max_distance = st->max_distance;
    j->args.stream.sleep_ms = st->test_sleep_ms;
    j->owner = &stream_owner;
    j->owner_arg = st;
    st->job = j;
    fw_sched_submit(sx->opt.sched, NULL, j); /* a refusal finishes it inside: st->job = NULL */
}

/* ---- work (pool thread) ---------------------------------------------------------------------- */

static void work_fail(fw_job *j, uint16_t status, const char *msg)
{
    j->out.status = status;
    snprintf(j->out.msg, sizeof j->out.msg, "%s", msg);
}

void fw_streams_work(fw_job *j)
{
    const fw_gallery_env *env = j->env;
    const fw_face *faces = NULL;
    int n = 0, w = 0, h = 0;
    uint8_t mode = j->args.stream.mode;
    fw_gallery_match *m = NULL;
    int *counts = NULL;
    float *queries = NULL;
    int *keep = NULL;
    uint8_t *body = NULL;
    char err[160];

    if (mode == FW_STREAM_MODE_TEST) {
        struct timespec ts = { (time_t)(j->args.stream.sleep_ms / 1000),
                               (long)(j->args.stream.sleep_ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    } else {
        n = fw_faceops_analyze(j, env->face, j->args.stream.jpeg, j->args.stream.len,
                               mode == FW_STREAM_MODE_IDENTIFY ? FW_WANT_DESCRIPTORS : 0, &faces, &w, &h);
        if (n < 0)
            return; /* j->out set */
    }
    keep = malloc((size_t)(n ? n : 1) * sizeof *keep);
    if (!keep)
        goto oom;
    int nk = 0;
    for (int i = 0; i < n; i++)
        if (faces[i].box[2] >= j->args.stream.min_face && faces[i].box[3] >= j->args.stream.min_face)
            keep[nk++] = i;
    if (nk > FW_GALLERY_NQ_MAX)
        nk = FW_GALLERY_NQ_MAX;
    if (mode == FW_STREAM_MODE_IDENTIFY && nk > 0) {
        queries = malloc((size_t)nk * FW_GALLERY_DIM * sizeof *queries);
        m = malloc((size_t)nk * sizeof *m);
        counts = calloc((size_t)nk, sizeof *counts);
        if (!queries || !m || !counts)
            goto oom;
        for (int i = 0; i < nk; i++)
            memcpy(queries + (size_t)i * FW_GALLERY_DIM, faces[keep[i]].descriptor, sizeof faces[0].descriptor);
        fw_pause pause = fw_faceops_pause(j); /* as IDENTIFY: yield during a long search */
        int rc = fw_gallery_search(env->gallery, queries, nk, 1, j->args.stream.max_distance, m, counts,
                                   &pause, err, sizeof err);
        fw_faceops_take_yields(j);
        if (rc != FW_STATUS_OK) {
            work_fail(j, (uint16_t)rc, err);
            goto out;
        }
    }
    size_t cap = FACES_PREFIX + 10 + (size_t)nk * (20 + 1 + 2 + FW_GALLERY_SUBJECT_MAX + 8 + 4);
    body = malloc(cap);
    if (!body)
        goto oom;
    fw_writer wr;
    fw_writer_init(&wr, body, cap);
    wr.len = FACES_PREFIX; /* filled on the loop, see job_finish */
    fw_put_u32(&wr, (uint32_t)w);
    fw_put_u32(&wr, (uint32_t)h);
    fw_put_u16(&wr, (uint16_t)nk);
    for (int i = 0; i < nk; i++) {
        const fw_face *f = &faces[keep[i]];
        for (int k = 0; k < 4; k++)
            fw_put_f32(&wr, f->box[k]);
        fw_put_f32(&wr, f->score);
        if (counts && counts[i] > 0) {
            fw_put_u8(&wr, 1);
            fw_put_str(&wr, m[i].subject, m[i].subject_len);
            fw_put_u64(&wr, m[i].face_id);
            fw_put_f32(&wr, m[i].distance);
        } else {
            fw_put_u8(&wr, 0);
        }
    }
    j->out.status = FW_STATUS_OK;
    j->out.body = body;
    j->out.len = wr.len;
    body = NULL;
    goto out;
oom:
    work_fail(j, FW_STATUS_INTERNAL, "out of memory");
out:
    free(body);
    free(keep);
    free(queries);
    free(m);
    free(counts);
}

/* ---- requests (loop thread) ------------------------------------------------------------------- */

static void answer(fw_streams *sx, fw_conn *c, const fw_header *h, int op_index, uint16_t status,
                   const void *body, size_t len, const char *msg)
{
    fw_sched_answer_direct(sx->opt.sched, c, h, op_index, status, body, len, msg, 0, 0);
}

/* STREAM_OPEN: str name, u8 capacity, u8 mode, u8 policy, u16 min_face, u16 max_fps,
 * f32 max_distance, u32 max_age_ms, u16 stats_every, u32 test_sleep_ms. */
static void serve_open(fw_streams *sx, fw_conn *c, const fw_header *h, const uint8_t *body)
{
    int op = sx->opt.open_op_index;
    char msg[160];
    fw_reader r;
    fw_reader_init(&r, body, h->body_len);
    uint16_t nlen = 0;
    const char *name = fw_get_str(&r, &nlen);
    if (!name) {
        answer(sx, c, h, op, FW_STATUS_BAD_REQUEST, NULL, 0, "STREAM_OPEN: truncated name");
        return;
    }
    if (fw_reader_left(&r) < 1 + 1 + 1 + 2 + 2 + 4 + 4 + 2 + 4) {
        answer(sx, c, h, op, FW_STATUS_BAD_REQUEST, NULL, 0, "STREAM_OPEN: truncated body");
        return;
    }
    uint8_t capacity = fw_get_u8(&r), mode = fw_get_u8(&r), policy = fw_get_u8(&r);
    uint16_t min_face = fw_get_u16(&r);
    uint16_t max_fps = fw_get_u16(&r);
    float maxd = fw_get_f32(&r);
    uint32_t max_age = fw_get_u32(&r);
    uint16_t stats_every = fw_get_u16(&r);
    uint32_t sleep_ms = fw_get_u32(&r);
    const char *bad = NULL;
    if (fw_reader_left(&r)) {
        snprintf(msg, sizeof msg, "STREAM_OPEN: %zu trailing bytes", fw_reader_left(&r));
        bad = msg;
    } else if (!name_valid(name, nlen)) {
        snprintf(msg, sizeof msg, "STREAM_OPEN: name must be 1-%d bytes of UTF-8 without control characters",
                 FW_STREAM_NAME_MAX);
        bad = msg;
    } else if (capacity < 1 || capacity > FW_STREAM_RING_MAX) {
        snprintf(msg, sizeof msg, "STREAM_OPEN: capacity must be 1-%d, not %u", FW_STREAM_RING_MAX, capacity);
        bad = msg;
    } else if (mode > FW_STREAM_MODE_TEST || (mode == FW_STREAM_MODE_TEST && !sx->opt.enable_test_ops)) {
        snprintf(msg, sizeof msg, "STREAM_OPEN: mode %u unknown (0 detect, 1 identify)", mode);
        bad = msg;
    } else if (policy > FW_STREAM_POLICY_FIFO) {
        snprintf(msg, sizeof msg, "STREAM_OPEN: policy %u unknown (0 ring, 1 fifo)", policy);
        bad = msg;
    } else if (!isfinite(maxd) || maxd < 0) {
        bad = "STREAM_OPEN: max_distance must be a finite number >= 0 (0 = no threshold)";
    } else if (sleep_ms && mode != FW_STREAM_MODE_TEST) {
        bad = "STREAM_OPEN: test_sleep_ms must be 0 outside test mode";
    } else if (sleep_ms > FW_STREAM_TEST_SLEEP_MAX_MS) {
        snprintf(msg, sizeof msg, "STREAM_OPEN: test_sleep_ms above %d", FW_STREAM_TEST_SLEEP_MAX_MS);
        bad = msg;
    }
    if (bad) {
        answer(sx, c, h, op, FW_STATUS_BAD_REQUEST, NULL, 0, bad);
        return;
    }
    if (mode != FW_STREAM_MODE_TEST && !sx->opt.have_engine) {
        answer(sx, c, h, op, FW_STATUS_UNAVAILABLE, NULL, 0, "STREAM_OPEN: models not loaded");
        return;
    }
    int mine = 0;
    for (fw_stream *st = sx->head; st; st = st->next)
        mine += st->conn == c;
    if (mine >= FW_STREAMS_PER_CONN || sx->open >= FW_STREAMS_MAX) {
        if (mine >= FW_STREAMS_PER_CONN)
            snprintf(msg, sizeof msg, "STREAM_OPEN: this connection has %d streams open", FW_STREAMS_PER_CONN);
        else
            snprintf(msg, sizeof msg, "STREAM_OPEN: the server has %d streams open", FW_STREAMS_MAX);
        answer(sx, c, h, op, FW_STATUS_BUSY, NULL, 0, msg);
        return;
    }
    fw_stream *st = calloc(1, sizeof *st);
    if (!st) {
        answer(sx, c, h, op, FW_STATUS_INTERNAL, NULL, 0, "out of memory");
        return;
    }
    st->sx = sx;
    st->conn = c;
    st->id = ++sx->next_id ? sx->next_id : ++sx->next_id; /* 0 is never a stream id */
    memcpy(st->name, name, nlen);
    st->capacity = capacity;
    st->mode = mode;
    st->policy = policy;
    st->prio = h->priority < FW_PRIO_COUNT ? h->priority : FW_PRIO_NORMAL;
    st->min_face = min_face;
    st->max_fps = max_fps;
    st->max_distance = maxd > 0 ? maxd : INFINITY;
    st->max_age_ms = max_age;
    st->stats_every = stats_every;
    st->test_sleep_ms = sleep_ms;
    st->next = sx->head;
    if (sx->head)
        sx->head->prev = st;
    sx->head = st;
    sx->open++;
    sx->opened_total++;
    uint8_t out[4];
    fw_be32(out, st->id);
    answer(sx, c, h, op, FW_STATUS_OK, out, sizeof out, NULL);
}

/* STREAM_FRAME: u32 stream id, u64 seq, u64 capture_ts_us, bytes JPEG. Never answered. */
static void serve_frame(fw_streams *sx, fw_conn *c, const fw_header *h, const uint8_t *body)
{
    fw_reader r;
    fw_reader_init(&r, body, h->body_len);
    uint32_t id = fw_get_u32(&r);
    uint64_t seq = fw_get_u64(&r), ts = fw_get_u64(&r);
    uint32_t n = 0;
    const uint8_t *jpeg = r.err ? NULL : fw_get_bytes(&r, UINT32_MAX, &n);
    sx->frames_total++;
    const char *bad = !jpeg ? "STREAM_FRAME: truncated body"
                    : n == 0 ? "STREAM_FRAME: empty JPEG"
                    : fw_reader_left(&r) ? "STREAM_FRAME: trailing bytes after the JPEG" : NULL;
    if (bad) {
        sx->bad_frames++;
        send_error(c, r.err && h->body_len < 4 ? 0 : id, seq, FW_STATUS_BAD_REQUEST, bad);
        return;
    }
    fw_stream *st = stream_find(sx, c, id);
    if (!st) {
        sx->bad_frames++;
        send_error(c, id, seq, FW_STATUS_NOT_FOUND, "STREAM_FRAME: no such stream on this connection");
        return;
    }
    stream_frame(st, seq, ts, jpeg, n);
}

/* STREAM_CLOSE: u32 stream id -> the stats record (final = 1). */
static void serve_close(fw_streams *sx, fw_conn *c, const fw_header *h, const uint8_t *body)
{
    int op = sx->opt.close_op_index;
    fw_reader r;
    fw_reader_init(&r, body, h->body_len);
    uint32_t id = fw_get_u32(&r);
    if (r.err || fw_reader_left(&r)) {
        answer(sx, c, h, op, FW_STATUS_BAD_REQUEST, NULL, 0, "STREAM_CLOSE: body must be a u32 stream id");
        return;
    }
    fw_stream *st = stream_find(sx, c, id);
    if (!st) {
        answer(sx, c, h, op, FW_STATUS_NOT_FOUND, NULL, 0, "STREAM_CLOSE: no such stream on this connection");
        return;
    }
    uint8_t out[FW_STREAM_STATS_LEN];
    put_stats(st, 1, out);
    answer(sx, c, h, op, FW_STATUS_OK, out, sizeof out, NULL);
    stream_close(st);
}

void fw_streams_serve(fw_streams *sx, fw_conn *c, const fw_header *h, const uint8_t *body)
{
    switch (h->opcode) {
    case FW_OP_STREAM_OPEN: serve_open(sx, c, h, body); break;
    case FW_OP_STREAM_FRAME: serve_frame(sx, c, h, body); break;
    case FW_OP_STREAM_CLOSE: serve_close(sx, c, h, body); break;
    default: break;
    }
}

void fw_streams_conn_closed(fw_streams *sx, fw_conn *c)
{
    fw_stream *st = sx->head;
    while (st) {
        fw_stream *next = st->next; /* stream_close may free st */
        if (st->conn == c)
            stream_close(st);
        st = next;
    }
}

/* ---- figures ---------------------------------------------------------------------------------- */

void fw_streams_info(fw_streams *sx, fw_sb *b)
{
    fw_sb_printf(b, "streams_open: %u\n", sx->open);
    fw_sb_printf(b, "streams_opened_total: %llu\n", (unsigned long long)sx->opened_total);
    fw_sb_printf(b, "streams_frames_total: %llu\n", (unsigned long long)sx->frames_total);
    fw_sb_printf(b, "streams_bad_frames: %llu\n", (unsigned long long)sx->bad_frames);
    fw_sb_printf(b, "streams_buffer_bytes: %llu/%llu\n", (unsigned long long)sx->bytes,
                 (unsigned long long)sx->opt.memory_cap);
    for (fw_stream *st = sx->head; st; st = st->next) {
        if (!st->conn)
            continue;
        fw_sb_printf(b, "stream_%u: name=%s mode=%s policy=%s received=%llu analysed=%llu failed=%llu"
                     " dropped_overflow=%llu dropped_superseded=%llu dropped_deadline=%llu dropped_memory=%llu dropped_rate=%llu"
                     " seq_gaps=%llu out_of_order=%llu pending=%u latency_ms_p50=%.3f latency_ms_p99=%.3f\n",
                     st->id, st->name, mode_names[st->mode], st->policy ? "fifo" : "ring",
                     (unsigned long long)st->received, (unsigned long long)st->analysed,
                     (unsigned long long)st->failed, (unsigned long long)st->dropped[DROP_OVERFLOW],
                     (unsigned long long)st->dropped[DROP_SUPERSEDED], (unsigned long long)st->dropped[DROP_DEADLINE],
                     (unsigned long long)st->dropped[DROP_MEMORY], (unsigned long long)st->dropped[DROP_RATE],
                     (unsigned long long)st->seq_gaps,
                     (unsigned long long)st->out_of_order, (unsigned)pending_frames(st),
                     fw_hist_quantile(&st->latency_us, 0.5) / 1000.0, fw_hist_quantile(&st->latency_us, 0.99) / 1000.0);
    }
}

/* Stream names are client text: in a Prometheus label value, backslash, quote and newline
 * must be escaped, and anything else below 0x20 is left out. */
static void prom_label(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 3 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '\\' || ch == '"') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (ch >= 0x20) {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

void fw_streams_metrics(fw_streams *sx, fw_sb *b)
{
    fw_sb_printf(b, "# HELP facewire_streams_open Camera streams open.\n# TYPE facewire_streams_open gauge\n");
    fw_sb_printf(b, "facewire_streams_open %u\n", sx->open);
    fw_sb_printf(b, "# HELP facewire_stream_buffer_bytes Frame buffer bytes of all streams.\n"
                    "# TYPE facewire_stream_buffer_bytes gauge\nfacewire_stream_buffer_bytes %llu\n",
                 (unsigned long long)sx->bytes);
    fw_sb_printf(b, "# HELP facewire_stream_frames_total Stream frames by outcome.\n"
                    "# TYPE facewire_stream_frames_total counter\n");
    char lbl[4 * FW_STREAM_NAME_MAX];
    for (fw_stream *st = sx->head; st; st = st->next) {
        if (!st->conn)
            continue;
        prom_label(lbl, sizeof lbl, st->name);
        fw_sb_printf(b, "facewire_stream_frames_total{stream=\"%u\",name=\"%s\",outcome=\"received\"} %llu\n",
                     st->id, lbl, (unsigned long long)st->received);
        fw_sb_printf(b, "facewire_stream_frames_total{stream=\"%u\",name=\"%s\",outcome=\"analysed\"} %llu\n",
                     st->id, lbl, (unsigned long long)st->analysed);
        fw_sb_printf(b, "facewire_stream_frames_total{stream=\"%u\",name=\"%s\",outcome=\"failed\"} %llu\n",
                     st->id, lbl, (unsigned long long)st->failed);
        for (int k = 0; k < NDROPS; k++)
            fw_sb_printf(b, "facewire_stream_frames_total{stream=\"%u\",name=\"%s\",outcome=\"dropped_%s\"} %llu\n",
                         st->id, lbl, drop_names[k], (unsigned long long)st->dropped[k]);
    }
    fw_sb_printf(b, "# HELP facewire_stream_latency_seconds Receipt-to-result latency per stream.\n"
                    "# TYPE facewire_stream_latency_seconds summary\n");
    for (fw_stream *st = sx->head; st; st = st->next) {
        if (!st->conn)
            continue;
        prom_label(lbl, sizeof lbl, st->name);
        fw_sb_printf(b, "facewire_stream_latency_seconds{stream=\"%u\",name=\"%s\",quantile=\"0.5\"} %.6f\n",
                     st->id, lbl, fw_hist_quantile(&st->latency_us, 0.5) / 1e6);
        fw_sb_printf(b, "facewire_stream_latency_seconds{stream=\"%u\",name=\"%s\",quantile=\"0.99\"} %.6f\n",
                     st->id, lbl, fw_hist_quantile(&st->latency_us, 0.99) / 1e6);
        fw_sb_printf(b, "facewire_stream_latency_seconds_count{stream=\"%u\",name=\"%s\"} %llu\n", st->id, lbl,
                     (unsigned long long)st->latency_us.count);
    }
}

/* ---- create / free ---------------------------------------------------------------------------- */

fw_streams *fw_streams_new(const fw_streams_options *o)
{
    fw_streams *sx = calloc(1, sizeof *sx);
    if (!sx)
        return NULL;
    sx->opt = *o;
    return sx;
}

void fw_streams_free(fw_streams *sx)
{
    if (!sx)
        return;
    while (sx->head)
        stream_unlink_free(sx->head);
    free(sx);
}
