/*
 * test_gallery.c — the gallery (server/gallery.h) on its own: round trips, search against a
 * brute-force reference, durability (restart, kill -9 mid-stream, torn and corrupt logs,
 * repair), encryption at rest (--gallery-key: round trips, no plaintext on disk, wrong or
 * missing keys, torn and corrupt encrypted logs), write failures (injected, and a real full tmpfs when mounting is allowed), and
 * searches racing enrolls and deletes.
 *
 * The kill -9 test re-executes this binary as the enrolling child ("--child-enroll DIR FD"),
 * so the child starts clean instead of forking a process that already runs threads.
 */
// run-under: tsan
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "fw_proto.h"
#include "server/galidx.h"
#include "server/gallery.h"
#include "server/galog.h"
#include "tests/check.h"
#include "tests/tu_data.h"

#define DIM FW_GALLERY_DIM
_Static_assert(DIM == TU_DESC_DIM, "tu_desc_for makes gallery descriptors");

/* ---- helpers ---------------------------------------------------------------------------- */

/* The size of an ENROLL record with a 2-byte subject and no metadata ("f<i>" for i < 10). */
#define REC ((off_t)(GALOG_REC_OVERHEAD + 8 + 2 + 2 + 2 + 4 * DIM))

static void make_tmpdir(char *buf, size_t len)
{
    snprintf(buf, len, "/tmp/fwgal.XXXXXX");
    if (!mkdtemp(buf))
        buf[0] = '\0';
}

static void rm_dir(const char *dir)
{
    static const char *names[] = { GALOG_LOG_NAME, GALOG_LOG_TMP, GALOG_LOG_OLD, GALOG_SNAP_NAME,
                                   GALOG_SNAP_TMP, GALOG_LOCK_NAME };
    char p[512];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static off_t file_size(const char *dir, const char *name)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 ? st.st_size : -1;
}

typedef struct result {
    int fired, status;
    uint64_t value;
    char msg[256];
} result;

static void on_done(void *arg, int status, uint64_t value, const char *msg)
{
    result *r = arg;
    r->fired++;
    r->status = status;
    r->value = value;
    snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "");
}

/* A test-side gallery: the gallery plus the loop its completions arrive on. */
typedef struct tg {
    uv_loop_t loop;
    fw_gallery *g;
    fw_gallery_report rep;
    char err[256];
} tg;

static int tg_open(tg *t, const fw_gallery_options *o)
{
    memset(t, 0, sizeof *t);
    uv_loop_init(&t->loop);
    if (fw_gallery_open(o, &t->g, &t->rep, t->err, sizeof t->err) != 0) {
        uv_loop_close(&t->loop);
        return -1;
    }
    fw_gallery_attach_loop(t->g, &t->loop);
    return 0;
}

static void tg_close(tg *t)
{
    if (!t->g)
        return;
    fw_gallery_close(t->g);
    t->g = NULL;
    uv_run(&t->loop, UV_RUN_DEFAULT);
    uv_loop_close(&t->loop);
}

/* Run the loop until the request's callback has fired. The writer's uv_async_send wakes it. */
static void wait_for(tg *t, result *r)
{
    while (!r->fired)
        uv_run(&t->loop, UV_RUN_ONCE);
}

/* Enroll and wait. Returns the status (immediate or from the callback); *id = face id. */
static int enroll(tg *t, const char *subject, const char *meta, const float *d, uint64_t *id,
                  char *msg)
{
    result r = { 0 };
    char err[256] = "";
    int st = fw_gallery_enroll(t->g, subject, strlen(subject), meta, meta ? strlen(meta) : 0, d,
                               on_done, &r, err, sizeof err);
    if (st != FW_STATUS_OK) {
        if (msg)
            strcpy(msg, err);
        return st;
    }
    wait_for(t, &r);
    if (id)
        *id = r.value;
    if (msg)
        strcpy(msg, r.msg);
    return r.status;
}

static int del_face(tg *t, uint64_t id, uint64_t *count, char *msg)
{
    result r = { 0 };
    char err[256] = "";
    int st = fw_gallery_delete_face(t->g, id, on_done, &r, err, sizeof err);
    if (st != FW_STATUS_OK) {
        if (msg)
            strcpy(msg, err);
        return st;
    }
    wait_for(t, &r);
    if (count)
        *count = r.value;
    if (msg)
        strcpy(msg, r.msg);
    return r.status;
}

static int del_subject(tg *t, const char *s, uint64_t *count, char *msg)
{
    result r = { 0 };
    char err[256] = "";
    int st = fw_gallery_delete_subject(t->g, s, strlen(s), on_done, &r, err, sizeof err);
    if (st != FW_STATUS_OK) {
        if (msg)
            strcpy(msg, err);
        return st;
    }
    wait_for(t, &r);
    if (count)
        *count = r.value;
    if (msg)
        strcpy(msg, r.msg);
    return r.status;
}

static int search1(tg *t, const float *q, int k, float thr, fw_gallery_match *out, int *count)
{
    char err[256];
    return fw_gallery_search(t->g, q, 1, k, thr, out, count, NULL, err, sizeof err);
}

static fw_gallery_options durable(const char *dir)
{
    fw_gallery_options o;
    fw_gallery_options_default(&o);
    o.data_dir = dir;
    o.log = NULL;
    return o;
}

static void quiet_log(void *arg, const char *line)
{
    (void)arg;
    (void)line;
}

/* Log callback counting background compactions (called on the compactor thread). */
static void count_compactions(void *arg, const char *line)
{
    if (strncmp(line, "compacted", 9) == 0)
        atomic_fetch_add((atomic_int *)arg, 1);
}

/* ---- round trips ------------------------------------------------------------------------ */

