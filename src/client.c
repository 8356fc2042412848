/* client.c - echoport-client: sends a payload to an echo server and verifies the
 * echo byte for byte over one non-blocking socket and select() (POSIX and Winsock
 * alike); --load hands over to the load generator in load.c (Linux). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/config.h"
#include "core/ep.h"
#include "core/platform.h"
#include "load.h"
#include "net.h"

#ifdef _WIN32
#define SEND_FLAGS 0
#define SHUT_SEND SD_SEND
#define file_seek _fseeki64
#define file_tell _ftelli64
typedef int io_len;
#else
#include <sys/select.h>
#include <unistd.h>
#define SEND_FLAGS MSG_NOSIGNAL /* a closed peer must be an error, not SIGPIPE */
#define SHUT_SEND SHUT_WR
#define file_seek fseeko
#define file_tell ftello
typedef size_t io_len;
#endif

#define IO_BUF (64 * 1024) /* bytes per recv, and per comparison */
#define DEFAULT_TARGET "127.0.0.1:7007"

static const char usage[] =
    "usage: echoport-client [--connect HOST:PORT] (--message TEXT | --file PATH | --bytes N)\n"
    "                       [options]\n"
    "       echoport-client --load [--connect HOST:PORT] (--duration S | --messages M) [options]\n"
    "Sends a payload to an echo server and checks that every byte comes back in order.\n"
    "  --connect HOST:PORT  server (default " DEFAULT_TARGET "; [::1]:PORT for IPv6)\n"
    "  --message TEXT       send TEXT\n"
    "  --file PATH          send the contents of PATH\n"
    "  --bytes N            send N pseudo-random bytes: byte i is byte i%8 (little-endian)\n"
    "                       of output i/8 (from 0) of splitmix64 seeded with --seed\n"
    "  --seed S             seed for --bytes and the --load pattern (default 1)\n"
    "  --chunk BYTES        bytes per send (default 65536)\n"
    "  --half-close         shut down the sending side after the payload and expect the\n"
    "                       server to close after the last echoed byte\n"
    "  --timeout SECONDS    give up after this long (default 30; with --load: this long\n"
    "                       after the run should have ended)\n"
    "  --repeat K           do it K times, one connection after another (default 1)\n"
    "Prints one line: 'ok bytes=N sent=N received=N time_ms=T' or what went wrong\n"
    "(byte offsets count from 0). Exit 0: echo exact; 1: echo or connection failed;\n"
    "2: bad command line.\n"
    "Load generator (Linux build only):\n"
    "  --load               run N connections, each keeping DEPTH messages in flight\n"
    "  --conns N            connections (default 1)\n"
    "  --size BYTES         bytes per message (default 64)\n"
    "  --pipeline DEPTH     messages in flight per connection (default 1)\n"
    "  --duration S         measure for S seconds (decimals allowed)\n"
    "  --messages M         or: stop after M messages in all\n"
    "  --warmup S           run S seconds unmeasured first (with --duration)\n"
    "  --threads T          event-loop threads (default 1)\n"
    "  --sources A,B,...    bind connections to these local addresses in turn, for\n"
    "                       more connections than one address has ports\n"
    "  --json               print one JSON object on stdout instead of the summary\n"
    "  --help, --version\n";

enum payload_kind { PAYLOAD_TEXT, PAYLOAD_FILE, PAYLOAD_RANDOM };

struct payload {
    enum payload_kind kind;
    const char *source; /* the text, or the file's path */
    uint64_t size;
    uint64_t seed;
};

/* A read position in the payload: one feeds the sender, one the checker. */
struct cursor {
    const struct payload *p;
    uint64_t pos;
    FILE *file;
};

struct options {
    const char *target; /* HOST:PORT as given */
    struct sockaddr_storage addr;
    int addrlen;
    int load;
    struct payload payload;
    int payloads; /* how many of --message, --file, --bytes were given */
    int seed_given;
    size_t chunk;
    int half_close;
    unsigned timeout_s;
    unsigned long repeat;
    int duration_given, warmup_given;
    const char *verify_only, *load_only; /* an option of each mode that was given */
    struct load_config lc;
};

