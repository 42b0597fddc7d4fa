/*
 * hist.h — a log-linear latency histogram: fixed memory, O(1) record, quantiles within 1/16
 * (6.25 %) of the true value. Used for the queue-wait and run-time percentiles in INFO and
 * /metrics.
 *
 * Why log-linear: latencies here span microseconds (a BUSY answer) to seconds (an EMBED on a
 * loaded box). Equal-width buckets would need millions of them; pure powers of two are too
 * coarse for a p99 anyone can act on. 16 linear sub-buckets per power of two is the usual
 * compromise (HdrHistogram with 4 significant bits).
 *
 * Not thread-safe: owned and touched by the loop thread only.
 */
#ifndef FW_HIST_H
#define FW_HIST_H

#include <stdint.h>

#define FW_HIST_SUB_BITS 4
#define FW_HIST_SUB (1u << FW_HIST_SUB_BITS)   /* linear sub-buckets per power of two */
#define FW_HIST_POW 40                         /* values up to 2^40 us (~12 days) */
#define FW_HIST_BUCKETS (FW_HIST_SUB * (FW_HIST_POW - FW_HIST_SUB_BITS + 1))

typedef struct fw_hist {
    uint64_t count;
    uint64_t sum;      /* of recorded values, saturating */
    uint64_t max;
    uint64_t bucket[FW_HIST_BUCKETS];
} fw_hist;

void fw_hist_reset(fw_hist *h);
/* Record one value (microseconds by convention; the unit is the caller's). */
void fw_hist_record(fw_hist *h, uint64_t v);
/* The value at quantile q in [0, 1]: the upper edge of the bucket holding it, capped at the
 * largest value recorded. 0 when empty. */
uint64_t fw_hist_quantile(const fw_hist *h, double q);

#endif
