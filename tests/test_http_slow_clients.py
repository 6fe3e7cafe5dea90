"""Hostile and careless uploaders against a real server on loopback, over raw sockets.

Idle or trickling bodies must not take the quota or the upload slots: a body that brings
too few bytes within ``upload_idle_seconds`` is cut (408, its ``.part`` removed, its
reservation released), a reservation grows with the bytes that arrived instead of holding
the declared size, a client holds at most ``uploads_per_client`` slots, and an upload that
finds no slot within ``upload_slot_wait_seconds`` is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import wait_until
from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.limits import UPLOAD_RESERVATION_STEP_BYTES
from paglets_artifacts.http.server import ServerThread

GiB = 1024**3
H = b"Host: x\r\n"


def _headers(length: int, *, query: str = "") -> bytes:
    return b"POST /artifacts" + query.encode() + b" HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % length


class Server:
    """A real server on loopback with a store on the shared Redis index."""

    def __init__(self, settings: Settings, jobs: ArtifactJobs):
        self.settings = settings
        self.store = ArtifactStore.from_settings(settings, redis=jobs.client)
        self.thread = ServerThread(create_app(settings, store=self.store, jobs=jobs)).start()
        self.url = self.thread.url
        host, port = self.url.rsplit("/", 1)[-1].rsplit(":", 1)
        self.address = (host, int(port))
        self.sockets: list[socket.socket] = []

    def open(self, request: bytes, *, timeout: float = 30.0) -> socket.socket:
        """A connection that sent ``request`` and then nothing more."""
        conn = socket.create_connection(self.address, timeout=timeout)
        conn.sendall(request)
        self.sockets.append(conn)
        return conn

    def parts(self) -> list[Path]:
        return sorted(self.store.tmp_dir.glob("*.part"))

    def close(self) -> None:
        for conn in self.sockets:
            conn.close()
        self.thread.stop()


@pytest.fixture
def serve(settings: Settings, jobs: ArtifactJobs) -> Iterator:
    servers: list[Server] = []

    def start(**changes) -> Server:
        server = Server(settings.with_changes(**changes), jobs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _answer(conn: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Read one whole answer (the server closes the connection after it)."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body) if body.startswith(b"{") else {}


def _reservations(server: Server) -> int:
    return server.store.index.figures()["reservations"]


def test_ten_idle_quota_sized_uploads_do_not_take_the_quota(serve, files):
    # The default quota (10 GiB) and artifact cap (1 GiB): ten bodies of 1 GiB each declare it all.
    server = serve(upload_idle_seconds=3.0, uploads_per_client=64)
    assert server.store.quota_bytes == 10 * GiB
    idle = [server.open(_headers(GiB)) for _ in range(10)]
    wait_until(lambda: len(server.parts()) == 10, timeout=10)  # all ten admitted, none sent a byte
    assert server.store.index.used_bytes() <= 10 * UPLOAD_RESERVATION_STEP_BYTES

    data = os.urandom(1_000_000)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/artifacts", params={"owner_agent_id": "legit"}, content=data)
    assert answer.status_code == 200, answer.text
    source = files / "model.bin"
    source.write_bytes(data)
    imported = server.store.create_from_path(source, owner_agent_id="legit")  # what an import job runs
    assert imported.ref.size_bytes == len(data)

    for conn in idle:
        status, _headers_, body = _answer(conn)
        assert status == 408 and body["error_class"] == "UploadTooSlow"
    wait_until(lambda: server.parts() == [], timeout=10)
    assert _reservations(server) == 0
    assert server.store.index.used_bytes() == 2 * len(data)


def test_sixty_four_idle_uploaders_do_not_keep_the_next_upload_waiting(serve):
    server = serve(
        upload_idle_seconds=1.0, upload_min_bytes_per_second=1024, uploads_per_client=64, upload_slot_wait_seconds=20.0
    )
    silent = [server.open(_headers(100_000)) for _ in range(32)]
    trickling = [server.open(_headers(100_000)) for _ in range(32)]
    stop = threading.Event()

    def trickle() -> None:  # one byte per connection every 0.2 s: alive, but far below the rate
        while not stop.wait(0.2):
            for conn in trickling:
                try:
                    conn.send(b"x")
                except OSError:
                    pass

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(server.parts()) == 64, timeout=10)  # every slot taken
        data = os.urandom(200_000)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/artifacts").status_code == 200  # reads are served meanwhile
            answer = client.post("/artifacts", content=data)
        assert answer.status_code == 200, answer.text
        assert answer.json()["artifact"]["size_bytes"] == len(data)
    finally:
        stop.set()
        sender.join(5)
    for conn in silent + trickling:
        status, _headers_, body = _answer(conn)
        assert status == 408 and body["error_class"] == "UploadTooSlow", body
    wait_until(lambda: server.parts() == [], timeout=10)
    assert _reservations(server) == 0


def test_an_idle_upload_is_cut_and_leaves_no_part_and_no_reservation(serve):
    server = serve(upload_idle_seconds=1.0)
    conn = server.open(_headers(1_000_000) + b"y" * 100)
    status, headers, body = _answer(conn)
    assert status == 408
    assert headers.get("connection") == "close"
    assert body["error_type"] == "TransferError" and body["error_class"] == "UploadTooSlow"
    assert "100 bytes" in body["error"] and "1 s" in body["error"], body["error"]
    assert server.parts() == []
    assert _reservations(server) == 0
    assert server.store.index.used_bytes() == 0
    assert server.store.list() == []


def test_a_trickling_upload_below_the_minimum_rate_is_cut(serve):
    server = serve(upload_idle_seconds=0.5, upload_min_bytes_per_second=4096)
    conn = server.open(_headers(1_000_000))
    stop = threading.Event()

    def trickle() -> None:  # 100 bytes every 0.1 s: 1 kB/s, under the 4 kB/s asked for
        while not stop.wait(0.1):
            try:
                conn.send(b"z" * 100)
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        status, _headers_, body = _answer(conn)
    finally:
        stop.set()
        sender.join(5)
    assert status == 408 and body["error_class"] == "UploadTooSlow"
    assert "bytes per second" in body["error"], body["error"]
    wait_until(lambda: server.parts() == [], timeout=10)
    assert _reservations(server) == 0


def test_a_slow_but_steady_upload_above_the_minimum_rate_is_kept(serve):
    server = serve(upload_idle_seconds=1.0, upload_min_bytes_per_second=1024)
    data = os.urandom(64 * 1024)
    conn = server.open(_headers(len(data)))
    for offset in range(0, len(data), 8192):  # 8 kB every 0.1 s: 80 kB/s, well above 1 kB/s
        conn.sendall(data[offset : offset + 8192])
        threading.Event().wait(0.1)
    status, _headers_, body = _answer_keep_alive(conn)
    assert status == 200, body
    assert body["artifact"]["size_bytes"] == len(data)


def _answer_keep_alive(conn: socket.socket) -> tuple[int, dict[str, str], dict]:
    """One answer on a connection the server keeps open (read up to its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += conn.recv(65536)
    return int(lines[0].split(" ", 2)[1]), headers, json.loads(body)


def test_a_reservation_grows_with_the_bytes_that_arrived(serve):
    server = serve(upload_idle_seconds=5.0)
    step = UPLOAD_RESERVATION_STEP_BYTES
    size = 4 * step
    conn = server.open(_headers(size))
    wait_until(lambda: len(server.parts()) == 1, timeout=10)
    assert server.store.index.used_bytes() == step  # one step ahead of 0 bytes, not the 4 declared
    sent = step + 4 * 1024 * 1024
    conn.sendall(b"\0" * sent)
    wait_until(lambda: server.parts()[0].stat().st_size > step, timeout=10)
    assert step < server.store.index.used_bytes() <= sent + step < size
    conn.sendall(b"\0" * (size - sent))
    status, _headers_, body = _answer_keep_alive(conn)
    assert status == 200, body
    assert server.store.index.used_bytes() == size
    assert _reservations(server) == 0


def test_a_declared_size_over_the_free_quota_is_refused_before_a_byte(serve):
    server = serve(quota_bytes=1_000_000)
    conn = server.open(_headers(1_000_001))
    status, _headers_, body = _answer(conn)
    assert status == 413 and body["error_class"] == "QuotaExceeded"
    assert server.parts() == [] and _reservations(server) == 0


class _Gated:
    """A body of ``size`` zero bytes whose bytes after the first ``first`` wait for ``gate``."""

    def __init__(self, size: int, first: int = 0, gate: threading.Event | None = None):
        self.left, self.before_gate, self.gate = size, first, gate

    def read(self, n: int = -1) -> bytes:
        if self.left == 0:
            return b""
        if self.gate is not None and self.before_gate == 0:
            self.gate.wait(10)
            self.gate = None
        take = min(self.left, 65536)
        if self.gate is not None:
            take = min(take, self.before_gate)
            self.before_gate -= take
        self.left -= take
        return b"\0" * take


def test_a_growing_reservation_is_refused_once_the_quota_filled_and_is_released(settings, redis_client):
    step = UPLOAD_RESERVATION_STEP_BYTES
    store = ArtifactStore.from_settings(settings.with_changes(quota_bytes=2 * step + 10), redis=redis_client)
    gate = threading.Event()
    errors: list[BaseException] = []

    def first_upload() -> None:  # declares 2 steps, which fit at its start
        try:
            store.create_from_stream(_Gated(2 * step, 65536, gate), size_bytes=2 * step, reserve_ahead_bytes=step)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first_upload)
    thread.start()
    wait_until(lambda: list(store.tmp_dir.glob("*.part")), timeout=10)
    store.create_from_stream(_Gated(step + 5), size_bytes=step + 5)  # takes the room meanwhile
    gate.set()
    thread.join(30)
    assert len(errors) == 1 and type(errors[0]).__name__ == "QuotaExceeded", errors
    assert list(store.tmp_dir.glob("*.part")) == []
    assert store.index.figures()["reservations"] == 0
    assert store.index.used_bytes() == step + 5


