/*
 * facewire.h — libfacewire, the C client library for the facewire face-matching server.
 *
 * Written for small devices (door terminals, cameras) as much as for servers: C99, plain
 * blocking calls over one TCP connection, no event loop, no threads, and a fixed memory
 * footprint chosen by the caller.
 *
 *   fw_client_config cfg;
 *   fw_client_config_init(&cfg);
 *   cfg.host = "10.0.0.5";                     // IPv4, IPv6 or a name (getaddrinfo)
 *   fw_client *c;
 *   if (fw_client_open(&cfg, &c) != FW_OK) ...
 *   if (fw_client_connect(c) != FW_OK) fprintf(stderr, "%s\n", fw_client_errmsg(c));
 *   fw_verify_result v;
 *   int rc = fw_verify(c, &a, &b, NULL, &v);   // 0 OK, > 0 server status, < 0 library error
 *   fw_client_close(c);
 *
 * MEMORY. fw_client_open() allocates exactly one block of fw_client_footprint(cfg) bytes
 * (the connection state, about 1 KiB, plus rx_buf_size plus tx_buf_size plus twice the
 * length of the host/port or endpoint strings: about 261 KiB with the defaults), or none at all when the caller passes that block in cfg.mem (any alignment;
 * it must outlive the client). Nothing else is allocated by the library, ever; the only
 * allocation on the way is the C library's own inside getaddrinfo() during a connect.
 *   - tx_buf_size bounds the fixed-size part of a request (header, lengths, descriptors,
 *     strings). Large payloads (JPEG bytes, fw_send() bodies) are not copied: they are sent
 *     from the caller's memory with sendmsg().
 *   - rx_buf_size bounds a whole response frame (20-byte header + body). A larger response
 *     fails with FW_ERR_TOO_LARGE. In pipelined use the buffer also holds responses that
 *     arrived before the caller asked for them.
 *
 * RETURN VALUES. Every call that talks to the server returns an int:
 *     0 (FW_OK)   the server answered OK and the result was decoded;
 *   > 0           the server answered with that fw_status (BUSY, NO_FACE, ...): the
 *                 connection is fine, fw_client_errmsg() has the server's message and
 *                 fw_client_retry_after() its retry_after_ms for BUSY / UNAVAILABLE;
 *   < 0           an fw_err below: fw_client_errmsg() says what happened.
 * After FW_ERR_TIMEOUT, FW_ERR_IO, FW_ERR_CLOSED, FW_ERR_PROTOCOL, FW_ERR_MALFORMED,
 * FW_ERR_RX_FULL and a FW_ERR_TOO_LARGE response the connection is closed (the byte stream
 * can no longer be trusted to be in step, or a late answer would be taken for the next one);
 * every later call fails with FW_ERR_NOT_CONNECTED until fw_client_connect() is called again
 * (with cfg.endpoints the next call connects by itself: see ENDPOINTS AND FAILOVER).
 * Errors found before anything was sent (FW_ERR_INVALID, a request over tx_buf_size) leave
 * the connection as it was.
 *
 * TIMEOUTS. Every call is bounded by cfg.timeout_ms, counted from its start and covering
 * everything it does (send, wait, retries and their back-off sleeps); fw_client_connect() by
 * connect_timeout_ms. The socket is non-blocking inside and every wait is a poll() with the
 * time left. The one wait no library can bound is name resolution inside getaddrinfo(): a
 * device that must never wait on DNS passes a numeric address as cfg.host.
 *
 * RESULT LIFETIME. Pointers a call returns (ping echo, info text, subject names, cursors,
 * fw_response.body) point into the connection's receive buffer. They stay valid until the
 * next call on the same connection, and may be passed as arguments to that next call (the
 * library builds the request before it reuses the buffer: handing next_cursor back to
 * fw_list() is fine). Strings from the wire are NOT NUL-terminated: use the lengths.
 *
 * THREADS. No global mutable state: different fw_client objects may be used from different
 * threads at once. One fw_client is not thread-safe: one connection per thread (or your own
 * lock around every call). SIGPIPE is never raised (MSG_NOSIGNAL); EINTR is retried.
 *
 * OWNERSHIP. The caller owns the config, every input buffer (only read during the call) and
 * every output array. The library owns the fw_client until fw_client_close().
 */
