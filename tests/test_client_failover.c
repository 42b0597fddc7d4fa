/*
 * test_client_failover.c — libfacewire and fwcat with several endpoints (issue #9): connect to
 * the first that answers, fail over when a connection breaks, re-send only what is safe to
 * repeat, and say exactly what is wrong with a bad endpoint string.
 *
 * Real servers: bin/facewired from $FW_BIN, started and SIGKILLed through tests/tu_server.h.
 * Dead endpoints are loopback ports that were free a moment ago (bound, then closed), so a
 * connect to them is refused at once. A request lost in flight is staged with a "swallower":
 * a thread that accepts one connection, reads one whole request, records it and closes
 * (FIN or RST) without answering -- the moment the library cannot know whether the request
 * was carried out, reached deterministically. Everything waits on sockets or exits, with
 * tu_timeout_ms() as the bound; nothing sleeps to synchronise.
 *
 * A client test: it links libfacewire and tests/tu_*.c only and is cross-built for ARM, where
 * it runs under qemu-arm with $FW_BIN naming the native binaries (the servers and fwcat run
 * natively; only the library under test is ARM). The ARM library has no libsodium: the secure
 * test checks that it says so.
 */
#include "tests/check.h"
#include "tests/tu_server.h"
#include "client/facewire.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------------ */

static tu_server *server_start(const char *const *args)
{
    tu_server *s = calloc(1, sizeof *s);
    if (s && tu_server_start(s, args) != 0) {
        free(s);
        s = NULL;
    }
    return s;
}

/* SIGKILL (mid-session, no drain) and reap. The status is 128 + 9, so tu_server_wait prints
 * the log; that is expected here. */
static int server_kill(tu_server *s)
{
    if (!s)
        return -1;
    int rc = tu_server_kill(s, SIGKILL);
    int st = tu_server_wait(s);
    return rc == 0 && st == 128 + SIGKILL ? 0 : -1;
}

/* Stop (if still running) and free. */
static void server_free(tu_server *s)
{
    if (!s)
        return;
    if (s->pid > 0)
        tu_server_stop(s);
    free(s);
}

static void ep_text(char *buf, size_t cap, int port) { snprintf(buf, cap, "127.0.0.1:%d", port); }

/* Up to two endpoints for cfg.endpoints (list), with their text (e[i], also what
 * fw_client_endpoint says of endpoint i). A test re-points one with eps_set before it opens
 * the next client. */
typedef struct two_eps {
    char e[2][32];
    const char *list[2];
} two_eps;

static void eps_set(two_eps *ep, int i, int port)
{
    ep_text(ep->e[i], sizeof ep->e[i], port);
    ep->list[i] = ep->e[i];
}

static void eps_init(two_eps *ep, int port0, int port1)
{
    eps_set(ep, 0, port0);
    eps_set(ep, 1, port1);
}

/* A managed client (cfg.endpoints) with generous bounds: the tests are about where requests
 * go, never about time. */
static fw_client *client_for(const char *const *eps, int n, int retry)
{
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    cfg.endpoints = eps;
    cfg.n_endpoints = n;
    cfg.timeout_ms = (uint32_t)tu_timeout_ms();
    cfg.retry.enabled = retry;
    cfg.retry.base_ms = 1;
    cfg.retry.max_ms = 4;
    cfg.retry.seed = 9;
    fw_client *c = NULL;
    return fw_client_open(&cfg, &c) == FW_OK ? c : NULL;
}

static int ping_is(fw_client *c, const char *text)
{
    const uint8_t *echo = NULL;
    size_t n = 0;
    int rc = fw_ping(c, text, strlen(text), &echo, &n);
    return rc == FW_OK && n == strlen(text) && memcmp(echo, text, n) == 0;
}

/* ---- the swallower: reads one request, never answers -------------------------------------- */

typedef struct swallow {
    int lfd, port;
    int reset;             /* close with RST (SO_LINGER 0) rather than FIN */
    pthread_t th;
    int started;
    /* read after swallow_join() */
    int nreq;
    uint8_t opcode;
    uint32_t body_len;
    uint8_t body[64];      /* the first bytes of the body */
} swallow;

/* Read n bytes before the deadline (tu_now_ms() time); 0 or -1. */
static int read_by(int fd, void *p, size_t n, int64_t deadline)
{
    return tu_recv_exact(fd, p, n, deadline) == (ssize_t)n ? 0 : -1;
}

static void *swallow_main(void *arg)
{
    swallow *s = arg;
    int64_t deadline = tu_now_ms() + tu_timeout_ms();
    struct pollfd p = {s->lfd, POLLIN, 0};
    int fd = poll(&p, 1, tu_timeout_ms()) == 1 ? accept(s->lfd, NULL, NULL) : -1;
    /* From now on the port refuses: a reconnect must go to the next endpoint. */
    close(s->lfd);
    s->lfd = -1;
    if (fd < 0)
        return NULL;
    uint8_t hb[FW_HEADER_LEN];
    if (read_by(fd, hb, sizeof hb, deadline) == 0) {
        fw_header h;
        fw_header_decode(hb, &h);
        uint32_t keep = h.body_len < sizeof s->body ? h.body_len : (uint32_t)sizeof s->body;
        int ok = read_by(fd, s->body, keep, deadline) == 0;
        for (uint32_t left = h.body_len - keep; ok && left > 0;) { /* the rest: read, dropped */
            uint8_t sink[512];
            uint32_t k = left < sizeof sink ? left : (uint32_t)sizeof sink;
            ok = read_by(fd, sink, k, deadline) == 0;
            left -= k;
        }
        if (ok) {
            s->nreq = 1;
            s->opcode = h.opcode;
            s->body_len = h.body_len;
        }
    }
    if (s->reset) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(fd);
    return NULL;
}

