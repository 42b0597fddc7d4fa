/*
 * fwload_pace.h — the open-loop schedule of fwload (--rate): which requests are due when.
 *
 * Request k (0-based) is due at start + k/rate: request 0 at the start itself. The pacer asks,
 * every tick, how many requests are due by now and queues the new ones stamped with their
 * intended send time. Kept apart from the loop code as pure arithmetic so that a unit test can
 * hold it to "exactly the requests whose time has come": counting one too few sends every
 * request one interval late and charges that interval to the server as latency.
 */
#ifndef FWLOAD_PACE_H
#define FWLOAD_PACE_H

#include <stdint.h>

/* Intended send time of request k, in ns after the start. ns_per_req = 1e9 / rate, > 0. */
uint64_t fwl_pace_t0(uint64_t k, double ns_per_req);

/* How many requests are due elapsed_ns after the start: the k with fwl_pace_t0(k) <=
 * elapsed_ns, i.e. always at least 1, exact against fwl_pace_t0 despite rounding. At most
 * limit when limit > 0 (-n). */
uint64_t fwl_pace_due(uint64_t elapsed_ns, double ns_per_req, uint64_t limit);

#endif
