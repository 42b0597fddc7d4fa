/*
 * pause.h — pause points: a hook long computations call between bounded pieces of work.
 *
 * A forward pass or a decode is tens of milliseconds of uninterrupted CPU. A thread that
 * shares CPUs with latency-sensitive ones (the server's event loop) may want to give its CPU
 * away part-way through, without a timer or a signal: the engine calls fn(arg) from the
 * thread doing the work, between bands of rows, layers and stages, and fn decides (the
 * server's workers call sched_yield() when --worker-yield-us has passed since the last one;
 * docs/performance.md says why). fn must not touch the workspace doing the work, and the
 * results never depend on it. fn NULL means no pauses (the default everywhere).
 */
#ifndef FW_PAUSE_H
#define FW_PAUSE_H

typedef struct fw_pause {
    void (*fn)(void *arg);
    void *arg; /* the caller's, passed through; not owned */
} fw_pause;

static inline void fw_pause_point(const fw_pause *p)
{
    if (p && p->fn)
        p->fn(p->arg);
}

#endif