static void t_roundtrip(void)
{
    tg t;
    float a[DIM], b[DIM], c[DIM], got[DIM];
    uint64_t ida, idb, idc, n;
    char msg[256], meta[FW_GALLERY_META_MAX];
    size_t meta_len;
    fw_gallery_subject subj;
    fw_gallery_match m[10];
    int cnt;
    CHECK(tg_open(&t, NULL) == 0);
    tu_desc_for(1, a);
    tu_desc_for(2, b);
    tu_desc_for(3, c);
    CHECK_EQ_INT(enroll(&t, "alice", "badge 7", a, &ida, msg), FW_STATUS_OK);
    CHECK_EQ_INT(enroll(&t, "alice", NULL, b, &idb, msg), FW_STATUS_OK);
    CHECK_EQ_INT(enroll(&t, "bob", NULL, c, &idc, msg), FW_STATUS_OK);
    CHECK(ida == 1 && idb == 2 && idc == 3);

    CHECK_EQ_INT(fw_gallery_get(t.g, ida, &subj, meta, &meta_len, got), FW_STATUS_OK);
    CHECK_EQ_STR(subj.subject, "alice");
    CHECK_EQ_INT(subj.faces, 2);
    CHECK_EQ_INT(meta_len, 7);
    CHECK(memcmp(meta, "badge 7", 7) == 0);
    CHECK(memcmp(got, a, sizeof a) == 0);

    CHECK_EQ_INT(search1(&t, b, 3, INFINITY, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 3);
    CHECK(m[0].face_id == idb);
    CHECK_EQ_STR(m[0].subject, "alice");
    CHECK_NEAR(m[0].distance, 0, 1e-3);
    CHECK(m[1].distance <= m[2].distance);

    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 3);
    CHECK_EQ_INT(info.subjects, 2);
    CHECK_EQ_INT(info.last_seq, 3);
    CHECK_EQ_INT(info.next_face_id, 4);
    CHECK(info.mem_bytes > 3 * DIM * sizeof(float));
    CHECK_EQ_INT(info.disk_bytes, 0);

    CHECK_EQ_INT(del_face(&t, ida, &n, msg), FW_STATUS_OK);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(fw_gallery_get(t.g, ida, NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    CHECK_EQ_INT(del_face(&t, ida, &n, msg), FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(msg, "no face with id 1");
    CHECK_EQ_INT(del_face(&t, 0, &n, msg), FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(msg, "no face with id 0");
    CHECK_EQ_INT(del_subject(&t, "bob", &n, msg), FW_STATUS_OK);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(del_subject(&t, "bob", &n, msg), FW_STATUS_NOT_FOUND);
    CHECK_EQ_STR(msg, "no subject \"bob\"");

    /* Only alice's second face is left, and it moved rows twice: still found. */
    CHECK_EQ_INT(search1(&t, a, 5, INFINITY, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 1);
    CHECK(m[0].face_id == idb);
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 1);
    CHECK_EQ_INT(info.subjects, 1);
    CHECK_EQ_INT(info.last_seq, 5); /* NOT_FOUND deletes never reach the log */

    /* An id is never reused, even after the newest face is deleted. */
    CHECK_EQ_INT(del_face(&t, idb, &n, msg), FW_STATUS_OK);
    CHECK_EQ_INT(enroll(&t, "carol", NULL, a, &ida, msg), FW_STATUS_OK);
    CHECK_EQ_INT(ida, 4);
    tg_close(&t);
}

static void t_bad_input(void)
{
    tg t;
    float d[DIM];
    char msg[256], big[FW_GALLERY_META_MAX + 2];
    char sub129[130];
    fw_gallery_match m[1];
    int cnt;
    CHECK(tg_open(&t, NULL) == 0);
    tu_desc_for(1, d);
    CHECK_EQ_INT(enroll(&t, "", NULL, d, NULL, msg), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "subject must be 1-128 bytes of UTF-8 without NUL");
    memset(sub129, 'x', 129);
    sub129[129] = '\0';
    CHECK_EQ_INT(enroll(&t, sub129, NULL, d, NULL, msg), FW_STATUS_BAD_REQUEST);
    sub129[128] = '\0';
    CHECK_EQ_INT(enroll(&t, sub129, NULL, d, NULL, msg), FW_STATUS_OK);
    CHECK_EQ_INT(enroll(&t, "\xC0\xAF", NULL, d, NULL, msg), FW_STATUS_BAD_REQUEST); /* overlong */
    CHECK_EQ_INT(enroll(&t, "\xED\xA0\x80", NULL, d, NULL, msg), FW_STATUS_BAD_REQUEST); /* surrogate */
    CHECK_EQ_INT(enroll(&t, "caf\xC3", NULL, d, NULL, msg), FW_STATUS_BAD_REQUEST); /* cut */
    CHECK_EQ_INT(enroll(&t, "Zo\xC3\xAB \xF0\x9F\x99\x82", NULL, d, NULL, msg), FW_STATUS_OK);
    memset(big, 'm', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_EQ_INT(enroll(&t, "x", big, d, NULL, msg), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "metadata is 1025 bytes, at most 1024");
    d[5] = NAN;
    CHECK_EQ_INT(enroll(&t, "x", NULL, d, NULL, msg), FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "descriptor must be 128 finite floats within +-10000");
    CHECK_EQ_INT(fw_gallery_search(t.g, d, 1, 1, INFINITY, m, &cnt, NULL, msg, sizeof msg),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "descriptor 0 must be 128 finite floats within +-10000");
    d[5] = 2e4f;
    CHECK_EQ_INT(enroll(&t, "x", NULL, d, NULL, msg), FW_STATUS_BAD_REQUEST);
    tu_desc_for(1, d);
    CHECK_EQ_INT(fw_gallery_search(t.g, d, 1, 0, INFINITY, m, &cnt, NULL, msg, sizeof msg),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "k must be 1-100");
    CHECK_EQ_INT(fw_gallery_search(t.g, d, 1, 101, INFINITY, m, &cnt, NULL, msg, sizeof msg),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_INT(fw_gallery_search(t.g, d, 0, 1, INFINITY, m, &cnt, NULL, msg, sizeof msg),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "1-1024 queries per search");
    CHECK_EQ_INT(fw_gallery_search(t.g, d, 1, 1, -1.0f, m, &cnt, NULL, msg, sizeof msg),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(msg, "threshold must be a non-negative number");
    CHECK_EQ_INT(fw_gallery_search(t.g, d, 1, 1, NAN, m, &cnt, NULL, msg, sizeof msg),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_INT(del_subject(&t, "\xFF", NULL, msg), FW_STATUS_BAD_REQUEST);
    tg_close(&t);
}

static void t_search_empty(void)
{
    tg t;
    float d[DIM];
    fw_gallery_match m[5];
    int cnt = -1;
    CHECK(tg_open(&t, NULL) == 0);
    tu_desc_for(9, d);
    CHECK_EQ_INT(search1(&t, d, 5, INFINITY, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 0);
    tg_close(&t);
}

/* ---- search correctness ----------------------------------------------------------------- */

typedef struct ref {
    double d;
    uint64_t id;
} ref;

static int ref_cmp(const void *a, const void *b)
{
    const ref *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Brute force in double over the live faces; compare ids and distances of the top k. */
static int check_against_brute(tg *t, const float *gal, const uint64_t *ids, const int *alive,
                               int n, const float *q, int nq, int k)
{
    fw_gallery_match *m = calloc((size_t)nq * k, sizeof *m);
    int *cnt = calloc((size_t)nq, sizeof *cnt);
    ref *r = calloc((size_t)n, sizeof *r);
    char err[256];
    int bad = 0;
    if (fw_gallery_search(t->g, q, nq, k, INFINITY, m, cnt, NULL, err, sizeof err) != FW_STATUS_OK)
        bad = 1;
    for (int i = 0; i < nq && !bad; i++) {
        int live = 0;
        for (int j = 0; j < n; j++) {
            if (!alive[j])
                continue;
            double s = 0;
            for (int c = 0; c < DIM; c++) {
                double e = (double)q[i * DIM + c] - gal[(size_t)j * DIM + c];
                s += e * e;
            }
            r[live].d = sqrt(s);
            r[live].id = ids[j];
            live++;
        }
        qsort(r, (size_t)live, sizeof *r, ref_cmp);
        int want = live < k ? live : k;
        if (cnt[i] != want) {
            fprintf(stderr, "  query %d: %d matches, want %d\n", i, cnt[i], want);
            bad = 1;
        }
        for (int a = 0; a < want && !bad; a++)
            if (m[i * k + a].face_id != r[a].id || fabs(m[i * k + a].distance - r[a].d) > 1e-3) {
                fprintf(stderr, "  query %d rank %d: id %llu d %f, want id %llu d %f\n", i, a,
                        (unsigned long long)m[i * k + a].face_id, m[i * k + a].distance,
                        (unsigned long long)r[a].id, r[a].d);
                bad = 1;
            }
    }
    free(m);
    free(cnt);
    free(r);
    return bad ? -1 : 0;
}

static void t_topk_vs_bruteforce(void)
{
    enum { N = 3000, NQ = 24, K = 10 };
    tg t;
    float *gal = malloc((size_t)N * DIM * sizeof(float));
    float *q = malloc((size_t)NQ * DIM * sizeof(float));
    uint64_t *ids = malloc(N * sizeof *ids);
    int *alive = malloc(N * sizeof *alive);
    char subject[32];
    int ok = gal && q && ids && alive && tg_open(&t, NULL) == 0;
    CHECK(ok);
    /* Enroll without waiting for each ack: this also exercises group commit batching. */
    result *res = calloc(N, sizeof *res);
    CHECK(res != NULL);
    for (int i = 0; i < N; i++) {
        char err[128];
        tu_desc_for(1000 + i, gal + (size_t)i * DIM);
        snprintf(subject, sizeof subject, "s%d", i % 500);
        CHECK_EQ_INT(fw_gallery_enroll(t.g, subject, strlen(subject), NULL, 0,
                                       gal + (size_t)i * DIM, on_done, &res[i], err, sizeof err),
                     FW_STATUS_OK);
        alive[i] = 1;
    }
    for (int i = 0; i < N; i++) {
        wait_for(&t, &res[i]);
        CHECK_EQ_INT(res[i].status, FW_STATUS_OK);
        ids[i] = res[i].value;
    }
    for (int i = 0; i < NQ; i++) /* half near a gallery face, half anywhere */
        if (i % 2) {
            tu_desc_for(1000 + i * 97, q + i * DIM);
            for (int c = 0; c < DIM; c++)
                q[i * DIM + c] += 0.01f * (float)(c % 3);
        } else {
            tu_desc_for(900000 + i, q + i * DIM);
        }
    CHECK(check_against_brute(&t, gal, ids, alive, N, q, NQ, K) == 0); /* sgemm path */
    for (int i = 0; i < NQ; i++)                                       /* sgemv path */
        CHECK(check_against_brute(&t, gal, ids, alive, N, q + i * DIM, 1, K) == 0);
    /* Delete a third of the faces (swap-remove moves rows around) and a whole subject. */
    uint64_t n;
    for (int i = 0; i < N; i += 3) {
        CHECK_EQ_INT(del_face(&t, ids[i], &n, NULL), FW_STATUS_OK);
        alive[i] = 0;
    }
    CHECK_EQ_INT(del_subject(&t, "s7", &n, NULL), FW_STATUS_OK);
    for (int i = 7; i < N; i += 500)
        alive[i] = 0;
    CHECK(check_against_brute(&t, gal, ids, alive, N, q, NQ, K) == 0);
    CHECK(check_against_brute(&t, gal, ids, alive, N, q + 3 * DIM, 1, K) == 0);
    free(res);
    tg_close(&t);
    free(gal);
    free(q);
    free(ids);
    free(alive);
}

/* Enroll n faces straight into the index: descriptor i is tu_desc_for(seed + i) (kept in
 * gal[i]), subject "<prefix><i % nsubj>", metadata "m" when with_meta, ids 1..n. */
static void fill_index(galidx *ix, float *gal, int n, uint64_t seed, const char *prefix,
                       int nsubj, int with_meta)
{
    for (int i = 0; i < n; i++) {
        galidx_grow gr;
        char s[16];
        int oom;
        snprintf(s, sizeof s, "%s%d", prefix, i % nsubj);
        tu_desc_for(seed + (uint64_t)i, gal + (size_t)i * DIM);
        CHECK(galidx_grow_prepare(ix, (uint64_t)galidx_faces(ix) + 1,
                                  (uint64_t)galidx_subjects(ix) + 1, &gr) == 0);
        galidx_grow_commit(ix, &gr);
        galidx_grow_release(&gr);
        galidx_subj *sj = galidx_find_subject(ix, s, strlen(s));
        if (!sj)
            sj = galidx_subj_new(ix, s, strlen(s));
        CHECK(sj && galidx_subj_reserve(sj, 1) == 0);
        galidx_apply_enroll(ix, (uint64_t)i + 1, sj, with_meta ? galidx_meta_new("m", 1, &oom) : NULL,
                            gal + (size_t)i * DIM);
    }
}

/* The index on its own with no address-space reservation (max_faces 0): the per-row arrays
 * grow by doubling and copying, which is what a box with strict overcommit gets. */
static void t_index_doubling(void)
{
    enum { N = 700 };
    unsigned char key[16] = { 1, 2, 3 };
    galidx *ix = galidx_new(key, 0);
    float *gal = malloc((size_t)N * DIM * sizeof(float));
    CHECK(ix && gal);
    fill_index(ix, gal, N, 5000, "s", 7, 1);
    CHECK_EQ_INT(galidx_faces(ix), N);
    CHECK_EQ_INT(galidx_subjects(ix), 7);
    CHECK_EQ_INT(galidx_apply_delete_subject(ix, "s3", 2), N / 7);
    CHECK_EQ_INT(galidx_apply_delete_face(ix, 1), 1);
    CHECK_EQ_INT(galidx_apply_delete_face(ix, 1), 0);
    fw_gallery_match m[5];
    int cnt;
    for (int i = 0; i < N; i += 97) {
        int gone = i == 0 || i % 7 == 3;
        CHECK_EQ_INT(galidx_search(ix, gal + (size_t)i * DIM, 1, 5, INFINITY, m, &cnt, NULL), 0);
        CHECK_EQ_INT(cnt, 5);
        CHECK(gone ? m[0].face_id != (uint64_t)i + 1
                   : (m[0].face_id == (uint64_t)i + 1 && m[0].distance == 0.0f));
    }
    galidx_free(ix);
    free(gal);
}

/* Pause points (engine/pause.h): the search calls the hook after every block of rows, so at
 * least rows / block times, and the results are the same as without one, for one query
 * (sgemv) and for several (sgemm, smaller blocks). Also through fw_gallery_search. */
typedef struct pause_count {
    int calls;
} pause_count;

static void count_pause(void *arg)
{
    ((pause_count *)arg)->calls++;
}

static int same_matches(const fw_gallery_match *a, const int *ca, const fw_gallery_match *b,
                        const int *cb, int nq, int k)
{
    for (int i = 0; i < nq; i++) {
        if (ca[i] != cb[i])
            return 0;
        for (int r = 0; r < ca[i]; r++) {
            const fw_gallery_match *x = &a[i * k + r], *y = &b[i * k + r];
            if (x->face_id != y->face_id || x->distance != y->distance ||
                x->subject_len != y->subject_len || strcmp(x->subject, y->subject) != 0)
                return 0;
        }
    }
    return 1;
}

static void t_search_pauses(void)
{
    enum { N = 9 * 4096 + 100, NQ = 8, K = 10 };
    unsigned char key[16] = { 7 };
    galidx *ix = galidx_new(key, N);
    float *gal = malloc((size_t)N * DIM * sizeof(float));
    float q[NQ * DIM];
    static fw_gallery_match with[NQ * K], without[NQ * K];
    int cw[NQ], cwo[NQ];
    CHECK(ix && gal);
    fill_index(ix, gal, N, 90000, "p", 31, 0);
    for (int i = 0; i < NQ; i++) /* half of them are faces of the gallery */
        if (i % 2)
            memcpy(q + i * DIM, gal + (size_t)(i * 4099) * DIM, DIM * sizeof(float));
        else
            tu_desc_for(123 + (uint64_t)i, q + i * DIM);

    int nqs[2] = { 1, NQ };
    for (int t = 0; t < 2; t++) {
        int nq = nqs[t];
        uint32_t block = galidx_search_block(nq);
        CHECK_MSG(N / block >= 9, "only %u blocks of %u rows", (unsigned)(N / block), (unsigned)block);
        pause_count pc = { 0 };
        fw_pause p = { count_pause, &pc };
        memset(with, 0, sizeof with);
        memset(without, 0, sizeof without);
        CHECK_EQ_INT(galidx_search(ix, q, nq, K, INFINITY, with, cw, &p), 0);
        CHECK_MSG(pc.calls >= (int)(N / block), "nq %d: %d pauses for %d rows in blocks of %u",
                  nq, pc.calls, N, (unsigned)block);
        CHECK_EQ_INT(galidx_search(ix, q, nq, K, INFINITY, without, cwo, NULL), 0);
        CHECK(same_matches(with, cw, without, cwo, nq, K));
        CHECK_EQ_INT(cw[0], K);
        if (nq > 1) {
            CHECK_EQ_INT(with[1 * K].face_id, 1 * 4099 + 1); /* a gallery face finds itself */
            CHECK(with[1 * K].distance == 0.0f);
        }
        /* a threshold too: fewer matches, still the same either way */
        pc.calls = 0;
        CHECK_EQ_INT(galidx_search(ix, q, nq, K, 1.0f, with, cw, &p), 0);
        CHECK(pc.calls >= (int)(N / block));
        CHECK_EQ_INT(galidx_search(ix, q, nq, K, 1.0f, without, cwo, NULL), 0);
        CHECK(same_matches(with, cw, without, cwo, nq, K));
    }
    galidx_free(ix);
    free(gal);

    /* the public search passes it through (a few faces: one block, one pause) */
    tg tg1;
    fw_gallery_options o;
    fw_gallery_options_default(&o);
    CHECK(tg_open(&tg1, &o) == 0);
    float d[DIM];
    for (int i = 0; i < 3; i++) {
        tu_desc_for(777 + (uint64_t)i, d);
        CHECK_EQ_INT(enroll(&tg1, "pp", NULL, d, NULL, NULL), FW_STATUS_OK);
    }
    pause_count pc = { 0 };
    fw_pause p = { count_pause, &pc };
    char err[256];
    CHECK_EQ_INT(fw_gallery_search(tg1.g, d, 1, 2, INFINITY, with, cw, &p, err, sizeof err),
                 FW_STATUS_OK);
    CHECK_EQ_INT(pc.calls, 1);
    CHECK_EQ_INT(cw[0], 2);
    CHECK(with[0].face_id == 3 && with[0].distance == 0.0f);
    tg_close(&tg1);
}

static void t_k_beyond_count(void)
{
    tg t;
    float d[DIM], q[DIM];
    fw_gallery_match m[100];
    int cnt;
    CHECK(tg_open(&t, NULL) == 0);
    for (int i = 0; i < 5; i++) {
        tu_desc_for(50 + i, d);
        CHECK_EQ_INT(enroll(&t, "p", NULL, d, NULL, NULL), FW_STATUS_OK);
    }
    tu_desc_for(77, q);
    CHECK_EQ_INT(search1(&t, q, 100, INFINITY, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 5);
    for (int i = 1; i < cnt; i++)
        CHECK(m[i - 1].distance <= m[i].distance);
    tg_close(&t);
}

static void t_threshold(void)
{
    tg t;
    float d[DIM] = { 0 }, q[DIM] = { 0 };
    fw_gallery_match m[10];
    int cnt;
    uint64_t id05, id1;
    CHECK(tg_open(&t, NULL) == 0);
    d[0] = 0.5f;
    CHECK_EQ_INT(enroll(&t, "half", NULL, d, &id05, NULL), FW_STATUS_OK);
    d[0] = 0;
    d[1] = 1.0f;
    CHECK_EQ_INT(enroll(&t, "one", NULL, d, &id1, NULL), FW_STATUS_OK);
    d[1] = 0;
    d[2] = 2.0f;
    CHECK_EQ_INT(enroll(&t, "two", NULL, d, NULL, NULL), FW_STATUS_OK);
    /* distance < threshold, as VERIFY's "same" */
    CHECK_EQ_INT(search1(&t, q, 10, 1.0f, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 1);
    CHECK(m[0].face_id == id05);
    CHECK_NEAR(m[0].distance, 0.5, 1e-6);
    CHECK_EQ_INT(search1(&t, q, 10, 1.001f, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 2);
    CHECK(m[1].face_id == id1);
    CHECK_EQ_INT(search1(&t, q, 10, 0.0f, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 0);
    CHECK_EQ_INT(search1(&t, q, 10, INFINITY, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 3);
    /* k smaller than the matches under the threshold: the nearest k. */
    CHECK_EQ_INT(search1(&t, q, 1, 5.0f, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 1);
    CHECK(m[0].face_id == id05);
    tg_close(&t);
}

/* Large descriptors make |q|^2 + |x|^2 - 2 q.x cancel badly: the threshold must still be
 * decided on the true distance, not on the scan's rounded one. */
static void t_threshold_large_norms(void)
{
    tg t;
    float q[DIM], x[DIM];
    fw_gallery_match m[4];
    int cnt, hits = 0, misses = 0;
    CHECK(tg_open(&t, NULL) == 0);
    for (int f = 0; f < 200; f++) { /* 200 faces at distance ~0.5 from their query */
        tu_desc_for(7000 + (uint64_t)f, x);
        for (int c = 0; c < DIM; c++)
            x[c] = 7.5f + 2.5f * x[c]; /* |x|^2 ~ 7,000 */
        x[f % DIM] += 0.5f;
        char s[16];
        snprintf(s, sizeof s, "big%d", f);
        CHECK_EQ_INT(enroll(&t, s, NULL, x, NULL, NULL), FW_STATUS_OK);
    }
    for (int f = 0; f < 200; f++) {
        tu_desc_for(7000 + (uint64_t)f, q);
        for (int c = 0; c < DIM; c++)
            q[c] = 7.5f + 2.5f * q[c];
        double exact = 0; /* the same sum the gallery does for its survivors */
        tu_desc_for(7000 + (uint64_t)f, x);
        for (int c = 0; c < DIM; c++)
            x[c] = 7.5f + 2.5f * x[c];
        x[f % DIM] += 0.5f;
        for (int c = 0; c < DIM; c++)
            exact += ((double)q[c] - x[c]) * ((double)q[c] - x[c]);
        float d = (float)sqrt(exact);
        CHECK_EQ_INT(search1(&t, q, 1, nextafterf(d, INFINITY), m, &cnt), FW_STATUS_OK);
        hits += cnt == 1 && m[0].distance == d;
        CHECK_EQ_INT(search1(&t, q, 1, d, m, &cnt), FW_STATUS_OK); /* strict: not < itself */
        misses += cnt == 0;
    }
    CHECK_EQ_INT(hits, 200);
    CHECK_EQ_INT(misses, 200);
    tg_close(&t);
}

static void t_list_paging(void)
{
    tg t;
    float d[DIM];
    char s[16], next[FW_GALLERY_SUBJECT_MAX + 1], err[128];
    size_t next_len;
    fw_gallery_subject out[10];
    int n;
    CHECK(tg_open(&t, NULL) == 0);
    tu_desc_for(3, d);
    for (int i = 0; i < 25; i++) {
        snprintf(s, sizeof s, "s%02d", (i * 7) % 25); /* enrolled out of order */
        for (int j = 0; j <= i % 3; j++)
            CHECK_EQ_INT(enroll(&t, s, NULL, d, NULL, NULL), FW_STATUS_OK);
    }
    CHECK_EQ_INT(fw_gallery_list(t.g, "", 0, 10, out, &n, next, &next_len, err, sizeof err),
                 FW_STATUS_OK);
    CHECK_EQ_INT(n, 10);
    CHECK_EQ_STR(out[0].subject, "s00");
    CHECK_EQ_STR(out[9].subject, "s09");
    CHECK_EQ_STR(next, "s09");
    CHECK_EQ_INT(next_len, 3);
    /* The cursor subject disappears between pages: paging still resumes right after it. */
    CHECK_EQ_INT(del_subject(&t, "s09", NULL, NULL), FW_STATUS_OK);
    CHECK_EQ_INT(fw_gallery_list(t.g, next, next_len, 10, out, &n, next, &next_len, err,
                                 sizeof err), FW_STATUS_OK);
    CHECK_EQ_INT(n, 10);
    CHECK_EQ_STR(out[0].subject, "s10");
    CHECK_EQ_INT(fw_gallery_list(t.g, next, next_len, 10, out, &n, next, &next_len, err,
                                 sizeof err), FW_STATUS_OK);
    CHECK_EQ_INT(n, 5);
    CHECK_EQ_STR(out[4].subject, "s24");
    CHECK_EQ_INT(next_len, 0);
    /* counts: s24 = (i*7)%25 == 24 for i = 7 -> 7 % 3 + 1 = 2 faces */
    CHECK_EQ_INT(out[4].faces, 2);
    CHECK_EQ_INT(fw_gallery_list(t.g, "", 0, 0, out, &n, next, &next_len, err, sizeof err),
                 FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(err, "limit must be 1-65535");
    tg_close(&t);
}

/* Several requests in one group commit that depend on each other. */
static void t_batch_dependencies(void)
{
    tg t;
    float d[DIM];
    result r[6] = { { 0 } };
    char err[128];
    CHECK(tg_open(&t, NULL) == 0);
    tu_desc_for(4, d);
    /* Queued back to back before the loop runs: typically one batch; correct either way. */
    CHECK_EQ_INT(fw_gallery_enroll(t.g, "n", 1, NULL, 0, d, on_done, &r[0], err, sizeof err), 0);
    CHECK_EQ_INT(fw_gallery_delete_subject(t.g, "n", 1, on_done, &r[1], err, sizeof err), 0);
    CHECK_EQ_INT(fw_gallery_enroll(t.g, "n", 1, NULL, 0, d, on_done, &r[2], err, sizeof err), 0);
    CHECK_EQ_INT(fw_gallery_delete_face(t.g, 3, on_done, &r[3], err, sizeof err), 0); /* no id 3 yet... */
    CHECK_EQ_INT(fw_gallery_delete_face(t.g, 2, on_done, &r[4], err, sizeof err), 0);
    CHECK_EQ_INT(fw_gallery_delete_face(t.g, 2, on_done, &r[5], err, sizeof err), 0);
    for (int i = 0; i < 6; i++)
        wait_for(&t, &r[i]);
    CHECK_EQ_INT(r[0].status, FW_STATUS_OK);
    CHECK_EQ_INT(r[0].value, 1);
    CHECK_EQ_INT(r[1].status, FW_STATUS_OK);
    CHECK_EQ_INT(r[1].value, 1);
    CHECK_EQ_INT(r[2].status, FW_STATUS_OK);
    CHECK_EQ_INT(r[2].value, 2);
    CHECK_EQ_INT(r[3].status, FW_STATUS_NOT_FOUND);
    CHECK_EQ_INT(r[4].status, FW_STATUS_OK);
    CHECK_EQ_INT(r[5].status, FW_STATUS_NOT_FOUND);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 0);
    CHECK_EQ_INT(info.subjects, 0);
    tg_close(&t);
}

/* close() writes and answers what is still queued. */
static void t_close_flushes(void)
{
    tg t;
    float d[DIM];
    result r = { 0 };
    char err[128];
    CHECK(tg_open(&t, NULL) == 0);
    tu_desc_for(5, d);
    CHECK_EQ_INT(fw_gallery_enroll(t.g, "z", 1, NULL, 0, d, on_done, &r, err, sizeof err), 0);
    fw_gallery_close(t.g);
    CHECK_EQ_INT(r.fired, 1);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    uv_run(&t.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&t.loop), 0);
}

/* ---- the record codec ------------------------------------------------------------------- */

static void t_record_codec(void)
{
    uint8_t buf[GALOG_REC_MAX];
    galog_rec r, back;
    size_t used, len;
    CHECK_EQ_INT(galog_crc32c(0, "123456789", 9), 0xe3069283u); /* the CRC-32C check value */
    memset(&r, 0, sizeof r);
    r.type = GALOG_ENROLL;
    r.seq = 77;
    r.face_id = 0x0102030405060708ULL;
    r.subject = "Zo\xC3\xAB";
    r.subject_len = 4;
    r.meta = "meta";
    r.meta_len = 4;
    tu_desc_for(5, r.desc);
    len = galog_encode(&r, buf);
    CHECK_EQ_INT(len, galog_rec_size(&r));
    CHECK_EQ_INT(galog_decode(buf, len, &back, &used), 0);
    CHECK_EQ_INT(used, len);
    CHECK(back.type == GALOG_ENROLL && back.seq == 77 && back.face_id == r.face_id);
    CHECK(back.subject_len == 4 && memcmp(back.subject, r.subject, 4) == 0);
    CHECK(back.meta_len == 4 && memcmp(back.meta, "meta", 4) == 0);
    CHECK(memcmp(back.desc, r.desc, sizeof r.desc) == 0);
    /* Every cut and every single flipped bit is refused (CRC-32C catches all 1-bit errors). */
    for (size_t cut = 0; cut < len; cut++)
        CHECK(galog_decode(buf, cut, &back, &used) == -1);
    for (size_t bit = 0; bit < len * 8; bit++) {
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        int rc = galog_decode(buf, len, &back, &used);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK_MSG(rc == -1, "bit %zu flipped and still decoded", bit);
    }
    /* A record whose checksum is right but whose fields are not is still refused. */
    r.type = GALOG_DELETE_SUBJECT;
    r.subject = "\xC0\xAF";
    r.subject_len = 2;
    len = galog_encode(&r, buf);
    CHECK_EQ_INT(galog_decode(buf, len, &back, &used), -1);
    r.type = GALOG_DELETE_FACE;
    r.face_id = 0;
    len = galog_encode(&r, buf);
    CHECK_EQ_INT(galog_decode(buf, len, &back, &used), -1);
    r.face_id = 9;
    len = galog_encode(&r, buf);
    CHECK_EQ_INT(galog_decode(buf, len, &back, &used), 0);
    CHECK(back.type == GALOG_DELETE_FACE && back.face_id == 9);
    /* Garbage: never a crash, never a record. */
    uint64_t st = 1;
    for (int i = 0; i < 20000; i++) {
        for (size_t j = 0; j < 64; j++)
            buf[j] = (uint8_t)tu_splitmix(&st);
        CHECK(galog_decode(buf, (size_t)(tu_splitmix(&st) % 65), &back, &used) == -1);
    }
}

/* ---- durability ------------------------------------------------------------------------- */

static void t_restart(void)
{
    char dir[64], msg[256];
    tg t;
    float d[DIM], got[DIM];
    uint64_t ids[40], n;
    make_tmpdir(dir, sizeof dir);
    CHECK(dir[0]);
    fw_gallery_options o = durable(dir);
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 40; i++) {
        char s[16], m[16];
        snprintf(s, sizeof s, "subj%d", i % 10);
        snprintf(m, sizeof m, "meta%d", i);
        tu_desc_for(i, d);
        CHECK_EQ_INT(enroll(&t, s, m, d, &ids[i], msg), FW_STATUS_OK);
    }
    CHECK_EQ_INT(del_face(&t, ids[0], &n, msg), FW_STATUS_OK);
    CHECK_EQ_INT(del_subject(&t, "subj3", &n, msg), FW_STATUS_OK);
    CHECK_EQ_INT(n, 4);
    fw_gallery_info before, after;
    fw_gallery_info_get(t.g, &before);
    CHECK(before.disk_bytes > 40 * DIM * 4);
    tg_close(&t);

    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, 0);
    CHECK_EQ_INT(t.rep.log_records, 42);
    CHECK_EQ_STR(t.rep.message, "");
    fw_gallery_info_get(t.g, &after);
    CHECK_EQ_INT(after.faces, 35);
    CHECK_EQ_INT(after.subjects, 9);
    CHECK_EQ_INT(after.last_seq, before.last_seq);
    CHECK_EQ_INT(after.next_face_id, 41);
    for (int i = 0; i < 40; i++) {
        fw_gallery_subject s;
        char m[FW_GALLERY_META_MAX], want[16];
        size_t ml;
        int st = fw_gallery_get(t.g, ids[i], &s, m, &ml, got);
        if (i == 0 || i % 10 == 3) {
            CHECK_EQ_INT(st, FW_STATUS_NOT_FOUND);
            continue;
        }
        CHECK_EQ_INT(st, FW_STATUS_OK);
        tu_desc_for(i, d);
        CHECK(memcmp(got, d, sizeof d) == 0);
        snprintf(want, sizeof want, "meta%d", i);
        CHECK(ml == strlen(want) && memcmp(m, want, ml) == 0);
    }
    tu_desc_for(100, d);
    CHECK_EQ_INT(enroll(&t, "new", NULL, d, &n, msg), FW_STATUS_OK);
    CHECK_EQ_INT(n, 41);
    tg_close(&t);
    /* A second process (here: a second open) cannot share the directory. */
    CHECK(tg_open(&t, &o) == 0);
    tg t2;
    CHECK(tg_open(&t2, &o) != 0);
    char want[200];
    snprintf(want, sizeof want, "%s is in use by another process (Resource temporarily unavailable)", dir);
    CHECK_EQ_STR(t2.err, want);
    tg_close(&t);
    rm_dir(dir);
}

static void t_compaction(void)
{
    char dir[64];
    tg t;
    float d[DIM];
    uint64_t ids[300];
    make_tmpdir(dir, sizeof dir);
    CHECK(dir[0]);
    fw_gallery_options o = durable(dir);
    atomic_int compacted = 0;
    o.compact_min_bytes = 16 << 10;
    o.log = count_compactions;
    o.log_arg = &compacted;
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 300; i++) {
        tu_desc_for(i, d);
        CHECK_EQ_INT(enroll(&t, i % 2 ? "odd" : "even", NULL, d, &ids[i], NULL), FW_STATUS_OK);
        if (i % 5 == 0)
            CHECK_EQ_INT(del_face(&t, ids[i], NULL, NULL), FW_STATUS_OK);
    }
    tg_close(&t); /* waits for a merge in progress */
    CHECK(atomic_load(&compacted) >= 1); /* more is timing: see t_merge_semantics */
    CHECK(file_size(dir, GALOG_SNAP_NAME) > 0);
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_OLD), -1); /* every closed segment was merged */

    fw_gallery_info info;
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    CHECK(t.rep.snapshot_faces > 0);
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 240);
    CHECK_EQ_INT(info.next_face_id, 301);
    for (int i = 0; i < 300; i++)
        CHECK_EQ_INT(fw_gallery_get(t.g, ids[i], NULL, NULL, NULL, NULL),
                     i % 5 == 0 ? FW_STATUS_NOT_FOUND : FW_STATUS_OK);
    tg_close(&t);
    rm_dir(dir);
}

/* Background merges (snapshot + closed segment, from the files) keep exactly what the log
 * says: a subject deleted and enrolled again keeps its new faces, deleted faces stay gone. */
static void t_merge_semantics(void)
{
    char dir[64];
    tg t;
    float d[DIM];
    uint64_t id, x2[3], y[6];
    atomic_int compacted = 0;
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.compact_min_bytes = 4096; /* a rotation about every 8 records */
    o.log = count_compactions;
    o.log_arg = &compacted;
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 10; i++) {
        tu_desc_for((uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "x", NULL, d, &id, NULL), FW_STATUS_OK);
    }
    uint64_t n;
    CHECK_EQ_INT(del_subject(&t, "x", &n, NULL), FW_STATUS_OK);
    CHECK_EQ_INT(n, 10);
    for (int i = 0; i < 3; i++) {
        tu_desc_for(100 + (uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "x", "again", d, &x2[i], NULL), FW_STATUS_OK);
    }
    CHECK_EQ_INT(del_face(&t, x2[1], NULL, NULL), FW_STATUS_OK);
    for (int i = 0; i < 6; i++) {
        tu_desc_for(200 + (uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "y", NULL, d, &y[i], NULL), FW_STATUS_OK);
    }
    for (int i = 0; i < 12; i++) { /* more records, to push the last ones through a merge */
        tu_desc_for(300 + (uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "z", NULL, d, &id, NULL), FW_STATUS_OK);
    }
    CHECK_EQ_INT(del_subject(&t, "z", &n, NULL), FW_STATUS_OK);
    tg_close(&t);
    /* The first rotation (after record 8) always happens and close waits for its merge; how
     * many later ones run depends on whether the compactor was still busy when the log grew
     * again. The content below must be right either way. */
    CHECK(atomic_load(&compacted) >= 1);

    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 2 + 6);
    CHECK_EQ_INT(info.subjects, 2);
    fw_gallery_subject subj;
    char meta[FW_GALLERY_META_MAX];
    size_t ml;
    CHECK_EQ_INT(fw_gallery_get(t.g, x2[0], &subj, meta, &ml, NULL), FW_STATUS_OK);
    CHECK(subj.faces == 2 && ml == 5 && memcmp(meta, "again", 5) == 0);
    CHECK_EQ_INT(fw_gallery_get(t.g, x2[1], NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    CHECK_EQ_INT(fw_gallery_get(t.g, x2[2], NULL, NULL, NULL, NULL), FW_STATUS_OK);
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(fw_gallery_get(t.g, y[i], NULL, NULL, NULL, NULL), FW_STATUS_OK);
    CHECK_EQ_INT(info.next_face_id, 32);
    tg_close(&t);
    rm_dir(dir);
}

/* A crash between closing a log segment and merging it leaves gallery.log.old beside the new
 * gallery.log: the next start replays both, in order, and folds them into a snapshot. */
static void t_crash_mid_compaction(void)
{
    char dir[64], p[128];
    tg t;
    float d[DIM];
    uint64_t ids[6];
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 4; i++) {
        tu_desc_for((uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "a", NULL, d, &ids[i], NULL), FW_STATUS_OK);
    }
    tg_close(&t);
    /* Do by hand what the writer does when it rotates: rename, then a new log at seq 4. */
    char from[128], to[128];
    snprintf(from, sizeof from, "%s/" GALOG_LOG_NAME, dir);
    snprintf(to, sizeof to, "%s/" GALOG_LOG_OLD, dir);
    CHECK(rename(from, to) == 0);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    char err[256];
    int lfd = galog_log_create(dfd, NULL, 4, err, sizeof err);
    CHECK(lfd >= 0);
    close(lfd);
    close(dfd);
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.log_records, 4);
    tu_desc_for(4, d);
    CHECK_EQ_INT(enroll(&t, "b", NULL, d, &ids[4], NULL), FW_STATUS_OK);
    CHECK_EQ_INT(del_face(&t, ids[0], NULL, NULL), FW_STATUS_OK);
    tg_close(&t); /* waits for the merge the start-up handed to the compactor */
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_OLD), -1);
    CHECK_EQ_INT(file_size(dir, GALOG_SNAP_NAME), /* the 4 faces of "a" (1-byte subject) */
                 GALOG_SNAP_HDR + 4 * (REC - 1) + GALOG_SNAP_TRAILER);
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.snapshot_faces, 4);
    CHECK_EQ_INT(t.rep.log_records, 2);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 4);
    CHECK_EQ_INT(info.last_seq, 6);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[0], NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    tg_close(&t);
    /* A closed segment with records missing before the live log is refused, not guessed at. */
    snprintf(p, sizeof p, "%s/" GALOG_LOG_NAME, dir);
    CHECK(rename(p, to) == 0); /* the live log becomes the "segment" (start seq 4)... */
    dfd = open(dir, O_RDONLY | O_DIRECTORY);
    lfd = galog_log_create(dfd, NULL, 9, err, sizeof err); /* ...and a log starting at 9 */
    CHECK(lfd >= 0);
    close(lfd);
    close(dfd);
    CHECK(tg_open(&t, &o) != 0);
    CHECK_EQ_STR(t.err, "gallery.log: starts after seq 9 but the records before it end at seq 6: "
                 "records are missing; start with --repair to accept the loss");
    /* --repair accepts the gap and rewrites the state, so the next plain start is clean. */
    o.repair = 1;
    CHECK(tg_open(&t, &o) == 0);
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 4);
    CHECK_EQ_INT(info.last_seq, 9);
    tg_close(&t);
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_OLD), -1);
    o.repair = 0;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.snapshot_faces, 4);
    tg_close(&t);
    rm_dir(dir);
}

