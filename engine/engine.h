/*
 * engine.h — facewire's face engine: JPEG in, faces out. No networking; usable on its own.
 *
 *   fw_engine_open()     load and check the models once (immutable, shared by all threads)
 *   fw_engine_ws_new()   one workspace per thread: every buffer a request needs, sized once
 *   fw_engine_analyze()  decode -> detect -> 68 landmarks -> align -> 128-d descriptor
 *   fw_descriptor_distance()  Euclidean distance; same person below 0.6 by convention
 *
 * Threading: a fw_engine is read-only after open and may be used by any number of threads at
 * once; a fw_engine_ws belongs to one thread at a time. Nothing here keeps global state.
 *
 * Errors: every call returns an fw_engine_err and, where it takes err/errlen, a one-line
 * human-readable reason. Hostile input (corrupt, truncated or huge JPEGs) is an error code,
 * never an exit or an abort.
 */
#ifndef FW_ENGINE_H
#define FW_ENGINE_H

#include <stddef.h>
#include <stdint.h>

typedef enum fw_engine_err {
    FWE_OK = 0,
    FWE_BAD_IMAGE,  /* not a JPEG, corrupt, truncated */
    FWE_TOO_LARGE,  /* dimensions or pixel count above the configured limit */
    FWE_NO_FACE,    /* used by callers that need a face (verify, enroll) */
    FWE_NOMEM,
    FWE_MODEL,      /* model files missing, truncated or not the expected architecture */
    FWE_ARG,        /* invalid argument from the caller */
    FWE_INTERNAL,
} fw_engine_err;

const char *fw_engine_strerror(fw_engine_err e);

typedef enum fw_align_mode {
    FW_ALIGN_SIMILARITY = 0, /* dlib-style chip: similarity transform to a mean face (default) */
    FW_ALIGN_BOX = 1,        /* face-api's own crop of the landmarks' bounding box */
} fw_align_mode;

typedef struct fw_engine_options {
    int detector_size;     /* multiple of 32; default 416 */
    float score_threshold; /* detector score threshold; default 0.5 */
    float iou_threshold;   /* NMS; default 0.4 */
    uint64_t max_pixels;   /* decode refuses larger pictures; default 40 000 000 */
    int max_dimension;     /* per side; default 20000 */
    int max_faces;         /* at most this many faces per picture; default 32 */
    fw_align_mode align;   /* default FW_ALIGN_SIMILARITY */
    int detect_mirror;     /* when the detector saw a borderline candidate (score between 0.6 x
                              and 1 x score_threshold), run it on the mirror image too and merge:
                              finds faces near the threshold, a second pass only for those
                              pictures; default 1 */
} fw_engine_options;

void fw_engine_options_default(fw_engine_options *o);

typedef struct fw_engine fw_engine;
typedef struct fw_engine_ws fw_engine_ws;

/* Load models from models_dir. opts may be NULL for defaults. On error *out is NULL. */
fw_engine_err fw_engine_open(const char *models_dir, const fw_engine_options *opts,
                             fw_engine **out, char *err, size_t errlen);
void fw_engine_close(fw_engine *e);
const fw_engine_options *fw_engine_get_options(const fw_engine *e);

/* Per-thread workspace; NULL on out of memory. Free before closing its engine. */
fw_engine_ws *fw_engine_ws_new(const fw_engine *e);
void fw_engine_ws_free(fw_engine_ws *ws);

/* Pause points: fw_engine_analyze() calls fn(arg), from the thread running it, between
 * bounded pieces of its work: after the decode and the resize, between the bands and layers
 * of the networks and the chip warp (~0.4 ms apart at most for the eval pictures; docs/engine.md).
 * A caller that shares CPUs with latency-sensitive threads can give its CPU away there (the
 * server's workers call sched_yield() at most every --worker-yield-us); fn must not use ws,
 * and the results do not depend on it. fn NULL (the default) turns them off. */
void fw_engine_ws_set_pause(fw_engine_ws *ws, void (*fn)(void *arg), void *arg);

typedef struct fw_face {
    float box[4];          /* x, y, w, h in picture pixels (after EXIF orientation) */
    float score;           /* detector score */
    float landmarks[136];  /* 68 (x, y) points in picture pixels */
    float descriptor[128]; /* valid only when the call asked for descriptors */
} fw_face;

enum { FW_WANT_LANDMARKS = 1, FW_WANT_DESCRIPTORS = 2 };

typedef struct fw_timings {
    double decode_ms, detect_ms, landmarks_ms, describe_ms, total_ms;
} fw_timings;

/* Analyse one JPEG. want: FW_WANT_* bits (descriptors imply landmarks). Faces, best score
 * first, go to faces[0..max_faces-1]; *nfaces gets the count (0 is not an error here).
 * width/height/timings may be NULL. The jpeg buffer is only read. */
fw_engine_err fw_engine_analyze(const fw_engine *e, fw_engine_ws *ws,
                                const uint8_t *jpeg, size_t len, int want,
                                fw_face *faces, int max_faces, int *nfaces,
                                int *width, int *height, fw_timings *timings,
                                char *err, size_t errlen);

float fw_descriptor_distance(const float *a, const float *b);

/* Read a whole regular file of at most max bytes (pictures, manifests, weights). Returns a
 * malloc'd buffer the caller frees, with a NUL after the len bytes (so text can be parsed in
 * place), or NULL with a one-line reason in err, prefixed by "label: " when label is given. */
unsigned char *fw_read_file(const char *path, size_t max, size_t *len, const char *label,
                            char *err, size_t errlen);

#endif
