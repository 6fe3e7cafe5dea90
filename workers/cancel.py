"""Canceled jobs on the worker side: a running attempt notices its cancel and stops; its end
is recorded on the canceled record.

A cancel sets the record's state to ``canceled`` (``JobRecords.cancel``). A running attempt
reads that state at most every :data:`CHECK_EVERY_SECONDS`, at its progress reports (a
transfer: every chunk, so it stops within one) and before each item of a maintenance job.
A transfer raises ``JobCanceled`` there: the store's one rollback removes its ``.part`` and
releases its quota reservation. A maintenance job stops and returns what it did. Whichever of
the cancel and the worker's end of the job comes first decides the record (both are one
script); when the cancel came first, :func:`record_stop` undoes an import that committed
meanwhile and records the stop.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis

from paglets_artifacts.errors import JobCanceled
from paglets_artifacts.jobs.contract import KINDS

from .context import context

logger = logging.getLogger("paglets_artifacts.jobs")

#: How often, at most, a running attempt reads whether its job was canceled.
CHECK_EVERY_SECONDS = 0.25


class CancelWatch:
    """Whether the running job was canceled, read from its record now and then (never in the
    first :data:`CHECK_EVERY_SECONDS` of an attempt: a short job costs no Redis call).

    Parameters:
      job_id(str): the job.
    """

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.canceled = False
        self._next = time.monotonic() + CHECK_EVERY_SECONDS

    def requested(self) -> bool:
        """Whether the job was canceled, as of the last read (at most one read per interval)."""
        if self.canceled:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + CHECK_EVERY_SECONDS
        try:
            self.canceled = context().records.is_canceled(self.job_id)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # news, not state: go on
            logger.warning("job %s: could not read whether it was canceled: %s", self.job_id, exc)
        return self.canceled

    def check(self) -> None:
        """Raise ``JobCanceled`` when the job was canceled (what a transfer's progress calls)."""
        if self.requested():
            raise JobCanceled(f"job {self.job_id} was canceled; this attempt stopped")


def record_stop(job_id: str, kind_name: str, kwargs: Any, result: Any, *, succeeded: bool) -> None:
    """The attempt of a job that was canceled meanwhile has ended: an import that committed
    its artifact has it removed (its job id names it; nobody was given it), unless its source
    was moved into the store (the artifact is kept, and its ref is the result, so nothing is
    lost); the stop is recorded with what the attempt did."""
    kind = KINDS.get(kind_name)
    shown = result
    if succeeded and kind is not None and kind.artifact_is_job_id:
        moved = isinstance(kwargs, dict) and kwargs.get("delete_source") is True
        if not moved:
            artifact_id = uuid.UUID(job_id).hex
            freed = context().store.remove(artifact_id)
            logger.info("job %s was canceled as it ended: artifact %s removed (%d bytes)", job_id, artifact_id, freed)
            shown = None
    context().records.stopped(job_id, shown)
    logger.info("job %s %s stopped after its cancel", job_id, kind_name)
