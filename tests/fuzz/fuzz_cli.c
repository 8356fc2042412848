/* fuzz_cli.c - libFuzzer target for the server's command-line parser: the input is
 * split on newlines into arguments; any outcome is fine except a crash, an error
 * without a one-line message, or an accepted configuration outside its bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

#define MAX_ARGS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *argv[MAX_ARGS + 1] = {"echoport"};
    int argc = 1;
    memcpy(text, data, size);
    text[size] = '\0';
    for (char *p = text; p && argc <= MAX_ARGS;) {
        argv[argc++] = p;
        p = strchr(p, '\n');
        if (p)
            *p++ = '\0';
    }
    static FILE *sink;
    if (!sink)
        sink = fopen("/dev/null", "w");
    struct ep_config cfg;
    char err[256] = "";
    enum config_result r = config_parse(&cfg, argc, argv, NULL, sink, err, sizeof(err));
    if (r == CONFIG_ERROR && (err[0] == '\0' || strchr(err, '\n')))
        abort();
    if (r == CONFIG_RUN && (cfg.threads < 1 || cfg.accepts < 1 || cfg.buffer_size < 1 ||
                            cfg.listen_port > 65535 || cfg.listen_host[0] == '\0'))
        abort();
    free(text);
    return 0;
}
