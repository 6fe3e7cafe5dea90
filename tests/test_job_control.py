"""Operating jobs against real workers and the real Redis: cancel, retry, dead letters,
idempotent enqueue (Python API; the CLI and HTTP paths are at the end)."""

from __future__ import annotations

import io
import os
import time
import uuid

import pytest
from dramatiq import Message

from conftest import wait_until, workers_store, write_big_file, write_random
from paglets_artifacts import ArtifactJobs, JobCanceled
from paglets_artifacts.errors import IdempotencyConflict, InvalidInput, JobConflict, SourceUnavailable
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.dead_letters import QueueKeys


def _stopped(job):
    return wait_until(lambda: (record := job.status()).stopped_at is not None and record, timeout=60)


# ---------------------------------------------------------------------- cancel


def test_a_canceled_queued_job_never_starts_and_its_redelivered_message_does_nothing(jobs, workers, files):
    source = files / "never.bin"
    write_random(source, 10_000)
    job = jobs.import_file(str(source))
    record = job.cancel(by="operator-1")
    assert record.state == "canceled" and record.done
    assert record.canceled_by == "operator-1" and record.canceled_at is not None
    assert record.finished_at == record.canceled_at and record.stopped_at is None
    assert record.to_wire()["canceled_by"] == "operator-1"
    with pytest.raises(JobCanceled, match="canceled by operator-1"):
        job.wait(5)
    workers.start()
    wait_until(lambda: f"job {job.id} already ended" in workers.logs(), timeout=60)
    # The same message delivered once more (a redelivery) does nothing either.
    jobs.broker.enqueue(
        Message(
            queue_name=contract.TRANSFER_QUEUE,
            actor_name=contract.IMPORT.actor_name,
            args=(),
            kwargs={"path": str(source)},
            options={},
            message_id=job.id,
        )
    )
    wait_until(lambda: workers.logs().count(f"job {job.id} already ended") >= 2, timeout=60)
    after = job.status()
    assert (after.state, after.attempts, after.started_at, after.canceled_by) == ("canceled", 0, None, "operator-1")
    assert workers_store(jobs.settings).list() == []


def test_cancel_stops_a_running_512_mib_import_leaving_no_part_no_reservation_and_no_artifact(
    settings, files, workers, tmp_path, monkeypatch
):
    from test_metrics import scrape, value

    from paglets_artifacts.redis_server import free_port

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    (tmp_path / "prometheus").mkdir()
    settings = settings.with_changes(fsync=True, metrics_port=free_port())  # to the disk: the copy lasts
    workers.start(settings=settings)
    jobs = ArtifactJobs(settings=settings)
    store = workers_store(settings)
    used_before = store.index.used_bytes()
    source = files / "large.bin"
    write_big_file(source, 512 * 1024 * 1024)
    for _ in range(3):  # a copy that wins the race against the cancel is tried again
        job = jobs.import_file(str(source))
        wait_until(lambda job=job: job.status().bytes_done > 0, timeout=120, interval=0.005)
        try:
            canceled = job.cancel()
        except JobConflict as exc:
            assert exc.state == "succeeded"
            store.remove(uuid.UUID(job.id).hex)
            continue
        break
    else:
        pytest.fail("the import ended before each of three cancels")
    assert canceled.state == "canceled"
    record = _stopped(job)
    assert record.state == "canceled" and 0 < record.bytes_done < 512 * 1024 * 1024
    assert list(store.tmp_dir.iterdir()) == []
    assert store.find_committed(uuid.UUID(job.id).hex) is None and store.list() == []
    figures = store.index.figures()
    assert store.index.used_bytes() == used_before and figures["reservations"] == 0
    with pytest.raises(JobCanceled):
        job.wait(1)
    counted = wait_until(
        lambda: value(scrape(settings.metrics_port), "paglets_artifacts_jobs_total", kind="import", outcome="canceled")
    )
    assert counted == 1  # the attempt that stopped for the cancel
    jobs.close()