#ifndef FACEWIRE_H
#define FACEWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "fw_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FW_LANDMARKS 68       /* (x, y) points per face */
#define FW_DESCRIPTOR_DIM 128 /* floats per face descriptor */
#define FW_SUBJECT_MAX 128    /* bytes in an ENROLL subject */
#define FW_METADATA_MAX 1024  /* bytes of ENROLL metadata */
#define FW_IDENTIFY_MAX_K 100
#define FW_ANY_REQUEST 0u     /* fw_recv(): take the next response, whatever its id */

/* Library errors (negative). Server statuses are the positive enum fw_status values. */
typedef enum fw_err {
    FW_OK = 0,
    FW_ERR_INVALID = -1,       /* bad argument (NULL, oversized field, bad config) */
    FW_ERR_NOMEM = -2,         /* fw_client_open: malloc failed / cfg.mem too small */
    FW_ERR_RESOLVE = -3,       /* getaddrinfo failed */
    FW_ERR_CONNECT = -4,       /* no address accepted the connection */
    FW_ERR_TIMEOUT = -5,       /* the call's time ran out, connect included (connection closed) */
    FW_ERR_IO = -6,            /* send/recv failed (connection closed) */
    FW_ERR_CLOSED = -7,        /* the server closed the connection */
    FW_ERR_PROTOCOL = -8,      /* bad response header: magic, version, flags (closed) */
    FW_ERR_MALFORMED = -9,     /* response body does not match the op's layout (closed) */
    FW_ERR_TOO_LARGE = -10,    /* request over tx_buf_size, or response over rx_buf_size */
    FW_ERR_RX_FULL = -11,      /* rx buffer full of responses nobody asked for (closed) */
    FW_ERR_NOT_CONNECTED = -12,/* no connection: call fw_client_connect() */
    FW_ERR_UNSUPPORTED = -13,  /* feature not built in (e.g. secure sessions) */
    FW_ERR_WOULD_BLOCK = -14,  /* fw_stream_push: the socket is full, nothing was sent;
                                  fw_stream_poll: no event came in time. The connection is
                                  fine (not closed). */
    FW_ERR_AUTH = -15          /* secure handshake failed: wrong server key, our key not
                                  authorized, or tampering; or a sealed response failed to
                                  open (connection closed) */
} fw_err;

/* "FW_ERR_TIMEOUT", ..., or fw_status_name() for rc > 0. Static strings. */
const char *fw_strerror(int rc);

/* Retry of BUSY and UNAVAILABLE answers in the synchronous calls. Off by default.
 * Attempt n (n = 1 after the first failure) sleeps
 *     max(retry_after_ms from the server, random in [0, min(max_ms, base_ms << (n-1))])
 * ("full jitter"), and gives up, returning the last status, when max_attempts is reached or
 * when the sleep would reach the call's own timeout_ms. Other statuses are never retried. A
 * call whose arguments point into the previous result (see RESULT LIFETIME) is not retried
 * either: the receive buffer those bytes live in is reused while it waits. */
typedef struct fw_retry_policy {
    int enabled;            /* 0 = never retry (default) */
    uint32_t max_attempts;  /* total attempts including the first; default 5 (0 acts as 1) */
    uint32_t base_ms;       /* default 50 */
    uint32_t max_ms;        /* cap of the exponential part; default 2000 */
    uint32_t seed;          /* jitter PRNG seed; 0 = derived from time and address */
} fw_retry_policy;

/* Always start from fw_client_config_init(): fields only ever get added at the end, with a
 * zero meaning "the old behaviour", so code written now keeps compiling and working. */

