/* alloc.h - the core's allocator hook: every context and buffer allocation asks it
 * first, so a fault plan can fail it (site "alloc"). */
#ifndef EP_ALLOC_H
#define EP_ALLOC_H

#include <stddef.h>
#include <stdint.h>

/* Decides whether allocation `op` for connection `conn` fails; NULL = never. */
typedef int (*ep_alloc_fail_fn)(uint64_t conn, uint64_t op);
extern ep_alloc_fail_fn ep_alloc_fail;

/* Nonzero unless the hook fails allocation `op` of connection `conn`. */
int ep_alloc_allowed(uint64_t conn, uint64_t op);

#endif
