/*
 * galpg.c — the gallery's system of record in PostgreSQL (galpg.h; docs/gallery.md,
 * "PostgreSQL", has the schema and the argument for why no change is ever skipped).
 *
 * Two threads, each with its own connection, and the loop:
 *
 *   loop      validates and copies a write, asks the breaker, queues it for the writer; later
 *             delivers its completion (uv_async) and feeds the outcome back to the breaker.
 *             The checks, the queue and the way back are galwrite.c's, shared with gallery.c.
 *             Never touches libpq and never blocks (a queue mutex held for a pointer swap).
 *   writer    takes up to batch_max queued writes and runs them as ONE transaction in libpq
 *             pipeline mode, two round trips per batch whatever its size:
 *               1. BEGIN; one INSERT/DELETE ... RETURNING id per request;       (sync)
 *               2. the counter UPDATE and the change rows in one statement; NOTIFY; COMMIT (sync)
 *             and answers the batch only when COMMIT said so. The counter row is taken last,
 *             so the part of a transaction that is serialised with every other node's is
 *             one round trip plus the commit.
 *   follower  loads the whole gallery (binary COPY in one REPEATABLE READ snapshot), then
 *             applies the change table strictly in sequence order, woken by NOTIFY or by the
 *             poll_ms timer (NOTIFY is only a hint), and is the only mutator of the gallery.
 *             A poll is two prepared statements with one fixed plan each, lookups in the
 *             primary keys of fw_change and fw_face, whatever the planner's statistics say.
 *
 * Whatever comes from the network or the database is checked before use: every length of a
 * COPY stream and of every result column, the types, the ranges. A row we cannot use is
 * passed over (logged, counted), never trusted and never a crash; a stream we cannot parse is
 * an error that drops the connection and starts again. Every wait on a connection is bounded
 * (PG_IO_TIMEOUT_MS of silence) and the follower's are also cut short by the stop eventfd.
 */
#include "server/galpg.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "fw_proto.h"
#include "server/breaker.h"
#include "server/galidx.h"
#include "server/galwrite.h"
#include "server/hist.h"
#include "server/log.h"

#define PG_SCHEMA_VERSION 1
/* pg_advisory_xact_lock key that serialises the schema migrations of all nodes: 0x6677676c,
 * "fwgl" (any constant no other application of the database uses). */
#define PG_MIGRATE_LOCK "1719101292"
#define PG_IO_TIMEOUT_MS 30000     /* silence on a connection that means it is dead */
#define PG_CONNECT_TIMEOUT_MS 10000
#define PG_BACKOFF_MIN_MS 100
#define PG_CHANGE_PAGE 4096        /* change rows per query */
#define PG_APPLY_BATCH 1024        /* changes per fw_gallery_apply call */
#define PG_TX_TRIES 3              /* deadlock / serialization failure: the batch is retried */
#define PG_COPY_BUF 16384          /* > the largest tuple the load query can produce */
#define PG_BAD_ROW_LOGS 10         /* bad rows logged one by one; after that only counted */
#define PG_DESC_BYTES (FW_GALLERY_DIM * 4)
#define PG_IDARR_BYTES (20 + 12 * PG_CHANGE_PAGE) /* a binary int8[] of a page's face ids */
#define PG_STR_(x) #x
#define PG_STR(x) PG_STR_(x)

#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_INT2_ARRAY 1005
#define OID_INT8_ARRAY 1016

/* The migrations: migrations[v] takes the schema from version v to v + 1 (0: an empty
 * database). Each runs inside the migration transaction. */
static const char *const migrations[PG_SCHEMA_VERSION] = {
    "CREATE TABLE fw_schema (version int NOT NULL);"
    "CREATE TABLE fw_counter (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL);"
    "INSERT INTO fw_counter VALUES (1, 0);"
    "CREATE TABLE fw_face (id bigserial PRIMARY KEY, subject bytea NOT NULL,"
    "  meta bytea NOT NULL, descriptor bytea NOT NULL CHECK (length(descriptor) = 512));"
    "CREATE INDEX fw_face_subject ON fw_face (subject);"
    "CREATE TABLE fw_change (seq bigint PRIMARY KEY, kind smallint NOT NULL,"
    "  face_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());"
    "INSERT INTO fw_schema VALUES (1);",
};

/* Fields too long for the gallery come back as NULL, so that the stream never carries more
 * than a bounded tuple, and the parser treats NULL as "unusable row". */
#define SQL_FACE_COLUMNS                                                                   \
    "CASE WHEN length(f.subject) <= 128 THEN f.subject END, "                              \
    "CASE WHEN length(f.meta) <= 1024 THEN f.meta END, "                                   \
    "CASE WHEN length(f.descriptor) = 512 THEN f.descriptor END"

static const char SQL_LOAD[] =
    "COPY (SELECT f.id, " SQL_FACE_COLUMNS " FROM fw_face f) TO STDOUT (FORMAT binary)";

/* The follower reads a page of changes in two statements, each a lookup in a primary key
 * whatever the planner's statistics say (apply_page argues why two snapshots are as good as
 * one): the change rows by a range of fw_change's key, then the faces of the page's ADDs by
 * fw_face's key. One statement joining the two tables leaves the join to the planner, and
 * without statistics (a new database, a bulk import autovacuum has not analysed yet) it
 * hashes a full scan of fw_face at every poll. */
static const char SQL_CHANGES[] =
    "SELECT seq, kind, face_id, CASE WHEN isfinite(at) THEN "
    "(extract(epoch FROM clock_timestamp() - at) * 1e6)::bigint END "
    "FROM fw_change WHERE seq > $1 ORDER BY seq LIMIT " PG_STR(PG_CHANGE_PAGE);
static const char SQL_FACES[] =
    "SELECT f.id, " SQL_FACE_COLUMNS " FROM fw_face f WHERE f.id = ANY ($1::int8[])";
/* The follower's session, set before it prepares them. One generic plan per statement and
 * connection, where PostgreSQL would otherwise re-plan at every execution: with statistics
 * the plan for the actual seq is always estimated cheaper than the generic one, so the
 * default plan_cache_mode never settles on the generic plan, and planning cost three times
 * the execution (135 against 45 us of backend CPU per poll). Sequential and bitmap scans are
 * ruled out because that one plan must be an index scan in the key's order however small
 * the tables looked when it was made: statistics taken of an empty table make a sequential
 * scan and a sort the cheapest plan, and it would stay until the next ANALYZE however far
 * the tables grow meanwhile. The session runs nothing else but the initial load, which
 * turns the sequential scan back on for its own transaction. */
static const char SQL_FOLLOWER_SESSION[] =
    "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; "
    "SET enable_bitmapscan = off";
#define PG_PLAN_CACHE_MODE_VERSION 120000 /* PQserverVersion of the first with plan_cache_mode */

static const char SQL_ENROLL[] =
    "INSERT INTO fw_face (subject, meta, descriptor) VALUES ($1, $2, $3) RETURNING id";
static const char SQL_DELETE_FACE[] = "DELETE FROM fw_face WHERE id = $1 RETURNING id";
static const char SQL_DELETE_SUBJECT[] = "DELETE FROM fw_face WHERE subject = $1 RETURNING id";
/* The counter is taken here, last: its row lock orders the commits of all writers, and the
 * scalar subquery makes a missing counter row a NOT NULL violation instead of a silently
 * empty change list. */
static const char SQL_LOG_CHANGES[] =
    "WITH c AS (UPDATE fw_counter SET seq = seq + $1 WHERE id = 1 RETURNING seq) "
    "INSERT INTO fw_change (seq, kind, face_id) "
    "SELECT (SELECT seq FROM c) - $1 + u.ord, u.kind, u.face_id "
    "FROM unnest($2::smallint[], $3::bigint[]) WITH ORDINALITY AS u(kind, face_id, ord)";

/* ---- types --------------------------------------------------------------------------------- */

/* A connection and how to wait on it. */
typedef struct pgx {
    PGconn *conn;
    int stopfd;                    /* also ends every wait when readable; -1: never */
    int stopped;                   /* the last failure was stopfd: a close, not a fault */
    char err[256];                 /* the last failure, one line */
} pgx;

typedef struct notice_ctx notice_ctx;
struct notice_ctx {
    struct fw_galpg *p;
    const char *role;
};

typedef struct writer {            /* writer thread only */
    pgx x;
    notice_ctx notices;
    fw_galwrite **batch;
    char *kinds, *ids;             /* text arrays of the batch's changes, grow-only */
    size_t kinds_cap, ids_cap, kinds_len, ids_len;
    uint32_t nchanges;
    char logged[256];              /* the last connection error logged (said once) */
} writer;

typedef struct staged {            /* an ADD's data, owned until applied */
    char subject[FW_GALLERY_SUBJECT_MAX];
    uint8_t meta[FW_GALLERY_META_MAX];
    float desc[FW_GALLERY_DIM];
} staged;

typedef struct face_ref {          /* a row of the faces read for a page, by face id */
    int64_t id;
    int row;
} face_ref;

typedef struct follower {          /* follower thread only */
    pgx x;
    notice_ctx notices;
    staged *stage;                 /* PG_APPLY_BATCH */
    fw_gallery_change *chg;        /* PG_APPLY_BATCH */
    int64_t *age_us;               /* per chg entry; -1: none */
    int *pick;                     /* PG_CHANGE_PAGE: the rows of a page that are applied */
    face_ref *faces;               /* PG_CHANGE_PAGE: the page's faces, sorted by id */
    uint8_t *idarr;                /* PG_IDARR_BYTES: the page's ADD ids as a binary int8[] */
    int n;
    uint64_t applied;
    fw_hist hist;
    uint64_t bad_rows;
    int apply_failed;              /* the last failure was the gallery's, not the database's */
    char logged[256];              /* the last failure logged (said once until progress) */
    /* the binary COPY parser */
    uint8_t cbuf[PG_COPY_BUF];
    size_t clen;
    int header_done, trailer_seen;
} follower;

struct fw_galpg {
    fw_galpg_options opt;          /* url points at url below */
    char *url;
    fw_gallery *g;
    uv_loop_t *loop;
    int closing;                   /* loop thread only */
    fw_breaker breaker;            /* loop thread only */

    /* Writes from the loop and back (galwrite.h). The writer sleeps in poll(), so it sets
     * q.idle before it does and a push that finds it set wakes it through qfd. */
    fw_galwrite_queue q;
    int qfd;                       /* eventfd: work for the writer */

    int stopfd;                    /* eventfd: the follower stops */
    pthread_t wthread, fthread;
    int wstarted, fstarted;
    writer w;
    follower f;

    pthread_mutex_t smu;           /* the strings below */
    char why[160];                 /* not ready, and why ("" = no such reason) */
    int why_sticky;                /* set for good: only a restart clears it */
    char werr[160];                /* why the writer is not connected */

