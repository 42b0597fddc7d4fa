/*
 * conn.c — facewired connections (see conn.h): parse frames out of whatever the socket
 * delivers, answer PING/INFO, hand the rest to compute, batch the responses into one write.
 *
 * Reading. Every connection reads into the server's shared 64 KiB buffer and the bytes are
 * parsed in place; a frame that arrived whole is dispatched without a copy. Only what is left
 * of an unfinished frame is kept: up to 19 header bytes in the struct, or, once a header has
 * passed fw_check_request(), a body buffer of exactly body_len bytes (never allocated before
 * the check, so a hostile length costs nothing). A large body still missing many bytes is read
 * straight into that buffer, skipping the copy. The buffer is freed as soon as the frame is
 * dispatched, so an idle connection holds no input memory at all.
 *
 * Writing. Responses are appended to c->out; the connection is queued on srv->pending and the
 * server's check handle (which runs right after the poll phase) flushes it: uv_try_write first,
 * then one uv_write for the remainder, whose buffer moves into the write request. So all the
 * responses to one read — and all the jobs compute finished in one loop iteration — leave in
 * one system call.
 *
 * Backpressure. Parsing stops at a frame boundary when the connection has conn_max_jobs
 * requests in compute or max_output bytes of unsent responses; the unparsed rest of the read
 * is kept in c->backlog and reading stops until the check phase finds the connection below
 * its caps again. That is flow control, not an error: TCP then pushes back on the client.
 *
 * Closing. Nothing closes a connection from inside fw_conn_reply() or fw_conn_job_finished()
 * (compute may be iterating its own structures when it calls them); such cases set a flag and
 * the check phase closes. After a protocol error that must close (bad version, too large) the
 * response is flushed, the write side shut down and input drained until EOF or the frame
 * timeout ("lingering close"), so the client reads the error instead of a reset.
 */
#include "server/conn.h"

#include <sodium.h>

#include "server/keys.h"

#include <stdlib.h>
#include <string.h>

#include "server/log.h"

/* A body at least this far from complete is read straight into its own buffer. */
#define FW_DIRECT_READ_MIN (16u * 1024u)
/* How long a lingering close may take when no frame timeout is configured. */
#define FW_LINGER_DEFAULT_MS 5000u
/* Error messages are short; longer ones are truncated. */
#define FW_ERROR_MSG_MAX 1024u
/* INFO grows with the ops and statuses seen (per-op lines); 16 KiB leaves room. */
#define FW_INFO_MAX 16384u

typedef struct fw_write_req {
    uv_write_t req;
    uint8_t *buf; /* owned: the detached c->out; the bytes in flight start at some offset */
    size_t cap;   /* buf's size (out_release) */
    size_t len;   /* bytes in flight */
} fw_write_req;

/* An output buffer whose bytes are all written: into the server's pool when it is a plain
 * FW_OUT_BUF_SIZE one and the pool has room, else freed. */
static void out_release(fw_server *s, uint8_t *buf, size_t cap)
{
    if (buf && cap == FW_OUT_BUF_SIZE && s->out_pool_n < FW_OUT_POOL_MAX)
        s->out_pool[s->out_pool_n++] = buf;
    else
        free(buf);
}

static void conn_update(fw_conn *c);
static void conn_flush(fw_conn *c);

/* ---- small helpers ------------------------------------------------------------------------- */

static uint64_t conn_now(const fw_conn *c) { return uv_now(c->srv->loop); }

static void conn_touch(fw_conn *c)
{
    c->last_active = conn_now(c);
    fw_link_unlink(&c->by_activity);
    fw_link_append(&c->srv->by_activity, &c->by_activity);
}

void fw_conn_queue(fw_conn *c)
{
    if (c->closing || fw_link_linked(&c->pending))
        return;
    fw_link_append(&c->srv->pending, &c->pending);
    fw_server_wake(c->srv);
}

static size_t conn_backlog_left(const fw_conn *c) { return c->backlog_len - c->backlog_off; }

