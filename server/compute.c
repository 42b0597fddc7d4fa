/*
 * compute.c — the compute side of facewired (see compute.h). FIRST CUT: options parsing and
 * an op table that answers UNKNOWN_OP for everything, so the connection layer can link and
 * be tested while the scheduler, the face ops and the metrics listener are being built.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server/compute.h"

struct fw_compute {
    uv_loop_t *loop;
    fw_compute_options opt;
    int draining;
};

void fw_compute_options_default(fw_compute_options *o)
{
    memset(o, 0, sizeof *o);
    o->workers = (int)uv_available_parallelism();
    o->queue_cap[FW_PRIO_HIGH] = 64;
    o->queue_cap[FW_PRIO_NORMAL] = 256;
    o->queue_cap[FW_PRIO_LOW] = 64;
    o->conn_max_jobs = 32;
    o->breaker_min_requests = 20;
    o->breaker_failure_pct = 50;
    o->breaker_window_ms = 10000;
    o->breaker_cooldown_ms = 5000;
    o->breaker_probes = 3;
}

int fw_compute_parse_flag(fw_compute_options *o, const char *flag, const char *value,
                          int *takes_value, char *err, size_t errlen)
{
    (void)o; (void)flag; (void)value; (void)err; (void)errlen;
    *takes_value = 0;
    return 0;
}

void fw_compute_usage(FILE *out)
{
    (void)out;
}

int fw_compute_start(uv_loop_t *loop, const fw_compute_options *o, fw_compute **out,
                     char *err, size_t errlen)
{
    fw_compute *cp = calloc(1, sizeof *cp);
    if (!cp) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cp->loop = loop;
    cp->opt = *o;
    *out = cp;
    return 0;
}

void fw_compute_request(fw_compute *cp, fw_conn *c, const fw_header *h, const uint8_t *body)
{
    char msg[64];
    (void)body;
    if (cp->draining) {
        fw_conn_reply_error(c, h, FW_STATUS_SHUTTING_DOWN, "shutting down", NULL, 0);
        return;
    }
    snprintf(msg, sizeof msg, "unknown opcode 0x%02X", h->opcode);
    fw_conn_reply_error(c, h, FW_STATUS_UNKNOWN_OP, msg, NULL, 0);
}

void fw_compute_conn_closed(fw_compute *cp, fw_conn *c)
{
    (void)cp; (void)c;
}

size_t fw_compute_info(fw_compute *cp, char *buf, size_t cap)
{
    (void)cp; (void)buf; (void)cap;
    return 0;
}

void fw_compute_drain(fw_compute *cp, uint32_t grace_ms, void (*on_drained)(void *arg), void *arg)
{
    (void)grace_ms;
    cp->draining = 1;
    if (on_drained)
        on_drained(arg);
}

void fw_compute_stop(fw_compute *cp)
{
    free(cp);
}
