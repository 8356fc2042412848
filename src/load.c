/* load.c - the load generator behind `echoport-client --load` (Linux). Each thread
 * runs one edge-triggered epoll loop over its share of non-blocking connections;
 * each connection keeps --pipeline messages in flight, sends what it owes in one
 * send() and reads up to 64 KiB per recv(). Every echoed byte is compared with what
 * was sent and every round trip goes into a per-thread log-linear histogram.
 *
 * The bytes: connection c's stream byte p is pattern[(p + salt_c) % period], with a
 * random pattern of prime period, so a lost, repeated, reordered or crossed-over
 * piece of stream shows up as a mismatch, and both send() and the check read
 * straight from the pattern (it is stored with a copy of its head, so any window of
 * up to WRITE_MAX bytes is contiguous). */
#include "load.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/platform.h"

#define NS_PER_S 1000000000LL
#define READ_BUF (64 * 1024)   /* bytes per recv */
#define WRITE_MAX (256 * 1024) /* bytes per send; also the pattern's contiguous window */
/* connects in progress per thread: a burst beyond the server's accept queue only
 * turns into SYN retries, seconds long */
#define CONNECT_WINDOW 256
#define MAX_EVENTS 512
#define MAX_SOURCES 256
#define MAX_ERROR_LINES 5      /* errors described on stderr; the rest are only counted */
#define PERIOD 65521u          /* largest prime below 64 Ki */
#define PERIOD_ALT 65537u      /* used when PERIOD divides --size (messages would repeat) */
#define TICK_NS (NS_PER_S / 2) /* progress line refresh */
#define HIST_HALF 32           /* sub-buckets per power of two (~3 % resolution) */
#define HIST_BUCKETS ((64 - 5 + 1) * HIST_HALF) /* 5 = log2(HIST_HALF) */

enum conn_state { CONN_NEW, CONN_CONNECTING, CONN_READY, CONN_RUNNING, CONN_CLOSED };
enum err_kind { ERR_CONNECT, ERR_CLOSED, ERR_RESET, ERR_MISMATCH, ERR_TIMEOUT, ERR_KINDS };
static const char *const err_names[ERR_KINDS] = {"connect", "closed", "reset", "mismatch",
                                                 "timeout"};

struct conn {
    int fd;
    enum conn_state state;
    uint32_t id;    /* global ordinal: source address, quota, messages */
    uint32_t salt;  /* where this stream starts in the pattern */
    uint64_t quota; /* messages it may issue (UINT64_MAX: until the window ends) */
    uint64_t issued, completed;
    uint64_t sent, received; /* stream bytes */
    int64_t *stamps;         /* issue time of message k at [k % pipeline] */
};

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total, max;
};

struct run;

struct worker {
    struct run *run;
    ep_thread thread;
    int running; /* the thread was started */
    int epfd;
    struct conn *conns;
    size_t nconns, next_open, connecting, open;
    uint64_t connected; /* connections that completed their connect */
    int64_t *stamps;
    uint8_t *rbuf;
    uint64_t measured; /* messages completed inside the window */
    int64_t last_done; /* time of the latest completion */
    uint64_t errors[ERR_KINDS];
    _Atomic uint64_t progress, progress_errors; /* for the live line */
    struct hist hist;
};

struct run {
    const struct load_config *cfg;
    uint8_t *pattern;
    uint32_t period;
    struct sockaddr_storage sources[MAX_SOURCES];
    socklen_t sourcelens[MAX_SOURCES];
    unsigned nsources;
    struct worker *workers;
    unsigned nworkers;
    pthread_mutex_t lock; /* guards the counters below; cond signals their changes */
    pthread_cond_t cond;
    unsigned connected, finished;
    int started;
    int64_t t_begin, t_hard;  /* connecting starts; everything stops */
    int64_t cpu_begin;        /* process CPU time at t_begin */
    int64_t t_start;          /* traffic starts (set under lock, then read-only) */
    int64_t t_measure, t_end; /* the measured window */
    atomic_int error_lines;
    uint64_t shown_msgs; /* the progress line's last count and time (supervisor) */
    int64_t shown_t;
};