/* At a cap: stop taking new requests off the wire until compute or the socket catches up. */
static int conn_paused(const fw_conn *c)
{
    const fw_server *s = c->srv;
    int max_jobs = s->cfg.compute.conn_max_jobs;
    if (max_jobs > 0 && c->jobs >= (uint32_t)max_jobs)
        return 1;
    return c->out_len + c->out_inflight >= s->cfg.max_output;
}

static const char *conn_peer(const fw_conn *c, char *buf, size_t cap)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    char host[64];
    int port = 0;
    snprintf(buf, cap, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return buf;
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(buf, cap, "[%s]:%d", host, port);
    } else if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        uv_ip4_name(a, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(buf, cap, "%s:%d", host, port);
    }
    return buf;
}

/* ---- responses ----------------------------------------------------------------------------- */

/* Append a response header for req and make room for len body bytes; returns where the body
 * goes, or NULL if the response cannot be queued (the connection is then marked failed). */
static uint8_t *conn_reply_begin(fw_conn *c, const fw_header *req, uint16_t status, size_t len)
{
    if (!c || c->closing || c->failed || c->lingering)
        return NULL;
    /* Room for the tag when the response will be sealed (conn_reply_end). */
    size_t need = FW_HEADER_LEN + len + fw_security_overhead(&c->sec);
    /* One uv_buf_t carries the whole batch, and its length is an unsigned int. */
    if (len > UINT32_MAX - FW_SECURE_TAG_LEN || need > UINT32_MAX - c->out_len)
        goto err;
    need += c->out_len;
    if (c->out_cap == 0 && need <= FW_OUT_BUF_SIZE && c->srv->out_pool_n > 0) {
        c->out = c->srv->out_pool[--c->srv->out_pool_n];
        c->out_cap = FW_OUT_BUF_SIZE;
    }
    if (need > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : FW_OUT_BUF_SIZE;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        uint8_t *p = realloc(c->out, cap);
        if (!p)
            goto err;
        c->out = p;
        c->out_cap = cap;
    }
    fw_header h = {
        .magic = FW_MAGIC,
        .version = FW_PROTO_VERSION,
        .opcode = req->opcode,
        .flags = FW_FLAG_RESPONSE,
        /* A request rejected for its priority gets a valid one back. */
        .priority = req->priority < FW_PRIO_COUNT ? req->priority : FW_PRIO_NORMAL,
        .status = status,
        .request_id = req->request_id,
        .deadline_ms = 0,
        .body_len = (uint32_t)len,
    };
    fw_header_encode(&h, c->out + c->out_len);
    c->reply_start = c->out_len;
    uint8_t *body = c->out + c->out_len + FW_HEADER_LEN;
    c->out_len = need;
    fw_conn_queue(c);
    return body;
err:
    fw_log_error(&c->srv->log, "cannot queue response", "conn=%llu body_len=%zu",
                 (unsigned long long)c->id, len);
    c->failed = 1;
    fw_conn_queue(c);
    return NULL;
}

/* The body of the response begun last is in place: in a secure session, seal it where it
 * lies. Responses are begun and ended in one go on the loop thread, so the seal order (the
 * nonce counter) is the order on the wire. */
static void conn_reply_end(fw_conn *c, size_t len)
{
    if (fw_security_overhead(&c->sec) == 0)
        return;
    uint8_t *frame = c->out + c->reply_start;
    fw_header h;
    size_t n = 0;
    fw_header_decode(frame, &h);
    int rc = fw_secure_seal(&c->sec, &h, frame + FW_HEADER_LEN, len, frame,
                            FW_HEADER_LEN + len + FW_SECURE_TAG_LEN, &n);
    if (rc != FW_SEC_OK) {
        fw_log_error(&c->srv->log, "cannot seal response", "conn=%llu error=\"%s\"",
                     (unsigned long long)c->id, fw_secure_strerror(rc));
        c->out_len = c->reply_start; /* never send it unsealed */
        c->failed = 1;
        fw_conn_queue(c);
    }
}

void fw_conn_reply(fw_conn *c, const fw_header *req, uint16_t status, const void *body, size_t len)
{
    uint8_t *p = conn_reply_begin(c, req, status, len);
    if (!p)
        return;
    if (len)
        memcpy(p, body, len);
    conn_reply_end(c, len);
}

