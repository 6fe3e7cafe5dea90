"""Reconciliation: a job whose record has not ended but whose message Redis lost (writes
lost in a failover) is re-enqueued, or failed with ``MessageLost`` and a reason; jobs that
still have a message, or changed within the grace period, are left alone.

A lost message is made by deleting the queue's keys, as a failover that lost the last
writes leaves them; the reconciliation then runs as a real job on a real worker, or
directly through :func:`workers.reconcile.reconcile_jobs`.
"""

from __future__ import annotations

import time
import uuid

import pytest

from conftest import wait_until
from paglets_artifacts import ArtifactJobs, ArtifactStore
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.records import FAILED, QUEUED, RUNNING, SUCCEEDED
from workers.reconcile import MAX_REQUEUES, REQUEUES_FIELD, reconcile_jobs

MiB = 1024 * 1024


def lose_messages(jobs: ArtifactJobs, queue: str) -> None:
    """What a failover that lost the last writes leaves: the queue's messages gone, records kept."""
    ns = jobs.settings.namespace
    jobs.client.delete(f"{ns}:{queue}", f"{ns}:{queue}.msgs", f"{ns}:{queue}.DQ", f"{ns}:{queue}.DQ.msgs")


def age(jobs: ArtifactJobs, job_id: str, seconds: float) -> None:
    """Date a record's enqueue (and start) back, past the grace period."""
    key = jobs.records.key(job_id)
    record = jobs.records.get(job_id)
    assert record is not None
    jobs.client.hset(key, "enqueued_at", repr(record.enqueued_at - seconds))
    jobs.client.zadd(jobs.records.index_key, {job_id: record.enqueued_at - seconds})
    if record.started_at is not None:
        jobs.client.hset(key, "started_at", repr(record.started_at - seconds))


def test_a_queued_import_whose_message_was_lost_is_re_enqueued_and_runs_once(settings, jobs, files, workers):
    (files / "a.bin").write_bytes(b"a" * MiB)
    job = jobs.import_file(str(files / "a.bin"), owner_agent_id="agent")
    lose_messages(jobs, contract.TRANSFER_QUEUE)
    age(jobs, job.id, 120)
    workers.start(settings=settings.with_changes(reconcile_grace_seconds=60.0))
    result = jobs.reconcile().wait(60)
    assert (result["requeued_ids"], result["failed"]) == ([job.id], 0)
    ref = job.wait(60)
    assert ref["artifact_id"] == uuid.UUID(job.id).hex  # the job's own artifact id, as enqueued
    store = ArtifactStore.from_settings(settings, redis=jobs.client)
    assert [artifact.artifact_id for artifact in store.list()] == [ref["artifact_id"]]
    assert int(jobs.client.hget(jobs.records.key(job.id), REQUEUES_FIELD)) == 1


def test_an_import_that_committed_before_its_message_was_lost_is_not_imported_twice(settings, jobs, files, workers):
    (files / "b.bin").write_bytes(b"b" * MiB)
    job = jobs.import_file(str(files / "b.bin"))
    workers.start()
    ref = job.wait(60)
    messages = f"{settings.namespace}:{contract.TRANSFER_QUEUE}.msgs"
    wait_until(lambda: not jobs.client.exists(messages))  # acknowledged just after its record ended
    # The old master had the job's end and the acknowledgement; the new one has the record
    # as it was while the job ran, and no message.
    jobs.client.hset(jobs.records.key(job.id), mapping={"state": RUNNING, "started_at": repr(time.time() - 120)})
    age(jobs, job.id, 120)
    reconciled = reconcile_jobs(jobs, grace_seconds=60)
    assert reconciled.requeued == [job.id]
    assert job.wait(60) == ref
    store = ArtifactStore.from_settings(settings, redis=jobs.client)
    assert [artifact.artifact_id for artifact in store.list()] == [ref["artifact_id"]]


def test_jobs_with_a_message_or_within_the_grace_period_are_left_alone(jobs, files):
    kept = jobs.sweep()  # its message is queued (no worker runs)
    recent = jobs.delete_owner("someone")
    age(jobs, kept.id, 120)
    ns = jobs.settings.namespace
    queue = contract.MAINTENANCE_QUEUE
    payloads = jobs.client.hgetall(f"{ns}:{queue}.msgs")
    recent_key = next(key for key, value in payloads.items() if recent.id.encode() in value)
    jobs.client.hdel(f"{ns}:{queue}.msgs", recent_key)  # lost, but only just enqueued
    report = reconcile_jobs(jobs, grace_seconds=60)
    assert (report.requeued, report.failed) == ([], [])
    assert jobs.job(kept.id).status().state == QUEUED and jobs.job(recent.id).status().state == QUEUED


def test_a_job_retrying_from_the_delay_queue_is_left_alone(jobs):
    job = jobs.reindex()
    ns = jobs.settings.namespace
    queue = contract.MAINTENANCE_QUEUE
    # A retry waits in the delay queue: move the message there, as Retries does.
    payloads = jobs.client.hgetall(f"{ns}:{queue}.msgs")
    jobs.client.delete(f"{ns}:{queue}", f"{ns}:{queue}.msgs")
    jobs.client.hset(f"{ns}:{queue}.DQ.msgs", mapping=payloads)
    age(jobs, job.id, 120)
    assert reconcile_jobs(jobs, grace_seconds=60).requeued == []


