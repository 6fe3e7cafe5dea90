"""Completion callbacks: a job may name a ``callback_url`` that receives its final record.

What hosts and workers share about them: the check of a callback URL at enqueue, the
headers, and the signature. The worker that sends them is ``workers/callbacks.py``.

A callback is a ``POST`` of the job's final record (``JobRecord.to_wire()``) as JSON with

- ``X-Paglets-Artifacts-Timestamp``: the Unix time (whole seconds) it was signed at;
- ``X-Paglets-Artifacts-Signature``: ``sha256=<hex>``, the HMAC-SHA256, keyed with
  ``PAGLETS_ARTIFACTS_CALLBACK_SECRET``, of ``<timestamp>.`` followed by the exact body
  bytes; a receiver recomputes it, compares with ``hmac.compare_digest`` and refuses a
  timestamp far from its clock (a replayed request);
- ``X-Paglets-Artifacts-Job``: the job id.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from ..errors import InvalidInput
from ..origins import host_allowed
from ..redaction import redact_url
from ..settings import Settings

SIGNATURE_HEADER = "X-Paglets-Artifacts-Signature"
TIMESTAMP_HEADER = "X-Paglets-Artifacts-Timestamp"
JOB_HEADER = "X-Paglets-Artifacts-Job"
#: Longest callback URL accepted.
MAX_CALLBACK_URL_LENGTH = 2048
#: How far a signed timestamp may be from a receiver's clock in :func:`verify` by default.
DEFAULT_TOLERANCE_SECONDS = 300.0


def check_callback_url(url: object, settings: Settings) -> str:
    """``url`` if a job may name it as its ``callback_url``, else ``InvalidInput`` saying why:
    an http(s) URL without credentials, under one of ``settings.allowed_hosts``, with
    ``settings.callback_secret`` configured to sign its callbacks."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("callback_url must be a non-empty http(s) URL")
    if len(url) > MAX_CALLBACK_URL_LENGTH or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidInput(f"callback_url must be a URL of at most {MAX_CALLBACK_URL_LENGTH} printable characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"callback_url must be an http(s) URL, got {redact_url(url)!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("callback_url must not carry credentials: callbacks are signed instead")
    if not host_allowed(url, settings.allowed_hosts):
        listed = ", ".join(settings.allowed_hosts) or "none (PAGLETS_ARTIFACTS_ALLOWED_HOSTS is empty)"
        raise InvalidInput(
            f"callback_url host {parts.hostname}:{parts.port or ''} ({redact_url(url)}) is not allowed; "
            f"allowed hosts: {listed}"
        )
    if not settings.callback_secret:
        raise InvalidInput(
            "callback_url needs PAGLETS_ARTIFACTS_CALLBACK_SECRET to sign its callbacks, and it is not set"
        )
    return url


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Paglets-Artifacts-Signature`` value of ``body`` signed at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: str, job_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers of a callback carrying ``body``."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        JOB_HEADER: job_id,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a received callback is genuine: its signature matches ``body`` and its
    timestamp is within ``tolerance_seconds`` of ``now``. ``headers`` may be any mapping
    whose lookups ignore case (an ``http.server`` request's, a framework's)."""
    timestamp = headers.get(TIMESTAMP_HEADER) or ""
    given = headers.get(SIGNATURE_HEADER) or ""
    if not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_seconds:
        return False
    return hmac.compare_digest(given.encode(), signature(secret, timestamp, body).encode())
