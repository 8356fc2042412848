/* The connection pool: zeroed fixed-size slots, found again from their address, visited
 * by the tick, reused before a new chunk, chunks given back once empty. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "conn.h"
#include "conn_pool.h"

#define BK_BYTES 56 /* a backend part the size of the IOCP one */

static struct conn_pool pool;
static struct conn *taken[2048]; /* what a test took and has not put, for the teardown */
static unsigned ntaken;

static void setup(void)
{
    conn_pool_init(&pool, sizeof(struct conn) + BK_BYTES);
    ntaken = 0;
}

/* Puts back what the test left: a pool destroyed with live slots leaks them on purpose. */
static void teardown(void)
{
    for (unsigned i = 0; i < ntaken; i++)
        if (taken[i])
            conn_pool_put(&pool, taken[i]);
    cr_expect_eq(pool.live, 0);
    conn_pool_destroy(&pool);
}

/* A slot from the pool, remembered for the teardown. */
static struct conn *take(void)
{
    struct conn *c = conn_pool_take(&pool);
    cr_assert(c, "take %u", ntaken);
    cr_assert_lt(ntaken, sizeof(taken) / sizeof(taken[0]));
    taken[ntaken++] = c;
    return c;
}

/* Gives c back before the teardown. */
static void put(struct conn *c)
{
    for (unsigned i = 0; i < ntaken; i++)
        if (taken[i] == c)
            taken[i] = NULL;
    conn_pool_put(&pool, c);
}

TestSuite(conn_pool, .init = setup, .fini = teardown);

/* Whether all n bytes at p are zero. */
static int all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

Test(conn_pool, a_slot_is_the_connection_and_its_backend_part_with_no_header)
{
    cr_assert_geq(pool.slot_size, sizeof(struct conn) + BK_BYTES);
    cr_assert_lt(pool.slot_size, sizeof(struct conn) + BK_BYTES + _Alignof(struct conn));
    cr_assert_eq(pool.per_chunk,
                 (POOL_CHUNK_BYTES - offsetof(struct pool_chunk, slots)) / pool.slot_size);
    struct conn *a = take(), *b = take();
    cr_expect_eq((size_t)((unsigned char *)b - (unsigned char *)a), pool.slot_size);
    cr_expect_eq((uintptr_t)(void *)a->bk % _Alignof(uint64_t), 0);
}

Test(conn_pool, a_taken_slot_is_zeroed_even_after_a_previous_tenant)
{
    struct conn *c = take();
    cr_expect(all_zero(c, pool.slot_size));
    memset(c, 0xa5, pool.slot_size);
    put(c);
    struct conn *again = take();
    cr_expect_eq(again, c, "the freed slot is reused before any other");
    cr_expect(all_zero(again, pool.slot_size));
}

Test(conn_pool, every_slot_finds_its_pool_from_its_address_in_every_chunk)
{
    unsigned n = pool.per_chunk * 2 + 3;
    for (unsigned i = 0; i < n; i++) {
        struct conn *c = take();
        cr_assert_eq(conn_pool_of(c), &pool, "slot %u", i);
    }
    cr_expect_eq(pool.nchunks, 3);
    cr_expect_eq(pool.live, n);
}

/* conn_pool_for_each callback: counts the visits of each connection in its id. */
static void count_visit(struct conn *c, void *arg)
{
    c->id++;
    (*(unsigned *)arg)++;
}

Test(conn_pool, for_each_visits_every_live_connection_once_and_no_freed_one)
{
    enum { N = 1500 };
    static struct conn *cs[N];
    for (unsigned i = 0; i < N; i++)
        cs[i] = take();
    for (unsigned i = 0; i < N; i += 3)
        put(cs[i]);
    unsigned visits = 0;
    conn_pool_for_each(&pool, count_visit, &visits);
    cr_expect_eq(visits, N - (N + 2) / 3);
    for (unsigned i = 0; i < N; i++)
        if (i % 3)
            cr_expect_eq(cs[i]->id, 1, "connection %u visited %llu times", i,
                         (unsigned long long)cs[i]->id);
}

Test(conn_pool, an_emptied_chunk_is_given_back_once_the_others_have_room)
{
    unsigned n = pool.per_chunk + 1;
    for (unsigned i = 0; i < n; i++)
        take();
    cr_assert_eq(pool.nchunks, 2);
    put(taken[n - 1]); /* the second chunk's only slot: the first is full */
    cr_expect_eq(pool.nchunks, 2, "kept: the next connection would need it again");
    take();
    put(taken[n]);
    cr_expect_eq(pool.nchunks, 2, "a connection coming and going allocates no chunk");
    for (unsigned i = 0; i < pool.per_chunk / 2; i++)
        put(taken[i]);
    take();
    put(taken[n + 1]); /* empties a chunk again: the other has half a chunk free now */
    cr_expect_eq(pool.nchunks, 1);
    for (unsigned i = pool.per_chunk / 2; i + 1 < n; i++)
        put(taken[i]);
    cr_expect_eq(pool.nchunks, 1, "the last chunk stays for the next connection");
    cr_expect_eq(pool.live, 0);
}

Test(conn_pool, a_full_chunk_is_passed_over_for_one_with_a_free_slot)
{
    unsigned n = pool.per_chunk * 2;
    for (unsigned i = 0; i < n; i++)
        take();
    struct conn *fifth = taken[5];
    put(fifth); /* a slot in the first chunk, now behind a full one */
    cr_expect_eq(take(), fifth);
    cr_expect_eq(pool.nchunks, 2);
}
