/*
 * bench_galpg.c — the PostgreSQL system of record's numbers (issue 9), for docs/performance.md.
 * Each part prints its figures and a ratio against an anchor measured in the same run:
 *
 *   load    gallery load at start for N (default 1,000,000) faces: fw_galpg_open until
 *           fw_galpg_info().loaded (connect, schema check, binary COPY inside one snapshot,
 *           fw_gallery_apply), against fw_gallery_open of a data directory holding the same
 *           faces as one snapshot (the state after a compaction). Ratio PG / snapshot; faces/s
 *           and RSS growth of each. Each side runs in its own child process, so neither
 *           inherits the other's freed heap and the RSS growth is the load's own. Both read
 *           from the page cache (the run fills both just before): a warm start.
 *   enroll  durable enroll throughput: fw_galpg_enroll with W (default 256) in flight against
 *           fw_gallery_enroll into a data directory (fdatasync per group commit) in the same
 *           run, both fed from one uv loop; and with 1 in flight (commit latency). Ratios PG /
 *           embedded; CPU per record of this process and of the PostgreSQL server.
 *   lag     replication lag under a steady enroll stream: two fw_galpg on --url's database as
 *           the load part left it (N faces, analysed) in this process ("node A" and "node B",
 *           each with its own gallery, threads and connections). A enrolls at R/s (default 500) for S seconds (default 10); a
 *           watcher thread polls B's applied_seq every 200 us. For every face: the time from
 *           A's OK callback to B's applied_seq covering the face's change (fw_change says
 *           which seq each face got), beside galpg's own lag_p50/p99 of B (commit -> memory,
 *           database clock). Anchor: the enroll's own OK latency (submit -> OK on A).
 *
 * The database is filled fast with binary COPY FROM STDIN through libpq (the schema is made
 * by fw_galpg itself: the benchmark opens it once on the empty database first), then
 * VACUUM (FREEZE, ANALYZE), as autovacuum would have left a gallery imported long ago.
 * Descriptors are the same pseudo-random rows as bench_gallery (uniform in [-1, 1)).
 *
 * Run through perf/bench_scaleout.sh store (a throw-away PostgreSQL), or against your own:
 *   bin/bench_galpg --url CONNINFO [--n N] [--parts load,enroll,lag]
 * (--parts fill only fills --url's database with --n faces, for perf/bench_scaleout.sh haproxy.)
 * All parts use --url's database: load empties and refills it, enroll and lag then write to
 * the gallery it left (N faces, analysed) — on freshly emptied tables PostgreSQL plans the
 * follower's query without statistics, which costs more than the write being measured
 * (docs/performance.md). Never point it at a database you want to keep.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "fw_proto.h"
#include "server/gallery.h"
#include "server/galog.h"
#include "server/galpg.h"

void openblas_set_num_threads(int);

#define DIM FW_GALLERY_DIM
#define K 10
#define SEED 42
#define LOAD_TIMEOUT_MS (600 * 1000)

/* ---- data: row i of the stream bench_gallery.c fills its matrix with ---------------------- */

#define GAMMA 0x9e3779b97f4a7c15ULL

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += GAMMA);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* splitmix's state after k draws is seed + k * GAMMA, so row i of one long stream can be made
 * on its own: no N x 512-byte matrix is ever held. */
static void row(uint64_t seed, uint64_t i, float *d)
{
    uint64_t s = seed + i * DIM * GAMMA;
    for (int j = 0; j < DIM; j++)
        d[j] = (float)((double)(splitmix(&s) >> 40) / (double)(1 << 24) * 2.0 - 1.0);
}

/* Face i (0-based) has id i + 1 and subject person-(i / 4), as in bench_gallery. */
static int subject_of(uint64_t i, char *buf, size_t cap)
{
    return snprintf(buf, cap, "person-%" PRIu64, i / 4);
}

static double now_ms(void) { return (double)uv_hrtime() / 1e6; }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p in [0, 1] of a sorted array. */
static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return NAN;
    size_t i = (size_t)(p * (double)n);
    return v[i < n ? i : n - 1];
}

static double rss_mib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return NAN;
    int ok = fscanf(f, "%ld %ld", &pages, &resident) == 2;
    fclose(f);
    return ok ? (double)resident * (double)sysconf(_SC_PAGESIZE) / 1048576.0 : NAN;
}

/* utime + stime of a process from /proc/PID/stat (fields 14 and 15, counted after the ')' that
 * ends the command name, which may itself hold blanks), ms; *ppid gets field 4. -1 if gone. */
static double proc_cpu_ms(pid_t pid, pid_t *ppid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    int pp;
    unsigned long ut, st;
    if (!p || sscanf(p + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &pp, &ut,
                     &st) != 3)
        return -1;
    if (ppid)
        *ppid = pp;
    return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* CPU of every child of the postmaster: the PostgreSQL backends and background processes.
 * 0 when the server is not on this machine (postmaster 0). */
static double pg_cpu_ms(pid_t postmaster)
{
    double sum = 0;
    char *end;
    if (postmaster <= 0)
        return 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid = strtol(e->d_name, &end, 10);
        pid_t pp = 0;
        double ms;
        if (*end || pid <= 0 || (ms = proc_cpu_ms((pid_t)pid, &pp)) < 0)
            continue;
        if (pp == postmaster || pid == postmaster)
            sum += ms;
    }
    closedir(d);
    return sum;
}

/* The postmaster of the server c is connected to: our backend's parent, when the server runs
 * on this machine; 0 otherwise. */
static pid_t postmaster_of(PGconn *c)
{
    pid_t pm = 0;
    PGresult *r = PQexec(c, "SELECT pg_backend_pid()");
    if (PQresultStatus(r) != PGRES_TUPLES_OK ||
        proc_cpu_ms((pid_t)atoi(PQgetvalue(r, 0, 0)), &pm) < 0)
        pm = 0;
    PQclear(r);
    return pm;
}

