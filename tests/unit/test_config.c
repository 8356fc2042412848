/* test_config.c - the command line: defaults, every option, and one-line errors. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <sched.h>
#endif

#include "core/config.h"

static struct ep_config cfg;
static char err[256];

/* Parses a NULL-terminated argument list after the program name. */
static enum config_result parse(const char *env_faults, const char **args)
{
    char *argv[32] = {"echoport"};
    int argc = 1;
    while (args[argc - 1])
        argv[argc] = (char *)args[argc - 1], argc++;
    err[0] = '\0';
    FILE *out = fopen(
#ifdef _WIN32
        "NUL",
#else
        "/dev/null",
#endif
        "w");
    enum config_result r = config_parse(&cfg, argc, argv, env_faults, out, err, sizeof(err));
    fclose(out);
    return r;
}

/* Restricts this (forked, per-test) process to the first CPU it may run on. */
static void run_on_one_cpu(void)
{
#ifdef _WIN32
    DWORD_PTR mine = 0, system = 0;
    cr_assert(GetProcessAffinityMask(GetCurrentProcess(), &mine, &system) && mine);
    cr_assert(SetProcessAffinityMask(GetCurrentProcess(), mine & (~mine + 1)));
#else
    cpu_set_t set, one;
    cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
    CPU_ZERO(&one);
    for (int i = 0; i < CPU_SETSIZE; i++) {
        if (CPU_ISSET(i, &set)) {
            CPU_SET(i, &one);
            break;
        }
    }
    cr_assert_eq(sched_setaffinity(0, sizeof(one), &one), 0);
#endif
}

Test(config, threads_default_to_the_cpus_the_process_may_run_on)
{
    run_on_one_cpu(); /* as `taskset -c 0 echoport` or `start /affinity 1 echoport` */
    const char *args[] = {NULL};
    cr_assert_eq(parse(NULL, args), CONFIG_RUN);
    cr_expect_eq(cfg.threads, 1, "one worker per CPU the process may run on, not per CPU online");
}

Test(config, defaults_listen_on_loopback_7007_with_16_accepts_and_16k_buffers)
{
    const char *args[] = {NULL};
    cr_assert_eq(parse(NULL, args), CONFIG_RUN);
    cr_expect_str_eq(cfg.listen_host, "127.0.0.1");
    cr_expect_eq(cfg.listen_port, 7007);
    cr_expect_eq(cfg.accepts, 16);
    cr_expect_eq(cfg.buffer_size, 16384);
    cr_expect_geq(cfg.threads, 1, "threads default to the CPU count");
    cr_expect_eq(cfg.admin_port, -1);
    cr_expect_eq(cfg.idle_timeout_s, 0);
    cr_expect_eq(cfg.max_conns, 0);
}

Test(config, accepts_every_option_in_both_spellings)
{
    const char *args[] = {
        "--listen",           "[::1]:0",     "--threads=3", "--accepts",      "4",
        "--buffer-size=4096", "--max-conns", "10",          "--idle-timeout", "5",
        "--admin-port=0",     "--faults",    "seed=1",      "--fault-log",    "f.log",
        "--drain-timeout",    "250",         NULL};
    cr_assert_eq(parse(NULL, args), CONFIG_RUN, "%s", err);
    cr_expect_str_eq(cfg.listen_host, "::1");
    cr_expect_eq(cfg.listen_port, 0);
    cr_expect_eq(cfg.threads, 3);
    cr_expect_eq(cfg.accepts, 4);
    cr_expect_eq(cfg.buffer_size, 4096);
    cr_expect_eq(cfg.max_conns, 10);
    cr_expect_eq(cfg.idle_timeout_s, 5);
    cr_expect_eq(cfg.admin_port, 0);
    cr_expect_str_eq(cfg.faults, "seed=1");
    cr_expect_str_eq(cfg.fault_log, "f.log");
    cr_expect_eq(cfg.drain_timeout_ms, 250);
}

Test(config, faults_flag_wins_over_the_environment_and_each_is_named_as_the_origin)
{
    const char *with_flag[] = {"--faults", "seed=2", NULL};
    cr_assert_eq(parse("seed=9", with_flag), CONFIG_RUN);
    cr_expect_str_eq(cfg.faults, "seed=2");
    cr_expect_str_eq(cfg.faults_origin, "--faults");
    const char *without[] = {NULL};
    cr_assert_eq(parse("seed=9", without), CONFIG_RUN);
    cr_expect_str_eq(cfg.faults, "seed=9");
    cr_expect_str_eq(cfg.faults_origin, "ECHOPORT_FAULTS"); /* so its errors name it */
}

Test(config, help_and_version_exit_without_running)
{
    const char *help[] = {"--help", NULL}, *version[] = {"--version", NULL};
    cr_expect_eq(parse(NULL, help), CONFIG_EXIT);
    cr_expect_eq(parse(NULL, version), CONFIG_EXIT);
}

/* Inline arrays, not pointers: Criterion copies parameters into a new process. */
struct bad_case {
    int nargs;
    char args[2][40];
    char message_part[48];
};

