/* imload — a log-linear latency histogram.
 *
 * The idea is HdrHistogram's (Gil Tene, https://github.com/HdrHistogram): values below 256 are
 * counted exactly; above, each power of two [2^e, 2^(e+1)) is split into 128 linear
 * sub-buckets of width 2^(e-7), so a bucket is at most 1/128 of its lower bound wide. A value
 * is reported as its bucket's midpoint: the relative error is at most 1/256 (0.4 %), well
 * inside the 1 % required from 1 us to 60 s. Values are nanoseconds; the range covers up to
 * 2^40 ns (about 18 minutes); larger values are clamped into the last bucket (the exact
 * maximum is kept apart). This is an independent implementation, not HdrHistogram's code.
 *
 * Recording is a few shifts and an increment (no floating point, no allocation); histograms
 * of several threads are merged by adding counts.
 */
#ifndef IMLOAD_HIST_H
#define IMLOAD_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7                /* 128 sub-buckets per power of two */
#define HIST_SUB (1u << HIST_SUB_BITS) /* 128 */
#define HIST_EXACT (2u * HIST_SUB)     /* values below 256 are exact */
#define HIST_MAX_EXP 40                /* highest power of two covered: 2^40 */
#define HIST_BUCKETS (HIST_EXACT + (HIST_MAX_EXP - 8) * HIST_SUB)

typedef struct hist {
    uint64_t count;
    uint64_t min, max; /* exact; min is UINT64_MAX when empty */
    uint64_t sum;      /* for the mean (saturating) */
    uint64_t b[HIST_BUCKETS];
} hist;

void hist_init(hist *h);
void hist_record(hist *h, uint64_t v);
void hist_record_n(hist *h, uint64_t v, uint64_t n);
/* Add every count of src to dst. */
void hist_merge(hist *dst, const hist *src);
/* Bucket index of a value, the lowest value of a bucket, its width and its representative
 * value (midpoint). */
unsigned hist_index(uint64_t v);
uint64_t hist_bucket_low(unsigned i);
uint64_t hist_bucket_width(unsigned i);
uint64_t hist_bucket_value(unsigned i);
/* The value at percentile p (0 < p <= 100): the smallest recorded bucket whose cumulative
 * count reaches ceil(p/100 * count), as its midpoint clamped to [min, max]; p >= 100 gives max.
 * 0 when empty. */
uint64_t hist_percentile(const hist *h, double p);
uint64_t hist_mean(const hist *h);

#endif