/* The server's CPU by role: the backends of fw_galpg's writer and follower connections (by
 * their application_name) and everything else of the server (walwriter, checkpointer,
 * autovacuum, this benchmark's own connection), ms. */
typedef struct pg_split {
    double writer, follower, other;
} pg_split;

static void pg_cpu_split(PGconn *c, pid_t postmaster, pg_split *s)
{
    memset(s, 0, sizeof *s);
    if (postmaster <= 0)
        return;
    PGresult *r = PQexec(c, "SELECT pid, application_name FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend'");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    double all = pg_cpu_ms(postmaster);
    for (int i = 0; ok && i < PQntuples(r); i++) {
        pid_t pp = 0;
        double ms = proc_cpu_ms((pid_t)atoi(PQgetvalue(r, i, 0)), &pp);
        if (ms < 0 || pp != postmaster)
            continue;
        if (strcmp(PQgetvalue(r, i, 1), "facewired-writer") == 0)
            s->writer += ms;
        else if (strcmp(PQgetvalue(r, i, 1), "facewired-follower") == 0)
            s->follower += ms;
    }
    PQclear(r);
    s->other = all - s->writer - s->follower;
}

static double self_cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
}

static void galpg_log(void *arg, int level, const char *line)
{
    (void)arg;
    if (level >= 2) /* warnings and errors: connection trouble would explain odd figures */
        fprintf(stderr, "galpg: %s\n", line);
}

/* ---- libpq helpers ------------------------------------------------------------------------- */

static int pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "postgresql: %.120s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    return ok ? 0 : -1;
}

static PGconn *pg_connect(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "postgresql: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    /* Quiet the NOTICEs of TRUNCATE ... CASCADE and the like. */
    pg_exec(c, "SET client_min_messages = warning");
    return c;
}

/* ---- waiting for a fw_galpg on a loop ------------------------------------------------------ */

typedef struct waiter {
    fw_galpg *p[2];
    int n;
    uint64_t want_seq;   /* 0: wait for loaded; else: for applied_seq >= want_seq on all */
    double deadline;
    int done, timed_out;
} waiter;

static void on_wait_tick(uv_timer_t *t)
{
    waiter *w = t->data;
    int all = 1;
    for (int i = 0; i < w->n; i++) {
        fw_galpg_info in;
        fw_galpg_info_get(w->p[i], &in);
        all &= in.loaded && in.applied_seq >= w->want_seq;
    }
    if (all || now_ms() > w->deadline) {
        w->done = 1;
        w->timed_out = !all;
        uv_timer_stop(t);
        /* Else this uv_run(ONCE), having run its timers, would go on to poll without a
         * timeout for as long as the galpg asyncs keep the loop alive. */
        uv_stop(t->loop);
    }
}

/* Runs the loop (1 ms polls of the atomics) until every p is loaded and has applied want_seq.
 * 0, or -1 after timeout_ms. */
static int wait_galpg(uv_loop_t *loop, fw_galpg **p, int n, uint64_t want_seq, double timeout_ms)
{
    waiter w = { { p[0], n > 1 ? p[1] : NULL }, n, want_seq, now_ms() + timeout_ms, 0, 0 };
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &w;
    uv_timer_start(&t, on_wait_tick, 0, 1);
    while (!w.done)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return w.timed_out ? -1 : 0;
}

/* A node: a memory-only gallery followed by a fw_galpg. */
typedef struct node {
    fw_gallery *g;
    fw_galpg *p;
} node;

static int node_open(uv_loop_t *loop, const char *url, node *nd)
{
    char err[256];
    fw_gallery_options go;
    fw_gallery_options_default(&go);
    nd->g = NULL;
    nd->p = NULL;
    if (fw_gallery_open(&go, &nd->g, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "gallery: %s\n", err);
        return -1;
    }
    fw_galpg_options po = { .url = url, .gallery = nd->g, .log = galpg_log };
    if (fw_galpg_open(loop, &po, &nd->p, err, sizeof err) != 0) {
        fprintf(stderr, "fw_galpg_open: %s\n", err);
        fw_gallery_close(nd->g);
        nd->g = NULL;
        return -1;
    }
    return 0;
}

/* Close n nodes on one loop: every fw_galpg first, then the loop runs until their uv_asyncs
 * have closed (one node's open async would keep the loop alive while another's closes), and
 * only then the galleries, which each fw_galpg used until its end. */
static void nodes_close(uv_loop_t *loop, node *nd, int n)
{
    for (int i = 0; i < n; i++)
        if (nd[i].p)
            fw_galpg_close(nd[i].p);
    uv_run(loop, UV_RUN_DEFAULT);
    for (int i = 0; i < n; i++) {
        if (nd[i].g)
            fw_gallery_close(nd[i].g);
        nd[i].p = NULL;
        nd[i].g = NULL;
    }
}

static void node_close(uv_loop_t *loop, node *nd) { nodes_close(loop, nd, 1); }

/* fw_galpg makes and migrates its own schema: when the tables are missing, open it once on
 * the database and wait for its (empty) initial load, so fw_face and friends exist. When they
 * are there already, nothing is done: opening would load the whole gallery for nothing. */
static int ensure_schema(const char *url)
{
    uv_loop_t loop;
    node nd;
    int rc = -1;
    PGconn *c = PQconnectdb(url);
    PGresult *r = PQstatus(c) == CONNECTION_OK
                      ? PQexec(c, "SELECT to_regclass('fw_face') IS NOT NULL AND "
                                  "to_regclass('fw_change') IS NOT NULL AND "
                                  "to_regclass('fw_counter') IS NOT NULL")
                      : NULL;
    int present = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                  strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    PQfinish(c);
    if (present)
        return 0;
    uv_loop_init(&loop);
    if (node_open(&loop, url, &nd) == 0) {
        fw_galpg *p = nd.p;
        rc = wait_galpg(&loop, &p, 1, 0, LOAD_TIMEOUT_MS);
        if (rc != 0)
            fprintf(stderr, "fw_galpg did not load %s within %d s\n", url, LOAD_TIMEOUT_MS / 1000);
        node_close(&loop, &nd);
    }
    uv_loop_close(&loop);
    return rc;
}

