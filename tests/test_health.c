/*
 * test_health.c — GET /health on the --metrics-listen port and the shutdown that a load
 * balancer can follow, against bin/facewired with the embedded gallery (no PostgreSQL here:
 * tests/test_pgnode.c has the --gallery-url side).
 *
 *   - 200 "ok\n" on a server that listens, is not draining, and has the models it was asked
 *     for (none asked: models do not matter); HEAD has the same headers and no body; INFO and
 *     /metrics say the same;
 *   - 503 "models not loaded\n" when --models names a directory without them;
 *   - other paths 404, other methods 405;
 *   - SIGTERM with --drain-delay-ms: /health answers 503 "draining\n" at once while the
 *     protocol listener still accepts and answers (PING, INFO); a second signal ends the delay
 *     at once and the server exits cleanly. Without a second signal, the delay's timer does.
 *   - the new flags' usage errors, word for word, and --help naming them.
 *
 * No sleeps: every wait is for a log line, a response or the server's exit. The drain delay of
 * the first shutdown test is ten minutes, so the test can only pass if the second signal
 * really cuts it short.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/tu_http.h"
#include "tests/tu_server.h"

static tu_server srv; /* large: static storage, one server at a time */

#define NO_MODELS "--models", "/nonexistent/facewire-models"

/* Send a raw request to the metrics port; the response, read until the server closes, into
 * out. */
static int http(int port, const char *req, char *out, size_t cap)
{
    return tu_http_exchange("127.0.0.1", port, req, strlen(req), out, cap) < 0 ? -1 : 0;
}

/* Start the server with args (which have a --metrics-listen): its metrics port, or -1. */
static int start_with_metrics(const char *const *args)
{
    return tu_server_start(&srv, args) == 0 ? tu_server_metrics_port(&srv) : -1;
}

static int get_health(int port, char *out, size_t cap)
{
    return http(port, "GET /health HTTP/1.1\r\nHost: lb\r\n\r\n", out, cap);
}

/* ---- protocol ------------------------------------------------------------------------------ */

static uint32_t next_rid = 1;

static int roundtrip(int fd, uint8_t op, const void *body, uint32_t len, tu_resp *r)
{
    uint32_t want = ++next_rid;
    fw_header h = tu_request(op, want, len);
    if (tu_send_frame(fd, &h, body) != 0 || tu_read_resp(fd, r) != 0)
        return -1;
    return r->rid == want ? 0 : -1;
}

static int ping_ok(int fd)
{
    tu_resp r;
    if (roundtrip(fd, FW_OP_PING, "hi", 2, &r) != 0)
        return 0;
    int ok = r.status == FW_STATUS_OK && r.len == 2 && memcmp(r.body, "hi", 2) == 0;
    tu_resp_free(&r);
    return ok;
}

/* 1 if INFO's body has the line exactly. */
static int info_has_line(int fd, const char *line)
{
    tu_resp r;
    if (roundtrip(fd, FW_OP_INFO, NULL, 0, &r) != 0)
        return 0;
    char want[160];
    snprintf(want, sizeof want, "\n%s\n", line);
    int found = 0;
    if (r.status == FW_STATUS_OK && r.body) {
        char *text = malloc((size_t)r.len + 2);
        if (text) {
            text[0] = '\n'; /* so the first line matches too */
            memcpy(text + 1, r.body, r.len);
            text[r.len + 1] = '\0';
            found = strstr(text, want) != NULL;
            free(text);
        }
    }
    tu_resp_free(&r);
    return found;
}

static void cleanup(void)
{
    if (srv.pid > 0)
        tu_server_stop(&srv);
}

/* ---- /health ------------------------------------------------------------------------------- */

/* No --models: the node serves descriptors at least, and the models (loaded from ./models or
 * not) do not decide its health. The embedded gallery is always in sync. */