    _Atomic int a_wconn, a_fconn, a_loaded, a_breaker;
    _Atomic uint64_t a_applied, a_head, a_lag_ms, a_load_faces, a_load_ms, a_commits;
    _Atomic uint64_t a_write_errors, a_reconnects, a_p50, a_p99, a_bad_rows, a_retry_at;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* Copy a libpq message into one line: runs of newlines, tabs and spaces become one space. */
static void oneline(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    if (!cap)
        return;
    for (; src && *src && n + 1 < cap; src++) {
        int space = *src == ' ' || *src == '\n' || *src == '\t' || *src == '\r';
        if (space && (n == 0 || dst[n - 1] == ' '))
            continue;
        dst[n++] = space ? ' ' : *src;
    }
    while (n && dst[n - 1] == ' ')
        n--;
    dst[n] = '\0';
}

/* Bounded copy that may cut src (messages are cut, never overflowed). */
static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (!cap)
        return;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void plog(fw_galpg *p, int level, const char *msg, const char *kv_fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void plog(fw_galpg *p, int level, const char *msg, const char *kv_fmt, ...)
{
    char kv[640], line[768];
    kv[0] = '\0';
    if (kv_fmt) {
        va_list ap;
        va_start(ap, kv_fmt);
        vsnprintf(kv, sizeof kv, kv_fmt, ap);
        va_end(ap);
    }
    snprintf(line, sizeof line, "%s%s%s", msg, kv[0] ? "\t" : "", kv);
    if (p->opt.log)
        p->opt.log(p->opt.log_arg, level, line);
    else
        fprintf(stderr, "galpg: %s\n", line);
}

static void set_why(fw_galpg *p, int sticky, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_why(fw_galpg *p, int sticky, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&p->smu);
    if (!p->why_sticky) {
        va_start(ap, fmt);
        vsnprintf(p->why, sizeof p->why, fmt, ap);
        va_end(ap);
        p->why_sticky = sticky;
    }
    pthread_mutex_unlock(&p->smu);
}

static void clear_why(fw_galpg *p)
{
    pthread_mutex_lock(&p->smu);
    if (!p->why_sticky)
        p->why[0] = '\0';
    pthread_mutex_unlock(&p->smu);
}

static uint64_t get_be(const uint8_t *b, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | b[i];
    return v;
}

static void put_be(uint8_t *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static void desc_to_le(const float *d, uint8_t *out)
{
    for (int i = 0; i < FW_GALLERY_DIM; i++) {
        uint32_t u;
        memcpy(&u, &d[i], 4);
        out[4 * i] = (uint8_t)u;
        out[4 * i + 1] = (uint8_t)(u >> 8);
        out[4 * i + 2] = (uint8_t)(u >> 16);
        out[4 * i + 3] = (uint8_t)(u >> 24);
    }
}

static void le_to_desc(const uint8_t *in, float *d)
{
    for (int i = 0; i < FW_GALLERY_DIM; i++) {
        uint32_t u = (uint32_t)in[4 * i] | (uint32_t)in[4 * i + 1] << 8 |
                     (uint32_t)in[4 * i + 2] << 16 | (uint32_t)in[4 * i + 3] << 24;
        memcpy(&d[i], &u, 4);
    }
}

/* An integer column of a result, binary (int2/int4/int8/bool, exact length) or text. -1 when
 * it is NULL, of another type or malformed. */
static int res_int(const PGresult *r, int row, int col, int64_t *v)
{
    if (row >= PQntuples(r) || col >= PQnfields(r) || PQgetisnull(r, row, col))
        return -1;
    const uint8_t *s = (const uint8_t *)PQgetvalue(r, row, col);
    int len = PQgetlength(r, row, col);
    if (PQfformat(r, col) == 1) {
        int want;
        switch (PQftype(r, col)) {
        case OID_INT8: want = 8; break;
        case OID_INT4: want = 4; break;
        case OID_INT2: want = 2; break;
        case OID_BOOL: want = 1; break;
        default: return -1;
        }
        if (len != want)
            return -1;
        uint64_t u = get_be(s, len);
        if (len < 8 && (u >> (8 * len - 1)) & 1) /* sign-extend */
            u |= ~0ULL << (8 * len);
        *v = (int64_t)u;
        return 0;
    }
    if (len < 1 || len > 20)
        return -1;
    char buf[24], *end;
    memcpy(buf, s, (size_t)len);
    buf[len] = '\0';
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    if (errno || *end)
        return -1;
    *v = x;
    return 0;
}

/* ---- a connection ---------------------------------------------------------------------- */

static void pgx_close(pgx *x)
{
    if (x->conn)
        PQfinish(x->conn);
    x->conn = NULL;
}

static void pgx_fail(pgx *x, const char *what)
{
    char detail[200];
    oneline(detail, sizeof detail, x->conn ? PQerrorMessage(x->conn) : "");
    snprintf(x->err, sizeof x->err, "%s%s%s", what, detail[0] ? ": " : "", detail);
}

/* A wait was cut short by stopfd: the caller is closing, which is nobody's fault. */
static void pgx_stop(pgx *x)
{
    x->stopped = 1;
    snprintf(x->err, sizeof x->err, "stopping");
}

/* Wait until the socket is ready for events. -1 with x->err when stop was asked, nothing
 * happened for timeout_ms, or the socket is gone. */
static int pgx_wait(pgx *x, short events, int timeout_ms)
{
    int fd = PQsocket(x->conn);
    if (fd < 0) {
        pgx_fail(x, "no connection");
        return -1;
    }
    struct pollfd pf[2] = { { .fd = fd, .events = events }, { .fd = x->stopfd, .events = POLLIN } };
    for (;;) {
        int n = poll(pf, x->stopfd >= 0 ? 2 : 1, timeout_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(x->err, sizeof x->err, "poll: %s", strerror(errno));
            return -1;
        }
        if (n == 0) {
            snprintf(x->err, sizeof x->err, "no answer from the database for %d ms", timeout_ms);
            return -1;
        }
        if (x->stopfd >= 0 && pf[1].revents) {
            pgx_stop(x);
            return -1;
        }
        return 0;
    }
}

static int pgx_flush(pgx *x)
{
    for (;;) {
        int r = PQflush(x->conn);
        if (r == 0)
            return 0;
        if (r < 0) {
            pgx_fail(x, "send failed");
            return -1;
        }
        /* Read while we wait to write: the server may be blocked sending us results. */
        if (pgx_wait(x, POLLIN | POLLOUT, PG_IO_TIMEOUT_MS) != 0)
            return -1;
        if (!PQconsumeInput(x->conn)) {
            pgx_fail(x, "receive failed");
            return -1;
        }
    }
}

/* The next result (NULL at the end of a query's results). NULL with *failed set when the
 * connection failed or went silent. */
static PGresult *pgx_next(pgx *x, int *failed)
{
    *failed = 0;
    while (PQisBusy(x->conn)) {
        if (pgx_wait(x, POLLIN, PG_IO_TIMEOUT_MS) != 0) {
            *failed = 1;
            return NULL;
        }
        if (!PQconsumeInput(x->conn)) {
            pgx_fail(x, "receive failed");
            *failed = 1;
            return NULL;
        }
    }
    return PQgetResult(x->conn);
}

/* Every result of what was just sent; returns the first error, else the last result. NULL
 * with x->err when the connection failed or nothing came back. */
static PGresult *pgx_collect(pgx *x)
{
    PGresult *keep = NULL, *r;
    int failed;
    if (pgx_flush(x) != 0)
        return NULL;
    while ((r = pgx_next(x, &failed))) {
        if (keep && PQresultStatus(keep) == PGRES_FATAL_ERROR) {
            PQclear(r);
            continue;
        }
        PQclear(keep);
        keep = r;
    }
    if (failed) {
        PQclear(keep);
        return NULL;
    }
    if (!keep)
        snprintf(x->err, sizeof x->err, "no result from the database");
    return keep;
}

/* 1 if r has status want; else 0 with x->err set (r is not cleared). */
static int pgx_ok(pgx *x, const PGresult *r, ExecStatusType want, const char *what)
{
    if (r && PQresultStatus(r) == want)
        return 1;
    if (r) {
        char detail[200];
        oneline(detail, sizeof detail, PQresultErrorMessage(r));
        snprintf(x->err, sizeof x->err, "%s: %s", what,
                 detail[0] ? detail : PQresStatus(PQresultStatus(r)));
    }
    return 0;
}

/* Run sql (nparams < 0: several statements through the simple protocol) and check that it
 * ends with status want. Returns the result (the caller clears it) or NULL with x->err. */
static PGresult *pgx_run(pgx *x, const char *sql, int nparams, const char *const *vals,
                         const int *lens, const int *fmts, ExecStatusType want)
{
    int sent = nparams < 0 ? PQsendQuery(x->conn, sql)
                           : PQsendQueryParams(x->conn, sql, nparams, NULL, vals, lens, fmts, 1);
    if (!sent) {
        pgx_fail(x, "send failed");
        return NULL;
    }
    PGresult *r = pgx_collect(x);
    if (!r)
        return NULL;
    if (!pgx_ok(x, r, want, "query failed")) {
        PQclear(r);
        return NULL;
    }
    return r;
}

static int pgx_cmd(pgx *x, const char *sql)
{
    PGresult *r = pgx_run(x, sql, -1, NULL, NULL, NULL, PGRES_COMMAND_OK);
    PQclear(r);
    return r ? 0 : -1;
}

static int pgx_prepare(pgx *x, const char *name, const char *sql, int n, const Oid *types)
{
    if (!PQsendPrepare(x->conn, name, sql, n, types)) {
        pgx_fail(x, "send failed");
        return -1;
    }
    PGresult *r = pgx_collect(x);
    int ok = pgx_ok(x, r, PGRES_COMMAND_OK, "prepare failed");
    PQclear(r);
    return ok ? 0 : -1;
}

/* Messages the server sends outside of any query (a FATAL before it closes the connection,
 * a WARNING): libpq would print them on stderr. They go to our log instead. */
static void on_notice(void *arg, const char *message)
{
    const notice_ctx *n = arg;
    char line[256], q[300];
    oneline(line, sizeof line, message);
    plog(n->p, FW_LOG_WARN, "postgresql notice", "role=%s message=%s", n->role,
         fw_log_quote(q, sizeof q, line));
}

/* Connect without blocking past PG_CONNECT_TIMEOUT_MS or the stop fd. Our keepalive and
 * timeout defaults come before the URL, so the URL can override them. */
static int pgx_connect(pgx *x, const char *url, const char *role, notice_ctx *notices)
{
    const char *kw[] = { "application_name", "keepalives", "keepalives_idle",
                         "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                         "dbname", NULL };
    const char *val[] = { role, "1", "10", "5", "3", "30000", url, NULL };
    pgx_close(x);
    x->err[0] = '\0';
    x->stopped = 0;
    x->conn = PQconnectStartParams(kw, val, 1);
    if (!x->conn) {
        snprintf(x->err, sizeof x->err, "out of memory");
        return -1;
    }
    if (PQstatus(x->conn) == CONNECTION_BAD) {
        pgx_fail(x, "cannot connect");
        goto err;
    }
    PQsetNoticeProcessor(x->conn, on_notice, notices);
    uint64_t deadline = mono_ms() + PG_CONNECT_TIMEOUT_MS;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) {
            pgx_fail(x, "cannot connect");
            goto err;
        }
        uint64_t now = mono_ms();
        if (now >= deadline) {
            snprintf(x->err, sizeof x->err, "cannot connect: no answer in %d ms",
                     PG_CONNECT_TIMEOUT_MS);
            goto err;
        }
        if (pgx_wait(x, st == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                     (int)(deadline - now)) != 0)
            goto err;
        st = PQconnectPoll(x->conn);
    }
    if (PQsetnonblocking(x->conn, 1) != 0) {
        pgx_fail(x, "cannot make the connection non-blocking");
        goto err;
    }
    return 0;
err:
    pgx_close(x);
    return -1;
}

static void drain_notifies(PGconn *c)
{
    PGnotify *n;
    while ((n = PQnotifies(c)))
        PQfreemem(n);
}

/* ---- the schema ------------------------------------------------------------------------------ */

/* Create or migrate the schema to PG_SCHEMA_VERSION, serialised across nodes by an advisory
 * lock held for the transaction. *newer is set when the database is ahead of this build.
 * *created: the version we found (0: we created the schema) when we changed it, else -1. */
static int migrate(pgx *x, int *newer, int *created)
{
    PGresult *r = NULL;
    int64_t exists = 0, count = 0, version = 0;
    *newer = 0;
    *created = -1;
    if (pgx_cmd(x, "BEGIN") != 0)
        return -1;
    if (!(r = pgx_run(x, "SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK ")", 0, NULL, NULL, NULL,
                      PGRES_TUPLES_OK)))
        goto err;
    PQclear(r);
    if (!(r = pgx_run(x, "SELECT (to_regclass('fw_schema') IS NOT NULL)::int", 0, NULL, NULL,
                      NULL, PGRES_TUPLES_OK)))
        goto err;
    if (res_int(r, 0, 0, &exists) != 0) {
        snprintf(x->err, sizeof x->err, "unexpected answer looking for fw_schema");
        goto err;
    }
    PQclear(r);
    r = NULL;
    if (exists) {
        if (!(r = pgx_run(x, "SELECT count(*), coalesce(max(version), 0) FROM fw_schema", 0,
                          NULL, NULL, NULL, PGRES_TUPLES_OK)))
            goto err;
        if (res_int(r, 0, 0, &count) != 0 || res_int(r, 0, 1, &version) != 0) {
            snprintf(x->err, sizeof x->err, "unexpected answer reading fw_schema");
            goto err;
        }
        PQclear(r);
        r = NULL;
        if (count != 1 || version < 1) {
            snprintf(x->err, sizeof x->err, "fw_schema must hold one version >= 1 (it has %"
                     PRId64 " rows, version %" PRId64 ")", count, version);
            goto err;
        }
        if (version > PG_SCHEMA_VERSION) {
            snprintf(x->err, sizeof x->err, "database schema version %" PRId64 " is newer than "
                     "this build's (%d): upgrade facewired", version, PG_SCHEMA_VERSION);
            *newer = 1;
            goto err;
        }
    }
    for (int64_t v = version; v < PG_SCHEMA_VERSION; v++)
        if (pgx_cmd(x, migrations[v]) != 0)
            goto err;
    if (version >= 1 && version < PG_SCHEMA_VERSION) {
        char sql[64];
        snprintf(sql, sizeof sql, "UPDATE fw_schema SET version = %d", PG_SCHEMA_VERSION);
        if (pgx_cmd(x, sql) != 0)
            goto err;
    }
    if (pgx_cmd(x, "COMMIT") != 0)
        return -1;
    if (version < PG_SCHEMA_VERSION)
        *created = (int)version;
    return 0;
err:
    PQclear(r);
    if (PQstatus(x->conn) == CONNECTION_OK) {
        char keep[sizeof x->err];
        memcpy(keep, x->err, sizeof keep);
        (void)pgx_cmd(x, "ROLLBACK");
        memcpy(x->err, keep, sizeof keep);
    }
    return -1;
}

/* Connect, migrate. Logs the schema work. -1 with x->err; *newer as in migrate(). */
static int connect_migrate(fw_galpg *p, pgx *x, const char *role, int *newer)
{
    int created;
    *newer = 0;
    notice_ctx *nc = x == &p->w.x ? &p->w.notices : &p->f.notices;
    nc->p = p;
    nc->role = x == &p->w.x ? "writer" : "follower";
    if (pgx_connect(x, p->url, role, nc) != 0)
        return -1;
    if (migrate(x, newer, &created) != 0) {
        pgx_close(x);
        return -1;
    }
    if (created == 0)
        plog(p, FW_LOG_INFO, "postgresql schema created", "version=%d", PG_SCHEMA_VERSION);
    else if (created > 0)
        plog(p, FW_LOG_INFO, "postgresql schema migrated", "from=%d to=%d", created,
             PG_SCHEMA_VERSION);
    return 0;
}

/* A line about one thread's connection: msg, then its role and the error, quoted. */
static void log_conn(fw_galpg *p, int level, const char *msg, const char *role,
                     const char *err)
{
    char q[320];
    plog(p, level, msg, "role=%s error=%s", role, fw_log_quote(q, sizeof q, err));
}

/* Log a connection failure once per distinct reason (a database that stays down would
 * otherwise fill the log at every retry). */
static void log_unreachable(fw_galpg *p, char *logged, size_t cap, const char *role,
                            const char *err, int level)
{
    if (strcmp(logged, err) == 0)
        return;
    snprintf(logged, cap, "%s", err);
    log_conn(p, level, "postgresql unavailable", role, err);
}

/* A thread's connection is up: *connected for INFO, a reconnect counted unless it is the
 * thread's first connection (*ever). */
static void note_connected(fw_galpg *p, int *ever, _Atomic int *connected, const char *role)
{
    if (*ever)
        atomic_fetch_add(&p->a_reconnects, 1);
    *ever = 1;
    atomic_store(connected, 1);
    plog(p, FW_LOG_INFO, "postgresql connected", "role=%s", role);
}

/* The reconnect delay after ms: doubled, up to reconnect_max_ms (ms is never above it, so
 * max - ms cannot wrap, and nothing overflows however large the option). */
static uint32_t backoff_next(const fw_galpg *p, uint32_t ms)
{
    uint32_t max = p->opt.reconnect_max_ms;
    return ms >= max || ms > max - ms ? max : ms * 2;
}

/* ---- the writer ------------------------------------------------------------------------------ */

enum { TX_OK = 0, TX_RETRY, TX_FAILED, TX_LOST };

static int grow_text(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    char *nb = realloc(*buf, c);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = c;
    return 0;
}

/* Append one change to the batch's text arrays ("{1,2" ... closed by tx_run). */
static int add_change(writer *w, int kind, int64_t face_id)
{
    if (grow_text(&w->kinds, &w->kinds_cap, w->kinds_len + 8) != 0 ||
        grow_text(&w->ids, &w->ids_cap, w->ids_len + 24) != 0)
        return -1;
    w->kinds_len += (size_t)snprintf(w->kinds + w->kinds_len, 8, "%c%d",
                                     w->nchanges ? ',' : '{', kind);
    w->ids_len += (size_t)snprintf(w->ids + w->ids_len, 24, "%c%" PRId64,
                                   w->nchanges ? ',' : '{', face_id);
    w->nchanges++;
    return 0;
}

/* Queue one request's statement. libpq copies the parameters into its output buffer during
 * the call, so the binary forms of the descriptor and the id can live on the stack. */
static int send_request(PGconn *c, const fw_galwrite *r)
{
    const char *vals[3];
    int lens[3], fmts[3] = { 1, 1, 1 };
    uint8_t desc_le[PG_DESC_BYTES], id_be[8];
    switch (r->type) {
    case FW_GALWRITE_ENROLL:
        desc_to_le(r->desc, desc_le); /* little-endian float32, as stored */
        vals[0] = r->subject;
        lens[0] = r->subject_len;
        vals[1] = (const char *)r->meta;
        lens[1] = r->meta_len;
        vals[2] = (const char *)desc_le;
        lens[2] = PG_DESC_BYTES;
        return PQsendQueryPrepared(c, "fw_enroll", 3, vals, lens, fmts, 1);
    case FW_GALWRITE_DELETE_FACE:
        for (int i = 0; i < 8; i++) /* a binary int8 parameter */
            id_be[i] = (uint8_t)(r->face_id >> (56 - 8 * i));
        vals[0] = (const char *)id_be;
        lens[0] = 8;
        return PQsendQueryPrepared(c, "fw_delete_face", 1, vals, lens, fmts, 1);
    default:
        vals[0] = r->subject;
        lens[0] = r->subject_len;
        return PQsendQueryPrepared(c, "fw_delete_subject", 1, vals, lens, fmts, 1);
    }
}

/* One query's result in pipeline mode: its result, then the NULL that ends it (a sync point
 * has no NULL after it). NULL with x->err when the connection failed. */
static PGresult *pipe_result(pgx *x)
{
    int failed;
    PGresult *r = pgx_next(x, &failed), *extra;
    if (!r) {
        if (!failed)
            snprintf(x->err, sizeof x->err, "the database sent fewer results than expected");
        return NULL;
    }
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC)
        return r;
    while ((extra = pgx_next(x, &failed)))
        PQclear(extra);
    if (failed) {
        PQclear(r);
        return NULL;
    }
    return r;
}

