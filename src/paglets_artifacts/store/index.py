"""Indexes over the store: quota usage, expiry order and owner sets.

An index is *derived state*: the files under the store root are the truth, and an index
can be rebuilt from them at any time. :class:`ScanIndex` keeps no state at all and answers
by scanning the directory (the reference store's semantics); the Redis-backed index in
:mod:`paglets_artifacts.redis_index` answers in time proportional to the work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import redis

from ..errors import QuotaExceeded, TransferError, Transient
from ..refs import ArtifactRef
from .layout import StoreLayout

#: Reads one artifact's ref from its metadata file (``StoreLayout.read_ref``).
RefReader = Callable[[str], ArtifactRef]


class IndexUnavailable(Transient, redis.exceptions.TimeoutError):
    """The index is missing and another process did not finish building it in time, or
    this process lost the build lock while it worked, or Redis cannot be reached.
    Transient: a job that meets it is retried with backoff."""


class StoreIndex(Protocol):
    """What the store asks of an index. Every method must be safe to call twice.

    An index is given the store's layout (its listings) and a ref reader, never the store:
    it describes the files and removes none of them."""

    @property
    def scans(self) -> bool:
        """Whether every answer is a full scan of the store directory (then the store's sweep
        does the full-scan work too, and the index knows only whole artifacts)."""

    def reserve(
        self, artifact_id: str, size_bytes: int, quota_bytes: int | None, *, must_fit_bytes: int | None = None
    ) -> None:
        """Hold ``size_bytes`` of quota for ``artifact_id`` (replacing an earlier hold of that
        id) or raise ``QuotaExceeded``; with ``must_fit_bytes``, refuse unless that many fit."""

    def release(self, artifact_id: str) -> None:
        """Drop a reservation that did not become an artifact."""

    def add(self, ref: ArtifactRef) -> None:
        """Record a committed artifact (its reservation, if any, becomes usage)."""

    def removed(self, artifact_id: str) -> None:
        """Forget a deleted artifact."""

    def used_bytes(self) -> int:
        """Bytes held by committed artifacts plus live reservations."""

    def owner_ids(self, owner_agent_id: str) -> Iterable[str]:
        """Ids of the artifacts owned by ``owner_agent_id``; :class:`IndexUnavailable` when
        the index cannot answer (a caller that only reads can scan the directory instead)."""

    def expired_ids(self, now: float) -> Iterable[str]:
        """Ids of artifacts whose ``expires_at`` is > 0 and <= ``now``."""

    def all_ids(self) -> Iterable[str]:
        """Ids of every artifact, in id order."""

    def rebuild(self) -> dict[str, Any]:
        """Bring the index in line with every file (a full scan); return its figures."""

    def reconcile(self) -> dict[str, Any]:
        """Pick up what changed on disk behind the index's back; return its figures."""


class ScanIndex:
    """The reference semantics: every question is answered by scanning the store.

    Reservations are held in this process only, so quota is exact between the threads of
    one process and best-effort between processes (use the Redis index for that).

    Parameters:
      layout(StoreLayout): the store directory to scan.
      read_ref(RefReader): reads one artifact's ref.
    """

    scans = True

    def __init__(self, layout: StoreLayout, read_ref: RefReader):
        self._layout = layout
        self._read_ref = read_ref
        self._lock = threading.Lock()
        self._reserved: dict[str, int] = {}

    def reserve(
        self, artifact_id: str, size_bytes: int, quota_bytes: int | None, *, must_fit_bytes: int | None = None
    ) -> None:
        with self._lock:
            if quota_bytes is None:
                self._reserved[artifact_id] = size_bytes
                return
            need = size_bytes if must_fit_bytes is None else max(size_bytes, must_fit_bytes)
            pending = sum(size for key, size in self._reserved.items() if key != artifact_id)
            projected = self._blob_bytes() + pending + need
            if need > self._reserved.get(artifact_id, 0) and projected > quota_bytes:
                raise QuotaExceeded(f"artifact storage quota exceeded: {projected} bytes would exceed {quota_bytes}")
            self._reserved[artifact_id] = size_bytes

    def release(self, artifact_id: str) -> None:
        with self._lock:
            self._reserved.pop(artifact_id, None)

    def add(self, ref: ArtifactRef) -> None:
        self.release(ref.artifact_id)

    def removed(self, artifact_id: str) -> None:
        self.release(artifact_id)

    def used_bytes(self) -> int:
        with self._lock:
            return self._blob_bytes() + sum(self._reserved.values())

    def owner_ids(self, owner_agent_id: str) -> list[str]:
        return [ref.artifact_id for ref in self._refs() if ref.owner_agent_id == owner_agent_id]

    def expired_ids(self, now: float) -> list[str]:
        return [ref.artifact_id for ref in self._refs() if 0 < ref.expires_at <= now]

    def all_ids(self) -> list[str]:
        return [ref.artifact_id for ref in self._refs()]

    def rebuild(self) -> dict[str, Any]:
        """Nothing to rebuild: the figures of a scan."""
        refs = list(self._refs())
        return {"artifacts": len(refs), "bytes": sum(ref.size_bytes for ref in refs)}

    def reconcile(self) -> dict[str, Any]:
        return self.rebuild()

    def _refs(self) -> Iterator[ArtifactRef]:
        """Every readable artifact (unreadable metadata is skipped, as a listing skips it)."""
        self._layout.ensure()
        for name in self._layout.metadata_names():
            try:
                yield self._read_ref(name)
            except TransferError:
                continue

    def _blob_bytes(self) -> int:
        return self._layout.blob_bytes()
