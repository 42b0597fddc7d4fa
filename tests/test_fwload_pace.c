/*
 * test_fwload_pace.c — unit tests of fwload's open-loop schedule (perf/fwload_pace.c).
 *
 * fwload (perf/) is not linked into the test binaries, so this test compiles the source
 * directly: a pure module with no state and no I/O. What matters for the benchmark figures:
 * a request is queued as soon as its intended send time has come and never before, so the
 * latency fwload charges from that time is the server's and not the pacer's. The first test
 * is the bug this module was split out for: request 0 was not due at the start, and every
 * request went out one interval late (3.3 ms at 300 requests/s).
 */
#include "check.h"
#include "../perf/fwload_pace.c"

static void t_first_request_due_at_start(void)
{
    CHECK_EQ_INT(fwl_pace_t0(0, 1e9 / 300), 0);
    CHECK_EQ_INT(fwl_pace_due(0, 1e9 / 300, 0), 1);
    CHECK_EQ_INT(fwl_pace_due(0, 1e9, 0), 1);
    /* two requests per nanosecond: the first two share the instant 0 */
    CHECK_EQ_INT(fwl_pace_due(0, 0.5, 0), 2);
}

/* At 300/s: request 1 is due at 3,333,333 ns, not a nanosecond before; after exactly one
 * second, requests 0..300 (t0 of 300 = 999,999,999 ns after rounding down). */
static void t_boundaries_at_300_per_s(void)
{
    double ns = 1e9 / 300;
    uint64_t t1 = fwl_pace_t0(1, ns);
    CHECK_EQ_INT(t1, 3333333);
    CHECK_EQ_INT(fwl_pace_due(t1 - 1, ns, 0), 1);
    CHECK_EQ_INT(fwl_pace_due(t1, ns, 0), 2);
    CHECK_EQ_INT(fwl_pace_due(1000000000, ns, 0), 301);
}

/* For many rates, including ones whose interval is not a whole number of nanoseconds and
 * ones faster than a request per nanosecond, and many instants: the due count n satisfies
 * t0(n - 1) <= elapsed < t0(n) exactly, and it never decreases as time goes on. */
static void t_exact_against_t0(void)
{
    static const double rates[] = { 1, 3, 7, 97, 300, 333333, 1e6 / 7, 1e9 / 3, 1e9, 3e9 };
    for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
        double ns = 1e9 / rates[r];
        uint64_t prev = 0;
        for (uint64_t el = 0; el < 5000000000ull; el += el / 3 + 997) {
            uint64_t n = fwl_pace_due(el, ns, 0);
            CHECK(n >= 1);
            CHECK_MSG(fwl_pace_t0(n - 1, ns) <= el && el < fwl_pace_t0(n, ns),
                      "rate %g elapsed %llu: %llu due", rates[r], (unsigned long long)el,
                      (unsigned long long)n);
            CHECK(n >= prev);
            prev = n;
        }
        /* and right at every one of the first few hundred send times */
        for (uint64_t k = 1; k < 500; k++) {
            uint64_t t = fwl_pace_t0(k, ns);
            if (t == fwl_pace_t0(k - 1, ns))
                continue; /* several requests per nanosecond: same instant */
            CHECK_EQ_INT(fwl_pace_due(t - 1, ns, 0) <= k, 1);
            CHECK_EQ_INT(fwl_pace_due(t, ns, 0) >= k + 1, 1);
        }
    }
}

/* -n caps the schedule. */
static void t_limit(void)
{
    double ns = 1e9 / 1000;
    CHECK_EQ_INT(fwl_pace_due(0, ns, 5), 1);
    CHECK_EQ_INT(fwl_pace_due(3999999, ns, 5), 4);
    CHECK_EQ_INT(fwl_pace_due(4000000, ns, 5), 5);
    CHECK_EQ_INT(fwl_pace_due(60000000000ull, ns, 5), 5);
    CHECK_EQ_INT(fwl_pace_due(60000000000ull, ns, 0), 60001);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_first_request_due_at_start),
    CHECK_TEST(t_boundaries_at_300_per_s),
    CHECK_TEST(t_exact_against_t0),
    CHECK_TEST(t_limit),
};

int main(int argc, char **argv)
{
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
