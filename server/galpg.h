/*
 * galpg.h — the gallery's system of record in PostgreSQL (--gallery-url), for several
 * facewired nodes that share one gallery.
 *
 * Every node keeps the whole gallery in memory (a memory-only fw_gallery, searched with BLAS
 * as before); PostgreSQL holds the faces and an ordered change table. This module:
 *   - writes: ENROLL / DELETE requests from the loop are queued to a writer thread with its
 *     own connection, grouped into one transaction per batch, and answered only after COMMIT;
 *   - follows: a follower thread with its own connection loads the whole gallery at start
 *     (binary COPY inside one REPEATABLE READ snapshot), then applies the change table in
 *     sequence order into the fw_gallery (fw_gallery_apply), woken by LISTEN/NOTIFY and by a
 *     poll timer (NOTIFY is only a hint). The node's own writes reach its memory the same way
 *     as everybody else's, so every node applies exactly the same sequence.
 * Neither thread ever runs on the loop; the loop only queues requests and reads atomics.
 * docs/gallery.md ("PostgreSQL") has the schema, its migrations and why no change can be
 * skipped although transactions commit in any order (one counter row, updated last in every
 * write transaction: its row lock orders the commits, so sequence order = commit order, and
 * a rolled-back transaction gives its numbers back: the sequence has no gaps).
 *
 * Threading:
 *   fw_galpg_open, _enroll, _delete_*, _close      the loop thread
 *   fw_galpg_info_get, fw_galpg_ready              any thread (atomics)
 * Callbacks (fw_gallery_done_cb) run on the loop thread, exactly once per accepted request.
 */
#ifndef FW_GALPG_H
#define FW_GALPG_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "server/gallery.h"

typedef struct fw_galpg fw_galpg;

typedef struct fw_galpg_options {
    const char *url;            /* libpq connection string or URI; copied at open */
    fw_gallery *gallery;        /* not owned; a memory-only gallery (no data_dir) that only the
                                 * follower thread mutates; must outlive the fw_galpg */
    uint32_t queue_max;         /* writes waiting for the writer; beyond -> BUSY. 0 = 4096 */
    uint32_t batch_max;         /* requests per transaction; 0 = 256 */
    uint32_t poll_ms;           /* the follower looks for changes at least this often even
                                 * without a NOTIFY; 0 = 1000 */
    uint32_t reconnect_max_ms;  /* reconnect backoff: 100 ms doubling up to this; 0 = 5000 */
    uint32_t max_lag_ms;        /* fw_galpg_ready: in sync when lag <= this; 0 = 5000 */
    /* Lines about connections, migrations, loads and errors; called from any of the module's
     * threads (must be thread-safe). level: 1 info, 2 warn, 3 error (fw_log_level). NULL:
     * stderr. A line is a fixed message, then, after a TAB when there are any, logfmt
     * key=value pairs whose values are already quoted (fw_log_quote), e.g.
     *   "gallery loaded from postgresql\tfaces=3 seq=5 ms=12"
     *   "postgresql connection lost\trole=writer error=\"server closed the connection\""
     * so the server can split at the TAB: fw_log_emit(lg, level, msg, "%s", pairs). */
    void (*log)(void *arg, int level, const char *line);
    void *log_arg;
} fw_galpg_options;

/* Start the writer and follower threads and the uv_async that brings completions back to the
 * loop. Does not wait for the database: connecting, migrating the schema and the initial load
 * happen on the threads (fw_galpg_ready says when the gallery is loaded). 0 and *out, or -1
 * with a one-line reason in err (bad options, a gallery with a data_dir, out of memory,
 * threads; when the threads could not start, memory is released on the loop's next run).
 * Loop thread. */
int fw_galpg_open(uv_loop_t *loop, const fw_galpg_options *o, fw_galpg **out, char *err,
                  size_t errlen);

/* Writes. Same contract as fw_gallery_enroll / _delete_face / _delete_subject (everything is
 * copied; FW_STATUS_OK means queued and cb will be called exactly once on the loop thread,
 * after COMMIT; any other return means refused now, err set, cb never called), plus:
 *   FW_STATUS_UNAVAILABLE  the database is unreachable or the writes' breaker is open:
 *                          refused at once, *retry_after_ms says when to try again.
 * cb may also report UNAVAILABLE (the connection broke before COMMIT was confirmed: the
 * write may or may not have committed; it is never lost if it did, the follower will apply
 * it) — answer it with fw_galpg_retry_after_ms(). */
int fw_galpg_enroll(fw_galpg *p, const char *subject, size_t subject_len, const void *meta,
                    size_t meta_len, const float *desc, fw_gallery_done_cb cb, void *arg,
                    uint32_t *retry_after_ms, char *err, size_t errlen);
int fw_galpg_delete_face(fw_galpg *p, uint64_t face_id, fw_gallery_done_cb cb, void *arg,
                         uint32_t *retry_after_ms, char *err, size_t errlen);
int fw_galpg_delete_subject(fw_galpg *p, const char *subject, size_t subject_len,
                            fw_gallery_done_cb cb, void *arg, uint32_t *retry_after_ms,
                            char *err, size_t errlen);
/* A retry_after_ms for an UNAVAILABLE answer: the time to the writer's next connection
 * attempt, or the rest of the breaker's cooldown, else 200. Loop thread. */
uint32_t fw_galpg_retry_after_ms(fw_galpg *p);

typedef struct fw_galpg_info {
    int loaded;                 /* the initial load finished (searches see the whole gallery) */
    int writer_connected, follower_connected;
    uint64_t applied_seq;       /* last change applied to memory */
    uint64_t head_seq;          /* last change known to exist in the database */
    uint64_t lag_ms;            /* 0 when caught up; else the age (database clock) of the
                                 * oldest change known but not yet applied */
    uint64_t load_faces, load_ms; /* the initial (or last full) load */
    uint64_t commits, write_errors, reconnects;
    uint64_t lag_p50_us, lag_p99_us; /* per-change apply lag since start (commit -> memory) */
    int breaker_state;          /* fw_breaker_state of the writes */
    uint64_t bad_rows;          /* face or change rows passed over as unusable (docs/gallery.md) */
} fw_galpg_info;

void fw_galpg_info_get(fw_galpg *p, fw_galpg_info *info);

/* 1 when the node may take traffic: loaded, and the lag is within max_lag_ms (while the
 * follower cannot reach the database it serves from memory and stays ready: no node can be
 * fresher then). Otherwise 0 with a short reason: "loading", "lagging 7300 ms", "cannot apply
 * changes: gallery full (N faces)", and for good (until a restart) "database behind this
 * node" or "database schema version N is newer than this build's (M): upgrade facewired".
 * why is "" when ready. Any thread (a mutex held for a string copy). */
int fw_galpg_ready(fw_galpg *p, char *why, size_t whylen);

/* Stop: new writes get SHUTTING_DOWN; writes already queued are finished (their callbacks run
 * on the loop later or inside this call), the threads are joined. With the loop attached, run
 * the loop afterwards: memory is freed when the uv_async has closed. Loop thread. */
void fw_galpg_close(fw_galpg *p);

#endif
