"""Indexes over the store: quota usage, expiry order and owner sets.

An index is *derived state*: the files under the store root are the truth, and an index
can be rebuilt from them at any time. :class:`ScanIndex` keeps no state at all and answers
by scanning the directory (the reference store's semantics); the Redis-backed index in
:mod:`paglets_artifacts.redis_index` answers in time proportional to the work.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .errors import QuotaExceeded
from .refs import ArtifactRef

if TYPE_CHECKING:
    from .store import ArtifactStore


class StoreIndex(Protocol):
    """What the store asks of an index. Every method must be safe to call twice."""

    def reserve(
        self, artifact_id: str, size_bytes: int, quota_bytes: int | None, *, must_fit_bytes: int | None = None
    ) -> None:
        """Hold ``size_bytes`` of quota for ``artifact_id`` (replacing an earlier hold of that
        id) or raise ``QuotaExceeded``; with ``must_fit_bytes``, refuse unless that many fit."""

    def release(self, artifact_id: str) -> None:
        """Drop a reservation that did not become an artifact."""

    def committed(self, ref: ArtifactRef) -> None:
        """Record a committed artifact (its reservation, if any, becomes usage)."""

    def removed(self, artifact_id: str) -> None:
        """Forget a deleted artifact."""

    def used_bytes(self) -> int:
        """Bytes held by committed artifacts plus live reservations."""

    def owner_ids(self, owner_agent_id: str) -> Iterable[str]:
        """Ids of the artifacts owned by ``owner_agent_id``."""

    def expired_ids(self, now: float) -> Iterable[str]:
        """Ids of artifacts whose ``expires_at`` is > 0 and <= ``now``."""

    def all_ids(self) -> Iterable[str]:
        """Ids of every artifact, in id order."""


class ScanIndex:
    """The reference semantics: every question is answered by scanning the store.

    Reservations are held in this process only, so quota is exact between the threads of
    one process and best-effort between processes (use the Redis index for that).

    Parameters:
      store(ArtifactStore): the store to scan.
    """

    def __init__(self, store: ArtifactStore):
        self._store = store
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
                raise QuotaExceeded(
                    f"artifact storage quota exceeded: {projected} bytes would exceed {quota_bytes}"
                )
            self._reserved[artifact_id] = size_bytes

    def release(self, artifact_id: str) -> None:
        with self._lock:
            self._reserved.pop(artifact_id, None)

    def committed(self, ref: ArtifactRef) -> None:
        self.release(ref.artifact_id)

    def removed(self, artifact_id: str) -> None:
        self.release(artifact_id)

    def used_bytes(self) -> int:
        with self._lock:
            return self._blob_bytes() + sum(self._reserved.values())

    def owner_ids(self, owner_agent_id: str) -> list[str]:
        return [ref.artifact_id for ref in self._store.scan() if ref.owner_agent_id == owner_agent_id]

    def expired_ids(self, now: float) -> list[str]:
        return [ref.artifact_id for ref in self._store.scan() if 0 < ref.expires_at <= now]

    def all_ids(self) -> list[str]:
        return [ref.artifact_id for ref in self._store.scan()]

    def _blob_bytes(self) -> int:
        used = 0
        for path in self._store.blobs_dir.glob("*.bin"):
            with contextlib.suppress(OSError):
                used += path.stat().st_size
        return used
