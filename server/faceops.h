/*
 * faceops.h — DETECT, EMBED and VERIFY on the wire: body parsing (loop thread), the work
 * functions that call the engine (worker threads) and response encoding. Body layouts are in
 * docs/protocol.md.
 *
 * Threading: the parse functions run on the loop thread and only read the job's body copy.
 * The work functions run on a pool thread and use exactly what the job carries: its args,
 * the shared read-only fw_face_env (engines are immutable once open) and the worker slot's
 * fw_face_slot (a workspace belongs to one slot, and a slot to one running job at a time).
 */
#ifndef FW_FACEOPS_H
#define FW_FACEOPS_H

#include <stddef.h>

#include "engine/engine.h"
#include "engine/pause.h"
#include "server/sched.h"

#define FW_VERIFY_DEFAULT_THRESHOLD 0.6f

/* How often a face job offers its CPU back, by default (--worker-yield-us; faceops.c says
 * why). */
#define FW_WORKER_YIELD_US_DEFAULT 200

/* Shared by every face job; owned by compute. engine is NULL when the models did not load;
 * engine_small (degraded mode's smaller detector input) may be NULL too. */
typedef struct fw_face_env {
    const fw_engine *engine;
    const fw_engine *engine_small;
    float verify_threshold;
    uint32_t worker_yield_us;  /* --worker-yield-us; 0 = never */
} fw_face_env;

/* The engine's pause points on one slot (engine/pause.h): touched only by the worker that
 * holds the slot. */
typedef struct fw_face_yield {
    uint64_t every_ns;  /* worker_yield_us in ns; 0 = never */
    uint64_t last_ns;   /* CLOCK_MONOTONIC of the last hand-back (or of the slot's making) */
    uint32_t count;     /* hand-backs not yet added to a job's fw_job_out.yields */
} fw_face_yield;

/* Per worker slot: workspaces for both engines and the faces buffer. Owned by compute; used
 * by the one job that holds the slot. */
typedef struct fw_face_slot {
    fw_engine_ws *ws;
    fw_engine_ws *ws_small;  /* made by the first degraded job on this slot; may stay NULL */
    fw_face *faces;  /* max_faces entries */
    int max_faces;
    fw_face_yield yield;  /* the pause hook's state; both workspaces point at it */
} fw_face_slot;

/* NULL on out of memory. Without env->engine (no models) the slot holds only its pause state
 * (ws, ws_small and faces NULL): the gallery ops a model-less node serves still yield. */
fw_face_slot *fw_face_slot_new(const fw_face_env *env);
void fw_face_slot_free(fw_face_slot *fs);

/* Loop thread: 0, or -1 with a BAD_REQUEST message. DETECT and EMBED share a layout. */
int fw_faceops_parse_image(fw_job *j, char *err, size_t errlen);
int fw_faceops_parse_verify(fw_job *j, char *err, size_t errlen);

/* Every descriptor component a client sends must be finite and within this bound, so that
 * distances (and the gallery's norms) stay finite in float. */
#define FW_DESCRIPTOR_VALUE_MAX 1.0e4f

/* One `input` field (docs/protocol.md: u8 kind, then a JPEG or 128 floats), shared by VERIFY,
 * ENROLL, IDENTIFY and the streams. `what` starts every error message ("VERIFY: input a").
 * in->jpeg points into r's buffer. 0, or -1 with a message in err. */
int fw_faceops_parse_input(fw_reader *r, const char *what, fw_input *in, char *err, size_t errlen);
/* 1 if the parsed job needs the engine (VERIFY of two descriptors does not, nor do the
 * gallery ops without a JPEG input). */
int fw_faceops_needs_engine(const fw_job *j);

/* Pool thread, for ops that need the descriptors of every face in a JPEG (the gallery ops):
 * detect and describe them with env's engine (the smaller detector in degraded mode) into
 * the job's slot, best score first, at most the engine's max_faces. Returns the count with
 * *faces pointing into the slot (valid until the job returns), or -1 with j->out set
 * (BAD_IMAGE, INTERNAL). The job's slot must hold a fw_face_slot. */
int fw_faceops_describe(fw_job *j, const fw_face_env *env, const uint8_t *jpeg, uint32_t len,
                        const fw_face **faces);

/* The same with the engine's `want` bits (FW_WANT_*; 0 = boxes and scores only) and the
 * picture's size (width/height may be NULL). Used by the camera streams (streams.c). */
int fw_faceops_analyze(fw_job *j, const fw_face_env *env, const uint8_t *jpeg, uint32_t len, int want,
                       const fw_face **faces, int *width, int *height);

/* Pool thread, for other long computations in a face job (the gallery search): the job
 * slot's pause hook, the one the engine calls (faceops.c says why), to pass to them; {NULL,
 * NULL} (no pauses) when the job has no fw_face_slot (a server whose models did not load) or
 * --worker-yield-us is 0. Valid while the job runs. After the call, fw_faceops_take_yields
 * adds the slot's hand-backs to j->out.yields. */
fw_pause fw_faceops_pause(fw_job *j);
void fw_faceops_take_yields(fw_job *j);

/* Pool thread. */
void fw_faceops_detect_work(fw_job *j);
void fw_faceops_embed_work(fw_job *j);
void fw_faceops_verify_work(fw_job *j);

#endif
