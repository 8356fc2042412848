/* config.h - the server's command line, parsed and validated in one place. */
#ifndef EP_CONFIG_H
#define EP_CONFIG_H

#include <stddef.h>
#include <stdio.h>

struct ep_config {
    char listen_host[256];     /* literal IPv4/IPv6 address or host name, no brackets */
    unsigned listen_port;      /* 0 = let the system pick */
    int threads;               /* worker threads; 0 on input means one per usable CPU */
    int accepts;               /* pre-posted accepts (IOCP) */
    size_t buffer_size;        /* bytes per connection buffer */
    size_t max_buffer_bytes;   /* bound on all data buffers (held, cached, backend pools) */
    unsigned long max_conns;   /* 0 = unlimited */
    unsigned idle_timeout_s;   /* 0 = off */
    unsigned drain_timeout_ms; /* bound on graceful shutdown */
    int admin_port;            /* -1 = no admin port, 0 = pick one */
    const char *faults;        /* fault plan text, NULL = none */
    const char *faults_origin; /* where it came from: "--faults" or "ECHOPORT_FAULTS" */
    const char *fault_log;     /* file for the fault log, NULL = none */
};

enum config_result {
    CONFIG_RUN = 0,  /* start the server */
    CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
    CONFIG_ERROR = 2 /* err holds a one-line message: exit 2 */
};

/* Fills cfg with the defaults. */
void config_defaults(struct ep_config *cfg);

/* Parses argv (argv[0] is the program); `env_faults` is ECHOPORT_FAULTS (may be NULL),
 * used when --faults is absent. Help and version text go to `out`. */
enum config_result config_parse(struct ep_config *cfg, int argc, char **argv,
                                const char *env_faults, FILE *out, char *err, size_t errlen);

/* Splits "HOST:PORT", "[V6]:PORT" into host and port; 0 or EP_EINVAL with err set. */
int config_parse_hostport(const char *text, char *host, size_t hostlen, unsigned *port, char *err,
                          size_t errlen);

#endif
