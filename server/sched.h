/*
 * sched.h — facewired's compute scheduler: every compute request becomes a job that waits in
 * a bounded queue per priority, then runs on one of `workers` slots of the libuv thread pool.
 *
 * What it guarantees (the reasons are in sched.c):
 *   - at most `workers` jobs run at once; each running job holds one worker slot (and the
 *     slot's context, e.g. an engine workspace) from dispatch until its worker returns;
 *   - a job that cannot be queued is answered at once (BUSY / UNAVAILABLE), in the same loop
 *     iteration; nothing ever waits for compute to learn that it was refused;
 *   - a job never starts after its deadline; a running job is answered DEADLINE_EXCEEDED by a
 *     timer at its deadline, and whatever its worker produces later is discarded;
 *   - one circuit breaker per op class;
 *   - a closed connection's waiting jobs are freed at once, its running jobs' results are
 *     discarded when their workers return. The scheduler never touches a fw_conn after
 *     fw_sched_conn_closed() for it.
 *
 * Everything here runs on the loop thread except an op's work function, which runs on a pool
 * thread and touches only its job: the request fields (read-only), the slot context, the
 * shared read-only env, and the job's `out` block (which the loop reads only after the
 * worker has returned).
 */
#ifndef FW_SCHED_H
#define FW_SCHED_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "fw_proto.h"
#include "server/breaker.h"
#include "server/compute.h"
#include "server/hist.h"

typedef struct fw_sched fw_sched;
typedef struct fw_job fw_job;

/* A face-op input: a JPEG (kind 0) or a 128-float descriptor (kind 1, already decoded). */
enum { FW_INPUT_JPEG = 0, FW_INPUT_DESCRIPTOR = 1 };
typedef struct fw_input {
    uint8_t kind;
    const uint8_t *jpeg; /* kind 0: points into the job's body copy */
    uint32_t len;
    float desc[128];     /* kind 1 */
} fw_input;

/* The parsed request, filled on the loop thread by the op's parse function. Pointers point
 * into the job's own body copy, so they live exactly as long as the job. */
typedef union fw_job_args {
    uint32_t sleep_ms;                     /* TEST_SLEEP */
    struct { const uint8_t *jpeg; uint32_t len; } image;   /* DETECT, EMBED */
    struct { fw_input in[2]; float threshold; } verify;    /* VERIFY */
    struct {                                               /* ENROLL */
        const char *subject; uint16_t subject_len;
        const uint8_t *meta; uint32_t meta_len;
        fw_input in;
    } enroll;
    struct { fw_input in; uint16_t k; float max_distance; } identify;  /* IDENTIFY */
    struct { const char *cursor; uint16_t cursor_len; uint16_t limit; } list;  /* LIST */
    struct {                                               /* a stream frame (streams.c) */
        const uint8_t *jpeg; uint32_t len;  /* the stream's work buffer, see streams.c */
        uint8_t mode;                       /* FW_STREAM_MODE_* */
        uint16_t min_face;                  /* faces narrower or lower are left out */
        float max_distance;                 /* identify: matches at or beyond it are left out */
        uint32_t sleep_ms;                  /* test mode */
    } stream;
} fw_job_args;

/* What the worker hands back. Written only by the worker; read by the loop after it returned. */
typedef struct fw_job_out {
    uint16_t status;
    uint8_t *body;     /* OK: malloc'd response body (the job owns it), may be NULL */
    size_t len;
    char msg[192];     /* status != OK: the error message */
    uint32_t yields;   /* times the job offered its CPU back (faceops.c, --worker-yield-us) */
} fw_job_out;

/* One worker slot. ctx is the caller's per-slot context (see fw_sched_init). */
typedef struct fw_slot {
    int index;
    void *ctx;
} fw_slot;

typedef struct fw_op {
    uint8_t opcode;
    const char *name;     /* "DETECT"; also the metrics label */
    int cls;              /* breaker class index */
    int needs_engine;     /* refused UNAVAILABLE when the models are not loaded */
    int test_only;        /* only with --enable-test-ops */
    /* Loop thread: check j->body and fill j->args. 0, or -1 with a BAD_REQUEST message. */
    int (*parse)(fw_job *j, char *err, size_t errlen);
    /* Pool thread: do the work, fill j->out. */
    void (*work)(fw_job *j);
    /* Optional, loop thread: called instead of answering when the worker returned with
     * status OK and the request still waits for its answer (not timed out, not shut down;
     * its connection may have closed: j->conn is then NULL). The op takes the request over:
     * from then on it answers it (fw_sched_answer_direct), reports the breaker outcome with
     * j->probe (fw_sched_record_outcome) and calls fw_conn_job_finished(j->conn) when it
     * answers a connection that is still there. It must copy what it keeps: the scheduler
     * frees the job when the hook returns. Used by ENROLL from a JPEG: the worker computes
     * the descriptor, the gallery write is queued here. */
    void (*handover)(fw_job *j);
    /* Optional, for compute's routing only (the scheduler never calls it): 1 if this request
     * is served on the loop thread without a job (see galleryops.h), decided from the body
     * before it is copied. Ops for which it always says 1 have no parse or work function. */
    int (*direct)(const uint8_t *body, size_t len);
} fw_op;

