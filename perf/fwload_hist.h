/*
 * fwload_hist.h — a log-linear latency histogram for fwload, in the manner of HdrHistogram.
 *
 * Why not keep every sample and sort: a 5-second run at 1M rps is 5M samples (40 MB) and a
 * sort at the end; a long open-loop run grows without bound. This histogram is a fixed
 * 36 KiB array of counters, recording is a few shifts and an increment, and a percentile is
 * one walk over the counters.
 *
 * Layout: values (nanoseconds) below 2^FWH_SUB_BITS each have their own bucket; above that,
 * every power-of-two range [2^k, 2^(k+1)) is split into 2^(FWH_SUB_BITS-1) equal buckets.
 * So a bucket is never wider than 1/128 of its lowest value: a reported percentile is
 * within 0.8% of the true sample (exact below 256 ns). Values at or above FWH_MAX_VALUE
 * (~73 minutes) land in the last bucket; the exact maximum is kept separately.
 *
 * A histogram is a plain struct with no pointers: the caller owns it (heap or stack), zeroes
 * it with fwh_reset(), and may copy it with memcpy. No function allocates.
 */
#ifndef FWLOAD_HIST_H
#define FWLOAD_HIST_H

#include <stdint.h>

#define FWH_SUB_BITS 8
#define FWH_SUB_COUNT (1u << FWH_SUB_BITS)        /* 256: linear region and sub-buckets */
#define FWH_SUB_HALF (FWH_SUB_COUNT / 2)          /* 128 buckets per power of two */
#define FWH_MAX_BITS 42                            /* values tracked exactly up to 2^42 ns */
#define FWH_MAX_VALUE ((uint64_t)1 << FWH_MAX_BITS)
/* Highest magnitude: the msb of FWH_MAX_VALUE - 1 is FWH_MAX_BITS - 1. */
#define FWH_BUCKETS ((FWH_MAX_BITS - FWH_SUB_BITS + 1) * FWH_SUB_HALF + FWH_SUB_HALF)

typedef struct fwh {
    uint64_t total; /* samples recorded */
    uint64_t min;   /* exact smallest sample (UINT64_MAX when empty) */
    uint64_t max;   /* exact largest sample, even above FWH_MAX_VALUE */
    uint64_t counts[FWH_BUCKETS];
} fwh;

void fwh_reset(fwh *h);
void fwh_record(fwh *h, uint64_t value);
/* Adds every sample of src to dst. */
void fwh_merge(fwh *dst, const fwh *src);
/* The value at percentile pct (0..100]: the highest value of the bucket holding the sample
 * of rank ceil(pct/100 * total), clamped to [min, max] so it is never outside what was seen.
 * 0 when the histogram is empty. pct >= 100 gives max. */
uint64_t fwh_percentile(const fwh *h, double pct);
/* Exposed for the unit test: the bucket of a value and the range of values it covers. */
unsigned fwh_index(uint64_t value);
uint64_t fwh_bucket_low(unsigned index);
uint64_t fwh_bucket_high(unsigned index);

#endif