/* One connection's echo: the socket, both payload cursors and the counters. */
struct echo {
    net_socket s;
    struct cursor out, in;
    uint64_t sent, received;
    uint8_t *wbuf, *rbuf, *ebuf;
    size_t wlen, woff;
    int shut, eof;
    int to_stderr; /* the failure is the client's own (connect, file), not the echo's */
    char line[400];
};

/* ---- sockets: the few calls that differ between Winsock and POSIX ---- */

/* The calling thread's last socket error code. */
static int sock_errno(void)
{
#ifdef _WIN32
    return WSAGetLastError();
#else
    return errno;
#endif
}

/* Whether err only means "not ready yet" on a non-blocking socket. */
static int sock_would_block(int err)
{
#ifdef _WIN32
    return err == WSAEWOULDBLOCK || err == WSAEINPROGRESS || err == WSAEINTR;
#else
    return err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS || err == EINTR;
#endif
}

/* Waits up to ms for s to be readable or (want_write) writable. A pending error
 * (Winsock reports a failed connect in the except set) counts as both. 0 or -1. */
static int sock_wait(net_socket s, int want_write, int64_t ms, int *readable, int *writable)
{
    fd_set r, w, x;
    FD_ZERO(&r);
    FD_ZERO(&w);
    FD_ZERO(&x);
    FD_SET(s, &r);
    FD_SET(s, &x);
    if (want_write)
        FD_SET(s, &w);
    struct timeval tv;
    tv.tv_sec = (long)(ms / 1000);
    tv.tv_usec = (long)(ms % 1000) * 1000;
    int n = select((int)s + 1, &r, &w, &x, &tv);
    if (n < 0 && !sock_would_block(sock_errno()))
        return -1;
    int failed = n > 0 && FD_ISSET(s, &x);
    *readable = n > 0 && (FD_ISSET(s, &r) || failed);
    *writable = n > 0 && (FD_ISSET(s, &w) || failed);
    return 0;
}

/* The pending error of s (SO_ERROR), 0 if none. */
static int sock_pending_error(net_socket s)
{
    int value = 0;
    socklen_t len = sizeof(value);
    if (getsockopt(s, SOL_SOCKET, SO_ERROR, (char *)&value, &len) != 0)
        return sock_errno();
    return value;
}

/* ---- the payload ---- */

/* Output k (counting from 0) of a splitmix64 generator seeded with seed. */
static uint64_t splitmix64_at(uint64_t seed, uint64_t k)
{
    uint64_t z = seed + (k + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Byte pos of the random payload of seed. */
static uint8_t random_byte(uint64_t seed, uint64_t pos)
{
    return (uint8_t)(splitmix64_at(seed, pos >> 3) >> ((pos & 7) * 8));
}

/* Fills buf with bytes [pos, pos + n) of the random payload of seed, a whole
 * generator output at a time where aligned. */
static void random_fill(uint64_t seed, uint64_t pos, uint8_t *buf, size_t n)
{
    size_t i = 0;
    for (; i < n && (pos & 7); i++, pos++)
        buf[i] = random_byte(seed, pos);
    for (; n - i >= 8; i += 8, pos += 8) {
        uint64_t word = splitmix64_at(seed, pos >> 3);
        for (int b = 0; b < 8; b++)
            buf[i + b] = (uint8_t)(word >> (b * 8));
    }
    for (; i < n; i++, pos++)
        buf[i] = random_byte(seed, pos);
}

/* Sets p->size for --message and --file; 0, or -1 with err set. */
static int payload_prepare(struct payload *p, char *err, size_t errlen)
{
    if (p->kind == PAYLOAD_TEXT)
        p->size = strlen(p->source);
    if (p->kind != PAYLOAD_FILE)
        return 0;
    FILE *f = fopen(p->source, "rb");
    long long size = -1;
    struct stat st;
    if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f); /* Linux opens a directory, then every read fails */
        f = NULL;
        errno = EISDIR;
    }
    if (f && file_seek(f, 0, SEEK_END) == 0)
        size = (long long)file_tell(f);
    if (size < 0)
        snprintf(err, errlen, "cannot read --file '%s': %s", p->source, strerror(errno));
    if (f)
        fclose(f);
    p->size = (uint64_t)size;
    return size < 0 ? -1 : 0;
}