struct results {
    uint64_t connected, messages, errors[ERR_KINDS], errors_total;
    double duration_s, msgs_per_s, mb_per_s, connect_ms, cpu_pct;
    double lat_us[5]; /* p50, p90, p99, p99.9, max */
};

/* ---- small helpers ---- */

/* Monotonic time in nanoseconds. */
static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Milliseconds from now until deadline, rounded up, for epoll_wait. */
static int ms_until(int64_t deadline, int64_t now)
{
    int64_t ms = (deadline - now + 999999) / 1000000;
    return ms < 0 ? 0 : ms > 1000000000 ? 1000000000 : (int)ms;
}

/* Output k of a splitmix64 generator seeded with seed. */
static uint64_t splitmix64_at(uint64_t seed, uint64_t k)
{
    uint64_t z = seed + (k + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Where stream byte pos of c lives in the pattern (WRITE_MAX bytes readable there). */
static const uint8_t *pattern_at(const struct run *r, const struct conn *c, uint64_t pos)
{
    return r->pattern + (pos + c->salt) % r->period;
}

/* ---- the histogram: HdrHistogram's log-linear layout, values in ns ---- */

/* The bucket of v: exact below 2 * HIST_HALF, then HIST_HALF per power of two. */
static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_HALF)
        return (unsigned)v;
    unsigned shift = 63u - (unsigned)__builtin_clzll(v) - 5u;
    return shift * HIST_HALF + (unsigned)(v >> shift);
}

/* The largest value that falls in bucket i. */
static uint64_t hist_upper(unsigned i)
{
    if (i < 2 * HIST_HALF)
        return i;
    unsigned shift = i / HIST_HALF - 1;
    uint64_t sub = i - shift * HIST_HALF;
    return ((sub + 1) << shift) - 1;
}

/* Records one latency. */
static void hist_record(struct hist *h, int64_t ns)
{
    uint64_t v = ns > 0 ? (uint64_t)ns : 0;
    h->counts[hist_index(v)]++;
    h->total++;
    if (v > h->max)
        h->max = v;
}

/* Adds src's counts to dst. */
static void hist_merge(struct hist *dst, const struct hist *src)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    if (src->max > dst->max)
        dst->max = src->max;
}

/* The value at percentile pct (highest equivalent value, never above the max). */
static uint64_t hist_percentile(const struct hist *h, double pct)
{
    uint64_t want = (uint64_t)(pct / 100.0 * (double)h->total + 0.999999), seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS && h->total; i++) {
        seen += h->counts[i];
        if (seen >= want && seen > 0)
            return hist_upper(i) < h->max ? hist_upper(i) : h->max;
    }
    return h->max;
}

/* ---- one connection ---- */

/* Closes c (not an error) and updates the worker's counts. */
static void conn_close(struct worker *w, struct conn *c)
{
    if (c->state == CONN_CONNECTING)
        w->connecting--;
    if (c->state != CONN_NEW && c->state != CONN_CLOSED)
        w->open--;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = CONN_CLOSED;
}

