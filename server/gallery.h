/*
 * gallery.h — the face gallery: enroll, 1:N identify, delete, list. Searched with BLAS,
 * durable on disk (append-only log + snapshots, group commit), no networking.
 *
 * Three layers, one file each:
 *   gallery.c  this API, the writer thread, the rwlock, completions to the libuv loop
 *   galidx.c   the in-memory index (matrix, norms, id/subject maps, ordered subjects, search)
 *   galog.c    the on-disk formats (record codec, CRC32C, log scan/repair, snapshot)
 *   galmerge.c background compaction: old snapshot + closed log -> new snapshot, from files
 * docs/gallery.md describes the formats, the crash-safety argument and the threading.
 *
 * Threading (who may call what):
 *   fw_gallery_open            any thread, before anything else; blocks (loads from disk)
 *   fw_gallery_attach_loop     the loop thread, once, before the first enroll/delete
 *   fw_gallery_enroll, _delete_face, _delete_subject
 *                              the loop thread; never block (a short queue mutex, no I/O, no
 *                              rwlock); the callback runs later on the loop thread
 *   fw_gallery_search, _list, _get
 *                              any thread, concurrently; they take the read lock, so run
 *                              them on worker threads, never on the loop thread
 *   fw_gallery_info            any thread including the loop thread: atomics only, no lock
 *   fw_gallery_apply, _reset   one thread that is not the loop (galpg.c's follower), instead
 *                              of enroll/delete: see "an external system of record" below
 *   fw_gallery_close           the loop thread (or any thread when no loop is attached)
 *
 * Status codes are enum fw_status from fw_proto.h, so compute.c can put them on the wire as
 * they are. Every message is one line of plain text for the client.
 */
#ifndef FW_GALLERY_H
#define FW_GALLERY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "engine/pause.h"

#define FW_GALLERY_DIM 128          /* floats per descriptor */
#define FW_GALLERY_SUBJECT_MAX 128  /* bytes of UTF-8, at least 1, no NUL */
#define FW_GALLERY_META_MAX 1024    /* bytes of opaque metadata per face */
#define FW_GALLERY_K_MAX 100        /* matches per query */
#define FW_GALLERY_NQ_MAX 1024      /* queries per search call */
/* Each descriptor component must be finite and within +-FW_GALLERY_VALUE_MAX: with that bound
 * every |q|^2 + |x|^2 - 2 q.x stays finite in float, so no NaN can reach the top-k. */
#define FW_GALLERY_VALUE_MAX 1.0e4f

typedef struct fw_gallery fw_gallery;

/* The write path's system calls, replaceable for fault-injection tests. Called from the
 * gallery's writer and compactor threads, possibly at the same time, and from
 * fw_gallery_open. NULL members mean the real call. */
typedef struct fw_gallery_io {
    ssize_t (*pwrite)(void *ctx, int fd, const void *buf, size_t len, off_t off);
    int (*fdatasync)(void *ctx, int fd);
    void *ctx;
} fw_gallery_io;

typedef struct fw_gallery_options {
    const char *data_dir;     /* NULL: memory only (nothing survives close) */
    /* --gallery-key: 32 bytes, copied at open (the caller may wipe its copy then); the log and
     * snapshots are written encrypted and must have been written under this key. NULL: the
     * plaintext format, and an encrypted gallery is refused. Ignored without data_dir. */
    const uint8_t *key;
    int repair;               /* --repair: drop corrupt records in the middle of the log */
    uint32_t max_faces;       /* enroll beyond this -> INTERNAL "gallery full"; 0 = 10,000,000 */
    uint32_t queue_max;       /* enroll/delete requests waiting for the writer; 0 = 4096 */
    uint32_t batch_max;       /* records per group commit; 0 = 512 */
    /* Compact when the log holds more than this many bytes AND more bytes than the last
     * snapshot, so rewriting costs O(1) amortised per record: the writer closes the log (a
     * rename and a new file) and the compactor thread merges snapshot + closed log into a new
     * snapshot from the files, while enrolls go on. 0 = 64 MiB. */
    uint64_t compact_min_bytes;
    const fw_gallery_io *io;  /* NULL: real pwrite/fdatasync; must outlive the gallery */
    /* Where the gallery reports what happened (compactions, failed syncs, cut tails). Called on
     * the writer thread, the compactor thread or inside fw_gallery_open, so it must be
     * thread-safe (one line per call). NULL: lines go to stderr. */
    void (*log)(void *arg, const char *line);
    void *log_arg;
} fw_gallery_options;

void fw_gallery_options_default(fw_gallery_options *o);

