/*
 * fwload_main.c — fwload, the facewire load generator: many connections, pipelined requests,
 * closed or open loop, latency percentiles. It shares nothing with the server but proto/.
 *
 * One libuv loop, one thread, like the server it measures: on this 2-core machine the client
 * and the server each get a core, as redis-benchmark and redis-server do in the comparison.
 *
 * Closed loop (default): every connection keeps up to -P requests in flight; each reply
 * read frees a slot and, once the whole read has been handled, the freed slots are refilled
 * in one write. Latency is measured from the send.
 *
 * Open loop (--rate R): a 1 ms pacer puts requests on a shared queue at R per second, each
 * stamped with its intended send time t0 = start + k/R whether or not the server keeps up;
 * connections with a free slot take from the queue. Latency is measured from t0, so a server
 * that stalls is charged for every request it delayed, including ones still waiting to be
 * sent (no coordinated omission). The queue is bounded (--max-backlog): when it is full the
 * request is dropped and counted as an error.
 *
 * Request ids: the low 12 bits are the slot in the connection's pipeline, the high 20 a
 * per-connection generation counter, so a reply is matched in O(1) and a reply to a slot
 * that has since been reused, or to no request at all, is caught as a protocol error.
 *
 * Memory is bounded: one shared 64 KiB read buffer for all connections (alloc_cb hands out
 * the same buffer; replies are parsed in place), a per-connection buffer only for a frame
 * split across reads (at most 20 + --max-response bytes), a per-connection write batch of
 * -P requests, and fixed-size histograms. Idle connections hold no buffer at all.
 *
 * Errors never hang the run: connects and requests have timeouts, a connection the server
 * closes is counted and dropped, and the run ends when no connection is left.
 */
#include "fwload.h"
#include "fwload_hist.h"
#include "fwload_pace.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#define FWL_READBUF (64 * 1024)
#define FWL_INLINE_PAYLOAD 256 /* payloads up to this are copied into the write batch */
#define FWL_TICK_MS 100        /* timeouts, progress, connect window */
#define FWL_SLOT_BITS 12
#define FWL_SLOT_MASK ((1u << FWL_SLOT_BITS) - 1)
_Static_assert(FWL_MAX_PIPELINE <= (1u << FWL_SLOT_BITS), "a slot index must fit the request_id's low bits");
_Static_assert(FWL_MAX_PIPELINE <= 65536, "free_slots holds slot indices as uint16_t");

enum conn_state { C_NEW, C_CONNECTING, C_READY, C_CLOSING };
enum slot_state { S_FREE, S_SENT, S_ABANDONED };
enum phase { P_CONNECTING, P_RUNNING, P_DRAINING, P_DONE };

typedef struct fwl_slot {
    uint64_t t0;     /* latency origin: intended send time (open loop) or send time */
    uint64_t t_sent; /* for the timeout: the server is only charged from here */
    uint32_t id;     /* request_id while not S_FREE */
    uint8_t state;
    uint8_t op;      /* index into the op set */
} fwl_slot;

struct fwl;

typedef struct fwl_conn {
    uv_tcp_t tcp; /* tcp.data = this */
    uv_connect_t creq;
    uv_write_t wreq;
    struct fwl *app;
    uint8_t state;
    uint8_t idle;      /* an --idle-connections one: never sends */
    uint8_t writing;   /* a uv_write of wbuf is pending; wbuf is not ours until it completes */
    uint8_t hungry;    /* open loop: queued in app->hungry */
    uint64_t connect_t; /* when the connect started, for the connect timeout */
    /* pipeline slots, owned; NULL for idle connections */
    fwl_slot *slots;
    uint16_t *free_slots; /* stack of free slot indices */
    unsigned nfree;
    unsigned outstanding; /* slots S_SENT */
    uint32_t gen;
    /* a frame split across reads, owned; NULL when none */
    uint8_t *rbuf;
    size_t rlen, rcap, rneed; /* rneed: bytes of the frame being assembled (20 until the header) */
    /* write batch, owned: the bytes of up to -P requests and the iovecs over them */
    uint8_t *wbuf;
    size_t wcap;
    uv_buf_t *iov;
    unsigned iovcap;
} fwl_conn;

/* The latency of the answers of one status, two ways. from_t0 is the run's definition (from
 * the intended send time in open loop); from_send starts when the request was handed to the
 * kernel, so it leaves out the pacer's own lateness (up to its 1 ms tick) and the wait for a
 * free slot: what the server and the network took. Identical in closed loop. */
typedef struct fwl_lat {
    fwh from_t0;
    fwh from_send;
} fwl_lat;

typedef struct fwl_stats {
    uint64_t sent, answered, late, events;
    uint64_t status[FW_STATUS_COUNT + 1]; /* last one: any status we do not know */
    uint64_t err_connect, err_disconnect, err_protocol, err_timeout, err_overflow;
    uint64_t unsent; /* open loop: still queued when the run ended */
    /* With --late-ms (or --deadline-ms): OK answers that came later than that, from the
     * intended send time and from the send. Counted per answer, exactly: the histograms'
     * buckets are 4 ms wide at 1 s, too coarse to tell 999 ms from 1001. */
    uint64_t ok_late, ok_late_from_send;
    char first_connect_error[96];
    char first_protocol_error[96];
} fwl_stats;

typedef struct fwl {
    uv_loop_t loop;
    fwl_opts opt;
    fwl_opset ops;
    struct sockaddr_storage addr;
    char addr_text[80];

    fwl_conn *conns; /* [nconns], owned: active ones first, then idle ones */
    unsigned nconns, nactive;
    unsigned next_connect, connecting;
    unsigned ready_active, ready_idle;             /* connected now */
    unsigned established_active, established_idle; /* ever connected */
    uint64_t outstanding;                           /* requests S_SENT over all connections */

    enum phase phase;
    uv_timer_t tick;   /* every 100 ms: timeouts, progress, end of -d */
    uv_timer_t pacer;  /* open loop only: every 1 ms */
    uv_timer_t end;    /* -d: fires once when sending must stop */
    uv_signal_t sigint;
    int pacer_on, sigints;

    uint64_t t_connect0, t_start, t_stop, t_last_reply;
    uint64_t to_send;     /* -n: requests left to send (closed loop) or schedule (open) */
    uint64_t scheduled;   /* open loop: requests put on the queue so far */
    double ns_per_req;    /* open loop: 1e9 / rate */

    /* open loop: intended send times waiting for a free slot; a ring, owned */
    uint64_t *queue;
    size_t q_head, q_len, q_cap;
    /* open loop: connections with a free slot; a ring of conn indices, owned */
    uint32_t *hungry;
    size_t h_head, h_len;

    fwl_stats st;
    fwh *lat_all, *lat_interval; /* owned */
    /* owned, [FW_STATUS_COUNT + 1], indexed like st.status: latency per answer status,
     * because under overload the statuses have nothing in common (a BUSY is answered at once,
     * an OK waited in the queue and ran) and one mixed distribution describes neither */
    fwl_lat *lat_status;
    uint64_t progress_last_t, progress_last_answered;
    int show_progress;
    uint8_t *readbuf; /* owned, FWL_READBUF bytes, shared by every connection's reads */
} fwl;

