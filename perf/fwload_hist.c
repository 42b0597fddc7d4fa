/*
 * fwload_hist.c — the log-linear latency histogram of fwload (see fwload_hist.h).
 *
 * Bucket index of a value v:
 *   v < 256:  index = v (one bucket per nanosecond: exact)
 *   else:     shift = msb(v) - 7, sub = v >> shift (in [128, 256)), index = shift * 128 + sub
 * so each power of two above 256 gets 128 consecutive buckets, and indices are dense and
 * increase with v. The inverse (bucket_low/high) undoes the same arithmetic.
 */
#include "fwload_hist.h"

#include <string.h>

void fwh_reset(fwh *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

static unsigned msb64(uint64_t v)
{
    /* v > 0 at every call site. */
    return 63u - (unsigned)__builtin_clzll(v);
}

unsigned fwh_index(uint64_t value)
{
    if (value >= FWH_MAX_VALUE)
        value = FWH_MAX_VALUE - 1;
    if (value < FWH_SUB_COUNT)
        return (unsigned)value;
    unsigned shift = msb64(value) - (FWH_SUB_BITS - 1);
    return shift * FWH_SUB_HALF + (unsigned)(value >> shift);
}

/* index = shift * 128 + sub with sub in [128, 256) for shift >= 1, so index / 128 = shift + 1. */
static void split_index(unsigned index, unsigned *shift, uint64_t *sub)
{
    if (index < FWH_SUB_COUNT) {
        *shift = 0;
        *sub = index;
        return;
    }
    *shift = index / FWH_SUB_HALF - 1;
    *sub = index - *shift * FWH_SUB_HALF;
}

uint64_t fwh_bucket_low(unsigned index)
{
    unsigned shift;
    uint64_t sub;
    split_index(index, &shift, &sub);
    return sub << shift;
}

uint64_t fwh_bucket_high(unsigned index)
{
    unsigned shift;
    uint64_t sub;
    split_index(index, &shift, &sub);
    return ((sub + 1) << shift) - 1;
}

void fwh_record(fwh *h, uint64_t value)
{
    h->counts[fwh_index(value)]++;
    h->total++;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
}

void fwh_merge(fwh *dst, const fwh *src)
{
    if (src->total == 0)
        return;
    for (unsigned i = 0; i < FWH_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t fwh_percentile(const fwh *h, double pct)
{
    if (h->total == 0)
        return 0;
    if (!(pct < 100.0)) /* also catches NaN */
        return h->max;
    if (pct < 0.0)
        pct = 0.0;
    /* Rank of the wanted sample, 1-based: ceil(pct/100 * total), at least 1. The product is
     * computed in double; totals below 2^53 are exact and no run comes near that. */
    double want = pct / 100.0 * (double)h->total;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < FWH_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = fwh_bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max; /* unreachable while total == sum of counts */
}
