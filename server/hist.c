/*
 * hist.c — log-linear histogram (see hist.h).
 *
 * Bucket layout: values below FW_HIST_SUB get one bucket each (exact). Above, a value with
 * its highest set bit at position p (p >= SUB_BITS) falls in group p - SUB_BITS + 1, and the
 * SUB_BITS bits right below the top bit pick the sub-bucket inside the group.
 */
#include "server/hist.h"

#include <string.h>

void fw_hist_reset(fw_hist *h)
{
    memset(h, 0, sizeof *h);
}

static unsigned bucket_of(uint64_t v)
{
    if (v < FW_HIST_SUB)
        return (unsigned)v;
    unsigned p = 63u - (unsigned)__builtin_clzll(v);   /* v >= 16, so p >= 4 */
    if (p >= FW_HIST_POW)
        return FW_HIST_BUCKETS - 1;
    unsigned group = p - FW_HIST_SUB_BITS + 1;
    unsigned sub = (unsigned)(v >> (p - FW_HIST_SUB_BITS)) & (FW_HIST_SUB - 1);
    return group * FW_HIST_SUB + sub;
}

/* The largest value that lands in bucket b. */
static uint64_t bucket_top(unsigned b)
{
    if (b < FW_HIST_SUB)
        return b;
    unsigned group = b / FW_HIST_SUB, sub = b % FW_HIST_SUB;
    unsigned p = group + FW_HIST_SUB_BITS - 1;
    uint64_t lo = ((uint64_t)(FW_HIST_SUB + sub)) << (p - FW_HIST_SUB_BITS);
    return lo + (1ull << (p - FW_HIST_SUB_BITS)) - 1;
}

void fw_hist_record(fw_hist *h, uint64_t v)
{
    h->bucket[bucket_of(v)]++;
    h->count++;
    h->sum = h->sum + v < h->sum ? UINT64_MAX : h->sum + v;
    if (v > h->max)
        h->max = v;
}

uint64_t fw_hist_quantile(const fw_hist *h, double q)
{
    if (h->count == 0)
        return 0;
    if (!(q > 0))
        q = 0;
    if (q > 1)
        q = 1;
    /* rank of the wanted sample, 1-based: ceil(q * count), at least 1 */
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if ((double)rank < q * (double)h->count)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < FW_HIST_BUCKETS; b++) {
        seen += h->bucket[b];
        if (seen >= rank) {
            uint64_t top = bucket_top(b);
            return top < h->max ? top : h->max;
        }
    }
    return h->max;
}