/* Remember the first failure of a pipeline: its message and SQLSTATE. */
static void note_error(const PGresult *r, char *msg, size_t msglen, char *state)
{
    if (msg[0] || PQresultStatus(r) == PGRES_PIPELINE_ABORTED)
        return;
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    oneline(msg, msglen, PQresultErrorMessage(r));
    if (!msg[0])
        snprintf(msg, msglen, "%s", PQresStatus(PQresultStatus(r)));
    snprintf(state, 6, "%s", s ? s : "");
}

/* Read the results of round 1 and decide every request. 0, or -1 when the connection failed. */
static int read_requests(fw_galpg *p, fw_galwrite **b, int n, char *msg, size_t msglen, char *state)
{
    writer *w = &p->w;
    PGresult *r = pipe_result(&w->x);
    if (!r)
        return -1;
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        note_error(r, msg, msglen, state);
    PQclear(r);
    for (int i = 0; i < n; i++) {
        if (!(r = pipe_result(&w->x)))
            return -1;
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            note_error(r, msg, msglen, state);
            PQclear(r);
            continue;
        }
        int rows = PQntuples(r);
        fw_galwrite *q = b[i];
        int64_t id = 0;
        for (int k = 0; k < rows && !msg[0]; k++) {
            if (PQnfields(r) != 1 || res_int(r, k, 0, &id) != 0 || id < 1)
                snprintf(msg, msglen, "unexpected face id from the database");
            else if (add_change(w, q->type == FW_GALWRITE_ENROLL ? FW_GALLERY_CHANGE_ADD
                                                                 : FW_GALLERY_CHANGE_REMOVE,
                                id) != 0)
                snprintf(msg, msglen, "out of memory");
        }
        if (q->type == FW_GALWRITE_ENROLL && rows != 1 && !msg[0])
            snprintf(msg, msglen, "the database returned %d ids for one enroll", rows);
        if (q->type == FW_GALWRITE_ENROLL)
            fw_galwrite_finish(q, FW_STATUS_OK, (uint64_t)id, NULL);
        else if (rows)
            fw_galwrite_finish(q, FW_STATUS_OK, (uint64_t)rows, NULL);
        else if (q->type == FW_GALWRITE_DELETE_FACE)
            fw_galwrite_finish(q, FW_STATUS_NOT_FOUND, 0, "no face with id %" PRIu64,
                               q->face_id);
        else
            fw_galwrite_finish(q, FW_STATUS_NOT_FOUND, 0, "no subject \"%s\"", q->subject);
        PQclear(r);
    }
    if (!(r = pipe_result(&w->x)))
        return -1;
    int sync = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    if (!sync) {
        snprintf(w->x.err, sizeof w->x.err, "pipeline out of step with the database");
        return -1;
    }
    return 0;
}

