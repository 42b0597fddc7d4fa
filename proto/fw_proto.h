/*
 * fw_proto.h — the facewire wire format, shared by the server, the client library and the
 * load generator. Pure C99, no dependencies, no allocation: every function works on buffers
 * the caller owns. docs/protocol.md is the prose version of this file.
 *
 * A frame is a 20-byte header followed by body_len bytes. All integers are big-endian.
 *
 *   off size field
 *    0   2   magic 0xFACE
 *    2   1   version (1)
 *    3   1   opcode
 *    4   1   flags: bit0 RESPONSE, bit1 SEALED, bit2 EVENT; other bits must be 0
 *    5   1   priority: 0 normal, 1 high, 2 low
 *    6   2   status (0 in requests)
 *    8   4   request_id (chosen by the client, echoed in the response)
 *   12   4   deadline_ms (budget from receipt; 0 = the op's server default)
 *   16   4   body_len
 *
 * Bodies are built and read with fw_writer / fw_reader: fixed-size big-endian fields,
 * variable-length byte fields as u32 length + bytes, strings as u16 length + UTF-8 bytes,
 * floats as IEEE-754 binary32 big-endian. Error responses (status != 0) start with a string
 * (u16 length + UTF-8 message); ops may define fields after it.
 */
#ifndef FW_PROTO_H
#define FW_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define FW_MAGIC 0xFACEu
#define FW_PROTO_VERSION 1
#define FW_HEADER_LEN 20
#define FW_DEFAULT_MAX_BODY (16u * 1024u * 1024u)
#define FW_PING_MAX_BODY (64u * 1024u)
#define FW_DEFAULT_PORT 7420

enum fw_flag {
    FW_FLAG_RESPONSE = 0x01,
    FW_FLAG_SEALED = 0x02,
    FW_FLAG_EVENT = 0x04,
    FW_FLAG_KNOWN = 0x07
};

enum fw_priority { FW_PRIO_NORMAL = 0, FW_PRIO_HIGH = 1, FW_PRIO_LOW = 2, FW_PRIO_COUNT = 3 };

enum fw_opcode {
    FW_OP_PING = 0x01,
    FW_OP_INFO = 0x02,
    /* 0x10-0x2F: face and gallery ops */
    FW_OP_DETECT = 0x10,
    FW_OP_EMBED = 0x11,
    FW_OP_VERIFY = 0x12,
    FW_OP_STREAM_OPEN = 0x13,
    FW_OP_STREAM_FRAME = 0x14, /* one-way: never answered */
    FW_OP_STREAM_CLOSE = 0x15,
    FW_OP_STREAM_EVENT = 0x16, /* server to client only, EVENT flag, request_id 0 */
    FW_OP_ENROLL = 0x20,
    FW_OP_IDENTIFY = 0x21,
    FW_OP_DELETE = 0x22,
    FW_OP_LIST = 0x23,
    FW_OP_GALLERY_INFO = 0x24,
    /* 0x30-0x3F: handshake */
    FW_OP_HELLO = 0x30,
    FW_OP_AUTH = 0x31,
    /* test ops, only with --enable-test-ops */
    FW_OP_TEST_RELEASE = 0x7C,
    FW_OP_TEST_HOLD = 0x7D,
    FW_OP_TEST_SLEEP = 0x7E,
    FW_OP_TEST_FAIL = 0x7F
};

enum fw_status {
    FW_STATUS_OK = 0,
    FW_STATUS_BAD_REQUEST = 1,
    FW_STATUS_UNKNOWN_OP = 2,
    FW_STATUS_TOO_LARGE = 3,
    FW_STATUS_BUSY = 4,
    FW_STATUS_DEADLINE_EXCEEDED = 5,
    FW_STATUS_UNAVAILABLE = 6,
    FW_STATUS_NOT_FOUND = 7,
    FW_STATUS_UNAUTHORIZED = 8,
    FW_STATUS_BAD_IMAGE = 9,
    FW_STATUS_NO_FACE = 10,
    FW_STATUS_INTERNAL = 11,
    FW_STATUS_SHUTTING_DOWN = 12,
    FW_STATUS_UNSUPPORTED_VERSION = 13,
    FW_STATUS_COUNT = 14
};

typedef struct fw_header {
    uint16_t magic;
    uint8_t version;
    uint8_t opcode;
    uint8_t flags;
    uint8_t priority;
    uint16_t status;
    uint32_t request_id;
    uint32_t deadline_ms;
    uint32_t body_len;
} fw_header;

