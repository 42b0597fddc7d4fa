/*
 * facewire.c — libfacewire: one blocking, timeout-bounded connection to facewired.
 *
 * Shape of the code, bottom up:
 *   - transport: a non-blocking socket driven by poll() with the time left of the current
 *     call, so that "blocking with a timeout" holds for connect, every partial write and
 *     every partial read alike, and EINTR never shortens or lengthens a wait;
 *   - requests: a small builder that writes the fixed fields into the tx buffer and points
 *     iovecs at the caller's large payloads (JPEGs), so a device never needs a second copy of
 *     a picture; the whole frame goes out with sendmsg(MSG_NOSIGNAL);
 *   - responses: frames are read into the rx buffer and parsed in place. A frame handed to the
 *     caller is "claimed" and stays put until the next call has sent its request (so results
 *     may be passed back as arguments); frames for other request ids stay queued behind it;
 *   - operations: encode, send, receive by request_id, decode with the bounds-checked
 *     fw_reader into the caller's structs; BUSY / UNAVAILABLE optionally retried.
 *
 * Secure sessions (libsodium, a later issue) hook in at three marked points: session_start()
 * after connect (HELLO/AUTH), req_send() to seal bodies, recv_frame() to open SEALED ones.
 */
#ifndef _GNU_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "facewire.h"
#include "client/fw_secure.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#if defined(__linux__)
#include <linux/sockios.h>
#include <sys/ioctl.h>
#endif
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* BSDs: SO_NOSIGPIPE is set on the socket instead */
#endif

#define DEFAULT_TIMEOUT_MS 5000u
#define DEFAULT_RX (256u * 1024u)
#define DEFAULT_TX (4u * 1024u)
#define MIN_RX 256u
#define MIN_TX 2048u
#define MAX_IOV 8
#define ALIGN 16u

#define HOST_MAX 255 /* cfg.host, without the NUL */
#define PORT_MAX 31  /* cfg.port */

/* One server to connect to. The three strings live in the pool at the end of the client's
 * block (see fw_client_open()). */
typedef struct endpoint {
    const char *text;  /* "host:port" / "[v6]:port": for messages and fw_client_endpoint() */
    const char *host;  /* for getaddrinfo: brackets removed */
    const char *port;
} endpoint;

struct fw_client {
    fw_client_config cfg;  /* copy; host, port, endpoints and mem point at nothing */
    endpoint ep[FW_MAX_ENDPOINTS];
    int n_ep;              /* >= 1: cfg.endpoints, or host/port as the only one */
    int ep_cur;            /* the endpoint in use, or the one the next connect starts at */
    int managed;           /* cfg.endpoints given: calls connect on their own, failover */
    uint32_t timeout_ms;
    int fd;                /* -1 when not connected */
    uint32_t next_id;
    uint32_t rng;          /* xorshift32 state for retry jitter */
    void *heap;            /* what fw_client_open() malloc'd, or NULL for caller memory */
    uint8_t *rx;
    size_t rx_cap, rx_len;
    int claimed;           /* a frame at rx[claim_off] was handed out */
    size_t claim_off, claim_len;
    uint8_t *tx;
    size_t tx_cap;
    uint32_t retry_after;
    char errmsg[256];
    /* Secure sessions (FW_WITH_SODIUM builds only). Once established, frames in
     * rx[0..rx_open) have been opened in place (tag removed, SEALED cleared) and are handled
     * like plaintext ones; bytes after rx_open are still sealed and are opened strictly in
     * arrival order, whatever request_id the caller waits for. */
    int secure;
    fw_secure_identity id;
    uint8_t server_pk[FW_SECURE_PK_LEN];
    fw_secure_session sess;
    size_t rx_open;
};

/* ---- errors ------------------------------------------------------------------------------ */

const char *fw_strerror(int rc)
{
    switch (rc) {
    case FW_OK: return "OK";
    case FW_ERR_INVALID: return "FW_ERR_INVALID";
    case FW_ERR_NOMEM: return "FW_ERR_NOMEM";
    case FW_ERR_RESOLVE: return "FW_ERR_RESOLVE";
    case FW_ERR_CONNECT: return "FW_ERR_CONNECT";
    case FW_ERR_TIMEOUT: return "FW_ERR_TIMEOUT";
    case FW_ERR_IO: return "FW_ERR_IO";
    case FW_ERR_CLOSED: return "FW_ERR_CLOSED";
    case FW_ERR_PROTOCOL: return "FW_ERR_PROTOCOL";
    case FW_ERR_MALFORMED: return "FW_ERR_MALFORMED";
    case FW_ERR_TOO_LARGE: return "FW_ERR_TOO_LARGE";
    case FW_ERR_RX_FULL: return "FW_ERR_RX_FULL";
    case FW_ERR_NOT_CONNECTED: return "FW_ERR_NOT_CONNECTED";
    case FW_ERR_UNSUPPORTED: return "FW_ERR_UNSUPPORTED";
    case FW_ERR_AUTH: return "FW_ERR_AUTH";
    case FW_ERR_WOULD_BLOCK: return "FW_ERR_WOULD_BLOCK";
    default: break;
    }
    if (rc > 0 && rc <= 0xFFFF)
        return fw_status_name((uint16_t)rc);
    return "FW_ERR_UNKNOWN";
}

static void drop_conn(fw_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->rx_len = 0;
    c->claimed = 0;
    c->rx_open = 0;
#ifdef FW_WITH_SODIUM
    fw_secure_session_wipe(&c->sess);
#endif
}

/* The connection ends in an error: the next connect starts at the next endpoint, so that a
 * dead or misbehaving server is not the first one tried again. */
static void conn_failed(fw_client *c)
{
    if (c->fd < 0)
        return;
    drop_conn(c);
    c->ep_cur = (c->ep_cur + 1) % c->n_ep;
}

/* A secure session whose handshake is complete: requests are sealed, responses opened. */
static int sealed(const fw_client *c)
{
#ifdef FW_WITH_SODIUM
    return c->secure && fw_secure_state(&c->sess) == FW_SEC_ESTABLISHED;
#else
    (void)c;
    return 0;
#endif
}

/* How much of rx may be parsed as frames: in a session only what has been opened. */
static size_t rx_scannable(const fw_client *c)
{
    return sealed(c) ? c->rx_open : c->rx_len;
}

/* Errors after which the byte stream cannot be trusted, or a late answer could be taken for
 * the next one: the connection is closed (see the header's RETURN VALUES). */
static int closes_conn(int rc)
{
    return rc == FW_ERR_TIMEOUT || rc == FW_ERR_IO || rc == FW_ERR_CLOSED ||
           rc == FW_ERR_PROTOCOL || rc == FW_ERR_MALFORMED || rc == FW_ERR_RX_FULL;
}

/* strerror() may share a buffer between threads; the library promises none is shared. */
static const char *errtext(int e, char *buf, size_t cap)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(e, buf, cap); /* the GNU variant returns the text */
#else
    if (strerror_r(e, buf, cap) != 0)
        snprintf(buf, cap, "error %d", e);
    return buf;
#endif
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int fail(fw_client *c, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
    if (closes_conn(rc))
        conn_failed(c);
    return rc;
}

const char *fw_client_errmsg(const fw_client *c) { return c ? c->errmsg : "no client"; }
uint32_t fw_client_retry_after(const fw_client *c) { return c ? c->retry_after : 0; }
int fw_client_is_connected(const fw_client *c) { return c && c->fd >= 0; }
const char *fw_client_endpoint(const fw_client *c) { return c ? c->ep[c->ep_cur].text : ""; }

int fw_client_op_resendable(uint8_t opcode)
{
    switch (opcode) {
    case FW_OP_PING:
    case FW_OP_INFO:
    case FW_OP_DETECT:
    case FW_OP_EMBED:
    case FW_OP_VERIFY:
    case FW_OP_IDENTIFY:
    case FW_OP_LIST:
    case FW_OP_GALLERY_INFO:
    case FW_OP_TEST_SLEEP:
    case FW_OP_TEST_FAIL:
        return 1;
    default:
        /* ENROLL, DELETE: may have been carried out. STREAM_*: the stream was the dead
         * connection's. HELLO/AUTH: belong to one connection's handshake. TEST_RELEASE
         * counts (each lets one hold go), TEST_HOLD waits for one. Unknown: who knows. */
        return 0;
    }
}
void fw_client_set_timeout(fw_client *c, uint32_t timeout_ms)
{
    if (c)
        c->timeout_ms = timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS;
}

/* ---- time -------------------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int ms_left(uint64_t deadline)
{
    uint64_t now = now_ms();
    if (now >= deadline)
        return 0;
    uint64_t left = deadline - now;
    return left > INT_MAX ? INT_MAX : (int)left;
}

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L}, rem;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR)
        ts = rem;
}

/* ---- config and lifetime ------------------------------------------------------------------ */

void fw_client_config_init(fw_client_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->port = "7420";
    cfg->timeout_ms = DEFAULT_TIMEOUT_MS;
    cfg->priority = FW_PRIO_NORMAL;
    cfg->rx_buf_size = DEFAULT_RX;
    cfg->tx_buf_size = DEFAULT_TX;
    cfg->retry.max_attempts = 5;
    cfg->retry.base_ms = 50;
    cfg->retry.max_ms = 2000;
}

/* n > UINT32_MAX, written so that 32-bit targets (where it is always false) compile clean. */
static int over_u32(size_t n) { return (n >> 16 >> 16) != 0; }

