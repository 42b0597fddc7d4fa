/*
 * fwload_pace.c — the open-loop schedule of fwload (see fwload_pace.h).
 *
 * The count is first estimated in floating point, floor(elapsed / interval) + 1, then nudged
 * by at most a step either way so that it agrees exactly with fwl_pace_t0(): a quotient that
 * rounds across an integer would otherwise queue a request a hair before its own stamp, or
 * hold one back for a whole tick.
 */
#include "fwload_pace.h"

uint64_t fwl_pace_t0(uint64_t k, double ns_per_req)
{
    return (uint64_t)((double)k * ns_per_req);
}

uint64_t fwl_pace_due(uint64_t elapsed_ns, double ns_per_req, uint64_t limit)
{
    /* m: the last request due; request 0 (t0 = 0) always is */
    uint64_t m = (uint64_t)((double)elapsed_ns / ns_per_req);
    while (m > 0 && fwl_pace_t0(m, ns_per_req) > elapsed_ns)
        m--;
    while (fwl_pace_t0(m + 1, ns_per_req) <= elapsed_ns)
        m++;
    uint64_t due = m + 1;
    return limit && due > limit ? limit : due;
}
