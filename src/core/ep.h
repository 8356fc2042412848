/* ep.h - project-wide error codes and small helpers shared by every module. */
#ifndef EP_H
#define EP_H

#include <stddef.h>

#define EP_VERSION "0.1.0"

/* Errors: functions return 0 or one of these negative codes. Each backend
 * translates its platform codes into them exactly once (translate_error). */
enum ep_error {
    EP_OK = 0,
    EP_ECONNRESET = -1, /* peer reset the connection */
    EP_ECANCELED = -2,  /* operation cancelled: our own close or shutdown */
    EP_ENOMEM = -3,     /* allocation failed */
    EP_EMFILE = -4,     /* out of descriptors / handles */
    EP_ENOBUFS = -5,    /* out of buffer space (kernel or provided-buffer ring) */
    EP_EINVAL = -6,     /* bad argument or configuration */
    EP_EADDR = -7,      /* address could not be resolved or bound */
    EP_EPIPE = -8,      /* sending on a connection the peer has shut down */
    EP_ETIMEDOUT = -9,  /* connection timed out */
    EP_EIO = -10,       /* any other system failure */
};

/* One short lowercase phrase for an EP_E* code. */
const char *ep_strerror(int err);

#define EP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The struct of type `type` whose member `member` is at `ptr`. (clang-format 14 takes
 * `(char *)(ptr) - x` for a cast of `-x`, hence the guard.) */
/* clang-format off */
#define container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))
/* clang-format on */

#endif
