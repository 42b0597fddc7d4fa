/*
 * fw_proto.c — encoding, decoding and validation of facewire frames (see fw_proto.h).
 *
 * Everything here is a pure function of its arguments: no allocation, no I/O, no state, so
 * the same code runs in the server, in the embedded client library and under the fuzzer.
 * The reader and writer keep a sticky error flag so that a body parser can read every field
 * in a row and check once at the end, as SQLite's and Redis's serialisers do: a short buffer
 * can make the values garbage, never make the code read out of bounds.
 */
#include "fw_proto.h"

#include <string.h>

void fw_header_encode(const fw_header *h, uint8_t out[FW_HEADER_LEN])
{
    fw_be16(out + 0, h->magic);
    out[2] = h->version;
    out[3] = h->opcode;
    out[4] = h->flags;
    out[5] = h->priority;
    fw_be16(out + 6, h->status);
    fw_be32(out + 8, h->request_id);
    fw_be32(out + 12, h->deadline_ms);
    fw_be32(out + 16, h->body_len);
}

void fw_header_decode(const uint8_t in[FW_HEADER_LEN], fw_header *h)
{
    h->magic = fw_rd16(in + 0);
    h->version = in[2];
    h->opcode = in[3];
    h->flags = in[4];
    h->priority = in[5];
    h->status = fw_rd16(in + 6);
    h->request_id = fw_rd32(in + 8);
    h->deadline_ms = fw_rd32(in + 12);
    h->body_len = fw_rd32(in + 16);
}

/* The order of the checks matters: magic first (garbage: close silently), then version (we
 * cannot trust any other field of another version), then the length (the one field that
 * could make us allocate), then the fields that only spoil this one request. */
fw_verdict fw_check_request(const fw_header *h, uint32_t max_body)
{
    if (h->magic != FW_MAGIC)
        return FW_HDR_BAD_MAGIC;
    if (h->version != FW_PROTO_VERSION)
        return FW_HDR_BAD_VERSION;
    if (h->body_len > max_body)
        return FW_HDR_TOO_LARGE;
    if (h->flags & ~(unsigned)FW_FLAG_KNOWN)
        return FW_HDR_BAD_FLAGS;
    if (h->flags & (FW_FLAG_RESPONSE | FW_FLAG_EVENT))
        return FW_HDR_BAD_FLAGS;
    if (h->priority >= FW_PRIO_COUNT)
        return FW_HDR_BAD_PRIORITY;
    if (h->status != 0)
        return FW_HDR_BAD_STATUS;
    return FW_HDR_OK;
}

fw_verdict fw_check_response(const fw_header *h, uint32_t max_body)
{
    if (h->magic != FW_MAGIC)
        return FW_HDR_BAD_MAGIC;
    if (h->version != FW_PROTO_VERSION)
        return FW_HDR_BAD_VERSION;
    if (h->body_len > max_body)
        return FW_HDR_TOO_LARGE;
    if (h->flags & ~(unsigned)FW_FLAG_KNOWN)
        return FW_HDR_BAD_FLAGS;
    if (!(h->flags & (FW_FLAG_RESPONSE | FW_FLAG_EVENT)))
        return FW_HDR_BAD_FLAGS;
    return FW_HDR_OK;
}

int fw_verdict_closes(fw_verdict v)
{
    return v == FW_HDR_BAD_MAGIC || v == FW_HDR_BAD_VERSION || v == FW_HDR_TOO_LARGE;
}

uint16_t fw_verdict_status(fw_verdict v)
{
    switch (v) {
    case FW_HDR_OK: return FW_STATUS_OK;
    case FW_HDR_BAD_VERSION: return FW_STATUS_UNSUPPORTED_VERSION;
    case FW_HDR_TOO_LARGE: return FW_STATUS_TOO_LARGE;
    case FW_HDR_BAD_MAGIC:
    case FW_HDR_BAD_FLAGS:
    case FW_HDR_BAD_PRIORITY:
    case FW_HDR_BAD_STATUS: break;
    }
    return FW_STATUS_BAD_REQUEST;
}