/* ENDPOINTS AND FAILOVER. cfg.endpoints lists the servers of one cluster (or HAProxy
 * frontends) as "host:port" or "[ipv6]:port" strings, port 1..65535; at most
 * FW_MAX_ENDPOINTS of at most FW_ENDPOINT_MAX bytes each. They are checked and copied into
 * the client's one block at open (a bad one: FW_ERR_INVALID, fw_client_config_check() says
 * why); cfg.host / cfg.port are then ignored. Setting them hands the connection to the
 * library:
 *   - fw_client_connect() tries the endpoints in order, starting at the current one (the one
 *     in use, or the one after the last that failed), moving on after a failure, and stops
 *     at the first that connects (and, in a secure session, completes the handshake). Each
 *     gets an equal share of the time left of connect_timeout_ms, so a host that swallows
 *     SYNs cannot use up the time of the others. When every endpoint failed it returns
 *     FW_ERR_CONNECT (FW_ERR_TIMEOUT if the time ran out) and the message names the last
 *     error. FW_ERR_AUTH stops it at once: a server that fails the handshake is reported,
 *     not skipped (the next connect starts after it).
 *   - A call that finds no connection connects first (from the current endpoint, within the
 *     call's own timeout). Calls that only make sense on the connection they were started on
 *     never do: fw_recv(), fw_send_raw(), fw_stream_push(), fw_stream_poll(),
 *     fw_stream_close() return FW_ERR_NOT_CONNECTED.
 *   - Any error that closes the connection marks its endpoint failed: the next connect
 *     starts at the next endpoint (round robin).
 *   - When the connection breaks during a synchronous call (send failed, reset, closed before
 *     the answer: FW_ERR_CLOSED or FW_ERR_IO) and cfg.retry.enabled, the request is sent
 *     again on a new connection to the next endpoint, at once (no back-off: it is another
 *     server), counted as an attempt of the retry policy and within the call's timeout_ms --
 *     but only when fw_client_op_resendable() says repeating it is harmless. ENROLL and
 *     DELETE may have been carried out before the connection broke (repeating ENROLL would
 *     add the face twice), and a stream lives and dies with its connection: for those the
 *     error is returned, the outcome is the caller's to find out (LIST, IDENTIFY), and the
 *     next call connects again.
 * Without cfg.endpoints (host/port) the library never connects on its own: after a
 * connection error every call fails with FW_ERR_NOT_CONNECTED until fw_client_connect(). */
#define FW_MAX_ENDPOINTS 8
#define FW_ENDPOINT_MAX 255   /* bytes in one endpoint string, without the NUL */

/* Secure sessions (docs/security.md): this device's identity and the pinned server key. Fill
 * it with fw_client_secure_load() (or by hand, from keys kept elsewhere) and point
 * cfg.secure at it; fw_client_open() copies it. Every connect then runs the handshake and
 * every frame is sealed. MEMORY: a sealed request is assembled in tx after its fixed part, so
 * tx_buf_size must hold the fixed part twice plus the payload (JPEG bytes) plus 36 bytes; and
 * rx_buf_size bounds the sealed response (16 bytes more than the plaintext one). */
typedef struct fw_client_secure {
    uint8_t client_pk[32];    /* Ed25519 public key */
    uint8_t client_sk[64];    /* Ed25519 secret key (libsodium layout: seed || pk) */
    uint8_t server_pk[32];    /* the only server key accepted */
} fw_client_secure;

/* Load PREFIX.key (refused if group or others may read it) and the server's .pub into out.
 * FW_OK; FW_ERR_INVALID with the reason in err; FW_ERR_UNSUPPORTED in a build without
 * libsodium. */
int fw_client_secure_load(fw_client_secure *out, const char *key_file, const char *server_pub_file,
                          char *err, size_t errcap);