enum fw_job_state { FW_JOB_NEW = 0, FW_JOB_WAITING, FW_JOB_RUNNING };

/* An owned job has no client request behind it: a camera stream's frame analysis
 * (server/streams.c). It is queued, dispatched, timed and counted like any job, but never
 * answered on a connection and never counted in a connection's jobs; the scheduler calls its
 * owner instead, on the loop thread:
 *   start(j)   when a worker slot is about to run it. The owner fills j->args now, so what
 *              runs is chosen at dispatch (a stream's newest frame), not at submission.
 *              Returns 0 to run it, or -1 when there is nothing to run: the job is then freed
 *              without a finish call.
 *   finish(j, status)  exactly once for a job that was submitted and not cancelled or
 *              dropped by start: when the scheduler lets go of it (its worker returned, or
 *              it never ran), just before freeing it. status OK: j->out holds the result;
 *              otherwise why there is none (the work's own error, BUSY / UNAVAILABLE /
 *              SHUTTING_DOWN when refused or cut off, DEADLINE_EXCEEDED). It may run inside
 *              fw_sched_submit (a refused job). It may submit the owner's next job, but
 *              not after a refusal (BUSY, UNAVAILABLE, SHUTTING_DOWN, or any finish of a job
 *              whose start() never ran): that finish can come from inside fw_sched_submit,
 *              and resubmitting there would loop.
 * After fw_sched_stop neither is called (the owner frees its state when the scheduler
 * reports stopped). */
typedef struct fw_job_owner {
    int (*start)(fw_job *j);
    void (*finish)(fw_job *j, uint16_t status);
} fw_job_owner;

struct fw_job {
    /* ---- set on the loop thread before queueing, read-only afterwards ------------------- */
    fw_header hdr;
    const fw_op *op;
    int op_index;
    const void *env;        /* shared read-only environment of the ops (the engines) */
    int degraded;           /* degraded mode was on when it was admitted */
    uint32_t budget_ms;     /* deadline budget from admission, 0 = none */
    fw_job_args args;
    uint8_t *body;          /* the request body, copied (trailing storage of this struct) */
    size_t body_len;
    fw_slot *slot;          /* set at dispatch, before the worker starts */

    /* ---- written by the worker -------------------------------------------------------- */
    fw_job_out out;

    /* ---- scheduler private, loop thread only ------------------------------------------- */
    fw_sched *sched;
    fw_conn *conn;          /* NULL once its connection closed (results discarded) */
    uv_work_t work;
    fw_job *prev, *next;    /* in one of: a priority queue, the running list */
    size_t heap_i;          /* index in the deadline heap, SIZE_MAX when not in it */
    uint64_t deadline;      /* uv_now() ms; 0 = none */
    uint64_t t_queued_us, t_started_us;
    int state;              /* enum fw_job_state */
    int answered;           /* a response went out (or it was dropped): the result is late */
    int probe;              /* admitted as a half-open breaker probe */

    /* ---- owned jobs (see fw_job_owner), set before submission ---------------------------- */
    const fw_job_owner *owner;  /* NULL: an ordinary request */
    void *owner_arg;            /* the owner's, e.g. its stream */
    uint16_t owner_status;      /* scheduler private: the status finish() will get */
};

/* A job with room for a body of body_len bytes (copied by the caller into j->body). NULL on
 * out of memory. Freed by the scheduler once submitted, by fw_job_free() otherwise. */
fw_job *fw_job_new(size_t body_len);
void fw_job_free(fw_job *j);

typedef struct fw_sched_config {
    int workers;
    int queue_cap[FW_PRIO_COUNT];  /* index = priority */
    uint64_t queue_max_bytes;      /* request bytes held by waiting jobs, all queues */
    int starvation_limit;          /* anti-starvation: see sched.c */
    fw_breaker_config breaker;
    const struct fw_log *log;      /* breaker transitions; NULL = stderr */
} fw_sched_config;

typedef struct fw_op_stats {
    uint64_t requests;                     /* every request for the op, answered at once or not */
    uint64_t responses[FW_STATUS_COUNT];   /* responses sent, by status */
    uint64_t expired_in_queue;             /* deadline passed while waiting: never ran */
    uint64_t timed_out;                    /* answered at the deadline while running */
    uint64_t dropped;                      /* waiting when the connection closed */
    uint64_t orphaned;                     /* running when the connection closed */
    uint64_t yields;                       /* fw_job_out.yields of the jobs that returned */
    uint32_t waiting[FW_PRIO_COUNT];
    uint32_t running;
    fw_hist wait_us;                       /* queue wait of the jobs that started */
    fw_hist run_us;                        /* worker time of the jobs that finished */
    uint64_t run_ewma_us;                  /* moving average of the same (admission estimates) */
    uint64_t run_dev_us;                   /* moving mean deviation from it (admission margin) */
} fw_op_stats;

