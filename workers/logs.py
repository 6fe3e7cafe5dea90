"""Structured logs: every line a worker writes carries the job and artifact it is about.

:class:`StructuredLogs` (in the broker's middleware) calls :func:`configure_logging` when
a worker process boots, after ``dramatiq`` set its log handlers up; other processes (the
scheduler) call :func:`configure_logging` themselves. It puts a :class:`JobContextFilter` on the root handlers (the ones
``dramatiq workers`` set up, or a stderr handler when there are none) and formats lines as
text or as one JSON object per line, by ``PAGLETS_ARTIFACTS_LOG_FORMAT``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from typing import Any

from dramatiq import Middleware
from dramatiq.middleware import CurrentMessage

from paglets_artifacts.contract import ARTIFACT_FROM_JOB_ID_KINDS, KINDS_BY_ACTOR
from paglets_artifacts.redaction import redact_text
from paglets_artifacts.settings import Settings

from .middleware import current_job

#: The text line: Dramatiq's own layout, with the job context before the message.
TEXT_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(job_context)s%(message)s"

_CONTEXT_FIELDS = ("job_id", "job_kind", "attempt", "artifact_id")


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
        if known is None:
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
        for name in _CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, context.get(name, ""))
        parts = [f"job={record.job_id}"] if record.job_id else []
        if record.job_id and record.job_kind:
            parts.append(f"kind={record.job_kind}")
        if record.artifact_id:
            parts.append(f"artifact={record.artifact_id}")
        record.job_context = f"[{' '.join(parts)}] " if parts else ""
        return True


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no URL in it shows a secret (the one rule of
    :mod:`paglets_artifacts.redaction`): Dramatiq's lines quote a message's arguments and
    httpx logs every request's URL at INFO, pre-signed query strings included."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # a garbage message whose str() fails (kwargs not a mapping)
            # A filter that raises kills the logging thread: say what happened instead.
            message = f"{record.msg} [its arguments could not be formatted: {type(exc).__name__}]"
            record.msg, record.args = message, None
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, thread, job fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, "")
            if value not in ("", None):
                line[name] = value
        if record.exc_info or record.exc_text:
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings, *, level: int = logging.INFO) -> None:
    """Give every root handler the job context filter and the configured format.

    Idempotent; adds a stderr handler when the process has none (``--skip-logging``, or a
    process that was not started by ``dramatiq``).
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter = formatter_for(settings.log_format)
    for handler in root.handlers:
        if not any(isinstance(item, JobContextFilter) for item in handler.filters):
            handler.addFilter(JobContextFilter())
        if not any(isinstance(item, RedactingFilter) for item in handler.filters):
            handler.addFilter(RedactingFilter())
        handler.setFormatter(formatter)
    logging.getLogger("paglets_artifacts").setLevel(level)


class StructuredLogs(Middleware):
    """Configures logging in each worker process as it boots.

    Parameters:
      settings(Settings): ``log_format`` chooses text or JSON lines.
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    def after_process_boot(self, broker: Any) -> None:
        configure_logging(self.settings)
