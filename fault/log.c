/* log.c - turning a plan on and off, and counting and logging each injected fault.
 * No lock of the core's: the log file pointer changes only at setup and teardown, and
 * each line is one fwrite, which stdio makes atomic on its stream (glibc and the
 * Windows CRT both lock a FILE per call). */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "ep.h"
#include "fault.h"
#include "fault_int.h"

static atomic_uint_least64_t kind_counts[FAULT_KINDS];
static _Atomic(FILE *) log_file;
static _Atomic(fault_counter_fn) counter;

size_t fault_format_counts(char *buf, size_t len)
{
    size_t used = 0;
    if (len == 0)
        return 0;
    buf[0] = '\0';
    for (int k = 0; fault_active() && k < FAULT_KINDS && used < len - 1; k++) {
        int n = snprintf(buf + used, len - used, " faults_%s=%" PRIu64, fault_kind_name(k),
                         fault_count(k));
        if (n < 0)
            break;
        used += (size_t)n >= len - used ? len - used - 1 : (size_t)n;
    }
    return used;
}

void fault_set_counter(fault_counter_fn fn)
{
    atomic_store(&counter, fn);
}

int fault_enable(const struct fault_plan *plan, const char *log_path, char *err, size_t errlen)
{
    FILE *f = NULL;
    fault_disable();
    if (log_path && !(f = fopen(log_path, "w"))) {
        if (err && errlen)
            snprintf(err, errlen, "cannot open fault log '%s': %s", log_path, strerror(errno));
        return EP_EIO;
    }
    atomic_store(&log_file, f);
    fault_decide_install(plan);
    return 0;
}

void fault_disable(void)
{
    fault_decide_install(NULL);
    FILE *f = atomic_exchange(&log_file, NULL);
    if (f)
        fclose(f);
    for (int k = 0; k < FAULT_KINDS; k++)
        atomic_store_explicit(&kind_counts[k], 0, memory_order_relaxed);
}

void fault_record(enum fault_site site, uint64_t conn, uint64_t op, enum fault_kind kind, int code)
{
    char line[160];
    if ((unsigned)kind >= FAULT_KINDS)
        return;
    atomic_fetch_add_explicit(&kind_counts[kind], 1, memory_order_relaxed);
    fault_counter_fn count = atomic_load_explicit(&counter, memory_order_relaxed);
    if (count)
        count(kind);
    FILE *f = atomic_load_explicit(&log_file, memory_order_acquire);
    if (!f)
        return;
    int n = snprintf(line, sizeof(line),
                     "fault site=%s conn=%" PRIu64 " op=%" PRIu64 " kind=%s code=%d\n",
                     fault_site_name(site), conn, op, fault_kind_name(kind), code);
    if (n > 0) {
        fwrite(line, 1, (size_t)n, f);
        fflush(f);
    }
}

uint64_t fault_count(enum fault_kind kind)
{
    if ((unsigned)kind >= FAULT_KINDS)
        return 0;
    return atomic_load_explicit(&kind_counts[kind], memory_order_relaxed);
}
