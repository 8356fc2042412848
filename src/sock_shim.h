/* sock_shim.h - the table of socket and completion-port calls the IOCP backend makes,
 * in the manner of SQLite's os_unix.c aSyscall[]: every call goes through a pointer
 * that production leaves at its default and that tests and fault plans swap.
 *
 * - shim_get(name) / shim_set(name, fn) / shim_reset() read and swap entries by
 *   name; shim_set(name, NULL) restores that entry's default. Swap entries only
 *   while no backend is running (the table is read without locks).
 * - The defaults of WSASocketW and closesocket count every socket created and
 *   closed in ep_stats, so the counters hold in production and under faults.
 * - AcceptEx has no static default: shim_load_extensions() fetches it with
 *   WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER) and makes it the default.
 * - Fault wrappers (shim_install_faults) only see Winsock arguments; the backend
 *   tells them which connection and operation a call belongs to with
 *   shim_ctx_set() right before each shimmed call.
 * - A completion the shim or the backend fabricates (a call that fails at once,
 *   routed through the port; a fault "on completion") carries its Winsock error in
 *   OVERLAPPED.Internal as SHIM_STATUS(code): an NTSTATUS with the customer bit
 *   set, which the system never produces, so it cannot be mistaken for a real one.
 *   An EOF action (zero_read) ends a receive with SHIM_STATUS(WSAEDISCON), Winsock's
 *   graceful-close code, which translate_error reads as 0 bytes like any graceful
 *   close: the backend holds no fault logic, and the socket stays untouched.
 * - SetFileCompletionNotificationModes is an entry too: a fake kernel must model
 *   skip-on-success (a call that completes at once returns 0 and queues nothing).
 * - CancelIoEx is an entry too: the backend cancels a buffered receive that waited too
 *   long (its completion: aborted, or the data that beat the cancel).
 * - The backend tries a send non-blocking before posting it overlapped, with the
 *   same context: the send wrapper injects and records one fault per operation (a
 *   try that would block, or a reset due "on completion", leaves it to the post).
 */
#ifndef EP_SOCK_SHIM_H
#define EP_SOCK_SHIM_H

#ifdef _WIN32

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>

#include <stdint.h>

enum shim_id {
    SHIM_WSASocketW,
    SHIM_closesocket,
    SHIM_bind,
    SHIM_listen,
    SHIM_setsockopt,
    SHIM_getsockopt,
    SHIM_getsockname,
    SHIM_ioctlsocket,
    SHIM_WSAIoctl,
    SHIM_AcceptEx,
    SHIM_WSARecv,
    SHIM_WSASend,
    SHIM_WSAGetOverlappedResult,
    SHIM_CreateIoCompletionPort,
    SHIM_GetQueuedCompletionStatusEx,
    SHIM_PostQueuedCompletionStatus,
    SHIM_SetFileCompletionNotificationModes,
    SHIM_CancelIoEx,
    SHIM_COUNT
};

struct shim_entry {
    const char *name;
    void *current; /* what the backend calls */
    void *dflt;    /* the real call (plus socket counting); NULL until loaded (AcceptEx) */
};

extern struct shim_entry shim_table[SHIM_COUNT];

/* The current pointer of entry `name`, NULL if there is no such entry. */
void *shim_get(const char *name);

/* Makes `fn` the current pointer of `name` (NULL = its default); 0, or -1 for an
 * unknown name. */
int shim_set(const char *name, void *fn);

/* Restores every entry to its default and uninstalls the fault wrappers. */
void shim_reset(void);

/* Fetches AcceptEx through WSAIoctl on `listener` and makes it the default (and the
 * current pointer, unless a test already set one). 0 or the Winsock error. */
int shim_load_extensions(SOCKET listener);

/* Swaps the fault wrappers in over the current pointers (idempotent); `port` and
 * `key` are where wrappers post the completions they fabricate. */
void shim_install_faults(HANDLE port, ULONG_PTR key);

/* Puts back the pointers shim_install_faults found (idempotent). */
void shim_remove_faults(void);

/* Tells the wrappers that the next shimmed calls on this thread belong to
 * connection ordinal `conn` (0 for accepts) and its operation ordinal `op`. */
void shim_ctx_set(uint64_t conn, uint64_t op);

/* Marks the calls on this thread as start-up/teardown ones, which are never faulted. */
void shim_ctx_clear(void);

/* The OVERLAPPED.Internal value of a fabricated completion failing with `wsa`. */
#define SHIM_STATUS(wsa) ((ULONG_PTR)(0xE0000000u | ((DWORD)(wsa)&0xFFFFu)))
/* Nonzero when `st` (an OVERLAPPED.Internal) was made by SHIM_STATUS. */
#define SHIM_STATUS_IS_FABRICATED(st) (((DWORD)(st)&0xFFFF0000u) == 0xE0000000u)
/* The Winsock error of a fabricated status. */
#define SHIM_STATUS_ERROR(st) ((DWORD)(st)&0xFFFFu)