def test_cancel_stops_a_running_export_and_leaves_no_part_beside_its_target(settings, files, workers):
    settings = settings.with_changes(fsync=True)
    workers.start(settings=settings)
    jobs = ArtifactJobs(settings=settings)
    source = files / "out-source.bin"
    write_big_file(source, 512 * 1024 * 1024)
    ref = jobs.import_file(str(source), delete_source=True).wait(120)
    target = files / "exports" / "copy.bin"
    for _ in range(3):
        job = jobs.export(ref["artifact_id"], str(target))
        wait_until(lambda job=job: job.status().bytes_done > 0, timeout=120, interval=0.005)
        try:
            job.cancel()
        except JobConflict:
            target.unlink()
            continue
        break
    else:
        pytest.fail("the export ended before each of three cancels")
    _stopped(job)
    assert list(target.parent.iterdir()) == []  # no target, no hidden .part
    assert workers_store(settings).find_committed(ref["artifact_id"]) is not None  # the artifact is untouched
    jobs.close()


def test_cancel_stops_a_running_sweep_at_its_next_item_and_it_reports_what_it_did(settings, jobs, workers):
    store = workers_store(settings)
    count = 6000
    for _ in range(count):
        store.create_from_stream(io.BytesIO(b"x" * 64), owner_agent_id="old", expires_at=1.0)
    job = jobs.sweep()
    workers.start()
    wait_until(lambda: job.status().state == "running", timeout=60, interval=0.002)
    try:
        job.cancel(by="ops")
    except JobConflict:
        pytest.skip("the sweep of 6000 artifacts ended before the cancel reached it")
    record = _stopped(job)
    assert record.state == "canceled" and record.canceled_by == "ops"
    report = record.result
    assert report["stopped"] is True and report["expired_removed"] < count
    left = store.list()
    assert len(left) == count - report["expired_removed"]
    assert store.index.used_bytes() == 64 * len(left)


def test_cancel_racing_completion_ends_each_job_in_exactly_one_final_state(settings, jobs, workers, files):
    workers.start(threads=4)
    store = workers_store(settings)
    sources = []
    for index in range(16):
        source = files / f"race-{index}.bin"
        write_random(source, 2 * 1024 * 1024 + index)
        sources.append(source)
    enqueued = [jobs.import_file(str(source)) for source in sources]
    outcome = {}
    for index, job in enumerate(enqueued):
        time.sleep(0.01 * (index % 5))
        try:
            outcome[job.id] = job.cancel().state
        except JobConflict as exc:
            outcome[job.id] = exc.state
    records = {job.id: wait_until(lambda job=job: (r := job.status()).done and r) for job in enqueued}
    for job_id, record in records.items():
        assert record.state == outcome[job_id], job_id  # what the cancel was told is what the record says
        assert record.state in ("succeeded", "canceled")
        if record.state == "canceled" and record.attempts:
            _stopped(jobs.job(job_id))  # its attempt ran: wait until it cleaned up
    succeeded = {uuid.UUID(job_id).hex for job_id, record in records.items() if record.state == "succeeded"}
    assert {ref.artifact_id for ref in store.list()} == succeeded
    assert store.index.used_bytes() == sum(ref.size_bytes for ref in store.list())
    assert list(store.tmp_dir.iterdir()) == []


def test_cancelling_a_job_that_ended_says_so_and_changes_nothing(jobs, workers, files):
    workers.start()
    source = files / "done.bin"
    write_random(source, 1000)
    job = jobs.import_file(str(source))
    job.wait(30)
    before = job.status()
    with pytest.raises(JobConflict, match="already ended \\(succeeded\\)") as raised:
        job.cancel()
    assert raised.value.state == "succeeded"
    assert job.status() == before
    canceled = jobs.sweep()
    canceled.cancel()
    with pytest.raises(JobConflict) as again:
        canceled.cancel()
    assert again.value.state == "canceled"
    with pytest.raises(LookupError):
        jobs.job(str(uuid.uuid4())).cancel()
    with pytest.raises(LookupError):
        from paglets_artifacts.jobs.client import Job

        Job(jobs, str(uuid.uuid4())).cancel()


# ---------------------------------------------------------------------- retry and dead letters


def _letter_of(jobs, job_id):
    return wait_until(lambda: next((letter for letter in jobs.dead_letters.list() if letter.job_id == job_id), None))


