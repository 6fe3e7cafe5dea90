"""Value types of the artifact store and their wire forms (see the host protocol)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInput

ARTIFACT_COPY = "copy"
ARTIFACT_MOVE = "move"
ARTIFACT_STATUS_REGISTERED = "registered"
ARTIFACT_STATUS_AVAILABLE = "available"
ARTIFACT_STATUS_FAILED = "failed"
DEFAULT_ARTIFACT_MAX_BYTES = 1024**3
DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES = 10 * 1024**3
DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS = 24 * 60 * 60
STREAM_CHUNK_BYTES = 1024 * 1024

_HEX = frozenset("0123456789abcdefABCDEF")


def validate_artifact_id(value: object) -> str:
    """Return ``value`` if it is a usable artifact id (hex only), else raise ``InvalidInput``.

    Nothing that is not hex ever reaches a path: ids name files in the store.
    """
    if not isinstance(value, str) or not value or len(value) > 128 or not _HEX.issuperset(value):
        raise InvalidInput(f"invalid artifact id {value!r}: expected hex digits")
    return value


def validate_sha256(value: object, *, field: str = "sha256") -> str:
    """Return the lowercase form of a 64-hex-digit SHA-256, else raise ``InvalidInput``."""
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise InvalidInput(f"invalid {field} {value!r}: expected 64 hex digits")
    return value.lower()


def validate_expires_at(value: object) -> float:
    """Return ``expires_at`` as a float Unix time (0 = never), else raise ``InvalidInput``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid expires_at {value!r}: expected a Unix time in seconds") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise InvalidInput(f"invalid expires_at {value!r}: expected a finite Unix time >= 0")
    return number


def _wire_string(payload: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = payload.get(key)
    if value is None:
        if required:
            raise InvalidInput(f"wire payload lacks {key!r}")
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"wire field {key!r} must be a string, got {type(value).__name__}")
    return value


def _int(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"wire field {key!r} must be an integer, got {value!r}")
    if value < 0 or int(value) != value:
        raise InvalidInput(f"wire field {key!r} must be a whole number >= 0, got {value!r}")
    return int(value)


def _float(payload: dict[str, Any], key: str) -> float:
    value = payload.get(key, 0.0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"wire field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _mapping(payload: object, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidInput(f"{what} wire form must be a JSON object, got {type(payload).__name__}")
    return payload


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """A stored artifact: where it lives, what it is, who owns it and when it expires."""

    host_url: str
    artifact_id: str
    name: str = ""
    size_bytes: int = 0
    sha256: str = ""
    compression: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0
    owner_agent_id: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "host_url": self.host_url,
            "artifact_id": self.artifact_id,
            "name": self.name,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "compression": self.compression,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "owner_agent_id": self.owner_agent_id,
        }

    @classmethod
    def from_wire(cls, payload: dict[str, Any]) -> ArtifactRef:
        """Parse the wire form; any missing id or mistyped field is an ``InvalidInput``."""
        payload = _mapping(payload, "ArtifactRef")
        sha = _wire_string(payload, "sha256")
        return cls(
            host_url=_wire_string(payload, "host_url"),
            artifact_id=validate_artifact_id(_wire_string(payload, "artifact_id", required=True)),
            name=_wire_string(payload, "name"),
            size_bytes=_int(payload, "size_bytes"),
            sha256=validate_sha256(sha) if sha else "",
            compression=_wire_string(payload, "compression"),
            created_at=_float(payload, "created_at"),
            expires_at=validate_expires_at(_float(payload, "expires_at")),
            owner_agent_id=_wire_string(payload, "owner_agent_id"),
        )


def normalize_file_mode(mode: object) -> str:
    value = str(mode or ARTIFACT_COPY).strip().casefold()
    if value not in {ARTIFACT_COPY, ARTIFACT_MOVE}:
        raise InvalidInput(f"registered file mode must be 'copy' or 'move', got {mode!r}")
    return value


_STATUSES = {ARTIFACT_STATUS_REGISTERED, ARTIFACT_STATUS_AVAILABLE, ARTIFACT_STATUS_FAILED}


@dataclass(slots=True)
class PagletFileRef:
    """A file a paglet registered to travel with it (copied or moved between hosts)."""

    name: str
    mode: str = ARTIFACT_COPY
    source_host_name: str = ""
    source_host_url: str = ""
    source_path: str = ""
    source_created_at: float = 0.0
    source_modified_at: float = 0.0
    size_bytes: int = 0
    sha256: str = ""
    current_host_name: str = ""
    current_host_url: str = ""
    current_path: str = ""
    status: str = ARTIFACT_STATUS_REGISTERED
    last_error: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "source_host_name": self.source_host_name,
            "source_host_url": self.source_host_url,
            "source_path": self.source_path,
            "source_created_at": self.source_created_at,
            "source_modified_at": self.source_modified_at,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "current_host_name": self.current_host_name,
            "current_host_url": self.current_host_url,
            "current_path": self.current_path,
            "status": self.status,
            "last_error": self.last_error,
        }

    @classmethod
    def from_wire(cls, payload: dict[str, Any]) -> PagletFileRef:
        """Parse the wire form; a missing name or mistyped field is an ``InvalidInput``."""
        payload = _mapping(payload, "PagletFileRef")
        name = _wire_string(payload, "name", required=True).strip()
        if not name:
            raise InvalidInput("registered file name cannot be empty")
        status = _wire_string(payload, "status") or ARTIFACT_STATUS_REGISTERED
        if status not in _STATUSES:
            raise InvalidInput(f"registered file status must be one of {sorted(_STATUSES)}, got {status!r}")
        sha = _wire_string(payload, "sha256")
        return cls(
            name=name,
            mode=normalize_file_mode(_wire_string(payload, "mode")),
            source_host_name=_wire_string(payload, "source_host_name"),
            source_host_url=_wire_string(payload, "source_host_url"),
            source_path=_wire_string(payload, "source_path"),
            source_created_at=_float(payload, "source_created_at"),
            source_modified_at=_float(payload, "source_modified_at"),
            size_bytes=_int(payload, "size_bytes"),
            sha256=validate_sha256(sha) if sha else "",
            current_host_name=_wire_string(payload, "current_host_name"),
            current_host_url=_wire_string(payload, "current_host_url"),
            current_path=_wire_string(payload, "current_path"),
            status=status,
            last_error=_wire_string(payload, "last_error"),
        )


@dataclass(frozen=True, slots=True)
class ArtifactWriteResult:
    """A committed artifact and the path of its blob."""

    ref: ArtifactRef
    path: Path
