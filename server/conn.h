/*
 * conn.h — one client connection of facewired: incremental frame parsing, request dispatch
 * (PING and INFO answered here, everything else handed to compute), batched writes,
 * backpressure and the close sequence. Implements the fw_conn_* half of compute.h.
 *
 * Memory per idle connection is what this struct and libuv's uv_tcp_t cost (well under 1 KiB):
 * reads land in the server's shared 64 KiB buffer and only the unfinished tail of a frame is
 * copied into the connection; the output buffer exists only while responses wait to be sent.
 *
 * Ownership: a fw_conn is allocated by fw_conn_accept() and owned by the loop thread; it is
 * freed in the close callback of its handle, which runs once, after fw_conn_close(). From
 * fw_conn_close() on, compute has been told (fw_compute_conn_closed) and replies are dropped.
 */
#ifndef FW_CONN_H
#define FW_CONN_H

#include <stdint.h>
#include <uv.h>

#include "client/fw_secure.h"
#include "fw_proto.h"
#include "server/server.h"

/* Where the parser is within the byte stream. */
typedef enum fw_in_state {
    FW_IN_HEADER = 0, /* collecting a header (hlen bytes of it in hdr) */
    FW_IN_BODY,       /* header accepted; collecting cur.body_len bytes into body */
    FW_IN_SKIP,       /* header rejected without closing; discarding skip_left body bytes */
    FW_IN_DISCARD     /* closing after an error response: every further byte is ignored */
} fw_in_state;

struct fw_conn {
    uv_tcp_t tcp; /* tcp.data == this */
    fw_server *srv;
    uint64_t id;

    fw_link by_activity;    /* on srv->by_activity, ordered by last_active */
    fw_link by_frame_start; /* on srv->by_frame_start while a frame is incomplete */
    fw_link pending;        /* on srv->pending while the check phase has work for it */
    uint64_t last_active;   /* uv_now of the last byte read or written, or job finished */
    uint64_t frame_started; /* uv_now when the incomplete frame (or the linger) began */

    /* Input. */
    fw_in_state in_state;
    uint8_t hdr[FW_HEADER_LEN];
    uint8_t hlen;
    fw_header cur;      /* the header being served in FW_IN_BODY */
    uint8_t *body;      /* owned, cur.body_len bytes, allocated once cur passed the checks */
    uint32_t body_have;
    uint32_t skip_left;
    uint8_t *backlog;   /* owned: bytes read but not yet parsed because reading paused */
    size_t backlog_len, backlog_off, backlog_cap;

    /* Output. */
    uint8_t *out;       /* owned: responses gathered since the last flush */
    size_t out_len, out_cap;
    size_t out_inflight; /* bytes handed to uv_write and not yet completed */
    size_t reply_start;  /* offset in out of the response being built (sealed in place) */

    uint32_t jobs;       /* requests handed to compute and not yet answered */

    /* Secure session (docs/security.md). All zero = FW_SEC_NONE: plaintext until a HELLO.
     * Once established every request is opened in conn_dispatch and every response sealed as
     * it is appended to `out` (so in wire order). Wiped when the connection is freed. */
    fw_secure_session sec;

    unsigned reading : 1;        /* uv_read_start is in effect */
    unsigned closing : 1;        /* fw_conn_close ran; the handle is closing */
    unsigned close_after_flush : 1; /* protocol error: send what is queued, then close */
    unsigned lingering : 1;      /* write side shut down; draining input until EOF or timeout */
    unsigned eof : 1;            /* the peer finished sending; close when everything is answered */
    unsigned failed : 1;         /* out of memory or similar: close at the next service */
};

/* The listener has a connection for us: accept it (or close it if over the limit). */
void fw_conn_accept(fw_server *srv, uv_stream_t *listener);

/* Close now: tell compute, unlink, uv_close. Idempotent. `why` is logged at debug level. */
void fw_conn_close(fw_conn *c, const char *why);

/* Called from the server's check phase for a connection on srv->pending: resume parsing a
 * backlog, flush output with one write, finish a close sequence, start/stop reading. */
void fw_conn_service(fw_conn *c);

/* Called from the sweep timer: close connections idle longer than the idle timeout and those
 * whose frame (or lingering close) has been incomplete longer than the frame timeout. */
void fw_conn_sweep(fw_server *srv, uint64_t now);

/* Put a connection on srv->pending (no-op if it is already there or closing). */
void fw_conn_queue(fw_conn *c);

#endif