def test_a_failed_import_retried_makes_exactly_one_artifact_under_its_job_id(settings, jobs, workers, files):
    workers.start()
    source = files / "later.bin"
    job = jobs.import_file(str(source), owner_agent_id="agent-r")
    with pytest.raises(SourceUnavailable):
        job.wait(30)
    letter = _letter_of(jobs, job.id)  # a permanent failure is dead-lettered by Dramatiq
    assert (letter.kind, letter.state, letter.error["type"]) == ("import", "failed", "SourceUnavailable")
    assert jobs.jobs(state="failed")[0].error["type"] == "SourceUnavailable"
    sha = write_random(source, 50_000)
    queued = job.retry()
    assert (queued.state, queued.retries, queued.error, queued.finished_at) == ("queued", 1, None, None)
    result = job.wait(30)
    record = job.status()
    assert record.state == "succeeded" and record.retries == 1 and record.attempts == 2
    store = workers_store(settings)
    assert [ref.artifact_id for ref in store.list()] == [uuid.UUID(job.id).hex] == [result["artifact_id"]]
    assert store.list()[0].sha256 == sha
    assert [letter.job_id for letter in jobs.dead_letters.list()] == []  # the retry took it
    with pytest.raises(JobConflict, match="only a failed or canceled job") as raised:
        job.retry()
    assert raised.value.state == "succeeded" and job.status().retries == 1
    with pytest.raises(LookupError):
        jobs.job(str(uuid.uuid4()))


def test_a_canceled_job_is_retried_from_its_record_and_runs(settings, jobs, workers, files):
    source = files / "again.bin"
    write_random(source, 1234)
    job = jobs.import_file(str(source))
    job.cancel()
    assert job.retry().state == "queued"
    workers.start()
    assert job.wait(30)["size_bytes"] == 1234
    assert len(workers_store(settings).list()) == 1


def test_a_pull_keeps_its_secret_for_a_retry_only_while_its_dead_letter_lasts(settings, jobs, workers):
    workers.start()
    url = "http://127.0.0.1:9/artifacts/ab?token=s3cret"
    job = jobs.import_url(url)
    with pytest.raises(Exception, match="not allowed"):
        job.wait(30)
    assert job.status().arguments["url"] == "http://127.0.0.1:9/artifacts/ab?token=***"
    letter = _letter_of(jobs, job.id)
    assert letter.arguments["url"].endswith("token=***")  # shown redacted
    job.retry()  # from the dead letter: the whole URL
    with pytest.raises(Exception, match="not allowed"):
        job.wait(30)
    letter_id, message = wait_until(lambda: jobs.dead_letters.find_job(job.id, contract.TRANSFER_QUEUE))
    assert message.kwargs["url"] == url
    jobs.dead_letters.drop(letter_id)
    with pytest.raises(JobConflict, match="secret masked"):
        job.retry()
    assert job.status().state == "failed"


def test_a_dead_letter_requeued_runs_and_one_dropped_is_gone(settings, jobs, workers, files):
    workers.start()
    source = files / "requeued.bin"
    job = jobs.import_file(str(source))
    with pytest.raises(SourceUnavailable):
        job.wait(30)
    letter = _letter_of(jobs, job.id)
    assert jobs.dead_letters.get(letter.id).job_id == job.id
    assert letter.expires_at == letter.dead_lettered_at + 7 * 86400 and letter.dead_lettered_at <= time.time()
    write_random(source, 777)
    assert jobs.dead_letters.requeue(letter.id) == job.id
    assert job.wait(30)["size_bytes"] == 777
    with pytest.raises(LookupError):
        jobs.dead_letters.requeue(letter.id)
    # A message naming no actor is dead-lettered (not acknowledged and lost), shown, and dropped.
    stray = Message(queue_name=contract.TRANSFER_QUEUE, actor_name="no_such_actor", args=(), kwargs={}, options={})
    jobs.broker.enqueue(stray)
    unknown = _letter_of(jobs, stray.message_id)
    assert (unknown.actor, unknown.kind, unknown.error["type"]) == ("no_such_actor", "", "ActorNotFound")
    jobs.dead_letters.drop(unknown.id)
    assert [letter.id for letter in jobs.dead_letters.list()] == []
    with pytest.raises(LookupError):
        jobs.dead_letters.drop(unknown.id)


def test_an_undecodable_dead_letter_is_shown_can_be_dropped_and_not_requeued(settings, jobs, workers):
    workers.start()
    keys = QueueKeys.of(settings.namespace, contract.TRANSFER_QUEUE)
    jobs.client.hset(keys.messages, "garbage-1", b"\xff not a message token=s3cret")
    jobs.client.rpush(keys.queue, "garbage-1")
    letter = wait_until(lambda: next(iter(jobs.dead_letters.list()), None))
    assert letter.id == "garbage-1" and letter.error["type"] == "Undecodable" and not letter.job_id
    with pytest.raises(InvalidInput, match="can only be dropped"):
        jobs.dead_letters.requeue("garbage-1")
    jobs.dead_letters.drop("garbage-1")
    assert jobs.dead_letters.list() == []