static void t_health_ok_body(void)
{
    const char *args[] = { "--workers", "1", "--metrics-listen", "127.0.0.1:0", NULL };
    int port = start_with_metrics(args);
    CHECK(port > 0);
    static char out[65536];

    CHECK(get_health(port, out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %.120s", out);
    CHECK(strstr(out, "\r\nContent-Type: text/plain; charset=utf-8\r\n") != NULL);
    CHECK(strstr(out, "\r\nContent-Length: 3\r\n") != NULL);
    CHECK_EQ_STR(tu_http_body(out), "ok\n");

    /* HEAD: the same status and headers, no body */
    CHECK(http(port, "HEAD /health HTTP/1.1\r\n\r\n", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %.120s", out);
    CHECK(strstr(out, "\r\nContent-Length: 3\r\n") != NULL);
    CHECK_EQ_STR(tu_http_body(out), "");

    /* a query string does not change the path */
    CHECK(http(port, "GET /health?from=haproxy HTTP/1.0\r\n\r\n", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %.120s", out);

    CHECK(http(port, "GET /metrics HTTP/1.1\r\n\r\n", out, sizeof out) == 0);
    CHECK(strstr(out, "\nfacewire_healthy 1\n") != NULL);
    CHECK(strstr(out, "\nfacewire_gallery_pg_") == NULL); /* PostgreSQL families only in PG mode */

    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(info_has_line(fd, "health: ok"));
    CHECK(info_has_line(fd, "gallery_store: embedded"));
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* --models given and nothing there: the node cannot do what it was started for. */
static void t_health_models_not_loaded_body(void)
{
    const char *args[] = { "--workers", "1", "--metrics-listen", "127.0.0.1:0", NO_MODELS, NULL };
    int port = start_with_metrics(args);
    CHECK(port > 0);
    static char out[65536];
    CHECK(get_health(port, out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0, "got: %.120s", out);
    CHECK_EQ_STR(tu_http_body(out), "models not loaded\n");
    CHECK(http(port, "HEAD /health HTTP/1.1\r\n\r\n", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0, "got: %.120s", out);
    CHECK(strstr(out, "\r\nContent-Length: 18\r\n") != NULL);
    CHECK_EQ_STR(tu_http_body(out), "");
    CHECK(http(port, "GET /metrics HTTP/1.1\r\n\r\n", out, sizeof out) == 0);
    CHECK(strstr(out, "\nfacewire_healthy 0\n") != NULL);

    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(ping_ok(fd)); /* unhealthy is not dead: what needs no models is served */
    CHECK(info_has_line(fd, "health: models not loaded"));
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_health_bad_requests_body(void)
{
    const char *args[] = { "--workers", "1", "--metrics-listen", "127.0.0.1:0", NO_MODELS, NULL };
    int port = start_with_metrics(args);
    CHECK(port > 0);
    static char out[65536];
    static const char *const not_found[] = {
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /health/ HTTP/1.1\r\n\r\n",
        "GET /HEALTH HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof not_found / sizeof not_found[0]; i++) {
        CHECK(http(port, not_found[i], out, sizeof out) == 0);
        CHECK_MSG(strncmp(out, "HTTP/1.1 404 Not Found\r\n", 24) == 0, "%s-> %.120s", not_found[i], out);
        CHECK_EQ_STR(tu_http_body(out), "not found; try /metrics or /health\n");
    }
    CHECK(http(port, "POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 405 Method Not Allowed\r\n", 33) == 0, "got: %.120s", out);
    CHECK(http(port, "GET /health HTTP/1.1\r\nContent-Length: x\r\n\r\n", out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 400 Bad Request\r\n", 26) == 0, "got: %.120s", out);
    /* still answering after all that */
    CHECK(get_health(port, out, sizeof out) == 0);
    CHECK_EQ_STR(tu_http_body(out), "models not loaded\n");
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* ---- drain --------------------------------------------------------------------------------- */

/* SIGTERM: 503 at once, everything still served during the (ten-minute) delay; a second signal
 * ends the delay and the usual drain follows. */
static void t_drain_delay_second_signal_body(void)
{
    const char *args[] = { "--workers", "1", "--metrics-listen", "127.0.0.1:0", "--drain-delay-ms", "600000",
                           NULL };
    int port = start_with_metrics(args);
    CHECK(port > 0);
    static char out[65536];
    CHECK(get_health(port, out, sizeof out) == 0);
    CHECK_EQ_STR(tu_http_body(out), "ok\n");
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(ping_ok(fd));

    CHECK(tu_server_kill(&srv, SIGTERM) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"draining\" reason=SIGTERM delay_ms=600000"));
    CHECK(get_health(port, out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0, "got: %.120s", out);
    CHECK_EQ_STR(tu_http_body(out), "draining\n");
    /* the listener is still open and everything is served: a balancer needs the delay to see
     * the 503, and the requests it sends meanwhile must not fail */
    CHECK(ping_ok(fd));
    CHECK(info_has_line(fd, "health: draining"));
    int fd2 = tu_connect_server(&srv);
    CHECK(fd2 >= 0);
    CHECK(ping_ok(fd2));
    close(fd2);
    CHECK(!tu_server_log_has(&srv, "msg=\"shutting down\""));

    CHECK(tu_server_kill(&srv, SIGINT) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"drain delay over\" reason=SIGINT"));
    CHECK(tu_server_wait_log(&srv, "msg=\"shutting down\" reason=SIGTERM"));
    /* the drain closes our idle connection once everything is answered */
    CHECK_EQ_INT(tu_wait_closed(fd), 1);
    close(fd);
    CHECK_EQ_INT(tu_server_wait(&srv), 0);
}

/* Without a second signal the delay's timer ends it. */
static void t_drain_delay_timer_body(void)
{
    const char *args[] = { "--workers", "1", "--drain-delay-ms", "300", NO_MODELS, NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    CHECK(tu_server_kill(&srv, SIGTERM) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"draining\" reason=SIGTERM delay_ms=300"));
    CHECK(tu_server_wait_log(&srv, "msg=\"drain delay over\" reason=timer"));
    CHECK(tu_server_wait_log(&srv, "msg=\"shutting down\" reason=SIGTERM"));
    CHECK_EQ_INT(tu_server_wait(&srv), 0);
}

/* --drain-delay-ms 0 (the default): the drain starts with the signal, after the same
 * "draining" line. */
static void t_no_drain_delay_body(void)
{
    const char *args[] = { "--workers", "1", NO_MODELS, NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    CHECK(tu_server_kill(&srv, SIGTERM) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"draining\" reason=SIGTERM delay_ms=0"));
    CHECK(tu_server_wait_log(&srv, "msg=\"shutting down\" reason=SIGTERM"));
    CHECK(!tu_server_log_has(&srv, "drain delay over")); /* it would come before the drain */
    CHECK_EQ_INT(tu_server_wait(&srv), 0);
}

/* ---- flags --------------------------------------------------------------------------------- */

static void t_flags_body(void)
{
    static const struct {
        const char *args[6];
        const char *want;
    } bad[] = {
        { { "--gallery-url", "host=127.0.0.1", "--data", "/tmp/x", NULL },
          "facewired: --gallery-url cannot be combined with --data: the gallery is then kept in PostgreSQL, "
          "not in a data directory\n" },
        { { "--data=/tmp/x", "--gallery-url=host=127.0.0.1", NULL },
          "facewired: --gallery-url cannot be combined with --data: the gallery is then kept in PostgreSQL, "
          "not in a data directory\n" },
        { { "--gallery-url", "postgresql://127.0.0.1/db", "--repair", NULL },
          "facewired: --gallery-url cannot be combined with --repair: the gallery is then kept in PostgreSQL, "
          "not in a data directory\n" },
        { { "--gallery-key", "/tmp/k", "--gallery-url", "postgresql:///db", NULL },
          "facewired: --gallery-url cannot be combined with --gallery-key: the gallery is then kept in "
          "PostgreSQL, not in a data directory\n" },
        { { "--gallery-url", "", NULL }, "facewired: --gallery-url: not a PostgreSQL connection string or URI\n" },
        { { "--gallery-url", "host", NULL },
          "facewired: --gallery-url: not a PostgreSQL connection string or URI: missing \"=\" after \"host\" in "
          "connection info string\n" },
        { { "--gallery-url", "colour=blue", NULL },
          "facewired: --gallery-url: not a PostgreSQL connection string or URI: invalid connection option "
          "\"colour\"\n" },
        { { "--gallery-url", NULL }, "facewired: --gallery-url needs a value (see --help)\n" },
        { { "--health-max-lag-ms", "0", NULL },
          "facewired: --health-max-lag-ms: expected an integer in 1..86400000, not \"0\"\n" },
        { { "--health-max-lag-ms", "5s", NULL },
          "facewired: --health-max-lag-ms: expected an integer in 1..86400000, not \"5s\"\n" },
        { { "--drain-delay-ms", "-1", NULL },
          "facewired: --drain-delay-ms: expected milliseconds from 0 to 86400000, got '-1'\n" },
        { { "--drain-delay-ms", NULL }, "facewired: --drain-delay-ms needs a value (see --help)\n" },
    };
    static char out[65536];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(tu_run("facewired", bad[i].args, out, sizeof out), 2);
        CHECK_EQ_STR(out, bad[i].want);
    }
    const char *help[] = { "--help", NULL };
    CHECK_EQ_INT(tu_run("facewired", help, out, sizeof out), 0);
    CHECK(strstr(out, "\n  --gallery-url URL ") != NULL);
    CHECK(strstr(out, "\n  --health-max-lag-ms MS ") != NULL);
    CHECK(strstr(out, "\n  --drain-delay-ms MS ") != NULL);
    CHECK(strstr(out, "GET /health") != NULL);
}

static void t_health_ok(void) { t_health_ok_body(); cleanup(); }
static void t_health_models_not_loaded(void) { t_health_models_not_loaded_body(); cleanup(); }
static void t_health_bad_requests(void) { t_health_bad_requests_body(); cleanup(); }
static void t_drain_delay_second_signal(void) { t_drain_delay_second_signal_body(); cleanup(); }
static void t_drain_delay_timer(void) { t_drain_delay_timer_body(); cleanup(); }
static void t_no_drain_delay(void) { t_no_drain_delay_body(); cleanup(); }
static void t_flags(void) { t_flags_body(); }

static const struct check_test tests[] = {
    CHECK_TEST(t_flags),
    CHECK_TEST(t_health_ok),
    CHECK_TEST(t_health_models_not_loaded),
    CHECK_TEST(t_health_bad_requests),
    CHECK_TEST(t_drain_delay_second_signal),
    CHECK_TEST(t_drain_delay_timer),
    CHECK_TEST(t_no_drain_delay),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
