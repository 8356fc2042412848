"""echoport-client (the Linux binary and the .exe under Wine) against each build of
the server, and against deliberately broken echo servers: exit 0 only when every
byte came back in order, 1 otherwise, 2 for a bad command line."""

import socket
import threading

import pytest

from echolib import KiB, MiB, assert_clean, payload, run_cli


def client(request, name):
    b = request.config._ep_builds[name]
    if b.wine:
        request.getfixturevalue("wine_prefix")
    return b


def host_path(build, path):
    """A path the client binary understands (Wine maps Z: to /)."""
    return "Z:" + str(path).replace("/", "\\") if build.wine else str(path)


def one_line(out):
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected one summary line, got {lines!r}"
    return lines[0]


@pytest.mark.parametrize("mode", ["bytes", "bytes_half_close", "message", "file"])
def test_client_against_server(server, build, client_name, request, base_seed, mode, tmp_path):
    cb = client(request, client_name)
    srv = server()
    size = 1 * MiB if mode.startswith("bytes") else None
    args = ["--connect", f"127.0.0.1:{srv.port}", "--timeout", "60"]
    if mode == "bytes":
        args += ["--bytes", size, "--seed", base_seed]
    elif mode == "bytes_half_close":
        args += ["--bytes", size, "--seed", base_seed, "--half-close", "--chunk", 1000]
    elif mode == "message":
        args += ["--message", "hello, echo"]
        size = len("hello, echo")
    else:
        f = tmp_path / "payload.bin"
        f.write_bytes(payload(base_seed, 300 * KiB))
        args += ["--file", host_path(cb, f)]
        size = 300 * KiB
    rc, out, err = run_cli(cb, args, client=True)
    assert rc == 0, f"client exit {rc}: {out!r} {err!r}"
    line = one_line(out)
    assert line.startswith(f"ok bytes={size} "), line
    final = srv.stop()
    assert_clean(srv)
    assert final["bytes_in"] == size, f"server got {final['bytes_in']} bytes, client sent {size}"


class BadEcho:
    """A deliberately broken echo server on a thread: it flips one byte or stops
    echoing early. Bounded: one connection, socket timeouts."""

    def __init__(self, flaw, at=1000):
        self.flaw, self.at = flaw, at
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            seen = 0
            try:
                while True:
                    data = bytearray(conn.recv(65536))
                    if not data:
                        return
                    if self.flaw == "flip" and seen <= self.at < seen + len(data):
                        data[self.at - seen] ^= 0x40
                    if self.flaw == "truncate" and seen + len(data) > self.at:
                        conn.sendall(data[:max(0, self.at - seen)])
                        return
                    conn.sendall(data)
                    seen += len(data)
            except OSError:
                return

    def close(self):
        self.listener.close()
        self.thread.join(10)


@pytest.mark.parametrize("flaw", ["flip", "truncate"])
def test_client_detects_a_bad_echo(client_name, request, flaw):
    cb = client(request, client_name)
    bad = BadEcho(flaw, at=5000)
    try:
        rc, out, err = run_cli(cb, ["--connect", f"127.0.0.1:{bad.port}", "--bytes", 64 * KiB,
                                    "--timeout", "20"], client=True)
    finally:
        bad.close()
    assert rc == 1, f"a {flaw}ped echo must fail the client (exit 1), got {rc}: {out!r} {err!r}"
    assert not out.startswith("ok"), out


@pytest.mark.parametrize("args", [["--bytes"], ["--connect", "nonsense", "--bytes", "10"],
                                  ["--message", "a", "--bytes", "3"], ["--frobnicate"],
                                  ["--file", "."]],
                         ids=["missing_value", "bad_address", "two_payloads", "unknown_option",
                              "file_is_a_directory"])
def test_client_bad_command_line(client_name, request, args):
    cb = client(request, client_name)
    rc, out, err = run_cli(cb, args, client=True)
    assert rc == 2, f"exit {rc}, expected 2: {out!r} {err!r}"
    assert err.startswith("echoport-client: "), err
