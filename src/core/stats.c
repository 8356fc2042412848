/* stats.c - the counters and their one-line rendering. */
#include "stats.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "platform.h"

struct ep_stats ep_stats;
static stats_extra_fn stats_extra;

void stats_reset(void)
{
    memset(&ep_stats, 0, sizeof(ep_stats));
}

void stats_set_extra(stats_extra_fn fn)
{
    stats_extra = fn;
}

size_t stats_format(char *buf, size_t len)
{
    uint64_t accepted = stats_get(accepted), closed = stats_get(closed);
    int n = snprintf(buf, len,
                     "stats accepted=%" PRIu64 " closed=%" PRIu64 " active=%" PRIu64
                     " refused=%" PRIu64 " accept_errors=%" PRIu64 " admin_waits=%" PRIu64
                     " recv_fallbacks=%" PRIu64 " buffer_waits=%" PRIu64 " bytes_in=%" PRIu64
                     " bytes_out=%" PRIu64 " sockets_opened=%" PRIu64 " sockets_closed=%" PRIu64
                     " admin_sockets_opened=%" PRIu64 " admin_sockets_closed=%" PRIu64
                     " ctx_alloc=%" PRIu64 " ctx_free=%" PRIu64 " faults=%" PRIu64,
                     accepted, closed, accepted - closed, stats_get(refused),
                     stats_get(accept_errors), stats_get(admin_waits), stats_get(recv_fallbacks),
                     stats_get(buffer_waits), stats_get(bytes_in), stats_get(bytes_out),
                     stats_get(sockets_opened), stats_get(sockets_closed),
                     stats_get(admin_sockets_opened), stats_get(admin_sockets_closed),
                     stats_get(ctx_alloc), stats_get(ctx_free), stats_get(faults));
    size_t used = n < 0 ? 0 : (size_t)n >= len ? len - 1 : (size_t)n;
    if (stats_extra && used < len)
        used += stats_extra(buf + used, len - used);
    long handles = ep_process_handles();
    if (handles >= 0 && used < len) {
#ifdef _WIN32
        n = snprintf(buf + used, len - used, " handles=%ld", handles);
#else
        n = snprintf(buf + used, len - used, " fds=%ld", handles);
#endif
        used += n < 0 ? 0 : (size_t)n >= len - used ? len - used - 1 : (size_t)n;
    }
    return used;
}