/* Write n faces "f<i>" (same-length subjects for i < 10, no metadata) and close. */
static int write_n(const char *dir, int n, uint64_t *ids)
{
    tg t;
    float d[DIM];
    fw_gallery_options o = durable(dir);
    if (tg_open(&t, &o) != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        char s[16];
        snprintf(s, sizeof s, "f%d", i);
        tu_desc_for(i, d);
        if (enroll(&t, s, NULL, d, &ids[i], NULL) != FW_STATUS_OK)
            return -1;
    }
    tg_close(&t);
    return 0;
}

static int patch_file(const char *dir, const char *name, off_t off, int truncate_to_off)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_RDWR);
    if (fd < 0)
        return -1;
    int rc = 0;
    if (truncate_to_off) {
        rc = ftruncate(fd, off);
    } else {
        unsigned char b;
        if (pread(fd, &b, 1, off) != 1)
            rc = -1;
        b ^= 0x40;
        if (rc == 0 && pwrite(fd, &b, 1, off) != 1)
            rc = -1;
    }
    close(fd);
    return rc;
}


static void t_torn_tail(void)
{
    char dir[64];
    uint64_t ids[10];
    tg t;
    make_tmpdir(dir, sizeof dir);
    CHECK(write_n(dir, 10, ids) == 0);
    off_t size = file_size(dir, GALOG_LOG_NAME);
    CHECK_EQ_INT(size, GALOG_LOG_HDR + 10 * REC);
    CHECK(patch_file(dir, GALOG_LOG_NAME, size - 3, 1) == 0); /* crash mid-append */
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, REC - 3);
    CHECK_EQ_INT(t.rep.log_records, 9);
    char want[128];
    snprintf(want, sizeof want, "gallery: cut a torn tail of %lld bytes; repair dropped 0 bytes "
             "in 0 places", (long long)(REC - 3));
    CHECK_EQ_STR(t.rep.message, want);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[9], NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[8], NULL, NULL, NULL, NULL), FW_STATUS_OK);
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_NAME), GALOG_LOG_HDR + 9 * REC);
    /* New records follow the last good one; the next start is clean. */
    float d[DIM];
    uint64_t id;
    tu_desc_for(99, d);
    CHECK_EQ_INT(enroll(&t, "g", NULL, d, &id, NULL), FW_STATUS_OK);
    /* The cut stands for a crash before record 10 was whole, so before it was acknowledged:
     * no client can hold id 10, and it is handed out again. */
    CHECK_EQ_INT(id, 10);
    tg_close(&t);
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, 0);
    CHECK_EQ_INT(t.rep.log_records, 10);
    tg_close(&t);
    rm_dir(dir);
}