typedef struct fw_client_config {
    const char *host;          /* name or address; default "127.0.0.1". Copied at open. */
    const char *port;          /* service or number; default "7420". Copied at open. */
    uint32_t timeout_ms;       /* bound on every call, default 5000 */
    uint32_t connect_timeout_ms; /* bound on fw_client_connect(); 0 = timeout_ms */
    uint32_t deadline_ms;      /* sent in each request header; 0 = the server's default */
    uint8_t priority;          /* FW_PRIO_NORMAL/HIGH/LOW, sent in each request header */
    size_t rx_buf_size;        /* largest response frame; default 256 KiB, minimum 256 */
    size_t tx_buf_size;        /* request fixed part; default 4 KiB, minimum 2048 */
    void *mem;                 /* optional caller block of >= fw_client_footprint() bytes; */
    size_t mem_size;           /*   NULL = one malloc in fw_client_open() */
    fw_retry_policy retry;
    const fw_client_secure *secure; /* NULL = plaintext (the default); see fw_client_secure.
                                  Without libsodium, non-NULL makes fw_client_open() fail
                                  FW_ERR_UNSUPPORTED rather than silently talk plaintext */
    const char *const *endpoints; /* n_endpoints strings, see ENDPOINTS AND FAILOVER; copied */
    int n_endpoints;           /*   at open. 0 = one server, host/port */
} fw_client_config;

typedef struct fw_client fw_client; /* opaque; owned by the library */

void fw_client_config_init(fw_client_config *cfg);
/* FW_OK, or FW_ERR_INVALID with the reason in err (NUL-terminated, truncated to errcap; err
 * may be NULL): exactly the checks fw_client_open() makes, for a message to show the user,
 * e.g. 'bad endpoint "db1:80x": port must be a number 1..65535'. */
int fw_client_config_check(const fw_client_config *cfg, char *err, size_t errcap);
/* Bytes fw_client_open() needs for this config (0 if the config is invalid). */
size_t fw_client_footprint(const fw_client_config *cfg);
/* Set up a client (no network yet). FW_OK, FW_ERR_INVALID or FW_ERR_NOMEM. */
int fw_client_open(const fw_client_config *cfg, fw_client **out);
/* Connect (or reconnect: an existing connection is closed first, pending responses are
 * dropped). Tries every address getaddrinfo returns, within connect_timeout_ms in total;
 * with cfg.endpoints, the endpoints in turn (see ENDPOINTS AND FAILOVER). */
int fw_client_connect(fw_client *c);
/* Close the connection and free what fw_client_open() allocated. NULL is fine. */
void fw_client_close(fw_client *c);

/* The message of the last failed call (server message for rc > 0). Owned by c; valid until
 * the next call. "" after a success. */
const char *fw_client_errmsg(const fw_client *c);
/* retry_after_ms of the last BUSY / UNAVAILABLE answer (0 if none was given). */
uint32_t fw_client_retry_after(const fw_client *c);
int fw_client_is_connected(const fw_client *c);
/* Change the per-call bound for the following calls. */
void fw_client_set_timeout(fw_client *c, uint32_t timeout_ms);
/* The endpoint in use ("host:port" or "[ipv6]:port", as configured; host/port are shown the
 * same way), or when not connected the one the next connect starts at. Owned by c, valid
 * until fw_client_close(). */
const char *fw_client_endpoint(const fw_client *c);
/* 1 if a request with this opcode may be sent again after its connection broke before the
 * answer (its effect, if it had one, is the same done twice): PING, INFO, DETECT, EMBED,
 * VERIFY, IDENTIFY, LIST, GALLERY_INFO, TEST_SLEEP and TEST_FAIL. 0 for ENROLL, DELETE, the
 * stream ops, the handshake, TEST_HOLD/TEST_RELEASE and any opcode this library does not know. */
int fw_client_op_resendable(uint8_t opcode);

/* ---- pipelined API ---------------------------------------------------------------------- */

/* A response as received. body points into the rx buffer (see RESULT LIFETIME). */
typedef struct fw_response {
    fw_header hdr;            /* opcode, status, request_id, flags, ... */
    const uint8_t *frame;     /* the whole frame: header + body */
    size_t frame_len;
    const uint8_t *body;
    uint32_t body_len;
} fw_response;

/* Send one request (header built from the config; a fresh request_id, never 0, returned in
 * *request_id). The body is sent from the caller's memory, not copied. Does not wait for
 * anything but the socket. Returns FW_OK or < 0. */