static uint64_t now_ns(void) { return uv_hrtime(); }

/* ---- teardown ------------------------------------------------------------------------------ */

static void on_conn_closed(uv_handle_t *h)
{
    fwl_conn *c = h->data;
    free(c->slots);
    free(c->free_slots);
    free(c->rbuf);
    free(c->wbuf);
    free(c->iov);
    c->slots = NULL;
    c->free_slots = NULL;
    c->rbuf = NULL;
    c->wbuf = NULL;
    c->iov = NULL;
}

static void finish(fwl *app);
static void check_done(fwl *app);

/* Drops a connection. During the run, that it happened is an error of the caller's kind;
 * its requests in flight are never answered (sent - answered shows them). */
static void conn_close(fwl_conn *c)
{
    fwl *app = c->app;
    if (c->state == C_CLOSING || c->state == C_NEW)
        return;
    if (c->state == C_CONNECTING)
        app->connecting--;
    if (c->state == C_READY) {
        if (c->idle)
            app->ready_idle--;
        else
            app->ready_active--;
    }
    c->state = C_CLOSING;
    app->outstanding -= c->outstanding;
    c->outstanding = 0;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void protocol_error(fwl_conn *c, const char *what, int close_it)
{
    fwl *app = c->app;
    app->st.err_protocol++;
    if (!app->st.first_protocol_error[0])
        snprintf(app->st.first_protocol_error, sizeof app->st.first_protocol_error, "%s", what);
    if (close_it) {
        conn_close(c);
        check_done(app);
    }
}

/* ---- sending ------------------------------------------------------------------------------- */

static void on_write_done(uv_write_t *req, int status);
static void pump(fwl_conn *c);

/* Writes iov[0..n): uv_try_write first (usually all of it goes at once, no queueing inside
 * libuv), the rest with uv_write, after which wbuf stays busy until on_write_done. */
static void flush(fwl_conn *c, unsigned n)
{
    uv_buf_t *iov = c->iov;
    int w = uv_try_write((uv_stream_t *)&c->tcp, iov, n);
    if (w == UV_EAGAIN || w == UV_ENOSYS)
        w = 0;
    if (w < 0) {
        c->app->st.err_disconnect++;
        conn_close(c);
        return;
    }
    size_t done = (size_t)w;
    while (n > 0 && done >= iov->len) {
        done -= iov->len;
        iov++;
        n--;
    }
    if (n == 0)
        return;
    iov->base += done;
    iov->len -= done;
    c->writing = 1;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, iov, n, on_write_done) != 0) {
        c->writing = 0;
        c->app->st.err_disconnect++;
        conn_close(c);
    }
}

static void on_write_done(uv_write_t *req, int status)
{
    fwl_conn *c = req->data;
    c->writing = 0;
    if (c->state != C_READY)
        return;
    if (status < 0) {
        c->app->st.err_disconnect++;
        conn_close(c);
        check_done(c->app);
        return;
    }
    pump(c);
    check_done(c->app); /* pump may have lost the connection */
}

static int hungry_push(fwl *app, fwl_conn *c)
{
    if (c->hungry)
        return 0;
    c->hungry = 1;
    app->hungry[(app->h_head + app->h_len) % app->nactive] = (uint32_t)(c - app->conns);
    app->h_len++;
    return 1;
}

/* Fills the free slots of c with requests and writes them in one go. Closed loop: while -n
 * allows; open loop: while the queue has requests. */
static void pump(fwl_conn *c)
{
    fwl *app = c->app;
    if (c->state != C_READY || c->idle || c->writing || app->phase != P_RUNNING)
        return;
    int open = app->opt.rate > 0;
    uint64_t t = 0;
    size_t wlen = 0, seg = 0;
    unsigned niov = 0;
    while (c->nfree > 0) {
        uint64_t t0;
        if (open) {
            if (app->q_len == 0)
                break;
            t0 = app->queue[app->q_head];
            app->q_head = (app->q_head + 1) % app->q_cap;
            app->q_len--;
        } else {
            if (app->opt.requests) {
                if (app->to_send == 0)
                    break;
                app->to_send--;
            }
            t0 = 0; /* set below, once for the whole batch */
        }
        if (t == 0)
            t = now_ns();
        unsigned opi = fwl_ops_pick(&app->ops);
        const fwl_op *op = &app->ops.ops[opi];
        unsigned s = c->free_slots[--c->nfree];
        fwl_slot *sl = &c->slots[s];
        c->gen = (c->gen + 1) & ((1u << (32 - FWL_SLOT_BITS)) - 1);
        sl->id = (c->gen << FWL_SLOT_BITS) | s;
        sl->state = S_SENT;
        sl->op = (uint8_t)opi;
        sl->t_sent = t;
        sl->t0 = open ? t0 : t;
        c->outstanding++;
        app->outstanding++;
        app->st.sent++;

        uint8_t *p = c->wbuf + wlen;
        memcpy(p, op->header, FW_HEADER_LEN);
        fw_be32(p + 8, sl->id);
        memcpy(p + FW_HEADER_LEN, op->prefix, op->prefix_len);
        wlen += FW_HEADER_LEN + op->prefix_len;
        if (op->payload_len <= FWL_INLINE_PAYLOAD) {
            if (op->payload_len)
                memcpy(c->wbuf + wlen, op->payload, op->payload_len);
            wlen += op->payload_len;
        } else {
            /* A big payload is not copied: the iovec points at the op's shared copy. */
            c->iov[niov++] = uv_buf_init((char *)c->wbuf + seg, (unsigned)(wlen - seg));
            c->iov[niov++] = uv_buf_init((char *)op->payload, (unsigned)op->payload_len);
            seg = wlen;
        }
    }
    if (wlen > seg)
        c->iov[niov++] = uv_buf_init((char *)c->wbuf + seg, (unsigned)(wlen - seg));
    if (open && c->nfree > 0)
        hungry_push(app, c);
    if (niov > 0)
        flush(c, niov);
}

/* ---- receiving ----------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    fwl_conn *c = h->data;
    /* One buffer for every connection: read callbacks run one at a time and parse the bytes
     * before returning, so nothing is left in it between callbacks. */
    buf->base = (char *)c->app->readbuf;
    buf->len = FWL_READBUF;
}

