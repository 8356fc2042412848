/* conn_pool.h - a worker's connections, each in a fixed-size slot of a chunk the pool
 * allocates on demand (nginx keeps its connections in one array; this one grows).
 *
 * Why: an idle connection's memory is mostly its context, and a context of its own on
 * the heap pays an allocator header and rounding, and two list links so its worker can
 * find it. A slot pays neither: the pool walks its chunks' live bitmaps to visit them,
 * and a chunk is aligned to its size, so a slot's address gives its chunk, and the
 * chunk its pool (and so its worker). Emptied chunks go back, but for one kept while
 * the others are nearly full.
 *
 * Not thread-safe: the owner serialises every call (the worker's lock). */
#ifndef EP_CONN_POOL_H
#define EP_CONN_POOL_H

#include <stddef.h>
#include <stdint.h>

#define POOL_CHUNK_BYTES 65536u /* also the chunk's alignment */
#define POOL_MAX_SLOTS 1024u    /* slots a chunk can track; slots are at least 64 bytes */

struct conn;

struct pool_chunk {
    struct conn_pool *pool;
    struct pool_chunk *prev, *next;
    unsigned used;                      /* live slots */
    uint64_t live[POOL_MAX_SLOTS / 64]; /* bit i: slot i holds a connection */
    _Alignas(16) unsigned char slots[]; /* pool->per_chunk slots of pool->slot_size bytes */
};

struct conn_pool {
    size_t slot_size;          /* bytes of one connection with its backend state */
    unsigned per_chunk;        /* slots in one chunk */
    struct pool_chunk *chunks; /* newest first; a take looks for one with a free slot */
    size_t nchunks, live;
};

/* Sets up an empty pool for connections of slot_size bytes (sizeof(struct conn) plus
 * the backend's part); allocates nothing. */
void conn_pool_init(struct conn_pool *p, size_t slot_size);

/* Frees every chunk. A connection left in it is a leak, reported as one: its chunk
 * is dropped unfreed for valgrind and LeakSanitizer to find. */
void conn_pool_destroy(struct conn_pool *p);

/* A zeroed slot, NULL when no chunk could be allocated. */
struct conn *conn_pool_take(struct conn_pool *p);

/* Gives c's slot back; its chunk goes back too once empty, unless the other chunks
 * have fewer than half a chunk of free slots (it is the last, or they are nearly full). */
void conn_pool_put(struct conn_pool *p, struct conn *c);

/* Calls fn(c, arg) for every live connection of p; fn must not take or put. */
void conn_pool_for_each(struct conn_pool *p, void (*fn)(struct conn *, void *), void *arg);

/* The chunk holding c: chunks are aligned to their size. */
static inline struct pool_chunk *conn_pool_chunk_of(const struct conn *c)
{
    return (struct pool_chunk *)((uintptr_t)(const void *)c & ~(uintptr_t)(POOL_CHUNK_BYTES - 1));
}

/* The pool holding c. */
static inline struct conn_pool *conn_pool_of(const struct conn *c)
{
    return conn_pool_chunk_of(c)->pool;
}

#endif