/* Starts a cursor at the payload's first byte; 0, or -1 with err set. */
static int cursor_open(struct cursor *c, const struct payload *p, char *err, size_t errlen)
{
    c->p = p;
    c->pos = 0;
    c->file = p->kind == PAYLOAD_FILE ? fopen(p->source, "rb") : NULL;
    if (p->kind == PAYLOAD_FILE && !c->file) {
        snprintf(err, errlen, "cannot read %s: %s", p->source, strerror(errno));
        return -1;
    }
    return 0;
}

/* Copies the next n payload bytes into buf; 0, or -1 if the file came up short. */
static int cursor_read(struct cursor *c, uint8_t *buf, size_t n)
{
    if (c->p->kind == PAYLOAD_TEXT)
        memcpy(buf, c->p->source + c->pos, n);
    else if (c->p->kind == PAYLOAD_RANDOM)
        random_fill(c->p->seed, c->pos, buf, n);
    else if (fread(buf, 1, n, c->file) != n)
        return -1;
    c->pos += n;
    return 0;
}

/* Releases the cursor's file, if any. */
static void cursor_close(struct cursor *c)
{
    if (c->file)
        fclose(c->file);
    c->file = NULL;
}

/* ---- one echo ---- */

/* Connects to the target before deadline; the socket, or NET_INVALID with e->line set. */
static net_socket echo_connect(struct echo *e, const struct options *o, int64_t deadline)
{
    net_socket s = socket(o->addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
    int err = s == NET_INVALID ? sock_errno() : 0;
#ifndef _WIN32
    if (!err && s >= FD_SETSIZE)
        err = EMFILE; /* select() cannot watch it */
#endif
    if (!err && net_set_nonblocking(s))
        err = sock_errno();
    if (!err && connect(s, (const struct sockaddr *)&o->addr, o->addrlen) != 0)
        err = sock_errno();
    int ready = !err;
    while (!ready && sock_would_block(err)) { /* bounded by deadline */
        int64_t left = deadline - ep_now_ms();
        int r, w;
        if (left <= 0)
            break;
        if (sock_wait(s, 1, left, &r, &w))
            err = sock_errno();
        else if (w)
            ready = (err = sock_pending_error(s)) == 0;
    }
    if (ready)
        return s;
    if (sock_would_block(err))
        snprintf(e->line, sizeof(e->line), "cannot connect to %s: no answer in %u s", o->target,
                 o->timeout_s);
    else
        snprintf(e->line, sizeof(e->line), "cannot connect to %s: %s", o->target,
                 net_strerror(err));
    if (s != NET_INVALID)
        net_close(s);
    return NET_INVALID;
}

/* Checks received bytes against the payload; 0, or -1 with e->line set. */
static int echo_check(struct echo *e, const struct options *o, size_t n)
{
    uint64_t total = o->payload.size;
    size_t expected = total - e->received < n ? (size_t)(total - e->received) : n;
    if (cursor_read(&e->in, e->ebuf, expected)) {
        snprintf(e->line, sizeof(e->line), "%s changed while being sent", o->payload.source);
        e->to_stderr = 1;
        return -1;
    }
    if (memcmp(e->rbuf, e->ebuf, expected) != 0) {
        size_t i = 0;
        while (e->rbuf[i] == e->ebuf[i]) /* stops: the buffers differ */
            i++;
        snprintf(e->line, sizeof(e->line), "mismatch at byte %llu: expected 0x%02x got 0x%02x",
                 (unsigned long long)(e->received + i), e->ebuf[i], e->rbuf[i]);
        return -1;
    }
    e->received += expected;
    if (expected < n) {
        snprintf(e->line, sizeof(e->line),
                 "extra data: received %llu bytes or more after the %llu sent",
                 (unsigned long long)(n - expected), (unsigned long long)total);
        return -1;
    }
    return 0;
}

/* Reads what has arrived and checks it; 0 to go on, -1 with e->line set. */
static int echo_read(struct echo *e, const struct options *o)
{
    int n = recv(e->s, (char *)e->rbuf, IO_BUF, 0);
    if (n > 0)
        return echo_check(e, o, (size_t)n);
    if (n == 0) {
        e->eof = 1;
        if (e->received == o->payload.size)
            return 0;
        snprintf(e->line, sizeof(e->line),
                 "short echo: received %llu of %llu bytes (connection closed)",
                 (unsigned long long)e->received, (unsigned long long)o->payload.size);
        return -1;
    }
    int err = sock_errno();
    if (sock_would_block(err))
        return 0;
    snprintf(e->line, sizeof(e->line),
             "error: %s: receive failed: %s (received %llu of %llu bytes)", o->target,
             net_strerror(err), (unsigned long long)e->received,
             (unsigned long long)o->payload.size);
    return -1;
}

/* Sends the next piece of the payload; 0 to go on, -1 with e->line set. */
static int echo_write(struct echo *e, const struct options *o)
{
    if (e->woff == e->wlen) {
        uint64_t left = o->payload.size - e->sent;
        e->wlen = left < o->chunk ? (size_t)left : o->chunk;
        e->woff = 0;
        if (cursor_read(&e->out, e->wbuf, e->wlen)) {
            snprintf(e->line, sizeof(e->line), "%s changed while being sent", o->payload.source);
            e->to_stderr = 1;
            return -1;
        }
    }
    int n = send(e->s, (const char *)e->wbuf + e->woff, (io_len)(e->wlen - e->woff), SEND_FLAGS);
    if (n >= 0) {
        e->woff += (size_t)n;
        e->sent += (uint64_t)n;
        return 0;
    }
    int err = sock_errno();
    if (sock_would_block(err))
        return 0;
    snprintf(e->line, sizeof(e->line),
             "error: %s: send failed: %s (sent %llu, received %llu of %llu bytes)", o->target,
             net_strerror(err), (unsigned long long)e->sent, (unsigned long long)e->received,
             (unsigned long long)o->payload.size);
    return -1;
}

/* Writes the timeout verdict into e->line. */
static void echo_timeout(struct echo *e, const struct options *o)
{
    int waiting_eof = e->received == o->payload.size;
    char sent[48] = "";
    if (e->sent < o->payload.size)
        snprintf(sent, sizeof(sent), " (sent %llu)", (unsigned long long)e->sent);
    snprintf(e->line, sizeof(e->line), "timeout after %u s: received %llu of %llu bytes%s%s",
             o->timeout_s, (unsigned long long)e->received, (unsigned long long)o->payload.size,
             sent, waiting_eof ? ", then no end of stream after the half-close" : "");
}

/* Sends while reading until every byte is back (and, with --half-close, the end of
 * stream) or deadline; 0, or -1 with e->line set. */
static int echo_transfer(struct echo *e, const struct options *o, int64_t deadline)
{
    uint64_t total = o->payload.size;
    /* bounded by deadline */
    while (e->sent < total || e->received < total || (o->half_close && !e->eof)) {
        if (o->half_close && e->sent == total && !e->shut) {
            if (shutdown(e->s, SHUT_SEND) != 0) {
                snprintf(e->line, sizeof(e->line), "error: %s: shutdown failed: %s", o->target,
                         net_strerror(sock_errno()));
                return -1;
            }
            e->shut = 1;
        }
        int64_t left = deadline - ep_now_ms();
        int readable, writable;
        if (left <= 0) {
            echo_timeout(e, o);
            return -1;
        }
        if (sock_wait(e->s, e->sent < total, left, &readable, &writable)) {
            snprintf(e->line, sizeof(e->line), "error: %s: select failed: %s", o->target,
                     net_strerror(sock_errno()));
            return -1;
        }
        if (readable && echo_read(e, o))
            return -1;
        if (writable && e->sent < total && echo_write(e, o))
            return -1;
    }
    return 0;
}

/* One connection, one payload, verified; 0, or -1 with e->line set. */
static int echo_once(struct echo *e, const struct options *o)
{
    int64_t deadline = ep_now_ms() + (int64_t)o->timeout_s * 1000;
    int rc = -1;
    e->sent = e->received = 0;
    e->wlen = e->woff = 0;
    e->shut = e->eof = 0;
    e->to_stderr = 1;
    if (cursor_open(&e->out, &o->payload, e->line, sizeof(e->line)) == 0) {
        if (cursor_open(&e->in, &o->payload, e->line, sizeof(e->line)) == 0) {
            e->s = echo_connect(e, o, deadline);
            if (e->s != NET_INVALID) {
                e->to_stderr = 0;
                rc = echo_transfer(e, o, deadline);
                net_close(e->s);
            }
            cursor_close(&e->in);
        }
        cursor_close(&e->out);
    }
    return rc;
}

/* Verify mode: --repeat echoes in a row; prints the one summary line; exit status. */
static int run_verify(const struct options *o)
{
    struct echo e;
    memset(&e, 0, sizeof(e));
    e.wbuf = malloc(o->chunk);
    e.rbuf = malloc(IO_BUF);
    e.ebuf = malloc(IO_BUF);
    int status = 1;
    if (!e.wbuf || !e.rbuf || !e.ebuf) {
        fputs("echoport-client: out of memory\n", stderr);
        goto out;
    }
    int64_t start = ep_now_ms();
    unsigned long run = 0;
    while (run < o->repeat && echo_once(&e, o) == 0)
        run++;
    if (run < o->repeat) {
        char prefix[64] = "";
        if (o->repeat > 1)
            snprintf(prefix, sizeof(prefix), "run %lu of %lu: ", run + 1, o->repeat);
        fprintf(e.to_stderr ? stderr : stdout, "%s%s%s\n", e.to_stderr ? "echoport-client: " : "",
                prefix, e.line);
        goto out;
    }
    unsigned long long all = (unsigned long long)(o->payload.size * o->repeat);
    printf("ok bytes=%llu sent=%llu received=%llu time_ms=%lld",
           (unsigned long long)o->payload.size, all, all, (long long)(ep_now_ms() - start));
    if (o->repeat > 1)
        printf(" runs=%lu", o->repeat);
    printf("\n");
    status = 0;
out:
    free(e.wbuf);
    free(e.rbuf);
    free(e.ebuf);
    return status;
}

/* ---- the command line ---- */

enum opt_id {
    OPT_CONNECT,
    OPT_MESSAGE,
    OPT_FILE,
    OPT_BYTES,
    OPT_SEED,
    OPT_CHUNK,
    OPT_HALF_CLOSE,
    OPT_TIMEOUT,
    OPT_REPEAT,
    OPT_LOAD,
    OPT_CONNS,
    OPT_SIZE,
    OPT_PIPELINE,
    OPT_DURATION,
    OPT_MESSAGES,
    OPT_THREADS,
    OPT_SOURCES,
    OPT_JSON,
    OPT_WARMUP
};
enum opt_mode { MODE_ANY, MODE_VERIFY, MODE_LOAD };
enum opt_arg { ARG_NONE, ARG_TEXT, ARG_COUNT, ARG_SECONDS };

struct opt_spec {
    const char *name;
    enum opt_id id;
    enum opt_mode mode;
    enum opt_arg arg;
    uint64_t min, max; /* ARG_COUNT: the value's range; ARG_SECONDS: in milliseconds */
};

static const struct opt_spec opt_specs[] = {
    {"--connect", OPT_CONNECT, MODE_ANY, ARG_TEXT, 0, 0},
    {"--message", OPT_MESSAGE, MODE_VERIFY, ARG_TEXT, 0, 0},
    {"--file", OPT_FILE, MODE_VERIFY, ARG_TEXT, 0, 0},
    {"--bytes", OPT_BYTES, MODE_VERIFY, ARG_COUNT, 0, 1ull << 40},
    {"--seed", OPT_SEED, MODE_ANY, ARG_COUNT, 0, UINT64_MAX},
    {"--chunk", OPT_CHUNK, MODE_VERIFY, ARG_COUNT, 1, 16u << 20},
    {"--half-close", OPT_HALF_CLOSE, MODE_VERIFY, ARG_NONE, 0, 0},
    {"--timeout", OPT_TIMEOUT, MODE_ANY, ARG_COUNT, 1, 86400},
    {"--repeat", OPT_REPEAT, MODE_VERIFY, ARG_COUNT, 1, 1000000},
    {"--load", OPT_LOAD, MODE_LOAD, ARG_NONE, 0, 0},
    {"--conns", OPT_CONNS, MODE_LOAD, ARG_COUNT, 1, 1000000},
    {"--size", OPT_SIZE, MODE_LOAD, ARG_COUNT, 1, 16u << 20},
    {"--pipeline", OPT_PIPELINE, MODE_LOAD, ARG_COUNT, 1, 4096},
    {"--duration", OPT_DURATION, MODE_LOAD, ARG_SECONDS, 1, 86400000},
    {"--messages", OPT_MESSAGES, MODE_LOAD, ARG_COUNT, 1, 1000000000000000ull},
    {"--threads", OPT_THREADS, MODE_LOAD, ARG_COUNT, 1, 256},
    {"--sources", OPT_SOURCES, MODE_LOAD, ARG_TEXT, 0, 0},
    {"--json", OPT_JSON, MODE_LOAD, ARG_NONE, 0, 0},
    {"--warmup", OPT_WARMUP, MODE_LOAD, ARG_SECONDS, 0, 3600000},
};

enum parse_result { PARSE_RUN, PARSE_EXIT, PARSE_ERROR };

/* Parses a whole decimal count; 0 or -1. */
static int parse_count(const char *text, uint64_t *out)
{
    size_t len = strlen(text);
    if (len == 0 || strspn(text, "0123456789") != len)
        return -1;
    errno = 0;
    unsigned long long v = strtoull(text, NULL, 10);
    *out = v;
    return errno ? -1 : 0;
}

/* Parses decimal seconds ("2", "0.5") into milliseconds; 0 or -1. */
static int parse_seconds_ms(const char *text, uint64_t *ms)
{
    size_t len = strlen(text);
    if (len == 0 || len > 20 || strspn(text, "0123456789.") != len || !strpbrk(text, "0123456789"))
        return -1;
    char *end;
    double v = strtod(text, &end);
    if (*end || v > 1e12)
        return -1;
    *ms = (uint64_t)(v * 1000.0 + 0.5);
    return 0;
}

/* Parses and range-checks an option's value; 0, or -1 with err set. */
static int parse_value(const struct opt_spec *spec, const char *value, uint64_t *num, char *err,
                       size_t errlen)
{
    int bad = 0;
    if (spec->arg == ARG_COUNT)
        bad = parse_count(value, num) || *num < spec->min || *num > spec->max;
    else if (spec->arg == ARG_SECONDS)
        bad = parse_seconds_ms(value, num) || *num < spec->min || *num > spec->max;
    if (bad && spec->arg == ARG_COUNT)
        snprintf(err, errlen, "bad value '%s' for %s: expected a whole number from %llu to %llu",
                 value, spec->name, (unsigned long long)spec->min, (unsigned long long)spec->max);
    else if (bad)
        snprintf(err, errlen, "bad value '%s' for %s: expected seconds from %g to %g", value,
                 spec->name, (double)spec->min / 1000.0, (double)spec->max / 1000.0);
    return bad ? -1 : 0;
}

/* Stores a payload option, counting them so that only one is allowed. */
static void store_payload(struct options *o, enum payload_kind kind, const char *source,
                          uint64_t size)
{
    o->payloads++;
    o->payload.kind = kind;
    o->payload.source = source;
    o->payload.size = size;
}

/* Stores a parsed option in o. */
static void store_option(struct options *o, enum opt_id id, const char *text, uint64_t num)
{
    switch (id) {
    case OPT_CONNECT:
        o->target = text;
        break;
    case OPT_MESSAGE:
        store_payload(o, PAYLOAD_TEXT, text, 0);
        break;
    case OPT_FILE:
        store_payload(o, PAYLOAD_FILE, text, 0);
        break;
    case OPT_BYTES:
        store_payload(o, PAYLOAD_RANDOM, "random bytes", num);
        break;
    case OPT_SEED:
        o->payload.seed = o->lc.seed = num;
        o->seed_given = 1;
        break;
    case OPT_CHUNK:
        o->chunk = (size_t)num;
        break;
    case OPT_HALF_CLOSE:
        o->half_close = 1;
        break;
    case OPT_TIMEOUT:
        o->timeout_s = o->lc.timeout_s = (unsigned)num;
        break;
    case OPT_REPEAT:
        o->repeat = (unsigned long)num;
        break;
    case OPT_LOAD:
        o->load = 1;
        break;
    case OPT_CONNS:
        o->lc.conns = (unsigned long)num;
        break;
    case OPT_SIZE:
        o->lc.size = (size_t)num;
        break;
    case OPT_PIPELINE:
        o->lc.pipeline = (unsigned)num;
        break;
    case OPT_DURATION:
        o->lc.duration_s = (double)num / 1000.0;
        o->duration_given = 1;
        break;
    case OPT_MESSAGES:
        o->lc.messages = num;
        break;
    case OPT_THREADS:
        o->lc.threads = (unsigned)num;
        break;
    case OPT_SOURCES:
        o->lc.sources = text;
        break;
    case OPT_JSON:
        o->lc.json = 1;
        break;
    case OPT_WARMUP:
        o->lc.warmup_s = (double)num / 1000.0;
        o->warmup_given = 1;
        break;
    }
}

/* The defaults of every option. */
static void options_defaults(struct options *o)
{
    memset(o, 0, sizeof(*o));
    o->target = DEFAULT_TARGET;
    o->payload.seed = o->lc.seed = 1;
    o->chunk = 64 * 1024;
    o->timeout_s = o->lc.timeout_s = 30;
    o->repeat = 1;
    o->lc.conns = 1;
    o->lc.size = 64;
    o->lc.pipeline = 1;
    o->lc.threads = 1;
}

/* Checks the options fit together for the chosen mode; 0, or -1 with err set. */
static int check_mode(const struct options *o, char *err, size_t errlen)
{
    if (o->load && o->verify_only)
        snprintf(err, errlen, "option %s cannot be used with --load", o->verify_only);
    else if (!o->load && o->load_only)
        snprintf(err, errlen, "option %s needs --load", o->load_only);
    else if (o->load && o->duration_given == (o->lc.messages != 0))
        snprintf(err, errlen, "--load needs exactly one of --duration and --messages");
    else if (o->load && o->warmup_given && !o->duration_given)
        snprintf(err, errlen, "--warmup needs --duration");
    else if (o->load && o->lc.size * o->lc.pipeline > (256u << 20))
        snprintf(err, errlen,
                 "--size %zu with --pipeline %u is over 256 MiB in flight per "
                 "connection",
                 o->lc.size, o->lc.pipeline);
    else if (!o->load && o->payloads != 1)
        snprintf(err, errlen, "give exactly one of --message, --file and --bytes");
    else if (!o->load && o->seed_given && o->payload.kind != PAYLOAD_RANDOM)
        snprintf(err, errlen, "--seed needs --bytes or --load");
    else
        return 0;
    return -1;
}

/* Finds the spec of option name, or NULL. */
static const struct opt_spec *find_option(const char *name)
{
    for (size_t k = 0; k < EP_ARRAY_LEN(opt_specs); k++)
        if (!strcmp(name, opt_specs[k].name))
            return &opt_specs[k];
    return NULL;
}

/* Handles one "--name[=value]" argument at argv[*i] (taking the value from the next
 * argument if needed); PARSE_RUN to go on, or PARSE_EXIT / PARSE_ERROR. */
static enum parse_result parse_one(struct options *o, int argc, char **argv, int *i, char *err,
                                   size_t errlen)
{
    char name[32];
    const char *arg = argv[*i], *eq = strchr(arg, '='), *value = eq ? eq + 1 : NULL;
    size_t namelen = eq ? (size_t)(eq - arg) : strlen(arg);
    const struct opt_spec *spec = NULL;
    if (strncmp(arg, "--", 2) == 0 && namelen < sizeof(name)) {
        memcpy(name, arg, namelen);
        name[namelen] = '\0';
        spec = find_option(name);
        if (!strcmp(name, "--help") || !strcmp(name, "--version")) {
            if (eq) {
                snprintf(err, errlen, "option %s takes no value", name);
                return PARSE_ERROR;
            }
            fputs(name[2] == 'h' ? usage : "echoport-client " EP_VERSION "\n", stdout);
            return PARSE_EXIT;
        }
    }
    if (!spec) {
        snprintf(err, errlen, "unknown argument '%s' (see --help)", arg);
        return PARSE_ERROR;
    }
    if (spec->arg == ARG_NONE && eq) {
        snprintf(err, errlen, "option %s takes no value", spec->name);
        return PARSE_ERROR;
    }
    if (spec->arg != ARG_NONE && !eq) {
        if (*i + 1 >= argc) {
            snprintf(err, errlen, "option %s needs a value", spec->name);
            return PARSE_ERROR;
        }
        value = argv[++*i];
    }
    uint64_t num = 0;
    if (parse_value(spec, value, &num, err, errlen))
        return PARSE_ERROR;
    if (spec->mode == MODE_VERIFY)
        o->verify_only = spec->name;
    else if (spec->mode == MODE_LOAD && spec->id != OPT_LOAD)
        o->load_only = spec->name;
    store_option(o, spec->id, value, num);
    return PARSE_RUN;
}

/* Parses the command line into o; on PARSE_ERROR err holds a one-line message. */
static enum parse_result parse_args(struct options *o, int argc, char **argv, char *err,
                                    size_t errlen)
{
    options_defaults(o);
    for (int i = 1; i < argc; i++) {
        enum parse_result r = parse_one(o, argc, argv, &i, err, errlen);
        if (r != PARSE_RUN)
            return r;
    }
    if (check_mode(o, err, errlen) || (!o->load && payload_prepare(&o->payload, err, errlen)))
        return PARSE_ERROR;
    return PARSE_RUN;
}

/* Resolves --connect into o->addr; 0, or EP_EINVAL (bad text) / EP_EADDR with err set. */
static int resolve_target(struct options *o, char *err, size_t errlen)
{
    char host[256];
    unsigned port;
    if (config_parse_hostport(o->target, host, sizeof(host), &port, err, errlen))
        return EP_EINVAL;
    if (port == 0) {
        snprintf(err, errlen, "bad address '%s': port 0 cannot be connected to", o->target);
        return EP_EINVAL;
    }
    return net_resolve(host, port, &o->addr, &o->addrlen, err, errlen);
}

/* Starts the socket library and resolves --connect; 0, or the exit status after
 * printing why not. */
static int open_target(struct options *o)
{
    char err[512];
    if (net_init()) {
        fputs("echoport-client: cannot start the socket library\n", stderr);
        return 1;
    }
    int rc = resolve_target(o, err, sizeof(err));
    if (rc == EP_EINVAL)
        fprintf(stderr, "echoport-client: --connect: %s\n", err);
    else if (rc)
        fprintf(stderr, "echoport-client: cannot connect to %s: %s\n", o->target, err);
    return rc == 0 ? 0 : rc == EP_EINVAL ? 2 : 1;
}

/* Load mode: the Linux load generator, or a one-line refusal elsewhere. */
static int run_load(struct options *o)
{
#ifdef _WIN32
    (void)o;
    fputs("echoport-client: --load needs the Linux build\n", stderr);
    return 2;
#else
    int rc = open_target(o);
    if (rc)
        return rc;
    o->lc.dest = o->addr;
    o->lc.destlen = o->addrlen;
    snprintf(o->lc.dest_text, sizeof(o->lc.dest_text), "%s", o->target);
    return load_run(&o->lc);
#endif
}

int main(int argc, char **argv)
{
    struct options o;
    char err[512];
    enum parse_result r = parse_args(&o, argc, argv, err, sizeof(err));
    if (r != PARSE_RUN) {
        if (r == PARSE_ERROR)
            fprintf(stderr, "echoport-client: %s\n", err);
        return r == PARSE_EXIT ? 0 : 2;
    }
    if (o.load)
        return run_load(&o);
    int rc = open_target(&o);
    return rc ? rc : run_verify(&o);
}
