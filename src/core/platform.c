/* platform.c - POSIX and Win32 implementations of platform.h. */
#include "platform.h"

#include <stdlib.h>
#include <string.h>

#include "ep.h"

struct thread_start {
    void (*fn)(void *);
    void *arg;
};

#ifdef _WIN32

void ep_mutex_init(ep_mutex *m)
{
    InitializeSRWLock(m);
}

void ep_mutex_destroy(ep_mutex *m)
{
    (void)m; /* an SRW lock holds no resources */
}

void ep_mutex_lock(ep_mutex *m)
{
    AcquireSRWLockExclusive(m);
}

void ep_mutex_unlock(ep_mutex *m)
{
    ReleaseSRWLockExclusive(m);
}

static DWORD WINAPI thread_trampoline(LPVOID p)
{
    struct thread_start s = *(struct thread_start *)p;
    free(p);
    s.fn(s.arg);
    return 0;
}

int ep_thread_start(ep_thread *t, void (*fn)(void *), void *arg)
{
    struct thread_start *s = malloc(sizeof(*s));
    if (!s)
        return EP_ENOMEM;
    s->fn = fn;
    s->arg = arg;
    *t = CreateThread(NULL, 0, thread_trampoline, s, 0, NULL);
    if (!*t) {
        free(s);
        return EP_EIO;
    }
    return 0;
}

void ep_thread_join(ep_thread t)
{
    WaitForSingleObject(t, INFINITE);
    CloseHandle(t);
}

