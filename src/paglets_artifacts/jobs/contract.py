"""The job contract shared by hosts and workers: each job kind's facts, in one place.

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

from ..errors import InvalidInput
from ..redaction import MASK, redact_url
from ..refs import validate_artifact_id, validate_expires_at, validate_sha256

#: The most jobs one ``ArtifactJobs.enqueue_many`` call (or ``POST /jobs/{kind}`` with a
#: list) enqueues: the batch is one Redis transaction, held in memory on both sides.
MAX_BATCH_JOBS = 1000

#: Queue of imports and exports (long transfers).
TRANSFER_QUEUE = "artifact-transfers"
#: Queue of sweeps, owner deletions and reindexing, so they never wait behind a transfer.
MAINTENANCE_QUEUE = "artifact-maintenance"

Check = Callable[[str, Any], Any]


def _string_argument(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"argument {name!r} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInput(f"argument {name!r} contains a NUL byte")
    return value


def _non_empty(name: str, value: Any) -> str:
    text = _string_argument(name, value)
    if not text.strip():
        raise InvalidInput(f"argument {name!r} must not be empty")
    return text


def _abs_path(name: str, value: Any) -> str:
    text = _non_empty(name, value)
    if not text.startswith("/"):
        raise InvalidInput(f"argument {name!r} must be an absolute path, got {text!r}")
    return text


def _optional_text(name: str, value: Any) -> str | None:
    return None if value is None else _string_argument(name, value)


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
class ArgumentType:
    """What an argument's value may be: how it is checked, and how a JSON schema says it.

    Parameters:
      check(Check): ``check(name, value)`` returns the value to use or raises ``InvalidInput``
        naming the argument.
      schema(Mapping[str, Any]): the JSON schema of the value (``type`` always given).
      url(bool): whether the value is a URL (redacted in job records and logs).
    """

    check: Check
    schema: Mapping[str, Any]
    url: bool = False


TEXT = ArgumentType(_string_argument, {"type": "string"})
NON_EMPTY_TEXT = ArgumentType(_non_empty, {"type": "string", "minLength": 1})
ABSOLUTE_PATH = ArgumentType(_abs_path, {"type": "string", "pattern": "^/"})
OPTIONAL_TEXT = ArgumentType(_optional_text, {"type": ["string", "null"]})
OPTIONAL_SHA256 = ArgumentType(_optional_sha, {"type": ["string", "null"], "pattern": "^([0-9a-fA-F]{64})?$"})
BOOLEAN = ArgumentType(_bool, {"type": "boolean"})
EXPIRY = ArgumentType(_expires, {"type": "number", "minimum": 0})
OPTIONAL_EXPIRY = ArgumentType(_optional_expires, {"type": ["number", "null"], "minimum": 0})
OPTIONAL_TIME = ArgumentType(_optional_time, {"type": ["number", "null"]})
OPTIONAL_SIZE = ArgumentType(_optional_size, {"type": ["integer", "null"], "minimum": 0})
ARTIFACT_ID = ArgumentType(_artifact_id, {"type": "string", "pattern": "^[0-9a-fA-F]+$", "maxLength": 128})
HTTP_URL = ArgumentType(_http_url, {"type": "string", "format": "uri"}, url=True)


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a job kind.

    Parameters:
      type(ArgumentType): what its value may be.
      doc(str): what it means, in one line (the OpenAPI description, the CLI's option help).
      required(bool): whether a message must carry it.
      default(Any): its value when a message leaves it out.
    """

    type: ArgumentType
    doc: str
    required: bool = False
    default: Any = None

    def check(self, name: str, value: Any) -> Any:
        return self.type.check(name, value)

    def json_schema(self) -> dict[str, Any]:
        """Its JSON schema: the type's, its default and its doc."""
        schema = {**self.type.schema, "description": self.doc}
        if self.default is not None:
            schema["default"] = self.default
        return schema


#: A kind's direction: its bytes enter the store (an import) or leave it (an export).
INTO_STORE = "into-store"
OUT_OF_STORE = "out-of-store"


