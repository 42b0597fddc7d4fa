/*
 * sched.c — the compute scheduler (see sched.h for the guarantees).
 *
 * Data structures, all owned by the loop thread:
 *   - one FIFO (doubly linked) per priority for waiting jobs, each with a hard cap;
 *   - a list of running jobs (needed to orphan them when their connection closes);
 *   - a binary min-heap of every waiting or running job that has a deadline, and ONE uv_timer
 *     armed for the earliest of them: with thousands of jobs a timer per job would be
 *     thousands of timer-heap operations per second for nothing;
 *   - a stack of free worker slots: a job takes a slot at dispatch and gives it back when its
 *     worker returns, even if the job was answered long before (a timed-out job's worker is
 *     still busy, and starting another job on top would break the `workers` cap).
 *
 * Dispatch order: high, then normal, then low, with an anti-starvation rule: every time a
 * dispatch passes over a priority that has waiting jobs, that priority's skip count goes up;
 * when it reaches `starvation_limit` (default 8), the oldest job of that priority goes next.
 * Under a sustained backlog of high work, low work therefore still gets at least one dispatch
 * in starvation_limit + 1.
 *
 * Shedding: each queue is bounded; a job that finds its queue full is answered BUSY. Low
 * priority is shed first: a low job is refused as soon as the normal or the high queue is
 * half full (the box is falling behind, and low work would only lengthen everybody's wait),
 * and always in degraded mode. A queued job is never evicted to make room: it was promised a
 * place, and answering it BUSY after it waited would waste the client's time twice.
 * A byte budget over all waiting bodies bounds memory (a 16 MiB JPEG per slot adds up).
 *
 * Deadlines: a job whose estimated completion (jobs ahead, `workers` at a time, at the op's
 * recent run time) is past its deadline is answered BUSY at admission; a waiting job whose
 * deadline passes is answered DEADLINE_EXCEEDED by the timer and never runs, and so is one
 * that reaches a worker with less time left than the op's recent run time. A running job
 * answered at its deadline counts as a breaker failure only if it ran for half its budget.
 *
 * Requests the scheduler does not queue: "direct" ones (gallery writes, GALLERY_INFO) get the
 * same admission minus the queue checks (fw_sched_admit_direct), and a job whose op has a
 * handover hook passes its answer to the op once its worker returned OK (ENROLL from a JPEG:
 * the gallery write comes after the embedding). Either way the op reports the outcome to the
 * breaker later, so a half-open probe stays a probe until its real result is known.
 *
 * Owned jobs (fw_job_owner in sched.h) are camera-stream analyses: admitted, queued, timed
 * and counted like requests, but the owner is told the outcome instead of a connection, and
 * it picks what the job works on when a worker takes it (start), so the stream analyses the
 * newest frame it has at that moment. A stream keeps at most one job waiting or running;
 * fairness across streams is then the FIFO order within a priority (docs/scheduling.md).
 */
#include "server/sched.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/log.h"

#define HEAP_NONE SIZE_MAX

typedef struct fw_queue {
    fw_job *head, *tail;
    uint32_t len;
} fw_queue;

struct fw_sched {
    uv_loop_t *loop;
    fw_sched_config cfg;
    const fw_op *ops;
    int nops;
    fw_op_stats *stats;       /* [nops] */
    fw_class_info *classes;   /* [nclasses] */
    int nclasses;

    fw_queue queue[FW_PRIO_COUNT];
    int skips[FW_PRIO_COUNT]; /* anti-starvation: dispatches that passed over this priority */
    fw_queue running_list;
    int running;
    uint64_t queued_bytes;
    int degraded;

    fw_slot *slots;           /* [workers] */
    int *free_slots;          /* stack of indices into slots */
    int nfree;

    fw_job **heap;            /* deadline min-heap */
    size_t heap_len, heap_cap;
    uv_timer_t deadline_timer;
    uint64_t armed_for;       /* deadline the timer is armed for, 0 = stopped */

    /* drain / stop */
    int draining;
    int grace_over;
    uv_timer_t drain_timer;
    void (*on_drained)(void *);
    void *drained_arg;
    int stopping;
    int handles_open;
    void (*on_stopped)(void *);
    void *stopped_arg;
};

/* ---- jobs ---------------------------------------------------------------------------------- */

fw_job *fw_job_new(size_t body_len)
{
    if (body_len > SIZE_MAX - sizeof(fw_job))
        return NULL;
    fw_job *j = malloc(sizeof *j + body_len);
    if (!j)
        return NULL;
    memset(j, 0, sizeof *j);
    j->body = (uint8_t *)(j + 1);
    j->body_len = body_len;
    j->heap_i = HEAP_NONE;
    return j;
}

void fw_job_free(fw_job *j)
{
    if (!j)
        return;
    free(j->out.body);
    free(j);
}

/* ---- queues -------------------------------------------------------------------------------- */

static void q_push(fw_queue *q, fw_job *j)
{
    j->next = NULL;
    j->prev = q->tail;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    q->len++;
}

