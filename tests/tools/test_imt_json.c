/* Unit tests for tools/common/imt_json.c: the JSON writer (escaping, commas, nesting, base64)
 * and the schema v1 objects documented in imt_json.h. Outputs are compared byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imt_json.h"

static void expect_json(imt_json *j, const char *want)
{
    assert_int_equal(j->err, 0);
    assert_string_equal(j->buf, want);
    imt_json_reset(j);
}

static void test_escaping(void **state)
{
    (void)state;
    imt_json j;
    imt_json_init(&j);
    imt_json_str(&j, "plain");
    expect_json(&j, "\"plain\"");
    imt_json_str(&j, "q\"b\\s/");
    expect_json(&j, "\"q\\\"b\\\\s/\"");
    imt_json_str(&j, "\b\f\n\r\t\x01\x1f\x7f");
    expect_json(&j, "\"\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\"");
    /* valid UTF-8 is copied as is: é (C3 A9), € (E2 82 AC), U+1F600 (F0 9F 98 80) */
    imt_json_str(&j, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    expect_json(&j, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    /* NUL inside a counted string */
    imt_json_strn(&j, "a\0b", 3);
    expect_json(&j, "\"a\\u0000b\"");
    /* invalid UTF-8 bytes become \u00XX of the byte */
    imt_json_strn(&j, "x\xff\xc3(", 4);
    expect_json(&j, "\"x\\u00ff\\u00c3(\"");
    /* a truncated sequence at the end */
    imt_json_strn(&j, "\xe2\x82", 2);
    expect_json(&j, "\"\\u00e2\\u0082\"");
    imt_json_str(&j, NULL);
    expect_json(&j, "null");
    imt_json_free(&j);
}

static void test_structure(void **state)
{
    (void)state;
    imt_json j;
    imt_json_init(&j);
    imt_json_obj_begin(&j);
    imt_json_key(&j, "a");
    imt_json_u64(&j, 18446744073709551615ull);
    imt_json_key(&j, "b");
    imt_json_arr_begin(&j);
    imt_json_i64(&j, -5);
    imt_json_bool(&j, 1);
    imt_json_bool(&j, 0);
    imt_json_null(&j);
    imt_json_obj_begin(&j);
    imt_json_obj_end(&j);
    imt_json_arr_begin(&j);
    imt_json_arr_end(&j);
    imt_json_arr_end(&j);
    imt_json_key(&j, "k\"ey");
    imt_json_str(&j, "v");
    imt_json_obj_end(&j);
    expect_json(&j,
                "{\"a\":18446744073709551615,\"b\":[-5,true,false,null,{},[]],\"k\\\"ey\":\"v\"}");
    /* after reset a new top-level value starts without a comma */
    imt_json_u64(&j, 1);
    expect_json(&j, "1");
    /* closing more than opened is misuse: sticky error */
    imt_json_obj_end(&j);
    assert_int_not_equal(j.err, 0);
    imt_json_free(&j);
}

static void test_emit(void **state)
{
    (void)state;
    imt_json j;
    imt_json_init(&j);
    FILE *f = tmpfile();
    assert_non_null(f);
    imt_json_obj_begin(&j);
    imt_json_key(&j, "x");
    imt_json_u64(&j, 1);
    imt_json_obj_end(&j);
    assert_int_equal(imt_json_emit(&j, f), 0);
    assert_int_equal(j.len, 0);
    imt_json_u64(&j, 2);
    assert_int_equal(imt_json_emit(&j, f), 0);
    rewind(f);
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    assert_int_equal(n, strlen("{\"x\":1}\n2\n"));
    assert_string_equal(buf, "{\"x\":1}\n2\n");
    fclose(f);
    imt_json_free(&j);
}

static void test_base64(void **state)
{
    (void)state;
    /* RFC 4648 section 10 vectors */
    static const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char buf[32];
        size_t n = imt_base64_encode(in[i], strlen(in[i]), buf);
        assert_int_equal(n, strlen(out[i]));
        assert_int_equal(imt_base64_len(strlen(in[i])), strlen(out[i]));
        assert_string_equal(buf, out[i]);
    }
    uint8_t bin[3] = {0xff, 0xfe, 0x00};
    char buf[8];
    imt_base64_encode(bin, 3, buf);
    assert_string_equal(buf, "//4A");
    imt_json j;
    imt_json_init(&j);
    imt_json_base64(&j, bin, 3);
    expect_json(&j, "\"//4A\"");
    imt_json_free(&j);
}