/* Counts an error of kind, describes the first few on stderr and closes c. */
static void conn_fail(struct worker *w, struct conn *c, enum err_kind kind, const char *fmt, ...)
{
    w->errors[kind]++;
    atomic_fetch_add_explicit(&w->progress_errors, 1, memory_order_relaxed);
    if (atomic_fetch_add(&w->run->error_lines, 1) < MAX_ERROR_LINES) {
        char text[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        fprintf(stderr, "echoport-client: conn %u to %s: %s\n", c->id, w->run->cfg->dest_text,
                text);
    }
    conn_close(w, c);
}

/* Binds c to its source address, leaving the port to connect() so that every source
 * address has the whole ephemeral range towards the server; 0 or -1. */
static int conn_bind(const struct run *r, struct conn *c)
{
    unsigned k = c->id % r->nsources;
    int one = 1;
    /* an old kernel without the option still works, with one port per bind */
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    return bind(c->fd, (const struct sockaddr *)&r->sources[k], r->sourcelens[k]);
}

/* Marks c connected, waiting for the common start. */
static void conn_ready(struct worker *w, struct conn *c)
{
    c->state = CONN_READY;
    w->connecting--;
    w->connected++;
}

/* Starts c's non-blocking connect, registered once for every edge it will need. */
static void conn_open(struct worker *w, struct conn *c)
{
    const struct run *r = w->run;
    int one = 1;
    c->fd = socket(r->cfg->dest.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->state = CONN_CONNECTING;
    w->connecting++;
    w->open++;
    if (c->fd < 0) {
        conn_fail(w, c, ERR_CONNECT, "socket: %s", strerror(errno));
        return;
    }
    /* pipelined small messages must leave at once, not wait for an ACK (Nagle) */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (r->nsources && conn_bind(r, c)) {
        conn_fail(w, c, ERR_CONNECT, "bind to source %u: %s", c->id % r->nsources, strerror(errno));
    } else if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev)) {
        conn_fail(w, c, ERR_CONNECT, "epoll_ctl: %s", strerror(errno));
    } else if (connect(c->fd, (const struct sockaddr *)&r->cfg->dest, (socklen_t)r->cfg->destlen) ==
               0) {
        conn_ready(w, c);
    } else if (errno != EINPROGRESS) {
        conn_fail(w, c, ERR_CONNECT, "connect: %s", strerror(errno));
    }
}

/* Handles an event before the run starts: a connect finishing, or a ready
 * connection the server closed or wrote to unasked. */
static void conn_connect_event(struct worker *w, struct conn *c, uint32_t events)
{
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err || (events & (EPOLLERR | EPOLLHUP)))
            conn_fail(w, c, ERR_CONNECT, "connect: %s", strerror(err ? err : ECONNRESET));
        else if (events & EPOLLOUT)
            conn_ready(w, c);
    } else if (c->state == CONN_READY && (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))) {
        conn_fail(w, c, ERR_CLOSED, "closed (or sent data) before the run started");
    }
}

/* Writes the unsent part of the issued messages until done or the socket is full
 * (then, edge-triggered, EPOLLOUT reports the room). */