void fw_conn_reply_error(fw_conn *c, const fw_header *req, uint16_t status, const char *msg,
                         const void *extra, size_t extra_len)
{
    size_t mlen = msg ? strnlen(msg, FW_ERROR_MSG_MAX) : 0;
    uint8_t *p = conn_reply_begin(c, req, status, 2 + mlen + extra_len);
    if (!p)
        return;
    fw_error_body(p, 2 + mlen, msg ? msg : "");
    if (extra_len)
        memcpy(p + 2 + mlen, extra, extra_len);
    conn_reply_end(c, 2 + mlen + extra_len);
}

/* An event is a response-shaped frame the client did not ask for: EVENT flag, request_id 0,
 * status OK, priority normal. conn_reply_begin takes opcode and request_id from a header, so
 * a synthetic one carries them; the flags are then switched from RESPONSE to EVENT. */
void fw_conn_send_event(fw_conn *c, uint8_t opcode, const void *body, size_t len)
{
    fw_header ev = { .opcode = opcode, .priority = FW_PRIO_NORMAL, .request_id = 0 };
    size_t at = c ? c->out_len : 0;
    uint8_t *p = conn_reply_begin(c, &ev, FW_STATUS_OK, len);
    if (!p)
        return;
    c->out[at + 4] = FW_FLAG_EVENT; /* byte 4 of the header: flags */
    if (len)
        memcpy(p, body, len);
    conn_reply_end(c, len); /* sealed with the flags as sent */
}

void fw_conn_job_started(fw_conn *c) { c->jobs++; }

void fw_conn_job_finished(fw_conn *c)
{
    if (c->jobs > 0)
        c->jobs--;
    if (c->closing)
        return;
    conn_touch(c);
    fw_conn_queue(c); /* may resume reading; never closes from here */
}

/* ---- requests ------------------------------------------------------------------------------ */

/* HELLO or AUTH: one handshake step, answered at once. A refusal is answered in plaintext
 * and closes the connection once flushed. */
static void conn_handshake(fw_conn *c, const fw_header *h, const uint8_t *body)
{
    fw_server *s = c->srv;
    fw_sec_answer ans;
    fw_security_handshake(&s->security, &c->sec, h, body, &ans);
    if (ans.status == FW_STATUS_OK) {
        if (fw_secure_state(&c->sec) == FW_SEC_ESTABLISHED && fw_log_enabled(&s->log, FW_LOG_INFO)) {
            char pk[FW_SECURE_B64_LEN + 1];
            sodium_bin2base64(pk, sizeof pk, fw_secure_peer_key(&c->sec), FW_SECURE_PK_LEN,
                              sodium_base64_VARIANT_ORIGINAL);
            fw_log_info(&s->log, "secure session", "conn=%llu key=%s", (unsigned long long)c->id, pk);
        }
        fw_conn_reply(c, h, FW_STATUS_OK, ans.body, ans.body_len);
        return;
    }
    char peer[80];
    fw_log_info(&s->log, "handshake refused", "conn=%llu peer=%s reason=\"%s\"",
                (unsigned long long)c->id, conn_peer(c, peer, sizeof peer), ans.msg);
    fw_conn_reply_error(c, h, ans.status, ans.msg, NULL, 0);
    if (ans.close_after) {
        c->close_after_flush = 1;
        c->in_state = FW_IN_DISCARD;
    }
}