static int swallow_start(swallow *s, int reset)
{
    memset(s, 0, sizeof *s);
    s->reset = reset;
    s->lfd = tu_listen_loopback(4, &s->port);
    if (s->lfd < 0)
        return -1;
    if (pthread_create(&s->th, NULL, swallow_main, s) != 0) {
        close(s->lfd);
        return -1;
    }
    s->started = 1;
    return 0;
}

static void swallow_join(swallow *s)
{
    if (s->started)
        pthread_join(s->th, NULL);
    s->started = 0;
}

/* A retrying client for ep whose endpoint 0 is a new swallower s (reset: it closes with RST):
 * its first request is taken and never answered. NULL if either could not be made. */
static fw_client *swallowed_client(swallow *s, int reset, two_eps *ep)
{
    if (swallow_start(s, reset) != 0)
        return NULL;
    eps_set(ep, 0, s->port);
    return client_for(ep->list, 2, 1);
}

/* ---- endpoint strings --------------------------------------------------------------------- */

static void t_op_classification(void)
{
    /* Safe to repeat: reads and pure computations. */
    const uint8_t yes[] = {FW_OP_PING, FW_OP_INFO, FW_OP_DETECT, FW_OP_EMBED, FW_OP_VERIFY,
                           FW_OP_IDENTIFY, FW_OP_LIST, FW_OP_GALLERY_INFO, FW_OP_TEST_SLEEP,
                           FW_OP_TEST_FAIL};
    /* Not: may have been carried out, or belong to the dead connection. */
    const uint8_t no[] = {FW_OP_ENROLL, FW_OP_DELETE, FW_OP_STREAM_OPEN, FW_OP_STREAM_FRAME,
                          FW_OP_STREAM_CLOSE, FW_OP_STREAM_EVENT, FW_OP_HELLO, FW_OP_AUTH,
                          FW_OP_TEST_HOLD, FW_OP_TEST_RELEASE, 0x00, 0x03, 0x25, 0x7B, 0xFF};
    for (size_t i = 0; i < sizeof yes; i++)
        CHECK_MSG(fw_client_op_resendable(yes[i]) == 1, "opcode 0x%02x", yes[i]);
    for (size_t i = 0; i < sizeof no; i++)
        CHECK_MSG(fw_client_op_resendable(no[i]) == 0, "opcode 0x%02x", no[i]);
}

