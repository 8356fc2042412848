/* conn_pool.c - fixed-size connection slots in size-aligned chunks (conn_pool.h). */
#include "conn_pool.h"

#include <string.h>

#include "conn.h"
#include "platform.h"

/* A freed slot is poisoned under AddressSanitizer and is a freed block of a memcheck
 * memory pool under valgrind, so a use after free of a connection is still caught
 * although its memory stays in the pool. */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ASAN 1
#endif
#endif
#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
#define poison(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define poison(p, n) ((void)(p), (void)(n))
#define unpoison(p, n) ((void)(p), (void)(n))
#endif
#if !defined(_WIN32) && defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define POOL_VALGRIND 1
#endif
#endif
#ifndef POOL_VALGRIND
#define VALGRIND_CREATE_MEMPOOL(pool, rz, zeroed) ((void)(pool))
#define VALGRIND_DESTROY_MEMPOOL(pool) ((void)(pool))
#define VALGRIND_MEMPOOL_ALLOC(pool, p, n) ((void)(pool), (void)(p), (void)(n))
#define VALGRIND_MEMPOOL_FREE(pool, p) ((void)(pool), (void)(p))
#define VALGRIND_MAKE_MEM_NOACCESS(p, n) ((void)(p), (void)(n))
#endif

#define SLOT_ALIGN _Alignof(struct conn)

void conn_pool_init(struct conn_pool *p, size_t slot_size)
{
    memset(p, 0, sizeof(*p));
    p->slot_size = (slot_size + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
    size_t n = (POOL_CHUNK_BYTES - offsetof(struct pool_chunk, slots)) / p->slot_size;
    p->per_chunk = n > POOL_MAX_SLOTS ? POOL_MAX_SLOTS : (unsigned)n;
    VALGRIND_CREATE_MEMPOOL(p, 0, 0);
}

/* Bytes of a chunk's slots. */
static size_t slots_bytes(const struct conn_pool *p)
{
    return (size_t)p->per_chunk * p->slot_size;
}

/* Slot i of chunk k. */
static unsigned char *slot(struct conn_pool *p, struct pool_chunk *k, unsigned i)
{
    return k->slots + (size_t)i * p->slot_size;
}

/* Adds an empty chunk in front of p's list; NULL when out of memory. */
static struct pool_chunk *chunk_new(struct conn_pool *p)
{
    struct pool_chunk *k = ep_chunk_alloc(POOL_CHUNK_BYTES);
    if (!k)
        return NULL;
    k->pool = p;
    k->next = p->chunks;
    if (p->chunks)
        p->chunks->prev = k;
    p->chunks = k;
    p->nchunks++;
    poison(k->slots, slots_bytes(p));
    VALGRIND_MAKE_MEM_NOACCESS(k->slots, slots_bytes(p));
    return k;
}

/* Unlinks and frees chunk k. */
static void chunk_free(struct conn_pool *p, struct pool_chunk *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        p->chunks = k->next;
    if (k->next)
        k->next->prev = k->prev;
    p->nchunks--;
    unpoison(k->slots, slots_bytes(p));
    ep_chunk_free(k);
}

void conn_pool_destroy(struct conn_pool *p)
{
    /* A connection still here leaked: its chunk is left allocated and unreferenced,
     * so valgrind and LeakSanitizer report it as they would a leaked malloc. */
    if (p->live == 0)
        while (p->chunks)
            chunk_free(p, p->chunks);
    p->chunks = NULL;
    p->nchunks = p->live = 0;
    VALGRIND_DESTROY_MEMPOOL(p);
}

/* The first free slot of chunk k, which has one. */
static unsigned first_free(const struct conn_pool *p, const struct pool_chunk *k)
{
    unsigned i = 0;
    for (unsigned w = 0; i < p->per_chunk; w++, i = w * 64) {
        uint64_t avail = ~k->live[w];
        if (avail)
            return i + (unsigned)__builtin_ctzll(avail);
    }
    return p->per_chunk;
}

struct conn *conn_pool_take(struct conn_pool *p)
{
    struct pool_chunk *k = p->chunks;
    while (k && k->used == p->per_chunk)
        k = k->next;
    if (!k && !(k = chunk_new(p)))
        return NULL;
    unsigned i = first_free(p, k);
    k->live[i / 64] |= (uint64_t)1 << (i % 64);
    k->used++;
    p->live++;
    unsigned char *c = slot(p, k, i);
    unpoison(c, p->slot_size);
    VALGRIND_MEMPOOL_ALLOC(p, c, p->slot_size);
    memset(c, 0, p->slot_size);
    return (struct conn *)(void *)c;
}

/* Free slots the other chunks would have if an empty one went back. An emptied chunk
 * only goes back when they have half a chunk's worth, so connections coming and going
 * at a chunk's boundary do not allocate and free a chunk each time. */
static size_t slack_without(const struct conn_pool *p)
{
    return (p->nchunks - 1) * p->per_chunk - p->live;
}

void conn_pool_put(struct conn_pool *p, struct conn *c)
{
    struct pool_chunk *k = conn_pool_chunk_of(c);
    unsigned i = (unsigned)(((unsigned char *)c - k->slots) / p->slot_size);
    k->live[i / 64] &= ~((uint64_t)1 << (i % 64));
    k->used--;
    p->live--;
    poison(c, p->slot_size);
    VALGRIND_MEMPOOL_FREE(p, c);
    if (k->used == 0 && slack_without(p) >= p->per_chunk / 2)
        chunk_free(p, k);
}

void conn_pool_for_each(struct conn_pool *p, void (*fn)(struct conn *, void *), void *arg)
{
    for (struct pool_chunk *k = p->chunks; k; k = k->next) {
        for (unsigned w = 0; w * 64 < p->per_chunk; w++) {
            for (uint64_t bits = k->live[w]; bits; bits &= bits - 1) {
                unsigned i = w * 64 + (unsigned)__builtin_ctzll(bits);
                fn((struct conn *)(void *)slot(p, k, i), arg);
            }
        }
    }
}