/* Serialise / parse the 20 header bytes. Neither validates anything. */
void fw_header_encode(const fw_header *h, uint8_t out[FW_HEADER_LEN]);
void fw_header_decode(const uint8_t in[FW_HEADER_LEN], fw_header *h);

/* What a receiver must do with a header, per the protocol's rules. */
typedef enum fw_verdict {
    FW_HDR_OK = 0,
    FW_HDR_BAD_MAGIC,       /* close the connection, send nothing */
    FW_HDR_BAD_VERSION,     /* answer UNSUPPORTED_VERSION, then close */
    FW_HDR_TOO_LARGE,       /* answer TOO_LARGE, then close; never allocate body_len */
    FW_HDR_BAD_FLAGS,       /* reserved bit, or RESPONSE/EVENT in a request: BAD_REQUEST */
    FW_HDR_BAD_PRIORITY,    /* BAD_REQUEST; the connection goes on */
    FW_HDR_BAD_STATUS       /* non-zero status in a request: BAD_REQUEST */
} fw_verdict;

/* Check a request header as a server must. */
fw_verdict fw_check_request(const fw_header *h, uint32_t max_body);
/* Check a response/event header as a client must (magic, version, body_len <= max_body). */
fw_verdict fw_check_response(const fw_header *h, uint32_t max_body);
/* Does the verdict require closing the connection after (or instead of) answering? */
int fw_verdict_closes(fw_verdict v);
/* The status a server answers a bad header with, and the message for it. */
uint16_t fw_verdict_status(fw_verdict v);
const char *fw_verdict_message(fw_verdict v);

/* Incremental framing over a receive buffer. Returns the number of bytes the next complete
 * frame occupies (header + body) and fills *h, or 0 when more bytes are needed (*h is filled
 * once the header is complete: *have_header says so). The caller checks the header with
 * fw_check_request() before waiting for a body. */
size_t fw_frame_scan(const uint8_t *buf, size_t len, fw_header *h, int *have_header);

const char *fw_status_name(uint16_t status); /* "OK", "BUSY", ..., or "UNKNOWN" */
const char *fw_op_name(uint8_t opcode);      /* "PING", ..., or "UNKNOWN" */
int fw_status_from_name(const char *name);   /* -1 if none */
int fw_op_from_name(const char *name);       /* case-insensitive; -1 if none */

/* ---- body reader: bounds-checked, never reads past len; the first failure sticks ---------- */
typedef struct fw_reader {
    const uint8_t *p;
    size_t len;
    size_t off;
    int err; /* 1 after any read past the end or an over-long field */
} fw_reader;

void fw_reader_init(fw_reader *r, const void *p, size_t len);
uint8_t fw_get_u8(fw_reader *r);
uint16_t fw_get_u16(fw_reader *r);
uint32_t fw_get_u32(fw_reader *r);
uint64_t fw_get_u64(fw_reader *r);
float fw_get_f32(fw_reader *r);
/* Points into the buffer (no copy). u16 length + bytes. *n gets the length; NULL on error. */
const char *fw_get_str(fw_reader *r, uint16_t *n);
/* u32 length + bytes; lengths above max fail. */
const uint8_t *fw_get_bytes(fw_reader *r, uint32_t max, uint32_t *n);
/* n raw bytes, no length prefix. */
const uint8_t *fw_get_raw(fw_reader *r, size_t n);
size_t fw_reader_left(const fw_reader *r);
/* 1 if every byte was consumed and nothing failed. */
int fw_reader_done(const fw_reader *r);

/* ---- body writer: into a caller's fixed buffer; overflow sets err, never writes past cap -- */
typedef struct fw_writer {
    uint8_t *p;
    size_t cap;
    size_t len;
    int err;
} fw_writer;

void fw_writer_init(fw_writer *w, void *p, size_t cap);
void fw_put_u8(fw_writer *w, uint8_t v);
void fw_put_u16(fw_writer *w, uint16_t v);
void fw_put_u32(fw_writer *w, uint32_t v);
void fw_put_u64(fw_writer *w, uint64_t v);
void fw_put_f32(fw_writer *w, float v);
void fw_put_str(fw_writer *w, const char *s, size_t n);  /* n > 65535 sets err */
void fw_put_bytes(fw_writer *w, const void *p, uint32_t n);
void fw_put_raw(fw_writer *w, const void *p, size_t n);

/* Error body: u16 length + message (truncated to fit). Returns bytes written. */
size_t fw_error_body(uint8_t *out, size_t cap, const char *msg);

/* Big-endian helpers, for code that builds headers by hand. */
static inline void fw_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void fw_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint16_t fw_rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t fw_rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

#endif
