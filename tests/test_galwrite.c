/*
 * test_galwrite.c — server/galwrite.h on its own: the argument checks and their exact
 * messages (both stores answer with them), the copy a request holds, the bounded FIFO (BUSY,
 * SHUTTING_DOWN, the idle flag that tells the caller to wake a sleeping writer), taking
 * batches in order, and the way back: a writer thread hands finished requests back and the
 * loop delivers each exactly once, in order, with the store's hook first.
 */
// run-under: tsan
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "fw_proto.h"
#include "server/galwrite.h"
#include "tests/check.h"

#define DIM FW_GALLERY_DIM

static float good_desc[DIM];

static fw_galwrite_args enroll_args(const char *subject, size_t len, const void *meta,
                                    size_t meta_len, const float *desc)
{
    fw_galwrite_args a = { .type = FW_GALWRITE_ENROLL, .subject = subject, .subject_len = len,
                           .meta = meta, .meta_len = meta_len, .desc = desc };
    return a;
}

static void noop_cb(void *arg, int status, uint64_t value, const char *msg)
{
    (void)arg, (void)status, (void)value, (void)msg;
}

/* ---- the checks ------------------------------------------------------------------------- */

static void t_check_enroll(void)
{
    char err[256], meta[FW_GALLERY_META_MAX + 1] = { 0 }, subj[FW_GALLERY_SUBJECT_MAX + 1];
    float bad[DIM];
    fw_galwrite_args a;
    memset(subj, 'a', sizeof subj);

    a = enroll_args("alice", 5, meta, FW_GALLERY_META_MAX, good_desc);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_OK);
    a = enroll_args("alice", 5, NULL, 0, good_desc);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_OK);

    const char *const subject_msg = "subject must be 1-128 bytes of UTF-8 without NUL";
    a = enroll_args("", 0, NULL, 0, good_desc);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, subject_msg);
    a = enroll_args(subj, sizeof subj, NULL, 0, good_desc); /* 129 bytes */
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, subject_msg);
    a = enroll_args(NULL, 5, NULL, 0, good_desc);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, subject_msg);
    a = enroll_args("a\0b", 3, NULL, 0, good_desc);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, subject_msg);
    a = enroll_args("\xc0\x80", 2, NULL, 0, good_desc); /* overlong NUL */
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, subject_msg);

    a = enroll_args("alice", 5, meta, FW_GALLERY_META_MAX + 1, good_desc);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, "metadata is 1025 bytes, at most 1024");
    a = enroll_args("alice", 5, NULL, 3, good_desc); /* a length without bytes */
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, "metadata is 3 bytes, at most 1024");

    const char *const desc_msg = "descriptor must be 128 finite floats within +-10000";
    a = enroll_args("alice", 5, NULL, 0, NULL);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, desc_msg);
    memcpy(bad, good_desc, sizeof bad);
    bad[DIM - 1] = NAN;
    a = enroll_args("alice", 5, NULL, 0, bad);
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, desc_msg);
    bad[DIM - 1] = 10001.0f;
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, desc_msg);
}

static void t_check_delete(void)
{
    char err[256];
    fw_galwrite_args a = { .type = FW_GALWRITE_DELETE_FACE, .face_id = 1 };
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_OK);
    a.face_id = 0;
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(err, "no face with id 0");
    /* The PostgreSQL store's bound: a bigserial is at most INT64_MAX. */
    a.face_id = (uint64_t)INT64_MAX;
    CHECK_EQ_INT(fw_galwrite_check(&a, (uint64_t)INT64_MAX, err, sizeof err), FW_STATUS_OK);
    a.face_id = (uint64_t)INT64_MAX + 1;
    CHECK_EQ_INT(fw_galwrite_check(&a, (uint64_t)INT64_MAX, err, sizeof err),
                 FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(err, "no face with id 9223372036854775808");
    CHECK_EQ_INT(fw_galwrite_check(&a, UINT64_MAX, err, sizeof err), FW_STATUS_OK);

    fw_galwrite_args s = { .type = FW_GALWRITE_DELETE_SUBJECT, .subject = "bob",
                           .subject_len = 3 };
    CHECK_EQ_INT(fw_galwrite_check(&s, UINT64_MAX, err, sizeof err), FW_STATUS_OK);
    s.subject_len = 0;
    CHECK_EQ_INT(fw_galwrite_check(&s, UINT64_MAX, err, sizeof err), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, "subject must be 1-128 bytes of UTF-8 without NUL");
}

