/*
 * galwrite.h — one gallery write (ENROLL, DELETE of a face, DELETE of a subject) on its way
 * from the loop to a store's writer thread and back.
 *
 * Both stores take writes the same way: the embedded gallery (gallery.c, writing to its own
 * log) and the PostgreSQL store (galpg.c, writing to the database). The loop thread checks
 * the arguments, copies them into a fw_galwrite and pushes it on a bounded FIFO; the store's
 * writer thread takes batches off the FIFO, decides every request (fw_galwrite_finish) and
 * hands the batch back on the finished list; the loop drains that list from a uv_async and
 * calls each request's callback. What lives here is that common path, so that both stores
 * refuse the same inputs with the same messages and answer through the same queue. What
 * differs stays in the stores: what is checked before a request is allocated (a closing
 * store, no loop, galpg's breaker), how the writer sleeps and is woken (gallery.c: a condvar
 * on the queue's mutex; galpg.c: poll() on an eventfd, announced through queue->idle), and of
 * course what the writer does with a batch.
 *
 * Ownership:
 *   fw_galwrite_new        the caller owns the request it returns;
 *   fw_galwrite_push       FW_STATUS_OK: the queue owns it (the caller must not touch it any
 *                          more); any other status: the caller still owns it and frees it;
 *   fw_galwrite_take_*     the writer owns what it took until it hands it back;
 *   fw_galwrite_hand_back  the finished list owns it;
 *   fw_galwrite_deliver    calls the callback, then frees it (free()).
 * A request's callback is therefore called exactly once when push accepted it, never when
 * push refused it.
 *
 * Threads:
 *   fw_galwrite_check, _new, _push, _deliver, _queue_attach, _queue_stop
 *                              the loop thread (push and stop hold queue->mu for a few pointer
 *                              writes; nothing here blocks on I/O)
 *   fw_galwrite_take_locked, _take_all_locked
 *                              the writer thread, with queue->mu held (the store's own wait
 *                              for work is done under the same mutex)
 *   fw_galwrite_finish         the thread that owns the request (the writer)
 *   fw_galwrite_hand_back, _hand_back_batch
 *                              the writer thread (holds queue->dmu, then uv_async_send)
 *   fw_galwrite_queue_init, _destroy
 *                              the store's open and free, when no other thread uses the queue
 */
#ifndef FW_GALWRITE_H
#define FW_GALWRITE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "server/gallery.h"

enum {
    FW_GALWRITE_ENROLL = 1,
    FW_GALWRITE_DELETE_FACE = 2,
    FW_GALWRITE_DELETE_SUBJECT = 3
};

/* One write. Plain data: everything it needs is copied in, so nothing it holds is borrowed. */
typedef struct fw_galwrite fw_galwrite;
struct fw_galwrite {
    fw_galwrite *next;             /* the FIFO or the finished list it is on */
    uint8_t type;                  /* FW_GALWRITE_* */
    uint8_t probe;                 /* the store's admission mark, set on the loop thread before
                                    * push and read back there on delivery (galpg.c: admitted
                                    * by its breaker as a half-open probe); 0 when unused */
    uint8_t done;                  /* fw_galwrite_finish was called */
    uint16_t subject_len, meta_len;
    uint64_t face_id;              /* DELETE_FACE: the target; ENROLL: the id the writer gave */
    char subject[FW_GALLERY_SUBJECT_MAX + 1]; /* ENROLL, DELETE_SUBJECT; NUL-terminated */
    uint8_t meta[FW_GALLERY_META_MAX];        /* ENROLL */
    float desc[FW_GALLERY_DIM];               /* ENROLL; checked by fw_galwrite_check */
    fw_gallery_done_cb cb;         /* never NULL in a pushed request */
    void *arg;
    /* the outcome, set by fw_galwrite_finish */
    int status;
    uint64_t value;
    char msg[192];
};

/* What a caller asks for, borrowed for the calls below (everything is copied). */
typedef struct fw_galwrite_args {
    int type;                      /* FW_GALWRITE_* */
    uint64_t face_id;              /* DELETE_FACE */
    const char *subject;           /* ENROLL, DELETE_SUBJECT */
    size_t subject_len;
    const void *meta;              /* ENROLL; may be NULL when meta_len is 0 */
    size_t meta_len;
    const float *desc;             /* ENROLL: FW_GALLERY_DIM floats */
    fw_gallery_done_cb cb;         /* not checked here: each store words its own refusal */
    void *arg;
} fw_galwrite_args;

