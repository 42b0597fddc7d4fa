/*
 * test_server.c — integration tests of facewired's connection layer: each test starts
 * bin/facewired (from $FW_BIN) on an ephemeral port and talks to it over plain sockets.
 *
 * Covered: PING/INFO, pipelining, frames split across reads and many frames per read, large
 * bodies, 1,000 concurrent connections, every bad-header rule (each followed by a healthy
 * request on the connection the rule leaves usable), --max-connections, the idle and
 * partial-frame timeouts, output backpressure, hostile clients that vanish mid-frame, the
 * command line, and graceful shutdown with and without work in flight.
 *
 * Every wait is for an event (a response, EOF, the server's exit) with a generous timeout;
 * no test sleeps, and none asserts on timing. Each server must exit 0 when stopped, which
 * under ASan also means no leaks and no sanitizer reports.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/tu_server.h"

/* ---- helpers ------------------------------------------------------------------------------- */

/* Start a server with args, run body, stop the server and require a clean exit. The body's
 * CHECKs return from the body only, so the server is always stopped. */
static void with_server(const char *const *args, void (*body)(tu_server *s))
{
    tu_server *s = calloc(1, sizeof *s);
    CHECK(s != NULL);
    if (tu_server_start(s, args) != 0) {
        free(s);
        CHECK_MSG(0, "server did not start");
    }
    body(s);
    int status = tu_server_stop(s);
    /* The loop closed with no handle left open (each closed exactly once). */
    int clean = !tu_server_log_has(s, "handles open") && tu_server_log_has(s, "msg=\"stopped\"");
    free(s);
    CHECK_EQ_INT(status, 0);
    CHECK(clean);
}

/* Read one response and require: RESPONSE flag, the opcode and id, the status, and (when
 * msg is not NULL) the error message exactly. Returns 1 if all hold. */
static int expect_reply(int fd, uint8_t op, uint32_t id, uint16_t status, const char *msg)
{
    fw_header h;
    uint8_t *body = NULL;
    char text[256] = "";
    int ok = 0;
    int r = tu_read_frame(fd, &h, &body);
    if (r != 1) {
        fprintf(stderr, "  expected a response to id %u, got %s\n", id, r == 0 ? "EOF" : "an error/timeout");
        return 0;
    }
    if (!(h.flags & FW_FLAG_RESPONSE) || h.opcode != op || h.request_id != id || h.status != status) {
        fprintf(stderr, "  response: flags=0x%x op=0x%02x id=%u status=%s; wanted op=0x%02x id=%u status=%s\n",
                h.flags, h.opcode, h.request_id, fw_status_name(h.status), op, id, fw_status_name(status));
        goto out;
    }
    if (msg) {
        if (tu_error_message(body, h.body_len, text, sizeof text) != 0 || strcmp(text, msg) != 0) {
            fprintf(stderr, "  error message \"%s\", wanted \"%s\"\n", text, msg);
            goto out;
        }
    }
    ok = 1;
out:
    free(body);
    return ok;
}

/* PING with a small body; 1 if the echo comes back intact. */
static int ping(int fd, uint32_t id)
{
    char msg[32];
    int n = snprintf(msg, sizeof msg, "ping %u", id);
    fw_header h = tu_request(FW_OP_PING, id, (uint32_t)n), rh;
    uint8_t *body = NULL;
    if (tu_send_frame(fd, &h, msg) != 0 || tu_read_frame(fd, &rh, &body) != 1)
        return 0;
    int ok = rh.status == FW_STATUS_OK && rh.request_id == id && rh.body_len == (uint32_t)n &&
             memcmp(body, msg, (size_t)n) == 0;
    free(body);
    return ok;
}

/* PING on a new connection. */
static int ping_new(tu_server *s)
{
    int fd = tu_connect_server(s);
    if (fd < 0)
        return 0;
    int ok = ping(fd, 4242);
    close(fd);
    return ok;
}

/* INFO on fd; the value of key as a number, or -1. */
static long long info_value(int fd, const char *key)
{
    fw_header h = tu_request(FW_OP_INFO, 77, 0), rh;
    uint8_t *body = NULL;
    long long v = -1;
    char needle[64];
    if (tu_send_frame(fd, &h, NULL) != 0 || tu_read_frame(fd, &rh, &body) != 1)
        return -1;
    char *text = malloc(rh.body_len + 1u);
    if (text && rh.status == FW_STATUS_OK) {
        if (rh.body_len)
            memcpy(text, body, rh.body_len);
        text[rh.body_len] = '\0';
        snprintf(needle, sizeof needle, "\n%s: ", key);
        const char *p = strstr(text, needle);
        if (p)
            v = strtoll(p + strlen(needle), NULL, 10);
        else if (strncmp(text, needle + 1, strlen(needle) - 1) == 0)
            v = strtoll(text + strlen(needle) - 1, NULL, 10);
    }
    free(text);
    free(body);
    return v;
}