/* Windows reserves address space in 64 KiB granules: every allocation is aligned so. */
void *ep_chunk_alloc(size_t size)
{
    return VirtualAlloc(NULL, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
}

void ep_chunk_free(void *p)
{
    VirtualFree(p, 0, MEM_RELEASE);
}

int64_t ep_now_ms(void)
{
    return (int64_t)GetTickCount64();
}

int ep_cpu_count(void)
{
    DWORD_PTR mine = 0, system = 0;
    int n = 0;
    if (GetProcessAffinityMask(GetCurrentProcess(), &mine, &system))
        for (; mine; mine &= mine - 1)
            n++;
    if (n == 0) { /* no mask (a process spanning processor groups): count them all */
        SYSTEM_INFO si;
        GetSystemInfo(&si);
        n = (int)si.dwNumberOfProcessors;
    }
    return n > 0 ? n : 1;
}

void ep_thread_yield(void)
{
    SwitchToThread();
}

int ep_thread_own_descriptors(void)
{
    return -1;
}

static SRWLOCK descriptors_lock = SRWLOCK_INIT;
void ep_descriptors_lock(void)
{
    AcquireSRWLockExclusive(&descriptors_lock);
}

void ep_descriptors_unlock(void)
{
    ReleaseSRWLockExclusive(&descriptors_lock);
}

/* One entry of NtQuerySystemInformation's SystemExtendedHandleInformation (class 64),
 * which the SDK headers do not declare. */
struct system_handle_entry {
    PVOID object;
    ULONG_PTR pid;
    ULONG_PTR handle;
    ULONG access;
    USHORT backtrace_index;
    USHORT type_index;
    ULONG attributes;
    ULONG reserved;
};

struct system_handles {
    ULONG_PTR count;
    ULONG_PTR reserved;
    struct system_handle_entry entry[1];
};

#define SYSTEM_EXTENDED_HANDLE_INFORMATION 64
#define STATUS_INFO_LENGTH_MISMATCH ((LONG)0xC0000004)

typedef LONG(WINAPI *query_system_fn)(ULONG, PVOID, ULONG, PULONG);

/* This process's entries in the system handle table, -1 if it cannot be read. */
static long handles_in_system_table(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    FARPROC proc = ntdll ? GetProcAddress(ntdll, "NtQuerySystemInformation") : NULL;
    if (!proc)
        return -1;
    query_system_fn query;
    memcpy(&query, &proc, sizeof(query)); /* FARPROC to its real type, without a cast warning */
    ULONG len = 64u << 10, need = 0;
    struct system_handles *t = NULL;
    LONG st = STATUS_INFO_LENGTH_MISMATCH;
    for (int tries = 0; tries < 8 && st == STATUS_INFO_LENGTH_MISMATCH; tries++) {
        free(t);
        if (!(t = malloc(len)))
            return -1;
        st = query(SYSTEM_EXTENDED_HANDLE_INFORMATION, t, len, &need);
        len = need > len ? need + (16u << 10) : len * 2; /* the table may grow meanwhile */
    }
    long n = -1;
    if (st == 0) {
        ULONG_PTR me = GetCurrentProcessId();
        n = 0;
        for (ULONG_PTR i = 0; i < t->count; i++)
            n += t->entry[i].pid == me;
    }
    free(t);
    return n;
}

/* GetProcessHandleCount; when it says 0, which no running Windows process has (Wine's
 * stub answers that), the count of this process's entries in the system handle table. */
long ep_process_handles(void)
{
    DWORD n = 0;
    if (!GetProcessHandleCount(GetCurrentProcess(), &n))
        return -1;
    return n > 0 ? (long)n : handles_in_system_table();
}

#else

#include <dirent.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

void ep_mutex_init(ep_mutex *m)
{
    pthread_mutex_init(m, NULL);
}

void ep_mutex_destroy(ep_mutex *m)
{
    pthread_mutex_destroy(m);
}

void ep_mutex_lock(ep_mutex *m)
{
    pthread_mutex_lock(m);
}

void ep_mutex_unlock(ep_mutex *m)
{
    pthread_mutex_unlock(m);
}

static void *thread_trampoline(void *p)
{
    struct thread_start s = *(struct thread_start *)p;
    free(p);
    s.fn(s.arg);
    return NULL;
}

int ep_thread_start(ep_thread *t, void (*fn)(void *), void *arg)
{
    struct thread_start *s = malloc(sizeof(*s));
    if (!s)
        return EP_ENOMEM;
    s->fn = fn;
    s->arg = arg;
    if (pthread_create(t, NULL, thread_trampoline, s) != 0) {
        free(s);
        return EP_EIO;
    }
    return 0;
}

void ep_thread_join(ep_thread t)
{
    pthread_join(t, NULL);
}

void ep_thread_yield(void)
{
    sched_yield();
}

#if defined(__SANITIZE_THREAD__)
#define EP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EP_TSAN 1
#endif
#endif

static _Thread_local int own_descriptors; /* this thread has its own descriptor table */

int ep_thread_own_descriptors(void)
{
#ifdef EP_TSAN
    return -1;
#else
    if (unshare(CLONE_FILES) != 0)
        return -1;
    own_descriptors = 1;
    return 0;
#endif
}

static pthread_mutex_t descriptors_lock = PTHREAD_MUTEX_INITIALIZER;
void ep_descriptors_lock(void)
{
    pthread_mutex_lock(&descriptors_lock);
}

void ep_descriptors_unlock(void)
{
    pthread_mutex_unlock(&descriptors_lock);
}

void *ep_chunk_alloc(size_t size)
{
    void *p = aligned_alloc(size, size);
    if (p)
        memset(p, 0, size);
    return p;
}

void ep_chunk_free(void *p)
{
    free(p);
}

int64_t ep_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ep_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN); /* more CPUs than a cpu_set_t holds */
    return n > 0 ? (int)n : 1;
}

long ep_process_handles(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    /* /proc/self/fd lists the main table: the stream's descriptor is there unless the
     * caller has a table of its own */
    return own_descriptors ? n : n - 1;
}

#endif

const char *ep_strerror(int err)
{
    switch (err) {
    case EP_OK:
        return "success";
    case EP_ECONNRESET:
        return "connection reset";
    case EP_ECANCELED:
        return "operation cancelled";
    case EP_ENOMEM:
        return "out of memory";
    case EP_EMFILE:
        return "too many open sockets";
    case EP_ENOBUFS:
        return "no buffer space";
    case EP_EINVAL:
        return "invalid argument";
    case EP_EADDR:
        return "address unavailable";
    case EP_EPIPE:
        return "broken pipe";
    case EP_ETIMEDOUT:
        return "timed out";
    default:
        return "i/o error";
    }
}