/* Handles one complete reply. Returns -1 if the connection was closed. */
static int on_reply(fwl_conn *c, const fw_header *h, const uint8_t *body, uint64_t now)
{
    fwl *app = c->app;
    if (h->flags & FW_FLAG_EVENT) {
        app->st.events++; /* server-initiated: not an answer to anything of ours */
        return 0;
    }
    if (c->idle) {
        protocol_error(c, "reply on an idle connection", 1);
        return -1;
    }
    unsigned s = h->request_id & FWL_SLOT_MASK;
    if (s >= app->opt.pipeline || c->slots[s].state == S_FREE || c->slots[s].id != h->request_id) {
        protocol_error(c, "reply to a request_id not in flight", 1);
        return -1;
    }
    fwl_slot *sl = &c->slots[s];
    const fwl_op *op = &app->ops.ops[sl->op];
    if (h->opcode != op->def->opcode) {
        protocol_error(c, "reply opcode differs from the request's", 1);
        return -1;
    }
    int abandoned = sl->state == S_ABANDONED;
    sl->state = S_FREE;
    c->free_slots[c->nfree++] = (uint16_t)s;
    if (abandoned) {
        app->st.late++; /* already counted as a timeout */
        return 0;
    }
    c->outstanding--;
    app->outstanding--;
    if (h->status == FW_STATUS_OK) {
        if (op->def->check_ok && op->def->check_ok(op, body, h->body_len) != 0)
            protocol_error(c, "OK reply with a wrong body", 0);
    } else {
        /* Every error reply starts with a u16-length message. */
        fw_reader r;
        uint16_t n;
        fw_reader_init(&r, body, h->body_len);
        if (!fw_get_str(&r, &n))
            protocol_error(c, "error reply without a message", 0);
    }
    unsigned si = h->status < FW_STATUS_COUNT ? h->status : FW_STATUS_COUNT;
    app->st.status[si]++;
    app->st.answered++;
    uint64_t lat = now > sl->t0 ? now - sl->t0 : 0;
    fwh_record(app->lat_all, lat);
    if (app->show_progress)
        fwh_record(app->lat_interval, lat);
    uint64_t lat_send = now > sl->t_sent ? now - sl->t_sent : 0;
    fwh_record(&app->lat_status[si].from_t0, lat);
    fwh_record(&app->lat_status[si].from_send, lat_send);
    if (h->status == FW_STATUS_OK && app->opt.late_ms) {
        uint64_t dl = (uint64_t)app->opt.late_ms * 1000000u;
        app->st.ok_late += lat > dl;
        app->st.ok_late_from_send += lat_send > dl;
    }
    app->t_last_reply = now;
    return 0;
}

/* Validates a header as a client must. Returns the frame length, or 0 after closing. */
static size_t header_ok(fwl_conn *c, const uint8_t *p, fw_header *h)
{
    fw_header_decode(p, h);
    fw_verdict v = fw_check_response(h, c->app->opt.max_response);
    if (v != FW_HDR_OK) {
        protocol_error(c, fw_verdict_message(v), 1);
        return 0;
    }
    return FW_HEADER_LEN + (size_t)h->body_len;
}

static int reserve_rbuf(fwl_conn *c, size_t need)
{
    if (c->rcap >= need)
        return 0;
    uint8_t *nb = realloc(c->rbuf, need);
    if (!nb)
        return -1;
    c->rbuf = nb;
    c->rcap = need;
    return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    fwl_conn *c = stream->data;
    fwl *app = c->app;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* EOF or reset: the server dropped us (idle timeout, max connections, crash). */
        if (app->phase != P_DONE)
            app->st.err_disconnect++;
        conn_close(c);
        check_done(app);
        return;
    }
    const uint8_t *data = (const uint8_t *)buf->base;
    size_t len = (size_t)nread;
    uint64_t now = now_ns();
    fw_header h;

    /* First complete the frame left over from the previous read, byte-exactly. */
    while (c->rlen > 0 && len > 0) {
        size_t take = c->rneed - c->rlen;
        if (take > len)
            take = len;
        memcpy(c->rbuf + c->rlen, data, take);
        c->rlen += take;
        data += take;
        len -= take;
        if (c->rlen < c->rneed)
            return; /* everything consumed, still partial */
        if (c->rneed == FW_HEADER_LEN) {
            size_t flen = header_ok(c, c->rbuf, &h);
            if (flen == 0)
                return;
            if (flen > FW_HEADER_LEN) {
                if (reserve_rbuf(c, flen) != 0) {
                    protocol_error(c, "out of memory for a reply", 1);
                    return;
                }
                c->rneed = flen;
                continue;
            }
        } else {
            fw_header_decode(c->rbuf, &h);
        }
        c->rlen = 0;
        if (on_reply(c, &h, c->rbuf + FW_HEADER_LEN, now) != 0)
            return;
    }
    /* Keep a big buffer only while it is in use. */
    if (c->rlen == 0 && c->rcap > FWL_READBUF) {
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = 0;
    }
    /* Then every complete frame in place, in the shared buffer. */
    while (len >= FW_HEADER_LEN) {
        size_t flen = header_ok(c, data, &h);
        if (flen == 0)
            return;
        if (len < flen)
            break;
        if (on_reply(c, &h, data + FW_HEADER_LEN, now) != 0)
            return;
        data += flen;
        len -= flen;
    }
    /* Keep a trailing partial frame (its header is already validated if complete). */
    if (len > 0) {
        size_t need = len >= FW_HEADER_LEN ? FW_HEADER_LEN + (size_t)h.body_len : FW_HEADER_LEN;
        if (reserve_rbuf(c, need) != 0) {
            protocol_error(c, "out of memory for a reply", 1);
            return;
        }
        memcpy(c->rbuf, data, len);
        c->rlen = len;
        c->rneed = need;
    }
    pump(c);
    check_done(app);
}

/* ---- connecting ---------------------------------------------------------------------------- */

static void start_run(fwl *app);
static void start_connects(fwl *app);

static void connect_failed(fwl_conn *c, int status)
{
    fwl *app = c->app;
    app->st.err_connect++;
    if (!app->st.first_connect_error[0])
        snprintf(app->st.first_connect_error, sizeof app->st.first_connect_error, "%s: %s",
                 uv_err_name(status), uv_strerror(status));
}

static int conn_alloc_buffers(fwl_conn *c)
{
    fwl *app = c->app;
    unsigned p = app->opt.pipeline;
    size_t per_req = FW_HEADER_LEN + FWL_PREFIX_MAX;
    size_t inline_max = 0;
    for (unsigned i = 0; i < app->ops.n; i++)
        if (app->ops.ops[i].payload_len <= FWL_INLINE_PAYLOAD &&
            app->ops.ops[i].payload_len > inline_max)
            inline_max = app->ops.ops[i].payload_len;
    c->slots = calloc(p, sizeof *c->slots);
    c->free_slots = malloc(p * sizeof *c->free_slots);
    c->wcap = p * (per_req + inline_max);
    c->wbuf = malloc(c->wcap);
    c->iovcap = 2 * p + 1;
    c->iov = malloc(c->iovcap * sizeof *c->iov);
    if (!c->slots || !c->free_slots || !c->wbuf || !c->iov)
        return -1;
    for (unsigned i = 0; i < p; i++)
        c->free_slots[i] = (uint16_t)(p - 1 - i); /* slot 0 is used first */
    c->nfree = p;
    return 0;
}