int fw_send(fw_client *c, uint8_t opcode, const void *body, size_t len, uint32_t *request_id);
/* Wait for the response to request_id (FW_ANY_REQUEST: the next one to arrive). Responses to
 * other ids that arrive meanwhile are kept in the rx buffer for later fw_recv() calls; EVENT
 * frames are skipped. Returns FW_OK when a response was received, whatever its status (look
 * at resp->hdr.status; fw_response_error() decodes an error body), or < 0. */
int fw_recv(fw_client *c, uint32_t request_id, fw_response *resp);
/* Write bytes to the socket exactly as given, for protocol debugging (fwcat --raw). */
int fw_send_raw(fw_client *c, const void *bytes, size_t len);

/* The message and retry_after_ms of an error response (both optional on a hostile wire:
 * a missing message gives "" and a missing retry_after 0). msg points into the response. */
void fw_response_error(const fw_response *r, const char **msg, uint16_t *msg_len,
                       uint32_t *retry_after_ms);

/* ---- operations (synchronous: send, wait, decode) ------------------------------------- */

/* PING: echo and echo_len get the echoed bytes (either may be NULL). */
int fw_ping(fw_client *c, const void *data, size_t len, const uint8_t **echo, size_t *echo_len);
/* INFO: "key: value\n" text, not NUL-terminated. */
int fw_info(fw_client *c, const char **text, size_t *len);

typedef struct fw_box { float x, y, w, h; } fw_box;

typedef struct fw_face {
    fw_box box;
    float score;
    float landmarks[FW_LANDMARKS][2];        /* (x, y) in picture pixels */
    float descriptor[FW_DESCRIPTOR_DIM];     /* EMBED only; zeros after DETECT */
} fw_face;

typedef struct fw_image_result {
    uint32_t width, height;
    size_t nfaces;   /* faces in the response */
    size_t nstored;  /* faces written to the caller's array: min(nfaces, max_faces) */
} fw_image_result;

/* DETECT / EMBED a JPEG. faces[max_faces] is the caller's array (max_faces may be 0). */
int fw_detect(fw_client *c, const void *jpeg, size_t len, fw_face *faces, size_t max_faces,
              fw_image_result *out);
int fw_embed(fw_client *c, const void *jpeg, size_t len, fw_face *faces, size_t max_faces,
             fw_image_result *out);

enum fw_input_kind { FW_INPUT_JPEG = 0, FW_INPUT_DESCRIPTOR = 1 };

/* A face to compare: a JPEG (the server picks its best face) or a descriptor. */
typedef struct fw_input {
    int kind;                 /* enum fw_input_kind */
    const void *jpeg;         /* FW_INPUT_JPEG: the caller's bytes */
    size_t jpeg_len;
    const float *descriptor;  /* FW_INPUT_DESCRIPTOR: FW_DESCRIPTOR_DIM floats */
} fw_input;

fw_input fw_input_jpeg(const void *jpeg, size_t len);
fw_input fw_input_descriptor(const float *descriptor);

typedef struct fw_verify_result {
    float distance;
    int same;
    float threshold;  /* the threshold the server used */
} fw_verify_result;

/* threshold NULL = the server's. */
int fw_verify(fw_client *c, const fw_input *a, const fw_input *b, const float *threshold,
              fw_verify_result *out);

/* subject: 1..FW_SUBJECT_MAX bytes (NUL-terminated); meta may be NULL/0. */
int fw_enroll(fw_client *c, const char *subject, const void *meta, size_t meta_len,
              const fw_input *in, uint64_t *face_id);

typedef struct fw_match {
    const char *subject;      /* into the rx buffer, not NUL-terminated */
    uint16_t subject_len;
    uint64_t face_id;
    float distance;
} fw_match;

typedef struct fw_identify_face {
    fw_box box;               /* zeros for a descriptor input */
    size_t nmatches;          /* matches in the response for this face */
    size_t nstored;           /* of which stored at matches[] */
    fw_match *matches;        /* into the caller's match array */
} fw_identify_face;

