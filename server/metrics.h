/*
 * metrics.h — Prometheus text exposition over HTTP (GET /metrics), served on facewired's own
 * loop, with Debian's http_parser doing the parsing. Also the small string builder that both
 * INFO and /metrics render into.
 *
 * The listener knows nothing about what it serves: on each GET /metrics it calls the render
 * callback (loop thread) for the body, and on each GET /health the health callback, which
 * says whether this node should take traffic (200 "ok\n", or 503 with the reason as the
 * body: what a load balancer's HTTP check looks at). HEAD is answered like GET without the
 * body. Other paths get 404, other methods 405, malformed or oversized requests 400; the
 * connection closes after every response. A connection is closed
 * FW_METRICS_TIMEOUT_MS after it was accepted whatever its state (request not complete, or
 * response not read), and at most FW_METRICS_MAX_CONNS are open at once (more are closed on
 * accept), so a slow or hostile scraper cannot hold the loop's resources.
 */
#ifndef FW_METRICS_H
#define FW_METRICS_H

#include <stddef.h>
#include <uv.h>

#include "server/log.h"

#define FW_METRICS_TIMEOUT_MS 10000
#define FW_METRICS_MAX_CONNS 32
#define FW_METRICS_MAX_REQUEST 8192 /* bytes of request head we accept */

/* A string builder: fixed (a caller's buffer; a line that does not fit is dropped whole and
 * err set) or dynamic (grows with realloc; err set on out of memory). */
typedef struct fw_sb {
    char *p;
    size_t len, cap;
    int fixed;
    int err;
} fw_sb;

void fw_sb_init_fixed(fw_sb *b, char *buf, size_t cap);
void fw_sb_init_dyn(fw_sb *b);
void fw_sb_printf(fw_sb *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void fw_sb_free(fw_sb *b); /* dynamic only */

typedef struct fw_metrics fw_metrics;
typedef void (*fw_metrics_render_fn)(void *arg, fw_sb *out);
/* 1 when healthy; else 0 with a short reason ("draining", "lagging 7300 ms") in why. Loop
 * thread, once per GET /health: it must be cheap (no I/O, no lock held for long). */
typedef int (*fw_metrics_health_fn)(void *arg, char *why, size_t whylen);

/* Parse "HOST:PORT" / "[V6]:PORT" (numeric host) into ss. 0, or -1 with a message. */
struct sockaddr_storage;
int fw_metrics_parse_addr(const char *hostport, struct sockaddr_storage *ss, char *err, size_t errlen);

/* Listen on hostport ("127.0.0.1:9100", "[::1]:9100"; port 0 picks one, logged as
 * msg="metrics listening" addr=...). render(arg, out) runs on the loop thread per scrape.
 * Returns 0, or -1 with a message. log may be NULL. */
int fw_metrics_start(uv_loop_t *loop, const char *hostport, fw_metrics_render_fn render, void *arg,
                     const fw_log *log, fw_metrics **out, char *err, size_t errlen);
/* The /health callback. Without one, /health answers 503 "starting": a listener whose owner
 * has not said what healthy means must not be sent traffic. */
void fw_metrics_set_health(fw_metrics *m, fw_metrics_health_fn health, void *arg);
/* The bound address ("127.0.0.1:9100"). */
const char *fw_metrics_addr(const fw_metrics *m);
/* Close the listener and every connection; on_closed(arg) runs once all handles closed, after
 * which the fw_metrics is freed. */
void fw_metrics_stop(fw_metrics *m, void (*on_closed)(void *arg), void *arg);

#endif