@dataclass(frozen=True)
class JobKind:
    """One kind of job, with all its facts: what a host names, which actor runs it, on
    which queue, with which arguments.

    Parameters:
      name(str): the kind as job records and the CLI show it (``import``, ``export``...).
      actor_name(str): the Dramatiq actor that runs it.
      queue_name(str): the queue its messages go to; that of transfers or of maintenance.
      arguments(Mapping[str, Argument]): the keyword arguments a message may carry.
      doc(str): what a job of this kind does, in one line.
      direction(str|None): ``INTO_STORE`` or ``OUT_OF_STORE`` for the kinds whose result's
        ``size_bytes`` enter or leave the store (metrics count them); None for the others.
      artifact_is_job_id(bool): whether the artifact it creates has its job id (as hex) as
        its id, so a redelivered job finds what its first attempt committed.
    """

    name: str
    actor_name: str
    queue_name: str
    arguments: Mapping[str, Argument]
    doc: str = ""
    direction: str | None = None
    artifact_is_job_id: bool = False

    @property
    def transfer(self) -> bool:
        """Whether it streams bytes (and reports byte progress): a kind of the transfer queue."""
        return self.queue_name == TRANSFER_QUEUE

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

    def masked(self, shown: Mapping[str, Any]) -> list[str]:
        """The URL arguments of ``shown`` (as a job record keeps them) whose secrets were masked:
        a job cannot be enqueued again from them."""
        return [
            name for name, value in shown.items() if self._is_url(name) and isinstance(value, str) and MASK in value
        ]

    def arguments_schema(self) -> dict[str, Any]:
        """The JSON schema of its arguments object (the OpenAPI document's)."""
        return {
            "type": "object",
            "description": self.doc,
            "additionalProperties": False,
            "properties": {name: argument.json_schema() for name, argument in self.arguments.items()},
            "required": [name for name, argument in self.arguments.items() if argument.required],
        }

    def _is_url(self, name: str) -> bool:
        spec = self.arguments.get(name)
        return spec is not None and spec.type.url


# The arguments several kinds share, documented once.
_OWNER = Argument(TEXT, "owner_agent_id of the artifact (the paglet that owns it).", default="")
_NAME = Argument(OPTIONAL_TEXT, "Artifact name (default: the file name).")
_COMPRESSION = Argument(TEXT, "Compression label stored with the artifact.", default="")
_EXPIRES_AT = Argument(EXPIRY, "Expiry as a Unix time (0: never).", default=0.0)
_SHA256 = Argument(OPTIONAL_SHA256, "Expected SHA-256 (hex); a mismatch fails the job.")
_SIZE = Argument(OPTIONAL_SIZE, "Expected size in bytes; a mismatch fails the job.")
_ARTIFACT = Argument(ARTIFACT_ID, "Artifact id.", required=True)
_HOST_URL = Argument(HTTP_URL, "Remote host URL (in PAGLETS_ARTIFACTS_ALLOWED_HOSTS).", required=True)

