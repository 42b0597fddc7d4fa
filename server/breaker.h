/*
 * breaker.h — a circuit breaker for one class of operations (e.g. "face", "test").
 *
 *   closed    requests pass; outcomes go into a sliding window of `window_ms`, kept as
 *             FW_BREAKER_SLOTS time slices. When the window holds at least `min_requests`
 *             outcomes and failures reach `failure_pct` percent of them -> open.
 *   open      every request is refused at once (the caller answers UNAVAILABLE with
 *             retry_after_ms = the rest of the cooldown). After `cooldown_ms` -> half-open.
 *   half-open `probes` requests are admitted as probes, the rest refused. Every probe
 *             succeeds -> closed (window cleared); one fails -> open again, a new cooldown.
 *
 * A failure is what says the stage is unhealthy: INTERNAL, or a running job that passed its
 * deadline. Client errors (BAD_IMAGE, NO_FACE, BAD_REQUEST) are successes for the breaker,
 * and jobs that never ran (expired in the queue, dropped on disconnect) are not outcomes at
 * all. A probe that never ran must be handed back with fw_breaker_cancel_probe(), otherwise
 * the breaker would wait for it forever.
 *
 * Time is passed in by the caller (milliseconds, any monotonic origin), which keeps this
 * file free of libuv and makes it testable. Loop thread only.
 */
#ifndef FW_BREAKER_H
#define FW_BREAKER_H

#include <stdint.h>

#define FW_BREAKER_SLOTS 10

typedef enum fw_breaker_state {
    FW_BREAKER_CLOSED = 0,
    FW_BREAKER_OPEN = 1,
    FW_BREAKER_HALF_OPEN = 2
} fw_breaker_state;

typedef struct fw_breaker_config {
    uint32_t window_ms;   /* sliding window length */
    int min_requests;     /* outcomes in the window before the breaker may open */
    int failure_pct;      /* 1..100 */
    uint32_t cooldown_ms; /* open -> half-open */
    int probes;           /* successful probes needed to close */
} fw_breaker_config;

typedef struct fw_breaker {
    fw_breaker_config cfg;
    fw_breaker_state state;
    uint64_t opened_at;          /* when it last opened */
    int probes_admitted;         /* half-open: probes handed out and not cancelled */
    int probes_ok;               /* half-open: probes that succeeded */
    uint64_t slice_ms;           /* window_ms / FW_BREAKER_SLOTS, at least 1 */
    struct {
        uint64_t epoch;          /* which slice of time this slot counts (now / slice_ms) */
        uint32_t requests, failures;
    } slot[FW_BREAKER_SLOTS];
    uint64_t transitions;        /* for INFO */
    uint64_t opens;
    uint64_t rejected;           /* requests refused while open or half-open */
} fw_breaker;

typedef enum fw_breaker_verdict {
    FW_BREAKER_ADMIT = 0,  /* a normal request */
    FW_BREAKER_PROBE = 1,  /* admitted as a half-open probe: report its outcome with probe=1 */
    FW_BREAKER_REJECT = 2  /* refuse; *retry_after_ms says when to come back */
} fw_breaker_verdict;

void fw_breaker_init(fw_breaker *b, const fw_breaker_config *cfg);

/* Ask to start a request at time now. On REJECT, *retry_after_ms is set. *changed is set to
 * 1 when this call moved the state (open -> half-open), so the caller can log it. */
fw_breaker_verdict fw_breaker_admit(fw_breaker *b, uint64_t now, uint32_t *retry_after_ms,
                                    int *changed);

/* The cheap question asked before a request's body is even copied: 1 if the breaker is open
 * and still cooling down, so the request is refused (and counted) without being admitted;
 * *retry_after_ms is then set. 0 otherwise (then ask fw_breaker_admit). */
int fw_breaker_fail_fast(fw_breaker *b, uint64_t now, uint32_t *retry_after_ms);

/* Report an outcome. probe: the verdict of the admission was PROBE. Returns 1 when the state
 * changed (the caller logs the transition and reads b->state). */
int fw_breaker_record(fw_breaker *b, uint64_t now, int failure, int probe);

/* A probe that was admitted but will never report (refused later, dropped, expired). */
void fw_breaker_cancel_probe(fw_breaker *b);

/* Outcomes in the current window, for INFO. */
void fw_breaker_window(const fw_breaker *b, uint64_t now, uint32_t *requests, uint32_t *failures);

const char *fw_breaker_state_name(fw_breaker_state s);

#endif
