/*
 * faceops.c — DETECT / EMBED / VERIFY (see faceops.h and docs/protocol.md).
 *
 * Parsing is strict: every length is checked against what is left of the body before use,
 * trailing bytes are an error (a client that sends more than it means to has a bug worth
 * hearing about), and each message names the op and the field so the client can fix it.
 */
#include "server/faceops.h"

#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- parsing (loop thread) ----------------------------------------------------------------- */

int fw_faceops_parse_image(fw_job *j, char *err, size_t errlen)
{
    const char *name = j->op->name;
    fw_reader r;
    fw_reader_init(&r, j->body, j->body_len);
    uint32_t n = 0;
    const uint8_t *jpeg = fw_get_bytes(&r, UINT32_MAX, &n);
    if (!jpeg) {
        snprintf(err, errlen, "%s: truncated body", name);
        return -1;
    }
    if (n == 0) {
        snprintf(err, errlen, "%s: empty JPEG", name);
        return -1;
    }
    if (fw_reader_left(&r)) {
        snprintf(err, errlen, "%s: %zu trailing bytes after the JPEG", name, fw_reader_left(&r));
        return -1;
    }
    j->args.image.jpeg = jpeg;
    j->args.image.len = n;
    return 0;
}

int fw_faceops_parse_input(fw_reader *r, const char *what, fw_input *in, char *err, size_t errlen)
{
    if (fw_reader_left(r) < 1) {
        snprintf(err, errlen, "%s: truncated body (input expected)", what);
        return -1;
    }
    in->kind = fw_get_u8(r);
    if (in->kind == FW_INPUT_JPEG) {
        uint32_t n = 0;
        in->jpeg = fw_get_bytes(r, UINT32_MAX, &n);
        if (!in->jpeg) {
            snprintf(err, errlen, "%s: truncated JPEG", what);
            return -1;
        }
        if (n == 0) {
            snprintf(err, errlen, "%s: empty JPEG", what);
            return -1;
        }
        in->len = n;
        return 0;
    }
    if (in->kind == FW_INPUT_DESCRIPTOR) {
        if (fw_reader_left(r) < 128 * 4) {
            snprintf(err, errlen, "%s: truncated descriptor", what);
            return -1;
        }
        for (int i = 0; i < 128; i++) {
            in->desc[i] = fw_get_f32(r);
            if (!isfinite(in->desc[i]) || fabsf(in->desc[i]) > FW_DESCRIPTOR_VALUE_MAX) {
                snprintf(err, errlen, "%s: descriptor value %d is not a finite number within +-%g",
                         what, i, (double)FW_DESCRIPTOR_VALUE_MAX);
                return -1;
            }
        }
        return 0;
    }
    snprintf(err, errlen, "%s: input kind %u unknown (0 JPEG, 1 descriptor)", what,
             (unsigned)in->kind);
    return -1;
}

int fw_faceops_parse_verify(fw_job *j, char *err, size_t errlen)
{
    const fw_face_env *env = j->env;
    fw_reader r;
    fw_reader_init(&r, j->body, j->body_len);
    if (fw_faceops_parse_input(&r, "VERIFY: input a", &j->args.verify.in[0], err, errlen) != 0 ||
        fw_faceops_parse_input(&r, "VERIFY: input b", &j->args.verify.in[1], err, errlen) != 0)
        return -1;
    if (fw_reader_left(&r) < 5) {
        snprintf(err, errlen, "VERIFY: truncated body (has_threshold and threshold missing)");
        return -1;
    }
    uint8_t has = fw_get_u8(&r);
    float thr = fw_get_f32(&r);
    if (has > 1) {
        snprintf(err, errlen, "VERIFY: has_threshold must be 0 or 1, not %u", (unsigned)has);
        return -1;
    }
    if (has && !(isfinite(thr) && thr > 0)) {
        snprintf(err, errlen, "VERIFY: threshold must be a positive finite number");
        return -1;
    }
    if (fw_reader_left(&r)) {
        snprintf(err, errlen, "VERIFY: %zu trailing bytes", fw_reader_left(&r));
        return -1;
    }
    j->args.verify.threshold = has ? thr : env->verify_threshold;
    return 0;
}

int fw_faceops_needs_engine(const fw_job *j)
{
    switch (j->op->opcode) {
    case FW_OP_VERIFY:
        return j->args.verify.in[0].kind == FW_INPUT_JPEG || j->args.verify.in[1].kind == FW_INPUT_JPEG;
    case FW_OP_ENROLL:
        return j->args.enroll.in.kind == FW_INPUT_JPEG;
    case FW_OP_IDENTIFY:
        return j->args.identify.in.kind == FW_INPUT_JPEG;
    case FW_OP_LIST:
        return 0;
    default:
        return 1;
    }
}

/* ---- work (pool thread) -------------------------------------------------------------------- */

static void job_fail(fw_job *j, uint16_t status, const char *prefix, const char *msg)
{
    j->out.status = status;
    snprintf(j->out.msg, sizeof j->out.msg, "%s%s", prefix, msg);
}

