"""Reconciliation of job records with the broker's messages, after Redis lost writes.

Redis Sentinel replicates asynchronously: a failover can lose the last writes the old
master acknowledged, among them a job's Dramatiq message while its record (written
earlier) survived, so the record says ``queued``, ``running`` or ``retrying`` and no worker
will ever run it. :func:`reconcile_jobs` finds such jobs and ends the wait:

- A job is **lost** when its record has not ended, has not changed for the grace period
  (``PAGLETS_ARTIFACTS_RECONCILE_GRACE_SECONDS``: an enqueue writes the record just before
  the message), and no message of it is in its queue's messages hash or its delay queue's
  (read in one transaction: a message that moves from one to the other is seen once). A
  message fetched by a worker stays in that hash until it is acknowledged, so the ack
  sets of workers, dead or alive, hold nothing the hash does not.
- A job that has a message (queued, delayed, or fetched and in a worker's ack set) is left
  alone, with one exception: a record saying **running for longer than its kind's time
  limit** (and the grace period) **whose attempt started before the current master was
  first seen** (by a reconciliation: see below). Only a master change loses writes, and the
  time limit has ended that attempt, so both its end and its acknowledgement were lost: the
  message sits in the ack set of a worker done with it, and without this the job would wait
  until that worker stops. An attempt started on the current master is never touched while
  its message is there, however long it runs. Another message of the job is harmless: a
  worker that meets it after the job ended skips it.
- A lost job is **re-enqueued**, with its id, arguments and enqueue time, when its record
  holds its arguments in full (no URL argument was redacted) and it was re-enqueued fewer
  than :data:`MAX_REQUEUES` times: every kind's effect is exactly-once under redelivery
  (an import's artifact id is its job id, and a committed one is found, not made again).
- Otherwise it is **failed** with ``MessageLost`` and a reason; so is a job whose message
  lies in the dead-letter queue (its failure was decided, the record's end was lost).

Each run first compares the master's ``run_id`` with the one the previous run saw: when it
changed (a failover, or a restart that lost data) the run notes the time as the current
master's first sighting, and enqueues a ``reindex`` at its end, so the index (quota
figure, expiry order, owner sets) is rebuilt from the files on disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from dramatiq import Message
from dramatiq.common import dq_name, xq_name

from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.client import ArtifactJobs
from paglets_artifacts.jobs.records import FAILED, FINAL_STATES, RUNNING, JobRecord, JobRecords
from paglets_artifacts.redaction import MASK

logger = logging.getLogger("paglets_artifacts.jobs")

#: How many times one job is re-enqueued by reconciliation before it is failed instead.
MAX_REQUEUES = 3
#: The record field counting a job's re-enqueues by reconciliation.
REQUEUES_FIELD = "requeued"
#: Records read per Redis round trip.
_PAGE = 500


@dataclass
class ReconcileReport:
    """What one reconciliation did.

    Parameters:
      checked(int): unfinished records looked at.
      requeued(list[str]): ids of lost jobs enqueued again.
      failed(list[str]): ids of lost jobs failed with ``MessageLost``.
      reindex_job(str): the reindex enqueued because the master changed ("" when none).
    """

    checked: int = 0
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reindex_job: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "requeued": len(self.requeued),
            "failed": len(self.failed),
            "requeued_ids": self.requeued,
            "failed_ids": self.failed,
            "reindex_job": self.reindex_job,
        }


def _queues() -> list[str]:
    return sorted({kind.queue_name for kind in contract.KINDS.values()})


def message_ids(client: redis.Redis, namespace: str, queues: Iterable[str] | None = None) -> tuple[set[str], set[str]]:
    """(ids of the jobs with a live message, ids of those dead-lettered) on ``queues`` (default:
    every queue of the contract), with their delay queues, read in one transaction."""
    pipe = client.pipeline(transaction=True)
    names: list[bool] = []
    for queue in _queues() if queues is None else queues:
        for name, dead in ((queue, False), (dq_name(queue), False), (xq_name(queue), True)):
            pipe.hvals(f"{namespace}:{name}.msgs")
            names.append(dead)
    live: set[str] = set()
    dead_lettered: set[str] = set()
    for dead, payloads in zip(names, pipe.execute(), strict=True):
        for payload in payloads:
            try:
                message_id = json.loads(payload)["message_id"]
            except (ValueError, KeyError, TypeError):
                continue  # undecodable: the consumer dead-letters it
            (dead_lettered if dead else live).add(str(message_id))
    return live, dead_lettered


def _unfinished(records: JobRecords, before: float) -> Iterable[JobRecord]:
    """Every record enqueued before ``before`` that has not ended."""
    start = 0
    while True:
        ids = cast(
            "list[bytes]", records.client.zrangebyscore(records.index_key, "-inf", before, start=start, num=_PAGE)
        )
        if not ids:
            return
        pipe = records.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(records.key(_text(job_id)))
        for job_id, data in zip(ids, pipe.execute(), strict=True):
            if not data:
                continue
            try:
                record = JobRecord.from_hash(_text(job_id), data)
            except ValueError:
                continue
            if record.state not in FINAL_STATES:
                yield record
        start += _PAGE


def _last_change(record: JobRecord) -> float:
    return max(record.enqueued_at, record.started_at or 0.0)


def _overdue(jobs: ArtifactJobs, record: JobRecord, before: float, master_since: float) -> bool:
    """Whether a running attempt started on an earlier master and longer ago than its kind's
    time limit: it has ended (the limit stops it), so a record still saying running lost its
    end in the master change, and its message, if any, waits in the ack set of a worker that
    is done with it."""
    kind = contract.KINDS.get(record.kind)
    if record.state != RUNNING or record.started_at is None or kind is None:
        return False
    settings = jobs.settings
    limit = settings.transfer_time_limit_seconds if kind.transfer else settings.maintenance_time_limit_seconds
    return record.started_at < min(before - limit, master_since)


def _replayable(kind: contract.JobKind, arguments: dict[str, Any]) -> bool:
    """Whether the record's arguments are the message's: no URL argument was redacted."""
    for name, value in arguments.items():
        spec = kind.arguments.get(name)
        if spec is None:
            return False
        if spec.type.url and isinstance(value, str) and MASK in value:
            return False
    return True


def reconcile_jobs(jobs: ArtifactJobs, *, grace_seconds: float, now: float | None = None) -> ReconcileReport:
    """Find the jobs whose message is lost and re-enqueue or fail each (see the module)."""
    moment = time.time() if now is None else now
    records = jobs.records
    namespace = jobs.settings.namespace
    report = ReconcileReport()
    master_changed, master_since = _master(jobs, moment)
    live, dead_lettered = message_ids(jobs.client, namespace)
    for record in _unfinished(records, moment - grace_seconds):
        report.checked += 1
        if _last_change(record) > moment - grace_seconds:
            continue
        overdue = _overdue(jobs, record, moment - grace_seconds, master_since)
        if record.id in live and not overdue:
            continue
        # Read again: the job may have moved on since the listing (a retry's new message is
        # enqueued before the old one is acknowledged, so a fresh look at both settles it).
        current = records.get(record.id)
        if current is None or current.done or _last_change(current) > moment - grace_seconds:
            continue
        if not overdue and record.id in message_ids(jobs.client, namespace)[0]:
            continue
        kind = contract.KINDS.get(current.kind)
        requeues = int(jobs.client.hget(records.key(current.id), REQUEUES_FIELD) or 0)
        if current.id in dead_lettered:
            reason = "its message was dead-lettered but its record never ended (Redis lost the write)"
        elif kind is None:
            reason = f"its message was lost and its kind {current.kind!r} is unknown"
        elif not _replayable(kind, current.arguments):
            reason = "its message was lost and its record holds redacted arguments; enqueue it again"
        elif requeues >= MAX_REQUEUES:
            reason = f"its message was lost again after {requeues} re-enqueues"
        else:
            _requeue(jobs, kind, current)
            report.requeued.append(current.id)
            continue
        error = {"type": "MessageLost", "message": f"job {current.id} {current.kind}: {reason}"}
        if records.finished(current.id, state=FAILED, error=error):
            logger.warning("job %s %s failed by reconciliation: %s", current.id, current.kind, reason)
            report.failed.append(current.id)
    if master_changed:
        report.reindex_job = jobs.reindex().id
        logger.warning("Redis master changed: reindex job %s enqueued", report.reindex_job)
    return report


def _requeue(jobs: ArtifactJobs, kind: contract.JobKind, record: JobRecord) -> None:
    message: Message[Any] = Message(
        queue_name=kind.queue_name,
        actor_name=kind.actor_name,
        args=(),
        kwargs=dict(record.arguments),
        # Its callback goes with it, unless the record keeps the URL with a secret masked.
        options={"callback_url": record.callback_url}
        if record.callback_url and MASK not in record.callback_url
        else {},
        message_id=record.id,
        # The enqueue time is the job's: an owner deletion since then still refuses an import.
        message_timestamp=int(record.enqueued_at * 1000),
    )
    jobs.client.hincrby(jobs.records.key(record.id), REQUEUES_FIELD, 1)
    jobs.broker.enqueue(message)
    logger.warning("job %s %s re-enqueued by reconciliation: its message was lost", record.id, record.kind)


def _master(jobs: ArtifactJobs, moment: float) -> tuple[bool, float]:
    """(whether the master is not the one the previous run saw, when a run first saw it)."""
    run_id = str(jobs.client.info("server").get("run_id", ""))
    key = f"{jobs.settings.namespace}:reconcile:master"
    since_key = f"{key}:since"
    previous = jobs.client.getset(key, run_id)
    since = jobs.client.get(since_key)
    if previous is not None and _text(previous) == run_id and since is not None:
        return False, float(since)  # the same master: nothing was lost since the last run
    # A master this run sees first (a failover, a restart, or the keys themselves lost): the
    # index may lack what the old master had, and attempts started before now may have lost
    # their end.
    jobs.client.set(since_key, repr(moment))
    seen = _text(previous) if previous is not None else "none"
    logger.warning("Redis master run_id %s -> %s, first seen at %.3f", seen, run_id, moment)
    return True, moment


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