/* Empty the gallery tables (the sequence starts again at 0) so a part starts alike each run. */
static int pg_empty(PGconn *c)
{
    return pg_exec(c, "BEGIN") || pg_exec(c, "TRUNCATE fw_face, fw_change RESTART IDENTITY") ||
           pg_exec(c, "UPDATE fw_counter SET seq = 0 WHERE id = 1") || pg_exec(c, "COMMIT");
}

/* ---- filling PostgreSQL with binary COPY ---------------------------------------------------- */

static void be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void be32(uint8_t *p, uint32_t v) { fw_be32(p, v); }
static void be64(uint8_t *p, uint64_t v) { be32(p, (uint32_t)(v >> 32)); be32(p + 4, (uint32_t)v); }

static int pg_fill(PGconn *c, uint64_t n, double *ms)
{
    enum { BUF = 1 << 20, ROW_MAX = 2 + 4 + 8 + 4 + FW_GALLERY_SUBJECT_MAX + 4 + 4 + DIM * 4 };
    uint8_t *buf = malloc(BUF);
    size_t used = 0;
    float d[DIM];
    char subj[64];
    double t0 = now_ms();
    if (!buf)
        return -1;
    if (pg_empty(c) || pg_exec(c, "BEGIN"))
        goto err;
    PGresult *r = PQexec(c, "COPY fw_face (id, subject, meta, descriptor) FROM STDIN "
                            "(FORMAT binary)");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        fprintf(stderr, "postgresql: COPY: %s", PQerrorMessage(c));
        PQclear(r);
        goto err;
    }
    PQclear(r);
    /* Header: signature, flags, header-extension length. */
    memcpy(buf, "PGCOPY\n\377\r\n\0", 11);
    be32(buf + 11, 0);
    be32(buf + 15, 0);
    used = 19;
    for (uint64_t i = 0; i < n; i++) {
        if (used + ROW_MAX > BUF) {
            if (PQputCopyData(c, (const char *)buf, (int)used) != 1)
                goto copy_err;
            used = 0;
        }
        uint8_t *p = buf + used;
        int sl = subject_of(i, subj, sizeof subj);
        row(SEED, i, d);
        be16(p, 4);
        be32(p + 2, 8);
        be64(p + 6, i + 1);
        be32(p + 14, (uint32_t)sl);
        memcpy(p + 18, subj, (size_t)sl);
        p += 18 + sl;
        be32(p, 0);                  /* meta: empty, not NULL */
        be32(p + 4, DIM * 4);
        p += 8;
        for (int j = 0; j < DIM; j++) { /* descriptor: 128 little-endian float32 */
            uint32_t u;
            memcpy(&u, &d[j], 4);
            p[0] = (uint8_t)u, p[1] = (uint8_t)(u >> 8), p[2] = (uint8_t)(u >> 16),
            p[3] = (uint8_t)(u >> 24);
            p += 4;
        }
        used = (size_t)(p - buf);
    }
    be16(buf + used, 0xFFFF); /* trailer: field count -1 */
    used += 2;
    if (PQputCopyData(c, (const char *)buf, (int)used) != 1 || PQputCopyEnd(c, NULL) != 1)
        goto copy_err;
    r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "postgresql: COPY: %s", PQerrorMessage(c));
        PQclear(r);
        goto err;
    }
    PQclear(r);
    while ((r = PQgetResult(c)))
        PQclear(r);
    /* The faces stand for N committed enrolls: the counter says so (their change rows are long
     * gone, as if trimmed) and the id sequence continues after them. */
    char sql[256];
    snprintf(sql, sizeof sql, "UPDATE fw_counter SET seq = %" PRIu64 " WHERE id = 1", n);
    if (pg_exec(c, sql))
        goto err;
    snprintf(sql, sizeof sql, "SELECT setval(pg_get_serial_sequence('fw_face', 'id'), %" PRIu64
             ")", n);
    if (pg_exec(c, sql) || pg_exec(c, "COMMIT") || pg_exec(c, "VACUUM (FREEZE, ANALYZE) fw_face"))
        goto err;
    *ms = now_ms() - t0;
    free(buf);
    return 0;
copy_err:
    fprintf(stderr, "postgresql: COPY data: %s", PQerrorMessage(c));
err:
    pg_exec(c, "ROLLBACK");
    free(buf);
    return -1;
}

/* ---- the same faces as a snapshot ----------------------------------------------------------- */