@pytest.mark.parametrize("ahead", [0, -1, True, 1.5])
def test_a_reserve_ahead_that_is_not_a_positive_whole_number_is_invalid_input(tmp_path, ahead):
    from paglets_artifacts.errors import InvalidInput

    store = ArtifactStore(tmp_path / "store", host_url="http://h")
    with pytest.raises(InvalidInput, match="reserve_ahead_bytes"):
        store.create_from_stream(_Gated(10), size_bytes=10, reserve_ahead_bytes=ahead)
    assert list(store.tmp_dir.iterdir()) == []


def test_uploads_over_the_per_client_limit_wait_then_get_503_with_retry_after(serve):
    server = serve(uploads_per_client=2, upload_slot_wait_seconds=0.5, upload_idle_seconds=30.0)
    held = [server.open(_headers(10_000)) for _ in range(2)]
    wait_until(lambda: len(server.parts()) == 2, timeout=10)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/artifacts", content=b"late")
        assert client.get("/artifacts").status_code == 200  # reads are not limited
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) >= 1
    body = answer.json()
    assert body["error_type"] == "RemoteHostError" and body["error_class"] == "UploadSlotsBusy"
    assert "2 uploads" in body["error"], body["error"]
    assert len(server.parts()) == 2  # the refused upload wrote nothing
    for conn in held:
        conn.sendall(b"\0" * 10_000)
        assert _answer_keep_alive(conn)[0] == 200


