/*
 * galleryops.c — ENROLL, IDENTIFY, DELETE, LIST, GALLERY_INFO on the wire (see galleryops.h
 * for the three ways a request is served, docs/protocol.md for the bodies).
 *
 * Parsing is as strict as faceops.c: every length is checked against what is left before it
 * is used, trailing bytes are an error, and each message names the op and the field. The
 * subject and descriptor rules are the gallery's own (galidx_subject_valid,
 * galidx_desc_valid), checked here first so that the client gets a message naming the field.
 *
 * Writes. A queued write is a fw_galreq on the pending list. The gallery calls write_done_cb
 * exactly once per queued write, on the loop thread, after the record is on disk (or failed);
 * only then is the request answered, counted for the op and its breaker, and freed. The
 * connection may be gone by then (fw_galops_conn_closed cleared req->conn): the write still
 * happened, only the answer is dropped. Closing a connection never cancels a write: once the
 * gallery has it, it is carried out, so "the connection died" never leaves an unknown state
 * that differs from "the answer got lost".
 *
 * Admission. Direct requests skip the worker queues (their caps, byte budget and run-time
 * estimates measure worker time; the gallery bounds its own write queue and answers BUSY when
 * it is full) but not the rest: SHUTTING_DOWN while draining, low priority refused in
 * degraded mode, and the breaker of their class. Breaker classes: "gallery_write" (ENROLL,
 * DELETE; a failure is an INTERNAL write, i.e. a failing disk) and "gallery_read" (IDENTIFY,
 * LIST, GALLERY_INFO), apart so that a full or broken disk, which opens the first, never
 * stops reads. A JPEG ENROLL's embedding counts in gallery_write too: it is one request with
 * one outcome, reported when its write completes (the probe flag travels with it).
 *
 * Deadlines apply to the worker part only (IDENTIFY, LIST, the embedding of a JPEG ENROLL):
 * a job answered DEADLINE_EXCEEDED or SHUTTING_DOWN is never handed over, so such an ENROLL is
 * never written. A write, once queued, is not cut short: its answer says what happened.
 *
 * PostgreSQL (--gallery-url). The same fw_galreq and completion path, with fw_galpg_* in place
 * of fw_gallery_enroll/_delete_*. UNAVAILABLE (database unreachable, or the store's own
 * breaker open) is answered with the store's retry_after_ms, like the scheduler's breaker
 * answers, and is no outcome for our "gallery_write" breaker (as BUSY): the store judges the
 * database itself, and a second breaker on the same failures would only keep writes refused
 * for a cooldown after the database is back.
 */
#include "server/galleryops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/galidx.h"
#include "server/galpg.h"

typedef struct fw_galreq fw_galreq;
struct fw_galreq {
    fw_galops *gx;
    fw_conn *conn;          /* NULL once its connection closed: the answer is dropped */
    fw_header hdr;
    int op_index;
    int probe;              /* admitted as a half-open breaker probe */
    uint64_t t_queued_us;
    fw_galreq *prev, *next; /* on gx's pending list */
};

struct fw_galops {
    uv_loop_t *loop;
    fw_gallery *g;            /* owned; NULL once closed */
    fw_galpg *pg;             /* owned; --gallery-url only, NULL once closed */
    int pg_mode;              /* --gallery-url: PostgreSQL is the system of record */
    int closed;               /* fw_galops_close ran: the last completion frees gx */
    fw_gallery_env env;       /* read by worker jobs; set before the first one */
    const fw_log *log;
    fw_sched *sched;          /* not owned; NULL from fw_galops_close on */
    int disk;                 /* a data directory: GALLERY_INFO's bytes are disk bytes */
    fw_galreq *pending_head;  /* queued writes, owned */
    uint32_t pending;
    void (*on_idle)(void *arg);
    void *idle_arg;
    fw_hist write_us;         /* from queueing to the completion, per write */
};

/* ---- parsing (loop thread) ----------------------------------------------------------------- */

static int parse_subject(fw_reader *r, const char *op, const char **s, uint16_t *len, char *err,
                         size_t errlen)
{
    uint16_t n = 0;
    const char *p = fw_get_str(r, &n);
    if (!p) {
        snprintf(err, errlen, "%s: truncated subject", op);
        return -1;
    }
    if (n < 1 || n > FW_GALLERY_SUBJECT_MAX) {
        snprintf(err, errlen, "%s: subject must be 1-%d bytes, not %u", op, FW_GALLERY_SUBJECT_MAX,
                 (unsigned)n);
        return -1;
    }
    if (!galidx_subject_valid(p, n)) {
        snprintf(err, errlen, "%s: subject is not valid UTF-8 (or holds a NUL byte)", op);
        return -1;
    }
    *s = p;
    *len = n;
    return 0;
}

static int no_trailing(const fw_reader *r, const char *op, char *err, size_t errlen)
{
    if (fw_reader_left(r) == 0)
        return 0;
    snprintf(err, errlen, "%s: %zu trailing bytes", op, fw_reader_left(r));
    return -1;
}

/* ENROLL: str subject, bytes metadata, input. Pointers go into body. */
static int parse_enroll_body(const uint8_t *body, size_t len, fw_job_args *a, char *err, size_t errlen)
{
    fw_reader r;
    fw_reader_init(&r, body, len);
    if (parse_subject(&r, "ENROLL", &a->enroll.subject, &a->enroll.subject_len, err, errlen) != 0)
        return -1;
    uint32_t ml = 0;
    if (fw_reader_left(&r) < 4) {
        snprintf(err, errlen, "ENROLL: truncated body (metadata expected)");
        return -1;
    }
    a->enroll.meta = fw_get_bytes(&r, UINT32_MAX, &ml);
    if (!a->enroll.meta) {
        snprintf(err, errlen, "ENROLL: truncated metadata");
        return -1;
    }
    if (ml > FW_GALLERY_META_MAX) {
        snprintf(err, errlen, "ENROLL: metadata is %u bytes, at most %d", ml, FW_GALLERY_META_MAX);
        return -1;
    }
    a->enroll.meta_len = ml;
    if (fw_faceops_parse_input(&r, "ENROLL", &a->enroll.in, err, errlen) != 0)
        return -1;
    return no_trailing(&r, "ENROLL", err, errlen);
}