def test_a_requeued_dead_letter_of_a_job_that_did_not_fail_is_refused(settings, jobs, workers, files):
    workers.start()
    source = files / "x.bin"
    job = jobs.import_file(str(source))
    with pytest.raises(SourceUnavailable):
        job.wait(30)
    letter = _letter_of(jobs, job.id)
    write_random(source, 10)
    job.retry()
    job.wait(30)
    keys = QueueKeys.of(settings.namespace, contract.TRANSFER_QUEUE)
    payload = Message(  # the same message dead-lettered once more (as a stale copy would be)
        queue_name=contract.TRANSFER_QUEUE,
        actor_name=contract.IMPORT.actor_name,
        args=(),
        kwargs={"path": str(source)},
        options={},
        message_id=job.id,
    ).encode()
    jobs.client.zadd(keys.dead, {letter.id: time.time() * 1000})
    jobs.client.hset(keys.dead_messages, letter.id, payload)
    with pytest.raises(JobConflict, match="is succeeded") as raised:
        jobs.dead_letters.requeue(letter.id)
    assert raised.value.state == "succeeded"
    assert jobs.dead_letters.get(letter.id).state == "succeeded"  # left where it was


# ---------------------------------------------------------------------- idempotent enqueue


def test_two_enqueues_with_one_key_make_one_job_and_other_arguments_are_refused(settings, jobs, workers, files):
    source = files / "once.bin"
    write_random(source, 4096)
    first = jobs.import_file(str(source), owner_agent_id="a", idempotency_key="upload-42")
    second = jobs.import_file(str(source), owner_agent_id="a", idempotency_key="upload-42")
    assert second.id == first.id and not first.replayed and second.replayed
    assert [record.id for record in jobs.jobs()] == [first.id]
    with pytest.raises(IdempotencyConflict, match="upload-42") as raised:
        jobs.import_file(str(source), owner_agent_id="b", idempotency_key="upload-42")
    assert raised.value.job_id == first.id
    with pytest.raises(IdempotencyConflict):
        jobs.sweep(idempotency_key="upload-42")  # another kind under the key
    other = jobs.import_file(str(source), owner_agent_id="a", idempotency_key="upload-43")
    assert other.id != first.id
    workers.start()
    first.wait(30)
    other.wait(30)
    assert jobs.import_file(str(source), owner_agent_id="a", idempotency_key="upload-42").id == first.id
    assert len(workers_store(settings).list()) == 2  # one per key
    ttl = jobs.client.ttl(jobs.idempotency_key("upload-42"))
    assert 0 < ttl <= settings.job_retention_seconds
    for bad in ("", "x" * 201, "tab\there", "é"):
        with pytest.raises(InvalidInput, match="idempotency key"):
            jobs.sweep(idempotency_key=bad)
    assert len(jobs.jobs()) == 2


def test_an_idempotent_enqueue_keeps_its_start_deadline(jobs, workers, files):
    source = files / "late.bin"
    write_random(source, 10)
    job = jobs.enqueue(contract.IMPORT, start_within_seconds=0.3, idempotency_key="k", path=str(source))
    time.sleep(0.6)
    workers.start()
    from paglets_artifacts import JobExpired

    with pytest.raises(JobExpired):
        job.wait(30)


# ---------------------------------------------------------------------- over HTTP


@pytest.fixture
def http(settings, jobs):
    import httpx

    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread

    with ServerThread(create_app(settings, jobs=jobs)) as running, httpx.Client(base_url=running.url) as client:
        yield client


def _error(answer, status: int, error_class: str) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error_class"] == error_class and body["error"]
    return body


