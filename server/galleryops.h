/*
 * galleryops.h — the gallery on the wire: ENROLL, IDENTIFY, DELETE, LIST and GALLERY_INFO
 * (layouts in docs/protocol.md) between compute.c and the gallery (server/gallery.h).
 *
 * Three ways a gallery request is served:
 *   - on a worker, as an ordinary scheduler job: IDENTIFY (embeds the faces of a JPEG, then
 *     one fw_gallery_search for all of them) and LIST (fw_gallery_list); both take the
 *     gallery's read lock, which the loop thread never does;
 *   - on a worker and then on the loop: ENROLL from a JPEG. The worker computes the one
 *     descriptor; the scheduler's handover hook queues the gallery write and the answer comes
 *     from the gallery's completion callback;
 *   - on the loop only ("direct"): ENROLL from a descriptor and DELETE queue a gallery write
 *     at once (the gallery never blocks the loop); GALLERY_INFO reads the gallery's atomics.
 *
 * Every queued gallery write is a fw_galreq owned by this module from the moment it is
 * queued until its completion callback ran: it outlives its connection (the connection's
 * pointer is cleared by fw_galops_conn_closed, the answer is then dropped), and shutdown
 * waits for the last one (fw_galops_pending) before the gallery is closed.
 *
 * With --gallery-url the system of record is PostgreSQL (server/galpg.h): the fw_gallery is
 * memory-only and only galpg's follower thread changes it; ENROLL and DELETE become galpg
 * writes (same fw_galreq, same completion path, answered after COMMIT). A database that cannot
 * be reached makes them UNAVAILABLE with retry_after_ms while IDENTIFY, LIST and VERIFY go on
 * from memory. Until the initial load has finished, the reads are refused (fw_galops_loading):
 * a partly loaded gallery would answer "not found" for faces that exist.
 *
 * Threading: everything here runs on the loop thread except the work functions, which run on
 * a pool thread and touch only their job, the read-only fw_gallery_env and the gallery's
 * thread-safe read calls.
 */
#ifndef FW_GALLERYOPS_H
#define FW_GALLERYOPS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "server/faceops.h"
#include "server/gallery.h"
#include "server/hist.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/sched.h"

/* LIST pages are cut at this many subjects whatever the limit (a 65535-subject page would be
 * ~9 MB of response); the client follows next_cursor. */
#define FW_GALOPS_LIST_PAGE_MAX 4096
/* retry_after_ms of a BUSY answer when the gallery's write queue is full: the writer empties
 * a batch of up to 512 requests per fdatasync, a few milliseconds each. */
#define FW_GALOPS_BUSY_RETRY_MS 100
/* retry_after_ms of the reads refused while a PostgreSQL gallery is still loading: a million
 * faces load in seconds, and a client that can reach another node goes there meanwhile. */
#define FW_GALOPS_LOADING_RETRY_MS 1000

typedef struct fw_galops fw_galops;

/* What a worker job of a gallery op may read (set at start, read-only afterwards). */
typedef struct fw_gallery_env {
    const fw_face_env *face;  /* the engines; face->engine NULL when the models did not load */
    fw_gallery *gallery;
    fw_galops *owner;         /* for the handover hook on the loop thread; workers never use it */
} fw_gallery_env;

typedef struct fw_galops_options {
    const char *data_dir;     /* --data; NULL: memory only */
    int repair;               /* --repair */
    uint32_t max_faces;       /* --gallery-max-faces, 0 = the gallery's default */
    const uint8_t *key;       /* --gallery-key, 32 bytes, NULL = plaintext (fw_gallery_options) */
    const char *gallery_url;  /* --gallery-url: PostgreSQL is the system of record; data_dir,
                                 repair and key must then be unset (copied by galpg) */
    uint32_t max_lag_ms;      /* --health-max-lag-ms: in sync while the lag is at most this */
    const fw_log *log;        /* not owned; must outlive the fw_galops (gallery threads use it) */
    const fw_face_env *face;  /* not owned; must outlive the fw_galops */
} fw_galops_options;

