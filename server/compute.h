/*
 * compute.h — the seam between the connection layer (server.c, conn.c) and everything that
 * runs on the worker pool (scheduler, face ops, gallery ops, test ops).
 *
 * The connection layer parses frames on the loop thread. PING and INFO it answers itself;
 * every other opcode goes to fw_compute_request(), which either answers at once (BUSY,
 * UNAVAILABLE, BAD_REQUEST, UNKNOWN_OP, ...) or queues a job and answers later through
 * fw_conn_reply(). All of it runs on the loop thread; only a job's work function runs on a
 * worker, and it touches nothing but the job.
 *
 * Lifetimes: a connection that closes calls fw_compute_conn_closed() first; from then on
 * compute never touches that connection again (its waiting jobs are dropped, its running
 * jobs' results discarded when their workers return).
 */
#ifndef FW_COMPUTE_H
#define FW_COMPUTE_H

#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "fw_proto.h"

typedef struct fw_conn fw_conn;       /* server/conn.h: owned by the loop thread */
typedef struct fw_compute fw_compute; /* server/compute.c: owned by the server context */

/* ---- implemented by the connection layer (conn.c) ----------------------------------------- */

/* Queue a response to request `req` on connection c: header fields copied from req (opcode,
 * request_id, priority), RESPONSE flag set, status and body as given. The body is copied
 * (the caller keeps ownership). Safe to call for a connection that is closing: it drops it. */
void fw_conn_reply(fw_conn *c, const fw_header *req, uint16_t status, const void *body, size_t len);

/* An error response: body = u16 length + message, then `extra` bytes (e.g. retry_after_ms). */
void fw_conn_reply_error(fw_conn *c, const fw_header *req, uint16_t status, const char *msg,
                         const void *extra, size_t extra_len);

/* Queue a server-initiated frame on c: EVENT flag, request_id 0, status OK, the opcode and
 * body given (copied). Dropped like a reply when the connection is closing. */
void fw_conn_send_event(fw_conn *c, uint8_t opcode, const void *body, size_t len);

/* Count of this connection's requests handed to compute and not yet answered: the
 * connection layer stops reading while it is at its cap and resumes as they drain. */
void fw_conn_job_started(fw_conn *c);
void fw_conn_job_finished(fw_conn *c);

/* ---- implemented by compute.c ------------------------------------------------------------- */

typedef struct fw_compute_options {
    int workers;                 /* --workers, default: number of cores */
    int queue_cap[3];            /* --queue-normal/--queue-high/--queue-low (index = priority) */
    int conn_max_jobs;           /* per-connection jobs in flight before reading pauses */
    uint32_t default_deadline_ms[256]; /* per opcode, 0 = none */
    int breaker_min_requests, breaker_failure_pct;
    uint32_t breaker_window_ms, breaker_cooldown_ms;
    int breaker_probes;
    int enable_test_ops;         /* --enable-test-ops */
    const char *metrics_listen;  /* --metrics-listen HOST:PORT, NULL = off */
    const char *models_dir;      /* --models */
    const char *data_dir;        /* --data */
    /* added by the compute side (defaults in fw_compute_options_default) */
    uint64_t queue_max_bytes;    /* --queue-max-bytes: request bytes held by waiting jobs */
    int starvation_limit;        /* --starvation-limit: see server/sched.c */
    uint8_t deadline_set[256];   /* 1 where --deadline-ms OP=MS gave the op its own default */
    float verify_threshold;      /* --verify-threshold */
    int detector_size;           /* --detector-size */
    int degraded_detector_size;  /* --degraded-detector-size, 0 = same detector when degraded */
    int start_degraded;          /* --degraded: start in degraded mode */
    uint32_t worker_yield_us;    /* --worker-yield-us: a face job hands its CPU back at the
                                    engine's pause points this often; 0 = never */
    const struct fw_log *log;    /* where compute logs; NULL = stderr at info level. Not owned;
                                    must outlive the fw_compute. */
    /* added for the gallery ops (server/galleryops.h) */
    int repair;                  /* --repair: open a gallery whose log is corrupt in the middle,
                                    dropping the damaged records */
    uint32_t gallery_max_faces;  /* --gallery-max-faces, 0 = the gallery's default (10,000,000) */
    const char *gallery_key;     /* --gallery-key FILE: encrypt the gallery at rest; NULL = off */
    /* added for camera streams (server/streams.h) */
    uint64_t stream_memory;      /* --stream-memory: frame buffer bytes of all streams */
    /* added for the PostgreSQL gallery and /health (server/galpg.h) */
    const char *gallery_url;     /* --gallery-url: PostgreSQL is the gallery's system of record */
    uint32_t health_max_lag_ms;  /* --health-max-lag-ms: /health is 503 beyond this lag */
    int models_required;         /* --models was given: /health is 503 without the models (a
                                    node started without it may serve descriptors only) */
} fw_compute_options;