def test_cancel_and_retry_over_http(http, jobs, workers, files):
    job = jobs.sweep()
    canceled = http.post(f"/jobs/{job.id}/cancel", json={"by": "dashboard"})
    assert canceled.status_code == 200
    assert canceled.json()["job"]["state"] == "canceled" and canceled.json()["job"]["canceled_by"] == "dashboard"
    body = _error(http.post(f"/jobs/{job.id}/cancel"), 409, "JobConflict")
    assert body["state"] == "canceled" and body["error_type"] == "TransferError"
    _error(http.post(f"/jobs/{uuid.uuid4()}/cancel"), 404, "JobNotFound")
    queued = jobs.sweep()
    for bad in (b"{not json", b'{"by": 3}', b'{"who": "x"}', b"[]", b'{"by": ""}'):
        _error(http.post(f"/jobs/{queued.id}/cancel", content=bad), 400, "InvalidInput")
    assert queued.status().state == "queued"  # a refused cancel changed nothing
    assert http.post(f"/jobs/{queued.id}/cancel").json()["job"]["canceled_by"] == "http 127.0.0.1"

    retried = http.post(f"/jobs/{job.id}/retry")
    assert retried.status_code == 202 and retried.json()["job"]["state"] == "queued"
    assert retried.headers["location"].endswith(f"/jobs/{job.id}")
    _error(http.post(f"/jobs/{job.id}/retry"), 409, "JobConflict")  # queued: nothing to retry
    _error(http.post(f"/jobs/{uuid.uuid4()}/retry"), 404, "JobNotFound")
    workers.start()
    job.wait(30)
    assert http.get(f"/jobs/{job.id}").json()["job"]["retries"] == 1


def test_dead_letters_over_http(http, settings, jobs, workers, files):
    workers.start()
    source = files / "dl.bin"
    job = jobs.import_file(str(source))
    with pytest.raises(SourceUnavailable):
        job.wait(30)
    listed = wait_until(lambda: http.get("/dead-letters").json()["dead_letters"])
    assert [(letter["job_id"], letter["state"]) for letter in listed] == [(job.id, "failed")]
    assert listed[0]["error"]["type"] == "SourceUnavailable" and listed[0]["queue"] == contract.TRANSFER_QUEUE
    _error(http.get("/dead-letters", params={"limit": "0"}), 400, "InvalidInput")
    write_random(source, 99)
    requeued = http.post(f"/dead-letters/{listed[0]['id']}/requeue")
    assert requeued.status_code == 202 and requeued.json()["job_id"] == job.id
    assert job.wait(30)["size_bytes"] == 99
    _error(http.post(f"/dead-letters/{listed[0]['id']}/requeue"), 404, "DeadLetterNotFound")
    keys = QueueKeys.of(settings.namespace, contract.TRANSFER_QUEUE)
    jobs.client.zadd(keys.dead, {"junk": time.time() * 1000})
    jobs.client.hset(keys.dead_messages, "junk", b"junk")
    _error(http.post("/dead-letters/junk/requeue"), 400, "InvalidInput")
    assert http.delete("/dead-letters/junk").json() == {"ok": True}
    _error(http.delete("/dead-letters/junk"), 404, "DeadLetterNotFound")
    assert http.get("/dead-letters").json() == {"dead_letters": []}