def test_a_lost_job_whose_record_redacted_its_url_is_failed_with_the_reason(jobs):
    job = jobs.import_url("https://peer.example/artifacts/ab?token=secret-token")
    assert "secret-token" not in str(jobs.job(job.id).status().arguments)
    lose_messages(jobs, contract.TRANSFER_QUEUE)
    age(jobs, job.id, 120)
    report = reconcile_jobs(jobs, grace_seconds=60)
    assert report.failed == [job.id]
    record = jobs.job(job.id).status()
    assert record.state == FAILED and record.error["type"] == "MessageLost"
    assert "redacted arguments" in record.error["message"]


def test_a_job_lost_again_and_again_is_failed_after_the_last_re_enqueue(jobs):
    job = jobs.sweep()
    for _ in range(MAX_REQUEUES):
        lose_messages(jobs, contract.MAINTENANCE_QUEUE)
        age(jobs, job.id, 120)
        assert reconcile_jobs(jobs, grace_seconds=60).requeued == [job.id]
    lose_messages(jobs, contract.MAINTENANCE_QUEUE)
    age(jobs, job.id, 120)
    assert reconcile_jobs(jobs, grace_seconds=60).failed == [job.id]
    assert f"lost again after {MAX_REQUEUES} re-enqueues" in jobs.job(job.id).status().error["message"]


def test_a_dead_lettered_job_whose_record_never_ended_is_failed(jobs):
    job = jobs.sweep()
    ns = jobs.settings.namespace
    queue = contract.MAINTENANCE_QUEUE
    payloads = jobs.client.hgetall(f"{ns}:{queue}.msgs")
    jobs.client.delete(f"{ns}:{queue}", f"{ns}:{queue}.msgs")
    jobs.client.hset(f"{ns}:{queue}.XQ.msgs", mapping=payloads)
    age(jobs, job.id, 120)
    assert reconcile_jobs(jobs, grace_seconds=60).failed == [job.id]
    assert "dead-lettered" in jobs.job(job.id).status().error["message"]


def test_a_new_master_makes_the_reconciliation_enqueue_a_reindex(jobs, redis_client):
    first = reconcile_jobs(jobs, grace_seconds=60)
    assert first.reindex_job  # no master seen before: the index may lack what an old one had
    assert jobs.job(first.reindex_job).status().kind == "reindex"
    assert reconcile_jobs(jobs, grace_seconds=60).reindex_job == ""  # the same master
    redis_client.set(f"{jobs.settings.namespace}:reconcile:master", "another-run-id")
    assert reconcile_jobs(jobs, grace_seconds=60).reindex_job


@pytest.mark.parametrize("state", [SUCCEEDED, FAILED])
def test_ended_jobs_are_not_looked_at(jobs, state):
    job = jobs.sweep()
    jobs.records.finished(job.id, state=state)
    lose_messages(jobs, contract.MAINTENANCE_QUEUE)
    age(jobs, job.id, 120)
    report = reconcile_jobs(jobs, grace_seconds=60)
    assert (report.checked, report.requeued, report.failed) == (0, [], [])


def test_the_scheduler_runs_the_reconciliation_on_its_schedule(settings):
    from workers.scheduler import periodic_jobs

    periodics = {periodic.name: periodic for periodic in periodic_jobs(settings.with_changes(reconcile_schedule="120"))}
    assert periodics["reconcile"].schedule.interval == 120
    with ArtifactJobs(settings=settings) as jobs:
        job = periodics["reconcile"].enqueue(jobs)
        assert jobs.job(job.id).status().kind == "reconcile"


def running(jobs: ArtifactJobs, seconds_ago: float) -> str:
    """A reindex whose record says running, started ``seconds_ago``, its message in the queue."""
    job = jobs.reindex()
    jobs.client.hset(jobs.records.key(job.id), mapping={"state": RUNNING, "started_at": repr(time.time())})
    age(jobs, job.id, seconds_ago)
    return job.id


def test_an_attempt_from_before_a_master_change_running_past_its_time_limit_is_re_enqueued(settings, jobs):
    """The acknowledgement and the record's end were lost with the old master: the message
    is still in the hash (a live worker's ack set), but the attempt that fetched it is over."""
    reconcile_jobs(jobs, grace_seconds=60)  # the current master is seen
    ns = jobs.settings.namespace
    jobs.client.set(f"{ns}:reconcile:master", "the-old-master")  # then a failover
    overdue = running(jobs, settings.maintenance_time_limit_seconds + 120)
    young = running(jobs, 120)  # within its time limit: left alone
    report = reconcile_jobs(jobs, grace_seconds=60)
    assert report.requeued == [overdue] and report.reindex_job
    assert young not in reconcile_jobs(jobs, grace_seconds=60).requeued


def test_an_attempt_on_the_current_master_is_never_touched_while_its_message_is_there(settings, jobs):
    """No master change since the attempt started: nothing was lost, so a job in a worker's
    ack set is that worker's, however long past its time limit it runs."""
    ns = jobs.settings.namespace
    reconcile_jobs(jobs, grace_seconds=60)  # the current master is seen, and was first seen long ago:
    jobs.client.set(f"{ns}:reconcile:master:since", repr(time.time() - settings.maintenance_time_limit_seconds - 600))
    overdue = running(jobs, settings.maintenance_time_limit_seconds + 120)
    report = reconcile_jobs(jobs, grace_seconds=60)
    assert (report.requeued, report.failed, report.reindex_job) == ([], [], "")
    record = jobs.records.get(overdue)
    assert record is not None and record.state == RUNNING
    lose_messages(jobs, contract.MAINTENANCE_QUEUE)  # its message gone: lost, whatever the master
    assert reconcile_jobs(jobs, grace_seconds=60).requeued == [overdue]
