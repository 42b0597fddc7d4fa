/*
 * galog.h — the gallery's on-disk formats: records, the append-only log, snapshots.
 *
 * Every byte the gallery writes goes through this file, and every record through exactly one
 * encoder (galog_encode) and one decoder (galog_decode). With --gallery-key every record is
 * sealed from galog_encode's bytes and opened back into them before galog_decode
 * (XChaCha20-Poly1305 per record, server/keys.h), so validation is the same in both modes;
 * the encrypted layouts are in docs/gallery.md and docs/security.md "Gallery at rest".
 *
 * Integers are little-endian on disk (the host order of every target we build for, but the
 * codec does not assume it). docs/gallery.md has the byte layouts and the crash-safety
 * argument for each step of a compaction.
 *
 * Nothing here is thread-aware: the gallery's writer thread (or fw_gallery_open, before that
 * thread exists) is the only caller.
 */
#ifndef FW_GALOG_H
#define FW_GALOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "server/gallery.h"
#include "server/keys.h"

#define GALOG_LOG_NAME "gallery.log"
#define GALOG_LOG_TMP "gallery.log.tmp"
#define GALOG_LOG_OLD "gallery.log.old"  /* a closed log segment being compacted */
#define GALOG_SNAP_NAME "gallery.snap"
#define GALOG_SNAP_TMP "gallery.snap.tmp"
#define GALOG_LOCK_NAME "LOCK"

#define GALOG_LOG_HDR 24    /* "FWGLOG01", u64 start_seq, u32 0, u32 crc */
#define GALOG_SNAP_HDR 40   /* "FWGSNP01", u64 last_seq, u64 next_face_id, u64 faces, u32 0, u32 crc */
#define GALOG_SNAP_TRAILER 20 /* "FWGSEND1", u64 faces, u32 crc */

/* Encrypted files (--gallery-key): a distinct magic, a random file id (bound into every
 * record's associated data, so records cannot move between files) and the key check value. */
#define GALOG_FILE_ID_LEN 16
/* "FWGLOGE1", u64 start_seq, file_id, kcv, u32 crc */
#define GALOG_ELOG_HDR (8 + 8 + GALOG_FILE_ID_LEN + FW_REC_KCV_LEN + 4)
/* "FWGSNPE1", u64 last_seq, u64 next_face_id, u64 faces, file_id, kcv, u32 0, u32 crc */
#define GALOG_ESNAP_HDR (8 + 24 + GALOG_FILE_ID_LEN + FW_REC_KCV_LEN + 4 + 4)
/* sealed copy of the header's first 32 bytes (magic .. faces): authenticates the count */
#define GALOG_ESNAP_TRAILER (32 + FW_REC_OVERHEAD)

enum galog_type { GALOG_ENROLL = 1, GALOG_DELETE_FACE = 2, GALOG_DELETE_SUBJECT = 3 };

/* u32 len | u8 type | u64 seq | payload | u32 crc32c(len .. payload) */
#define GALOG_REC_OVERHEAD (4 + 1 + 8 + 4)
#define GALOG_REC_MAX (GALOG_REC_OVERHEAD + 8 + 2 + FW_GALLERY_SUBJECT_MAX + 2 + \
                       FW_GALLERY_META_MAX + 4 * FW_GALLERY_DIM)

/* Encrypted record: u32 len | u64 seq | nonce | ciphertext(type || payload) | tag, where len
 * counts the bytes after itself; associated data file_id || len || seq. The tag replaces the
 * CRC: 36 bytes more than the plaintext record. */
#define GALOG_SREC_MAX (GALOG_REC_MAX + 36)

/* A decoded record. subject/meta point into the buffer that was decoded (or, for encoding,
 * into the caller's memory). */
typedef struct galog_rec {
    uint8_t type;
    uint64_t seq;
    uint64_t face_id;          /* ENROLL, DELETE_FACE */
    const char *subject;       /* ENROLL, DELETE_SUBJECT */
    uint16_t subject_len;
    const void *meta;          /* ENROLL */
    uint16_t meta_len;
    float desc[FW_GALLERY_DIM];/* ENROLL */
} galog_rec;

uint32_t galog_crc32c(uint32_t crc, const void *data, size_t len);

/* Bytes galog_encode will write for r (<= GALOG_REC_MAX). */
size_t galog_rec_size(const galog_rec *r);
/* Encode r into buf (room for galog_rec_size(r)); returns the bytes written. */
size_t galog_encode(const galog_rec *r, uint8_t *buf);
/* Decode one record at p (avail bytes readable). 0 with *used set, or -1: torn, checksum
 * mismatch, or any field out of its bounds (the payload is validated as strictly as a
 * request: UTF-8 subject, metadata size, finite bounded descriptor, exact length). */
int galog_decode(const uint8_t *p, size_t avail, galog_rec *r, size_t *used);

/* The same two for a file written under `key` (32 bytes; NULL = the plaintext codec above)
 * whose header carries file_id. The sealed size is at most GALOG_SREC_MAX. Decoding needs
 * scratch (GALOG_REC_MAX bytes): the opened record lives there, and r points into it. */
size_t galog_encode_key(const uint8_t *key, const uint8_t *file_id, const galog_rec *r,
                        uint8_t *buf);
int galog_decode_key(const uint8_t *key, const uint8_t *file_id, const uint8_t *p, size_t avail,
                     galog_rec *r, size_t *used, uint8_t *scratch);

/* Bytes of a log header in the format chosen by key (NULL: plaintext). */
size_t galog_log_hdr_size(const uint8_t *key);