static void t_corrupt_last_record(void)
{
    char dir[64];
    uint64_t ids[10];
    tg t;
    make_tmpdir(dir, sizeof dir);
    CHECK(write_n(dir, 10, ids) == 0);
    /* A flipped byte inside the descriptor of the last record. */
    CHECK(patch_file(dir, GALOG_LOG_NAME, GALOG_LOG_HDR + 9 * REC + 100, 0) == 0);
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, REC);
    CHECK_EQ_INT(t.rep.log_records, 9);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 9);
    CHECK_EQ_INT(info.last_seq, 9);
    tg_close(&t);
    rm_dir(dir);
}

static void t_corrupt_middle(void)
{
    char dir[64], want[400];
    uint64_t ids[10];
    tg t;
    make_tmpdir(dir, sizeof dir);
    CHECK(write_n(dir, 10, ids) == 0);
    off_t bad = GALOG_LOG_HDR + 4 * REC;
    CHECK(patch_file(dir, GALOG_LOG_NAME, bad + 20, 0) == 0); /* record 5 of 10 */
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) != 0);
    snprintf(want, sizeof want, "gallery.log: corrupt record at offset %lld (seq 5 expected) "
             "followed by a valid record at offset %lld (seq 6); start with --repair to drop the "
             "%lld bad bytes", (long long)bad, (long long)(bad + REC), (long long)REC);
    CHECK_EQ_STR(t.err, want);
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_NAME), GALOG_LOG_HDR + 10 * REC); /* untouched */

    o.repair = 1;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.repaired_bytes, REC);
    CHECK_EQ_INT(t.rep.repaired_records, 1);
    CHECK_EQ_INT(t.rep.log_records, 9);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[4], NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[5], NULL, NULL, NULL, NULL), FW_STATUS_OK);
    tg_close(&t);
    /* Repair rewrote the state (snapshot + fresh log): a plain start now works. */
    o.repair = 0;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.snapshot_faces, 9);
    CHECK_EQ_INT(t.rep.log_records, 0);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 9);
    CHECK_EQ_INT(info.next_face_id, 11);
    tg_close(&t);
    rm_dir(dir);
}