static void conn_flush(struct worker *w, struct conn *c)
{
    const struct run *r = w->run;
    uint64_t owed = c->issued * r->cfg->size;
    while (c->sent < owed) { /* each pass sends or returns: bounded by owed */
        size_t len = owed - c->sent < WRITE_MAX ? (size_t)(owed - c->sent) : WRITE_MAX;
        ssize_t n = send(c->fd, pattern_at(r, c, c->sent), len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            conn_fail(w, c, ERR_RESET, "send: %s", strerror(errno));
        if (n < 0)
            return;
        c->sent += (uint64_t)n;
        if ((size_t)n < len)
            return;
    }
}

/* Issues messages while the pipeline has room and the run allows, then sends what
 * is owed; closes c once nothing is in flight and nothing more may be issued. */
static void conn_pump(struct worker *w, struct conn *c, int64_t now)
{
    const struct run *r = w->run;
    unsigned depth = r->cfg->pipeline;
    if (now < r->t_end)
        while (c->issued < c->quota && c->issued - c->completed < depth) /* <= depth passes */
            c->stamps[c->issued++ % depth] = now;
    if (c->completed == c->issued)
        conn_close(w, c);
    else
        conn_flush(w, c);
}

/* Compares n received bytes with what c sent; 0, or -1 after failing c. */
static int conn_check(struct worker *w, struct conn *c, size_t n)
{
    const uint8_t *expect = pattern_at(w->run, c, c->received);
    size_t size = w->run->cfg->size;
    if (n > c->sent - c->received) {
        conn_fail(w, c, ERR_MISMATCH, "extra data: %zu bytes back with %llu in flight", n,
                  (unsigned long long)(c->sent - c->received));
        return -1;
    }
    if (memcmp(w->rbuf, expect, n) != 0) {
        size_t i = 0;
        while (w->rbuf[i] == expect[i]) /* stops: the buffers differ */
            i++;
        uint64_t at = c->received + i;
        conn_fail(w, c, ERR_MISMATCH,
                  "mismatch at stream byte %llu (message %llu, byte %llu): expected 0x%02x "
                  "got 0x%02x",
                  (unsigned long long)at, (unsigned long long)(at / size),
                  (unsigned long long)(at % size), expect[i], w->rbuf[i]);
        return -1;
    }
    c->received += n;
    return 0;
}

/* Times the messages whose last byte has come back, counting those in the window. */
static void conn_complete(struct worker *w, struct conn *c, int64_t now)
{
    const struct run *r = w->run;
    uint64_t done = c->received / r->cfg->size, before = c->completed;
    int measured = now >= r->t_measure && now < r->t_end;
    for (; c->completed < done; c->completed++) /* <= pipeline passes */
        if (measured)
            hist_record(&w->hist, now - c->stamps[c->completed % r->cfg->pipeline]);
    if (measured)
        w->measured += done - before;
    if (done > before)
        w->last_done = now;
    uint64_t p = atomic_load_explicit(&w->progress, memory_order_relaxed);
    atomic_store_explicit(&w->progress, p + (done - before), memory_order_relaxed);
}

/* Reads and checks everything that has arrived on c; *now becomes the read time. */
static void conn_read(struct worker *w, struct conn *c, int64_t *now)
{
    /* bounded: the echo never holds more than was sent, and nothing is sent here */
    while (c->state == CONN_RUNNING) {
        uint64_t inflight = c->sent - c->received;
        /* one byte more than owed is enough to catch a server that sends extra */
        size_t want = inflight < READ_BUF ? (size_t)inflight + 1 : READ_BUF;
        ssize_t n = recv(c->fd, w->rbuf, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            conn_fail(w, c, ERR_RESET, "receive: %s", strerror(errno));
        if (n == 0)
            conn_fail(w, c, ERR_CLOSED, "closed by the server with %llu of %llu bytes echoed",
                      (unsigned long long)c->received, (unsigned long long)c->sent);
        if (n <= 0)
            return;
        *now = now_ns();
        if (conn_check(w, c, (size_t)n))
            return;
        conn_complete(w, c, *now);
        if ((size_t)n < want)
            return; /* drained: edge-triggered epoll reports anything newer */
    }
}

/* Handles an event during the run: read what came, then issue and send. */
static void conn_event(struct worker *w, struct conn *c, uint32_t events)
{
    if (c->state != CONN_RUNNING)
        return;
    int64_t now = now_ns();
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
        conn_read(w, c, &now); /* errors and end of stream surface through recv */
    if (c->state == CONN_RUNNING)
        conn_pump(w, c, now);
}

/* ---- one worker thread ---- */

/* Opens the worker's connections, at most CONNECT_WINDOW at a time, until all are
 * connected or failed, or the hard deadline. */
static void worker_connect(struct worker *w)
{
    struct epoll_event events[MAX_EVENTS];
    while (w->next_open < w->nconns || w->connecting > 0) { /* bounded by t_hard */
        while (w->next_open < w->nconns && w->connecting < CONNECT_WINDOW)
            conn_open(w, &w->conns[w->next_open++]);
        int64_t now = now_ns();
        if (now >= w->run->t_hard)
            return;
        if (w->connecting == 0)
            continue; /* everything opened failed at once: open the next ones */
        int n = epoll_wait(w->epfd, events, MAX_EVENTS, ms_until(w->run->t_hard, now));
        for (int i = 0; i < n; i++)
            conn_connect_event(w, events[i].data.ptr, events[i].events);
    }
}

/* Reports the worker connected and waits until every worker has, so that all
 * connections start sending at the same moment. */
static void worker_sync_start(struct worker *w)
{
    struct run *r = w->run;
    pthread_mutex_lock(&r->lock);
    r->connected++;
    pthread_cond_broadcast(&r->cond);
    while (!r->started) /* the supervisor sets it once all started workers are here */
        pthread_cond_wait(&r->cond, &r->lock);
    pthread_mutex_unlock(&r->lock);
}

/* Runs the event loop until every connection is closed or the hard deadline. */
static void worker_loop(struct worker *w)
{
    struct epoll_event events[MAX_EVENTS];
    int64_t now = now_ns();
    for (size_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->state == CONN_READY) {
            c->state = CONN_RUNNING;
            conn_pump(w, c, now);
        }
    }
    while (w->open > 0 && (now = now_ns()) < w->run->t_hard) { /* bounded by t_hard */
        int n = epoll_wait(w->epfd, events, MAX_EVENTS, ms_until(w->run->t_hard, now));
        for (int i = 0; i < n; i++)
            conn_event(w, events[i].data.ptr, events[i].events);
    }
}

/* Fails every connection still open (or never opened) as timed out. */
static void worker_fail_rest(struct worker *w)
{
    for (size_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->state == CONN_NEW || c->state == CONN_CONNECTING)
            conn_fail(w, c, ERR_TIMEOUT, "not connected in time");
        else if (c->state != CONN_CLOSED)
            conn_fail(w, c, ERR_TIMEOUT, "no echo in time: %llu of %llu bytes back",
                      (unsigned long long)c->received, (unsigned long long)c->sent);
    }
}

