"""One settings object, read from the environment, shared by hosts, workers and tools.

``REDIS_URL`` names the broker; every other variable is ``PAGLETS_ARTIFACTS_<NAME>``.
Each value is validated, and a bad one is a :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .origins import url_origin
from .redaction import MASK, redact_url
from .refs import (
    DEFAULT_ARTIFACT_MAX_BYTES,
    DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS,
    DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES,
)

PREFIX = "PAGLETS_ARTIFACTS_"

#: Default Redis URL when ``REDIS_URL`` is not set (Redis' own default address).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Default prefix of every Redis key this project and its Dramatiq broker write.
DEFAULT_NAMESPACE = "paglets-artifacts"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _meta(env: str, doc: str, parse: str = "str") -> dict[str, Any]:
    return {"env": env, "doc": doc, "parse": parse}


@dataclass(frozen=True)
class Settings:
    """Configuration of a host, a worker, the scheduler or the HTTP server."""

    redis_url: str = field(
        default=DEFAULT_REDIS_URL,
        metadata=_meta(
            "REDIS_URL",
            "Redis URL (redis://, rediss:// for TLS, unix://), or Sentinels: "
            "redis+sentinel://:password@host:port,host:port/service_name/db (rediss+sentinel:// for TLS; "
            "the password and db are optional)",
            "url",
        ),
    )
    redis_sentinel_password: str = field(
        default="",
        metadata=_meta(
            "REDIS_SENTINEL_PASSWORD",
            "password of the Sentinels themselves, when they require one (the URL's is the data nodes')",
            "secret",
        ),
    )
    redis_sentinel_tls: bool = field(
        default=False,
        metadata=_meta(
            "REDIS_SENTINEL_TLS", "speak TLS to the Sentinels (the URL's scheme says it of the data nodes)", "bool"
        ),
    )
    redis_timeout_seconds: float = field(
        default=5.0,
        metadata=_meta(
            "REDIS_TIMEOUT_SECONDS",
            "how long a host, the CLI or the HTTP host waits for Redis to connect or to answer a command",
            "seconds",
        ),
    )
    namespace: str = field(
        default=DEFAULT_NAMESPACE,
        metadata=_meta("NAMESPACE", "prefix of every Redis key (jobs, index, Dramatiq queues)", "name"),
    )
    store_root: Path = field(
        default=Path("artifact-store"),
        metadata=_meta("STORE_ROOT", "the store directory (blobs/, metadata/, tmp/)", "path"),
    )
    host_url: str = field(
        default="http://127.0.0.1:8470", metadata=_meta("HOST_URL", "the URL refs of this store carry", "url")
    )
    max_artifact_bytes: int = field(
        default=DEFAULT_ARTIFACT_MAX_BYTES,
        metadata=_meta("MAX_ARTIFACT_BYTES", "largest artifact in bytes (0: no cap)", "size"),
    )
    quota_bytes: int | None = field(
        default=DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES,
        metadata=_meta("QUOTA_BYTES", "bytes the store may hold ('none': no quota)", "optional_size"),
    )
    spool_ttl_seconds: float = field(
        default=float(DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS),
        metadata=_meta("SPOOL_TTL_SECONDS", "age at which a .part file is stale", "seconds"),
    )
    fsync: bool = field(
        default=True, metadata=_meta("FSYNC", "flush blobs and metadata before a ref is returned", "bool")
    )
    allowed_roots: tuple[Path, ...] = field(
        default=(),
        metadata=_meta(
            "ALLOWED_ROOTS",
            "directories (':'-separated) import sources and export targets must lie under; empty refuses every path; "
            "none may contain the store or lie inside it",
            "paths",
        ),
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_meta("ALLOWED_HOSTS", "remote host URLs (','-separated) pull and push jobs may contact", "urls"),
    )
    host_api_keys: tuple[tuple[str, str], ...] = field(
        default=(), metadata=_meta("HOST_API_KEYS", "per-remote-host API keys: 'URL=KEY,URL=KEY'", "keys")
    )
    api_key: str = field(
        default="", metadata=_meta("API_KEY", "Bearer key the HTTP API requires (empty: no auth)", "secret")
    )
    callback_secret: str = field(
        default="",
        metadata=_meta(
            "CALLBACK_SECRET",
            "key of the HMAC-SHA256 signature of completion callbacks (required to enqueue a job with a callback_url)",
            "secret",
        ),
    )
    callback_timeout_seconds: float = field(
        default=10.0,
        metadata=_meta("CALLBACK_TIMEOUT_SECONDS", "timeout of one completion callback request", "seconds"),
    )
    callback_max_attempts: int = field(
        default=8,
        metadata=_meta(
            "CALLBACK_MAX_ATTEMPTS",
            "attempts of a completion callback (backoff as job retries) before it fails",
            "count",
        ),
    )
    allow_insecure: bool = field(
        default=False,
        metadata=_meta(
            "ALLOW_INSECURE",
            "let serve and paglets-host listen on a non-loopback address without an API key (a warning at every start)",
            "bool",
        ),
    )
    job_retention_seconds: float = field(
        default=86400.0,
        metadata=_meta("JOB_RETENTION_SECONDS", "how long job records are kept after they end", "seconds"),
    )
    transfer_time_limit_seconds: float = field(
        default=3600.0,
        metadata=_meta("TRANSFER_TIME_LIMIT_SECONDS", "time limit of one import or export attempt", "seconds"),
    )
    maintenance_time_limit_seconds: float = field(
        default=900.0,
        metadata=_meta("MAINTENANCE_TIME_LIMIT_SECONDS", "time limit of a sweep, owner deletion or reindex", "seconds"),
    )
    max_retries: int = field(
        default=5, metadata=_meta("MAX_RETRIES", "retries of a job that failed with a transient error", "count")
    )
    min_backoff_ms: int = field(
        default=1000, metadata=_meta("MIN_BACKOFF_MS", "first retry delay; doubles on each retry", "count")
    )
    max_backoff_ms: int = field(default=300000, metadata=_meta("MAX_BACKOFF_MS", "longest retry delay", "count"))
    heartbeat_timeout_ms: int = field(
        default=60000,
        metadata=_meta(
            "HEARTBEAT_TIMEOUT_MS", "silence after which a worker is dead and its jobs are redelivered", "count"
        ),
    )
    maintenance_chance: int = field(
        default=1000,
        metadata=_meta(
            "MAINTENANCE_CHANCE", "per million broker commands: how often dead workers' jobs are looked for", "count"
        ),
    )
    progress_every_bytes: int = field(
        default=4 * 1024 * 1024, metadata=_meta("PROGRESS_EVERY_BYTES", "how often a transfer reports progress", "size")
    )
    upload_idle_seconds: float = field(
        default=30.0,
        metadata=_meta(
            "UPLOAD_IDLE_SECONDS",
            "an HTTP upload body bringing fewer bytes than the minimum rate asks within this many seconds of waiting "
            "is cut (408)",
            "seconds",
        ),
    )
    upload_min_bytes_per_second: int = field(
        default=1024,
        metadata=_meta(
            "UPLOAD_MIN_BYTES_PER_SECOND",
            "minimum rate of an HTTP upload body, averaged over each UPLOAD_IDLE_SECONDS of waiting (0: one byte per "
            "window)",
            "size",
        ),
    )
    uploads_per_client: int = field(
        default=8,
        metadata=_meta(
            "UPLOADS_PER_CLIENT", "HTTP uploads one client address may run at once (0: no per-client limit)", "count"
        ),
    )
    upload_slot_wait_seconds: float = field(
        default=10.0,
        metadata=_meta(
            "UPLOAD_SLOT_WAIT_SECONDS",
            "how long an HTTP upload waits for a free slot before a 503 with Retry-After",
            "seconds",
        ),
    )
    owner_tombstone_seconds: float = field(
        default=86400.0,
        metadata=_meta("OWNER_TOMBSTONE_SECONDS", "how long a deleted owner's imports are refused", "seconds"),
    )
    sweep_schedule: str = field(
        default="300",
        metadata=_meta("SWEEP_SCHEDULE", "sweep schedule: seconds between sweeps, or a cron expression", "schedule"),
    )
    reindex_schedule: str = field(
        default="3600",
        metadata=_meta("REINDEX_SCHEDULE", "reconciliation schedule: seconds, or a cron expression", "schedule"),
    )
    reconcile_schedule: str = field(
        default="300",
        metadata=_meta(
            "RECONCILE_SCHEDULE",
            "schedule of the job reconciliation (jobs whose message Redis lost): seconds, or a cron expression",
            "schedule",
        ),
    )
    reconcile_grace_seconds: float = field(
        default=60.0,
        metadata=_meta(
            "RECONCILE_GRACE_SECONDS",
            "how long a job's record must have gone unchanged without its message before reconciliation acts on it",
            "seconds",
        ),
    )
    metrics_port: int = field(
        default=0, metadata=_meta("METRICS_PORT", "Prometheus port of a worker or of the HTTP host (0: off)", "count")
    )
    log_format: str = field(default="text", metadata=_meta("LOG_FORMAT", "'text' or 'json' log lines", "log_format"))

    def __post_init__(self) -> None:
        # An allowed root around the store would let an export job overwrite any owner's
        # blob, and an import with delete_source take another artifact's metadata away.
        store = Path(self.store_root).expanduser().resolve(strict=False)
        for root in self.allowed_roots:
            resolved = Path(root).expanduser().resolve(strict=False)
            if resolved == store or store.is_relative_to(resolved):
                relation = "is" if resolved == store else "contains"
            elif resolved.is_relative_to(store):
                relation = "lies inside"
            else:
                continue
            shown = os.pathsep.join(str(item) for item in self.allowed_roots)
            raise SettingsError(
                f"{PREFIX}ALLOWED_ROOTS={shown!r} is invalid: its entry {root} {relation} the store "
                f"{PREFIX}STORE_ROOT={str(store)!r}; jobs could then overwrite or delete the store's own "
                f"files: keep the store outside every allowed root"
            )

    def __repr__(self) -> str:
        """Every setting, secrets masked as ``config`` shows them (logs)."""
        shown = self.redacted()
        return f"Settings({', '.join(f'{spec.name}={getattr(shown, spec.name)!r}' for spec in fields(self))})"

    def redacted(self) -> Settings:
        """These settings as they may be shown: API keys as ``***``, every URL redacted
        by the one rule of :mod:`paglets_artifacts.redaction` (userinfo, secret query
        parameters). Never used to connect anywhere."""
        changes: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            kind = spec.metadata["parse"]
            if kind == "secret" and value:
                changes[spec.name] = MASK
            elif kind == "keys":
                changes[spec.name] = tuple((redact_url(url), MASK) for url, _ in value)
            elif kind == "url":
                changes[spec.name] = redact_url(value)
            elif kind == "urls":
                changes[spec.name] = tuple(redact_url(url) for url in value)
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every variable (``REDIS_URL`` and ``PAGLETS_ARTIFACTS_*``); keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = spec.metadata["env"]
            var = name if name == "REDIS_URL" else PREFIX + name
            raw = env.get(var)
            if raw is None or (raw == "" and spec.metadata["parse"] != "paths"):
                continue
            values[spec.name] = _parse(var, spec.metadata["parse"], raw)
        values.update(overrides)
        return cls(**values)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables (to start worker processes with)."""
        env: dict[str, str] = {}
        for spec in fields(self):
            name = spec.metadata["env"]
            var = name if name == "REDIS_URL" else PREFIX + name
            value = getattr(self, spec.name)
            kind = spec.metadata["parse"]
            if kind == "paths":
                text = os.pathsep.join(str(item) for item in value)
            elif kind == "urls":
                text = ",".join(value)
            elif kind == "keys":
                text = ",".join(f"{url}={key}" for url, key in value)
            elif kind == "bool":
                text = "1" if value else "0"
            elif value is None:
                text = "none"
            else:
                text = str(value)
            env[var] = text
        return env

    def host_key(self, url: str) -> str:
        """The API key configured for a remote host URL (empty when none)."""
        origin = url_origin(url)
        if origin is None:
            return ""  # matches no host, as the allow-list refuses it
        for host, key in self.host_api_keys:
            if url_origin(host) == origin:
                return key
        return ""

    @classmethod
    def documented(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting: the README's table."""
        rows = []
        for spec in fields(cls):
            name = spec.metadata["env"]
            var = name if name == "REDIS_URL" else PREFIX + name
            default = spec.default
            rows.append((var, "" if default in ((), "") else str(default), spec.metadata["doc"]))
        return rows


def _parse(var: str, kind: str, raw: str) -> Any:
    text = raw.strip()
    try:
        if kind in ("str", "secret"):
            return text
        if kind == "name":
            if not text or any(ch.isspace() for ch in text):
                raise ValueError("expected a non-empty name without spaces")
            return text
        if kind == "url":
            parts = urlsplit(text)
            if not parts.scheme or not (parts.netloc or parts.path):
                raise ValueError("expected a URL such as redis://host:6379/0 or http://host:8470")
            return text.rstrip("/") if parts.scheme.startswith("http") else text
        if kind == "path":
            return Path(text).expanduser()
        if kind == "paths":
            return tuple(Path(item).expanduser().resolve() for item in text.split(os.pathsep) if item.strip())
        if kind == "urls":
            hosts = tuple(item.strip().rstrip("/") for item in text.split(",") if item.strip())
            for host in hosts:
                if urlsplit(host).scheme not in ("http", "https"):
                    raise ValueError(f"{redact_url(host)!r} is not an http(s) URL")
            return hosts
        if kind == "keys":
            pairs = []
            for item in text.split(","):
                if not item.strip():
                    continue
                url, sep, key = item.strip().partition("=")  # keys may contain '=' (base64 padding)
                if not sep or not url or not key:
                    raise ValueError("expected URL=KEY pairs separated by commas")
                pairs.append((url.rstrip("/"), key))
            return tuple(pairs)
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        if kind in ("size", "count"):
            value = int(text)
            if value < 0:
                raise ValueError("expected a whole number >= 0")
            return value
        if kind == "optional_size":
            if text.lower() in ("none", "unlimited"):
                return None
            value = int(text)
            if value < 0:
                raise ValueError("expected a whole number >= 0, or 'none'")
            return value
        if kind == "seconds":
            seconds = float(text)
            if not math.isfinite(seconds) or seconds <= 0:
                raise ValueError("expected a number of seconds > 0")
            return seconds
        if kind == "schedule":
            from .schedule import parse_schedule

            parse_schedule(text)
            return text
        if kind == "log_format":
            if text not in ("text", "json"):
                raise ValueError("expected 'text' or 'json'")
            return text
    except ValueError as exc:
        if kind in ("secret", "keys"):
            shown = MASK
        elif kind == "url" and "@" in raw:  # whatever precedes the '@' may be a password
            shown = repr(f"{MASK}@" + redact_url(raw.rpartition("@")[2]))
        elif kind in ("url", "urls"):
            shown = repr(redact_url(raw))
        else:
            shown = repr(raw)
        raise SettingsError(f"{var}={shown} is invalid: {exc}") from None
    raise AssertionError(f"unknown setting kind {kind}")