static void q_remove(fw_queue *q, fw_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        q->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        q->tail = j->prev;
    j->prev = j->next = NULL;
    q->len--;
}

/* ---- deadline heap ------------------------------------------------------------------------- */

static void heap_swap(fw_sched *s, size_t a, size_t b)
{
    fw_job *t = s->heap[a];
    s->heap[a] = s->heap[b];
    s->heap[b] = t;
    s->heap[a]->heap_i = a;
    s->heap[b]->heap_i = b;
}

static void heap_up(fw_sched *s, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p]->deadline <= s->heap[i]->deadline)
            break;
        heap_swap(s, p, i);
        i = p;
    }
}

static void heap_down(fw_sched *s, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->heap_len && s->heap[l]->deadline < s->heap[m]->deadline)
            m = l;
        if (r < s->heap_len && s->heap[r]->deadline < s->heap[m]->deadline)
            m = r;
        if (m == i)
            return;
        heap_swap(s, i, m);
        i = m;
    }
}

static int heap_push(fw_sched *s, fw_job *j)
{
    if (s->heap_len == s->heap_cap) {
        size_t ncap = s->heap_cap ? s->heap_cap * 2 : 64;
        fw_job **n = realloc(s->heap, ncap * sizeof *n);
        if (!n)
            return -1;
        s->heap = n;
        s->heap_cap = ncap;
    }
    j->heap_i = s->heap_len;
    s->heap[s->heap_len++] = j;
    heap_up(s, j->heap_i);
    return 0;
}

static void heap_remove(fw_sched *s, fw_job *j)
{
    size_t i = j->heap_i;
    if (i == HEAP_NONE)
        return;
    j->heap_i = HEAP_NONE;
    s->heap_len--;
    if (i == s->heap_len)
        return;
    s->heap[i] = s->heap[s->heap_len];
    s->heap[i]->heap_i = i;
    heap_down(s, i);
    heap_up(s, i);
}

static void deadline_timer_cb(uv_timer_t *t);

/* Keep the one timer armed for the earliest deadline. */
static void deadline_rearm(fw_sched *s)
{
    if (s->stopping)
        return;
    if (s->heap_len == 0) {
        if (s->armed_for) {
            uv_timer_stop(&s->deadline_timer);
            s->armed_for = 0;
        }
        return;
    }
    uint64_t d = s->heap[0]->deadline;
    if (d == s->armed_for)
        return;
    uint64_t now = uv_now(s->loop);
    uv_timer_start(&s->deadline_timer, deadline_timer_cb, d > now ? d - now : 0, 0);
    s->armed_for = d;
}

/* ---- answering ----------------------------------------------------------------------------- */

static void put_retry(uint8_t extra[4], uint32_t retry_after_ms)
{
    fw_be32(extra, retry_after_ms);
}

/* Send the one response of a job (if its connection is still there) and count it. */
static void job_answer(fw_sched *s, fw_job *j, uint16_t status, const void *body, size_t len,
                       const char *msg, int has_retry, uint32_t retry_after_ms)
{
    j->answered = 1;
    if (j->owner) {
        j->owner_status = status; /* told to the owner when the job is let go (job_release) */
        return;
    }
    if (!j->conn)
        return;
    if (status == FW_STATUS_OK) {
        fw_conn_reply(j->conn, &j->hdr, status, body, len);
    } else {
        uint8_t extra[4];
        put_retry(extra, retry_after_ms);
        fw_conn_reply_error(j->conn, &j->hdr, status, msg, has_retry ? extra : NULL,
                            has_retry ? sizeof extra : 0);
    }
    if (status < FW_STATUS_COUNT)
        s->stats[j->op_index].responses[status]++;
    fw_conn_job_finished(j->conn);
    j->conn = NULL;
}

/* The scheduler lets go of a job: an owned one's owner hears how it ended, then it is freed. */
static void job_release(fw_sched *s, fw_job *j)
{
    if (j->owner && !s->stopping)
        j->owner->finish(j, j->owner_status);
    fw_job_free(j);
}

void fw_sched_answer_now(fw_sched *s, fw_conn *c, const fw_header *h, int op_index,
                         uint16_t status, const char *msg, int has_retry, uint32_t retry_after_ms)
{
    uint8_t extra[4];
    put_retry(extra, retry_after_ms);
    fw_conn_reply_error(c, h, status, msg, has_retry ? extra : NULL, has_retry ? sizeof extra : 0);
    if (op_index >= 0 && op_index < s->nops && status < FW_STATUS_COUNT)
        s->stats[op_index].responses[status]++;
}

static void log_transition(fw_sched *s, int cls, fw_breaker_state from)
{
    fw_breaker *b = &s->classes[cls].breaker;
    fw_log_emit(s->cfg.log, b->state == FW_BREAKER_OPEN ? FW_LOG_WARN : FW_LOG_INFO,
                "circuit breaker transition", "class=%s from=%s to=%s opens=%llu",
                s->classes[cls].name, fw_breaker_state_name(from), fw_breaker_state_name(b->state),
                (unsigned long long)b->opens);
}