/* What fw_gallery_open found on disk. */
typedef struct fw_gallery_report {
    uint64_t snapshot_faces;      /* faces loaded from the snapshot */
    uint64_t log_records;         /* records replayed from the log */
    uint64_t truncated_bytes;     /* torn/corrupt tail cut off the log (0 = clean) */
    uint64_t repaired_bytes;      /* with repair: bytes of corrupt middle dropped */
    uint64_t repaired_records;    /* with repair: undecodable stretches dropped */
    char message[256];            /* one line summarising the above ("" when clean) */
} fw_gallery_report;

/* Open (and with data_dir, load) a gallery. Blocks: call before the loop runs. On success
 * *out owns the gallery (fw_gallery_close frees it) and rep (may be NULL) says what was found.
 * On failure returns -1 with one line in err; *out is NULL. A corrupt record in the middle of
 * the log fails unless opt->repair. */
int fw_gallery_open(const fw_gallery_options *opt, fw_gallery **out, fw_gallery_report *rep,
                    char *err, size_t errlen);

/* Create the uv_async through which the writer thread hands completions to the loop. Loop
 * thread, once. Returns 0 or a negative libuv error. */
int fw_gallery_attach_loop(fw_gallery *g, uv_loop_t *loop);

/* Completion of an enroll or delete, on the loop thread. status is FW_STATUS_OK with value =
 * the new face id (enroll) or the number of faces deleted (delete, >= 1), or an error status
 * (NOT_FOUND, INTERNAL, SHUTTING_DOWN) with msg set. msg is valid during the call only. */
typedef void (*fw_gallery_done_cb)(void *arg, int status, uint64_t value, const char *msg);

/* Queue an enroll. Everything is copied; desc is FW_GALLERY_DIM floats. Returns FW_STATUS_OK
 * when queued (cb will be called exactly once, later, on the loop thread, after the record is
 * on disk and visible to searches), or an error status with a message in err and cb never
 * called: BAD_REQUEST (bad subject, metadata or descriptor), BUSY (writer queue full),
 * SHUTTING_DOWN (closing), INTERNAL (no loop attached, out of memory). */
int fw_gallery_enroll(fw_gallery *g, const char *subject, size_t subject_len, const void *meta,
                      size_t meta_len, const float *desc, fw_gallery_done_cb cb, void *arg,
                      char *err, size_t errlen);
/* Same contract. value in the callback = faces deleted; NOT_FOUND when there were none. */
int fw_gallery_delete_face(fw_gallery *g, uint64_t face_id, fw_gallery_done_cb cb, void *arg,
                           char *err, size_t errlen);
int fw_gallery_delete_subject(fw_gallery *g, const char *subject, size_t subject_len,
                              fw_gallery_done_cb cb, void *arg, char *err, size_t errlen);

typedef struct fw_gallery_match {
    uint64_t face_id;
    float distance;                              /* Euclidean */
    uint16_t subject_len;
    char subject[FW_GALLERY_SUBJECT_MAX + 1];    /* copied under the lock, NUL-terminated */
} fw_gallery_match;

/* Top-k nearest faces for each of nq queries (queries: nq * FW_GALLERY_DIM floats, row-major).
 * Only matches with distance < max_distance are returned (INFINITY: no threshold). out has
 * room for nq * k matches: query i's are out[i*k .. i*k + counts[i] - 1], nearest first (ties
 * by face id). Any thread; takes the read lock. pause (NULL: none) is called between blocks
 * of rows (~0.3 ms of work apart; engine/pause.h) on the calling thread, with the read lock
 * held: its hook may give the CPU away but must not call into the gallery. Results never
 * depend on it. Returns FW_STATUS_OK, or BAD_REQUEST (k not in 1..100, nq not in 1..1024,
 * non-finite or out-of-range query, negative/NaN threshold) or INTERNAL (out of memory) with
 * err set. */
int fw_gallery_search(fw_gallery *g, const float *queries, int nq, int k, float max_distance,
                      fw_gallery_match *out, int *counts, const fw_pause *pause, char *err,
                      size_t errlen);

typedef struct fw_gallery_subject {
    uint32_t faces;
    uint16_t subject_len;
    char subject[FW_GALLERY_SUBJECT_MAX + 1];
} fw_gallery_subject;

/* Subjects in byte order, starting after `cursor` (cursor_len 0: from the start), at most
 * limit (1..65535). *n = how many were written to out. next (FW_GALLERY_SUBJECT_MAX + 1 bytes)
 * receives the cursor for the next page and *next_len its length, 0 at the end. A cursor stays
 * valid whatever is enrolled or deleted meanwhile: every subject present for the whole listing
 * is returned exactly once. Any thread; read lock. FW_STATUS_OK / BAD_REQUEST / INTERNAL. */