static void t_bad_endpoints(void)
{
    static char longest[FW_ENDPOINT_MAX + 2];
    memset(longest, 'a', sizeof longest - 1);
    memcpy(longest + FW_ENDPOINT_MAX - 5, ":7420", 6); /* exactly FW_ENDPOINT_MAX bytes */
    static char too_long[FW_ENDPOINT_MAX + 2];
    memset(too_long, 'a', sizeof too_long - 1);
    memcpy(too_long + FW_ENDPOINT_MAX - 4, ":7420", 6); /* one more */
    static const struct {
        const char *ep[2];
        int n;
        const char *msg;
    } bad[] = {
        {{"127.0.0.1"}, 1, "bad endpoint \"127.0.0.1\": expected HOST:PORT or [IPV6]:PORT"},
        {{"a:1", "db2:0"}, 2, "bad endpoint \"db2:0\": port must be a number 1..65535"},
        {{"db:65536"}, 1, "bad endpoint \"db:65536\": port must be a number 1..65535"},
        {{"db:http"}, 1, "bad endpoint \"db:http\": port must be a number 1..65535"},
        {{"db:"}, 1, "bad endpoint \"db:\": port must be a number 1..65535"},
        {{"db:+80"}, 1, "bad endpoint \"db:+80\": port must be a number 1..65535"},
        {{"db:000080"}, 1, "bad endpoint \"db:000080\": port must be a number 1..65535"},
        {{":7420"}, 1, "bad endpoint \":7420\": empty host"},
        {{"[]:7420"}, 1, "bad endpoint \"[]:7420\": empty host"},
        {{"::1:7420"}, 1, "bad endpoint \"::1:7420\": an IPv6 address goes in brackets, [ADDR]:PORT"},
        {{"[::1]7420"}, 1, "bad endpoint \"[::1]7420\": expected HOST:PORT or [IPV6]:PORT"},
        {{"[::1]"}, 1, "bad endpoint \"[::1]\": expected HOST:PORT or [IPV6]:PORT"},
        {{"[::1:7420"}, 1, "bad endpoint \"[::1:7420\": expected HOST:PORT or [IPV6]:PORT"},
        {{"a]:7420"}, 1, "bad endpoint \"a]:7420\": expected HOST:PORT or [IPV6]:PORT"},
        {{""}, 1, "bad endpoint \"\": expected HOST:PORT or [IPV6]:PORT"},
        {{"a:1", "db 2:7420"}, 2, "bad endpoint 2: byte 0x20 is not printable ASCII"},
        {{"db\n:7420"}, 1, "bad endpoint 1: byte 0x0a is not printable ASCII"},
        {{"d\xc3\xa9:7420"}, 1, "bad endpoint 1: byte 0xc3 is not printable ASCII"},
        {{too_long}, 1, "bad endpoint 1: longer than 255 bytes"},
        {{"a:1", NULL}, 2, "bad endpoint 2: NULL"},
    };
    fw_client_config cfg;
    char err[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fw_client_config_init(&cfg);
        cfg.endpoints = bad[i].ep;
        cfg.n_endpoints = bad[i].n;
        fw_client *c = (fw_client *)&cfg; /* must be reset to NULL */
        CHECK_EQ_INT(fw_client_config_check(&cfg, err, sizeof err), FW_ERR_INVALID);
        CHECK_EQ_STR(err, bad[i].msg);
        CHECK_EQ_INT(fw_client_open(&cfg, &c), FW_ERR_INVALID);
        CHECK(c == NULL);
        CHECK_EQ_INT(fw_client_footprint(&cfg), 0);
    }
    /* the count and the array */
    const char *nine[FW_MAX_ENDPOINTS + 1];
    for (int i = 0; i <= FW_MAX_ENDPOINTS; i++)
        nine[i] = "a:1";
    fw_client_config_init(&cfg);
    cfg.endpoints = nine;
    cfg.n_endpoints = FW_MAX_ENDPOINTS + 1;
    CHECK_EQ_INT(fw_client_config_check(&cfg, err, sizeof err), FW_ERR_INVALID);
    CHECK_EQ_STR(err, "n_endpoints must be 0..8, not 9");
    cfg.n_endpoints = -1;
    CHECK_EQ_INT(fw_client_config_check(&cfg, err, sizeof err), FW_ERR_INVALID);
    CHECK_EQ_STR(err, "n_endpoints must be 0..8, not -1");
    cfg.endpoints = NULL;
    cfg.n_endpoints = 1;
    CHECK_EQ_INT(fw_client_config_check(&cfg, err, sizeof err), FW_ERR_INVALID);
    CHECK_EQ_STR(err, "endpoints is NULL but n_endpoints is 1");
    /* a message cut to the caller's buffer, still terminated */
    const char *one[] = {"db:x"};
    cfg.endpoints = one;
    char small[8];
    CHECK_EQ_INT(fw_client_config_check(&cfg, small, sizeof small), FW_ERR_INVALID);
    CHECK_EQ_STR(small, "bad end");
    CHECK_EQ_INT(fw_client_config_check(&cfg, NULL, 0), FW_ERR_INVALID);
    /* the other checks say why too */
    fw_client_config_init(&cfg);
    cfg.rx_buf_size = 100;
    CHECK_EQ_INT(fw_client_config_check(&cfg, err, sizeof err), FW_ERR_INVALID);
    CHECK_EQ_STR(err, "rx_buf_size must be at least 256 bytes");
    fw_client_config_init(&cfg);
    cfg.host = "";
    CHECK_EQ_INT(fw_client_config_check(&cfg, err, sizeof err), FW_ERR_INVALID);
    CHECK_EQ_STR(err, "host must be 1..255 bytes");

    /* Good ones, the longest included; the strings are copied at open. */
    char mine[2][32];
    snprintf(mine[0], sizeof mine[0], "[::1]:7420");
    snprintf(mine[1], sizeof mine[1], "db-1.example:65535");
    const char *good[] = {mine[0], mine[1], "[fe80::1%eth0]:1", "10.0.0.5:7420", longest};
    fw_client_config_init(&cfg);
    cfg.endpoints = good;
    cfg.n_endpoints = 5;
    CHECK_EQ_INT(fw_client_config_check(&cfg, err, sizeof err), FW_OK);
    CHECK_EQ_STR(err, "");
    CHECK(fw_client_footprint(&cfg) > 0);
    fw_client *c = NULL;
    CHECK_EQ_INT(fw_client_open(&cfg, &c), FW_OK);
    memset(mine, 'x', sizeof mine);
    CHECK_EQ_STR(fw_client_endpoint(c), "[::1]:7420");
    fw_client_close(c);

    /* host/port are shown the way an endpoint is written */
    fw_client_config_init(&cfg);
    cfg.host = "::1";
    cfg.port = "7421";
    CHECK_EQ_INT(fw_client_open(&cfg, &c), FW_OK);
    CHECK_EQ_STR(fw_client_endpoint(c), "[::1]:7421");
    fw_client_close(c);
    fw_client_config_init(&cfg);
    CHECK_EQ_INT(fw_client_open(&cfg, &c), FW_OK);
    CHECK_EQ_STR(fw_client_endpoint(c), "127.0.0.1:7420");
    fw_client_close(c);
}

static void t_caller_memory_holds_endpoints(void)
{
    /* No allocation with cfg.mem: the endpoint strings live in the caller's block too. */
    tu_server *b = server_start(NULL);
    CHECK(b);
    two_eps ep;
    eps_init(&ep, tu_closed_port(), b->port);
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    cfg.endpoints = ep.list;
    cfg.n_endpoints = 2;
    cfg.rx_buf_size = 1024;
    size_t need = fw_client_footprint(&cfg);
    fw_client_config_init(&cfg);
    cfg.rx_buf_size = 1024;
    size_t need_plain = fw_client_footprint(&cfg);
    cfg.endpoints = ep.list;
    cfg.n_endpoints = 2;
    static unsigned char block[16384];
    cfg.mem = block + 3;
    cfg.mem_size = need;
    fw_client *c = NULL;
    int rc_open = fw_client_open(&cfg, &c);
    int ok = rc_open == FW_OK && ping_is(c, "in place");
    int inside = (unsigned char *)fw_client_endpoint(c) > block &&
                 (unsigned char *)fw_client_endpoint(c) < block + need + 3;
    char where[32];
    snprintf(where, sizeof where, "%s", fw_client_endpoint(c));
    fw_client_close(c);
    server_free(b);
    CHECK(need > 0 && need <= sizeof block - 3);
    CHECK(need > need_plain); /* the strings are counted */
    CHECK_EQ_INT(rc_open, FW_OK);
    CHECK(ok);
    CHECK(inside);
    CHECK_EQ_STR(where, ep.e[1]);
}

