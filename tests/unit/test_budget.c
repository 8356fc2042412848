/* test_budget.c - the global buffer budget (--max-buffer-bytes): full buffers while it
 * lasts, small ones from its reserve, then backpressure - a receive waits, parked,
 * with its data left in the socket, until a buffer comes back - and the parked
 * connections still close on idle timeout and shutdown. Also the core's policies the
 * backends share: accept retry delays, pool reservations, srv_run's threads. */
#include <criterion/criterion.h>
#include <string.h>

#include "core/alloc.h"
#include "core/ep.h"
#include "core/stats.h"
#include "fake_backend.h"

static struct fake f;

/* 8 KiB buffers, a 16 KiB budget: one full buffer (the full tier ends at 14 KiB),
 * then two 4 KiB ones from the reserve, then nothing. */
static void setup(void)
{
    fake_init(&f);
    f.cfg.buffer_size = 8192;
    f.cfg.max_buffer_bytes = 16384;
    fake_start(&f);
}

static void teardown(void)
{
    ep_alloc_fail = NULL;
    fake_destroy(&f);
}

TestSuite(budget, .init = setup, .fini = teardown);

/* A connection that sent `msg` and whose echo is posted but not completed (its client
 * does not read), holding a buffer. */
static struct fake_sock *hog(const char *msg)
{
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, msg, strlen(msg));
    cr_assert(fake_step(s), "the receive completes");
    cr_assert_eq(s->op, FAKE_OP_SEND, "the echo is posted");
    return s;
}

/* A connection that sent `msg` after the budget was spent: its receive completed without
 * a buffer and it waits, parked. */
static struct fake_sock *parked(const char *msg)
{
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, msg, strlen(msg));
    cr_assert(fake_step(s), "the receive completes, without a buffer");
    cr_assert(s->conn->parked, "the connection waits for budget");
    return s;
}

Test(budget, full_buffers_then_small_ones_then_none)
{
    struct fake_sock *a = hog("aaaa"), *b = hog("bbbb"), *c = hog("cccc");
    cr_expect_eq(a->conn->cap, 8192);
    cr_expect_eq(b->conn->cap, 4096, "past the full tier: a reserve buffer");
    cr_expect_eq(c->conn->cap, 4096);
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 16384);
    struct fake_sock *d = fake_accept(&f);
    fake_client_send(d, "dddd", 4);
    cr_assert(fake_step(d));
    cr_expect_eq(d->op, FAKE_OP_NONE, "nothing is posted while it waits");
    cr_expect(d->conn->parked);
    cr_expect_eq(d->in_off, 0, "its data stays in the socket");
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 16384, "the bound holds");
    cr_expect_eq(d->cancels, 0, "waiting is not closing");
    cr_expect_eq(stats_get(buffer_waits), 1);
}

Test(budget, a_parked_receive_resumes_when_a_buffer_comes_back)
{
    struct fake_sock *a = hog("aaaa");
    hog("bbbb");
    hog("cccc");
    struct fake_sock *d = parked("dddd");
    int wakes = f.wakes;
    cr_assert(fake_step(a), "a's echo completes; its buffer goes back");
    cr_expect_eq(f.wakes, wakes + 1, "the workers are woken for the parked receive");
    fake_tick(&f);
    cr_expect(!d->conn->parked);
    cr_expect_eq(d->op, FAKE_OP_RECV, "the receive is posted again");
    cr_assert(fake_step(d) && fake_step(d));
    cr_expect_eq(d->echoed_len, 4);
    cr_expect_eq(memcmp(d->echoed, "dddd", 4), 0);
}

Test(budget, a_small_buffer_echoes_a_large_message_whole_and_in_order)
{
    hog("aaaa");
    struct fake_sock *b = fake_accept(&f);
    static unsigned char msg[20000];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (unsigned char)(i * 7 + i / 251);
    fake_client_send(b, msg, sizeof(msg));
    for (int i = 0; i < 64 && b->echoed_len < sizeof(msg); i++)
        fake_step(b);
    cr_expect_eq(b->conn->cap, 4096);
    cr_assert_eq(b->echoed_len, sizeof(msg));
    cr_expect_eq(memcmp(b->echoed, msg, sizeof(msg)), 0);
}

Test(budget, parked_connections_close_on_idle_timeout_and_are_freed)
{
    f.cfg.idle_timeout_s = 1;
    hog("aaaa");
    hog("bbbb");
    hog("cccc");
    struct fake_sock *d = parked("dddd");
    d->conn->last_active_ms -= 1500;
    fake_tick(&f);
    cr_expect_null(d->conn, "freed by the tick: nothing was posted to complete");
    cr_expect_eq(d->closes, 1);
    cr_expect_eq(atomic_load(&f.srv.parked), 0);
}

Test(budget, shutdown_frees_parked_connections)
{
    struct fake_sock *s[3] = {hog("aaaa"), hog("bbbb"), hog("cccc")};
    struct fake_sock *d = parked("dddd"), *e = parked("eeee");
    srv_request_stop(&f.srv);
    fake_tick(&f);
    cr_expect_null(d->conn);
    cr_expect_null(e->conn);
    fake_run(&f, 20); /* the hogs' echoes finish and they close */
    for (int i = 0; i < 3; i++)
        cr_expect_eq(s[i]->echoed_len, 4);
    cr_expect(srv_worker_done(&f.srv, 0));
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 0, "every buffer went back to the budget");
}

