/* Unit tests of imload's log-linear histogram (tools/imload/hist.c): the relative error bound
 * (<= 1 % from 1 us to 60 s), percentiles against an exact sort, merging. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../tools/imload/hist.c"

static hist H; /* large: static */

static double rel_err(uint64_t got, uint64_t want)
{
    double d = (double)got - (double)want;
    if (d < 0)
        d = -d;
    return want ? d / (double)want : (double)got;
}

/* Every value from 1 us to 60 s (sampled densely, including every bucket edge) maps to a
 * bucket whose representative is within 1 % (in fact 1/256) of the value. */
static void test_error_bound(void **state)
{
    (void)state;
    double worst = 0;
    for (uint64_t v = 1000; v <= 60000000000ull; v += v / 997 + 1) {
        unsigned i = hist_index(v);
        assert_true(i < HIST_BUCKETS);
        assert_true(hist_bucket_low(i) <= v);
        assert_true(v < hist_bucket_low(i) + hist_bucket_width(i));
        double e = rel_err(hist_bucket_value(i), v);
        if (e > worst)
            worst = e;
        /* the edges of this bucket too */
        uint64_t lo = hist_bucket_low(i), hi = lo + hist_bucket_width(i) - 1;
        assert_true(rel_err(hist_bucket_value(i), lo) <= 0.01);
        assert_true(rel_err(hist_bucket_value(i), hi) <= 0.01);
    }
    assert_true(worst <= 1.0 / 256 + 1e-12);
    /* small values are exact */
    for (uint64_t v = 0; v < 256; v++)
        assert_int_equal(hist_bucket_value(hist_index(v)), v);
    /* buckets are contiguous and increasing */
    for (unsigned i = 1; i < HIST_BUCKETS; i++)
        assert_int_equal(hist_bucket_low(i), hist_bucket_low(i - 1) + hist_bucket_width(i - 1));
    /* beyond the range: clamped to the last bucket, max exact */
    hist_init(&H);
    hist_record(&H, (uint64_t)1 << 50);
    assert_int_equal(H.max, (uint64_t)1 << 50);
    assert_int_equal(hist_percentile(&H, 100), (uint64_t)1 << 50);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentiles of random log-uniform samples agree with the exact order statistics to 1 %. */
static void test_percentiles(void **state)
{
    (void)state;
    enum { N = 200000 };
    uint64_t *v = malloc(N * sizeof *v);
    assert_non_null(v);
    hist_init(&H);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < N; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* 1 us .. ~60 s, log-uniform */
        unsigned e = 10 + (unsigned)(x % 26);
        uint64_t val = ((uint64_t)1 << e) + (x >> 20) % ((uint64_t)1 << e);
        v[i] = val;
        hist_record(&H, val);
    }
    qsort(v, N, sizeof *v, cmp_u64);
    static const double ps[] = {1, 10, 50, 90, 99, 99.9, 99.99};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        size_t rank = (size_t)(ps[k] / 100.0 * N + 0.999999);
        uint64_t exact = v[rank - 1];
        uint64_t got = hist_percentile(&H, ps[k]);
        assert_true(rel_err(got, exact) <= 0.01);
    }
    assert_int_equal(hist_percentile(&H, 100), v[N - 1]);
    assert_int_equal(H.min, v[0]);
    assert_int_equal(H.count, N);
    free(v);
}

static void test_simple_and_merge(void **state)
{
    (void)state;
    static hist a, b;
    hist_init(&a);
    hist_init(&b);
    assert_int_equal(hist_percentile(&a, 50), 0);
    for (uint64_t i = 1; i <= 100; i++)
        hist_record(&a, i * 1000000); /* 1..100 ms */
    assert_true(rel_err(hist_percentile(&a, 50), 50000000) <= 0.01);
    assert_true(rel_err(hist_percentile(&a, 99), 99000000) <= 0.01);
    assert_int_equal(hist_percentile(&a, 100), 100000000);
    hist_record_n(&b, 5000, 300);
    hist_merge(&a, &b);
    assert_int_equal(a.count, 400);
    assert_int_equal(a.min, 5000);
    assert_true(rel_err(hist_percentile(&a, 50), 5000) <= 0.01);
    assert_true(rel_err(hist_percentile(&a, 80), 20000000) <= 0.01);
    assert_int_equal(hist_mean(&b), 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_bound),
        cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_simple_and_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
