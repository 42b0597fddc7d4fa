/*
 * galwrite.c — a gallery write from the loop to a store's writer thread and back
 * (galwrite.h): the argument checks both stores answer with, the request, the bounded FIFO
 * and the finished list the loop drains.
 *
 * The two mutexes are never held together: the writer takes from the FIFO under mu and hands
 * back under dmu, the loop pushes under mu and drains under dmu, each for a few pointer
 * writes. So the loop never waits for the writer's I/O, only for another pointer swap.
 */
#include "server/galwrite.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw_proto.h"
#include "server/galidx.h"

static int check_subject(const char *subject, size_t len, char *err, size_t errlen)
{
    if (subject && galidx_subject_valid(subject, len))
        return FW_STATUS_OK;
    snprintf(err, errlen, "subject must be 1-%d bytes of UTF-8 without NUL",
             FW_GALLERY_SUBJECT_MAX);
    return FW_STATUS_BAD_REQUEST;
}

int fw_galwrite_check(const fw_galwrite_args *a, uint64_t face_id_max, char *err,
                      size_t errlen)
{
    switch (a->type) {
    case FW_GALWRITE_ENROLL:
        if (check_subject(a->subject, a->subject_len, err, errlen) != FW_STATUS_OK)
            return FW_STATUS_BAD_REQUEST;
        if (a->meta_len > FW_GALLERY_META_MAX || (a->meta_len && !a->meta)) {
            snprintf(err, errlen, "metadata is %zu bytes, at most %d", a->meta_len,
                     FW_GALLERY_META_MAX);
            return FW_STATUS_BAD_REQUEST;
        }
        if (!a->desc || !galidx_desc_valid(a->desc)) {
            snprintf(err, errlen, "descriptor must be %d finite floats within +-%g",
                     FW_GALLERY_DIM, (double)FW_GALLERY_VALUE_MAX);
            return FW_STATUS_BAD_REQUEST;
        }
        return FW_STATUS_OK;
    case FW_GALWRITE_DELETE_FACE:
        if (a->face_id == 0 || a->face_id > face_id_max) {
            snprintf(err, errlen, "no face with id %" PRIu64, a->face_id);
            return FW_STATUS_NOT_FOUND;
        }
        return FW_STATUS_OK;
    case FW_GALWRITE_DELETE_SUBJECT:
        return check_subject(a->subject, a->subject_len, err, errlen);
    default:
        snprintf(err, errlen, "unknown gallery write %d", a->type);
        return FW_STATUS_INTERNAL;
    }
}

fw_galwrite *fw_galwrite_new(const fw_galwrite_args *a, int *status, char *err,
                             size_t errlen)
{
    fw_galwrite *r = calloc(1, sizeof *r); /* zeroed: subject stays NUL-terminated */
    if (!r) {
        *status = FW_STATUS_INTERNAL;
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->type = (uint8_t)a->type;
    r->cb = a->cb;
    r->arg = a->arg;
    if (a->type == FW_GALWRITE_DELETE_FACE) {
        r->face_id = a->face_id;
        return r;
    }
    memcpy(r->subject, a->subject, a->subject_len);
    r->subject_len = (uint16_t)a->subject_len;
    if (a->type == FW_GALWRITE_ENROLL) {
        if (a->meta_len)
            memcpy(r->meta, a->meta, a->meta_len);
        r->meta_len = (uint16_t)a->meta_len;
        memcpy(r->desc, a->desc, sizeof r->desc);
    }
    return r;
}

void fw_galwrite_finish(fw_galwrite *r, int status, uint64_t value, const char *fmt, ...)
{
    r->done = 1;
    r->status = status;
    r->value = value;
    r->msg[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->msg, sizeof r->msg, fmt, ap);
        va_end(ap);
    }
}

/* ---- the queue ------------------------------------------------------------------------- */

void fw_galwrite_queue_init(fw_galwrite_queue *q, uint32_t max)
{
    memset(q, 0, sizeof *q);
    q->max = max ? max : 1;
    pthread_mutex_init(&q->mu, NULL);
    pthread_mutex_init(&q->dmu, NULL);
}

void fw_galwrite_queue_destroy(fw_galwrite_queue *q)
{
    pthread_mutex_destroy(&q->mu);
    pthread_mutex_destroy(&q->dmu);
}

int fw_galwrite_queue_attach(fw_galwrite_queue *q, uv_loop_t *loop, uv_async_cb on_finished,
                             void *data)
{
    int rc = uv_async_init(loop, &q->async, on_finished);
    if (rc == 0)
        q->async.data = data;
    return rc;
}

int fw_galwrite_push(fw_galwrite_queue *q, fw_galwrite *r, int *wake, char *err,
                     size_t errlen)
{
    int status = FW_STATUS_OK, idle = 0;
    pthread_mutex_lock(&q->mu);
    if (q->stopping) {
        status = FW_STATUS_SHUTTING_DOWN;
        snprintf(err, errlen, "gallery is closing");
    } else if (q->len >= q->max) {
        status = FW_STATUS_BUSY;
        snprintf(err, errlen, "gallery write queue full (%" PRIu32 " waiting)", q->len);
    } else {
        r->next = NULL;
        if (q->tail)
            q->tail->next = r;
        else
            q->head = r;
        q->tail = r;
        q->len++;
        idle = q->idle;
        q->idle = 0;
    }
    pthread_mutex_unlock(&q->mu);
    if (wake)
        *wake = idle;
    return status;
}

void fw_galwrite_queue_stop(fw_galwrite_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->stopping = 1;
    pthread_mutex_unlock(&q->mu);
}

int fw_galwrite_take_locked(fw_galwrite_queue *q, fw_galwrite **b, int max)
{
    int n = 0;
    while (q->head && n < max) {
        fw_galwrite *r = q->head;
        q->head = r->next;
        r->next = NULL;
        b[n++] = r;
        q->len--;
    }
    if (!q->head)
        q->tail = NULL;
    return n;
}

fw_galwrite *fw_galwrite_take_all_locked(fw_galwrite_queue *q, fw_galwrite **tail)
{
    fw_galwrite *head = q->head;
    *tail = q->tail;
    q->head = q->tail = NULL;
    q->len = 0;
    return head;
}

/* ---- back to the loop ---------------------------------------------------------------- */

void fw_galwrite_hand_back(fw_galwrite_queue *q, fw_galwrite *head, fw_galwrite *tail)
{
    if (!head)
        return;
    pthread_mutex_lock(&q->dmu);
    if (q->dtail)
        q->dtail->next = head;
    else
        q->dhead = head;
    q->dtail = tail;
    pthread_mutex_unlock(&q->dmu);
    uv_async_send(&q->async);
}

void fw_galwrite_hand_back_batch(fw_galwrite_queue *q, fw_galwrite **b, int n)
{
    if (n <= 0)
        return;
    for (int i = 0; i < n; i++)
        b[i]->next = i + 1 < n ? b[i + 1] : NULL;
    fw_galwrite_hand_back(q, b[0], b[n - 1]);
}

void fw_galwrite_deliver(fw_galwrite_queue *q, void (*on_answer)(void *ctx, const fw_galwrite *r),
                         void *ctx)
{
    pthread_mutex_lock(&q->dmu);
    fw_galwrite *r = q->dhead;
    q->dhead = q->dtail = NULL;
    pthread_mutex_unlock(&q->dmu);
    while (r) {
        fw_galwrite *next = r->next;
        if (on_answer)
            on_answer(ctx, r);
        r->cb(r->arg, r->status, r->value, r->msg);
        free(r);
        r = next;
    }
}
