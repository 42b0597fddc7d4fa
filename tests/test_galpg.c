/*
 * test_galpg.c — the PostgreSQL system of record (server/galpg.h) against a real PostgreSQL
 * started by tests/tu_pg.c, and fw_gallery_apply (the follower's way into the in-memory
 * gallery) on its own.
 *
 * One PostgreSQL instance serves the whole binary; every test gets a database of its own.
 * A "node" is a memory-only fw_gallery plus a fw_galpg on it, all on one libuv loop, so two
 * nodes in one test behave like two facewired processes sharing a database. Waits are for
 * conditions (a callback, a figure in fw_galpg_info, a row in the database) with the usual
 * generous deadline, checked every few milliseconds by a loop timer: nothing sleeps to
 * synchronise.
 */
// run-under: tsan
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "fw_proto.h"
#include "server/breaker.h"
#include "server/gallery.h"
#include "server/galpg.h"
#include "tests/check.h"
#include "tests/tu_data.h"
#include "tests/tu_pg.h"
#include "tests/tu_server.h"

#define DIM FW_GALLERY_DIM
_Static_assert(DIM == TU_DESC_DIM, "tu_desc_for makes gallery descriptors");

/* ---- helpers ---------------------------------------------------------------------------- */

static fw_gallery *mem_gallery(void)
{
    fw_gallery_options o;
    fw_gallery *g = NULL;
    char err[256];
    fw_gallery_options_default(&o);
    o.max_faces = 100000;
    if (fw_gallery_open(&o, &g, NULL, err, sizeof err) != 0)
        fprintf(stderr, "fw_gallery_open: %s\n", err);
    return g;
}

static fw_gallery_change add(uint64_t seq, uint64_t id, const char *subject, const float *desc)
{
    fw_gallery_change c = { .seq = seq, .kind = FW_GALLERY_CHANGE_ADD, .face_id = id,
                            .subject = subject, .subject_len = strlen(subject),
                            .meta = subject, .meta_len = strlen(subject), .desc = desc };
    return c;
}

static fw_gallery_change rm(uint64_t seq, uint64_t id)
{
    fw_gallery_change c = { .seq = seq, .kind = FW_GALLERY_CHANGE_REMOVE, .face_id = id };
    return c;
}

/* The subject of face id ("" when absent). */
static const char *subject_of(fw_gallery *g, uint64_t id, char *buf)
{
    fw_gallery_subject s;
    buf[0] = '\0';
    if (fw_gallery_get(g, id, &s, NULL, NULL, NULL) == FW_STATUS_OK)
        memcpy(buf, s.subject, (size_t)s.subject_len + 1);
    return buf;
}

static uint32_t faces_of(fw_gallery *g, const char *subject)
{
    fw_gallery_subject out[1];
    char next[FW_GALLERY_SUBJECT_MAX + 1], err[128];
    size_t next_len;
    int n = 0;
    /* Page through from the start, one subject a page (the galleries here are small). */
    char cur[FW_GALLERY_SUBJECT_MAX + 1];
    size_t cur_len = 0;
    for (;;) {
        if (fw_gallery_list(g, cur, cur_len, 1, out, &n, next, &next_len, err, sizeof err) !=
                FW_STATUS_OK || n == 0)
            return 0;
        if (out[0].subject_len == strlen(subject) && memcmp(out[0].subject, subject,
                                                            out[0].subject_len) == 0)
            return out[0].faces;
        if (!next_len)
            return 0;
        memcpy(cur, next, next_len);
        cur_len = next_len;
    }
}

/* ---- fw_gallery_apply -------------------------------------------------------------------- */