/* ---- connecting --------------------------------------------------------------------------- */

static void t_first_refuses_second_answers(void)
{
    tu_server *b = server_start(NULL);
    CHECK(b);
    two_eps ep;
    eps_init(&ep, tu_closed_port(), b->port);
    fw_client *c = client_for(ep.list, 2, 0);
    char first[32];
    snprintf(first, sizeof first, "%s", c ? fw_client_endpoint(c) : "");
    int rc = c ? fw_client_connect(c) : -100;
    char where[32];
    snprintf(where, sizeof where, "%s", c ? fw_client_endpoint(c) : "");
    int ok = rc == FW_OK && ping_is(c, "second");
    fw_client_close(c);
    server_free(b);
    CHECK(c);
    CHECK_EQ_STR(first, ep.e[0]);
    CHECK_EQ_INT(rc, FW_OK);
    CHECK_EQ_STR(where, ep.e[1]);
    CHECK(ok);
}

static void t_all_down(void)
{
    char want[160];
    two_eps ep;
    int p1 = tu_closed_port();
    eps_init(&ep, tu_closed_port(), p1);
    fw_client *c = client_for(ep.list, 2, 1);
    CHECK(c);
    snprintf(want, sizeof want, "all 2 endpoints failed; last: connect to 127.0.0.1:%d: Connection refused", p1);
    int rc = fw_client_connect(c);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", fw_client_errmsg(c));
    /* a call connects by itself, and fails the same way */
    int rc_ping = fw_ping(c, "x", 1, NULL, NULL);
    char msg_ping[256];
    snprintf(msg_ping, sizeof msg_ping, "%s", fw_client_errmsg(c));
    char next[32];
    snprintf(next, sizeof next, "%s", fw_client_endpoint(c));
    int connected = fw_client_is_connected(c);
    fw_client_close(c);
    CHECK_EQ_INT(rc, FW_ERR_CONNECT);
    CHECK_EQ_STR(msg, want);
    CHECK_EQ_INT(rc_ping, FW_ERR_CONNECT);
    CHECK_EQ_STR(msg_ping, want);
    CHECK_EQ_STR(next, ep.e[0]); /* all failed: the next round starts where this one did */
    CHECK_EQ_INT(connected, 0);

    /* one endpoint: its own error, as a host/port client has always said it */
    const char *one[] = {ep.e[1]};
    c = client_for(one, 1, 0);
    CHECK(c);
    rc = fw_client_connect(c);
    snprintf(msg, sizeof msg, "%s", fw_client_errmsg(c));
    fw_client_close(c);
    snprintf(want, sizeof want, "connect to 127.0.0.1:%d: Connection refused", p1);
    CHECK_EQ_INT(rc, FW_ERR_CONNECT);
    CHECK_EQ_STR(msg, want);
}

static void t_silent_endpoint_costs_its_share(void)
{
    /* A listener whose accept queue is full drops SYNs: a connect to it hangs, like one to a
     * host that is down behind a firewall. With two endpoints it may use half of
     * connect_timeout_ms; the second one still gets the rest. */
    tu_server *b = server_start(NULL);
    CHECK(b);
    int hport = 0;
    int hole = tu_listen_loopback(0, &hport);
    int filler = hole >= 0 ? tu_connect("127.0.0.1", hport) : -1; /* fills the queue */
    two_eps ep;
    eps_init(&ep, hport, b->port);
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    cfg.endpoints = ep.list;
    cfg.n_endpoints = 2;
    cfg.connect_timeout_ms = 1000;
    fw_client *c = NULL;
    int rc = fw_client_open(&cfg, &c) == FW_OK ? fw_client_connect(c) : -100;
    char where[32];
    snprintf(where, sizeof where, "%s", c ? fw_client_endpoint(c) : "");
    int ok = rc == FW_OK && ping_is(c, "after the hole");
    fw_client_close(c);
    if (filler >= 0)
        close(filler);
    if (hole >= 0)
        close(hole);
    server_free(b);
    CHECK(hole >= 0 && filler >= 0);
    CHECK_EQ_INT(rc, FW_OK);
    CHECK_EQ_STR(where, ep.e[1]);
    CHECK(ok);
}

/* ---- a server dies ------------------------------------------------------------------------ */

static void t_killed_server_retry_goes_on(void)
{
    tu_server *a = server_start(NULL), *b = server_start(NULL);
    CHECK(a && b);
    two_eps ep;
    eps_init(&ep, a->port, b->port);
    fw_client *c = client_for(ep.list, 2, 1);
    int rc = c ? fw_client_connect(c) : -100;
    char before[32];
    snprintf(before, sizeof before, "%s", c ? fw_client_endpoint(c) : "");
    int ok_before = rc == FW_OK && ping_is(c, "one");
    int killed = server_kill(a);
    /* the connection is dead now; the same call goes on at b */
    int ok_after = c && ping_is(c, "two");
    char after[32], msg[256];
    snprintf(after, sizeof after, "%s", c ? fw_client_endpoint(c) : "");
    snprintf(msg, sizeof msg, "%s", c ? fw_client_errmsg(c) : "");
    fw_client_close(c);
    server_free(a);
    server_free(b);
    CHECK(c);
    CHECK_EQ_STR(before, ep.e[0]);
    CHECK(ok_before);
    CHECK_EQ_INT(killed, 0);
    CHECK(ok_after);
    CHECK_EQ_STR(after, ep.e[1]);
    CHECK_EQ_STR(msg, ""); /* a success, whatever happened on the way */
}

