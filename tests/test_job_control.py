"""Operating jobs against real workers and the real Redis: cancel, retry, dead letters,
idempotent enqueue (Python API; the CLI and HTTP paths are at the end)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from pathlib import Path

import pytest
import redis
from dramatiq import Message

from conftest import wait_until
from paglets_artifacts import ArtifactJobs, ArtifactStore, JobCanceled
from paglets_artifacts.errors import IdempotencyConflict, InvalidInput, JobConflict, SourceUnavailable
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.dead_letters import QueueKeys


def _write(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _big_file(path: Path, size: int) -> str:
    """Real bytes (not a sparse file), written once in 8 MiB blocks."""
    digest = hashlib.sha256()
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def _store(settings) -> ArtifactStore:
    return ArtifactStore.from_settings(settings, redis=redis.Redis.from_url(settings.redis_url))


def _stopped(job):
    return wait_until(lambda: (record := job.status()).stopped_at is not None and record, timeout=60)


# ---------------------------------------------------------------------- cancel


def test_a_canceled_queued_job_never_starts_and_its_redelivered_message_does_nothing(jobs, workers, files):
    source = files / "never.bin"
    _write(source, 10_000)
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
    assert _store(jobs.settings).list() == []


def test_cancel_stops_a_running_512_mib_import_leaving_no_part_no_reservation_and_no_artifact(
    settings, files, workers
):
    settings = settings.with_changes(fsync=True)  # the copy goes to the disk: it lasts
    workers.start(settings=settings)
    jobs = ArtifactJobs(settings=settings)
    store = _store(settings)
    used_before = store.index.used_bytes()
    source = files / "large.bin"
    _big_file(source, 512 * 1024 * 1024)
    for _ in range(3):  # a copy that wins the race against the cancel is tried again
        job = jobs.import_file(str(source))
        wait_until(lambda: job.status().bytes_done > 0, timeout=120, interval=0.005)
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
    jobs.close()


def test_cancel_stops_a_running_sweep_at_its_next_item_and_it_reports_what_it_did(settings, jobs, workers):
    store = _store(settings)
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
    store = _store(settings)
    sources = []
    for index in range(16):
        source = files / f"race-{index}.bin"
        _write(source, 2 * 1024 * 1024 + index)
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
    _write(source, 1000)
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
