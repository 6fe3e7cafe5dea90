"""The job contract shared by hosts and workers: queues, actors and argument schemas.

A host enqueues by this contract alone (it never imports ``workers``): a message names
an actor and carries keyword arguments only, checked here on both sides, so a malformed
message fails at once with an error that names the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidInput
from .redaction import redact_url
from .refs import validate_artifact_id, validate_expires_at, validate_sha256

#: Queue of imports and exports (long transfers).
TRANSFER_QUEUE = "artifact-transfers"
#: Queue of sweeps, owner deletions and reindexing, so they never wait behind a transfer.
MAINTENANCE_QUEUE = "artifact-maintenance"

Check = Callable[[str, Any], Any]


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"argument {name!r} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInput(f"argument {name!r} contains a NUL byte")
    return value


def _non_empty(name: str, value: Any) -> str:
    text = _text(name, value)
    if not text.strip():
        raise InvalidInput(f"argument {name!r} must not be empty")
    return text


def _abs_path(name: str, value: Any) -> str:
    text = _non_empty(name, value)
    if not text.startswith("/"):
        raise InvalidInput(f"argument {name!r} must be an absolute path, got {text!r}")
    return text


def _optional_text(name: str, value: Any) -> str | None:
    return None if value is None else _text(name, value)


def _optional_sha(name: str, value: Any) -> str | None:
    return validate_sha256(value, field=name) if value else None


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"argument {name!r} must be true or false, got {value!r}")
    return value


def _expires(name: str, value: Any) -> float:
    return validate_expires_at(value)


def _optional_expires(name: str, value: Any) -> float | None:
    return None if value is None else validate_expires_at(value)


def _optional_time(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"argument {name!r} must be a finite Unix time, got {value!r}")
    return float(value)


def _optional_size(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"argument {name!r} must be a whole number >= 0, got {value!r}")
    return value


def _artifact_id(name: str, value: Any) -> str:
    return validate_artifact_id(value)


def _http_url(name: str, value: Any) -> str:
    text = _non_empty(name, value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"argument {name!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"argument {name!r} must be an http(s) URL, got {text!r}")
    if parts.username is not None or parts.password is not None:
        # Job arguments are stored in job records and show in logs: no secret belongs there.
        raise InvalidInput(
            f"argument {name!r} must not carry credentials; give hosts their keys in PAGLETS_ARTIFACTS_HOST_API_KEYS"
        )
    return text.rstrip("/") if name == "host_url" else text


@dataclass(frozen=True)
class Argument:
    check: Check
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class JobKind:
    """One kind of job: what a host names, which actor runs it, on which queue.

    Parameters:
      name(str): the kind as job records and the CLI show it (``import``, ``export``...).
      actor_name(str): the Dramatiq actor that runs it.
      queue_name(str): the queue its messages go to.
      arguments(Mapping[str, Argument]): the keyword arguments a message may carry.
    """

    name: str
    actor_name: str
    queue_name: str
    arguments: Mapping[str, Argument]

    def validate(self, kwargs: Any) -> dict[str, Any]:
        """Check a message's keyword arguments; return them with defaults filled in."""
        if not isinstance(kwargs, Mapping):
            raise InvalidInput(f"{self.name} job arguments must be a mapping, got {type(kwargs).__name__}")
        unknown = sorted(set(kwargs) - set(self.arguments))
        if unknown:
            raise InvalidInput(f"{self.name} job got unknown arguments: {', '.join(map(str, unknown))}")
        values: dict[str, Any] = {}
        for name, spec in self.arguments.items():
            if name not in kwargs:
                if spec.required:
                    raise InvalidInput(f"{self.name} job is missing the argument {name!r}")
                values[name] = spec.default
                continue
            values[name] = spec.check(name, kwargs[name])
        return values

    def shown(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` as job records and logs may keep them: URL arguments redacted (a
        pre-signed token in a query string travels in the message to the worker only)."""
        return {
            name: redact_url(value) if self._is_url(name) and isinstance(value, str) else value
            for name, value in values.items()
        }

    def _is_url(self, name: str) -> bool:
        spec = self.arguments.get(name)
        return spec is not None and spec.check is _http_url


IMPORT = JobKind(
    "import",
    "paglets_artifacts_import",
    TRANSFER_QUEUE,
    {
        "path": Argument(_abs_path, required=True),
        "owner_agent_id": Argument(_text, default=""),
        "name": Argument(_optional_text),
        "compression": Argument(_text, default=""),
        "expires_at": Argument(_expires, default=0.0),
        "expected_sha256": Argument(_optional_sha),
        "delete_source": Argument(_bool, default=False),
    },
)
EXPORT = JobKind(
    "export",
    "paglets_artifacts_export",
    TRANSFER_QUEUE,
    {
        "artifact_id": Argument(_artifact_id, required=True),
        "target": Argument(_abs_path, required=True),
        "expected_sha256": Argument(_optional_sha),
        "move": Argument(_bool, default=False),
    },
)
IMPORT_URL = JobKind(
    "import_url",
    "paglets_artifacts_import_url",
    TRANSFER_QUEUE,
    {
        "url": Argument(_http_url, required=True),
        "owner_agent_id": Argument(_text, default=""),
        "name": Argument(_optional_text),
        "compression": Argument(_text, default=""),
        "expires_at": Argument(_expires, default=0.0),
        "expected_sha256": Argument(_optional_sha),
        "expected_size": Argument(_optional_size),
    },
)
EXPORT_TO_HOST = JobKind(
    "export_to_host",
    "paglets_artifacts_export_to_host",
    TRANSFER_QUEUE,
    {
        "artifact_id": Argument(_artifact_id, required=True),
        "host_url": Argument(_http_url, required=True),
        "owner_agent_id": Argument(_optional_text),
        "name": Argument(_optional_text),
        "expires_at": Argument(_optional_expires),
        "move": Argument(_bool, default=False),
    },
)
# The streaming work of a paglets host's registered files, as paglets' HostClient does it
# (see paglets_host.py): hash a file, upload a file to a host, download an artifact to a path.
CHECKSUM = JobKind("checksum", "paglets_artifacts_checksum", TRANSFER_QUEUE, {"path": Argument(_abs_path, required=True)})
UPLOAD = JobKind(
    "upload",
    "paglets_artifacts_upload",
    TRANSFER_QUEUE,
    {
        "path": Argument(_abs_path, required=True),
        "host_url": Argument(_http_url, required=True),
        "owner_agent_id": Argument(_text, default=""),
        "name": Argument(_optional_text),
        "compression": Argument(_text, default=""),
        "expires_at": Argument(_expires, default=0.0),
        "expected_sha256": Argument(_optional_sha),
    },
)
DOWNLOAD = JobKind(
    "download",
    "paglets_artifacts_download",
    TRANSFER_QUEUE,
    {
        "url": Argument(_http_url, required=True),
        "target": Argument(_abs_path, required=True),
        "expected_sha256": Argument(_optional_sha),
        "expected_size": Argument(_optional_size),
        "move": Argument(_bool, default=False),
    },
)
SWEEP = JobKind("sweep", "paglets_artifacts_sweep", MAINTENANCE_QUEUE, {"now": Argument(_optional_time)})
DELETE_OWNER = JobKind(
    "delete_owner",
    "paglets_artifacts_delete_owner",
    MAINTENANCE_QUEUE,
    {"owner_agent_id": Argument(_non_empty, required=True)},
)
REINDEX = JobKind("reindex", "paglets_artifacts_reindex", MAINTENANCE_QUEUE, {})

#: Every job kind, by name.
KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (IMPORT, EXPORT, IMPORT_URL, EXPORT_TO_HOST, CHECKSUM, UPLOAD, DOWNLOAD, SWEEP, DELETE_OWNER, REINDEX)
}
#: Kinds that stream bytes (they report byte progress): those of the transfer queue.
TRANSFER_KINDS: frozenset[str] = frozenset(kind.name for kind in KINDS.values() if kind.queue_name == TRANSFER_QUEUE)


def periodic_state_key(namespace: str, kind: str) -> str:
    """The Redis hash of a periodic job kind: the scheduler's claimed tick and, in
    ``job_id``, the latest periodic job of that kind, whoever enqueued it (a scheduler, or
    a paglets host's own sweep): one is never enqueued while that one is queued or running."""
    return f"{namespace}:periodic:{kind}"


#: Every job kind, by actor name.
KINDS_BY_ACTOR: dict[str, JobKind] = {kind.actor_name: kind for kind in KINDS.values()}