typedef struct fw_class_info {
    const char *name;
    fw_breaker breaker;
} fw_class_info;

/* ops[0..nops) and class_names[0..nclasses) must outlive the scheduler. slot_ctx has one
 * entry per worker (may be NULL); the scheduler does not own them. */
int fw_sched_init(fw_sched **out, uv_loop_t *loop, const fw_sched_config *cfg,
                  const fw_op *ops, int nops, const char *const *class_names, int nclasses,
                  void *const *slot_ctx, char *err, size_t errlen);

/* The checks of fw_sched_submit that need no job (shutting down, queue full, shedding, byte
 * budget, expected wait beyond budget_ms, breaker open), so that a request about to be refused is refused before its body is
 * copied. Returns 0 if the request may go on, -1 after answering it. Counts nothing but the
 * response. */
int fw_sched_precheck(fw_sched *s, fw_conn *c, const fw_header *h, int op_index,
                      uint32_t budget_ms);

/* Admit or refuse a job (ownership passes to the scheduler either way). j->hdr, op, op_index,
 * env, degraded, budget_ms and args must be set. The caller counts the request in
 * fw_sched_op_stats_mut()->requests. */
void fw_sched_submit(fw_sched *s, fw_conn *c, fw_job *j);

/* Owned jobs (see fw_job_owner): j->owner and owner_arg set, c NULL in fw_sched_submit.
 * Remove a waiting owned job without running it; freed, no finish call. Returns 0, or -1
 * when it is already running (the owner then waits for its finish). */
int fw_sched_cancel(fw_sched *s, fw_job *j);

/* Answer a request at once without a job (BAD_REQUEST, UNAVAILABLE, ...), counted for op.
 * retry_after_ms is appended (u32) when has_retry is set. */
void fw_sched_answer_now(fw_sched *s, fw_conn *c, const fw_header *h, int op_index,
                         uint16_t status, const char *msg, int has_retry, uint32_t retry_after_ms);

/* ---- requests served without a worker (gallery writes, GALLERY_INFO) ----------------------
 * They skip the worker queues (queue caps, byte budget and run-time estimates are about
 * worker time) but not the rest of admission: SHUTTING_DOWN while draining, low priority
 * refused in degraded mode, and the op's circuit breaker. Returns 0 when admitted (*probe
 * says whether as a half-open probe: report the outcome with it), -1 after answering. */
int fw_sched_admit_direct(fw_sched *s, fw_conn *c, const fw_header *h, int op_index, int *probe);

/* Answer a request the scheduler does not hold (admitted direct, or handed over): OK with
 * body, or an error status with msg (and retry_after_ms when has_retry). Counted for op.
 * Does not touch the connection's job count. */
void fw_sched_answer_direct(fw_sched *s, fw_conn *c, const fw_header *h, int op_index,
                            uint16_t status, const void *body, size_t len, const char *msg,
                            int has_retry, uint32_t retry_after_ms);

/* The outcome of a direct or handed-over request for its op's breaker. failure: the
 * component failed (INTERNAL); probe: as admitted. cancel: no outcome will come (refused
 * before it ran), which only matters for a probe. */
void fw_sched_record_outcome(fw_sched *s, int op_index, int failure, int probe);
void fw_sched_cancel_outcome(fw_sched *s, int op_index, int probe);

void fw_sched_conn_closed(fw_sched *s, fw_conn *c);
void fw_sched_set_degraded(fw_sched *s, int on);

/* Stop dispatching new work after grace_ms: see fw_compute_drain(). */
void fw_sched_drain(fw_sched *s, uint32_t grace_ms, void (*on_drained)(void *arg), void *arg);

/* Drop everything and close handles. on_stopped(arg) runs once the last handle closed and the
 * last worker returned: only then may the caller free the ops' env and slot contexts. */
void fw_sched_stop(fw_sched *s, void (*on_stopped)(void *arg), void *arg);

/* Read-only views for INFO and /metrics. */
const fw_op_stats *fw_sched_op_stats(const fw_sched *s, int op_index);
fw_op_stats *fw_sched_op_stats_mut(fw_sched *s, int op_index);
const fw_class_info *fw_sched_class(const fw_sched *s, int cls);
int fw_sched_nclasses(const fw_sched *s);
uint32_t fw_sched_queue_len(const fw_sched *s, int prio);
int fw_sched_running(const fw_sched *s);
int fw_sched_workers(const fw_sched *s);
uint64_t fw_sched_queued_bytes(const fw_sched *s);
int fw_sched_degraded(const fw_sched *s);
const fw_sched_config *fw_sched_get_config(const fw_sched *s);

#endif