static void breaker_record(fw_sched *s, fw_job *j, int failure)
{
    fw_breaker *b = &s->classes[j->op->cls].breaker;
    fw_breaker_state from = b->state;
    if (fw_breaker_record(b, uv_now(s->loop), failure, j->probe))
        log_transition(s, j->op->cls, from);
    j->probe = 0;
}

static void breaker_forget(fw_sched *s, fw_job *j)
{
    if (j->probe)
        fw_breaker_cancel_probe(&s->classes[j->op->cls].breaker);
    j->probe = 0;
}

/* A waiting job leaves its queue for good (dispatch, expiry, drop). */
static void unqueue(fw_sched *s, fw_job *j)
{
    int prio = j->hdr.priority;
    q_remove(&s->queue[prio], j);
    s->stats[j->op_index].waiting[prio]--;
    s->queued_bytes -= j->body_len;
}

/* ---- estimates ----------------------------------------------------------------------------- */

/* Jobs that run before a new job of priority prio under strict priority order. */
static uint64_t jobs_ahead(const fw_sched *s, int prio)
{
    uint64_t ahead = s->queue[FW_PRIO_HIGH].len;
    if (prio != FW_PRIO_HIGH)
        ahead += s->queue[FW_PRIO_NORMAL].len;
    if (prio == FW_PRIO_LOW)
        ahead += s->queue[FW_PRIO_LOW].len;
    return ahead;
}

/* The op's recent worker time in ms (rounded up), or `none` before any job of it finished.
 * A moving average rather than the all-time median: under overload the run time itself grows
 * (the workers share the cores with everything else), and estimates from the quiet past
 * admit work that then misses its deadline. */
static uint64_t recent_run_ms(const fw_sched *s, int op_index, uint64_t none)
{
    const fw_op_stats *st = &s->stats[op_index];
    return st->run_us.count ? (st->run_ewma_us + 999) / 1000 : none;
}

/* When a new job of priority prio would finish: the jobs ahead of it and itself, `workers` at
 * a time, plus a whole run for the jobs running now when no worker is free, all at the op's
 * recent run time. It assumes the jobs ahead cost what this op costs.
 * A whole run, not the half a busy worker has left on average: under overload admission fills
 * the queue exactly up to where this estimate meets the deadline, so with an average the last
 * jobs admitted missed their deadline about half the time (perf/bench_overload.sh, TEST_SLEEP
 * 20 ms at 3x capacity with 200 ms deadlines: 22 of ~535 admitted answered DEADLINE_EXCEEDED;
 * with the worst case 0, goodput unchanged). It costs one queued job per two workers. */
/* Runs of the op a new job of priority prio waits for and makes, as described above. */
static uint64_t rounds_until_done(const fw_sched *s, int prio)
{
    uint64_t w = (uint64_t)s->cfg.workers;
    return (jobs_ahead(s, prio) + w) / w + (s->nfree == 0 ? 1 : 0);
}

static uint64_t completion_estimate_ms(const fw_sched *s, int prio, uint64_t per_job)
{
    return rounds_until_done(s, prio) * per_job;
}

/* What admission adds to that estimate for the run times' spread: two mean deviations per
 * square root of the rounds ahead (the rounds' errors add up like independent ones). Under
 * overload admission keeps taking jobs exactly while the estimate is just under the deadline,
 * so the marginal job sits on the estimate's edge: with the plain average, EMBED at 3x capacity
 * (run time 37-53 ms, wandering) had 2-5% of its admitted jobs expire in the queue
 * (docs/performance.md). A job that would have expired gets BUSY at once instead; the queue is
 * a few percent shorter and still never runs dry. A steady run time (TEST_SLEEP) adds ~0. */
