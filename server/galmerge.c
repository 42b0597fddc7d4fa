/*
 * galmerge.c — background compaction by merging files (see galmerge.h).
 *
 * Three streaming passes over memory-mapped files:
 *   1. the closed log segment: remember every deleted face id, and for every deleted subject
 *      the sequence number of its last DELETE_SUBJECT;
 *   2. the old snapshot: keep each face unless its id was deleted or its subject was deleted
 *      at all (every snapshot face precedes the whole segment);
 *   3. the segment again: keep each ENROLL unless its id was deleted or its subject was
 *      deleted by a record *after* it (a subject deleted, then enrolled again, keeps the new
 *      faces).
 * Ids are never reused, so "id deleted" needs no sequence number.
 */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/galmerge.h"
#include "server/galog.h"

/* ---- the deleted sets: open addressing, load <= 1/2, grown by doubling ------------------- */

typedef struct idset {
    uint64_t *slot; /* 0 = empty (ids start at 1) */
    size_t cap, n;
} idset;

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int idset_has(const idset *s, uint64_t id)
{
    if (!s->cap)
        return 0;
    for (size_t i = mix64(id) & (s->cap - 1); s->slot[i]; i = (i + 1) & (s->cap - 1))
        if (s->slot[i] == id)
            return 1;
    return 0;
}

static int idset_add(idset *s, uint64_t id)
{
    if ((s->n + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        uint64_t *ns = calloc(cap, sizeof *ns);
        if (!ns)
            return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slot[i])
                continue;
            size_t j = mix64(s->slot[i]) & (cap - 1);
            while (ns[j])
                j = (j + 1) & (cap - 1);
            ns[j] = s->slot[i];
        }
        free(s->slot);
        s->slot = ns;
        s->cap = cap;
    }
    size_t i = mix64(id) & (s->cap - 1);
    while (s->slot[i] && s->slot[i] != id)
        i = (i + 1) & (s->cap - 1);
    if (!s->slot[i]) {
        s->slot[i] = id;
        s->n++;
    }
    return 0;
}

typedef struct subj_del {
    uint64_t hash;
    uint64_t seq;      /* of the last DELETE_SUBJECT */
    const char *name;  /* points into the mapped segment */
    uint16_t len;
} subj_del;

typedef struct subjset {
    subj_del *slot; /* name == NULL: empty */
    size_t cap, n;
    const unsigned char *key;
} subjset;

static uint64_t subj_hash(const subjset *s, const char *name, size_t len)
{
    unsigned char out[crypto_shorthash_BYTES];
    uint64_t h = 0;
    crypto_shorthash(out, (const unsigned char *)name, len, s->key);
    for (int i = 0; i < 8; i++)
        h = (h << 8) | out[i];
    return h;
}

static subj_del *subjset_find(const subjset *s, uint64_t h, const char *name, size_t len)
{
    if (!s->cap)
        return NULL;
    for (size_t i = h & (s->cap - 1); s->slot[i].name; i = (i + 1) & (s->cap - 1))
        if (s->slot[i].hash == h && s->slot[i].len == len && !memcmp(s->slot[i].name, name, len))
            return &s->slot[i];
    return NULL;
}

static int subjset_put(subjset *s, const char *name, size_t len, uint64_t seq)
{
    uint64_t h = subj_hash(s, name, len);
    subj_del *e = subjset_find(s, h, name, len);
    if (e) {
        if (seq > e->seq)
            e->seq = seq;
        return 0;
    }
    if ((s->n + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        subj_del *ns = calloc(cap, sizeof *ns);
        if (!ns)
            return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slot[i].name)
                continue;
            size_t j = s->slot[i].hash & (cap - 1);
            while (ns[j].name)
                j = (j + 1) & (cap - 1);
            ns[j] = s->slot[i];
        }
        free(s->slot);
        s->slot = ns;
        s->cap = cap;
    }
    size_t i = h & (s->cap - 1);
    while (s->slot[i].name)
        i = (i + 1) & (s->cap - 1);
    s->slot[i] = (subj_del){ h, seq, name, (uint16_t)len };
    s->n++;
    return 0;
}

/* ---- the passes ------------------------------------------------------------------------- */

typedef struct merge {
    idset ids;
    subjset subjects;
    galog_snap_writer w;
} merge;

static int collect_cb(void *arg, const galog_rec *r, char *err, size_t errlen)
{
    merge *m = arg;
    int rc = 0;
    if (r->type == GALOG_DELETE_FACE)
        rc = idset_add(&m->ids, r->face_id);
    else if (r->type == GALOG_DELETE_SUBJECT)
        rc = subjset_put(&m->subjects, r->subject, r->subject_len, r->seq);
    if (rc)
        snprintf(err, errlen, "compaction: out of memory");
    return rc;
}

