/*
 * test_sched.c — the compute scheduler end to end, against bin/facewired started with
 * --enable-test-ops: BUSY when a queue is full, deadlines in the queue and while running,
 * priority order and the anti-starvation rule, low-priority shedding and degraded mode, the
 * circuit breaker's whole cycle, disconnects with jobs waiting and running, drain, /metrics;
 * and, without a server, the latency histogram and the breaker's state machine on a fake clock.
 *
 * Determinism: one worker (--workers 1) and a TEST_SLEEP "blocker" that holds it, so which
 * jobs wait and in which order they run follows from the order of the frames we send. The
 * blockers sleep far longer (seconds) than the loop needs to read the frames behind them, and
 * the only clock-related assertion is a generous upper bound on when a deadline answer
 * arrives. Nothing sleeps to synchronise, except waiting out the breaker's cooldown, which is
 * what the server's retry_after_ms tells a client to do.
 *
 * The models are not loaded (--models points nowhere): nothing here needs them, and startup
 * stays fast under the sanitizers.
 */
// run-under: tsan
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/breaker.h"
#include "server/hist.h"
#include "tests/check.h"
#include "tests/tu_http.h"
#include "tests/tu_req.h"
#include "tests/tu_server.h"

static tu_server srv; /* large: static storage, one server at a time */

