/* Fuzz target: UTF-8 text and names (protocol text codec: imp_utf8_valid, imp_name_valid,
 * imp_name_fold, imp_name_equal).
 *
 * Requirements checked:
 *   IMP-TEXT-001  imp_utf8_valid agrees with a reference decoder that decodes code points and
 *                 refuses overlong forms, surrogates, values above U+10FFFF, truncated
 *                 sequences, stray continuation bytes and U+0000; validity is closed under
 *                 concatenation
 *   IMP-TEXT-002  imp_name_valid agrees with the reference rule; every name is valid UTF-8
 *   IMP-TEXT-003  folding maps A-Z to a-z and nothing else, works in place, is idempotent and
 *                 keeps validity; imp_name_equal is "equal after folding": reflexive, symmetric,
 *                 true between a name and its folded form
 * Every input is handed over in an exact-size heap copy so that over-reads are caught.
 *
 * Input: byte 0 picks where the rest is split into two strings a and b.
 */
#include "fuzz_ref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *dup_exact(const uint8_t *p, size_t n)
{
    uint8_t *q = calloc(n ? n : 1, 1);
    if (!q)
        abort();
    if (n)
        memcpy(q, p, n);
    return q;
}

static void check_one(const uint8_t *p, size_t n)
{
    uint8_t *a = dup_exact(p, n);
    int u = imp_utf8_valid(a, n);
    FZ_CHECK(u == 0 || u == 1);
    FZ_CHECK_EQ(u, ref_utf8_valid(a, n));

    int v = imp_name_valid(a, n);
    FZ_CHECK(v == 0 || v == 1);
    FZ_CHECK_EQ(v, ref_name_valid(a, n));
    if (v)
        FZ_CHECK(u); /* names are ASCII, a subset of UTF-8 */

    uint8_t *f = calloc(n ? n : 1, 1);
    if (!f)
        abort();
    imp_name_fold(a, n, f);
    for (size_t i = 0; i < n; i++)
        FZ_CHECK_EQ(f[i], ref_fold(a[i]));
    FZ_CHECK_EQ(imp_name_valid(f, n), v);
    FZ_CHECK_EQ(imp_utf8_valid(f, n), u); /* folding touches ASCII letters only */
    uint8_t *g = dup_exact(f, n);
    imp_name_fold(g, n, g); /* in place, and idempotent */
    FZ_CHECK(n == 0 || memcmp(f, g, n) == 0);
    uint8_t *h = dup_exact(a, n);
    imp_name_fold(h, n, h);
    FZ_CHECK(n == 0 || memcmp(f, h, n) == 0);

    FZ_CHECK_EQ(imp_name_equal(a, n, a, n), 1);
    FZ_CHECK_EQ(imp_name_equal(a, n, f, n), 1);
    FZ_CHECK_EQ(imp_name_equal(f, n, a, n), 1);
    if (n > 0)
        FZ_CHECK_EQ(imp_name_equal(a, n, a, n - 1), 0);
    free(a);
    free(f);
    free(g);
    free(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        FZ_CHECK_EQ(imp_utf8_valid(NULL, 0), 1);
        FZ_CHECK_EQ(imp_name_valid(NULL, 0), 0);
        return 0;
    }
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    size_t k = n ? data[0] % (n + 1) : 0;
    const uint8_t *b = p + k;
    size_t alen = k, blen = n - k;

    check_one(p, n);
    check_one(p, alen);
    check_one(b, blen);

    /* UTF-8 validity is closed under concatenation */
    if (ref_utf8_valid(p, alen) && ref_utf8_valid(b, blen))
        FZ_CHECK_EQ(imp_utf8_valid(p, n), 1);

    /* equality of two names: equal after folding, and symmetric */
    uint8_t *a2 = dup_exact(p, alen), *b2 = dup_exact(b, blen);
    int eq = alen == blen;
    for (size_t i = 0; eq && i < alen; i++)
        eq = ref_fold(a2[i]) == ref_fold(b2[i]);
    FZ_CHECK_EQ(imp_name_equal(a2, alen, b2, blen), eq);
    FZ_CHECK_EQ(imp_name_equal(b2, blen, a2, alen), eq);
    free(a2);
    free(b2);
    return 0;
}