static void conn_dispatch(fw_conn *c, const fw_header *h0, const uint8_t *body)
{
    fw_server *s = c->srv;
    fw_header hv = *h0; /* rewritten to the plaintext's when a sealed frame is opened */
    const fw_header *h = &hv;
    uint8_t *plain = NULL;
    const char *why = NULL;
    s->requests_total++;
    switch (fw_security_check(&s->security, &c->sec, &hv, body, &plain, &why)) {
    case FW_SECV_PASS:
        break;
    case FW_SECV_OPENED:
        body = plain;
        break;
    case FW_SECV_HANDSHAKE:
        conn_handshake(c, h, body);
        return;
    case FW_SECV_UNAUTHORIZED:
        fw_conn_reply_error(c, h, FW_STATUS_UNAUTHORIZED, why, NULL, 0);
        return;
    case FW_SECV_CLOSE:
        fw_log_info(&s->log, "closing insecure or tampered connection", "conn=%llu reason=\"%s\"",
                    (unsigned long long)c->id, why);
        fw_conn_close(c, why);
        return;
    }
    switch (h->opcode) {
    case FW_OP_PING:
        /* A draining server fails its health check, so balancers stop sending work. */
        if (s->draining)
            fw_conn_reply_error(c, h, FW_STATUS_SHUTTING_DOWN, "shutting down", NULL, 0);
        else
            fw_conn_reply(c, h, FW_STATUS_OK, body, h->body_len);
        break;
    case FW_OP_INFO: {
        char info[FW_INFO_MAX];
        size_t n = fw_server_info(s, info, sizeof info);
        fw_conn_reply(c, h, FW_STATUS_OK, info, n);
        break;
    }
    default:
        fw_compute_request(s->compute, c, h, body); /* compute copies what it keeps */
        break;
    }
    free(plain);
}

/* A complete header arrived. Returns 1 if the caller must now collect h->body_len bytes and
 * dispatch, 0 if the header was dealt with here (answered, rejected, or the connection is
 * closing; in_state says which). */
static int conn_on_header(fw_conn *c, const fw_header *h)
{
    fw_server *s = c->srv;
    fw_verdict v = fw_check_request(h, s->cfg.max_body);
    const char *msg = fw_verdict_message(v);
    uint16_t status = fw_verdict_status(v);

    /* A sealed PING carries its 64 KiB plus the tag. */
    uint32_t ping_max = FW_PING_MAX_BODY + (h->flags & FW_FLAG_SEALED ? FW_SECURE_TAG_LEN : 0);
    if (v == FW_HDR_OK && h->opcode == FW_OP_PING && h->body_len > ping_max) {
        /* Answered from the header alone: no reason to buffer an oversized echo. */
        v = FW_HDR_BAD_FLAGS; /* any non-closing verdict: the body is skipped below */
        status = FW_STATUS_BAD_REQUEST;
        msg = "ping body over 64 KiB";
    }
    if (v == FW_HDR_OK) {
        if (h->body_len > 0)
            return 1;
        conn_dispatch(c, h, c->hdr); /* any valid pointer: zero bytes are read from it */
        return 0;
    }

    s->requests_total++;
    fw_log_debug(&s->log, "bad request header", "conn=%llu opcode=0x%02x request_id=%u reason=\"%s\"",
                 (unsigned long long)c->id, h->opcode, h->request_id, msg);
    if (v == FW_HDR_BAD_MAGIC) {
        /* Not our protocol, or we lost the frame boundary: nothing we send could be read. */
        fw_conn_close(c, "bad magic");
        return 0;
    }
    fw_conn_reply_error(c, h, status, msg, NULL, 0);
    if (fw_verdict_closes(v)) {
        /* The rest of the stream cannot be trusted (unknown version) or read (too large). */
        c->close_after_flush = 1;
        c->in_state = FW_IN_DISCARD;
        return 0;
    }
    c->skip_left = h->body_len;
    c->in_state = h->body_len ? FW_IN_SKIP : FW_IN_HEADER;
    return 0;
}

/* Header accepted, body incomplete: allocate exactly body_len bytes (checked against
 * --max-body by fw_check_request already). */
static int conn_begin_body(fw_conn *c, const fw_header *h)
{
    c->cur = *h;
    c->body = malloc(h->body_len);
    if (!c->body) {
        fw_log_error(&c->srv->log, "out of memory for request body", "conn=%llu body_len=%u",
                     (unsigned long long)c->id, h->body_len);
        fw_conn_reply_error(c, h, FW_STATUS_INTERNAL, "out of memory", NULL, 0);
        c->close_after_flush = 1;
        c->in_state = FW_IN_DISCARD;
        return -1;
    }
    c->body_have = 0;
    c->in_state = FW_IN_BODY;
    return 0;
}

static void conn_body_done(fw_conn *c)
{
    fw_header h = c->cur;
    uint8_t *body = c->body;
    c->body = NULL;
    c->body_have = 0;
    c->in_state = FW_IN_HEADER;
    conn_dispatch(c, &h, body); /* compute copies what it keeps */
    free(body);
}