/* ---- basics -------------------------------------------------------------------------------- */

static void ping_info_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    CHECK(ping(fd, 1));

    /* An empty PING echoes an empty body. */
    fw_header h = tu_request(FW_OP_PING, 2, 0);
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    CHECK(expect_reply(fd, FW_OP_PING, 2, FW_STATUS_OK, NULL));

    h = tu_request(FW_OP_INFO, 3, 0);
    fw_header rh;
    uint8_t *body = NULL;
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(tu_read_frame(fd, &rh, &body), 1);
    CHECK_EQ_INT(rh.status, FW_STATUS_OK);
    CHECK_EQ_INT(rh.request_id, 3);
    char *text = calloc(1, rh.body_len + 1u);
    CHECK(text != NULL);
    memcpy(text, body, rh.body_len);
    free(body);
    static const char *const keys[] = {"version: ", "\nuptime_s: ", "\nconnections: 1\n",
                                       "\nconnections_total: 1\n", "\nrequests_total: 3\n",
                                       "\nbytes_in: ", "\nbytes_out: ", "\nrejected_connections: 0\n"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strstr(text, keys[i])) {
            fprintf(stderr, "  INFO lacks \"%s\":\n%s\n", keys[i], text);
            free(text);
            CHECK(0);
        }
    free(text);
    /* bytes_in counts the three requests so far (two 20-byte headers plus "ping 1"... and
     * this INFO): at least 4 headers' worth now. */
    CHECK(info_value(fd, "bytes_in") >= 4 * FW_HEADER_LEN);
    close(fd);
}
static void t_ping_info(void) { with_server(NULL, ping_info_body); }

static void pipelined_body(tu_server *s)
{
    enum { N = 1000 };
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    /* All 1,000 requests in one buffer: the server sees many frames per read. */
    size_t cap = (size_t)N * (FW_HEADER_LEN + 16), len = 0;
    uint8_t *buf = malloc(cap);
    CHECK(buf != NULL);
    for (uint32_t id = 1; id <= N; id++) {
        char msg[16];
        int n = snprintf(msg, sizeof msg, "%u", id);
        fw_header h = tu_request(FW_OP_PING, id, (uint32_t)n);
        fw_header_encode(&h, buf + len);
        memcpy(buf + len + FW_HEADER_LEN, msg, (size_t)n);
        len += FW_HEADER_LEN + (size_t)n;
    }
    int sent = tu_send_all(fd, buf, len);
    free(buf);
    CHECK_EQ_INT(sent, 0);
    unsigned char seen[N + 1];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N; i++) {
        fw_header rh;
        uint8_t *body = NULL;
        CHECK_EQ_INT(tu_read_frame(fd, &rh, &body), 1);
        char want[16];
        int n = snprintf(want, sizeof want, "%u", rh.request_id);
        int ok = rh.status == FW_STATUS_OK && rh.request_id >= 1 && rh.request_id <= N &&
                 !seen[rh.request_id] && rh.body_len == (uint32_t)n && memcmp(body, want, (size_t)n) == 0;
        free(body);
        CHECK_MSG(ok, "response %d: id %u status %u is wrong or repeated", i, rh.request_id, rh.status);
        seen[rh.request_id] = 1;
    }
    CHECK(ping(fd, N + 1));
    close(fd);
}
static void t_pipelined_1000(void) { with_server(NULL, pipelined_body); }

static void byte_at_a_time_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    uint8_t frame[FW_HEADER_LEN + 5];
    fw_header h = tu_request(FW_OP_PING, 99, 5);
    fw_header_encode(&h, frame);
    memcpy(frame + FW_HEADER_LEN, "slow!", 5);
    /* TCP_NODELAY is on: each byte leaves as its own segment, so the server's reads see the
     * header and the body in pieces. */
    for (size_t i = 0; i < sizeof frame; i++)
        CHECK(tu_send_all(fd, frame + i, 1) == 0);
    fw_header rh;
    uint8_t *body = NULL;
    CHECK_EQ_INT(tu_read_frame(fd, &rh, &body), 1);
    int ok = rh.status == FW_STATUS_OK && rh.request_id == 99 && rh.body_len == 5 && memcmp(body, "slow!", 5) == 0;
    free(body);
    CHECK(ok);
    close(fd);
}
static void t_byte_at_a_time(void) { with_server(NULL, byte_at_a_time_body); }

/* A stream of mixed frames — echoes of many sizes, empty bodies, rejected headers whose
 * bodies must be skipped, unknown opcodes — cut into pseudo-random chunks of 1 to 700 bytes,
 * so frame boundaries fall at every point of the header, the body and the skipped body. */
struct chunk_writer {
    int fd;
    const uint8_t *buf;
    size_t len;
    int ok;
};

