/* core_int.h - what conn.c and server.c share and the backends never see. */
#ifndef EP_CORE_INT_H
#define EP_CORE_INT_H

#include <stddef.h>

#include "conn.h"

/* Removes and frees a connection whose last operation completed. */
void srv_conn_free(struct conn *c);

/* A data buffer for c within the buffer budget: a full one (cfg->buffer_size, from the
 * worker's cache or the allocator) while the budget allows, else a small one from the
 * budget's reserve, else NULL with c->wants_buffer set (the budget is spent: the
 * connection waits). NULL without wants_buffer when allocation fails or the alloc
 * fault site says so. *cap receives the buffer's size. */
void *srv_buffer_get(struct conn *c, size_t *cap);

/* Gives back a buffer of `cap` bytes that srv_buffer_get returned; wakes the workers
 * when connections are waiting for budget. */
void srv_buffer_put(struct conn *c, void *buf, size_t cap);

/* Charges the budget for the full-size buffer a lent one stands in for: 1 if the
 * full-size tier has room (as srv_buffer_get would give one), else 0. */
int srv_buffer_charge(struct conn *c);

/* Gives back what srv_buffer_charge took; wakes the workers as srv_buffer_put does. */
void srv_buffer_uncharge(struct conn *c);

/* Gives c's data buffer back where it came from (the backend that lent it, or the
 * budget) and forgets it. */
void conn_buffer_release(struct conn *c);

/* Queues c, whose receive found the budget spent, on its worker's parked list; its
 * receive is posted again by srv_tick once budget is free. c->lock held. */
void srv_park(struct conn *c);

/* Posts the receive of a connection taken off the parked list. */
void conn_resume(struct conn *c);

/* Claims the free of a closing connection with nothing posted: 1 if the caller must
 * call srv_conn_free. Lock held. */
int conn_claim_free(struct conn *c);

#endif
