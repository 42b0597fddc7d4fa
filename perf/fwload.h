/*
 * fwload.h — what the parts of the fwload load generator share: its options and its table of
 * request kinds ("ops").
 *
 * fwload_main.c  options, the libuv loop, connections, pacing, reporting
 * fwload_ops.c   the op table: how each op's request body is built and its reply checked
 * fwload_hist.c  the latency histogram
 * fwload_pace.c  the open-loop schedule (--rate): which requests are due when
 *
 * An op is built once per run (its body does not change between requests), so sending a
 * request is: copy a 20-byte header template, patch the request_id, append a few fixed
 * prefix bytes and point at (or copy) the shared payload. Adding an op is one row in the
 * table of fwload_ops.c plus, if it needs one, a setup function.
 */
#ifndef FWLOAD_H
#define FWLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "fw_proto.h"

#define FWL_MAX_OPS 8        /* distinct ops in one --mix */
#define FWL_PREFIX_MAX 16    /* per-request fixed bytes before an op's payload */
#define FWL_MAX_PIPELINE 4096 /* request_id keeps the slot in its low 12 bits */

/* Command-line options; filled by fwload_main.c, read by everything else. Strings point
 * into argv (not owned). */
typedef struct fwl_opts {
    const char *host;
    int port;
    unsigned connections;      /* -c: connections that send requests */
    unsigned idle_connections; /* --idle-connections: extra ones that only stay open */
    unsigned pipeline;         /* -P: requests in flight per connection */
    double duration_s;         /* -d (0 when -n is used) */
    uint64_t requests;         /* -n (0 when -d is used) */
    double rate;               /* --rate: requests/s over all connections; 0 = closed loop */
    const char *op;            /* --op NAME */
    const char *mix;           /* --mix NAME:W,NAME:W (instead of --op) */
    uint32_t body_bytes;       /* --body-bytes: PING payload */
    uint32_t sleep_ms;         /* --sleep-ms: TEST_SLEEP duration */
    const char *image;         /* --image: JPEG for EMBED */
    const char *descriptor;    /* --descriptor: 128 numbers (text) for IDENTIFY and ENROLL;
                                * NULL: a fixed pseudo-random descriptor */
    uint16_t k;                /* --k: IDENTIFY's matches per face, 1..100 */
    int has_threshold;         /* --threshold given */
    float threshold;           /* --threshold: IDENTIFY's distance bound */
    const char *subject;       /* --subject: ENROLL's subject */
    uint8_t priority;          /* --priority 0..2 */
    uint32_t deadline_ms;      /* --deadline-ms, 0 = server default */
    uint32_t late_ms;          /* --late-ms: OK answers later than this are counted; 0 = off
                                * (defaults to deadline_ms) */
    uint32_t timeout_ms;       /* --timeout-ms: a reply later than this is an error */
    uint32_t connect_timeout_ms;
    unsigned connect_batch;    /* connects in progress at once */
    uint32_t max_response;     /* largest response body accepted */
    uint32_t max_backlog;      /* open loop: requests waiting for a free slot, at most */
    int json;
    int progress;              /* 1: always, 0: only if stderr is a tty, -1: never */
} fwl_opts;

struct fwl_op;

/* One row of the op table. */
typedef struct fwl_op_def {
    const char *name;  /* as written in --op and --mix */
    uint8_t opcode;
    const char *help;  /* one line for --help */
    /* Builds op->prefix and op->payload from the options. 0, or -1 with a message in err. */
    int (*setup)(struct fwl_op *op, const fwl_opts *o, char *err, size_t errlen);
    /* Checks the body of an OK reply: 0 if acceptable. NULL accepts any body. */
    int (*check_ok)(const struct fwl_op *op, const uint8_t *body, size_t len);
} fwl_op_def;

/* An op in use in this run. */
typedef struct fwl_op {
    const fwl_op_def *def;
    unsigned weight;                /* share of requests in a --mix (1 for --op) */
    long wrr_current;               /* smooth weighted round-robin state */
    uint8_t header[FW_HEADER_LEN];  /* template: everything but request_id */
    uint8_t prefix[FWL_PREFIX_MAX]; /* fixed bytes at the start of every body */
    size_t prefix_len;
    uint8_t *payload;               /* owned; the same bytes for every request */
    size_t payload_len;
} fwl_op;

typedef struct fwl_opset {
    fwl_op ops[FWL_MAX_OPS];
    unsigned n;
    unsigned long total_weight;
} fwl_opset;

/* Fills set from --op NAME or --mix NAME:W,... (exactly one of op/mix non-NULL). Then builds
 * every op's body and header template. 0, or -1 with a message in err (set is freed). */
int fwl_ops_init(fwl_opset *set, const fwl_opts *o, char *err, size_t errlen);
/* Index of the op for the next request: smooth weighted round-robin, so a mix 3:1 sends
 * exactly 3 of one per 1 of the other in every window of 4, deterministically. */
unsigned fwl_ops_pick(fwl_opset *set);
void fwl_ops_free(fwl_opset *set);
/* Prints the op table for --help. */
void fwl_ops_help(FILE *out);

#endif
