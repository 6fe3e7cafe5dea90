"""Dramatiq middleware: job records (state, attempts, progress, result, error)."""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Middleware
from dramatiq.middleware import MiddlewareError, SkipMessage

from paglets_artifacts.errors import Transient
from paglets_artifacts.jobs.contract import INTO_STORE, KINDS_BY_ACTOR, JobKind
from paglets_artifacts.jobs.records import FAILED, SUCCEEDED
from paglets_artifacts.redaction import redact_text

from .callbacks import queue_callback
from .cancel import CancelWatch, record_stop
from .context import context

logger = logging.getLogger("paglets_artifacts.jobs")

#: How long a job's final state waits for an unreachable Redis (a restart, a failover)
#: before it is given up: without it the record would say "running" for ever.
RECORD_WRITE_PATIENCE_SECONDS = 300.0
#: Longest pause between two attempts to write a final state.
RECORD_WRITE_MAX_DELAY_SECONDS = 5.0


def retry_while_unreachable(
    action: Callable[[], Any], what: str, *, patience: float = RECORD_WRITE_PATIENCE_SECONDS
) -> Any:
    """Run ``action`` (a job record update, a retry's enqueue), retrying while Redis cannot be
    reached; return what it returned (None if Redis stayed unreachable)."""
    deadline = time.monotonic() + patience
    delay = 0.1
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                logger.error("gave up recording %s after %.0f s: %s", what, patience, exc)
                return None
            logger.warning("cannot record %s yet (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, RECORD_WRITE_MAX_DELAY_SECONDS)


@dataclass
class RunningJob:
    """The job the current thread runs: its id, attempt and progress reporter."""

    id: str
    kind: str
    attempt: int
    enqueued_at: float
    progress: ProgressReporter
    result: Any = None
    #: Its owner's tombstone (when the owner was deleted) as read with the job's start: an
    #: import's first check that its owner still lives (None: no tombstone, or no owner).
    owner_tombstone: bytes | None = None

    @property
    def cancel(self) -> CancelWatch:
        """Whether the job was canceled (maintenance jobs ask before each item)."""
        return self.progress.cancel


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
        self.cancel = CancelWatch(job_id)

    def __call__(self, done: int, total: int) -> None:
        self.cancel.check()  # a canceled transfer stops here, within one chunk
        if self._last < 0 and done == total:
            return  # a transfer that ended with its first report: its final record tells the sizes
        if self._last < 0 or done - self._last >= self.every_bytes or done == total:
            self._last = done
            try:
                context().records.progress(self.job_id, done, total)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Progress is news, not state: a Redis blip must not abort the transfer.
                logger.warning("job %s: progress not recorded: %s", self.job_id, exc)


class RecordUnavailable(MiddlewareError, Transient):
    """A job's start could not be recorded. A ``MiddlewareError`` so that Dramatiq does not
    swallow it and run the actor anyway; ``Transient``, so that the job is retried."""


_CURRENT: contextvars.ContextVar[RunningJob | None] = contextvars.ContextVar("paglets_artifacts_job", default=None)


def current_job() -> RunningJob:
    job = _CURRENT.get()
    if job is None:
        raise RuntimeError("no artifact job is running in this thread")
    return job


def describe_error(exception: BaseException) -> dict[str, str]:
    """The error as job records carry it: its class name and message."""
    # Messages may quote a URL the job was given, pre-signed token and all.
    return {"type": type(exception).__name__, "message": redact_text(str(exception)) or type(exception).__name__}


def _tombstone_to_read(ctx: Any, kind: JobKind, message: Any) -> str | None:
    """The tombstone key of the owner an import (a kind whose bytes enter the store) writes
    for, read with the job's start; None for other kinds and imports of no owner."""
    if kind.direction != INTO_STORE or "owner_agent_id" not in kind.arguments:
        return None
    owner = message.kwargs.get("owner_agent_id") if isinstance(message.kwargs, dict) else None
    return ctx.tombstone_key(owner) if isinstance(owner, str) and owner else None


def _enqueued_at(message: Any) -> float:
    """When the message was enqueued (now, for a garbage timestamp: the job still gets its record)."""
    stamp = message.message_timestamp
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp):
        return stamp / 1000
    return time.time()


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
        enqueued_at = _enqueued_at(message)
        tombstone = _tombstone_to_read(ctx, kind, message)
        started: list[tuple[int, bytes | None]] = []
        # Dramatiq logs and swallows an error raised here and runs the actor anyway, so an
        # unreachable Redis is waited for: the job must not run without its record.
        retry_while_unreachable(
            lambda: started.append(
                ctx.records.start(
                    message.message_id,
                    worker=ctx.worker_name,
                    kind=kind.name,
                    enqueued_at=enqueued_at,
                    read=tombstone,
                )
            ),
            f"the start of job {message.message_id}",
        )
        if not started:  # Redis stayed unreachable: retry the job later rather than run it unrecorded
            raise RecordUnavailable(f"job {message.message_id}: its record could not be written")
        attempt, tombstone_value = started[0]
        if attempt < 0:
            # The job already ended (a redelivery after its result was recorded, a job canceled
            # while queued): its effect happened once, and it must not happen twice. Its
            # callback, if it has one and none was queued yet, goes now.
            logger.info("job %s already ended; skipping redelivered message", message.message_id)
            self._callback(message.message_id, message)
            raise SkipMessage()
        start_by = message.options.get("start_by")
        if attempt == 1 and start_by is not None and time.time() > float(start_by):
            # Its enqueuer stopped waiting for a start (a paglets host's dispatch failed): a
            # first attempt this late must have no effect. A redelivery or retry of a job that
            # did start runs as usual.
            error = {"type": "JobExpired", "message": "not started before its start deadline; it never ran"}
            retry_while_unreachable(
                lambda: ctx.records.finished(message.message_id, state=FAILED, error=error),
                f"the expiry of job {message.message_id}",
            )
            logger.info("job %s %s expired before it started", message.message_id, kind.name)
            self._callback(message.message_id, message)
            raise SkipMessage()
        reporter = ProgressReporter(message.message_id, ctx.settings.progress_every_bytes)
        _CURRENT.set(
            RunningJob(
                message.message_id,
                kind.name,
                attempt,
                enqueued_at,
                reporter,
                owner_tombstone=tombstone_value,
            )
        )
        logger.info("job %s %s started (attempt %d)", message.message_id, kind.name, attempt)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        job = _CURRENT.get()
        _CURRENT.set(None)
        if job is None or job.id != message.message_id:
            return
        records = context().records
        what = f"the end of job {job.id}"
        if exception is None:
            ended = retry_while_unreachable(lambda: records.finished(job.id, state=SUCCEEDED, result=job.result), what)
            if ended:
                logger.info("job %s %s succeeded", job.id, job.kind)
        elif message.failed:
            error = describe_error(exception)
            ended = retry_while_unreachable(lambda: records.finished(job.id, state=FAILED, error=error), what)
            if ended:
                logger.warning("job %s %s failed: %s: %s", job.id, job.kind, type(exception).__name__, exception)
        else:
            error = describe_error(exception)
            ended = retry_while_unreachable(lambda: records.retrying(job.id, error), f"the retry of job {job.id}")
            logger.warning("job %s %s will be retried: %s: %s", job.id, job.kind, type(exception).__name__, exception)
            if ended:
                return
        if ended is False and (job.cancel.canceled or records.is_canceled(job.id)):
            # The cancel came first: the record stays canceled; what this attempt did is told.
            retry_while_unreachable(
                lambda: record_stop(job.id, job.kind, message.kwargs, job.result, succeeded=exception is None),
                f"the stop of job {job.id}",
            )
        self._callback(job.id, message)

    @staticmethod
    def _callback(job_id: str, message: Any) -> None:
        """Queue the completion callback of a job that ended, when its message names one
        (no Redis call otherwise); an unreachable Redis is waited for, as for the record."""
        if message.options.get("callback_url"):
            retry_while_unreachable(lambda: queue_callback(job_id, message), f"the callback of job {job_id}")

    def after_skip_message(self, broker: Any, message: Any) -> None:
        _CURRENT.set(None)