const char *fw_verdict_message(fw_verdict v)
{
    switch (v) {
    case FW_HDR_OK: return "ok";
    case FW_HDR_BAD_MAGIC: return "bad magic";
    case FW_HDR_BAD_VERSION: return "unsupported protocol version";
    case FW_HDR_TOO_LARGE: return "body too large";
    case FW_HDR_BAD_FLAGS: return "invalid flags in request";
    case FW_HDR_BAD_PRIORITY: return "invalid priority";
    case FW_HDR_BAD_STATUS: return "non-zero status in request";
    }
    return "invalid header";
}

size_t fw_frame_scan(const uint8_t *buf, size_t len, fw_header *h, int *have_header)
{
    *have_header = 0;
    if (len < FW_HEADER_LEN)
        return 0;
    fw_header_decode(buf, h);
    *have_header = 1;
    /* body_len is a u32: on 32-bit targets size_t could overflow, so compare in u64. */
    uint64_t need = (uint64_t)FW_HEADER_LEN + h->body_len;
    if ((uint64_t)len < need)
        return 0;
    return (size_t)need;
}

static const char *const status_names[FW_STATUS_COUNT] = {
    "OK", "BAD_REQUEST", "UNKNOWN_OP", "TOO_LARGE", "BUSY", "DEADLINE_EXCEEDED",
    "UNAVAILABLE", "NOT_FOUND", "UNAUTHORIZED", "BAD_IMAGE", "NO_FACE", "INTERNAL",
    "SHUTTING_DOWN", "UNSUPPORTED_VERSION",
};

const char *fw_status_name(uint16_t status)
{
    return status < FW_STATUS_COUNT ? status_names[status] : "UNKNOWN";
}

int fw_status_from_name(const char *name)
{
    for (int i = 0; i < FW_STATUS_COUNT; i++)
        if (strcmp(status_names[i], name) == 0)
            return i;
    return -1;
}

static const struct {
    uint8_t op;
    const char *name;
} op_names[] = {
    {FW_OP_PING, "PING"}, {FW_OP_INFO, "INFO"}, {FW_OP_DETECT, "DETECT"},
    {FW_OP_EMBED, "EMBED"}, {FW_OP_VERIFY, "VERIFY"}, {FW_OP_STREAM_OPEN, "STREAM_OPEN"},
    {FW_OP_STREAM_FRAME, "STREAM_FRAME"}, {FW_OP_STREAM_CLOSE, "STREAM_CLOSE"},
    {FW_OP_STREAM_EVENT, "STREAM_EVENT"}, {FW_OP_ENROLL, "ENROLL"},
    {FW_OP_IDENTIFY, "IDENTIFY"}, {FW_OP_DELETE, "DELETE"}, {FW_OP_LIST, "LIST"},
    {FW_OP_GALLERY_INFO, "GALLERY_INFO"}, {FW_OP_HELLO, "HELLO"}, {FW_OP_AUTH, "AUTH"},
    {FW_OP_TEST_RELEASE, "TEST_RELEASE"}, {FW_OP_TEST_HOLD, "TEST_HOLD"},
    {FW_OP_TEST_SLEEP, "TEST_SLEEP"}, {FW_OP_TEST_FAIL, "TEST_FAIL"},
};

const char *fw_op_name(uint8_t opcode)
{
    for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
        if (op_names[i].op == opcode)
            return op_names[i].name;
    return "UNKNOWN";
}

static int ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'a' && x <= 'z') x = (char)(x - 32);
        if (y >= 'a' && y <= 'z') y = (char)(y - 32);
        if (x != y)
            return 0;
    }
    return *a == *b;
}

int fw_op_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
        if (ieq(op_names[i].name, name))
            return op_names[i].op;
    return -1;
}

/* ---- reader ------------------------------------------------------------------------------ */

void fw_reader_init(fw_reader *r, const void *p, size_t len)
{
    r->p = (const uint8_t *)p;
    r->len = len;
    r->off = 0;
    r->err = 0;
}

