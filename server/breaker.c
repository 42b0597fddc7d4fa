/*
 * breaker.c — per-class circuit breaker (see breaker.h for the rules).
 *
 * The window is a ring of FW_BREAKER_SLOTS time slices. Each slot remembers which slice of
 * time it counts (its epoch); a slot whose epoch fell out of the window is stale and reads as
 * zero, so nothing ever has to sweep the ring on a timer.
 */
#include "server/breaker.h"

#include <string.h>

void fw_breaker_init(fw_breaker *b, const fw_breaker_config *cfg)
{
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    if (b->cfg.probes < 1)
        b->cfg.probes = 1;
    if (b->cfg.failure_pct < 1)
        b->cfg.failure_pct = 1;
    if (b->cfg.failure_pct > 100)
        b->cfg.failure_pct = 100;
    b->slice_ms = b->cfg.window_ms / FW_BREAKER_SLOTS;
    if (b->slice_ms == 0)
        b->slice_ms = 1;
    b->state = FW_BREAKER_CLOSED;
}

const char *fw_breaker_state_name(fw_breaker_state s)
{
    switch (s) {
    case FW_BREAKER_CLOSED: return "closed";
    case FW_BREAKER_OPEN: return "open";
    case FW_BREAKER_HALF_OPEN: return "half-open";
    }
    return "unknown";
}

static void window_clear(fw_breaker *b)
{
    memset(b->slot, 0, sizeof b->slot);
}

void fw_breaker_window(const fw_breaker *b, uint64_t now, uint32_t *requests, uint32_t *failures)
{
    uint64_t cur = now / b->slice_ms;
    uint32_t r = 0, f = 0;
    for (int i = 0; i < FW_BREAKER_SLOTS; i++) {
        /* live: counts one of the last FW_BREAKER_SLOTS slices, the current one included */
        if (b->slot[i].epoch + FW_BREAKER_SLOTS > cur && b->slot[i].epoch <= cur) {
            r += b->slot[i].requests;
            f += b->slot[i].failures;
        }
    }
    *requests = r;
    *failures = f;
}

static void go_open(fw_breaker *b, uint64_t now)
{
    b->state = FW_BREAKER_OPEN;
    b->opened_at = now;
    b->probes_admitted = 0;
    b->probes_ok = 0;
    b->opens++;
    b->transitions++;
}

static uint32_t cooldown_left(const fw_breaker *b, uint64_t now)
{
    uint64_t until = b->opened_at + b->cfg.cooldown_ms;
    uint64_t left = until > now ? until - now : 0;
    return left == 0 ? 1 : (uint32_t)left;
}

int fw_breaker_fail_fast(fw_breaker *b, uint64_t now, uint32_t *retry_after_ms)
{
    if (b->state != FW_BREAKER_OPEN || now >= b->opened_at + b->cfg.cooldown_ms)
        return 0;
    *retry_after_ms = cooldown_left(b, now);
    b->rejected++;
    return 1;
}

fw_breaker_verdict fw_breaker_admit(fw_breaker *b, uint64_t now, uint32_t *retry_after_ms,
                                    int *changed)
{
    *changed = 0;
    if (b->state == FW_BREAKER_OPEN) {
        if (now < b->opened_at + b->cfg.cooldown_ms) {
            *retry_after_ms = cooldown_left(b, now);
            b->rejected++;
            return FW_BREAKER_REJECT;
        }
        b->state = FW_BREAKER_HALF_OPEN;
        b->probes_admitted = 0;
        b->probes_ok = 0;
        b->transitions++;
        *changed = 1;
    }
    if (b->state == FW_BREAKER_HALF_OPEN) {
        if (b->probes_admitted < b->cfg.probes) {
            b->probes_admitted++;
            return FW_BREAKER_PROBE;
        }
        /* Probes are out; their verdict comes within about one cooldown at worst. */
        *retry_after_ms = b->cfg.cooldown_ms ? b->cfg.cooldown_ms : 1;
        b->rejected++;
        return FW_BREAKER_REJECT;
    }
    return FW_BREAKER_ADMIT;
}

void fw_breaker_cancel_probe(fw_breaker *b)
{
    if (b->state == FW_BREAKER_HALF_OPEN && b->probes_admitted > 0)
        b->probes_admitted--;
}

int fw_breaker_record(fw_breaker *b, uint64_t now, int failure, int probe)
{
    if (b->state == FW_BREAKER_HALF_OPEN) {
        /* Only probes decide; a straggler admitted while closed says nothing about now. */
        if (!probe)
            return 0;
        if (failure) {
            go_open(b, now);
            return 1;
        }
        if (++b->probes_ok >= b->cfg.probes) {
            b->state = FW_BREAKER_CLOSED;
            b->transitions++;
            window_clear(b);
            return 1;
        }
        return 0;
    }
    if (b->state == FW_BREAKER_OPEN)
        return 0; /* stragglers finishing while open: already acted upon */

    uint64_t cur = now / b->slice_ms;
    int i = (int)(cur % FW_BREAKER_SLOTS);
    if (b->slot[i].epoch != cur) {
        b->slot[i].epoch = cur;
        b->slot[i].requests = 0;
        b->slot[i].failures = 0;
    }
    b->slot[i].requests++;
    if (failure)
        b->slot[i].failures++;
    if (!failure)
        return 0;

    uint32_t r, f;
    fw_breaker_window(b, now, &r, &f);
    if (r >= (uint32_t)b->cfg.min_requests && (uint64_t)f * 100 >= (uint64_t)r * (uint64_t)b->cfg.failure_pct) {
        go_open(b, now);
        window_clear(b);
        return 1;
    }
    return 0;
}