Test(budget, a_returned_receive_buffer_goes_back_to_the_budget)
{
    struct fake_sock *a = fake_accept(&f);
    size_t cap;
    cr_assert_not_null(conn_recv_buffer(a->conn, &cap));
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 8192);
    conn_recv_buffer_return(a->conn);
    cr_expect_null(a->conn->buf);
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 0, "freed: this budget caches nothing");
    fake_client_send(a, "aaaa", 4);
    cr_assert(fake_step(a) && fake_step(a), "the receive still completes into a new buffer");
    cr_expect_eq(a->echoed_len, 4);
}

Test(budget, allocation_failure_closes_instead_of_parking)
{
    struct fake_sock *a = fake_accept(&f);
    ep_alloc_fail = fake_alloc_fails;
    fake_client_send(a, "aaaa", 4);
    cr_assert(fake_step(a));
    ep_alloc_fail = NULL;
    cr_expect_null(a->conn, "closed and freed: no buffer will come by waiting");
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(budget, pool_reservations_take_at_most_an_eighth_shared_by_the_workers)
{
    cr_expect_eq(srv_pool_reserve(&f.srv, 1u << 20), 16384 / 8);
    cr_expect_eq(srv_pool_reserve(&f.srv, 100), 100);
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 16384 / 8 + 100, "counted in the budget");
}

/* 8 KiB buffers and a 1 MiB budget: the worker's cache can hold every buffer here. */
static void setup_cache(void)
{
    fake_init(&f);
    f.cfg.buffer_size = 8192;
    f.cfg.max_buffer_bytes = 1u << 20;
    fake_start(&f);
}

TestSuite(cache, .init = setup_cache, .fini = teardown);

/* n connections echoing one after another: each echo completes before the next starts. */
static void echoes_one_after_another(struct fake_sock **s, int n)
{
    for (int i = 0; i < n; i++) {
        s[i] = hog("abcd");
        cr_assert(fake_step(s[i]), "the echo completes");
        cr_assert_eq(s[i]->op, FAKE_OP_RECV);
    }
}

/* n connections whose echoes were all in flight at once, then completed: n buffers came
 * back to the worker's cache. */
static void echoes_at_once(struct fake_sock **s, int n)
{
    for (int i = 0; i < n; i++)
        s[i] = hog("1234");
    for (int i = 0; i < n; i++)
        cr_assert(fake_step(s[i]), "the echo completes");
}

Test(cache, buffers_back_from_echoes_are_kept_for_the_next_ones)
{
    struct fake_sock *s[4], *held[4];
    echoes_one_after_another(s, 4);
    cr_expect_eq(f.srv.workers[0].nbuf_cache, 1, "one echo at a time: one buffer, reused");
    echoes_at_once(held, 4);
    cr_expect_eq(f.srv.workers[0].nbuf_cache, 4, "four echoes at once: four kept");
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 4 * 8192, "kept buffers stay charged");
}

Test(cache, buffers_idle_through_a_whole_tick_period_are_freed)
{
    struct fake_sock *held[4];
    echoes_at_once(held, 4);
    fake_tick(&f);
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 4 * 8192,
                 "taken during the period that ended: still kept");
    fake_tick(&f);
    cr_expect_eq(f.srv.workers[0].nbuf_cache, 0);
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 0, "a whole period unused: freed");
}

Test(cache, a_buffer_taken_in_the_tick_period_stays_kept)
{
    struct fake_sock *held[4];
    echoes_at_once(held, 4);
    fake_tick(&f);
    fake_client_send(held[0], "again", 5);
    cr_assert(fake_step(held[0]) && fake_step(held[0]), "one more echo in this period");
    cr_expect_eq(held[0]->echoed_len, 9);
    fake_tick(&f);
    cr_expect_eq(f.srv.workers[0].nbuf_cache, 1, "the one an echo used is kept");
    cr_expect_eq(atomic_load(&f.srv.buffer_bytes), 8192, "the other three are freed");
}

TestSuite(policy, .init = setup, .fini = teardown);

Test(policy, accept_retry_is_immediate_once_then_doubles_from_1ms_to_1s)
{
    cr_expect_eq(srv_accept_retry_ms(1), 0);
    cr_expect_eq(srv_accept_retry_ms(2), 1);
    cr_expect_eq(srv_accept_retry_ms(3), 2);
    cr_expect_eq(srv_accept_retry_ms(11), 512);
    cr_expect_eq(srv_accept_retry_ms(12), 1000);
    cr_expect_eq(srv_accept_retry_ms(1000), 1000);
}

Test(policy, srv_run_runs_every_worker_exactly_once)
{
    struct fake g;
    fake_init(&g);
    g.cfg.threads = 4;
    fake_start(&g);
    srv_run(&g.srv);
    for (int i = 0; i < 4; i++)
        cr_expect_eq(atomic_load(&g.worker_runs[i]), 1, "worker %d", i);
    cr_expect_eq(atomic_load(&g.worker_runs[4]), 0);
    fake_destroy(&g);
}