static size_t round_up(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

/* Where host and port are in an endpoint's text ("host:port", "[v6]:port"). */
typedef struct ep_split {
    size_t len;         /* of the whole text */
    size_t hoff, hlen;  /* the host, brackets excluded */
    size_t poff, plen;  /* the port */
} ep_split;

/* Pool bytes of one endpoint: its text, host and port, each with a NUL. */
static size_t ep_pool_bytes(const ep_split *sp) { return sp->len + sp->hlen + sp->plen + 3; }

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int bad_config(char *err, size_t cap, const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return FW_ERR_INVALID;
}

/* Check one endpoint string (num counts from 1, for the message) and find host and port. The
 * port must be numeric: an endpoint list is written by hand into a config file, and a typo
 * is better caught at open than by a service lookup at the first failover. */
static int split_endpoint(const char *s, int num, ep_split *sp, char *err, size_t cap)
{
    if (!s)
        return bad_config(err, cap, "bad endpoint %d: NULL", num);
    size_t len = strnlen(s, FW_ENDPOINT_MAX + 1);
    if (len > FW_ENDPOINT_MAX)
        return bad_config(err, cap, "bad endpoint %d: longer than %d bytes", num, FW_ENDPOINT_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch >= 0x7f)
            return bad_config(err, cap, "bad endpoint %d: byte 0x%02x is not printable ASCII", num, ch);
    }
    /* From here on s is short and printable: it may be quoted in the messages. */
    const char *colon;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return bad_config(err, cap, "bad endpoint \"%s\": expected HOST:PORT or [IPV6]:PORT", s);
        sp->hoff = 1;
        sp->hlen = (size_t)(rb - s) - 1;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return bad_config(err, cap, "bad endpoint \"%s\": expected HOST:PORT or [IPV6]:PORT", s);
        if (memchr(s, ':', (size_t)(colon - s)))
            return bad_config(err, cap, "bad endpoint \"%s\": an IPv6 address goes in brackets, "
                              "[ADDR]:PORT", s);
        sp->hoff = 0;
        sp->hlen = (size_t)(colon - s);
    }
    if (sp->hlen == 0)
        return bad_config(err, cap, "bad endpoint \"%s\": empty host", s);
    if (memchr(s + sp->hoff, '[', sp->hlen) || memchr(s + sp->hoff, ']', sp->hlen))
        return bad_config(err, cap, "bad endpoint \"%s\": expected HOST:PORT or [IPV6]:PORT", s);
    sp->poff = (size_t)(colon + 1 - s);
    sp->plen = len - sp->poff;
    unsigned long port = 0;
    int ok = sp->plen >= 1 && sp->plen <= 5;
    for (size_t i = 0; ok && i < sp->plen; i++) {
        char ch = s[sp->poff + i];
        ok = ch >= '0' && ch <= '9';
        port = port * 10 + (unsigned long)(ch - '0');
    }
    if (!ok || port < 1 || port > 65535)
        return bad_config(err, cap, "bad endpoint \"%s\": port must be a number 1..65535", s);
    sp->len = len;
    return FW_OK;
}

/* cfg.host/cfg.port as the only endpoint, its text composed the way an endpoint is written. */
static int split_host_port(const char *host, const char *port, ep_split *sp, char *err, size_t cap)
{
    size_t hlen = strnlen(host, HOST_MAX + 1), plen = strnlen(port, PORT_MAX + 1);
    if (hlen == 0 || hlen > HOST_MAX)
        return bad_config(err, cap, "host must be 1..%d bytes", HOST_MAX);
    if (plen == 0 || plen > PORT_MAX)
        return bad_config(err, cap, "port must be 1..%d bytes", PORT_MAX);
    size_t br = memchr(host, ':', hlen) ? 1 : 0; /* an IPv6 address: [addr]:port */
    sp->hoff = br;
    sp->hlen = hlen;
    sp->poff = hlen + 1 + 2 * br;
    sp->plen = plen;
    sp->len = sp->poff + plen;
    return FW_OK;
}

/* Everything fw_client_open() checks. On FW_OK: the endpoints in sp[0..*n) and the bytes
 * the client needs in *need. */
static int check_config(const fw_client_config *cfg, ep_split *sp, int *n, size_t *need, char *err,
                        size_t cap)
{
    if (!cfg)
        return bad_config(err, cap, "NULL config");
    if (cfg->rx_buf_size < MIN_RX)
        return bad_config(err, cap, "rx_buf_size must be at least %u bytes", MIN_RX);
    /* The rx buffer must be able to hold a whole frame, whose body_len is a u32. */
    if (over_u32(cfg->rx_buf_size - FW_HEADER_LEN))
        return bad_config(err, cap, "rx_buf_size must be under 4 GiB");
    if (cfg->tx_buf_size < MIN_TX)
        return bad_config(err, cap, "tx_buf_size must be at least %u bytes", MIN_TX);
    if (cfg->priority >= FW_PRIO_COUNT)
        return bad_config(err, cap, "priority must be 0..%d", FW_PRIO_COUNT - 1);
    if (cfg->n_endpoints < 0 || cfg->n_endpoints > FW_MAX_ENDPOINTS)
        return bad_config(err, cap, "n_endpoints must be 0..%d, not %d", FW_MAX_ENDPOINTS, cfg->n_endpoints);
    if (cfg->n_endpoints > 0 && !cfg->endpoints)
        return bad_config(err, cap, "endpoints is NULL but n_endpoints is %d", cfg->n_endpoints);
    size_t pool = 0;
    if (cfg->n_endpoints == 0) {
        int rc = split_host_port(cfg->host ? cfg->host : "127.0.0.1", cfg->port ? cfg->port : "7420",
                                 &sp[0], err, cap);
        if (rc != FW_OK)
            return rc;
        *n = 1;
    } else {
        for (int i = 0; i < cfg->n_endpoints; i++) {
            int rc = split_endpoint(cfg->endpoints[i], i + 1, &sp[i], err, cap);
            if (rc != FW_OK)
                return rc;
        }
        *n = cfg->n_endpoints;
    }
    for (int i = 0; i < *n; i++)
        pool += ep_pool_bytes(&sp[i]); /* at most 8 * 768: no overflow */
    size_t fixed = (ALIGN - 1) + round_up(sizeof(fw_client)) + pool;
    if (cfg->rx_buf_size > SIZE_MAX - fixed || cfg->tx_buf_size > SIZE_MAX - fixed - cfg->rx_buf_size)
        return bad_config(err, cap, "rx_buf_size + tx_buf_size do not fit in memory");
    *need = fixed + cfg->rx_buf_size + cfg->tx_buf_size;
    return FW_OK;
}

int fw_client_config_check(const fw_client_config *cfg, char *err, size_t errcap)
{
    ep_split sp[FW_MAX_ENDPOINTS];
    int n;
    size_t need;
    if (err && errcap)
        err[0] = '\0';
    return check_config(cfg, sp, &n, &need, err, errcap);
}

size_t fw_client_footprint(const fw_client_config *cfg)
{
    ep_split sp[FW_MAX_ENDPOINTS];
    int n;
    size_t need;
    return check_config(cfg, sp, &n, &need, NULL, 0) == FW_OK ? need : 0;
}

/* Lay out the endpoints' strings in the pool (as many bytes as check_config() counted). */
static void copy_endpoints(fw_client *c, const fw_client_config *cfg, const ep_split *sp, int n, char *pool)
{
    for (int i = 0; i < n; i++) {
        endpoint *e = &c->ep[i];
        char *text = pool;
        if (cfg->n_endpoints > 0) {
            memcpy(text, cfg->endpoints[i], sp[i].len);
        } else {
            const char *host = cfg->host ? cfg->host : "127.0.0.1";
            const char *port = cfg->port ? cfg->port : "7420";
            if (sp[i].hoff)
                text[0] = '[';
            memcpy(text + sp[i].hoff, host, sp[i].hlen);
            if (sp[i].hoff)
                text[sp[i].hoff + sp[i].hlen] = ']';
            text[sp[i].poff - 1] = ':';
            memcpy(text + sp[i].poff, port, sp[i].plen);
        }
        text[sp[i].len] = '\0';
        pool += sp[i].len + 1;
        memcpy(pool, text + sp[i].hoff, sp[i].hlen);
        pool[sp[i].hlen] = '\0';
        e->host = pool;
        pool += sp[i].hlen + 1;
        memcpy(pool, text + sp[i].poff, sp[i].plen);
        pool[sp[i].plen] = '\0';
        e->port = pool;
        pool += sp[i].plen + 1;
        e->text = text;
    }
    c->n_ep = n;
    c->ep_cur = 0;
    c->managed = cfg->n_endpoints > 0;
}

int fw_client_open(const fw_client_config *cfg, fw_client **out)
{
    if (!cfg || !out)
        return FW_ERR_INVALID;
    *out = NULL;
    ep_split sp[FW_MAX_ENDPOINTS];
    int n = 0;
    size_t need = 0;
    if (check_config(cfg, sp, &n, &need, NULL, 0) != FW_OK)
        return FW_ERR_INVALID;

    void *block = cfg->mem;
    void *heap = NULL;
    if (block) {
        if (cfg->mem_size < need)
            return FW_ERR_NOMEM;
    } else {
        block = heap = malloc(need);
        if (!block)
            return FW_ERR_NOMEM;
    }
    /* The block: [align slack][fw_client][rx][tx][endpoint strings] */
    uintptr_t base = ((uintptr_t)block + (ALIGN - 1)) & ~(uintptr_t)(ALIGN - 1);
    fw_client *c = (fw_client *)base;
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    c->cfg.host = NULL; /* the caller's strings may go away: c->ep has the copies */
    c->cfg.port = NULL;
    c->cfg.endpoints = NULL;
    c->cfg.mem = NULL;
    c->cfg.mem_size = 0;
    if (c->cfg.retry.max_attempts == 0)
        c->cfg.retry.max_attempts = 1;
    c->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->fd = -1;
    c->next_id = 1;
    c->heap = heap;
    c->rx = (uint8_t *)c + round_up(sizeof *c);
    c->rx_cap = cfg->rx_buf_size;
    c->tx = c->rx + c->rx_cap;
    c->tx_cap = cfg->tx_buf_size;
    copy_endpoints(c, cfg, sp, n, (char *)(c->tx + c->tx_cap));
    /* Jitter only has to differ between devices that were told to back off together. */
    c->rng = cfg->retry.seed ? cfg->retry.seed
                             : (uint32_t)(now_ms() * 2654435761u) ^ (uint32_t)(uintptr_t)c ^ (uint32_t)getpid();
    if (c->rng == 0)
        c->rng = 0x9E3779B9u;
    if (cfg->secure) {
#ifdef FW_WITH_SODIUM
        c->secure = 1;
        memcpy(c->id.pk, cfg->secure->client_pk, sizeof c->id.pk);
        memcpy(c->id.sk, cfg->secure->client_sk, sizeof c->id.sk);
        memcpy(c->server_pk, cfg->secure->server_pk, sizeof c->server_pk);
        c->cfg.secure = NULL; /* the caller's copy may go away */
#else
        free(heap);
        return FW_ERR_UNSUPPORTED;
#endif
    }
    *out = c;
    return FW_OK;
}