static void t_apply_adds_and_removes(void)
{
    fw_gallery *g = mem_gallery();
    float d1[DIM], d2[DIM], d3[DIM], got[DIM];
    char err[256], buf[FW_GALLERY_SUBJECT_MAX + 1];
    fw_gallery_info info;
    CHECK(g);
    tu_desc_for(1, d1);
    tu_desc_for(2, d2);
    tu_desc_for(3, d3);
    fw_gallery_change c[] = { add(1, 10, "alice", d1), add(2, 11, "bob", d2),
                              add(3, 12, "alice", d3), rm(4, 11) };
    CHECK_EQ_INT(fw_gallery_apply(g, c, 4, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2);
    CHECK_EQ_INT(info.subjects, 1);
    CHECK_EQ_INT(info.last_seq, 4);
    CHECK_EQ_INT(info.next_face_id, 13);
    CHECK_EQ_STR(subject_of(g, 10, buf), "alice");
    CHECK_EQ_STR(subject_of(g, 11, buf), "");
    CHECK_EQ_INT(faces_of(g, "alice"), 2);
    uint8_t meta[FW_GALLERY_META_MAX];
    size_t meta_len = 0;
    CHECK_EQ_INT(fw_gallery_get(g, 12, NULL, meta, &meta_len, got), FW_STATUS_OK);
    CHECK_EQ_INT(meta_len, 5);
    CHECK(memcmp(meta, "alice", 5) == 0);
    CHECK(memcmp(got, d3, sizeof got) == 0);

    /* The search sees applied faces like enrolled ones. */
    fw_gallery_match m[1];
    int counts[1];
    CHECK_EQ_INT(fw_gallery_search(g, d3, 1, 1, INFINITY, m, counts, NULL, err, sizeof err),
                 FW_STATUS_OK);
    CHECK_EQ_INT(counts[0], 1);
    CHECK_EQ_INT(m[0].face_id, 12);
    fw_gallery_close(g);
}

static void t_apply_idempotent(void)
{
    fw_gallery *g = mem_gallery();
    float d1[DIM], d2[DIM];
    char err[256], buf[FW_GALLERY_SUBJECT_MAX + 1];
    fw_gallery_info info;
    CHECK(g);
    tu_desc_for(1, d1);
    tu_desc_for(2, d2);
    fw_gallery_change a[] = { add(1, 5, "carol", d1) };
    CHECK_EQ_INT(fw_gallery_apply(g, a, 1, err, sizeof err), 0);
    /* The same id again (another subject even): a no-op; an absent id removed: a no-op. */
    fw_gallery_change b[] = { add(2, 5, "dave", d2), rm(3, 99), add(0, 5, "erin", d2) };
    CHECK_EQ_INT(fw_gallery_apply(g, b, 3, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 1);
    CHECK_EQ_INT(info.subjects, 1);
    CHECK_EQ_INT(info.last_seq, 3);
    /* A skipped change only moves the sequence (face id 0 is fine there). */
    fw_gallery_change skip = { .seq = 4, .kind = FW_GALLERY_CHANGE_SKIP };
    CHECK_EQ_INT(fw_gallery_apply(g, &skip, 1, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 1);
    CHECK_EQ_INT(info.last_seq, 4);
    CHECK_EQ_STR(subject_of(g, 5, buf), "carol");
    CHECK_EQ_INT(faces_of(g, "dave"), 0);
    fw_gallery_close(g);
}

/* Within one call: a subject loses its last face and gets a new one, an id comes and goes and
 * comes back, a new subject appears in many ADDs — every reservation path. */
static void t_apply_same_call_interplay(void)
{
    fw_gallery *g = mem_gallery();
    float d[DIM];
    char err[256], buf[FW_GALLERY_SUBJECT_MAX + 1];
    fw_gallery_info info;
    CHECK(g);
    tu_desc_for(7, d);
    fw_gallery_change a[] = { add(1, 1, "frank", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, a, 1, err, sizeof err), 0);
    fw_gallery_change b[] = { rm(2, 1), add(3, 2, "frank", d), add(4, 3, "gina", d),
                              rm(5, 3), add(6, 3, "gina", d), add(7, 4, "gina", d),
                              add(8, 4, "hank", d), rm(9, 2) };
    CHECK_EQ_INT(fw_gallery_apply(g, b, 8, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2);
    CHECK_EQ_INT(info.subjects, 1);
    CHECK_EQ_INT(info.last_seq, 9);
    CHECK_EQ_STR(subject_of(g, 3, buf), "gina");
    CHECK_EQ_STR(subject_of(g, 4, buf), "gina");
    CHECK_EQ_INT(faces_of(g, "gina"), 2);
    CHECK_EQ_INT(faces_of(g, "frank"), 0);
    CHECK_EQ_INT(faces_of(g, "hank"), 0);

    /* Many distinct new subjects and repeats in one call (the call's own subject table). */
    enum { N = 3000 };
    fw_gallery_change *c = calloc(N, sizeof *c);
    char (*names)[16] = calloc(N, sizeof *names);
    CHECK(c && names);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "s%d", i % 1000);
        c[i] = add(10 + (uint64_t)i, 100 + (uint64_t)i, names[i], d);
    }
    int rc = fw_gallery_apply(g, c, N, err, sizeof err);
    free(c);
    free(names);
    CHECK_EQ_INT(rc, 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2 + N);
    CHECK_EQ_INT(info.subjects, 1 + 1000);
    CHECK_EQ_INT(faces_of(g, "s999"), 3);
    fw_gallery_close(g);
}

static void t_apply_refuses_bad_changes(void)
{
    fw_gallery *g = mem_gallery();
    float d[DIM], nan_d[DIM];
    char err[256];
    fw_gallery_info info;
    CHECK(g);
    tu_desc_for(1, d);
    memcpy(nan_d, d, sizeof d);
    nan_d[17] = NAN;
    fw_gallery_change first[] = { add(5, 1, "ivan", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, first, 1, err, sizeof err), 0);

    /* Each bad change spoils the whole call: the good ADD before it is not applied. */
    fw_gallery_change bad_desc[] = { add(6, 2, "judy", d), add(7, 3, "judy", nan_d) };
    CHECK_EQ_INT(fw_gallery_apply(g, bad_desc, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 7: face 3 has an invalid subject, metadata or descriptor");
    fw_gallery_change bad_subj[] = { add(6, 2, "judy", d), add(7, 3, "", d) };
    bad_subj[1].subject = "a\0b";
    bad_subj[1].subject_len = 3;
    CHECK_EQ_INT(fw_gallery_apply(g, bad_subj, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 7: face 3 has an invalid subject, metadata or descriptor");
    fw_gallery_change bad_meta[] = { add(6, 2, "judy", d) };
    bad_meta[0].meta_len = FW_GALLERY_META_MAX + 1;
    CHECK_EQ_INT(fw_gallery_apply(g, bad_meta, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 6: face 2 has an invalid subject, metadata or descriptor");
    fw_gallery_change old_seq[] = { add(6, 2, "judy", d), add(5, 3, "judy", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, old_seq, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 5 does not follow 6");
    fw_gallery_change behind[] = { add(5, 2, "judy", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, behind, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 5 does not follow 5");
    fw_gallery_change zero_id[] = { rm(6, 0) };
    CHECK_EQ_INT(fw_gallery_apply(g, zero_id, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 6: face id 0");
    fw_gallery_change kind[] = { rm(6, 1) };
    kind[0].kind = 9;
    CHECK_EQ_INT(fw_gallery_apply(g, kind, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 6: unknown kind 9");
    CHECK_EQ_INT(fw_gallery_apply(g, NULL, -1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "bad change list");

    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 1);
    CHECK_EQ_INT(info.last_seq, 5);
    CHECK_EQ_INT(faces_of(g, "judy"), 0);
    fw_gallery_close(g);
}

static void t_apply_reset_and_full(void)
{
    fw_gallery_options o;
    fw_gallery *g = NULL;
    float d[DIM];
    char err[256];
    fw_gallery_info info;
    fw_gallery_options_default(&o);
    o.max_faces = 3;
    CHECK_EQ_INT(fw_gallery_open(&o, &g, NULL, err, sizeof err), 0);
    tu_desc_for(1, d);
    fw_gallery_change a[] = { add(1, 1, "k", d), add(2, 2, "l", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, a, 2, err, sizeof err), 0);
    fw_gallery_change b[] = { add(3, 3, "m", d), add(4, 4, "n", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, b, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "gallery full (3 faces)");
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2);
    CHECK_EQ_INT(info.last_seq, 2);

    /* Room is reserved for every ADD of a call: in a full gallery a REMOVE then an ADD is
     * refused as one call (nothing applied) but goes through one change at a time. */
    fw_gallery_change c[] = { add(3, 3, "m", d), rm(4, 1), add(5, 4, "n", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, c, 1, err, sizeof err), 0);
    CHECK_EQ_INT(fw_gallery_apply(g, c + 1, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "gallery full (3 faces)");
    CHECK_EQ_INT(fw_gallery_apply(g, c + 1, 1, err, sizeof err), 0);
    CHECK_EQ_INT(fw_gallery_apply(g, c + 2, 1, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 3);
    CHECK_EQ_INT(info.last_seq, 5);

    /* A full load starts from nothing, at the snapshot's seq; its faces carry seq 0. */
    CHECK_EQ_INT(fw_gallery_apply_reset(g, 40, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 0);
    CHECK_EQ_INT(info.subjects, 0);
    CHECK_EQ_INT(info.last_seq, 40);
    CHECK_EQ_INT(info.next_face_id, 1);
    fw_gallery_change load[] = { add(0, 7, "k", d), add(0, 3, "k", d), add(41, 8, "o", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, load, 3, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 3);
    CHECK_EQ_INT(info.last_seq, 41);
    CHECK_EQ_INT(info.next_face_id, 9);
    fw_gallery_close(g);
}

static void t_apply_refuses_disk_gallery(void)
{
    fw_gallery_options o;
    fw_gallery *g = NULL;
    char dir[] = "/tmp/fwgalpg.XXXXXX", err[256];
    CHECK(mkdtemp(dir));
    fw_gallery_options_default(&o);
    o.data_dir = dir;
    CHECK_EQ_INT(fw_gallery_open(&o, &g, NULL, err, sizeof err), 0);
    fw_gallery_change c[] = { rm(1, 1) };
    int rc = fw_gallery_apply(g, c, 1, err, sizeof err);
    fw_gallery_close(g);
    CHECK_EQ_INT(tu_rmtree(dir), 0);
    CHECK_EQ_INT(rc, -1);
    CHECK_EQ_STR(err, "changes can only be applied to a memory-only gallery");
}

/* ---- PostgreSQL: the instance, databases, nodes ------------------------------------------- */

static tu_pg pg;      /* started by main() for the whole binary */
static int pg_ok;     /* it started */
static int db_count;  /* databases handed out */

/* A fresh database; its connection string in url. */
static int new_db(char *url, size_t cap)
{
    char sql[64];
    if (!pg_ok)
        return -1;
    snprintf(sql, sizeof sql, "CREATE DATABASE t%d", ++db_count);
    if (tu_pg_psql(&pg, sql, NULL, 0) != 0)
        return -1;
    snprintf(url, cap, "host=127.0.0.1 port=%d user=fw dbname=t%d", pg.port, db_count);
    return 0;
}

/* psql against the test's database (the instance-wide helper runs against "postgres"). */
static int sql(const char *url, const char *q, char *out, size_t cap)
{
    PGconn *c = PQconnectdb(url);
    int rc = -1;
    if (out && cap)
        out[0] = '\0';
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "sql: %s", PQerrorMessage(c));
        goto out;
    }
    PGresult *r = PQexec(c, q);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        rc = 0;
        if (out && cap && st == PGRES_TUPLES_OK && PQntuples(r) > 0)
            snprintf(out, cap, "%s", PQgetvalue(r, 0, 0));
    } else {
        fprintf(stderr, "sql: %s: %s", q, PQresultErrorMessage(r));
    }
    PQclear(r);
out:
    PQfinish(c);
    return rc;
}

static long long sql_int(const char *url, const char *q)
{
    char out[64];
    if (sql(url, q, out, sizeof out) != 0 || !out[0])
        return -1;
    return strtoll(out, NULL, 10);
}

/* Every line the nodes log, for tests that look for one. Written from the module's threads. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[64 * 1024];
static size_t log_len;

static void on_log(void *arg, int level, const char *line)
{
    pthread_mutex_lock(&log_mu);
    int n = snprintf(log_buf + log_len, sizeof log_buf - log_len, "%d %s\n", level, line);
    if (n > 0 && (size_t)n < sizeof log_buf - log_len)
        log_len += (size_t)n;
    pthread_mutex_unlock(&log_mu);
    if (getenv("FW_TEST_VERBOSE"))
        fprintf(stderr, "galpg log %d: %s\n", level, line);
}

static int log_count(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&log_mu);
    for (const char *q = log_buf; (q = strstr(q, needle)); q++)
        n++;
    pthread_mutex_unlock(&log_mu);
    return n;
}

static void log_reset(void)
{
    pthread_mutex_lock(&log_mu);
    log_len = 0;
    log_buf[0] = '\0';
    pthread_mutex_unlock(&log_mu);
}

/* The loop all nodes of a test share, with a timer that makes uv_run(ONCE) return every few
 * milliseconds so that waits can look at their condition and their deadline. */
typedef struct env {
    uv_loop_t loop;
    uv_timer_t tick;
} env;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void env_init(env *e)
{
    uv_loop_init(&e->loop);
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, on_tick, 2, 2);
}

static void env_close(env *e)
{
    uv_close((uv_handle_t *)&e->tick, NULL);
    while (uv_run(&e->loop, UV_RUN_DEFAULT))
        ;
    uv_loop_close(&e->loop);
}

typedef struct node {
    fw_gallery *g;
    fw_galpg *p;
} node;

static int node_open(env *e, node *n, const char *url, uint32_t batch_max)
{
    fw_galpg_options o;
    char err[256];
    memset(n, 0, sizeof *n);
    if (!(n->g = mem_gallery()))
        return -1;
    memset(&o, 0, sizeof o);
    o.url = url;
    o.gallery = n->g;
    o.batch_max = batch_max;
    o.poll_ms = 200;
    o.reconnect_max_ms = 400;
    o.log = on_log;
    if (fw_galpg_open(&e->loop, &o, &n->p, err, sizeof err) != 0) {
        fprintf(stderr, "fw_galpg_open: %s\n", err);
        fw_gallery_close(n->g);
        n->g = NULL;
        return -1;
    }
    return 0;
}

/* Close a node; the loop frees the fw_galpg once its handle has closed. */
static void node_close(env *e, node *n)
{
    if (n->p)
        fw_galpg_close(n->p);
    uv_run(&e->loop, UV_RUN_NOWAIT);
    if (n->g)
        fw_gallery_close(n->g);
    n->p = NULL;
    n->g = NULL;
}

typedef int (*cond_fn)(void *arg);

/* Run the loop until cond holds or the deadline passes. 1 if it holds. */
static int wait_until(env *e, cond_fn cond, void *arg)
{
    uint64_t end = uv_hrtime() + (uint64_t)tu_timeout_ms() * 1000000u;
    while (!cond(arg)) {
        if (uv_hrtime() > end)
            return 0;
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    return 1;
}

static int is_loaded(void *arg)
{
    node *n = arg;
    fw_galpg_info i;
    fw_galpg_info_get(n->p, &i);
    return i.loaded && i.writer_connected;
}

/* The node has applied everything up to the database's counter now. */
typedef struct caught_up {
    node *n;
    const char *url;
    long long seq;
} caught_up;

static int is_caught_up(void *arg)
{
    caught_up *c = arg;
    fw_galpg_info i;
    fw_galpg_info_get(c->n->p, &i);
    return i.loaded && (long long)i.applied_seq >= c->seq;
}

static int wait_caught_up(env *e, node *n, const char *url)
{
    caught_up c = { n, url, sql_int(url, "SELECT seq FROM fw_counter") };
    return c.seq >= 0 && wait_until(e, is_caught_up, &c);
}

typedef struct done {
    int called, status;
    uint64_t value;
    char msg[192];
} done;

static void on_done(void *arg, int status, uint64_t value, const char *msg)
{
    done *d = arg;
    d->called++;
    d->status = status;
    d->value = value;
    snprintf(d->msg, sizeof d->msg, "%s", msg ? msg : "");
}

static int is_done(void *arg)
{
    return ((done *)arg)->called > 0;
}

/* Enroll and wait for the answer. The status of the call or of the callback. */
static int enroll(env *e, node *n, const char *subject, uint64_t seed, done *d)
{
    float desc[DIM];
    char err[192];
    uint32_t retry = 0;
    memset(d, 0, sizeof *d);
    tu_desc_for(seed, desc);
    int st = fw_galpg_enroll(n->p, subject, strlen(subject), subject, strlen(subject), desc,
                             on_done, d, &retry, err, sizeof err);
    if (st != FW_STATUS_OK) {
        d->status = st;
        snprintf(d->msg, sizeof d->msg, "%s", err);
        return st;
    }
    if (!wait_until(e, is_done, d))
        return -1;
    return d->status;
}

typedef struct has_face {
    node *n;
    uint64_t id;
    int want;   /* 1: present, 0: absent */
} has_face;

static int face_is(void *arg)
{
    has_face *h = arg;
    return (fw_gallery_get(h->n->g, h->id, NULL, NULL, NULL, NULL) == FW_STATUS_OK) == h->want;
}

static int wait_face(env *e, node *n, uint64_t id, int want)
{
    has_face h = { n, id, want };
    return wait_until(e, face_is, &h);
}

/* Both galleries hold exactly the same faces (ids, subjects, metadata, descriptors). */
static int same_memory(fw_gallery *a, fw_gallery *b, uint64_t max_id)
{
    fw_gallery_info ia, ib;
    fw_gallery_info_get(a, &ia);
    fw_gallery_info_get(b, &ib);
    if (ia.faces != ib.faces || ia.subjects != ib.subjects || ia.last_seq != ib.last_seq)
        return 0;
    for (uint64_t id = 1; id <= max_id; id++) {
        fw_gallery_subject sa, sb;
        uint8_t ma[FW_GALLERY_META_MAX], mb[FW_GALLERY_META_MAX];
        size_t la = 0, lb = 0;
        float da[DIM], db[DIM];
        int ra = fw_gallery_get(a, id, &sa, ma, &la, da);
        int rb = fw_gallery_get(b, id, &sb, mb, &lb, db);
        if (ra != rb)
            return 0;
        if (ra == FW_STATUS_OK &&
            (sa.subject_len != sb.subject_len || memcmp(sa.subject, sb.subject, sa.subject_len) ||
             la != lb || memcmp(ma, mb, la) || memcmp(da, db, sizeof da)))
            return 0;
    }
    return 1;
}

/* ---- PostgreSQL tests ------------------------------------------------------------------------ */

static void t_pg_schema_created_and_reused(void)
{
    env e;
    node a;
    char url[160], out[64];
    CHECK(new_db(url, sizeof url) == 0);
    log_reset();
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    int loaded = wait_until(&e, is_loaded, &a);
    node_close(&e, &a);
    CHECK(loaded);
    CHECK_EQ_INT(sql_int(url, "SELECT version FROM fw_schema"), 1);
    CHECK_EQ_INT(sql_int(url, "SELECT seq FROM fw_counter WHERE id = 1"), 0);
    /* Opened again: the schema is found, not created a second time. */
    CHECK(node_open(&e, &a, url, 0) == 0);
    loaded = wait_until(&e, is_loaded, &a);
    char why[64];
    int ready = fw_galpg_ready(a.p, why, sizeof why);
    node_close(&e, &a);
    env_close(&e);
    CHECK(loaded);
    CHECK(ready);
    CHECK_EQ_STR(why, "");
    CHECK(sql(url, "SELECT count(*) FROM fw_schema", out, sizeof out) == 0);
    CHECK_EQ_STR(out, "1");
    CHECK_EQ_INT(log_count("postgresql schema created\tversion=1"), 1);
    CHECK(log_count("gallery loaded from postgresql\tfaces=0 seq=0 ms=") == 2);
}

static void t_pg_enroll_delete_two_nodes(void)
{
    env e;
    node a, b;
    char url[160];
    done d;
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    CHECK(node_open(&e, &b, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &a) && wait_until(&e, is_loaded, &b));

    /* Enroll through a: OK after COMMIT; both memories get it through the change table. */
    CHECK_EQ_INT(enroll(&e, &a, "alice", 1, &d), FW_STATUS_OK);
    uint64_t id = d.value;
    CHECK(id >= 1);
    CHECK_EQ_INT(sql_int(url, "SELECT count(*) FROM fw_face"), 1);
    CHECK(wait_face(&e, &b, id, 1) && wait_face(&e, &a, id, 1));
    fw_gallery_subject s;
    uint8_t meta[FW_GALLERY_META_MAX];
    size_t meta_len = 0;
    float got[DIM], want[DIM];
    tu_desc_for(1, want);
    CHECK_EQ_INT(fw_gallery_get(b.g, id, &s, meta, &meta_len, got), FW_STATUS_OK);
    CHECK_EQ_STR(s.subject, "alice");
    CHECK_EQ_INT(meta_len, 5);
    CHECK(memcmp(got, want, sizeof got) == 0);

    /* Delete the face through b. */
    uint32_t retry = 0;
    char err[192];
    memset(&d, 0, sizeof d);
    CHECK_EQ_INT(fw_galpg_delete_face(b.p, id, on_done, &d, &retry, err, sizeof err), FW_STATUS_OK);
    CHECK(wait_until(&e, is_done, &d));
    CHECK_EQ_INT(d.status, FW_STATUS_OK);
    CHECK_EQ_INT(d.value, 1);
    CHECK(wait_face(&e, &a, id, 0) && wait_face(&e, &b, id, 0));
    memset(&d, 0, sizeof d);
    CHECK_EQ_INT(fw_galpg_delete_face(a.p, id, on_done, &d, &retry, err, sizeof err), FW_STATUS_OK);
    CHECK(wait_until(&e, is_done, &d));
    CHECK_EQ_INT(d.status, FW_STATUS_NOT_FOUND);
    char expect[64];
    snprintf(expect, sizeof expect, "no face with id %" PRIu64, id);
    CHECK_EQ_STR(d.msg, expect);
    CHECK_EQ_INT(fw_galpg_delete_face(a.p, 0, on_done, &d, &retry, err, sizeof err),
                 FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(err, "no face with id 0");

    /* Delete a subject of three faces. */
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(enroll(&e, i % 2 ? &a : &b, "sam", 10 + (uint64_t)i, &d), FW_STATUS_OK);
        ids[i] = d.value;
    }
    memset(&d, 0, sizeof d);
    CHECK_EQ_INT(fw_galpg_delete_subject(b.p, "sam", 3, on_done, &d, &retry, err, sizeof err),
                 FW_STATUS_OK);
    CHECK(wait_until(&e, is_done, &d));
    CHECK_EQ_INT(d.status, FW_STATUS_OK);
    CHECK_EQ_INT(d.value, 3);
    for (int i = 0; i < 3; i++)
        CHECK(wait_face(&e, &a, ids[i], 0) && wait_face(&e, &b, ids[i], 0));
    memset(&d, 0, sizeof d);
    CHECK_EQ_INT(fw_galpg_delete_subject(a.p, "nobody", 6, on_done, &d, &retry, err, sizeof err),
                 FW_STATUS_OK);
    CHECK(wait_until(&e, is_done, &d));
    CHECK_EQ_INT(d.status, FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(d.msg, "no subject \"nobody\"");
    CHECK_EQ_INT(fw_galpg_delete_subject(a.p, "", 0, on_done, &d, &retry, err, sizeof err),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, "subject must be 1-128 bytes of UTF-8 without NUL");

    /* 1 enroll + 1 delete + 3 enrolls + 3 deletes: eight dense changes. */
    CHECK_EQ_INT(sql_int(url, "SELECT seq FROM fw_counter"), 8);
    CHECK_EQ_INT(sql_int(url, "SELECT count(*) FROM fw_change WHERE seq BETWEEN 1 AND 8"), 8);
    CHECK(wait_caught_up(&e, &a, url) && wait_caught_up(&e, &b, url));
    fw_galpg_info ia;
    fw_galpg_info_get(a.p, &ia);
    CHECK_EQ_INT(ia.applied_seq, 8);
    CHECK_EQ_INT(ia.head_seq, 8);
    CHECK_EQ_INT(ia.bad_rows, 0);
    CHECK(ia.commits >= 3);
    CHECK(same_memory(a.g, b.g, ids[2]));
    node_close(&e, &a);
    node_close(&e, &b);
    env_close(&e);
}

/* Two writers enrolling and deleting at the same time, in batches: both memories end the same,
 * and the change table is dense (1..N, no gap, no duplicate). */
#define INTERLEAVE_N 300
typedef struct many {
    done d[2 * INTERLEAVE_N + 16];
    int issued;
} many;

static int all_done(void *arg)
{
    many *m = arg;
    for (int i = 0; i < m->issued; i++)
        if (!m->d[i].called)
            return 0;
    return 1;
}

static void t_pg_two_writers_interleave(void)
{
    env e;
    node a, b;
    char url[160], err[192], name[32];
    float desc[DIM];
    uint32_t retry;
    many *m = calloc(1, sizeof *m);
    CHECK(m);
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 16) == 0);
    CHECK(node_open(&e, &b, url, 7) == 0);
    CHECK(wait_until(&e, is_loaded, &a) && wait_until(&e, is_loaded, &b));
    for (int i = 0; i < 2 * INTERLEAVE_N; i++) {
        node *n = i % 2 ? &a : &b;
        snprintf(name, sizeof name, "p%d", i % 37);
        tu_desc_for(100 + (uint64_t)i, desc);
        int st = fw_galpg_enroll(n->p, name, strlen(name), NULL, 0, desc, on_done,
                                 &m->d[m->issued], &retry, err, sizeof err);
        CHECK_MSG(st == FW_STATUS_OK, "enroll %d: %d %s", i, st, err);
        m->issued++;
        if (i % 50 == 49) { /* deletes racing the enrolls, through the other node */
            snprintf(name, sizeof name, "p%d", i % 37);
            st = fw_galpg_delete_subject(n == &a ? b.p : a.p, name, strlen(name), on_done,
                                         &m->d[m->issued], &retry, err, sizeof err);
            CHECK_EQ_INT(st, FW_STATUS_OK);
            m->issued++;
        }
    }
    CHECK(wait_until(&e, all_done, m));
    for (int i = 0; i < m->issued; i++)
        CHECK_MSG(m->d[i].status == FW_STATUS_OK || m->d[i].status == FW_STATUS_NOT_FOUND,
                  "request %d: %d %s", i, m->d[i].status, m->d[i].msg);
    long long seq = sql_int(url, "SELECT seq FROM fw_counter");
    CHECK(seq >= 2 * INTERLEAVE_N);
    CHECK_EQ_INT(sql_int(url, "SELECT count(*) FROM fw_change"), seq);
    CHECK_EQ_INT(sql_int(url, "SELECT min(seq) FROM fw_change"), 1);
    CHECK_EQ_INT(sql_int(url, "SELECT max(seq) FROM fw_change"), seq);
    CHECK(wait_caught_up(&e, &a, url) && wait_caught_up(&e, &b, url));
    long long max_id = sql_int(url, "SELECT last_value FROM fw_face_id_seq");
    CHECK(max_id >= 2 * INTERLEAVE_N);
    CHECK(same_memory(a.g, b.g, (uint64_t)max_id));
    fw_gallery_info gi;
    fw_gallery_info_get(a.g, &gi);
    CHECK_EQ_INT(gi.faces, sql_int(url, "SELECT count(*) FROM fw_face"));
    CHECK_EQ_INT(gi.last_seq, seq);
    node_close(&e, &a);
    node_close(&e, &b);
    env_close(&e);
    free(m);
}

typedef struct seen_head {
    node *n;
    uint64_t head;
} seen_head;

static int head_reached(void *arg)
{
    seen_head *h = arg;
    fw_galpg_info i;
    fw_galpg_info_get(h->n->p, &i);
    return i.head_seq >= h->head;
}

/* A change that is not visible yet must hold back everything after it. Made by hand: the
 * counter and change row of seq S+2 committed while S+1 is missing (a writer that follows the
 * protocol cannot do this: see docs/gallery.md; the follower must not rely on it). */
static void t_pg_gap_is_never_skipped(void)
{
    env e;
    node a;
    char url[160], q[512];
    done d;
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &a));
    CHECK_EQ_INT(enroll(&e, &a, "gary", 1, &d), FW_STATUS_OK);
    CHECK(wait_caught_up(&e, &a, url));
    long long s = sql_int(url, "SELECT seq FROM fw_counter");
    uint64_t keep = d.value;
    /* Face x arrives at s+2 while s+1 is missing. */
    snprintf(q, sizeof q,
             "BEGIN;"
             "INSERT INTO fw_face (subject, meta, descriptor) SELECT subject, meta, descriptor "
             "  FROM fw_face WHERE id = %" PRIu64 ";"
             "INSERT INTO fw_change (seq, kind, face_id, at)"
             "  VALUES (%lld, 1, currval('fw_face_id_seq'), clock_timestamp() - interval '60 s');"
             "UPDATE fw_counter SET seq = %lld;"
             "NOTIFY fw_change; COMMIT", keep, s + 2, s + 2);
    CHECK(sql(url, q, NULL, 0) == 0);
    long long x = sql_int(url, "SELECT max(id) FROM fw_face");
    seen_head h = { &a, (uint64_t)s + 2 };
    CHECK(wait_until(&e, head_reached, &h)); /* the follower has read the row after the hole */
    fw_galpg_info i;
    fw_galpg_info_get(a.p, &i);
    CHECK_EQ_INT(i.applied_seq, s);
    CHECK_EQ_INT(fw_gallery_get(a.g, (uint64_t)x, NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    /* Held at the hole behind a change a minute old: not ready (this is what turns /health
     * 503 "lagging N ms" and takes the node out of the balancer), the lag at least that age. */
    char why[96];
    CHECK_EQ_INT(fw_galpg_ready(a.p, why, sizeof why), 0);
    CHECK(strncmp(why, "lagging ", 8) == 0);
    CHECK(i.lag_ms >= 60000);
    /* The hole fills (a REMOVE of the face enrolled first): both apply, in order. */
    snprintf(q, sizeof q,
             "BEGIN; DELETE FROM fw_face WHERE id = %" PRIu64 ";"
             "INSERT INTO fw_change (seq, kind, face_id) VALUES (%lld, 2, %" PRIu64 ");"
             "NOTIFY fw_change; COMMIT", keep, s + 1, keep);
    CHECK(sql(url, q, NULL, 0) == 0);
    CHECK(wait_caught_up(&e, &a, url));
    fw_galpg_info_get(a.p, &i);
    CHECK_EQ_INT(i.applied_seq, s + 2);
    CHECK_EQ_INT(fw_gallery_get(a.g, (uint64_t)x, NULL, NULL, NULL, NULL), FW_STATUS_OK);
    CHECK_EQ_INT(fw_gallery_get(a.g, keep, NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    CHECK_EQ_INT(fw_galpg_ready(a.p, why, sizeof why), 1); /* caught up: in sync again */
    node_close(&e, &a);
    env_close(&e);
}

static int writer_waits_on_lock(void *arg)
{
    return sql_int(arg, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                        "WHERE NOT l.granted AND a.application_name = 'facewired-writer'") > 0;
}

/* A transaction that holds the counter makes every other writer wait at the counter, so the
 * sequence follows commit order: the held one's change gets S+1, the waiting enroll S+2, and
 * the follower applies them in that order. */
static void t_pg_counter_orders_commits(void)
{
    env e;
    node a;
    char url[160], q[512], err[192];
    done d;
    float desc[DIM];
    uint32_t retry;
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &a));
    CHECK_EQ_INT(enroll(&e, &a, "hold", 1, &d), FW_STATUS_OK);
    CHECK(wait_caught_up(&e, &a, url));
    long long s = sql_int(url, "SELECT seq FROM fw_counter");

    PGconn *c = PQconnectdb(url);
    CHECK(PQstatus(c) == CONNECTION_OK);
    snprintf(q, sizeof q,
             "BEGIN;"
             "INSERT INTO fw_face (subject, meta, descriptor) SELECT 'held'::bytea, meta, "
             "  descriptor FROM fw_face WHERE id = %" PRIu64 ";"
             "WITH c AS (UPDATE fw_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq) "
             "INSERT INTO fw_change (seq, kind, face_id) "
             "  SELECT c.seq, 1, currval('fw_face_id_seq') FROM c", d.value);
    PGresult *r = PQexec(c, q);
    int began = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!began)
        PQfinish(c);
    CHECK(began);
    tu_desc_for(2, desc);
    memset(&d, 0, sizeof d);
    int st = fw_galpg_enroll(a.p, "later", 5, NULL, 0, desc, on_done, &d, &retry, err, sizeof err);
    int waited = st == FW_STATUS_OK && wait_until(&e, writer_waits_on_lock, url);
    int answered_early = d.called;
    r = PQexec(c, "COMMIT");
    int committed = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    PQfinish(c);
    CHECK_EQ_INT(st, FW_STATUS_OK);
    CHECK(waited);
    CHECK(!answered_early);
    CHECK(committed);
    CHECK(wait_until(&e, is_done, &d));
    CHECK_EQ_INT(d.status, FW_STATUS_OK);
    snprintf(q, sizeof q, "SELECT seq FROM fw_change WHERE kind = 1 AND face_id = %" PRIu64, d.value);
    CHECK_EQ_INT(sql_int(url, q), s + 2);
    CHECK_EQ_INT(sql_int(url, "SELECT seq FROM fw_change c JOIN fw_face f ON f.id = c.face_id "
                              "WHERE f.subject = 'held'::bytea"), s + 1);
    CHECK(wait_caught_up(&e, &a, url));
    CHECK_EQ_INT(fw_gallery_get(a.g, d.value, NULL, NULL, NULL, NULL), FW_STATUS_OK);
    CHECK_EQ_INT(faces_of(a.g, "held"), 1);
    node_close(&e, &a);
    env_close(&e);
}

typedef struct conn_state {
    node *n;
    int want;
} conn_state;

static int connected_is(void *arg)
{
    conn_state *c = arg;
    fw_galpg_info i;
    fw_galpg_info_get(c->n->p, &i);
    return i.writer_connected == c->want && i.follower_connected == c->want;
}

/* Database down: writes refused at once with UNAVAILABLE, searches still answered from memory,
 * the node stays ready; back up: writes resume and the other node catches up. */
static void t_pg_database_down_and_back(void)
{
    env e;
    node a, b;
    char url[160], err[192], why[64];
    float desc[DIM];
    done d;
    uint32_t retry = 0;
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    CHECK(node_open(&e, &b, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &a) && wait_until(&e, is_loaded, &b));
    CHECK_EQ_INT(enroll(&e, &a, "dora", 5, &d), FW_STATUS_OK);
    uint64_t first = d.value;
    CHECK(wait_caught_up(&e, &a, url));

    CHECK(tu_pg_stop(&pg) == 0);
    conn_state down = { &a, 0 }, b_down = { &b, 0 };
    int noticed = wait_until(&e, connected_is, &down) && wait_until(&e, connected_is, &b_down);
    tu_desc_for(6, desc);
    memset(&d, 0, sizeof d);
    int st = fw_galpg_enroll(a.p, "eve", 3, NULL, 0, desc, on_done, &d, &retry, err, sizeof err);
    int st_del = fw_galpg_delete_face(a.p, first, on_done, &d, &retry, err, sizeof err);
    fw_gallery_match m[1];
    int counts[1];
    char serr[128];
    tu_desc_for(5, desc);
    int sst = fw_gallery_search(a.g, desc, 1, 1, INFINITY, m, counts, NULL, serr, sizeof serr);
    int ready = fw_galpg_ready(a.p, why, sizeof why);
    int restarted = tu_pg_start(&pg) == 0;
    CHECK(restarted);
    CHECK(noticed);
    CHECK_EQ_INT(st, FW_STATUS_UNAVAILABLE);
    CHECK_EQ_INT(st_del, FW_STATUS_UNAVAILABLE);
    CHECK(strncmp(err, "database unavailable: ", 22) == 0);
    CHECK(retry >= 100);
    CHECK_EQ_INT(d.called, 0);
    CHECK_EQ_INT(sst, FW_STATUS_OK);
    CHECK_EQ_INT(counts[0], 1);
    CHECK_EQ_INT(m[0].face_id, first);
    CHECK(ready);

    conn_state up = { &a, 1 }, b_up = { &b, 1 };
    CHECK(wait_until(&e, connected_is, &up) && wait_until(&e, connected_is, &b_up));
    CHECK_EQ_INT(enroll(&e, &a, "eve", 6, &d), FW_STATUS_OK);
    CHECK(wait_face(&e, &b, d.value, 1));
    CHECK(wait_caught_up(&e, &b, url));
    fw_galpg_info i;
    fw_galpg_info_get(b.p, &i);
    CHECK(i.reconnects >= 2);
    CHECK(same_memory(a.g, b.g, d.value));
    CHECK(log_count("postgresql connection lost") >= 1 || log_count("postgresql unavailable") >= 1);
    node_close(&e, &a);
    node_close(&e, &b);
    env_close(&e);
}

typedef struct not_ready {
    node *n;
    char why[200];
} not_ready;

static int is_not_ready(void *arg)
{
    not_ready *r = arg;
    return !fw_galpg_ready(r->n->p, r->why, sizeof r->why) && strcmp(r->why, "loading") != 0;
}

static int writer_refused(void *arg)
{
    node *n = arg;
    char err[192];
    uint32_t retry;
    done d;
    float desc[DIM];
    tu_desc_for(1, desc);
    return fw_galpg_enroll(n->p, "x", 1, NULL, 0, desc, on_done, &d, &retry, err,
                           sizeof err) == FW_STATUS_UNAVAILABLE &&
           strcmp(err, "database unavailable: database schema version 2 is newer than this "
                       "build's (1): upgrade facewired") == 0;
}

static void t_pg_newer_schema_refused(void)
{
    env e;
    node a;
    char url[160];
    CHECK(new_db(url, sizeof url) == 0);
    CHECK(sql(url, "CREATE TABLE fw_schema (version int NOT NULL); "
                   "INSERT INTO fw_schema VALUES (2)", NULL, 0) == 0);
    log_reset();
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    not_ready nr = { &a, "" };
    int refused = wait_until(&e, is_not_ready, &nr);
    int wrefused = wait_until(&e, writer_refused, &a);
    fw_galpg_info i;
    fw_galpg_info_get(a.p, &i);
    node_close(&e, &a);
    env_close(&e);
    CHECK(refused);
    CHECK_EQ_STR(nr.why, "database schema version 2 is newer than this build's (1): upgrade "
                         "facewired");
    CHECK(wrefused);
    CHECK_EQ_INT(i.loaded, 0);
    CHECK(log_count("3 postgresql unavailable\trole=follower error=\"database schema version 2") == 1);
    /* Nothing was touched. */
    CHECK_EQ_INT(sql_int(url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'fw_%'"), 1);
}

/* The database's fw_counter went backwards (an old backup restored): refuse to go on. */
static void t_pg_database_behind_refused(void)
{
    env e;
    node a;
    char url[160];
    done d;
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &a));
    CHECK_EQ_INT(enroll(&e, &a, "old", 1, &d), FW_STATUS_OK);
    CHECK_EQ_INT(enroll(&e, &a, "old", 2, &d), FW_STATUS_OK);
    CHECK(wait_caught_up(&e, &a, url));
    CHECK(sql(url, "BEGIN; DELETE FROM fw_change; DELETE FROM fw_face; "
                   "UPDATE fw_counter SET seq = 0; COMMIT", NULL, 0) == 0);
    CHECK(sql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'facewired-follower'", NULL, 0) == 0);
    not_ready nr = { &a, "" };
    int refused = wait_until(&e, is_not_ready, &nr);
    fw_gallery_info gi;
    fw_gallery_info_get(a.g, &gi);
    node_close(&e, &a);
    env_close(&e);
    CHECK(refused);
    CHECK_EQ_STR(nr.why, "database behind this node");
    CHECK_EQ_INT(gi.faces, 2); /* memory kept as it was */
}

/* Rows no facewired writes (a hand-made or damaged database): passed over, logged, counted,
 * the same way by a node following the change table and by one loading with COPY. */
static void t_pg_hostile_rows(void)
{
    env e;
    node a, b;
    char url[160], q[4096];
    done d;
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &a));
    CHECK_EQ_INT(enroll(&e, &a, "good", 1, &d), FW_STATUS_OK);
    uint64_t good = d.value;
    CHECK(wait_caught_up(&e, &a, url));
    /* Faces the gallery cannot hold, each with its ADD; then changes that make no sense; then
     * one good face, which must still arrive. A NaN descriptor: 0x7fc00000 little-endian. */
    CHECK(sql(url, "ALTER TABLE fw_face DROP CONSTRAINT fw_face_descriptor_check", NULL, 0) == 0);
    snprintf(q, sizeof q,
             "BEGIN;"
             "CREATE TEMP TABLE bad (subject bytea, meta bytea, descriptor bytea, n serial);"
             "INSERT INTO bad (subject, meta, descriptor) VALUES"
             " (convert_to(repeat('s', 200), 'UTF8'), '', (SELECT descriptor FROM fw_face WHERE id = %" PRIu64 ")),"
             " ('m', convert_to(repeat('m', 2000), 'UTF8'), (SELECT descriptor FROM fw_face WHERE id = %" PRIu64 ")),"
             " ('nan', '', overlay((SELECT descriptor FROM fw_face WHERE id = %" PRIu64 ") placing '\\x0000c07f'::bytea from 5)),"
             " ('\\xff'::bytea, '', (SELECT descriptor FROM fw_face WHERE id = %" PRIu64 ")),"
             " ('', '', (SELECT descriptor FROM fw_face WHERE id = %" PRIu64 ")),"
             " ('short', '', '\\x010203'::bytea);"
             "WITH ins AS (INSERT INTO fw_face (subject, meta, descriptor)"
             "  SELECT subject, meta, descriptor FROM bad ORDER BY n RETURNING id)"
             "INSERT INTO fw_change (seq, kind, face_id)"
             "  SELECT (SELECT seq FROM fw_counter) + row_number() OVER (ORDER BY id), 1, id FROM ins;"
             "UPDATE fw_counter SET seq = (SELECT max(seq) FROM fw_change);"
             "INSERT INTO fw_change (seq, kind, face_id) VALUES"
             " ((SELECT seq FROM fw_counter) + 1, 7, 1), ((SELECT seq FROM fw_counter) + 2, 2, -5);"
             "UPDATE fw_counter SET seq = seq + 2;"
             "COMMIT",
             good, good, good, good, good);
    CHECK(sql(url, q, NULL, 0) == 0);
    CHECK_EQ_INT(enroll(&e, &a, "after", 3, &d), FW_STATUS_OK);
    uint64_t after = d.value;
    CHECK(wait_caught_up(&e, &a, url));
    fw_galpg_info i;
    fw_galpg_info_get(a.p, &i);
    CHECK_EQ_INT(i.bad_rows, 8);
    CHECK_EQ_INT(fw_gallery_get(a.g, after, NULL, NULL, NULL, NULL), FW_STATUS_OK);
    fw_gallery_info gi;
    fw_gallery_info_get(a.g, &gi);
    CHECK_EQ_INT(gi.faces, 2);
    char why[64];
    CHECK(fw_galpg_ready(a.p, why, sizeof why));

    /* A node starting now loads the same rows with COPY and ends with the same memory. */
    CHECK(node_open(&e, &b, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &b));
    CHECK(wait_caught_up(&e, &b, url));
    fw_galpg_info ib;
    fw_galpg_info_get(b.p, &ib);
    CHECK_EQ_INT(ib.bad_rows, 6); /* the six faces; the two odd changes predate its load */
    CHECK_EQ_INT(ib.load_faces, 2);
    CHECK(same_memory(a.g, b.g, after));
    CHECK(log_count("postgresql row passed over") >= 10);
    node_close(&e, &a);
    node_close(&e, &b);
    env_close(&e);
}

/* Repeated database errors open the breaker: writes are then refused at once; once the cause
 * is gone a probe gets through after the cooldown and writes flow again. */
typedef struct probe_ok {
    node *n;
    done d;
    int inflight;
} probe_ok;

static int write_goes_through(void *arg)
{
    probe_ok *p = arg;
    char err[192];
    uint32_t retry;
    float desc[DIM];
    if (p->inflight && !p->d.called)
        return 0;
    if (p->inflight && p->d.status == FW_STATUS_OK)
        return 1;
    p->inflight = 0;
    memset(&p->d, 0, sizeof p->d);
    tu_desc_for(9, desc);
    if (fw_galpg_enroll(p->n->p, "probe", 5, NULL, 0, desc, on_done, &p->d, &retry, err,
                        sizeof err) == FW_STATUS_OK)
        p->inflight = 1;
    return 0;
}

static void t_pg_breaker_opens_on_errors(void)
{
    env e;
    node a;
    char url[160], err[192];
    done d;
    float desc[DIM];
    uint32_t retry = 0;
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 0) == 0);
    CHECK(wait_until(&e, is_loaded, &a));
    CHECK(sql(url, "ALTER TABLE fw_face ADD CONSTRAINT refuse CHECK (false) NOT VALID", NULL, 0) == 0);
    int failures = 0;
    for (int i = 0; i < 10; i++) {
        int st = enroll(&e, &a, "x", 1, &d);
        static const char want[] = "database error: ERROR: new row for relation \"fw_face\" "
                                   "violates check constraint \"refuse\"";
        failures += st == FW_STATUS_UNAVAILABLE && strncmp(d.msg, want, sizeof want - 1) == 0;
    }
    CHECK_EQ_INT(failures, 10);
    tu_desc_for(1, desc);
    int st = fw_galpg_enroll(a.p, "x", 1, NULL, 0, desc, on_done, &d, &retry, err, sizeof err);
    CHECK_EQ_INT(st, FW_STATUS_UNAVAILABLE);
    CHECK_EQ_STR(err, "database writes suspended after repeated failures");
    CHECK(retry >= 1 && retry <= 1000);
    fw_galpg_info i;
    fw_galpg_info_get(a.p, &i);
    CHECK_EQ_INT(i.breaker_state, FW_BREAKER_OPEN);
    CHECK_EQ_INT(i.write_errors, 10);
    CHECK_EQ_INT(sql_int(url, "SELECT seq FROM fw_counter"), 0);
    CHECK(sql(url, "ALTER TABLE fw_face DROP CONSTRAINT refuse", NULL, 0) == 0);
    probe_ok p = { &a, { 0 }, 0 };
    CHECK(wait_until(&e, write_goes_through, &p));
    fw_galpg_info_get(a.p, &i);
    CHECK_EQ_INT(i.breaker_state, FW_BREAKER_CLOSED);
    node_close(&e, &a);
    env_close(&e);
}

/* A gallery that cannot take the next change (full) stops there, says why, keeps its
 * connection and its memory, and never applies a later change past the one it could not.
 * Before that, a full gallery still takes a REMOVE and an ADD committed together (one page of
 * changes refused whole by fw_gallery_apply, then applied one by one). */
static int is_stuck_full(void *arg)
{
    not_ready *r = arg;
    fw_galpg_info i;
    fw_galpg_info_get(r->n->p, &i);
    return i.head_seq >= 5 && is_not_ready(arg);
}

static void t_pg_gallery_full_stops_in_order(void)
{
    env e;
    node a;
    fw_gallery_options go;
    fw_galpg_options o;
    char url[160], err[256], q[512];
    done d;
    CHECK(new_db(url, sizeof url) == 0);
    log_reset();
    env_init(&e);
    memset(&a, 0, sizeof a);
    fw_gallery_options_default(&go);
    go.max_faces = 2;
    CHECK_EQ_INT(fw_gallery_open(&go, &a.g, NULL, err, sizeof err), 0);
    memset(&o, 0, sizeof o);
    o.url = url;
    o.gallery = a.g;
    o.poll_ms = 200;
    o.reconnect_max_ms = 400;
    o.log = on_log;
    CHECK_EQ_INT(fw_galpg_open(&e.loop, &o, &a.p, err, sizeof err), 0);
    CHECK(wait_until(&e, is_loaded, &a));
    uint64_t ids[2];
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(enroll(&e, &a, "full", 1 + (uint64_t)i, &d), FW_STATUS_OK);
        ids[i] = d.value;
    }
    CHECK(wait_caught_up(&e, &a, url));
    snprintf(q, sizeof q,
             "BEGIN; DELETE FROM fw_face WHERE id = %" PRIu64 ";"
             "INSERT INTO fw_face (subject, meta, descriptor) SELECT 'swap'::bytea, meta, descriptor"
             "  FROM fw_face WHERE id = %" PRIu64 ";"
             "INSERT INTO fw_change (seq, kind, face_id) VALUES (3, 2, %" PRIu64 "),"
             "  (4, 1, currval('fw_face_id_seq'));"
             "UPDATE fw_counter SET seq = 4; NOTIFY fw_change; COMMIT", ids[0], ids[1], ids[0]);
    CHECK(sql(url, q, NULL, 0) == 0);
    CHECK(wait_caught_up(&e, &a, url));
    CHECK_EQ_INT(faces_of(a.g, "swap"), 1);
    CHECK_EQ_INT(fw_gallery_get(a.g, ids[0], NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);

    CHECK_EQ_INT(enroll(&e, &a, "full", 3, &d), FW_STATUS_OK); /* committed: seq 5 */
    uint64_t third = d.value;
    not_ready nr = { &a, "" };
    CHECK(wait_until(&e, is_stuck_full, &nr));
    CHECK_EQ_STR(nr.why, "cannot apply changes: gallery full (2 faces)");
    fw_galpg_info i;
    fw_galpg_info_get(a.p, &i);
    CHECK_EQ_INT(i.applied_seq, 4);
    CHECK_EQ_INT(i.follower_connected, 1);
    CHECK_EQ_INT(fw_gallery_get(a.g, third, NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    /* A delete committed after it is not applied either: order is never broken. */
    uint32_t retry;
    memset(&d, 0, sizeof d);
    CHECK_EQ_INT(fw_galpg_delete_face(a.p, ids[1], on_done, &d, &retry, err, sizeof err),
                 FW_STATUS_OK);
    CHECK(wait_until(&e, is_done, &d));
    CHECK_EQ_INT(d.status, FW_STATUS_OK);
    seen_head h = { &a, 6 };
    CHECK(wait_until(&e, head_reached, &h));
    fw_galpg_info_get(a.p, &i);
    CHECK_EQ_INT(i.applied_seq, 4);
    CHECK_EQ_INT(fw_gallery_get(a.g, ids[1], NULL, NULL, NULL, NULL), FW_STATUS_OK);
    CHECK_EQ_INT(log_count("postgresql changes not applied\terror=\"gallery full (2 faces)\""), 1);
    node_close(&e, &a);
    env_close(&e);
}

/* close() with writes queued: every callback runs exactly once, each write committed. */
static void t_pg_close_finishes_queued(void)
{
    env e;
    node a;
    char url[160], err[192];
    float desc[DIM];
    uint32_t retry;
    enum { N = 64 };
    done d[N];
    memset(d, 0, sizeof d);
    CHECK(new_db(url, sizeof url) == 0);
    env_init(&e);
    CHECK(node_open(&e, &a, url, 8) == 0);
    CHECK(wait_until(&e, is_loaded, &a));
    for (int i = 0; i < N; i++) {
        tu_desc_for((uint64_t)i, desc);
        CHECK_EQ_INT(fw_galpg_enroll(a.p, "q", 1, NULL, 0, desc, on_done, &d[i], &retry, err,
                                     sizeof err), FW_STATUS_OK);
    }
    fw_galpg_close(a.p);
    a.p = NULL;
    int ok = 0, once = 1;
    for (int i = 0; i < N; i++) {
        ok += d[i].called == 1 && d[i].status == FW_STATUS_OK;
        once &= d[i].called == 1;
    }
    node_close(&e, &a);
    env_close(&e);
    CHECK(once);
    CHECK_EQ_INT(ok, N);
    CHECK_EQ_INT(sql_int(url, "SELECT count(*) FROM fw_face"), N);
}

static void t_pg_open_refuses_bad_options(void)
{
    env e;
    fw_galpg_options o;
    fw_galpg *p = NULL;
    char err[256], dir[] = "/tmp/fwgalpg.XXXXXX";
    env_init(&e);
    memset(&o, 0, sizeof o);
    CHECK_EQ_INT(fw_galpg_open(&e.loop, &o, &p, err, sizeof err), -1);
    CHECK_EQ_STR(err, "galpg: a loop, a url and a gallery are needed");
    fw_gallery_options go;
    fw_gallery *g = NULL;
    CHECK(mkdtemp(dir));
    fw_gallery_options_default(&go);
    go.data_dir = dir;
    CHECK_EQ_INT(fw_gallery_open(&go, &g, NULL, err, sizeof err), 0);
    o.url = "host=127.0.0.1";
    o.gallery = g;
    int rc = fw_galpg_open(&e.loop, &o, &p, err, sizeof err);
    fw_gallery_close(g);
    env_close(&e);
    CHECK_EQ_INT(tu_rmtree(dir), 0);
    CHECK_EQ_INT(rc, -1);
    CHECK(p == NULL);
    CHECK_EQ_STR(err, "changes can only be applied to a memory-only gallery");
}

static const struct check_test tests[] = {
    CHECK_TEST(t_apply_adds_and_removes),
    CHECK_TEST(t_apply_idempotent),
    CHECK_TEST(t_apply_same_call_interplay),
    CHECK_TEST(t_apply_refuses_bad_changes),
    CHECK_TEST(t_apply_reset_and_full),
    CHECK_TEST(t_apply_refuses_disk_gallery),
    CHECK_TEST(t_pg_open_refuses_bad_options),
    CHECK_TEST(t_pg_schema_created_and_reused),
    CHECK_TEST(t_pg_enroll_delete_two_nodes),
    CHECK_TEST(t_pg_two_writers_interleave),
    CHECK_TEST(t_pg_gap_is_never_skipped),
    CHECK_TEST(t_pg_counter_orders_commits),
    CHECK_TEST(t_pg_newer_schema_refused),
    CHECK_TEST(t_pg_database_behind_refused),
    CHECK_TEST(t_pg_hostile_rows),
    CHECK_TEST(t_pg_breaker_opens_on_errors),
    CHECK_TEST(t_pg_gallery_full_stops_in_order),
    CHECK_TEST(t_pg_close_finishes_queued),
    CHECK_TEST(t_pg_database_down_and_back),
};

int main(int argc, char **argv)
{
    /* One PostgreSQL for every test; a test that needs it fails (never skips) without it. */
    pg_ok = tu_pg_init(&pg) == 0 && tu_pg_start(&pg) == 0;
    if (!pg_ok)
        fprintf(stderr, "test_galpg: no PostgreSQL: the t_pg_* tests will fail\n");
    int rc = check_main(tests, CHECK_COUNT(tests), argc, argv);
    tu_pg_destroy(&pg);
    return rc;
}