ParameterizedTestParameters(config, rejects_bad_input_with_a_message_naming_it)
{
    static struct bad_case cases[] = {
        {2, {"--threads", "0"}, "'0' for --threads"},
        {2, {"--threads", "abc"}, "'abc' for --threads"},
        {2, {"--threads", "-1"}, "'-1' for --threads"},
        {2, {"--accepts", "99999999999999999999999"}, "for --accepts"},
        {2, {"--buffer-size", "12k"}, "'12k' for --buffer-size"},
        {2, {"--idle-timeout", ""}, "for --idle-timeout"},
        {2, {"--admin-port", "65536"}, "'65536' for --admin-port"},
        {2, {"--listen", "127.0.0.1"}, "bad address '127.0.0.1'"},
        {2, {"--listen", "127.0.0.1:99999"}, "bad address '127.0.0.1:99999'"},
        {2, {"--listen", "[::1:80"}, "bad address '[::1:80'"},
        {2, {"--listen", ":80"}, "bad address ':80'"},
        {2, {"--listen", "::1:80"}, "bad address '::1:80'"},
        {1, {"--bogus"}, "unknown option '--bogus'"},
        {1, {"stray"}, "unknown argument 'stray'"},
        {1, {"--threads"}, "--threads needs a value"},
        {2, {"--faults", ""}, "--faults needs a non-empty value"},
        {1, {"--help=1"}, "--help takes no value"},
    };
    return cr_make_param_array(struct bad_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_case *c, config, rejects_bad_input_with_a_message_naming_it)
{
    const char *args[3] = {c->args[0], c->nargs > 1 ? c->args[1] : NULL, NULL};
    cr_assert_eq(parse(NULL, args), CONFIG_ERROR, "'%s' was accepted", c->args[0]);
    cr_expect(strstr(err, c->message_part) != NULL, "message '%s' lacks '%s'", err,
              c->message_part);
    cr_expect(strchr(err, '\n') == NULL, "the message is one line");
}

Test(config, max_buffer_bytes_defaults_to_1_gib_and_is_settable)
{
    const char *none[] = {NULL};
    cr_assert_eq(parse(NULL, none), CONFIG_RUN);
    cr_expect_eq(cfg.max_buffer_bytes, (size_t)1 << 30);
    const char *args[] = {"--max-buffer-bytes", "33554432", NULL};
    cr_assert_eq(parse(NULL, args), CONFIG_RUN, "%s", err);
    cr_expect_eq(cfg.max_buffer_bytes, (size_t)32 << 20);
}

Test(config, rejects_a_buffer_size_above_the_buffer_budget)
{
    const char *args[] = {"--buffer-size", "1048576", "--max-buffer-bytes", "65536", NULL};
    cr_assert_eq(parse(NULL, args), CONFIG_ERROR);
    cr_expect_str_eq(err, "--buffer-size 1048576 exceeds --max-buffer-bytes 65536");
}

Test(config, rejects_a_buffer_budget_below_64_kib)
{
    const char *args[] = {"--max-buffer-bytes", "4096", NULL};
    cr_assert_eq(parse(NULL, args), CONFIG_ERROR);
    cr_expect(strstr(err, "--max-buffer-bytes") != NULL, "%s", err);
}

/* Parses "--listen text" and returns the result (err holds the message). */
static enum config_result parse_listen(const char *text)
{
    const char *args[] = {"--listen", text, NULL};
    return parse(NULL, args);
}

Test(config, rejects_ipv4_with_octet_above_255)
{
    cr_assert_eq(parse_listen("999.1.1.1:1"), CONFIG_ERROR, "999.1.1.1 was accepted");
    cr_expect(strstr(err, "'999.1.1.1' is not a valid IPv4 address") != NULL, "%s", err);
    cr_expect(strchr(err, '\n') == NULL, "the message is one line");
}

ParameterizedTestParameters(config, rejects_numeric_hosts_that_are_not_addresses)
{
    static char cases[][40] = {
        "256.0.0.1:1",
        "1.2.3:1",
        "1.2.3.4.5:1",
        "01.2.3.4:1",
        "1..2.3:1",
        ".1.2.3:1",
        "1.2.3.:1",
        "1.2.3.4444:1",
        "[foo]:1",
        "[1::2::3]:1",
        "[12345::1]:1",
        "[1:2:3:4:5:6:7:8:9]:1",
        "[1:2:3:4:5:6:7::8]:1",
        "[:1]:1",
        "[1:]:1",
        "[::1.2.3.256]:1",
        "[1:2:3:4:5:6:7:1.2.3.4]:1",
        "[]:1",
        "[fe80::1%eth0]:1",
    };
    return cr_make_param_array(char[40], cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(char (*text)[40], config, rejects_numeric_hosts_that_are_not_addresses)
{
    cr_assert_eq(parse_listen(*text), CONFIG_ERROR, "'%s' was accepted", *text);
    cr_expect(strstr(err, *text) != NULL, "message '%s' does not name '%s'", err, *text);
}

ParameterizedTestParameters(config, accepts_addresses_and_host_names)
{
    static char cases[][40] = {
        "0.0.0.0:0",
        "255.255.255.255:1",
        "[::]:0",
        "[::1]:7",
        "[fe80::1]:0",
        "[1:2:3:4:5:6:7:8]:0",
        "[::ffff:127.0.0.1]:0",
        "[1:2:3:4:5:6::]:0",
        "[ABCD::ef01]:0",
        "localhost:0",
        "my-host.example:80",
        "1.2.3.4a:80",
    };
    return cr_make_param_array(char[40], cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(char (*text)[40], config, accepts_addresses_and_host_names)
{
    cr_expect_eq(parse_listen(*text), CONFIG_RUN, "'%s': %s", *text, err);
}

Test(config, bad_port_message_quotes_the_argument_not_the_byte_before_it)
{
    /* the argument follows a '[' in memory: the message must not start there */
    static const char memory[] = "[127.0.0.1:99999";
    cr_assert_eq(parse_listen(memory + 1), CONFIG_ERROR);
    cr_expect(strstr(err, "bad address '127.0.0.1:99999'") != NULL, "%s", err);
}
