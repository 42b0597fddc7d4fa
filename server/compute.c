/*
 * compute.c — the compute side of facewired (see compute.h): options, the op table, the
 * path of a request from the connection layer to the scheduler, the engines and their
 * per-worker workspaces, degraded mode (SIGUSR1), INFO lines and the /metrics exposition.
 *
 * A request goes through, in this order (each step answers at once when it refuses):
 *   unknown opcode (or a test op without --enable-test-ops)  -> UNKNOWN_OP
 *   shutting down                                            -> SHUTTING_DOWN
 *   queue full / shedding low / byte budget / degraded low /
 *   expected queue wait beyond the deadline                  -> BUSY + retry_after_ms
 *   breaker open                                             -> UNAVAILABLE + retry_after_ms
 *   body copied and parsed                                   -> BAD_REQUEST
 *   needs the models and they did not load                   -> UNAVAILABLE
 *   then the scheduler queues it (fw_sched_submit).
 * The cheap refusals come before the body is copied, so a BUSY answer costs the same for a
 * 16 MiB JPEG as for a PING-sized body.
 *
 * Adding an op is one row in `ops` below, a class name if it needs its own breaker, and
 * parse/work functions in their own file.
 *
 * The gallery ops (galleryops.c) add two paths. A request whose op says it is "direct"
 * (ENROLL from a descriptor, DELETE, GALLERY_INFO) never becomes a job: it is admitted
 * (shutting down, degraded low priority, breaker), parsed and handed to the gallery on the
 * loop thread, and answered from the gallery's completion. An ENROLL from a JPEG is a job
 * whose worker computes the descriptor; the scheduler then hands it over (fw_op.handover) and
 * the gallery write is queued from the loop. Breaker classes: "gallery_write" (ENROLL, DELETE:
 * a failing disk opens it and writes are refused fast) and "gallery_read" (IDENTIFY, LIST,
 * GALLERY_INFO), kept apart so that reads go on being served while the disk fails.
 *
 * /health (on the --metrics-listen port) is answered from fw_compute_health: what a load
 * balancer needs to know before it sends this node work — listening, not draining, models
 * loaded when --models asked for them, and the gallery in sync with PostgreSQL (the embedded
 * gallery always is).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cblas.h>
#include <libpq-fe.h>
#include <sodium.h>

#include "engine/engine.h"
#include "server/compute.h"
#include "server/faceops.h"
#include "server/galleryops.h"
#include "server/keys.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/sched.h"
#include "server/streams.h"

#define FW_MAX_WORKERS 256          /* libuv's pool holds at most 1024 threads */
#define FW_THREADPOOL_RESERVE 4     /* pool threads kept free for libuv's own fs/dns work */
#define FW_TEST_SLEEP_MAX_MS 60000
#define FW_MODELS_RETRY_MS 60000    /* retry_after_ms when the models are missing */
#define FW_TEST_HOLD_MAX_MS 60000   /* a TEST_HOLD nobody releases gives up after this */

/* TEST_HOLD / TEST_RELEASE: a worker held until the test says so, so that tests can fill
 * queues and stream rings while no worker is free, without guessing how long that takes.
 * Each TEST_RELEASE lets exactly one TEST_HOLD (waiting or future) return. */
typedef struct fw_test_gate {
    uv_mutex_t mu;
    uv_cond_t cv;
    uint64_t released, consumed;
    int open;          /* shutting down: every hold returns */
} fw_test_gate;

/* ---- test ops ------------------------------------------------------------------------------ */

static int parse_test_sleep(fw_job *j, char *err, size_t errlen)
{
    fw_reader r;
    fw_reader_init(&r, j->body, j->body_len);
    uint32_t ms = fw_get_u32(&r);
    if (r.err) {
        snprintf(err, errlen, "TEST_SLEEP: truncated body (u32 milliseconds expected)");
        return -1;
    }
    if (fw_reader_left(&r)) {
        snprintf(err, errlen, "TEST_SLEEP: %zu trailing bytes", fw_reader_left(&r));
        return -1;
    }
    if (ms > FW_TEST_SLEEP_MAX_MS) {
        snprintf(err, errlen, "TEST_SLEEP: %u ms is above the limit of %d", ms, FW_TEST_SLEEP_MAX_MS);
        return -1;
    }
    j->args.sleep_ms = ms;
    return 0;
}

