/*
 * streams.h — camera streams (issue 8): STREAM_OPEN / STREAM_FRAME / STREAM_CLOSE on the wire
 * (layouts in docs/protocol.md, scheduling in docs/scheduling.md) and the per-stream frame
 * rings between the connection layer and the scheduler.
 *
 * A camera pushes frames faster than two cores analyse them. Each stream keeps its newest
 * frames in a ring of preallocated slots (a frame is copied into a slot; a slot's buffer only
 * grows, so the steady state allocates nothing per received frame), drops the oldest when the
 * ring is full, and has at most one job waiting or running in the scheduler. That job picks
 * its frame when a worker takes it (fw_job_owner.start): the newest one, the older ones are
 * dropped as superseded (policy "ring"), or the oldest one (policy "fifo", for recorded video).
 * Results and problems come back as EVENT frames (opcode FW_OP_STREAM_EVENT, request_id 0).
 *
 * Memory: every slot buffer and every stream's work buffer is counted against one global cap
 * (--stream-memory); a frame that would need more is dropped (reason "memory"), nothing grows
 * past it.
 *
 * Ownership and lifetimes: a fw_streams is owned by compute. A stream belongs to it from
 * STREAM_OPEN until it is closed (STREAM_CLOSE, or its connection closed) and no job of it is
 * running; a stream closed while its job runs is kept, detached from its connection, until
 * the job finishes (the worker reads the stream's work buffer). fw_streams_free() frees every
 * stream, and must only be called once the scheduler has stopped (no worker running).
 *
 * Threading: everything runs on the loop thread except fw_streams_work(), which runs on a
 * pool thread and touches only its job (the work buffer it was handed, the slot's engine
 * workspace, the read-only gallery env).
 */
#ifndef FW_STREAMS_H
#define FW_STREAMS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "server/compute.h"
#include "server/galleryops.h"
#include "server/metrics.h"
#include "server/sched.h"

enum { FW_STREAM_MODE_DETECT = 0, FW_STREAM_MODE_IDENTIFY = 1, FW_STREAM_MODE_TEST = 2 };
enum { FW_STREAM_POLICY_RING = 0, FW_STREAM_POLICY_FIFO = 1 };
enum { FW_STREAM_EV_FACES = 1, FW_STREAM_EV_STATS = 2, FW_STREAM_EV_ERROR = 3 };

#define FW_STREAM_RING_MAX 64         /* frames per ring */
#define FW_STREAM_NAME_MAX 64         /* bytes of a stream name */
#define FW_STREAMS_PER_CONN 16
#define FW_STREAMS_MAX 256            /* open streams, all connections */
#define FW_STREAM_MEMORY_DEFAULT (64ull << 20)
#define FW_STREAM_TEST_SLEEP_MAX_MS 10000
/* Size of the stats record (STREAM_CLOSE's response, and a stats event after its kind and
 * stream id): see docs/protocol.md. */
#define FW_STREAM_STATS_LEN (1 + 10 * 8 + 4 + 4 + 1)

typedef struct fw_streams fw_streams;

typedef struct fw_streams_options {
    uint64_t memory_cap;           /* --stream-memory: bytes of frame buffers, all streams */
    int enable_test_ops;           /* mode "test" is allowed */
    int have_engine;               /* the models loaded (detect/identify need them) */
    fw_sched *sched;               /* not owned; outlives the fw_streams */
    const fw_op *frame_op;         /* the op table's STREAM_FRAME row: the jobs' op */
    int frame_op_index, open_op_index, close_op_index;
    const fw_gallery_env *env;     /* the jobs' env (engines and gallery); not owned */
} fw_streams_options;

/* NULL on out of memory. */
fw_streams *fw_streams_new(const fw_streams_options *o);
/* See the lifetime rule above. NULL is a no-op. */
void fw_streams_free(fw_streams *sx);

/* Loop thread: a STREAM_OPEN, STREAM_FRAME or STREAM_CLOSE request (body still in the
 * connection's buffer; copied where kept). OPEN and CLOSE are answered now; FRAME never is. */
void fw_streams_serve(fw_streams *sx, fw_conn *c, const fw_header *h, const uint8_t *body);

/* The connection is going away: close its streams (no events, no answers). */
void fw_streams_conn_closed(fw_streams *sx, fw_conn *c);

/* Pool thread: the STREAM_FRAME op's work function. */
void fw_streams_work(fw_job *j);

/* INFO lines and /metrics families (per-stream counters and latency). */
void fw_streams_info(fw_streams *sx, fw_sb *b);
void fw_streams_metrics(fw_streams *sx, fw_sb *b);

#endif