typedef struct fw_identify_result {
    size_t nfaces, nstored;   /* as fw_image_result */
    int truncated;            /* 1 if faces or matches did not fit the caller's arrays */
} fw_identify_result;

/* k: 1..FW_IDENTIFY_MAX_K; threshold NULL = the server's. Matches of all faces are laid out
 * one face after the other in matches[max_matches]. */
int fw_identify(fw_client *c, const fw_input *in, unsigned k, const float *threshold,
                fw_identify_face *faces, size_t max_faces, fw_match *matches,
                size_t max_matches, fw_identify_result *out);

int fw_delete_face(fw_client *c, uint64_t face_id, uint32_t *deleted);
int fw_delete_subject(fw_client *c, const char *subject, uint32_t *deleted);

typedef struct fw_subject {
    const char *subject;      /* into the rx buffer, not NUL-terminated */
    uint16_t subject_len;
    uint32_t faces;
} fw_subject;

typedef struct fw_list_result {
    size_t n, nstored;
    const char *next_cursor;  /* into the rx buffer; length 0 = the end */
    uint16_t next_cursor_len;
} fw_list_result;

/* One page from cursor (NULL/0 = from the start), at most limit subjects. */
int fw_list(fw_client *c, const char *cursor, size_t cursor_len, uint16_t limit,
            fw_subject *subjects, size_t max_subjects, fw_list_result *out);

typedef struct fw_gallery_info {
    uint64_t faces, subjects, bytes, last_seq;
} fw_gallery_info;

int fw_gallery(fw_client *c, fw_gallery_info *out);

/* Test ops (server started with --enable-test-ops). */
int fw_test_sleep(fw_client *c, uint32_t ms);
int fw_test_fail(fw_client *c);

/* ---- camera streams (docs/protocol.md, "Camera streams") ---------------------------------
 * A camera loop opens a stream, pushes frames without ever blocking on a slow server (a
 * frame that does not fit the socket now is refused with FW_ERR_WOULD_BLOCK, so the camera
 * drops it at the source) and collects results with fw_stream_poll(). The server answers no
 * frame; results, statistics and problems come back as events, which the library keeps in
 * the rx buffer until polled: a client with open streams must poll, or the buffer fills
 * (FW_ERR_RX_FULL). Events that arrive during any other call are kept for the next poll. */
/* Opcodes FW_OP_STREAM_OPEN/FRAME/CLOSE/EVENT are in fw_proto.h. */

enum fw_stream_mode { FW_STREAM_DETECT = 0, FW_STREAM_IDENTIFY = 1, FW_STREAM_TEST = 2 };
enum fw_stream_policy { FW_STREAM_RING = 0, FW_STREAM_FIFO = 1 };
enum fw_stream_event_kind { FW_STREAM_EV_FACES = 1, FW_STREAM_EV_STATS = 2, FW_STREAM_EV_ERROR = 3 };

typedef struct fw_stream_config {
    const char *name;         /* 1..64 bytes, NUL-terminated */
    uint8_t capacity;         /* ring frames, 1..64 (0 = 8) */
    uint8_t mode;             /* enum fw_stream_mode */
    uint8_t policy;           /* enum fw_stream_policy */
    uint16_t min_face;        /* pixels, 0 = every face */
    uint16_t max_fps;         /* analyse at most this many frames per second of capture
                                 time (others dropped on arrival), 0 = no limit */
    float max_distance;       /* identify threshold, 0 = none */
    uint32_t max_age_ms;      /* 0 = frames never expire */
    uint16_t stats_every;     /* a stats event every N analysed frames, 0 = only at close */
    uint32_t test_sleep_ms;   /* FW_STREAM_TEST only */
} fw_stream_config;

typedef struct fw_stream_stats {
    int final;
    uint64_t received, analysed, failed;
    uint64_t dropped_overflow, dropped_superseded, dropped_deadline, dropped_memory, dropped_rate;
    uint64_t seq_gaps, out_of_order;
    uint32_t latency_p50_us, latency_p99_us;
    uint8_t pending;
} fw_stream_stats;