static void *chunk_writer_thread(void *p)
{
    struct chunk_writer *w = p;
    uint32_t rng = 12345;
    w->ok = 1;
    for (size_t off = 0; off < w->len && w->ok;) {
        rng = rng * 1103515245u + 12345u;
        size_t k = 1 + (rng >> 16) % 700;
        if (k > w->len - off)
            k = w->len - off;
        w->ok = tu_send_all(w->fd, w->buf + off, k) == 0;
        off += k;
    }
    return NULL;
}

static void random_chunks_body(tu_server *s)
{
    enum { N = 600 };
    static uint16_t want_status[N];
    static uint32_t want_len[N];
    size_t cap = (size_t)N * (FW_HEADER_LEN + 3000), len = 0;
    uint8_t *buf = malloc(cap);
    CHECK(buf != NULL);
    for (uint32_t i = 0; i < N; i++) {
        fw_header h = tu_request(FW_OP_PING, i, 0);
        want_status[i] = FW_STATUS_OK;
        switch (i % 6) {
        case 0: h.body_len = (i * 7) % 50; break;
        case 1: break; /* empty PING */
        case 2: h.flags = 0x80; h.body_len = 13; want_status[i] = FW_STATUS_BAD_REQUEST; break;
        case 3: h.opcode = 0x66; h.body_len = 5; want_status[i] = FW_STATUS_UNKNOWN_OP; break;
        case 4: h.priority = 3; want_status[i] = FW_STATUS_BAD_REQUEST; break;
        case 5: h.body_len = 3000; break;
        }
        want_len[i] = want_status[i] == FW_STATUS_OK ? h.body_len : 0;
        fw_header_encode(&h, buf + len);
        for (uint32_t b = 0; b < h.body_len; b++)
            buf[len + FW_HEADER_LEN + b] = (uint8_t)(i + b);
        len += FW_HEADER_LEN + h.body_len;
    }
    int fd = tu_connect_server(s);
    struct chunk_writer w = {.fd = fd, .buf = buf, .len = len, .ok = 0};
    pthread_t th;
    int started = fd >= 0 && pthread_create(&th, NULL, chunk_writer_thread, &w) == 0;
    int got = 0, ok = started;
    unsigned char seen[N];
    memset(seen, 0, sizeof seen);
    for (; got < N && ok; got++) {
        fw_header rh;
        uint8_t *body = NULL;
        ok = tu_read_frame(fd, &rh, &body) == 1 && rh.request_id < N && !seen[rh.request_id] &&
             rh.status == want_status[rh.request_id];
        if (ok && rh.status == FW_STATUS_OK) {
            ok = rh.body_len == want_len[rh.request_id];
            for (uint32_t b = 0; ok && b < rh.body_len; b++)
                ok = body[b] == (uint8_t)(rh.request_id + b);
        }
        if (ok)
            seen[rh.request_id] = 1;
        else
            fprintf(stderr, "  response %d: id %u status %s len %u\n", got, rh.request_id,
                    fw_status_name(rh.status), rh.body_len);
        free(body);
    }
    if (started)
        pthread_join(th, NULL);
    free(buf);
    CHECK(started);
    CHECK(w.ok);
    CHECK(ok);
    CHECK(ping(fd, N));
    close(fd);
}
static void t_random_chunks(void) { with_server(NULL, random_chunks_body); }

/* A 64 KiB PING (the largest allowed) and a 1 MiB body for compute: bodies spanning many
 * reads, including the direct-into-body reads for large remainders. */
static void large_bodies_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    uint32_t n = FW_PING_MAX_BODY;
    uint8_t *big = malloc(1u << 20);
    CHECK(big != NULL);
    for (uint32_t i = 0; i < (1u << 20); i++)
        big[i] = (uint8_t)(i * 31u + 7u);
    fw_header h = tu_request(FW_OP_PING, 5, n), rh;
    uint8_t *body = NULL;
    int ok = tu_send_frame(fd, &h, big) == 0 && tu_read_frame(fd, &rh, &body) == 1 &&
             rh.status == FW_STATUS_OK && rh.body_len == n && memcmp(body, big, n) == 0;
    free(body);
    /* An opcode nobody implements, with a 1 MiB body: UNKNOWN_OP after the whole body. */
    h = tu_request(0x6A, 6, 1u << 20);
    ok = ok && tu_send_frame(fd, &h, big) == 0;
    free(big);
    CHECK(ok);
    CHECK(expect_reply(fd, 0x6A, 6, FW_STATUS_UNKNOWN_OP, NULL));
    CHECK(ping(fd, 7));
    close(fd);
}
static void t_large_bodies(void) { with_server(NULL, large_bodies_body); }