static void t_killed_server_no_retry(void)
{
    /* Without the retry policy the broken call fails; the next one connects to b by itself. */
    tu_server *a = server_start(NULL), *b = server_start(NULL);
    CHECK(a && b);
    two_eps ep;
    eps_init(&ep, a->port, b->port);
    fw_client *c = client_for(ep.list, 2, 0);
    int ok_before = c && fw_client_connect(c) == FW_OK && ping_is(c, "one");
    int killed = server_kill(a);
    int rc = c ? fw_ping(c, "two", 3, NULL, NULL) : -100;
    int connected = fw_client_is_connected(c);
    char next[32];
    snprintf(next, sizeof next, "%s", c ? fw_client_endpoint(c) : "");
    int ok_after = c && ping_is(c, "three");
    char after[32];
    snprintf(after, sizeof after, "%s", c ? fw_client_endpoint(c) : "");
    fw_client_close(c);
    server_free(a);
    server_free(b);
    CHECK(ok_before);
    CHECK_EQ_INT(killed, 0);
    CHECK_EQ_INT(rc, FW_ERR_CLOSED);
    CHECK_EQ_INT(connected, 0);
    CHECK_EQ_STR(next, ep.e[1]);
    CHECK(ok_after);
    CHECK_EQ_STR(after, ep.e[1]);
}

static void t_order_sticky_then_round_robin(void)
{
    /* After failing over to b the client stays there, even once a is back (a reconnect
     * starts at the endpoint in use); when b dies it wraps around to a. */
    tu_server *a = server_start(NULL), *b = server_start(NULL), *a2 = NULL;
    CHECK(a && b);
    char listen_a[40];
    two_eps ep;
    int port_a = a->port;
    eps_init(&ep, a->port, b->port);
    snprintf(listen_a, sizeof listen_a, "127.0.0.1:%d", port_a);
    fw_client *c = client_for(ep.list, 2, 0);
    int ok = c && fw_client_connect(c) == FW_OK && ping_is(c, "on a");
    int killed_a = server_kill(a);
    int rc_broken = c ? fw_ping(c, "x", 1, NULL, NULL) : -100;
    const char *again[] = {"--listen", listen_a, NULL};
    a2 = server_start(again); /* a is back, on its port */
    int rc_re = c ? fw_client_connect(c) : -100;
    char sticky[32];
    snprintf(sticky, sizeof sticky, "%s", c ? fw_client_endpoint(c) : "");
    int ok_b = rc_re == FW_OK && ping_is(c, "on b");
    int killed_b = server_kill(b);
    int rc_broken_b = c ? fw_ping(c, "y", 1, NULL, NULL) : -100;
    int ok_a2 = c && ping_is(c, "on a again");
    char wrapped[32];
    snprintf(wrapped, sizeof wrapped, "%s", c ? fw_client_endpoint(c) : "");
    fw_client_close(c);
    server_free(a);
    server_free(b);
    server_free(a2);
    CHECK(ok);
    CHECK_EQ_INT(killed_a, 0);
    CHECK_EQ_INT(rc_broken, FW_ERR_CLOSED);
    CHECK(a2 != NULL);
    CHECK_EQ_INT(rc_re, FW_OK);
    CHECK_EQ_STR(sticky, ep.e[1]);
    CHECK(ok_b);
    CHECK_EQ_INT(killed_b, 0);
    CHECK_EQ_INT(rc_broken_b, FW_ERR_CLOSED);
    CHECK(ok_a2);
    CHECK_EQ_STR(wrapped, ep.e[0]);
}

/* ---- what is sent again ------------------------------------------------------------------- */

static void descriptor(float *d)
{
    for (int i = 0; i < FW_DESCRIPTOR_DIM; i++)
        d[i] = (i % 7) * 0.01f + 0.02f;
}

static void t_safe_requests_are_sent_again(void)
{
    /* The swallower takes the request and closes: the retry policy sends it to b. */
    tu_server *b = server_start(NULL);
    CHECK(b);
    two_eps ep;
    eps_set(&ep, 1, b->port);
    float d[FW_DESCRIPTOR_DIM];
    descriptor(d);
    for (int reset = 0; reset <= 1; reset++) {
        swallow s1, s2;
        fw_client *c = swallowed_client(&s1, reset, &ep);
        int ok_ping = c && ping_is(c, "again");
        swallow_join(&s1);
        char where[32];
        snprintf(where, sizeof where, "%s", c ? fw_client_endpoint(c) : "");
        /* IDENTIFY too; b's gallery is empty, so: OK, one face, no matches */
        fw_client_close(c);
        c = swallowed_client(&s2, reset, &ep);
        fw_input in = fw_input_descriptor(d);
        fw_identify_face faces[2];
        fw_match matches[4];
        fw_identify_result res;
        int rc_id = c ? fw_identify(c, &in, 3, NULL, faces, 2, matches, 4, &res) : -100;
        swallow_join(&s2);
        fw_client_close(c);
        CHECK(c);
        CHECK_EQ_INT(s1.nreq, 1);
        CHECK_EQ_INT(s1.opcode, FW_OP_PING);
        CHECK(s1.body_len == 5 && memcmp(s1.body, "again", 5) == 0);
        CHECK(ok_ping);
        CHECK_EQ_STR(where, ep.e[1]);
        CHECK_EQ_INT(s2.nreq, 1);
        CHECK_EQ_INT(s2.opcode, FW_OP_IDENTIFY);
        CHECK_EQ_INT(rc_id, FW_OK);
        CHECK_EQ_INT(res.nfaces, 1);
        CHECK_EQ_INT(faces[0].nmatches, 0);
    }
    server_free(b);
}

