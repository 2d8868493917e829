/* imload — the log-linear latency histogram (see hist.h; the idea is HdrHistogram's). */
#include "hist.h"

#include <string.h>

void hist_init(hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

unsigned hist_index(uint64_t v)
{
    if (v < HIST_EXACT)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* 2^e <= v < 2^(e+1), e >= 8 */
    if (e >= HIST_MAX_EXP)
        return HIST_BUCKETS - 1;
    unsigned sub = (unsigned)(v >> (e - HIST_SUB_BITS)) - HIST_SUB; /* 0..127 */
    return HIST_EXACT + (e - 8u) * HIST_SUB + sub;
}

uint64_t hist_bucket_low(unsigned i)
{
    if (i < HIST_EXACT)
        return i;
    unsigned e = 8u + (i - HIST_EXACT) / HIST_SUB, sub = (i - HIST_EXACT) % HIST_SUB;
    return (uint64_t)(HIST_SUB + sub) << (e - HIST_SUB_BITS);
}

uint64_t hist_bucket_width(unsigned i)
{
    if (i < HIST_EXACT)
        return 1;
    unsigned e = 8u + (i - HIST_EXACT) / HIST_SUB;
    return (uint64_t)1 << (e - HIST_SUB_BITS);
}

uint64_t hist_bucket_value(unsigned i)
{
    return hist_bucket_low(i) + hist_bucket_width(i) / 2;
}

void hist_record_n(hist *h, uint64_t v, uint64_t n)
{
    if (!n)
        return;
    h->b[hist_index(v)] += n;
    h->count += n;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    uint64_t add = v * n;
    if (v && add / v != n)
        add = UINT64_MAX;
    h->sum = h->sum + add < h->sum ? UINT64_MAX : h->sum + add;
}

void hist_record(hist *h, uint64_t v)
{
    hist_record_n(h, v, 1);
}

void hist_merge(hist *dst, const hist *src)
{
    if (!src->count)
        return;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->sum = dst->sum + src->sum < dst->sum ? UINT64_MAX : dst->sum + src->sum;
}

uint64_t hist_percentile(const hist *h, double p)
{
    if (!h->count)
        return 0;
    if (p >= 100.0)
        return h->max;
    double want = p / 100.0 * (double)h->count;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t cum = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        cum += h->b[i];
        if (cum >= rank) {
            uint64_t v = hist_bucket_value(i);
            if (v < h->min)
                v = h->min;
            if (v > h->max)
                v = h->max;
            return v;
        }
    }
    return h->max;
}

uint64_t hist_mean(const hist *h)
{
    return h->count ? h->sum / h->count : 0;
}
