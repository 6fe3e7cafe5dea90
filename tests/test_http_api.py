"""The HTTP API on a real uvicorn server on loopback, driven by a real HTTP client."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from conftest import wait_until
from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.openapi import openapi_document
from paglets_artifacts.http.server import ServerThread
from paglets_artifacts.jobs import contract

KEY = "s3cret-key"


def _store(settings: Settings, **overrides) -> ArtifactStore:
    store = ArtifactStore.from_settings(settings)
    for name, value in overrides.items():
        setattr(store, name, value)
    return store


def _leftovers(store: ArtifactStore) -> list[str]:
    """Every file under the store (blobs, metadata, temporary files)."""
    return sorted(str(path.relative_to(store.root)) for path in store.root.rglob("*") if path.is_file())


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return _store(settings)


@pytest.fixture
def server(settings: Settings, store: ArtifactStore, jobs: ArtifactJobs) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings, store=store, jobs=jobs)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
def auth_server(settings: Settings, store: ArtifactStore, jobs: ArtifactJobs) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings.with_changes(api_key=KEY), store=store, jobs=jobs)) as running:
        yield running


def _upload(client: httpx.Client, data: bytes, **params) -> httpx.Response:
    return client.post("/artifacts", params=params, content=data)


def _assert_error(response: httpx.Response, status: int, error_type: str, error_class: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type
    assert body["error_class"] == error_class
    assert body["error"]
    return body


# ---------------------------------------------------------------------- artifact endpoints


def test_upload_download_metadata_list_and_delete_round_trip(client, store, server):
    data = os.urandom(3 * 1024 * 1024 + 17)
    sha = hashlib.sha256(data).hexdigest()
    answer = _upload(
        client,
        data,
        owner_agent_id="agent-1",
        name="model.bin",
        compression="zstd",
        expires_at="4102444800",
        sha256=sha,
        size=str(len(data)),
    )
    assert answer.status_code == 200, answer.text
    ref = answer.json()["artifact"]
    assert ref["size_bytes"] == len(data) and ref["sha256"] == sha
    assert (ref["name"], ref["owner_agent_id"], ref["compression"], ref["expires_at"]) == (
        "model.bin",
        "agent-1",
        "zstd",
        4102444800.0,
    )
    artifact_id = ref["artifact_id"]

    download = client.get(f"/artifacts/{artifact_id}")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-length"] == str(len(data))
    assert download.headers["x-paglets-artifact-sha256"] == sha
    assert download.content == data

    assert client.get(f"/artifacts/{artifact_id}/metadata").json() == {"artifact": ref}
    other = _upload(client, b"other", owner_agent_id="agent-2").json()["artifact"]
    listed = client.get("/artifacts").json()["artifacts"]
    assert sorted(item["artifact_id"] for item in listed) == sorted([artifact_id, other["artifact_id"]])
    assert client.get("/artifacts", params={"owner_agent_id": "agent-1"}).json() == {"artifacts": [ref]}

    assert client.delete(f"/artifacts/{artifact_id}").json() == {"ok": True}
    _assert_error(client.get(f"/artifacts/{artifact_id}"), 404, "TransferError", "ArtifactNotFound")
    assert client.delete(f"/artifacts/{artifact_id}").json() == {"ok": True}  # idempotent, as in paglets
    assert [item.artifact_id for item in store.list()] == [other["artifact_id"]]


def test_chunked_upload_is_stored_whole(client, store):
    pieces = [os.urandom(700_000) for _ in range(5)]
    data = b"".join(pieces)
    answer = client.post(
        "/artifacts", params={"name": "chunked.bin", "sha256": hashlib.sha256(data).hexdigest()}, content=iter(pieces)
    )
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 200, answer.text
    ref = answer.json()["artifact"]
    assert ref["size_bytes"] == len(data)
    with store.open_reader(ref["artifact_id"]) as blob:
        assert blob.read() == data


def test_chunked_upload_shorter_than_its_size_query_is_refused(client, store):
    answer = client.post("/artifacts", params={"size": "100"}, content=iter([b"x" * 60]))
    _assert_error(answer, 400, "TransferError", "SizeMismatch")
    assert _leftovers(store) == []


def test_upload_like_paglets_http_client_with_one_mib_writes(server, store):
    """paglets' HostClient uploads with http.client, Content-Length and 1 MiB sends."""
    data = os.urandom(2 * 1024 * 1024 + 5)
    sha = hashlib.sha256(data).hexdigest()
    parts = urlsplit(server.url)
    query = urlencode(
        {
            "owner_agent_id": "a",
            "name": "p.bin",
            "compression": "",
            "expires_at": "0.0",
            "sha256": sha,
            "size": str(len(data)),
        }
    )
    connection = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        connection.putrequest("POST", f"/artifacts?{query}")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders()
        source = io.BytesIO(data)
        while chunk := source.read(1024 * 1024):
            connection.send(chunk)
        response = connection.getresponse()
        payload = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200
    assert payload["artifact"]["sha256"] == sha
    assert store.ref(payload["artifact"]["artifact_id"]).size_bytes == len(data)


