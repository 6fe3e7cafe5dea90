"""Host-to-host transfers: two hosts (two stores, two servers, one Redis) and real workers."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from paglets_artifacts import (
    ArtifactJobs,
    ArtifactRef,
    ArtifactStore,
    ChecksumMismatch,
    HostNotAllowed,
    JobFailed,
    OwnerDeleted,
    RemoteError,
    Settings,
    SizeMismatch,
    Transient,
)
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.remote import RemoteTransfers, RemoteUnavailable, host_allowed
from paglets_artifacts.http.server import ServerThread
from paglets_artifacts.redis_server import delete_namespace, free_port

KEY_B = "key-of-host-b"
PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _leftovers(store: ArtifactStore) -> list[str]:
    return sorted(str(path.relative_to(store.root)) for path in store.root.rglob("*") if path.is_file())


def _blob_sha(store: ArtifactStore, artifact_id: str) -> str:
    with store.open_reader(artifact_id) as blob:
        return hashlib.sha256(blob.read()).hexdigest()


def _tamper(store: ArtifactStore, artifact_id: str) -> None:
    """Flip bytes in a committed blob, keeping its length: its metadata now lies."""
    with open(store.blobs_dir / f"{artifact_id}.bin", "r+b") as blob:
        blob.seek(1000)
        old = blob.read(16)
        blob.seek(1000)
        blob.write(bytes(b ^ 0xFF for b in old))


class OddHost:
    """A misbehaving remote: flaky, redirecting, lying about checksums or refs.

    ``/flaky/data.bin`` answers 503 ``failures`` times, then the bytes.
    """

    def __init__(self, failures: int = 2):
        self.failures = failures
        self.requests = 0

    async def flaky(self, request: Request) -> Response:
        self.requests += 1
        if self.requests <= self.failures:
            return JSONResponse({"error_type": "RemoteHostError", "error": "busy"}, status_code=503)
        return Response(
            PAYLOAD, media_type="application/octet-stream", headers={"X-Paglets-Artifact-Sha256": PAYLOAD_SHA}
        )

    async def plain(self, request: Request) -> Response:
        return Response(PAYLOAD, media_type="application/octet-stream")

    async def wrong_bytes(self, request: Request) -> Response:
        return Response(PAYLOAD[:-1] + b"!", headers={"X-Paglets-Artifact-Sha256": PAYLOAD_SHA})

    async def bad_header(self, request: Request) -> Response:
        return Response(PAYLOAD, headers={"X-Paglets-Artifact-Sha256": "not-a-sha"})

    async def redirect(self, request: Request) -> Response:
        return RedirectResponse("http://elsewhere.invalid/data.bin", status_code=302)

    async def teapot(self, request: Request) -> Response:
        return Response("I am a teapot", status_code=418)

    async def wrong_ref(self, request: Request) -> Response:
        async for _ in request.stream():
            pass
        ref = ArtifactRef(host_url="http://odd", artifact_id="ef" * 16, size_bytes=1, sha256="0" * 64)
        return JSONResponse({"artifact": ref.to_wire()})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/flaky/data.bin", self.flaky),
                Route("/files/plain.bin", self.plain),
                Route("/wrong/data.bin", self.wrong_bytes),
                Route("/bad-header/data.bin", self.bad_header),
                Route("/redirect/data.bin", self.redirect),
                Route("/teapot/data.bin", self.teapot),
                Route("/liar/artifacts", self.wrong_ref, methods=["POST"]),
            ]
        )


@dataclass
class Host:
    settings: Settings
    store: ArtifactStore
    jobs: ArtifactJobs
    server: ServerThread

    @property
    def url(self) -> str:
        return self.settings.host_url


def _start_host(settings: Settings, port: int) -> Host:
    store = ArtifactStore.from_settings(settings)
    jobs = ArtifactJobs(settings=settings)
    server = ServerThread(create_app(settings, store=store, jobs=jobs), port=port).start()
    return Host(settings, store, jobs, server)


@pytest.fixture
def odd() -> Iterator[tuple[OddHost, ServerThread]]:
    host = OddHost()
    with ServerThread(host.app()) as server:
        yield host, server


@pytest.fixture
def hosts(settings: Settings, tmp_path: Path, redis_url: str, odd) -> Iterator[tuple[Host, Host]]:
    """Host A (no API key; may contact B and the odd host) and host B (API key; may contact A)."""
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    settings_a = settings.with_changes(
        host_url=url_a, allowed_hosts=(url_b, odd[1].url), host_api_keys=((url_b, KEY_B),)
    )
    settings_b = settings.with_changes(
        namespace=settings.namespace + "-b",
        store_root=tmp_path / "store-b",
        host_url=url_b,
        api_key=KEY_B,
        allowed_hosts=(url_a,),
    )
    a = _start_host(settings_a, port_a)
    b = _start_host(settings_b, port_b)
    yield a, b
    for host in (a, b):
        host.server.stop()
        host.jobs.close()
    client = redis.Redis.from_url(redis_url)
    delete_namespace(client, settings_b.namespace)
    client.close()


def _put(store: ArtifactStore, data: bytes = PAYLOAD, **options) -> ArtifactRef:
    return store.create_from_stream(io.BytesIO(data), size_bytes=len(data), **options).ref


# ---------------------------------------------------------------------- real workers, two hosts


def test_an_artifact_moves_between_two_hosts_in_both_directions(hosts, workers):
    a, b = hosts
    workers.start(settings=a.settings)
    workers.start(settings=b.settings)
    jobs_a, jobs_b = ArtifactJobs(settings=a.settings), ArtifactJobs(settings=b.settings)
    try:
        original = _put(a.store, owner_agent_id="agent-7", name="weights.bin", compression="zstd")

        # A's worker pushes to B and, once B confirmed, deletes its own copy.
        pushed = jobs_a.export_to_host(original.artifact_id, b.url, move=True).wait(60)
        on_b = ArtifactRef.from_wire(pushed)
        assert pushed["moved"] is True and pushed["source_artifact_id"] == original.artifact_id
        assert (on_b.host_url, on_b.sha256, on_b.size_bytes) == (b.url, PAYLOAD_SHA, len(PAYLOAD))
        assert (on_b.name, on_b.owner_agent_id, on_b.compression) == ("weights.bin", "agent-7", "zstd")
        assert _blob_sha(b.store, on_b.artifact_id) == PAYLOAD_SHA
        assert a.store.list() == []

        # A's worker pulls a copy back from B's GET /artifacts/{id} (B wants its key).
        job = jobs_a.import_url(f"{b.url}/artifacts/{on_b.artifact_id}", owner_agent_id="agent-7")
        copy = ArtifactRef.from_wire(job.wait(60))
        assert copy.artifact_id == job.id.replace("-", "")  # the job's own id: redelivery-safe
        assert (copy.sha256, copy.size_bytes, copy.name, copy.compression) == (
            PAYLOAD_SHA,
            len(PAYLOAD),
            "weights.bin",
            "zstd",
        )
        assert _blob_sha(a.store, copy.artifact_id) == PAYLOAD_SHA
        assert job.status().bytes_done == len(PAYLOAD)

        # B's worker moves its artifact back to A.
        back = ArtifactRef.from_wire(jobs_b.export_to_host(on_b.artifact_id, a.url, move=True).wait(60))
        assert back.host_url == a.url and _blob_sha(a.store, back.artifact_id) == PAYLOAD_SHA
        assert b.store.list() == []
        assert sorted(ref.artifact_id for ref in a.store.list()) == sorted([copy.artifact_id, back.artifact_id])
        assert not list(a.store.tmp_dir.iterdir()) and not list(b.store.tmp_dir.iterdir())
    finally:
        jobs_a.close()
        jobs_b.close()


def test_corrupted_transfers_fail_with_checksum_mismatch_and_leave_nothing(hosts, odd, workers):
    a, b = hosts
    workers.start(settings=a.settings)
    jobs = ArtifactJobs(settings=a.settings)
    try:
        # Pull: B serves bytes that do not hash to the SHA-256 its ref and header announce.
        on_b = _put(b.store, name="bad.bin")
        _tamper(b.store, on_b.artifact_id)
        job = jobs.import_url(f"{b.url}/artifacts/{on_b.artifact_id}")
        with pytest.raises(ChecksumMismatch):
            job.wait(60)
        assert job.status().attempts == 1  # permanent: not retried

        # Pull from any URL: a server sending wrong bytes for the expected SHA-256.
        job = jobs.import_url(f"{odd[1].url}/wrong/data.bin", expected_sha256=PAYLOAD_SHA)
        with pytest.raises(ChecksumMismatch):
            job.wait(60)
        assert _leftovers(a.store) == []

        # Push: A's own blob is corrupt; B refuses it, A says whose fault it is and keeps it.
        local = _put(a.store, name="rotten.bin")
        _tamper(a.store, local.artifact_id)
        job = jobs.export_to_host(local.artifact_id, b.url, move=True)
        with pytest.raises(ChecksumMismatch, match="local artifact .* is corrupt"):
            job.wait(60)
        assert a.store.ref(local.artifact_id)  # move=True deleted nothing
        assert [ref.artifact_id for ref in b.store.list()] == [on_b.artifact_id]
        assert not list(b.store.tmp_dir.iterdir())
    finally:
        jobs.close()


def test_refusals_fail_at_once_and_outages_retry(hosts, odd, workers):
    a, b = hosts
    host, server = odd
    workers.start(settings=a.settings)
    jobs = ArtifactJobs(settings=a.settings)
    try:
        # A host not on the allow-list: refused before any request.
        job = jobs.import_url(f"http://127.0.0.1:{free_port()}/artifacts/{'ab' * 16}")
        with pytest.raises(HostNotAllowed):
            job.wait(60)
        # A 4xx answer: the remote's error class and message, not retried.
        job = jobs.import_url(f"{b.url}/artifacts/{'cd' * 16}")
        with pytest.raises(RemoteError, match="404 ArtifactNotFound"):
            job.wait(60)
        assert job.status().attempts == 1
        # A push the remote refuses (too large for B): the local artifact stays despite move.
        b.store.max_artifact_bytes = 1024
        local = _put(a.store)
        job = jobs.export_to_host(local.artifact_id, b.url, move=True)
        with pytest.raises(RemoteError, match="413 ArtifactTooLarge"):
            job.wait(60)
        assert a.store.ref(local.artifact_id) and b.store.list() == []
        # 503 twice, then the bytes: retried with backoff until it succeeds.
        job = jobs.import_url(f"{server.url}/flaky/data.bin")
        ref = ArtifactRef.from_wire(job.wait(60))
        assert (ref.sha256, ref.name) == (PAYLOAD_SHA, "data.bin")
        assert job.status().attempts == 3 and host.requests == 3
    finally:
        jobs.close()


# ---------------------------------------------------------------------- the client, in process


@pytest.fixture
def local(settings: Settings) -> ArtifactStore:
    return ArtifactStore.from_settings(settings)


def test_allow_list_matches_scheme_host_port_and_path():
    allowed = ("http://peer.example:8470", "https://files.example/paglets/")
    assert host_allowed("http://peer.example:8470/artifacts/ab", allowed)
    assert host_allowed("http://PEER.example:8470/x", allowed)
    assert host_allowed("https://files.example:443/paglets/artifacts/ab", allowed)
    assert not host_allowed("https://files.example/other/artifacts/ab", allowed)
    assert not host_allowed("https://files.example/pagletsX/a", allowed)
    assert not host_allowed("http://peer.example:8471/artifacts/ab", allowed)
    assert not host_allowed("https://peer.example:8470/artifacts/ab", allowed)
    assert not host_allowed("http://peer.example:8470@evil.example/artifacts/ab", allowed)
    assert not host_allowed("ftp://peer.example:8470/a", allowed)
    assert not host_allowed("http://peer.example:notaport/a", allowed)
    assert not host_allowed("http://peer.example:8470/a", ())


def test_a_host_not_allowed_gets_no_request(settings, local):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with RemoteTransfers(settings) as remote:
            with pytest.raises(HostNotAllowed, match="not allowed"):
                remote.pull(f"{url}/artifacts/{'ab' * 16}", local)
            with pytest.raises(HostNotAllowed):
                remote.push(local, _put(local).artifact_id, url)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


def test_network_failures_and_5xx_are_transient(settings, local, odd):
    host, server = odd
    host.failures = 100
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
        with RemoteTransfers(settings.with_changes(allowed_hosts=(closed, server.url))) as remote:
            with pytest.raises(httpx.ConnectError):  # an httpx.TransportError: workers retry it
                remote.pull(f"{closed}/artifacts/{'ab' * 16}", local)
            with pytest.raises(RemoteUnavailable, match="503") as caught:
                remote.pull(f"{server.url}/flaky/data.bin", local)
    assert isinstance(caught.value, ConnectionError) and caught.value.status == 503
    assert isinstance(caught.value, Transient)
    assert _leftovers(local) == []


def test_pull_refusals_are_permanent_and_leave_nothing(settings, local, odd):
    host, server = odd
    host.failures = 0
    with RemoteTransfers(settings.with_changes(allowed_hosts=(server.url,))) as remote:
        with pytest.raises(RemoteError, match="redirects are not followed") as caught:
            remote.pull(f"{server.url}/redirect/data.bin", local)
        assert caught.value.remote_type == "Redirect"
        with pytest.raises(RemoteError, match="418") as caught:
            remote.pull(f"{server.url}/teapot/data.bin", local)
        assert (caught.value.remote_type, caught.value.status) == ("HTTP418", 418)
        with pytest.raises(RemoteError, match="invalid X-Paglets-Artifact-Sha256"):
            remote.pull(f"{server.url}/bad-header/data.bin", local)
        # The caller expects other bytes than the remote announces: refused before the body.
        with pytest.raises(ChecksumMismatch, match="expected says"):
            remote.pull(f"{server.url}/flaky/data.bin", local, expected_sha256="1" * 64)
        with pytest.raises(SizeMismatch, match="Content-Length says"):
            remote.pull(f"{server.url}/files/plain.bin", local, expected_size=10)
    assert _leftovers(local) == []


def test_pull_from_any_url_without_a_checksum_takes_its_name_and_length(settings, local, odd):
    with RemoteTransfers(settings.with_changes(allowed_hosts=(odd[1].url,))) as remote:
        result = remote.pull(f"{odd[1].url}/files/plain.bin", local, owner_agent_id="o", artifact_id="12" * 16)
        assert (result.ref.name, result.ref.size_bytes, result.ref.sha256) == ("plain.bin", len(PAYLOAD), PAYLOAD_SHA)
        # The same artifact id again (a redelivered job): the committed one, no second copy.
        again = remote.pull(f"{odd[1].url}/files/plain.bin", local, artifact_id="12" * 16)
        assert again.ref == result.ref and len(local.list()) == 1


def test_push_needs_the_remote_key_and_checks_the_answer(hosts, odd):
    a, b = hosts
    ref = _put(a.store)
    with RemoteTransfers(a.settings.with_changes(host_api_keys=())) as keyless:
        with pytest.raises(RemoteError, match="401 AuthenticationError") as caught:
            keyless.push(a.store, ref.artifact_id, b.url)
        assert (caught.value.remote_type, caught.value.status) == ("AuthenticationError", 401)
    with RemoteTransfers(a.settings.with_changes(allowed_hosts=(f"{odd[1].url}/liar",))) as remote:
        with pytest.raises(ChecksumMismatch, match="stored 1 bytes"):
            remote.push(a.store, ref.artifact_id, f"{odd[1].url}/liar")
    with RemoteTransfers(a.settings) as remote:
        pushed = remote.push(
            a.store, ref.artifact_id, b.url, owner_agent_id="new-owner", name="renamed", expires_at=4102444800.0
        )
    assert (pushed.owner_agent_id, pushed.name, pushed.expires_at) == ("new-owner", "renamed", 4102444800.0)
    assert b.store.ref(pushed.artifact_id) == pushed
    assert b.store.list() == [pushed]


def test_a_job_failing_for_good_with_a_transient_error_reports_it(hosts, odd, workers):
    """After its retries, a job that kept meeting 503 fails, naming the outage."""
    a, _ = hosts
    host, server = odd
    host.failures = 1000
    workers.start(settings=a.settings.with_changes(max_retries=1))
    with ArtifactJobs(settings=a.settings) as jobs:
        job = jobs.import_url(f"{server.url}/flaky/data.bin")
        with pytest.raises(JobFailed, match="503"):
            job.wait(60)
        assert job.status().error["type"] == "RemoteUnavailable"
        assert job.status().attempts == 2


def test_a_redelivered_push_and_a_pull_for_a_deleted_owner_have_no_second_effect(hosts, workers, redis_client):
    """Both jobs are enqueued before any worker runs, in the state a redelivery or an owner
    deletion leaves behind."""
    a, b = hosts
    jobs = ArtifactJobs(settings=a.settings)
    try:
        # A push whose earlier attempt got B's confirmation (its checkpoint) and then died.
        local = _put(a.store)
        already = _put(b.store)
        push = jobs.export_to_host(local.artifact_id, b.url, move=True)
        jobs.records.save_checkpoint(push.id, already.to_wire())
        # A pull for an owner deleted after it was enqueued.
        pull = jobs.import_url(f"{b.url}/artifacts/{already.artifact_id}", owner_agent_id="gone")
        redis_client.set(f"{a.settings.namespace}:owner-deleted:gone", repr(time.time()))
        workers.start(settings=a.settings)

        result = push.wait(60)
        assert result["artifact_id"] == already.artifact_id and result["moved"] is True
        assert b.store.list() == [already]  # no second upload
        assert a.store.list() == []  # the move finished: the local artifact is gone
        with pytest.raises(OwnerDeleted):
            pull.wait(60)
        assert _leftovers(a.store) == []
    finally:
        jobs.close()


# ---------------------------------------------------------------------- a paglets host's file jobs
# checksum, upload, download


def test_checksum_upload_and_download_jobs_move_files_between_hosts(hosts, files, workers):
    a, b = hosts
    workers.start(settings=a.settings)
    jobs = ArtifactJobs(settings=a.settings)
    try:
        source = files / "registered.bin"
        source.write_bytes(PAYLOAD)
        summed = jobs.checksum(str(source)).wait(60)
        assert summed == {"path": str(source), "sha256": PAYLOAD_SHA, "size_bytes": len(PAYLOAD)}

        # the upload paglets' HostClient would do, run by A's worker (B wants its key)
        job = jobs.upload(str(source), b.url, owner_agent_id="agent-9", name="r.bin", expected_sha256=PAYLOAD_SHA)
        on_b = ArtifactRef.from_wire(job.wait(60))
        assert (on_b.host_url, on_b.owner_agent_id, on_b.name, on_b.sha256) == (b.url, "agent-9", "r.bin", PAYLOAD_SHA)
        assert job.status().bytes_done == len(PAYLOAD)
        unhashed = ArtifactRef.from_wire(jobs.upload(str(source), b.url).wait(60))  # the worker hashes first
        assert (unhashed.sha256, unhashed.name) == (PAYLOAD_SHA, "registered.bin")

        # the download, with move: verified into place, then deleted on B
        target = files / "work" / "arrived.bin"
        done = jobs.download(f"{b.url}/artifacts/{on_b.artifact_id}", str(target), move=True).wait(60)
        assert done == {
            "url": f"{b.url}/artifacts/{on_b.artifact_id}",
            "target": str(target),
            "size_bytes": len(PAYLOAD),
            "sha256": PAYLOAD_SHA,
            "moved": True,
        }
        assert target.read_bytes() == PAYLOAD
        assert [ref.artifact_id for ref in b.store.list()] == [unhashed.artifact_id]
        assert sorted(p.name for p in target.parent.iterdir()) == ["arrived.bin"]
    finally:
        jobs.close()


def test_file_jobs_refuse_what_they_may_not_touch_and_leave_nothing(hosts, files, odd, workers, tmp_path):
    a, b = hosts
    workers.start(settings=a.settings)
    jobs = ArtifactJobs(settings=a.settings)
    try:
        outside = tmp_path / "outside.bin"
        outside.write_bytes(b"secret")
        with pytest.raises(Exception, match="outside the allowed roots") as refused:
            jobs.checksum(str(outside)).wait(60)
        assert type(refused.value).__name__ == "PathNotAllowed"
        link = files / "link.bin"
        link.symlink_to(files / "missing-target")
        with pytest.raises(Exception, match="does not exist|cannot be opened"):
            jobs.checksum(str(link)).wait(60)

        source = files / "f.bin"
        source.write_bytes(PAYLOAD)
        with pytest.raises(HostNotAllowed):
            jobs.upload(str(source), "http://127.0.0.1:1").wait(60)
        with pytest.raises(ChecksumMismatch, match="hashes to .*, expected 0000"):  # B verified before it committed
            jobs.upload(str(source), b.url, expected_sha256="0" * 64).wait(60)
        assert b.store.list() == [] and not list(b.store.tmp_dir.iterdir())

        on_b = _put(b.store)
        target = files / "t" / "x.bin"
        with pytest.raises(ChecksumMismatch):
            jobs.download(f"{b.url}/artifacts/{on_b.artifact_id}", str(target), expected_sha256="0" * 64).wait(60)
        with pytest.raises(ChecksumMismatch):  # bytes that do not hash to the SHA-256 announced
            jobs.download(f"{odd[1].url}/wrong/data.bin", str(target)).wait(60)
        assert not target.parent.exists() or list(target.parent.iterdir()) == []  # no target, no .part
        assert b.store.list() == [on_b]
    finally:
        jobs.close()


def test_a_redelivered_upload_returns_its_confirmation_and_a_redelivered_download_replaces_its_part(
    hosts, files, workers, redis_client
):
    """Both jobs are enqueued before any worker runs, in the state a killed attempt leaves."""
    a, b = hosts
    jobs = ArtifactJobs(settings=a.settings)
    try:
        source = files / "up.bin"
        source.write_bytes(PAYLOAD)
        already = _put(b.store)
        upload = jobs.upload(str(source), b.url, expected_sha256=PAYLOAD_SHA)
        jobs.records.save_checkpoint(upload.id, already.to_wire())
        target = files / "down" / "x.bin"
        download = jobs.download(f"{b.url}/artifacts/{already.artifact_id}", str(target))
        target.parent.mkdir()
        stale = target.with_name(f".x.bin.{download.id.replace('-', '')}.part")
        stale.write_bytes(b"half of an earlier attempt")
        workers.start(settings=a.settings)

        assert upload.wait(60)["artifact_id"] == already.artifact_id
        assert b.store.list() == [already]  # no second upload
        assert download.wait(60)["sha256"] == PAYLOAD_SHA
        assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]
    finally:
        jobs.close()