/* End a failed transaction. 0, or -1 when the connection cannot be trusted any more. */
static int tx_rollback(pgx *x)
{
    PGconn *c = x->conn;
    if (!PQsendQueryParams(c, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0) || !PQpipelineSync(c) ||
        pgx_flush(x) != 0) {
        pgx_fail(x, "rollback failed");
        return -1;
    }
    PGresult *r = pipe_result(x), *s = r ? pipe_result(x) : NULL;
    int ok = r && s && PQresultStatus(s) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    PQclear(s);
    return ok && PQexitPipelineMode(c) ? 0 : -1;
}

/* Round 2's results: the change rows (when there are any), NOTIFY, COMMIT, the sync point.
 * 0 with *committed, or -1 when the connection failed. */
static int read_commit(pgx *x, int with_changes, int *committed, char *msg, size_t msglen,
                       char *state)
{
    *committed = 0;
    for (int k = with_changes ? 0 : 2; k < 4; k++) {
        PGresult *r = pipe_result(x);
        if (!r)
            return -1;
        ExecStatusType st = PQresultStatus(r);
        if (k == 3) {
            PQclear(r);
            if (st != PGRES_PIPELINE_SYNC) {
                snprintf(x->err, sizeof x->err, "pipeline out of step with the database");
                return -1;
            }
        } else if (st != PGRES_COMMAND_OK) {
            note_error(r, msg, msglen, state);
            PQclear(r);
        } else {
            /* An aborted transaction's COMMIT answers "ROLLBACK", without an error. */
            if (k == 2)
                *committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
            PQclear(r);
        }
    }
    return 0;
}

/* One transaction for the whole batch. Sets every request's outcome on TX_OK; otherwise msg
 * says what went wrong and *commit_sent whether COMMIT may have reached the server. */
static int tx_run(fw_galpg *p, fw_galwrite **b, int n, int *commit_sent, char *msg, size_t msglen)
{
    writer *w = &p->w;
    pgx *x = &w->x;
    PGconn *c = x->conn;
    char state[6] = "", count[16];
    int ok, committed = 0;
    *commit_sent = 0;
    msg[0] = '\0';
    w->nchanges = 0;
    w->kinds_len = w->ids_len = 0;
    if (!PQenterPipelineMode(c)) {
        pgx_fail(x, "cannot enter pipeline mode");
        goto lost;
    }
    /* Round 1: the requests. */
    ok = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
    for (int i = 0; i < n && ok; i++)
        ok = send_request(c, b[i]);
    if (!ok || !PQpipelineSync(c)) {
        pgx_fail(x, "send failed");
        goto lost;
    }
    if (pgx_flush(x) != 0 || read_requests(p, b, n, msg, msglen, state) != 0)
        goto lost;
    if (msg[0])
        goto rollback;

    /* Round 2: the counter and the change rows, NOTIFY, COMMIT — one round trip. */
    if (w->nchanges) {
        w->kinds[w->kinds_len] = '}'; /* add_change left room for it */
        w->kinds[w->kinds_len + 1] = '\0';
        w->ids[w->ids_len] = '}';
        w->ids[w->ids_len + 1] = '\0';
        snprintf(count, sizeof count, "%" PRIu32, w->nchanges);
        const char *vals[3] = { count, w->kinds, w->ids };
        ok = PQsendQueryPrepared(c, "fw_log_changes", 3, vals, NULL, NULL, 0) &&
             PQsendQueryParams(c, "NOTIFY fw_change", 0, NULL, NULL, NULL, NULL, 0);
    }
    ok = ok && PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) && PQpipelineSync(c);
    *commit_sent = 1; /* from here on a lost connection leaves the outcome unknown */
    if (!ok) {
        pgx_fail(x, "send failed");
        goto lost;
    }
    if (pgx_flush(x) != 0 || read_commit(x, w->nchanges != 0, &committed, msg, msglen, state) != 0)
        goto lost;
    if (!committed) {
        if (!msg[0])
            snprintf(msg, msglen, "COMMIT did not commit");
        goto rollback;
    }
    /* Committed: the answers stand. If the connection cannot leave pipeline mode the caller
     * drops it (write_batch checks). */
    if (!PQexitPipelineMode(c))
        pgx_fail(x, "cannot leave pipeline mode");
    return TX_OK;
rollback:
    if (tx_rollback(x) != 0) {
        *commit_sent = 0; /* round 2 either never ran or did not commit */
        goto lost;
    }
    /* Class 40: deadlock or serialization failure; the transaction is gone, try again. */
    return strncmp(state, "40", 2) == 0 ? TX_RETRY : TX_FAILED;
lost:
    copy_str(msg, msglen, x->err);
    return TX_LOST;
}

/* Run a batch. Returns 1 when the connection is lost (every request answered UNAVAILABLE). */
static int write_batch(fw_galpg *p, fw_galwrite **b, int n)
{
    char msg[192], q[240];
    int commit_sent = 0, rc = TX_FAILED;
    for (int t = 0; t < PG_TX_TRIES; t++)
        if ((rc = tx_run(p, b, n, &commit_sent, msg, sizeof msg)) != TX_RETRY)
            break;
    if (rc == TX_OK) {
        atomic_fetch_add(&p->a_commits, 1);
        if (PQpipelineStatus(p->w.x.conn) != PQ_PIPELINE_OFF)
            return 1;
        return 0;
    }
    atomic_fetch_add(&p->a_write_errors, 1);
    for (int i = 0; i < n; i++) {
        if (rc == TX_LOST && commit_sent)
            fw_galwrite_finish(b[i], FW_STATUS_UNAVAILABLE, 0,
                               "database connection lost; the write may have committed");
        else if (rc == TX_LOST)
            fw_galwrite_finish(b[i], FW_STATUS_UNAVAILABLE, 0,
                               "database connection lost; nothing written");
        else
            fw_galwrite_finish(b[i], FW_STATUS_UNAVAILABLE, 0, "database error: %s", msg);
    }
    if (rc != TX_LOST)
        plog(p, FW_LOG_WARN, "postgresql write failed", "requests=%d error=%s", n,
             fw_log_quote(q, sizeof q, msg));
    return rc == TX_LOST;
}

static int writer_connect(fw_galpg *p, int *newer)
{
    static const Oid t_enroll[] = { OID_BYTEA, OID_BYTEA, OID_BYTEA };
    static const Oid t_face[] = { OID_INT8 };
    static const Oid t_subject[] = { OID_BYTEA };
    static const Oid t_changes[] = { OID_INT8, OID_INT2_ARRAY, OID_INT8_ARRAY };
    pgx *x = &p->w.x;
    int rc = -1;
    /* Connecting may be cut short by close (the writes waiting are then answered
     * UNAVAILABLE); a write in flight never is. */
    x->stopfd = p->stopfd;
    if (connect_migrate(p, x, "facewired-writer", newer) != 0)
        goto out;
    if (pgx_prepare(x, "fw_enroll", SQL_ENROLL, 3, t_enroll) != 0 ||
        pgx_prepare(x, "fw_delete_face", SQL_DELETE_FACE, 1, t_face) != 0 ||
        pgx_prepare(x, "fw_delete_subject", SQL_DELETE_SUBJECT, 1, t_subject) != 0 ||
        pgx_prepare(x, "fw_log_changes", SQL_LOG_CHANGES, 3, t_changes) != 0) {
        pgx_close(x);
        goto out;
    }
    rc = 0;
out:
    x->stopfd = -1;
    return rc;
}

/* Answer everything queued now (the writer has no connection). Caller holds q.mu, which is
 * let go while the answers are handed back. */
static void fail_queue_locked(fw_galpg *p, const char *why)
{
    fw_galwrite *tail, *head = fw_galwrite_take_all_locked(&p->q, &tail);
    for (fw_galwrite *r = head; r; r = r->next)
        fw_galwrite_finish(r, FW_STATUS_UNAVAILABLE, 0, "database unavailable: %s", why);
    pthread_mutex_unlock(&p->q.mu);
    fw_galwrite_hand_back(&p->q, head, tail);
    pthread_mutex_lock(&p->q.mu);
}

/* Sleep in poll() until the queue has work (qfd), the socket (fd >= 0) has something to
 * say, or timeout_ms passes (-1: no limit). Returns poll's revents for the socket. */
static short writer_sleep(fw_galpg *p, int fd, int timeout_ms)
{
    struct pollfd pf[2] = { { .fd = p->qfd, .events = POLLIN }, { .fd = fd, .events = POLLIN } };
    uint64_t v;
    int n = poll(pf, 2, timeout_ms);
    pthread_mutex_lock(&p->q.mu);
    p->q.idle = 0;
    pthread_mutex_unlock(&p->q.mu);
    if (n > 0 && pf[0].revents)
        (void)!read(p->qfd, &v, sizeof v); /* non-blocking: resets the counter */
    return n > 0 ? pf[1].revents : 0;
}

/* Wait out a reconnect delay, answering whatever gets queued meanwhile at once. 1 when
 * stopping (the queue answered), else 0. */
static int writer_backoff(fw_galpg *p, uint32_t ms, const char *why)
{
    uint64_t end = mono_ms() + ms;
    for (;;) {
        pthread_mutex_lock(&p->q.mu);
        if (p->q.head)
            fail_queue_locked(p, why);
        int stop = p->q.stopping;
        uint64_t now = mono_ms();
        if (stop || now >= end) {
            pthread_mutex_unlock(&p->q.mu);
            return stop;
        }
        p->q.idle = 1;
        pthread_mutex_unlock(&p->q.mu);
        writer_sleep(p, -1, (int)(end - now));
    }
}

/* Up to batch_max queued writes; 0 when stopping and drained, or when the idle connection
 * failed (*lost set, x->err says why): a database that goes away while we wait for work is
 * noticed at once, so writes are refused without a failed attempt first. */
static int take_batch(fw_galpg *p, fw_galwrite **b, int *lost)
{
    pgx *x = &p->w.x;
    *lost = 0;
    for (;;) {
        pthread_mutex_lock(&p->q.mu);
        if (p->q.head || p->q.stopping)
            break;
        p->q.idle = 1;
        pthread_mutex_unlock(&p->q.mu);
        short ev = writer_sleep(p, PQsocket(x->conn), -1);
        if (ev && (!PQconsumeInput(x->conn) || PQstatus(x->conn) != CONNECTION_OK)) {
            pgx_fail(x, "connection closed while idle");
            *lost = 1;
            return 0;
        }
        drain_notifies(x->conn); /* nothing is expected; notices and the like are dropped */
    }
    int n = fw_galwrite_take_locked(&p->q, b, (int)p->opt.batch_max);
    pthread_mutex_unlock(&p->q.mu);
    return n;
}