int fw_galops_enroll_is_direct(const uint8_t *body, size_t len)
{
    /* Only the input kind is looked at: a JPEG goes to a worker (its parse repeats the
     * checks on the copy), anything else is parsed and answered on the loop. */
    fw_reader r;
    uint16_t sl;
    uint32_t ml;
    fw_reader_init(&r, body, len);
    fw_get_str(&r, &sl);
    fw_get_bytes(&r, UINT32_MAX, &ml);
    uint8_t kind = fw_get_u8(&r);
    return r.err || kind != FW_INPUT_JPEG;
}

int fw_galops_always_direct(const uint8_t *body, size_t len)
{
    (void)body, (void)len;
    return 1;
}

int fw_galops_parse_enroll(fw_job *j, char *err, size_t errlen)
{
    return parse_enroll_body(j->body, j->body_len, &j->args, err, errlen);
}

/* IDENTIFY: input, u16 k, u8 has_threshold, f32 threshold. */
int fw_galops_parse_identify(fw_job *j, char *err, size_t errlen)
{
    fw_reader r;
    fw_reader_init(&r, j->body, j->body_len);
    if (fw_faceops_parse_input(&r, "IDENTIFY", &j->args.identify.in, err, errlen) != 0)
        return -1;
    if (fw_reader_left(&r) < 7) {
        snprintf(err, errlen, "IDENTIFY: truncated body (k, has_threshold and threshold expected)");
        return -1;
    }
    uint16_t k = fw_get_u16(&r);
    uint8_t has = fw_get_u8(&r);
    float thr = fw_get_f32(&r);
    if (k < 1 || k > FW_GALLERY_K_MAX) {
        snprintf(err, errlen, "IDENTIFY: k must be 1-%d, not %u", FW_GALLERY_K_MAX, (unsigned)k);
        return -1;
    }
    if (has > 1) {
        snprintf(err, errlen, "IDENTIFY: has_threshold must be 0 or 1, not %u", (unsigned)has);
        return -1;
    }
    if (has && !(isfinite(thr) && thr > 0)) {
        snprintf(err, errlen, "IDENTIFY: threshold must be a positive finite number");
        return -1;
    }
    if (no_trailing(&r, "IDENTIFY", err, errlen) != 0)
        return -1;
    j->args.identify.k = k;
    j->args.identify.max_distance = has ? thr : INFINITY;
    return 0;
}

/* LIST: str cursor, u16 limit. */
int fw_galops_parse_list(fw_job *j, char *err, size_t errlen)
{
    fw_reader r;
    uint16_t cl = 0;
    fw_reader_init(&r, j->body, j->body_len);
    const char *cursor = fw_get_str(&r, &cl);
    if (!cursor) {
        snprintf(err, errlen, "LIST: truncated cursor");
        return -1;
    }
    if (cl > FW_GALLERY_SUBJECT_MAX) {
        snprintf(err, errlen, "LIST: cursor must be at most %d bytes, not %u", FW_GALLERY_SUBJECT_MAX,
                 (unsigned)cl);
        return -1;
    }
    if (fw_reader_left(&r) < 2) {
        snprintf(err, errlen, "LIST: truncated body (limit expected)");
        return -1;
    }
    uint16_t limit = fw_get_u16(&r);
    if (limit == 0) {
        snprintf(err, errlen, "LIST: limit must be 1-65535");
        return -1;
    }
    if (no_trailing(&r, "LIST", err, errlen) != 0)
        return -1;
    j->args.list.cursor = cursor;
    j->args.list.cursor_len = cl;
    j->args.list.limit = limit;
    return 0;
}

/* DELETE: u8 kind, then u64 face_id (0) or str subject (1). */
typedef struct delete_args {
    int by_subject;
    uint64_t face_id;
    const char *subject;
    uint16_t subject_len;
} delete_args;

static int parse_delete_body(const uint8_t *body, size_t len, delete_args *a, char *err, size_t errlen)
{
    fw_reader r;
    fw_reader_init(&r, body, len);
    if (fw_reader_left(&r) < 1) {
        snprintf(err, errlen, "DELETE: empty body (kind expected)");
        return -1;
    }
    uint8_t kind = fw_get_u8(&r);
    memset(a, 0, sizeof *a);
    if (kind == 0) {
        if (fw_reader_left(&r) < 8) {
            snprintf(err, errlen, "DELETE: truncated face id");
            return -1;
        }
        a->face_id = fw_get_u64(&r);
    } else if (kind == 1) {
        a->by_subject = 1;
        if (parse_subject(&r, "DELETE", &a->subject, &a->subject_len, err, errlen) != 0)
            return -1;
    } else {
        snprintf(err, errlen, "DELETE: kind %u unknown (0 face id, 1 subject)", (unsigned)kind);
        return -1;
    }
    return no_trailing(&r, "DELETE", err, errlen);
}

/* ---- work (pool thread) -------------------------------------------------------------------- */

static void job_fail(fw_job *j, uint16_t status, const char *msg)
{
    j->out.status = status;
    snprintf(j->out.msg, sizeof j->out.msg, "%s", msg);
}