static void t_enroll_delete_stream_not_sent_again(void)
{
    /* The swallower took the request and closed: it may have been carried out. The library
     * returns the error and b never sees the request (its gallery stays empty); the next
     * call connects to b. */
    tu_server *b = server_start(NULL);
    CHECK(b);
    two_eps ep;
    eps_set(&ep, 1, b->port);
    float d[FW_DESCRIPTOR_DIM];
    descriptor(d);
    fw_input in = fw_input_descriptor(d);

    swallow s;
    fw_client *c = swallowed_client(&s, 0, &ep);
    CHECK(c);
    uint64_t id = 0;
    int rc_enroll = fw_enroll(c, "alice", "m", 1, &in, &id);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", fw_client_errmsg(c));
    swallow_join(&s);
    fw_gallery_info gi_after_loss, gi_after_enroll;
    memset(&gi_after_loss, 0xff, sizeof gi_after_loss);
    memset(&gi_after_enroll, 0xff, sizeof gi_after_enroll);
    int rc_gi = fw_gallery(c, &gi_after_loss); /* connects to b */
    char where[32];
    snprintf(where, sizeof where, "%s", fw_client_endpoint(c));
    int rc_enroll2 = fw_enroll(c, "alice", "m", 1, &in, &id); /* now it is the caller's choice */
    int rc_gi2 = fw_gallery(c, &gi_after_enroll);
    fw_client_close(c);
    CHECK_EQ_INT(s.nreq, 1);
    CHECK_EQ_INT(s.opcode, FW_OP_ENROLL);
    CHECK_EQ_INT(rc_enroll, FW_ERR_CLOSED);
    CHECK_EQ_STR(msg, "connection closed by the server");
    CHECK_EQ_INT(rc_gi, FW_OK);
    CHECK_EQ_STR(where, ep.e[1]);
    CHECK_EQ_INT(gi_after_loss.faces, 0);
    CHECK_EQ_INT(rc_enroll2, FW_OK);
    CHECK_EQ_INT(rc_gi2, FW_OK);
    CHECK_EQ_INT(gi_after_enroll.faces, 1);

    /* DELETE (of alice, on b's gallery: repeated it would remove her face) */
    c = swallowed_client(&s, 1, &ep);
    CHECK(c);
    uint32_t deleted = 99;
    int rc_del = fw_delete_subject(c, "alice", &deleted);
    swallow_join(&s);
    int rc_gi3 = fw_gallery(c, &gi_after_loss);
    fw_client_close(c);
    CHECK_EQ_INT(s.nreq, 1);
    CHECK_EQ_INT(s.opcode, FW_OP_DELETE);
    CHECK_EQ_INT(rc_del, FW_ERR_CLOSED);
    CHECK_EQ_INT(deleted, 99);
    CHECK_EQ_INT(rc_gi3, FW_OK);
    CHECK_EQ_INT(gi_after_loss.faces, 1);

    /* STREAM_OPEN: the stream would have been the dead connection's */
    c = swallowed_client(&s, 0, &ep);
    CHECK(c);
    fw_stream_config sc;
    memset(&sc, 0, sizeof sc);
    sc.name = "door";
    uint32_t sid = 0;
    int rc_open = fw_stream_open(c, &sc, &sid);
    swallow_join(&s);
    /* stream calls never connect on their own: their stream was on the lost connection */
    int rc_push = fw_stream_push(c, sid, 1, 1, "x", 1);
    fw_stream_event ev;
    int rc_poll = fw_stream_poll(c, 0, &ev, NULL, 0);
    int rc_close = fw_stream_close(c, sid, NULL);
    fw_response r;
    int rc_recv = fw_recv(c, FW_ANY_REQUEST, &r);
    int connected = fw_client_is_connected(c);
    fw_client_close(c);
    server_free(b);
    CHECK_EQ_INT(s.nreq, 1);
    CHECK_EQ_INT(s.opcode, FW_OP_STREAM_OPEN);
    CHECK_EQ_INT(rc_open, FW_ERR_CLOSED);
    CHECK_EQ_INT(rc_push, FW_ERR_NOT_CONNECTED);
    CHECK_EQ_INT(rc_poll, FW_ERR_NOT_CONNECTED);
    CHECK_EQ_INT(rc_close, FW_ERR_NOT_CONNECTED);
    CHECK_EQ_INT(rc_recv, FW_ERR_NOT_CONNECTED);
    CHECK_EQ_INT(connected, 0);
}

static void t_resend_counts_as_an_attempt(void)
{
    /* max_attempts 1: no second attempt, even for PING. */
    tu_server *b = server_start(NULL);
    CHECK(b);
    swallow s;
    CHECK(swallow_start(&s, 0) == 0);
    two_eps ep;
    eps_init(&ep, s.port, b->port);
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    cfg.endpoints = ep.list;
    cfg.n_endpoints = 2;
    cfg.retry.enabled = 1;
    cfg.retry.max_attempts = 1;
    fw_client *c = NULL;
    int rc = fw_client_open(&cfg, &c) == FW_OK ? fw_ping(c, "p", 1, NULL, NULL) : -100;
    swallow_join(&s);
    fw_client_close(c);
    server_free(b);
    CHECK_EQ_INT(s.nreq, 1);
    CHECK_EQ_INT(rc, FW_ERR_CLOSED);
}

/* ---- managed vs. host/port ---------------------------------------------------------------- */

