/*
 * gallery.c — the gallery API (gallery.h): the writer thread with group commit, the rwlock
 * between searches and mutations, completions to the libuv loop, start-up recovery.
 *
 * The life of an enroll: the loop thread validates and copies it into a request and appends
 * it to the writer queue (galwrite.c, the path galpg.c's writes take too: a mutex the writer
 * holds only to unlink at most a batch of pointers, about a microsecond, so the loop never
 * waits on I/O or on the rwlock). The writer thread takes every queued request (up to
 * batch_max), checks each against the index and the earlier requests of the batch, reserves
 * all the memory applying will need, appends all their records with one write and one
 * fdatasync, then takes the write lock once and applies them (O(1) each, nothing can fail
 * there), and hands the finished requests back to the loop with uv_async_send. So an
 * acknowledged enroll is on disk, and a failed write leaves nothing behind: the file is cut
 * back to where the batch began and the index was never touched.
 *
 * Searches, lists and gets hold the read lock for their whole scan. The lock prefers writers
 * (glibc's PREFER_WRITER_NONRECURSIVE kind) so a steady stream of searches cannot starve the
 * writer; the writer holds it only for pointer swaps and O(1) applies.
 *
 * With PostgreSQL as the system of record (galpg.c) the gallery is memory-only and the writer
 * thread idles: fw_gallery_apply takes changes from the database's change table instead,
 * through the same reserve-outside / apply-under-the-lock steps as a batch of the writer.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fw_proto.h"
#include "server/galidx.h"
#include "server/gallery.h"
#include "server/galmerge.h"
#include "server/galog.h"
#include "server/galwrite.h"

/* What the writer reserves for one ENROLL of a batch (batch_check) until it is applied or
 * given back; slot i belongs to the batch's request i. Writer thread only. */
typedef struct greserve {
    galidx_subj *subj;             /* its subject, with room for one more face */
    void *meta_block;              /* its metadata, owned until applied */
} greserve;

struct fw_gallery {
    fw_gallery_options opt;
    char *dir;
    int dirfd, lockfd, logfd;
    galidx *ix;
    pthread_rwlock_t lock;         /* readers vs the writer's apply */

    fw_galwrite_queue q;           /* writes from the loop and back (galwrite.h) */
    pthread_cond_t qcv;            /* on q.mu: the writer waits for work or for q.stopping */
    int loop_attached;             /* loop thread only */
    int closing;                   /* loop thread only */

    pthread_t writer;
    int writer_started;

    /* the compactor thread (see galmerge.h); c_* under cmu */
    pthread_t compactor;
    int compactor_started;
    pthread_mutex_t cmu;
    pthread_cond_t ccv;
    int c_pending, c_busy, c_finished, c_ok, c_quit;
    uint64_t c_next_id;
    galmerge_result c_res;
    unsigned char key[16];         /* keys subject hashes; immutable after open */
    uint8_t rest_key_buf[FW_SECURE_SYMKEY_LEN]; /* the --gallery-key; wiped at free */
    const uint8_t *rest_key;       /* rest_key_buf, or NULL: plaintext files */

    /* writer-private (and fw_gallery_open's, before the writer exists) */
    uint64_t last_seq, next_id;
    uint64_t log_off, snap_bytes, compact_retry_at;
    uint8_t log_id[GALOG_FILE_ID_LEN]; /* the live log's file id (encrypted galleries) */
    uint64_t old_bytes;            /* size of GALOG_LOG_OLD while it exists */
    int old_segment;               /* GALOG_LOG_OLD exists: a compaction is due or running */
    int compaction_off;            /* a rotation could not be undone: none until restart */
    uint8_t *wbuf;
    fw_galwrite **batch;
    greserve *res;                 /* batch_max, parallel to batch */
    int log_broken;
    char broken_msg[160];

    /* published after each batch for fw_gallery_info_get (any thread, lock-free) */
    _Atomic uint64_t a_faces, a_subjects, a_mem, a_disk, a_last_seq, a_next_id;
    _Atomic uint64_t a_compactions, a_write_errors;
};