/* Called for each record found; non-zero stops the scan (err already written). */
typedef int (*galog_rec_fn)(void *arg, const galog_rec *r, char *err, size_t errlen);

typedef struct galog_scan {
    uint64_t start_seq;      /* from the log header */
    uint64_t last_seq;       /* of the last good record (start_seq when none) */
    uint64_t records;        /* records handed to fn (seq > after_seq) */
    uint64_t end;            /* where good data ends: the file must be cut here */
    uint64_t truncated;      /* bytes of torn/corrupt tail past end */
    uint64_t dropped_bytes;  /* repair: corrupt bytes skipped in the middle */
    uint64_t dropped_runs;   /* repair: how many separate corrupt stretches */
    uint8_t file_id[GALOG_FILE_ID_LEN]; /* encrypted log: its id (records appended use it) */
} galog_scan;

/* Scan a whole log image. Records with seq <= after_seq (already in the snapshot) are checked
 * but not passed to fn. A bad record with no valid record after it is a torn tail (reported
 * in res->truncated, the caller cuts the file at res->end); a bad record followed by a valid
 * one is corruption in the middle: -1 with a message naming both offsets, unless repair.
 * -1 also for a bad header, or a log that starts after the snapshot (records missing).
 * key (32 bytes, or NULL) must fit the file: an encrypted log without a key, a plaintext one
 * with a key, or a key whose check value differs is -1 even with repair (GALOG_ERR_*),
 * because "repairing" would throw the whole gallery away. */
int galog_scan_log(const uint8_t *buf, size_t len, const uint8_t *key, uint64_t after_seq,
                   int repair, galog_rec_fn fn, void *arg, galog_scan *res, char *err,
                   size_t errlen);

/* The start-up errors of a key that does not fit the files (after "FILE: "). */
#define GALOG_ERR_WRONG_KEY "wrong --gallery-key (the key check value does not match)"
#define GALOG_ERR_NEED_KEY "the gallery is encrypted: start with --gallery-key"
#define GALOG_ERR_NOT_ENCRYPTED "the gallery is not encrypted but --gallery-key was given"


typedef struct galog_snap_info {
    uint64_t last_seq, next_face_id, faces;
    uint64_t loaded;         /* faces handed to fn */
    int damaged;             /* repair: the snapshot was cut short; loaded < faces */
} galog_snap_info;

/* Check and load a whole snapshot image: header, faces ENROLL records, trailer. Any damage is
 * -1 with the offset in err, unless repair (then the good prefix is loaded, info->damaged). */
int galog_load_snapshot(const uint8_t *buf, size_t len, const uint8_t *key, int repair,
                        galog_rec_fn fn, void *arg, galog_snap_info *info, char *err,
                        size_t errlen);

/* The header of a snapshot image: 0 and its last_seq, or -1 if it is not a valid header in
 * the format key (NULL or 32 bytes) says, or was written under another key. */
int galog_snap_peek(const uint8_t *buf, size_t len, const uint8_t *key, uint64_t *last_seq);

/* ---- writing ---------------------------------------------------------------------------- */

/* Write all of buf at off through io (NULL = real pwrite), retrying short writes and EINTR.
 * 0, or -1 with errno set. */
int galog_write_all(const fw_gallery_io *io, int fd, const void *buf, size_t len, off_t off);
int galog_datasync(const fw_gallery_io *io, int fd);

/* Create an empty log whose records start after start_seq: written to GALOG_LOG_TMP, synced,
 * renamed over GALOG_LOG_NAME, directory synced. Returns an fd open for writing (the caller
 * appends at GALOG_LOG_HDR) or -1 with err. */
int galog_log_create(int dirfd, const fw_gallery_io *io, uint64_t start_seq, char *err,
                     size_t errlen);
/* The same in the format key says (NULL: exactly the above). An encrypted log gets a fresh
 * random id, written to file_id (GALOG_FILE_ID_LEN bytes) on success; records appended at
 * galog_log_hdr_size(key) must be encoded with it. */
int galog_log_create_key(int dirfd, const fw_gallery_io *io, const uint8_t *key,
                         uint64_t start_seq, uint8_t *file_id, char *err, size_t errlen);

/* Snapshot writer: begin creates GALOG_SNAP_TMP, add appends faces, commit writes the trailer
 * and the final header (the face count is known only then), syncs, renames over
 * GALOG_SNAP_NAME and syncs the directory; abort removes the temp file. Returns 0 or -1 with
 * err (then call abort). */
typedef struct galog_snap_writer {
    int dirfd, fd;
    const fw_gallery_io *io;
    const uint8_t *key;      /* not owned, 32 bytes; NULL: plaintext snapshot */
    uint8_t file_id[GALOG_FILE_ID_LEN];
    off_t off;
    uint64_t faces, last_seq, next_face_id;
    uint8_t *buf;
    size_t used, cap;
} galog_snap_writer;
int galog_snap_begin(galog_snap_writer *w, int dirfd, const fw_gallery_io *io,
                     const uint8_t *key, uint64_t last_seq, uint64_t next_face_id, char *err,
                     size_t errlen);
int galog_snap_add(galog_snap_writer *w, uint64_t face_id, const char *subject, size_t subject_len,
                   const void *meta, size_t meta_len, const float *desc, char *err, size_t errlen);
int galog_snap_commit(galog_snap_writer *w, uint64_t *bytes, char *err, size_t errlen);
void galog_snap_abort(galog_snap_writer *w);

#endif
