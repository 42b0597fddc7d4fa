/*
 * galmerge.h — compaction from the files, off the writer thread: the new snapshot is the old
 * snapshot plus a closed log segment (GALOG_LOG_OLD), merged by streaming both. Nothing is read
 * from the in-memory index, so the writer goes on appending and applying meanwhile; memory
 * use is the set of faces and subjects deleted in the segment, not the gallery.
 *
 * Runs on the gallery's compactor thread. Touches only GALOG_SNAP_NAME (read, then replaced),
 * GALOG_SNAP_TMP and GALOG_LOG_OLD (read, then unlinked): never the live log.
 */
#ifndef FW_GALMERGE_H
#define FW_GALMERGE_H

#include <stdint.h>

#include "server/gallery.h"

typedef struct galmerge_result {
    uint64_t faces;       /* in the new snapshot */
    uint64_t snap_bytes;  /* its size */
    uint64_t last_seq;    /* it covers records up to this one */
} galmerge_result;

/* Merge, install the new snapshot (temp file, sync, rename, sync dir), then unlink the segment.
 * key: 16 random bytes keying the subject hash. rest_key: the --gallery-key (32 bytes, not
 * owned) the files are encrypted with, or NULL. next_face_id goes into the snapshot header.
 * On failure the segment stays where it is (the next attempt, or the next start, finishes the
 * job) and nothing else changed. 0, or -1 with err. */
int galmerge_run(int dirfd, const fw_gallery_io *io, const unsigned char key[16],
                 const uint8_t *rest_key, uint64_t next_face_id, galmerge_result *res,
                 char *err, size_t errlen);

#endif