int fw_client_secure_load(fw_client_secure *out, const char *key_file, const char *server_pub_file,
                          char *err, size_t errcap)
{
#ifdef FW_WITH_SODIUM
    fw_secure_identity id;
    if (!out || !key_file || !server_pub_file) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return FW_ERR_INVALID;
    }
    if (fw_secure_load_identity(key_file, &id, err, errcap) != 0)
        return FW_ERR_INVALID;
    if (fw_secure_load_public(server_pub_file, out->server_pk, err, errcap) != 0) {
        memset(&id, 0, sizeof id);
        return FW_ERR_INVALID;
    }
    memcpy(out->client_pk, id.pk, sizeof out->client_pk);
    memcpy(out->client_sk, id.sk, sizeof out->client_sk);
    memset(&id, 0, sizeof id);
    return FW_OK;
#else
    (void)out;
    (void)key_file;
    (void)server_pub_file;
    if (err && errcap)
        snprintf(err, errcap, "secure sessions need a libfacewire built with libsodium");
    return FW_ERR_UNSUPPORTED;
#endif
}

void fw_client_close(fw_client *c)
{
    if (!c)
        return;
    drop_conn(c);
    memset(&c->id, 0, sizeof c->id);
    free(c->heap); /* NULL for caller memory; c itself lives inside heap, touch nothing after */
}

/* ---- connect ----------------------------------------------------------------------------- */

static int send_all(fw_client *c, struct iovec *iov, int n, uint64_t deadline);
static int recv_frame(fw_client *c, uint32_t want, uint64_t deadline, fw_response *resp);
static void release_claim(fw_client *c);

#ifdef FW_WITH_SODIUM
/* One handshake frame out (plaintext HELLO or the already sealed AUTH), its answer in. */
static int hs_exchange(fw_client *c, uint8_t *frame, size_t len, uint32_t id, uint64_t deadline,
                       fw_response *resp)
{
    struct iovec iov = {frame, len};
    int rc = send_all(c, &iov, 1, deadline);
    if (rc == FW_OK)
        rc = recv_frame(c, id, deadline, resp);
    return rc;
}

static int hs_fail(fw_client *c, const char *fmt, const char *what, int n)
{
    conn_failed(c);
    return fail(c, FW_ERR_AUTH, fmt, n, what);
}
#endif

/* The HELLO/AUTH handshake on a fresh connection (docs/security.md), within the connect's
 * deadline. Any failure closes the connection: a half-authenticated stream is worthless. */
static int session_start(fw_client *c, uint64_t deadline)
{
#ifdef FW_WITH_SODIUM
    if (!c->secure)
        return FW_OK;
    uint8_t frame[FW_HEADER_LEN + FW_SECURE_HELLO_RESP_LEN];
    fw_response resp;
    fw_header h;
    memset(&h, 0, sizeof h);
    h.magic = FW_MAGIC;
    h.version = FW_PROTO_VERSION;
    h.opcode = FW_OP_HELLO;
    h.priority = c->cfg.priority;
    h.request_id = c->next_id++;
    if (c->next_id == FW_ANY_REQUEST)
        c->next_id = 1;
    h.body_len = FW_SECURE_HELLO_LEN;
    if (fw_secure_session_init(&c->sess, 0) != FW_SEC_OK ||
        fw_secure_client_hello(&c->sess, frame + FW_HEADER_LEN) != FW_SEC_OK)
        return hs_fail(c, "secure handshake: %.*s", "libsodium failed", 16);
    fw_header_encode(&h, frame);
    int rc = hs_exchange(c, frame, FW_HEADER_LEN + FW_SECURE_HELLO_LEN, h.request_id, deadline, &resp);
    if (rc != FW_OK)
        return rc;
    if (resp.hdr.opcode != FW_OP_HELLO || resp.hdr.status != FW_STATUS_OK) {
        const char *msg;
        uint16_t mlen;
        fw_response_error(&resp, &msg, &mlen, NULL);
        return hs_fail(c, "server refused the secure handshake: %.*s", msg, mlen);
    }
    h.opcode = FW_OP_AUTH;
    h.request_id = c->next_id++;
    if (c->next_id == FW_ANY_REQUEST)
        c->next_id = 1;
    rc = fw_secure_client_on_hello_response(&c->sess, &c->id, c->server_pk, resp.body,
                                            resp.body_len, &h, frame);
    release_claim(c);
    if (rc != FW_SEC_OK) {
        const char *why = fw_secure_strerror(rc);
        return hs_fail(c, "secure handshake: %.*s", why, (int)strlen(why));
    }
    rc = hs_exchange(c, frame, FW_SECURE_AUTH_FRAME_LEN, h.request_id, deadline, &resp);
    if (rc != FW_OK)
        return rc;
    rc = fw_secure_client_on_auth_response(&c->sess, resp.frame, resp.body, resp.body_len);
    if (rc == FW_SEC_E_REJECTED) {
        const char *msg;
        uint16_t mlen;
        fw_response_error(&resp, &msg, &mlen, NULL);
        return hs_fail(c, "server refused this device's key: %.*s", msg, mlen);
    }
    release_claim(c);
    if (rc != FW_SEC_OK) {
        const char *why = fw_secure_strerror(rc);
        return hs_fail(c, "secure handshake: %.*s", why, (int)strlen(why));
    }
    c->rx_open = 0; /* whatever follows in rx is sealed */
    return FW_OK;
#else
    (void)c; /* plaintext: nothing to negotiate (fw_client_open refused cfg.secure) */
    (void)deadline;
    return FW_OK;
#endif
}

static void addr_text(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap)
{
    char h[NI_MAXHOST], s[NI_MAXSERV];
    if (getnameinfo(sa, len, h, sizeof h, s, sizeof s, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(buf, cap, "?");
    else if (sa->sa_family == AF_INET6)
        snprintf(buf, cap, "[%s]:%s", h, s);
    else
        snprintf(buf, cap, "%s:%s", h, s);
}

/* One address: non-blocking connect, then poll until connected or the deadline. Returns the
 * fd, or -1 with errno (ETIMEDOUT when the deadline ran out). */
static int connect_one(const struct addrinfo *ai, uint64_t deadline)
{
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0)
        return -1;
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        goto err;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS && errno != EINTR)
            goto err;
        for (;;) {
            struct pollfd p = {fd, POLLOUT, 0};
            int left = ms_left(deadline);
            if (left == 0) {
                errno = ETIMEDOUT;
                goto err;
            }
            int n = poll(&p, 1, left);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                goto err;
            if (n > 0)
                break;
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
            goto err;
        if (soerr != 0) {
            errno = soerr;
            goto err;
        }
    }
    int one = 1;
    /* Requests are small and answered one by one: Nagle would add a delay to each. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
#ifdef SO_NOSIGPIPE
    (void)setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    return fd;
err:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

/* One endpoint: resolve it, try its addresses in turn, then the handshake; all before
 * `deadline` (budget_ms is only for the message). */
static int connect_endpoint(fw_client *c, const endpoint *ep, uint64_t deadline, uint32_t budget_ms)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(ep->host, ep->port, &hints, &res);
    if (g != 0)
        return fail(c, FW_ERR_RESOLVE, "cannot resolve %s port %s: %s", ep->host, ep->port, gai_strerror(g));

    int rc = FW_ERR_CONNECT;
    char where[NI_MAXHOST + NI_MAXSERV + 4] = "";
    int last_errno = 0;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        addr_text(ai->ai_addr, ai->ai_addrlen, where, sizeof where);
        int fd = connect_one(ai, deadline);
        if (fd >= 0) {
            c->fd = fd;
            rc = FW_OK;
            break;
        }
        last_errno = errno;
        if (last_errno == ETIMEDOUT && ms_left(deadline) == 0)
            break;
    }
    freeaddrinfo(res);
    if (rc != FW_OK) {
        if (last_errno == ETIMEDOUT)
            return fail(c, FW_ERR_TIMEOUT, "connect to %s: timed out after %u ms", where, (unsigned)budget_ms);
        char eb[128];
        return fail(c, FW_ERR_CONNECT, "connect to %s: %s", where, errtext(last_errno, eb, sizeof eb));
    }
    return session_start(c, deadline);
}

/* Connect to the endpoints in order from ep_cur, before `deadline`. Each gets an equal share
 * of the time left (the last one all of it), so that one that swallows SYNs costs the others
 * only its share. On return ep_cur is the endpoint connected to, or the one after the last
 * that failed. One endpoint: its own error as it is. */
static int connect_until(fw_client *c, uint64_t deadline, uint32_t budget_ms)
{
    drop_conn(c);
    int n = c->n_ep, start = c->ep_cur, tried = 0, rc = FW_ERR_CONNECT;
    for (int k = 0; k < n; k++) {
        int i = (start + k) % n;
        int left = ms_left(deadline);
        if (left == 0 && k > 0)
            break;
        uint32_t share = (uint32_t)left / (uint32_t)(n - k);
        c->ep_cur = i;
        rc = connect_endpoint(c, &c->ep[i], k == n - 1 ? deadline : now_ms() + share,
                              k == n - 1 ? (uint32_t)left : share);
        tried++;
        if (rc == FW_OK) {
            c->ep_cur = i;
            return FW_OK;
        }
        drop_conn(c);
        c->ep_cur = (i + 1) % n;
        if (rc == FW_ERR_AUTH)
            return rc; /* a server that fails the handshake is reported, not skipped */
    }
    if (n == 1)
        return rc;
    char last[sizeof c->errmsg];
    memcpy(last, c->errmsg, sizeof last);
    if (tried < n || (rc == FW_ERR_TIMEOUT && ms_left(deadline) == 0))
        return fail(c, FW_ERR_TIMEOUT, "no endpoint connected within %u ms (%d of %d tried); last: %s",
                    (unsigned)budget_ms, tried, n, last);
    return fail(c, FW_ERR_CONNECT, "all %d endpoints failed; last: %s", n, last);
}

/* The time fw_client_connect() may take. */
static uint32_t connect_budget(const fw_client *c)
{
    return c->cfg.connect_timeout_ms ? c->cfg.connect_timeout_ms : c->timeout_ms;
}

int fw_client_connect(fw_client *c)
{
    if (!c)
        return FW_ERR_INVALID;
    c->errmsg[0] = '\0';
    c->retry_after = 0;
    uint32_t budget = connect_budget(c);
    return connect_until(c, now_ms() + budget, budget);
}

/* A call that found no connection (managed clients only) connects first, within the
 * connect budget and the call's own deadline, whichever ends first. */