#define NO_MODELS "--models", "/nonexistent/facewire-models"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Start with the test ops, one worker, no models, plus extra args (NULL-terminated). */
static int start(const char *a0, const char *a1, const char *a2, const char *a3, const char *a4,
                 const char *a5)
{
    const char *args[24];
    int n = 0;
    args[n++] = "--enable-test-ops";
    args[n++] = "--workers";
    args[n++] = "1";
    args[n++] = "--grace-ms";
    args[n++] = "20000";
    args[n++] = "--models";
    args[n++] = "/nonexistent/facewire-models";
    const char *extra[] = { a0, a1, a2, a3, a4, a5 };
    for (int i = 0; i < 6 && extra[i]; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    return tu_server_start(&srv, args);
}
#define START0() start(NULL, NULL, NULL, NULL, NULL, NULL)

static int send_req(int fd, uint8_t op, uint32_t rid, uint8_t prio, uint32_t deadline_ms,
                    const void *body, uint32_t len)
{
    fw_header h = tu_request(op, rid, len);
    h.priority = prio;
    h.deadline_ms = deadline_ms;
    return tu_send_frame(fd, &h, body);
}

static int send_sleep(int fd, uint32_t rid, uint32_t ms, uint8_t prio, uint32_t deadline_ms)
{
    uint8_t b[4];
    fw_be32(b, ms);
    return send_req(fd, FW_OP_TEST_SLEEP, rid, prio, deadline_ms, b, 4);
}

/* One response: status, request id, the error message (if any) and retry_after_ms (if the
 * error body carries one, else -1). */
typedef struct resp {
    uint16_t status;
    uint32_t rid;
    char msg[256];
    int64_t retry_after;
    uint32_t body_len;
} resp;

static int read_resp(int fd, resp *r)
{
    fw_header h;
    uint8_t *body = NULL;
    memset(r, 0, sizeof *r);
    r->retry_after = -1;
    if (tu_read_frame(fd, &h, &body) != 1)
        return -1;
    r->status = h.status;
    r->rid = h.request_id;
    r->body_len = h.body_len;
    if (h.status != FW_STATUS_OK && h.body_len >= 2) {
        uint16_t n = fw_rd16(body);
        tu_error_message(body, h.body_len, r->msg, sizeof r->msg);
        if ((uint32_t)n + 2 + 4 == h.body_len)
            r->retry_after = fw_rd32(body + 2 + n);
    }
    free(body);
    return 0;
}

/* INFO's body into buf (NUL-terminated). */
static int info(int fd, char *buf, size_t cap)
{
    static uint32_t rid = 900000;
    fw_header h = tu_request(FW_OP_INFO, ++rid, 0);
    uint8_t *body = NULL;
    if (tu_send_frame(fd, &h, NULL) != 0 || tu_read_frame(fd, &h, &body) != 1 || h.status != 0) {
        free(body);
        return -1;
    }
    size_t n = h.body_len < cap - 1 ? h.body_len : cap - 1;
    memcpy(buf, body, n);
    buf[n] = '\0';
    free(body);
    return 0;
}

static int info_has(const char *text, const char *line)
{
    char pat[160];
    snprintf(pat, sizeof pat, "\n%s\n", line);
    return strstr(text, pat) != NULL;
}

/* ---- unit tests: histogram and breaker (no server) ------------------------------------------ */

static void t_hist_quantiles_body(void)
{
    static fw_hist h;
    fw_hist_reset(&h);
    CHECK_EQ_INT(fw_hist_quantile(&h, 0.5), 0);
    /* 1..1000 us: quantiles within the 1/16 bucket width, never above the maximum */
    for (uint64_t v = 1; v <= 1000; v++)
        fw_hist_record(&h, v);
    CHECK_EQ_INT(h.count, 1000);
    CHECK_EQ_INT(h.sum, 500500);
    uint64_t p50 = fw_hist_quantile(&h, 0.5), p99 = fw_hist_quantile(&h, 0.99);
    CHECK_MSG(p50 >= 500 && p50 <= 500 + 500 / 16 + 1, "p50 %llu", (unsigned long long)p50);
    CHECK_MSG(p99 >= 990 && p99 <= 1000, "p99 %llu", (unsigned long long)p99);
    CHECK_EQ_INT(fw_hist_quantile(&h, 1.0), 1000);
    CHECK_EQ_INT(fw_hist_quantile(&h, 0.0), 1);
    /* small values are exact, huge ones land in the last bucket without overflow */
    fw_hist_reset(&h);
    fw_hist_record(&h, 3);
    CHECK_EQ_INT(fw_hist_quantile(&h, 0.5), 3);
    fw_hist_record(&h, UINT64_MAX);
    CHECK_EQ_INT(h.sum, UINT64_MAX); /* saturates */
    CHECK(fw_hist_quantile(&h, 1.0) > (1ull << 39));
}

static void t_breaker_unit_body(void)
{
    fw_breaker_config cfg = { .window_ms = 1000, .min_requests = 4, .failure_pct = 50,
                              .cooldown_ms = 200, .probes = 2 };
    fw_breaker b;
    uint32_t retry = 0;
    int changed = 0;
    fw_breaker_init(&b, &cfg);
    /* 3 failures are below min_requests */
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(fw_breaker_record(&b, 100, 1, 0), 0);
    CHECK_EQ_INT(b.state, FW_BREAKER_CLOSED);
    /* they slide out of the window: 1.5 s later a failure finds only itself */
    CHECK_EQ_INT(fw_breaker_record(&b, 1600, 1, 0), 0);
    uint32_t r, f;
    fw_breaker_window(&b, 1600, &r, &f);
    CHECK_EQ_INT(r, 1);
    CHECK_EQ_INT(f, 1);
    /* 2 successes + 2 failures = 50%: open */
    CHECK_EQ_INT(fw_breaker_record(&b, 1610, 0, 0), 0);
    CHECK_EQ_INT(fw_breaker_record(&b, 1620, 0, 0), 0);
    CHECK_EQ_INT(fw_breaker_record(&b, 1630, 1, 0), 1);
    CHECK_EQ_INT(b.state, FW_BREAKER_OPEN);
    CHECK_EQ_INT(fw_breaker_admit(&b, 1680, &retry, &changed), FW_BREAKER_REJECT);
    CHECK_EQ_INT(retry, 150);
    retry = 0;
    CHECK_EQ_INT(fw_breaker_fail_fast(&b, 1690, &retry), 1);
    CHECK_EQ_INT(retry, 140);
    CHECK_EQ_INT(b.rejected, 2);
    CHECK_EQ_INT(fw_breaker_fail_fast(&b, 1830, &retry), 0); /* cooled down: ask admit */
    /* a straggler finishing while open changes nothing */
    CHECK_EQ_INT(fw_breaker_record(&b, 1700, 1, 0), 0);
    /* cooldown over: half-open, two probes, the third refused */
    CHECK_EQ_INT(fw_breaker_admit(&b, 1830, &retry, &changed), FW_BREAKER_PROBE);
    CHECK_EQ_INT(changed, 1);
    CHECK_EQ_INT(b.state, FW_BREAKER_HALF_OPEN);
    CHECK_EQ_INT(fw_breaker_admit(&b, 1831, &retry, &changed), FW_BREAKER_PROBE);
    CHECK_EQ_INT(fw_breaker_admit(&b, 1832, &retry, &changed), FW_BREAKER_REJECT);
    /* a probe that never ran gives its place back */
    fw_breaker_cancel_probe(&b);
    CHECK_EQ_INT(fw_breaker_admit(&b, 1833, &retry, &changed), FW_BREAKER_PROBE);
    /* a non-probe outcome does not decide; two probe successes close */
    CHECK_EQ_INT(fw_breaker_record(&b, 1840, 1, 0), 0);
    CHECK_EQ_INT(fw_breaker_record(&b, 1850, 0, 1), 0);
    CHECK_EQ_INT(fw_breaker_record(&b, 1860, 0, 1), 1);
    CHECK_EQ_INT(b.state, FW_BREAKER_CLOSED);
    fw_breaker_window(&b, 1860, &r, &f);
    CHECK_EQ_INT(r, 0); /* a fresh start */
    CHECK_EQ_INT(fw_breaker_admit(&b, 1870, &retry, &changed), FW_BREAKER_ADMIT);
    /* open again; a failed probe re-opens with a new cooldown */
    for (int i = 0; i < 4; i++)
        fw_breaker_record(&b, 1900, 1, 0);
    CHECK_EQ_INT(b.state, FW_BREAKER_OPEN);
    CHECK_EQ_INT(fw_breaker_admit(&b, 2100, &retry, &changed), FW_BREAKER_PROBE);
    CHECK_EQ_INT(fw_breaker_record(&b, 2150, 1, 1), 1);
    CHECK_EQ_INT(b.state, FW_BREAKER_OPEN);
    CHECK_EQ_INT(fw_breaker_admit(&b, 2160, &retry, &changed), FW_BREAKER_REJECT);
    CHECK_EQ_INT(retry, 190);
    CHECK_EQ_INT(b.opens, 3);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void t_test_ops_refused_without_flag_body(void)
{
    const char *args[] = { NO_MODELS, NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    CHECK(send_sleep(fd, 1, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNKNOWN_OP);
    CHECK_EQ_STR(r.msg, "unknown opcode 0x7E");
    CHECK(send_req(fd, FW_OP_TEST_FAIL, 2, 0, 0, NULL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNKNOWN_OP);
    CHECK_EQ_STR(r.msg, "unknown opcode 0x7F");
    /* gallery ops are real ops, flag or not (tests/test_galleryops.c covers them) */
    CHECK(send_req(fd, FW_OP_ENROLL, 3, 0, 0, NULL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(r.msg, "ENROLL: truncated subject");
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_test_ops_answers_body(void)
{
    CHECK(START0() == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    CHECK(send_sleep(fd, 1, 1, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK_EQ_INT(r.rid, 1);
    CHECK_EQ_INT(r.body_len, 0);
    CHECK(send_req(fd, FW_OP_TEST_FAIL, 2, 0, 0, NULL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_INTERNAL);
    CHECK_EQ_STR(r.msg, "test failure");
    /* malformed bodies: exact messages */
    CHECK(send_req(fd, FW_OP_TEST_SLEEP, 3, 0, 0, "\x00\x01", 2) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(r.msg, "TEST_SLEEP: truncated body (u32 milliseconds expected)");
    CHECK(send_req(fd, FW_OP_TEST_SLEEP, 4, 0, 0, "\x00\x00\x00\x01\x00", 5) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(r.msg, "TEST_SLEEP: 1 trailing bytes");
    CHECK(send_sleep(fd, 5, 60001, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(r.msg, "TEST_SLEEP: 60001 ms is above the limit of 60000");
    /* face ops without models: UNAVAILABLE with the reason and a retry_after_ms */
    uint8_t body[4 + 3] = { 0, 0, 0, 3, 0xFF, 0xD8, 0xFF };
    CHECK(send_req(fd, FW_OP_DETECT, 6, 0, 0, body, sizeof body) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    CHECK_MSG(strncmp(r.msg, "models not loaded: ", 19) == 0, "message: %s", r.msg);
    CHECK(r.retry_after > 0);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* One worker held by a blocker, a normal queue of 2: the 4th request is BUSY, answered before
 * anything that waits on the worker. */
static void t_queue_full_busy_body(void)
{
    CHECK(start("--queue-normal", "2", NULL, NULL, NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 1, 2000, FW_PRIO_NORMAL, 0) == 0); /* runs */
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_NORMAL, 0) == 0);    /* waits */
    CHECK(send_sleep(fd, 3, 0, FW_PRIO_NORMAL, 0) == 0);    /* waits: queue now full */
    CHECK(send_sleep(fd, 4, 0, FW_PRIO_NORMAL, 0) == 0);    /* refused */
    resp r;
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 4);
    CHECK_EQ_INT(r.status, FW_STATUS_BUSY);
    CHECK_EQ_STR(r.msg, "normal priority queue full");
    CHECK(r.retry_after > 0);
    /* the high queue is separate: still room there */
    CHECK(send_sleep(fd, 5, 0, FW_PRIO_HIGH, 0) == 0);
    uint32_t order[4];
    for (int i = 0; i < 4; i++) {
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
        order[i] = r.rid;
    }
    CHECK_EQ_INT(order[0], 1);
    CHECK_EQ_INT(order[1], 5);
    CHECK_EQ_INT(order[2], 2);
    CHECK_EQ_INT(order[3], 3);
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_responses_busy"), 1);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_responses_ok"), 4);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_expired_in_queue_never_runs_body(void)
{
    CHECK(START0() == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 1, 1500, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_NORMAL, 50) == 0);
    resp r;
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 2);
    CHECK_EQ_INT(r.status, FW_STATUS_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(r.msg, "deadline exceeded while queued");
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 1);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_expired_in_queue"), 1);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_ran"), 1); /* only the blocker ever ran */
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_responses_deadline_exceeded"), 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* A job that would only start after its deadline is refused at once, by the estimate from the
 * op's median run time; with a longer deadline the same job is admitted. */
static void t_deadline_admission_body(void)
{
    CHECK(START0() == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    CHECK(send_sleep(fd, 1, 200, FW_PRIO_NORMAL, 0) == 0); /* teaches the median: ~200 ms */
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(send_sleep(fd, 2, 1500, FW_PRIO_NORMAL, 0) == 0); /* runs */
    for (uint32_t rid = 3; rid < 6; rid++)
        CHECK(send_sleep(fd, rid, 200, FW_PRIO_NORMAL, 0) == 0); /* 3 wait: ~600 ms of work */
    CHECK(send_sleep(fd, 6, 0, FW_PRIO_NORMAL, 300) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 6);
    CHECK_EQ_INT(r.status, FW_STATUS_BUSY);
    CHECK_MSG(strncmp(r.msg, "expected completion in ", 23) == 0 &&
              strstr(r.msg, " ms exceeds the 300 ms deadline") != NULL, "message: %s", r.msg);
    CHECK(r.retry_after >= 600);
    /* the high queue is empty: the same deadline fits there */
    CHECK(send_sleep(fd, 7, 0, FW_PRIO_HIGH, 60000) == 0);
    CHECK(send_sleep(fd, 8, 0, FW_PRIO_NORMAL, 60000) == 0);
    static const uint32_t want[] = { 2, 7, 3, 4, 5, 8 };
    for (int i = 0; i < 6; i++) {
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
        CHECK_EQ_INT(r.rid, want[i]);
    }
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_running_past_deadline_body(void)
{
    CHECK(START0() == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    int64_t t0 = mono_ms();
    CHECK(send_sleep(fd, 1, 3000, FW_PRIO_NORMAL, 100) == 0);
    resp r;
    CHECK(read_resp(fd, &r) == 0);
    int64_t elapsed = mono_ms() - t0;
    CHECK_EQ_INT(r.rid, 1);
    CHECK_EQ_INT(r.status, FW_STATUS_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(r.msg, "deadline exceeded while running (budget 100 ms)");
    CHECK_MSG(elapsed < 2500, "answered after %lld ms, not at the deadline", (long long)elapsed);
    /* the worker is still sleeping: its slot still counts as busy */
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "compute_running"), 1);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_timed_out"), 1);
    /* so the next job waits for it, and its late result is never sent */
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 2);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_ran"), 2);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_responses_ok"), 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_priority_order_body(void)
{
    CHECK(START0() == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 1, 1000, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_LOW, 0) == 0);
    CHECK(send_sleep(fd, 3, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(fd, 4, 0, FW_PRIO_HIGH, 0) == 0);
    static const uint32_t want[] = { 1, 4, 3, 2 };
    for (int i = 0; i < 4; i++) {
        resp r;
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
        CHECK_EQ_INT(r.rid, want[i]);
    }
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* --starvation-limit 2: a waiting low job goes after two high ones passed it over. */
static void t_anti_starvation_body(void)
{
    CHECK(start("--starvation-limit", "2", NULL, NULL, NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 1, 1000, FW_PRIO_HIGH, 0) == 0);
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_LOW, 0) == 0);
    for (uint32_t rid = 10; rid < 14; rid++)
        CHECK(send_sleep(fd, rid, 0, FW_PRIO_HIGH, 0) == 0);
    static const uint32_t want[] = { 1, 10, 11, 2, 12, 13 };
    for (int i = 0; i < 6; i++) {
        resp r;
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
        CHECK_EQ_INT(r.rid, want[i]);
    }
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Low priority is shed once the normal queue is half full; normal still gets in. */
static void t_shed_low_first_body(void)
{
    CHECK(start("--queue-normal", "4", NULL, NULL, NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 1, 1500, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_LOW, 0) == 0);    /* queue empty: admitted */
    CHECK(send_sleep(fd, 3, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(fd, 4, 0, FW_PRIO_NORMAL, 0) == 0); /* normal queue now 2/4 */
    CHECK(send_sleep(fd, 5, 0, FW_PRIO_LOW, 0) == 0);    /* shed */
    CHECK(send_sleep(fd, 6, 0, FW_PRIO_NORMAL, 0) == 0); /* still admitted */
    resp r;
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 5);
    CHECK_EQ_INT(r.status, FW_STATUS_BUSY);
    CHECK_EQ_STR(r.msg, "overloaded: shedding low priority");
    CHECK(r.retry_after > 0);
    static const uint32_t want[] = { 1, 3, 4, 6, 2 };
    for (int i = 0; i < 5; i++) {
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
        CHECK_EQ_INT(r.rid, want[i]);
    }
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_degraded_mode_body(void)
{
    CHECK(start("--degraded", NULL, NULL, NULL, NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    CHECK(send_sleep(fd, 1, 0, FW_PRIO_LOW, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_BUSY);
    CHECK_EQ_STR(r.msg, "degraded mode: low priority refused");
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "compute_degraded"), 1);
    /* SIGUSR1 toggles it off */
    CHECK(tu_server_kill(&srv, SIGUSR1) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"degraded mode off\""));
    CHECK(send_sleep(fd, 3, 0, FW_PRIO_LOW, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "compute_degraded"), 0);
    CHECK_EQ_INT(tu_info_value(text, "compute_degraded_toggles"), 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Send a TEST_SLEEP 0 until it is admitted (the breaker's cooldown passes), waiting the
 * retry_after_ms the server gives each time. Returns the first non-UNAVAILABLE response. */
static int sleep_until_admitted(int fd, uint32_t rid, resp *r)
{
    for (int tries = 0; tries < 50; tries++) {
        if (send_sleep(fd, rid, 0, FW_PRIO_NORMAL, 0) != 0 || read_resp(fd, r) != 0)
            return -1;
        if (r->status != FW_STATUS_UNAVAILABLE)
            return 0;
        sleep_ms(r->retry_after > 0 && r->retry_after < 5000 ? (unsigned)r->retry_after : 50);
    }
    return -1;
}

static void t_breaker_cycle_body(void)
{
    CHECK(start("--breaker-min-requests", "4", "--breaker-cooldown-ms", "1000",
                "--breaker-probes", "2") == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    char text[16384];
    /* 1 success + 3 failures: 75% of 4 >= 50% -> open */
    CHECK(send_sleep(fd, 1, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    for (uint32_t rid = 2; rid <= 4; rid++) {
        CHECK(send_req(fd, FW_OP_TEST_FAIL, rid, 0, 0, NULL, 0) == 0);
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_INTERNAL);
    }
    /* open: both test ops fail fast (they share the class) */
    CHECK(send_sleep(fd, 5, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    CHECK_EQ_STR(r.msg, "circuit breaker open for test operations");
    CHECK(r.retry_after > 0 && r.retry_after <= 1000);
    CHECK(send_req(fd, FW_OP_TEST_FAIL, 6, 0, 0, NULL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK(info_has(text, "breaker_test_state: open"));
    CHECK(tu_server_wait_log(&srv, "msg=\"circuit breaker transition\" class=test from=closed to=open"));

    /* after the cooldown: half-open, 2 probes admitted, a third refused while they run */
    CHECK(sleep_until_admitted(fd, 7, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK); /* probe 1 */
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK(info_has(text, "breaker_test_state: half-open"));
    CHECK(send_sleep(fd, 8, 1000, FW_PRIO_NORMAL, 0) == 0); /* probe 2, running */
    CHECK(send_sleep(fd, 9, 0, FW_PRIO_NORMAL, 0) == 0);    /* no probe left */
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 9);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    CHECK_EQ_STR(r.msg, "circuit breaker half-open for test operations");
    CHECK(r.retry_after > 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 8);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    /* both probes succeeded: closed */
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK(info_has(text, "breaker_test_state: closed"));
    CHECK(tu_server_wait_log(&srv, "class=test from=half-open to=closed"));

    /* open again, then a failing probe re-opens it */
    for (uint32_t rid = 20; rid < 24; rid++) {
        CHECK(send_req(fd, FW_OP_TEST_FAIL, rid, 0, 0, NULL, 0) == 0);
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_INTERNAL);
    }
    CHECK(send_sleep(fd, 24, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    sleep_ms((unsigned)(r.retry_after > 0 ? r.retry_after : 1000) + 20);
    int admitted = 0;
    for (int tries = 0; tries < 50 && !admitted; tries++) {
        CHECK(send_req(fd, FW_OP_TEST_FAIL, 25, 0, 0, NULL, 0) == 0);
        CHECK(read_resp(fd, &r) == 0);
        if (r.status == FW_STATUS_UNAVAILABLE)
            sleep_ms(r.retry_after > 0 && r.retry_after < 5000 ? (unsigned)r.retry_after : 50);
        else
            admitted = 1;
    }
    CHECK(admitted);
    CHECK_EQ_INT(r.status, FW_STATUS_INTERNAL); /* the probe failed */
    CHECK(send_sleep(fd, 26, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_UNAVAILABLE);
    CHECK_EQ_STR(r.msg, "circuit breaker open for test operations");
    CHECK(tu_server_wait_log(&srv, "class=test from=half-open to=open"));
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "breaker_test_opens"), 3);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* A job that spent most of its budget waiting and then overran is an overload symptom, not a
 * broken stage: its timeout does not count against the breaker. One that ran past its
 * deadline on its own does. (The breaker opens at 1 failure in 5, the window's size either
 * way, so the one counted failure shows which timeout counted.) */
static void t_breaker_ignores_queueing_timeouts_body(void)
{
    CHECK(start("--breaker-min-requests", "1", "--breaker-failure-pct", "15", NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    char text[16384];
    for (uint32_t rid = 1; rid <= 3; rid++) { /* a median run time of ~0 ms */
        CHECK(send_sleep(fd, rid, 0, FW_PRIO_NORMAL, 0) == 0);
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
    }
    CHECK(send_sleep(fd, 4, 600, FW_PRIO_NORMAL, 0) == 0);   /* blocker */
    CHECK(send_sleep(fd, 5, 700, FW_PRIO_NORMAL, 1000) == 0); /* waits ~600, runs ~400 of 1000 */
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 4);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 5);
    CHECK_EQ_INT(r.status, FW_STATUS_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(r.msg, "deadline exceeded while running (budget 1000 ms)");
    /* counted, 1 failure in 5 (>= 15%) would have opened it */
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK(info_has(text, "breaker_test_state: closed"));
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_timed_out"), 1);
    /* once job 5's worker is back (this one queues behind it), the worker is free */
    CHECK(send_sleep(fd, 6, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    /* the same overrun without the wait counts: ran 100 of 100 ms; 1 failure in 6 opens it */
    CHECK(send_sleep(fd, 7, 400, FW_PRIO_NORMAL, 100) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 7);
    CHECK_EQ_INT(r.status, FW_STATUS_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(r.msg, "deadline exceeded while running (budget 100 ms)");
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK(info_has(text, "breaker_test_state: open"));
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Compute's flags: bad values refused at parse time with exit 2 and a precise message; a
 * per-op default deadline applies when the header has none, whatever the flag order. */
static void t_compute_flags_body(void)
{
    static const struct {
        const char *args[4];
        const char *want;
    } bad[] = {
        { { "--workers", "0", NULL }, "--workers: expected an integer in 1..256, not \"0\"" },
        { { "--queue-low", "x", NULL }, "--queue-low: expected an integer in 0..1000000, not \"x\"" },
        { { "--breaker-failure-pct", "101", NULL }, "--breaker-failure-pct: expected an integer in 1..100" },
        { { "--deadline-ms", "NOPE=5", NULL }, "--deadline-ms: \"NOPE=5\" is not OP=MS" },
        { { "--deadline-ms", "embed", NULL }, "--deadline-ms: \"embed\" is not OP=MS" },
        { { "--verify-threshold", "-1", NULL }, "--verify-threshold: expected a positive number" },
        { { "--worker-yield-us", "-5", NULL }, "--worker-yield-us: expected an integer in 0..1000000, not \"-5\"" },
        { { "--worker-yield-us", "2000000", NULL }, "--worker-yield-us: expected an integer in 0..1000000, not \"2000000\"" },
        { { "--metrics-listen", "localhost", NULL }, "--metrics-listen: localhost is not HOST:PORT" },
        { { "--workers", NULL }, "--workers needs a value" },
        { { "--detector-size", "400", NULL }, "--detector-size: the detector input must be a multiple of 32, not 400" },
    };
    static char out[8192];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(tu_run("facewired", bad[i].args, out, sizeof out), 2);
        CHECK_MSG(strstr(out, bad[i].want) != NULL, "want \"%s\" in: %s", bad[i].want, out);
    }

    CHECK(start("--deadline-ms", "test_sleep=100", "--default-deadline-ms", "5000", NULL, NULL) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_default_deadline_ms"), 100);
    CHECK_EQ_INT(tu_info_value(text, "op_test_fail_default_deadline_ms"), 5000);
    resp r;
    CHECK(send_sleep(fd, 1, 1000, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(r.msg, "deadline exceeded while running (budget 100 ms)");
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* Close a socket with a reset, so the server sees the connection fail at once rather than a
 * half-close it would wait to answer. */
static void close_reset(int fd)
{
    struct linger lg = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void t_disconnect_with_jobs_body(void)
{
    CHECK(START0() == 0);
    int a = tu_connect_server(&srv);
    CHECK(a >= 0);
    /* a running job with a deadline that passes after the disconnect, and waiting jobs */
    CHECK(send_sleep(a, 1, 800, FW_PRIO_NORMAL, 300) == 0);
    CHECK(send_sleep(a, 2, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(a, 3, 0, FW_PRIO_HIGH, 5000) == 0);
    CHECK(send_sleep(a, 4, 0, FW_PRIO_LOW, 0) == 0);
    /* INFO is answered in order after the frames above were handed to compute */
    char text[16384];
    CHECK(info(a, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "compute_running"), 1);
    close_reset(a);

    int b = tu_connect_server(&srv);
    CHECK(b >= 0);
    /* wait (bounded, event-driven) until the server has noticed the reset */
    int64_t until = mono_ms() + tu_timeout_ms();
    long long dropped = -1;
    while (mono_ms() < until) {
        CHECK(info(b, text, sizeof text) == 0);
        dropped = tu_info_value(text, "op_test_sleep_dropped");
        if (dropped == 3)
            break;
    }
    CHECK_EQ_INT(dropped, 3);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_orphaned"), 1);
    /* the server goes on serving */
    resp r;
    CHECK(send_sleep(b, 10, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(b, &r) == 0);
    CHECK_EQ_INT(r.rid, 10);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(info(b, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_ran"), 2); /* the orphan and ours */
    CHECK_EQ_INT(tu_info_value(text, "compute_running"), 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_timed_out"), 1);
    close(b);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* SIGTERM with a job running and one waiting: both still complete within the grace. */
static void t_drain_completes_jobs_body(void)
{
    CHECK(START0() == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 1, 500, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_NORMAL, 0) == 0);
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0); /* both are with compute now */
    CHECK(tu_server_kill(&srv, SIGTERM) == 0);
    resp r;
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 1);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 2);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    close(fd);
    CHECK_EQ_INT(tu_server_wait(&srv), 0);
}

/* The grace runs out: what is still pending is answered SHUTTING_DOWN. */
static void t_drain_grace_expires_body(void)
{
    const char *args[] = { "--enable-test-ops", "--workers", "1", "--grace-ms", "100", NO_MODELS, NULL };
    CHECK(tu_server_start(&srv, args) == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 1, 1500, FW_PRIO_NORMAL, 0) == 0);
    CHECK(send_sleep(fd, 2, 0, FW_PRIO_NORMAL, 0) == 0);
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK(tu_server_kill(&srv, SIGTERM) == 0);
    resp r[2];
    CHECK(read_resp(fd, &r[0]) == 0);
    CHECK(read_resp(fd, &r[1]) == 0);
    CHECK_EQ_INT(r[0].status, FW_STATUS_SHUTTING_DOWN);
    CHECK_EQ_INT(r[1].status, FW_STATUS_SHUTTING_DOWN);
    CHECK_EQ_INT(r[0].rid + r[1].rid, 3);
    close(fd);
    CHECK_EQ_INT(tu_server_wait(&srv), 0);
}

/* ---- /metrics ------------------------------------------------------------------------------ */

/* Send raw bytes to the metrics port; the response, read until the server closes, into out. */
static int http(int port, const char *req, size_t len, char *out, size_t cap)
{
    return tu_http_exchange("127.0.0.1", port, req, len, out, cap) < 0 ? -1 : 0;
}

static void t_metrics_endpoint_body(void)
{
    CHECK(start("--metrics-listen", "127.0.0.1:0", NULL, NULL, NULL, NULL) == 0);
    CHECK(tu_server_wait_log(&srv, "msg=\"metrics listening\""));
    int port = tu_server_metrics_port(&srv);
    CHECK(port > 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    CHECK(send_sleep(fd, 1, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK(send_req(fd, FW_OP_TEST_FAIL, 2, 0, 0, NULL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    close(fd);

    static char out[65536];
    const char *get = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(http(port, get, strlen(get), out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %.80s", out);
    CHECK(strstr(out, "Content-Type: text/plain; version=0.0.4") != NULL);
    CHECK(strstr(out, "\nfacewire_requests_total{op=\"TEST_SLEEP\"} 1\n") != NULL);
    CHECK(strstr(out, "\nfacewire_responses_total{op=\"TEST_FAIL\",status=\"INTERNAL\"} 1\n") != NULL);
    CHECK(strstr(out, "\nfacewire_breaker_state{class=\"test\"} 0\n") != NULL);
    CHECK(strstr(out, "\nfacewire_queue_depth{priority=\"low\"} 0\n") != NULL);
    CHECK(strstr(out, "facewire_run_seconds_count{op=\"TEST_SLEEP\"} 1\n") != NULL);

    /* HEAD: the same headers, no body */
    size_t get_len = strlen(out);
    const char *cl = strstr(out, "Content-Length: ");
    CHECK(cl != NULL);
    long full = atol(cl + 16);
    CHECK(full > 0);
    const char *head = "HEAD /metrics HTTP/1.1\r\n\r\n";
    CHECK(http(port, head, strlen(head), out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %.80s", out);
    cl = strstr(out, "Content-Length: ");
    CHECK(cl != NULL);
    CHECK(atol(cl + 16) >= full); /* counters only grow between the two scrapes */
    const char *end = strstr(out, "\r\n\r\n");
    CHECK(end != NULL && end[4] == '\0');
    CHECK(get_len > strlen(out));

    const char *other = "GET /other HTTP/1.1\r\n\r\n";
    CHECK(http(port, other, strlen(other), out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 404 ", 13) == 0, "got: %.80s", out);

    const char *junk = "\x01\x02 not http at all\r\n\r\n";
    CHECK(http(port, junk, strlen(junk), out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 400 ", 13) == 0, "got: %.80s", out);

    const char *post = "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    CHECK(http(port, post, strlen(post), out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 405 ", 13) == 0, "got: %.80s", out);

    /* a request target longer than we keep */
    static char longurl[700];
    memcpy(longurl, "GET /", 5);
    memset(longurl + 5, 'a', 600);
    memcpy(longurl + 605, " HTTP/1.1\r\n\r\n", 14);
    CHECK(http(port, longurl, 619, out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 400 ", 13) == 0, "got: %.80s", out);

    /* a request head that never ends is cut off at the limit, not buffered */
    static char big[8300];
    memcpy(big, "GET /metrics HTTP/1.1\r\n", 23);
    for (size_t i = 23; i + 16 <= sizeof big; i += 16)
        memcpy(big + i, "X-Pad: aaaaaaa\r\n", 16);
    CHECK(http(port, big, 23 + ((sizeof big - 23) / 16) * 16, out, sizeof out) == 0);
    CHECK_MSG(strncmp(out, "HTTP/1.1 400 ", 13) == 0, "got: %.80s", out);

    /* the main port still serves */
    fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    CHECK(send_sleep(fd, 3, 0, FW_PRIO_NORMAL, 0) == 0);
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

/* A failed CHECK returns from the body early: stop a server left running, so the next test
 * starts from scratch. */
static void cleanup(void)
{
    if (srv.pid > 0)
        tu_server_stop(&srv);
}

/* Admission counts a whole run for a busy worker: with one worker running a job that has just
 * started, one job waiting and a run time r (~200 ms), a new job finishes at worst after 3r,
 * so a deadline of 550 ms (between the average case 2.5r and 3r) is refused at once, where an
 * estimate with half a run admitted it and it then expired in the queue. A longer deadline
 * is still admitted (generously longer: the job must not expire on a slow, sanitized run).
 * Nothing expires. */
static void t_admission_worst_case_body(void)
{
    CHECK(START0() == 0);
    int fd = tu_connect_server(&srv);
    CHECK(fd >= 0);
    resp r;
    CHECK(send_sleep(fd, 1, 200, FW_PRIO_NORMAL, 0) == 0); /* teaches the run time: ~200 ms */
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.status, FW_STATUS_OK);
    CHECK(send_sleep(fd, 2, 200, FW_PRIO_NORMAL, 0) == 0); /* runs: the worker is busy */
    CHECK(send_sleep(fd, 3, 200, FW_PRIO_NORMAL, 0) == 0); /* waits */
    CHECK(send_sleep(fd, 4, 200, FW_PRIO_NORMAL, 550) == 0);
    CHECK(send_sleep(fd, 5, 0, FW_PRIO_NORMAL, 5000) == 0); /* a deadline that fits */
    CHECK(read_resp(fd, &r) == 0);
    CHECK_EQ_INT(r.rid, 4);
    CHECK_EQ_INT(r.status, FW_STATUS_BUSY);
    CHECK_MSG(strncmp(r.msg, "expected completion in ", 23) == 0 &&
              strstr(r.msg, " ms exceeds the 550 ms deadline") != NULL, "message: %s", r.msg);
    CHECK(r.retry_after >= 600);
    static const uint32_t want[] = { 2, 3, 5 };
    for (int i = 0; i < 3; i++) {
        CHECK(read_resp(fd, &r) == 0);
        CHECK_EQ_INT(r.rid, want[i]);
        CHECK_EQ_INT(r.status, FW_STATUS_OK);
    }
    char text[16384];
    CHECK(info(fd, text, sizeof text) == 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_expired_in_queue"), 0);
    CHECK_EQ_INT(tu_info_value(text, "op_test_sleep_responses_busy"), 1);
    close(fd);
    CHECK_EQ_INT(tu_server_stop(&srv), 0);
}

static void t_hist_quantiles(void) { t_hist_quantiles_body(); }
static void t_breaker_unit(void) { t_breaker_unit_body(); }
static void t_deadline_admission(void) { t_deadline_admission_body(); cleanup(); }
static void t_admission_worst_case(void) { t_admission_worst_case_body(); cleanup(); }
static void t_compute_flags(void) { t_compute_flags_body(); cleanup(); }
static void t_breaker_ignores_queueing_timeouts(void) { t_breaker_ignores_queueing_timeouts_body(); cleanup(); }
static void t_test_ops_refused_without_flag(void) { t_test_ops_refused_without_flag_body(); cleanup(); }
static void t_test_ops_answers(void) { t_test_ops_answers_body(); cleanup(); }
static void t_queue_full_busy(void) { t_queue_full_busy_body(); cleanup(); }
static void t_expired_in_queue_never_runs(void) { t_expired_in_queue_never_runs_body(); cleanup(); }
static void t_running_past_deadline(void) { t_running_past_deadline_body(); cleanup(); }
static void t_priority_order(void) { t_priority_order_body(); cleanup(); }
static void t_anti_starvation(void) { t_anti_starvation_body(); cleanup(); }
static void t_shed_low_first(void) { t_shed_low_first_body(); cleanup(); }
static void t_degraded_mode(void) { t_degraded_mode_body(); cleanup(); }
static void t_breaker_cycle(void) { t_breaker_cycle_body(); cleanup(); }
static void t_disconnect_with_jobs(void) { t_disconnect_with_jobs_body(); cleanup(); }
static void t_drain_completes_jobs(void) { t_drain_completes_jobs_body(); cleanup(); }
static void t_drain_grace_expires(void) { t_drain_grace_expires_body(); cleanup(); }
static void t_metrics_endpoint(void) { t_metrics_endpoint_body(); cleanup(); }

static const struct check_test tests[] = {
    CHECK_TEST(t_hist_quantiles),
    CHECK_TEST(t_breaker_unit),
    CHECK_TEST(t_test_ops_refused_without_flag),
    CHECK_TEST(t_test_ops_answers),
    CHECK_TEST(t_compute_flags),
    CHECK_TEST(t_queue_full_busy),
    CHECK_TEST(t_expired_in_queue_never_runs),
    CHECK_TEST(t_deadline_admission),
    CHECK_TEST(t_admission_worst_case),
    CHECK_TEST(t_running_past_deadline),
    CHECK_TEST(t_priority_order),
    CHECK_TEST(t_anti_starvation),
    CHECK_TEST(t_shed_low_first),
    CHECK_TEST(t_degraded_mode),
    CHECK_TEST(t_breaker_cycle),
    CHECK_TEST(t_breaker_ignores_queueing_timeouts),
    CHECK_TEST(t_disconnect_with_jobs),
    CHECK_TEST(t_drain_completes_jobs),
    CHECK_TEST(t_drain_grace_expires),
    CHECK_TEST(t_metrics_endpoint),
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