int fw_gallery_list(fw_gallery *g, const char *cursor, size_t cursor_len, int limit,
                    fw_gallery_subject *out, int *n, char *next, size_t *next_len,
                    char *err, size_t errlen);

/* One face, by id. Any thread; read lock. FW_STATUS_OK or NOT_FOUND. meta: room for
 * FW_GALLERY_META_MAX bytes (may be NULL); desc: FW_GALLERY_DIM floats (may be NULL). */
int fw_gallery_get(fw_gallery *g, uint64_t face_id, fw_gallery_subject *subject, void *meta,
                   size_t *meta_len, float *desc);

typedef struct fw_gallery_info {
    uint64_t faces, subjects;
    uint64_t mem_bytes;    /* heap held by the index */
    uint64_t disk_bytes;   /* snapshot + log (0 in memory-only mode) */
    uint64_t last_seq;     /* sequence number of the last durable record */
    uint64_t next_face_id; /* the id the next enroll will get */
    uint64_t compactions;  /* snapshots written since open (start-up and background) */
    uint64_t write_errors; /* batches that failed to reach the disk since open */
} fw_gallery_info;

/* Figures as of the last applied batch. Lock-free (atomics): safe on the loop thread. */
void fw_gallery_info_get(fw_gallery *g, fw_gallery_info *info);

/* ---- an external system of record (galpg.c, --gallery-url) -------------------------------
 * With PostgreSQL as the system of record the gallery is opened memory-only and its own
 * enroll/delete are not used: every change, the node's own writes included, comes back from
 * the database's change table and is applied here, in the database's order, by one thread.
 */
enum {
    FW_GALLERY_CHANGE_ADD = 1,
    FW_GALLERY_CHANGE_REMOVE = 2,
    FW_GALLERY_CHANGE_SKIP = 3     /* only advances last_seq: a change the caller decided to
                                    * pass over (a row it could not use), so that the sequence
                                    * stays dense */
};

typedef struct fw_gallery_change {
    uint64_t seq;              /* the change's sequence number; 0: a face of a full load */
    int kind;                  /* FW_GALLERY_CHANGE_ADD, _REMOVE or _SKIP */
    uint64_t face_id;          /* >= 1 (ignored for SKIP) */
    /* ADD only; borrowed for the call (everything is copied) */
    const char *subject;
    size_t subject_len;
    const void *meta;
    size_t meta_len;
    const float *desc;         /* FW_GALLERY_DIM floats */
} fw_gallery_change;

/* Apply n changes in order. All of them are checked first (valid subject, metadata and
 * descriptor as for fw_gallery_enroll, a known kind, face id >= 1, non-zero seqs increasing
 * and above last_seq); if one is bad nothing is applied. Idempotent per change: an ADD of an
 * id that is present and a REMOVE of an id that is absent are no-ops. Memory is reserved
 * outside the lock, with room for every ADD of the call: a call whose ADDs could take the
 * gallery past max_faces is refused whole ("gallery full"), even when REMOVEs before them
 * would make room — apply one change at a time there. The write lock is held once, for O(1)
 * work per change. Afterwards
 * fw_gallery_info_get reports last_seq = the last non-zero seq, next_face_id = the largest id
 * added + 1.
 * One thread only, never the loop thread (it is the gallery's only mutator: the gallery's own
 * enroll/delete must not be used on it), and only on a memory-only gallery. 0, or -1 with err
 * (out of memory, gallery full, a bad change). */
int fw_gallery_apply(fw_gallery *g, const fw_gallery_change *c, int n, char *err, size_t errlen);

/* Remove every face and set last_seq to seq: the start of a full load of the state as of seq
 * (its faces then come as ADDs with seq 0), also when an earlier load broke off halfway. Same
 * thread rules as fw_gallery_apply. 0, or -1 with err (out of memory, not memory-only). */
int fw_gallery_apply_reset(fw_gallery *g, uint64_t seq, char *err, size_t errlen);

/* Stop: new requests get SHUTTING_DOWN; requests already queued are written and completed
 * (their callbacks run inside this call), then the writer thread is joined, a compaction in
 * progress is let finish (seconds for millions of faces; a kill instead is safe too: the next
 * start finishes it), and files are closed.
 * With a loop attached, call on the loop thread and run the loop afterwards: the memory is
 * freed once the uv_async handle has closed. g must not be used after this call. */
void fw_gallery_close(fw_gallery *g);

#endif
