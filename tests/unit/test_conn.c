/* test_conn.c - the connection state machine, driven step by step through the fake backend. */
#include <criterion/criterion.h>
#include <string.h>

#include "core/alloc.h"
#include "core/ep.h"
#include "core/stats.h"
#include "fake_backend.h"

static struct fake f;

static void setup(void)
{
    fake_init(&f);
    f.cfg.buffer_size = 64;
    fake_start(&f);
}

static void teardown(void)
{
    ep_alloc_fail = NULL;
    fake_destroy(&f);
}

TestSuite(conn, .init = setup, .fini = teardown);

/* Fills buf with a recognisable pattern. */
static void pattern(unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)(i * 31 + 7);
}

Test(conn, posts_a_receive_on_accept_and_holds_no_buffer_while_idle)
{
    struct fake_sock *s = fake_accept(&f);
    cr_assert_not_null(s->conn);
    cr_expect_eq(s->op, FAKE_OP_RECV);
    cr_expect_null(s->conn->buf, "an idle connection must not hold a data buffer");
    cr_expect_eq(s->conn->pending, 1);
}

Test(conn, echoes_one_message_exactly)
{
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, "hello", 5);
    cr_assert(fake_step(s));
    cr_expect_eq(s->op, FAKE_OP_SEND, "data received must be sent back");
    cr_assert(fake_step(s));
    cr_expect_eq(s->op, FAKE_OP_RECV, "after the echo the connection reads again");
    cr_assert_eq(s->echoed_len, 5);
    cr_expect_arr_eq(s->echoed, "hello", 5);
    cr_expect_eq(stats_get(bytes_in), 5);
    cr_expect_eq(stats_get(bytes_out), 5);
}

Test(conn, releases_its_buffer_once_everything_was_echoed)
{
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, "hello", 5);
    cr_assert(fake_step(s));
    cr_expect_not_null(s->conn->buf, "the buffer holds the bytes owed");
    cr_assert(fake_step(s));
    cr_expect_eq(s->op, FAKE_OP_RECV);
    cr_expect_null(s->conn->buf, "an idle connection must not keep a data buffer");
}

Test(conn, echoes_a_payload_larger_than_its_buffer_in_order)
{
    unsigned char data[1000];
    pattern(data, sizeof(data));
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, data, sizeof(data));
    fake_client_shutdown(s);
    fake_run(&f, 10000);
    cr_assert_eq(s->echoed_len, sizeof(data));
    cr_expect_arr_eq(s->echoed, data, sizeof(data));
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(conn, finishes_short_sends)
{
    unsigned char data[50];
    pattern(data, sizeof(data));
    struct fake_sock *s = fake_accept(&f);
    s->send_limit = 3;
    fake_client_send(s, data, sizeof(data));
    cr_assert(fake_step(s));
    for (int i = 0; i < 16; i++) {
        cr_assert_eq(s->op, FAKE_OP_SEND, "the rest of a short send must be posted (step %d)", i);
        cr_assert(fake_step(s));
    }
    cr_assert_eq(s->op, FAKE_OP_SEND);
    cr_assert(fake_step(s)); /* the 17th send carries the last 2 bytes */
    cr_expect_eq(s->op, FAKE_OP_RECV);
    cr_assert_eq(s->echoed_len, sizeof(data));
    cr_expect_arr_eq(s->echoed, data, sizeof(data));
}

Test(conn, half_close_echoes_everything_then_closes)
{
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, "abc", 3);
    fake_client_shutdown(s);
    fake_run(&f, 100);
    cr_expect_eq(s->echoed_len, 3);
    cr_expect_null(s->conn, "the context is freed after the peer's EOF");
    cr_expect_eq(s->closes, 1);
}

Test(conn, zero_byte_receive_closes_without_sending)
{
    struct fake_sock *s = fake_accept(&f);
    fake_client_shutdown(s);
    cr_assert(fake_step(s));
    cr_expect_eq(s->echoed_len, 0);
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(conn, reset_during_receive_closes_and_frees_once)
{
    struct fake_sock *s = fake_accept(&f);
    fake_fail(s, EP_ECONNRESET);
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
    cr_expect_eq(stats_get(closed), 1);
}

Test(conn, reset_during_send_loses_nothing_already_sent_and_frees)
{
    struct fake_sock *s = fake_accept(&f);
    s->send_limit = 2;
    fake_client_send(s, "abcdef", 6);
    cr_assert(fake_step(s)); /* recv */
    cr_assert(fake_step(s)); /* 2 bytes sent */
    fake_fail(s, EP_ECONNRESET);
    cr_expect_eq(s->echoed_len, 2);
    cr_expect_arr_eq(s->echoed, "ab", 2);
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(conn, cancelled_completion_after_close_frees_exactly_once)
{
    struct fake_sock *s = fake_accept(&f);
    ep_mutex_lock(&s->conn->lock);
    conn_close_locked(s->conn, 0);
    ep_mutex_unlock(&s->conn->lock);
    cr_expect_eq(s->cancels, 1, "closing with an operation posted must cancel it");
    cr_expect_not_null(s->conn, "the context must live until the cancelled operation completes");
    cr_assert(fake_step(s));
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(conn, buffer_allocation_failure_closes_the_connection_cleanly)
{
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, "x", 1);
    cr_assert_null(s->conn->buf);
    ep_alloc_fail = fake_alloc_fails;
    cr_assert(fake_step(s));
    cr_expect_eq(s->echoed_len, 0);
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(conn, receives_never_exceed_the_configured_buffer)
{
    unsigned char data[200];
    pattern(data, sizeof(data));
    struct fake_sock *s = fake_accept(&f);
    fake_client_send(s, data, sizeof(data));
    cr_assert(fake_step(s));
    cr_expect_eq(s->send_len, 64, "one receive fills at most buffer_size bytes");
}
