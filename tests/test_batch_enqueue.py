"""Batch enqueue: many jobs in one round trip, each its own record and result, all or none."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from conftest import wait_until
from paglets_artifacts import ArtifactRef, ArtifactStore, InvalidInput
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.limits import MAX_JOB_BATCH_BODY_BYTES, MAX_JOB_BODY_BYTES
from paglets_artifacts.http.openapi import openapi_document
from paglets_artifacts.http.server import ServerThread
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


# ---------------------------------------------------------------------- over HTTP


@pytest.fixture
def client(settings, jobs) -> Iterator[httpx.Client]:
    store = ArtifactStore.from_settings(settings, redis=jobs.client)
    with ServerThread(create_app(settings, store=store, jobs=jobs)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http


def test_post_jobs_with_an_array_runs_one_job_per_item(client, workers, files):
    workers.start(threads=4)
    sources = [files / f"http-{i}.bin" for i in range(3)]
    for source in sources:
        source.write_bytes(os.urandom(2048))
    answer = client.post("/jobs/import", json=[{"path": str(s), "owner_agent_id": "o"} for s in sources])
    assert answer.status_code == 202, answer.text
    accepted = answer.json()["jobs"]
    assert [a["kind"] for a in accepted] == ["import"] * 3 and len({a["job_id"] for a in accepted}) == 3
    for item, source in zip(accepted, sources, strict=True):
        assert item["status_url"].endswith(f"/jobs/{item['job_id']}")
        record = wait_until(
            lambda url=item["status_url"]: (
                (r := client.get(url).json()["job"])["state"] in ("succeeded", "failed") and r
            )
        )
        assert record["state"] == "succeeded", record
        assert record["arguments"]["path"] == str(source)
        assert client.get(f"/artifacts/{record['result']['artifact_id']}").content == source.read_bytes()
    # The single form still answers one job.
    single = client.post("/jobs/sweep", json={}).json()
    assert set(single) == {"job_id", "kind", "status_url", "replayed"} and single["replayed"] is False


def test_a_bad_batch_over_http_is_a_400_naming_the_item_and_enqueues_nothing(client, jobs, files):
    good = {"path": str(files / "a.bin")}
    refused = client.post("/jobs/import", json=[good, good, good, {"path": "relative.bin"}])
    assert refused.status_code == 400 and refused.json()["error_class"] == "InvalidInput"
    assert refused.json()["error"].startswith("item 3: ")
    refused = client.post("/jobs/import", json=[good] * (contract.MAX_BATCH_JOBS + 1))
    assert refused.status_code == 400 and f"at most {contract.MAX_BATCH_JOBS} jobs" in refused.json()["error"]
    refused = client.post("/jobs/import", content=b"[1]")
    assert refused.status_code == 400 and "item 0: " in refused.json()["error"]
    refused = client.post("/jobs/import", content=b'"a string"')
    assert refused.status_code == 400 and "object or an array" in refused.json()["error"]
    # A batch may be larger than one job's arguments, within its own bound.
    long_names = [{**good, "name": "n" * 1000} for _ in range(100)]
    body = json.dumps(long_names).encode()
    assert MAX_JOB_BODY_BYTES < len(body) < MAX_JOB_BATCH_BODY_BYTES
    assert client.post("/jobs/import", content=body).status_code == 202
    assert len(jobs.jobs(limit=200)) == 100
    too_big = b"[" + b" " * MAX_JOB_BATCH_BODY_BYTES + b"]"
    refused = client.post("/jobs/import", content=too_big)
    assert refused.status_code == 400 and f"larger than {MAX_JOB_BATCH_BODY_BYTES}" in refused.json()["error"]
    assert client.post("/jobs/import", json=[]).json() == {"jobs": []}
    # An idempotency key names one request: a batch refuses one rather than keying nothing.
    refused = client.post("/jobs/import", json=[good], headers={"Idempotency-Key": "batch-1"})
    assert refused.status_code == 400 and "Idempotency-Key" in refused.json()["error"]
    assert len(jobs.jobs(limit=200)) == 100  # nothing more was enqueued


def test_the_openapi_document_describes_the_batch_form():
    post = openapi_document()["paths"]["/jobs/import"]["post"]
    forms = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert forms[0] == {"$ref": "#/components/schemas/import_arguments"}
    assert forms[1]["type"] == "array" and forms[1]["maxItems"] == contract.MAX_BATCH_JOBS
    answers = post["responses"]["202"]["content"]["application/json"]["schema"]["oneOf"]
    assert {"$ref": "#/components/schemas/JobsAccepted"} in answers
