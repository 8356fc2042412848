/* load.h - echoport-client's load generator (Linux only): many non-blocking
 * connections on per-thread epoll loops, pipelined messages, every echoed byte
 * verified, round-trip latency in a log-linear histogram. */
#ifndef EP_LOAD_H
#define EP_LOAD_H

#include <stddef.h>
#include <stdint.h>

#include "net.h"

struct load_config {
    struct sockaddr_storage dest; /* the echo server */
    int destlen;
    char dest_text[300]; /* dest as the user wrote it, for messages */
    unsigned long conns; /* connections, opened before the clock starts */
    size_t size;         /* bytes per message */
    unsigned pipeline;   /* messages in flight per connection */
    double duration_s;   /* measured window; 0 when messages bounds the run */
    uint64_t messages;   /* total messages; 0 when duration bounds the run */
    double warmup_s;     /* unmeasured run before the window (duration mode) */
    unsigned timeout_s;  /* hard stop this long after the run should end */
    unsigned threads;    /* event-loop threads */
    const char *sources; /* comma-separated local addresses, or NULL */
    uint64_t seed;       /* seeds the byte pattern */
    int json;            /* one JSON object on stdout instead of the summary */
};

/* Runs the load and prints the results; returns the exit status: 0 when no
 * error, 1 on any connection error or mismatch, 2 on a bad --sources list. */
int load_run(const struct load_config *cfg);

#endif