/* Open the gallery (blocks: loads it from disk), attach it to loop, log what recovery found.
 * With gallery_url: a memory-only gallery and the PostgreSQL store, which connects and loads
 * on its own threads (does not block). 0 and *out, or -1 with a one-line reason in err (a
 * corrupt log without --repair, a data directory another process holds, ...). */
int fw_galops_open(uv_loop_t *loop, const fw_galops_options *o, fw_galops **out, char *err,
                   size_t errlen);

/* The scheduler that counts and answers the requests; set once, before the first request. */
void fw_galops_set_sched(fw_galops *gx, fw_sched *sched);

/* The env for the worker jobs of gallery ops. */
const fw_gallery_env *fw_galops_env(const fw_galops *gx);

/* Called once, on the loop, each time the number of queued gallery writes drops to 0. */
void fw_galops_on_idle(fw_galops *gx, void (*cb)(void *arg), void *arg);
/* Writes queued and not yet answered (the disk gallery's and PostgreSQL's alike). */
uint32_t fw_galops_pending(const fw_galops *gx);

/* 1 while a PostgreSQL gallery has not finished its initial load (reads are then refused
 * UNAVAILABLE "gallery loading"); always 0 for the embedded gallery. Loop thread. */
int fw_galops_loading(fw_galops *gx);
/* For /health: 1 when the gallery is in sync (always for the embedded gallery), else 0 with
 * the reason in why ("gallery loading", "lagging 7300 ms", ...). Loop thread. */
int fw_galops_ready(fw_galops *gx, char *why, size_t whylen);

/* ---- the op table's functions (see fw_op in sched.h) --------------------------------------- */

/* Loop thread: 1 if the request is served without a worker (fw_galops_serve). Decided from
 * the body in the connection's buffer, before it is copied: ENROLL whose input is not a JPEG
 * (a descriptor, or a body that is malformed before its input kind), DELETE, GALLERY_INFO. */
int fw_galops_enroll_is_direct(const uint8_t *body, size_t len);
int fw_galops_always_direct(const uint8_t *body, size_t len);

/* Loop thread: a direct request (admission, parse, gallery call, answer now or later). */
void fw_galops_serve(fw_galops *gx, fw_conn *c, const fw_header *h, int op_index,
                     const uint8_t *body);

/* Loop thread, worker-job parse functions: 0, or -1 with a BAD_REQUEST message. */
int fw_galops_parse_enroll(fw_job *j, char *err, size_t errlen);
int fw_galops_parse_identify(fw_job *j, char *err, size_t errlen);
int fw_galops_parse_list(fw_job *j, char *err, size_t errlen);

/* Pool thread. */
void fw_galops_enroll_work(fw_job *j);    /* the one descriptor of the JPEG into j->out.body */
void fw_galops_identify_work(fw_job *j);
void fw_galops_list_work(fw_job *j);

/* Loop thread: the ENROLL job's worker produced a descriptor; queue the gallery write. */
void fw_galops_enroll_handover(fw_job *j);

/* ---- connections, shutdown, figures -------------------------------------------------------- */

/* The connection is going away: its queued writes go on, their answers are dropped. */
void fw_galops_conn_closed(fw_galops *gx, fw_conn *c);

/* Close the gallery (it finishes the writes already queued, inside this call) and free
 * everything. Call on the loop thread after the last worker job returned (the jobs read the
 * gallery) and after the scheduler is gone: no request is counted or answered from here on.
 * With PostgreSQL, the store is closed first (its threads joined, so nothing mutates the
 * gallery any more), then the gallery; a write whose completion the store delivers on a later
 * turn of the loop keeps this module's memory until it has run. The loop must run afterwards
 * so that the async handles close. */
void fw_galops_close(fw_galops *gx);

/* INFO lines and /metrics families (the PostgreSQL ones only with --gallery-url). */
void fw_galops_info(fw_galops *gx, fw_sb *b);
void fw_galops_metrics(fw_galops *gx, fw_sb *b);

#endif
