/* admin.h - the loopback-only admin port: "stats", "shutdown" and "ping", one line each.
 * One thread serves every admin client at once, each within a total deadline. */
#ifndef EP_ADMIN_H
#define EP_ADMIN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/platform.h"
#include "net.h"

struct server;
struct admin_client;

struct admin {
    struct server *srv;
    net_socket listener;
    unsigned port; /* the bound port, also when 0 was asked */
    atomic_int stop;
    atomic_int ready; /* the admin thread has its descriptor table and its reserve */
    ep_thread thread;
    struct admin_client *clients; /* ADMIN_CLIENTS_MAX slots, oldest first */
    int nclients;
    int64_t accept_retry_ms; /* after a failed accept, poll the listener again from then */
    net_socket reserve;      /* a descriptor held back for an admin client when none is left
                              * (the admin thread's own: opened and closed there) */
};

/* Listens on 127.0.0.1:port and serves commands on a thread. 0, or EP_E* with err set. */
int admin_start(struct admin *a, struct server *srv, unsigned port, char *err, size_t errlen);

/* Stops the admin thread (within ~100 ms), closes its clients and its socket. */
void admin_stop(struct admin *a);

#endif