/* Returns a pointer to n readable bytes and advances, or NULL (and sets err). */
static const uint8_t *take(fw_reader *r, size_t n)
{
    if (r->err || n > r->len - r->off) {
        r->err = 1;
        return NULL;
    }
    const uint8_t *q = r->p + r->off;
    r->off += n;
    return q;
}

uint8_t fw_get_u8(fw_reader *r)
{
    const uint8_t *q = take(r, 1);
    return q ? q[0] : 0;
}

uint16_t fw_get_u16(fw_reader *r)
{
    const uint8_t *q = take(r, 2);
    return q ? fw_rd16(q) : 0;
}

uint32_t fw_get_u32(fw_reader *r)
{
    const uint8_t *q = take(r, 4);
    return q ? fw_rd32(q) : 0;
}

uint64_t fw_get_u64(fw_reader *r)
{
    const uint8_t *q = take(r, 8);
    return q ? ((uint64_t)fw_rd32(q) << 32) | fw_rd32(q + 4) : 0;
}

float fw_get_f32(fw_reader *r)
{
    uint32_t u = fw_get_u32(r);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

const char *fw_get_str(fw_reader *r, uint16_t *n)
{
    uint16_t len = fw_get_u16(r);
    const uint8_t *q = take(r, len);
    *n = q ? len : 0;
    return (const char *)q;
}

const uint8_t *fw_get_bytes(fw_reader *r, uint32_t max, uint32_t *n)
{
    uint32_t len = fw_get_u32(r);
    if (len > max)
        r->err = 1;
    const uint8_t *q = take(r, len);
    *n = q ? len : 0;
    return q;
}

const uint8_t *fw_get_raw(fw_reader *r, size_t n)
{
    return take(r, n);
}

size_t fw_reader_left(const fw_reader *r)
{
    return r->err ? 0 : r->len - r->off;
}

int fw_reader_done(const fw_reader *r)
{
    return !r->err && r->off == r->len;
}

/* ---- writer ------------------------------------------------------------------------------ */

void fw_writer_init(fw_writer *w, void *p, size_t cap)
{
    w->p = (uint8_t *)p;
    w->cap = cap;
    w->len = 0;
    w->err = 0;
}

static uint8_t *room(fw_writer *w, size_t n)
{
    if (w->err || n > w->cap - w->len) {
        w->err = 1;
        return NULL;
    }
    uint8_t *q = w->p + w->len;
    w->len += n;
    return q;
}

void fw_put_u8(fw_writer *w, uint8_t v)
{
    uint8_t *q = room(w, 1);
    if (q) q[0] = v;
}

void fw_put_u16(fw_writer *w, uint16_t v)
{
    uint8_t *q = room(w, 2);
    if (q) fw_be16(q, v);
}

void fw_put_u32(fw_writer *w, uint32_t v)
{
    uint8_t *q = room(w, 4);
    if (q) fw_be32(q, v);
}

void fw_put_u64(fw_writer *w, uint64_t v)
{
    uint8_t *q = room(w, 8);
    if (q) {
        fw_be32(q, (uint32_t)(v >> 32));
        fw_be32(q + 4, (uint32_t)v);
    }
}

void fw_put_f32(fw_writer *w, float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    fw_put_u32(w, u);
}

void fw_put_raw(fw_writer *w, const void *p, size_t n)
{
    uint8_t *q = room(w, n);
    if (q && n)
        memcpy(q, p, n);
}

void fw_put_str(fw_writer *w, const char *s, size_t n)
{
    if (n > 0xFFFF) {
        w->err = 1;
        return;
    }
    fw_put_u16(w, (uint16_t)n);
    fw_put_raw(w, s, n);
}

void fw_put_bytes(fw_writer *w, const void *p, uint32_t n)
{
    fw_put_u32(w, n);
    fw_put_raw(w, p, n);
}

size_t fw_error_body(uint8_t *out, size_t cap, const char *msg)
{
    if (cap < 2)
        return 0;
    size_t n = strlen(msg);
    if (n > cap - 2)
        n = cap - 2;
    if (n > 0xFFFF)
        n = 0xFFFF;
    fw_be16(out, (uint16_t)n);
    memcpy(out + 2, msg, n);
    return n + 2;
}