static void t_snapshot_damaged(void)
{
    char dir[64], want[300];
    tg t;
    float d[DIM];
    uint64_t id;
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    o.compact_min_bytes = 4096; /* one compaction after the 8th record, none after */
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 10; i++) {
        char s[8];
        snprintf(s, sizeof s, "f%d", i);
        tu_desc_for((uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, s, NULL, d, &id, NULL), FW_STATUS_OK);
    }
    tg_close(&t);
    CHECK_EQ_INT(file_size(dir, GALOG_SNAP_NAME), GALOG_SNAP_HDR + 8 * REC + GALOG_SNAP_TRAILER);
    off_t bad = GALOG_SNAP_HDR + 3 * REC;
    CHECK(patch_file(dir, GALOG_SNAP_NAME, bad + 100, 0) == 0);
    CHECK(tg_open(&t, &o) != 0);
    snprintf(want, sizeof want, "gallery.snap: damaged record at offset %lld (face 3 of 8); "
             "start with --repair to keep the faces before it", (long long)bad);
    CHECK_EQ_STR(t.err, want);
    o.repair = 1;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.snapshot_faces, 3);
    CHECK_EQ_INT(t.rep.log_records, 2);
    tg_close(&t);
    o.repair = 0;
    CHECK(tg_open(&t, &o) == 0); /* repair rewrote a clean snapshot */
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 5);
    CHECK_EQ_INT(info.next_face_id, 11);
    tg_close(&t);
    rm_dir(dir);
}

/* Whatever the disk hands back, opening never crashes: it fails with a message, or loads
 * faces that decode. 300 mangled copies of a real log, each opened with and without repair. */
static void t_mangled_logs(void)
{
    char dir[64], path[128];
    uint64_t ids[10];
    make_tmpdir(dir, sizeof dir);
    CHECK(write_n(dir, 10, ids) == 0);
    snprintf(path, sizeof path, "%s/" GALOG_LOG_NAME, dir);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    uint8_t orig[GALOG_LOG_HDR + 10 * 600], buf[sizeof orig];
    size_t len = fread(orig, 1, sizeof orig, f);
    fclose(f);
    CHECK_EQ_INT(len, GALOG_LOG_HDR + 10 * REC);
    uint64_t st = 12345;
    int opened = 0, refused = 0;
    for (int round = 0; round < 300; round++) {
        size_t n = len;
        memcpy(buf, orig, len);
        int edits = 1 + (int)(tu_splitmix(&st) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = tu_splitmix(&st) % n;
            switch (tu_splitmix(&st) % 3) {
            case 0: buf[at] ^= (uint8_t)(1 + tu_splitmix(&st) % 255); break; /* flip */
            case 1: n = at + 1; break;                                       /* cut */
            default:                                                         /* smear */
                for (size_t j = at; j < n && j < at + 16; j++)
                    buf[j] = (uint8_t)tu_splitmix(&st);
            }
        }
        f = fopen(path, "wb");
        CHECK(f != NULL);
        CHECK(fwrite(buf, 1, n, f) == n);
        fclose(f);
        for (int repair = 0; repair < 2; repair++) {
            tg t;
            fw_gallery_options o = durable(dir);
            o.log = quiet_log;
            o.repair = repair;
            if (tg_open(&t, &o) != 0) {
                CHECK(t.err[0] != '\0');
                refused++;
                continue;
            }
            opened++;
            fw_gallery_info info;
            fw_gallery_info_get(t.g, &info);
            CHECK(info.faces <= 10);
            for (int i = 0; i < 10; i++) { /* what is there is whole */
                float got[DIM], want[DIM];
                if (fw_gallery_get(t.g, ids[i], NULL, NULL, NULL, got) != FW_STATUS_OK)
                    continue;
                tu_desc_for((uint64_t)i, want);
                CHECK(memcmp(got, want, sizeof got) == 0);
            }
            tg_close(&t);
            /* repair may have rewritten the files: start the next round from scratch */
            char p2[128];
            snprintf(p2, sizeof p2, "%s/" GALOG_SNAP_NAME, dir);
            unlink(p2);
        }
    }
    CHECK(opened > 0 && refused > 0);
    rm_dir(dir);
}

static void t_bad_headers(void)
{
    char dir[64], want[300];
    uint64_t ids[3];
    tg t;
    make_tmpdir(dir, sizeof dir);
    CHECK(write_n(dir, 3, ids) == 0);
    CHECK(patch_file(dir, GALOG_LOG_NAME, 2, 0) == 0);
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) != 0);
    snprintf(want, sizeof want, "gallery.log: bad header (%lld bytes); start with --repair to "
             "discard the log", (long long)(GALOG_LOG_HDR + 3 * REC));
    CHECK_EQ_STR(t.err, want);
    rm_dir(dir);
}

/* ---- write failures --------------------------------------------------------------------- */

enum { IO_OK, IO_ENOSPC_PARTIAL, IO_EIO_SYNC };

typedef struct faulty {
    _Atomic int mode;
    int wrote_part; /* writer thread only */
} faulty;