void fw_galops_enroll_work(fw_job *j)
{
    const fw_gallery_env *env = j->env;
    const fw_input *in = &j->args.enroll.in;
    const fw_face *faces;
    int n = fw_faceops_describe(j, env->face, in->jpeg, in->len, &faces);
    if (n < 0)
        return;
    if (n == 0) {
        job_fail(j, FW_STATUS_NO_FACE, "no face in picture");
        return;
    }
    if (n > 1) {
        j->out.status = FW_STATUS_BAD_REQUEST;
        snprintf(j->out.msg, sizeof j->out.msg, "%d faces in picture; enroll needs exactly one", n);
        return;
    }
    /* the descriptor in native floats, for fw_galops_enroll_handover on the loop */
    float *d = malloc(sizeof faces[0].descriptor);
    if (!d) {
        job_fail(j, FW_STATUS_INTERNAL, "out of memory");
        return;
    }
    memcpy(d, faces[0].descriptor, sizeof faces[0].descriptor);
    j->out.body = (uint8_t *)d;
    j->out.len = sizeof faces[0].descriptor;
    j->out.status = FW_STATUS_OK;
}

void fw_galops_identify_work(fw_job *j)
{
    const fw_gallery_env *env = j->env;
    const fw_input *in = &j->args.identify.in;
    int k = j->args.identify.k;
    const fw_face *faces = NULL;
    float *queries = NULL;
    fw_gallery_match *m = NULL;
    int *counts = NULL;
    uint8_t *body = NULL;
    char err[160];
    int nq;

    if (in->kind == FW_INPUT_DESCRIPTOR) {
        nq = 1;
        queries = malloc(sizeof in->desc);
        if (queries)
            memcpy(queries, in->desc, sizeof in->desc);
    } else {
        nq = fw_faceops_describe(j, env->face, in->jpeg, in->len, &faces);
        if (nq < 0)
            return;
        if (nq > FW_GALLERY_NQ_MAX)
            nq = FW_GALLERY_NQ_MAX;
        /* one row per face, so the gallery scans its matrix once for all of them (sgemm) */
        queries = malloc((size_t)(nq ? nq : 1) * FW_GALLERY_DIM * sizeof *queries);
        for (int i = 0; queries && i < nq; i++)
            memcpy(queries + (size_t)i * FW_GALLERY_DIM, faces[i].descriptor, sizeof faces[i].descriptor);
    }
    m = malloc((size_t)(nq ? nq : 1) * (size_t)k * sizeof *m);
    counts = calloc((size_t)(nq ? nq : 1), sizeof *counts);
    if (!queries || !m || !counts) {
        job_fail(j, FW_STATUS_INTERNAL, "out of memory");
        goto out;
    }
    if (nq > 0) {
        /* over a large gallery this is tens of ms: hand the CPU back like the engine does */
        fw_pause pause = fw_faceops_pause(j);
        int rc = fw_gallery_search(env->gallery, queries, nq, k, j->args.identify.max_distance, m, counts,
                                   &pause, err, sizeof err);
        fw_faceops_take_yields(j);
        if (rc != FW_STATUS_OK) {
            job_fail(j, (uint16_t)rc, err);
            goto out;
        }
    }
    size_t cap = 2;
    for (int i = 0; i < nq; i++)
        cap += 16 + 2 + (size_t)counts[i] * (2 + FW_GALLERY_SUBJECT_MAX + 8 + 4);
    body = malloc(cap);
    if (!body) {
        job_fail(j, FW_STATUS_INTERNAL, "out of memory");
        goto out;
    }
    fw_writer w;
    fw_writer_init(&w, body, cap);
    fw_put_u16(&w, (uint16_t)nq);
    for (int i = 0; i < nq; i++) {
        for (int c = 0; c < 4; c++)
            fw_put_f32(&w, faces ? faces[i].box[c] : 0.0f);
        fw_put_u16(&w, (uint16_t)counts[i]);
        for (int r = 0; r < counts[i]; r++) {
            const fw_gallery_match *x = &m[(size_t)i * (size_t)k + (size_t)r];
            fw_put_str(&w, x->subject, x->subject_len);
            fw_put_u64(&w, x->face_id);
            fw_put_f32(&w, x->distance);
        }
    }
    j->out.status = FW_STATUS_OK;
    j->out.body = body;
    j->out.len = w.len;
    body = NULL;
out:
    free(body);
    free(queries);
    free(m);
    free(counts);
}

void fw_galops_list_work(fw_job *j)
{
    const fw_gallery_env *env = j->env;
    int limit = j->args.list.limit > FW_GALOPS_LIST_PAGE_MAX ? FW_GALOPS_LIST_PAGE_MAX : j->args.list.limit;
    fw_gallery_subject *subj = malloc((size_t)limit * sizeof *subj);
    char next[FW_GALLERY_SUBJECT_MAX + 1];
    size_t next_len = 0;
    char err[160];
    int n = 0;
    if (!subj) {
        job_fail(j, FW_STATUS_INTERNAL, "out of memory");
        return;
    }
    int rc = fw_gallery_list(env->gallery, j->args.list.cursor, j->args.list.cursor_len, limit, subj, &n,
                             next, &next_len, err, sizeof err);
    if (rc != FW_STATUS_OK) {
        job_fail(j, (uint16_t)rc, err);
        free(subj);
        return;
    }
    size_t cap = 2 + 2 + next_len;
    for (int i = 0; i < n; i++)
        cap += 2 + subj[i].subject_len + 4;
    uint8_t *body = malloc(cap);
    if (!body) {
        job_fail(j, FW_STATUS_INTERNAL, "out of memory");
        free(subj);
        return;
    }
    fw_writer w;
    fw_writer_init(&w, body, cap);
    fw_put_u16(&w, (uint16_t)n);
    for (int i = 0; i < n; i++) {
        fw_put_str(&w, subj[i].subject, subj[i].subject_len);
        fw_put_u32(&w, subj[i].faces);
    }
    fw_put_str(&w, next, next_len);
    free(subj);
    j->out.status = FW_STATUS_OK;
    j->out.body = body;
    j->out.len = w.len;
}

