/* Round-trip reference: blocking ping-pong of one SIZE-byte message over one
 * loopback TCP connection between two threads pinned to two CPUs (echo side on
 * the first, sender on the second). Every echo is checked. Prints msgs/s, or with
 * --json one object with the load generator's keys.
 * usage: pingpong [--size B] [--duration S] [--warmup S] [--cpus A,B] [--json] */
#include "peer_common.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/resource.h>
#include <time.h>

struct opts {
    size_t size;
    double duration, warmup;
    int cpu_echo, cpu_send, json;
};

static struct opts o = {64, 5.0, 0.5, 0, 1, 0};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
        fprintf(stderr, "pingpong: cannot pin to CPU %d\n", cpu);
}

static int io_full(int fd, char *p, size_t len, int writing)
{
    while (len > 0) {
        ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void *echo_thread(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    pin(o.cpu_echo);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        peer_die("accept");
    peer_nodelay(fd);
    char *buf = malloc(o.size);
    while (io_full(fd, buf, o.size, 0) == 0 && io_full(fd, buf, o.size, 1) == 0) {
    }
    free(buf);
    close(fd);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p)
{
    size_t i = (size_t)ceil(p * (double)n);
    return v[i == 0 ? 0 : (i > n ? n - 1 : i - 1)];
}

static void parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            o.json = 1;
            continue;
        }
        if (!v)
            goto usage;
        i++;
        if (strcmp(a, "--size") == 0)
            o.size = (size_t)atol(v);
        else if (strcmp(a, "--duration") == 0)
            o.duration = atof(v);
        else if (strcmp(a, "--warmup") == 0)
            o.warmup = atof(v);
        else if (strcmp(a, "--cpus") == 0 && sscanf(v, "%d,%d", &o.cpu_echo, &o.cpu_send) == 2)
            continue;
        else
            goto usage;
    }
    if (o.size > 0 && o.duration > 0)
        return;
usage:
    fprintf(stderr,
            "usage: pingpong [--size B] [--duration S] [--warmup S] [--cpus A,B] [--json]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    parse(argc, argv);
    int lfd = peer_listen_quiet(0, 0);
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &len);
    pthread_t th;
    pthread_create(&th, NULL, echo_thread, (void *)(intptr_t)lfd);
    pin(o.cpu_send);

    double t0 = now();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        peer_die("connect");
    double connect_ms = (now() - t0) * 1e3;
    peer_nodelay(fd);

    char *out = malloc(o.size), *in = malloc(o.size);
    for (size_t i = 0; i < o.size; i++)
        out[i] = (char)('a' + i % 26);
    size_t cap = 1 << 20, n = 0;
    double *lat = malloc(cap * sizeof *lat);
    long errors = 0;
    struct rusage ru0, ru1;
    double start = now() + o.warmup, end = start + o.duration, t = now();
    int measuring = 0;
    while (t < end) {
        if (!measuring && t >= start) {
            measuring = 1;
            getrusage(RUSAGE_THREAD, &ru0);
        }
        if (io_full(fd, out, o.size, 1) < 0 || io_full(fd, in, o.size, 0) < 0) {
            errors++;
            break;
        }
        double t2 = now();
        if (memcmp(in, out, o.size) != 0)
            errors++;
        if (measuring) {
            if (n == cap)
                lat = realloc(lat, (cap *= 2) * sizeof *lat);
            lat[n++] = (t2 - t) * 1e6;
        }
        t = t2;
    }
    getrusage(RUSAGE_THREAD, &ru1);
    shutdown(fd, SHUT_WR);
    pthread_join(th, NULL);
    close(fd);

    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec -
                          ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec -
                          ru0.ru_stime.tv_usec) *
                     1e-6;
    if (n == 0) {
        fprintf(stderr, "pingpong: no message measured\n");
        return 1;
    }
    qsort(lat, n, sizeof *lat, cmp_double);
    double rate = (double)n / o.duration;
    if (o.json)
        printf(
            "{\"conns\": 1, \"size\": %zu, \"pipeline\": 1, \"threads\": 1, \"duration_s\": %.3f, "
            "\"messages\": %zu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.3f, \"lat_us\": {\"p50\": "
            "%.2f, \"p90\": %.2f, \"p99\": %.2f, \"p999\": %.2f, \"max\": %.2f}, \"errors\": %ld, "
            "\"connect_ms\": %.3f, \"cpu_pct\": %.1f}\n",
            o.size, o.duration, n, rate, rate * (double)o.size / 1e6, pct(lat, n, 0.5),
            pct(lat, n, 0.9), pct(lat, n, 0.99), pct(lat, n, 0.999), lat[n - 1], errors, connect_ms,
            100.0 * cpu / o.duration);
    else
        printf("pingpong %zu B: %.0f msgs/s, p50 %.1f us, p99 %.1f us, errors %ld\n", o.size, rate,
               pct(lat, n, 0.5), pct(lat, n, 0.99), errors);
    free(lat);
    free(in);
    free(out);
    return errors ? 1 : 0;
}