static ssize_t faulty_pwrite(void *ctx, int fd, const void *buf, size_t len, off_t off)
{
    faulty *f = ctx;
    if (atomic_load(&f->mode) == IO_ENOSPC_PARTIAL) {
        if (!f->wrote_part && len > 1) { /* half of it lands, then the disk is full */
            f->wrote_part = 1;
            return pwrite(fd, buf, len / 2, off);
        }
        f->wrote_part = 0;
        errno = ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

static int faulty_sync(void *ctx, int fd)
{
    faulty *f = ctx;
    if (atomic_load(&f->mode) == IO_EIO_SYNC) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static void t_write_failure(void)
{
    char dir[64], msg[256];
    tg t;
    float d[DIM], q[DIM];
    uint64_t ids[4], id;
    faulty f = { IO_OK, 0 };
    fw_gallery_io io = { faulty_pwrite, faulty_sync, &f };
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.io = &io;
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 3; i++) {
        tu_desc_for(i, d);
        CHECK_EQ_INT(enroll(&t, "ok", NULL, d, &ids[i], msg), FW_STATUS_OK);
    }
    off_t size = file_size(dir, GALOG_LOG_NAME);

    atomic_store(&f.mode, IO_ENOSPC_PARTIAL);
    tu_desc_for(10, d);
    CHECK_EQ_INT(enroll(&t, "nospace", NULL, d, &id, msg), FW_STATUS_INTERNAL);
    CHECK_EQ_STR(msg, "gallery write failed: No space left on device");
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_NAME), size); /* the half record was cut back */
    CHECK_EQ_INT(del_face(&t, ids[0], NULL, msg), FW_STATUS_INTERNAL);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[0], NULL, NULL, NULL, NULL), FW_STATUS_OK);

    atomic_store(&f.mode, IO_EIO_SYNC);
    CHECK_EQ_INT(enroll(&t, "eio", NULL, d, &id, msg), FW_STATUS_INTERNAL);
    CHECK_EQ_STR(msg, "gallery write failed: Input/output error");
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_NAME), size);

    /* Reads went on being served, and nothing of the failed requests is visible. */
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 3);
    CHECK_EQ_INT(info.write_errors, 3);
    fw_gallery_match m[5];
    int cnt;
    CHECK_EQ_INT(search1(&t, d, 5, INFINITY, m, &cnt), FW_STATUS_OK);
    CHECK_EQ_INT(cnt, 3);
    for (int i = 0; i < cnt; i++)
        CHECK_EQ_STR(m[i].subject, "ok");

    atomic_store(&f.mode, IO_OK);
    tu_desc_for(11, q);
    CHECK_EQ_INT(enroll(&t, "later", NULL, q, &ids[3], msg), FW_STATUS_OK);
    tg_close(&t);

    CHECK(tg_open(&t, &o) == 0);
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 4);
    CHECK_EQ_INT(info.last_seq, 4);
    CHECK_EQ_INT(t.rep.truncated_bytes, 0);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[3], NULL, NULL, NULL, NULL), FW_STATUS_OK);
    tg_close(&t);
    rm_dir(dir);
}

/* An io hook failing only the compactor's snapshot writes (recognised by the file name). */
typedef struct snapfail {
    atomic_int fail;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int failed_lines, compacted_lines;
} snapfail;

static ssize_t snapfail_pwrite(void *ctx, int fd, const void *buf, size_t len, off_t off)
{
    snapfail *sf = ctx;
    char link[64], path[512];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n > 0 ? n : 0] = '\0';
    if (atomic_load(&sf->fail) && strstr(path, GALOG_SNAP_TMP)) {
        errno = ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

static void snapfail_log(void *arg, const char *line)
{
    snapfail *sf = arg;
    pthread_mutex_lock(&sf->mu);
    if (strncmp(line, "compaction failed", 17) == 0)
        sf->failed_lines++;
    if (strncmp(line, "compacted", 9) == 0)
        sf->compacted_lines++;
    pthread_cond_broadcast(&sf->cv);
    pthread_mutex_unlock(&sf->mu);
}

/* A merge that fails (disk full for the new snapshot) leaves the closed segment in place and
 * costs no request anything; the writer retries later and the retry folds it in. */
static void t_compaction_failure(void)
{
    char dir[64];
    tg t;
    float d[DIM];
    uint64_t ids[60];
    snapfail sf;
    memset(&sf, 0, sizeof sf);
    pthread_mutex_init(&sf.mu, NULL);
    pthread_cond_init(&sf.cv, NULL);
    atomic_store(&sf.fail, 1);
    fw_gallery_io io = { snapfail_pwrite, NULL, &sf };
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.io = &io;
    o.log = snapfail_log;
    o.log_arg = &sf;
    o.compact_min_bytes = 4096;
    CHECK(tg_open(&t, &o) == 0);
    int i = 0;
    for (; i < 10; i++) { /* past the first rotation */
        tu_desc_for((uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "c", NULL, d, &ids[i], NULL), FW_STATUS_OK);
    }
    pthread_mutex_lock(&sf.mu);
    while (!sf.failed_lines)
        pthread_cond_wait(&sf.cv, &sf.mu);
    pthread_mutex_unlock(&sf.mu);
    CHECK(file_size(dir, GALOG_LOG_OLD) > 0);
    CHECK_EQ_INT(file_size(dir, GALOG_SNAP_TMP), -1); /* the half snapshot was removed */
    atomic_store(&sf.fail, 0);
    for (; i < 60; i++) { /* > compact_min_bytes more log: the writer retries the merge */
        tu_desc_for((uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "c", NULL, d, &ids[i], NULL), FW_STATUS_OK);
    }
    tg_close(&t);
    CHECK(sf.compacted_lines >= 1);
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_OLD), -1);
    o.io = NULL;
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    CHECK(t.rep.snapshot_faces >= 10);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 60);
    tg_close(&t);
    pthread_mutex_destroy(&sf.mu);
    pthread_cond_destroy(&sf.cv);
    rm_dir(dir);
}

/* An io hook that can hold the writer inside pwrite, to fill its queue deterministically. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, open;
} gate;

static ssize_t gate_pwrite(void *ctx, int fd, const void *buf, size_t len, off_t off)
{
    gate *gt = ctx;
    pthread_mutex_lock(&gt->mu);
    gt->entered++;
    pthread_cond_broadcast(&gt->cv);
    while (!gt->open)
        pthread_cond_wait(&gt->cv, &gt->mu);
    pthread_mutex_unlock(&gt->mu);
    return pwrite(fd, buf, len, off);
}

static void t_queue_full(void)
{
    char dir[64], err[128];
    tg t;
    float d[DIM];
    result r[3];
    gate gt = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 1 };
    fw_gallery_io io = { gate_pwrite, NULL, &gt };
    memset(r, 0, sizeof r);
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.io = &io;
    o.queue_max = 2;
    CHECK(tg_open(&t, &o) == 0);
    tu_desc_for(1, d);
    pthread_mutex_lock(&gt.mu);
    gt.open = 0;
    int before = gt.entered;
    pthread_mutex_unlock(&gt.mu);
    CHECK_EQ_INT(fw_gallery_enroll(t.g, "q", 1, NULL, 0, d, on_done, &r[0], err, sizeof err), 0);
    pthread_mutex_lock(&gt.mu); /* the writer took it and is now held inside pwrite */
    while (gt.entered == before)
        pthread_cond_wait(&gt.cv, &gt.mu);
    pthread_mutex_unlock(&gt.mu);
    CHECK_EQ_INT(fw_gallery_enroll(t.g, "q", 1, NULL, 0, d, on_done, &r[1], err, sizeof err), 0);
    CHECK_EQ_INT(fw_gallery_enroll(t.g, "q", 1, NULL, 0, d, on_done, &r[2], err, sizeof err), 0);
    result extra = { 0 };
    CHECK_EQ_INT(fw_gallery_enroll(t.g, "q", 1, NULL, 0, d, on_done, &extra, err, sizeof err),
                 FW_STATUS_BUSY);
    CHECK_EQ_STR(err, "gallery write queue full (2 waiting)");
    pthread_mutex_lock(&gt.mu);
    gt.open = 1;
    pthread_cond_broadcast(&gt.cv);
    pthread_mutex_unlock(&gt.mu);
    for (int i = 0; i < 3; i++) {
        wait_for(&t, &r[i]);
        CHECK_EQ_INT(r[i].status, FW_STATUS_OK);
    }
    CHECK_EQ_INT(extra.fired, 0); /* a refused request never gets a callback */
    tg_close(&t);
    rm_dir(dir);
}

/* A real full file system. Needs root and mount(2); says so loudly when it cannot run. */
static void tmpfs_full_body(const char *dir)
{
    char msg[256];
    tg t;
    float d[DIM];
    uint64_t id;
    int acked = 0, st = FW_STATUS_OK;
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    o.compact_min_bytes = 1 << 30; /* no snapshot: the log alone fills the disk */
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 1000 && st == FW_STATUS_OK; i++) {
        tu_desc_for((uint64_t)i, d);
        st = enroll(&t, "fill", NULL, d, &id, msg);
        acked += st == FW_STATUS_OK;
    }
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    fw_gallery_match m[1];
    int cnt = 0, sst;
    tu_desc_for(0, d);
    sst = search1(&t, d, 1, INFINITY, m, &cnt);
    tg_close(&t);
    CHECK_EQ_INT(st, FW_STATUS_INTERNAL);
    CHECK_EQ_STR(msg, "gallery write failed: No space left on device");
    CHECK(acked > 10);
    CHECK_EQ_INT(info.faces, acked);
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_NAME), GALOG_LOG_HDR + acked * (REC + 2)); /* "fill" */
    CHECK_EQ_INT(sst, FW_STATUS_OK); /* reads went on */
    CHECK_EQ_INT(cnt, 1);
    /* Everything acknowledged is there after a restart, and nothing else. */
    CHECK(tg_open(&t, &o) == 0);
    fw_gallery_info_get(t.g, &info);
    int truncated = (int)t.rep.truncated_bytes;
    tg_close(&t);
    CHECK_EQ_INT(info.faces, acked);
    CHECK_EQ_INT(truncated, 0);
}

static void t_tmpfs_full(void)
{
    char dir[64];
    make_tmpdir(dir, sizeof dir);
    CHECK(dir[0]);
    if (mount("tmpfs", dir, "tmpfs", 0, "size=64k") != 0) {
        printf("SKIPPED t_tmpfs_full: mount tmpfs refused (%s); the injected-failure test "
               "covers ENOSPC\n", strerror(errno));
        rmdir(dir);
        return;
    }
    tmpfs_full_body(dir); /* its CHECKs return here, so the unmount always happens */
    if (umount(dir) != 0)
        CHECK_FAIL_("umount %s: %s", dir, strerror(errno));
    rmdir(dir);
}

/* ---- kill -9 mid-stream ----------------------------------------------------------------- */

typedef struct child_state {
    tg t;
    int fd, next, inflight;
    result res[16];
    int idx[16];
} child_state;

static void child_send(child_state *c, int slot);