static void *writer_main(void *arg)
{
    fw_galpg *p = arg;
    writer *w = &p->w;
    uint32_t backoff = PG_BACKOFF_MIN_MS;
    int ever = 0, newer;
    for (;;) {
        if (!w->x.conn) {
            pthread_mutex_lock(&p->q.mu);
            int done = p->q.stopping && !p->q.head;
            pthread_mutex_unlock(&p->q.mu);
            if (done)
                break;
            if (writer_connect(p, &newer) == 0) {
                backoff = PG_BACKOFF_MIN_MS;
                w->logged[0] = '\0';
                note_connected(p, &ever, &p->a_wconn, "writer");
            } else {
                pthread_mutex_lock(&p->smu);
                copy_str(p->werr, sizeof p->werr, w->x.err);
                pthread_mutex_unlock(&p->smu);
                /* Cut short by close: not the database's fault, so not worth a warning (the
                 * writes still queued are answered just below all the same). */
                if (!w->x.stopped)
                    log_unreachable(p, w->logged, sizeof w->logged, "writer", w->x.err,
                                    newer ? FW_LOG_ERROR : FW_LOG_WARN);
                atomic_store(&p->a_retry_at, mono_ms() + backoff);
                if (writer_backoff(p, backoff, w->x.err))
                    break;
                backoff = backoff_next(p, backoff);
                continue;
            }
        }
        int lost;
        int n = take_batch(p, w->batch, &lost);
        if (!n && !lost)
            break; /* stopping and drained */
        if (lost || write_batch(p, w->batch, n)) {
            atomic_store(&p->a_wconn, 0);
            pthread_mutex_lock(&p->smu);
            copy_str(p->werr, sizeof p->werr, w->x.err);
            pthread_mutex_unlock(&p->smu);
            log_conn(p, FW_LOG_WARN, "postgresql connection lost", "writer", w->x.err);
            snprintf(w->logged, sizeof w->logged, "%s", w->x.err);
            pgx_close(&w->x);
            atomic_store(&p->a_retry_at, mono_ms() + PG_BACKOFF_MIN_MS);
            pthread_mutex_lock(&p->q.mu); /* those behind it would wait for a reconnect */
            if (p->q.head)
                fail_queue_locked(p, "connection lost");
            pthread_mutex_unlock(&p->q.mu);
        }
        fw_galwrite_hand_back_batch(&p->q, w->batch, n);
    }
    atomic_store(&p->a_wconn, 0);
    pgx_close(&w->x);
    return NULL;
}

/* ---- the follower: applying ------------------------------------------------------------------ */

static void bad_row(fw_galpg *p, uint64_t seq, int64_t face_id, const char *why)
{
    follower *f = &p->f;
    f->bad_rows++;
    atomic_store(&p->a_bad_rows, f->bad_rows);
    if (f->bad_rows <= PG_BAD_ROW_LOGS)
        plog(p, FW_LOG_ERROR, "postgresql row passed over", "seq=%" PRIu64 " face=%" PRId64
             " reason=\"%s\"%s", seq, face_id, why,
             f->bad_rows == PG_BAD_ROW_LOGS ? " note=\"further bad rows are only counted\"" : "");
}

/* Check an ADD's face and stage it. 0, or -1 with *why (the row is unusable). */
static int stage_add(follower *f, uint64_t seq, int64_t id, const uint8_t *subj, int subj_len,
                     const uint8_t *meta, int meta_len, const uint8_t *desc, int desc_len,
                     const char **why)
{
    fw_gallery_change *c = &f->chg[f->n];
    staged *s = &f->stage[f->n];
    if (id < 1) {
        *why = "face id below 1";
        return -1;
    }
    /* The lengths come from the server: the queries' CASEs cap them, but the copies below
     * go into fixed buffers, so the caps are checked here, before any byte is copied. */
    if (subj_len < 0 || meta_len < 0 || meta_len > FW_GALLERY_META_MAX ||
        desc_len != PG_DESC_BYTES) {
        *why = "subject, metadata or descriptor too long or missing";
        return -1;
    }
    if (!galidx_subject_valid((const char *)subj, (size_t)subj_len)) {
        *why = "subject is not 1-128 bytes of UTF-8 without NUL";
        return -1;
    }
    le_to_desc(desc, s->desc);
    if (!galidx_desc_valid(s->desc)) {
        *why = "descriptor has a non-finite or out-of-range value";
        return -1;
    }
    memcpy(s->subject, subj, (size_t)subj_len);
    if (meta_len)
        memcpy(s->meta, meta, (size_t)meta_len);
    memset(c, 0, sizeof *c);
    c->seq = seq;
    c->kind = FW_GALLERY_CHANGE_ADD;
    c->face_id = (uint64_t)id;
    c->subject = s->subject;
    c->subject_len = (size_t)subj_len;
    c->meta = s->meta;
    c->meta_len = (size_t)meta_len;
    c->desc = s->desc;
    return 0;
}

static void stage_simple(follower *f, uint64_t seq, int kind, int64_t id, int64_t age_us)
{
    fw_gallery_change *c = &f->chg[f->n];
    memset(c, 0, sizeof *c);
    c->seq = seq;
    c->kind = kind;
    c->face_id = id > 0 ? (uint64_t)id : 0;
    f->age_us[f->n++] = age_us;
}

/* Apply what is staged. 0, or -1 after logging why (the follower then starts over from the
 * first change not applied). */
static int flush_stage(fw_galpg *p)
{
    follower *f = &p->f;
    char err[200], q[240];
    int done = 0, recorded = 0;
    if (!f->n)
        return 0;
    if (fw_gallery_apply(p->g, f->chg, f->n, err, sizeof err) == 0) {
        done = f->n;
    } else if (f->n > 1) {
        /* A call is refused whole when it might not fit (room is reserved for each of its
         * ADDs), yet a prefix may fit — and in a full gallery a REMOVE then an ADD does. One
         * at a time applies all that can be, in order, and stops at the one that cannot. */
        while (done < f->n && fw_gallery_apply(p->g, &f->chg[done], 1, err, sizeof err) == 0)
            done++;
    }
    for (int i = 0; i < done; i++) {
        if (f->chg[i].seq)
            f->applied = f->chg[i].seq;
        if (f->age_us[i] >= 0) {
            fw_hist_record(&f->hist, (uint64_t)f->age_us[i]);
            recorded = 1;
        }
    }
    if (recorded) {
        atomic_store(&p->a_p50, fw_hist_quantile(&f->hist, 0.50));
        atomic_store(&p->a_p99, fw_hist_quantile(&f->hist, 0.99));
    }
    atomic_store(&p->a_applied, f->applied);
    int n = f->n;
    f->n = 0;
    if (done == n)
        return 0;
    set_why(p, 0, "cannot apply changes: %s", err);
    snprintf(f->x.err, sizeof f->x.err, "cannot apply changes: %s", err);
    f->apply_failed = 1;
    if (strcmp(f->logged, f->x.err) != 0) {
        copy_str(f->logged, sizeof f->logged, f->x.err);
        plog(p, FW_LOG_ERROR, "postgresql changes not applied", "error=%s",
             fw_log_quote(q, sizeof q, err));
    }
    return -1;
}

/* ---- the follower: the initial load (binary COPY) ------------------------------------------- */

static const uint8_t copy_sig[11] = { 'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0 };

/* Parse every complete unit (header, tuple, trailer) at the start of the buffer. Returns the
 * bytes consumed, or -1 with f->x.err (a stream we did not ask for). */
static long copy_parse(fw_galpg *p, const uint8_t *b, size_t len)
{
    follower *f = &p->f;
    size_t off = 0;
    if (!f->header_done) {
        if (len < 19)
            return 0;
        uint32_t flags = (uint32_t)get_be(b + 11, 4), ext = (uint32_t)get_be(b + 15, 4);
        if (memcmp(b, copy_sig, sizeof copy_sig) != 0 || (flags & 0xffff0000u) || ext > 1024) {
            snprintf(f->x.err, sizeof f->x.err, "COPY: not a binary COPY header we can read");
            return -1;
        }
        if (len < 19 + (size_t)ext)
            return 0;
        off = 19 + ext;
        f->header_done = 1;
    }
    /* id, subject, meta, descriptor: the most each may be (the query caps them). */
    static const int32_t maxlen[4] = { 8, FW_GALLERY_SUBJECT_MAX, FW_GALLERY_META_MAX,
                                       PG_DESC_BYTES };
    while (off < len) {
        if (f->trailer_seen) {
            snprintf(f->x.err, sizeof f->x.err, "COPY: data after the trailer");
            return -1;
        }
        if (len - off < 2)
            break;
        int16_t nf = (int16_t)get_be(b + off, 2);
        if (nf == -1) {
            f->trailer_seen = 1;
            off += 2;
            continue;
        }
        if (nf != 4) {
            snprintf(f->x.err, sizeof f->x.err, "COPY: a tuple of %d fields, expected 4", nf);
            return -1;
        }
        size_t pos = off + 2;
        const uint8_t *field[4];
        int32_t flen[4];
        int complete = 1;
        for (int i = 0; i < 4; i++) {
            if (len - pos < 4) {
                complete = 0;
                break;
            }
            flen[i] = (int32_t)get_be(b + pos, 4);
            pos += 4;
            if (flen[i] < -1 || flen[i] > maxlen[i] || (i == 0 && flen[i] != 8)) {
                snprintf(f->x.err, sizeof f->x.err, "COPY: field %d has length %" PRId32, i,
                         flen[i]);
                return -1;
            }
            field[i] = b + pos;
            if (flen[i] > 0) {
                if (len - pos < (size_t)flen[i]) {
                    complete = 0;
                    break;
                }
                pos += (size_t)flen[i];
            }
        }
        if (!complete)
            break;
        off = pos;
        int64_t id = (int64_t)get_be(field[0], 8);
        const char *why;
        if (stage_add(f, 0, id, field[1], flen[1], field[2], flen[2], field[3], flen[3],
                      &why) != 0) {
            bad_row(p, 0, id, why);
            continue;
        }
        f->age_us[f->n++] = -1;
        if (f->n == PG_APPLY_BATCH && flush_stage(p) != 0)
            return -1;
    }
    return (long)off;
}

/* Feed one CopyData message (any framing) through the parser. 0 or -1. */
static int copy_feed(fw_galpg *p, const uint8_t *data, size_t n)
{
    follower *f = &p->f;
    while (n) {
        size_t k = sizeof f->cbuf - f->clen;
        if (k > n)
            k = n;
        memcpy(f->cbuf + f->clen, data, k);
        f->clen += k;
        data += k;
        n -= k;
        long used = copy_parse(p, f->cbuf, f->clen);
        if (used < 0)
            return -1;
        if (used == 0 && f->clen == sizeof f->cbuf) {
            snprintf(f->x.err, sizeof f->x.err, "COPY: a tuple larger than %zu bytes",
                     sizeof f->cbuf);
            return -1;
        }
        memmove(f->cbuf, f->cbuf + used, f->clen - (size_t)used);
        f->clen -= (size_t)used;
    }
    return 0;
}

/* The whole gallery as of one snapshot: reset memory to the snapshot's seq, then every face. */
static int initial_load(fw_galpg *p)
{
    follower *f = &p->f;
    pgx *x = &f->x;
    PGresult *r = NULL;
    int64_t seq = -1;
    char err[200];
    uint64_t t0 = uv_hrtime();
    f->clen = 0;
    f->header_done = f->trailer_seen = 0;
    f->n = 0;
    /* The session rules sequential scans out (SQL_FOLLOWER_SESSION); the COPY of every face
     * is the one query that wants one. */
    if (pgx_cmd(x, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                   "SET LOCAL enable_seqscan = on") != 0)
        return -1;
    if (!(r = pgx_run(x, "SELECT seq FROM fw_counter WHERE id = 1", 0, NULL, NULL, NULL,
                      PGRES_TUPLES_OK)))
        return -1;
    if (PQntuples(r) != 1 || res_int(r, 0, 0, &seq) != 0 || seq < 0) {
        snprintf(x->err, sizeof x->err, "fw_counter must hold one row with seq >= 0");
        PQclear(r);
        return -1;
    }
    PQclear(r);
    if (fw_gallery_apply_reset(p->g, (uint64_t)seq, err, sizeof err) != 0) {
        snprintf(x->err, sizeof x->err, "%s", err);
        return -1;
    }
    f->applied = (uint64_t)seq;
    int failed;
    if (!PQsendQuery(x->conn, SQL_LOAD) || pgx_flush(x) != 0)
        return -1;
    r = pgx_next(x, &failed);
    if (!pgx_ok(x, r, PGRES_COPY_OUT, "COPY failed")) {
        if (!r && !failed)
            snprintf(x->err, sizeof x->err, "COPY: no answer");
        PQclear(r);
        return -1;
    }
    PQclear(r);
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(x->conn, &buf, 1);
        if (n > 0) {
            int rc = copy_feed(p, (const uint8_t *)buf, (size_t)n);
            PQfreemem(buf);
            if (rc != 0)
                return -1;
        } else if (n == 0) {
            if (pgx_wait(x, POLLIN, PG_IO_TIMEOUT_MS) != 0)
                return -1;
            if (!PQconsumeInput(x->conn)) {
                pgx_fail(x, "receive failed");
                return -1;
            }
        } else if (n == -1) {
            break;
        } else {
            pgx_fail(x, "COPY failed");
            return -1;
        }
    }
    r = pgx_collect(x);
    int ok = pgx_ok(x, r, PGRES_COMMAND_OK, "COPY failed");
    PQclear(r);
    if (!ok)
        return -1;
    if (!f->header_done || !f->trailer_seen || f->clen) {
        snprintf(x->err, sizeof x->err, "COPY: the stream ended early");
        return -1;
    }
    if (flush_stage(p) != 0 || pgx_cmd(x, "COMMIT") != 0)
        return -1;
    fw_gallery_info gi;
    fw_gallery_info_get(p->g, &gi);
    uint64_t ms = (uv_hrtime() - t0) / 1000000u;
    atomic_store(&p->a_load_faces, gi.faces);
    atomic_store(&p->a_load_ms, ms);
    atomic_store(&p->a_applied, f->applied);
    if (atomic_load(&p->a_head) < f->applied)
        atomic_store(&p->a_head, f->applied);
    atomic_store(&p->a_loaded, 1);
    plog(p, FW_LOG_INFO, "gallery loaded from postgresql", "faces=%" PRIu64 " seq=%" PRIu64
         " ms=%" PRIu64, gi.faces, f->applied, ms);
    return 0;
}