static int connect_for_call(fw_client *c, uint64_t deadline)
{
    uint64_t now = now_ms(), until = now + connect_budget(c);
    if (until > deadline)
        until = deadline;
    return connect_until(c, until, (uint32_t)(until > now ? until - now : 0));
}

/* ---- transport --------------------------------------------------------------------------- */

static int wait_fd(fw_client *c, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd p = {c->fd, events, 0};
        int left = ms_left(deadline);
        if (left == 0)
            return fail(c, FW_ERR_TIMEOUT, "timed out after %u ms", (unsigned)c->timeout_ms);
        int n = poll(&p, 1, left);
        if (n > 0)
            return FW_OK; /* readable, writable, or an error the next syscall will report */
        if (n < 0 && errno != EINTR) {
            char eb[128];
            return fail(c, FW_ERR_IO, "poll: %s", errtext(errno, eb, sizeof eb));
        }
    }
}

/* Write every byte of iov[0..n), which this function consumes (advances). */
static int send_all(fw_client *c, struct iovec *iov, int n, uint64_t deadline)
{
    while (n > 0) {
        if (iov->iov_len == 0) {
            iov++, n--;
            continue;
        }
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = iov;
        m.msg_iovlen = (size_t)n;
        ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int rc = wait_fd(c, POLLOUT, deadline);
                if (rc != FW_OK)
                    return rc;
                continue;
            }
            if (errno == EPIPE || errno == ECONNRESET)
                return fail(c, FW_ERR_CLOSED, "connection closed by the server while sending");
            char eb[128];
            return fail(c, FW_ERR_IO, "send: %s", errtext(errno, eb, sizeof eb));
        }
        size_t done = (size_t)w;
        while (n > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++, n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return FW_OK;
}

/* Remove n bytes at off from the rx buffer. */
static void rx_remove(fw_client *c, size_t off, size_t n)
{
    memmove(c->rx + off, c->rx + off + n, c->rx_len - off - n);
    c->rx_len -= n;
    if (off < c->rx_open) /* only whole opened frames are ever removed from there */
        c->rx_open -= n;
}

/* The frame handed out by the previous call is no longer referenced: drop it. */
static void release_claim(fw_client *c)
{
    if (c->claimed) {
        rx_remove(c, c->claim_off, c->claim_len);
        c->claimed = 0;
    }
}

static int check_header(fw_client *c, const fw_header *h)
{
    /* fw_client_footprint() made sure rx_cap - FW_HEADER_LEN fits a u32. */
    switch (fw_check_response(h, (uint32_t)(c->rx_cap - FW_HEADER_LEN))) {
    case FW_HDR_OK: break;
    case FW_HDR_BAD_MAGIC:
        return fail(c, FW_ERR_PROTOCOL, "bad magic 0x%04x in response header (not a facewire server?)",
                    (unsigned)h->magic);
    case FW_HDR_BAD_VERSION:
        return fail(c, FW_ERR_PROTOCOL, "response has protocol version %u, this client speaks %u",
                    (unsigned)h->version, (unsigned)FW_PROTO_VERSION);
    case FW_HDR_TOO_LARGE:
        /* Its body is on the way and nothing could skip it safely: the stream is lost. */
        conn_failed(c);
        return fail(c, FW_ERR_TOO_LARGE, "response body of %lu bytes does not fit rx_buf_size %lu",
                    (unsigned long)h->body_len, (unsigned long)c->rx_cap);
    default:
        return fail(c, FW_ERR_PROTOCOL, "bad flags 0x%02x in response header", (unsigned)h->flags);
    }
    if (h->flags & FW_FLAG_SEALED) {
#ifdef FW_WITH_SODIUM
        /* The one sealed frame before the session is up: the answer to AUTH. */
        if (c->secure && fw_secure_state(&c->sess) == FW_SEC_AUTH_SENT && h->opcode == FW_OP_AUTH)
            return FW_OK;
#endif
        return fail(c, FW_ERR_PROTOCOL, "sealed response on a plaintext connection");
    }
    return FW_OK;
}

/* In a secure session: open every complete frame after rx_open, in arrival order, in place.
 * The tag is cut out and the header rewritten (SEALED cleared, body_len of the plaintext), so
 * from then on the frame is an ordinary plaintext one. A frame that fails to open ends the
 * connection: FW_ERR_AUTH. */
static int open_arrived(fw_client *c)
{
#ifdef FW_WITH_SODIUM
    while (c->rx_len - c->rx_open >= FW_HEADER_LEN) {
        uint8_t *f = c->rx + c->rx_open;
        fw_header h;
        fw_header_decode(f, &h);
        if (!(h.flags & FW_FLAG_SEALED)) {
            conn_failed(c);
            return fail(c, FW_ERR_AUTH, "unsealed response in a secure session (connection closed)");
        }
        h.flags &= (uint8_t)~FW_FLAG_SEALED;
        int rc = check_header(c, &h);
        if (rc != FW_OK)
            return rc;
        if (c->rx_len - c->rx_open - FW_HEADER_LEN < h.body_len)
            return FW_OK; /* the rest of the body is still coming */
        size_t plen = 0;
        rc = fw_secure_open(&c->sess, f, f + FW_HEADER_LEN, h.body_len, f + FW_HEADER_LEN,
                            h.body_len, &plen);
        if (rc != FW_SEC_OK) {
            conn_failed(c);
            return fail(c, FW_ERR_AUTH, "response %s (connection closed)", fw_secure_strerror(rc));
        }
        size_t end = c->rx_open + FW_HEADER_LEN + h.body_len;
        memmove(f + FW_HEADER_LEN + plen, c->rx + end, c->rx_len - end);
        c->rx_len -= h.body_len - plen;
        h.body_len = (uint32_t)plen;
        fw_header_encode(&h, f);
        c->rx_open += FW_HEADER_LEN + plen;
    }
#else
    (void)c;
#endif
    return FW_OK;
}

/* Find the response to `want` (or any) among the buffered frames, reading more as needed.
 * STREAM_EVENT frames stay buffered for fw_stream_poll(); other events are dropped. */
static int recv_frame_ex(fw_client *c, uint32_t want, int want_event, uint64_t deadline, fw_response *resp);
static int recv_frame(fw_client *c, uint32_t want, uint64_t deadline, fw_response *resp)
{
    return recv_frame_ex(c, want, 0, deadline, resp);
}

/* Look for the wanted frame among those already buffered: 1 (claimed into *resp), 0 (not
 * there yet), or < 0. */
static int scan_buffered(fw_client *c, uint32_t want, int want_event, fw_response *resp)
{
    size_t off = 0;
    if (sealed(c)) {
        int orc = open_arrived(c);
        if (orc != FW_OK)
            return orc;
    }
    while (off < rx_scannable(c)) {
        fw_header h;
        int have = 0;
        size_t n = fw_frame_scan(c->rx + off, rx_scannable(c) - off, &h, &have);
        if (!have)
            break;
        int rc = check_header(c, &h);
        if (rc != FW_OK)
            return rc;
        if (n == 0)
            break; /* the body is still coming */
        int is_event = (h.flags & FW_FLAG_EVENT) != 0;
        if (is_event && h.opcode != FW_OP_STREAM_EVENT) {
            rx_remove(c, off, n); /* no other events are defined for clients */
            continue;
        }
        if (want_event ? is_event : !is_event && (want == FW_ANY_REQUEST || h.request_id == want)) {
            c->claimed = 1;
            c->claim_off = off;
            c->claim_len = n;
            resp->hdr = h;
            resp->frame = c->rx + off;
            resp->frame_len = n;
            resp->body = c->rx + off + FW_HEADER_LEN;
            resp->body_len = h.body_len;
            return 1;
        }
        off += n;
    }
    if (c->rx_len == c->rx_cap)
        return fail(c, FW_ERR_RX_FULL, "rx buffer (%lu bytes) full of responses not asked for",
                    (unsigned long)c->rx_cap);
    return 0;
}

/* One recv() into the rx buffer: FW_OK (bytes came), FW_ERR_WOULD_BLOCK (none ready), or < 0. */
static int read_some(fw_client *c)
{
    for (;;) {
        ssize_t r = recv(c->fd, c->rx + c->rx_len, c->rx_cap - c->rx_len, 0);
        if (r > 0) {
            c->rx_len += (size_t)r;
            return FW_OK;
        }
        if (r == 0)
            return fail(c, FW_ERR_CLOSED, "connection closed by the server");
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return FW_ERR_WOULD_BLOCK;
        if (errno == ECONNRESET)
            return fail(c, FW_ERR_CLOSED, "connection reset by the server");
        if (errno != EINTR) {
            char eb[128];
            return fail(c, FW_ERR_IO, "recv: %s", errtext(errno, eb, sizeof eb));
        }
    }
}

static int recv_frame_ex(fw_client *c, uint32_t want, int want_event, uint64_t deadline, fw_response *resp)
{
    if (c->fd < 0)
        return fail(c, FW_ERR_NOT_CONNECTED, "not connected");
    for (;;) {
        int rc = scan_buffered(c, want, want_event, resp);
        if (rc != 0)
            return rc < 0 ? rc : FW_OK;
        rc = read_some(c);
        if (rc == FW_ERR_WOULD_BLOCK)
            rc = wait_fd(c, POLLIN, deadline);
        if (rc != FW_OK)
            return rc;
    }
}

/* ---- request builder --------------------------------------------------------------------- */

/* Fixed fields go to the tx buffer through w; req_ref() splices the caller's bytes in as their
 * own iovec. iov[] always describes the whole frame once req_finish() ran. */
typedef struct req {
    fw_client *c;
    fw_writer w;
    struct iovec iov[MAX_IOV];
    int niov;
    size_t seg;     /* start in tx of the bytes not yet covered by iov */
    int overflow;   /* more than MAX_IOV pieces (a bug in this file, reported as INVALID) */
} req;

static void req_begin(req *r, fw_client *c)
{
    r->c = c;
    fw_writer_init(&r->w, c->tx, c->tx_cap);
    uint8_t zero[FW_HEADER_LEN] = {0};
    fw_put_raw(&r->w, zero, sizeof zero); /* the header, filled in by req_send() */
    r->niov = 0;
    r->seg = 0;
    r->overflow = 0;
}

static void req_push(req *r, void *p, size_t n)
{
    if (n == 0)
        return;
    if (r->niov == MAX_IOV) {
        r->overflow = 1;
        return;
    }
    r->iov[r->niov].iov_base = p;
    r->iov[r->niov].iov_len = n;
    r->niov++;
}

