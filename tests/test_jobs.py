"""The job system end to end: real Redis, real `dramatiq workers` processes, real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
import redis
from dramatiq import Message

from conftest import ROOT, wait_until, workers_store, write_big_file, write_random
from paglets_artifacts import (
    ArtifactJobs,
    ArtifactRef,
    ArtifactTooLarge,
    ChecksumMismatch,
    InvalidInput,
    JobExpired,
    JobFailed,
    JobTimeout,
    PathNotAllowed,
    QuotaExceeded,
    SourceUnavailable,
)
from paglets_artifacts.jobs import contract


def test_import_export_sweep_and_delete_owner_report_their_results(settings, jobs, workers, files):
    workers.start()
    source = files / "report.bin"
    sha = write_random(source, 300_000)

    imported = jobs.import_file(str(source), owner_agent_id="agent-1", compression="zstd")
    ref = ArtifactRef.from_wire(imported.wait(30))
    assert (ref.size_bytes, ref.sha256, ref.owner_agent_id, ref.name, ref.compression) == (
        300_000,
        sha,
        "agent-1",
        "report.bin",
        "zstd",
    )
    assert ref.artifact_id == uuid.UUID(imported.id).hex
    record = imported.status()
    assert record.kind == "import" and record.state == "succeeded" and record.attempts == 1
    assert record.bytes_done == record.bytes_total == 300_000
    assert record.worker and record.started_at >= record.enqueued_at and record.finished_at >= record.started_at

    target = files / "out" / "copy.bin"
    exported = jobs.export(ref.artifact_id, str(target)).wait(30)
    assert exported["target"] == str(target) and exported["moved"] is False
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha

    store = workers_store(settings)
    expired = store.create_from_stream(io.BytesIO(b"old"), owner_agent_id="x", expires_at=1.0)
    stale = store.tmp_dir / f"{uuid.uuid4().hex}.part"
    stale.write_bytes(b"12345")
    os.utime(stale, (0, 0))
    swept = jobs.sweep().wait(30)
    assert swept["expired_removed"] == 1 and swept["parts_removed"] == 1
    assert swept["bytes_freed"] == 3 + 5
    assert store.find_committed(expired.ref.artifact_id) is None

    deleted = jobs.delete_owner("agent-1").wait(30)
    assert deleted == {"owner_agent_id": "agent-1", "deleted": 1, "bytes_freed": 300_000}
    assert store.list(owner_agent_id="agent-1") == []


@pytest.mark.parametrize(
    "case",
    ["checksum", "too_large", "quota", "missing", "not_a_file", "outside_roots", "symlink_escape"],
)
def test_permanent_errors_fail_at_once_with_type_and_message(case, settings, files, tmp_path, workers):
    limits = {"too_large": {"max_artifact_bytes": 1000}, "quota": {"quota_bytes": 1000}}.get(case, {})
    settings = settings.with_changes(**limits)
    workers.start(settings=settings)
    jobs = ArtifactJobs(settings=settings)
    source = files / "data.bin"
    write_random(source, 5000)
    expected_sha = None
    if case == "checksum":
        expected_sha = "0" * 64
    elif case == "missing":
        source = files / "nope.bin"
    elif case == "not_a_file":
        source = files / "a-directory"
        source.mkdir()
    elif case == "outside_roots":
        source = tmp_path / "outside.bin"
        write_random(source, 10)
    elif case == "symlink_escape":
        outside = tmp_path / "secret.bin"
        write_random(outside, 10)
        source = files / "innocent.bin"
        source.symlink_to(outside)
    expected_type = {
        "checksum": ChecksumMismatch,
        "too_large": ArtifactTooLarge,
        "quota": QuotaExceeded,
        "missing": SourceUnavailable,
        "not_a_file": SourceUnavailable,
        "outside_roots": PathNotAllowed,
        "symlink_escape": PathNotAllowed,
    }[case]
    job = jobs.import_file(str(source), expected_sha256=expected_sha)
    with pytest.raises(expected_type) as raised:
        job.wait(30)
    record = job.status()
    assert record.state == "failed" and record.attempts == 1  # not retried
    assert record.error["type"] == expected_type.__name__
    assert record.error["message"] == str(raised.value) and str(raised.value)
    store = workers_store(settings)
    assert store.list() == [] and list(store.tmp_dir.iterdir()) == []
    jobs.close()


def test_export_outside_allowed_roots_is_refused_and_writes_nothing(settings, jobs, workers, files, tmp_path):
    workers.start()
    source = files / "a.bin"
    write_random(source, 100)
    ref = ArtifactRef.from_wire(jobs.import_file(str(source)).wait(30))
    target = tmp_path / "elsewhere" / "a.bin"
    with pytest.raises(PathNotAllowed):
        jobs.export(ref.artifact_id, str(target)).wait(30)
    assert not target.parent.exists()


def test_garbage_message_on_the_queue_fails_cleanly_and_is_reported(settings, jobs, workers):
    workers.start()
    message = Message(
        queue_name=contract.TRANSFER_QUEUE,
        actor_name=contract.IMPORT.actor_name,
        args=("positional",),
        kwargs={"bogus": 1},
        options={},
    )
    jobs.broker.enqueue(message)
    record = wait_until(lambda: (r := jobs.records.get(message.message_id)) and r.done and r)
    assert record.state == "failed" and record.error["type"] == "InvalidInput"
    missing = Message(
        queue_name=contract.MAINTENANCE_QUEUE,
        actor_name=contract.DELETE_OWNER.actor_name,
        args=(),
        kwargs={},
        options={},
    )
    jobs.broker.enqueue(missing)
    record = wait_until(lambda: (r := jobs.records.get(missing.message_id)) and r.done and r)
    assert record.error == {
        "type": "InvalidInput",
        "message": "delete_owner job is missing the argument 'owner_agent_id'",
    }


def test_host_side_validation_rejects_bad_arguments_before_enqueueing(jobs):
    with pytest.raises(InvalidInput, match="absolute"):
        jobs.import_file("relative/path.bin")
    with pytest.raises(InvalidInput, match="sha256"):
        jobs.import_file("/abs/path.bin", expected_sha256="xyz")
    with pytest.raises(InvalidInput, match="artifact id"):
        jobs.export("../../etc", "/tmp/x")
    with pytest.raises(InvalidInput, match="expires_at"):
        jobs.import_file("/abs/path.bin", expires_at=float("nan"))
    assert jobs.jobs() == []


def test_progress_is_visible_while_a_large_import_runs(settings, jobs, workers, files):
    settings_path = files / "large.bin"
    size = 768 * 1024 * 1024
    sha = write_big_file(settings_path, size)
    job = jobs.import_file(str(settings_path))
    workers.start()
    seen = []

    def partial_progress():
        record = job.status()
        if 0 < record.bytes_done < size and record.state == "running":
            seen.append((record.bytes_done, record.bytes_total))
        return record.done

    wait_until(partial_progress, timeout=120, interval=0.005)
    assert job.wait(5)["sha256"] == sha
    assert seen, "no intermediate progress was observed"
    assert all(total == size for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_worker_killed_mid_import_is_redelivered_and_leaves_exactly_one_artifact(settings, jobs, workers, files):
    source = files / "large.bin"
    size = 768 * 1024 * 1024
    sha = write_big_file(source, size)
    job = jobs.import_file(str(source), owner_agent_id="crash")
    first = workers.start()
    wait_until(lambda: job.status().bytes_done > 0, timeout=60, interval=0.005)
    workers.kill(first)  # mid-transfer: a .part is half written
    store = workers_store(settings)
    assert job.status().state == "running"
    workers.start()
    result = job.wait(120)
    record = job.status()
    assert record.state == "succeeded" and record.attempts >= 2
    refs = store.list()
    assert [ref.artifact_id for ref in refs] == [uuid.UUID(job.id).hex]
    assert refs[0].sha256 == sha == result["sha256"]
    assert list(store.tmp_dir.iterdir()) == []  # the dead attempt's .part was replaced, not left
    report = jobs.sweep().wait(30)
    assert report["parts_removed"] == 0 and report["orphans_removed"] == 0
    assert store.index.used_bytes() == sum(p.stat().st_size for p in store.blobs_dir.glob("*.bin")) == size


def test_move_import_and_move_export(settings, jobs, workers, files):
    workers.start()
    source = files / "moved.bin"
    sha = write_random(source, 2_000_000)
    inode = source.stat().st_ino
    ref = ArtifactRef.from_wire(jobs.import_file(str(source), delete_source=True).wait(30))
    store = workers_store(settings)
    assert not source.exists()
    assert store.blob_path(ref.artifact_id).stat().st_ino == inode  # renamed, not copied
    target = files / "back.bin"
    result = jobs.export(ref.artifact_id, str(target), move=True).wait(30)
    assert result["moved"] is True and hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert store.list() == []


def test_import_enqueued_before_its_owner_was_deleted_leaves_nothing(settings, jobs, workers, files):
    source = files / "late.bin"
    write_random(source, 1000)
    imported = jobs.import_file(str(source), owner_agent_id="disposed")
    deletion = jobs.delete_owner("disposed")
    workers.start()
    deleted = deletion.wait(30)
    try:
        imported.wait(30)
        assert deleted["deleted"] == 1  # the import ran first; the deletion removed it
    except Exception as exc:
        assert type(exc).__name__ == "OwnerDeleted"
    assert workers_store(settings).list(owner_agent_id="disposed") == []
    # An import enqueued after the deletion proceeds.
    again = ArtifactRef.from_wire(jobs.import_file(str(source), owner_agent_id="disposed").wait(30))
    assert workers_store(settings).list(owner_agent_id="disposed") == [again]


def test_another_process_finds_a_job_by_id_and_waits_for_it(settings, jobs, workers, files):
    source = files / "shared.bin"
    sha = write_random(source, 4096)
    job = jobs.import_file(str(source))
    script = (
        "import json, sys\n"
        "from paglets_artifacts import ArtifactJobs, Settings\n"
        "jobs = ArtifactJobs(settings=Settings.from_env())\n"
        "job = jobs.job(sys.argv[1])\n"
        "print(json.dumps(job.wait(60)))\n"
    )
    env = {**os.environ, **settings.to_env()}
    waiter = subprocess.Popen([sys.executable, "-c", script, job.id], env=env, stdout=subprocess.PIPE, cwd=ROOT)
    time.sleep(0.3)  # the other host is waiting before any worker exists
    workers.start()
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0
    assert json.loads(out)["sha256"] == sha


def test_unknown_job_id_and_wait_timeout(jobs):
    with pytest.raises(LookupError):
        jobs.job(str(uuid.uuid4()))
    job = jobs.sweep()  # no worker runs
    with pytest.raises(JobTimeout):
        job.wait(0.3)
    assert job.status().state == "queued"


def test_sweeps_run_while_a_long_transfer_occupies_the_transfer_queue(settings, jobs, workers, files):
    source = files / "large.bin"
    write_big_file(source, 768 * 1024 * 1024)
    transfer = jobs.import_file(str(source))
    workers.start(threads=2)
    wait_until(lambda: transfer.status().state == "running", timeout=60, interval=0.005)
    sweep = jobs.sweep()
    sweep.wait(60)
    assert sweep.status().finished_at is not None
    transfer.wait(120)
    assert sweep.status().finished_at <= transfer.status().finished_at


def test_records_expire_after_the_retention_time(settings, workers, files):
    settings = settings.with_changes(job_retention_seconds=1.0)
    workers.start(settings=settings)
    jobs = ArtifactJobs(settings=settings)
    job = jobs.sweep()
    job.wait(30)
    assert 0 < jobs.client.ttl(jobs.records.key(job.id)) <= 1
    wait_until(lambda: jobs.records.get(job.id) is None, timeout=5)
    assert [r.id for r in jobs.jobs()] == []
    jobs.close()


def test_unknown_error_type_maps_to_job_failed(jobs):
    from paglets_artifacts.errors import error_class

    assert error_class("TimeLimitExceeded") is JobFailed
    assert error_class("QuotaExceeded") is QuotaExceeded


def test_a_final_state_is_written_once_and_never_overwritten(jobs):
    job = jobs.sweep()  # no worker: the record stays queued until this test ends it
    assert jobs.records.finished(job.id, state="succeeded", result={"parts_removed": 0})
    # A second, overlapping attempt of the same job ends later with an error: the record keeps the first end.
    assert not jobs.records.finished(job.id, state="failed", error={"type": "ArtifactNotFound", "message": "late"})
    record = job.status()
    assert (record.state, record.result, record.error) == ("succeeded", {"parts_removed": 0}, None)


def test_a_checkpoint_is_kept_in_the_record_for_the_next_attempt_and_not_shown(jobs):
    job = jobs.sweep()
    assert jobs.records.checkpoint(job.id) is None
    jobs.records.save_checkpoint(job.id, {"artifact_id": "ab", "size_bytes": 3})
    assert jobs.records.checkpoint(job.id) == {"artifact_id": "ab", "size_bytes": 3}
    assert "checkpoint" not in job.status().to_wire()
    started = jobs.records.started(job.id, worker="w", kind="sweep", enqueued_at=1.0)
    assert started == 1 and jobs.records.checkpoint(job.id) == {"artifact_id": "ab", "size_bytes": 3}


def test_record_scripts_spell_the_states_of_records_py():
    from paglets_artifacts.jobs import records

    for script in (records._UPDATE_UNLESS_FINAL, records._FINISH, records._START):
        assert (
            not re.search(r"\{[A-Z_]+\}", script)
            and f'"{records.SUCCEEDED}"' in script
            and f'"{records.FAILED}"' in script
        )
    assert f"'state', \"{records.RUNNING}\"" in records._START


def test_what_is_retried_is_said_by_the_transient_base_or_is_a_redis_network_or_os_hiccup():
    import errno

    import httpx

    from paglets_artifacts import errors
    from paglets_artifacts.http.remote import RemoteUnavailable
    from paglets_artifacts.store.redis_index import IndexUnavailable
    from workers.broker import is_transient
    from workers.middleware import RecordUnavailable

    explicit = [
        errors.Superseded("x"),
        IndexUnavailable("x"),
        RemoteUnavailable("x", status=503),
        RecordUnavailable("x"),
    ]
    assert all(isinstance(error, errors.Transient) and is_transient(error) for error in explicit)
    assert isinstance(IndexUnavailable("x"), redis.TimeoutError)  # what hosts catch as a Redis failure
    hiccups = [
        redis.ConnectionError("x"),
        redis.TimeoutError("x"),
        ConnectionResetError("x"),
        httpx.ConnectError("x"),
        OSError(errno.ESTALE, "stale NFS handle"),
    ]
    assert all(is_transient(error) and not isinstance(error, errors.Transient) for error in hiccups)
    permanent = [
        errors.QuotaExceeded("x"),
        errors.ChecksumMismatch("x"),
        ValueError("x"),
        OSError(errno.ENOENT, "gone"),
    ]
    assert not any(is_transient(error) for error in permanent)
    assert not any(issubclass(errors.error_class(name), errors.Transient) for name in errors._KNOWN)


def test_a_job_whose_start_cannot_be_recorded_is_retried_not_run(monkeypatch):
    from types import SimpleNamespace

    from workers import middleware
    from workers.broker import is_transient

    monkeypatch.setattr(middleware, "retry_while_unreachable", lambda write, what: None)  # Redis never answered
    monkeypatch.setattr(middleware, "context", lambda: SimpleNamespace(records=None, worker_name="w", settings=None))
    message = Message(
        queue_name=contract.MAINTENANCE_QUEUE,
        actor_name=contract.SWEEP.actor_name,
        args=(),
        kwargs={},
        options={},
    )
    with pytest.raises(middleware.RecordUnavailable) as raised:
        middleware.JobRecordsMiddleware().before_process_message(None, message)
    assert is_transient(raised.value)
    assert middleware._CURRENT.get() is None  # nothing runs as this job


# ---------------------------------------------------------------------- a start deadline


def test_a_job_not_started_by_its_deadline_never_runs_and_fails_as_expired(jobs, files, workers):
    source = files / "late.bin"
    write_random(source, 1000)
    job = jobs.import_file(str(source))  # no deadline: runs whenever a worker comes
    late = jobs.enqueue(contract.IMPORT, start_within_seconds=0.5, path=str(source))
    time.sleep(1.0)
    workers.start()
    assert job.wait(30)["size_bytes"] == 1000
    with pytest.raises(JobExpired):
        late.wait(30)
    record = late.status()
    assert record.error["type"] == "JobExpired" and record.attempts == 1
    assert [r.id for r in jobs.jobs(kind="import", state="succeeded")] == [job.id]  # one artifact, not two


def test_a_job_that_started_before_its_deadline_is_redelivered_after_it_as_usual(jobs, files, tmp_path, settings):
    sys.path.insert(0, str(ROOT))
    from benchmarks.stress import CRASH_KIND_ENV, CRASH_STEP_ENV, kill_worker, start_worker

    source = files / "started.bin"
    write_random(source, 3 * 1024 * 1024)
    job = jobs.enqueue(contract.IMPORT, start_within_seconds=5.0, path=str(source))
    doomed = start_worker(
        settings, tmp_path / "doomed.log", env={CRASH_KIND_ENV: "import", CRASH_STEP_ENV: "replace:1"}, threads=1
    )
    assert doomed.wait(timeout=60) < 0  # killed by its crash point while the import ran
    time.sleep(max(0.0, job.status().enqueued_at + 5.5 - time.time()))  # past the start deadline
    rescuer = start_worker(settings, tmp_path / "rescuer.log")
    try:
        assert job.wait(60)["size_bytes"] == 3 * 1024 * 1024
        assert job.status().attempts == 2
    finally:
        kill_worker(rescuer)


def test_a_start_is_announced_and_reads_the_key_it_is_given_in_the_same_step(jobs):
    job = jobs.sweep()
    pubsub = jobs.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(jobs.records.channel)
    try:
        tombstone = f"{jobs.settings.namespace}:owner-deleted:someone"
        jobs.client.set(tombstone, "123.5")
        assert jobs.records.start(job.id, worker="w", kind="sweep", enqueued_at=1.0, read=tombstone) == (1, b"123.5")
        event = None
        for _ in range(50):
            event = pubsub.get_message(timeout=0.1)
            if event:
                break
        assert event is not None and json.loads(event["data"]) == {"id": job.id, "state": "running"}
        assert jobs.records.start(job.id, worker="w", kind="sweep", enqueued_at=1.0) == (2, None)  # no key: None
        jobs.records.finished(job.id, state="succeeded", result={})
        assert jobs.records.start(job.id, worker="w", kind="sweep", enqueued_at=1.0, read=tombstone) == (-1, None)
    finally:
        pubsub.close()