/* ---- the follower: the change loop ----------------------------------------------------------- */

/* A column of bytes: pointer and length, -1 when NULL. */
static const uint8_t *col_bytes(const PGresult *r, int row, int col, int *len)
{
    if (PQgetisnull(r, row, col)) {
        *len = -1;
        return NULL;
    }
    *len = PQgetlength(r, row, col);
    return (const uint8_t *)PQgetvalue(r, row, col);
}

static int cmp_face_ref(const void *a, const void *b)
{
    int64_t x = ((const face_ref *)a)->id, y = ((const face_ref *)b)->id;
    return (x > y) - (x < y);
}

/* The faces of the n ADD ids that pass 1 of apply_page put in f->idarr: fw_faces' result,
 * and f->faces its rows sorted by id. NULL with x->err when the read failed or the answer is
 * not one we asked for (more rows than ids, an id unreadable or twice: fw_face's key rules
 * these out, so the database is not one we can follow). */
static PGresult *read_faces(follower *f, int n, int *nfaces)
{
    pgx *x = &f->x;
    const char *vals[1] = { (const char *)f->idarr };
    int lens[1] = { 20 + 12 * n }, fmts[1] = { 1 };
    /* A binary int8[]: one dimension, no NULLs, element type, length, lower bound 1; then
     * each element as length 8 and the value (pass 1 of apply_page filled those in). */
    put_be(f->idarr, 1, 4);
    put_be(f->idarr + 4, 0, 4);
    put_be(f->idarr + 8, OID_INT8, 4);
    put_be(f->idarr + 12, (uint64_t)n, 4);
    put_be(f->idarr + 16, 1, 4);
    if (!PQsendQueryPrepared(x->conn, "fw_faces", 1, vals, lens, fmts, 1)) {
        pgx_fail(x, "send failed");
        return NULL;
    }
    PGresult *r = pgx_collect(x);
    if (!pgx_ok(x, r, PGRES_TUPLES_OK, "reading faces failed"))
        goto err;
    int rows = PQntuples(r);
    if (PQnfields(r) != 4 || rows > n) {
        snprintf(x->err, sizeof x->err, "reading faces: %d rows of %d columns for %d ids", rows,
                 PQnfields(r), n);
        goto err;
    }
    for (int i = 0; i < rows; i++) {
        f->faces[i].row = i;
        if (res_int(r, i, 0, &f->faces[i].id) != 0) {
            snprintf(x->err, sizeof x->err, "reading faces: a bad face id");
            goto err;
        }
    }
    qsort(f->faces, (size_t)rows, sizeof *f->faces, cmp_face_ref);
    for (int i = 1; i < rows; i++)
        if (f->faces[i].id == f->faces[i - 1].id) {
            snprintf(x->err, sizeof x->err, "reading faces: face %" PRId64 " twice",
                     f->faces[i].id);
            goto err;
        }
    *nfaces = rows;
    return r;
err:
    PQclear(r);
    return NULL;
}

/* Apply one page of changes. Returns the rows read (>= 0) or -1; *gap is set when a change
 * is missing before the rows we have (we stop there), *gap_age_us its successor's age.
 *
 * Two statements, so two snapshots (READ COMMITTED): the change rows, then the faces of the
 * ADDs among them. Reading the faces later changes nothing we apply. A face row is written
 * once, by the transaction that logs its ADD, and never updated; ids come from a sequence and
 * are never reused. So a face row found in the second snapshot is exactly what the ADD
 * added, and an ADD whose row is gone by then lost it to a DELETE that committed in between.
 * That DELETE could only see the row after the ADD's transaction committed, and takes its
 * sequence numbers at its end, so its REMOVE has a higher seq than the ADD: applying the
 * changes in order ends with the face absent, which is what skipping the ADD gives (in
 * this page or a later one the REMOVE comes, and removing an absent id changes nothing).
 * The node may lack the face a little before its REMOVE is applied, never keep a face the
 * database deleted, and ends where every other node ends. */
static int apply_page(fw_galpg *p, int *gap, int64_t *gap_age_us, int64_t *first_age_us,
                      uint64_t *last_seen)
{
    follower *f = &p->f;
    pgx *x = &f->x;
    uint8_t param[8];
    const char *vals[1] = { (const char *)param };
    int lens[1] = { 8 }, fmts[1] = { 1 };
    PGresult *fr = NULL;
    uint64_t next = f->applied;
    int npick = 0, nadd = 0, nfaces = 0;
    put_be(param, f->applied, 8);
    *gap = 0;
    *gap_age_us = *first_age_us = 0;
    if (!PQsendQueryPrepared(x->conn, "fw_changes", 1, vals, lens, fmts, 1)) {
        pgx_fail(x, "send failed");
        return -1;
    }
    PGresult *r = pgx_collect(x);
    if (!pgx_ok(x, r, PGRES_TUPLES_OK, "reading changes failed"))
        goto err;
    int rows = PQntuples(r);
    if (PQnfields(r) != 4 || rows > PG_CHANGE_PAGE) {
        snprintf(x->err, sizeof x->err, "reading changes: %d rows of %d columns, expected at "
                 "most %d of 4", rows, PQnfields(r), PG_CHANGE_PAGE);
        goto err;
    }
    /* Rows come in seq order: the last one is the newest change known, applied or not. */
    int64_t newest;
    if (rows > 0 && res_int(r, rows - 1, 0, &newest) == 0 && newest > 0 &&
        (uint64_t)newest > *last_seen) {
        *last_seen = (uint64_t)newest;
        atomic_store(&p->a_head, *last_seen);
    }
    /* Pass 1: the rows we apply (each seq exactly one above the last) and their ADDs' ids. */
    for (int i = 0; i < rows; i++) {
        int64_t seq, kind, id, age;
        if (res_int(r, i, 0, &seq) != 0 || seq < 1) {
            snprintf(x->err, sizeof x->err, "reading changes: a bad sequence number");
            goto err;
        }
        if (res_int(r, i, 3, &age) != 0 || age < 0)
            age = 0;
        if (i == 0)
            *first_age_us = age;
        if ((uint64_t)seq != next + 1) {
            /* Never past a hole: the missing change may still commit (docs/gallery.md). */
            if (!*gap) {
                *gap = 1;
                *gap_age_us = age;
            }
            continue;
        }
        next = (uint64_t)seq;
        f->pick[npick++] = i;
        if (res_int(r, i, 1, &kind) == 0 && res_int(r, i, 2, &id) == 0 &&
            kind == FW_GALLERY_CHANGE_ADD && id >= 1) {
            uint8_t *e = f->idarr + 20 + 12 * nadd++; /* read_faces writes the header */
            put_be(e, 8, 4);
            put_be(e + 4, (uint64_t)id, 8);
        }
    }
    if (nadd && !(fr = read_faces(f, nadd, &nfaces)))
        goto err;
    /* Pass 2: stage and apply them in order. */
    for (int k = 0; k < npick; k++) {
        int i = f->pick[k];
        int64_t seq = 0, kind, id, age;
        (void)res_int(r, i, 0, &seq); /* pass 1 checked it */
        if (res_int(r, i, 3, &age) != 0 || age < 0)
            age = 0;
        if (res_int(r, i, 1, &kind) != 0 || res_int(r, i, 2, &id) != 0) {
            bad_row(p, (uint64_t)seq, 0, "unreadable change row");
            stage_simple(f, (uint64_t)seq, FW_GALLERY_CHANGE_SKIP, 0, age);
        } else if (kind == FW_GALLERY_CHANGE_REMOVE && id >= 1) {
            stage_simple(f, (uint64_t)seq, FW_GALLERY_CHANGE_REMOVE, id, age);
        } else if (kind == FW_GALLERY_CHANGE_ADD && id >= 1) {
            face_ref key = { .id = id, .row = 0 };
            const face_ref *fa = nfaces ? bsearch(&key, f->faces, (size_t)nfaces,
                                                  sizeof *f->faces, cmp_face_ref) : NULL;
            if (!fa) {
                /* Deleted since: its REMOVE comes later in the table (above). */
                stage_simple(f, (uint64_t)seq, FW_GALLERY_CHANGE_SKIP, id, age);
            } else {
                int sl, ml, dl;
                const uint8_t *s = col_bytes(fr, fa->row, 1, &sl),
                              *m = col_bytes(fr, fa->row, 2, &ml),
                              *d = col_bytes(fr, fa->row, 3, &dl);
                const char *why;
                if (stage_add(f, (uint64_t)seq, id, s, sl, m, ml, d, dl, &why) == 0) {
                    f->age_us[f->n++] = age;
                } else {
                    bad_row(p, (uint64_t)seq, id, why);
                    stage_simple(f, (uint64_t)seq, FW_GALLERY_CHANGE_SKIP, id, age);
                }
            }
        } else {
            bad_row(p, (uint64_t)seq, id, "unknown kind or face id below 1");
            stage_simple(f, (uint64_t)seq, FW_GALLERY_CHANGE_SKIP, 0, age);
        }
        if (f->n == PG_APPLY_BATCH && flush_stage(p) != 0)
            goto err;
    }
    PQclear(r);
    PQclear(fr);
    if (flush_stage(p) != 0)
        return -1;
    return rows;
err:
    PQclear(r);
    PQclear(fr);
    return -1;
}

