/*
 * galidx.h — the gallery's in-memory index. Not thread-aware: gallery.c holds the rwlock.
 *
 * Layout: one contiguous row-major float32 matrix (a row of FW_GALLERY_DIM floats per face,
 * page-aligned, reserved for max_faces rows) with parallel per-row arrays (squared norm, face id, subject, position in
 * the subject's row list, metadata). Deleting a face swap-removes its row (the last row moves
 * into the hole), so the matrix stays dense for BLAS. Two open-addressing hash maps written
 * here: face id -> row, subject -> subject record; a treap orders subjects for LIST cursors.
 *
 * Who touches what (the locking contract gallery.c relies on):
 *   - readers (search, list, get) hold the read lock and only read;
 *   - exactly one mutator (the writer thread) exists. It reads without any lock (nobody else
 *     writes), does every O(n) thing (growing arrays, rehashing, per-subject row lists)
 *     outside the lock via galidx_grow_prepare / galidx_subj_reserve, and takes the write lock
 *     only for galidx_grow_commit and the O(1)-per-record galidx_apply_* calls, which never
 *     allocate and never fail.
 */
#ifndef FW_GALIDX_H
#define FW_GALIDX_H

#include <stddef.h>
#include <stdint.h>

#include "server/gallery.h"

typedef struct galidx galidx;
typedef struct galidx_subj galidx_subj;

/* key: 16 random bytes keying the subject hash (SipHash), so clients cannot flood one bucket
 * chain or unbalance the treap. max_faces: address space is reserved for that many rows up
 * front (MAP_NORESERVE: memory is used only as rows are added), so growing never copies the
 * matrix; if the reservation is refused the arrays grow by doubling instead. NULL on out of
 * memory. */
galidx *galidx_new(const unsigned char key[16], uint32_t max_faces);
void galidx_free(galidx *ix);

uint32_t galidx_faces(const galidx *ix);
uint32_t galidx_subjects(const galidx *ix);
uint64_t galidx_mem_bytes(const galidx *ix);
uint64_t galidx_max_id(const galidx *ix); /* largest face id ever added, 0 if none */

/* ---- writer-side lookups (no lock needed by the single mutator) -------------------------- */
int galidx_has_face(const galidx *ix, uint64_t face_id);
galidx_subj *galidx_find_subject(const galidx *ix, const char *name, size_t len);

/* A subject record not yet in the index (the writer makes one per new subject of a batch, so
 * that applying can't fail). NULL on out of memory. Freed with galidx_subj_free only while it
 * is not in the index and has no pending enrolls. */
galidx_subj *galidx_subj_new(const galidx *ix, const char *name, size_t len);
void galidx_subj_free(galidx_subj *s);
int galidx_subj_in_index(const galidx_subj *s);
int galidx_subj_same(const galidx_subj *s, const char *name, size_t len);
/* Announce `extra` more enrolls for s in the coming batch: grows its row list (writer-private,
 * outside the lock). -1 on out of memory (nothing changed). */
int galidx_subj_reserve(galidx_subj *s, uint32_t extra);
/* Undo reservations of a batch that never got applied (the disk write failed). Frees s when
 * it is not in the index and nothing is pending any more. */
void galidx_subj_unreserve(galidx_subj *s, uint32_t n);

/* Room for `faces` faces and `subjects` subjects in total. prepare allocates and copies (no
 * lock), commit swaps pointers (write lock), release frees what was replaced (after unlock). */
typedef struct galidx_grow {
    int active;
    uint32_t face_cap;
    float *x, *norms;
    uint64_t *ids;
    galidx_subj **subj;
    uint32_t *spos;
    void **meta;
    uint64_t *idmap;   /* interleaved: id, row (slot = 2 words) */
    uint32_t idmap_cap;
    galidx_subj **smap;
    uint32_t smap_cap;
} galidx_grow;
int galidx_grow_prepare(const galidx *ix, uint64_t faces, uint64_t subjects, galidx_grow *gr);
void galidx_grow_commit(galidx *ix, galidx_grow *gr);
void galidx_grow_release(galidx_grow *gr);

/* ---- mutations: write lock, infallible given the reservations above ---------------------- */
/* Add a face. s: its subject (inserted into the index if it is not in yet; one pending
 * enroll is consumed). meta: a block from galidx_meta_new (ownership passes) or NULL. */
void galidx_apply_enroll(galidx *ix, uint64_t face_id, galidx_subj *s, void *meta,
                         const float *desc);
/* 1 if the face was there (and is gone), 0 if not. */
uint32_t galidx_apply_delete_face(galidx *ix, uint64_t face_id);
/* Number of faces removed (0: no such subject). */
uint32_t galidx_apply_delete_subject(galidx *ix, const char *name, size_t len);

/* A metadata block (length + bytes), NULL when len is 0 or out of memory (*oom set). */
void *galidx_meta_new(const void *data, size_t len, int *oom);
void galidx_meta_free(void *meta);

/* ---- readers: read lock ------------------------------------------------------------------ */
/* See fw_gallery_search (arguments already validated; pause as there). 0, or -1 on out of
 * memory. */
int galidx_search(const galidx *ix, const float *q, int nq, int k, float max_distance,
                  fw_gallery_match *out, int *counts, const fw_pause *pause);
/* Rows galidx_search scores per block (one pause point each) for nq queries. */
uint32_t galidx_search_block(int nq);
/* See fw_gallery_list. Returns the number written; next/next_len as documented there. */
int galidx_list(const galidx *ix, const char *cursor, size_t cursor_len, int limit,
                fw_gallery_subject *out, char *next, size_t *next_len);
/* See fw_gallery_get. 0 or -1 (not found). */
int galidx_get(const galidx *ix, uint64_t face_id, fw_gallery_subject *subject, void *meta,
               size_t *meta_len, float *desc);

/* Visit every face in row order (snapshot writing: the writer, no lock). Stops when fn
 * returns non-zero and returns that value. */
typedef int (*galidx_visit_fn)(void *arg, uint64_t face_id, const char *subject,
                               size_t subject_len, const void *meta, size_t meta_len,
                               const float *desc);
int galidx_visit(const galidx *ix, galidx_visit_fn fn, void *arg);

/* Input checks shared with the API: 1 if valid. */
int galidx_subject_valid(const char *s, size_t len);
int galidx_desc_valid(const float *d);

#endif