/* Sets a connected socket up: no Nagle (small pipelined frames must go out at once), its
 * buffers, reading. 0, or a libuv error. */
static int conn_ready(fwl_conn *c)
{
    int rc = uv_tcp_nodelay(&c->tcp, 1);
    if (rc == 0 && !c->idle && conn_alloc_buffers(c) != 0)
        rc = UV_ENOMEM;
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    return rc;
}

static void on_connect(uv_connect_t *req, int status)
{
    fwl_conn *c = req->data;
    fwl *app = c->app;
    /* A connection closed by the connect timeout (UV_ECANCELED) was counted there. */
    if (c->state == C_CONNECTING) {
        if (status == 0)
            status = conn_ready(c);
        if (status < 0) {
            connect_failed(c, status);
            conn_close(c);
        } else {
            app->connecting--;
            c->state = C_READY;
            if (c->idle) {
                app->ready_idle++;
                app->established_idle++;
            } else {
                app->ready_active++;
                app->established_active++;
            }
        }
    }
    if (app->phase == P_CONNECTING)
        start_connects(app);
}

/* Keeps up to --connect-batch connects in progress; when all have finished, starts the run. */
static void start_connects(fwl *app)
{
    while (app->connecting < app->opt.connect_batch && app->next_connect < app->nconns) {
        fwl_conn *c = &app->conns[app->next_connect++];
        int rc = uv_tcp_init(&app->loop, &c->tcp);
        if (rc != 0) {
            connect_failed(c, rc);
            continue; /* state stays C_NEW: no handle to close */
        }
        c->state = C_CONNECTING;
        app->connecting++;
        c->connect_t = now_ns();
        rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&app->addr, on_connect);
        if (rc != 0) {
            /* EMFILE lands here when the descriptor limit is reached. */
            connect_failed(c, rc);
            conn_close(c);
        }
    }
    if (app->connecting == 0 && app->next_connect == app->nconns && app->phase == P_CONNECTING)
        start_run(app);
}

/* ---- the run ------------------------------------------------------------------------------- */

static void on_pacer(uv_timer_t *t)
{
    fwl *app = t->data;
    if (app->phase != P_RUNNING)
        return;
    uint64_t now = now_ns();
    uint64_t due = fwl_pace_due(now - app->t_start, app->ns_per_req, app->opt.requests);
    while (app->scheduled < due) {
        uint64_t t0 = app->t_start + fwl_pace_t0(app->scheduled, app->ns_per_req);
        app->scheduled++;
        if (app->q_len == app->q_cap) {
            app->st.err_overflow++; /* the server is this far behind: drop, do not grow */
            continue;
        }
        app->queue[(app->q_head + app->q_len) % app->q_cap] = t0;
        app->q_len++;
    }
    /* Hand the queue to connections with free slots; one write each. */
    while (app->q_len > 0 && app->h_len > 0) {
        fwl_conn *c = &app->conns[app->hungry[app->h_head]];
        app->h_head = (app->h_head + 1) % app->nactive;
        app->h_len--;
        c->hungry = 0;
        pump(c); /* re-queues c if it still has free slots */
    }
    if (app->opt.requests && app->scheduled == app->opt.requests) {
        uv_timer_stop(&app->pacer);
        app->pacer_on = 0;
    }
    check_done(app);
}

static void progress_line(fwl *app, uint64_t now)
{
    double dt = (double)(now - app->progress_last_t) / 1e9;
    double el = (double)(now - app->t_start) / 1e9;
    uint64_t n = app->st.answered - app->progress_last_answered;
    fwl_stats *s = &app->st;
    uint64_t errs = s->err_connect + s->err_disconnect + s->err_protocol + s->err_timeout +
                    s->err_overflow;
    fprintf(stderr, "fwload: %6.1fs %10.0f rps  p50 %8.1fus  p99 %8.1fus  errors %" PRIu64
                    "  connections %u\n",
            el, dt > 0 ? (double)n / dt : 0.0, fwh_percentile(app->lat_interval, 50) / 1e3,
            fwh_percentile(app->lat_interval, 99) / 1e3, errs, app->ready_active);
    fwh_reset(app->lat_interval);
    app->progress_last_t = now;
    app->progress_last_answered = app->st.answered;
}

/* Requests sent longer than --timeout-ms ago are errors; their slots stay taken until the late
 * reply comes (a server that never answers shrinks the pipeline, which is what it does).
 * A connection left with every slot abandoned can do nothing more: it is closed, so that a
 * dead server ends the run instead of hanging it. */
static void scan_timeouts(fwl *app, uint64_t now)
{
    uint64_t limit = (uint64_t)app->opt.timeout_ms * 1000000u;
    for (unsigned i = 0; i < app->nactive; i++) {
        fwl_conn *c = &app->conns[i];
        if (c->state != C_READY || c->outstanding == 0)
            continue;
        for (unsigned s = 0; s < app->opt.pipeline; s++) {
            fwl_slot *sl = &c->slots[s];
            if (sl->state == S_SENT && now - sl->t_sent > limit) {
                sl->state = S_ABANDONED;
                c->outstanding--;
                app->outstanding--;
                app->st.err_timeout++;
            }
        }
        if (c->nfree == 0 && c->outstanding == 0)
            conn_close(c);
    }
}

static void scan_connect_timeouts(fwl *app, uint64_t now)
{
    uint64_t limit = (uint64_t)app->opt.connect_timeout_ms * 1000000u;
    for (unsigned i = 0; i < app->next_connect; i++) {
        fwl_conn *c = &app->conns[i];
        if (c->state == C_CONNECTING && now - c->connect_t > limit) {
            connect_failed(c, UV_ETIMEDOUT);
            conn_close(c); /* on_connect then runs with UV_ECANCELED and starts the next */
        }
    }
}

static void stop_sending(fwl *app)
{
    if (app->phase != P_RUNNING)
        return;
    app->phase = P_DRAINING;
    app->t_stop = now_ns();
    if (app->pacer_on) {
        uv_timer_stop(&app->pacer);
        app->pacer_on = 0;
    }
    app->st.unsent = app->q_len;
    app->q_len = 0;
}

/* Ends the run when there is nothing left to wait for. */
static void check_done(fwl *app)
{
    if (app->phase == P_CONNECTING || app->phase == P_DONE)
        return;
    if (app->nactive > 0 && app->ready_active == 0) {
        stop_sending(app); /* every connection is gone: nothing more can happen */
        finish(app);
        return;
    }
    if (app->phase == P_RUNNING && app->opt.requests) {
        int all_issued = app->opt.rate > 0 ? app->scheduled == app->opt.requests && app->q_len == 0
                                           : app->to_send == 0;
        if (all_issued)
            stop_sending(app);
    }
    if (app->phase == P_DRAINING && app->outstanding == 0)
        finish(app);
}

