/*
 * metrics.c — GET /metrics and GET /health over HTTP/1.x (see metrics.h).
 *
 * One request per connection: we answer the first complete request and close, which is what
 * Prometheus scrapers and load balancers' health checks expect of "Connection: close", and
 * keeps the state per connection to a parser, a fixed read buffer and a timer.
 */
#include "server/metrics.h"

#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- string builder ------------------------------------------------------------------------ */

void fw_sb_init_fixed(fw_sb *b, char *buf, size_t cap)
{
    b->p = buf;
    b->len = 0;
    b->cap = cap;
    b->fixed = 1;
    b->err = 0;
    if (cap)
        buf[0] = '\0';
}

void fw_sb_init_dyn(fw_sb *b)
{
    memset(b, 0, sizeof *b);
}

void fw_sb_printf(fw_sb *b, const char *fmt, ...)
{
    if (b->err)
        return;
    for (;;) {
        size_t room = b->cap - b->len;
        va_list ap;
        va_start(ap, fmt);
        int n = room ? vsnprintf(b->p + b->len, room, fmt, ap) : vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->err = 1;
            break;
        }
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        if (b->fixed) {
            b->err = 1; /* drop the whole line rather than cut it */
            break;
        }
        size_t ncap = b->cap ? b->cap * 2 : 4096;
        while (ncap - b->len <= (size_t)n)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->err = 1;
            break;
        }
        b->p = np;
        b->cap = ncap;
    }
    if (b->p && b->cap)
        b->p[b->len < b->cap ? b->len : b->cap - 1] = '\0';
}

