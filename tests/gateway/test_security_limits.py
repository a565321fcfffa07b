"""Resource attacks on a real gateway process (`pdserve up` over simulated workers), over raw
sockets: oversized bodies, a client trickling its body or its headers, and many idle
connections. Each is cut off within the profile's limits while a normal request still answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
import yaml

from pdserve.stack import Stack, stack
from tests.support import PROFILES

pytestmark = pytest.mark.integration

MAX_BODY = 65536
BODY_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 1.0
# How late a cut-off may come when the shared box is loaded (load average 20+ seen): a timer
# that fires late still fires; without the defence the cut-off never comes at all.
LATE_S = 10.0
BODY = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("limits")
    data = yaml.safe_load((PROFILES / "gw-standard.yaml").read_text())
    data["gateway"] = {
        **data.get("gateway", {}),
        "max_body_bytes": MAX_BODY,
        "body_timeout_s": BODY_TIMEOUT_S,
        "idle_timeout_s": IDLE_TIMEOUT_S,
    }
    path = directory / "gw-limits.yaml"
    path.write_text(yaml.safe_dump(data))
    with stack(path, log_dir=directory) as running:
        yield running


def _connect(running: Stack) -> socket.socket:
    sock = socket.create_connection((running.host, running.port), timeout=30)
    sock.settimeout(30)
    return sock


def _head(length: int | None = None, chunked: bool = False) -> bytes:
    lines = ["POST /v1/completions HTTP/1.1", "Host: gw", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """The status and JSON body of the one response the socket gets (it closes after)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _normal_request(running: Stack, timeout_s: float = 30.0) -> httpx.Response:
    return httpx.post(f"{running.base_url}/v1/completions", json=BODY, timeout=timeout_s)


def _is_openai_error(body: dict[str, object], code: str) -> bool:
    error = body.get("error")
    return isinstance(error, dict) and error.get("code") == code and "message" in error


def test_an_oversized_body_is_refused_by_length_and_while_chunked(gateway: Stack) -> None:
    with _connect(gateway) as sock:
        sock.sendall(_head(length=MAX_BODY + 1))
        status, body = _answer(sock)  # refused before a byte of the body is sent
    assert status == 413 and _is_openai_error(body, "body_too_large")
    with _connect(gateway) as sock:
        sock.sendall(_head(chunked=True))
        chunk = b"x" * 16384
        try:
            for _ in range(5):  # 80 KiB: over the limit by a chunk, refused as it streams in
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # it may close before all of it is sent
        status, body = _answer(sock)
    assert status == 413 and _is_openai_error(body, "body_too_large")
    assert _normal_request(gateway).status_code == 200


def _trickle(sock: socket.socket, payload: bytes, stop: threading.Event, every_s: float) -> None:
    try:
        for byte in payload:
            if stop.is_set():
                return
            sock.sendall(bytes([byte]))
            time.sleep(every_s)
    except OSError:
        return  # the gateway closed it: what the test wants


def test_a_trickled_body_gets_408_within_the_body_timeout(gateway: Stack) -> None:
    payload = json.dumps({**BODY, "prompt": "slow " * 200}).encode()
    stop = threading.Event()
    with _connect(gateway) as sock:
        sock.sendall(_head(length=len(payload)))
        started = time.monotonic()
        feeder = threading.Thread(target=_trickle, args=(sock, payload, stop, 0.05))
        feeder.start()
        try:
            assert _normal_request(gateway).status_code == 200  # others flow meanwhile
            status, body = _answer(sock)
        finally:
            stop.set()
            feeder.join()
        elapsed = time.monotonic() - started
    assert status == 408 and _is_openai_error(body, "body_timeout")
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + LATE_S


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the gateway closes `sock` (reads EOF or a reset), None if it did not."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


def test_trickled_headers_are_cut_off_at_the_idle_timeout(gateway: Stack) -> None:
    # a head that never ends: header lines for minutes at this rate, all well under 64 KiB
    head = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\n" + b"x-a: b\r\n" * 400
    stop = threading.Event()
    with _connect(gateway) as sock:
        feeder = threading.Thread(target=_trickle, args=(sock, head, stop, 0.05))
        feeder.start()
        try:
            closed = _closed_within(sock, IDLE_TIMEOUT_S + LATE_S)
        finally:
            stop.set()
            feeder.join()
    assert closed is not None and closed >= IDLE_TIMEOUT_S - 0.1


def test_a_head_larger_than_64_kib_is_refused(gateway: Stack) -> None:
    with _connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")


def _closed_by_the_gateway(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset


def test_many_idle_connections_do_not_exhaust_the_gateway(gateway: Stack) -> None:
    """The gateway may hold 128 more descriptors than it has now: 400 idle sockets take them
    all (the rest the event loop accepts and drops while it has none). Idle ones must be
    closed at the idle timeout, so the gateway answers again though the client keeps them."""
    process = psutil.Process(gateway.process.pid)
    soft, hard = process.rlimit(psutil.RLIMIT_NOFILE)
    process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds() + 128, hard))
    idle = []
    try:
        for _ in range(400):
            idle.append(_connect(gateway))
        deadline = time.monotonic() + IDLE_TIMEOUT_S + LATE_S
        while not all(_closed_by_the_gateway(sock) for sock in idle):
            assert time.monotonic() < deadline, "idle sockets still open"
            time.sleep(0.5)
        answer = _normal_request(gateway)
        assert answer.status_code == 200, answer.text
    finally:
        for sock in idle:
            sock.close()
        process.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    assert _normal_request(gateway).status_code == 200