static void req_ref(req *r, const void *p, size_t n)
{
    if (r->w.err || n == 0)
        return;
    req_push(r, r->c->tx + r->seg, r->w.len - r->seg);
    req_push(r, (void *)(uintptr_t)p, n); /* sendmsg's iovec is not const; never written */
    r->seg = r->w.len;
}

static int req_finish(req *r)
{
    fw_client *c = r->c;
    if (r->w.err)
        return fail(c, FW_ERR_TOO_LARGE, "request does not fit tx_buf_size (%lu bytes)", (unsigned long)c->tx_cap);
    req_push(r, c->tx + r->seg, r->w.len - r->seg);
    r->seg = r->w.len;
    if (r->overflow)
        return fail(c, FW_ERR_INVALID, "request has too many pieces");
    uint64_t total = 0;
    for (int i = 0; i < r->niov; i++)
        total += r->iov[i].iov_len;
    if (total - FW_HEADER_LEN > UINT32_MAX)
        return fail(c, FW_ERR_TOO_LARGE, "request body over 4 GiB");
    return FW_OK;
}

/* Fill in the header with a fresh request id and send the frame. Can be called again for a
 * retry: the iovecs are copied, tx and the caller's payloads are unchanged. */
static int req_send(req *r, uint8_t opcode, uint32_t *id, uint64_t deadline)
{
    fw_client *c = r->c;
    if (c->fd < 0)
        return fail(c, FW_ERR_NOT_CONNECTED, "not connected");
    uint64_t total = 0;
    for (int i = 0; i < r->niov; i++)
        total += r->iov[i].iov_len;
    fw_header h;
    memset(&h, 0, sizeof h);
    h.magic = FW_MAGIC;
    h.version = FW_PROTO_VERSION;
    h.opcode = opcode;
    h.priority = c->cfg.priority;
    h.request_id = c->next_id++;
    if (c->next_id == FW_ANY_REQUEST)
        c->next_id = 1;
    h.deadline_ms = c->cfg.deadline_ms;
    h.body_len = (uint32_t)(total - FW_HEADER_LEN);
    fw_header_encode(&h, c->tx);
    struct iovec iov[MAX_IOV];
    int niov = r->niov;
    memcpy(iov, r->iov, sizeof(struct iovec) * (size_t)r->niov);
#ifdef FW_WITH_SODIUM
    if (sealed(c)) {
        /* Assemble the whole frame after the fixed part (which stays intact for a retry) and
         * seal it there: AEAD needs the body in one piece. */
        size_t base = r->w.len, body = (size_t)total - FW_HEADER_LEN;
        if (c->tx_cap - base < (size_t)total + FW_SECURE_TAG_LEN)
            return fail(c, FW_ERR_TOO_LARGE, "sealed request of %lu bytes does not fit tx_buf_size "
                        "(%lu bytes) after its %lu-byte fixed part", (unsigned long)total,
                        (unsigned long)c->tx_cap, (unsigned long)base);
        uint8_t *f = c->tx + base, *p = f;
        for (int i = 0; i < r->niov; i++) {
            memcpy(p, r->iov[i].iov_base, r->iov[i].iov_len);
            p += r->iov[i].iov_len;
        }
        size_t flen = 0;
        int src = fw_secure_seal(&c->sess, &h, f + FW_HEADER_LEN, body, f,
                                 (size_t)total + FW_SECURE_TAG_LEN, &flen);
        if (src != FW_SEC_OK) {
            conn_failed(c);
            return fail(c, FW_ERR_AUTH, "cannot seal request: %s (connection closed)",
                        fw_secure_strerror(src));
        }
        iov[0].iov_base = f;
        iov[0].iov_len = flen;
        niov = 1;
    }
#endif
    int rc = send_all(c, iov, niov, deadline);
    if (rc == FW_OK && id)
        *id = h.request_id;
    return rc;
}

/* Pipelined sending: send the built request and return its id, without waiting. */
static int send_built(req *r, uint8_t opcode, uint32_t *request_id)
{
    fw_client *c = r->c;
    uint64_t deadline = now_ms() + c->timeout_ms;
    int rc = req_finish(r);
    if (rc == FW_OK && c->fd < 0) /* a managed client (begin_call() let it through) */
        rc = connect_for_call(c, deadline);
    if (rc == FW_OK)
        rc = req_send(r, opcode, request_id, deadline);
    if (rc == FW_OK)
        release_claim(c);
    return rc;
}

/* ---- public pipelined API ---------------------------------------------------------------- */

/* The start of every call. Without a connection, a managed client's call goes on and
 * connects once its request is built (so that a bad argument is reported without touching
 * the network); calls that need the connection they were started on (may_connect 0) and
 * every call of an unmanaged client fail. */
static int begin_call_ex(fw_client *c, int may_connect)
{
    if (!c)
        return FW_ERR_INVALID;
    c->errmsg[0] = '\0';
    c->retry_after = 0;
    if (c->fd < 0 && !(may_connect && c->managed))
        return fail(c, FW_ERR_NOT_CONNECTED, "not connected");
    return FW_OK;
}

static int begin_call(fw_client *c) { return begin_call_ex(c, 1); }
static int begin_on_conn(fw_client *c) { return begin_call_ex(c, 0); }

int fw_send(fw_client *c, uint8_t opcode, const void *body, size_t len, uint32_t *request_id)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (len && !body)
        return fail(c, FW_ERR_INVALID, "NULL body");
    if (over_u32(len))
        return fail(c, FW_ERR_TOO_LARGE, "request body over 4 GiB");
    req r;
    req_begin(&r, c);
    req_ref(&r, body, len);
    return send_built(&r, opcode, request_id);
}

int fw_send_raw(fw_client *c, const void *bytes, size_t len)
{
    int rc = begin_on_conn(c);
    if (rc != FW_OK)
        return rc;
    if (len && !bytes)
        return fail(c, FW_ERR_INVALID, "NULL bytes");
    if (sealed(c)) /* unsealed bytes would end the session: the server closes on them */
        return fail(c, FW_ERR_UNSUPPORTED, "raw frames cannot be sent in a secure session");
    struct iovec iov = {(void *)(uintptr_t)bytes, len};
    rc = send_all(c, &iov, 1, now_ms() + c->timeout_ms);
    if (rc == FW_OK)
        release_claim(c);
    return rc;
}

int fw_recv(fw_client *c, uint32_t request_id, fw_response *resp)
{
    int rc = begin_on_conn(c);
    if (rc != FW_OK)
        return rc;
    if (!resp)
        return fail(c, FW_ERR_INVALID, "NULL response");
    release_claim(c);
    return recv_frame(c, request_id, now_ms() + c->timeout_ms, resp);
}

void fw_response_error(const fw_response *r, const char **msg, uint16_t *msg_len, uint32_t *retry_after_ms)
{
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->body_len);
    uint16_t n = 0;
    const char *m = fw_get_str(&rd, &n);
    if (!m) {
        m = "";
        n = 0;
    }
    uint32_t ra = 0;
    if ((r->hdr.status == FW_STATUS_BUSY || r->hdr.status == FW_STATUS_UNAVAILABLE) && fw_reader_left(&rd) >= 4)
        ra = fw_get_u32(&rd);
    if (msg)
        *msg = m;
    if (msg_len)
        *msg_len = n;
    if (retry_after_ms)
        *retry_after_ms = ra;
}

/* ---- synchronous calls ------------------------------------------------------------------- */

static uint32_t rng_next(fw_client *c)
{
    uint32_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return c->rng = x;
}

/* The back-off before attempt `attempt` + 1 (see fw_retry_policy). */
static uint32_t backoff_ms(fw_client *c, uint32_t attempt, uint32_t retry_after)
{
    const fw_retry_policy *p = &c->cfg.retry;
    uint64_t cap = p->base_ms;
    for (uint32_t i = 1; i < attempt && cap < p->max_ms; i++)
        cap <<= 1;
    if (cap > p->max_ms)
        cap = p->max_ms;
    uint32_t jitter = cap ? (uint32_t)(rng_next(c) % (cap + 1)) : 0;
    return jitter > retry_after ? jitter : retry_after;
}

/* Does any piece of the request live in the rx buffer (an argument taken from the previous
 * result)? Then a retry would resend moved bytes: such a call is not retried. */
static int req_uses_rx(const req *r)
{
    const uint8_t *lo = r->c->rx, *hi = r->c->rx + r->c->rx_cap;
    for (int i = 0; i < r->niov; i++) {
        const uint8_t *p = (const uint8_t *)r->iov[i].iov_base;
        if (p >= lo && p < hi)
            return 1;
    }
    return 0;
}

/* The connection broke under a request: it may or may not have been carried out. */
static int conn_broke(int rc) { return rc == FW_ERR_CLOSED || rc == FW_ERR_IO; }

/* Send the built request, wait for its answer; OK → FW_OK with *resp, a status → that status
 * with errmsg / retry_after set (after retries, when the policy allows). A managed client
 * connects first when it has no connection, and re-sends a request that is safe to repeat
 * on a new connection (the next endpoint) when the connection broke under it. */
static int call(req *r, uint8_t opcode, fw_response *resp)
{
    fw_client *c = r->c;
    uint64_t deadline = now_ms() + c->timeout_ms;
    int rc = req_finish(r);
    if (rc != FW_OK)
        return rc;
    int may_retry = c->cfg.retry.enabled && !req_uses_rx(r);
    int may_resend = may_retry && c->managed && fw_client_op_resendable(opcode);
    for (uint32_t attempt = 1;; attempt++) {
        if (c->fd < 0 && (rc = connect_for_call(c, deadline)) != FW_OK)
            return rc;
        uint32_t id;
        rc = req_send(r, opcode, &id, deadline);
        if (rc == FW_OK) {
            release_claim(c);
            rc = recv_frame(c, id, deadline, resp);
        }
        if (rc != FW_OK) {
            /* fail() closed the connection and moved ep_cur on: the loop connects there. */
            if (conn_broke(rc) && may_resend && attempt < c->cfg.retry.max_attempts &&
                ms_left(deadline) > 0)
                continue;
            return rc;
        }
        if (resp->hdr.opcode != opcode) /* a response copies its request's opcode */
            return fail(c, FW_ERR_PROTOCOL, "response to a %s request has opcode 0x%02x",
                        fw_op_name(opcode), (unsigned)resp->hdr.opcode);
        uint16_t st = resp->hdr.status;
        if (st == FW_STATUS_OK) {
            c->errmsg[0] = '\0'; /* what failed on the way was dealt with */
            c->retry_after = 0;
            return FW_OK;
        }
        const char *msg;
        uint16_t mlen;
        fw_response_error(resp, &msg, &mlen, &c->retry_after);
        if (c->retry_after)
            fail(c, st, "%s: %.*s (retry after %lu ms)", fw_status_name(st), (int)mlen, msg,
                 (unsigned long)c->retry_after);
        else
            fail(c, st, "%s: %.*s", fw_status_name(st), (int)mlen, msg);
        if (!may_retry || (st != FW_STATUS_BUSY && st != FW_STATUS_UNAVAILABLE) ||
            attempt >= c->cfg.retry.max_attempts)
            return st;
        uint32_t wait = backoff_ms(c, attempt, c->retry_after);
        /* Sleeping past the caller's deadline only to fail later helps nobody. */
        if ((uint64_t)ms_left(deadline) <= wait)
            return st;
        sleep_ms(wait);
    }
}

