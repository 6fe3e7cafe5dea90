"""Structured logs: every line a worker writes carries the job and artifact it is about.

:class:`StructuredLogs` (in the broker's middleware) calls :func:`configure_logging` when
a worker process boots, after ``dramatiq`` set its log handlers up: the project's one
logging setup (:mod:`paglets_artifacts.logging_setup`, text or JSON lines by
``PAGLETS_ARTIFACTS_LOG_FORMAT``), with a :class:`JobContextFilter` on the root handlers.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from dramatiq import Middleware
from dramatiq.middleware import CurrentMessage

from paglets_artifacts import logging_setup
from paglets_artifacts.jobs.contract import ARTIFACT_FROM_JOB_ID_KINDS, KINDS_BY_ACTOR
from paglets_artifacts.logging_setup import CONTEXT_FIELDS
from paglets_artifacts.settings import Settings

from .middleware import current_job


def job_context() -> dict[str, Any]:
    """The job this thread is running, as log fields (empty outside a job).

    The job record middleware knows the job while it runs; around it (its own start and
    end lines, Dramatiq's retry lines) the current message still names it.
    """
    message = CurrentMessage.get_current_message()
    try:
        job = current_job()
        job_id, kind, attempt = job.id, job.kind, job.attempt
    except RuntimeError:
        known = KINDS_BY_ACTOR.get(message.actor_name) if message is not None else None
        if message is None or known is None:
            return {}
        job_id, kind, attempt = message.message_id, known.name, None
    fields: dict[str, Any] = {"job_id": job_id, "job_kind": kind}
    if attempt is not None:
        fields["attempt"] = attempt
    artifact_id = None
    if message is not None and message.message_id == job_id and isinstance(message.kwargs, dict):
        # A garbage message may carry anything: logging about it must not fail.
        named = message.kwargs.get("artifact_id")
        artifact_id = named if isinstance(named, str) else None
    if artifact_id is None and kind in ARTIFACT_FROM_JOB_ID_KINDS:  # one job, one artifact
        try:
            artifact_id = uuid.UUID(job_id).hex
        except ValueError:
            artifact_id = None
    if artifact_id:
        fields["artifact_id"] = artifact_id
    return fields


class JobContextFilter(logging.Filter):
    """Adds ``job_id``, ``job_kind``, ``attempt`` and ``artifact_id`` to each record.

    Values passed explicitly (``logger.info(..., extra={"artifact_id": ...})``) win.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = job_context()
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, context.get(name, ""))
        job_id, job_kind, artifact_id = (getattr(record, name) for name in ("job_id", "job_kind", "artifact_id"))
        parts = [f"job={job_id}"] if job_id else []
        if job_id and job_kind:
            parts.append(f"kind={job_kind}")
        if artifact_id:
            parts.append(f"artifact={artifact_id}")
        record.job_context = f"[{' '.join(parts)}] " if parts else ""
        return True


def configure_logging(settings: Settings, *, level: int = logging.INFO) -> None:
    """The project's logging setup, with the job context filter on every root handler."""
    logging_setup.configure_logging(settings, level=level, filters=(JobContextFilter,))


class StructuredLogs(Middleware):
    """Configures logging in each worker process as it boots.

    Parameters:
      settings(Settings): ``log_format`` chooses text or JSON lines.
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    def after_process_boot(self, broker: Any) -> None:
        configure_logging(self.settings)