void fw_compute_options_default(fw_compute_options *o);
/* Parse one long option ("--workers", "4"). Returns 1 if it took the value, 0 if the flag is
 * not one of compute's, -1 with a message in err on a bad value. *takes_value says whether
 * the flag consumes an argument (so the caller can report a missing one). */
int fw_compute_parse_flag(fw_compute_options *o, const char *flag, const char *value,
                          int *takes_value, char *err, size_t errlen);
void fw_compute_usage(FILE *out);

/* Start on loop: sets UV_THREADPOOL_SIZE (must be called before anything queues work on this
 * loop), loads models, opens the gallery (data_dir; blocks while it loads; with gallery_url
 * the PostgreSQL store starts loading on its own threads), starts the metrics listener.
 * Returns 0 or -1 with a message; a gallery that cannot be opened (corrupt log without
 * --repair, a data directory another process holds) is such a failure. After a failure the
 * loop must still be run once so that the handles already made can close. */
int fw_compute_start(uv_loop_t *loop, const fw_compute_options *o, fw_compute **out,
                     char *err, size_t errlen);

/* GET /health on the metrics listener (and INFO's health line) answer 503 "starting" until
 * the server calls fw_compute_serving (its listeners are open), and 503 "draining" from
 * fw_compute_announce_drain (a signal arrived; requests are still served for the drain
 * delay) or fw_compute_drain on. In between: 200 when the models are loaded (if required)
 * and the gallery is in sync. Loop thread. */
void fw_compute_serving(fw_compute *cp);
void fw_compute_announce_drain(fw_compute *cp);
/* 1 when healthy, else 0 with the reason in why (the body of the 503). Loop thread. */
int fw_compute_health(fw_compute *cp, char *why, size_t whylen);

/* A request for any opcode other than PING/INFO. Called on the loop thread with the body
 * still in the connection's buffer (compute copies what it keeps). Answers now or later. */
void fw_compute_request(fw_compute *cp, fw_conn *c, const fw_header *h, const uint8_t *body);

/* The connection is going away; see the lifetime rule above. */
void fw_compute_conn_closed(fw_compute *cp, fw_conn *c);

/* Append INFO lines ("key: value\n") to buf; returns bytes written (truncates to cap). */
size_t fw_compute_info(fw_compute *cp, char *buf, size_t cap);

/* Graceful shutdown: new requests get SHUTTING_DOWN; queued and running jobs go on until
 * grace_ms, then everything not yet answered is answered SHUTTING_DOWN. Gallery writes
 * already queued (ENROLL, DELETE) are never cut short: they are answered when their record is
 * on disk or failed, grace or not. on_drained is called once, when every job and every
 * gallery write has been answered and no worker is still running one. */
void fw_compute_drain(fw_compute *cp, uint32_t grace_ms, void (*on_drained)(void *arg), void *arg);

/* Close handles and free everything; the loop must then be run to let handles close. The
 * gallery is closed (on the loop thread) once the last worker has returned. */
void fw_compute_stop(fw_compute *cp);

#endif