/* Parse p[0..n). Returns how many bytes were used: all of them, unless parsing paused at a
 * frame boundary (the caller keeps the rest in the backlog). `no_pause` ignores the caps,
 * for a bounded input that must be answered now (a backlog at shutdown). */
static size_t conn_consume(fw_conn *c, const uint8_t *p, size_t n, int no_pause)
{
    size_t off = 0;
    while (off < n) {
        if (c->closing || c->failed)
            return n;
        switch (c->in_state) {
        case FW_IN_DISCARD:
            return n;
        case FW_IN_SKIP: {
            size_t k = n - off < c->skip_left ? n - off : c->skip_left;
            off += k;
            c->skip_left -= (uint32_t)k;
            if (c->skip_left == 0)
                c->in_state = FW_IN_HEADER;
            break;
        }
        case FW_IN_BODY: {
            size_t want = c->cur.body_len - c->body_have;
            size_t k = n - off < want ? n - off : want;
            memcpy(c->body + c->body_have, p + off, k);
            c->body_have += (uint32_t)k;
            off += k;
            if (c->body_have == c->cur.body_len)
                conn_body_done(c);
            break;
        }
        case FW_IN_HEADER:
            if (c->hlen == 0) {
                /* A frame boundary: the place to pause, and the previous frame's partial-frame
                 * clock stops here (conn_update starts a new one if this frame is cut short). */
                fw_link_unlink(&c->by_frame_start);
                if (!no_pause && conn_paused(c))
                    return off;
                if (n - off >= FW_HEADER_LEN) {
                    /* Fast path: the header is here whole; so, often, is the body. */
                    fw_header h;
                    fw_header_decode(p + off, &h);
                    off += FW_HEADER_LEN;
                    if (!conn_on_header(c, &h))
                        break;
                    if (n - off >= h.body_len) {
                        conn_dispatch(c, &h, p + off);
                        off += h.body_len;
                    } else if (conn_begin_body(c, &h) != 0) {
                        return n;
                    }
                    break;
                }
            }
            {
                size_t k = FW_HEADER_LEN - c->hlen;
                if (k > n - off)
                    k = n - off;
                memcpy(c->hdr + c->hlen, p + off, k);
                c->hlen = (uint8_t)(c->hlen + k);
                off += k;
                if (c->hlen == FW_HEADER_LEN) {
                    fw_header h;
                    c->hlen = 0;
                    fw_header_decode(c->hdr, &h);
                    if (conn_on_header(c, &h) && conn_begin_body(c, &h) != 0)
                        return n;
                }
            }
            break;
        }
    }
    return off;
}

/* Keep unparsed input while reading is paused. */
static int conn_stash(fw_conn *c, const uint8_t *p, size_t n)
{
    if (c->backlog_off > 0 && c->backlog_off == c->backlog_len)
        c->backlog_off = c->backlog_len = 0;
    if (n > c->backlog_cap - c->backlog_len) {
        size_t cap = c->backlog_len + n;
        uint8_t *q = realloc(c->backlog, cap);
        if (!q)
            return -1;
        c->backlog = q;
        c->backlog_cap = cap;
    }
    memcpy(c->backlog + c->backlog_len, p, n);
    c->backlog_len += n;
    return 0;
}

static void conn_backlog_free(fw_conn *c)
{
    free(c->backlog);
    c->backlog = NULL;
    c->backlog_len = c->backlog_off = c->backlog_cap = 0;
}

/* ---- libuv callbacks ----------------------------------------------------------------------- */

static void on_conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    fw_conn *c = h->data;
    (void)suggested;
    if (c->in_state == FW_IN_BODY && conn_backlog_left(c) == 0) {
        uint32_t left = c->cur.body_len - c->body_have;
        if (left >= FW_DIRECT_READ_MIN) {
            /* Exactly the rest of this body: the read cannot swallow the next frame. */
            *buf = uv_buf_init((char *)c->body + c->body_have, left);
            return;
        }
    }
    *buf = uv_buf_init((char *)c->srv->read_buf, FW_READ_BUF_SIZE);
}