static void t_managed_connects_by_itself(void)
{
    tu_server *b = server_start(NULL);
    CHECK(b);
    two_eps ep;
    eps_set(&ep, 0, b->port);
    fw_client *c = client_for(ep.list, 1, 0);
    CHECK(c);
    /* no fw_client_connect(): fw_recv needs the connection its request went out on */
    fw_response r;
    int rc_recv = fw_recv(c, FW_ANY_REQUEST, &r);
    uint32_t id = 0;
    int rc_send = fw_send(c, FW_OP_PING, "pipe", 4, &id);
    int rc_recv2 = fw_recv(c, id, &r);
    int echoed = rc_recv2 == FW_OK && r.hdr.status == FW_STATUS_OK && r.body_len == 4 &&
                 memcmp(r.body, "pipe", 4) == 0;
    fw_client_close(c);
    server_free(b);
    CHECK_EQ_INT(rc_recv, FW_ERR_NOT_CONNECTED);
    CHECK_EQ_INT(rc_send, FW_OK);
    CHECK(echoed);
}

static void t_host_port_client_unchanged(void)
{
    /* Without cfg.endpoints nothing connects on its own, retry policy or not. */
    tu_server *a = server_start(NULL);
    CHECK(a);
    char port[16];
    snprintf(port, sizeof port, "%d", a->port);
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    cfg.host = "127.0.0.1";
    cfg.port = port;
    cfg.retry.enabled = 1;
    fw_client *c = NULL;
    int ok = fw_client_open(&cfg, &c) == FW_OK && fw_client_connect(c) == FW_OK && ping_is(c, "a");
    int killed = server_kill(a);
    int rc1 = c ? fw_ping(c, "b", 1, NULL, NULL) : -100;
    int rc2 = c ? fw_ping(c, "c", 1, NULL, NULL) : -100;
    fw_client_close(c);
    server_free(a);
    CHECK(ok);
    CHECK_EQ_INT(killed, 0);
    CHECK_EQ_INT(rc1, FW_ERR_CLOSED);
    CHECK_EQ_INT(rc2, FW_ERR_NOT_CONNECTED);
}

/* ---- secure sessions ---------------------------------------------------------------------- */

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static void t_secure_handshake_after_failover(void)
{
    /* Two servers requiring secure sessions: the request that fails over is only answered
     * because the library ran the handshake again on the new connection. */
    char dir[] = "/tmp/fw-failover-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char srv_prefix[64], dev_prefix[64], skey[80], spub[80], dkey[80], dpub[80], ak[80], out[4096];
    snprintf(srv_prefix, sizeof srv_prefix, "%s/srv", dir);
    snprintf(dev_prefix, sizeof dev_prefix, "%s/dev", dir);
    snprintf(skey, sizeof skey, "%s.key", srv_prefix);
    snprintf(spub, sizeof spub, "%s.pub", srv_prefix);
    snprintf(dkey, sizeof dkey, "%s.key", dev_prefix);
    snprintf(dpub, sizeof dpub, "%s.pub", dev_prefix);
    snprintf(ak, sizeof ak, "%s/authorized_keys", dir);
    const char *kg1[] = {"keygen", srv_prefix, NULL}, *kg2[] = {"keygen", dev_prefix, NULL};
    int keys_ok = tu_run("facewired", kg1, out, sizeof out) == 0 && tu_run("facewired", kg2, out, sizeof out) == 0;
    fw_client_secure sec;
    char err[512];
    int rc_load = keys_ok ? fw_client_secure_load(&sec, dkey, spub, err, sizeof err) : -100;
    if (rc_load == FW_ERR_UNSUPPORTED) {
        /* The build without libsodium (ARM): it must say so, never talk plaintext. */
        const char *eps[] = {"127.0.0.1:1"};
        fw_client_config cfg;
        fw_client_config_init(&cfg);
        cfg.endpoints = eps;
        cfg.n_endpoints = 1;
        cfg.secure = &sec;
        fw_client *c = NULL;
        int rc_open = fw_client_open(&cfg, &c);
        CHECK_EQ_INT(tu_rmtree(dir), 0);
        CHECK_EQ_STR(err, "secure sessions need a libfacewire built with libsodium");
        CHECK_EQ_INT(rc_open, FW_ERR_UNSUPPORTED);
        CHECK(c == NULL);
        return;
    }
    /* authorized_keys: the device's .pub line */
    FILE *f = fopen(dpub, "r");
    char line[512] = "";
    int have_line = f && fgets(line, sizeof line, f) != NULL;
    if (f)
        fclose(f);
    int ak_ok = have_line && write_text(ak, line) == 0;
    const char *args[] = {"--server-key", skey, "--authorized-keys", ak, "--require-secure", NULL};
    tu_server *a = ak_ok ? server_start(args) : NULL, *b = ak_ok ? server_start(args) : NULL;
    two_eps ep;
    eps_init(&ep, a ? a->port : 0, b ? b->port : 0);
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    cfg.endpoints = ep.list;
    cfg.n_endpoints = 2;
    cfg.timeout_ms = (uint32_t)tu_timeout_ms();
    cfg.retry.enabled = 1;
    cfg.retry.base_ms = 1;
    cfg.secure = &sec;
    fw_client *c = NULL;
    int ok_a = rc_load == FW_OK && a && b && fw_client_open(&cfg, &c) == FW_OK && fw_client_connect(c) == FW_OK && ping_is(c, "sealed a");
    int killed = server_kill(a);
    int ok_b = c && ping_is(c, "sealed b");
    char where[32];
    snprintf(where, sizeof where, "%s", c ? fw_client_endpoint(c) : "");
    fw_client_close(c);
    server_free(a);
    server_free(b);
    memset(&sec, 0, sizeof sec);
    CHECK_EQ_INT(tu_rmtree(dir), 0);
    CHECK(keys_ok);
    CHECK_EQ_INT(rc_load, FW_OK);
    CHECK(ak_ok);
    CHECK(ok_a);
    CHECK_EQ_INT(killed, 0);
    CHECK(ok_b);
    CHECK_EQ_STR(where, ep.e[1]);
}