static void many_connections_body(tu_server *s)
{
    enum { N = 1000 };
    int fds[N];
    int opened = 0, ok = 1;
    for (; opened < N; opened++) {
        fds[opened] = tu_connect_server(s);
        if (fds[opened] < 0)
            break;
    }
    if (opened == N) {
        /* All requests first, then all answers: the server holds 1,000 live connections. */
        for (int i = 0; i < N && ok; i++) {
            fw_header h = tu_request(FW_OP_PING, (uint32_t)i, 4);
            ok = tu_send_frame(fds[i], &h, "conn") == 0;
        }
        for (int i = 0; i < N && ok; i++)
            ok = expect_reply(fds[i], FW_OP_PING, (uint32_t)i, FW_STATUS_OK, NULL);
        if (ok)
            ok = info_value(fds[0], "connections") == N;
    }
    for (int i = 0; i < opened; i++)
        close(fds[i]);
    CHECK_EQ_INT(opened, N);
    CHECK(ok);
}
static void t_many_connections(void)
{
    CHECK_MSG(tu_raise_nofile(2 * 1000 + 64) == 0, "cannot raise RLIMIT_NOFILE for 1,000 sockets");
    with_server(NULL, many_connections_body);
}

/* ---- bad input ----------------------------------------------------------------------------- */

static const char *const small_body_args[] = {"--max-body", "4096", NULL};

static void bad_magic_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    fw_header h = tu_request(FW_OP_PING, 1, 0);
    h.magic = 0xBEEF;
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    /* Closed without a word: the next thing we read is EOF. */
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
    CHECK(ping_new(s));
}
static void t_bad_magic_closes(void) { with_server(NULL, bad_magic_body); }

static void bad_version_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    CHECK(ping(fd, 1)); /* answered before the bad frame */
    fw_header h = tu_request(FW_OP_PING, 2, 3);
    h.version = 2;
    CHECK(tu_send_frame(fd, &h, "abc") == 0);
    CHECK(expect_reply(fd, FW_OP_PING, 2, FW_STATUS_UNSUPPORTED_VERSION, "unsupported protocol version"));
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
    CHECK(ping_new(s));
}
static void t_bad_version_answers_then_closes(void) { with_server(NULL, bad_version_body); }

static void too_large_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    fw_header h = tu_request(FW_OP_DETECT, 3, 4097);
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    /* Some of the body follows, as a real client would send it: the server must still get
     * its answer through (lingering close) rather than reset the connection. */
    uint8_t junk[2048];
    memset(junk, 0xAB, sizeof junk);
    CHECK(tu_send_all(fd, junk, sizeof junk) == 0);
    CHECK(expect_reply(fd, FW_OP_DETECT, 3, FW_STATUS_TOO_LARGE, "body too large"));
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);

    /* The same with a length no server could allocate. */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    h = tu_request(FW_OP_ENROLL, 4, 0xFFFFFFFFu);
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    CHECK(expect_reply(fd, FW_OP_ENROLL, 4, FW_STATUS_TOO_LARGE, "body too large"));
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);

    /* Exactly max-body is fine (compute answers it; we only need an answer that is not
     * TOO_LARGE, on a connection that stays open). */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    h = tu_request(0x6B, 5, 4096);
    uint8_t body[4096];
    memset(body, 1, sizeof body);
    CHECK(tu_send_frame(fd, &h, body) == 0);
    CHECK(expect_reply(fd, 0x6B, 5, FW_STATUS_UNKNOWN_OP, NULL));
    CHECK(ping(fd, 6));
    close(fd);
}
static void t_too_large_answers_then_closes(void) { with_server(small_body_args, too_large_body); }

/* Rules that spoil one request: BAD_REQUEST with the exact message, the body (present on
 * purpose) skipped, and the same connection goes on. */
static void bad_request_rules_body(tu_server *s)
{
    static const struct {
        uint8_t flags, priority;
        uint16_t status;
        const char *msg;
    } cases[] = {
        {0x80, 0, 0, "invalid flags in request"},         /* reserved bit */
        {0x08, 0, 0, "invalid flags in request"},         /* reserved bit */
        {FW_FLAG_RESPONSE, 0, 0, "invalid flags in request"},
        {FW_FLAG_EVENT, 0, 0, "invalid flags in request"},
        {0, 3, 0, "invalid priority"},
        {0, 255, 0, "invalid priority"},
        {0, 0, 7, "non-zero status in request"},
    };
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    for (uint32_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fw_header h = tu_request(FW_OP_PING, 100 + i, 9);
        h.flags = cases[i].flags;
        h.priority = cases[i].priority;
        h.status = cases[i].status;
        CHECK(tu_send_frame(fd, &h, "skip me!!") == 0);
        CHECK_MSG(expect_reply(fd, FW_OP_PING, 100 + i, FW_STATUS_BAD_REQUEST, cases[i].msg), "case %u", i);
        CHECK_MSG(ping(fd, 200 + i), "PING after case %u", i);
    }
    /* PING over 64 KiB: refused from the header, its body skipped. */
    uint32_t n = FW_PING_MAX_BODY + 1;
    uint8_t *big = calloc(1, n);
    CHECK(big != NULL);
    fw_header h = tu_request(FW_OP_PING, 300, n);
    int sent = tu_send_frame(fd, &h, big);
    free(big);
    CHECK_EQ_INT(sent, 0);
    CHECK(expect_reply(fd, FW_OP_PING, 300, FW_STATUS_BAD_REQUEST, "ping body over 64 KiB"));
    CHECK(ping(fd, 301));
    /* Unknown opcode: UNKNOWN_OP (from compute), connection goes on. */
    h = tu_request(0x55, 302, 2);
    CHECK(tu_send_frame(fd, &h, "xx") == 0);
    CHECK(expect_reply(fd, 0x55, 302, FW_STATUS_UNKNOWN_OP, NULL));
    CHECK(ping(fd, 303));
    close(fd);
}
static void t_bad_request_rules_keep_connection(void) { with_server(NULL, bad_request_rules_body); }