/* ---- queued writes (loop thread) ----------------------------------------------------------- */

/* A pending write for request h. count_job: the connection's job count goes up now (a direct
 * request); a handed-over job was counted when the scheduler took it. */
static fw_galreq *req_new(fw_galops *gx, fw_conn *c, const fw_header *h, int op_index, int probe,
                          int count_job)
{
    fw_galreq *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->gx = gx;
    r->conn = c;
    r->hdr = *h;
    r->op_index = op_index;
    r->probe = probe;
    r->t_queued_us = uv_hrtime() / 1000;
    r->next = gx->pending_head;
    if (r->next)
        r->next->prev = r;
    gx->pending_head = r;
    gx->pending++;
    if (c && count_job)
        fw_conn_job_started(c);
    return r;
}

/* Answer r (when its connection is still there), report the outcome, free it. has_retry:
 * retry_ms goes after the message (BUSY, UNAVAILABLE). */
static void req_finish(fw_galreq *r, uint16_t status, const void *body, size_t len, const char *msg,
                       int has_retry, uint32_t retry_ms)
{
    fw_galops *gx = r->gx;
    uint8_t extra[4];
    fw_be32(extra, retry_ms);
    if (gx->sched) {
        if (r->conn)
            fw_sched_answer_direct(gx->sched, r->conn, &r->hdr, r->op_index, status, body, len, msg, has_retry,
                                   retry_ms);
        /* BUSY and SHUTTING_DOWN say nothing about the disk, UNAVAILABLE is the PostgreSQL
         * store's own breaker speaking (see the top of this file): no outcome */
        if (status == FW_STATUS_BUSY || status == FW_STATUS_SHUTTING_DOWN || status == FW_STATUS_UNAVAILABLE)
            fw_sched_cancel_outcome(gx->sched, r->op_index, r->probe);
        else
            fw_sched_record_outcome(gx->sched, r->op_index, status == FW_STATUS_INTERNAL, r->probe);
    } else if (r->conn) {
        /* closing: the scheduler is gone, answer without counting */
        if (status == FW_STATUS_OK)
            fw_conn_reply(r->conn, &r->hdr, status, body, len);
        else
            fw_conn_reply_error(r->conn, &r->hdr, status, msg, has_retry ? extra : NULL, has_retry ? 4 : 0);
    }
    if (r->conn)
        fw_conn_job_finished(r->conn);
    if (r->prev)
        r->prev->next = r->next;
    else
        gx->pending_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r);
    if (--gx->pending == 0 && gx->on_idle)
        gx->on_idle(gx->idle_arg);
    if (gx->closed && gx->pending == 0)
        free(gx); /* the store delivered its last completion after fw_galops_close */
}

/* The gallery's completion: the record is on disk (OK) or the write failed. With PostgreSQL:
 * committed (OK), or failed; UNAVAILABLE when the connection broke before the COMMIT was
 * confirmed (the write may have committed: the follower applies it if so). */
static void write_done_cb(void *arg, int status, uint64_t value, const char *msg)
{
    fw_galreq *r = arg;
    fw_galops *gx = r->gx;
    uint8_t body[8];
    fw_writer w;
    fw_writer_init(&w, body, sizeof body);
    fw_hist_record(&gx->write_us, uv_hrtime() / 1000 - r->t_queued_us);
    if (status == FW_STATUS_OK && r->hdr.opcode == FW_OP_ENROLL)
        fw_put_u64(&w, value); /* the new face id */
    else if (status == FW_STATUS_OK)
        fw_put_u32(&w, value > UINT32_MAX ? UINT32_MAX : (uint32_t)value); /* faces deleted */
    int unavailable = status == FW_STATUS_UNAVAILABLE;
    uint32_t retry = unavailable && gx->pg ? fw_galpg_retry_after_ms(gx->pg) : 0;
    req_finish(r, (uint16_t)status, body, w.len, msg ? msg : "gallery write failed", unavailable, retry);
}

/* A write the gallery or the store refused at once (BUSY, UNAVAILABLE, SHUTTING_DOWN,
 * BAD_REQUEST, INTERNAL): answered now, with retry_after_ms for the first two. */
static void refused(fw_galreq *r, int rc, const char *err, uint32_t pg_retry_ms)
{
    uint32_t retry = rc == FW_STATUS_BUSY ? FW_GALOPS_BUSY_RETRY_MS : pg_retry_ms;
    req_finish(r, (uint16_t)rc, NULL, 0, err, rc == FW_STATUS_BUSY || rc == FW_STATUS_UNAVAILABLE, retry);
}

/* Queue the enroll of r; a refusal is answered at once. */
static void queue_enroll(fw_galops *gx, fw_galreq *r, const fw_job_args *a, const float *desc)
{
    char err[192] = "";
    uint32_t retry = 0;
    int rc = gx->pg ? fw_galpg_enroll(gx->pg, a->enroll.subject, a->enroll.subject_len, a->enroll.meta,
                                      a->enroll.meta_len, desc, write_done_cb, r, &retry, err, sizeof err)
                    : fw_gallery_enroll(gx->g, a->enroll.subject, a->enroll.subject_len, a->enroll.meta,
                                        a->enroll.meta_len, desc, write_done_cb, r, err, sizeof err);
    if (rc != FW_STATUS_OK)
        refused(r, rc, err, retry);
}