static int snap_fill(const char *dir, uint64_t n, double *ms, uint64_t *bytes)
{
    char err[256];
    float d[DIM];
    char subj[64];
    double t0 = now_ms();
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    galog_snap_writer w;
    if (dirfd < 0) {
        fprintf(stderr, "%s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (galog_snap_begin(&w, dirfd, NULL, NULL, n, n + 1, err, sizeof err) != 0)
        goto err;
    for (uint64_t i = 0; i < n; i++) {
        int sl = subject_of(i, subj, sizeof subj);
        row(SEED, i, d);
        if (galog_snap_add(&w, i + 1, subj, (size_t)sl, NULL, 0, d, err, sizeof err) != 0)
            goto err_abort;
    }
    if (galog_snap_commit(&w, bytes, err, sizeof err) != 0)
        goto err_abort;
    close(dirfd);
    *ms = now_ms() - t0;
    return 0;
err_abort:
    galog_snap_abort(&w);
err:
    fprintf(stderr, "snapshot: %s\n", err);
    close(dirfd);
    return -1;
}

static void rm_gallery_dir(const char *dir)
{
    static const char *const names[] = { GALOG_LOG_NAME, GALOG_LOG_TMP, GALOG_LOG_OLD,
                                         GALOG_SNAP_NAME, GALOG_SNAP_TMP, GALOG_LOCK_NAME };
    char p[600];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* ---- part 1: load, each side in a child ----------------------------------------------------- */

typedef struct load_res {
    int ok;
    double ms, rss_mib;
    uint64_t faces;
    uint64_t own_load_ms;   /* galpg's own load_ms (PG side) */
    double cpu_self_ms;     /* this process (all its threads) during the load */
    double cpu_pg_ms;       /* the PostgreSQL server's processes during the load */
    uint64_t top[K];        /* the query's top-10 ids: both sides must agree */
} load_res;

static void top10(fw_gallery *g, load_res *r)
{
    float q[DIM];
    fw_gallery_match m[K];
    int cnt = 0;
    char err[128];
    row(SEED + 1, 0, q);
    if (fw_gallery_search(g, q, 1, K, INFINITY, m, &cnt, NULL, err, sizeof err) == FW_STATUS_OK)
        for (int j = 0; j < cnt && j < K; j++)
            r->top[j] = m[j].face_id;
}

static void load_pg_child(const char *url, pid_t postmaster, load_res *r)
{
    uv_loop_t loop;
    node nd;
    uv_loop_init(&loop);
    double rss0 = rss_mib(), cpu0 = self_cpu_ms(), pg0 = pg_cpu_ms(postmaster), t0 = now_ms();
    if (node_open(&loop, url, &nd) != 0)
        return;
    fw_galpg *p = nd.p;
    if (wait_galpg(&loop, &p, 1, 0, LOAD_TIMEOUT_MS) == 0) {
        r->ms = now_ms() - t0;
        r->cpu_self_ms = self_cpu_ms() - cpu0;
        r->cpu_pg_ms = pg_cpu_ms(postmaster) - pg0;
        r->rss_mib = rss_mib() - rss0;
        fw_galpg_info pi;
        fw_gallery_info gi;
        fw_galpg_info_get(nd.p, &pi);
        fw_gallery_info_get(nd.g, &gi);
        r->faces = gi.faces;
        r->own_load_ms = pi.load_ms;
        top10(nd.g, r);
        r->ok = 1;
    } else {
        fprintf(stderr, "load from postgresql: not loaded within %d s\n", LOAD_TIMEOUT_MS / 1000);
    }
    node_close(&loop, &nd);
    uv_loop_close(&loop);
}

static void load_snap_child(const char *dir, load_res *r)
{
    fw_gallery *g;
    fw_gallery_options o;
    char err[256];
    fw_gallery_options_default(&o);
    o.data_dir = dir;
    double rss0 = rss_mib(), cpu0 = self_cpu_ms(), t0 = now_ms();
    if (fw_gallery_open(&o, &g, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "fw_gallery_open %s: %s\n", dir, err);
        return;
    }
    r->ms = now_ms() - t0;
    r->cpu_self_ms = self_cpu_ms() - cpu0;
    r->rss_mib = rss_mib() - rss0;
    fw_gallery_info gi;
    fw_gallery_info_get(g, &gi);
    r->faces = gi.faces;
    top10(g, r);
    r->ok = 1;
    fw_gallery_close(g);
}

/* Runs one side in a fresh process; its figures come back through a pipe. */
static int in_child(int pg_side, const char *arg, pid_t postmaster, load_res *r)
{
    int fd[2];
    memset(r, 0, sizeof *r);
    if (pipe(fd) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return -1;
    }
    if (pid == 0) {
        load_res cr;
        memset(&cr, 0, sizeof cr);
        close(fd[0]);
        if (pg_side)
            load_pg_child(arg, postmaster, &cr);
        else
            load_snap_child(arg, &cr);
        _exit(write(fd[1], &cr, sizeof cr) == (ssize_t)sizeof cr ? 0 : 1);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], r, sizeof *r);
    close(fd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return got == (ssize_t)sizeof *r && r->ok ? 0 : -1;
}

static int part_load(const char *url, uint64_t n, const char *dir_base)
{
    char dir[512];
    double pg_fill_ms = 0, snap_fill_ms = 0;
    load_res pg, sn;
    printf("== load at start: %" PRIu64 " faces ==\n", n);
    if (ensure_schema(url) != 0)
        return -1;
    PGconn *c = pg_connect(url);
    if (!c)
        return -1;
    /* The postmaster's children's CPU says how much of the load's time the server spent. */
    pid_t postmaster = postmaster_of(c);
    int rc = pg_fill(c, n, &pg_fill_ms);
    PGresult *r = rc ? NULL : PQexec(c, "SELECT pg_total_relation_size('fw_face')");
    double table_mib = r && PQresultStatus(r) == PGRES_TUPLES_OK
                           ? strtod(PQgetvalue(r, 0, 0), NULL) / 1048576.0 : NAN;
    PQclear(r);
    PQfinish(c);
    if (rc)
        return -1;
    printf("  filled postgresql with binary COPY (+ VACUUM FREEZE ANALYZE) in %.0f ms = %.0f "
           "rows/s; fw_face with its indexes: %.0f MiB\n", pg_fill_ms, n / (pg_fill_ms / 1000),
           table_mib);

    snprintf(dir, sizeof dir, "%s/fwbench-galpg.XXXXXX", dir_base);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", dir, strerror(errno));
        return -1;
    }
    uint64_t snap_bytes = 0;
    rc = snap_fill(dir, n, &snap_fill_ms, &snap_bytes);
    if (rc == 0)
        printf("  wrote the same faces as one snapshot (%.0f MiB) in %s in %.0f ms\n",
               snap_bytes / 1048576.0, dir, snap_fill_ms);
    if (rc == 0 && (in_child(1, url, postmaster, &pg) != 0 || in_child(0, dir, 0, &sn) != 0))
        rc = -1;
    rm_gallery_dir(dir);
    if (rc)
        return -1;

    printf("\n  load at start                   faces      ms     faces/s   RSS growth MiB\n");
    printf("  postgresql (fw_galpg)      %9" PRIu64 " %7.0f %11.0f   %8.0f   (galpg's own "
           "load_ms %" PRIu64 ")\n", pg.faces, pg.ms, pg.faces / (pg.ms / 1000), pg.rss_mib,
           pg.own_load_ms);
    printf("  local snapshot (gallery)   %9" PRIu64 " %7.0f %11.0f   %8.0f\n", sn.faces, sn.ms,
           sn.faces / (sn.ms / 1000), sn.rss_mib);
    printf("  ratio postgresql / snapshot: time %.2f, RSS growth %.2f\n", pg.ms / sn.ms,
           pg.rss_mib / sn.rss_mib);
    printf("  CPU during the load: postgresql side %.0f ms in this process + %.0f ms in the "
           "PostgreSQL server%s; snapshot side %.0f ms\n", pg.cpu_self_ms, pg.cpu_pg_ms,
           postmaster ? "" : " (not on this machine: not measured)", sn.cpu_self_ms);
    int same = pg.faces == n && sn.faces == n && memcmp(pg.top, sn.top, sizeof pg.top) == 0;
    printf("  both hold %" PRIu64 " faces and give the same top-10: %s\n\n", n,
           same ? "yes" : "NO");
    return same ? 0 : -1;
}

/* --parts fill: only fill --url's database with N faces (perf/bench_scaleout.sh haproxy). */
static int part_fill(const char *url, uint64_t n)
{
    double ms = 0;
    PGconn *c = NULL;
    int rc = ensure_schema(url) != 0 || !(c = pg_connect(url)) || pg_fill(c, n, &ms) != 0;
    PQfinish(c);
    if (rc == 0)
        printf("filled postgresql with %" PRIu64 " faces (binary COPY) in %.0f ms\n", n, ms);
    return rc ? -1 : 0;
}

/* ---- feeding enrolls through either API ----------------------------------------------------- */

typedef struct feeder feeder;
typedef int (*enroll_fn)(feeder *f, const char *subj, size_t sl, const float *d, void *arg,
                         char *err, size_t errlen);

struct feeder {
    enroll_fn enroll;
    fw_gallery *g;       /* embedded side */
    fw_galpg *p;         /* postgresql side */
    uint64_t n, next, done;
    int inflight, window;
    int failed;
    double *lat, *start; /* per request: ack latency and submit time, ms */
    double *ok_at;       /* per request: when the OK arrived (may be NULL) */
    uint64_t *face_id;   /* per request: the id it got (may be NULL) */
    uint64_t base;       /* row offset, so parts enroll different rows */
    /* lag part: open loop at rate per second instead of a window */
    double rate, t0;
    uv_timer_t pacer;
};

typedef struct slot {
    feeder *f;
    uint64_t i;
} slot;

static void feed_window(feeder *f);

static void on_enrolled(void *arg, int status, uint64_t value, const char *msg)
{
    slot *s = arg;
    feeder *f = s->f;
    double t = now_ms();
    if (status != FW_STATUS_OK && !f->failed) {
        fprintf(stderr, "enroll %" PRIu64 ": %s: %s\n", s->i, fw_status_name((uint16_t)status),
                msg ? msg : "");
        f->failed = 1;
    }
    f->lat[s->i] = t - f->start[s->i];
    if (f->ok_at)
        f->ok_at[s->i] = t;
    if (f->face_id)
        f->face_id[s->i] = status == FW_STATUS_OK ? value : 0;
    free(s);
    f->inflight--;
    f->done++;
    if (f->rate == 0)
        feed_window(f);
}

static int enroll_embedded(feeder *f, const char *subj, size_t sl, const float *d, void *arg,
                           char *err, size_t errlen)
{
    return fw_gallery_enroll(f->g, subj, sl, NULL, 0, d, on_enrolled, arg, err, errlen);
}

static int enroll_pg(feeder *f, const char *subj, size_t sl, const float *d, void *arg,
                     char *err, size_t errlen)
{
    uint32_t retry = 0;
    return fw_galpg_enroll(f->p, subj, sl, NULL, 0, d, on_enrolled, arg, &retry, err, errlen);
}

static void submit_one(feeder *f)
{
    char subj[64], err[160];
    float d[DIM];
    uint64_t i = f->next;
    slot *s = malloc(sizeof *s);
    if (!s) {
        f->failed = 1;
        return;
    }
    s->f = f;
    s->i = i;
    int sl = subject_of(f->base + i, subj, sizeof subj);
    row(SEED + 2, f->base + i, d);
    f->start[i] = now_ms();
    int st = f->enroll(f, subj, (size_t)sl, d, s, err, sizeof err);
    if (st != FW_STATUS_OK) {
        fprintf(stderr, "enroll %" PRIu64 " refused: %s: %s\n", i, fw_status_name((uint16_t)st),
                err);
        free(s);
        f->failed = 1;
        return;
    }
    f->next++;
    f->inflight++;
}

static void feed_window(feeder *f)
{
    while (f->inflight < f->window && f->next < f->n && !f->failed)
        submit_one(f);
}

static void on_pace(uv_timer_t *t)
{
    feeder *f = t->data;
    double due = (now_ms() - f->t0) / 1000.0 * f->rate;
    while ((double)f->next < due && f->next < f->n && !f->failed)
        submit_one(f);
    if (f->next >= f->n || f->failed)
        uv_timer_stop(t);
}

/* Closed loop with `window` in flight, or open loop at f->rate; returns when every request
 * sent has been answered. */
static int feed(uv_loop_t *loop, feeder *f)
{
    f->t0 = now_ms();
    if (f->rate > 0) {
        uv_timer_init(loop, &f->pacer);
        f->pacer.data = f;
        uv_timer_start(&f->pacer, on_pace, 0, 1);
    } else {
        feed_window(f);
    }
    while (f->done < f->next || (f->next < f->n && !f->failed))
        uv_run(loop, UV_RUN_ONCE);
    if (f->rate > 0) {
        uv_close((uv_handle_t *)&f->pacer, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
    }
    return f->failed ? -1 : 0;
}

typedef struct run_res {
    double ms, rps, p50, p99, max;
    double cpu_self_us, cpu_pg_us; /* per record: this process (all threads), the server */
} run_res;

static int run_enrolls(uv_loop_t *loop, fw_gallery *g, fw_galpg *p, uint64_t n, int window,
                       uint64_t base, pid_t postmaster, run_res *out)
{
    feeder f;
    memset(&f, 0, sizeof f);
    f.enroll = p ? enroll_pg : enroll_embedded;
    f.g = g;
    f.p = p;
    f.n = n;
    f.window = window;
    f.base = base;
    f.lat = calloc(n, sizeof *f.lat);
    f.start = calloc(n, sizeof *f.start);
    int rc = -1;
    if (f.lat && f.start) {
        double t0 = now_ms(), c0 = self_cpu_ms(), pg0 = pg_cpu_ms(postmaster);
        rc = feed(loop, &f);
        out->ms = now_ms() - t0;
        out->cpu_self_us = (self_cpu_ms() - c0) * 1000.0 / (double)n;
        out->cpu_pg_us = (pg_cpu_ms(postmaster) - pg0) * 1000.0 / (double)n;
        qsort(f.lat, n, sizeof *f.lat, cmp_double);
        out->rps = n / (out->ms / 1000);
        out->p50 = pct(f.lat, n, 0.5);
        out->p99 = pct(f.lat, n, 0.99);
        out->max = f.lat[n - 1];
    }
    free(f.lat);
    free(f.start);
    return rc;
}

/* ---- part 2: durable enroll ------------------------------------------------------------------ */

static int part_enroll(const char *url, uint64_t n, int window, const char *dir_base)
{
    uv_loop_t loop;
    node nd = { 0 };
    run_res pg_w, pg_1, em_w, em_1;
    uint64_t n1 = n < 500 ? n : 500;
    char dir[512];
    int rc = -1;
    PGconn *c = NULL;
    printf("== durable enroll: %" PRIu64 " with %d in flight, %" PRIu64 " with 1 ==\n", n, window,
           n1);
    if (ensure_schema(url) != 0 || !(c = pg_connect(url)))
        goto out_pg;
    uv_loop_init(&loop);
    if (node_open(&loop, url, &nd) != 0 || wait_galpg(&loop, &nd.p, 1, 0, LOAD_TIMEOUT_MS))
        goto out;
    fw_galpg_info i0, i1;
    fw_galpg_info_get(nd.p, &i0);
    pid_t pm = postmaster_of(c);
    if (run_enrolls(&loop, NULL, nd.p, n, window, 0, pm, &pg_w))
        goto out;
    fw_galpg_info_get(nd.p, &i1);
    if (run_enrolls(&loop, NULL, nd.p, n1, 1, n, pm, &pg_1))
        goto out;
    double t_apply = now_ms();
    if (wait_galpg(&loop, &nd.p, 1, i0.applied_seq + n + n1, 60000) != 0) {
        fprintf(stderr, "the node did not apply its own %" PRIu64 " enrolls within 60 s\n",
                n + n1);
        goto out;
    }
    t_apply = now_ms() - t_apply;
    fw_galpg_info pi;
    fw_gallery_info gi;
    fw_galpg_info_get(nd.p, &pi);
    fw_gallery_info_get(nd.g, &gi);
    node_close(&loop, &nd);

    snprintf(dir, sizeof dir, "%s/fwbench-galpg.XXXXXX", dir_base);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", dir, strerror(errno));
        goto out;
    }
    fw_gallery *g;
    fw_gallery_options o;
    char err[256];
    fw_gallery_options_default(&o);
    o.data_dir = dir;
    if (fw_gallery_open(&o, &g, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "fw_gallery_open %s: %s\n", dir, err);
        rm_gallery_dir(dir);
        goto out;
    }
    fw_gallery_attach_loop(g, &loop);
    int erc = run_enrolls(&loop, g, NULL, n, window, 0, 0, &em_w) ||
              run_enrolls(&loop, g, NULL, n1, 1, n, 0, &em_1);
    fw_gallery_close(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    rm_gallery_dir(dir);
    if (erc)
        goto out;

    printf("  %-34s %8s %10s %8s %8s %8s %18s\n", "", "records", "records/s", "p50 ms",
           "p99 ms", "max ms", "CPU us/record");
    const run_res *rows[4] = { &pg_w, &em_w, &pg_1, &em_1 };
    const char *names[4] = { "postgresql, window", "embedded (fdatasync), window",
                             "postgresql, 1 in flight", "embedded (fdatasync), 1 in flight" };
    for (int i = 0; i < 4; i++) {
        char cpu[48];
        if (i % 2 == 0)
            snprintf(cpu, sizeof cpu, "%.1f + %.1f server", rows[i]->cpu_self_us,
                     rows[i]->cpu_pg_us);
        else
            snprintf(cpu, sizeof cpu, "%.1f", rows[i]->cpu_self_us);
        printf("  %-34s %8" PRIu64 " %10.0f %8.2f %8.2f %8.2f %18s\n", names[i],
               i < 2 ? n : n1, rows[i]->rps, rows[i]->p50, rows[i]->p99, rows[i]->max, cpu);
    }
    printf("  ratio postgresql / embedded: throughput with %d in flight %.2f, with 1 %.2f; "
           "p50 latency with 1 in flight %.2f\n", window, pg_w.rps / em_w.rps,
           pg_1.rps / em_1.rps, pg_1.p50 / em_1.p50);
    uint64_t commits_w = i1.commits - i0.commits;
    printf("  postgresql: %" PRIu64 " transactions for the %" PRIu64 " with %d in flight (%.1f "
           "enrolls each), %" PRIu64 " in all; %" PRIu64 " write errors; the node's own follower "
           "had applied everything %.0f ms after the last ack; faces in memory %" PRIu64 "\n\n",
           commits_w, n, window, (double)n / (double)(commits_w ? commits_w : 1), pi.commits,
           pi.write_errors, t_apply, gi.faces);
    rc = 0;
out:
    node_close(&loop, &nd);
    uv_loop_close(&loop);
out_pg:
    PQfinish(c);
    return rc;
}

/* ---- part 3: replication lag ------------------------------------------------------------------ */

typedef struct watcher {
    fw_galpg *p;
    uint64_t base, n;         /* seqs base+1 .. base+n are watched */
    double *seen;             /* [n]: when applied_seq first covered base+1+i, ms */
    atomic_int stop;
} watcher;

static void *watch_main(void *arg)
{
    watcher *w = arg;
    uint64_t covered = 0; /* seqs base+1 .. base+covered seen */
    struct timespec ts = { 0, 200 * 1000 };
    while (!atomic_load(&w->stop) && covered < w->n) {
        fw_galpg_info in;
        fw_galpg_info_get(w->p, &in);
        double t = now_ms();
        while (covered < w->n && in.applied_seq >= w->base + covered + 1)
            w->seen[covered++] = t;
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static int part_lag(const char *url, double rate, double seconds)
{
    uv_loop_t loop;
    node nodes[2] = { { 0 }, { 0 } };
    node *a = &nodes[0], *b = &nodes[1];
    uint64_t n = (uint64_t)(rate * seconds);
    int rc = -1, watching = 0;
    pthread_t th;
    PGconn *c = NULL;
    feeder f;
    watcher w;
    memset(&f, 0, sizeof f);
    memset(&w, 0, sizeof w);
    printf("== replication lag: node A enrolls %.0f/s for %.0f s (%" PRIu64 " faces), node B "
           "follows ==\n", rate, seconds, n);
    if (n < 1 || ensure_schema(url) != 0 || !(c = pg_connect(url)))
        goto out_pg;
    uv_loop_init(&loop);
    fw_galpg *both[2];
    if (node_open(&loop, url, a) != 0 || node_open(&loop, url, b) != 0)
        goto out;
    both[0] = a->p;
    both[1] = b->p;
    if (wait_galpg(&loop, both, 2, 0, LOAD_TIMEOUT_MS) != 0)
        goto out;
    fw_galpg_info ia, ib0;
    fw_galpg_info_get(a->p, &ia);
    fw_galpg_info_get(b->p, &ib0);
    w.p = b->p;
    w.base = ia.applied_seq > ib0.applied_seq ? ia.applied_seq : ib0.applied_seq;
    w.n = n;
    f.enroll = enroll_pg;
    f.p = a->p;
    f.n = n;
    f.rate = rate;
    f.lat = calloc(n, sizeof *f.lat);
    f.start = calloc(n, sizeof *f.start);
    f.ok_at = calloc(n, sizeof *f.ok_at);
    f.face_id = calloc(n, sizeof *f.face_id);
    w.seen = calloc(n, sizeof *w.seen);
    double *lag = calloc(n, sizeof *lag), *e2e = calloc(n, sizeof *e2e);
    if (!f.lat || !f.start || !f.ok_at || !f.face_id || !w.seen || !lag || !e2e)
        goto out_free;
    atomic_init(&w.stop, 0);
    if (pthread_create(&th, NULL, watch_main, &w) != 0)
        goto out_free;
    watching = 1;
    pid_t pm = postmaster_of(c);
    pg_split pg0, pg1;
    pg_cpu_split(c, pm, &pg0);
    double cpu0 = self_cpu_ms();
    if (feed(&loop, &f) != 0)
        goto out_free;
    double cpu_self = self_cpu_ms() - cpu0;
    pg_cpu_split(c, pm, &pg1);
    /* B must catch up with every change before the watcher can stop on its own. */
    if (wait_galpg(&loop, &b->p, 1, w.base + n, 30000) != 0) {
        fprintf(stderr, "node B did not apply all %" PRIu64 " changes within 30 s\n", n);
        goto out_free;
    }
    atomic_store(&w.stop, 1);
    pthread_join(th, NULL);
    watching = 0;

    /* Which seq did each face get? fw_change says; then face -> request -> A's OK time. */
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT seq, face_id FROM fw_change WHERE seq > %" PRIu64
             " AND kind = 1 ORDER BY seq", w.base);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || (uint64_t)PQntuples(r) != n) {
        fprintf(stderr, "fw_change: want %" PRIu64 " rows after seq %" PRIu64 ", got %d: %s", n,
                w.base, PQntuples(r), PQerrorMessage(c));
        PQclear(r);
        goto out_free;
    }
    /* Face ids are handed out in submit order by one writer, but map them exactly anyway. */
    uint64_t id_lo = UINT64_MAX;
    for (uint64_t i = 0; i < n; i++)
        if (f.face_id[i] && f.face_id[i] < id_lo)
            id_lo = f.face_id[i];
    uint64_t *req_of = calloc(n, sizeof *req_of);
    if (!req_of) {
        PQclear(r);
        goto out_free;
    }
    for (uint64_t i = 0; i < n; i++)
        if (f.face_id[i] >= id_lo && f.face_id[i] - id_lo < n)
            req_of[f.face_id[i] - id_lo] = i + 1;
    size_t m = 0, early = 0;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t seq = strtoull(PQgetvalue(r, (int)k, 0), NULL, 10);
        uint64_t fid = strtoull(PQgetvalue(r, (int)k, 1), NULL, 10);
        if (seq <= w.base || seq - w.base > n || fid < id_lo || fid - id_lo >= n ||
            !req_of[fid - id_lo])
            continue;
        uint64_t i = req_of[fid - id_lo] - 1;
        double seen = w.seen[seq - w.base - 1];
        lag[m] = seen - f.ok_at[i];
        e2e[m] = seen - f.start[i];
        early += lag[m] < 0;
        m++;
    }
    PQclear(r);
    free(req_of);
    fw_galpg_info ib;
    fw_galpg_info_get(b->p, &ib);
    qsort(lag, m, sizeof *lag, cmp_double);
    qsort(e2e, m, sizeof *e2e, cmp_double);
    qsort(f.lat, n, sizeof *f.lat, cmp_double);
    double commit50 = pct(f.lat, n, 0.5);
    printf("  faces matched to their change: %zu of %" PRIu64 "\n", m, n);
    printf("  %-46s %9s %9s %9s\n", "", "p50 ms", "p99 ms", "max ms");
    printf("  %-46s %9.2f %9.2f %9.2f\n", "enroll on A: submit -> OK (the anchor)", commit50,
           pct(f.lat, n, 0.99), f.lat[n - 1]);
    printf("  %-46s %9.2f %9.2f %9.2f\n", "A's OK -> visible on B (watcher, 0.2 ms polls)",
           pct(lag, m, 0.5), pct(lag, m, 0.99), m ? lag[m - 1] : NAN);
    printf("  %-46s %9.2f %9.2f %9.2f\n", "submit on A -> visible on B", pct(e2e, m, 0.5),
           pct(e2e, m, 0.99), m ? e2e[m - 1] : NAN);
    printf("  %-46s %9.2f %9.2f\n", "B's own lag (galpg: commit -> memory, db clock)",
           ib.lag_p50_us / 1000.0, ib.lag_p99_us / 1000.0);
    printf("  ratio (A's OK -> visible on B) / commit latency, at p50: %.2f; visible on B "
           "before A's OK arrived: %.1f%%\n", pct(lag, m, 0.5) / commit50,
           m ? 100.0 * (double)early / (double)m : 0.0);
    fw_galpg_info ia1;
    fw_galpg_info_get(a->p, &ia1);
    uint64_t commits = ia1.commits - ia.commits;
    printf("  A: %" PRIu64 " transactions (%.2f enrolls each); B: lag now %" PRIu64 " ms, "
           "reconnects %" PRIu64 "\n", commits, (double)n / (double)(commits ? commits : 1),
           ib.lag_ms, ib.reconnects);
    double us = 1000.0 / (double)n;
    printf("  CPU per enroll while streaming: %.0f us in this process (both nodes and the "
           "watcher); in the PostgreSQL server %.0f us: writer backends %.0f, follower backends "
           "(both nodes) %.0f, the rest of the server %.0f\n\n", cpu_self * us,
           (pg1.writer + pg1.follower + pg1.other - pg0.writer - pg0.follower - pg0.other) * us,
           (pg1.writer - pg0.writer) * us, (pg1.follower - pg0.follower) * us,
           (pg1.other - pg0.other) * us);
    rc = m == n ? 0 : -1;
out_free:
    if (watching) {
        atomic_store(&w.stop, 1);
        pthread_join(th, NULL);
    }
    free(f.lat);
    free(f.start);
    free(f.ok_at);
    free(f.face_id);
    free(w.seen);
    free(lag);
    free(e2e);
out:
    nodes_close(&loop, nodes, 2);
    uv_loop_close(&loop);
out_pg:
    PQfinish(c);
    return rc;
}

/* ---- main ---------------------------------------------------------------------------------- */

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --url CONNINFO [--parts load,enroll,lag|fill]\n"
            "          [--n FACES] [--durable N] [--window W] [--rate R] [--seconds S] [--dir DIR]\n"
            "The databases are EMPTIED: use throw-away ones (perf/bench_scaleout.sh store).\n",
            argv0);
}