/* A response to an invalid priority carries a valid one (clients may check). */
static void bad_priority_reply_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    fw_header h = tu_request(FW_OP_PING, 1, 0), rh;
    h.priority = 9;
    uint8_t *body = NULL;
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(tu_read_frame(fd, &rh, &body), 1);
    free(body);
    CHECK_EQ_INT(rh.status, FW_STATUS_BAD_REQUEST);
    CHECK(rh.priority < FW_PRIO_COUNT);
    close(fd);
}
static void t_bad_priority_reply_is_valid(void) { with_server(NULL, bad_priority_reply_body); }

static void garbage_body(tu_server *s)
{
    /* Garbage: closed, nothing answered. */
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    uint8_t junk[300];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 131u + 17u);
    CHECK(tu_send_all(fd, junk, sizeof junk) == 0);
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);

    /* A valid header, half its body, then gone. */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    fw_header h = tu_request(FW_OP_PING, 1, 1000);
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    CHECK(tu_send_all(fd, junk, 200) == 0);
    close(fd);

    /* Half a header, then a reset (SO_LINGER 0) instead of a FIN. */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    uint8_t hdr[FW_HEADER_LEN];
    fw_header_encode(&h, hdr);
    CHECK(tu_send_all(fd, hdr, 11) == 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);

    /* Many pipelined requests whose answers can never be delivered. */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    for (uint32_t i = 0; i < 200; i++) {
        fw_header p = tu_request(FW_OP_PING, i, sizeof junk - 100);
        CHECK(tu_send_frame(fd, &p, junk) == 0);
    }
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);

    /* The server is unharmed, and a connection opened after all that still counts right. */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    CHECK(ping(fd, 9));
    close(fd);
}
static void t_garbage_and_vanishing_clients(void) { with_server(NULL, garbage_body); }

/* ---- limits -------------------------------------------------------------------------------- */

static const char *const max_conn_args[] = {"--max-connections", "5", NULL};

static void max_connections_body(tu_server *s)
{
    int fds[5];
    for (int i = 0; i < 5; i++) {
        fds[i] = tu_connect_server(s);
        CHECK(fds[i] >= 0);
        CHECK(ping(fds[i], (uint32_t)i)); /* accepted and counted before the next one */
    }
    int extra = tu_connect_server(s);
    CHECK(extra >= 0);
    /* The TCP handshake succeeds (the kernel does it); the server closes at once. */
    CHECK_EQ_INT(tu_wait_closed(extra), 1);
    close(extra);
    /* The five still work, and INFO counts the rejection. */
    for (int i = 0; i < 5; i++)
        CHECK(ping(fds[i], 10u + (uint32_t)i));
    CHECK_EQ_INT(info_value(fds[0], "rejected_connections"), 1);
    CHECK_EQ_INT(info_value(fds[0], "connections"), 5);
    /* Free one slot: half-close, and wait for the server's close, which it does after
     * dropping the connection from its count. Then a new connection is served. */
    shutdown(fds[4], SHUT_WR);
    CHECK_EQ_INT(tu_wait_closed(fds[4]), 1);
    close(fds[4]);
    CHECK(ping_new(s));
    for (int i = 0; i < 4; i++)
        close(fds[i]);
}
static void t_max_connections(void) { with_server(max_conn_args, max_connections_body); }

static const char *const idle_args[] = {"--idle-timeout-ms", "200", NULL};

static void idle_timeout_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    CHECK(ping(fd, 1));
    /* Nothing more from us: the server closes the connection when it has been idle. */
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
    /* Never sent anything at all: closed too. */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
    CHECK(ping_new(s));
}
static void t_idle_timeout(void) { with_server(idle_args, idle_timeout_body); }

static const char *const frame_timeout_args[] = {"--frame-timeout-ms", "200", "--idle-timeout-ms", "0", NULL};