/* The child: enroll p<i> with desc i and meta m<i> forever, 16 in flight; report each ack. */
static int child_main(const char *dir, int fd)
{
    child_state c;
    memset(&c, 0, sizeof c);
    fw_gallery_options o = durable(dir);
    o.compact_min_bytes = 48 << 10; /* compactions happen while we are killed, too */
    o.log = quiet_log;
    if (tg_open(&c.t, &o) != 0) {
        fprintf(stderr, "child: %s\n", c.t.err);
        return 1;
    }
    c.fd = fd;
    for (int s = 0; s < 16; s++)
        child_send(&c, s);
    for (;;) {
        uv_run(&c.t.loop, UV_RUN_ONCE);
        for (int s = 0; s < 16; s++) {
            if (!c.res[s].fired)
                continue;
            if (c.res[s].status != FW_STATUS_OK)
                return 2;
            uint64_t rec[2] = { (uint64_t)c.idx[s], c.res[s].value };
            if (write(fd, rec, sizeof rec) != sizeof rec)
                return 3;
            child_send(&c, s);
        }
    }
}

static void child_send(child_state *c, int slot)
{
    char s[32], m[32], err[128];
    float d[DIM];
    int i = c->next++;
    snprintf(s, sizeof s, "p%d", i);
    snprintf(m, sizeof m, "m%d", i);
    tu_desc_for(i, d);
    memset(&c->res[slot], 0, sizeof c->res[slot]);
    c->idx[slot] = i;
    fw_gallery_enroll(c->t.g, s, strlen(s), m, strlen(m), d, on_done, &c->res[slot], err,
                      sizeof err);
}

static void t_kill9_during_enrolls(void)
{
    char dir[64], self[512], fdarg[16];
    int p[2];
    make_tmpdir(dir, sizeof dir);
    CHECK(dir[0]);
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(sl > 0);
    self[sl] = '\0';
    enum { MAXACK = 100000 };
    uint64_t *acked = calloc(MAXACK, sizeof *acked); /* index -> face id (0 = not acked) */
    CHECK(acked != NULL);
    CHECK(pipe(p) == 0);
    snprintf(fdarg, sizeof fdarg, "%d", p[1]);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        execl(self, self, "--child-enroll", dir, fdarg, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    /* Read acknowledgements; after 400 of them, kill -9 and read what was acked before. */
    int nack = 0, maxidx = -1;
    uint64_t rec[2];
    size_t have = 0;
    unsigned char *rb = (unsigned char *)rec;
    for (;;) {
        ssize_t n = read(p[0], rb + have, sizeof rec - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        if (have < sizeof rec)
            continue;
        have = 0;
        if (rec[0] < MAXACK) {
            acked[rec[0]] = rec[1];
            if ((int)rec[0] > maxidx)
                maxidx = (int)rec[0];
        }
        if (++nack == 400)
            kill(pid, SIGKILL);
    }
    close(p[0]);
    int wst;
    CHECK(waitpid(pid, &wst, 0) == pid);
    CHECK_MSG(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "child exited %d before the kill",
              WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
    CHECK(nack >= 400);

    tg t;
    fw_gallery_options o = durable(dir);
    o.log = quiet_log;
    CHECK_MSG(tg_open(&t, &o) == 0, "reopen: %s", t.err);
    /* Every acknowledged enroll is there, whole. */
    for (int i = 0; i <= maxidx; i++) {
        if (!acked[i])
            continue;
        fw_gallery_subject s;
        char m[FW_GALLERY_META_MAX], want[32];
        size_t ml;
        float got[DIM], d[DIM];
        CHECK_EQ_INT(fw_gallery_get(t.g, acked[i], &s, m, &ml, got), FW_STATUS_OK);
        snprintf(want, sizeof want, "p%d", i);
        CHECK_EQ_STR(s.subject, want);
        snprintf(want, sizeof want, "m%d", i);
        CHECK(ml == strlen(want) && memcmp(m, want, ml) == 0);
        tu_desc_for(i, d);
        CHECK(memcmp(got, d, sizeof d) == 0);
    }
    /* Nothing is half there: every subject present is one p<i> with exactly its own face. */
    fw_gallery_subject page[256];
    char cur[FW_GALLERY_SUBJECT_MAX + 1] = "", err[128];
    size_t cur_len = 0;
    int n, total = 0;
    do {
        CHECK_EQ_INT(fw_gallery_list(t.g, cur, cur_len, 256, page, &n, cur, &cur_len, err,
                                     sizeof err), FW_STATUS_OK);
        for (int j = 0; j < n; j++) {
            int i = atoi(page[j].subject + 1);
            float d[DIM];
            fw_gallery_match mm[1];
            int cnt;
            CHECK(page[j].subject[0] == 'p' && page[j].faces == 1);
            tu_desc_for(i, d);
            CHECK_EQ_INT(search1(&t, d, 1, INFINITY, mm, &cnt), FW_STATUS_OK);
            CHECK(cnt == 1 && mm[0].distance == 0.0f);
            CHECK_EQ_STR(mm[0].subject, page[j].subject);
            total++;
        }
    } while (cur_len);
    CHECK(total >= nack);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, total);
    printf("  kill -9 after %d acks: %d faces on restart (%llu from the snapshot, %llu from "
           "the log), %llu torn bytes cut\n", nack, total,
           (unsigned long long)t.rep.snapshot_faces, (unsigned long long)t.rep.log_records,
           (unsigned long long)t.rep.truncated_bytes);
    tg_close(&t);
    free(acked);
    rm_dir(dir);
}

/* ---- concurrency (TSan) ----------------------------------------------------------------- */

enum { ANCHORS = 40 };

typedef struct race {
    fw_gallery *g;
    _Atomic int stop;
    _Atomic int started;
    _Atomic long searches, failures;
} race;

static void *searcher(void *arg)
{
    race *r = arg;
    uint64_t s = (uint64_t)(uintptr_t)&s;
    float q[4 * DIM];
    fw_gallery_match m[4 * 8];
    int cnt[4];
    char err[128];
    atomic_fetch_add(&r->started, 1);
    while (!atomic_load(&r->stop)) {
        int nq = 1 + (int)(tu_splitmix(&s) % 4), a[4];
        for (int i = 0; i < nq; i++) {
            a[i] = (int)(tu_splitmix(&s) % ANCHORS);
            tu_desc_for((uint64_t)a[i], q + i * DIM);
        }
        if (fw_gallery_search(r->g, q, nq, 8, INFINITY, m, cnt, NULL, err, sizeof err) != 0) {
            atomic_fetch_add(&r->failures, 1);
            continue;
        }
        for (int i = 0; i < nq; i++) {
            char want[16];
            snprintf(want, sizeof want, "a%d", a[i]);
            /* The anchor is never deleted: it must always be the exact top match. */
            if (cnt[i] < 1 || m[i * 8].distance != 0.0f || strcmp(m[i * 8].subject, want) != 0)
                atomic_fetch_add(&r->failures, 1);
            for (int j = 1; j < cnt[i]; j++)
                if (m[i * 8 + j].distance < m[i * 8 + j - 1].distance ||
                    (m[i * 8 + j].subject[0] != 'a' && m[i * 8 + j].subject[0] != 'c'))
                    atomic_fetch_add(&r->failures, 1);
        }
        /* and a page of the listing, and a get */
        fw_gallery_subject page[8];
        char next[FW_GALLERY_SUBJECT_MAX + 1];
        size_t next_len;
        int n;
        fw_gallery_list(r->g, "", 0, 8, page, &n, next, &next_len, err, sizeof err);
        if (n < 1)
            atomic_fetch_add(&r->failures, 1);
        if (fw_gallery_get(r->g, 1 + tu_splitmix(&s) % ANCHORS, NULL, NULL, NULL, NULL) != 0)
            atomic_fetch_add(&r->failures, 1);
        atomic_fetch_add(&r->searches, 1);
    }
    return NULL;
}

static void t_identify_races_enroll_delete(void)
{
    char dir[64];
    tg t;
    float d[DIM];
    race r;
    pthread_t th[2];
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.compact_min_bytes = 64 << 10; /* snapshots run during the searches too */
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < ANCHORS; i++) {
        char s[16];
        snprintf(s, sizeof s, "a%d", i);
        tu_desc_for((uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, s, NULL, d, NULL, NULL), FW_STATUS_OK);
    }
    memset(&r, 0, sizeof r);
    r.g = t.g;
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&th[i], NULL, searcher, &r) == 0);
    while (atomic_load(&r.started) < 2)
        sched_yield();
    /* Churn: batches of 32 enrolls in flight (matrix growth, new subjects), then deletes of
     * single faces and of whole subjects, while the searchers run. */
    int failures = 0;
    for (int round = 0; round < 12; round++) {
        result res[32];
        memset(res, 0, sizeof res);
        for (int i = 0; i < 32; i++) {
            char s[16], err[128];
            snprintf(s, sizeof s, "c%d", round * 4 + i % 4);
            tu_desc_for(10000 + (uint64_t)round * 32 + i, d);
            if (fw_gallery_enroll(t.g, s, strlen(s), NULL, 0, d, on_done, &res[i], err,
                                  sizeof err) != 0)
                failures++;
        }
        for (int i = 0; i < 32; i++) {
            wait_for(&t, &res[i]);
            failures += res[i].status != FW_STATUS_OK;
        }
        for (int i = 0; i < 32; i += 2)
            failures += del_face(&t, res[i].value, NULL, NULL) != FW_STATUS_OK;
        char s[16];
        snprintf(s, sizeof s, "c%d", round * 4 + 1);
        failures += del_subject(&t, s, NULL, NULL) != FW_STATUS_OK;
    }
    atomic_store(&r.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ_INT(failures, 0);
    CHECK_EQ_INT(atomic_load(&r.failures), 0);
    CHECK(atomic_load(&r.searches) > 0);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    /* per round: c0 and c2 lose all 8 faces to single deletes, c1 goes as a subject */
    CHECK_EQ_INT(info.faces, ANCHORS + 12 * 8);
    tg_close(&t);
    rm_dir(dir);
}

/* ---- encryption at rest (--gallery-key) -------------------------------------------------- */

/* The size of the encrypted form of REC: nonce and tag instead of the CRC (docs/gallery.md). */
#define EREC (REC + (off_t)(GALOG_SREC_MAX - GALOG_REC_MAX))

static const uint8_t key_a[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31 };
static const uint8_t key_b[32] = { 99 };

/* Read a whole file of dir into a malloc'd buffer (*len bytes), or NULL. */
static uint8_t *slurp(const char *dir, const char *name, size_t *len)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = malloc(1 << 22);
    *len = buf ? fread(buf, 1, 1 << 22, f) : 0;
    fclose(f);
    return buf;
}

static int contains(const uint8_t *hay, size_t n, const void *needle, size_t m)
{
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return 1;
    return 0;
}

/* No subject, metadata or descriptor bytes of what was enrolled may reach the file. */
static void check_no_plaintext(const char *dir, const char *name, const char *magic)
{
    size_t n = 0;
    uint8_t *b = slurp(dir, name, &n);
    CHECK(b != NULL && n > 8);
    if (!b)
        return;
    CHECK(memcmp(b, magic, 8) == 0);
    CHECK(!contains(b, n, "AliceSecret", 11));
    CHECK(!contains(b, n, "MetaSecret", 10));
    float d[DIM];
    for (int i = 1; i < 300; i += 37) {
        tu_desc_for((uint64_t)i, d);
        CHECK(!contains(b, n, d, 16)); /* four floats in a row, in host = on-disk order */
    }
    free(b);
}

