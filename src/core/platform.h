/* platform.h - the few OS services the portable core needs: mutexes, threads,
 * a monotonic clock, CPU count, process resource counts. */
#ifndef EP_PLATFORM_H
#define EP_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
typedef SRWLOCK ep_mutex; /* not a CRITICAL_SECTION: Wine allocates debug info for each */
typedef HANDLE ep_thread;
#else
#include <pthread.h>
typedef pthread_mutex_t ep_mutex;
typedef pthread_t ep_thread;
#endif

void ep_mutex_init(ep_mutex *m);
void ep_mutex_destroy(ep_mutex *m);
void ep_mutex_lock(ep_mutex *m);
void ep_mutex_unlock(ep_mutex *m);

/* Starts fn(arg) on a new thread; returns 0 or EP_EIO. */
int ep_thread_start(ep_thread *t, void (*fn)(void *), void *arg);
void ep_thread_join(ep_thread t);

/* Lets other threads run before the caller goes on. */
void ep_thread_yield(void);

/* Gives the calling thread a descriptor table of its own, a copy of the process's at this
 * moment (Linux): what it opens afterwards is not in the process's table, and the other
 * threads cannot use up its descriptors. 0, or -1 when it keeps sharing the process's
 * (Windows; a TSan build, as TSan tracks descriptors by number across threads). */
int ep_thread_own_descriptors(void);

/* One process-wide lock over handing a freed descriptor to the one meant to take it: the
 * admin port holds it from giving up its reserve until its accept has the descriptor, and
 * the data port's accept-socket creation (Windows) takes it too, so it cannot come in
 * between and leave the admin client waiting at the descriptor limit. */
void ep_descriptors_lock(void);
void ep_descriptors_unlock(void);

/* size zeroed bytes aligned to size (a power of two, at most 64 KiB), NULL when out of
 * memory; ep_chunk_free gives them back. */
void *ep_chunk_alloc(size_t size);
void ep_chunk_free(void *p);

/* Milliseconds from an arbitrary fixed point; never goes backwards. */
int64_t ep_now_ms(void);

/* CPUs this process may run on (its affinity mask, as taskset or start /affinity set
 * it), at least 1: the default worker count. */
int ep_cpu_count(void);

/* Open handles (Windows) or file descriptors (Linux) of this process (of its main
 * table, when the caller has a table of its own), -1 if unknown. */
long ep_process_handles(void);

#endif