void fw_sb_free(fw_sb *b)
{
    if (!b->fixed)
        free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- listener and connections -------------------------------------------------------------- */

typedef struct mconn mconn;

struct fw_metrics {
    uv_loop_t *loop;
    uv_tcp_t listener;
    fw_metrics_render_fn render;
    void *arg;
    fw_metrics_health_fn health; /* NULL: /health answers 503 "starting" */
    void *health_arg;
    const fw_log *log;
    char addr[64];
    mconn *conns;            /* open connections (for stop) */
    int nconns;
    int handles_open;        /* listener + each connection's two handles */
    int stopping;
    void (*on_closed)(void *);
    void *closed_arg;
};

struct mconn {
    uv_tcp_t tcp;            /* tcp.data == this */
    uv_timer_t timer;        /* request timeout */
    fw_metrics *m;
    mconn *prev, *next;
    http_parser parser;      /* parser.data == this */
    char url[512];
    size_t url_len;
    int url_too_long;
    size_t received;
    int complete;
    int responding;          /* a response is being written; ignore further input */
    int closing;
    int handles_open;
    char rbuf[2048];
    uv_write_t wr;
    char *resp;              /* owned while writing */
};

static void metrics_maybe_freed(fw_metrics *m)
{
    if (!m->stopping || m->handles_open > 0)
        return;
    void (*cb)(void *) = m->on_closed;
    void *arg = m->closed_arg;
    free(m);
    if (cb)
        cb(arg);
}

static void mconn_handle_closed_cb(uv_handle_t *h)
{
    mconn *mc = h->data;
    fw_metrics *m = mc->m;
    m->handles_open--;
    if (--mc->handles_open == 0) {
        free(mc->resp);
        free(mc);
        metrics_maybe_freed(m);
    }
}

static void mconn_close(mconn *mc)
{
    if (mc->closing)
        return;
    mc->closing = 1;
    fw_metrics *m = mc->m;
    if (mc->prev)
        mc->prev->next = mc->next;
    else
        m->conns = mc->next;
    if (mc->next)
        mc->next->prev = mc->prev;
    m->nconns--;
    uv_close((uv_handle_t *)&mc->tcp, mconn_handle_closed_cb);
    uv_close((uv_handle_t *)&mc->timer, mconn_handle_closed_cb);
}

static void write_done_cb(uv_write_t *w, int status)
{
    (void)status;
    mconn_close(w->data);
}

#define CTYPE_PROM "text/plain; version=0.0.4; charset=utf-8" /* Prometheus text format */
#define CTYPE_TEXT "text/plain; charset=utf-8"

/* Send the response and close. head_only (a HEAD request): the headers a GET would get,
 * Content-Length included, and no body. */
static void respond(mconn *mc, int code, const char *reason, const char *ctype, const char *body,
                    size_t body_len, int head_only)
{
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\n"
                      "Content-Type: %s\r\n"
                      "Content-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      code, reason, ctype, body_len);
    mc->responding = 1;
    uv_read_stop((uv_stream_t *)&mc->tcp);
    /* the timer keeps running: a scraper that never reads its response is closed on time too */
    if (head_only)
        body_len = 0;
    mc->resp = malloc((size_t)hn + body_len);
    if (!mc->resp) {
        mconn_close(mc);
        return;
    }
    memcpy(mc->resp, head, (size_t)hn);
    if (body_len)
        memcpy(mc->resp + hn, body, body_len);
    uv_buf_t buf = uv_buf_init(mc->resp, (unsigned)((size_t)hn + body_len));
    mc->wr.data = mc;
    if (uv_write(&mc->wr, (uv_stream_t *)&mc->tcp, &buf, 1, write_done_cb) != 0)
        mconn_close(mc);
}

static void respond_text(mconn *mc, int code, const char *reason, const char *text)
{
    respond(mc, code, reason, CTYPE_TEXT, text, strlen(text), 0);
}

static int on_url_cb(http_parser *p, const char *at, size_t len)
{
    mconn *mc = p->data;
    if (len > sizeof mc->url - 1 - mc->url_len) {
        mc->url_too_long = 1;
        return 1; /* stops the parser: answered 400 */
    }
    memcpy(mc->url + mc->url_len, at, len);
    mc->url_len += len;
    mc->url[mc->url_len] = '\0';
    return 0;
}

static int on_message_complete_cb(http_parser *p)
{
    mconn *mc = p->data;
    mc->complete = 1;
    http_parser_pause(p, 1); /* one request per connection: ignore anything after it */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url_cb,
    .on_message_complete = on_message_complete_cb,
};

static void serve(mconn *mc)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(mc->url, mc->url_len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH))) {
        respond_text(mc, 400, "Bad Request", "bad request target\n");
        return;
    }
    const char *path = mc->url + u.field_data[UF_PATH].off;
    size_t plen = u.field_data[UF_PATH].len;
    int is_metrics = plen == 8 && memcmp(path, "/metrics", 8) == 0;
    int is_health = plen == 7 && memcmp(path, "/health", 7) == 0;
    if (!is_metrics && !is_health) {
        respond_text(mc, 404, "Not Found", "not found; try /metrics or /health\n");
        return;
    }
    if (mc->parser.method != HTTP_GET && mc->parser.method != HTTP_HEAD) {
        respond_text(mc, 405, "Method Not Allowed", "only GET\n");
        return;
    }
    int head_only = mc->parser.method == HTTP_HEAD;
    if (is_health) {
        /* the reason goes in the body, so that `curl` and a balancer's log show why */
        char why[128] = "starting"; /* no callback yet: see fw_metrics_set_health */
        char body[160];
        fw_metrics *m = mc->m;
        if (m->health)
            why[0] = '\0';
        if (m->health && m->health(m->health_arg, why, sizeof why)) {
            respond(mc, 200, "OK", CTYPE_TEXT, "ok\n", 3, head_only);
            return;
        }
        int n = snprintf(body, sizeof body, "%s\n", why[0] ? why : "unhealthy");
        size_t blen = n < 0 ? 0 : (size_t)n >= sizeof body ? sizeof body - 1 : (size_t)n;
        respond(mc, 503, "Service Unavailable", CTYPE_TEXT, body, blen, head_only);
        return;
    }
    fw_sb sb;
    fw_sb_init_dyn(&sb);
    mc->m->render(mc->m->arg, &sb);
    if (sb.err) {
        fw_sb_free(&sb);
        respond_text(mc, 500, "Internal Server Error", "out of memory\n");
        return;
    }
    respond(mc, 200, "OK", CTYPE_PROM, sb.p ? sb.p : "", sb.len, head_only);
    fw_sb_free(&sb);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    mconn *mc = h->data;
    *buf = uv_buf_init(mc->rbuf, sizeof mc->rbuf);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    mconn *mc = s->data;
    if (mc->responding || mc->closing)
        return;
    if (n < 0) {
        mconn_close(mc); /* EOF or error before a complete request: nothing to answer */
        return;
    }
    if (n == 0)
        return;
    mc->received += (size_t)n;
    size_t used = http_parser_execute(&mc->parser, &parser_settings, buf->base, (size_t)n);
    (void)used;
    if (mc->complete) {
        serve(mc);
        return;
    }
    if (HTTP_PARSER_ERRNO(&mc->parser) != HPE_OK || mc->url_too_long) {
        respond_text(mc, 400, "Bad Request", "bad request\n");
        return;
    }
    if (mc->received > FW_METRICS_MAX_REQUEST)
        respond_text(mc, 400, "Bad Request", "request too large\n");
}