/* Typed calls through the table. */
typedef SOCKET(WSAAPI *shim_WSASocketW_fn)(int, int, int, LPWSAPROTOCOL_INFOW, GROUP, DWORD);
typedef int(WSAAPI *shim_closesocket_fn)(SOCKET);
typedef int(WSAAPI *shim_bind_fn)(SOCKET, const struct sockaddr *, int);
typedef int(WSAAPI *shim_listen_fn)(SOCKET, int);
typedef int(WSAAPI *shim_setsockopt_fn)(SOCKET, int, int, const char *, int);
typedef int(WSAAPI *shim_getsockopt_fn)(SOCKET, int, int, char *, int *);
typedef int(WSAAPI *shim_getsockname_fn)(SOCKET, struct sockaddr *, int *);
typedef int(WSAAPI *shim_ioctlsocket_fn)(SOCKET, long, u_long *);
typedef int(WSAAPI *shim_WSAIoctl_fn)(SOCKET, DWORD, LPVOID, DWORD, LPVOID, DWORD, LPDWORD,
                                      LPWSAOVERLAPPED, LPWSAOVERLAPPED_COMPLETION_ROUTINE);
typedef BOOL(PASCAL *shim_AcceptEx_fn)(SOCKET, SOCKET, PVOID, DWORD, DWORD, DWORD, LPDWORD,
                                       LPOVERLAPPED);
typedef int(WSAAPI *shim_WSARecv_fn)(SOCKET, LPWSABUF, DWORD, LPDWORD, LPDWORD, LPWSAOVERLAPPED,
                                     LPWSAOVERLAPPED_COMPLETION_ROUTINE);
typedef int(WSAAPI *shim_WSASend_fn)(SOCKET, LPWSABUF, DWORD, LPDWORD, DWORD, LPWSAOVERLAPPED,
                                     LPWSAOVERLAPPED_COMPLETION_ROUTINE);
typedef BOOL(WSAAPI *shim_WSAGetOverlappedResult_fn)(SOCKET, LPWSAOVERLAPPED, LPDWORD, BOOL,
                                                     LPDWORD);
typedef HANDLE(WINAPI *shim_CreateIoCompletionPort_fn)(HANDLE, HANDLE, ULONG_PTR, DWORD);
typedef BOOL(WINAPI *shim_GetQueuedCompletionStatusEx_fn)(HANDLE, LPOVERLAPPED_ENTRY, ULONG, PULONG,
                                                          DWORD, BOOL);
typedef BOOL(WINAPI *shim_PostQueuedCompletionStatus_fn)(HANDLE, DWORD, ULONG_PTR, LPOVERLAPPED);
typedef BOOL(WINAPI *shim_SetFileCompletionNotificationModes_fn)(HANDLE, UCHAR);
typedef BOOL(WINAPI *shim_CancelIoEx_fn)(HANDLE, LPOVERLAPPED);

#define SHIM_CALL(id) ((shim_##id##_fn)shim_table[SHIM_##id].current)
#define shim_WSASocketW SHIM_CALL(WSASocketW)
#define shim_closesocket SHIM_CALL(closesocket)
#define shim_bind SHIM_CALL(bind)
#define shim_listen SHIM_CALL(listen)
#define shim_setsockopt SHIM_CALL(setsockopt)
#define shim_getsockopt SHIM_CALL(getsockopt)
#define shim_getsockname SHIM_CALL(getsockname)
#define shim_ioctlsocket SHIM_CALL(ioctlsocket)
#define shim_WSAIoctl SHIM_CALL(WSAIoctl)
#define shim_AcceptEx SHIM_CALL(AcceptEx)
#define shim_WSARecv SHIM_CALL(WSARecv)
#define shim_WSASend SHIM_CALL(WSASend)
#define shim_WSAGetOverlappedResult SHIM_CALL(WSAGetOverlappedResult)
#define shim_CreateIoCompletionPort SHIM_CALL(CreateIoCompletionPort)
#define shim_GetQueuedCompletionStatusEx SHIM_CALL(GetQueuedCompletionStatusEx)
#define shim_PostQueuedCompletionStatus SHIM_CALL(PostQueuedCompletionStatus)
#define shim_SetFileCompletionNotificationModes SHIM_CALL(SetFileCompletionNotificationModes)
#define shim_CancelIoEx SHIM_CALL(CancelIoEx)

#endif /* _WIN32 */
#endif