static int follower_sleep(fw_galpg *p, int ms);

/* Follow the change table until the connection fails or we are stopped. *progress is set
 * once a page has been applied. */
static int follow(fw_galpg *p, int *progress)
{
    follower *f = &p->f;
    pgx *x = &f->x;
    uint32_t retry = PG_BACKOFF_MIN_MS;
    for (;;) {
        int gap;
        int64_t gap_age, first_age;
        uint64_t last_seen = atomic_load(&p->a_head);
        drain_notifies(x->conn);
        uint64_t t_query = mono_ms();
        int rows = apply_page(p, &gap, &gap_age, &first_age, &last_seen);
        if (rows < 0 && f->apply_failed) {
            /* The gallery refused (full, out of memory): the connection is fine, so keep it
             * and try the same page again later; ready() says why meanwhile. */
            f->apply_failed = 0;
            atomic_store(&p->a_lag_ms, (uint64_t)first_age / 1000u + (mono_ms() - t_query));
            if (follower_sleep(p, (int)retry)) {
                pgx_stop(x);
                return -1;
            }
            retry = retry * 2 > p->opt.reconnect_max_ms ? p->opt.reconnect_max_ms : retry * 2;
            continue;
        }
        if (rows < 0)
            return -1;
        retry = PG_BACKOFF_MIN_MS;
        *progress = 1;
        f->logged[0] = '\0';
        clear_why(p);
        if (last_seen < f->applied)
            last_seen = f->applied;
        /* Every row the query returned was, at that moment, known and not yet applied. The lag
         * is stored before the head, so whoever sees the new head sees its lag too. */
        if (gap)
            atomic_store(&p->a_lag_ms, (uint64_t)gap_age / 1000u + (mono_ms() - t_query));
        else if (rows == PG_CHANGE_PAGE)
            atomic_store(&p->a_lag_ms, (uint64_t)first_age / 1000u);
        else
            atomic_store(&p->a_lag_ms, 0);
        atomic_store(&p->a_head, last_seen);
        if (!gap && rows == PG_CHANGE_PAGE)
            continue; /* more to read now */
        /* Wait for a NOTIFY (or anything on the socket), the poll timer, or stop. */
        if (!PQconsumeInput(x->conn)) {
            pgx_fail(x, "receive failed");
            return -1;
        }
        PGnotify *n = PQnotifies(x->conn);
        if (n) {
            PQfreemem(n);
            continue;
        }
        int fd = PQsocket(x->conn);
        struct pollfd pf[2] = { { .fd = fd, .events = POLLIN }, { .fd = x->stopfd, .events = POLLIN } };
        int pr = poll(pf, 2, (int)p->opt.poll_ms);
        if (pr < 0 && errno != EINTR) {
            snprintf(x->err, sizeof x->err, "poll: %s", strerror(errno));
            return -1;
        }
        if (pr > 0 && pf[1].revents) {
            pgx_stop(x);
            return -1;
        }
        if (pr > 0 && !PQconsumeInput(x->conn)) {
            pgx_fail(x, "receive failed");
            return -1;
        }
    }
}

/* Wait ms or until stopped. 1 when stopped. */
static int follower_sleep(fw_galpg *p, int ms)
{
    struct pollfd pf = { .fd = p->stopfd, .events = POLLIN };
    uint64_t end = mono_ms() + (uint64_t)(ms < 0 ? 0 : ms);
    for (;;) {
        uint64_t now = mono_ms();
        int left = ms < 0 ? -1 : (now >= end ? 0 : (int)(end - now));
        int n = poll(&pf, 1, left);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return 0;
    }
}

static int follower_connect(fw_galpg *p, int *fatal)
{
    static const Oid t_changes[] = { OID_INT8 };
    static const Oid t_faces[] = { OID_INT8_ARRAY };
    follower *f = &p->f;
    pgx *x = &f->x;
    int newer;
    PGresult *r;
    *fatal = 0;
    if (connect_migrate(p, x, "facewired-follower", &newer) != 0) {
        if (newer) {
            *fatal = 1;
            set_why(p, 1, "%s", x->err);
        }
        return -1;
    }
    int version = PQserverVersion(x->conn);
    if (version < PG_PLAN_CACHE_MODE_VERSION) {
        snprintf(x->err, sizeof x->err, "PostgreSQL server version %d is too old: facewired "
                 "needs 12 or newer", version);
        set_why(p, 1, "%s", x->err);
        *fatal = 1;
        goto err;
    }
    if (pgx_cmd(x, SQL_FOLLOWER_SESSION) != 0 || pgx_cmd(x, "LISTEN fw_change") != 0 ||
        pgx_prepare(x, "fw_changes", SQL_CHANGES, 1, t_changes) != 0 ||
        pgx_prepare(x, "fw_faces", SQL_FACES, 1, t_faces) != 0)
        goto err;
    if (!(r = pgx_run(x, "SELECT seq FROM fw_counter WHERE id = 1", 0, NULL, NULL, NULL,
                      PGRES_TUPLES_OK)))
        goto err;
    int64_t seq = -1;
    int bad = PQntuples(r) != 1 || res_int(r, 0, 0, &seq) != 0 || seq < 0;
    PQclear(r);
    if (bad) {
        snprintf(x->err, sizeof x->err, "fw_counter must hold one row with seq >= 0");
        goto err;
    }
    if (atomic_load(&p->a_loaded) && (uint64_t)seq < f->applied) {
        /* Restored from an older backup, or another database: what this node applied is
         * not in it. Applying its future changes on top would mix two histories. */
        snprintf(x->err, sizeof x->err, "database behind this node (node at seq %" PRIu64
                 ", database at %" PRId64 "): restart the node", f->applied, seq);
        set_why(p, 1, "database behind this node");
        *fatal = 1;
        goto err;
    }
    if ((uint64_t)seq > atomic_load(&p->a_head))
        atomic_store(&p->a_head, (uint64_t)seq);
    return 0;
err:
    pgx_close(x);
    return -1;
}

static void *follower_main(void *arg)
{
    fw_galpg *p = arg;
    follower *f = &p->f;
    uint32_t backoff = PG_BACKOFF_MIN_MS;
    int ever = 0, fatal;
    for (;;) {
        if (follower_connect(p, &fatal) != 0) {
            if (f->x.stopped)
                break; /* closed while connecting: nothing to report */
            log_unreachable(p, f->logged, sizeof f->logged, "follower", f->x.err,
                            fatal ? FW_LOG_ERROR : FW_LOG_WARN);
            /* Refused for good: serve what we have until a restart. */
            if (follower_sleep(p, fatal ? -1 : (int)backoff))
                break;
            backoff = backoff_next(p, backoff);
            continue;
        }
        note_connected(p, &ever, &p->a_fconn, "follower");
        int rc = 0, progress = 0;
        const char *what = "postgresql connection lost";
        if (!atomic_load(&p->a_loaded)) {
            f->apply_failed = 0;
            if ((rc = initial_load(p)) != 0)
                what = "postgresql load failed";
            else
                progress = 1;
        }
        if (rc == 0)
            follow(p, &progress);
        atomic_store(&p->a_fconn, 0);
        pgx_close(&f->x);
        if (f->x.stopped)
            break;
        if (progress)
            backoff = PG_BACKOFF_MIN_MS;
        /* A failure that repeats at every retry is said once (until something works). */
        if (strcmp(f->logged, f->x.err) != 0) {
            log_conn(p, FW_LOG_WARN, what, "follower", f->x.err);
            copy_str(f->logged, sizeof f->logged, f->x.err);
        }
        if (follower_sleep(p, (int)backoff))
            break;
        backoff = backoff_next(p, backoff);
    }
    return NULL;
}

/* ---- the loop side --------------------------------------------------------------------------- */

/* Each answered write, before its callback: its outcome goes to the writes' breaker. */
static void on_answer(void *ctx, const fw_galwrite *r)
{
    fw_galpg *p = ctx;
    if (r->status == FW_STATUS_SHUTTING_DOWN) {
        if (r->probe)
            fw_breaker_cancel_probe(&p->breaker);
    } else {
        /* NOT_FOUND is the database working as it should. */
        int failure = r->status == FW_STATUS_UNAVAILABLE || r->status == FW_STATUS_INTERNAL;
        if (fw_breaker_record(&p->breaker, uv_now(p->loop), failure, r->probe))
            plog(p, p->breaker.state == FW_BREAKER_OPEN ? FW_LOG_WARN : FW_LOG_INFO,
                 "postgresql writes breaker", "state=%s",
                 fw_breaker_state_name(p->breaker.state));
    }
    atomic_store(&p->a_breaker, (int)p->breaker.state);
}

static void on_completions(uv_async_t *h)
{
    fw_galpg *p = h->data;
    fw_galwrite_deliver(&p->q, on_answer, p);
}

uint32_t fw_galpg_retry_after_ms(fw_galpg *p)
{
    if (!atomic_load(&p->a_wconn)) {
        uint64_t at = atomic_load(&p->a_retry_at), now = mono_ms();
        uint64_t left = at > now ? at - now : 0;
        return left < PG_BACKOFF_MIN_MS ? PG_BACKOFF_MIN_MS : (uint32_t)left;
    }
    if (p->breaker.state == FW_BREAKER_OPEN) {
        uint64_t end = p->breaker.opened_at + p->breaker.cfg.cooldown_ms, now = uv_now(p->loop);
        if (end > now)
            return (uint32_t)(end - now);
    }
    return 2 * PG_BACKOFF_MIN_MS;
}