@pytest.mark.parametrize(
    ("params", "status", "error_class"),
    [
        ({"sha256": "0" * 64}, 422, "ChecksumMismatch"),
        ({"sha256": "not-a-sha"}, 400, "InvalidInput"),
        ({"size": "5"}, 400, "SizeMismatch"),
        ({"size": "-1"}, 400, "InvalidInput"),
        ({"expires_at": "tomorrow"}, 400, "InvalidInput"),
        ({"expires_at": "-5"}, 400, "InvalidInput"),
    ],
)
def test_upload_errors_answer_their_status_and_leave_nothing(client, store, params, status, error_class):
    _assert_error(_upload(client, b"0123456789", **params), status, "TransferError", error_class)
    assert _leftovers(store) == []


def test_upload_over_the_size_cap_or_the_quota_is_413(settings, jobs):
    capped = _store(settings, max_artifact_bytes=1000)
    with (
        ServerThread(create_app(settings, store=capped, jobs=jobs)) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        _assert_error(_upload(http, b"x" * 1001), 413, "TransferError", "ArtifactTooLarge")
        # chunked: the cap is found while the body streams in
        _assert_error(
            http.post("/artifacts", content=iter([b"x" * 600, b"x" * 600])), 413, "TransferError", "ArtifactTooLarge"
        )
        assert _leftovers(capped) == []
    quota = _store(settings.with_changes(store_root=settings.store_root.parent / "quota"), quota_bytes=1500)
    with (
        ServerThread(create_app(settings, store=quota, jobs=jobs)) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        assert _upload(http, b"x" * 1000).status_code == 200
        _assert_error(_upload(http, b"x" * 1000), 413, "TransferError", "QuotaExceeded")
        assert len(quota.list()) == 1


def test_read_errors_name_their_class(client):
    _assert_error(client.get("/artifacts/not-hex!"), 400, "TransferError", "InvalidInput")
    _assert_error(client.get("/artifacts/" + "ab" * 16), 404, "TransferError", "ArtifactNotFound")
    _assert_error(client.get(f"/artifacts/{'ab' * 16}/metadata"), 404, "TransferError", "ArtifactNotFound")
    _assert_error(client.delete("/artifacts/xyz"), 400, "TransferError", "InvalidInput")


def test_unknown_routes_and_methods_are_host_errors(client):
    _assert_error(client.get("/nowhere"), 404, "HostError", "NotFound")
    _assert_error(client.put("/artifacts"), 405, "HostError", "MethodNotAllowed")


def test_a_blob_shorter_than_its_metadata_is_never_served_as_whole(client, store):
    ref = store.create_from_stream(io.BytesIO(b"y" * 200_000), size_bytes=200_000).ref
    with open(store.blobs_dir / f"{ref.artifact_id}.bin", "r+b") as blob:
        blob.truncate(1000)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/artifacts/{ref.artifact_id}")


def test_an_unexpected_failure_is_a_500_remote_host_error(settings, jobs):
    class BrokenStore:
        def list(self, **kwargs):
            raise RuntimeError("disk on fire")

    with ServerThread(create_app(settings, store=BrokenStore(), jobs=jobs), log_level="critical") as running:
        answer = httpx.get(f"{running.url}/artifacts")
    body = _assert_error(answer, 500, "RemoteHostError", "RuntimeError")
    assert "disk on fire" in body["error"]


# ---------------------------------------------------------------------- streaming uploads


def test_client_disconnecting_mid_upload_leaves_no_part(server, store):
    total, sent = 8 * 1024 * 1024, 3 * 1024 * 1024
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    sock = socket.create_connection((host, port))
    try:
        sock.sendall(f"POST /artifacts?name=half HTTP/1.1\r\nHost: {host}\r\nContent-Length: {total}\r\n\r\n".encode())
        sock.sendall(b"z" * sent)
        # The body streams into the store's .part while the client is still sending ...
        parts = wait_until(lambda: [p for p in store.tmp_dir.glob("*.part") if p.stat().st_size > 0], timeout=10)
        assert len(parts) == 1
    finally:
        sock.close()
    # ... and the .part is removed as soon as the client is gone.
    wait_until(lambda: not list(store.tmp_dir.iterdir()), timeout=10)
    assert store.list() == []
    assert _leftovers(store) == []


def test_stalled_uploads_do_not_starve_the_other_endpoints(settings, store, jobs):
    """More uploads in flight than anyio's default thread pool (40) holds: reads still answer."""
    ref = store.create_from_stream(io.BytesIO(b"still here"), size_bytes=10).ref
    app = create_app(settings.with_changes(uploads_per_client=0), store=store, jobs=jobs)  # all from one address
    server = ServerThread(app).start()
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    sockets = []
    try:
        for _ in range(45):
            sock = socket.create_connection((host, port))
            sock.sendall(f"POST /artifacts HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\nabc".encode())
            sockets.append(sock)
        wait_until(lambda: len(list(store.tmp_dir.glob("*.part"))) == 45, timeout=20)
        with httpx.Client(base_url=server.url, timeout=20) as http:
            assert http.get(f"/artifacts/{ref.artifact_id}").content == b"still here"
            assert http.get(f"/artifacts/{ref.artifact_id}/metadata").status_code == 200
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: not list(store.tmp_dir.iterdir()), timeout=20)
    server.stop()


def test_sweeps_dated_far_in_the_future_never_take_a_live_upload(settings, server, store, jobs, workers):
    """Through the HTTP job endpoint, ``ArtifactJobs.sweep`` and the CLI, while an upload's
    body is half sent: the upload then commits whole."""
    from typer.testing import CliRunner

    from paglets_artifacts.cli import commands as cli

    workers.start()
    halfway = threading.Event()
    resume = threading.Event()
    data = os.urandom(256 * 1024)

    def body():
        yield data[:1024]
        halfway.set()
        resume.wait(60)
        yield data[1024:]

    answers: list[httpx.Response] = []

    def upload() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answers.append(http.post("/artifacts", params={"size": str(len(data))}, content=body()))

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert halfway.wait(30)
        wait_until(lambda: list(store.tmp_dir.glob("*.part")), timeout=30)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            enqueued = http.post("/jobs/sweep", json={"now": 1e308})
            assert enqueued.status_code == 202, enqueued.text
        assert jobs.job(enqueued.json()["job_id"]).wait(timeout=30)["parts_removed"] == 0
        assert jobs.sweep(now=1e308).wait(timeout=30)["parts_removed"] == 0
        swept = CliRunner().invoke(cli.app, ["sweep", "--now", "1e308", "--wait", "--json"], env=settings.to_env())
        assert swept.exit_code == 0, swept.stderr
        assert json.loads(swept.stdout)["result"]["parts_removed"] == 0
        assert list(store.tmp_dir.glob("*.part"))
    finally:
        resume.set()
        uploader.join(60)
    [answer] = answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["artifact"]["sha256"] == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- authentication


def test_with_an_api_key_every_endpoint_requires_the_bearer_key(auth_server, store):
    ref = store.create_from_stream(io.BytesIO(b"secret bytes"), size_bytes=12).ref
    requests = [
        ("POST", "/artifacts", b"data"),
        ("GET", "/artifacts", None),
        ("GET", f"/artifacts/{ref.artifact_id}", None),
        ("GET", f"/artifacts/{ref.artifact_id}/metadata", None),
        ("DELETE", f"/artifacts/{ref.artifact_id}", None),
        ("POST", "/jobs/sweep", b"{}"),
        ("GET", "/jobs", None),
        ("GET", "/openapi.json", None),
    ]
    with httpx.Client(base_url=auth_server.url) as http:
        for method, path, body in requests:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {KEY}"},
                {"Authorization": "Bearer"},
            ):
                answer = http.request(method, path, content=body, headers=headers)
                _assert_error(answer, 401, "AuthenticationError", "AuthenticationError")
                assert answer.headers["www-authenticate"] == "Bearer"
        assert store.ref(ref.artifact_id)  # nothing was deleted
        good = {"Authorization": f"Bearer {KEY}"}
        assert http.get(f"/artifacts/{ref.artifact_id}", headers=good).content == b"secret bytes"
        assert http.post("/artifacts", content=b"data", headers=good).status_code == 200
        assert http.delete(f"/artifacts/{ref.artifact_id}", headers=good).json() == {"ok": True}