static uint64_t admission_margin_ms(const fw_sched *s, int prio, int op_index)
{
    const fw_op_stats *st = &s->stats[op_index];
    double rounds = (double)rounds_until_done(s, prio);
    return (uint64_t)(2.0 * (double)st->run_dev_us * sqrt(rounds) / 1000.0 + 0.5);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static void work_cb(uv_work_t *w)
{
    fw_job *j = (fw_job *)((char *)w - offsetof(fw_job, work));
    j->op->work(j);
}

static void maybe_drained(fw_sched *s);
static void maybe_stopped(fw_sched *s);
static void dispatch(fw_sched *s);

/* A running job's deadline passed: answer DEADLINE_EXCEEDED (its result, if any comes, is
 * discarded). The breaker hears of it only if the job ran for at least half its budget: one
 * that spent its budget queueing and then overran says the server is loaded, which admission
 * control answers, not that the stage is broken. */
static void expire_running(fw_sched *s, fw_job *j)
{
    s->stats[j->op_index].timed_out++;
    uint64_t ran_ms = (uv_hrtime() / 1000 - j->t_started_us) / 1000;
    if (ran_ms * 2 >= j->budget_ms)
        breaker_record(s, j, 1);
    else
        breaker_forget(s, j);
    char msg[96];
    snprintf(msg, sizeof msg, "deadline exceeded while running (budget %u ms)", j->budget_ms);
    job_answer(s, j, FW_STATUS_DEADLINE_EXCEEDED, NULL, 0, msg, 0, 0);
}

static void after_work_cb(uv_work_t *w, int status)
{
    fw_job *j = (fw_job *)((char *)w - offsetof(fw_job, work));
    fw_sched *s = j->sched;
    fw_op_stats *st = &s->stats[j->op_index];

    q_remove(&s->running_list, j);
    s->running--;
    st->running--;
    s->free_slots[s->nfree++] = j->slot->index;
    j->slot = NULL;
    uint64_t ran_us = uv_hrtime() / 1000 - j->t_started_us;
    /* EWMA with weight 1/8, as TCP's smoothed RTT: recent enough to follow load changes
     * within a few jobs, smooth enough that one odd picture does not swing admission */
    if (st->run_us.count == 0) {
        st->run_ewma_us = ran_us;
    } else {
        /* mean deviation with weight 1/4, as TCP's RTTVAR beside SRTT (admission_margin_ms) */
        uint64_t err = ran_us >= st->run_ewma_us ? ran_us - st->run_ewma_us : st->run_ewma_us - ran_us;
        if (err >= st->run_dev_us)
            st->run_dev_us += (err - st->run_dev_us) / 4;
        else
            st->run_dev_us -= (st->run_dev_us - err) / 4;
        if (ran_us >= st->run_ewma_us)
            st->run_ewma_us += (ran_us - st->run_ewma_us) / 8;
        else
            st->run_ewma_us -= (st->run_ewma_us - ran_us) / 8;
    }
    fw_hist_record(&st->run_us, ran_us);
    st->yields += j->out.yields;
    heap_remove(s, j);

    /* The deadline timer only fires when the loop gets to it; a loop that was busy may see the
     * worker's completion first. A result that arrives after the deadline is late whichever
     * fired first, so it is answered as the timer would have: never an OK past the deadline. */
    if (!j->answered && !s->stopping && j->deadline) {
        uv_update_time(s->loop);
        if (uv_now(s->loop) >= j->deadline)
            expire_running(s, j);
    }
    if (!j->answered && !s->stopping) {
        if (status != 0) {
            /* uv_cancel is never called on compute work; treat it as an internal error */
            j->out.status = FW_STATUS_INTERNAL;
            snprintf(j->out.msg, sizeof j->out.msg, "worker cancelled");
        }
        if (status == 0 && j->out.status == FW_STATUS_OK && j->op->handover) {
            /* the op answers later (and reports the breaker outcome with j->probe) */
            j->op->handover(j);
            j->answered = 1;
            j->conn = NULL;
            j->probe = 0;
        } else {
            breaker_record(s, j, j->out.status == FW_STATUS_INTERNAL);
            job_answer(s, j, j->out.status, j->out.body, j->out.len, j->out.msg, 0, 0);
        }
    }
    job_release(s, j);

    if (s->stopping) {
        maybe_stopped(s);
        return;
    }
    deadline_rearm(s);
    dispatch(s);
    maybe_drained(s);
}

/* Next priority to dispatch from, per the anti-starvation rule in the header comment. */
static int pick_priority(fw_sched *s)
{
    static const int order[FW_PRIO_COUNT] = { FW_PRIO_HIGH, FW_PRIO_NORMAL, FW_PRIO_LOW };
    int pick = -1;
    /* a starved priority first, lowest first (it has been passed over the longest) */
    for (int k = FW_PRIO_COUNT - 1; k >= 1; k--) {
        int p = order[k];
        if (s->queue[p].len && s->skips[p] >= s->cfg.starvation_limit) {
            pick = p;
            break;
        }
    }
    if (pick < 0) {
        for (int k = 0; k < FW_PRIO_COUNT; k++) {
            if (s->queue[order[k]].len) {
                pick = order[k];
                break;
            }
        }
    }
    if (pick < 0)
        return -1;
    for (int k = 0; k < FW_PRIO_COUNT; k++) {
        int p = order[k];
        if (p == pick)
            s->skips[p] = 0;
        else if (s->queue[p].len)
            s->skips[p]++;
    }
    return pick;
}

static void expire_waiting(fw_sched *s, fw_job *j, const char *msg)
{
    unqueue(s, j);
    heap_remove(s, j);
    breaker_forget(s, j);
    s->stats[j->op_index].expired_in_queue++;
    job_answer(s, j, FW_STATUS_DEADLINE_EXCEEDED, NULL, 0, msg, 0, 0);
    job_release(s, j);
}

/* Never start what nobody waits for any more, nor what can no longer finish in time: a job
 * whose budget would have covered the op's recent run time, but whose remaining budget no
 * longer does, would most likely be answered DEADLINE_EXCEEDED anyway after holding a worker
 * that a job with time left could have used. (A job whose whole budget is below the run time
 * is still tried: the client asked for it, and its picture may be a small one.) */
static const char *too_late(const fw_sched *s, const fw_job *j, uint64_t now)
{
    if (!j->deadline)
        return NULL;
    if (j->deadline <= now)
        return "deadline exceeded while queued";
    uint64_t run = recent_run_ms(s, j->op_index, 0);
    if (run && j->budget_ms >= run && j->deadline - now < run)
        return "deadline exceeded while queued (too little time left to run)";
    return NULL;
}

static void start_job(fw_sched *s, fw_job *j)
{
    fw_op_stats *st = &s->stats[j->op_index];
    int idx = s->free_slots[--s->nfree];
    j->slot = &s->slots[idx];
    j->state = FW_JOB_RUNNING;
    j->t_started_us = uv_hrtime() / 1000;
    fw_hist_record(&st->wait_us, j->t_started_us - j->t_queued_us);
    q_push(&s->running_list, j);
    s->running++;
    st->running++;
    int rc = uv_queue_work(s->loop, &j->work, work_cb, after_work_cb);
    if (rc != 0) {
        /* Only fails on bad arguments; never leave the request unanswered. */
        q_remove(&s->running_list, j);
        s->running--;
        st->running--;
        s->free_slots[s->nfree++] = idx;
        heap_remove(s, j);
        breaker_forget(s, j);
        job_answer(s, j, FW_STATUS_INTERNAL, NULL, 0, "cannot queue work", 0, 0);
        job_release(s, j);
    }
}

static void dispatch(fw_sched *s)
{
    if (s->stopping || s->grace_over)
        return;
    uint64_t now = uv_now(s->loop);
    while (s->nfree > 0) {
        int p = pick_priority(s);
        if (p < 0)
            break;
        fw_job *j = s->queue[p].head;
        const char *late = too_late(s, j, now);
        if (late) {
            expire_waiting(s, j, late);
            continue;
        }
        unqueue(s, j);
        if (j->owner && j->owner->start(j) != 0) {
            /* the owner has nothing to run after all (see fw_job_owner) */
            heap_remove(s, j);
            breaker_forget(s, j);
            fw_job_free(j);
            continue;
        }
        start_job(s, j);
    }
    deadline_rearm(s);
}

static void deadline_timer_cb(uv_timer_t *t)
{
    fw_sched *s = t->data;
    uint64_t now = uv_now(s->loop);
    s->armed_for = 0;
    while (s->heap_len && s->heap[0]->deadline <= now) {
        fw_job *j = s->heap[0];
        if (j->state == FW_JOB_WAITING) {
            expire_waiting(s, j, "deadline exceeded while queued");
        } else {
            heap_remove(s, j);
            expire_running(s, j);
            /* the worker still owns its slot; after_work_cb frees the job */
        }
    }
    deadline_rearm(s);
    maybe_drained(s);
}

/* ---- admission ----------------------------------------------------------------------------- */

/* How long until a refused client should try again: when a job sent now would complete
 * (100 ms per job before anything ran). Never 0, at most a minute. */
static uint32_t retry_estimate(const fw_sched *s, int prio, int op_index)
{
    uint64_t est = completion_estimate_ms(s, prio, recent_run_ms(s, op_index, 100));
    return est < 1 ? 1 : est > 60000 ? 60000 : (uint32_t)est;
}

/* Why a job cannot be queued now (NULL: it can); msg is scratch space for the message. Pure:
 * no state changes, so fw_sched_precheck() and fw_sched_submit() agree within one loop
 * iteration. */
static const char *refusal(const fw_sched *s, int prio, int op_index, size_t body_len,
                           uint32_t budget_ms, char *msg, size_t msglen)
{
    const fw_queue *q = &s->queue[prio];
    if (s->degraded && prio == FW_PRIO_LOW)
        return "degraded mode: low priority refused";
    if (q->len >= (uint32_t)s->cfg.queue_cap[prio])
        return prio == FW_PRIO_HIGH ? "high priority queue full"
             : prio == FW_PRIO_LOW ? "low priority queue full" : "normal priority queue full";
    if (prio == FW_PRIO_LOW &&
        (s->queue[FW_PRIO_NORMAL].len * 2 >= (uint32_t)s->cfg.queue_cap[FW_PRIO_NORMAL] ||
         s->queue[FW_PRIO_HIGH].len * 2 >= (uint32_t)s->cfg.queue_cap[FW_PRIO_HIGH]) &&
        (s->queue[FW_PRIO_NORMAL].len || s->queue[FW_PRIO_HIGH].len))
        return "overloaded: shedding low priority";
    /* the byte budget bounds memory held by waiting bodies; a job that starts at once
     * (a worker is free) never waits, so it does not count against it */
    if (s->queued_bytes + body_len > s->cfg.queue_max_bytes && s->nfree == 0)
        return "queued request bytes at limit";
    /* A job that would not finish before its deadline is refused now rather than left to
     * expire in the queue: the client learns it at once and can go elsewhere, and the queue
     * does not fill with work nobody will wait for. With nobody ahead a job is always tried. */
    if (budget_ms && jobs_ahead(s, prio) > 0) {
        uint64_t done = completion_estimate_ms(s, prio, recent_run_ms(s, op_index, 0)) +
                        admission_margin_ms(s, prio, op_index);
        if (done > budget_ms) {
            snprintf(msg, msglen, "expected completion in %llu ms exceeds the %u ms deadline",
                     (unsigned long long)done, budget_ms);
            return msg;
        }
    }
    return NULL;
}

static int clamp_prio(uint8_t p)
{
    return p < FW_PRIO_COUNT ? p : FW_PRIO_NORMAL;
}

int fw_sched_precheck(fw_sched *s, fw_conn *c, const fw_header *h, int op_index, uint32_t budget_ms)
{
    const fw_op *op = &s->ops[op_index];
    char msg[128];
    if (s->draining || s->stopping) {
        fw_sched_answer_now(s, c, h, op_index, FW_STATUS_SHUTTING_DOWN, "shutting down", 0, 0);
        return -1;
    }
    int prio = clamp_prio(h->priority);
    const char *why = refusal(s, prio, op_index, h->body_len, budget_ms, msg, sizeof msg);
    if (why) {
        fw_sched_answer_now(s, c, h, op_index, FW_STATUS_BUSY, why, 1, retry_estimate(s, prio, op_index));
        return -1;
    }
    /* an open breaker refuses before the body is even copied */
    uint32_t retry;
    if (fw_breaker_fail_fast(&s->classes[op->cls].breaker, uv_now(s->loop), &retry)) {
        snprintf(msg, sizeof msg, "circuit breaker open for %s operations", s->classes[op->cls].name);
        fw_sched_answer_now(s, c, h, op_index, FW_STATUS_UNAVAILABLE, msg, 1, retry);
        return -1;
    }
    return 0;
}

/* A job refused at submission: an ordinary one is answered on c, an owned one finishes. */
static void refuse(fw_sched *s, fw_conn *c, fw_job *j, uint16_t status, const char *msg,
                   int has_retry, uint32_t retry_after_ms)
{
    if (j->owner) {
        j->owner_status = status;
        job_release(s, j);
        return;
    }
    fw_sched_answer_now(s, c, &j->hdr, j->op_index, status, msg, has_retry, retry_after_ms);
    fw_job_free(j);
}

void fw_sched_submit(fw_sched *s, fw_conn *c, fw_job *j)
{
    int prio = clamp_prio(j->hdr.priority);
    fw_queue *q = &s->queue[prio];
    fw_op_stats *st = &s->stats[j->op_index];
    char msg[128];
    const char *why;

    j->hdr.priority = (uint8_t)prio;
    j->sched = s;

    if (s->draining || s->stopping) {
        refuse(s, c, j, FW_STATUS_SHUTTING_DOWN, "shutting down", 0, 0);
        return;
    }
    why = refusal(s, prio, j->op_index, j->body_len, j->budget_ms, msg, sizeof msg);
    if (why) {
        refuse(s, c, j, FW_STATUS_BUSY, why, 1, retry_estimate(s, prio, j->op_index));
        return;
    }

    uint32_t retry = 0;
    int changed = 0;
    fw_breaker *b = &s->classes[j->op->cls].breaker;
    fw_breaker_state from = b->state;
    fw_breaker_verdict v = fw_breaker_admit(b, uv_now(s->loop), &retry, &changed);
    if (changed)
        log_transition(s, j->op->cls, from);
    if (v == FW_BREAKER_REJECT) {
        snprintf(msg, sizeof msg, "circuit breaker %s for %s operations",
                 fw_breaker_state_name(b->state), s->classes[j->op->cls].name);
        refuse(s, c, j, FW_STATUS_UNAVAILABLE, msg, 1, retry);
        return;
    }
    j->probe = v == FW_BREAKER_PROBE;

    uint64_t now = uv_now(s->loop);
    j->deadline = j->budget_ms ? now + j->budget_ms : 0;
    if (j->deadline && heap_push(s, j) != 0) {
        breaker_forget(s, j);
        refuse(s, c, j, FW_STATUS_INTERNAL, "out of memory", 0, 0);
        return;
    }
    j->conn = j->owner ? NULL : c;
    j->state = FW_JOB_WAITING;
    j->t_queued_us = uv_hrtime() / 1000;
    q_push(q, j);
    st->waiting[prio]++;
    s->queued_bytes += j->body_len;
    if (!j->owner)
        fw_conn_job_started(c);
    dispatch(s);
}

int fw_sched_cancel(fw_sched *s, fw_job *j)
{
    if (j->state != FW_JOB_WAITING)
        return -1;
    unqueue(s, j);
    heap_remove(s, j);
    breaker_forget(s, j);
    fw_job_free(j);
    maybe_drained(s);
    return 0;
}

/* ---- direct requests ----------------------------------------------------------------------- */

int fw_sched_admit_direct(fw_sched *s, fw_conn *c, const fw_header *h, int op_index, int *probe)
{
    const fw_op *op = &s->ops[op_index];
    char msg[128];
    *probe = 0;
    if (s->draining || s->stopping) {
        fw_sched_answer_now(s, c, h, op_index, FW_STATUS_SHUTTING_DOWN, "shutting down", 0, 0);
        return -1;
    }
    if (s->degraded && clamp_prio(h->priority) == FW_PRIO_LOW) {
        fw_sched_answer_now(s, c, h, op_index, FW_STATUS_BUSY, "degraded mode: low priority refused",
                            1, retry_estimate(s, FW_PRIO_LOW, op_index));
        return -1;
    }
    uint32_t retry = 0;
    int changed = 0;
    fw_breaker *b = &s->classes[op->cls].breaker;
    fw_breaker_state from = b->state;
    fw_breaker_verdict v = fw_breaker_admit(b, uv_now(s->loop), &retry, &changed);
    if (changed)
        log_transition(s, op->cls, from);
    if (v == FW_BREAKER_REJECT) {
        snprintf(msg, sizeof msg, "circuit breaker %s for %s operations", fw_breaker_state_name(b->state),
                 s->classes[op->cls].name);
        fw_sched_answer_now(s, c, h, op_index, FW_STATUS_UNAVAILABLE, msg, 1, retry);
        return -1;
    }
    *probe = v == FW_BREAKER_PROBE;
    return 0;
}

void fw_sched_answer_direct(fw_sched *s, fw_conn *c, const fw_header *h, int op_index,
                            uint16_t status, const void *body, size_t len, const char *msg,
                            int has_retry, uint32_t retry_after_ms)
{
    if (status != FW_STATUS_OK) {
        fw_sched_answer_now(s, c, h, op_index, status, msg, has_retry, retry_after_ms);
        return;
    }
    fw_conn_reply(c, h, status, body, len);
    if (op_index >= 0 && op_index < s->nops)
        s->stats[op_index].responses[status]++;
}

void fw_sched_record_outcome(fw_sched *s, int op_index, int failure, int probe)
{
    int cls = s->ops[op_index].cls;
    fw_breaker *b = &s->classes[cls].breaker;
    fw_breaker_state from = b->state;
    if (fw_breaker_record(b, uv_now(s->loop), failure, probe))
        log_transition(s, cls, from);
}

void fw_sched_cancel_outcome(fw_sched *s, int op_index, int probe)
{
    if (probe)
        fw_breaker_cancel_probe(&s->classes[s->ops[op_index].cls].breaker);
}

/* ---- connections, modes -------------------------------------------------------------------- */

void fw_sched_conn_closed(fw_sched *s, fw_conn *c)
{
    for (int p = 0; p < FW_PRIO_COUNT; p++) {
        fw_job *j = s->queue[p].head;
        while (j) {
            fw_job *next = j->next;
            if (j->conn == c) {
                unqueue(s, j);
                heap_remove(s, j);
                breaker_forget(s, j);
                s->stats[j->op_index].dropped++;
                fw_job_free(j);
            }
            j = next;
        }
    }
    for (fw_job *j = s->running_list.head; j; j = j->next) {
        if (j->conn == c) {
            j->conn = NULL; /* the worker's result will be discarded */
            s->stats[j->op_index].orphaned++;
        }
    }
    deadline_rearm(s);
    maybe_drained(s);
}

void fw_sched_set_degraded(fw_sched *s, int on)
{
    s->degraded = on ? 1 : 0;
}

/* ---- drain and stop ------------------------------------------------------------------------ */

static void maybe_drained(fw_sched *s)
{
    if (!s->draining || !s->on_drained || s->running > 0)
        return;
    for (int p = 0; p < FW_PRIO_COUNT; p++)
        if (s->queue[p].len)
            return;
    void (*cb)(void *) = s->on_drained;
    s->on_drained = NULL; /* once */
    uv_timer_stop(&s->drain_timer);
    cb(s->drained_arg);
}

static void drain_timer_cb(uv_timer_t *t)
{
    fw_sched *s = t->data;
    int idle = s->running == 0;
    for (int p = 0; p < FW_PRIO_COUNT; p++)
        idle = idle && s->queue[p].len == 0;
    if (!idle) {
        /* grace is over: answer everything still pending; workers finish in the background */
        s->grace_over = 1;
        for (int p = 0; p < FW_PRIO_COUNT; p++) {
            while (s->queue[p].head) {
                fw_job *j = s->queue[p].head;
                unqueue(s, j);
                heap_remove(s, j);
                breaker_forget(s, j);
                job_answer(s, j, FW_STATUS_SHUTTING_DOWN, NULL, 0, "shutting down", 0, 0);
                job_release(s, j);
            }
        }
        for (fw_job *j = s->running_list.head; j; j = j->next) {
            if (!j->answered) {
                heap_remove(s, j);
                breaker_forget(s, j);
                job_answer(s, j, FW_STATUS_SHUTTING_DOWN, NULL, 0, "shutting down", 0, 0);
            }
        }
        deadline_rearm(s);
    }
    maybe_drained(s);
}

void fw_sched_drain(fw_sched *s, uint32_t grace_ms, void (*on_drained)(void *arg), void *arg)
{
    if (s->draining || s->stopping)
        return;
    s->draining = 1;
    s->on_drained = on_drained;
    s->drained_arg = arg;
    int idle = s->running == 0;
    for (int p = 0; p < FW_PRIO_COUNT; p++)
        idle = idle && s->queue[p].len == 0;
    /* even when idle, report from the loop rather than from inside this call */
    uv_timer_start(&s->drain_timer, drain_timer_cb, idle ? 0 : grace_ms, 0);
}

static void free_sched(fw_sched *s)
{
    free(s->heap);
    free(s->slots);
    free(s->free_slots);
    free(s->stats);
    free(s->classes);
    free(s);
}

static void maybe_stopped(fw_sched *s)
{
    if (s->handles_open > 0 || s->running > 0)
        return;
    void (*cb)(void *) = s->on_stopped;
    void *arg = s->stopped_arg;
    free_sched(s);
    if (cb)
        cb(arg);
}

static void handle_closed_cb(uv_handle_t *h)
{
    fw_sched *s = h->data;
    s->handles_open--;
    maybe_stopped(s);
}

void fw_sched_stop(fw_sched *s, void (*on_stopped)(void *arg), void *arg)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    s->on_stopped = on_stopped;
    s->stopped_arg = arg;
    for (int p = 0; p < FW_PRIO_COUNT; p++) {
        while (s->queue[p].head) {
            fw_job *j = s->queue[p].head;
            unqueue(s, j);
            fw_job_free(j); /* no answer: the connections are going away too */
        }
    }
    for (fw_job *j = s->running_list.head; j; j = j->next) {
        j->conn = NULL;
        j->answered = 1;
    }
    for (size_t i = 0; i < s->heap_len; i++)
        s->heap[i]->heap_i = HEAP_NONE;
    s->heap_len = 0;
    uv_close((uv_handle_t *)&s->deadline_timer, handle_closed_cb);
    uv_close((uv_handle_t *)&s->drain_timer, handle_closed_cb);
}