static void on_conn_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    fw_conn *c = stream->data;
    fw_server *s = c->srv;

    if (c->closing || nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && !c->lingering) {
            /* Half-close: the client may still be waiting for answers. */
            c->eof = 1;
            conn_update(c);
            fw_conn_queue(c);
            return;
        }
        fw_conn_close(c, nread == UV_EOF ? "eof" : uv_err_name((int)nread));
        return;
    }
    s->bytes_in += (uint64_t)nread;
    conn_touch(c);
    if ((const uint8_t *)buf->base != s->read_buf) {
        /* A direct read into the body buffer (see on_conn_alloc). */
        c->body_have += (uint32_t)nread;
        if (c->body_have == c->cur.body_len)
            conn_body_done(c);
    } else {
        const uint8_t *p = (const uint8_t *)buf->base;
        size_t n = (size_t)nread, used = 0;
        if (conn_backlog_left(c) == 0)
            used = conn_consume(c, p, n, 0);
        /* Parsing stopped at the output cap: write now, and go on if the socket took it, so
         * that reading pauses only when the client really is not keeping up. */
        while (used < n && !c->closing && c->out_len > 0) {
            conn_flush(c);
            if (c->closing || conn_paused(c))
                break;
            used += conn_consume(c, p + used, n - used, 0);
        }
        if (used < n && !c->closing && conn_stash(c, p + used, n - used) != 0)
            c->failed = 1;
    }
    if (!c->closing) {
        conn_update(c); /* stops reading at once if a backlog formed */
        fw_conn_queue(c);
    }
}

static void on_conn_write(uv_write_t *req, int status)
{
    fw_write_req *w = fw_container_of(req, fw_write_req, req);
    fw_conn *c = req->handle->data;
    size_t len = w->len;

    c->out_inflight -= len;
    out_release(c->srv, w->buf, w->cap);
    free(w);
    if (c->closing)
        return; /* UV_ECANCELED from uv_close */
    if (status < 0) {
        fw_conn_close(c, uv_err_name(status));
        return;
    }
    c->srv->bytes_out += len;
    conn_touch(c);
    fw_conn_queue(c);
}

static void on_conn_shutdown(uv_shutdown_t *req, int status)
{
    fw_conn *c = req->handle->data;
    free(req);
    if (status < 0 && !c->closing)
        fw_conn_close(c, uv_err_name(status));
}

static void on_conn_closed(uv_handle_t *h)
{
    fw_conn *c = h->data;
    fw_server *s = c->srv;
    free(c->body);
    free(c->backlog);
    free(c->out);
    fw_secure_session_wipe(&c->sec);
    free(c);
    fw_server_conn_gone(s);
}

static void on_rejected_closed(uv_handle_t *h) { free(h); }

/* ---- state transitions --------------------------------------------------------------------- */

/* Start or stop reading, and start or stop the partial-frame clock, to match the state. */
static void conn_update(fw_conn *c)
{
    fw_server *s = c->srv;
    if (c->closing)
        return;
    int want = !c->failed && !c->eof &&
               (c->lingering || (!c->close_after_flush && !s->drained && conn_backlog_left(c) == 0 &&
                                 !conn_paused(c)));
    if (want && !c->reading) {
        int r = uv_read_start((uv_stream_t *)&c->tcp, on_conn_alloc, on_conn_read);
        if (r != 0) {
            fw_log_warn(&s->log, "cannot read from connection", "conn=%llu err=%s",
                        (unsigned long long)c->id, uv_err_name(r));
            c->failed = 1;
            fw_conn_queue(c);
            return;
        }
        c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
        if (conn_paused(c))
            fw_log_debug(&s->log, "reading paused", "conn=%llu jobs=%u unsent_bytes=%zu",
                         (unsigned long long)c->id, c->jobs, c->out_len + c->out_inflight);
    }

    /* The clock runs only while we are reading: a frame stalled because we paused is ours. */
    int mid_frame = c->in_state == FW_IN_BODY || c->in_state == FW_IN_SKIP ||
                    (c->in_state == FW_IN_HEADER && c->hlen > 0);
    /* A connection closing after an error gets the same deadline to take its answer: a
     * client that never reads it must not hold the connection forever. */
    int track = c->lingering || c->close_after_flush || (s->cfg.frame_timeout_ms > 0 && c->reading && mid_frame);
    if (track && !fw_link_linked(&c->by_frame_start)) {
        c->frame_started = conn_now(c);
        fw_link_append(&s->by_frame_start, &c->by_frame_start);
    } else if (!track) {
        fw_link_unlink(&c->by_frame_start);
    }
}