def test_without_an_api_key_no_header_is_needed(client):
    assert client.get("/artifacts").status_code == 200


# ---------------------------------------------------------------------- job endpoints


@pytest.mark.parametrize(
    ("kind", "arguments"),
    [
        ("import", {"path": "/srv/in/a.bin", "owner_agent_id": "o"}),
        ("export", {"artifact_id": "ab" * 16, "target": "/srv/out/a.bin"}),
        ("sweep", {}),
        ("delete_owner", {"owner_agent_id": "o"}),
        ("reindex", None),
        ("import_url", {"url": "http://peer:8470/artifacts/" + "cd" * 16}),
        ("export_to_host", {"artifact_id": "ab" * 16, "host_url": "http://peer:8470", "move": True}),
    ],
)
def test_post_jobs_enqueues_each_kind_and_answers_202(client, jobs, kind, arguments):
    answer = client.post(f"/jobs/{kind}", content=b"" if arguments is None else json.dumps(arguments))
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["kind"] == kind and body["status_url"].endswith(f"/jobs/{body['job_id']}")
    assert answer.headers["location"] == body["status_url"]
    record = client.get(body["status_url"]).json()["job"]
    assert (record["id"], record["kind"], record["state"]) == (body["job_id"], kind, "queued")
    assert record["arguments"].items() >= (arguments or {}).items()
    assert jobs.job(body["job_id"]).status().kind == kind  # the same record a host sees
    # the message went to the contract's queue
    assert jobs.client.llen(f"{jobs.settings.namespace}:{contract.KINDS[kind].queue_name}") == 1


