/* log.c - turning a plan on and off, and counting and logging each injected fault. */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "ep.h"
#include "fault.h"
#include "fault_int.h"
#include "platform.h"
#include "stats.h"

static atomic_uint_least64_t kind_counts[FAULT_KINDS];
static ep_mutex log_lock; /* initialised once by the first fault_enable, never destroyed */
static atomic_int log_lock_ready;
static FILE *log_file; /* guarded by log_lock */

/* Appends " faults_<kind>=N" for every kind to buf (stats_extra_fn); returns the length. */
static size_t format_kind_counts(char *buf, size_t len)
{
    size_t used = 0;
    if (len == 0)
        return 0;
    buf[0] = '\0';
    for (int k = 0; k < FAULT_KINDS && used < len - 1; k++) {
        int n = snprintf(buf + used, len - used, " faults_%s=%" PRIu64, fault_kind_name(k),
                         fault_count(k));
        if (n < 0)
            break;
        used += (size_t)n >= len - used ? len - used - 1 : (size_t)n;
    }
    return used;
}

/* Closes the log file, if any. */
static void close_log(void)
{
    FILE *f = NULL;
    if (!atomic_load_explicit(&log_lock_ready, memory_order_acquire))
        return;
    ep_mutex_lock(&log_lock);
    f = log_file;
    log_file = NULL;
    ep_mutex_unlock(&log_lock);
    if (f)
        fclose(f);
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
    if (!atomic_load_explicit(&log_lock_ready, memory_order_relaxed)) {
        ep_mutex_init(&log_lock);
        atomic_store_explicit(&log_lock_ready, 1, memory_order_release);
    }
    ep_mutex_lock(&log_lock);
    log_file = f;
    ep_mutex_unlock(&log_lock);
    stats_set_extra(format_kind_counts);
    fault_decide_install(plan);
    return 0;
}

void fault_disable(void)
{
    fault_decide_install(NULL);
    stats_set_extra(NULL);
    close_log();
    for (int k = 0; k < FAULT_KINDS; k++)
        atomic_store_explicit(&kind_counts[k], 0, memory_order_relaxed);
}

void fault_record(enum fault_site site, uint64_t conn, uint64_t op, enum fault_kind kind, int code)
{
    char line[160];
    if ((unsigned)kind >= FAULT_KINDS)
        return;
    stats_add(faults, 1);
    atomic_fetch_add_explicit(&kind_counts[kind], 1, memory_order_relaxed);
    if (!atomic_load_explicit(&log_lock_ready, memory_order_acquire))
        return;
    int n = snprintf(line, sizeof(line),
                     "fault site=%s conn=%" PRIu64 " op=%" PRIu64 " kind=%s code=%d\n",
                     fault_site_name(site), conn, op, fault_kind_name(kind), code);
    ep_mutex_lock(&log_lock);
    if (log_file && n > 0) {
        fwrite(line, 1, (size_t)n, log_file);
        fflush(log_file);
    }
    ep_mutex_unlock(&log_lock);
}

uint64_t fault_count(enum fault_kind kind)
{
    if ((unsigned)kind >= FAULT_KINDS)
        return 0;
    return atomic_load_explicit(&kind_counts[kind], memory_order_relaxed);
}