static void on_tick(uv_timer_t *t)
{
    fwl *app = t->data;
    uint64_t now = now_ns();
    if (app->phase == P_CONNECTING) {
        scan_connect_timeouts(app, now);
        if (app->show_progress && now - app->progress_last_t >= 1000000000u) {
            fprintf(stderr, "fwload: connecting: %u ready, %u in progress, %" PRIu64 " failed\n",
                    app->ready_active + app->ready_idle, app->connecting, app->st.err_connect);
            app->progress_last_t = now;
        }
        return;
    }
    if (app->phase == P_RUNNING || app->phase == P_DRAINING)
        scan_timeouts(app, now);
    if (app->show_progress && app->phase == P_RUNNING && now - app->progress_last_t >= 1000000000u)
        progress_line(app, now);
    check_done(app);
}

static void on_end(uv_timer_t *t)
{
    fwl *app = t->data;
    stop_sending(app);
    check_done(app);
}

static void on_sigint(uv_signal_t *s, int signum)
{
    fwl *app = s->data;
    /* First ^C: stop sending and wait for the replies; second: stop now. */
    if (++app->sigints == 1 && app->phase == P_RUNNING) {
        stop_sending(app);
        check_done(app);
    } else {
        stop_sending(app);
        finish(app);
    }
}

static void start_run(fwl *app)
{
    app->phase = P_RUNNING;
    app->t_start = now_ns();
    app->progress_last_t = app->t_start;
    if (app->show_progress || app->opt.idle_connections || app->ready_active + app->ready_idle < app->nconns)
        fprintf(stderr,
                "fwload: %u of %u connections established (%u idle) in %.2fs, %" PRIu64
                " failed%s%s\n",
                app->ready_active + app->ready_idle, app->nconns, app->ready_idle,
                (double)(app->t_start - app->t_connect0) / 1e9, app->st.err_connect,
                app->st.first_connect_error[0] ? ", first: " : "", app->st.first_connect_error);
    if (app->nactive > 0 && app->ready_active == 0) {
        finish(app);
        return;
    }
    if (app->opt.duration_s > 0)
        uv_timer_start(&app->end, on_end, (uint64_t)(app->opt.duration_s * 1000.0 + 0.5), 0);
    if (app->opt.rate > 0) {
        for (unsigned i = 0; i < app->nactive; i++)
            if (app->conns[i].state == C_READY)
                hungry_push(app, &app->conns[i]);
        uv_timer_start(&app->pacer, on_pacer, 1, 1);
        app->pacer_on = 1;
    } else {
        for (unsigned i = 0; i < app->nactive; i++)
            pump(&app->conns[i]);
    }
    check_done(app);
}

static void finish(fwl *app)
{
    if (app->phase == P_DONE)
        return;
    app->phase = P_DONE;
    if (!app->t_stop)
        app->t_stop = now_ns();
    uv_timer_stop(&app->tick);
    uv_timer_stop(&app->pacer);
    uv_timer_stop(&app->end);
    uv_close((uv_handle_t *)&app->end, NULL);
    uv_close((uv_handle_t *)&app->tick, NULL);
    uv_close((uv_handle_t *)&app->pacer, NULL);
    uv_close((uv_handle_t *)&app->sigint, NULL);
    for (unsigned i = 0; i < app->nconns; i++)
        conn_close(&app->conns[i]);
}

/* ---- report -------------------------------------------------------------------------------- */

static uint64_t errors_total(const fwl_stats *s)
{
    return s->err_connect + s->err_disconnect + s->err_protocol + s->err_timeout + s->err_overflow;
}

/* The window throughput is measured over: from the first send to the last reply (or to the
 * end of sending, if nothing was answered). */
static double run_seconds(const fwl *app)
{
    uint64_t end = app->t_last_reply > app->t_start ? app->t_last_reply : app->t_stop;
    return end > app->t_start ? (double)(end - app->t_start) / 1e9 : 0.0;
}

static const char *status_label(unsigned i)
{
    return i < FW_STATUS_COUNT ? fw_status_name((uint16_t)i) : "UNKNOWN";
}

static void report_json(const fwl *app)
{
    const fwl_stats *s = &app->st;
    double secs = run_seconds(app);
    const fwh *h = app->lat_all;
    const fwh *ok = &app->lat_status[FW_STATUS_OK].from_t0;
    printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
           "\"p999_us\": %.1f, \"max_us\": %.1f, \"status\": {",
           secs > 0 ? (double)s->answered / secs : 0.0, fwh_percentile(h, 50) / 1e3,
           fwh_percentile(h, 90) / 1e3, fwh_percentile(h, 99) / 1e3,
           fwh_percentile(h, 99.9) / 1e3, (double)h->max / 1e3);
    int first = 1;
    for (unsigned i = 0; i <= FW_STATUS_COUNT; i++) {
        if (s->status[i] == 0 && i != FW_STATUS_OK)
            continue;
        printf("%s\"%s\": %" PRIu64, first ? "" : ", ", status_label(i), s->status[i]);
        first = 0;
    }
    printf("}, \"errors\": %" PRIu64 ", \"connections\": %u, \"duration_s\": %.3f, "
           "\"idle_connections\": %u, \"pipeline\": %u, \"mode\": \"%s\", \"sent\": %" PRIu64
           ", \"answered\": %" PRIu64 ", \"ok_p50_us\": %.1f, \"ok_p99_us\": %.1f, "
           "\"error_kinds\": {\"connect\": %" PRIu64 ", \"disconnect\": %" PRIu64
           ", \"protocol\": %" PRIu64 ", \"timeout\": %" PRIu64 ", \"overflow\": %" PRIu64
           "}, \"unsent\": %" PRIu64 ", \"deadline_ms\": %" PRIu32
           ", \"late_ms\": %" PRIu32 ", \"ok_late\": %" PRIu64 ", \"ok_late_from_send\": %" PRIu64
           ", \"status_latency_us\": {",
           errors_total(s), app->established_active, secs, app->established_idle, app->opt.pipeline,
           app->opt.rate > 0 ? "open" : "closed", s->sent, s->answered,
           fwh_percentile(ok, 50) / 1e3, fwh_percentile(ok, 99) / 1e3,
           s->err_connect, s->err_disconnect, s->err_protocol, s->err_timeout, s->err_overflow,
           s->unsent, app->opt.deadline_ms, app->opt.late_ms, s->ok_late, s->ok_late_from_send);
    /* Latency by status, for every status that was answered: an overload test reads the
     * OK figures against the deadline and the BUSY figures against "refused at once". */
    first = 1;
    for (unsigned i = 0; i <= FW_STATUS_COUNT; i++) {
        const fwh *sh = &app->lat_status[i].from_t0, *ss = &app->lat_status[i].from_send;
        if (sh->total == 0)
            continue;
        printf("%s\"%s\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, "
               "\"max\": %.1f, \"from_send_p50\": %.1f, \"from_send_p99\": %.1f, "
               "\"from_send_max\": %.1f}",
               first ? "" : ", ", status_label(i), fwh_percentile(sh, 50) / 1e3,
               fwh_percentile(sh, 90) / 1e3, fwh_percentile(sh, 99) / 1e3,
               fwh_percentile(sh, 99.9) / 1e3, (double)sh->max / 1e3,
               fwh_percentile(ss, 50) / 1e3, fwh_percentile(ss, 99) / 1e3, (double)ss->max / 1e3);
        first = 0;
    }
    printf("}}\n");
}