/* The worker thread: connect, start together, run, clean up, report finished. */
static void worker_main(void *arg)
{
    struct worker *w = arg;
    struct run *r = w->run;
    worker_connect(w);
    worker_sync_start(w);
    worker_loop(w);
    worker_fail_rest(w);
    pthread_mutex_lock(&r->lock);
    r->finished++;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* ---- setting up ---- */

/* Parses --sources into r (same family as the server); 0, or -1 after printing why. */
static int parse_sources(struct run *r, const char *list)
{
    char item[256], err[256];
    for (const char *p = list;; p += strlen(item) + 1) { /* one comma-separated item a pass */
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof(item) || r->nsources == MAX_SOURCES) {
            fprintf(stderr,
                    "echoport-client: bad value '%s' for --sources: expected up to %d "
                    "addresses separated by commas\n",
                    list, MAX_SOURCES);
            return -1;
        }
        memcpy(item, p, n);
        item[n] = '\0';
        int len;
        if (net_resolve(item, 0, &r->sources[r->nsources], &len, err, sizeof(err))) {
            fprintf(stderr, "echoport-client: --sources: %s\n", err);
            return -1;
        }
        if (r->sources[r->nsources].ss_family != r->cfg->dest.ss_family) {
            fprintf(stderr,
                    "echoport-client: --sources: '%s' is not of the server's address "
                    "family\n",
                    item);
            return -1;
        }
        r->sourcelens[r->nsources++] = (socklen_t)len;
        if (p[n] == '\0')
            return 0;
    }
}

/* Raises the open-file limit as far as allowed; 0, or -1 after printing why it is
 * still too low for the connections. */
static int raise_file_limit(unsigned long conns)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0)
        return 0;
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
    getrlimit(RLIMIT_NOFILE, &lim);
    if (lim.rlim_cur != RLIM_INFINITY && conns + 16 > lim.rlim_cur) {
        fprintf(stderr,
                "echoport-client: --conns %lu needs more open files than the limit "
                "of %llu\n",
                conns, (unsigned long long)lim.rlim_cur);
        return -1;
    }
    return 0;
}