/* ---- init and views ------------------------------------------------------------------------ */

int fw_sched_init(fw_sched **out, uv_loop_t *loop, const fw_sched_config *cfg,
                  const fw_op *ops, int nops, const char *const *class_names, int nclasses,
                  void *const *slot_ctx, char *err, size_t errlen)
{
    *out = NULL;
    fw_sched *s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->loop = loop;
    s->cfg = *cfg;
    if (s->cfg.workers < 1)
        s->cfg.workers = 1;
    if (s->cfg.starvation_limit < 1)
        s->cfg.starvation_limit = 1;
    s->ops = ops;
    s->nops = nops;
    s->nclasses = nclasses;
    s->stats = calloc((size_t)(nops > 0 ? nops : 1), sizeof *s->stats);
    s->classes = calloc((size_t)(nclasses > 0 ? nclasses : 1), sizeof *s->classes);
    s->slots = calloc((size_t)s->cfg.workers, sizeof *s->slots);
    s->free_slots = calloc((size_t)s->cfg.workers, sizeof *s->free_slots);
    if (!s->stats || !s->classes || !s->slots || !s->free_slots)
        goto nomem;
    for (int i = 0; i < nclasses; i++) {
        s->classes[i].name = class_names[i];
        fw_breaker_init(&s->classes[i].breaker, &cfg->breaker);
    }
    /* slot 0 on top of the stack: with one worker the same slot is reused every time */
    for (int i = 0; i < s->cfg.workers; i++) {
        s->slots[i].index = i;
        s->slots[i].ctx = slot_ctx ? slot_ctx[i] : NULL;
        s->free_slots[i] = s->cfg.workers - 1 - i;
    }
    s->nfree = s->cfg.workers;
    uv_timer_init(loop, &s->deadline_timer);
    uv_timer_init(loop, &s->drain_timer);
    s->deadline_timer.data = s;
    s->drain_timer.data = s;
    s->handles_open = 2;
    *out = s;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    if (s)
        free_sched(s);
    return -1;
}

const fw_op_stats *fw_sched_op_stats(const fw_sched *s, int op_index) { return &s->stats[op_index]; }
fw_op_stats *fw_sched_op_stats_mut(fw_sched *s, int op_index) { return &s->stats[op_index]; }
const fw_class_info *fw_sched_class(const fw_sched *s, int cls) { return &s->classes[cls]; }
int fw_sched_nclasses(const fw_sched *s) { return s->nclasses; }
uint32_t fw_sched_queue_len(const fw_sched *s, int prio) { return s->queue[prio].len; }
int fw_sched_running(const fw_sched *s) { return s->running; }
int fw_sched_workers(const fw_sched *s) { return s->cfg.workers; }
uint64_t fw_sched_queued_bytes(const fw_sched *s) { return s->queued_bytes; }
int fw_sched_degraded(const fw_sched *s) { return s->degraded; }
const fw_sched_config *fw_sched_get_config(const fw_sched *s) { return &s->cfg; }
