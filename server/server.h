/*
 * server.h — the facewired server context: configuration, the libuv loop's handles
 * (listeners, the sweep timer, signal watchers, the flush check), the connection lists and
 * the counters INFO reports. It is the only long-lived state of the process; everything that
 * needs it gets a pointer (a connection reaches it through c->srv).
 *
 * Threading: all of it belongs to the loop thread. Worker threads never see a fw_server.
 *
 * Life cycle:  fw_server_config_default -> fw_server_parse_args -> fw_server_start ->
 *              uv_run (returns after a signal-initiated shutdown has closed every handle) ->
 *              fw_server_free.
 */
#ifndef FW_SERVER_H
#define FW_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "fw_proto.h"
#include "server/compute.h"
#include "server/keys.h"
#include "server/log.h"

#define FW_MAX_LISTEN 16
/* Size of the loop-owned read buffer every connection reads into (see conn.c). */
#define FW_READ_BUF_SIZE (64u * 1024u)

/* Intrusive doubly-linked circular list with a sentinel: O(1) insert and unlink, no
 * allocation. An unlinked node points to itself, so unlinking twice is harmless. */
typedef struct fw_link {
    struct fw_link *prev, *next;
} fw_link;

static inline void fw_link_init(fw_link *l) { l->prev = l->next = l; }
static inline int fw_link_empty(const fw_link *l) { return l->next == l; }
static inline int fw_link_linked(const fw_link *l) { return l->next != l; }
static inline void fw_link_unlink(fw_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}
static inline void fw_link_append(fw_link *head, fw_link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}
#define fw_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

typedef struct fw_server_config {
    const char *listen[FW_MAX_LISTEN]; /* point into argv (or static strings) */
    int n_listen;                      /* 0 means the default 127.0.0.1:7420 */
    const char *data_dir;         /* NULL with --gallery-url (PostgreSQL holds the gallery) */
    const char *models_dir;
    int data_given;               /* --data was on the command line (not the default) */
    uint32_t max_body;            /* bytes; requests above get TOO_LARGE and a close */
    uint32_t max_connections;     /* beyond it, new connections are accepted and closed */
    uint32_t max_output;          /* unsent response bytes per connection before reading pauses */
    uint32_t idle_timeout_ms;     /* 0 = never */
    uint32_t frame_timeout_ms;    /* a started frame must complete within this; 0 = never */
    uint32_t grace_ms;            /* shutdown: how long jobs in flight may still finish */
    uint32_t drain_delay_ms;      /* shutdown: /health says 503 and requests are still served
                                     for this long before the listeners close (a balancer's
                                     health check needs time to notice) */
    fw_log_level log_level;
    const char *server_key;       /* --server-key FILE: secure sessions on (NULL: off) */
    const char *authorized_keys;  /* --authorized-keys FILE, re-read on SIGHUP */
    int require_secure;           /* --require-secure: only HELLO/AUTH before a session */
    int insecure_plaintext;       /* --insecure-plaintext: allow plaintext off loopback */
    fw_compute_options compute;   /* everything the compute side parses */
} fw_server_config;

typedef struct fw_listener {
    uv_tcp_t tcp;
    struct fw_server *srv; /* NULL until tcp is initialised (then it must be closed) */
    char addr[64]; /* the bound address, "127.0.0.1:7420" or "[::1]:7420" */
} fw_listener;

/* A connection's output buffer starts at FW_OUT_BUF_SIZE (a PING, a BUSY, a one-face EMBED
 * answer fit); the server keeps up to FW_OUT_POOL_MAX of them for reuse (256 KiB). */
#define FW_OUT_BUF_SIZE 4096
#define FW_OUT_POOL_MAX 64

typedef struct fw_server {
    uv_loop_t *loop;
    fw_server_config cfg;
    fw_log log;
    fw_compute *compute; /* owned; stopped in the shutdown sequence */

    fw_listener *listeners; /* owned array of n_listeners; freed by fw_server_free */
    int n_listeners;

    uv_timer_t sweep;    /* idle / partial-frame / shutdown deadlines */
    uv_timer_t drain_delay; /* the --drain-delay-ms between the signal and the drain */
    uv_check_t flush;    /* after each poll: service queued connections (one write per batch) */
    uv_idle_t nudge;     /* active while connections are queued: keeps poll from blocking */
    uv_signal_t sigint, sigterm, sighup;
    /* A handle above is initialised (and must be closed) iff its data points to the server. */

    /* Connections. Every open one is on `by_activity` (least recently active first); those in
     * the middle of a frame are also on `by_frame_start` (oldest first); those with work for
     * the check phase (output to flush, input to resume, a close to finish) are on `pending`. */
    fw_security security; /* server identity and authorized keys; keys replaced on SIGHUP */

    fw_link by_activity;
    fw_link by_frame_start;
    fw_link pending;
    uint32_t n_conns;
    uint64_t next_conn_id;

    uint8_t *read_buf; /* FW_READ_BUF_SIZE bytes, owned; shared by every connection's reads */
    /* Output buffers of FW_OUT_BUF_SIZE bytes given back by connections whose responses were
     * written, for the next response to take instead of a malloc/free per request (conn.c);
     * at most FW_OUT_POOL_MAX, owned, freed by fw_server_free. An idle connection holds none. */
    uint8_t *out_pool[FW_OUT_POOL_MAX];
    int out_pool_n;

    /* Counters reported by INFO. */
    uint64_t started_ms; /* uv_now at start */
    uint64_t connections_total, requests_total, bytes_in, bytes_out, rejected_connections;

    /* Shutdown state. */
    int delaying;        /* a signal arrived: /health is 503, still serving (--drain-delay-ms) */
    uint64_t delay_started;
    char shutdown_why[32];
    int draining;        /* the delay is over: listeners closed, compute draining */
    int drained;         /* compute reported every job answered: connections close once flushed */
    int finished;        /* every handle of ours has been closed */
    uint64_t force_close_at; /* uv_now after which connections are closed unflushed */
    int exit_code;
} fw_server;

void fw_server_config_default(fw_server_config *cfg);

/* Parse argv into cfg. Returns 0 to run, 1 when --help/--version was printed (exit 0), -1
 * after printing a usage error to `err` (exit 2). Strings in cfg point into argv. */
int fw_server_parse_args(fw_server_config *cfg, int argc, char **argv, FILE *out, FILE *err);
void fw_server_usage(FILE *out, const char *prog);

/* Start compute, the listeners, timers and signal watchers on loop. Returns 0, or -1 after
 * logging why; on failure everything started is closed again (run the loop, then
 * fw_server_free). */
int fw_server_start(fw_server *srv, uv_loop_t *loop, const fw_server_config *cfg);

/* Begin a graceful shutdown, as SIGINT/SIGTERM do: /health turns 503 at once; after
 * cfg.drain_delay_ms (during which everything is still served) the listeners close and
 * compute drains. Called again during the delay, it cuts the delay short. */
void fw_server_shutdown(fw_server *srv, const char *why);

/* Free what fw_server_start allocated. Only after uv_run has returned. */
void fw_server_free(fw_server *srv);

/* ---- used by conn.c ------------------------------------------------------------------------ */

/* A connection was unlinked and its handle closed: the shutdown may be able to finish. */
void fw_server_conn_gone(fw_server *srv);
/* Wake the check phase: start the idle handle so the next poll does not block. */
void fw_server_wake(fw_server *srv);
/* INFO's body ("key: value\n" lines, then compute's). Returns bytes written (<= cap). */
size_t fw_server_info(fw_server *srv, char *buf, size_t cap);

#endif