/* ---- fwcat -------------------------------------------------------------------------------- */

static void t_fwcat_endpoints(void)
{
    tu_server *b = server_start(NULL);
    CHECK(b);
    static char out[8192];
    char dead_port[16], b_port[16], list[80], e_dead[32], e_b[32], want[200];
    int dp = tu_closed_port();
    snprintf(dead_port, sizeof dead_port, "%d", dp);
    snprintf(b_port, sizeof b_port, "%d", b->port);
    ep_text(e_dead, sizeof e_dead, dp);
    ep_text(e_b, sizeof e_b, b->port);
    snprintf(list, sizeof list, "%s,%s", e_dead, e_b);

    /* -h A,B: the first is dead, the second answers */
    const char *a1[] = {"-h", list, "ping", "hi", NULL};
    int st1 = tu_run("fwcat", a1, out, sizeof out);
    int ok1 = st1 == 0 && strcmp(out, "hi\n") == 0;
    char out1[256];
    snprintf(out1, sizeof out1, "%.200s", out);
    /* repeated -h, a HOST without port taking -p's; and --retry through the same list */
    const char *a2[] = {"-h", e_dead, "-h", "127.0.0.1", "-p", b_port, "--retry", "ping", "two", NULL};
    int st2 = tu_run("fwcat", a2, out, sizeof out);
    int ok2 = st2 == 0 && strcmp(out, "two\n") == 0;
    /* -h HOST -p PORT as before */
    const char *a3[] = {"-h", "127.0.0.1", "-p", b_port, "ping", "three", NULL};
    int st3 = tu_run("fwcat", a3, out, sizeof out);
    int ok3 = st3 == 0 && strcmp(out, "three\n") == 0;
    server_free(b);
    CHECK_MSG(ok1, "status %d, output: %s", st1, out1);
    CHECK(ok2);
    CHECK(ok3);

    /* all down: the last error */
    const char *a4[] = {"-h", list, "ping", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a4, out, sizeof out), 2);
    snprintf(want, sizeof want, "fwcat: all 2 endpoints failed; last: connect to %s: Connection refused\n", e_b);
    CHECK_EQ_STR(out, want);

    /* usage errors, exact */
    const char *a5[] = {"-h", "127.0.0.1:1,127.0.0.1:x", "ping", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a5, out, sizeof out), 2);
    CHECK_EQ_STR(out, "fwcat: bad endpoint \"127.0.0.1:x\": port must be a number 1..65535\n");
    const char *a6[] = {"-h", "a:1,b:1,c:1,d:1", "--host", "e:1,f:1,g:1,h:1,i:1", "ping", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a6, out, sizeof out), 2);
    CHECK_EQ_STR(out, "fwcat: --host: more than 8 servers\n");
    const char *a7[] = {"-h", "a:1,,b:1", "ping", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a7, out, sizeof out), 2);
    CHECK_EQ_STR(out, "fwcat: bad endpoint \":7420\": empty host\n");
    const char *a8[] = {"--json", "-h", "a:1,[::1", "ping", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a8, out, sizeof out), 2);
    CHECK_EQ_STR(out, "{\"error\":\"bad endpoint \\\"[::1:7420\\\": expected HOST:PORT or [IPV6]:PORT\","
                      "\"status\":\"USAGE\"}\n");
    const char *a9[] = {"-h", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a9, out, sizeof out), 2);
    CHECK_EQ_STR(out, "fwcat: -h needs a value\n");
    /* a bare IPv6 address takes -p's port in brackets */
    const char *a10[] = {"-h", "::1", "-h", "a:1", "-p", "0", "ping", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a10, out, sizeof out), 2);
    CHECK_EQ_STR(out, "fwcat: bad endpoint \"[::1]:0\": port must be a number 1..65535\n");
    /* --help documents it */
    const char *a11[] = {"--help", NULL};
    CHECK_EQ_INT(tu_run("fwcat", a11, out, sizeof out), 0);
    CHECK(strstr(out, "HOST:PORT[,HOST:PORT...]") != NULL);
    CHECK(strstr(out, "FAILOVER") != NULL);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_op_classification),
    CHECK_TEST(t_bad_endpoints),
    CHECK_TEST(t_caller_memory_holds_endpoints),
    CHECK_TEST(t_first_refuses_second_answers),
    CHECK_TEST(t_all_down),
    CHECK_TEST(t_silent_endpoint_costs_its_share),
    CHECK_TEST(t_killed_server_retry_goes_on),
    CHECK_TEST(t_killed_server_no_retry),
    CHECK_TEST(t_order_sticky_then_round_robin),
    CHECK_TEST(t_safe_requests_are_sent_again),
    CHECK_TEST(t_enroll_delete_stream_not_sent_again),
    CHECK_TEST(t_resend_counts_as_an_attempt),
    CHECK_TEST(t_managed_connects_by_itself),
    CHECK_TEST(t_host_port_client_unchanged),
    CHECK_TEST(t_secure_handshake_after_failover),
    CHECK_TEST(t_fwcat_endpoints),
};

int main(int argc, char **argv) { return check_main(tests, CHECK_COUNT(tests), argc, argv); }
