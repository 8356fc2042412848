/* config.c - command-line parsing: every bad option or value is a one-line error. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ep.h"
#include "platform.h"

static const char usage[] =
    "usage: echoport [options]\n"
    "  --listen HOST:PORT     address to serve (default 127.0.0.1:7007; [::1]:0 works; port 0 "
    "picks one)\n"
    "  --threads N            worker threads (default: one per CPU it may run on)\n"
    "  --accepts N            accepts kept posted (default 16)\n"
    "  --buffer-size BYTES    buffer per connection (default 16384)\n"
    "  --max-buffer-bytes N   bound on all data buffers; past it new data waits (default 1 GiB)\n"
    "  --max-conns N          refuse connections beyond N (default 0 = unlimited)\n"
    "  --idle-timeout SECONDS close connections idle this long (default 0 = off)\n"
    "  --drain-timeout MS     bound on graceful shutdown (default 3000)\n"
    "  --admin-port PORT      loopback admin port: 'stats', 'shutdown' (0 picks one)\n"
    "  --faults PLAN          fault plan, e.g. seed=7,partial_send=0.5 (or ECHOPORT_FAULTS)\n"
    "  --fault-log FILE       write one line per injected fault\n"
    "  --help, --version\n";

void config_defaults(struct ep_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    strcpy(cfg->listen_host, "127.0.0.1");
    cfg->listen_port = 7007;
    cfg->threads = 0;
    cfg->accepts = 16;
    cfg->buffer_size = 16384;
    cfg->max_buffer_bytes = (size_t)1 << 30;
    cfg->drain_timeout_ms = 3000;
    cfg->admin_port = -1;
}

/* Parses a whole decimal number in [min, max]; 0 or EP_EINVAL. */
static int parse_number(const char *text, unsigned long long min, unsigned long long max,
                        unsigned long long *out)
{
    if (!text || !*text || *text < '0' || *text > '9')
        return EP_EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || v < min || v > max)
        return EP_EINVAL;
    *out = v;
    return 0;
}

/* Whether s[0..len) is a dotted IPv4 address as inet_pton reads one: four decimal
 * parts 0-255 without leading zeros. */
static int is_ipv4(const char *s, size_t len)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0 && (i >= len || s[i++] != '.'))
            return 0;
        size_t start = i;
        unsigned v = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9' && v <= 255)
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == start || v > 255 || (s[start] == '0' && i - start > 1))
            return 0;
    }
    return i == len;
}

/* Whether c is a hexadecimal digit. */
static int is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Whether s[0..len) is an IPv6 literal as inet_pton reads one: eight groups of 1-4 hex
 * digits, or fewer with one "::" standing for at least one zero group; the last two
 * groups may be written as a dotted IPv4 address. */
static int is_ipv6(const char *s, size_t len)
{
    int groups = 0, gap = 0;
    size_t i = 0;
    if (len >= 2 && s[0] == ':' && s[1] == ':') {
        gap = 1;
        i = 2;
    }
    while (i < len) {
        size_t start = i;
        while (i < len && i - start <= 4 && is_hex(s[i]))
            i++;
        if (i < len && s[i] == '.') {
            if (!is_ipv4(s + start, len - start))
                return 0;
            groups += 2;
            break;
        }
        if (i == start || i - start > 4)
            return 0;
        groups++;
        if (i == len)
            break;
        if (s[i++] != ':' || i == len)
            return 0; /* not a separator, or a single trailing colon */
        if (s[i] == ':') {
            if (gap)
                return 0;
            gap = 1;
            i++;
        }
    }
    return gap ? groups <= 7 : groups == 8;
}

/* Whether the host part of --listen is acceptable: a bracketed one must be an IPv6
 * literal, one made only of digits and dots a dotted IPv4 address; names are left
 * to the resolver. */
static int host_is_valid(const char *host, size_t n, int bracketed)
{
    if (bracketed)
        return is_ipv6(host, n);
    for (size_t i = 0; i < n; i++)
        if ((host[i] < '0' || host[i] > '9') && host[i] != '.')
            return 1;
    return is_ipv4(host, n);
}

int config_parse_hostport(const char *text, char *host, size_t hostlen, unsigned *port, char *err,
                          size_t errlen)
{
    const char *start = text, *colon;
    int bracketed = text[0] == '[';
    size_t n;
    if (bracketed) {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':') {
            snprintf(err, errlen, "bad address '%s': expected [IPV6]:PORT", text);
            return EP_EINVAL;
        }
        start = text + 1;
        n = (size_t)(close - start);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon || strchr(text, ':') != colon) {
            snprintf(err, errlen, "bad address '%s': expected HOST:PORT", text);
            return EP_EINVAL;
        }
        n = (size_t)(colon - text);
    }
    unsigned long long p;
    if (n == 0 || n >= hostlen || parse_number(colon + 1, 0, 65535, &p)) {
        snprintf(err, errlen, "bad address '%s': expected HOST:PORT with PORT 0-65535", text);
        return EP_EINVAL;
    }
    if (!host_is_valid(start, n, bracketed)) {
        snprintf(err, errlen, "bad address '%s': '%.*s' is not a valid %s address", text, (int)n,
                 start, bracketed ? "IPv6" : "IPv4");
        return EP_EINVAL;
    }
    memcpy(host, start, n);
    host[n] = '\0';
    *port = (unsigned)p;
    return 0;
}