/* Builds the shared byte pattern; 0 or -1. */
static int make_pattern(struct run *r)
{
    r->period = r->cfg->size % PERIOD == 0 ? PERIOD_ALT : PERIOD;
    r->pattern = malloc((size_t)r->period + WRITE_MAX);
    if (!r->pattern)
        return -1;
    for (uint32_t i = 0; i < r->period; i++)
        r->pattern[i] = (uint8_t)splitmix64_at(r->cfg->seed, i);
    for (uint32_t i = r->period; i < r->period + WRITE_MAX; i++)
        r->pattern[i] = r->pattern[i - r->period];
    return 0;
}

/* Gives worker k its connections (ids k, k + T, ...) and buffers; 0 or -1. */
static int setup_worker(struct run *r, unsigned k)
{
    const struct load_config *cfg = r->cfg;
    struct worker *w = &r->workers[k];
    w->run = r;
    atomic_init(&w->progress, 0);
    atomic_init(&w->progress_errors, 0);
    w->nconns = (cfg->conns - k + r->nworkers - 1) / r->nworkers;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->conns = calloc(w->nconns, sizeof(*w->conns));
    w->stamps = calloc(w->nconns * cfg->pipeline, sizeof(*w->stamps));
    w->rbuf = malloc(READ_BUF);
    if (w->epfd < 0 || !w->conns || !w->stamps || !w->rbuf)
        return -1;
    for (size_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        uint64_t id = k + i * r->nworkers;
        c->fd = -1;
        c->id = (uint32_t)id;
        c->salt = (uint32_t)(splitmix64_at(cfg->seed ^ 0x5a17, id) % r->period);
        c->stamps = w->stamps + i * cfg->pipeline;
        c->quota = !cfg->messages ? UINT64_MAX
                                  : cfg->messages / cfg->conns + (id < cfg->messages % cfg->conns);
    }
    return 0;
}

/* Frees everything setup allocated. */
static void teardown(struct run *r)
{
    for (unsigned k = 0; r->workers && k < r->nworkers; k++) {
        struct worker *w = &r->workers[k];
        if (w->run && w->epfd >= 0) /* set up, and its epoll_create1 succeeded */
            close(w->epfd);
        free(w->conns);
        free(w->stamps);
        free(w->rbuf);
    }
    free(r->workers);
    free(r->pattern);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
}