typedef struct fw_stream_face {
    fw_box box;
    float score;
    int has_match;            /* identify: the best match below */
    const char *subject;      /* into the rx buffer, not NUL-terminated */
    uint16_t subject_len;
    uint64_t face_id;
    float distance;
} fw_stream_face;

typedef struct fw_stream_event {
    int kind;                 /* enum fw_stream_event_kind */
    uint32_t stream_id;
    uint64_t seq, capture_us; /* faces, error (seq) */
    uint32_t latency_us;      /* faces: frame receipt to event, on the server */
    uint32_t width, height;   /* faces */
    size_t nfaces, nstored;   /* faces: in the event / written to the caller's array */
    fw_stream_stats stats;    /* stats */
    uint16_t status;          /* error: BAD_IMAGE, NOT_FOUND, ... */
    const char *msg;          /* error: into the rx buffer, msg_len bytes */
    uint16_t msg_len;
} fw_stream_event;

/* Priority: cfg.priority of the client (the header's) becomes the stream's. */
int fw_stream_open(fw_client *c, const fw_stream_config *sc, uint32_t *stream_id);
/* Send one frame now or not at all: FW_OK (sent whole), FW_ERR_WOULD_BLOCK (the socket had
 * no room: nothing was sent, the connection is fine), or < 0. A frame the kernel takes only
 * in part is finished within the client's timeout (the stream must stay in frame). The JPEG
 * is sent from the caller's memory. */
int fw_stream_push(fw_client *c, uint32_t stream_id, uint64_t seq, uint64_t capture_us,
                   const void *jpeg, size_t len);
/* The next event, waiting at most timeout_ms (0 = only what has arrived): FW_OK with *ev
 * (faces into faces[max_faces]), FW_ERR_WOULD_BLOCK when none came, or < 0. */
int fw_stream_poll(fw_client *c, uint32_t timeout_ms, fw_stream_event *ev, fw_stream_face *faces,
                   size_t max_faces);
/* Close: final statistics into *out (may be NULL). */
int fw_stream_close(fw_client *c, uint32_t stream_id, fw_stream_stats *out);

/* ---- pipelined flavours of the face ops ---------------------------------------------------
 * The same request as the synchronous call (same checks, same bytes), sent without waiting:
 * keep the returned id, fw_recv() the answer, decode it with the fw_decode_*() below. The
 * caller's JPEG / descriptor memory is only read during the call. No retry policy here: a
 * BUSY answer is the caller's to handle. */
int fw_send_detect(fw_client *c, const void *jpeg, size_t len, uint32_t *request_id);
int fw_send_embed(fw_client *c, const void *jpeg, size_t len, uint32_t *request_id);
int fw_send_verify(fw_client *c, const fw_input *a, const fw_input *b, const float *threshold,
                   uint32_t *request_id);
int fw_send_enroll(fw_client *c, const char *subject, const void *meta, size_t meta_len,
                   const fw_input *in, uint32_t *request_id);
int fw_send_identify(fw_client *c, const fw_input *in, unsigned k, const float *threshold,
                     uint32_t *request_id);

/* ---- decoders, for responses received with fw_recv() -------------------------------------
 * They return FW_OK, FW_ERR_MALFORMED (body does not match the layout) or, for a response
 * whose status is not OK, that status. They never touch the connection. */
int fw_decode_image(const fw_response *r, int with_descriptors, fw_face *faces,
                    size_t max_faces, fw_image_result *out);
int fw_decode_verify(const fw_response *r, fw_verify_result *out);
int fw_decode_enroll(const fw_response *r, uint64_t *face_id);
int fw_decode_identify(const fw_response *r, fw_identify_face *faces, size_t max_faces,
                       fw_match *matches, size_t max_matches, fw_identify_result *out);
int fw_decode_list(const fw_response *r, fw_subject *subjects, size_t max_subjects,
                   fw_list_result *out);

#ifdef __cplusplus
}
#endif

#endif
