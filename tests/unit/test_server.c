/* test_server.c - the server's registry, limits, idle timeout and graceful shutdown. */
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
}

static void teardown(void)
{
    ep_alloc_fail = NULL;
    fake_destroy(&f);
}

TestSuite(server, .init = setup, .fini = teardown);

Test(server, refuses_connections_beyond_max_conns_and_closes_their_sockets)
{
    f.cfg.max_conns = 2;
    fake_start(&f);
    struct fake_sock *a = fake_accept(&f), *b = fake_accept(&f), *c = fake_accept(&f);
    cr_expect_not_null(a->conn);
    cr_expect_not_null(b->conn);
    cr_expect_null(c->conn, "the third connection exceeds --max-conns 2");
    cr_expect_eq(c->closes, 1);
    cr_expect_eq(stats_get(refused), 1);
    fake_client_shutdown(a);
    fake_run(&f, 10);
    struct fake_sock *d = fake_accept(&f);
    cr_expect_not_null(d->conn, "a freed slot can be used again");
}

Test(server, stop_closes_idle_connections_and_lets_workers_finish)
{
    fake_start(&f);
    struct fake_sock *a = fake_accept(&f), *b = fake_accept(&f);
    cr_expect_not(srv_worker_done(&f.srv, 0));
    srv_request_stop(&f.srv);
    cr_expect_eq(f.wakes, 1);
    fake_tick(&f);
    cr_expect_eq(f.stop_accepting_calls, 1);
    cr_expect_eq(a->cancels, 1);
    cr_expect_eq(b->cancels, 1);
    fake_run(&f, 10);
    cr_expect(srv_worker_done(&f.srv, 0));
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(server, stop_lets_an_echo_in_flight_finish_before_closing)
{
    fake_start(&f);
    struct fake_sock *a = fake_accept(&f);
    a->send_limit = 2;
    fake_client_send(a, "hello", 5);
    cr_assert(fake_step(a)); /* received, send posted */
    srv_request_stop(&f.srv);
    fake_tick(&f);
    cr_expect_eq(a->cancels, 0, "a connection still owing bytes is not cut off");
    fake_run(&f, 10);
    cr_expect_eq(a->echoed_len, 5);
    cr_expect(srv_worker_done(&f.srv, 0));
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(server, stop_gives_up_on_a_stuck_echo_at_the_drain_deadline)
{
    f.cfg.drain_timeout_ms = 0;
    fake_start(&f);
    struct fake_sock *a = fake_accept(&f);
    fake_client_send(a, "hello", 5);
    cr_assert(fake_step(a)); /* send posted; the client never reads */
    srv_request_stop(&f.srv);
    fake_tick(&f);
    cr_expect_eq(a->cancels, 1);
    fake_run(&f, 10);
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
}

Test(server, refuses_new_connections_while_stopping)
{
    fake_start(&f);
    srv_request_stop(&f.srv);
    struct fake_sock *a = fake_accept(&f);
    cr_expect_null(a->conn);
    cr_expect_eq(a->closes, 1);
}

Test(server, idle_timeout_closes_a_quiet_connection_only)
{
    f.cfg.idle_timeout_s = 1;
    fake_start(&f);
    struct fake_sock *quiet = fake_accept(&f), *busy = fake_accept(&f);
    quiet->conn->last_active_ms -= 1500; /* as if 1.5 s went by without traffic */
    fake_tick(&f);
    cr_expect_eq(quiet->cancels, 1);
    cr_expect_eq(busy->cancels, 0);
    fake_run(&f, 10);
    cr_expect_null(quiet->conn);
    cr_expect_not_null(busy->conn);
}

Test(server, idle_timeout_spares_a_connection_active_after_the_tick_read_the_clock)
{
    f.cfg.idle_timeout_s = 1;
    fake_start(&f);
    struct fake_sock *fresh = fake_accept(&f);
    /* another worker's completion touched it after this tick's clock reading */
    fresh->conn->last_active_ms += 50;
    fake_tick(&f);
    cr_expect_eq(fresh->cancels, 0, "a connection active 'in the future' is not idle");
    fake_run(&f, 10);
    cr_expect_not_null(fresh->conn);
}

/* Records the connections srv_for_each_conn hands over. */
struct visits {
    struct conn *seen[8];
    int n;
};

/* srv_for_each_conn's callback: note c. */
static void visit(struct conn *c, void *arg)
{
    struct visits *v = arg;
    if (v->n < 8)
        v->seen[v->n] = c;
    v->n++;
}

Test(server, for_each_conn_visits_every_live_connection_of_the_worker_once)
{
    fake_start(&f);
    struct fake_sock *a = fake_accept(&f), *b = fake_accept(&f), *c = fake_accept(&f);
    fake_client_shutdown(b);
    fake_run(&f, 10);
    cr_assert_null(b->conn, "the client that half-closed is freed");
    struct visits v = {{0}, 0};
    srv_for_each_conn(&f.srv, 0, visit, &v);
    cr_assert_eq(v.n, 2, "two live connections, %d visits", v.n);
    int saw_a = 0, saw_c = 0;
    for (int i = 0; i < v.n; i++) {
        saw_a += v.seen[i] == a->conn;
        saw_c += v.seen[i] == c->conn;
    }
    cr_assert(saw_a == 1 && saw_c == 1, "each live connection is visited once");
}

Test(server, context_allocation_failure_refuses_the_socket)
{
    fake_start(&f);
    ep_alloc_fail = fake_alloc_fails;
    struct fake_sock *a = fake_accept(&f);
    cr_expect_null(a->conn);
    cr_expect_null(fake_check_cleanup(&f), "%s", fake_check_cleanup(&f));
    ep_alloc_fail = NULL;
    cr_expect_not_null(fake_accept(&f)->conn, "the server keeps accepting after the failure");
}

Test(server, stats_line_has_every_required_key)
{
    fake_start(&f);
    char line[1024];
    stats_format(line, sizeof(line));
    const char *keys[] = {
        "accepted=",       "closed=",         "active=",    "bytes_in=", "bytes_out=",
        "sockets_opened=", "sockets_closed=", "ctx_alloc=", "ctx_free=", "faults="};
    cr_expect(strncmp(line, "stats ", 6) == 0, "%s", line);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        cr_expect(strstr(line, keys[i]) != NULL, "missing %s in '%s'", keys[i], line);
}
