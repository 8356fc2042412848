/* main.c - echoport, the server: parse, start the backend, serve, shut down. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "admin.h"
#include "backend.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/ep.h"
#include "core/server.h"
#include "core/stats.h"
#include "fault.h"
#include "net.h"

#ifdef _WIN32
#define EP_BACKEND bk_iocp
#else
#define EP_BACKEND bk_uring
#endif

static struct server *signalled_server;

#ifdef _WIN32
static volatile LONG stop_events;

/* Ctrl-C / Ctrl-Break: graceful shutdown, and a second one ends its drain at once (Wine
 * delivers SIGINT as CTRL_C_EVENT). Each event runs on a thread of its own. A console
 * close ends the process as soon as this returns, before any final stats line. */
static BOOL WINAPI on_console_event(DWORD event)
{
    (void)event;
    if (InterlockedIncrement(&stop_events) == 1)
        srv_request_stop(signalled_server);
    else
        srv_request_stop_now(signalled_server);
    return TRUE;
}

static void install_stop_handlers(struct server *s)
{
    signalled_server = s;
    SetConsoleCtrlHandler(on_console_event, TRUE);
}
#else
static volatile sig_atomic_t stop_signals;

/* SIGINT / SIGTERM: graceful shutdown, and a second one ends its drain at once. The
 * handler blocks both signals, so the two never interleave. */
static void on_stop_signal(int sig)
{
    (void)sig;
    if (stop_signals++ == 0)
        srv_request_stop(signalled_server);
    else
        srv_request_stop_now(signalled_server);
}

static void install_stop_handlers(struct server *s)
{
    struct sigaction sa = {0};
    signalled_server = s;
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}
#endif

/* The fault module's counter hook: every injected fault counts in the stats. */
static void count_fault(enum fault_kind kind)
{
    (void)kind;
    stats_add(faults, 1);
}

/* Activates the fault plan of the command line or environment; exits 2 when bad. */
static void enable_faults(const struct ep_config *cfg)
{
    struct fault_plan plan;
    char err[256];
    if (!cfg->faults)
        return;
    fault_set_counter(count_fault);
    stats_set_extra(fault_format_counts);
    if (fault_plan_parse(cfg->faults, &plan, err, sizeof(err))) {
        fprintf(stderr, "echoport: %s: %s\n", cfg->faults_origin, err);
        exit(2);
    }
    if (fault_enable(&plan, cfg->fault_log, err, sizeof(err))) {
        fprintf(stderr, "echoport: %s\n", err);
        exit(2);
    }
    ep_alloc_fail = fault_alloc_fails;
}

int main(int argc, char **argv)
{
    static struct ep_config cfg;
    static struct server srv;
    struct admin admin;
    char err[256], line[2048];

    switch (config_parse(&cfg, argc, argv, getenv("ECHOPORT_FAULTS"), stdout, err, sizeof(err))) {
    case CONFIG_EXIT:
        return 0;
    case CONFIG_ERROR:
        fprintf(stderr, "echoport: %s\n", err);
        return 2;
    case CONFIG_RUN:
        break;
    }
    enable_faults(&cfg);
    if (net_init() || srv_init(&srv, &cfg, &EP_BACKEND)) {
        fprintf(stderr, "echoport: cannot initialise: %s\n", net_last_error());
        return 1;
    }
    if (EP_BACKEND.start(&srv, err, sizeof(err))) {
        fprintf(stderr, "echoport: %s\n", err);
        return 1;
    }
    if (cfg.admin_port >= 0) {
        if (admin_start(&admin, &srv, (unsigned)cfg.admin_port, err, sizeof(err))) {
            fprintf(stderr, "echoport: %s\n", err);
            EP_BACKEND.destroy(&srv);
            return 1;
        }
        fprintf(stderr, "admin on 127.0.0.1:%u\n", admin.port);
        fflush(stderr);
    }
    install_stop_handlers(&srv);
    printf("listening on %s\n", srv.bound_addr);
    fflush(stdout);

    srv_run(&srv);

    if (cfg.admin_port >= 0)
        admin_stop(&admin);
    EP_BACKEND.destroy(&srv);
    stats_format(line, sizeof(line));
    printf("%s\n", line);
    fflush(stdout);
    fault_disable();
    srv_destroy(&srv);
    return 0;
}