/* Hand everything queued to the socket: uv_try_write, then one uv_write for the rest. */
static void conn_flush(fw_conn *c)
{
    fw_server *s = c->srv;
    size_t done = 0;

    if (c->out_len == 0)
        return;
    if (c->out_inflight == 0) {
        /* With a write already queued, a direct write would overtake it. */
        uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
        int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (r < 0 && r != UV_EAGAIN) {
            fw_conn_close(c, uv_err_name(r));
            return;
        }
        if (r > 0) {
            done = (size_t)r;
            s->bytes_out += done;
            conn_touch(c);
        }
    }
    if (done == c->out_len) {
        /* Give it back rather than keep it: an idle connection holds no output memory, and
         * the next response (on any connection) takes it from the pool without a malloc. */
        out_release(s, c->out, c->out_cap);
        c->out = NULL;
        c->out_len = c->out_cap = 0;
        return;
    }
    fw_write_req *w = malloc(sizeof *w);
    if (!w) {
        fw_conn_close(c, "out of memory");
        return;
    }
    w->buf = c->out;
    w->cap = c->out_cap;
    w->len = c->out_len - done;
    uv_buf_t b = uv_buf_init((char *)c->out + done, (unsigned)w->len);
    c->out = NULL;
    c->out_len = c->out_cap = 0;
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_conn_write);
    if (r != 0) {
        free(w->buf);
        free(w);
        fw_conn_close(c, uv_err_name(r));
        return;
    }
    c->out_inflight += w->len;
}

/* Error response flushed: send FIN, then read and drop until the client closes or the
 * frame timeout expires, so unread request bytes do not turn our close into a reset. */
static void conn_begin_linger(fw_conn *c)
{
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_conn_shutdown) != 0) {
        free(req);
        fw_conn_close(c, "protocol error");
        return;
    }
    c->lingering = 1;
    c->in_state = FW_IN_DISCARD;
    conn_backlog_free(c);
    fw_link_unlink(&c->by_frame_start); /* restart the clock for the linger */
}

void fw_conn_service(fw_conn *c)
{
    fw_server *s = c->srv;

    if (c->closing)
        return;
    if (c->failed) {
        fw_conn_close(c, "internal error");
        return;
    }
    /* One backlog pass per service, so a busy pipelining client cannot starve the rest.
     * Once the server has drained, the requests still waiting here are answered at once
     * (SHUTTING_DOWN, by compute or by PING) rather than dropped with the connection. */
    if (conn_backlog_left(c) > 0 && (s->drained || !conn_paused(c))) {
        size_t used = conn_consume(c, c->backlog + c->backlog_off, conn_backlog_left(c), s->drained);
        if (c->closing)
            return;
        c->backlog_off += used;
        if (conn_backlog_left(c) == 0 || c->in_state == FW_IN_DISCARD)
            conn_backlog_free(c);
    }
    conn_flush(c);
    if (c->closing)
        return;
    if (c->failed) {
        fw_conn_close(c, "internal error");
        return;
    }
    int flushed = c->out_len == 0 && c->out_inflight == 0;
    if (c->close_after_flush && !c->lingering && c->out_len == 0) {
        conn_begin_linger(c); /* uv_shutdown waits for the write in flight */
        if (c->closing)
            return;
    }
    if (c->eof && flushed && (c->lingering || (c->jobs == 0 && conn_backlog_left(c) == 0))) {
        fw_conn_close(c, "eof");
        return;
    }
    if (s->drained && flushed) {
        fw_conn_close(c, "shutdown");
        return;
    }
    if (conn_backlog_left(c) > 0 && !conn_paused(c))
        fw_conn_queue(c); /* more to parse next iteration */
    conn_update(c);
}

/* ---- accept / close / sweep ---------------------------------------------------------------- */