/* Queue the delete of r; a refusal is answered at once. */
static void queue_delete(fw_galops *gx, fw_galreq *r, const delete_args *d)
{
    char err[192] = "";
    uint32_t retry = 0;
    int rc;
    if (gx->pg)
        rc = d->by_subject ? fw_galpg_delete_subject(gx->pg, d->subject, d->subject_len, write_done_cb, r, &retry,
                                                     err, sizeof err)
                           : fw_galpg_delete_face(gx->pg, d->face_id, write_done_cb, r, &retry, err, sizeof err);
    else
        rc = d->by_subject ? fw_gallery_delete_subject(gx->g, d->subject, d->subject_len, write_done_cb, r, err,
                                                       sizeof err)
                           : fw_gallery_delete_face(gx->g, d->face_id, write_done_cb, r, err, sizeof err);
    if (rc != FW_STATUS_OK)
        refused(r, rc, err, retry);
}

void fw_galops_enroll_handover(fw_job *j)
{
    const fw_gallery_env *env = j->env;
    fw_galops *gx = env->owner;
    float desc[FW_GALLERY_DIM];
    fw_galreq *r = NULL;
    const char *why = "out of memory";
    if (!j->out.body || j->out.len != sizeof desc)
        why = "ENROLL: the worker produced no descriptor"; /* cannot happen: enroll_work sets both */
    else
        r = req_new(gx, j->conn, &j->hdr, j->op_index, j->probe, 0);
    if (!r) {
        if (j->conn) {
            fw_sched_answer_direct(gx->sched, j->conn, &j->hdr, j->op_index, FW_STATUS_INTERNAL, NULL, 0, why,
                                   0, 0);
            fw_conn_job_finished(j->conn);
        }
        fw_sched_record_outcome(gx->sched, j->op_index, 1, j->probe);
        return;
    }
    memcpy(desc, j->out.body, sizeof desc); /* the worker's malloc'd native floats */
    queue_enroll(gx, r, &j->args, desc);
}

void fw_galops_serve(fw_galops *gx, fw_conn *c, const fw_header *h, int op_index, const uint8_t *body)
{
    char err[192];
    int probe = 0;
    if (fw_sched_admit_direct(gx->sched, c, h, op_index, &probe) != 0)
        return;

    if (h->opcode == FW_OP_GALLERY_INFO) {
        if (h->body_len) {
            snprintf(err, sizeof err, "GALLERY_INFO: the body must be empty, not %u bytes", h->body_len);
            goto bad;
        }
        fw_gallery_info gi;
        uint8_t out[32];
        fw_writer w;
        fw_writer_init(&w, out, sizeof out);
        fw_gallery_info_get(gx->g, &gi);
        fw_put_u64(&w, gi.faces);
        fw_put_u64(&w, gi.subjects);
        fw_put_u64(&w, gx->disk ? gi.disk_bytes : gi.mem_bytes);
        fw_put_u64(&w, gi.last_seq);
        fw_sched_answer_direct(gx->sched, c, h, op_index, FW_STATUS_OK, out, w.len, NULL, 0, 0);
        fw_sched_record_outcome(gx->sched, op_index, 0, probe);
        return;
    }
    if (h->opcode == FW_OP_ENROLL) {
        fw_job_args a;
        if (parse_enroll_body(body, h->body_len, &a, err, sizeof err) != 0)
            goto bad;
        if (a.enroll.in.kind != FW_INPUT_DESCRIPTOR) { /* fw_galops_enroll_is_direct said not */
            snprintf(err, sizeof err, "ENROLL: a JPEG input must go to a worker");
            fw_sched_cancel_outcome(gx->sched, op_index, probe);
            fw_sched_answer_direct(gx->sched, c, h, op_index, FW_STATUS_INTERNAL, NULL, 0, err, 0, 0);
            return;
        }
        fw_galreq *r = req_new(gx, c, h, op_index, probe, 1);
        if (!r)
            goto nomem;
        queue_enroll(gx, r, &a, a.enroll.in.desc);
        return;
    }
    if (h->opcode == FW_OP_DELETE) {
        delete_args d;
        if (parse_delete_body(body, h->body_len, &d, err, sizeof err) != 0)
            goto bad;
        fw_galreq *r = req_new(gx, c, h, op_index, probe, 1);
        if (!r)
            goto nomem;
        queue_delete(gx, r, &d);
        return;
    }
    snprintf(err, sizeof err, "opcode 0x%02X is not a direct gallery op", h->opcode);
    fw_sched_cancel_outcome(gx->sched, op_index, probe);
    fw_sched_answer_direct(gx->sched, c, h, op_index, FW_STATUS_INTERNAL, NULL, 0, err, 0, 0);
    return;
bad:
    fw_sched_cancel_outcome(gx->sched, op_index, probe);
    fw_sched_answer_direct(gx->sched, c, h, op_index, FW_STATUS_BAD_REQUEST, NULL, 0, err, 0, 0);
    return;
nomem:
    fw_sched_record_outcome(gx->sched, op_index, 1, probe);
    fw_sched_answer_direct(gx->sched, c, h, op_index, FW_STATUS_INTERNAL, NULL, 0, "out of memory", 0, 0);
}

void fw_galops_conn_closed(fw_galops *gx, fw_conn *c)
{
    if (!gx)
        return;
    for (fw_galreq *r = gx->pending_head; r; r = r->next)
        if (r->conn == c)
            r->conn = NULL;
}

/* ---- open / close -------------------------------------------------------------------------- */