static void frame_timeout_body(tu_server *s)
{
    /* Half a header, then silence. */
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    fw_header h = tu_request(FW_OP_PING, 1, 100);
    uint8_t hdr[FW_HEADER_LEN];
    fw_header_encode(&h, hdr);
    CHECK(tu_send_all(fd, hdr, 7) == 0);
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
    /* A whole header, part of the body, then silence. */
    fd = tu_connect_server(s);
    CHECK(fd >= 0);
    CHECK(tu_send_frame(fd, &h, NULL) == 0);
    CHECK(tu_send_all(fd, "0123456789", 10) == 0);
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
    CHECK(ping_new(s));
}
static void t_partial_frame_timeout(void) { with_server(frame_timeout_args, frame_timeout_body); }

/* Output backpressure: a client that writes much faster than it reads. With --max-output
 * 64k the server must stop reading from it (it logs "reading paused") instead of buffering
 * the 25 MiB of answers, and still answer everything once the client reads. The client
 * reads nothing until the server has paused: without the pause, the log line never comes. */
struct writer_arg {
    int fd;
    int n;
    uint32_t len;
    int ok;
};

static void *writer_thread(void *p)
{
    struct writer_arg *w = p;
    uint8_t *body = malloc(w->len);
    w->ok = body != NULL;
    if (body)
        memset(body, 0x5A, w->len);
    for (int i = 0; i < w->n && w->ok; i++) {
        fw_header h = tu_request(FW_OP_PING, (uint32_t)i, w->len);
        w->ok = tu_send_frame(w->fd, &h, body) == 0;
    }
    free(body);
    return NULL;
}

static const char *const backpressure_args[] = {"--max-output", "64k", "--log-level", "debug", NULL};

static void backpressure_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    struct writer_arg w = {.fd = fd, .n = 800, .len = 32 * 1024, .ok = 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, writer_thread, &w) == 0);
    int paused = tu_server_wait_log(s, "msg=\"reading paused\"");
    int got = 0, ok = 1;
    for (; got < w.n && ok; got++) {
        fw_header rh;
        uint8_t *body = NULL;
        ok = tu_read_frame(fd, &rh, &body) == 1 && rh.status == FW_STATUS_OK &&
             rh.request_id == (uint32_t)got && rh.body_len == w.len && body[w.len - 1] == 0x5A;
        free(body);
    }
    pthread_join(th, NULL);
    CHECK(paused);
    CHECK(w.ok);
    CHECK_MSG(ok, "response %d wrong", got - 1);
    CHECK_EQ_INT(got, w.n);
    CHECK(ping(fd, 1000));
    close(fd);
}
static void t_output_backpressure(void) { with_server(backpressure_args, backpressure_body); }

/* Jobs backpressure: with --conn-max-jobs 2 the connection stops being read at two jobs in
 * compute, so a pipelined burst of 20 never overflows a queue of 4 (which would answer
 * BUSY): all 20 are answered OK. */
static const char *const jobs_args[] = {"--enable-test-ops", "--conn-max-jobs", "2", "--queue-normal", "4",
                                        "--workers", "1", NULL};

static void jobs_backpressure_body(tu_server *s)
{
    enum { N = 20 };
    uint8_t buf[N * (FW_HEADER_LEN + 4)];
    size_t len = 0;
    for (uint32_t i = 0; i < N; i++) {
        fw_header h = tu_request(FW_OP_TEST_SLEEP, i, 4);
        fw_header_encode(&h, buf + len);
        fw_be32(buf + len + FW_HEADER_LEN, 1); /* 1 ms */
        len += FW_HEADER_LEN + 4;
    }
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    CHECK(tu_send_all(fd, buf, len) == 0);
    for (int i = 0; i < N; i++) {
        fw_header rh;
        uint8_t *body = NULL;
        CHECK_EQ_INT(tu_read_frame(fd, &rh, &body), 1);
        free(body);
        CHECK_MSG(rh.status == FW_STATUS_OK, "request %u answered %s", rh.request_id, fw_status_name(rh.status));
    }
    CHECK(ping(fd, 100));
    close(fd);
}
static void t_jobs_backpressure(void) { with_server(jobs_args, jobs_backpressure_body); }

/* A client that half-closes after sending still gets every answer, then the server closes. */
static const char *const test_ops_args[] = {"--enable-test-ops", NULL};

static void half_close_body(tu_server *s)
{
    int fd = tu_connect_server(s);
    CHECK(fd >= 0);
    uint8_t ms[4];
    fw_be32(ms, 100);
    fw_header sleep_h = tu_request(FW_OP_TEST_SLEEP, 1, 4), ping_h = tu_request(FW_OP_PING, 2, 0);
    CHECK(tu_send_frame(fd, &sleep_h, ms) == 0);
    CHECK(tu_send_frame(fd, &ping_h, NULL) == 0);
    CHECK(shutdown(fd, SHUT_WR) == 0);
    int seen = 0;
    for (int i = 0; i < 2; i++) {
        fw_header rh;
        uint8_t *body = NULL;
        CHECK_EQ_INT(tu_read_frame(fd, &rh, &body), 1);
        free(body);
        CHECK_EQ_INT(rh.status, FW_STATUS_OK);
        CHECK(rh.request_id == 1 || rh.request_id == 2);
        seen |= 1 << rh.request_id;
    }
    CHECK_EQ_INT(seen, 6);
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
}
static void t_half_close_gets_answers(void) { with_server(test_ops_args, half_close_body); }

