"""The log lines of every process of the project: workers, the scheduler, the paglets host.

:func:`configure_logging` gives the root handlers (or a stderr handler when there are
none) one format, by ``PAGLETS_ARTIFACTS_LOG_FORMAT``: text in Dramatiq's own layout, or
one JSON object per line. No line shows a secret of a URL (:class:`RedactingFilter`). A
worker adds the job each line is about (``workers.logs``), through ``filters``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from .redaction import redact_text
from .settings import Settings

#: The text line: Dramatiq's own layout, with the job context (if any) before the message.
TEXT_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(job_context)s%(message)s"

#: The job fields a worker's filter puts on its records; the JSON line carries those it has.
CONTEXT_FIELDS = ("job_id", "job_kind", "attempt", "artifact_id")


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`; a line about no job has an empty job context."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "job_context"):  # a process without the workers' job filter
            record.job_context = ""
        return super().format(record)


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
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "")
            if value not in ("", None):
                line[name] = value
        if record.exc_info or record.exc_text:
            line["exception"] = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        return json.dumps(line, default=str)


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


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(
    settings: Settings,
    *,
    level: int = logging.INFO,
    filters: Sequence[type[logging.Filter]] = (),
    keep_existing: bool = False,
) -> None:
    """Give every root handler ``filters`` (each one once), the redacting filter and the
    configured format, and ``paglets_artifacts`` loggers ``level``.

    Idempotent; adds a stderr handler when the process has none (a process that was not
    started by ``dramatiq``, or ``--skip-logging``). With ``keep_existing``, handlers a
    program embedding ours set up (or pytest's) are left as they are.
    """
    root = logging.getLogger()
    logging.getLogger("paglets_artifacts").setLevel(level)
    if root.handlers and keep_existing:
        return
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter = formatter_for(settings.log_format)
    for handler in root.handlers:
        for kind in (*filters, RedactingFilter):
            if not any(isinstance(item, kind) for item in handler.filters):
                handler.addFilter(kind())
        handler.setFormatter(formatter)