static void print_latency(const char *label, const fwh *h)
{
    if (h->total == 0) {
        printf("  %-10s no replies\n", label);
        return;
    }
    printf("  %-10s p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  (us, %" PRIu64
           " replies)\n",
           label, fwh_percentile(h, 50) / 1e3, fwh_percentile(h, 90) / 1e3,
           fwh_percentile(h, 99) / 1e3, fwh_percentile(h, 99.9) / 1e3, (double)h->max / 1e3,
           h->total);
}

static void report_text(const fwl *app)
{
    const fwl_stats *s = &app->st;
    double secs = run_seconds(app);
    printf("fwload: %s to %s, %u connections x pipeline %u", app->opt.mix ? app->opt.mix : app->opt.op,
           app->addr_text, app->opt.connections, app->opt.pipeline);
    if (app->opt.idle_connections)
        printf(" (+%u idle)", app->opt.idle_connections);
    if (app->opt.rate > 0)
        printf(", open loop at %.0f rps\n", app->opt.rate);
    else
        printf(", closed loop\n");
    printf("  connections %u active + %u idle established, %" PRIu64 " failed\n",
           app->established_active, app->established_idle, s->err_connect);
    printf("  requests   %" PRIu64 " sent, %" PRIu64 " answered in %.3f s: %.1f rps\n", s->sent,
           s->answered, secs, secs > 0 ? (double)s->answered / secs : 0.0);
    print_latency("latency", app->lat_all);
    /* by status, when there is more than one (otherwise it would repeat the line above) */
    if (app->lat_status[FW_STATUS_OK].from_t0.total != app->lat_all->total) {
        for (unsigned i = 0; i <= FW_STATUS_COUNT; i++) {
            const fwl_lat *l = &app->lat_status[i];
            if (l->from_t0.total == 0)
                continue;
            print_latency(status_label(i), &l->from_t0);
            if (app->opt.rate > 0)
                printf("  %-10s from the send: p50 %.1f  p99 %.1f  max %.1f\n", "",
                       fwh_percentile(&l->from_send, 50) / 1e3,
                       fwh_percentile(&l->from_send, 99) / 1e3, (double)l->from_send.max / 1e3);
        }
    }
    if (app->opt.late_ms)
        printf("  OK later than %" PRIu32 " ms: %" PRIu64 " (from the send: %" PRIu64 ")\n",
               app->opt.late_ms, s->ok_late, s->ok_late_from_send);
    printf("  status    ");
    for (unsigned i = 0; i <= FW_STATUS_COUNT; i++)
        if (s->status[i])
            printf(" %s %" PRIu64, status_label(i), s->status[i]);
    if (s->answered == 0)
        printf(" (none)");
    printf("\n  errors     %" PRIu64 " (connect %" PRIu64 ", disconnect %" PRIu64
           ", protocol %" PRIu64 ", timeout %" PRIu64 ", overflow %" PRIu64 ")\n",
           errors_total(s), s->err_connect, s->err_disconnect, s->err_protocol, s->err_timeout,
           s->err_overflow);
    if (s->first_connect_error[0])
        printf("  first connect error: %s\n", s->first_connect_error);
    if (s->first_protocol_error[0])
        printf("  first protocol error: %s\n", s->first_protocol_error);
    if (s->late || s->unsent || s->events)
        printf("  late replies %" PRIu64 ", unsent at end %" PRIu64 ", events %" PRIu64 "\n",
               s->late, s->unsent, s->events);
}

/* ---- options ------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
        "usage: fwload [-h HOST] [-p PORT] -c CONNECTIONS [-P DEPTH] (-d SECONDS | -n REQUESTS)\n"
        "              [--op NAME | --mix NAME:W,...] [options]\n"
        "\n"
        "Load generator for facewired. Keeps CONNECTIONS connections each with up to DEPTH\n"
        "requests in flight (closed loop), or sends at a fixed rate (--rate, open loop), and\n"
        "reports throughput, latency percentiles, replies per status and errors.\n"
        "\n"
        "  -h HOST                server address (default 127.0.0.1; IPv6 literals work)\n"
        "  -p PORT                server port (default %d)\n"
        "  -c N                   connections that send requests (default 1; 0 with\n"
        "                         --idle-connections only holds connections open for -d)\n"
        "  -P N                   requests in flight per connection (default 1, max %d)\n"
        "  -d SECONDS             send for this long, then wait for the replies\n"
        "  -n N                   send N requests in all\n"
        "  --op NAME              request kind (default ping):\n",
        FW_DEFAULT_PORT, FWL_MAX_PIPELINE);
    fwl_ops_help(out);
    fprintf(out,
        "  --mix NAME:W,...       weighted mix of ops, e.g. ping:3,sleep:1 (instead of --op)\n"
        "  --body-bytes N         PING body size (default 0, max %u)\n"
        "  --sleep-ms N           TEST_SLEEP duration (default 10)\n"
        "  --image FILE           JPEG for --op embed\n"
        "  --descriptor FILE      128 numbers (text: blanks, commas, brackets; e.g. the\n"
        "                         descriptor line of fwcat embed) for --op identify and\n"
        "                         enroll (default: a fixed pseudo-random descriptor)\n"
        "  --k K                  identify: matches per face, 1..100 (default 10)\n"
        "  --threshold T          identify: only matches nearer than T (default: none)\n"
        "  --subject S            enroll: the subject of every enrolled face (default fwload)\n"
        "  --rate RPS             open loop: RPS requests per second over all connections,\n"
        "                         latency counted from each request's intended send time\n"
        "  --priority P           0 normal, 1 high, 2 low (default 0)\n"
        "  --deadline-ms MS       deadline_ms of every request (default 0: server default)\n"
        "  --late-ms MS           count the OK answers later than MS (default: --deadline-ms;\n"
        "                         e.g. against a server whose deadlines are off)\n"
        "  --timeout-ms MS        a request unanswered this long is an error (default 10000)\n"
        "  --connect-timeout-ms MS  (default 5000)\n"
        "  --connect-batch N      connects in progress at once (default 200)\n"
        "  --idle-connections N   also open N connections that never send\n"
        "  --max-response N       largest reply body accepted (default 1048576)\n"
        "  --max-backlog N        open loop: requests waiting for a free slot (default 1048576)\n"
        "  --json                 print one JSON line instead of the text report\n"
        "  --progress             a progress line on stderr every second (default: if a tty)\n"
        "  --no-progress          never\n"
        "  --help                 this text\n"
        "\n"
        "Errors: failed connects, connections the server closed, protocol violations (bad\n"
        "header, unknown request_id, wrong echo), timeouts, open-loop queue overflow.\n"
        "Exit status: 0 done without errors, 3 done with errors, 2 no connection could be\n"
        "made, 1 bad usage or setup failure. ^C stops sending and reports; twice stops now.\n",
        FW_PING_MAX_BODY);
}

/* Strict unsigned parse: the whole string, within [lo, hi]. */
static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