/* A decoder's verdict on a synchronous call's response: malformed closes the connection. */
static int decoded(fw_client *c, int rc, uint8_t opcode)
{
    if (rc == FW_ERR_MALFORMED)
        return fail(c, rc, "malformed %s response (truncated, or bytes left over)", fw_op_name(opcode));
    return rc;
}

static int expect_done(fw_client *c, const fw_reader *rd, uint8_t opcode)
{
    return decoded(c, fw_reader_done(rd) ? FW_OK : FW_ERR_MALFORMED, opcode);
}

int fw_ping(fw_client *c, const void *data, size_t len, const uint8_t **echo, size_t *echo_len)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (len && !data)
        return fail(c, FW_ERR_INVALID, "NULL data");
    req r;
    req_begin(&r, c);
    req_ref(&r, data, len);
    fw_response resp;
    rc = call(&r, FW_OP_PING, &resp);
    if (rc != FW_OK)
        return rc;
    if (echo)
        *echo = resp.body;
    if (echo_len)
        *echo_len = resp.body_len;
    return FW_OK;
}

int fw_info(fw_client *c, const char **text, size_t *len)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    fw_response resp;
    rc = call(&r, FW_OP_INFO, &resp);
    if (rc != FW_OK)
        return rc;
    if (text)
        *text = (const char *)resp.body;
    if (len)
        *len = resp.body_len;
    return FW_OK;
}

/* ---- face ops ---------------------------------------------------------------------------- */

fw_input fw_input_jpeg(const void *jpeg, size_t len)
{
    fw_input in;
    memset(&in, 0, sizeof in);
    in.kind = FW_INPUT_JPEG;
    in.jpeg = jpeg;
    in.jpeg_len = len;
    return in;
}

fw_input fw_input_descriptor(const float *descriptor)
{
    fw_input in;
    memset(&in, 0, sizeof in);
    in.kind = FW_INPUT_DESCRIPTOR;
    in.descriptor = descriptor;
    return in;
}

static int put_input(req *r, const fw_input *in, const char *what)
{
    fw_client *c = r->c;
    if (!in)
        return fail(c, FW_ERR_INVALID, "%s: NULL input", what);
    if (in->kind == FW_INPUT_JPEG) {
        if (!in->jpeg || in->jpeg_len == 0)
            return fail(c, FW_ERR_INVALID, "%s: empty JPEG", what);
        if (over_u32(in->jpeg_len))
            return fail(c, FW_ERR_TOO_LARGE, "%s: JPEG over 4 GiB", what);
        fw_put_u8(&r->w, FW_INPUT_JPEG);
        fw_put_u32(&r->w, (uint32_t)in->jpeg_len);
        req_ref(r, in->jpeg, in->jpeg_len);
        return FW_OK;
    }
    if (in->kind == FW_INPUT_DESCRIPTOR) {
        if (!in->descriptor)
            return fail(c, FW_ERR_INVALID, "%s: NULL descriptor", what);
        fw_put_u8(&r->w, FW_INPUT_DESCRIPTOR);
        for (int i = 0; i < FW_DESCRIPTOR_DIM; i++)
            fw_put_f32(&r->w, in->descriptor[i]);
        return FW_OK;
    }
    return fail(c, FW_ERR_INVALID, "%s: unknown input kind %d", what, in->kind);
}

static void put_threshold(req *r, const float *threshold)
{
    fw_put_u8(&r->w, threshold ? 1 : 0);
    fw_put_f32(&r->w, threshold ? *threshold : 0.0f);
}

int fw_decode_image(const fw_response *r, int with_descriptors, fw_face *faces, size_t max_faces,
                    fw_image_result *out)
{
    if (!r || !out || (max_faces && !faces))
        return FW_ERR_INVALID;
    memset(out, 0, sizeof *out);
    if (r->hdr.status != FW_STATUS_OK)
        return r->hdr.status;
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->body_len);
    out->width = fw_get_u32(&rd);
    out->height = fw_get_u32(&rd);
    size_t n = fw_get_u16(&rd);
    size_t per = 4u * (5u + 2u * FW_LANDMARKS + (with_descriptors ? FW_DESCRIPTOR_DIM : 0u));
    if (rd.err || fw_reader_left(&rd) != n * per) /* checked up front: no loop over garbage */
        return FW_ERR_MALFORMED;
    for (size_t i = 0; i < n; i++) {
        fw_face tmp, *f = i < max_faces ? &faces[i] : &tmp;
        f->box.x = fw_get_f32(&rd);
        f->box.y = fw_get_f32(&rd);
        f->box.w = fw_get_f32(&rd);
        f->box.h = fw_get_f32(&rd);
        f->score = fw_get_f32(&rd);
        for (int k = 0; k < FW_LANDMARKS; k++) {
            f->landmarks[k][0] = fw_get_f32(&rd);
            f->landmarks[k][1] = fw_get_f32(&rd);
        }
        for (int k = 0; k < FW_DESCRIPTOR_DIM; k++)
            f->descriptor[k] = with_descriptors ? fw_get_f32(&rd) : 0.0f;
    }
    if (!fw_reader_done(&rd))
        return FW_ERR_MALFORMED;
    out->nfaces = n;
    out->nstored = n < max_faces ? n : max_faces;
    return FW_OK;
}

/* Each op's request is built by one build_*() function, shared by the synchronous call and
 * its fw_send_*() flavour, so the two can never encode differently. */
static int build_image(req *r, uint8_t op, const void *jpeg, size_t len)
{
    if (!jpeg || len == 0)
        return fail(r->c, FW_ERR_INVALID, "%s: empty JPEG", fw_op_name(op));
    if (over_u32(len))
        return fail(r->c, FW_ERR_TOO_LARGE, "JPEG over 4 GiB");
    fw_put_u32(&r->w, (uint32_t)len);
    req_ref(r, jpeg, len);
    return FW_OK;
}

static int image_op(fw_client *c, uint8_t op, const void *jpeg, size_t len, fw_face *faces, size_t max_faces,
                    fw_image_result *out)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (!out || (max_faces && !faces))
        return fail(c, FW_ERR_INVALID, "%s: NULL result", fw_op_name(op));
    req r;
    req_begin(&r, c);
    if ((rc = build_image(&r, op, jpeg, len)) != FW_OK)
        return rc;
    fw_response resp;
    rc = call(&r, op, &resp);
    if (rc != FW_OK)
        return rc;
    return decoded(c, fw_decode_image(&resp, op == FW_OP_EMBED, faces, max_faces, out), op);
}

static int image_send(fw_client *c, uint8_t op, const void *jpeg, size_t len, uint32_t *request_id)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    if ((rc = build_image(&r, op, jpeg, len)) != FW_OK)
        return rc;
    return send_built(&r, op, request_id);
}

int fw_send_detect(fw_client *c, const void *jpeg, size_t len, uint32_t *request_id)
{
    return image_send(c, FW_OP_DETECT, jpeg, len, request_id);
}

int fw_send_embed(fw_client *c, const void *jpeg, size_t len, uint32_t *request_id)
{
    return image_send(c, FW_OP_EMBED, jpeg, len, request_id);
}

int fw_detect(fw_client *c, const void *jpeg, size_t len, fw_face *faces, size_t max_faces, fw_image_result *out)
{
    return image_op(c, FW_OP_DETECT, jpeg, len, faces, max_faces, out);
}

int fw_embed(fw_client *c, const void *jpeg, size_t len, fw_face *faces, size_t max_faces, fw_image_result *out)
{
    return image_op(c, FW_OP_EMBED, jpeg, len, faces, max_faces, out);
}

int fw_decode_verify(const fw_response *r, fw_verify_result *out)
{
    if (!r || !out)
        return FW_ERR_INVALID;
    if (r->hdr.status != FW_STATUS_OK)
        return r->hdr.status;
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->body_len);
    out->distance = fw_get_f32(&rd);
    uint8_t same = fw_get_u8(&rd);
    out->threshold = fw_get_f32(&rd);
    out->same = same != 0;
    return fw_reader_done(&rd) && same <= 1 ? FW_OK : FW_ERR_MALFORMED;
}

static int build_verify(req *r, const fw_input *a, const fw_input *b, const float *threshold)
{
    int rc;
    if ((rc = put_input(r, a, "input a")) != FW_OK || (rc = put_input(r, b, "input b")) != FW_OK)
        return rc;
    put_threshold(r, threshold);
    return FW_OK;
}

int fw_send_verify(fw_client *c, const fw_input *a, const fw_input *b, const float *threshold, uint32_t *request_id)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    if ((rc = build_verify(&r, a, b, threshold)) != FW_OK)
        return rc;
    return send_built(&r, FW_OP_VERIFY, request_id);
}

int fw_verify(fw_client *c, const fw_input *a, const fw_input *b, const float *threshold, fw_verify_result *out)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (!out)
        return fail(c, FW_ERR_INVALID, "NULL result");
    req r;
    req_begin(&r, c);
    if ((rc = build_verify(&r, a, b, threshold)) != FW_OK)
        return rc;
    fw_response resp;
    rc = call(&r, FW_OP_VERIFY, &resp);
    if (rc != FW_OK)
        return rc;
    return decoded(c, fw_decode_verify(&resp, out), FW_OP_VERIFY);
}

