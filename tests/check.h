/*
 * check.h — the smallest test harness that does the job, header-only.
 *
 * Why not cmocka: the client tests must also build with the ARM cross compiler and run
 * under qemu-arm, where no cmocka is installed. This header needs only libc.
 *
 *   static void t_roundtrip(void) { CHECK(x == 1); CHECK_EQ_INT(a, b); }
 *   static const struct check_test tests[] = { CHECK_TEST(t_roundtrip), ... };
 *   int main(int argc, char **argv) { return check_main(tests, CHECK_COUNT(tests), argc, argv); }
 *
 * A failed CHECK prints file:line and the expression and returns from the test function (the
 * rest of the test is skipped, the other tests still run). The last line a test binary prints
 * is "N passed, N failed"; tests/run.sh adds those up. argv[1], when given, runs only the
 * tests whose name contains it.
 */
#ifndef FW_CHECK_H
#define FW_CHECK_H

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

struct check_test {
    const char *name;
    void (*fn)(void);
};

/* The state of the test that is running now; one test runs at a time per binary. */
static int check_failed_;

#define CHECK_TEST(fn) { #fn, fn }
#define CHECK_COUNT(arr) ((int)(sizeof(arr) / sizeof((arr)[0])))

#define CHECK_FAIL_(...) do { \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__); \
        fputc('\n', stderr); \
        check_failed_ = 1; \
    } while (0)

#define CHECK(cond) do { if (!(cond)) { CHECK_FAIL_("CHECK(%s)", #cond); return; } } while (0)
#define CHECK_MSG(cond, ...) do { if (!(cond)) { CHECK_FAIL_(__VA_ARGS__); return; } } while (0)
#define CHECK_EQ_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
        if (a_ != b_) { CHECK_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_); return; } } while (0)
#define CHECK_EQ_STR(a, b) do { const char *a_ = (a), *b_ = (b); \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) { \
            CHECK_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
            return; } } while (0)
#define CHECK_NEAR(a, b, tol) do { double a_ = (double)(a), b_ = (double)(b); \
        if (!(a_ - b_ <= (tol) && b_ - a_ <= (tol))) { \
            CHECK_FAIL_("%s ~ %s: %g vs %g (tol %g)", #a, #b, a_, b_, (double)(tol)); return; } } while (0)

static inline int check_main(const struct check_test *tests, int n, int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n; i++) {
        if (filter && !strstr(tests[i].name, filter))
            continue;
        check_failed_ = 0;
        tests[i].fn();
        if (check_failed_) {
            failed++;
            printf("FAIL %s\n", tests[i].name);
        } else {
            passed++;
            printf("ok   %s\n", tests[i].name);
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