/* The gallery's own lines (recovery, compactions, failed writes), from its writer and
 * compactor threads or from fw_gallery_open: fw_log is safe there (one write(2) per line,
 * read-only once started). All but a finished compaction report damage or a failure. */
static void gallery_log_cb(void *arg, const char *line)
{
    const fw_log *lg = arg;
    char q[600];
    fw_log_level level = strncmp(line, "compacted ", 10) == 0 ? FW_LOG_INFO : FW_LOG_WARN;
    fw_log_emit(lg, level, "gallery", "detail=%s", fw_log_quote(q, sizeof q, line));
}

/* The PostgreSQL store's lines, from its threads: a fixed message, then after a TAB logfmt
 * pairs already quoted (galpg.h), so they read like ours and tests and operators can wait for
 * msg="postgresql connected". fw_log is safe from any thread (see gallery_log_cb). */
static void galpg_log_cb(void *arg, int level, const char *line)
{
    const fw_log *lg = arg;
    char msg[256];
    const char *tab = strchr(line, '\t');
    size_t n = tab ? (size_t)(tab - line) : strlen(line);
    if (n >= sizeof msg)
        n = sizeof msg - 1;
    memcpy(msg, line, n);
    msg[n] = '\0';
    fw_log_level lv = level <= FW_LOG_INFO ? FW_LOG_INFO : level == FW_LOG_WARN ? FW_LOG_WARN : FW_LOG_ERROR;
    if (tab)
        fw_log_emit(lg, lv, msg, "%s", tab + 1);
    else
        fw_log_emit(lg, lv, msg, NULL);
}

/* --gallery-url: a memory-only gallery that only the store's follower thread changes (never
 * attached to the loop: a stray fw_gallery_enroll on it fails INTERNAL instead of forking
 * the gallery from the database), and the store, which connects and loads on its threads. */
static int open_pg(fw_galops *gx, uv_loop_t *loop, const fw_galops_options *o, char *err, size_t errlen)
{
    fw_gallery_options go;
    fw_gallery_options_default(&go);
    go.max_faces = o->max_faces;
    go.log = gallery_log_cb;
    go.log_arg = (void *)o->log;
    if (fw_gallery_open(&go, &gx->g, NULL, err, errlen) != 0)
        return -1;
    fw_galpg_options po;
    memset(&po, 0, sizeof po);
    po.url = o->gallery_url;
    po.gallery = gx->g;
    po.max_lag_ms = o->max_lag_ms;
    po.log = galpg_log_cb;
    po.log_arg = (void *)o->log;
    char perr[200];
    if (fw_galpg_open(loop, &po, &gx->pg, perr, sizeof perr) != 0) {
        snprintf(err, errlen, "postgresql: %s", perr);
        fw_gallery_close(gx->g);
        gx->g = NULL;
        return -1;
    }
    /* not the URL: it may hold a password */
    fw_log_info(o->log, "gallery opened", "store=postgresql max_lag_ms=%u", o->max_lag_ms);
    return 0;
}

/* --data (or memory only): open, load and recover the gallery, attach it to the loop. */
static int open_embedded(fw_galops *gx, uv_loop_t *loop, const fw_galops_options *o, char *err,
                         size_t errlen)
{
    fw_gallery_options go;
    fw_gallery_report rep;
    char q[300];
    fw_gallery_options_default(&go);
    go.data_dir = o->data_dir;
    go.repair = o->repair;
    go.max_faces = o->max_faces;
    go.key = o->key;
    go.log = gallery_log_cb;
    go.log_arg = (void *)o->log;
    if (fw_gallery_open(&go, &gx->g, &rep, err, errlen) != 0)
        return -1;
    int rc = fw_gallery_attach_loop(gx->g, loop);
    if (rc != 0) {
        snprintf(err, errlen, "gallery: cannot attach to the loop: %s", uv_strerror(rc));
        fw_gallery_close(gx->g); /* not attached: frees at once */
        gx->g = NULL;
        return -1;
    }
    if (rep.message[0])
        fw_log_warn(o->log, "gallery recovered", "detail=%s", fw_log_quote(q, sizeof q, rep.message));
    fw_gallery_info gi;
    fw_gallery_info_get(gx->g, &gi);
    fw_log_info(o->log, "gallery opened", "dir=%s faces=%llu subjects=%llu from_snapshot=%llu log_records=%llu",
                fw_log_quote(q, sizeof q, o->data_dir ? o->data_dir : "(memory only)"),
                (unsigned long long)gi.faces, (unsigned long long)gi.subjects,
                (unsigned long long)rep.snapshot_faces, (unsigned long long)rep.log_records);
    return 0;
}

int fw_galops_open(uv_loop_t *loop, const fw_galops_options *o, fw_galops **out, char *err, size_t errlen)
{
    int rc;
    *out = NULL;
    fw_galops *gx = calloc(1, sizeof *gx);
    if (!gx) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    gx->loop = loop;
    gx->log = o->log;
    gx->disk = o->data_dir != NULL;
    if (o->gallery_url && (o->data_dir || o->repair || o->key)) {
        /* the command line refuses this already; a caller that did not ask must not get a
         * gallery that silently ignores half of its options */
        snprintf(err, errlen, "--gallery-url excludes --data, --repair and --gallery-key");
        rc = -1;
    } else if (o->gallery_url) {
        gx->pg_mode = 1;
        rc = open_pg(gx, loop, o, err, errlen);
    } else {
        rc = open_embedded(gx, loop, o, err, errlen);
    }
    if (rc != 0) {
        free(gx);
        return -1;
    }
    gx->env.face = o->face;
    gx->env.gallery = gx->g;
    gx->env.owner = gx;
    *out = gx;
    return 0;
}