def test_an_upload_waiting_for_a_slot_gets_one_when_a_holder_finishes(serve):
    server = serve(uploads_per_client=1, upload_slot_wait_seconds=20.0)
    holder = server.open(_headers(1000))
    wait_until(lambda: len(server.parts()) == 1, timeout=10)
    answers: list[httpx.Response] = []

    def waiter() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers.append(client.post("/artifacts", content=b"second"))

    thread = threading.Thread(target=waiter)
    thread.start()
    holder.sendall(b"\0" * 1000)
    assert _answer_keep_alive(holder)[0] == 200
    thread.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert sorted(ref.size_bytes for ref in server.store.list()) == [6, 1000]


def test_idle_uploads_from_one_address_leave_the_other_addresses_their_slots(serve):
    server = serve(uploads_per_client=8, upload_idle_seconds=30.0, upload_slot_wait_seconds=30.0)
    [server.open(_headers(100_000)) for _ in range(64)]  # from 127.0.0.1: 8 admitted, 56 waiting
    wait_until(lambda: len(server.parts()) == 8, timeout=10)
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=server.url, timeout=5, transport=transport) as other:
        answer = other.post("/artifacts", content=b"from another address")
    assert answer.status_code == 200, answer.text  # admitted at once, not after the idle ones
    assert len(server.parts()) == 8


def test_quota_takers_and_slot_takers_together_still_let_a_small_upload_through(serve):
    server = serve(upload_idle_seconds=1.0, uploads_per_client=0, upload_slot_wait_seconds=20.0)
    idle = [server.open(_headers(GiB)) for _ in range(10)] + [server.open(_headers(100_000)) for _ in range(64)]
    wait_until(lambda: len(server.parts()) == 64, timeout=10)  # every slot taken, 10 more waiting
    assert server.store.index.used_bytes() <= 64 * UPLOAD_RESERVATION_STEP_BYTES
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/artifacts", content=os.urandom(300_000))
    assert answer.status_code == 200, answer.text
    for conn in idle:
        status, _headers_, body = _answer(conn)
        assert status == 408 and body["error_class"] == "UploadTooSlow", body  # waiters too, once admitted
    wait_until(lambda: server.parts() == [], timeout=10)
    assert _reservations(server) == 0
    assert server.store.index.used_bytes() == 300_000


def test_an_idle_chunked_upload_is_cut_and_leaves_no_part_and_no_reservation(serve):
    server = serve(upload_idle_seconds=1.0)
    conn = server.open(
        b"POST /artifacts HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + b"c" * 16 + b"\r\n"
    )
    status, headers, body = _answer(conn)
    assert status == 408 and headers.get("connection") == "close"
    assert body["error_class"] == "UploadTooSlow" and "16 bytes" in body["error"], body
    assert server.parts() == [] and _reservations(server) == 0 and server.store.index.used_bytes() == 0


def test_a_chunked_upload_holds_a_step_ahead_of_its_bytes_and_then_exactly_its_size(serve):
    server = serve(upload_idle_seconds=5.0)
    conn = server.open(b"POST /artifacts HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
    conn.sendall(b"%x\r\n" % 2_000_000 + b"\0" * 2_000_000 + b"\r\n")
    wait_until(lambda: server.parts() and server.parts()[0].stat().st_size > 0, timeout=10)
    assert 0 < server.store.index.used_bytes() <= 2_000_000 + UPLOAD_RESERVATION_STEP_BYTES
    conn.sendall(b"0\r\n\r\n")
    status, _headers_, body = _answer_keep_alive(conn)
    assert status == 200, body
    assert server.store.index.used_bytes() == 2_000_000 and _reservations(server) == 0