static int keep_snapshot_cb(void *arg, const galog_rec *r, char *err, size_t errlen)
{
    merge *m = arg;
    if (idset_has(&m->ids, r->face_id) ||
        subjset_find(&m->subjects, subj_hash(&m->subjects, r->subject, r->subject_len),
                     r->subject, r->subject_len))
        return 0;
    return galog_snap_add(&m->w, r->face_id, r->subject, r->subject_len, r->meta, r->meta_len,
                          r->desc, err, errlen);
}

static int keep_log_cb(void *arg, const galog_rec *r, char *err, size_t errlen)
{
    merge *m = arg;
    if (r->type != GALOG_ENROLL || idset_has(&m->ids, r->face_id))
        return 0;
    const subj_del *d = subjset_find(&m->subjects,
                                     subj_hash(&m->subjects, r->subject, r->subject_len),
                                     r->subject, r->subject_len);
    if (d && d->seq > r->seq)
        return 0;
    return galog_snap_add(&m->w, r->face_id, r->subject, r->subject_len, r->meta, r->meta_len,
                          r->desc, err, errlen);
}

typedef struct mapped {
    const uint8_t *p;
    size_t len;
    int present;
} mapped;

static int map_named(int dirfd, const char *name, int optional, mapped *m, char *err,
                     size_t errlen)
{
    struct stat st;
    memset(m, 0, sizeof *m);
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (optional && errno == ENOENT)
            return 0;
        snprintf(err, errlen, "compaction: open %s: %s", name, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "compaction: stat %s: %s", name, strerror(errno));
        close(fd);
        return -1;
    }
    m->present = 1;
    m->len = (size_t)st.st_size;
    if (m->len) {
        void *p = mmap(NULL, m->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            snprintf(err, errlen, "compaction: map %s: %s", name, strerror(errno));
            close(fd);
            return -1;
        }
        m->p = p;
    }
    close(fd);
    return 0;
}

static void unmap(mapped *m)
{
    if (m->p)
        munmap((void *)m->p, m->len);
    m->p = NULL;
}

int galmerge_run(int dirfd, const fw_gallery_io *io, const unsigned char key[16],
                 const uint8_t *rest_key, uint64_t next_face_id, galmerge_result *res,
                 char *err, size_t errlen)
{
    mapped snap, seg;
    merge m;
    galog_scan sc;
    galog_snap_info si;
    uint64_t snap_seq = 0;
    int began = 0, rc = -1;
    memset(&m, 0, sizeof m);
    memset(res, 0, sizeof *res);
    m.subjects.key = key;
    m.w.fd = -1;
    memset(&seg, 0, sizeof seg);
    if (map_named(dirfd, GALOG_SNAP_NAME, 1, &snap, err, errlen) != 0)
        return -1;
    if (map_named(dirfd, GALOG_LOG_OLD, 0, &seg, err, errlen) != 0)
        goto out;
    if (snap.present && galog_snap_peek(snap.p ? snap.p : (const uint8_t *)"", snap.len, rest_key,
                                        &snap_seq) != 0) {
        snprintf(err, errlen, "compaction: " GALOG_SNAP_NAME ": bad header");
        goto out;
    }
    /* 1: what the segment deletes. The segment was synced before it was closed: any damage
     * (even a "torn tail") means the disk changed it, and we do not build on it. */
    if (galog_scan_log(seg.p ? seg.p : (const uint8_t *)"", seg.len, rest_key, snap_seq, 0,
                       collect_cb, &m, &sc, err, errlen) != 0)
        goto out;
    if (sc.truncated) {
        snprintf(err, errlen, "compaction: " GALOG_LOG_OLD ": damaged tail at offset %llu",
                 (unsigned long long)sc.end);
        goto out;
    }
    res->last_seq = sc.last_seq > snap_seq ? sc.last_seq : snap_seq;
    began = 1; /* abort is safe after any begin, even a failed one */
    if (galog_snap_begin(&m.w, dirfd, io, rest_key, res->last_seq, next_face_id, err,
                         errlen) != 0)
        goto out;
    /* 2 and 3 */
    if (snap.present && galog_load_snapshot(snap.p ? snap.p : (const uint8_t *)"", snap.len, rest_key,
                                            0, keep_snapshot_cb, &m, &si, err, errlen) != 0)
        goto out;
    if (galog_scan_log(seg.p ? seg.p : (const uint8_t *)"", seg.len, rest_key, snap_seq, 0,
                       keep_log_cb, &m, &sc, err, errlen) != 0)
        goto out;
    res->faces = m.w.faces;
    if (galog_snap_commit(&m.w, &res->snap_bytes, err, errlen) != 0)
        goto out;
    began = 0;
    /* The new snapshot covers the segment: it is garbage now. Failing to remove it is harmless
     * (the next start skips its records and removes it). */
    if (unlinkat(dirfd, GALOG_LOG_OLD, 0) == 0)
        fsync(dirfd);
    rc = 0;
out:
    if (began)
        galog_snap_abort(&m.w);
    unmap(&snap);
    unmap(&seg);
    free(m.ids.slot);
    free(m.subjects.slot);
    return rc;
}