/* Everything a write must pass before it is copied: closing, connection, breaker. */
static int admit(fw_galpg *p, uint8_t *probe, uint32_t *retry_after_ms, char *err, size_t errlen)
{
    uint32_t retry = 0;
    *probe = 0;
    if (p->closing) {
        snprintf(err, errlen, "gallery is closing");
        return FW_STATUS_SHUTTING_DOWN;
    }
    if (!atomic_load(&p->a_wconn)) {
        *retry_after_ms = fw_galpg_retry_after_ms(p);
        pthread_mutex_lock(&p->smu);
        snprintf(err, errlen, "database unavailable: %s", p->werr[0] ? p->werr : "connecting");
        pthread_mutex_unlock(&p->smu);
        return FW_STATUS_UNAVAILABLE;
    }
    uint64_t now = uv_now(p->loop);
    if (fw_breaker_fail_fast(&p->breaker, now, &retry)) {
        *retry_after_ms = retry;
        snprintf(err, errlen, "database writes suspended after repeated failures");
        return FW_STATUS_UNAVAILABLE;
    }
    int changed = 0;
    fw_breaker_verdict v = fw_breaker_admit(&p->breaker, now, &retry, &changed);
    if (changed)
        plog(p, FW_LOG_INFO, "postgresql writes breaker", "state=%s",
             fw_breaker_state_name(p->breaker.state));
    atomic_store(&p->a_breaker, (int)p->breaker.state);
    if (v == FW_BREAKER_REJECT) {
        *retry_after_ms = retry;
        snprintf(err, errlen, "database writes suspended after repeated failures");
        return FW_STATUS_UNAVAILABLE;
    }
    *probe = v == FW_BREAKER_PROBE;
    return FW_STATUS_OK;
}

/* Check, admit, copy and queue one write (the three entry points below). Ids above
 * INT64_MAX cannot be bigserial ids, so such a DELETE is answered without a trip. */
static int queue_write(fw_galpg *p, const fw_galwrite_args *a, uint32_t *retry_after_ms,
                       char *err, size_t errlen)
{
    uint8_t probe;
    int status = fw_galwrite_check(a, (uint64_t)INT64_MAX, err, errlen), wake;
    if (status != FW_STATUS_OK)
        return status;
    if (!a->cb) {
        snprintf(err, errlen, "galpg: no callback");
        return FW_STATUS_INTERNAL;
    }
    if ((status = admit(p, &probe, retry_after_ms, err, errlen)) != FW_STATUS_OK)
        return status;
    fw_galwrite *r = fw_galwrite_new(a, &status, err, errlen);
    if (r) {
        r->probe = probe;
        status = fw_galwrite_push(&p->q, r, &wake, err, errlen);
    }
    if (status != FW_STATUS_OK) {
        if (probe) /* admitted but never sent: the breaker must not wait for it */
            fw_breaker_cancel_probe(&p->breaker);
        free(r);
        return status;
    }
    if (wake) {
        uint64_t one = 1;
        (void)!write(p->qfd, &one, sizeof one);
    }
    return FW_STATUS_OK;
}

int fw_galpg_enroll(fw_galpg *p, const char *subject, size_t subject_len, const void *meta,
                    size_t meta_len, const float *desc, fw_gallery_done_cb cb, void *arg,
                    uint32_t *retry_after_ms, char *err, size_t errlen)
{
    fw_galwrite_args a = { .type = FW_GALWRITE_ENROLL, .subject = subject,
                           .subject_len = subject_len, .meta = meta, .meta_len = meta_len,
                           .desc = desc, .cb = cb, .arg = arg };
    return queue_write(p, &a, retry_after_ms, err, errlen);
}

int fw_galpg_delete_face(fw_galpg *p, uint64_t face_id, fw_gallery_done_cb cb, void *arg,
                         uint32_t *retry_after_ms, char *err, size_t errlen)
{
    fw_galwrite_args a = { .type = FW_GALWRITE_DELETE_FACE, .face_id = face_id, .cb = cb,
                           .arg = arg };
    return queue_write(p, &a, retry_after_ms, err, errlen);
}

int fw_galpg_delete_subject(fw_galpg *p, const char *subject, size_t subject_len,
                            fw_gallery_done_cb cb, void *arg, uint32_t *retry_after_ms,
                            char *err, size_t errlen)
{
    fw_galwrite_args a = { .type = FW_GALWRITE_DELETE_SUBJECT, .subject = subject,
                           .subject_len = subject_len, .cb = cb, .arg = arg };
    return queue_write(p, &a, retry_after_ms, err, errlen);
}

/* ---- state -------------------------------------------------------------------------------- */

void fw_galpg_info_get(fw_galpg *p, fw_galpg_info *info)
{
    memset(info, 0, sizeof *info);
    info->loaded = atomic_load(&p->a_loaded);
    info->writer_connected = atomic_load(&p->a_wconn);
    info->follower_connected = atomic_load(&p->a_fconn);
    info->applied_seq = atomic_load(&p->a_applied);
    info->head_seq = atomic_load(&p->a_head);
    if (info->head_seq < info->applied_seq)
        info->head_seq = info->applied_seq;
    info->lag_ms = atomic_load(&p->a_lag_ms);
    info->load_faces = atomic_load(&p->a_load_faces);
    info->load_ms = atomic_load(&p->a_load_ms);
    info->commits = atomic_load(&p->a_commits);
    info->write_errors = atomic_load(&p->a_write_errors);
    info->reconnects = atomic_load(&p->a_reconnects);
    info->lag_p50_us = atomic_load(&p->a_p50);
    info->lag_p99_us = atomic_load(&p->a_p99);
    info->breaker_state = atomic_load(&p->a_breaker);
    info->bad_rows = atomic_load(&p->a_bad_rows);
}

int fw_galpg_ready(fw_galpg *p, char *why, size_t whylen)
{
    int ready = 0;
    pthread_mutex_lock(&p->smu);
    if (p->why[0])
        snprintf(why, whylen, "%s", p->why);
    else
        ready = 1;
    pthread_mutex_unlock(&p->smu);
    if (!ready)
        return 0;
    uint64_t lag = atomic_load(&p->a_lag_ms);
    if (!atomic_load(&p->a_loaded)) {
        snprintf(why, whylen, "loading");
        return 0;
    }
    if (atomic_load(&p->a_fconn) && lag > p->opt.max_lag_ms) {
        snprintf(why, whylen, "lagging %" PRIu64 " ms", lag);
        return 0;
    }
    if (whylen)
        why[0] = '\0';
    return 1;
}

/* ---- open / close ------------------------------------------------------------------------- */

static void galpg_free(fw_galpg *p)
{
    if (p->stopfd >= 0)
        close(p->stopfd);
    if (p->qfd >= 0)
        close(p->qfd);
    fw_galwrite_queue_destroy(&p->q);
    pthread_mutex_destroy(&p->smu);
    free(p->w.batch);
    free(p->w.kinds);
    free(p->w.ids);
    free(p->f.stage);
    free(p->f.chg);
    free(p->f.age_us);
    free(p->f.pick);
    free(p->f.faces);
    free(p->f.idarr);
    free(p->url);
    free(p);
}

static void on_async_closed(uv_handle_t *h)
{
    galpg_free(h->data);
}

/* Stop and join the threads (the writer first finishes what is queued). */
static void stop_threads(fw_galpg *p)
{
    fw_galwrite_queue_stop(&p->q);
    uint64_t one = 1;
    if (p->qfd >= 0)
        (void)!write(p->qfd, &one, sizeof one);
    if (p->stopfd >= 0)
        (void)!write(p->stopfd, &one, sizeof one);
    if (p->wstarted)
        pthread_join(p->wthread, NULL);
    if (p->fstarted)
        pthread_join(p->fthread, NULL);
    p->wstarted = p->fstarted = 0;
}

int fw_galpg_open(uv_loop_t *loop, const fw_galpg_options *o, fw_galpg **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    if (!loop || !o || !o->url || !o->url[0] || !o->gallery) {
        snprintf(err, errlen, "galpg: a loop, a url and a gallery are needed");
        return -1;
    }
    /* The follower is the gallery's only mutator, so it must not have a writer of its own. */
    if (fw_gallery_apply(o->gallery, NULL, 0, err, errlen) != 0)
        return -1;
    fw_galpg *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    p->opt = *o;
    if (!p->opt.queue_max) p->opt.queue_max = 4096;
    if (!p->opt.batch_max) p->opt.batch_max = 256;
    if (p->opt.batch_max > 65536) p->opt.batch_max = 65536;
    if (!p->opt.poll_ms) p->opt.poll_ms = 1000;
    if (p->opt.poll_ms > 3600000) p->opt.poll_ms = 3600000;
    if (!p->opt.reconnect_max_ms) p->opt.reconnect_max_ms = 5000;
    if (p->opt.reconnect_max_ms < PG_BACKOFF_MIN_MS) p->opt.reconnect_max_ms = PG_BACKOFF_MIN_MS;
    if (!p->opt.max_lag_ms) p->opt.max_lag_ms = 5000;
    p->g = o->gallery;
    p->loop = loop;
    p->stopfd = p->qfd = -1;
    p->w.x.stopfd = -1; /* a write in flight is finished, even when closing */
    fw_galwrite_queue_init(&p->q, p->opt.queue_max);
    pthread_mutex_init(&p->smu, NULL);
    fw_breaker_config bc = { .window_ms = 10000, .min_requests = 10, .failure_pct = 50,
                             .cooldown_ms = 1000, .probes = 1 };
    fw_breaker_init(&p->breaker, &bc);
    p->url = strdup(o->url);
    p->opt.url = p->url;
    p->w.batch = malloc((size_t)p->opt.batch_max * sizeof *p->w.batch);
    p->f.stage = malloc(PG_APPLY_BATCH * sizeof *p->f.stage);
    p->f.chg = malloc(PG_APPLY_BATCH * sizeof *p->f.chg);
    p->f.age_us = malloc(PG_APPLY_BATCH * sizeof *p->f.age_us);
    p->f.pick = malloc(PG_CHANGE_PAGE * sizeof *p->f.pick);
    p->f.faces = malloc(PG_CHANGE_PAGE * sizeof *p->f.faces);
    p->f.idarr = malloc(PG_IDARR_BYTES);
    if (!p->url || !p->w.batch || !p->f.stage || !p->f.chg || !p->f.age_us || !p->f.pick ||
        !p->f.faces || !p->f.idarr) {
        snprintf(err, errlen, "out of memory");
        galpg_free(p);
        return -1;
    }
    p->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->qfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->stopfd < 0 || p->qfd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        galpg_free(p);
        return -1;
    }
    p->f.x.stopfd = p->stopfd;
    int rc = fw_galwrite_queue_attach(&p->q, loop, on_completions, p);
    if (rc != 0) {
        snprintf(err, errlen, "uv_async_init: %s", uv_strerror(rc));
        galpg_free(p);
        return -1;
    }
    if (pthread_create(&p->wthread, NULL, writer_main, p) == 0)
        p->wstarted = 1;
    if (p->wstarted && pthread_create(&p->fthread, NULL, follower_main, p) == 0)
        p->fstarted = 1;
    if (!p->fstarted) {
        snprintf(err, errlen, "cannot start the postgresql threads");
        stop_threads(p);
        /* Freed when the loop has closed the handle. */
        uv_close((uv_handle_t *)&p->q.async, on_async_closed);
        return -1;
    }
    *out = p;
    return 0;
}

void fw_galpg_close(fw_galpg *p)
{
    if (!p)
        return;
    p->closing = 1;
    stop_threads(p);
    /* what the writer finished after the loop's last turn */
    fw_galwrite_deliver(&p->q, on_answer, p);
    uv_close((uv_handle_t *)&p->q.async, on_async_closed);
}
