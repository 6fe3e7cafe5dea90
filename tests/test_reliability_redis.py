"""Redis restarts under load, on a Redis these tests start and stop themselves.

Two kinds of restart: a graceful one that keeps the data (``SHUTDOWN SAVE``, then the same
server again), and one that comes back empty (persistence off: queues, job records and
the index are gone). Workers and hosts must reconnect on their own; jobs in flight finish
or are reported (a job Redis forgot is a ``LookupError``, never a record stuck in
``running``); nothing on disk is lost; the index is rebuilt from the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import age_temporary_files, wait_until
from paglets_artifacts import ArtifactJobs, ArtifactRef, ArtifactStore, JobTimeout, Settings
from paglets_artifacts.redis_server import EmbeddedRedis

MiB = 1024 * 1024
#: Dramatiq restarts a consumer that lost its connection after 3 s; tests need not wait that long.
QUICK_RECONNECT = {"dramatiq_restart_delay": "300"}


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis for this test alone (never the session's): it is restarted under load."""
    server = EmbeddedRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_settings(settings: Settings, own_redis: EmbeddedRedis) -> Settings:
    return settings.with_changes(redis_url=own_redis.url, fsync=True)


def restart_keeping_data(server: EmbeddedRedis, *, down_seconds: float = 0.5) -> None:
    """``SHUTDOWN SAVE``, stay down a moment, start the same server on the same port and data."""
    # No client retries: the server closing the connection is the expected answer.
    client = redis.Redis(host="127.0.0.1", port=server.port, password=server.password, retry=Retry(NoBackoff(), 0))
    try:
        client.shutdown(save=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    finally:
        client.close()
    server.process.wait(timeout=10)
    time.sleep(down_seconds)
    server.start()


def restart_empty(server: EmbeddedRedis, *, down_seconds: float = 0.5) -> None:
    """Stop the server without saving, stay down a moment, start it again empty."""
    port = server.port
    server.stop()
    data_dir = getattr(server, "_dir", None)
    if data_dir is not None:  # a snapshot an earlier graceful restart saved must not come back
        for snapshot in Path(data_dir.name).glob("*.rdb"):
            snapshot.unlink()
    time.sleep(down_seconds)
    server.port = port
    server.start()


class Load:
    """Imports enqueued in a batch, and a host thread waiting for the last one across the restart.

    Parameters:
      jobs(ArtifactJobs): the host.
      files(Path): the allowed root the sources are written to.
      count(int): how many imports.
    """

    def __init__(self, jobs: ArtifactJobs, files: Path, count: int):
        self.jobs = jobs
        self.shas: dict[str, str] = {}  # job id -> sha of its source
        self.handles = []
        for i in range(count):
            data = os.urandom(4 * MiB)
            source = files / f"load-{i}.bin"
            source.write_bytes(data)
            handle = jobs.import_file(str(source), owner_agent_id=f"owner-{i % 3}")
            self.shas[handle.id] = hashlib.sha256(data).hexdigest()
            self.handles.append(handle)
        self.waited: dict[str, object] = {}
        self.waiter = threading.Thread(target=self._wait_for_last, daemon=True)
        self.waiter.start()

    def _wait_for_last(self) -> None:
        try:
            self.waited["result"] = self.handles[-1].wait(90)
        except BaseException as exc:  # what the host saw is what the test checks
            self.waited["error"] = exc

    def states(self) -> dict[str, str | None]:
        states = {}
        for handle in self.handles:
            record = self.jobs.records.get(handle.id)
            states[handle.id] = record.state if record else None
        return states

    def wait_until_busy(self) -> None:
        """Until a few imports succeeded while others still wait: the restart lands mid-load."""
        wait_until(
            lambda: sum(state == "succeeded" for state in self.states().values()) >= 2, timeout=60, interval=0.005
        )


def _committed(store: ArtifactStore) -> dict[str, str]:
    """Artifact id -> sha256 of every artifact whose metadata and blob are both on disk."""
    found = {}
    for meta in store.metadata_dir.glob("*.json"):
        if (store.blobs_dir / f"{meta.stem}.bin").exists():
            found[meta.stem] = store.ref(meta.stem).sha256
    return found


def _assert_store_whole(store: ArtifactStore) -> None:
    metas = {p.stem for p in store.metadata_dir.glob("*.json")}
    blobs = {p.stem for p in store.blobs_dir.glob("*.bin")}
    assert metas == blobs
    for artifact_id in blobs:
        blob = store.blobs_dir / f"{artifact_id}.bin"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == store.ref(artifact_id).sha256
    assert store.index.used_bytes() == sum(p.stat().st_size for p in store.blobs_dir.glob("*.bin"))
    assert sorted(store.index.all_ids()) == sorted(blobs)


def test_jobs_in_flight_finish_when_redis_restarts_with_its_data(own_redis, own_settings, files, workers):
    jobs = ArtifactJobs(settings=own_settings)
    load = Load(jobs, files, 40)
    workers.start(settings=own_settings, processes=1, threads=2, extra_env=QUICK_RECONNECT)
    load.wait_until_busy()
    before = load.states()
    restart_keeping_data(own_redis)
    assert any(state != "succeeded" for state in before.values()), "the restart did not land mid-load"

    # Every job ends, none is stuck in "running" or "retrying", none is duplicated or lost.
    for handle in load.handles:
        ref = ArtifactRef.from_wire(handle.wait(90))
        assert ref.artifact_id == uuid.UUID(handle.id).hex and ref.sha256 == load.shas[handle.id]
    load.waiter.join(30)
    assert "error" not in load.waited, load.waited.get("error")  # the waiting host reconnected
    store = ArtifactStore.from_settings(own_settings, redis=jobs.client)
    assert _committed(store) == {uuid.UUID(job_id).hex: sha for job_id, sha in load.shas.items()}
    jobs.sweep().wait(30)
    assert list(store.tmp_dir.iterdir()) == []
    _assert_store_whole(store)
    jobs.close()


def test_a_redis_that_comes_back_empty_loses_no_file_and_reports_what_it_forgot(
    own_redis, own_settings, files, workers
):
    jobs = ArtifactJobs(settings=own_settings)
    store = ArtifactStore.from_settings(own_settings, redis=jobs.client)
    load = Load(jobs, files, 40)
    workers.start(settings=own_settings, processes=1, threads=2, extra_env=QUICK_RECONNECT)
    load.wait_until_busy()
    on_disk_before = _committed(store)
    restart_empty(own_redis)

    # Workers reconnect on their own: a job enqueued after the restart runs.
    probe = files / "after-restart.bin"
    probe.write_bytes(os.urandom(MiB))
    after = ArtifactRef.from_wire(jobs.import_file(str(probe)).wait(60))

    # Each job of the load either finished (its record is back, with its result) or is
    # reported unknown (Redis forgot its message): never a record left non-final.
    finished = forgotten = 0
    for handle in load.handles:
        try:
            ref = ArtifactRef.from_wire(handle.wait(60))
        except LookupError:
            # Redis forgot the job: it was still queued (no artifact), or it had finished
            # (its artifact, named by the job id, is on disk and whole).
            forgotten += 1
            sha = _committed(store).get(uuid.UUID(handle.id).hex)
            assert sha in (None, load.shas[handle.id])
            continue
        finished += 1
        assert ref.sha256 == load.shas[handle.id]
    assert finished + forgotten == len(load.handles) and forgotten > 0
    load.waiter.join(30)
    waited = load.waited.get("error", load.waited.get("result"))
    assert isinstance(waited, (LookupError, dict)), waited  # reported, not a connection error

    # Nothing that was on disk is lost; everything on disk is whole; the index was rebuilt.
    now_on_disk = _committed(store)
    assert on_disk_before.items() <= now_on_disk.items()
    assert after.artifact_id in now_on_disk
    for artifact_id, sha in now_on_disk.items():
        if artifact_id != after.artifact_id:
            job_id = str(uuid.UUID(artifact_id))
            assert load.shas[job_id] == sha  # one artifact per job, the right bytes
    age_temporary_files(store, own_settings.spool_ttl_seconds + 1)
    report = jobs.sweep().wait(30)
    assert report["orphans_removed"] == 0
    assert list(store.tmp_dir.iterdir()) == []
    _assert_store_whole(store)
    assert store.index.is_built()
    jobs.close()


def test_a_host_waiting_for_a_job_reconnects_after_a_restart(own_redis, own_settings):
    jobs = ArtifactJobs(settings=own_settings)
    job = jobs.sweep()  # no worker: it stays queued
    outcome: dict[str, BaseException] = {}

    def wait() -> None:
        try:
            job.wait(1.5)
        except BaseException as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    restart_keeping_data(own_redis, down_seconds=0.5)
    waiter.join(10)
    assert isinstance(outcome["error"], JobTimeout)  # it kept waiting through the restart
    assert job.status().state == "queued"

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    restart_empty(own_redis, down_seconds=0.3)
    waiter.join(10)
    assert isinstance(outcome["error"], LookupError) and "Redis lost it" in str(outcome["error"])
    jobs.close()


def test_waiting_on_a_redis_that_stays_down_raises_its_connection_error_at_the_deadline(own_redis, own_settings):
    jobs = ArtifactJobs(settings=own_settings)
    job = jobs.sweep()
    own_redis.stop()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        job.wait(1.0)
    assert time.monotonic() - started >= 1.0
    jobs.close()


# ---------------------------------------------------------------------- password and TLS


class TlsProxy:
    """Terminates TLS on a free loopback port and forwards the bytes to a plain Redis port.

    The embedded ``redis-server`` is built without TLS; with this in front of it, hosts and
    workers speak ``rediss://`` exactly as they would to a TLS-enabled Redis.

    Parameters:
      target_port(int): the plain Redis port.
      cert(Path), key(Path): the server certificate and its key.
    """

    def __init__(self, target_port: int, cert: Path, key: Path):
        import socket
        import ssl

        self.target_port = target_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        self._sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self._closed:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except OSError:
                raw.close()  # a client that does not speak TLS, or does not trust us
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [conn, upstream]
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """A password-protected Redis reached through TLS: (``rediss://`` URL, CA file, password)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    password = "tls-redis-pw-51e0"
    with EmbeddedRedis(password=password) as server:
        proxy = TlsProxy(server.port, cert, key)
        try:
            yield f"rediss://:{password}@127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}", cert, password
        finally:
            proxy.close()


def test_hosts_and_workers_speak_tls_to_a_password_protected_redis(tls_redis, settings, files, workers):
    url, cert, password = tls_redis
    secured = settings.with_changes(redis_url=url)
    assert password not in repr(secured)
    workers.start(settings=secured)
    jobs = ArtifactJobs(settings=secured)
    (files / "over-tls.bin").write_bytes(b"sent through TLS")
    ref = ArtifactRef.from_wire(jobs.import_file(str(files / "over-tls.bin")).wait(60))
    assert ref.size_bytes == 16
    assert password not in workers.logs()
    jobs.close()

    port = url.split("@127.0.0.1:", 1)[1].split("/", 1)[0]
    plain = redis.Redis.from_url(
        f"redis://:{password}@127.0.0.1:{port}/0", socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis.RedisError):  # the port speaks TLS only
        plain.ping()
    untrusting = redis.Redis.from_url(f"rediss://:{password}@127.0.0.1:{port}/0", retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError, match="(?i)certificate"):  # and the certificate is checked
        untrusting.ping()
    wrong = redis.Redis.from_url(url.replace(password, "wrong-password"), retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()


def test_the_http_host_answers_again_after_redis_restarts(own_redis, own_settings):
    import httpx

    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread

    jobs = ArtifactJobs(settings=own_settings)
    with ServerThread(create_app(own_settings, jobs=jobs)) as server, httpx.Client(base_url=server.url) as client:
        first = client.post("/jobs/sweep", json={})
        assert first.status_code == 202, first.text
        job_id = first.json()["job_id"]
        restart_keeping_data(own_redis)
        assert client.get(f"/jobs/{job_id}").json()["job"]["state"] == "queued"  # reconnected, data kept
        restart_empty(own_redis)
        gone = client.get(f"/jobs/{job_id}")
        assert gone.status_code == 404 and gone.json()["error"]  # reported unknown
        assert client.post("/jobs/sweep", json={}).status_code == 202
        assert client.get("/artifacts").status_code == 200  # the index is rebuilt on demand
    jobs.close()


# ---------------------------------------------------------------------- a Redis that hangs


@contextlib.contextmanager
def paused(server: EmbeddedRedis) -> Iterator[None]:
    """Redis stopped with SIGSTOP: connections open, nothing answers (a hung server, a
    network that drops packets); always resumed with SIGCONT."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


@pytest.fixture
def hung_settings(own_settings: Settings) -> Settings:
    return own_settings.with_changes(redis_timeout_seconds=1.0)


@pytest.mark.timeout(120)
def test_the_http_host_answers_503_naming_redis_while_redis_hangs(hung_settings, own_redis):
    import httpx

    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread

    with ServerThread(create_app(hung_settings)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        uploaded = http.post("/artifacts", params={"owner_agent_id": "o"}, content=b"before")
        assert uploaded.status_code == 200, uploaded.text
        artifact_id = uploaded.json()["artifact"]["artifact_id"]
        assert http.get("/jobs").status_code == 200
        kept = http.post("/artifacts", params={"owner_agent_id": "o"}, content=b"kept").json()["artifact"]
        with paused(own_redis):
            answers = {
                "upload": http.post("/artifacts", params={"owner_agent_id": "o"}, content=b"during"),
                "delete": http.delete(f"/artifacts/{artifact_id}"),
                "job listing": http.get("/jobs"),
                "enqueue": http.post("/jobs/sweep", json={}),
            }
            # reading needs no Redis: the owner listing scans the directory once Redis is silent
            listed = http.get("/artifacts", params={"owner_agent_id": "o"})
            assert listed.status_code == 200 and listed.json()["artifacts"] == [kept]
        for what, answer in answers.items():
            assert answer.status_code == 503, (what, answer.text)
            assert "Redis" in answer.json()["error"], (what, answer.text)
        # Redis answers again: so does the host. A command that timed out may still have
        # run when Redis woke up (the deletion's index update did, after its files went), so
        # the client repeats the deletion, which is idempotent; the refused upload left no file.
        assert http.get("/jobs").status_code == 200
        assert http.delete(f"/artifacts/{artifact_id}").status_code == 200
        assert http.get("/artifacts", params={"owner_agent_id": "o"}).json()["artifacts"] == [kept]
        assert http.delete(f"/artifacts/{kept['artifact_id']}").status_code == 200
        store_root = Path(hung_settings.store_root)
        assert [path.name for path in store_root.rglob("*") if path.is_file()] == []


@pytest.mark.timeout(120)
def test_the_cli_and_a_host_get_an_error_naming_redis_while_redis_hangs(hung_settings, own_redis):
    from typer.testing import CliRunner

    from paglets_artifacts.cli import commands as cli

    env = hung_settings.to_env()
    with ArtifactJobs(settings=hung_settings) as host:
        host.jobs()  # connected before Redis hangs
        with paused(own_redis):
            with pytest.raises(redis.TimeoutError):
                host.sweep()
            with pytest.raises(redis.TimeoutError):
                host.jobs()
            for command in (["jobs"], ["check"], ["sweep"]):
                result = CliRunner().invoke(cli.app, command, env=env)
                assert result.exit_code == cli.EXIT_UNAVAILABLE, (command, result.stdout, result.stderr)
                assert result.stderr.strip().splitlines()[-1].startswith("cannot reach Redis at "), result.stderr
            listed = CliRunner().invoke(cli.app, ["list", "--owner", "o"], env=env)  # reads the directory
            assert listed.exit_code == 0 and "0 artifact(s)" in listed.stdout, listed.stderr
        # It recovers once Redis answers. An enqueue that timed out may have been carried out
        # when Redis woke up (see README: a hung Redis), so each sweep asked for is there at most once.
        assert {record.kind for record in host.jobs()} <= {"sweep"} and len(host.jobs()) <= 2


def test_waiting_for_a_job_outlasts_the_redis_timeout(hung_settings):
    """Job.wait blocks on pub/sub far longer than one socket timeout: that must not fail."""
    with ArtifactJobs(settings=hung_settings) as host:
        job = host.sweep()  # no worker runs it
        with pytest.raises(JobTimeout):
            job.wait(timeout=3.5)


def test_the_redis_timeout_is_a_setting_with_a_default():
    assert Settings().redis_timeout_seconds == 5.0
    assert Settings.from_env({"PAGLETS_ARTIFACTS_REDIS_TIMEOUT_SECONDS": "2.5"}).redis_timeout_seconds == 2.5


def test_every_client_of_a_host_the_cli_and_the_http_host_carries_the_redis_timeout(hung_settings):
    from paglets_artifacts.cli import commands as cli
    from paglets_artifacts.jobs.client import connect

    def timeouts(client: redis.Redis) -> tuple:
        options = client.connection_pool.connection_kwargs
        return options.get("socket_timeout"), options.get("socket_connect_timeout")

    with ArtifactJobs(settings=hung_settings) as host:
        assert timeouts(host.client) == (1.0, 1.0)
    assert timeouts(cli._open_store(hung_settings).index.client) == (1.0, 1.0)
    assert timeouts(connect(hung_settings)) == (1.0, 1.0)