static const char *const ipv6_args[] = {"--listen", "[::1]:0", "--listen", "127.0.0.1:0", NULL};

static void ipv6_body(tu_server *s)
{
    CHECK_EQ_STR(s->host, "::1");
    CHECK(ping_new(s));
}
static void t_ipv6_listener(void) { with_server(ipv6_args, ipv6_body); }

/* ---- command line -------------------------------------------------------------------------- */

static void t_command_line(void)
{
    char out[16384];
    static const char *const help[] = {"--help", NULL};
    CHECK_EQ_INT(tu_run("facewired", help, out, sizeof out), 0);
    static const char *const documented[] = {"--listen", "--data", "--models", "--max-body",
                                             "--max-connections", "--max-output", "--idle-timeout-ms",
                                             "--frame-timeout-ms", "--grace-ms", "--log-level",
                                             "--help", "--version", "Exit status"};
    for (size_t i = 0; i < sizeof documented / sizeof documented[0]; i++)
        CHECK_MSG(strstr(out, documented[i]) != NULL, "--help does not mention %s", documented[i]);

    static const struct {
        const char *args[4];
        const char *msg;
    } bad[] = {
        {{"--bogus", NULL}, "unknown option '--bogus'"},
        {{"--max-body", "12x", NULL}, "--max-body: expected bytes"},
        {{"--max-connections", "0", NULL}, "--max-connections: expected 1 to 1000000"},
        {{"--idle-timeout-ms", "-5", NULL}, "expected milliseconds"},
        {{"--grace-ms", NULL}, "--grace-ms needs a value"},
        {{"--listen", "localhost:80", NULL}, "numeric address"},
        {{"--listen", "::1:80", NULL}, "IPv6 addresses go in brackets"},
        {{"--log-level", "loud", NULL}, "--log-level: expected debug"},
        {{"--help=yes", NULL}, "--help takes no value"},
        {{"stray", NULL}, "unexpected argument 'stray'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(tu_run("facewired", bad[i].args, out, sizeof out), 2);
        CHECK_MSG(strstr(out, bad[i].msg) != NULL, "case %zu: \"%s\" not in: %s", i, bad[i].msg, out);
    }
    static const char *const version[] = {"--version", NULL};
    CHECK_EQ_INT(tu_run("facewired", version, out, sizeof out), 0);
    CHECK(strncmp(out, "facewired ", 10) == 0);
    /* A valid address that cannot be bound is a start failure: exit 1. (Not loopback, so
     * plaintext there needs --insecure-plaintext: docs/security.md.) */
    /* Its own --data: ./data may be held by a running server, and the gallery opens first. */
    char dir[] = "/tmp/fw-test-server-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    const char *const unbindable[] = {"--listen", "192.0.2.1:1", "--insecure-plaintext",
                                      "--data", dir, NULL};
    int rc = tu_run("facewired", unbindable, out, sizeof out);
    CHECK_EQ_INT(tu_rmtree(dir), 0);
    CHECK_EQ_INT(rc, 1);
    CHECK(strstr(out, "msg=\"cannot listen\"") != NULL);
}

/* ---- shutdown ------------------------------------------------------------------------------ */

static void t_shutdown_idle_connections(void)
{
    tu_server *s = calloc(1, sizeof *s);
    CHECK(s != NULL);
    if (tu_server_start(s, NULL) != 0) {
        free(s);
        CHECK(0);
    }
    int fds[3], ok = 1;
    for (int i = 0; i < 3; i++) {
        fds[i] = tu_connect_server(s);
        ok = ok && fds[i] >= 0 && ping(fds[i], (uint32_t)i);
    }
    tu_server_kill(s, SIGTERM);
    /* Every connection is closed by the server, then it exits 0. */
    for (int i = 0; i < 3; i++) {
        ok = ok && tu_wait_closed(fds[i]) == 1;
        if (fds[i] >= 0)
            close(fds[i]);
    }
    int status = tu_server_wait(s);
    int logged = tu_server_log_has(s, "msg=\"shutting down\" reason=SIGTERM") && tu_server_log_has(s, "msg=\"stopped\"");
    free(s);
    CHECK(ok);
    CHECK_EQ_INT(status, 0);
    CHECK(logged);
}

/* Work in flight at SIGINT: a TEST_SLEEP that fits in the grace period is answered OK, one
 * that does not is answered SHUTTING_DOWN, and so is a request that arrives after the
 * signal; then the server closes the connection and exits 0. */