/* Check a write's arguments. FW_STATUS_OK, or with err set (these messages are part of the
 * protocol: tests and clients match them):
 *   BAD_REQUEST  "subject must be 1-128 bytes of UTF-8 without NUL"
 *                "metadata is N bytes, at most 1024"
 *                "descriptor must be 128 finite floats within +-10000"
 *   NOT_FOUND    "no face with id N" for a DELETE_FACE of id 0 or above face_id_max (no such
 *                face can exist, so the store answers without a trip to its writer).
 * Any thread (pure). */
int fw_galwrite_check(const fw_galwrite_args *a, uint64_t face_id_max, char *err,
                      size_t errlen);

/* A new request holding a copy of a checked *a, status 0, not done. NULL with *status =
 * INTERNAL and err "out of memory". */
fw_galwrite *fw_galwrite_new(const fw_galwrite_args *a, int *status, char *err,
                             size_t errlen);

/* Decide r: status, value (face id or faces deleted) and a message (fmt NULL: ""). */
void fw_galwrite_finish(fw_galwrite *r, int status, uint64_t value, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The FIFO from the loop to the writer, and the finished list back. Embedded in the store;
 * the fields are the store's to read under the mutex that guards them. */
typedef struct fw_galwrite_queue {
    pthread_mutex_t mu;            /* guards head .. idle */
    fw_galwrite *head, *tail;      /* waiting for the writer, oldest first */
    uint32_t len, max;             /* len < max or push answers BUSY */
    int stopping;                  /* push answers SHUTTING_DOWN; the writer drains and ends */
    int idle;                      /* set by a writer that sleeps outside mu (galpg.c) before
                                    * it lets go of mu; cleared by the next push, which tells its
                                    * caller to wake the writer */

    pthread_mutex_t dmu;           /* guards dhead, dtail */
    fw_galwrite *dhead, *dtail;    /* finished, waiting for the loop */
    uv_async_t async;              /* fw_galwrite_queue_attach; the store uv_close()s it */
} fw_galwrite_queue;

/* max: the FIFO's capacity (at least 1). */
void fw_galwrite_queue_init(fw_galwrite_queue *q, uint32_t max);
/* Releases the mutexes. Both lists must be empty (every request answered). */
void fw_galwrite_queue_destroy(fw_galwrite_queue *q);

/* Create the uv_async through which hand_back wakes the loop: on_finished(&q->async) runs on
 * the loop thread and is expected to call fw_galwrite_deliver; q->async.data = data. Loop
 * thread, once, before the first push. 0 or a negative libuv error. */
int fw_galwrite_queue_attach(fw_galwrite_queue *q, uv_loop_t *loop, uv_async_cb on_finished,
                             void *data);

/* Append r. FW_STATUS_OK (the queue owns r; *wake, when wake is not NULL, says the writer
 * had declared itself idle and must be woken by the store), or with err set and r still the
 * caller's: SHUTTING_DOWN "gallery is closing", BUSY "gallery write queue full (N waiting)". */
int fw_galwrite_push(fw_galwrite_queue *q, fw_galwrite *r, int *wake, char *err,
                     size_t errlen);

/* From now on push answers SHUTTING_DOWN. The store then wakes its writer, which drains
 * what is queued and ends. */
void fw_galwrite_queue_stop(fw_galwrite_queue *q);

/* Unlink up to max requests, oldest first, into b. Returns how many (0: the FIFO is empty).
 * q->mu held. */
int fw_galwrite_take_locked(fw_galwrite_queue *q, fw_galwrite **b, int max);

/* Unlink the whole FIFO: its head, and its tail in *tail (both NULL when empty). q->mu
 * held. */
fw_galwrite *fw_galwrite_take_all_locked(fw_galwrite_queue *q, fw_galwrite **tail);

/* Give finished requests back to the loop and wake it: the list head .. tail (linked by next;
 * nothing when head is NULL), or the n requests of b in order. Every request must have been
 * finished. */
void fw_galwrite_hand_back(fw_galwrite_queue *q, fw_galwrite *head, fw_galwrite *tail);
void fw_galwrite_hand_back_batch(fw_galwrite_queue *q, fw_galwrite **b, int n);

/* Answer everything handed back so far, in order: on_answer(ctx, r) first when it is not NULL
 * (the store's bookkeeping, e.g. its breaker), then r->cb, then free(r). */
void fw_galwrite_deliver(fw_galwrite_queue *q, void (*on_answer)(void *ctx, const fw_galwrite *r),
                         void *ctx);

#endif
