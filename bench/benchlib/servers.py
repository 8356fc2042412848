"""The servers compared: echoport and the peers, with the command that starts each."""
from .build import LINUX_BIN, WINDOWS_BIN
from .procs import BENCH_BIN

ECHOPORT = "echoport"
REFERENCE = "pingpong"  # the round-trip reference: not a server, runs the 1-connection cells

# name -> argv; every one prints `listening on 127.0.0.1:PORT` and runs one event-loop thread
# (blocking_echo: one thread per connection).
LINUX = {
    ECHOPORT: [LINUX_BIN / "echoport", "--listen", "127.0.0.1:0", "--threads", "1"],
    "epoll": [BENCH_BIN / "epoll_echo", "--port", "0"],
    "asio": [BENCH_BIN / "asio_echo", "--port", "0"],
    "uring": [BENCH_BIN / "uring_echo", "--port", "0"],
    "libuv": [BENCH_BIN / "uv_echo", "--port", "0"],
    "blocking": [BENCH_BIN / "blocking_echo", "--port", "0"],
}
QUICK = list(LINUX)  # all of them fit in the quick budget

WINE_ECHOPORT, WINE_SEED = "echoport.exe", "iocp_seed"
WINE = {
    WINE_ECHOPORT: [WINDOWS_BIN / "echoport.exe", "--listen", "127.0.0.1:0", "--threads", "1"],
    WINE_SEED: [BENCH_BIN / "iocp_seed_echo.exe", "--port", "0"],
}

ALL_NAMES = list(LINUX) + [REFERENCE] + list(WINE)


def peers_of(names):
    """The peers among names (everything but echoport and the reference)."""
    return [n for n in names if n not in (ECHOPORT, REFERENCE, WINE_ECHOPORT)]