static void glog(fw_gallery *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void glog(fw_gallery *g, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (g->opt.log)
        g->opt.log(g->opt.log_arg, line);
    else
        fprintf(stderr, "gallery: %s\n", line);
}

void fw_gallery_options_default(fw_gallery_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_faces = 10000000;
    o->queue_max = 4096;
    o->batch_max = 512;
    o->compact_min_bytes = 64u << 20;
}

static void publish(fw_gallery *g)
{
    atomic_store(&g->a_faces, galidx_faces(g->ix));
    atomic_store(&g->a_subjects, galidx_subjects(g->ix));
    atomic_store(&g->a_mem, galidx_mem_bytes(g->ix));
    atomic_store(&g->a_disk, g->dir ? g->snap_bytes + g->old_bytes + g->log_off : 0);
    atomic_store(&g->a_last_seq, g->last_seq);
    atomic_store(&g->a_next_id, g->next_id);
}

/* ---- recovery (fw_gallery_open only: no other thread exists yet) ------------------------ */

/* Make room for one more face and subject: amortised O(1), doubling. */
static int replay_reserve(fw_gallery *g)
{
    galidx_grow gr;
    if (galidx_grow_prepare(g->ix, (uint64_t)galidx_faces(g->ix) + 1,
                            (uint64_t)galidx_subjects(g->ix) + 1, &gr) != 0)
        return -1;
    galidx_grow_commit(g->ix, &gr);
    galidx_grow_release(&gr);
    return 0;
}

static int replay_cb(void *arg, const galog_rec *r, char *err, size_t errlen)
{
    fw_gallery *g = arg;
    if (r->type == GALOG_DELETE_FACE) {
        galidx_apply_delete_face(g->ix, r->face_id);
        return 0;
    }
    if (r->type == GALOG_DELETE_SUBJECT) {
        galidx_apply_delete_subject(g->ix, r->subject, r->subject_len);
        return 0;
    }
    if (galidx_has_face(g->ix, r->face_id)) {
        snprintf(err, errlen, "face id %llu enrolled twice (seq %llu)",
                 (unsigned long long)r->face_id, (unsigned long long)r->seq);
        return -1;
    }
    if (galidx_faces(g->ix) >= g->opt.max_faces) {
        snprintf(err, errlen, "more faces on disk than the configured maximum (%u)",
                 g->opt.max_faces);
        return -1;
    }
    int oom = 0;
    galidx_subj *s = galidx_find_subject(g->ix, r->subject, r->subject_len);
    int fresh = !s;
    if (replay_reserve(g) != 0)
        goto oom;
    if (fresh && !(s = galidx_subj_new(g->ix, r->subject, r->subject_len)))
        goto oom;
    if (galidx_subj_reserve(s, 1) != 0) {
        if (fresh)
            galidx_subj_free(s);
        goto oom;
    }
    void *meta = galidx_meta_new(r->meta, r->meta_len, &oom);
    if (oom) {
        galidx_subj_unreserve(s, 1);
        goto oom;
    }
    galidx_apply_enroll(g->ix, r->face_id, s, meta, r->desc);
    if (r->face_id >= g->next_id)
        g->next_id = r->face_id + 1;
    return 0;
oom:
    snprintf(err, errlen, "out of memory loading face %llu", (unsigned long long)r->face_id);
    return -1;
}

/* Map a whole file read-only. *len 0 and *map NULL for an empty file. */
static int map_file(int fd, const uint8_t **map, size_t *len)
{
    struct stat st;
    *map = NULL;
    *len = 0;
    if (fstat(fd, &st) != 0)
        return -1;
    if (st.st_size == 0)
        return 0;
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        return -1;
    *map = p;
    *len = (size_t)st.st_size;
    return 0;
}

static int compact(fw_gallery *g, char *err, size_t errlen);

static int load_dir(fw_gallery *g, fw_gallery_report *rep, char *err, size_t errlen)
{
    const uint8_t *map = NULL;
    size_t len = 0;
    int fd = -1, need_compact = 0;

    if (mkdir(g->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "mkdir %s: %s", g->dir, strerror(errno));
        return -1;
    }
    g->dirfd = open(g->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g->dirfd < 0) {
        snprintf(err, errlen, "open %s: %s", g->dir, strerror(errno));
        return -1;
    }
    /* Two processes appending to one log would interleave records: refuse the second. */
    g->lockfd = openat(g->dirfd, GALOG_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (g->lockfd < 0 || flock(g->lockfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "%s is in use by another process (%s)", g->dir, strerror(errno));
        return -1;
    }
    /* Temp files are only ever half-made snapshots or logs: never part of the state. */
    unlinkat(g->dirfd, GALOG_SNAP_TMP, 0);
    unlinkat(g->dirfd, GALOG_LOG_TMP, 0);

    uint64_t after_seq = 0;
    fd = openat(g->dirfd, GALOG_SNAP_NAME, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
        snprintf(err, errlen, "open " GALOG_SNAP_NAME ": %s", strerror(errno));
        return -1;
    }
    if (fd >= 0) {
        galog_snap_info si;
        if (map_file(fd, &map, &len) != 0) {
            snprintf(err, errlen, "read " GALOG_SNAP_NAME ": %s", strerror(errno));
            goto err;
        }
        if (galog_load_snapshot(map ? map : (const uint8_t *)"", len, g->rest_key,
                                g->opt.repair, replay_cb, g, &si, err, errlen) != 0)
            goto err;
        if (si.damaged) {
            glog(g, GALOG_SNAP_NAME ": damaged, kept %llu of %llu faces (--repair)",
                 (unsigned long long)si.loaded, (unsigned long long)si.faces);
            need_compact = 1;
        }
        rep->snapshot_faces = si.loaded;
        after_seq = si.last_seq;
        if (si.next_face_id > g->next_id)
            g->next_id = si.next_face_id;
        g->snap_bytes = len;
        if (map)
            munmap((void *)map, len);
        map = NULL;
        close(fd);
    }
    g->last_seq = after_seq;

    /* A closed segment whose background compaction did not finish: it comes before the live
     * log. The compactor merges it as soon as it starts (from the files, like any merge). */
    fd = openat(g->dirfd, GALOG_LOG_OLD, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
        snprintf(err, errlen, "open " GALOG_LOG_OLD ": %s", strerror(errno));
        return -1;
    }
    if (fd >= 0) {
        galog_scan sc;
        if (map_file(fd, &map, &len) != 0) {
            snprintf(err, errlen, "read " GALOG_LOG_OLD ": %s", strerror(errno));
            goto err;
        }
        if (galog_scan_log(map ? map : (const uint8_t *)"", len, g->rest_key, after_seq,
                           g->opt.repair, replay_cb, g, &sc, err, errlen) != 0) {
            /* Name the file: galog's messages speak of the live log. */
            char inner[256];
            snprintf(inner, sizeof inner, "%s", err);
            snprintf(err, errlen, GALOG_LOG_OLD " (closed segment): %s", inner);
            goto err;
        }
        if (map)
            munmap((void *)map, len);
        map = NULL;
        close(fd);
        fd = -1;
        g->old_segment = 1;
        g->old_bytes = len;
        /* A segment is synced before it is closed, so a bad tail here means damage (only
         * --repair gets this far with one): rewrite everything from memory below. */
        if (sc.truncated || sc.dropped_bytes)
            need_compact = 1;
        rep->log_records += sc.records;
        rep->truncated_bytes += sc.truncated;
        rep->repaired_bytes += sc.dropped_bytes;
        rep->repaired_records += sc.dropped_runs;
        if (sc.last_seq > g->last_seq)
            g->last_seq = sc.last_seq;
        after_seq = g->last_seq;
    }

    fd = openat(g->dirfd, GALOG_LOG_NAME, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
        snprintf(err, errlen, "open " GALOG_LOG_NAME ": %s", strerror(errno));
        return -1;
    }
    if (fd >= 0) {
        galog_scan sc;
        if (map_file(fd, &map, &len) != 0) {
            snprintf(err, errlen, "read " GALOG_LOG_NAME ": %s", strerror(errno));
            goto err;
        }
        if (galog_scan_log(map ? map : (const uint8_t *)"", len, g->rest_key, after_seq,
                           g->opt.repair, replay_cb, g, &sc, err, errlen) != 0)
            goto err;
        if (map)
            munmap((void *)map, len);
        map = NULL;
        rep->log_records += sc.records;
        rep->repaired_bytes += sc.dropped_bytes;
        rep->repaired_records += sc.dropped_runs;
        if (sc.last_seq > g->last_seq)
            g->last_seq = sc.last_seq;
        if (sc.end < galog_log_hdr_size(g->rest_key) || sc.last_seq < after_seq) {
            /* Repair threw the whole log away, or it ends before the snapshot (which covers
             * all of it): start a fresh one, so new records continue the snapshot's seqs. */
            close(fd);
            fd = -1;
        } else {
            if (sc.truncated) {
                /* A torn tail is the expected result of a crash mid-append: those records
                 * were never acknowledged. Cut it so new records follow the last good one. */
                if (ftruncate(fd, (off_t)sc.end) != 0 || fsync(fd) != 0) {
                    snprintf(err, errlen, "truncate " GALOG_LOG_NAME ": %s", strerror(errno));
                    goto err;
                }
                rep->truncated_bytes += sc.truncated;
                glog(g, GALOG_LOG_NAME ": cut a torn or corrupt tail of %llu bytes at offset %llu",
                     (unsigned long long)sc.truncated, (unsigned long long)sc.end);
            }
            g->logfd = fd;
            g->log_off = sc.end;
            memcpy(g->log_id, sc.file_id, sizeof g->log_id);
            fd = -1;
        }
        if (sc.dropped_bytes) {
            glog(g, GALOG_LOG_NAME ": --repair dropped %llu corrupt bytes in %llu places",
                 (unsigned long long)sc.dropped_bytes, (unsigned long long)sc.dropped_runs);
            need_compact = 1;
        }
        if (sc.start_seq > after_seq) { /* --repair accepted missing records */
            glog(g, GALOG_LOG_NAME ": --repair accepted the loss of records %llu to %llu",
                 (unsigned long long)after_seq + 1, (unsigned long long)sc.start_seq);
            need_compact = 1;
        }
    }
    if (g->logfd < 0) {
        g->logfd = galog_log_create_key(g->dirfd, g->opt.io, g->rest_key, g->last_seq,
                                        g->log_id, err, errlen);
        if (g->logfd < 0)
            return -1;
        g->log_off = galog_log_hdr_size(g->rest_key);
    }
    /* After a repair, rewrite the state cleanly so the damage is not met again next start. */
    if (need_compact && compact(g, err, errlen) != 0)
        return -1;
    return 0;
err:
    if (map)
        munmap((void *)map, len);
    if (fd >= 0)
        close(fd);
    return -1;
}

/* ---- compaction ------------------------------------------------------------------------ */

typedef struct snap_ctx {
    galog_snap_writer *w;
    char *err;
    size_t errlen;
} snap_ctx;

static int snap_visit(void *arg, uint64_t face_id, const char *subject, size_t subject_len,
                      const void *meta, size_t meta_len, const float *desc)
{
    snap_ctx *c = arg;
    return galog_snap_add(c->w, face_id, subject, subject_len, meta, meta_len, desc, c->err,
                          c->errlen);
}

/* At start-up after a repair: snapshot the index from memory, start an empty log, drop any
 * closed segment (the snapshot covers it). Crash at any point leaves a loadable state: see
 * docs/gallery.md. */
static int compact(fw_gallery *g, char *err, size_t errlen)
{
    galog_snap_writer w;
    snap_ctx c = { &w, err, errlen };
    uint64_t bytes = 0;
    if (galog_snap_begin(&w, g->dirfd, g->opt.io, g->rest_key, g->last_seq, g->next_id, err,
                         errlen) != 0 ||
        galidx_visit(g->ix, snap_visit, &c) != 0 ||
        galog_snap_commit(&w, &bytes, err, errlen) != 0) {
        galog_snap_abort(&w);
        return -1;
    }
    g->snap_bytes = bytes;
    /* The snapshot now covers every record: the old log is redundant (replay skips seq <=
     * the snapshot's), so a failure below loses nothing; we just keep appending to it. */
    uint8_t id[GALOG_FILE_ID_LEN];
    int fd = galog_log_create_key(g->dirfd, g->opt.io, g->rest_key, g->last_seq, id, err,
                                  errlen);
    if (fd < 0)
        return -1;
    close(g->logfd);
    g->logfd = fd;
    g->log_off = galog_log_hdr_size(g->rest_key);
    memcpy(g->log_id, id, sizeof id);
    if (unlinkat(g->dirfd, GALOG_LOG_OLD, 0) == 0)
        fsync(g->dirfd);
    g->old_segment = 0;
    g->old_bytes = 0;
    atomic_fetch_add(&g->a_compactions, 1);
    return 0;
}

/* Close the live log as GALOG_LOG_OLD and start a new one after the last record (writer
 * thread, between batches: everything in the old one is synced). */
static int rotate(fw_gallery *g)
{
    char err[256];
    if (renameat(g->dirfd, GALOG_LOG_NAME, g->dirfd, GALOG_LOG_OLD) != 0) {
        glog(g, "compaction: cannot close the log segment: %s", strerror(errno));
        return -1;
    }
    int fd = -1;
    uint8_t id[GALOG_FILE_ID_LEN];
    if (fsync(g->dirfd) != 0)
        snprintf(err, sizeof err, "sync directory: %s", strerror(errno));
    else
        fd = galog_log_create_key(g->dirfd, g->opt.io, g->rest_key, g->last_seq, id, err,
                                  sizeof err);
    if (fd < 0) {
        /* Put the live log back under its name. If even that fails we go on appending to it
         * under the old-segment name (the next start reads it first, then creates a log), but
         * never compact it while it is live. */
        if (renameat(g->dirfd, GALOG_LOG_OLD, g->dirfd, GALOG_LOG_NAME) != 0 ||
            fsync(g->dirfd) != 0) {
            g->compaction_off = 1;
            glog(g, "compaction: %s; the log cannot be renamed back (%s): no compaction until "
                 "restart", err, strerror(errno));
        } else {
            glog(g, "compaction: cannot start a new log: %s", err);
        }
        return -1;
    }
    close(g->logfd);
    g->logfd = fd;
    g->old_bytes = g->log_off;
    g->log_off = galog_log_hdr_size(g->rest_key);
    memcpy(g->log_id, id, sizeof id);
    g->old_segment = 1;
    return 0;
}

static void compactor_submit(fw_gallery *g)
{
    pthread_mutex_lock(&g->cmu);
    g->c_pending = 1;
    g->c_next_id = g->next_id;
    pthread_cond_signal(&g->ccv);
    pthread_mutex_unlock(&g->cmu);
}

/* Writer thread, after each batch: collect a finished compaction; start one when the log has
 * outgrown both compact_min_bytes and the last snapshot (O(1) amortised rewriting per record). */
static void maybe_compact(fw_gallery *g)
{
    if (!g->dir || g->log_broken || g->compaction_off)
        return;
    pthread_mutex_lock(&g->cmu);
    if (g->c_finished) {
        g->c_finished = 0;
        if (g->c_ok) {
            g->snap_bytes = g->c_res.snap_bytes;
            g->old_segment = 0;
            g->old_bytes = 0;
            g->compact_retry_at = 0;
        } else {
            g->compact_retry_at = g->log_off + g->opt.compact_min_bytes;
        }
    }
    int busy = g->c_pending || g->c_busy;
    pthread_mutex_unlock(&g->cmu);
    if (busy)
        return;
    if (g->old_segment) { /* the last merge failed: retry after a while */
        if (g->log_off >= g->compact_retry_at)
            compactor_submit(g);
        return;
    }
    if (g->log_off < g->opt.compact_min_bytes || g->log_off < g->snap_bytes ||
        g->log_off < g->compact_retry_at)
        return;
    if (rotate(g) != 0) {
        g->compact_retry_at = g->log_off + g->opt.compact_min_bytes;
        return;
    }
    compactor_submit(g);
    publish(g);
}

/* The compactor thread: merges snapshot + closed segment into a new snapshot from the files
 * (galmerge.c), while the writer goes on with the live log. */
static void *compactor_main(void *arg)
{
    fw_gallery *g = arg;
    pthread_mutex_lock(&g->cmu);
    for (;;) {
        while (!g->c_pending && !g->c_quit)
            pthread_cond_wait(&g->ccv, &g->cmu);
        if (!g->c_pending)
            break; /* quitting, nothing left to do */
        g->c_pending = 0;
        g->c_busy = 1;
        uint64_t next_id = g->c_next_id;
        pthread_mutex_unlock(&g->cmu);

        galmerge_result res;
        char err[256];
        uint64_t t0 = uv_hrtime();
        int rc = galmerge_run(g->dirfd, g->opt.io, g->key, g->rest_key, next_id, &res, err,
                              sizeof err);
        if (rc == 0) {
            atomic_fetch_add(&g->a_compactions, 1);
            glog(g, "compacted in the background: snapshot of %llu faces up to seq %llu, %llu "
                 "bytes, %.1f ms", (unsigned long long)res.faces,
                 (unsigned long long)res.last_seq, (unsigned long long)res.snap_bytes,
                 (double)(uv_hrtime() - t0) / 1e6);
        } else {
            glog(g, "compaction failed, will retry later: %s", err);
        }

        pthread_mutex_lock(&g->cmu);
        g->c_busy = 0;
        g->c_finished = 1;
        g->c_ok = rc == 0;
        g->c_res = res;
    }
    pthread_mutex_unlock(&g->cmu);
    return NULL;
}

/* ---- the writer thread ------------------------------------------------------------------ */

/* A write's type is the type of the record it appends (batch_write). */
_Static_assert((int)FW_GALWRITE_ENROLL == (int)GALOG_ENROLL &&
                   (int)FW_GALWRITE_DELETE_FACE == (int)GALOG_DELETE_FACE &&
                   (int)FW_GALWRITE_DELETE_SUBJECT == (int)GALOG_DELETE_SUBJECT,
               "gallery write types are galog record types");

/* Decide each request against the index plus the earlier requests of the batch, and reserve
 * everything applying will need. Requests that need no record are finished here. */
static void batch_check(fw_gallery *g, fw_galwrite **b, greserve *res, int n, uint64_t *enrolls,
                        uint64_t *new_subj)
{
    uint64_t first_id = g->next_id;
    for (int i = 0; i < n; i++) {
        fw_galwrite *r = b[i];
        res[i].subj = NULL;
        res[i].meta_block = NULL;
        if (r->type == FW_GALWRITE_DELETE_FACE) {
            if (!galidx_has_face(g->ix, r->face_id) &&
                !(r->face_id >= first_id && r->face_id < g->next_id))
                fw_galwrite_finish(r, FW_STATUS_NOT_FOUND, 0, "no face with id %llu",
                                   (unsigned long long)r->face_id);
            continue;
        }
        /* ENROLL and DELETE_SUBJECT: look for the subject in the index, then in this batch. */
        galidx_subj *s = galidx_find_subject(g->ix, r->subject, r->subject_len);
        for (int j = 0; j < i && !s; j++)
            if (b[j]->type == FW_GALWRITE_ENROLL && !b[j]->done &&
                galidx_subj_same(res[j].subj, r->subject, r->subject_len))
                s = res[j].subj;
        if (r->type == FW_GALWRITE_DELETE_SUBJECT) {
            if (!s)
                fw_galwrite_finish(r, FW_STATUS_NOT_FOUND, 0, "no subject \"%s\"", r->subject);
            continue;
        }
        if ((uint64_t)galidx_faces(g->ix) + *enrolls >= g->opt.max_faces) {
            fw_galwrite_finish(r, FW_STATUS_INTERNAL, 0, "gallery full (%u faces)",
                               g->opt.max_faces);
            continue;
        }
        int fresh = !s, oom = 0;
        if (fresh && !(s = galidx_subj_new(g->ix, r->subject, r->subject_len)))
            goto oom;
        if (galidx_subj_reserve(s, 1) != 0) {
            if (fresh)
                galidx_subj_free(s);
            goto oom;
        }
        res[i].meta_block = galidx_meta_new(r->meta, r->meta_len, &oom);
        if (oom) {
            galidx_subj_unreserve(s, 1);
            goto oom;
        }
        res[i].subj = s;
        r->face_id = g->next_id++; /* ids are never reused, even if this batch fails */
        (*enrolls)++;
        *new_subj += fresh;
        continue;
    oom:
        fw_galwrite_finish(r, FW_STATUS_INTERNAL, 0, "out of memory");
    }
}

/* Undo batch_check's reservations for requests that will not be applied. */
static void batch_unreserve(fw_galwrite **b, greserve *res, int n)
{
    for (int i = 0; i < n; i++) {
        if (b[i]->type != FW_GALWRITE_ENROLL || !res[i].subj)
            continue;
        galidx_meta_free(res[i].meta_block);
        res[i].meta_block = NULL;
        galidx_subj_unreserve(res[i].subj, 1);
        res[i].subj = NULL;
    }
}

static void fail_pending(fw_galwrite **b, int n, int status, const char *msg)
{
    for (int i = 0; i < n; i++)
        if (!b[i]->done)
            fw_galwrite_finish(b[i], status, 0, "%s", msg);
}

/* Append the batch's records and sync them. 0, or -1 with the file cut back and msg set. */
static int batch_write(fw_gallery *g, fw_galwrite **b, int n, char *msg, size_t msglen)
{
    size_t len = 0;
    uint64_t seq = g->last_seq;
    for (int i = 0; i < n; i++) {
        fw_galwrite *r = b[i];
        if (r->done)
            continue;
        galog_rec rec;
        memset(&rec, 0, sizeof rec);
        rec.type = r->type;
        rec.seq = ++seq;
        rec.face_id = r->face_id;
        rec.subject = r->subject;
        rec.subject_len = r->subject_len;
        rec.meta = r->meta;
        rec.meta_len = r->meta_len;
        memcpy(rec.desc, r->desc, sizeof rec.desc);
        len += galog_encode_key(g->rest_key, g->log_id, &rec, g->wbuf + len);
    }
    if (!len)
        return 0;
    if (!g->dir) {
        g->last_seq = seq;
        return 0;
    }
    if (galog_write_all(g->opt.io, g->logfd, g->wbuf, len, (off_t)g->log_off) == 0 &&
        galog_datasync(g->opt.io, g->logfd) == 0) {
        g->log_off += len;
        g->last_seq = seq;
        return 0;
    }
    int e = errno;
    snprintf(msg, msglen, "gallery write failed: %s", strerror(e));
    atomic_fetch_add(&g->a_write_errors, 1);
    /* Cut back whatever part of the batch reached the file, so the next batch's records
     * follow the last acknowledged one and replay never sees an unacknowledged record. */
    if (ftruncate(g->logfd, (off_t)g->log_off) != 0 || fsync(g->logfd) != 0) {
        g->log_broken = 1;
        snprintf(g->broken_msg, sizeof g->broken_msg,
                 "gallery log unusable after a failed write (%s), then a failed truncate (%s): "
                 "restart needed", strerror(e), strerror(errno));
        glog(g, "%s", g->broken_msg);
    } else {
        glog(g, "%s; %zu bytes cut back, batch refused", msg, len);
    }
    return -1;
}

static void batch_apply(fw_gallery *g, fw_galwrite **b, greserve *res, int n, galidx_grow *gr)
{
    pthread_rwlock_wrlock(&g->lock);
    galidx_grow_commit(g->ix, gr);
    for (int i = 0; i < n; i++) {
        fw_galwrite *r = b[i];
        if (r->done)
            continue;
        if (r->type == FW_GALWRITE_ENROLL) {
            galidx_apply_enroll(g->ix, r->face_id, res[i].subj, res[i].meta_block, r->desc);
            res[i].meta_block = NULL;
            res[i].subj = NULL;
            fw_galwrite_finish(r, FW_STATUS_OK, r->face_id, NULL);
        } else if (r->type == FW_GALWRITE_DELETE_FACE) {
            uint32_t c = galidx_apply_delete_face(g->ix, r->face_id);
            if (c)
                fw_galwrite_finish(r, FW_STATUS_OK, c, NULL);
            else /* deleted by an earlier request of the same batch */
                fw_galwrite_finish(r, FW_STATUS_NOT_FOUND, 0, "no face with id %llu",
                                   (unsigned long long)r->face_id);
        } else {
            uint32_t c = galidx_apply_delete_subject(g->ix, r->subject, r->subject_len);
            if (c)
                fw_galwrite_finish(r, FW_STATUS_OK, c, NULL);
            else
                fw_galwrite_finish(r, FW_STATUS_NOT_FOUND, 0, "no subject \"%s\"", r->subject);
        }
    }
    pthread_rwlock_unlock(&g->lock);
    galidx_grow_release(gr); /* the arrays replaced by the commit, freed outside the lock */
}

static void batch_process(fw_gallery *g, fw_galwrite **b, greserve *res, int n)
{
    uint64_t enrolls = 0, new_subj = 0;
    char msg[192];
    galidx_grow gr;
    if (g->log_broken) {
        fail_pending(b, n, FW_STATUS_INTERNAL, g->broken_msg);
        return;
    }
    batch_check(g, b, res, n, &enrolls, &new_subj);
    int pending = 0;
    for (int i = 0; i < n; i++)
        pending += !b[i]->done;
    if (!pending)
        return;
    if (galidx_grow_prepare(g->ix, (uint64_t)galidx_faces(g->ix) + enrolls,
                            (uint64_t)galidx_subjects(g->ix) + new_subj, &gr) != 0) {
        batch_unreserve(b, res, n);
        fail_pending(b, n, FW_STATUS_INTERNAL, "out of memory");
        return;
    }
    if (batch_write(g, b, n, msg, sizeof msg) != 0) {
        galidx_grow_release(&gr);
        batch_unreserve(b, res, n);
        fail_pending(b, n, FW_STATUS_INTERNAL, msg);
        return;
    }
    batch_apply(g, b, res, n, &gr);
}

static void *writer_main(void *arg)
{
    fw_gallery *g = arg;
    for (;;) {
        pthread_mutex_lock(&g->q.mu);
        while (!g->q.head && !g->q.stopping)
            pthread_cond_wait(&g->qcv, &g->q.mu);
        int n = fw_galwrite_take_locked(&g->q, g->batch, (int)g->opt.batch_max);
        pthread_mutex_unlock(&g->q.mu);
        if (!n)
            break; /* stopping and drained */
        batch_process(g, g->batch, g->res, n);
        publish(g);
        fw_galwrite_hand_back_batch(&g->q, g->batch, n);
        maybe_compact(g);
    }
    return NULL;
}

/* ---- the loop side ---------------------------------------------------------------------- */

static void on_completions(uv_async_t *h)
{
    fw_gallery *g = h->data;
    fw_galwrite_deliver(&g->q, NULL, NULL);
}

int fw_gallery_attach_loop(fw_gallery *g, uv_loop_t *loop)
{
    int rc = fw_galwrite_queue_attach(&g->q, loop, on_completions, g);
    if (rc == 0)
        g->loop_attached = 1;
    return rc;
}

/* Check, copy and queue one write (the three entry points below). */
static int queue_write(fw_gallery *g, const fw_galwrite_args *a, char *err, size_t errlen)
{
    int status = fw_galwrite_check(a, UINT64_MAX, err, errlen);
    if (status != FW_STATUS_OK)
        return status;
    if (g->closing) {
        snprintf(err, errlen, "gallery is closing");
        return FW_STATUS_SHUTTING_DOWN;
    }
    if (!g->loop_attached || !a->cb) {
        snprintf(err, errlen, "gallery: no loop attached or no callback");
        return FW_STATUS_INTERNAL;
    }
    fw_galwrite *r = fw_galwrite_new(a, &status, err, errlen);
    if (!r)
        return status;
    if ((status = fw_galwrite_push(&g->q, r, NULL, err, errlen)) != FW_STATUS_OK) {
        free(r);
        return status;
    }
    /* Outside q.mu is enough: a writer that saw the queue empty is already waiting. */
    pthread_cond_signal(&g->qcv);
    return FW_STATUS_OK;
}

int fw_gallery_enroll(fw_gallery *g, const char *subject, size_t subject_len, const void *meta,
                      size_t meta_len, const float *desc, fw_gallery_done_cb cb, void *arg,
                      char *err, size_t errlen)
{
    fw_galwrite_args a = { .type = FW_GALWRITE_ENROLL, .subject = subject,
                           .subject_len = subject_len, .meta = meta, .meta_len = meta_len,
                           .desc = desc, .cb = cb, .arg = arg };
    return queue_write(g, &a, err, errlen);
}

int fw_gallery_delete_face(fw_gallery *g, uint64_t face_id, fw_gallery_done_cb cb, void *arg,
                           char *err, size_t errlen)
{
    /* ids start at 1: fw_galwrite_check answers id 0 without a trip to the writer */
    fw_galwrite_args a = { .type = FW_GALWRITE_DELETE_FACE, .face_id = face_id, .cb = cb,
                           .arg = arg };
    return queue_write(g, &a, err, errlen);
}

int fw_gallery_delete_subject(fw_gallery *g, const char *subject, size_t subject_len,
                              fw_gallery_done_cb cb, void *arg, char *err, size_t errlen)
{
    fw_galwrite_args a = { .type = FW_GALWRITE_DELETE_SUBJECT, .subject = subject,
                           .subject_len = subject_len, .cb = cb, .arg = arg };
    return queue_write(g, &a, err, errlen);
}

/* ---- changes from an external system of record (galpg.c) ------------------------------- */

/* Per ADD of one fw_gallery_apply call: what was reserved for it outside the lock. */
typedef struct apply_res {
    galidx_subj *subj;
    void *meta;
} apply_res;

static int change_check(const fw_gallery_change *c, uint64_t *prev_seq, char *err,
                        size_t errlen)
{
    if (c->seq && c->seq <= *prev_seq) {
        snprintf(err, errlen, "change seq %llu does not follow %llu", (unsigned long long)c->seq,
                 (unsigned long long)*prev_seq);
        return -1;
    }
    if (c->seq)
        *prev_seq = c->seq;
    if (c->kind == FW_GALLERY_CHANGE_SKIP)
        return 0;
    if (c->face_id == 0) {
        snprintf(err, errlen, "change seq %llu: face id 0", (unsigned long long)c->seq);
        return -1;
    }
    if (c->kind == FW_GALLERY_CHANGE_REMOVE)
        return 0;
    if (c->kind != FW_GALLERY_CHANGE_ADD) {
        snprintf(err, errlen, "change seq %llu: unknown kind %d", (unsigned long long)c->seq,
                 c->kind);
        return -1;
    }
    if (!c->subject || !galidx_subject_valid(c->subject, c->subject_len) ||
        c->meta_len > FW_GALLERY_META_MAX || (c->meta_len && !c->meta) || !c->desc ||
        !galidx_desc_valid(c->desc)) {
        snprintf(err, errlen, "change seq %llu: face %llu has an invalid subject, metadata or "
                 "descriptor", (unsigned long long)c->seq, (unsigned long long)c->face_id);
        return -1;
    }
    return 0;
}

static void apply_unreserve(const fw_gallery_change *c, apply_res *res, int n)
{
    for (int i = 0; i < n; i++) {
        if (c[i].kind != FW_GALLERY_CHANGE_ADD || !res[i].subj)
            continue;
        galidx_meta_free(res[i].meta);
        galidx_subj_unreserve(res[i].subj, 1);
        res[i].subj = NULL;
        res[i].meta = NULL;
    }
}

/* The subject record each ADD will use: the index's, or one new record per distinct new name
 * (found through a small keyed hash of this call's new names, so a batch of n distinct
 * subjects costs O(n), not O(n^2)). Reserves a row in it and copies the metadata. */
static int apply_reserve(fw_gallery *g, const fw_gallery_change *c, apply_res *res, int n,
                         uint64_t *adds, uint64_t *fresh_subjects)
{
    uint32_t cap = 16;
    while (cap < (uint32_t)n * 2u)
        cap *= 2;
    int32_t *tab = malloc(cap * sizeof *tab); /* index into c/res of a fresh subject, -1 */
    if (!tab)
        return -1;
    memset(tab, 0xff, cap * sizeof *tab);
    for (int i = 0; i < n; i++) {
        if (c[i].kind != FW_GALLERY_CHANGE_ADD)
            continue;
        galidx_subj *s = galidx_find_subject(g->ix, c[i].subject, c[i].subject_len);
        int fresh = 0;
        if (!s) {
            unsigned char h[crypto_shorthash_BYTES];
            uint64_t hv;
            crypto_shorthash(h, (const unsigned char *)c[i].subject, c[i].subject_len, g->key);
            memcpy(&hv, h, sizeof hv);
            uint32_t slot = (uint32_t)hv & (cap - 1);
            while (tab[slot] >= 0 && !galidx_subj_same(res[tab[slot]].subj, c[i].subject,
                                                        c[i].subject_len))
                slot = (slot + 1) & (cap - 1);
            if (tab[slot] >= 0) {
                s = res[tab[slot]].subj;
            } else {
                if (!(s = galidx_subj_new(g->ix, c[i].subject, c[i].subject_len)))
                    goto oom;
                tab[slot] = i;
                fresh = 1;
            }
        }
        if (galidx_subj_reserve(s, 1) != 0) {
            if (fresh)
                galidx_subj_free(s);
            goto oom;
        }
        int oom = 0;
        void *meta = galidx_meta_new(c[i].meta, c[i].meta_len, &oom);
        if (oom) {
            galidx_subj_unreserve(s, 1); /* frees a fresh s: nothing else is pending on it */
            goto oom;
        }
        res[i].subj = s;
        res[i].meta = meta;
        (*adds)++;
        *fresh_subjects += fresh;
    }
    free(tab);
    return 0;
oom:
    free(tab);
    apply_unreserve(c, res, n);
    return -1;
}

int fw_gallery_apply(fw_gallery *g, const fw_gallery_change *c, int n, char *err, size_t errlen)
{
    uint64_t prev = g->last_seq, adds = 0, fresh = 0;
    apply_res *res = NULL;
    galidx_grow gr;
    if (g->dir) {
        snprintf(err, errlen, "changes can only be applied to a memory-only gallery");
        return -1;
    }
    if (n < 0 || (n > 0 && !c)) {
        snprintf(err, errlen, "bad change list");
        return -1;
    }
    if (n == 0)
        return 0;
    /* Everything is checked before anything is touched: a bad change applies nothing. */
    for (int i = 0; i < n; i++)
        if (change_check(&c[i], &prev, err, errlen) != 0)
            return -1;
    if (!(res = calloc((size_t)n, sizeof *res)))
        goto oom;
    if (apply_reserve(g, c, res, n, &adds, &fresh) != 0)
        goto oom;
    /* Room for every ADD even if some turn out to be no-ops: REMOVEs only free rows, so the
     * index never holds more than faces + adds at any point of the call. */
    if ((uint64_t)galidx_faces(g->ix) + adds > g->opt.max_faces) {
        apply_unreserve(c, res, n);
        free(res);
        snprintf(err, errlen, "gallery full (%u faces)", g->opt.max_faces);
        return -1;
    }
    if (galidx_grow_prepare(g->ix, (uint64_t)galidx_faces(g->ix) + adds,
                            (uint64_t)galidx_subjects(g->ix) + fresh, &gr) != 0) {
        apply_unreserve(c, res, n);
        goto oom;
    }
    pthread_rwlock_wrlock(&g->lock);
    galidx_grow_commit(g->ix, &gr);
    for (int i = 0; i < n; i++) {
        if (c[i].kind == FW_GALLERY_CHANGE_REMOVE) {
            galidx_apply_delete_face(g->ix, c[i].face_id);
        } else if (c[i].kind == FW_GALLERY_CHANGE_SKIP) {
            /* nothing but the seq below */
        } else if (galidx_has_face(g->ix, c[i].face_id)) {
            /* Already there (a change seen twice): idempotent, give the reservation back. */
            galidx_meta_free(res[i].meta);
            galidx_subj_unreserve(res[i].subj, 1);
        } else {
            galidx_apply_enroll(g->ix, c[i].face_id, res[i].subj, res[i].meta, c[i].desc);
        }
        if (c[i].kind == FW_GALLERY_CHANGE_ADD && c[i].face_id >= g->next_id)
            g->next_id = c[i].face_id + 1;
        if (c[i].seq)
            g->last_seq = c[i].seq;
    }
    pthread_rwlock_unlock(&g->lock);
    galidx_grow_release(&gr);
    free(res);
    publish(g);
    return 0;
oom:
    free(res);
    snprintf(err, errlen, "out of memory applying %d changes", n);
    return -1;
}

static int collect_id(void *arg, uint64_t face_id, const char *subject, size_t subject_len,
                      const void *meta, size_t meta_len, const float *desc)
{
    uint64_t **p = arg;
    *(*p)++ = face_id;
    return 0;
}

int fw_gallery_apply_reset(fw_gallery *g, uint64_t seq, char *err, size_t errlen)
{
    if (g->dir) {
        snprintf(err, errlen, "changes can only be applied to a memory-only gallery");
        return -1;
    }
    uint32_t n = galidx_faces(g->ix);
    uint64_t *ids = malloc(((size_t)n + 1) * sizeof *ids), *p = ids;
    if (!ids) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    galidx_visit(g->ix, collect_id, &p);
    pthread_rwlock_wrlock(&g->lock);
    for (uint32_t i = 0; i < n; i++)
        galidx_apply_delete_face(g->ix, ids[i]);
    g->last_seq = seq;
    g->next_id = 1;
    pthread_rwlock_unlock(&g->lock);
    free(ids);
    publish(g);
    return 0;
}

/* ---- readers ---------------------------------------------------------------------------- */

int fw_gallery_search(fw_gallery *g, const float *queries, int nq, int k, float max_distance,
                      fw_gallery_match *out, int *counts, const fw_pause *pause, char *err,
                      size_t errlen)
{
    if (k < 1 || k > FW_GALLERY_K_MAX) {
        snprintf(err, errlen, "k must be 1-%d", FW_GALLERY_K_MAX);
        return FW_STATUS_BAD_REQUEST;
    }
    if (nq < 1 || nq > FW_GALLERY_NQ_MAX) {
        snprintf(err, errlen, "1-%d queries per search", FW_GALLERY_NQ_MAX);
        return FW_STATUS_BAD_REQUEST;
    }
    if (!(max_distance >= 0)) {
        snprintf(err, errlen, "threshold must be a non-negative number");
        return FW_STATUS_BAD_REQUEST;
    }
    for (int i = 0; i < nq; i++)
        if (!galidx_desc_valid(queries + (size_t)i * FW_GALLERY_DIM)) {
            snprintf(err, errlen, "descriptor %d must be %d finite floats within +-%g", i,
                     FW_GALLERY_DIM, (double)FW_GALLERY_VALUE_MAX);
            return FW_STATUS_BAD_REQUEST;
        }
    pthread_rwlock_rdlock(&g->lock);
    int rc = galidx_search(g->ix, queries, nq, k, max_distance, out, counts, pause);
    pthread_rwlock_unlock(&g->lock);
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        return FW_STATUS_INTERNAL;
    }
    return FW_STATUS_OK;
}

int fw_gallery_list(fw_gallery *g, const char *cursor, size_t cursor_len, int limit,
                    fw_gallery_subject *out, int *n, char *next, size_t *next_len,
                    char *err, size_t errlen)
{
    char cur[FW_GALLERY_SUBJECT_MAX];
    *n = 0;
    if (limit < 1 || limit > 65535) {
        snprintf(err, errlen, "limit must be 1-65535");
        return FW_STATUS_BAD_REQUEST;
    }
    /* The cursor is the last subject of the previous page; anything longer cannot be one.
     * Its content is only compared, so no UTF-8 check is needed. */
    if (cursor_len > FW_GALLERY_SUBJECT_MAX) {
        snprintf(err, errlen, "cursor longer than %d bytes", FW_GALLERY_SUBJECT_MAX);
        return FW_STATUS_BAD_REQUEST;
    }
    if (cursor_len) /* the caller may pass its `next` buffer as the cursor: copy it first */
        memcpy(cur, cursor, cursor_len);
    pthread_rwlock_rdlock(&g->lock);
    *n = galidx_list(g->ix, cur, cursor_len, limit, out, next, next_len);
    pthread_rwlock_unlock(&g->lock);
    return FW_STATUS_OK;
}

int fw_gallery_get(fw_gallery *g, uint64_t face_id, fw_gallery_subject *subject, void *meta,
                   size_t *meta_len, float *desc)
{
    pthread_rwlock_rdlock(&g->lock);
    int rc = galidx_get(g->ix, face_id, subject, meta, meta_len, desc);
    pthread_rwlock_unlock(&g->lock);
    return rc == 0 ? FW_STATUS_OK : FW_STATUS_NOT_FOUND;
}

void fw_gallery_info_get(fw_gallery *g, fw_gallery_info *info)
{
    info->faces = atomic_load(&g->a_faces);
    info->subjects = atomic_load(&g->a_subjects);
    info->mem_bytes = atomic_load(&g->a_mem);
    info->disk_bytes = atomic_load(&g->a_disk);
    info->last_seq = atomic_load(&g->a_last_seq);
    info->next_face_id = atomic_load(&g->a_next_id);
    info->compactions = atomic_load(&g->a_compactions);
    info->write_errors = atomic_load(&g->a_write_errors);
}

/* ---- open / close ----------------------------------------------------------------------- */

static void stop_compactor(fw_gallery *g)
{
    if (!g->compactor_started)
        return;
    pthread_mutex_lock(&g->cmu); /* lets a submitted or running merge finish */
    g->c_quit = 1;
    pthread_cond_signal(&g->ccv);
    pthread_mutex_unlock(&g->cmu);
    pthread_join(g->compactor, NULL);
    g->compactor_started = 0;
}

static void gallery_free(fw_gallery *g)
{
    stop_compactor(g);
    if (g->logfd >= 0)
        close(g->logfd);
    if (g->lockfd >= 0)
        close(g->lockfd); /* releases the flock */
    if (g->dirfd >= 0)
        close(g->dirfd);
    galidx_free(g->ix);
    sodium_memzero(g->rest_key_buf, sizeof g->rest_key_buf);
    pthread_rwlock_destroy(&g->lock);
    fw_galwrite_queue_destroy(&g->q);
    pthread_cond_destroy(&g->qcv);
    pthread_mutex_destroy(&g->cmu);
    pthread_cond_destroy(&g->ccv);
    free(g->wbuf);
    free(g->batch);
    free(g->res);
    free(g->dir);
    free(g);
}

int fw_gallery_open(const fw_gallery_options *opt, fw_gallery **out, fw_gallery_report *rep,
                    char *err, size_t errlen)
{
    fw_gallery_report dummy;
    pthread_rwlockattr_t ra;
    *out = NULL;
    if (!rep)
        rep = &dummy;
    memset(rep, 0, sizeof *rep);
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return -1;
    }
    fw_gallery *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    g->dirfd = g->lockfd = g->logfd = -1;
    fw_gallery_options_default(&g->opt);
    if (opt) {
        fw_gallery_options d = g->opt;
        g->opt = *opt;
        if (!g->opt.max_faces) g->opt.max_faces = d.max_faces;
        if (!g->opt.queue_max) g->opt.queue_max = d.queue_max;
        if (!g->opt.batch_max) g->opt.batch_max = d.batch_max;
        if (!g->opt.compact_min_bytes) g->opt.compact_min_bytes = d.compact_min_bytes;
    }
    if (g->opt.batch_max > 65536)
        g->opt.batch_max = 65536;
    g->opt.data_dir = NULL; /* g->dir owns the copy */
    g->opt.key = NULL;      /* rest_key_buf holds the copy */
    if (opt && opt->key && opt->data_dir) {
        memcpy(g->rest_key_buf, opt->key, sizeof g->rest_key_buf);
        g->rest_key = g->rest_key_buf;
    }
    g->next_id = 1;
    pthread_rwlockattr_init(&ra);
    /* Without this glibc prefers readers, and back-to-back searches would starve the writer. */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&g->lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    fw_galwrite_queue_init(&g->q, g->opt.queue_max);
    pthread_cond_init(&g->qcv, NULL);
    pthread_mutex_init(&g->cmu, NULL);
    pthread_cond_init(&g->ccv, NULL);
    randombytes_buf(g->key, sizeof g->key);
    g->ix = galidx_new(g->key, g->opt.max_faces);
    g->wbuf = malloc((size_t)g->opt.batch_max * GALOG_SREC_MAX);
    g->batch = malloc((size_t)g->opt.batch_max * sizeof *g->batch);
    g->res = malloc((size_t)g->opt.batch_max * sizeof *g->res);
    if (opt && opt->data_dir)
        g->dir = strdup(opt->data_dir);
    if (!g->ix || !g->wbuf || !g->batch || !g->res || (opt && opt->data_dir && !g->dir)) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    if (g->dir && load_dir(g, rep, err, errlen) != 0)
        goto err;
    publish(g);
    if (rep->truncated_bytes || rep->repaired_bytes)
        snprintf(rep->message, sizeof rep->message,
                 "gallery: cut a torn tail of %llu bytes; repair dropped %llu bytes in %llu places",
                 (unsigned long long)rep->truncated_bytes, (unsigned long long)rep->repaired_bytes,
                 (unsigned long long)rep->repaired_records);
    if (g->dir) {
        if (pthread_create(&g->compactor, NULL, compactor_main, g) != 0) {
            snprintf(err, errlen, "cannot start the gallery compactor thread");
            goto err;
        }
        g->compactor_started = 1;
        if (g->old_segment) /* left by a crash in the middle of a compaction */
            compactor_submit(g);
    }
    if (pthread_create(&g->writer, NULL, writer_main, g) != 0) {
        snprintf(err, errlen, "cannot start the gallery writer thread");
        goto err;
    }
    g->writer_started = 1;
    *out = g;
    return 0;
err:
    gallery_free(g);
    return -1;
}

static void on_async_closed(uv_handle_t *h)
{
    gallery_free(h->data);
}

void fw_gallery_close(fw_gallery *g)
{
    if (!g)
        return;
    g->closing = 1;
    fw_galwrite_queue_stop(&g->q);
    pthread_cond_signal(&g->qcv);
    if (g->writer_started)
        pthread_join(g->writer, NULL);
    stop_compactor(g);
    if (g->loop_attached) {
        /* what the writer finished after the loop's last turn */
        fw_galwrite_deliver(&g->q, NULL, NULL);
        uv_close((uv_handle_t *)&g->q.async, on_async_closed);
    } else {
        gallery_free(g);
    }
}