static uint16_t status_of(fw_engine_err e)
{
    switch (e) {
    case FWE_OK: return FW_STATUS_OK;
    case FWE_BAD_IMAGE:
    case FWE_TOO_LARGE: return FW_STATUS_BAD_IMAGE;
    case FWE_NO_FACE: return FW_STATUS_NO_FACE;
    default: return FW_STATUS_INTERNAL;
    }
}

/* ---- handing the CPU back (pool thread) ---------------------------------------------------- */

/*
 * A face job is 50-100 ms of CPU on a worker, and there are as many workers as cores, so
 * under load every core runs one. When the event loop's thread wakes (a request to answer
 * BUSY, a result to send), Linux's scheduler (EEVDF) lets the running worker finish its
 * protected slice first, and only notices at the next scheduler tick: up to 4 ms with the
 * common HZ=250, far above the 1 ms we promise for an answer that needs no compute. Nice
 * levels do not shorten that wait (the slice is protected whatever the weight), and
 * SCHED_IDLE workers made it worse: the loop then waits on libuv's queue mutex held by a
 * worker that no longer gets the CPU. So the workers give the CPU back themselves: the engine
 * (and the gallery search, through fw_faceops_pause) calls this between bounded pieces of
 * work (engine/pause.h: ~0.3 ms apart), and every worker_yield_us it calls sched_yield(),
 * which lets anything runnable on this core run first and returns at once when nothing is.
 * The cost is a clock read per pause point and a ~1.5 us syscall per yield (<1% at 200 us);
 * what it buys is in docs/performance.md.
 */
static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_engine_pause(void *arg)
{
    fw_face_yield *y = arg;
    uint64_t now = monotonic_ns();
    if (now - y->last_ns < y->every_ns)
        return;
    sched_yield();
    y->last_ns = monotonic_ns(); /* a full interval of work after we have the CPU again */
    y->count++;
}

/* The slot's pause hook: none when the slot never yields (--worker-yield-us 0). */
static fw_pause slot_pause(fw_face_slot *fs)
{
    fw_pause p = { NULL, NULL };
    if (fs && fs->yield.every_ns) {
        p.fn = on_engine_pause;
        p.arg = &fs->yield;
    }
    return p;
}

static void set_pause(fw_face_slot *fs, fw_engine_ws *ws)
{
    fw_pause p = slot_pause(fs);
    if (ws && p.fn)
        fw_engine_ws_set_pause(ws, p.fn, p.arg);
}

/* After an engine call: the job's share of the slot's hand-backs. */
static void take_yields(fw_job *j, fw_face_slot *fs)
{
    j->out.yields += fs->yield.count;
    fs->yield.count = 0;
}

fw_pause fw_faceops_pause(fw_job *j)
{
    return slot_pause(j->slot ? j->slot->ctx : NULL);
}

void fw_faceops_take_yields(fw_job *j)
{
    fw_face_slot *fs = j->slot ? j->slot->ctx : NULL;
    if (fs)
        take_yields(j, fs);
}

/* ---- engine calls (pool thread) ----------------------------------------------------------- */

/* The engine and workspace this job uses: the small detector in degraded mode. The small
 * engine's workspace is made on the first degraded job a slot runs (here, on the worker: the
 * slot belongs to this job until it returns), so a server that never degrades never pays for
 * it; if it cannot be made, the job runs on the full-size detector. */
static void pick_engine(const fw_job *j, const fw_face_env *env, const fw_engine **e, fw_engine_ws **ws)
{
    fw_face_slot *fs = j->slot->ctx;
    if (j->degraded && env->engine_small && !fs->ws_small) {
        fs->ws_small = fw_engine_ws_new(env->engine_small);
        set_pause(fs, fs->ws_small);
    }
    if (j->degraded && env->engine_small && fs->ws_small) {
        *e = env->engine_small;
        *ws = fs->ws_small;
    } else {
        *e = env->engine;
        *ws = fs->ws;
    }
}

static void analyze_work(fw_job *j, int want)
{
    const fw_face *faces;
    int w = 0, h = 0;
    int n = fw_faceops_analyze(j, j->env, j->args.image.jpeg, j->args.image.len, want, &faces, &w, &h);
    if (n < 0)
        return; /* j->out set */
    int desc = (want & FW_WANT_DESCRIPTORS) != 0;
    size_t per = (4 + 1 + 136 + (desc ? 128 : 0)) * 4;
    size_t cap = 10 + (size_t)n * per;
    uint8_t *body = malloc(cap);
    if (!body) {
        job_fail(j, FW_STATUS_INTERNAL, "", "out of memory");
        return;
    }
    fw_writer wr;
    fw_writer_init(&wr, body, cap);
    fw_put_u32(&wr, (uint32_t)w);
    fw_put_u32(&wr, (uint32_t)h);
    fw_put_u16(&wr, (uint16_t)n);
    for (int i = 0; i < n; i++) {
        const fw_face *f = &faces[i];
        for (int k = 0; k < 4; k++)
            fw_put_f32(&wr, f->box[k]);
        fw_put_f32(&wr, f->score);
        for (int k = 0; k < 136; k++)
            fw_put_f32(&wr, f->landmarks[k]);
        if (desc)
            for (int k = 0; k < 128; k++)
                fw_put_f32(&wr, f->descriptor[k]);
    }
    j->out.status = FW_STATUS_OK;
    j->out.body = body;
    j->out.len = wr.len;
}