static void t_shutdown_with_work_in_flight(void)
{
    static const char *const args[] = {"--enable-test-ops", "--grace-ms", "2000", NULL};
    tu_server *s = calloc(1, sizeof *s);
    CHECK(s != NULL);
    if (tu_server_start(s, args) != 0) {
        free(s);
        CHECK(0);
    }
    int fd = tu_connect_server(s), ok = fd >= 0;
    uint8_t ms[4];
    fw_be32(ms, 50);
    fw_header quick = tu_request(FW_OP_TEST_SLEEP, 1, 4);
    ok = ok && tu_send_frame(fd, &quick, ms) == 0;
    /* Longer than the grace period; the server exits when the worker returns. */
    fw_be32(ms, 4000);
    fw_header slow = tu_request(FW_OP_TEST_SLEEP, 2, 4);
    ok = ok && tu_send_frame(fd, &slow, ms) == 0;
    /* INFO is answered in order on the loop, after both requests were handed to compute:
     * its answer proves they are in flight before the signal. */
    ok = ok && info_value(fd, "connections") == 1;
    tu_server_kill(s, SIGINT);
    ok = ok && tu_server_wait_log(s, "msg=\"shutting down\" reason=SIGINT");
    fw_header late = tu_request(FW_OP_PING, 3, 0);
    ok = ok && tu_send_frame(fd, &late, NULL) == 0;
    uint16_t st[4] = {0, 0xFFFF, 0xFFFF, 0xFFFF};
    for (int i = 0; i < 3 && ok; i++) {
        fw_header rh;
        uint8_t *body = NULL;
        ok = tu_read_frame(fd, &rh, &body) == 1 && rh.request_id >= 1 && rh.request_id <= 3;
        if (ok)
            st[rh.request_id] = rh.status;
        free(body);
    }
    ok = ok && tu_wait_closed(fd) == 1;
    if (fd >= 0)
        close(fd);
    int status = tu_server_wait(s);
    free(s);
    CHECK(ok);
    CHECK_EQ_INT(st[1], FW_STATUS_OK);
    CHECK_EQ_INT(st[2], FW_STATUS_SHUTTING_DOWN);
    CHECK_EQ_INT(st[3], FW_STATUS_SHUTTING_DOWN);
    CHECK_EQ_INT(status, 0);
}

/* A client that never reads its answers must not keep the server from exiting: connections
 * that cannot be flushed are closed after the grace period plus a flush allowance, and the
 * server exits 0. The writer offers 64 MiB of PINGs, more than the kernel buffers on both
 * sides plus --max-output can hold, so it can only end by the server closing on it. */
static void t_shutdown_with_stuck_client(void)
{
    static const char *const args[] = {"--grace-ms", "100", "--max-output", "64k", "--log-level", "debug", NULL};
    tu_server *s = calloc(1, sizeof *s);
    CHECK(s != NULL);
    if (tu_server_start(s, args) != 0) {
        free(s);
        CHECK(0);
    }
    int fd = tu_connect_server(s);
    struct writer_arg w = {.fd = fd, .n = 2048, .len = 32 * 1024, .ok = 0};
    pthread_t th;
    int started = fd >= 0 && pthread_create(&th, NULL, writer_thread, &w) == 0;
    int paused = started && tu_server_wait_log(s, "msg=\"reading paused\"");
    tu_server_kill(s, SIGTERM);
    int status = tu_server_wait(s);
    if (started)
        pthread_join(th, NULL);
    free(s);
    if (fd >= 0)
        close(fd);
    CHECK(started);
    CHECK(paused);
    CHECK_EQ_INT(status, 0);
    CHECK_MSG(!w.ok, "the server read 64 MiB from a client that never read an answer");
}

static const struct check_test tests[] = {
    CHECK_TEST(t_ping_info),
    CHECK_TEST(t_pipelined_1000),
    CHECK_TEST(t_byte_at_a_time),
    CHECK_TEST(t_random_chunks),
    CHECK_TEST(t_large_bodies),
    CHECK_TEST(t_many_connections),
    CHECK_TEST(t_bad_magic_closes),
    CHECK_TEST(t_bad_version_answers_then_closes),
    CHECK_TEST(t_too_large_answers_then_closes),
    CHECK_TEST(t_bad_request_rules_keep_connection),
    CHECK_TEST(t_bad_priority_reply_is_valid),
    CHECK_TEST(t_garbage_and_vanishing_clients),
    CHECK_TEST(t_max_connections),
    CHECK_TEST(t_idle_timeout),
    CHECK_TEST(t_partial_frame_timeout),
    CHECK_TEST(t_output_backpressure),
    CHECK_TEST(t_jobs_backpressure),
    CHECK_TEST(t_half_close_gets_answers),
    CHECK_TEST(t_ipv6_listener),
    CHECK_TEST(t_command_line),
    CHECK_TEST(t_shutdown_idle_connections),
    CHECK_TEST(t_shutdown_with_work_in_flight),
    CHECK_TEST(t_shutdown_with_stuck_client),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