static int build_enroll(req *r, const char *subject, const void *meta, size_t meta_len, const fw_input *in)
{
    size_t slen = subject ? strlen(subject) : 0;
    if (slen == 0 || slen > FW_SUBJECT_MAX)
        return fail(r->c, FW_ERR_INVALID, "subject must be 1..%d bytes", FW_SUBJECT_MAX);
    if (meta_len > FW_METADATA_MAX || (meta_len && !meta))
        return fail(r->c, FW_ERR_INVALID, "metadata must be at most %d bytes", FW_METADATA_MAX);
    fw_put_str(&r->w, subject, slen);
    fw_put_bytes(&r->w, meta, (uint32_t)meta_len);
    return put_input(r, in, "input");
}

int fw_send_enroll(fw_client *c, const char *subject, const void *meta, size_t meta_len, const fw_input *in,
                   uint32_t *request_id)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    if ((rc = build_enroll(&r, subject, meta, meta_len, in)) != FW_OK)
        return rc;
    return send_built(&r, FW_OP_ENROLL, request_id);
}

int fw_decode_enroll(const fw_response *r, uint64_t *face_id)
{
    if (!r)
        return FW_ERR_INVALID;
    if (r->hdr.status != FW_STATUS_OK)
        return r->hdr.status;
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->body_len);
    uint64_t id = fw_get_u64(&rd);
    if (!fw_reader_done(&rd))
        return FW_ERR_MALFORMED;
    if (face_id)
        *face_id = id;
    return FW_OK;
}

int fw_enroll(fw_client *c, const char *subject, const void *meta, size_t meta_len, const fw_input *in,
              uint64_t *face_id)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    if ((rc = build_enroll(&r, subject, meta, meta_len, in)) != FW_OK)
        return rc;
    fw_response resp;
    rc = call(&r, FW_OP_ENROLL, &resp);
    if (rc != FW_OK)
        return rc;
    return decoded(c, fw_decode_enroll(&resp, face_id), FW_OP_ENROLL);
}

int fw_decode_identify(const fw_response *r, fw_identify_face *faces, size_t max_faces, fw_match *matches,
                       size_t max_matches, fw_identify_result *out)
{
    if (!r || !out || (max_faces && !faces) || (max_matches && !matches))
        return FW_ERR_INVALID;
    memset(out, 0, sizeof *out);
    if (r->hdr.status != FW_STATUS_OK)
        return r->hdr.status;
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->body_len);
    size_t n = fw_get_u16(&rd);
    size_t used = 0; /* matches[] slots filled */
    for (size_t i = 0; i < n && !rd.err; i++) {
        fw_identify_face tmp, *f = i < max_faces ? &faces[i] : &tmp;
        f->box.x = fw_get_f32(&rd);
        f->box.y = fw_get_f32(&rd);
        f->box.w = fw_get_f32(&rd);
        f->box.h = fw_get_f32(&rd);
        f->nmatches = fw_get_u16(&rd);
        f->nstored = 0;
        f->matches = i < max_faces && used < max_matches ? &matches[used] : NULL;
        for (size_t k = 0; k < f->nmatches && !rd.err; k++) {
            fw_match m;
            m.subject = fw_get_str(&rd, &m.subject_len);
            m.face_id = fw_get_u64(&rd);
            m.distance = fw_get_f32(&rd);
            if (i < max_faces && used < max_matches) {
                matches[used++] = m;
                f->nstored++;
            }
        }
        if (f->nstored < f->nmatches)
            out->truncated = 1;
    }
    if (!fw_reader_done(&rd))
        return FW_ERR_MALFORMED;
    out->nfaces = n;
    out->nstored = n < max_faces ? n : max_faces;
    if (n > max_faces)
        out->truncated = 1;
    return FW_OK;
}

static int build_identify(req *r, const fw_input *in, unsigned k, const float *threshold)
{
    if (k < 1 || k > FW_IDENTIFY_MAX_K)
        return fail(r->c, FW_ERR_INVALID, "k must be 1..%d", FW_IDENTIFY_MAX_K);
    int rc = put_input(r, in, "input");
    if (rc != FW_OK)
        return rc;
    fw_put_u16(&r->w, (uint16_t)k);
    put_threshold(r, threshold);
    return FW_OK;
}

int fw_send_identify(fw_client *c, const fw_input *in, unsigned k, const float *threshold, uint32_t *request_id)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    if ((rc = build_identify(&r, in, k, threshold)) != FW_OK)
        return rc;
    return send_built(&r, FW_OP_IDENTIFY, request_id);
}

int fw_identify(fw_client *c, const fw_input *in, unsigned k, const float *threshold, fw_identify_face *faces,
                size_t max_faces, fw_match *matches, size_t max_matches, fw_identify_result *out)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (!out || (max_faces && !faces) || (max_matches && !matches))
        return fail(c, FW_ERR_INVALID, "NULL result");
    req r;
    req_begin(&r, c);
    if ((rc = build_identify(&r, in, k, threshold)) != FW_OK)
        return rc;
    fw_response resp;
    rc = call(&r, FW_OP_IDENTIFY, &resp);
    if (rc != FW_OK)
        return rc;
    return decoded(c, fw_decode_identify(&resp, faces, max_faces, matches, max_matches, out), FW_OP_IDENTIFY);
}

static int delete_op(fw_client *c, req *r, uint32_t *deleted)
{
    fw_response resp;
    int rc = call(r, FW_OP_DELETE, &resp);
    if (rc != FW_OK)
        return rc;
    fw_reader rd;
    fw_reader_init(&rd, resp.body, resp.body_len);
    uint32_t n = fw_get_u32(&rd);
    if ((rc = expect_done(c, &rd, FW_OP_DELETE)) != FW_OK)
        return rc;
    if (deleted)
        *deleted = n;
    return FW_OK;
}

int fw_delete_face(fw_client *c, uint64_t face_id, uint32_t *deleted)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    fw_put_u8(&r.w, 0);
    fw_put_u64(&r.w, face_id);
    return delete_op(c, &r, deleted);
}

int fw_delete_subject(fw_client *c, const char *subject, uint32_t *deleted)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    size_t slen = subject ? strlen(subject) : 0;
    if (slen == 0 || slen > FW_SUBJECT_MAX)
        return fail(c, FW_ERR_INVALID, "subject must be 1..%d bytes", FW_SUBJECT_MAX);
    req r;
    req_begin(&r, c);
    fw_put_u8(&r.w, 1);
    fw_put_str(&r.w, subject, slen);
    return delete_op(c, &r, deleted);
}

int fw_decode_list(const fw_response *r, fw_subject *subjects, size_t max_subjects, fw_list_result *out)
{
    if (!r || !out || (max_subjects && !subjects))
        return FW_ERR_INVALID;
    memset(out, 0, sizeof *out);
    if (r->hdr.status != FW_STATUS_OK)
        return r->hdr.status;
    fw_reader rd;
    fw_reader_init(&rd, r->body, r->body_len);
    size_t n = fw_get_u16(&rd);
    for (size_t i = 0; i < n && !rd.err; i++) {
        fw_subject s;
        s.subject = fw_get_str(&rd, &s.subject_len);
        s.faces = fw_get_u32(&rd);
        if (i < max_subjects)
            subjects[i] = s;
    }
    out->next_cursor = fw_get_str(&rd, &out->next_cursor_len);
    if (!fw_reader_done(&rd)) {
        memset(out, 0, sizeof *out);
        return FW_ERR_MALFORMED;
    }
    out->n = n;
    out->nstored = n < max_subjects ? n : max_subjects;
    return FW_OK;
}

int fw_list(fw_client *c, const char *cursor, size_t cursor_len, uint16_t limit, fw_subject *subjects,
            size_t max_subjects, fw_list_result *out)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (!out || (max_subjects && !subjects) || (cursor_len && !cursor) || cursor_len > 0xFFFF)
        return fail(c, FW_ERR_INVALID, "bad cursor or NULL result");
    req r;
    req_begin(&r, c);
    /* Copied into tx (not referenced): the cursor usually points into the previous response. */
    fw_put_str(&r.w, cursor ? cursor : "", cursor_len);
    fw_put_u16(&r.w, limit);
    fw_response resp;
    rc = call(&r, FW_OP_LIST, &resp);
    if (rc != FW_OK)
        return rc;
    return decoded(c, fw_decode_list(&resp, subjects, max_subjects, out), FW_OP_LIST);
}

int fw_gallery(fw_client *c, fw_gallery_info *out)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (!out)
        return fail(c, FW_ERR_INVALID, "NULL result");
    req r;
    req_begin(&r, c);
    fw_response resp;
    rc = call(&r, FW_OP_GALLERY_INFO, &resp);
    if (rc != FW_OK)
        return rc;
    fw_reader rd;
    fw_reader_init(&rd, resp.body, resp.body_len);
    out->faces = fw_get_u64(&rd);
    out->subjects = fw_get_u64(&rd);
    out->bytes = fw_get_u64(&rd);
    out->last_seq = fw_get_u64(&rd);
    return expect_done(c, &rd, FW_OP_GALLERY_INFO);
}

int fw_test_sleep(fw_client *c, uint32_t ms)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    fw_put_u32(&r.w, ms);
    fw_response resp;
    rc = call(&r, FW_OP_TEST_SLEEP, &resp);
    if (rc != FW_OK)
        return rc;
    fw_reader rd;
    fw_reader_init(&rd, resp.body, resp.body_len);
    return expect_done(c, &rd, FW_OP_TEST_SLEEP);
}

int fw_test_fail(fw_client *c)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    fw_response resp;
    return call(&r, FW_OP_TEST_FAIL, &resp);
}

/* ---- camera streams ------------------------------------------------------------------------ */