def test_get_jobs_lists_recent_jobs_newest_first(client):
    ids = [client.post("/jobs/sweep").json()["job_id"] for _ in range(3)]
    listed = client.get("/jobs").json()["jobs"]
    assert [record["id"] for record in listed] == ids[::-1]
    assert [record["id"] for record in client.get("/jobs", params={"limit": 2}).json()["jobs"]] == ids[:0:-1]
    assert client.get("/jobs", params={"kind": "reindex"}).json() == {"jobs": []}


def test_job_endpoint_errors(client):
    _assert_error(client.post("/jobs/nonsense"), 404, "HostError", "UnknownJobKind")
    _assert_error(client.get("/jobs/no-such-job"), 404, "HostError", "JobNotFound")
    _assert_error(client.post("/jobs/import", content=b"{not json"), 400, "TransferError", "InvalidInput")
    _assert_error(client.post("/jobs/import", content=b"[1, 2]"), 400, "TransferError", "InvalidInput")
    _assert_error(client.post("/jobs/import", json={"path": "relative/a.bin"}), 400, "TransferError", "InvalidInput")
    _assert_error(
        client.post("/jobs/import", json={"path": "/a", "colour": "red"}), 400, "TransferError", "InvalidInput"
    )
    _assert_error(client.post("/jobs/delete_owner", json={}), 400, "TransferError", "InvalidInput")
    big = json.dumps({"path": "/" + "a" * 70_000}).encode()
    _assert_error(client.post("/jobs/import", content=big), 400, "TransferError", "InvalidInput")
    _assert_error(client.post("/jobs/import", content=iter([big])), 400, "TransferError", "InvalidInput")  # chunked
    _assert_error(client.get("/jobs", params={"limit": "0"}), 400, "TransferError", "InvalidInput")
    _assert_error(client.get("/jobs", params={"limit": "many"}), 400, "TransferError", "InvalidInput")
    assert client.get("/jobs").json() == {"jobs": []}  # nothing was enqueued


