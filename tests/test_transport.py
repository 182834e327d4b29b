"""The destinations' HTTP transport (`worker.destinations.transport`) over real sockets."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme

from worker.destinations.transport import LEAVE_BY, Http, LateToLeave, StdlibTransport
from worker.sandbox.server import Sandbox

from conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVENT = b'{"type":"Order Shipped","user":{"email":"a@example.com"}}'


def test_calls_on_one_thread_share_one_connection(sandbox: Sandbox):
    http = Http(sandbox.url, AUTH, 5.0)
    statuses = [http.post("/v1/events/custom", content=EVENT).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert len(http.transport._all) == 1  # type: ignore[attr-defined]
    http.close()


def test_each_thread_has_its_own_connection(sandbox: Sandbox):
    http = Http(sandbox.url, AUTH, 5.0)
    threads = [threading.Thread(target=http.post, args=("/v1/events/custom",), kwargs={"content": EVENT}) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(http.transport._all) == 2  # type: ignore[attr-defined]


@pytest.fixture
def closing_server() -> Iterator[tuple[str, list[bytes]]]:
    """Answers each request with 200 and keep-alive, then closes the connection anyway, as a
    server ending an idle keep-alive connection does. Records every request line it reads."""
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                data = conn.recv(65536)
                seen.append(data.split(b"\r\n", 1)[0])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    stop.set()
    thread.join(5)
    listener.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_and_nothing_is_sent_twice(closing_server):
    url, seen = closing_server
    http = Http(url, {}, 5.0)
    assert http.post("/a", content=b"1").status_code == 200
    threading.Event().wait(0.2)  # the server has closed the idle connection by now
    assert http.post("/b", content=b"2").status_code == 200
    assert seen == [b"POST /a HTTP/1.1", b"POST /b HTTP/1.1"]


def test_a_slow_answer_is_a_read_timeout(sandbox: Sandbox):
    sandbox.state.latency_ms = 1500
    with pytest.raises(httpx.ReadTimeout):
        Http(sandbox.url, AUTH, 0.3).post("/v1/events/custom", content=EVENT)


def test_the_deadline_not_a_socket_timeout_bounds_an_exchange(sandbox: Sandbox):
    """Once connected, a connection's socket blocks without a timeout: each send and receive
    is one system call, not a poll and then the call (two hand-overs of the GIL in a busy
    process). A silent server is still cut off at the deadline."""
    http = Http(sandbox.url, AUTH, 0.5)
    assert http.post("/v1/events/custom", content=EVENT).status_code == 200
    [conn] = http.transport._all  # type: ignore[attr-defined]
    assert conn.sock.gettimeout() is None
    sandbox.state.latency_ms = 3000
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/events/custom", content=EVENT)
    assert 0.45 < time.monotonic() - started < 1.0


def test_a_request_past_its_leave_by_is_not_sent(sandbox: Sandbox):
    """`LEAVE_BY` is checked right before the first byte: a request late for it raises
    `LateToLeave` and the server sees nothing; one on time goes."""
    http = Http(sandbox.url, AUTH, 5.0)
    token = LEAVE_BY.set(time.time() - 0.01)
    try:
        with pytest.raises(LateToLeave):
            http.post("/v1/events/custom", content=EVENT)
    finally:
        LEAVE_BY.reset(token)
    assert sandbox.state.requests == []
    token = LEAVE_BY.set(time.time() + 5)
    try:
        assert http.post("/v1/events/custom", content=EVENT).status_code == 200
    finally:
        LEAVE_BY.reset(token)
    assert len(sandbox.state.requests) == 1


def test_nobody_listening_is_a_connect_error():
    with pytest.raises(httpx.ConnectError):
        Http("http://127.0.0.1:9", {}, 2.0).post("/v1/events/custom", content=EVENT)


def test_an_untrusted_certificate_is_refused_and_a_trusted_one_accepted(tmp_path):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    errors: list[str] = []

    def serve(times: int) -> None:
        for _ in range(times):
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    received = b""
                    while not received.endswith(b"\r\n\r\nx"):  # the whole request, body included
                        received += tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            except (ssl.SSLError, OSError) as exc:
                errors.append(repr(exc))  # the client refused our certificate

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    with pytest.raises(httpx.ConnectError):
        Http(f"https://127.0.0.1:{port}", {}, 5.0).post("/", content=b"x")
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    transport = StdlibTransport(5.0, ssl_context=trusting)
    assert Http(f"https://127.0.0.1:{port}", {}, 5.0, transport).post("/", content=b"x").status_code == 200
    thread.join(5)
    listener.close()
    assert len(errors) == 1 and "UNKNOWN_CA" in errors[0], errors


def test_an_answer_trickled_past_the_timeout_is_cut_off_at_the_deadline():
    """Each byte arrives well inside the per-read timeout, but the whole answer would take 6 s:
    the exchange ends at the deadline (the lease fence counts on it), as a timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
            for _ in range(20):
                if stop.wait(0.3):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    http = Http(f"http://127.0.0.1:{listener.getsockname()[1]}", AUTH, 1.0)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/events/custom", content=EVENT)
    took = time.monotonic() - started
    stop.set()
    server.join(5)
    listener.close()
    assert 0.9 < took < 1.5, f"cut off after {took:.2f} s"
