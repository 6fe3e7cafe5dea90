"""Batch enqueue: many jobs in one round trip, each its own record and result, all or none."""

from __future__ import annotations

import os
import uuid

import pytest

from paglets_artifacts import ArtifactRef, InvalidInput
from paglets_artifacts.jobs import contract


def _queued_messages(redis_client, settings) -> int:
    return sum(
        redis_client.hlen(f"{settings.namespace}:{queue}.msgs")
        for queue in (contract.TRANSFER_QUEUE, contract.MAINTENANCE_QUEUE)
    )


def test_import_files_exports_and_delete_owners_run_each_job_with_its_own_record_and_result(jobs, workers, files):
    workers.start(threads=4)
    sources = [files / f"batch-{i}.bin" for i in range(5)]
    for source in sources:
        source.write_bytes(os.urandom(1024))

    imported = jobs.import_files([{"path": str(s), "owner_agent_id": f"owner-{i}"} for i, s in enumerate(sources)])
    assert len({job.id for job in imported}) == 5
    refs = [ArtifactRef.from_wire(job.wait(30)) for job in imported]
    for i, (job, ref) in enumerate(zip(imported, refs, strict=True)):
        assert ref.artifact_id == uuid.UUID(job.id).hex  # its own job, its own artifact
        assert (ref.name, ref.owner_agent_id, ref.size_bytes) == (f"batch-{i}.bin", f"owner-{i}", 1024)
        record = job.status()
        assert record.kind == "import" and record.state == "succeeded" and record.arguments["path"] == str(sources[i])

    exported = jobs.exports(
        [{"artifact_id": r.artifact_id, "target": str(files / f"out-{i}.bin")} for i, r in enumerate(refs)]
    )
    for i, job in enumerate(exported):
        assert job.wait(30)["target"] == str(files / f"out-{i}.bin")
        assert (files / f"out-{i}.bin").read_bytes() == sources[i].read_bytes()

    deleted = jobs.delete_owners([f"owner-{i}" for i in range(5)])
    assert [job.wait(30)["deleted"] for job in deleted] == [1] * 5
    assert len(jobs.jobs(limit=100)) == 15


def test_a_batch_is_one_transaction(jobs, redis_client, files):
    before = {name: stats["calls"] for name, stats in redis_client.info("commandstats").items()}
    jobs.import_files([{"path": str(files / f"{i}.bin")} for i in range(50)])
    after = {name: stats["calls"] for name, stats in redis_client.info("commandstats").items()}

    def delta(name: str) -> int:
        return after.get(f"cmdstat_{name}", 0) - before.get(f"cmdstat_{name}", 0)

    assert delta("multi") == 1 and delta("exec") == 1
    assert delta("evalsha") == 50  # every message in that one transaction
    assert len(jobs.jobs(limit=100)) == 50


def test_one_bad_item_enqueues_nothing_and_the_error_names_it(jobs, redis_client, settings, files):
    good = {"path": str(files / "a.bin")}
    with pytest.raises(InvalidInput, match=r"item 2: .*absolute path"):
        jobs.import_files([good, good, {"path": "relative.bin"}, good])
    with pytest.raises(InvalidInput, match=r"item 1: import job arguments must be an object, got str"):
        jobs.import_files([good, "/abs/b.bin"])
    with pytest.raises(InvalidInput, match=r"item 0: import job got unknown arguments: colour"):
        jobs.import_files([{**good, "colour": "red"}])
    with pytest.raises(InvalidInput, match=r"item 1: .*artifact id"):
        jobs.exports([{"artifact_id": "ab" * 16, "target": str(files / "x")}, {"artifact_id": "../x", "target": "/t"}])
    assert jobs.jobs() == []
    assert _queued_messages(redis_client, settings) == 0


def test_a_batch_must_be_a_list_within_the_bound(jobs, redis_client, settings, files):
    with pytest.raises(InvalidInput, match="must be a list"):
        jobs.import_files({"path": str(files / "a.bin")})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="list of owner ids"):
        jobs.delete_owners("owner-1")
    too_many = [{"path": str(files / f"{i}.bin")} for i in range(contract.MAX_BATCH_JOBS + 1)]
    with pytest.raises(
        InvalidInput, match=f"at most {contract.MAX_BATCH_JOBS} jobs, got {contract.MAX_BATCH_JOBS + 1}"
    ):
        jobs.import_files(too_many)
    assert jobs.import_files([]) == []
    assert jobs.jobs() == []
    assert _queued_messages(redis_client, settings) == 0