static void test_message_schema(void **state)
{
    (void)state;
    imt_json j;
    imt_json_init(&j);
    uint8_t hbuf[128];
    imp_builder b;
    imp_builder_init(&b, hbuf, sizeof hbuf);
    assert_int_equal(imp_headers_add(&b, "prio", 4, "high", 4), 0);
    assert_int_equal(imp_headers_add(&b, "x-q", 3, "a\"b", 3), 0);

    imt_message m;
    memset(&m, 0, sizeof m);
    m.frame_type = IMP_DELIVER;
    m.msg_id = 42;
    m.seq = 7;
    m.timestamp = 1700000000123ull;
    m.target_kind = IMP_TARGET_USER;
    strcpy(m.target, "bob");
    strcpy(m.sender, "alice");
    m.cls = IMP_CLASS_DURABLE;
    m.headers.p = hbuf;
    m.headers.len = b.len;
    m.body.p = (const uint8_t *)"hi \"you\"\n";
    m.body.len = 9;
    imt_json_message(&j, &m);
    expect_json(&j, "{\"v\":1,\"type\":\"message\",\"id\":42,\"seq\":7,\"from\":\"alice\","
                    "\"kind\":\"user\",\"to\":\"bob\",\"ts\":1700000000123,\"class\":\"durable\","
                    "\"headers\":{\"prio\":\"high\",\"x-q\":\"a\\\"b\"},"
                    "\"body\":\"hi \\\"you\\\"\\n\",\"body_enc\":\"utf8\"}");

    /* binary body: base64; broadcast: no "to"; transient; no headers */
    m.target_kind = IMP_TARGET_BROADCAST;
    m.target[0] = 0;
    m.cls = IMP_CLASS_TRANSIENT;
    m.seq = 0;
    m.headers.len = 0;
    m.body.p = (const uint8_t *)"\xff\x00\x01";
    m.body.len = 3;
    imt_json_message(&j, &m);
    expect_json(&j, "{\"v\":1,\"type\":\"message\",\"id\":42,\"seq\":0,\"from\":\"alice\","
                    "\"kind\":\"broadcast\",\"ts\":1700000000123,\"class\":\"transient\","
                    "\"body\":\"/wAB\",\"body_enc\":\"base64\"}");

    /* history item in a room; empty body */
    m.frame_type = IMP_HISTORY_ITEM;
    m.target_kind = IMP_TARGET_ROOM;
    strcpy(m.target, "ops");
    m.cls = IMP_CLASS_DURABLE;
    m.body.p = NULL;
    m.body.len = 0;
    imt_json_message(&j, &m);
    expect_json(&j, "{\"v\":1,\"type\":\"message\",\"id\":42,\"seq\":0,\"from\":\"alice\","
                    "\"kind\":\"room\",\"to\":\"ops\",\"ts\":1700000000123,\"class\":\"durable\","
                    "\"body\":\"\",\"body_enc\":\"utf8\",\"history\":true}");
    imt_json_free(&j);
}