/* Prepares r for cfg; 0, or an exit status after printing why not. */
static int setup(struct run *r, const struct load_config *cfg)
{
    pthread_condattr_t attr;
    memset(r, 0, sizeof(*r));
    r->cfg = cfg;
    r->nworkers = cfg->threads < cfg->conns ? cfg->threads : (unsigned)cfg->conns;
    atomic_init(&r->error_lines, 0);
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* timed waits use now_ns() */
    pthread_cond_init(&r->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (cfg->sources && parse_sources(r, cfg->sources))
        return 2;
    if (raise_file_limit(cfg->conns))
        return 1;
    r->workers = calloc(r->nworkers, sizeof(*r->workers));
    int failed = !r->workers || make_pattern(r);
    for (unsigned k = 0; !failed && k < r->nworkers; k++)
        failed = setup_worker(r, k);
    if (failed) {
        fprintf(stderr, "echoport-client: cannot set up the load: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

/* ---- supervising: start, progress, CPU, results ---- */

/* Process CPU time (user + system) in nanoseconds. */
static int64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * NS_PER_S +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* Waits until every started worker has connected, then fixes the run's clock. */
static void start_together(struct run *r, unsigned started)
{
    const struct load_config *cfg = r->cfg;
    pthread_mutex_lock(&r->lock);
    while (r->connected < started) /* each worker gets here by t_hard */
        pthread_cond_wait(&r->cond, &r->lock);
    r->t_start = now_ns();
    r->t_measure = r->t_start + (int64_t)(cfg->warmup_s * NS_PER_S);
    r->t_end = cfg->messages ? INT64_MAX : r->t_measure + (int64_t)(cfg->duration_s * NS_PER_S);
    r->started = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Redraws the live progress line on stderr. */
static void show_progress(struct run *r, int64_t now)
{
    uint64_t msgs = 0, errors = 0;
    for (unsigned k = 0; k < r->nworkers; k++) {
        msgs += atomic_load_explicit(&r->workers[k].progress, memory_order_relaxed);
        errors += atomic_load_explicit(&r->workers[k].progress_errors, memory_order_relaxed);
    }
    double dt = (double)(now - r->shown_t) / NS_PER_S;
    fprintf(stderr, "\r%7.1f s %12llu msgs %12.0f msgs/s %6llu errors\033[K",
            (double)(now - r->t_start) / NS_PER_S, (unsigned long long)msgs,
            dt > 0 ? (double)(msgs - r->shown_msgs) / dt : 0.0, (unsigned long long)errors);
    r->shown_msgs = msgs;
    r->shown_t = now;
}

/* Waits until deadline or until every worker has finished (then returns 1),
 * refreshing the progress line every TICK_NS when tty. */
static int wait_until(struct run *r, unsigned started, int64_t deadline, int tty)
{
    int all_done = 0;
    pthread_mutex_lock(&r->lock);
    while (!(all_done = r->finished == started) && now_ns() < deadline) { /* bounded */
        int64_t tick = r->shown_t + TICK_NS;
        int64_t next = tty && tick < deadline ? tick : deadline;
        struct timespec ts = {.tv_sec = next / NS_PER_S, .tv_nsec = next % NS_PER_S};
        pthread_cond_timedwait(&r->cond, &r->lock, &ts);
        if (tty && now_ns() >= tick)
            show_progress(r, now_ns());
    }
    pthread_mutex_unlock(&r->lock);
    return all_done;
}

/* Follows the run from the common start to the last worker's end: progress, and the
 * CPU time spent inside the measured window (the whole run if it ended before the
 * window began); returns that CPU in percent. */
static double supervise(struct run *r, unsigned started)
{
    int tty = isatty(STDERR_FILENO);
    int64_t wall0 = r->t_begin, cpu0 = r->cpu_begin;
    start_together(r, started);
    r->shown_t = r->t_start;
    if (!wait_until(r, started, r->t_measure, tty)) {
        wall0 = now_ns();
        cpu0 = cpu_ns();
    }
    wait_until(r, started, r->t_end, tty);
    int64_t wall1 = now_ns(), cpu1 = cpu_ns();
    wait_until(r, started, r->t_hard + 5 * NS_PER_S, tty); /* workers stop by t_hard */
    if (tty)
        fputs("\r\033[K", stderr);
    return wall1 > wall0 ? 100.0 * (double)(cpu1 - cpu0) / (double)(wall1 - wall0) : 0.0;
}

/* Merges the workers' counts into res. */
static void gather(struct run *r, struct results *res)
{
    static struct hist all;
    int64_t last = r->t_start;
    for (unsigned k = 0; k < r->nworkers; k++) {
        struct worker *w = &r->workers[k];
        hist_merge(&all, &w->hist);
        res->messages += w->measured;
        res->connected += w->connected;
        for (int e = 0; e < ERR_KINDS; e++)
            res->errors[e] += w->errors[e];
        if (w->last_done > last)
            last = w->last_done;
    }
    for (int e = 0; e < ERR_KINDS; e++)
        res->errors_total += res->errors[e];
    res->duration_s =
        r->cfg->messages ? (double)(last - r->t_start) / NS_PER_S : r->cfg->duration_s;
    double secs = res->duration_s > 0 ? res->duration_s : 1e-9;
    res->msgs_per_s = (double)res->messages / secs;
    res->mb_per_s = (double)res->messages * (double)r->cfg->size / secs / 1e6;
    res->connect_ms = (double)(r->t_start - r->t_begin) / 1e6;
    static const double pcts[4] = {50, 90, 99, 99.9};
    for (int i = 0; i < 4; i++)
        res->lat_us[i] = (double)hist_percentile(&all, pcts[i]) / 1000.0;
    res->lat_us[4] = (double)all.max / 1000.0;
}

/* Prints the human summary to out. */
static void print_summary(FILE *out, const struct run *r, const struct results *res)
{
    const struct load_config *cfg = r->cfg;
    fprintf(out, "load: %lu conns x %zu B, pipeline %u, %u thread%s, %s\n", cfg->conns, cfg->size,
            cfg->pipeline, r->nworkers, r->nworkers == 1 ? "" : "s", cfg->dest_text);
    fprintf(out, "  messages  %llu in %.3f s: %.1f msgs/s, %.3f MB/s\n",
            (unsigned long long)res->messages, res->duration_s, res->msgs_per_s, res->mb_per_s);
    fprintf(out, "  latency   p50 %.1f us, p90 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us\n",
            res->lat_us[0], res->lat_us[1], res->lat_us[2], res->lat_us[3], res->lat_us[4]);
    fprintf(out, "  connect   %llu of %lu conns in %.1f ms\n", (unsigned long long)res->connected,
            cfg->conns, res->connect_ms);
    fprintf(out, "  errors    %llu", (unsigned long long)res->errors_total);
    for (int e = 0; e < ERR_KINDS; e++)
        fprintf(out, "%s%s %llu", e ? ", " : " (", err_names[e],
                (unsigned long long)res->errors[e]);
    fprintf(out, ")\n  cpu       %.1f %% of one core (client, measured window)\n", res->cpu_pct);
}

/* Prints the one-object JSON result on stdout. */
static void print_json(const struct run *r, const struct results *res)
{
    const struct load_config *cfg = r->cfg;
    printf("{\"conns\":%lu,\"size\":%zu,\"pipeline\":%u,\"threads\":%u,\"duration_s\":%.3f,"
           "\"messages\":%llu,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,\"lat_us\":{\"p50\":%.1f,"
           "\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f},\"errors\":%llu,"
           "\"connect_ms\":%.3f,\"cpu_pct\":%.1f}\n",
           cfg->conns, cfg->size, cfg->pipeline, r->nworkers, res->duration_s,
           (unsigned long long)res->messages, res->msgs_per_s, res->mb_per_s, res->lat_us[0],
           res->lat_us[1], res->lat_us[2], res->lat_us[3], res->lat_us[4],
           (unsigned long long)res->errors_total, res->connect_ms, res->cpu_pct);
}

/* Starts the workers; returns how many started (those that did not have their
 * connections counted as connect errors). */
static unsigned start_workers(struct run *r)
{
    unsigned started = 0;
    for (unsigned k = 0; k < r->nworkers; k++) {
        struct worker *w = &r->workers[k];
        w->running = ep_thread_start(&w->thread, worker_main, w) == 0;
        if (w->running) {
            started++;
            continue;
        }
        w->errors[ERR_CONNECT] += w->nconns;
        fprintf(stderr, "echoport-client: cannot start load thread %u\n", k);
    }
    return started;
}

int load_run(const struct load_config *cfg)
{
    static struct run r;
    int rc = setup(&r, cfg);
    if (rc == 0) {
        struct results res;
        memset(&res, 0, sizeof(res));
        r.t_begin = now_ns();
        r.cpu_begin = cpu_ns();
        r.t_hard =
            r.t_begin + (int64_t)((cfg->warmup_s + cfg->duration_s + cfg->timeout_s) * NS_PER_S);
        unsigned started = start_workers(&r);
        res.cpu_pct = supervise(&r, started);
        for (unsigned k = 0; k < r.nworkers; k++)
            if (r.workers[k].running)
                ep_thread_join(r.workers[k].thread);
        gather(&r, &res);
        if (cfg->json)
            print_json(&r, &res);
        print_summary(cfg->json ? stderr : stdout, &r, &res);
        rc = res.errors_total ? 1 : 0;
    }
    teardown(&r);
    return rc;
}