int main(int argc, char **argv)
{
    const char *url = NULL, *parts = "load,enroll,lag", *dir = "/var/tmp";
    uint64_t n = 1000000, n_durable = 20000;
    int window = 256;
    double rate = 500, seconds = 10;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage(argv[0]);
            return 2;
        }
        if (!strcmp(a, "--url")) url = v;
        else if (!strcmp(a, "--parts")) parts = v;
        else if (!strcmp(a, "--n")) n = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--durable")) n_durable = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--window")) window = atoi(v);
        else if (!strcmp(a, "--rate")) rate = strtod(v, NULL);
        else if (!strcmp(a, "--seconds")) seconds = strtod(v, NULL);
        else if (!strcmp(a, "--dir")) dir = v;
        else {
            usage(argv[0]);
            return 2;
        }
    }
    if (!url || n < K || n > 10000000 || n_durable < 1 || n_durable > 10000000 || window < 1 ||
        window > 4096 || !(rate > 0 && rate <= 100000) || !(seconds > 0 && seconds <= 3600)) {
        usage(argv[0]);
        return 2;
    }
    openblas_set_num_threads(1);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int rc = 0;
    if (strstr(parts, "fill"))
        rc |= part_fill(url, n);
    if (strstr(parts, "load"))
        rc |= part_load(url, n, dir);
    if (strstr(parts, "enroll"))
        rc |= part_enroll(url, n_durable, window, dir);
    if (strstr(parts, "lag"))
        rc |= part_lag(url, rate, seconds);
    return rc ? 1 : 0;
}