void fw_galops_set_sched(fw_galops *gx, fw_sched *sched) { gx->sched = sched; }
const fw_gallery_env *fw_galops_env(const fw_galops *gx) { return &gx->env; }
uint32_t fw_galops_pending(const fw_galops *gx) { return gx ? gx->pending : 0; }

int fw_galops_loading(fw_galops *gx)
{
    fw_galpg_info pi;
    if (!gx || !gx->pg)
        return 0;
    fw_galpg_info_get(gx->pg, &pi);
    return !pi.loaded;
}

int fw_galops_ready(fw_galops *gx, char *why, size_t whylen)
{
    char r[96] = "";
    if (!gx) {
        snprintf(why, whylen, "starting");
        return 0;
    }
    if (!gx->pg || fw_galpg_ready(gx->pg, r, sizeof r))
        return 1; /* the embedded gallery is its own system of record: always in sync */
    /* the store says "loading"; a balancer's log is clearer with what is loading */
    if (strcmp(r, "loading") == 0 || r[0] == '\0')
        snprintf(why, whylen, "gallery loading");
    else
        snprintf(why, whylen, "%s", r);
    return 0;
}

void fw_galops_on_idle(fw_galops *gx, void (*cb)(void *arg), void *arg)
{
    gx->on_idle = cb;
    gx->idle_arg = arg;
}

void fw_galops_close(fw_galops *gx)
{
    if (!gx)
        return;
    gx->sched = NULL;
    gx->on_idle = NULL;
    if (gx->pg) {
        /* First: its follower thread writes into the gallery. Its queued writes finish (their
         * completions run inside this call or on a later turn of the loop). */
        fw_galpg_close(gx->pg);
        gx->pg = NULL;
    }
    /* the embedded gallery's queued writes complete inside this call (write_done_cb frees
     * them); a PostgreSQL gallery has none of its own */
    fw_gallery_close(gx->g);
    gx->g = NULL;
    if (gx->pg_mode && gx->pending > 0) {
        gx->closed = 1; /* req_finish frees gx with the last one */
        return;
    }
    while (gx->pending_head) { /* only if the gallery broke its exactly-once promise */
        fw_galreq *r = gx->pending_head;
        gx->pending_head = r->next;
        free(r);
    }
    free(gx);
}

/* ---- INFO and /metrics --------------------------------------------------------------------- */

void fw_galops_info(fw_galops *gx, fw_sb *b)
{
    fw_gallery_info gi;
    if (!gx)
        return;
    fw_gallery_info_get(gx->g, &gi);
    fw_sb_printf(b, "gallery_faces: %llu\n", (unsigned long long)gi.faces);
    fw_sb_printf(b, "gallery_subjects: %llu\n", (unsigned long long)gi.subjects);
    fw_sb_printf(b, "gallery_bytes: %llu\n", (unsigned long long)(gx->disk ? gi.disk_bytes : gi.mem_bytes));
    fw_sb_printf(b, "gallery_mem_bytes: %llu\n", (unsigned long long)gi.mem_bytes);
    fw_sb_printf(b, "gallery_disk_bytes: %llu\n", (unsigned long long)gi.disk_bytes);
    fw_sb_printf(b, "gallery_last_seq: %llu\n", (unsigned long long)gi.last_seq);
    fw_sb_printf(b, "gallery_compactions: %llu\n", (unsigned long long)gi.compactions);
    fw_sb_printf(b, "gallery_write_errors: %llu\n", (unsigned long long)gi.write_errors);
    fw_sb_printf(b, "gallery_pending_writes: %u\n", gx->pending);
    fw_sb_printf(b, "gallery_write_ms: p50=%.3f p99=%.3f\n", (double)fw_hist_quantile(&gx->write_us, 0.5) / 1000.0,
                 (double)fw_hist_quantile(&gx->write_us, 0.99) / 1000.0);
    fw_sb_printf(b, "gallery_store: %s\n", gx->pg ? "postgresql" : "embedded");
    if (!gx->pg)
        return;
    fw_galpg_info pi;
    fw_galpg_info_get(gx->pg, &pi);
    fw_sb_printf(b, "gallery_pg_loaded: %d\n", pi.loaded);
    fw_sb_printf(b, "gallery_pg_applied_seq: %llu\n", (unsigned long long)pi.applied_seq);
    fw_sb_printf(b, "gallery_pg_head_seq: %llu\n", (unsigned long long)pi.head_seq);
    fw_sb_printf(b, "gallery_pg_lag_ms: %llu\n", (unsigned long long)pi.lag_ms);
    fw_sb_printf(b, "gallery_pg_apply_lag_ms: p50=%.3f p99=%.3f\n", (double)pi.lag_p50_us / 1000.0,
                 (double)pi.lag_p99_us / 1000.0);
    fw_sb_printf(b, "gallery_pg_writer_connected: %d\n", pi.writer_connected);
    fw_sb_printf(b, "gallery_pg_follower_connected: %d\n", pi.follower_connected);
    fw_sb_printf(b, "gallery_pg_commits: %llu\n", (unsigned long long)pi.commits);
    fw_sb_printf(b, "gallery_pg_write_errors: %llu\n", (unsigned long long)pi.write_errors);
    fw_sb_printf(b, "gallery_pg_reconnects: %llu\n", (unsigned long long)pi.reconnects);
    fw_sb_printf(b, "gallery_pg_bad_rows: %llu\n", (unsigned long long)pi.bad_rows);
    fw_sb_printf(b, "gallery_pg_load_faces: %llu\n", (unsigned long long)pi.load_faces);
    fw_sb_printf(b, "gallery_pg_load_ms: %llu\n", (unsigned long long)pi.load_ms);
    fw_sb_printf(b, "gallery_pg_writes_breaker: %s\n", fw_breaker_state_name((fw_breaker_state)pi.breaker_state));
}

