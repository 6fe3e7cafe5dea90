"""Completion callbacks against a real worker, the real Redis and a real receiver on
loopback: the signed POST of a job's final record, its retries, its outcome on the record,
and the checks of a callback URL at enqueue (Python, CLI, HTTP)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import wait_until
from paglets_artifacts import ArtifactJobs
from paglets_artifacts.errors import InvalidInput
from paglets_artifacts.jobs.callbacks import verify

SECRET = "callback-secret-for-tests"


class Receiver:
    """A threaded HTTP server that answers each POST with the next of ``answers`` (a status,
    or "hang": no answer until the test ends) and keeps what it received."""

    def __init__(self) -> None:
        self.answers: list[int | str] = []
        self.received: list[dict] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = receiver.answers.pop(0) if receiver.answers else 200
                receiver.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.time()}
                )
                if answer == "hang":
                    receiver.release.wait(30)
                    return
                self.send_response(int(answer))
                if int(answer) in (301, 302, 307):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def cb_settings(settings, receiver):
    return settings.with_changes(
        allowed_hosts=(receiver.url,), callback_secret=SECRET, callback_timeout_seconds=1.0, callback_max_attempts=4
    )


@pytest.fixture
def cb_jobs(cb_settings) -> Iterator[ArtifactJobs]:
    client = ArtifactJobs(settings=cb_settings)
    yield client
    client.close()


def _callback_ended(job):
    return wait_until(lambda: (record := job.status()).callback_state in ("delivered", "failed") and record, timeout=60)


def _checksum_job(cb_jobs, files, url):
    source = files / "data.bin"
    source.write_bytes(b"callback payload")
    return cb_jobs.checksum(str(source), callback_url=url)


def test_a_succeeded_job_posts_its_final_record_once_signed(cb_jobs, cb_settings, workers, files, receiver):
    job = _checksum_job(cb_jobs, files, f"{receiver.url}/hooks/done?token=abc123")
    assert job.status().callback_url == f"{receiver.url}/hooks/done?token=***"  # never stored unredacted
    workers.start(settings=cb_settings)
    record = _callback_ended(job)
    assert record.callback_state == "delivered" and record.callback_attempts == 1 and record.callback_error == ""
    assert len(receiver.received) == 1
    request = receiver.received[0]
    assert request["path"] == "/hooks/done?token=abc123"  # the whole URL is used to send
    body = json.loads(request["body"])
    assert body["id"] == job.id and body["state"] == "succeeded"
    assert body["result"]["sha256"] == hashlib.sha256(b"callback payload").hexdigest()
    assert {key: value for key, value in body.items() if not key.startswith("callback_")} == {
        key: value for key, value in record.to_wire().items() if not key.startswith("callback_")
    }
    headers = request["headers"]
    assert headers["X-Paglets-Artifacts-Job"] == job.id
    # What the README tells a receiver to do.
    timestamp = headers["X-Paglets-Artifacts-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Paglets-Artifacts-Signature"], f"sha256={expected}")
    assert abs(time.time() - int(timestamp)) < 300
    assert verify(SECRET, headers, request["body"])
    assert not verify("another secret", headers, request["body"])
    assert not verify(SECRET, headers, request["body"] + b" ")
    assert f"job {job.id} callback to {receiver.url}/hooks/done?token=*** delivered (attempt 1)" in workers.logs()


def test_verify_refuses_a_replayed_timestamp():
    from paglets_artifacts.jobs.callbacks import signed_headers

    body = b'{"id": "x"}'
    headers = signed_headers(SECRET, "x", body, now=1_000_000)
    assert verify(SECRET, headers, body, now=1_000_100)
    assert not verify(SECRET, headers, body, now=1_000_000 + 301)
    assert not verify(SECRET, {**headers, "X-Paglets-Artifacts-Timestamp": "1000001"}, body, now=1_000_000)
    assert not verify(SECRET, {}, body)


def test_a_receiver_that_fails_twice_gets_three_attempts_and_never_blocks_the_job(
    cb_jobs, cb_settings, workers, files, receiver
):
    receiver.answers = [500, 503]
    job = _checksum_job(cb_jobs, files, f"{receiver.url}/hook")
    workers.start(settings=cb_settings)
    assert job.wait(60)["size_bytes"] == len(b"callback payload")
    record = _callback_ended(job)
    assert record.callback_state == "delivered" and record.callback_attempts == 3
    assert len(receiver.received) == 3
    # The job had ended before its callback's first attempt was even made.
    assert record.finished_at is not None and record.finished_at <= receiver.received[0]["at"]
    assert all(json.loads(request["body"])["state"] == "succeeded" for request in receiver.received)
    logs = workers.logs()
    assert f"job {job.id} callback to {receiver.url}/hook failed (attempt 1), will be retried: HTTP 500" in logs
    assert f"job {job.id} callback to {receiver.url}/hook failed (attempt 2), will be retried: HTTP 503" in logs


def test_a_failing_jobs_callback_carries_its_error(cb_jobs, cb_settings, workers, files, receiver):
    job = cb_jobs.checksum(str(files / "missing.bin"), callback_url=f"{receiver.url}/hook")
    workers.start(settings=cb_settings)
    record = _callback_ended(job)
    assert record.state == "failed" and record.callback_state == "delivered"
    body = json.loads(receiver.received[0]["body"])
    assert body["state"] == "failed" and body["error"] == record.error and body["error"]["message"]


def test_a_canceled_jobs_callback_carries_the_canceled_record(cb_jobs, cb_settings, workers, receiver):
    job = cb_jobs.sweep(callback_url=f"{receiver.url}/hook")
    job.cancel(by="operator-7")
    workers.start(settings=cb_settings)
    record = _callback_ended(job)
    assert record.callback_state == "delivered" and len(receiver.received) == 1
    body = json.loads(receiver.received[0]["body"])
    assert body["state"] == "canceled" and body["canceled_by"] == "operator-7"


def test_a_4xx_answer_is_final(cb_jobs, cb_settings, workers, files, receiver):
    receiver.answers = [404, 200]
    job = _checksum_job(cb_jobs, files, f"{receiver.url}/hook")
    workers.start(settings=cb_settings)
    record = _callback_ended(job)
    assert record.callback_state == "failed" and record.callback_attempts == 1
    assert record.callback_error == "HTTP 404 (final)"
    time.sleep(1.0)  # several backoffs (100 ms at first): a retry would have come by now
    assert len(receiver.received) == 1 and job.status().callback_attempts == 1


def test_a_redirect_is_not_followed(cb_jobs, cb_settings, workers, files, receiver):
    receiver.answers = [302]
    job = _checksum_job(cb_jobs, files, f"{receiver.url}/hook")
    workers.start(settings=cb_settings)
    record = _callback_ended(job)
    assert record.callback_state == "failed" and record.callback_error == "HTTP 302 (final)"
    assert [request["path"] for request in receiver.received] == ["/hook"]


def test_every_attempt_failing_ends_failed_with_the_count(cb_jobs, cb_settings, workers, files, receiver):
    receiver.answers = [500] * 10
    job = _checksum_job(cb_jobs, files, f"{receiver.url}/hook")
    workers.start(settings=cb_settings)
    record = _callback_ended(job)
    assert record.callback_state == "failed" and record.callback_attempts == 4
    assert record.callback_error == "HTTP 500 (after 4 attempts)"
    assert len(receiver.received) == 4


def test_a_receiver_that_hangs_times_out_and_is_retried(cb_jobs, cb_settings, workers, files, receiver):
    receiver.answers = ["hang", 200]
    job = _checksum_job(cb_jobs, files, f"{receiver.url}/hook")
    workers.start(settings=cb_settings)
    record = _callback_ended(job)
    assert record.callback_state == "delivered" and record.callback_attempts == 2
    assert (
        f"job {job.id} callback to {receiver.url}/hook failed (attempt 1), will be retried: no answer within 1 s"
        in (workers.logs())
    )


# ---------------------------------------------------------------------- checks at enqueue


def test_a_host_off_the_allow_list_is_refused_at_enqueue(cb_jobs, files):
    with pytest.raises(InvalidInput, match=r"callback_url host elsewhere\.example:8080 .* is not allowed"):
        cb_jobs.sweep(callback_url="http://elsewhere.example:8080/hook")
    with pytest.raises(InvalidInput, match="must be an http"):
        cb_jobs.sweep(callback_url="ftp://127.0.0.1/hook")
    with pytest.raises(InvalidInput, match="must not carry credentials"):
        cb_jobs.sweep(callback_url="http://user:pw@127.0.0.1/hook")
    assert cb_jobs.jobs() == []  # nothing was enqueued


def test_a_callback_url_without_a_secret_is_refused_at_enqueue(settings, receiver):
    with ArtifactJobs(settings=settings.with_changes(allowed_hosts=(receiver.url,))) as jobs:
        with pytest.raises(InvalidInput, match="needs PAGLETS_ARTIFACTS_CALLBACK_SECRET"):
            jobs.sweep(callback_url=f"{receiver.url}/hook")
        assert jobs.jobs() == []


def test_a_host_off_the_allow_list_is_refused_on_the_command_line(cb_settings, cb_jobs):
    from typer.testing import CliRunner

    from paglets_artifacts.cli import commands as cli

    env = {**cb_settings.to_env(), "COLUMNS": "400"}
    result = CliRunner().invoke(cli.app, ["sweep", "--callback-url", "http://elsewhere.example/hook"], env=env)
    assert result.exit_code != 0 and "elsewhere.example" in result.stderr and "not allowed" in result.stderr
    assert cb_jobs.jobs() == []
    accepted = CliRunner().invoke(
        cli.app, ["sweep", "--callback-url", f"{cb_settings.allowed_hosts[0]}/hook", "--json"], env=env
    )
    assert accepted.exit_code == 0, accepted.stderr
    job_id = json.loads(accepted.stdout)["id"]
    assert cb_jobs.job(job_id).status().callback_url == f"{cb_settings.allowed_hosts[0]}/hook"


def test_a_callback_url_over_http(cb_settings, cb_jobs, receiver):
    import httpx

    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread

    with ServerThread(create_app(cb_settings, jobs=cb_jobs)) as running, httpx.Client(base_url=running.url) as client:
        refused = client.post("/jobs/sweep", json={}, headers={"Callback-URL": "http://elsewhere.example/hook"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error_class"] == "InvalidInput" and "elsewhere.example" in refused.json()["error"]
        assert cb_jobs.jobs() == []
        accepted = client.post("/jobs/sweep", json={}, headers={"Callback-URL": f"{receiver.url}/hook"})
        assert accepted.status_code == 202, accepted.text
        shown = client.get(f"/jobs/{accepted.json()['job_id']}").json()["job"]
        assert shown["callback_url"] == f"{receiver.url}/hook" and shown["callback_state"] == ""
        document = client.get("/openapi.json").json()
        parameters = document["paths"]["/jobs/sweep"]["post"]["parameters"]
        assert any(parameter["name"] == "Callback-URL" for parameter in parameters)
        record = document["components"]["schemas"]["JobRecord"]["properties"]
        assert {"callback_url", "callback_state", "callback_attempts", "callback_error"} <= set(record)


def test_an_idempotency_key_tells_apart_two_callback_urls(cb_jobs, receiver):
    from paglets_artifacts.errors import IdempotencyConflict

    key = str(uuid.uuid4())
    first = cb_jobs.sweep(idempotency_key=key, callback_url=f"{receiver.url}/a")
    assert cb_jobs.sweep(idempotency_key=key, callback_url=f"{receiver.url}/a").id == first.id
    with pytest.raises(IdempotencyConflict):
        cb_jobs.sweep(idempotency_key=key, callback_url=f"{receiver.url}/b")


def test_a_worker_without_the_secret_or_the_host_sends_nothing_and_says_so(
    cb_jobs, cb_settings, workers, files, receiver
):
    no_secret = _checksum_job(cb_jobs, files, f"{receiver.url}/a")
    workers.start(settings=cb_settings.with_changes(callback_secret=""))
    record = _callback_ended(no_secret)
    assert record.callback_state == "failed" and "CALLBACK_SECRET is not set on the worker" in record.callback_error
    workers.stop_all()
    off_list = _checksum_job(cb_jobs, files, f"{receiver.url}/b")
    workers.start(settings=cb_settings.with_changes(allowed_hosts=("http://elsewhere.example",)))
    record = _callback_ended(off_list)
    assert record.callback_state == "failed" and "not in the worker's PAGLETS_ARTIFACTS_ALLOWED_HOSTS" in (
        record.callback_error
    )
    assert receiver.received == []


def test_a_batch_takes_one_callback_url_for_each_job(cb_jobs, files, receiver):
    from paglets_artifacts.jobs import contract

    items = [{"path": str(files / "a.bin")}, {"path": str(files / "b.bin")}]
    with pytest.raises(InvalidInput, match=r"item 0: callback_url host elsewhere\.example"):
        cb_jobs.enqueue_many(contract.CHECKSUM, items, callback_url="http://elsewhere.example/hook")
    assert cb_jobs.jobs() == []
    batch = cb_jobs.enqueue_many(contract.CHECKSUM, items, callback_url=f"{receiver.url}/hook")
    assert [job.status().callback_url for job in batch] == [f"{receiver.url}/hook"] * 2