int fw_stream_open(fw_client *c, const fw_stream_config *sc, uint32_t *stream_id)
{
    int rc = begin_call(c);
    if (rc != FW_OK)
        return rc;
    if (!sc || !sc->name || !stream_id)
        return fail(c, FW_ERR_INVALID, "NULL argument");
    size_t nlen = strlen(sc->name);
    if (nlen < 1 || nlen > 64)
        return fail(c, FW_ERR_INVALID, "stream name must be 1-64 bytes");
    req r;
    req_begin(&r, c);
    fw_put_str(&r.w, sc->name, nlen);
    fw_put_u8(&r.w, sc->capacity ? sc->capacity : 8);
    fw_put_u8(&r.w, sc->mode);
    fw_put_u8(&r.w, sc->policy);
    fw_put_u16(&r.w, sc->min_face);
    fw_put_u16(&r.w, sc->max_fps);
    fw_put_f32(&r.w, sc->max_distance);
    fw_put_u32(&r.w, sc->max_age_ms);
    fw_put_u16(&r.w, sc->stats_every);
    fw_put_u32(&r.w, sc->test_sleep_ms);
    fw_response resp;
    rc = call(&r, FW_OP_STREAM_OPEN, &resp);
    if (rc != FW_OK)
        return rc;
    if (resp.body_len != 4)
        return decoded(c, FW_ERR_MALFORMED, FW_OP_STREAM_OPEN);
    *stream_id = fw_rd32(resp.body);
    return FW_OK;
}

int fw_stream_push(fw_client *c, uint32_t stream_id, uint64_t seq, uint64_t capture_us,
                   const void *jpeg, size_t len)
{
    int rc = begin_on_conn(c);
    if (rc != FW_OK)
        return rc;
    if (!jpeg || len == 0)
        return fail(c, FW_ERR_INVALID, "empty frame");
    if (over_u32(len + 24))
        return fail(c, FW_ERR_TOO_LARGE, "frame over 4 GiB");
    uint8_t hb[FW_HEADER_LEN + 24];
    fw_header h;
    memset(&h, 0, sizeof h);
    h.magic = FW_MAGIC;
    h.version = FW_PROTO_VERSION;
    h.opcode = FW_OP_STREAM_FRAME;
    h.priority = c->cfg.priority;
    h.request_id = 0; /* never answered */
    h.body_len = (uint32_t)(24 + len);
    fw_header_encode(&h, hb);
    fw_writer w;
    fw_writer_init(&w, hb + FW_HEADER_LEN, 24);
    fw_put_u32(&w, stream_id);
    fw_put_u64(&w, seq);
    fw_put_u64(&w, capture_us);
    fw_put_u32(&w, (uint32_t)len);
#if defined(SIOCOUTQ)
    /* A frame the kernel takes only in part must be finished by waiting, which is what a
     * camera loop must not do: refuse it up front unless the send buffer has room for all of
     * it. Half of SO_SNDBUF is what Linux leaves for payload (the rest is its bookkeeping). */
    int queued = 0, sndbuf = 0;
    socklen_t sl = sizeof sndbuf;
    if (ioctl(c->fd, SIOCOUTQ, &queued) == 0 && getsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) == 0 &&
        sndbuf > 0 && queued >= 0 && (uint64_t)queued + sizeof hb + len > (uint64_t)sndbuf / 2 && queued > 0) {
        snprintf(c->errmsg, sizeof c->errmsg, "socket full: frame %llu not sent", (unsigned long long)seq);
        return FW_ERR_WOULD_BLOCK;
    }
#endif
#ifdef FW_WITH_SODIUM
    if (sealed(c)) {
        /* Sealed whole in tx (the JPEG copied in). Once sealed the frame must go out whole:
         * its counter value is spent. The room check above keeps that from waiting in the
         * common case. */
        size_t total = sizeof hb + len, flen = 0;
        if (c->tx_cap < total || c->tx_cap - total < FW_SECURE_TAG_LEN)
            return fail(c, FW_ERR_TOO_LARGE, "sealed stream frame of %lu bytes does not fit "
                        "tx_buf_size (%lu bytes)", (unsigned long)total, (unsigned long)c->tx_cap);
        memcpy(c->tx, hb, sizeof hb);
        memcpy(c->tx + sizeof hb, jpeg, len);
        int src = fw_secure_seal(&c->sess, &h, c->tx + FW_HEADER_LEN, total - FW_HEADER_LEN, c->tx,
                                 total + FW_SECURE_TAG_LEN, &flen);
        if (src != FW_SEC_OK) {
            conn_failed(c);
            return fail(c, FW_ERR_AUTH, "cannot seal stream frame: %s (connection closed)",
                        fw_secure_strerror(src));
        }
        struct iovec one = {c->tx, flen};
        rc = send_all(c, &one, 1, now_ms() + c->timeout_ms);
        if (rc == FW_OK)
            release_claim(c);
        return rc;
    }
#endif
    struct iovec iov[2] = { { hb, sizeof hb }, { (void *)(uintptr_t)jpeg, len } };
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = 2;
    ssize_t n;
    do
        n = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        snprintf(c->errmsg, sizeof c->errmsg, "socket full: frame %llu not sent", (unsigned long long)seq);
        return FW_ERR_WOULD_BLOCK; /* nothing sent: the connection is in frame */
    }
    if (n < 0) {
        if (errno == EPIPE || errno == ECONNRESET)
            return fail(c, FW_ERR_CLOSED, "connection closed by the server while sending");
        char eb[128];
        return fail(c, FW_ERR_IO, "send: %s", errtext(errno, eb, sizeof eb));
    }
    /* Part of it went: the rest must follow, or the byte stream is out of frame. */
    size_t done = (size_t)n;
    struct iovec *v = iov;
    int nv = 2;
    while (nv > 0 && done >= v->iov_len) {
        done -= v->iov_len;
        v++, nv--;
    }
    if (nv > 0) {
        v->iov_base = (uint8_t *)v->iov_base + done;
        v->iov_len -= done;
        rc = send_all(c, v, nv, now_ms() + c->timeout_ms);
        if (rc != FW_OK)
            return rc;
    }
    release_claim(c);
    return FW_OK;
}

static int decode_stats(fw_reader *r, fw_stream_stats *s)
{
    s->final = fw_get_u8(r);
    s->received = fw_get_u64(r);
    s->analysed = fw_get_u64(r);
    s->failed = fw_get_u64(r);
    s->dropped_overflow = fw_get_u64(r);
    s->dropped_superseded = fw_get_u64(r);
    s->dropped_deadline = fw_get_u64(r);
    s->dropped_memory = fw_get_u64(r);
    s->dropped_rate = fw_get_u64(r);
    s->seq_gaps = fw_get_u64(r);
    s->out_of_order = fw_get_u64(r);
    s->latency_p50_us = fw_get_u32(r);
    s->latency_p99_us = fw_get_u32(r);
    s->pending = fw_get_u8(r);
    return r->err ? FW_ERR_MALFORMED : FW_OK;
}

static int decode_event(const fw_response *resp, fw_stream_event *ev, fw_stream_face *faces, size_t max_faces)
{
    fw_reader r;
    fw_reader_init(&r, resp->body, resp->body_len);
    memset(ev, 0, sizeof *ev);
    ev->kind = fw_get_u8(&r);
    ev->stream_id = fw_get_u32(&r);
    if (r.err)
        return FW_ERR_MALFORMED;
    switch (ev->kind) {
    case FW_STREAM_EV_FACES:
        ev->seq = fw_get_u64(&r);
        ev->capture_us = fw_get_u64(&r);
        ev->latency_us = fw_get_u32(&r);
        ev->width = fw_get_u32(&r);
        ev->height = fw_get_u32(&r);
        ev->nfaces = fw_get_u16(&r);
        for (size_t i = 0; i < ev->nfaces && !r.err; i++) {
            fw_stream_face f;
            memset(&f, 0, sizeof f);
            f.box.x = fw_get_f32(&r);
            f.box.y = fw_get_f32(&r);
            f.box.w = fw_get_f32(&r);
            f.box.h = fw_get_f32(&r);
            f.score = fw_get_f32(&r);
            uint8_t has = fw_get_u8(&r);
            if (has > 1)
                return FW_ERR_MALFORMED;
            f.has_match = has;
            if (has) {
                f.subject = fw_get_str(&r, &f.subject_len);
                f.face_id = fw_get_u64(&r);
                f.distance = fw_get_f32(&r);
            }
            if (faces && i < max_faces)
                faces[ev->nstored++] = f;
        }
        break;
    case FW_STREAM_EV_STATS:
        if (decode_stats(&r, &ev->stats) != FW_OK)
            return FW_ERR_MALFORMED;
        break;
    case FW_STREAM_EV_ERROR:
        ev->seq = fw_get_u64(&r);
        ev->status = fw_get_u16(&r);
        ev->msg = fw_get_str(&r, &ev->msg_len);
        break;
    default:
        return FW_ERR_MALFORMED;
    }
    return r.err || fw_reader_left(&r) ? FW_ERR_MALFORMED : FW_OK;
}

int fw_stream_poll(fw_client *c, uint32_t timeout_ms, fw_stream_event *ev, fw_stream_face *faces,
                   size_t max_faces)
{
    int rc = begin_on_conn(c);
    if (rc != FW_OK)
        return rc;
    if (!ev)
        return fail(c, FW_ERR_INVALID, "NULL event");
    release_claim(c);
    uint64_t deadline = now_ms() + timeout_ms;
    fw_response resp;
    for (;;) {
        rc = scan_buffered(c, 0, 1, &resp);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            rc = decode_event(&resp, ev, faces, max_faces);
            return rc == FW_OK ? FW_OK : fail(c, rc, "malformed stream event");
        }
        rc = read_some(c);
        if (rc == FW_OK)
            continue;
        if (rc != FW_ERR_WOULD_BLOCK)
            return rc;
        int left = ms_left(deadline);
        if (left == 0)
            return FW_ERR_WOULD_BLOCK; /* no event in time; the connection is fine */
        struct pollfd p = { c->fd, POLLIN, 0 };
        if (poll(&p, 1, left) < 0 && errno != EINTR) {
            char eb[128];
            return fail(c, FW_ERR_IO, "poll: %s", errtext(errno, eb, sizeof eb));
        }
    }
}

int fw_stream_close(fw_client *c, uint32_t stream_id, fw_stream_stats *out)
{
    int rc = begin_on_conn(c);
    if (rc != FW_OK)
        return rc;
    req r;
    req_begin(&r, c);
    fw_put_u32(&r.w, stream_id);
    fw_response resp;
    rc = call(&r, FW_OP_STREAM_CLOSE, &resp);
    if (rc != FW_OK)
        return rc;
    fw_reader rd;
    fw_reader_init(&rd, resp.body, resp.body_len);
    fw_stream_stats s;
    if (decode_stats(&rd, &s) != FW_OK || fw_reader_left(&rd))
        return decoded(c, FW_ERR_MALFORMED, FW_OP_STREAM_CLOSE);
    if (out)
        *out = s;
    return FW_OK;
}