static void t_encrypted_codec(void)
{
    uint8_t buf[GALOG_SREC_MAX], scratch[GALOG_REC_MAX], fid[GALOG_FILE_ID_LEN] = { 7 };
    galog_rec r, back;
    size_t used = 0;
    memset(&r, 0, sizeof r);
    r.type = GALOG_ENROLL;
    r.seq = 5;
    r.face_id = 42;
    r.subject = "AliceSecret";
    r.subject_len = 11;
    tu_desc_for(3, r.desc);
    size_t len = galog_encode_key(key_a, fid, &r, buf);
    CHECK_EQ_INT(len, galog_rec_size(&r) + (GALOG_SREC_MAX - GALOG_REC_MAX));
    CHECK(!contains(buf, len, "AliceSecret", 11));
    CHECK_EQ_INT(galog_decode_key(key_a, fid, buf, len, &back, &used, scratch), 0);
    CHECK_EQ_INT(used, len);
    CHECK(back.seq == 5 && back.face_id == 42 && back.subject_len == 11);
    CHECK(memcmp(back.subject, "AliceSecret", 11) == 0);
    CHECK(memcmp(back.desc, r.desc, sizeof r.desc) == 0);
    /* another key, another file, any changed byte or a cut: not a record */
    CHECK_EQ_INT(galog_decode_key(key_b, fid, buf, len, &back, &used, scratch), -1);
    fid[0] ^= 1;
    CHECK_EQ_INT(galog_decode_key(key_a, fid, buf, len, &back, &used, scratch), -1);
    fid[0] ^= 1;
    for (size_t i = 0; i < len; i += 7) {
        buf[i] ^= 0x10;
        CHECK_EQ_INT(galog_decode_key(key_a, fid, buf, len, &back, &used, scratch), -1);
        buf[i] ^= 0x10;
    }
    for (size_t cut = 0; cut < len; cut += 13)
        CHECK_EQ_INT(galog_decode_key(key_a, fid, buf, cut, &back, &used, scratch), -1);
}

static void t_encrypted_roundtrip(void)
{
    char dir[64];
    tg t;
    float d[DIM], got[DIM];
    uint64_t ids[300];
    atomic_int compacted = 0;
    make_tmpdir(dir, sizeof dir);
    CHECK(dir[0]);
    fw_gallery_options o = durable(dir);
    o.key = key_a;
    o.compact_min_bytes = 16 << 10;
    o.log = count_compactions;
    o.log_arg = &compacted;
    CHECK(tg_open(&t, &o) == 0);
    for (int i = 0; i < 300; i++) {
        tu_desc_for((uint64_t)i, d);
        CHECK_EQ_INT(enroll(&t, "AliceSecret", "MetaSecret", d, &ids[i], NULL), FW_STATUS_OK);
        if (i % 5 == 0)
            CHECK_EQ_INT(del_face(&t, ids[i], NULL, NULL), FW_STATUS_OK);
    }
    tg_close(&t);
    CHECK(atomic_load(&compacted) >= 1);
    CHECK(file_size(dir, GALOG_SNAP_NAME) > 0);
    check_no_plaintext(dir, GALOG_SNAP_NAME, "FWGSNPE1");
    check_no_plaintext(dir, GALOG_LOG_NAME, "FWGLOGE1");

    /* Restart: snapshot and log both read back under the key. */
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    CHECK(t.rep.snapshot_faces > 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, 0);
    fw_gallery_info info;
    fw_gallery_info_get(t.g, &info);
    CHECK_EQ_INT(info.faces, 240);
    CHECK_EQ_INT(info.next_face_id, 301);
    fw_gallery_subject s;
    char meta[FW_GALLERY_META_MAX];
    size_t meta_len = 0;
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[299], &s, meta, &meta_len, got), FW_STATUS_OK);
    CHECK_EQ_STR(s.subject, "AliceSecret");
    CHECK(meta_len == 10 && memcmp(meta, "MetaSecret", 10) == 0);
    tu_desc_for(299, d);
    CHECK(memcmp(got, d, sizeof d) == 0);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[295], NULL, NULL, NULL, NULL), FW_STATUS_NOT_FOUND);
    tg_close(&t);

    /* The snapshot is checked first: a wrong key is named there, even with --repair. */
    o.key = key_b;
    o.repair = 1;
    CHECK(tg_open(&t, &o) != 0);
    CHECK_EQ_STR(t.err, "gallery.snap: wrong --gallery-key (the key check value does not match)");
    o.key = NULL;
    CHECK(tg_open(&t, &o) != 0);
    CHECK_EQ_STR(t.err, "gallery.snap: the gallery is encrypted: start with --gallery-key");
    rm_dir(dir);
}

static void t_encrypted_key_mismatch(void)
{
    char dir[64], plain[64];
    uint64_t ids[10];
    tg t;
    float d[DIM];
    make_tmpdir(dir, sizeof dir);
    fw_gallery_options o = durable(dir);
    o.key = key_a;
    CHECK(tg_open(&t, &o) == 0);
    tu_desc_for(1, d);
    CHECK_EQ_INT(enroll(&t, "AliceSecret", NULL, d, &ids[0], NULL), FW_STATUS_OK);
    tg_close(&t);
    off_t size = file_size(dir, GALOG_LOG_NAME);

    o.key = key_b;
    CHECK(tg_open(&t, &o) != 0);
    CHECK_EQ_STR(t.err, "gallery.log: wrong --gallery-key (the key check value does not match)");
    o.repair = 1; /* repairing would discard every record: still refused */
    CHECK(tg_open(&t, &o) != 0);
    CHECK_EQ_STR(t.err, "gallery.log: wrong --gallery-key (the key check value does not match)");
    o.key = NULL;
    o.repair = 0;
    CHECK(tg_open(&t, &o) != 0);
    CHECK_EQ_STR(t.err, "gallery.log: the gallery is encrypted: start with --gallery-key");
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_NAME), size); /* none of these touched it */
    o.key = key_a;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(fw_gallery_get(t.g, ids[0], NULL, NULL, NULL, NULL), FW_STATUS_OK);
    tg_close(&t);
    rm_dir(dir);

    make_tmpdir(plain, sizeof plain);
    CHECK(write_n(plain, 3, ids) == 0);
    fw_gallery_options p = durable(plain);
    p.key = key_a;
    CHECK(tg_open(&t, &p) != 0);
    CHECK_EQ_STR(t.err, "gallery.log: the gallery is not encrypted but --gallery-key was given");
    rm_dir(plain);
}

/* Write n records "f<i>" under key_a. */
static int write_n_enc(const char *dir, int n, uint64_t *ids)
{
    tg t;
    float d[DIM];
    fw_gallery_options o = durable(dir);
    o.key = key_a;
    if (tg_open(&t, &o) != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        char s[16];
        snprintf(s, sizeof s, "f%d", i);
        tu_desc_for((uint64_t)i, d);
        if (enroll(&t, s, NULL, d, &ids[i], NULL) != FW_STATUS_OK)
            return -1;
    }
    tg_close(&t);
    return 0;
}

/* A torn or changed last record fails its tag and is cut like a torn plaintext tail; a
 * changed record in the middle stops start-up with the same message as without a key. */
static void t_encrypted_damage(void)
{
    char dir[64], want[400];
    uint64_t ids[10];
    tg t;
    make_tmpdir(dir, sizeof dir);
    CHECK(write_n_enc(dir, 10, ids) == 0);
    off_t size = file_size(dir, GALOG_LOG_NAME);
    CHECK_EQ_INT(size, GALOG_ELOG_HDR + 10 * EREC);
    CHECK(patch_file(dir, GALOG_LOG_NAME, size - 3, 1) == 0);
    fw_gallery_options o = durable(dir);
    o.key = key_a;
    o.log = quiet_log;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, EREC - 3);
    CHECK_EQ_INT(t.rep.log_records, 9);
    CHECK_EQ_INT(file_size(dir, GALOG_LOG_NAME), GALOG_ELOG_HDR + 9 * EREC);
    float d[DIM];
    uint64_t id;
    tu_desc_for(99, d);
    CHECK_EQ_INT(enroll(&t, "g", NULL, d, &id, NULL), FW_STATUS_OK); /* appends after the cut */
    tg_close(&t);
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, 0);
    CHECK_EQ_INT(t.rep.log_records, 10);
    tg_close(&t);

    /* One flipped ciphertext byte in the last record: its tag fails, it is a torn tail. */
    CHECK(patch_file(dir, GALOG_LOG_NAME, GALOG_ELOG_HDR + 9 * EREC + 100, 0) == 0);
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.truncated_bytes, EREC - 1); /* record 10 was "g": one byte shorter */
    CHECK_EQ_INT(t.rep.log_records, 9);
    tg_close(&t);

    off_t bad = GALOG_ELOG_HDR + 4 * EREC;
    CHECK(patch_file(dir, GALOG_LOG_NAME, bad + 60, 0) == 0); /* record 5 of 9 */
    CHECK(tg_open(&t, &o) != 0);
    snprintf(want, sizeof want, "gallery.log: corrupt record at offset %lld (seq 5 expected) "
             "followed by a valid record at offset %lld (seq 6); start with --repair to drop the "
             "%lld bad bytes", (long long)bad, (long long)(bad + EREC), (long long)EREC);
    CHECK_EQ_STR(t.err, want);
    o.repair = 1;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.repaired_bytes, EREC);
    CHECK_EQ_INT(t.rep.log_records, 8);
    tg_close(&t);
    /* the repair rewrote an encrypted snapshot: a plain start under the key works */
    o.repair = 0;
    CHECK(tg_open(&t, &o) == 0);
    CHECK_EQ_INT(t.rep.snapshot_faces, 8);
    tg_close(&t);
    check_no_plaintext(dir, GALOG_SNAP_NAME, "FWGSNPE1");
    rm_dir(dir);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_roundtrip),
    CHECK_TEST(t_bad_input),
    CHECK_TEST(t_search_empty),
    CHECK_TEST(t_topk_vs_bruteforce),
    CHECK_TEST(t_index_doubling),
    CHECK_TEST(t_k_beyond_count),
    CHECK_TEST(t_search_pauses),
    CHECK_TEST(t_threshold),
    CHECK_TEST(t_threshold_large_norms),
    CHECK_TEST(t_list_paging),
    CHECK_TEST(t_batch_dependencies),
    CHECK_TEST(t_close_flushes),
    CHECK_TEST(t_record_codec),
    CHECK_TEST(t_restart),
    CHECK_TEST(t_compaction),
    CHECK_TEST(t_merge_semantics),
    CHECK_TEST(t_crash_mid_compaction),
    CHECK_TEST(t_torn_tail),
    CHECK_TEST(t_corrupt_last_record),
    CHECK_TEST(t_corrupt_middle),
    CHECK_TEST(t_snapshot_damaged),
    CHECK_TEST(t_mangled_logs),
    CHECK_TEST(t_bad_headers),
    CHECK_TEST(t_write_failure),
    CHECK_TEST(t_queue_full),
    CHECK_TEST(t_compaction_failure),
    CHECK_TEST(t_tmpfs_full),
    CHECK_TEST(t_kill9_during_enrolls),
    CHECK_TEST(t_identify_races_enroll_delete),
    CHECK_TEST(t_encrypted_codec),
    CHECK_TEST(t_encrypted_roundtrip),
    CHECK_TEST(t_encrypted_key_mismatch),
    CHECK_TEST(t_encrypted_damage),
};

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--child-enroll") == 0)
        return child_main(argv[2], atoi(argv[3]));
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