static void test_ack_schema(void **state)
{
    (void)state;
    imt_json j;
    imt_json_init(&j);
    imt_ack a;
    memset(&a, 0, sizeof a);
    a.request_id = 3;
    a.outcome = IMP_OUTCOME_STORED;
    a.msg_id = 99;
    a.has_msg_id = 1;
    strcpy(a.client_msg_id, "k-1");
    imt_json_ack(&j, &a);
    expect_json(&j, "{\"v\":1,\"type\":\"ack\",\"req\":3,\"client_msg_id\":\"k-1\",\"id\":99,"
                    "\"outcome\":\"stored\",\"duplicate\":false,\"code\":0}");
    a.duplicate = 1;
    a.outcome = IMP_OUTCOME_DELIVERED;
    a.client_msg_id[0] = 0;
    imt_json_ack(&j, &a);
    expect_json(&j, "{\"v\":1,\"type\":\"ack\",\"req\":3,\"id\":99,"
                    "\"outcome\":\"delivered\",\"duplicate\":true,\"code\":0}");
    memset(&a, 0, sizeof a);
    a.request_id = 4;
    a.outcome = IMP_OUTCOME_REFUSED;
    a.code = 500;
    strcpy(a.text, "no such user");
    imt_json_ack(&j, &a);
    expect_json(&j, "{\"v\":1,\"type\":\"ack\",\"req\":4,\"outcome\":\"refused\","
                    "\"duplicate\":false,\"code\":500,\"code_name\":\"NO_SUCH_USER\","
                    "\"text\":\"no such user\"}");
    imt_json_free(&j);
}

static void test_other_schemas(void **state)
{
    (void)state;
    imt_json j;
    imt_json_init(&j);
    imt_presence p;
    memset(&p, 0, sizeof p);
    strcpy(p.user, "bob");
    p.status = IMP_STATUS_AWAY;
    strcpy(p.status_text, "lunch");
    p.sessions = 2;
    p.has_sessions = 1;
    p.timestamp = 5;
    imt_json_presence(&j, &p);
    expect_json(&j, "{\"v\":1,\"type\":\"presence\",\"user\":\"bob\",\"status\":\"away\","
                    "\"status_text\":\"lunch\",\"sessions\":2,\"ts\":5}");
    memset(&p, 0, sizeof p);
    strcpy(p.user, "bob");
    imt_json_presence(&j, &p);
    expect_json(&j, "{\"v\":1,\"type\":\"presence\",\"user\":\"bob\",\"status\":\"offline\"}");

    imt_monitor_event e;
    memset(&e, 0, sizeof e);
    strcpy(e.event, "login");
    strcpy(e.user, "carol");
    e.timestamp = 9;
    imt_json_monitor(&j, &e);
    expect_json(&j, "{\"v\":1,\"type\":\"monitor\",\"event\":\"login\",\"user\":\"carol\","
                    "\"ts\":9}");

    imt_result r;
    memset(&r, 0, sizeof r);
    r.status = 3;
    strcpy(r.text, "connect 127.0.0.1:1: Connection refused");
    imt_json_error(&j, &r);
    expect_json(&j, "{\"v\":1,\"type\":\"error\",\"status\":3,\"code\":0,"
                    "\"text\":\"connect 127.0.0.1:1: Connection refused\"}");
    r.status = 4;
    r.code = 400;
    strcpy(r.text, "login refused");
    imt_json_error(&j, &r);
    expect_json(&j, "{\"v\":1,\"type\":\"error\",\"status\":4,\"code\":400,"
                    "\"code_name\":\"AUTH_FAILED\",\"text\":\"login refused\"}");
    imt_json_free(&j);
}

static void test_enum_names(void **state)
{
    (void)state;
    assert_string_equal(imt_kind_name(IMP_TARGET_ROOM), "room");
    assert_string_equal(imt_kind_name(9), "unknown");
    assert_string_equal(imt_class_name(IMP_CLASS_TRANSIENT), "transient");
    assert_string_equal(imt_outcome_name(IMP_OUTCOME_REFUSED), "refused");
    assert_string_equal(imt_outcome_name(0), "unknown");
    assert_string_equal(imt_status_name(IMP_STATUS_BUSY), "busy");
    assert_string_equal(imt_status_name(IMP_STATUS_OFFLINE), "offline");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escaping),       cmocka_unit_test(test_structure),
        cmocka_unit_test(test_emit),           cmocka_unit_test(test_base64),
        cmocka_unit_test(test_message_schema), cmocka_unit_test(test_ack_schema),
        cmocka_unit_test(test_other_schemas),  cmocka_unit_test(test_enum_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
