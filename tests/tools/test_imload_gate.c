/* Unit tests of imload's option value parsers and --assert gates (tools/imload/gate.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../tools/imload/gate.c"

static void test_rate_count_ns(void **state)
{
    (void)state;
    double r;
    assert_int_equal(parse_rate("1000", &r), 0);
    assert_true(r == 1000);
    assert_int_equal(parse_rate("1000/s", &r), 0);
    assert_true(r == 1000);
    assert_int_equal(parse_rate("10k", &r), 0);
    assert_true(r == 10000);
    assert_int_equal(parse_rate("2.5M", &r), 0);
    assert_true(r == 2500000);
    assert_int_equal(parse_rate("600/m", &r), 0);
    assert_true(r == 10);
    assert_int_equal(parse_rate("fast", &r), -1);
    assert_int_equal(parse_rate("10/h", &r), -1);
    assert_int_equal(parse_rate("-5", &r), -1);
    uint64_t u;
    assert_int_equal(parse_count("20k", 0, 100000, &u), 0);
    assert_int_equal(u, 20000);
    assert_int_equal(parse_count("7", 1, 10, &u), 0);
    assert_int_equal(u, 7);
    assert_int_equal(parse_count("11", 1, 10, &u), -1);
    assert_int_equal(parse_count("1.5", 0, 10, &u), -1);
    assert_int_equal(parse_count("5/s", 0, 10, &u), -1);
    assert_int_equal(parse_ns("20us", &u), 0);
    assert_int_equal(u, 20000);
    assert_int_equal(parse_ns("20", &u), 0);
    assert_int_equal(u, 20000);
    assert_int_equal(parse_ns("1.5ms", &u), 0);
    assert_int_equal(u, 1500000);
    assert_int_equal(parse_ns("500ns", &u), 0);
    assert_int_equal(u, 500);
    assert_int_equal(parse_ns("2s", &u), 0);
    assert_int_equal(u, 2000000000u);
    assert_int_equal(parse_ns("2h", &u), -1);
}

static void test_gates(void **state)
{
    (void)state;
    gate g;
    assert_int_equal(parse_gate("p99<2ms", &g), 0);
    assert_string_equal(g.metric, "p99");
    assert_string_equal(g.op, "<");
    assert_true(g.value == 2e6);
    assert_true(gate_holds(&g, 1.9e6));
    assert_false(gate_holds(&g, 2e6));
    assert_int_equal(parse_gate("lost=0", &g), 0);
    assert_true(gate_holds(&g, 0));
    assert_false(gate_holds(&g, 1));
    assert_int_equal(parse_gate("rate>=100000", &g), 0);
    assert_true(gate_holds(&g, 100000));
    assert_false(gate_holds(&g, 99999.9));
    assert_int_equal(parse_gate("rate >= 100k", &g), 0);
    assert_true(g.value == 100000);
    assert_int_equal(parse_gate("ack.p999<=500us", &g), 0);
    assert_true(g.value == 500000);
    assert_int_equal(parse_gate("delivery.max<1s", &g), 0);
    assert_true(g.value == 1e9);
    assert_int_equal(parse_gate("p50<250", &g), 0); /* bare: microseconds */
    assert_true(g.value == 250000);
    assert_int_equal(parse_gate("errors!=3", &g), 0);
    assert_true(gate_holds(&g, 2));
    assert_false(gate_holds(&g, 3));
    assert_int_equal(parse_gate("duplicated==0", &g), 0);
    assert_int_equal(parse_gate("unsent>0", &g), 0);
    assert_int_equal(parse_gate("p99<<2ms", &g), -1);
    assert_int_equal(parse_gate("bogus=1", &g), -1);
    assert_int_equal(parse_gate("p99<2parsecs", &g), -1);
    assert_int_equal(parse_gate("lost=0ms", &g), -1);
    assert_int_equal(parse_gate("lost", &g), -1);
    assert_int_equal(parse_gate("=5", &g), -1);
    assert_true(is_latency("ack.p99"));
    assert_false(is_latency("rate"));
    assert_int_equal(parse_gate("foo.p99<1ms", &g), -1);
    assert_int_equal(parse_gate("e2e.p99<1ms", &g), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_count_ns),
        cmocka_unit_test(test_gates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