def test_idempotency_key_header_over_http(http, jobs):
    first = http.post("/jobs/sweep", json={"now": 5.0}, headers={"Idempotency-Key": "tick-1"})
    again = http.post("/jobs/sweep", json={"now": 5.0}, headers={"Idempotency-Key": "tick-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    assert first.json()["replayed"] is False and again.json()["replayed"] is True
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    body = _error(
        http.post("/jobs/sweep", json={"now": 6.0}, headers={"Idempotency-Key": "tick-1"}), 422, "IdempotencyConflict"
    )
    assert body["job_id"] == first.json()["job_id"]
    _error(http.post("/jobs/sweep", headers={"Idempotency-Key": "k" * 201}), 400, "InvalidInput")
    assert len(jobs.jobs()) == 1


def test_the_openapi_document_describes_the_job_control_endpoints():
    from paglets_artifacts.http.openapi import openapi_document

    paths = openapi_document()["paths"]
    assert set(paths["/jobs/{job_id}/cancel"]) == set(paths["/jobs/{job_id}/retry"]) == {"post"}
    assert "409" in paths["/jobs/{job_id}/cancel"]["post"]["responses"]
    assert set(paths["/dead-letters"]) == {"get"} and set(paths["/dead-letters/{letter_id}"]) == {"delete"}
    assert set(paths["/dead-letters/{letter_id}/requeue"]) == {"post"}
    post = paths["/jobs/import"]["post"]
    assert post["parameters"][0]["name"] == "Idempotency-Key" and "422" in post["responses"]
    schemas = openapi_document()["components"]["schemas"]
    assert "canceled" in schemas["JobRecord"]["properties"]["state"]["enum"]
    assert {"canceled_by", "canceled_at", "stopped_at", "retries"} <= set(schemas["JobRecord"]["properties"])
    from paglets_artifacts.jobs.dead_letters import DeadLetter

    assert list(schemas["DeadLetter"]["properties"]) == list(DeadLetter("i", "q", 0.0, 0.0).to_wire())


# ---------------------------------------------------------------------- on the command line


def _cli(settings, *args):
    import json

    from typer.testing import CliRunner

    from paglets_artifacts.cli import commands as cli

    result = CliRunner().invoke(
        cli.app, list(args), env={**settings.to_env(), "COLUMNS": "400"}, catch_exceptions=False
    )
    result.json = lambda: json.loads(result.stdout)  # type: ignore[attr-defined]
    return result


def test_cancel_and_retry_on_the_command_line(settings, jobs, workers, files):
    job = jobs.sweep()
    canceled = _cli(settings, "jobs", "cancel", job.id[:8], "--by", "night-shift", "--json")
    assert canceled.exit_code == 0, canceled.stderr
    assert canceled.json()["state"] == "canceled" and canceled.json()["canceled_by"] == "night-shift"
    again = _cli(settings, "jobs", "cancel", job.id)
    assert again.exit_code == 1 and "already ended (canceled)" in again.stderr
    assert _cli(settings, "jobs", "cancel", str(uuid.uuid4())).exit_code == 1
    shown = _cli(settings, "jobs", job.id)
    assert shown.exit_code == 1 and "night-shift" in shown.stdout  # a canceled job is not a success
    waited = _cli(settings, "jobs", job.id, "--wait")
    assert waited.exit_code == 1 and "was canceled by night-shift" in waited.stderr

    workers.start()
    failed = jobs.import_file(str(files / "missing.bin"))
    with pytest.raises(SourceUnavailable):
        failed.wait(30)
    listed = _cli(settings, "jobs", "--state", "failed")
    assert listed.exit_code == 0 and failed.id[:8] in listed.stdout and "SourceUnavailable" in listed.stdout
    write_random(files / "missing.bin", 5)
    retried = _cli(settings, "jobs", "retry", failed.id, "--wait", "--json")
    assert retried.exit_code == 0, retried.stderr
    assert retried.json()["state"] == "succeeded" and retried.json()["retries"] == 1
    refused = _cli(settings, "jobs", "retry", failed.id, "--json")
    assert refused.exit_code == 1 and refused.json()["error"]["type"] == "JobConflict"
    assert _cli(settings, "jobs", "retry", job.id).stdout.strip() == job.id  # a canceled one, queued again
    assert jobs.job(job.id).wait(30) is not None


def test_dead_letters_on_the_command_line(settings, jobs, workers, files):
    workers.start()
    job = jobs.import_file(str(files / "gone.bin"))
    with pytest.raises(SourceUnavailable):
        job.wait(30)
    letter = _letter_of(jobs, job.id)
    table = _cli(settings, "dead-letters")
    assert table.exit_code == 0 and letter.id in table.stdout and "SourceUnavailable" in table.stdout
    assert [item["job_id"] for item in _cli(settings, "dead-letters", "--json").json()] == [job.id]
    write_random(files / "gone.bin", 3)
    requeued = _cli(settings, "dead-letters", "requeue", letter.id)
    assert requeued.exit_code == 0 and requeued.stdout.strip() == job.id
    job.wait(30)
    missing = _cli(settings, "dead-letters", "requeue", letter.id)
    assert missing.exit_code == 1 and "no dead letter" in missing.stderr
    stray = Message(queue_name=contract.MAINTENANCE_QUEUE, actor_name="gone_actor", args=(), kwargs={}, options={})
    jobs.broker.enqueue(stray)
    unknown = _letter_of(jobs, stray.message_id)
    dropped = _cli(settings, "dead-letters", "drop", unknown.id)
    assert dropped.exit_code == 0 and f"dropped {unknown.id}" in dropped.stdout
    assert _cli(settings, "dead-letters", "drop", unknown.id).exit_code == 1
    empty = _cli(settings, "dead-letters")
    assert empty.exit_code == 0 and "no dead letters" in empty.stderr


def test_idempotency_key_on_the_command_line(settings, jobs, files):
    write_random(files / "k.bin", 10)
    first = _cli(settings, "import", str(files / "k.bin"), "--idempotency-key", "nightly-7")
    second = _cli(settings, "import", str(files / "k.bin"), "--idempotency-key", "nightly-7", "--json")
    assert first.exit_code == second.exit_code == 0, second.stderr
    assert second.json()["id"] == first.stdout.strip() and second.json()["replayed"] is True
    other = _cli(settings, "import", str(files / "k.bin"), "--owner", "x", "--idempotency-key", "nightly-7")
    assert other.exit_code == 1 and "IdempotencyConflict" in other.stderr
    assert _cli(settings, "sweep", "--idempotency-key", "").exit_code == 1
    assert len(jobs.jobs()) == 1


# ---------------------------------------------------------------------- the pieces, one by one


def test_a_maintenance_pass_stops_where_it_is_asked_to(settings):
    store = workers_store(settings)
    for _ in range(5):
        store.create_from_stream(io.BytesIO(b"old"), owner_agent_id="gone", expires_at=1.0)
    asked = []

    def after(count):
        return lambda: asked.append(1) or len(asked) > count

    assert store.cleanup_temporary(stop=after(2)).expired_removed == 2
    asked.clear()
    assert len(store.delete_owner("gone", stop=after(1)).deleted) == 1
    assert len(store.list()) == 2
    figures = store.reindex(stop=lambda: True)
    assert figures == {"orphans_removed": 0, "orphan_bytes_freed": 0}  # stopped before the rebuild
    assert "artifacts" in store.reindex()


def test_a_running_attempt_reads_its_cancel_at_most_every_interval(monkeypatch, jobs):
    from types import SimpleNamespace

    from workers import cancel

    job = jobs.sweep()
    reads = []

    class Records:
        def is_canceled(self, job_id):
            reads.append(job_id)
            return jobs.records.is_canceled(job_id)

    monkeypatch.setattr(cancel, "context", lambda: SimpleNamespace(records=Records()))
    watch = cancel.CancelWatch(job.id)
    assert not watch.requested() and reads == []  # in its first interval: no Redis call
    watch._next = 0.0
    assert not watch.requested() and reads == [job.id]
    assert not watch.requested() and reads == [job.id]  # again within the interval: none
    job.cancel()
    watch._next = 0.0
    with pytest.raises(JobCanceled):
        watch.check()
    assert watch.requested() and len(reads) == 2  # once seen, never read again


def test_the_stop_of_an_attempt_that_finished_after_its_cancel(monkeypatch, settings, jobs, files):
    from workers import cancel
    from workers.context import build_context

    ctx = build_context(settings)
    monkeypatch.setattr(cancel, "context", lambda: ctx)
    store = ctx.store
    outcomes = {}
    for moved in (False, True):
        job = jobs.import_file(str(files / "x.bin"), delete_source=moved)
        job.cancel()
        ref = store.create_from_stream(io.BytesIO(b"committed"), artifact_id=uuid.UUID(job.id).hex).ref
        cancel.record_stop(job.id, "import", {"delete_source": moved}, ref.to_wire(), succeeded=True)
        outcomes[moved] = (store.find_committed(ref.artifact_id) is not None, job.status())
    removed, record = outcomes[False]
    assert not removed and record.result is None and record.stopped_at is not None
    kept, record = outcomes[True]  # its source went into the store: kept, its ref told
    assert kept and record.result["artifact_id"] == uuid.UUID(record.id).hex
    export = jobs.export("ab" * 16, str(files / "out.bin"))
    export.cancel()
    cancel.record_stop(export.id, "export", {}, {"target": "t"}, succeeded=True)
    assert export.status().result == {"target": "t"}
    assert not jobs.records.stopped(export.id, {"again": 1})  # recorded once
    assert not jobs.records.stopped(jobs.sweep().id)  # only for a canceled job
    ctx.client.close()


def test_who_cancels_by_default_and_how_long_dead_letters_last(jobs):
    from paglets_artifacts.jobs.client import who
    from paglets_artifacts.jobs.dead_letters import DEAD_LETTER_SECONDS

    record = jobs.sweep().cancel()
    assert record.canceled_by == who() and who().endswith(f":{os.getpid()}") and "@" in who()
    assert DEAD_LETTER_SECONDS == 7 * 86400


def test_a_canceled_periodic_job_does_not_block_the_next_tick():
    from paglets_artifacts.jobs.records import CANCELED, FINAL_STATES
    from workers.scheduler import _BUSY_STATES

    assert CANCELED in FINAL_STATES and CANCELED not in _BUSY_STATES
