"""Dramatiq middleware: job records (state, attempts, progress, result, error)."""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Any

from dramatiq import Middleware
from dramatiq.middleware import SkipMessage

from paglets_artifacts.contract import KINDS_BY_ACTOR

from .context import context

logger = logging.getLogger("paglets_artifacts.jobs")


@dataclass
class RunningJob:
    """The job the current thread runs: its id, attempt and progress reporter."""

    id: str
    kind: str
    attempt: int
    enqueued_at: float
    progress: ProgressReporter
    result: Any = None


class ProgressReporter:
    """Writes a transfer's progress to its job record at most every ``every_bytes``.

    Parameters:
      job_id(str): the job.
      every_bytes(int): how many bytes between two reports (the last one always goes).
    """

    def __init__(self, job_id: str, every_bytes: int):
        self.job_id = job_id
        self.every_bytes = max(1, every_bytes)
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if self._last < 0 or done - self._last >= self.every_bytes or done == total:
            self._last = done
            context().records.progress(self.job_id, done, total)


_CURRENT: contextvars.ContextVar[RunningJob | None] = contextvars.ContextVar("paglets_artifacts_job", default=None)


def current_job() -> RunningJob:
    job = _CURRENT.get()
    if job is None:
        raise RuntimeError("no artifact job is running in this thread")
    return job


def describe_error(exception: BaseException) -> dict[str, str]:
    """The error as job records carry it: its class name and message."""
    return {"type": type(exception).__name__, "message": str(exception) or type(exception).__name__}


class JobRecordsMiddleware(Middleware):
    """Keeps each job's record in step with its message.

    It must sit *before* ``Retries`` in the middleware list: ``after_*`` hooks run in
    reverse order, so by the time this one runs, ``Retries`` has decided whether the
    message is retried (``message.failed`` false) or failed for good.
    """

    def before_process_message(self, broker: Any, message: Any) -> None:
        kind = KINDS_BY_ACTOR.get(message.actor_name)
        if kind is None:
            return
        ctx = context()
        enqueued_at = message.message_timestamp / 1000
        attempt = ctx.records.started(
            message.message_id, worker=ctx.worker_name, kind=kind.name, enqueued_at=enqueued_at
        )
        if attempt < 0:
            # The job already ended (a redelivery after its result was recorded): its
            # effect happened once, and it must not happen twice.
            logger.info("job %s already ended; skipping redelivered message", message.message_id)
            raise SkipMessage()
        reporter = ProgressReporter(message.message_id, ctx.settings.progress_every_bytes)
        _CURRENT.set(RunningJob(message.message_id, kind.name, attempt, enqueued_at, reporter))
        logger.info("job %s %s started (attempt %d)", message.message_id, kind.name, attempt)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        job = _CURRENT.get()
        _CURRENT.set(None)
        if job is None or job.id != message.message_id:
            return
        records = context().records
        if exception is None:
            records.finished(job.id, state="succeeded", result=job.result)
            logger.info("job %s %s succeeded", job.id, job.kind)
        elif message.failed:
            records.finished(job.id, state="failed", error=describe_error(exception))
            logger.warning("job %s %s failed: %s: %s", job.id, job.kind, type(exception).__name__, exception)
        else:
            records.retrying(job.id, describe_error(exception))
            logger.warning("job %s %s will be retried: %s: %s", job.id, job.kind, type(exception).__name__, exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        _CURRENT.set(None)