/* One Prometheus family per row of m, each a single unlabelled value v[i]:
 * the plain gauges and counters of the gallery and its PostgreSQL store. */
typedef struct {
    const char *name, *type, *help;
} prom_family;

static void prom_families(fw_sb *b, const prom_family *m, const uint64_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fw_sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", m[i].name, m[i].help, m[i].name, m[i].type);
        fw_sb_printf(b, "%s %llu\n", m[i].name, (unsigned long long)v[i]);
    }
}

/* The PostgreSQL store's families (--gallery-url only). */
static void pg_metrics(fw_galops *gx, fw_sb *b)
{
    fw_galpg_info pi;
    fw_galpg_info_get(gx->pg, &pi);
    static const prom_family m[] = {
        { "facewire_gallery_pg_loaded", "gauge", "1 once the initial load from PostgreSQL finished." },
        { "facewire_gallery_pg_applied_seq", "gauge", "Last change of the change table applied to memory." },
        { "facewire_gallery_pg_head_seq", "gauge", "Last change known to exist in the database." },
        { "facewire_gallery_pg_commits_total", "counter", "Write transactions committed by this node." },
        { "facewire_gallery_pg_write_errors_total", "counter", "Write transactions that failed." },
        { "facewire_gallery_pg_reconnects_total", "counter", "Connections to PostgreSQL made again after a loss." },
        { "facewire_gallery_pg_bad_rows_total", "counter", "Face or change rows passed over as unusable." },
        { "facewire_gallery_pg_load_faces", "gauge", "Faces read by the last full load." },
        { "facewire_gallery_pg_writes_breaker_state", "gauge",
          "Breaker of the writes to PostgreSQL: 0 closed, 1 open, 2 half-open." },
    };
    uint64_t v[] = { (uint64_t)pi.loaded, pi.applied_seq, pi.head_seq, pi.commits, pi.write_errors,
                     pi.reconnects, pi.bad_rows, pi.load_faces, (uint64_t)pi.breaker_state };
    prom_families(b, m, v, sizeof m / sizeof m[0]);
    const char *n = "facewire_gallery_pg_connected";
    fw_sb_printf(b, "# HELP %s 1 while the connection is up, by role.\n# TYPE %s gauge\n", n, n);
    fw_sb_printf(b, "%s{role=\"writer\"} %d\n", n, pi.writer_connected);
    fw_sb_printf(b, "%s{role=\"follower\"} %d\n", n, pi.follower_connected);
    n = "facewire_gallery_pg_lag_seconds";
    fw_sb_printf(b, "# HELP %s Age of the oldest change known and not yet applied (0: caught up).\n"
                    "# TYPE %s gauge\n", n, n);
    fw_sb_printf(b, "%s %.3f\n", n, (double)pi.lag_ms / 1e3);
    n = "facewire_gallery_pg_apply_lag_seconds";
    fw_sb_printf(b, "# HELP %s Per change, from its commit to this node's memory, since start.\n"
                    "# TYPE %s gauge\n", n, n);
    fw_sb_printf(b, "%s{quantile=\"0.5\"} %.6f\n", n, (double)pi.lag_p50_us / 1e6);
    fw_sb_printf(b, "%s{quantile=\"0.99\"} %.6f\n", n, (double)pi.lag_p99_us / 1e6);
    n = "facewire_gallery_pg_load_seconds";
    fw_sb_printf(b, "# HELP %s Duration of the last full load.\n# TYPE %s gauge\n", n, n);
    fw_sb_printf(b, "%s %.3f\n", n, (double)pi.load_ms / 1e3);
}

void fw_galops_metrics(fw_galops *gx, fw_sb *b)
{
    fw_gallery_info gi;
    if (!gx)
        return;
    fw_gallery_info_get(gx->g, &gi);
    static const prom_family m[] = {
        { "facewire_gallery_faces", "gauge", "Faces enrolled." },
        { "facewire_gallery_subjects", "gauge", "Subjects with at least one face." },
        { "facewire_gallery_bytes", "gauge", "Snapshot + log bytes on disk (index memory without --data)." },
        { "facewire_gallery_last_seq", "gauge", "Sequence number of the last durable log record." },
        { "facewire_gallery_compactions_total", "counter", "Snapshots written since start." },
        { "facewire_gallery_write_errors_total", "counter", "Write batches that failed to reach the disk." },
        { "facewire_gallery_pending_writes", "gauge", "Enrolls and deletes waiting for their record to be on disk." },
    };
    uint64_t v[] = { gi.faces, gi.subjects, gx->disk ? gi.disk_bytes : gi.mem_bytes, gi.last_seq,
                     gi.compactions, gi.write_errors, gx->pending };
    prom_families(b, m, v, sizeof m / sizeof m[0]);
    const char *n = "facewire_gallery_write_seconds";
    fw_sb_printf(b, "# HELP %s Time from queueing an enroll or delete to its record being on disk.\n"
                    "# TYPE %s summary\n", n, n);
    fw_sb_printf(b, "%s{quantile=\"0.5\"} %.6f\n", n, (double)fw_hist_quantile(&gx->write_us, 0.5) / 1e6);
    fw_sb_printf(b, "%s{quantile=\"0.99\"} %.6f\n", n, (double)fw_hist_quantile(&gx->write_us, 0.99) / 1e6);
    fw_sb_printf(b, "%s_sum %.6f\n", n, (double)gx->write_us.sum / 1e6);
    fw_sb_printf(b, "%s_count %llu\n", n, (unsigned long long)gx->write_us.count);
    if (gx->pg)
        pg_metrics(gx, b);
}
