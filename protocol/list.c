/* List kinds: names, headers, stats (IMP-FIELD-009). Iterators, validators and builders. */
#include <string.h>

#include "imp/msg.h"
#include "imp/text.h"
#include "msg_internal.h"
#include "wire.h"

static int key_char(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '_' || c == '.';
}

static int stat_char(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '_' || c == '.';
}

static int key_valid(const uint8_t *p, size_t len)
{
    if (len < 1 || len > IMP_HEADER_KEY_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!key_char(p[i]))
            return 0;
    return 1;
}

static int stat_name_valid(const uint8_t *p, size_t len)
{
    if (len < 1 || len > IMP_STAT_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!stat_char(p[i]))
            return 0;
    return 1;
}

/* Each iterator checks structure only: every length against what remains (IMP-SEC-002). */
int imp_names_next(imp_bytes *rest, imp_bytes *name)
{
    if (rest->len == 0)
        return 0;
    size_t n = rest->p[0];
    if (n > rest->len - 1)
        return IMP_ERR_BAD_LIST;
    name->p = rest->p + 1;
    name->len = n;
    rest->p += 1 + n;
    rest->len -= 1 + n;
    return 1;
}

int imp_headers_next(imp_bytes *rest, imp_bytes *key, imp_bytes *value)
{
    if (rest->len == 0)
        return 0;
    const uint8_t *p = rest->p;
    size_t left = rest->len;
    size_t kl = p[0];
    if (kl + 3 > left)
        return IMP_ERR_BAD_LIST;
    size_t vl = imp_get16(p + 1 + kl);
    if (vl > left - kl - 3)
        return IMP_ERR_BAD_LIST;
    key->p = p + 1;
    key->len = kl;
    value->p = p + 3 + kl;
    value->len = vl;
    rest->p += 3 + kl + vl;
    rest->len -= 3 + kl + vl;
    return 1;
}

int imp_stats_next(imp_bytes *rest, imp_bytes *name, uint64_t *value)
{
    if (rest->len == 0)
        return 0;
    size_t n = rest->p[0];
    if (n + 9 > rest->len)
        return IMP_ERR_BAD_LIST;
    name->p = rest->p + 1;
    name->len = n;
    *value = imp_get64(rest->p + 1 + n);
    rest->p += 9 + n;
    rest->len -= 9 + n;
    return 1;
}

int imp_names_check(const uint8_t *p, size_t len)
{
    imp_bytes rest = {p, len}, name;
    unsigned count = 0;
    int r;
    while ((r = imp_names_next(&rest, &name)) > 0)
        if (++count > IMP_LIST_MAX_NAMES || !imp_name_valid(name.p, name.len))
            return IMP_ERR_BAD_LIST;
    return r;
}

static int key_seen(const uint8_t *list, const uint8_t *end, imp_bytes key)
{
    imp_bytes rest = {list, (size_t)(end - list)}, k, v;
    while (imp_headers_next(&rest, &k, &v) > 0)
        if (imp_name_equal(k.p, k.len, key.p, key.len))
            return 1;
    return 0;
}

int imp_headers_check(const uint8_t *p, size_t len)
{
    imp_bytes rest = {p, len}, key, value;
    unsigned count = 0;
    int r;
    while ((r = imp_headers_next(&rest, &key, &value)) > 0) {
        if (++count > IMP_LIST_MAX_HEADERS || !key_valid(key.p, key.len) ||
            value.len > IMP_HEADER_VALUE_MAX || !imp_utf8_valid(value.p, value.len) ||
            key_seen(p, key.p - 1, key))
            return IMP_ERR_BAD_LIST;
    }
    return r;
}

int imp_stats_check(const uint8_t *p, size_t len)
{
    imp_bytes rest = {p, len}, name;
    uint64_t v;
    unsigned count = 0;
    int r;
    while ((r = imp_stats_next(&rest, &name, &v)) > 0)
        if (++count > IMP_LIST_MAX_STATS || !stat_name_valid(name.p, name.len))
            return IMP_ERR_BAD_LIST;
    return r;
}

void imp_builder_init(imp_builder *b, uint8_t *buf, size_t cap)
{
    b->buf = buf;
    b->cap = cap;
    b->len = 0;
    b->count = 0;
    b->err = 0;
}

static int fail(imp_builder *b, int err)
{
    b->err = err;
    return err;
}

int imp_names_add(imp_builder *b, const void *name, size_t len)
{
    if (b->err)
        return b->err;
    if (!imp_name_valid(name, len))
        return fail(b, IMP_ERR_BAD_NAME);
    if (b->count >= IMP_LIST_MAX_NAMES)
        return fail(b, IMP_ERR_BAD_LIST);
    if (b->cap - b->len < 1 + len)
        return fail(b, IMP_ERR_BUFFER);
    b->buf[b->len] = (uint8_t)len;
    memcpy(b->buf + b->len + 1, name, len);
    b->len += 1 + len;
    b->count++;
    return 0;
}

int imp_headers_add(imp_builder *b, const void *key, size_t klen, const void *value, size_t vlen)
{
    if (b->err)
        return b->err;
    imp_bytes k = {key, klen};
    if (!key_valid(key, klen) || vlen > IMP_HEADER_VALUE_MAX || b->count >= IMP_LIST_MAX_HEADERS ||
        key_seen(b->buf, b->buf + b->len, k))
        return fail(b, IMP_ERR_BAD_LIST);
    if (!imp_utf8_valid(value, vlen))
        return fail(b, IMP_ERR_BAD_UTF8);
    if (b->cap - b->len < 3 + klen + vlen)
        return fail(b, IMP_ERR_BUFFER);
    uint8_t *p = b->buf + b->len;
    p[0] = (uint8_t)klen;
    memcpy(p + 1, key, klen);
    imp_put16(p + 1 + klen, (uint16_t)vlen);
    if (vlen)
        memcpy(p + 3 + klen, value, vlen);
    b->len += 3 + klen + vlen;
    b->count++;
    return 0;
}

int imp_stats_add(imp_builder *b, const void *name, size_t nlen, uint64_t value)
{
    if (b->err)
        return b->err;
    if (!stat_name_valid(name, nlen) || b->count >= IMP_LIST_MAX_STATS)
        return fail(b, IMP_ERR_BAD_LIST);
    if (b->cap - b->len < 9 + nlen)
        return fail(b, IMP_ERR_BUFFER);
    b->buf[b->len] = (uint8_t)nlen;
    memcpy(b->buf + b->len + 1, name, nlen);
    imp_put64(b->buf + b->len + 1 + nlen, value);
    b->len += 9 + nlen;
    b->count++;
    return 0;
}