enum {
    O_OP = 256, O_MIX, O_BODY, O_SLEEP, O_IMAGE, O_DESC, O_K, O_THRESHOLD, O_SUBJECT, O_RATE, O_PRIO, O_DEADLINE, O_TIMEOUT,
    O_CTIMEOUT, O_CBATCH, O_LATE, O_IDLE, O_MAXRESP, O_MAXBACKLOG, O_JSON, O_PROGRESS, O_NOPROGRESS,
    O_HELP
};

/* Returns 0, 1 for --help, or -1 after printing what is wrong. */
static int parse_args(int argc, char **argv, fwl_opts *o)
{
    static const struct option longopts[] = {
        {"op", required_argument, NULL, O_OP},
        {"mix", required_argument, NULL, O_MIX},
        {"body-bytes", required_argument, NULL, O_BODY},
        {"sleep-ms", required_argument, NULL, O_SLEEP},
        {"image", required_argument, NULL, O_IMAGE},
        {"descriptor", required_argument, NULL, O_DESC},
        {"k", required_argument, NULL, O_K},
        {"threshold", required_argument, NULL, O_THRESHOLD},
        {"subject", required_argument, NULL, O_SUBJECT},
        {"rate", required_argument, NULL, O_RATE},
        {"priority", required_argument, NULL, O_PRIO},
        {"deadline-ms", required_argument, NULL, O_DEADLINE},
        {"late-ms", required_argument, NULL, O_LATE},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"connect-timeout-ms", required_argument, NULL, O_CTIMEOUT},
        {"connect-batch", required_argument, NULL, O_CBATCH},
        {"idle-connections", required_argument, NULL, O_IDLE},
        {"max-response", required_argument, NULL, O_MAXRESP},
        {"max-backlog", required_argument, NULL, O_MAXBACKLOG},
        {"json", no_argument, NULL, O_JSON},
        {"progress", no_argument, NULL, O_PROGRESS},
        {"no-progress", no_argument, NULL, O_NOPROGRESS},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    *o = (fwl_opts){
        .host = "127.0.0.1", .port = FW_DEFAULT_PORT, .connections = 1, .pipeline = 1,
        .op = "ping", .sleep_ms = 10, .k = 10, .timeout_ms = 10000, .connect_timeout_ms = 5000,
        .connect_batch = 200, .max_response = 1u << 20, .max_backlog = 1u << 20,
    };
    int have_d = 0, have_n = 0, have_op = 0, have_late = 0;
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h:p:c:P:d:n:", longopts, NULL)) != -1) {
        uint64_t v = 0;
        const char *bad = NULL;
        switch (ch) {
        case 'h': o->host = optarg; break;
        case 'p':
            if (parse_u64(optarg, 1, 65535, &v)) bad = "-p: want a port 1..65535";
            o->port = (int)v;
            break;
        case 'c':
            if (parse_u64(optarg, 0, 1000000, &v)) bad = "-c: want 0..1000000";
            o->connections = (unsigned)v;
            break;
        case 'P':
            if (parse_u64(optarg, 1, FWL_MAX_PIPELINE, &v)) bad = "-P: want 1..4096";
            o->pipeline = (unsigned)v;
            break;
        case 'd':
            if (parse_double(optarg, 0.001, 86400 * 7, &o->duration_s)) bad = "-d: want seconds > 0";
            have_d = 1;
            break;
        case 'n':
            if (parse_u64(optarg, 1, UINT64_MAX / 2, &o->requests)) bad = "-n: want a count > 0";
            have_n = 1;
            break;
        case O_OP: o->op = optarg; have_op = 1; break;
        case O_MIX: o->mix = optarg; break;
        case O_BODY:
            if (parse_u64(optarg, 0, FW_PING_MAX_BODY, &v)) bad = "--body-bytes: want 0..65536";
            o->body_bytes = (uint32_t)v;
            break;
        case O_SLEEP:
            if (parse_u64(optarg, 0, UINT32_MAX, &v)) bad = "--sleep-ms: want a u32";
            o->sleep_ms = (uint32_t)v;
            break;
        case O_IMAGE: o->image = optarg; break;
        case O_DESC: o->descriptor = optarg; break;
        case O_K:
            if (parse_u64(optarg, 1, 100, &v)) bad = "--k: want 1..100";
            o->k = (uint16_t)v;
            break;
        case O_THRESHOLD: {
            double t = 0;
            if (parse_double(optarg, 0, 1e30, &t)) bad = "--threshold: want a distance >= 0";
            o->threshold = (float)t;
            o->has_threshold = 1;
            break;
        }
        case O_SUBJECT: o->subject = optarg; break;
        case O_RATE:
            if (parse_double(optarg, 0.001, 1e9, &o->rate)) bad = "--rate: want requests/s > 0";
            break;
        case O_PRIO:
            if (parse_u64(optarg, 0, FW_PRIO_COUNT - 1, &v)) bad = "--priority: want 0, 1 or 2";
            o->priority = (uint8_t)v;
            break;
        case O_DEADLINE:
            if (parse_u64(optarg, 0, UINT32_MAX, &v)) bad = "--deadline-ms: want a u32";
            o->deadline_ms = (uint32_t)v;
            break;
        case O_LATE:
            if (parse_u64(optarg, 0, UINT32_MAX, &v)) bad = "--late-ms: want a u32";
            o->late_ms = (uint32_t)v;
            have_late = 1;
            break;
        case O_TIMEOUT:
            if (parse_u64(optarg, 1, 3600000, &v)) bad = "--timeout-ms: want 1..3600000";
            o->timeout_ms = (uint32_t)v;
            break;
        case O_CTIMEOUT:
            if (parse_u64(optarg, 1, 3600000, &v)) bad = "--connect-timeout-ms: want 1..3600000";
            o->connect_timeout_ms = (uint32_t)v;
            break;
        case O_CBATCH:
            if (parse_u64(optarg, 1, 100000, &v)) bad = "--connect-batch: want 1..100000";
            o->connect_batch = (unsigned)v;
            break;
        case O_IDLE:
            if (parse_u64(optarg, 0, 1000000, &v)) bad = "--idle-connections: want 0..1000000";
            o->idle_connections = (unsigned)v;
            break;
        case O_MAXRESP:
            if (parse_u64(optarg, 0, FW_DEFAULT_MAX_BODY, &v)) bad = "--max-response: want 0..16777216";
            o->max_response = (uint32_t)v;
            break;
        case O_MAXBACKLOG:
            if (parse_u64(optarg, 1, 1u << 26, &v)) bad = "--max-backlog: want 1..67108864";
            o->max_backlog = (uint32_t)v;
            break;
        case O_JSON: o->json = 1; break;
        case O_PROGRESS: o->progress = 1; break;
        case O_NOPROGRESS: o->progress = -1; break;
        case O_HELP: return 1;
        case ':':
            fprintf(stderr, "fwload: %s needs a value (see --help)\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "fwload: unknown option %s (see --help)\n", argv[optind - 1]);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "fwload: %s, got '%s'\n", bad, optarg);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "fwload: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    if (!have_late)
        o->late_ms = o->deadline_ms;
    if (have_d == have_n) {
        fprintf(stderr, "fwload: give exactly one of -d SECONDS and -n REQUESTS\n");
        return -1;
    }
    if (o->mix && have_op) {
        fprintf(stderr, "fwload: --op and --mix exclude each other\n");
        return -1;
    }
    if (o->connections == 0 && (o->idle_connections == 0 || have_n)) {
        fprintf(stderr, "fwload: -c 0 only holds --idle-connections open for -d seconds\n");
        return -1;
    }
    if ((uint64_t)o->connections + o->idle_connections > 1000000) {
        fprintf(stderr, "fwload: at most 1000000 connections in all\n");
        return -1;
    }
    return 0;
}

/* Each connection is a descriptor: raise the soft limit to the hard one, and say so if even
 * that is not enough (the connects beyond it then fail with EMFILE and are counted). */
static void raise_fd_limit(unsigned want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t need = (rlim_t)want + 32; /* stdio, the loop's own descriptors, the image file */
    if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need)
        fprintf(stderr,
                "fwload: warning: descriptor limit %llu is below the %llu needed; connections "
                "beyond it will fail (raise it with ulimit -n as root)\n",
                (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

static int resolve(fwl *app)
{
    uv_getaddrinfo_t req;
    struct addrinfo hints;
    char port[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof port, "%d", app->opt.port);
    /* No callback: resolves synchronously, before the loop runs. */
    int rc = uv_getaddrinfo(&app->loop, &req, NULL, app->opt.host, port, &hints);
    if (rc != 0) {
        fprintf(stderr, "fwload: cannot resolve %s: %s\n", app->opt.host, uv_strerror(rc));
        return -1;
    }
    memcpy(&app->addr, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    uv_freeaddrinfo(req.addrinfo);
    char ip[64] = "?";
    if (app->addr.ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)&app->addr, ip, sizeof ip);
        snprintf(app->addr_text, sizeof app->addr_text, "[%s]:%d", ip, app->opt.port);
    } else {
        uv_ip4_name((const struct sockaddr_in *)&app->addr, ip, sizeof ip);
        snprintf(app->addr_text, sizeof app->addr_text, "%s:%d", ip, app->opt.port);
    }
    return 0;
}

static void app_free(fwl *app)
{
    /* Connections' own buffers were freed by their close callbacks. */
    free(app->conns);
    free(app->queue);
    free(app->hungry);
    free(app->lat_all);
    free(app->lat_status);
    free(app->lat_interval);
    free(app->readbuf);
    fwl_ops_free(&app->ops);
}

int main(int argc, char **argv)
{
    fwl *app = calloc(1, sizeof *app);
    int loop_ok = 0, rc = 1;
    char err[256];
    if (!app) {
        fprintf(stderr, "fwload: out of memory\n");
        return 1;
    }
    int pa = parse_args(argc, argv, &app->opt);
    if (pa != 0) {
        if (pa > 0) {
            usage(stdout);
            rc = 0;
        }
        goto err;
    }
    fwl_opts *o = &app->opt;
    if (fwl_ops_init(&app->ops, o, err, sizeof err) != 0) {
        fprintf(stderr, "fwload: %s\n", err);
        goto err;
    }
    if (uv_loop_init(&app->loop) != 0) {
        fprintf(stderr, "fwload: uv_loop_init failed\n");
        goto err;
    }
    loop_ok = 1;
    if (resolve(app) != 0)
        goto err;
    raise_fd_limit(o->connections + o->idle_connections);

    app->nactive = o->connections;
    app->nconns = o->connections + o->idle_connections;
    app->conns = calloc(app->nconns, sizeof *app->conns);
    app->lat_all = malloc(sizeof(fwh));
    app->lat_status = malloc((FW_STATUS_COUNT + 1) * sizeof *app->lat_status);
    app->lat_interval = malloc(sizeof(fwh));
    app->readbuf = malloc(FWL_READBUF);
    if (!app->conns || !app->lat_all || !app->lat_status || !app->lat_interval || !app->readbuf) {
        fprintf(stderr, "fwload: out of memory for %u connections\n", app->nconns);
        goto err;
    }
    if (o->rate > 0) {
        app->q_cap = o->max_backlog;
        app->queue = malloc(app->q_cap * sizeof *app->queue);
        app->hungry = malloc((app->nactive ? app->nactive : 1) * sizeof *app->hungry);
        if (!app->queue || !app->hungry) {
            fprintf(stderr, "fwload: out of memory for the open-loop queue\n");
            goto err;
        }
        app->ns_per_req = 1e9 / o->rate;
    }
    fwh_reset(app->lat_all);
    for (unsigned i = 0; i <= FW_STATUS_COUNT; i++) {
        fwh_reset(&app->lat_status[i].from_t0);
        fwh_reset(&app->lat_status[i].from_send);
    }
    fwh_reset(app->lat_interval);
    for (unsigned i = 0; i < app->nconns; i++) {
        fwl_conn *c = &app->conns[i];
        c->app = app;
        c->idle = i >= app->nactive;
        c->tcp.data = c;
        c->creq.data = c;
        c->wreq.data = c;
    }
    app->to_send = o->requests;
    app->show_progress = o->progress > 0 || (o->progress == 0 && isatty(STDERR_FILENO));

    uv_timer_init(&app->loop, &app->tick);
    uv_timer_init(&app->loop, &app->pacer);
    uv_timer_init(&app->loop, &app->end);
    app->end.data = app;
    uv_signal_init(&app->loop, &app->sigint);
    app->tick.data = app;
    app->pacer.data = app;
    app->sigint.data = app;
    uv_signal_start(&app->sigint, on_sigint, SIGINT);
    uv_timer_start(&app->tick, on_tick, FWL_TICK_MS, FWL_TICK_MS);

    app->phase = P_CONNECTING;
    app->t_connect0 = now_ns();
    app->progress_last_t = app->t_connect0;
    start_connects(app);
    uv_run(&app->loop, UV_RUN_DEFAULT);

    if (o->json)
        report_json(app);
    else
        report_text(app);
    fflush(stdout);
    if (app->established_active + app->established_idle == 0)
        rc = 2;
    else
        rc = errors_total(&app->st) ? 3 : 0;
err:
    if (loop_ok && uv_loop_close(&app->loop) != 0)
        fprintf(stderr, "fwload: warning: handles left open at exit\n");
    app_free(app);
    free(app);
    return rc;
}
