/*
 * test_fwload_hist.c — unit tests of fwload's log-linear latency histogram.
 *
 * fwload (perf/) is not linked into the test binaries, so this test compiles the histogram
 * source directly: it is a pure module with no state and no I/O, which makes that safe.
 * What matters for the benchmark figures: every value lands in a bucket that contains it,
 * buckets are dense and ordered, no bucket is wider than 1/128 of its value, and the
 * percentile walk picks the right rank.
 */
#include "check.h"
#include "../perf/fwload_hist.c"

/* Every value from 0 to a few powers of two past the linear region, then sampled up to the
 * top: the bucket must contain the value, and the bucket range must be tight. */
static void t_index_contains_value(void)
{
    for (uint64_t v = 0; v < 70000; v++) {
        unsigned i = fwh_index(v);
        CHECK(i < FWH_BUCKETS);
        CHECK_MSG(fwh_bucket_low(i) <= v && v <= fwh_bucket_high(i), "value %llu index %u",
                  (unsigned long long)v, i);
    }
    for (uint64_t v = 70000; v < FWH_MAX_VALUE; v += v / 7 + 1) {
        unsigned i = fwh_index(v);
        CHECK(i < FWH_BUCKETS);
        CHECK(fwh_bucket_low(i) <= v && v <= fwh_bucket_high(i));
        /* width relative to the bucket's lowest value: at most 1/128 */
        uint64_t width = fwh_bucket_high(i) - fwh_bucket_low(i) + 1;
        CHECK_MSG(width * FWH_SUB_HALF <= fwh_bucket_low(i), "bucket %u too wide", i);
    }
}

/* Exact below 256 ns: one value per bucket. */
static void t_linear_region_exact(void)
{
    for (unsigned v = 0; v < FWH_SUB_COUNT; v++) {
        CHECK_EQ_INT(fwh_index(v), v);
        CHECK_EQ_INT(fwh_bucket_low(v), v);
        CHECK_EQ_INT(fwh_bucket_high(v), v);
    }
}

/* Buckets tile the value range with no gap and no overlap, in increasing order. */
static void t_buckets_dense_and_ordered(void)
{
    for (unsigned i = 1; i < FWH_BUCKETS; i++)
        CHECK_MSG(fwh_bucket_low(i) == fwh_bucket_high(i - 1) + 1, "gap before bucket %u", i);
    CHECK_EQ_INT(fwh_bucket_high(FWH_BUCKETS - 1), FWH_MAX_VALUE - 1);
}

static void t_empty(void)
{
    fwh h;
    fwh_reset(&h);
    CHECK_EQ_INT(h.total, 0);
    CHECK_EQ_INT(fwh_percentile(&h, 50), 0);
    CHECK_EQ_INT(fwh_percentile(&h, 100), 0);
}

/* Samples 1..10000 (µs expressed in ns): each percentile within one bucket of the truth. */
static void t_percentiles_uniform(void)
{
    fwh h; /* 36 KiB: fine on a test's stack */
    fwh_reset(&h);
    for (uint64_t v = 1; v <= 10000; v++)
        fwh_record(&h, v * 1000);
    CHECK_EQ_INT(h.total, 10000);
    CHECK_EQ_INT(h.min, 1000);
    CHECK_EQ_INT(h.max, 10000000);
    const double pcts[] = {50, 90, 99, 99.9};
    const uint64_t truth[] = {5000000, 9000000, 9900000, 9990000};
    for (int k = 0; k < 4; k++) {
        uint64_t got = fwh_percentile(&h, pcts[k]);
        CHECK_MSG(got >= truth[k] && got <= truth[k] + truth[k] / FWH_SUB_HALF,
                  "p%g: got %llu want ~%llu", pcts[k], (unsigned long long)got,
                  (unsigned long long)truth[k]);
    }
    CHECK_EQ_INT(fwh_percentile(&h, 100), 10000000);
}

/* The rank rule: with 99 samples of 10 and one of 5000, p99 is 10 and p99.9 is 5000
 * (rank ceil(99.9) = 100), never something in between. */
static void t_percentile_rank(void)
{
    fwh h;
    fwh_reset(&h);
    for (int i = 0; i < 99; i++)
        fwh_record(&h, 10);
    fwh_record(&h, 5000);
    CHECK_EQ_INT(fwh_percentile(&h, 50), 10);
    CHECK_EQ_INT(fwh_percentile(&h, 99), 10);
    CHECK_EQ_INT(fwh_percentile(&h, 99.9), 5000);
    CHECK_EQ_INT(fwh_percentile(&h, 0), 10);
}

/* A value above the tracked range counts in the last bucket; max stays exact, and the
 * percentile never reports more than max or less than min. */
static void t_huge_value_clamped(void)
{
    fwh h;
    fwh_reset(&h);
    fwh_record(&h, UINT64_MAX);
    CHECK_EQ_INT(h.counts[FWH_BUCKETS - 1], 1);
    CHECK(h.max == UINT64_MAX);
    CHECK(fwh_percentile(&h, 50) == UINT64_MAX);
    fwh_reset(&h);
    fwh_record(&h, 1000001); /* bucket high is above the sample: clamp to max */
    CHECK_EQ_INT(fwh_percentile(&h, 50), 1000001);
}

static void t_merge(void)
{
    fwh a, b;
    fwh_reset(&a);
    fwh_reset(&b);
    fwh_record(&a, 100);
    fwh_record(&b, 3);
    fwh_record(&b, 900000);
    fwh_merge(&a, &b);
    CHECK_EQ_INT(a.total, 3);
    CHECK_EQ_INT(a.min, 3);
    CHECK_EQ_INT(a.max, 900000);
    CHECK_EQ_INT(fwh_percentile(&a, 50), 100);
    fwh empty;
    fwh_reset(&empty);
    fwh_merge(&a, &empty);
    CHECK_EQ_INT(a.min, 3);
    CHECK_EQ_INT(a.total, 3);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_index_contains_value), CHECK_TEST(t_linear_region_exact),
    CHECK_TEST(t_buckets_dense_and_ordered), CHECK_TEST(t_empty),
    CHECK_TEST(t_percentiles_uniform), CHECK_TEST(t_percentile_rank),
    CHECK_TEST(t_huge_value_clamped), CHECK_TEST(t_merge),
};

int main(int argc, char **argv) { return check_main(tests, CHECK_COUNT(tests), argc, argv); }