void fw_faceops_detect_work(fw_job *j)
{
    analyze_work(j, FW_WANT_LANDMARKS);
}

void fw_faceops_embed_work(fw_job *j)
{
    analyze_work(j, FW_WANT_DESCRIPTORS);
}

int fw_faceops_analyze(fw_job *j, const fw_face_env *env, const uint8_t *jpeg, uint32_t len, int want,
                       const fw_face **faces, int *width, int *height)
{
    fw_face_slot *fs = j->slot->ctx;
    const fw_engine *e;
    fw_engine_ws *ws;
    char err[160];
    int n = 0;
    pick_engine(j, env, &e, &ws);
    fw_engine_err rc = fw_engine_analyze(e, ws, jpeg, len, want, fs->faces, fs->max_faces,
                                         &n, width, height, NULL, err, sizeof err);
    take_yields(j, fs);
    if (rc != FWE_OK) {
        job_fail(j, status_of(rc), "", err);
        return -1;
    }
    *faces = fs->faces;
    return n;
}

int fw_faceops_describe(fw_job *j, const fw_face_env *env, const uint8_t *jpeg, uint32_t len,
                        const fw_face **faces)
{
    return fw_faceops_analyze(j, env, jpeg, len, FW_WANT_DESCRIPTORS, faces, NULL, NULL);
}

/* The descriptor of one VERIFY input into out[128]; 0, or -1 with j->out set. */
static int input_descriptor(fw_job *j, const fw_input *in, char which, float *out)
{
    if (in->kind == FW_INPUT_DESCRIPTOR) {
        memcpy(out, in->desc, sizeof in->desc);
        return 0;
    }
    fw_face_slot *fs = j->slot->ctx;
    const fw_engine *e;
    fw_engine_ws *ws;
    char err[160], prefix[24];
    int n = 0;
    snprintf(prefix, sizeof prefix, "input %c: ", which);
    pick_engine(j, j->env, &e, &ws);
    /* max_faces = 1: faces come best score first, and only the best one is described */
    fw_engine_err rc = fw_engine_analyze(e, ws, in->jpeg, in->len, FW_WANT_DESCRIPTORS,
                                         fs->faces, 1, &n, NULL, NULL, NULL, err, sizeof err);
    take_yields(j, fs);
    if (rc != FWE_OK) {
        job_fail(j, status_of(rc), prefix, err);
        return -1;
    }
    if (n == 0) {
        char msg[32];
        snprintf(msg, sizeof msg, "no face in input %c", which);
        job_fail(j, FW_STATUS_NO_FACE, "", msg);
        return -1;
    }
    memcpy(out, fs->faces[0].descriptor, sizeof fs->faces[0].descriptor);
    return 0;
}

void fw_faceops_verify_work(fw_job *j)
{
    float a[128], b[128];
    if (input_descriptor(j, &j->args.verify.in[0], 'a', a) != 0 ||
        input_descriptor(j, &j->args.verify.in[1], 'b', b) != 0)
        return;
    float d = fw_descriptor_distance(a, b);
    float thr = j->args.verify.threshold;
    uint8_t *body = malloc(9);
    if (!body) {
        job_fail(j, FW_STATUS_INTERNAL, "", "out of memory");
        return;
    }
    fw_writer wr;
    fw_writer_init(&wr, body, 9);
    fw_put_f32(&wr, d);
    fw_put_u8(&wr, d < thr ? 1 : 0);
    fw_put_f32(&wr, thr);
    j->out.status = FW_STATUS_OK;
    j->out.body = body;
    j->out.len = wr.len;
}

/* ---- slots --------------------------------------------------------------------------------- */

fw_face_slot *fw_face_slot_new(const fw_face_env *env)
{
    fw_face_slot *fs = calloc(1, sizeof *fs);
    if (!fs)
        return NULL;
    fs->yield.every_ns = (uint64_t)env->worker_yield_us * 1000u;
    fs->yield.last_ns = monotonic_ns();
    if (!env->engine)
        return fs; /* no models: the pause state alone, for the gallery search's pause points */
    fs->max_faces = fw_engine_get_options(env->engine)->max_faces;
    fs->faces = calloc((size_t)fs->max_faces, sizeof *fs->faces);
    fs->ws = fw_engine_ws_new(env->engine);
    if (!fs->faces || !fs->ws)
        goto err;
    set_pause(fs, fs->ws);
    return fs; /* ws_small: on first use, see pick_engine() */
err:
    fw_face_slot_free(fs);
    return NULL;
}

void fw_face_slot_free(fw_face_slot *fs)
{
    if (!fs)
        return;
    fw_engine_ws_free(fs->ws);
    fw_engine_ws_free(fs->ws_small);
    free(fs->faces);
    free(fs);
}