void fw_conn_accept(fw_server *s, uv_stream_t *listener)
{
    fw_conn *c = NULL;
    uv_tcp_t *reject = NULL;
    int r;

    if (s->draining || s->n_conns >= s->cfg.max_connections)
        goto reject;
    c = calloc(1, sizeof *c);
    if (!c)
        goto reject;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->srv = s;
    fw_link_init(&c->by_activity);
    fw_link_init(&c->by_frame_start);
    fw_link_init(&c->pending);
    r = uv_accept(listener, (uv_stream_t *)&c->tcp);
    if (r != 0) {
        fw_log_warn(&s->log, "accept failed", "err=%s", uv_err_name(r));
        uv_close((uv_handle_t *)&c->tcp, on_rejected_closed); /* c starts with its uv_tcp_t */
        return;
    }
    c->id = ++s->next_conn_id;
    s->n_conns++;
    s->connections_total++;
    uv_tcp_nodelay(&c->tcp, 1); /* request/response: never wait to coalesce a small reply */
    conn_touch(c);
    if (fw_log_enabled(&s->log, FW_LOG_DEBUG)) {
        char peer[80];
        fw_log_debug(&s->log, "connection opened", "conn=%llu peer=%s", (unsigned long long)c->id,
                     conn_peer(c, peer, sizeof peer));
    }
    conn_update(c);
    if (c->failed)
        fw_conn_close(c, "cannot read");
    return;

reject:
    /* Accept and close at once: a connection left in the backlog would look alive to the
     * client and keep the listener firing. Only a bare handle is allocated for it. */
    s->rejected_connections++;
    reject = malloc(sizeof *reject);
    if (!reject) {
        fw_log_error(&s->log, "out of memory rejecting a connection", NULL);
        return;
    }
    uv_tcp_init(s->loop, reject);
    if (uv_accept(listener, (uv_stream_t *)reject) == 0)
        fw_log_debug(&s->log, "connection rejected", "connections=%u max_connections=%u",
                     s->n_conns, s->cfg.max_connections);
    uv_close((uv_handle_t *)reject, on_rejected_closed);
}

void fw_conn_close(fw_conn *c, const char *why)
{
    fw_server *s = c->srv;
    if (c->closing)
        return;
    c->closing = 1;
    if (s->compute)
        fw_compute_conn_closed(s->compute, c);
    fw_link_unlink(&c->by_activity);
    fw_link_unlink(&c->by_frame_start);
    fw_link_unlink(&c->pending);
    s->n_conns--;
    fw_log_debug(&s->log, "connection closed", "conn=%llu reason=\"%s\"", (unsigned long long)c->id, why);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

void fw_conn_sweep(fw_server *s, uint64_t now)
{
    uint64_t frame_ms = s->cfg.frame_timeout_ms ? s->cfg.frame_timeout_ms : FW_LINGER_DEFAULT_MS;
    /* Every entry has the same limit, so the list (oldest first) is also in deadline order. */
    while (!fw_link_empty(&s->by_frame_start)) {
        fw_conn *c = fw_container_of(s->by_frame_start.next, fw_conn, by_frame_start);
        if (now - c->frame_started < frame_ms)
            break;
        fw_log_info(&s->log, c->lingering || c->close_after_flush ? "linger timeout" : "partial frame timeout",
                    "conn=%llu after_ms=%llu", (unsigned long long)c->id,
                    (unsigned long long)(now - c->frame_started));
        fw_conn_close(c, c->lingering || c->close_after_flush ? "linger timeout" : "frame timeout");
    }

    if (s->cfg.idle_timeout_ms == 0)
        return;
    /* Least recently active first. A connection with work in compute is not idle however
     * long the work takes: it moves to the back as if active. The budget bounds the walk. */
    for (uint32_t budget = s->n_conns; budget > 0 && !fw_link_empty(&s->by_activity); budget--) {
        fw_conn *c = fw_container_of(s->by_activity.next, fw_conn, by_activity);
        if (now - c->last_active < s->cfg.idle_timeout_ms)
            break;
        if (c->jobs > 0) {
            conn_touch(c);
            continue;
        }
        fw_log_debug(&s->log, "idle timeout", "conn=%llu", (unsigned long long)c->id);
        fw_conn_close(c, "idle timeout");
    }
}
