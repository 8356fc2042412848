/* admin.h - the loopback-only admin port: "stats" and "shutdown", one line each. */
#ifndef EP_ADMIN_H
#define EP_ADMIN_H

#include <stdatomic.h>
#include <stddef.h>

#include "core/platform.h"
#include "net.h"

struct server;

struct admin {
    struct server *srv;
    net_socket listener;
    unsigned port; /* the bound port, also when 0 was asked */
    atomic_int stop;
    ep_thread thread;
};

/* Listens on 127.0.0.1:port and serves commands on a thread. 0, or EP_E* with err set. */
int admin_start(struct admin *a, struct server *srv, unsigned port, char *err, size_t errlen);

/* Stops the admin thread and closes its socket. */
void admin_stop(struct admin *a);

#endif