IMPORT = JobKind(
    "import",
    "paglets_artifacts_import",
    TRANSFER_QUEUE,
    {
        "path": Argument(
            ABSOLUTE_PATH, "File to import (must lie under PAGLETS_ARTIFACTS_ALLOWED_ROOTS).", required=True
        ),
        "owner_agent_id": _OWNER,
        "name": _NAME,
        "compression": _COMPRESSION,
        "expires_at": _EXPIRES_AT,
        "expected_sha256": _SHA256,
        "delete_source": Argument(BOOLEAN, "Remove the file once it is stored.", default=False),
    },
    doc="Import a file under the allowed roots into the store.",
    direction=INTO_STORE,
    artifact_is_job_id=True,
)
EXPORT = JobKind(
    "export",
    "paglets_artifacts_export",
    TRANSFER_QUEUE,
    {
        "artifact_id": _ARTIFACT,
        "target": Argument(ABSOLUTE_PATH, "Target file (under PAGLETS_ARTIFACTS_ALLOWED_ROOTS).", required=True),
        "expected_sha256": _SHA256,
        "move": Argument(BOOLEAN, "Delete the artifact once the target is verified.", default=False),
    },
    doc="Export an artifact to a file, verified (size and SHA-256) before it is renamed into place.",
    direction=OUT_OF_STORE,
)
IMPORT_URL = JobKind(
    "import_url",
    "paglets_artifacts_import_url",
    TRANSFER_QUEUE,
    {
        "url": Argument(
            HTTP_URL,
            "http(s) URL of the artifact (its host must be in PAGLETS_ARTIFACTS_ALLOWED_HOSTS).",
            required=True,
        ),
        "owner_agent_id": _OWNER,
        "name": Argument(OPTIONAL_TEXT, "Artifact name (default: the remote ref's, else the URL's last segment)."),
        "compression": _COMPRESSION,
        "expires_at": _EXPIRES_AT,
        "expected_sha256": _SHA256,
        "expected_size": _SIZE,
    },
    doc="Pull an artifact from a remote host (GET /artifacts/{id}) or any allowed URL into the store.",
    direction=INTO_STORE,
    artifact_is_job_id=True,
)
EXPORT_TO_HOST = JobKind(
    "export_to_host",
    "paglets_artifacts_export_to_host",
    TRANSFER_QUEUE,
    {
        "artifact_id": _ARTIFACT,
        "host_url": _HOST_URL,
        "owner_agent_id": Argument(OPTIONAL_TEXT, "owner_agent_id on the remote host (default: the artifact's)."),
        "name": Argument(OPTIONAL_TEXT, "Name on the remote host (default: the artifact's)."),
        "expires_at": Argument(OPTIONAL_EXPIRY, "Expiry on the remote host as a Unix time (default: the artifact's)."),
        "move": Argument(BOOLEAN, "Delete the artifact here once the remote host has it.", default=False),
    },
    doc="Push an artifact to a remote host (POST /artifacts).",
    direction=OUT_OF_STORE,
)
# The streaming work of a paglets host's registered files, as paglets' HostClient does it
# (see paglets_host.py): hash a file, upload a file to a host, download an artifact to a path.
CHECKSUM = JobKind(
    "checksum",
    "paglets_artifacts_checksum",
    TRANSFER_QUEUE,
    {"path": Argument(ABSOLUTE_PATH, "File to hash (under PAGLETS_ARTIFACTS_ALLOWED_ROOTS).", required=True)},
    doc="Hash a file; the result is its path, SHA-256 and size.",
)
UPLOAD = JobKind(
    "upload",
    "paglets_artifacts_upload",
    TRANSFER_QUEUE,
    {
        "path": Argument(ABSOLUTE_PATH, "File to upload (under PAGLETS_ARTIFACTS_ALLOWED_ROOTS).", required=True),
        "host_url": _HOST_URL,
        "owner_agent_id": _OWNER,
        "name": _NAME,
        "compression": _COMPRESSION,
        "expires_at": _EXPIRES_AT,
        "expected_sha256": Argument(OPTIONAL_SHA256, "SHA-256 of the file (hex), if known; else it is hashed first."),
    },
    doc="Upload a file to a host's POST /artifacts; the result is the remote ref.",
)
DOWNLOAD = JobKind(
    "download",
    "paglets_artifacts_download",
    TRANSFER_QUEUE,
    {
        "url": Argument(HTTP_URL, "A host's artifact URL (.../artifacts/{id}).", required=True),
        "target": Argument(ABSOLUTE_PATH, "Target file (under PAGLETS_ARTIFACTS_ALLOWED_ROOTS).", required=True),
        "expected_sha256": _SHA256,
        "expected_size": _SIZE,
        "move": Argument(BOOLEAN, "Delete the remote artifact once the target is verified.", default=False),
    },
    doc="Download an artifact's URL to a file, verified before it is renamed into place.",
)
SWEEP = JobKind(
    "sweep",
    "paglets_artifacts_sweep",
    MAINTENANCE_QUEUE,
    {"now": Argument(OPTIONAL_TIME, "Sweep as if at this Unix time (dates the expiry of artifacts only).")},
    doc="Remove stale .part files, expired artifacts and orphans.",
)
DELETE_OWNER = JobKind(
    "delete_owner",
    "paglets_artifacts_delete_owner",
    MAINTENANCE_QUEUE,
    {"owner_agent_id": Argument(NON_EMPTY_TEXT, "owner_agent_id whose artifacts go.", required=True)},
    doc="Delete every artifact of an owner (a disposed paglet).",
)
REINDEX = JobKind(
    "reindex",
    "paglets_artifacts_reindex",
    MAINTENANCE_QUEUE,
    {},
    doc="Rebuild the store's index from the files on disk.",
)
RECONCILE = JobKind(
    "reconcile",
    "paglets_artifacts_reconcile",
    MAINTENANCE_QUEUE,
    {},
    doc="Find jobs whose record says queued, running or retrying but whose message Redis lost; "
    "re-enqueue or fail them.",
)

#: Every job kind, by name.
KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        IMPORT,
        EXPORT,
        IMPORT_URL,
        EXPORT_TO_HOST,
        CHECKSUM,
        UPLOAD,
        DOWNLOAD,
        SWEEP,
        DELETE_OWNER,
        REINDEX,
        RECONCILE,
    )
}
#: Kinds that stream bytes (they report byte progress): those of the transfer queue.
TRANSFER_KINDS: frozenset[str] = frozenset(kind.name for kind in KINDS.values() if kind.transfer)
#: Kinds whose result's ``size_bytes`` enter the store, and those whose leave it.
INTO_STORE_KINDS: frozenset[str] = frozenset(kind.name for kind in KINDS.values() if kind.direction == INTO_STORE)
OUT_OF_STORE_KINDS: frozenset[str] = frozenset(kind.name for kind in KINDS.values() if kind.direction == OUT_OF_STORE)
#: Kinds whose artifact id is their job id (as hex).
ARTIFACT_FROM_JOB_ID_KINDS: frozenset[str] = frozenset(kind.name for kind in KINDS.values() if kind.artifact_is_job_id)


def periodic_state_key(namespace: str, kind: str) -> str:
    """The Redis hash of a periodic job kind: the scheduler's claimed tick and, in
    ``job_id``, the latest periodic job of that kind, whoever enqueued it (a scheduler, or
    a paglets host's own sweep): one is never enqueued while that one is queued or running."""
    return f"{namespace}:periodic:{kind}"


#: Every job kind, by actor name.
KINDS_BY_ACTOR: dict[str, JobKind] = {kind.actor_name: kind for kind in KINDS.values()}