static void test_sleep_work(fw_job *j)
{
    struct timespec ts = { (time_t)(j->args.sleep_ms / 1000), (long)(j->args.sleep_ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    j->out.status = FW_STATUS_OK;
}

static int parse_test_hold(fw_job *j, char *err, size_t errlen)
{
    if (j->body_len) {
        snprintf(err, errlen, "TEST_HOLD: body must be empty");
        return -1;
    }
    return 0;
}

static void test_hold_work(fw_job *j)
{
    fw_test_gate *g = (fw_test_gate *)j->env;
    uint64_t give_up = uv_hrtime() + (uint64_t)FW_TEST_HOLD_MAX_MS * 1000000u;
    uv_mutex_lock(&g->mu);
    while (g->released <= g->consumed && !g->open) {
        uint64_t now = uv_hrtime();
        if (now >= give_up || uv_cond_timedwait(&g->cv, &g->mu, give_up - now) != 0)
            break;
    }
    int ok = g->released > g->consumed || g->open;
    if (g->released > g->consumed)
        g->consumed++;
    uv_mutex_unlock(&g->mu);
    j->out.status = ok ? FW_STATUS_OK : FW_STATUS_DEADLINE_EXCEEDED;
    if (!ok)
        snprintf(j->out.msg, sizeof j->out.msg, "TEST_HOLD: not released within %d ms", FW_TEST_HOLD_MAX_MS);
}

static void test_gate_release(fw_test_gate *g, int all)
{
    uv_mutex_lock(&g->mu);
    if (all)
        g->open = 1;
    else
        g->released++;
    uv_cond_broadcast(&g->cv);
    uv_mutex_unlock(&g->mu);
}

static int parse_test_fail(fw_job *j, char *err, size_t errlen)
{
    (void)j; (void)err; (void)errlen;
    return 0; /* the body is ignored */
}

static void test_fail_work(fw_job *j)
{
    j->out.status = FW_STATUS_INTERNAL;
    snprintf(j->out.msg, sizeof j->out.msg, "test failure");
}

/* ---- the op table -------------------------------------------------------------------------- */

enum { CLS_FACE = 0, CLS_TEST, CLS_GALLERY_WRITE, CLS_GALLERY_READ, NCLASSES };
static const char *const class_names[NCLASSES] = { "face", "test", "gallery_write", "gallery_read" };

static const fw_op ops[] = {
    { FW_OP_DETECT, "DETECT", CLS_FACE, 1, 0, fw_faceops_parse_image, fw_faceops_detect_work, NULL, NULL },
    { FW_OP_EMBED, "EMBED", CLS_FACE, 1, 0, fw_faceops_parse_image, fw_faceops_embed_work, NULL, NULL },
    { FW_OP_VERIFY, "VERIFY", CLS_FACE, 1, 0, fw_faceops_parse_verify, fw_faceops_verify_work, NULL, NULL },
    { FW_OP_ENROLL, "ENROLL", CLS_GALLERY_WRITE, 1, 0, fw_galops_parse_enroll, fw_galops_enroll_work,
      fw_galops_enroll_handover, fw_galops_enroll_is_direct },
    { FW_OP_IDENTIFY, "IDENTIFY", CLS_GALLERY_READ, 1, 0, fw_galops_parse_identify, fw_galops_identify_work,
      NULL, NULL },
    { FW_OP_DELETE, "DELETE", CLS_GALLERY_WRITE, 0, 0, NULL, NULL, NULL, fw_galops_always_direct },
    { FW_OP_LIST, "LIST", CLS_GALLERY_READ, 0, 0, fw_galops_parse_list, fw_galops_list_work, NULL, NULL },
    { FW_OP_GALLERY_INFO, "GALLERY_INFO", CLS_GALLERY_READ, 0, 0, NULL, NULL, NULL, fw_galops_always_direct },
    { FW_OP_TEST_SLEEP, "TEST_SLEEP", CLS_TEST, 0, 1, parse_test_sleep, test_sleep_work, NULL, NULL },
    { FW_OP_TEST_FAIL, "TEST_FAIL", CLS_TEST, 0, 1, parse_test_fail, test_fail_work, NULL, NULL },
    { FW_OP_TEST_HOLD, "TEST_HOLD", CLS_TEST, 0, 1, parse_test_hold, test_hold_work, NULL, NULL },
    /* served on the loop by fw_compute_request itself (no parse/work) */
    { FW_OP_TEST_RELEASE, "TEST_RELEASE", CLS_TEST, 0, 1, NULL, NULL, NULL, NULL },
    /* camera streams (streams.c): OPEN and CLOSE are served on the loop, a FRAME is held in
     * its stream's ring; the row of STREAM_FRAME is also the op of every stream job */
    { FW_OP_STREAM_OPEN, "STREAM_OPEN", CLS_FACE, 0, 0, NULL, NULL, NULL, NULL },
    { FW_OP_STREAM_FRAME, "STREAM_FRAME", CLS_FACE, 0, 0, NULL, fw_streams_work, NULL, NULL },
    { FW_OP_STREAM_CLOSE, "STREAM_CLOSE", CLS_FACE, 0, 0, NULL, NULL, NULL, NULL },
};
#define NOPS ((int)(sizeof ops / sizeof ops[0]))

struct fw_compute {
    uv_loop_t *loop;
    fw_compute_options opt;
    const fw_log *log;
    fw_sched *sched;
    int16_t op_index[256];       /* opcode -> index in ops, -1: unknown (or test op disabled) */
    uint64_t unknown_ops;

    fw_engine *engine, *engine_small;  /* owned; NULL when not loaded */
    char engine_err[200];        /* why the models did not load */
    fw_face_env face_env;
    void **slot_ctx;             /* [workers] fw_face_slot *, owned */
    int workers;

    uv_signal_t sigusr1;
    int degraded;
    uint64_t degraded_toggles;

    fw_metrics *metrics;         /* owned; NULL without --metrics-listen */
    fw_galops *galops;           /* owned; the gallery and its queued writes */
    fw_streams *streams;         /* owned; freed once the last worker returned */
    fw_test_gate gate;           /* TEST_HOLD / TEST_RELEASE */
    int serving;                 /* the server's listeners are open (fw_compute_serving) */
    int drain_announced;         /* /health says "draining" (fw_compute_announce_drain) */
    int draining;
    int sched_drained;           /* the scheduler reported drained; waiting for gallery writes */
    void (*on_drained)(void *arg);
    void *drained_arg;
    int pending_closes;          /* stop: scheduler, signal, metrics still closing */
};

/* ---- options ------------------------------------------------------------------------------- */

void fw_compute_options_default(fw_compute_options *o)
{
    memset(o, 0, sizeof *o);
    unsigned cores = uv_available_parallelism();
    o->workers = cores < 1 ? 1 : cores > FW_MAX_WORKERS ? FW_MAX_WORKERS : (int)cores;
    o->queue_cap[FW_PRIO_HIGH] = 64;
    o->queue_cap[FW_PRIO_NORMAL] = 256;
    o->queue_cap[FW_PRIO_LOW] = 64;
    o->queue_max_bytes = 256ull << 20;
    o->conn_max_jobs = 32;
    o->starvation_limit = 8;
    o->default_deadline_ms[FW_OP_DETECT] = 5000;
    o->default_deadline_ms[FW_OP_EMBED] = 5000;
    o->default_deadline_ms[FW_OP_VERIFY] = 10000;
    /* gallery ops: the worker part only (a queued gallery write has no deadline) */
    o->default_deadline_ms[FW_OP_ENROLL] = 10000;
    o->default_deadline_ms[FW_OP_IDENTIFY] = 10000;
    o->default_deadline_ms[FW_OP_LIST] = 5000;
    o->breaker_window_ms = 10000;
    o->breaker_min_requests = 20;
    o->breaker_failure_pct = 50;
    o->breaker_cooldown_ms = 5000;
    o->breaker_probes = 3;
    o->models_dir = "models";
    o->verify_threshold = FW_VERIFY_DEFAULT_THRESHOLD;
    o->detector_size = 416;
    o->degraded_detector_size = 320;
    o->worker_yield_us = FW_WORKER_YIELD_US_DEFAULT;
    o->stream_memory = FW_STREAM_MEMORY_DEFAULT;
    o->health_max_lag_ms = 5000;
}

static int parse_long(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0' || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

/* A decimal byte count >= min (a flag's value): 1, or -1 with err set. */
static int parse_byte_count(const char *v, uint64_t min, uint64_t *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long long b = strtoull(v, &end, 10);
    if (errno || end == v || *end != '\0' || b < min || v[0] == '-') {
        snprintf(err, errlen, "expected a byte count >= %llu, not \"%s\"", (unsigned long long)min, v);
        return -1;
    }
    *out = b;
    return 1;
}

/* Table-driven integer flags: name, where, range. */
typedef struct int_flag {
    const char *name;
    size_t off;
    int is_u32;
    long lo, hi;
} int_flag;

static const int_flag int_flags[] = {
    { "--workers", offsetof(fw_compute_options, workers), 0, 1, FW_MAX_WORKERS },
    { "--queue-high", offsetof(fw_compute_options, queue_cap[FW_PRIO_HIGH]), 0, 0, 1000000 },
    { "--queue-normal", offsetof(fw_compute_options, queue_cap[FW_PRIO_NORMAL]), 0, 0, 1000000 },
    { "--queue-low", offsetof(fw_compute_options, queue_cap[FW_PRIO_LOW]), 0, 0, 1000000 },
    { "--conn-max-jobs", offsetof(fw_compute_options, conn_max_jobs), 0, 1, 100000 },
    { "--starvation-limit", offsetof(fw_compute_options, starvation_limit), 0, 1, 1000000 },
    { "--breaker-min-requests", offsetof(fw_compute_options, breaker_min_requests), 0, 1, 1000000 },
    { "--breaker-failure-pct", offsetof(fw_compute_options, breaker_failure_pct), 0, 1, 100 },
    { "--breaker-probes", offsetof(fw_compute_options, breaker_probes), 0, 1, 1000 },
    { "--breaker-window-ms", offsetof(fw_compute_options, breaker_window_ms), 1, 10, 86400000 },
    { "--breaker-cooldown-ms", offsetof(fw_compute_options, breaker_cooldown_ms), 1, 1, 86400000 },
    { "--detector-size", offsetof(fw_compute_options, detector_size), 0, 32, 4096 },
    { "--degraded-detector-size", offsetof(fw_compute_options, degraded_detector_size), 0, 0, 4096 },
    { "--gallery-max-faces", offsetof(fw_compute_options, gallery_max_faces), 1, 1, 100000000 },
    { "--health-max-lag-ms", offsetof(fw_compute_options, health_max_lag_ms), 1, 1, 86400000 },
    { "--worker-yield-us", offsetof(fw_compute_options, worker_yield_us), 1, 0, 1000000 },
};

static int parse_deadline_pair(fw_compute_options *o, const char *v, char *err, size_t errlen)
{
    const char *eq = strchr(v, '=');
    char name[32];
    long ms;
    if (!eq || eq == v || (size_t)(eq - v) >= sizeof name)
        goto bad;
    memcpy(name, v, (size_t)(eq - v));
    name[eq - v] = '\0';
    int op = fw_op_from_name(name);
    if (op < 0) {
        char *end;
        long x = strtol(name, &end, 0);
        if (*end != '\0' || x < 0 || x > 255)
            goto bad;
        op = (int)x;
    }
    if (parse_long(eq + 1, 0, 86400000, &ms) != 0)
        goto bad;
    o->default_deadline_ms[op] = (uint32_t)ms;
    o->deadline_set[op] = 1;
    return 1;
bad:
    snprintf(err, errlen, "\"%s\" is not OP=MS (e.g. EMBED=3000; 0 = no deadline)", v);
    return -1;
}

/* Flags of ours that take a value, other than the integer ones in int_flags. */
static const char *const value_flags[] = { "--deadline-ms", "--default-deadline-ms",
                                           "--queue-max-bytes", "--verify-threshold",
                                           "--metrics-listen", "--stream-memory",
                                           "--gallery-key", "--gallery-url" };

/* Messages leave out the flag's name: the caller prefixes it. A flag of ours given without
 * its value returns 1 with *takes_value set and nothing changed, so the caller reports the
 * missing value in its own words. */
int fw_compute_parse_flag(fw_compute_options *o, const char *flag, const char *value,
                          int *takes_value, char *err, size_t errlen)
{
    long x;
    *takes_value = 1;
    for (size_t i = 0; i < sizeof int_flags / sizeof int_flags[0]; i++) {
        const int_flag *f = &int_flags[i];
        if (strcmp(flag, f->name) != 0)
            continue;
        if (!value)
            return 1;
        if (parse_long(value, f->lo, f->hi, &x) != 0) {
            snprintf(err, errlen, "expected an integer in %ld..%ld, not \"%s\"", f->lo, f->hi, value);
            return -1;
        }
        if (x % 32 != 0 && strstr(f->name, "detector-size")) {
            snprintf(err, errlen, "the detector input must be a multiple of 32, not %ld", x);
            return -1;
        }
        if (f->is_u32)
            *(uint32_t *)(void *)((char *)o + f->off) = (uint32_t)x;
        else
            *(int *)(void *)((char *)o + f->off) = (int)x;
        return 1;
    }
    if (strcmp(flag, "--enable-test-ops") == 0) {
        *takes_value = 0;
        o->enable_test_ops = 1;
        return 1;
    }
    if (strcmp(flag, "--degraded") == 0) {
        *takes_value = 0;
        o->start_degraded = 1;
        return 1;
    }
    if (strcmp(flag, "--repair") == 0) {
        *takes_value = 0;
        o->repair = 1;
        return 1;
    }
    int ours = 0;
    for (size_t i = 0; i < sizeof value_flags / sizeof value_flags[0]; i++)
        ours |= strcmp(flag, value_flags[i]) == 0;
    if (!ours) {
        *takes_value = 0;
        return 0;
    }
    if (!value)
        return 1;
    if (strcmp(flag, "--deadline-ms") == 0)
        return parse_deadline_pair(o, value, err, errlen);
    if (strcmp(flag, "--default-deadline-ms") == 0) {
        if (parse_long(value, 0, 86400000, &x) != 0) {
            snprintf(err, errlen, "expected milliseconds in 0..86400000, not \"%s\"", value);
            return -1;
        }
        /* every op without its own --deadline-ms, whatever the order of the flags */
        for (int op = 0; op < 256; op++)
            if (!o->deadline_set[op])
                o->default_deadline_ms[op] = (uint32_t)x;
        return 1;
    }
    if (strcmp(flag, "--queue-max-bytes") == 0)
        return parse_byte_count(value, 1024, &o->queue_max_bytes, err, errlen);
    if (strcmp(flag, "--stream-memory") == 0)
        return parse_byte_count(value, 65536, &o->stream_memory, err, errlen);
    if (strcmp(flag, "--gallery-key") == 0) {
        /* Loaded (and its permissions checked) when the gallery opens: the file is read once,
         * and the key lives only as long as the start-up needs it outside the gallery. */
        o->gallery_key = value;
        return 1;
    }
    if (strcmp(flag, "--gallery-url") == 0) {
        /* libpq's own parser, so that a typo is a usage error now rather than a node that
         * starts and never becomes healthy. It only parses: nothing is resolved or connected. */
        char *perr = NULL;
        PQconninfoOption *opts = value[0] ? PQconninfoParse(value, &perr) : NULL;
        if (!opts) {
            size_t n = perr ? strcspn(perr, "\n") : 0;
            snprintf(err, errlen, "not a PostgreSQL connection string or URI%s%.*s", n ? ": " : "", (int)n,
                     perr ? perr : "");
            PQfreemem(perr);
            return -1;
        }
        PQconninfoFree(opts);
        o->gallery_url = value;
        return 1;
    }
    if (strcmp(flag, "--verify-threshold") == 0) {
        char *end;
        float t = strtof(value, &end);
        if (end == value || *end != '\0' || !isfinite(t) || t <= 0) {
            snprintf(err, errlen, "expected a positive number, not \"%s\"", value);
            return -1;
        }
        o->verify_threshold = t;
        return 1;
    }
    struct sockaddr_storage ss; /* --metrics-listen: refuse a bad address now, not at start */
    if (fw_metrics_parse_addr(value, &ss, err, errlen) != 0)
        return -1;
    o->metrics_listen = value;
    return 1;
}

void fw_compute_usage(FILE *out)
{
    fputs(
        "  --workers N               jobs running at once (default: number of cores)\n"
        "  --queue-high N            waiting high-priority jobs (default 64)\n"
        "  --queue-normal N          waiting normal-priority jobs (default 256)\n"
        "  --queue-low N             waiting low-priority jobs (default 64)\n"
        "  --queue-max-bytes B       request bytes held by waiting jobs (default 268435456)\n"
        "  --conn-max-jobs N         unanswered jobs per connection before it stops reading (32)\n"
        "  --starvation-limit K      a waiting lower priority goes next after K dispatches passed\n"
        "                            it over (default 8)\n"
        "  --deadline-ms OP=MS       an op's default deadline (repeatable; 0 = none)\n"
        "  --default-deadline-ms MS  default deadline of every op without its own\n"
        "                            (built in: DETECT 5000, EMBED 5000, VERIFY 10000, ENROLL 10000,\n"
        "                            IDENTIFY 10000, LIST 5000, others none; a gallery write, once\n"
        "                            queued, is not cut short by a deadline)\n"
        "  --breaker-window-ms MS    breaker sliding window (default 10000)\n"
        "  --breaker-min-requests N  outcomes in the window before it may open (default 20)\n"
        "  --breaker-failure-pct P   failure percentage that opens it (default 50)\n"
        "  --breaker-cooldown-ms MS  open -> half-open after (default 5000)\n"
        "  --breaker-probes N        successful probes that close it again (default 3)\n"
        "  --detector-size N         detector input, multiple of 32 (default 416)\n"
        "  --degraded-detector-size N  detector input in degraded mode (default 320, 0 = same)\n"
        "  --degraded                start in degraded mode (SIGUSR1 toggles it)\n"
        "  --verify-threshold T      VERIFY's default distance threshold (default 0.6)\n"
        "  --worker-yield-us US      a face job offers its CPU to other runnable threads (the\n"
        "                            event loop above all) at most this often, at the engine's\n"
        "                            pause points; 0 = never (default 200; docs/performance.md)\n"
        "  --metrics-listen HOST:PORT  Prometheus text on GET /metrics; GET /health answers 200\n"
        "                            \"ok\" when this node should take traffic, else 503 and why\n"
        "                            (starting, models not loaded, gallery loading, lagging N ms,\n"
        "                            draining)\n"
        "  --enable-test-ops         accept the test ops (TEST_SLEEP, TEST_FAIL, TEST_HOLD,\n"
        "                            TEST_RELEASE) and the streams' test mode\n"
        "  --repair                  open a gallery whose log is damaged in the middle by dropping\n"
        "                            the damaged records (reported in the log); without it such a\n"
        "                            gallery stops start-up. A torn tail is always cut.\n"
        "  --gallery-max-faces N     faces the gallery may hold (default 10000000)\n"
        "  --gallery-key FILE        encrypt the gallery log and snapshots with this key (mode\n"
        "                            0600, made by `facewired keygen --symmetric FILE`); a\n"
        "                            gallery written under another key, or none, is refused\n"
        "  --stream-memory B         frame buffer bytes of all camera streams (default 67108864);\n"
        "                            a frame that would need more is dropped\n"
        "  --gallery-url URL         keep the gallery in PostgreSQL (a libpq connection string or\n"
        "                            postgresql:// URI) so that several nodes share it: each node\n"
        "                            loads it at start and follows every change; ENROLL and DELETE\n"
        "                            are answered after COMMIT, or UNAVAILABLE (with\n"
        "                            retry_after_ms) while the database is unreachable; IDENTIFY\n"
        "                            goes on from memory. Excludes --data, --repair and\n"
        "                            --gallery-key (docs/gallery.md, \"PostgreSQL\")\n"
        "  --health-max-lag-ms MS    GET /health on --metrics-listen answers 503 \"lagging N ms\"\n"
        "                            while the gallery is more than MS behind PostgreSQL\n"
        "                            (default 5000; the embedded gallery is never behind)\n",
        out);
}

/* ---- start --------------------------------------------------------------------------------- */

static void sigusr1_cb(uv_signal_t *h, int signum)
{
    (void)signum;
    fw_compute *cp = h->data;
    cp->degraded = !cp->degraded;
    cp->degraded_toggles++;
    fw_sched_set_degraded(cp->sched, cp->degraded);
    fw_log_warn(cp->log, cp->degraded ? "degraded mode on" : "degraded mode off",
                "detector_size=%d low_priority=%s",
                cp->degraded && cp->engine_small ? cp->opt.degraded_detector_size : cp->opt.detector_size,
                cp->degraded ? "refused" : "accepted");
}

static void metrics_render(void *arg, fw_sb *out);
static void gallery_idle_cb(void *arg);
static int health_cb(void *arg, char *why, size_t whylen);

/* Load the engines and make one fw_face_slot per worker. On failure the reason stays in
 * cp->engine_err and face ops answer UNAVAILABLE; PING and the test ops still work. */
static void load_engines(fw_compute *cp)
{
    fw_engine_options eo;
    char err[200];
    fw_engine_options_default(&eo);
    eo.detector_size = cp->opt.detector_size;
    if (!cp->opt.models_dir) {
        snprintf(cp->engine_err, sizeof cp->engine_err, "no --models directory");
        goto fail;
    }
    if (fw_engine_open(cp->opt.models_dir, &eo, &cp->engine, err, sizeof err) != FWE_OK) {
        snprintf(cp->engine_err, sizeof cp->engine_err, "%s", err);
        goto fail;
    }
    int small = cp->opt.degraded_detector_size;
    if (small > 0 && small != cp->opt.detector_size) {
        eo.detector_size = small;
        if (fw_engine_open(cp->opt.models_dir, &eo, &cp->engine_small, err, sizeof err) != FWE_OK) {
            /* degraded mode then only refuses low priority */
            char q[240];
            fw_log_warn(cp->log, "degraded detector not available", "reason=%s",
                        fw_log_quote(q, sizeof q, err));
            cp->engine_small = NULL;
        }
    }
    cp->face_env.engine = cp->engine;
    cp->face_env.engine_small = cp->engine_small;
    for (int i = 0; i < cp->workers; i++) {
        cp->slot_ctx[i] = fw_face_slot_new(&cp->face_env);
        if (!cp->slot_ctx[i]) {
            snprintf(cp->engine_err, sizeof cp->engine_err, "out of memory for engine workspaces");
            goto fail;
        }
    }
    fw_log_info(cp->log, "models loaded", "dir=%s detector_size=%d degraded_detector_size=%d workers=%d",
                cp->opt.models_dir, cp->opt.detector_size, cp->engine_small ? small : cp->opt.detector_size,
                cp->workers);
    return;
fail:
    for (int i = 0; i < cp->workers; i++) {
        fw_face_slot_free(cp->slot_ctx[i]);
        cp->slot_ctx[i] = NULL;
    }
    fw_engine_close(cp->engine_small);
    fw_engine_close(cp->engine);
    cp->engine = cp->engine_small = NULL;
    cp->face_env.engine = cp->face_env.engine_small = NULL;
    /* Pause state alone, so a model-less node's gallery searches still hand the CPU back (a
     * slot that cannot be made just leaves that worker's searches without pauses). */
    for (int i = 0; i < cp->workers; i++)
        cp->slot_ctx[i] = fw_face_slot_new(&cp->face_env);
    char q[240];
    fw_log_error(cp->log, "models not loaded: face operations will answer UNAVAILABLE", "reason=%s",
                 fw_log_quote(q, sizeof q, cp->engine_err));
}

/* Everything is closed or was never opened; cp->galops is closed by sched_stopped_cb. */
static void free_compute(fw_compute *cp)
{
    if (cp->slot_ctx)
        for (int i = 0; i < cp->workers; i++)
            fw_face_slot_free(cp->slot_ctx[i]);
    free(cp->slot_ctx);
    fw_engine_close(cp->engine_small);
    fw_engine_close(cp->engine);
    uv_cond_destroy(&cp->gate.cv);
    uv_mutex_destroy(&cp->gate.mu);
    free(cp);
}

int fw_compute_start(uv_loop_t *loop, const fw_compute_options *o, fw_compute **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    fw_compute *cp = calloc(1, sizeof *cp);
    if (!cp) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cp->loop = loop;
    cp->opt = *o;
    cp->log = o->log;
    cp->workers = o->workers < 1 ? 1 : o->workers > FW_MAX_WORKERS ? FW_MAX_WORKERS : o->workers;
    cp->face_env.verify_threshold = o->verify_threshold > 0 ? o->verify_threshold : FW_VERIFY_DEFAULT_THRESHOLD;
    cp->face_env.worker_yield_us = o->worker_yield_us;
    if (uv_mutex_init(&cp->gate.mu) != 0) {
        snprintf(err, errlen, "cannot make a mutex");
        free(cp);
        return -1;
    }
    if (uv_cond_init(&cp->gate.cv) != 0) {
        uv_mutex_destroy(&cp->gate.mu);
        snprintf(err, errlen, "cannot make a condition variable");
        free(cp);
        return -1;
    }

    /* libuv sizes its pool once, at the first uv_queue_work of the process: compute's
     * `workers` threads plus a reserve, so libuv's own fs/dns work never waits behind a face */
    char n[16];
    snprintf(n, sizeof n, "%d", cp->workers + FW_THREADPOOL_RESERVE);
    if (setenv("UV_THREADPOOL_SIZE", n, 1) != 0) {
        snprintf(err, errlen, "setenv UV_THREADPOOL_SIZE: %s", strerror(errno));
        free_compute(cp);
        return -1;
    }

    /* The pool is the parallelism: BLAS calls (the networks and the gallery's search) run
     * single-threaded inside workers. Said here, not only when the models load, because the
     * gallery searches with BLAS even on a server whose models failed to load. */
    openblas_set_num_threads(1);

    for (int i = 0; i < 256; i++)
        cp->op_index[i] = -1;
    for (int i = 0; i < NOPS; i++)
        if (!ops[i].test_only || o->enable_test_ops)
            cp->op_index[ops[i].opcode] = (int16_t)i;

    cp->slot_ctx = calloc((size_t)cp->workers, sizeof *cp->slot_ctx);
    if (!cp->slot_ctx) {
        snprintf(err, errlen, "out of memory");
        free_compute(cp);
        return -1;
    }
    load_engines(cp);

    fw_sched_config sc;
    memset(&sc, 0, sizeof sc);
    sc.workers = cp->workers;
    for (int p = 0; p < FW_PRIO_COUNT; p++)
        sc.queue_cap[p] = o->queue_cap[p];
    sc.queue_max_bytes = o->queue_max_bytes ? o->queue_max_bytes : UINT64_MAX;
    sc.starvation_limit = o->starvation_limit;
    sc.breaker.window_ms = o->breaker_window_ms;
    sc.breaker.min_requests = o->breaker_min_requests;
    sc.breaker.failure_pct = o->breaker_failure_pct;
    sc.breaker.cooldown_ms = o->breaker_cooldown_ms;
    sc.breaker.probes = o->breaker_probes;
    sc.log = cp->log;
    if (fw_sched_init(&cp->sched, loop, &sc, ops, NOPS, class_names, NCLASSES,
                      cp->slot_ctx, err, errlen) != 0) {
        free_compute(cp);
        return -1;
    }
    cp->degraded = o->start_degraded ? 1 : 0;
    fw_sched_set_degraded(cp->sched, cp->degraded);

    uv_signal_init(loop, &cp->sigusr1);
    cp->sigusr1.data = cp;
    uv_signal_start(&cp->sigusr1, sigusr1_cb, SIGUSR1);
    uv_unref((uv_handle_t *)&cp->sigusr1); /* never keeps the loop alive on its own */

    /* The gallery after the scheduler, whose fw_compute_stop path then closes it too. */
    fw_galops_options go;
    memset(&go, 0, sizeof go);
    go.data_dir = o->data_dir;
    go.repair = o->repair;
    go.max_faces = o->gallery_max_faces;
    go.gallery_url = o->gallery_url;
    go.max_lag_ms = o->health_max_lag_ms;
    go.log = cp->log;
    go.face = &cp->face_env;
    char gerr[256];
    uint8_t gkey[FW_SECURE_SYMKEY_LEN];
    if (o->gallery_key) {
        if (fw_keys_load_symmetric(o->gallery_key, gkey, gerr, sizeof gerr) != 0) {
            snprintf(err, errlen, "--gallery-key: %s", gerr);
            fw_compute_stop(cp);
            return -1;
        }
        go.key = gkey;
    }
    /* the gallery keeps its own copy: wipe ours whatever happens */
    int grc = fw_galops_open(loop, &go, &cp->galops, gerr, sizeof gerr);
    sodium_memzero(gkey, sizeof gkey);
    if (grc != 0) {
        snprintf(err, errlen, "cannot open the gallery: %s", gerr);
        fw_compute_stop(cp);
        return -1;
    }
    fw_galops_set_sched(cp->galops, cp->sched);
    fw_galops_on_idle(cp->galops, gallery_idle_cb, cp);

    fw_streams_options so;
    memset(&so, 0, sizeof so);
    so.memory_cap = o->stream_memory ? o->stream_memory : FW_STREAM_MEMORY_DEFAULT;
    so.enable_test_ops = o->enable_test_ops;
    so.have_engine = cp->engine != NULL;
    so.sched = cp->sched;
    so.frame_op_index = cp->op_index[FW_OP_STREAM_FRAME];
    so.open_op_index = cp->op_index[FW_OP_STREAM_OPEN];
    so.close_op_index = cp->op_index[FW_OP_STREAM_CLOSE];
    so.frame_op = &ops[so.frame_op_index];
    so.env = fw_galops_env(cp->galops);
    cp->streams = fw_streams_new(&so);
    if (!cp->streams) {
        snprintf(err, errlen, "out of memory");
        fw_compute_stop(cp);
        return -1;
    }

    if (o->metrics_listen &&
        fw_metrics_start(loop, o->metrics_listen, metrics_render, cp, cp->log, &cp->metrics,
                         err, errlen) != 0) {
        fw_compute_stop(cp);
        return -1;
    }
    if (cp->metrics)
        fw_metrics_set_health(cp->metrics, health_cb, cp);
    *out = cp;
    return 0;
}

/* ---- health -------------------------------------------------------------------------------- */

void fw_compute_serving(fw_compute *cp) { cp->serving = 1; }
void fw_compute_announce_drain(fw_compute *cp) { cp->drain_announced = 1; }

/* In the order a balancer's operator wants the reason: a node on its way out says so first. */
int fw_compute_health(fw_compute *cp, char *why, size_t whylen)
{
    if (cp->drain_announced || cp->draining) {
        snprintf(why, whylen, "draining");
        return 0;
    }
    if (!cp->serving) {
        snprintf(why, whylen, "starting");
        return 0;
    }
    /* the models load at start, before anything listens: without them now, they will not
     * come (a restart with good --models does) */
    if (cp->opt.models_required && !cp->engine) {
        snprintf(why, whylen, "models not loaded");
        return 0;
    }
    return fw_galops_ready(cp->galops, why, whylen);
}

static int health_cb(void *arg, char *why, size_t whylen)
{
    return fw_compute_health(arg, why, whylen);
}

/* ---- requests ------------------------------------------------------------------------------ */

void fw_compute_request(fw_compute *cp, fw_conn *c, const fw_header *h, const uint8_t *body)
{
    int idx = cp->op_index[h->opcode];
    char msg[240];

    if (idx < 0) {
        cp->unknown_ops++;
        if (cp->draining) {
            fw_conn_reply_error(c, h, FW_STATUS_SHUTTING_DOWN, "shutting down", NULL, 0);
            return;
        }
        snprintf(msg, sizeof msg, "unknown opcode 0x%02X", h->opcode);
        fw_conn_reply_error(c, h, FW_STATUS_UNKNOWN_OP, msg, NULL, 0);
        return;
    }
    const fw_op *op = &ops[idx];
    uint32_t budget = h->deadline_ms ? h->deadline_ms : cp->opt.default_deadline_ms[h->opcode];
    fw_sched_op_stats_mut(cp->sched, idx)->requests++;
    if (h->opcode == FW_OP_STREAM_OPEN || h->opcode == FW_OP_STREAM_FRAME || h->opcode == FW_OP_STREAM_CLOSE) {
        if (cp->draining && h->opcode == FW_OP_STREAM_OPEN)
            fw_sched_answer_now(cp->sched, c, h, idx, FW_STATUS_SHUTTING_DOWN, "shutting down", 0, 0);
        else
            fw_streams_serve(cp->streams, c, h, body);
        return;
    }
    if (h->opcode == FW_OP_TEST_RELEASE) {
        test_gate_release(&cp->gate, 0);
        fw_sched_answer_direct(cp->sched, c, h, idx, FW_STATUS_OK, NULL, 0, NULL, 0, 0);
        return;
    }
    if (op->cls == CLS_GALLERY_READ && !cp->draining && fw_galops_loading(cp->galops)) {
        /* a partly loaded gallery would answer "no match" for faces that exist */
        fw_sched_answer_now(cp->sched, c, h, idx, FW_STATUS_UNAVAILABLE, "gallery loading", 1,
                            FW_GALOPS_LOADING_RETRY_MS);
        return;
    }
    if (op->direct && op->direct(body, h->body_len)) {
        fw_galops_serve(cp->galops, c, h, idx, body);
        return;
    }
    if (fw_sched_precheck(cp->sched, c, h, idx, budget) != 0)
        return;

    fw_job *j = fw_job_new(h->body_len);
    if (!j) {
        fw_sched_answer_now(cp->sched, c, h, idx, FW_STATUS_INTERNAL, "out of memory", 0, 0);
        return;
    }
    if (h->body_len)
        memcpy(j->body, body, h->body_len);
    j->hdr = *h;
    j->op = op;
    j->op_index = idx;
    j->env = op->cls == CLS_FACE ? (const void *)&cp->face_env
           : op->cls == CLS_GALLERY_READ || op->cls == CLS_GALLERY_WRITE ? (const void *)fw_galops_env(cp->galops)
           : op->cls == CLS_TEST ? (const void *)&cp->gate
           : NULL;
    j->degraded = cp->degraded;
    j->budget_ms = budget;

    if (op->parse(j, msg, sizeof msg) != 0) {
        fw_sched_answer_now(cp->sched, c, h, idx, FW_STATUS_BAD_REQUEST, msg, 0, 0);
        fw_job_free(j);
        return;
    }
    if (op->needs_engine && !cp->engine && fw_faceops_needs_engine(j)) {
        snprintf(msg, sizeof msg, "models not loaded: %s", cp->engine_err);
        fw_sched_answer_now(cp->sched, c, h, idx, FW_STATUS_UNAVAILABLE, msg, 1, FW_MODELS_RETRY_MS);
        fw_job_free(j);
        return;
    }
    fw_sched_submit(cp->sched, c, j);
}

void fw_compute_conn_closed(fw_compute *cp, fw_conn *c)
{
    fw_sched_conn_closed(cp->sched, c);
    fw_galops_conn_closed(cp->galops, c);
    if (cp->streams)
        fw_streams_conn_closed(cp->streams, c);
}

/* ---- INFO and /metrics --------------------------------------------------------------------- */

static const char *const prio_names[FW_PRIO_COUNT] = { "normal", "high", "low" };

static void lower(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < cap; i++)
        dst[i] = (char)(src[i] >= 'A' && src[i] <= 'Z' ? src[i] - 'A' + 'a' : src[i]);
    dst[i] = '\0';
}

static double ms_of(uint64_t us)
{
    return (double)us / 1000.0;
}

static void render_info(fw_compute *cp, fw_sb *b)
{
    fw_sched *s = cp->sched;
    uint64_t now = uv_now(cp->loop);
    fw_sb_printf(b, "compute_workers: %d\n", fw_sched_workers(s));
    fw_sb_printf(b, "compute_running: %d\n", fw_sched_running(s));
    for (int p = 0; p < FW_PRIO_COUNT; p++)
        fw_sb_printf(b, "compute_queue_%s: %u/%d\n", prio_names[p], fw_sched_queue_len(s, p),
                     fw_sched_get_config(s)->queue_cap[p]);
    fw_sb_printf(b, "compute_queued_bytes: %llu\n", (unsigned long long)fw_sched_queued_bytes(s));
    fw_sb_printf(b, "compute_degraded: %d\n", cp->degraded);
    fw_sb_printf(b, "compute_degraded_toggles: %llu\n", (unsigned long long)cp->degraded_toggles);
    fw_sb_printf(b, "compute_models_loaded: %d\n", cp->engine != NULL);
    char why[128];
    if (fw_compute_health(cp, why, sizeof why))
        fw_sb_printf(b, "health: ok\n");
    else
        fw_sb_printf(b, "health: %s\n", why);
    fw_sb_printf(b, "compute_unknown_ops: %llu\n", (unsigned long long)cp->unknown_ops);
    /* before the per-op lines, whose number grows with the statuses seen: a reader with a
     * small buffer (conn.c's INFO) cuts the tail, and these are the lines people look for */
    fw_galops_info(cp->galops, b);
    for (int c = 0; c < fw_sched_nclasses(s); c++) {
        const fw_class_info *ci = fw_sched_class(s, c);
        uint32_t r, f;
        fw_breaker_window(&ci->breaker, now, &r, &f);
        fw_sb_printf(b, "breaker_%s_state: %s\n", ci->name, fw_breaker_state_name(ci->breaker.state));
        fw_sb_printf(b, "breaker_%s_window: %u requests, %u failures\n", ci->name, r, f);
        fw_sb_printf(b, "breaker_%s_opens: %llu\n", ci->name, (unsigned long long)ci->breaker.opens);
        fw_sb_printf(b, "breaker_%s_rejected: %llu\n", ci->name, (unsigned long long)ci->breaker.rejected);
    }
    for (int i = 0; i < NOPS; i++) {
        if (cp->op_index[ops[i].opcode] != i)
            continue;
        const fw_op_stats *st = fw_sched_op_stats(s, i);
        char n[32];
        lower(n, sizeof n, ops[i].name);
        fw_sb_printf(b, "op_%s_default_deadline_ms: %u\n", n, cp->opt.default_deadline_ms[ops[i].opcode]);
        fw_sb_printf(b, "op_%s_requests: %llu\n", n, (unsigned long long)st->requests);
        for (int k = 0; k < FW_STATUS_COUNT; k++) {
            if (!st->responses[k])
                continue;
            char sn[32];
            lower(sn, sizeof sn, fw_status_name((uint16_t)k));
            fw_sb_printf(b, "op_%s_responses_%s: %llu\n", n, sn, (unsigned long long)st->responses[k]);
        }
        for (int p = 0; p < FW_PRIO_COUNT; p++)
            fw_sb_printf(b, "op_%s_queued_%s: %u\n", n, prio_names[p], st->waiting[p]);
        fw_sb_printf(b, "op_%s_in_flight: %u\n", n, st->running);
        fw_sb_printf(b, "op_%s_ran: %llu\n", n, (unsigned long long)st->run_us.count);
        fw_sb_printf(b, "op_%s_expired_in_queue: %llu\n", n, (unsigned long long)st->expired_in_queue);
        fw_sb_printf(b, "op_%s_timed_out: %llu\n", n, (unsigned long long)st->timed_out);
        fw_sb_printf(b, "op_%s_dropped: %llu\n", n, (unsigned long long)st->dropped);
        fw_sb_printf(b, "op_%s_orphaned: %llu\n", n, (unsigned long long)st->orphaned);
        fw_sb_printf(b, "op_%s_yields: %llu\n", n, (unsigned long long)st->yields);
        fw_sb_printf(b, "op_%s_queue_wait_ms: p50=%.3f p99=%.3f\n", n,
                     ms_of(fw_hist_quantile(&st->wait_us, 0.5)), ms_of(fw_hist_quantile(&st->wait_us, 0.99)));
        fw_sb_printf(b, "op_%s_run_ms: p50=%.3f p99=%.3f\n", n,
                     ms_of(fw_hist_quantile(&st->run_us, 0.5)), ms_of(fw_hist_quantile(&st->run_us, 0.99)));
        fw_sb_printf(b, "op_%s_breaker: %s\n", n,
                     fw_breaker_state_name(fw_sched_class(s, ops[i].cls)->breaker.state));
    }
    /* last: one line per open stream (up to 256), so many streams never push the lines
     * above out of a reader's buffer */
    fw_streams_info(cp->streams, b);
}

size_t fw_compute_info(fw_compute *cp, char *buf, size_t cap)
{
    fw_sb b;
    if (cap == 0)
        return 0;
    fw_sb_init_fixed(&b, buf, cap);
    render_info(cp, &b);
    return b.len;
}

static void prom_summary(fw_sb *b, const char *metric, const char *op, const fw_hist *h)
{
    fw_sb_printf(b, "%s{op=\"%s\",quantile=\"0.5\"} %.6f\n", metric, op,
                 (double)fw_hist_quantile(h, 0.5) / 1e6);
    fw_sb_printf(b, "%s{op=\"%s\",quantile=\"0.99\"} %.6f\n", metric, op,
                 (double)fw_hist_quantile(h, 0.99) / 1e6);
    fw_sb_printf(b, "%s_sum{op=\"%s\"} %.6f\n", metric, op, (double)h->sum / 1e6);
    fw_sb_printf(b, "%s_count{op=\"%s\"} %llu\n", metric, op, (unsigned long long)h->count);
}

#define PROM_HEAD(b, name, type, help) \
    fw_sb_printf((b), "# HELP %s %s\n# TYPE %s %s\n", (name), (help), (name), (type))

/* Per-op counter family: one line per enabled op. */
static void prom_op_counter(fw_compute *cp, fw_sb *b, const char *name, const char *help,
                            size_t field_off)
{
    PROM_HEAD(b, name, "counter", help);
    for (int i = 0; i < NOPS; i++) {
        if (cp->op_index[ops[i].opcode] != i)
            continue;
        const fw_op_stats *st = fw_sched_op_stats(cp->sched, i);
        uint64_t v = *(const uint64_t *)(const void *)((const char *)st + field_off);
        fw_sb_printf(b, "%s{op=\"%s\"} %llu\n", name, ops[i].name, (unsigned long long)v);
    }
}

static void metrics_render(void *arg, fw_sb *b)
{
    fw_compute *cp = arg;
    fw_sched *s = cp->sched;

    PROM_HEAD(b, "facewire_compute_workers", "gauge", "Worker slots (jobs that may run at once).");
    fw_sb_printf(b, "facewire_compute_workers %d\n", fw_sched_workers(s));
    PROM_HEAD(b, "facewire_compute_running", "gauge", "Worker slots busy.");
    fw_sb_printf(b, "facewire_compute_running %d\n", fw_sched_running(s));
    PROM_HEAD(b, "facewire_queue_depth", "gauge", "Jobs waiting, by priority.");
    for (int p = 0; p < FW_PRIO_COUNT; p++)
        fw_sb_printf(b, "facewire_queue_depth{priority=\"%s\"} %u\n", prio_names[p], fw_sched_queue_len(s, p));
    PROM_HEAD(b, "facewire_queue_capacity", "gauge", "Queue bounds, by priority.");
    for (int p = 0; p < FW_PRIO_COUNT; p++)
        fw_sb_printf(b, "facewire_queue_capacity{priority=\"%s\"} %d\n", prio_names[p],
                     fw_sched_get_config(s)->queue_cap[p]);
    PROM_HEAD(b, "facewire_degraded", "gauge", "1 while degraded mode is on.");
    fw_sb_printf(b, "facewire_degraded %d\n", cp->degraded);
    PROM_HEAD(b, "facewire_models_loaded", "gauge", "1 when the face models are loaded.");
    fw_sb_printf(b, "facewire_models_loaded %d\n", cp->engine != NULL);
    char why[128];
    PROM_HEAD(b, "facewire_healthy", "gauge", "1 when GET /health answers 200.");
    fw_sb_printf(b, "facewire_healthy %d\n", fw_compute_health(cp, why, sizeof why));
    PROM_HEAD(b, "facewire_breaker_state", "gauge", "Circuit breaker state: 0 closed, 1 open, 2 half-open.");
    for (int c = 0; c < fw_sched_nclasses(s); c++)
        fw_sb_printf(b, "facewire_breaker_state{class=\"%s\"} %d\n", fw_sched_class(s, c)->name,
                     (int)fw_sched_class(s, c)->breaker.state);
    PROM_HEAD(b, "facewire_breaker_opens_total", "counter", "Times the breaker opened.");
    for (int c = 0; c < fw_sched_nclasses(s); c++)
        fw_sb_printf(b, "facewire_breaker_opens_total{class=\"%s\"} %llu\n", fw_sched_class(s, c)->name,
                     (unsigned long long)fw_sched_class(s, c)->breaker.opens);

    prom_op_counter(cp, b, "facewire_requests_total", "Compute requests received, by op.",
                    offsetof(fw_op_stats, requests));
    prom_op_counter(cp, b, "facewire_expired_in_queue_total",
                    "Jobs whose deadline passed while waiting (never ran).", offsetof(fw_op_stats, expired_in_queue));
    prom_op_counter(cp, b, "facewire_timed_out_total", "Jobs answered at their deadline while running.",
                    offsetof(fw_op_stats, timed_out));
    prom_op_counter(cp, b, "facewire_dropped_total", "Waiting jobs dropped when their connection closed.",
                    offsetof(fw_op_stats, dropped));
    prom_op_counter(cp, b, "facewire_orphaned_total", "Running jobs whose connection closed.",
                    offsetof(fw_op_stats, orphaned));
    prom_op_counter(cp, b, "facewire_worker_yields_total",
                    "Times a running job offered its CPU back (--worker-yield-us).",
                    offsetof(fw_op_stats, yields));

    PROM_HEAD(b, "facewire_responses_total", "counter", "Compute responses sent, by op and status.");
    for (int i = 0; i < NOPS; i++) {
        if (cp->op_index[ops[i].opcode] != i)
            continue;
        const fw_op_stats *st = fw_sched_op_stats(s, i);
        for (int k = 0; k < FW_STATUS_COUNT; k++)
            if (st->responses[k])
                fw_sb_printf(b, "facewire_responses_total{op=\"%s\",status=\"%s\"} %llu\n", ops[i].name,
                             fw_status_name((uint16_t)k), (unsigned long long)st->responses[k]);
    }
    PROM_HEAD(b, "facewire_jobs_in_flight", "gauge", "Jobs running, by op.");
    for (int i = 0; i < NOPS; i++)
        if (cp->op_index[ops[i].opcode] == i)
            fw_sb_printf(b, "facewire_jobs_in_flight{op=\"%s\"} %u\n", ops[i].name,
                         fw_sched_op_stats(s, i)->running);
    PROM_HEAD(b, "facewire_queue_wait_seconds", "summary", "Time jobs waited before a worker took them.");
    for (int i = 0; i < NOPS; i++)
        if (cp->op_index[ops[i].opcode] == i)
            prom_summary(b, "facewire_queue_wait_seconds", ops[i].name, &fw_sched_op_stats(s, i)->wait_us);
    PROM_HEAD(b, "facewire_run_seconds", "summary", "Worker time per job.");
    for (int i = 0; i < NOPS; i++)
        if (cp->op_index[ops[i].opcode] == i)
            prom_summary(b, "facewire_run_seconds", ops[i].name, &fw_sched_op_stats(s, i)->run_us);
    fw_galops_metrics(cp->galops, b);
    fw_streams_metrics(cp->streams, b);
}

/* ---- drain and stop ------------------------------------------------------------------------ */

/* Drained = the scheduler drained (no job waiting or running) and no gallery write queued.
 * Direct requests are refused while draining, but a JPEG ENROLL finishing its worker within
 * the grace period still queues its write, so the two are waited for in either order. */
static void maybe_drained(fw_compute *cp)
{
    if (!cp->draining || !cp->sched_drained || !cp->on_drained || fw_galops_pending(cp->galops) > 0)
        return;
    void (*cb)(void *) = cp->on_drained;
    cp->on_drained = NULL; /* once */
    cb(cp->drained_arg);
}

static void sched_drained_cb(void *arg)
{
    fw_compute *cp = arg;
    cp->sched_drained = 1;
    maybe_drained(cp);
}

static void gallery_idle_cb(void *arg) { maybe_drained(arg); }

void fw_compute_drain(fw_compute *cp, uint32_t grace_ms, void (*on_drained)(void *arg), void *arg)
{
    cp->draining = 1;
    test_gate_release(&cp->gate, 1); /* a held test worker would hold up the drain */
    cp->on_drained = on_drained;
    cp->drained_arg = arg;
    fw_sched_drain(cp->sched, grace_ms, sched_drained_cb, cp);
}

static void one_closed(fw_compute *cp)
{
    if (--cp->pending_closes == 0)
        free_compute(cp);
}

/* The last worker has returned (IDENTIFY and LIST jobs read the gallery): only now may the
 * gallery close. It completes the writes still queued inside the call, and its async handle
 * closes in a later turn of the loop, which the caller of fw_compute_stop runs. */
static void sched_stopped_cb(void *arg)
{
    fw_compute *cp = arg;
    fw_streams_free(cp->streams); /* stream jobs read their streams' buffers until here */
    cp->streams = NULL;
    fw_galops_close(cp->galops);
    cp->galops = NULL;
    one_closed(cp);
}
static void metrics_closed_cb(void *arg) { one_closed(arg); }
static void signal_closed_cb(uv_handle_t *h) { one_closed(h->data); }

void fw_compute_stop(fw_compute *cp)
{
    if (!cp || cp->pending_closes)
        return;
    /* The engines and workspaces are freed only after the scheduler reports that the last
     * worker returned: a job still running past its deadline is using them. */
    cp->pending_closes = 2 + (cp->metrics != NULL);
    test_gate_release(&cp->gate, 1);
    if (cp->metrics)
        fw_metrics_stop(cp->metrics, metrics_closed_cb, cp);
    cp->metrics = NULL;
    uv_close((uv_handle_t *)&cp->sigusr1, signal_closed_cb);
    fw_sched_stop(cp->sched, sched_stopped_cb, cp);
}