/* A request holds its own copy: the caller's buffers may change right after. */
static void t_new_copies(void)
{
    char err[256], subject[8] = "carol", meta[4] = { 1, 2, 3, 4 };
    float desc[DIM];
    int status = -1;
    for (int i = 0; i < DIM; i++)
        desc[i] = (float)i;
    fw_galwrite_args a = enroll_args(subject, 5, meta, sizeof meta, desc);
    a.cb = noop_cb;
    a.arg = &status;
    fw_galwrite *r = fw_galwrite_new(&a, &status, err, sizeof err);
    CHECK(r);
    memset(subject, 'x', sizeof subject);
    memset(meta, 0, sizeof meta);
    desc[7] = -1.0f;
    CHECK_EQ_INT(r->type, FW_GALWRITE_ENROLL);
    CHECK_EQ_STR(r->subject, "carol"); /* NUL-terminated */
    CHECK_EQ_INT(r->subject_len, 5);
    CHECK_EQ_INT(r->meta_len, 4);
    CHECK(r->meta[0] == 1 && r->meta[3] == 4);
    CHECK(r->desc[7] == 7.0f && r->desc[DIM - 1] == (float)(DIM - 1));
    CHECK(r->cb == noop_cb && r->arg == &status);
    CHECK(!r->done && !r->probe && r->status == 0);

    fw_galwrite_finish(r, FW_STATUS_NOT_FOUND, 0, "no subject \"%s\"", r->subject);
    CHECK(r->done);
    CHECK_EQ_INT(r->status, FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(r->msg, "no subject \"carol\"");
    fw_galwrite_finish(r, FW_STATUS_OK, 42, NULL);
    CHECK_EQ_INT(r->value, 42);
    CHECK_EQ_STR(r->msg, "");
    free(r);

    fw_galwrite_args d = { .type = FW_GALWRITE_DELETE_FACE, .face_id = 77 };
    r = fw_galwrite_new(&d, &status, err, sizeof err);
    CHECK(r);
    CHECK_EQ_INT(r->face_id, 77);
    CHECK_EQ_INT(r->subject_len, 0);
    free(r);
}

/* ---- the FIFO ----------------------------------------------------------------------- */

static fw_galwrite *delete_req(uint64_t id)
{
    char err[64];
    int status;
    fw_galwrite_args a = { .type = FW_GALWRITE_DELETE_FACE, .face_id = id, .cb = noop_cb };
    return fw_galwrite_new(&a, &status, err, sizeof err);
}

static void t_push_take(void)
{
    fw_galwrite_queue q;
    fw_galwrite *b[4], *r[3] = { NULL, NULL, NULL }, *tail;
    char err[256];
    int wake = -1, ok = 0;
    fw_galwrite_queue_init(&q, 2);
    for (int i = 0; i < 3; i++)
        if (!(r[i] = delete_req((uint64_t)i + 1)))
            goto out;
    CHECK_EQ_INT(fw_galwrite_push(&q, r[0], &wake, err, sizeof err), FW_STATUS_OK);
    CHECK_EQ_INT(wake, 0);
    CHECK_EQ_INT(fw_galwrite_push(&q, r[1], NULL, err, sizeof err), FW_STATUS_OK);
    /* Full: refused, and the request stays the caller's. */
    CHECK_EQ_INT(fw_galwrite_push(&q, r[2], &wake, err, sizeof err), FW_STATUS_BUSY);
    CHECK_EQ_STR(err, "gallery write queue full (2 waiting)");

    pthread_mutex_lock(&q.mu);
    int n = fw_galwrite_take_locked(&q, b, 1);
    pthread_mutex_unlock(&q.mu);
    CHECK_EQ_INT(n, 1);
    CHECK(b[0] == r[0] && !b[0]->next);
    CHECK_EQ_INT(q.len, 1);

    /* A writer that sleeps outside the mutex announces it; the next push reports it once. */
    pthread_mutex_lock(&q.mu);
    q.idle = 1;
    pthread_mutex_unlock(&q.mu);
    CHECK_EQ_INT(fw_galwrite_push(&q, r[2], &wake, err, sizeof err), FW_STATUS_OK);
    CHECK_EQ_INT(wake, 1);
    CHECK_EQ_INT(q.idle, 0);

    pthread_mutex_lock(&q.mu);
    n = fw_galwrite_take_locked(&q, b + 1, 3);
    pthread_mutex_unlock(&q.mu);
    CHECK_EQ_INT(n, 2);
    CHECK(b[1] == r[1] && b[2] == r[2]); /* oldest first */
    CHECK(!q.head && !q.tail && q.len == 0);
    pthread_mutex_lock(&q.mu);
    n = fw_galwrite_take_locked(&q, b, 3);
    pthread_mutex_unlock(&q.mu);
    CHECK_EQ_INT(n, 0);

    /* Take everything at once (galpg answers the queue when its connection is gone). */
    CHECK_EQ_INT(fw_galwrite_push(&q, b[0], NULL, err, sizeof err), FW_STATUS_OK);
    CHECK_EQ_INT(fw_galwrite_push(&q, b[1], NULL, err, sizeof err), FW_STATUS_OK);
    pthread_mutex_lock(&q.mu);
    fw_galwrite *head = fw_galwrite_take_all_locked(&q, &tail);
    pthread_mutex_unlock(&q.mu);
    CHECK(head == r[0] && head->next == r[1] && tail == r[1]);
    CHECK(!q.head && !q.tail && q.len == 0);
    pthread_mutex_lock(&q.mu);
    head = fw_galwrite_take_all_locked(&q, &tail);
    pthread_mutex_unlock(&q.mu);
    CHECK(!head && !tail);

    fw_galwrite_queue_stop(&q);
    CHECK_EQ_INT(fw_galwrite_push(&q, r[0], &wake, err, sizeof err), FW_STATUS_SHUTTING_DOWN);
    CHECK_EQ_STR(err, "gallery is closing");
    ok = 1;
out:
    CHECK(ok);
    for (int i = 0; i < 3; i++)
        free(r[i]);
    fw_galwrite_queue_destroy(&q);
}

/* ---- the way back ------------------------------------------------------------------------ */

#define ROUND_TRIPS 200

typedef struct trip {
    fw_galwrite_queue q;
    int answered, hooks;
    uint64_t next_value;       /* callbacks must come in push order */
    int wrong, hook_missed;
} trip;

/* A writer: takes batches of up to 7, decides them, hands them back in two pieces so the
 * loop sees lists appended to lists. */
static void *writer_main(void *arg)
{
    trip *t = arg;
    fw_galwrite *b[7];
    int total = 0;
    while (total < ROUND_TRIPS) {
        pthread_mutex_lock(&t->q.mu);
        int n = fw_galwrite_take_locked(&t->q, b, 7);
        pthread_mutex_unlock(&t->q.mu);
        for (int i = 0; i < n; i++)
            fw_galwrite_finish(b[i], i % 2 ? FW_STATUS_NOT_FOUND : FW_STATUS_OK, b[i]->face_id,
                               i % 2 ? "no face with id %" PRIu64 : NULL, b[i]->face_id);
        fw_galwrite_hand_back_batch(&t->q, b, n / 2);
        fw_galwrite_hand_back_batch(&t->q, b + n / 2, n - n / 2);
        total += n;
    }
    return NULL;
}

static void on_answer(void *ctx, const fw_galwrite *r)
{
    trip *t = ctx;
    (void)r;
    t->hooks++;
}

static void on_done(void *arg, int status, uint64_t value, const char *msg)
{
    trip *t = arg;
    char want[64] = "";
    /* The writer decides by position in its batch, so either status may come; each must
     * carry its own message, and values must come in push order. */
    if (status == FW_STATUS_NOT_FOUND)
        snprintf(want, sizeof want, "no face with id %" PRIu64, value);
    if ((status != FW_STATUS_OK && status != FW_STATUS_NOT_FOUND) || strcmp(msg, want) != 0 ||
        value != t->next_value)
        t->wrong++;
    if (t->hooks != t->answered + 1)
        t->hook_missed++;
    t->next_value++;
    t->answered++;
    if (t->answered == ROUND_TRIPS)
        uv_close((uv_handle_t *)&t->q.async, NULL);
}

static void on_finished(uv_async_t *h)
{
    trip *t = h->data;
    fw_galwrite_deliver(&t->q, on_answer, t);
}

static void t_hand_back_deliver(void)
{
    uv_loop_t loop;
    trip t;
    pthread_t th;
    char err[256];
    memset(&t, 0, sizeof t);
    t.next_value = 1;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    fw_galwrite_queue_init(&t.q, ROUND_TRIPS);
    CHECK_EQ_INT(fw_galwrite_queue_attach(&t.q, &loop, on_finished, &t), 0);
    for (int i = 1; i <= ROUND_TRIPS; i++) {
        int status;
        fw_galwrite_args a = { .type = FW_GALWRITE_DELETE_FACE, .face_id = (uint64_t)i,
                               .cb = on_done, .arg = &t };
        fw_galwrite *r = fw_galwrite_new(&a, &status, err, sizeof err);
        CHECK(r);
        CHECK_EQ_INT(fw_galwrite_push(&t.q, r, NULL, err, sizeof err), FW_STATUS_OK);
    }
    CHECK_EQ_INT(pthread_create(&th, NULL, writer_main, &t), 0);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once on_done closed the handle */
    pthread_join(th, NULL);
    CHECK_EQ_INT(t.answered, ROUND_TRIPS);
    CHECK_EQ_INT(t.hooks, ROUND_TRIPS);
    CHECK_EQ_INT(t.wrong, 0);
    CHECK_EQ_INT(t.hook_missed, 0);
    CHECK(!t.q.dhead && !t.q.dtail);
    fw_galwrite_queue_destroy(&t.q);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_check_enroll),
    CHECK_TEST(t_check_delete),
    CHECK_TEST(t_new_copies),
    CHECK_TEST(t_push_take),
    CHECK_TEST(t_hand_back_deliver),
};

int main(int argc, char **argv)
{
    for (int i = 0; i < DIM; i++)
        good_desc[i] = (float)(i % 7) / 7.0f;
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