def test_job_endpoints_answer_503_when_redis_is_down(settings, store):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"  # bound, never listening
        down = settings.with_changes(redis_url=dead)
        with (
            ServerThread(create_app(down, store=store), log_level="critical") as running,
            httpx.Client(base_url=running.url) as http,
        ):
            _assert_error(http.post("/jobs/sweep"), 503, "RemoteHostError", "ConnectionError")
            _assert_error(http.get("/jobs/x"), 503, "RemoteHostError", "ConnectionError")
            assert http.get("/artifacts").status_code == 200  # the artifact endpoints do not need Redis


def test_an_import_enqueued_over_http_is_run_by_a_worker(client, workers, files):
    workers.start()
    data = os.urandom(1024 * 1024)
    (files / "in.bin").write_bytes(data)
    accepted = client.post("/jobs/import", json={"path": str(files / "in.bin"), "owner_agent_id": "o"}).json()
    record = wait_until(
        lambda: (r := client.get(accepted["status_url"]).json()["job"])["state"] in ("succeeded", "failed") and r,
        timeout=30,
    )
    assert record["state"] == "succeeded", record
    assert record["bytes_done"] == len(data)
    assert client.get(f"/artifacts/{record['result']['artifact_id']}").content == data


# ---------------------------------------------------------------------- OpenAPI


def test_openapi_describes_every_endpoint(client):
    document = client.get("/openapi.json").json()
    assert document == json.loads(json.dumps(openapi_document()))
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert set(paths["/artifacts"]) == {"get", "post"}
    assert set(paths["/artifacts/{artifact_id}"]) == {"get", "delete"}
    assert set(paths["/artifacts/{artifact_id}/metadata"]) == {"get"}
    assert {f"/jobs/{kind}" for kind in contract.KINDS} <= set(paths)
    assert {"/jobs", "/jobs/{job_id}", "/openapi.json"} <= set(paths)
    schema = document["components"]["schemas"]["import_arguments"]
    assert schema["required"] == ["path"] and schema["properties"]["delete_source"]["type"] == "boolean"
    assert set(paths["/artifacts"]["post"]["responses"]) >= {"200", "400", "401", "413", "422"}


def test_serving_starts_and_stops_within_the_process(settings, store, jobs):
    server = ServerThread(create_app(settings, store=store, jobs=jobs)).start()
    url = server.url
    assert httpx.get(f"{url}/artifacts").status_code == 200
    server.stop()
    time.sleep(0.05)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/artifacts")


def test_settings_api_key_comes_from_the_environment(tmp_path: Path):
    settings = Settings.from_env(
        {"PAGLETS_ARTIFACTS_API_KEY": KEY, "PAGLETS_ARTIFACTS_STORE_ROOT": str(tmp_path / "s")}
    )
    with ArtifactJobs("redis://127.0.0.1:1/0", settings=settings) as unused_jobs:
        app = create_app(settings, store=_store(settings), jobs=unused_jobs)
        with ServerThread(app) as running:
            assert httpx.get(f"{running.url}/artifacts").status_code == 401
            assert httpx.get(f"{running.url}/artifacts", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_access_log_masks_secret_query_parameters(settings, store, jobs):
    import logging

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    collector = Collect()
    access = logging.getLogger("uvicorn.access")
    with ServerThread(create_app(settings, store=store, jobs=jobs), log_level="info") as running:
        access.addHandler(collector)
        try:
            with httpx.Client(base_url=running.url, timeout=30) as http:
                assert http.get("/artifacts", params={"owner_agent_id": "o", "token": "t0k3n-9f"}).status_code == 200
        finally:
            access.removeHandler(collector)
    assert any("/artifacts?owner_agent_id=o&token=***" in line for line in lines), lines
    assert not any("t0k3n-9f" in line for line in lines)