struct numeric_option {
    const char *name;
    unsigned long long min, max;
};

static const struct numeric_option numeric_options[] = {
    {"--threads", 1, 256},          {"--accepts", 1, 4096},
    {"--buffer-size", 1, 1u << 26}, {"--max-conns", 0, 100000000},
    {"--idle-timeout", 0, 86400},   {"--drain-timeout", 0, 600000},
    {"--admin-port", 0, 65535},     {"--max-buffer-bytes", 65536, 1ull << 40},
};

/* Stores a validated numeric option's value in cfg. */
static void store_number(struct ep_config *cfg, const char *name, unsigned long long v)
{
    if (!strcmp(name, "--threads"))
        cfg->threads = (int)v;
    else if (!strcmp(name, "--accepts"))
        cfg->accepts = (int)v;
    else if (!strcmp(name, "--buffer-size"))
        cfg->buffer_size = (size_t)v;
    else if (!strcmp(name, "--max-buffer-bytes"))
        cfg->max_buffer_bytes = (size_t)v;
    else if (!strcmp(name, "--max-conns"))
        cfg->max_conns = (unsigned long)v;
    else if (!strcmp(name, "--idle-timeout"))
        cfg->idle_timeout_s = (unsigned)v;
    else if (!strcmp(name, "--drain-timeout"))
        cfg->drain_timeout_ms = (unsigned)v;
    else
        cfg->admin_port = (int)v;
}

enum config_result config_parse(struct ep_config *cfg, int argc, char **argv,
                                const char *env_faults, FILE *out, char *err, size_t errlen)
{
    config_defaults(cfg);
    for (int i = 1; i < argc; i++) {
        char name[32];
        const char *arg = argv[i], *value = NULL;
        const char *eq = strchr(arg, '=');
        size_t namelen = eq ? (size_t)(eq - arg) : strlen(arg);
        if (strncmp(arg, "--", 2) != 0 || namelen >= sizeof(name)) {
            snprintf(err, errlen, "unknown argument '%s' (see --help)", arg);
            return CONFIG_ERROR;
        }
        memcpy(name, arg, namelen);
        name[namelen] = '\0';
        if (!strcmp(name, "--help") || !strcmp(name, "--version")) {
            if (eq) {
                snprintf(err, errlen, "option %s takes no value", name);
                return CONFIG_ERROR;
            }
            fputs(name[2] == 'h' ? usage : "echoport " EP_VERSION "\n", out);
            return CONFIG_EXIT;
        }
        const struct numeric_option *opt = NULL;
        for (size_t k = 0; k < EP_ARRAY_LEN(numeric_options); k++)
            if (!strcmp(name, numeric_options[k].name))
                opt = &numeric_options[k];
        int is_text =
            !strcmp(name, "--listen") || !strcmp(name, "--faults") || !strcmp(name, "--fault-log");
        if (!opt && !is_text) {
            snprintf(err, errlen, "unknown option '%s' (see --help)", name);
            return CONFIG_ERROR;
        }
        if (eq)
            value = eq + 1;
        else if (i + 1 < argc)
            value = argv[++i];
        else {
            snprintf(err, errlen, "option %s needs a value", name);
            return CONFIG_ERROR;
        }
        if (!strcmp(name, "--listen")) {
            if (config_parse_hostport(value, cfg->listen_host, sizeof(cfg->listen_host),
                                      &cfg->listen_port, err, errlen))
                return CONFIG_ERROR;
            continue;
        }
        if (!strcmp(name, "--faults") || !strcmp(name, "--fault-log")) {
            if (!*value) {
                snprintf(err, errlen, "option %s needs a non-empty value", name);
                return CONFIG_ERROR;
            }
            *(name[7] == '-' ? &cfg->fault_log : &cfg->faults) = value;
            continue;
        }
        unsigned long long v;
        if (parse_number(value, opt->min, opt->max, &v)) {
            snprintf(err, errlen,
                     "bad value '%s' for %s: expected a whole number from %llu to %llu", value,
                     name, opt->min, opt->max);
            return CONFIG_ERROR;
        }
        store_number(cfg, name, v);
    }
    if (cfg->buffer_size > cfg->max_buffer_bytes) {
        snprintf(err, errlen, "--buffer-size %zu exceeds --max-buffer-bytes %zu", cfg->buffer_size,
                 cfg->max_buffer_bytes);
        return CONFIG_ERROR;
    }
    cfg->faults_origin = "--faults";
    if (!cfg->faults && env_faults && *env_faults) {
        cfg->faults = env_faults;
        cfg->faults_origin = "ECHOPORT_FAULTS";
    }
    if (cfg->threads == 0)
        cfg->threads = ep_cpu_count();
    return CONFIG_RUN;
}