static void timeout_cb(uv_timer_t *t)
{
    mconn_close(t->data);
}

static void connection_cb(uv_stream_t *server, int status)
{
    fw_metrics *m = server->data;
    if (status < 0 || m->stopping)
        return;
    mconn *mc = calloc(1, sizeof *mc);
    if (!mc) {
        /* Without a handle we cannot accept; libuv then pauses this listener until the next
         * uv_accept. Scrapes stop, the server goes on: the right trade under memory pressure. */
        fw_log_error(m->log, "metrics: out of memory accepting a connection", NULL);
        return;
    }
    mc->m = m;
    uv_tcp_init(m->loop, &mc->tcp);
    uv_timer_init(m->loop, &mc->timer);
    mc->tcp.data = mc;
    mc->timer.data = mc;
    mc->handles_open = 2;
    m->handles_open += 2;
    mc->next = m->conns;
    if (m->conns)
        m->conns->prev = mc;
    m->conns = mc;
    m->nconns++;
    if (uv_accept(server, (uv_stream_t *)&mc->tcp) != 0 || m->nconns > FW_METRICS_MAX_CONNS) {
        mconn_close(mc);
        return;
    }
    http_parser_init(&mc->parser, HTTP_REQUEST);
    mc->parser.data = mc;
    uv_timer_start(&mc->timer, timeout_cb, FW_METRICS_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&mc->tcp, alloc_cb, read_cb) != 0)
        mconn_close(mc);
}

int fw_metrics_parse_addr(const char *hp, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[64];
    const char *colon, *hstart = hp;
    size_t hlen;
    if (hp[0] == '[') {
        const char *close = strchr(hp, ']');
        if (!close || close[1] != ':')
            goto bad;
        hstart = hp + 1;
        hlen = (size_t)(close - hstart);
        colon = close + 1;
    } else {
        colon = strrchr(hp, ':');
        if (!colon)
            goto bad;
        hlen = (size_t)(colon - hp);
    }
    if (hlen == 0 || hlen >= sizeof host)
        goto bad;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
        goto bad;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
bad:
    snprintf(err, errlen, "%s is not HOST:PORT with a numeric host (127.0.0.1:9100, [::1]:9100)", hp);
    return -1;
}

static void listener_closed_cb(uv_handle_t *h)
{
    fw_metrics *m = h->data;
    m->handles_open--;
    metrics_maybe_freed(m);
}

int fw_metrics_start(uv_loop_t *loop, const char *hostport, fw_metrics_render_fn render, void *arg,
                     const fw_log *log, fw_metrics **out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    *out = NULL;
    if (fw_metrics_parse_addr(hostport, &ss, err, errlen) != 0)
        return -1;
    fw_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->loop = loop;
    m->render = render;
    m->arg = arg;
    m->log = log;
    uv_tcp_init(loop, &m->listener);
    m->listener.data = m;
    m->handles_open = 1;
    int rc = uv_tcp_bind(&m->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->listener, 64, connection_cb);
    if (rc != 0) {
        snprintf(err, errlen, "--metrics-listen %s: %s", hostport, uv_strerror(rc));
        m->stopping = 1;
        uv_close((uv_handle_t *)&m->listener, listener_closed_cb);
        return -1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getsockname(&m->listener, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
            snprintf(m->addr, sizeof m->addr, "[%s]:%d", ip, port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
            snprintf(m->addr, sizeof m->addr, "%s:%d", ip, port);
        }
    }
    fw_log_info(log, "metrics listening", "addr=%s", m->addr);
    *out = m;
    return 0;
}

void fw_metrics_set_health(fw_metrics *m, fw_metrics_health_fn health, void *arg)
{
    m->health = health;
    m->health_arg = arg;
}

const char *fw_metrics_addr(const fw_metrics *m)
{
    return m->addr;
}

void fw_metrics_stop(fw_metrics *m, void (*on_closed)(void *arg), void *arg)
{
    if (m->stopping)
        return;
    m->stopping = 1;
    m->on_closed = on_closed;
    m->closed_arg = arg;
    while (m->conns)
        mconn_close(m->conns);
    uv_close((uv_handle_t *)&m->listener, listener_closed_cb);
}
