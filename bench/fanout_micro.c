/* The room fan-out of imd's core in one process, without sockets (issue 3): a deterministic
 * companion of `bench/run-imd room`, whose throughput on a shared 2-core VM moves by +-20 %
 * from one minute to the next. Built and run by bench/run-fanout-micro (it links the server
 * library, which the bench_*.c rule of the Makefile does not).
 *
 * MEMBERS users log in (the server core's unit-test harness: in-memory store, fake clock and
 * I/O) and join one room; member 0 then feeds MSGS transient room SENDs (BODY bytes each, like
 * the load client's) in one input, ROUNDS times. After each round every
 * member's output is copied into a 64 MiB ring (standing in for the kernel's copy, which also
 * evicts the caches between rounds) and consumed. Prints the fan-out's time per delivery (the
 * SENDs' handling included: ims_client_input), min and median over the rounds, and the drain's.
 * Under `valgrind --tool=callgrind --toggle-collect=ims_client_input` (run-fanout-micro
 * --instructions), rounds minus one round give instructions per delivery.
 */
#define _GNU_SOURCE

#include "server_harness.h"

#include <time.h>

#ifndef MEMBERS
#define MEMBERS 1000
#endif
#ifndef MSGS
#define MSGS 50
#endif
#ifndef ROUNDS
#define ROUNDS 60
#endif
#define BODY 64 /* the load client's message size: ~160-byte DELIVERs */
#define RING (64u << 20)

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void fanout(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.max_connections = 2 * MEMBERS;
    h->cfg.max_connections_per_addr = 2 * MEMBERS;
    h->cfg.output_soft = 1 << 22; /* nothing dropped: every round is drained */
    h->cfg.output_hard = 1 << 24;
    h_start_cfg(h);
    static tc *m[MEMBERS];
    char name[16];
    for (int i = 0; i < MEMBERS; i++) {
        snprintf(name, sizeof name, "b%04d", i);
        m[i] = tc_user(h, name, 1);
        tc_join(m[i], "big");
    }
    turn(h);
    imp_msg e;
    for (int i = 0; i < MEMBERS; i++)
        while (tc_next(m[i], &e) == 1)
            ;
    /* the bytes of MSGS SENDs, fed as one input each round */
    uint8_t body[BODY];
    memset(body, 'x', sizeof body);
    for (int k = 0; k < MSGS; k++) {
        imp_msg s;
        imp_msg_init(&s, IMP_SEND, (uint32_t)(100 + k));
        imp_msg_set_u(&s, IMP_T_TARGET_KIND, IMP_TARGET_ROOM);
        imp_msg_set_s(&s, IMP_T_TARGET, "big");
        imp_msg_set_u(&s, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
        imp_msg_set_u(&s, IMP_T_ACK_MODE, IMP_ACK_STORED);
        imp_msg_set_b(&s, IMP_T_BODY, body, sizeof body);
        assert_int_equal(imp_conn_send(m[0]->cc, &s), 0);
    }
    const uint8_t *p;
    size_t n = imp_conn_pending_output(m[0]->cc, &p);
    uint8_t *sends = malloc(n);
    uint8_t *ring = malloc(RING);
    assert_non_null(sends);
    assert_non_null(ring);
    memcpy(sends, p, n);
    imp_conn_consume_output(m[0]->cc, n);
    memset(ring, 1, RING);
    size_t pos = 0, frame = 0;
    static uint64_t fan[ROUNDS], drain[ROUNDS];
    uint64_t delivered0 = st_get(h, "transient_delivered");
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = now_ns();
        ims_client_input(m[0]->sc, sends, n);
        uint64_t t1 = now_ns();
        for (int i = 0; i < MEMBERS; i++) {
            const uint8_t *q;
            size_t l = ims_client_output(m[i]->sc, &q);
            if (l == 0)
                continue;
            if (i == 1)
                frame = l / MSGS;
            if (pos + l > RING)
                pos = 0;
            memcpy(ring + pos, q, l);
            pos += l;
            ims_client_consumed(m[i]->sc, l);
        }
        fan[r] = t1 - t0;
        drain[r] = now_ns() - t1;
    }
    /* every member but the sender got every message */
    assert_int_equal(st_get(h, "transient_delivered") - delivered0,
                     (uint64_t)ROUNDS * MSGS * (MEMBERS - 1));
    qsort(fan, ROUNDS, sizeof fan[0], cmp_u64);
    qsort(drain, ROUNDS, sizeof drain[0], cmp_u64);
    double per = (double)MSGS * (MEMBERS - 1);
    printf("fanout_micro members=%d msgs_per_input=%d rounds=%d deliver_bytes=%zu "
           "fanout_ns_per_delivery_min=%.1f fanout_ns_per_delivery_med=%.1f "
           "drain_ns_per_delivery_min=%.1f drain_ns_per_delivery_med=%.1f\n",
           MEMBERS, MSGS, ROUNDS, frame, (double)fan[0] / per, (double)fan[ROUNDS / 2] / per,
           (double)drain[0] / per, (double)drain[ROUNDS / 2] / per);
    for (int i = 0; i < MEMBERS; i++)
        tc_close(m[i]);
    free(sends);
    free(ring);
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(fanout)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
