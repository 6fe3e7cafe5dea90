"""The host-owned artifact store: blobs, metadata and temporary files on disk.

Same names, signatures and on-disk layout as the paglets reference store, with these
guarantees on top: an artifact is visible only when blob and metadata are complete and
durable; temporary files are created exclusively and never follow a symlink; every
input is validated with an error that names the problem; a short body is an error.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from ..errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    ChecksumMismatch,
    InvalidInput,
    SizeMismatch,
    SourceUnavailable,
    StorageFull,
    Superseded,
    TransferError,
)
from ..refs import (
    ARTIFACT_COPY,
    ARTIFACT_STATUS_REGISTERED,
    DEFAULT_ARTIFACT_MAX_BYTES,
    DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS,
    DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES,
    ArtifactRef,
    ArtifactWriteResult,
    PagletFileRef,
    normalize_file_mode,
    validate_artifact_id,
    validate_expires_at,
    validate_sha256,
)
from .bodies import ChunkedRequestReader, LimitedRequestReader
from .files import create_exclusive, start_writeback
from .index import IndexUnavailable, ScanIndex, StoreIndex
from .layout import StoreLayout, metadata_json
from .paths import AllowedPath
from .redis_index import RedisIndex
from .streams import file_sha256, hashed_copy, hashed_read

logger = logging.getLogger("paglets_artifacts.store")

#: Called with (bytes_done, bytes_total or -1) while a transfer runs.
Progress = Callable[[int, int], None]
#: Asked before each item of a sweep, owner deletion or reindex: True stops it there (a
#: canceled job), and it returns what it did so far.
Stop = Callable[[], bool]


def _never() -> bool:
    return False


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# Opening a FIFO for reading blocks until a writer appears; non-blocking, it opens at once and
# is refused as "not a file" (regular files ignore the flag).
_SOURCE_FLAGS = _READ_FLAGS | getattr(os, "O_NONBLOCK", 0)
# The directory of a plain (not AllowedPath) source or target: opened as the caller named it.
_PARENT_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(slots=True)
class SweepReport:
    """What one sweep removed, and what it found but could not read."""

    parts_removed: int = 0
    expired_removed: int = 0
    orphans_removed: int = 0
    unreadable_metadata: int = 0
    bytes_freed: int = 0
    unreadable_ids: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "parts_removed": self.parts_removed,
            "expired_removed": self.expired_removed,
            "orphans_removed": self.orphans_removed,
            "unreadable_metadata": self.unreadable_metadata,
            "bytes_freed": self.bytes_freed,
            "unreadable_ids": list(self.unreadable_ids),
        }


@dataclass(slots=True)
class OwnerDeletion:
    """What ``ArtifactStore.delete_owner`` removed: the refs deleted and the bytes freed
    (theirs, and the remains of earlier deletions that died half-way)."""

    deleted: list[ArtifactRef] = field(default_factory=list)
    bytes_freed: int = 0


#: Errors of a full filesystem: retrying cannot help until someone frees space.
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _raise_if_no_space(exc: BaseException, where: Path) -> None:
    """Report a full filesystem as the permanent ``StorageFull``, naming where, not a bare OSError."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        raise StorageFull(
            f"no space left on the filesystem of {where} ({exc.strerror}): free space, then try again"
        ) from exc


#: Errors of a filesystem (or a sysctl) that will not hard-link: a move-in copies instead.
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})


class _LinkRefused(Exception):
    """The source could not be hard-linked into the store."""


def _cleanup_own(path: Path, inode: int) -> None:
    """Remove ``path`` if it is still the file this attempt created (inode ``inode``)."""
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_ino == inode:
            path.unlink()


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _unlink_if_same(dir_fd: int, name: str, inode: int) -> None:
    """Remove ``name`` in ``dir_fd`` if it is still the file imported (inode ``inode``)."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == inode:
            os.unlink(name, dir_fd=dir_fd)


def _cleanup(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass(frozen=True, slots=True)
class WritePlan:
    """An artifact about to be written, every field validated (``ArtifactStore.plan``).

    Parameters:
      artifact_id(str): its id (hex), given or new.
      owner_agent_id(str), name(str), compression(str): as its ref will carry them.
      expires_at(float): 0 for never.
      expected_sha256(str|None): the digest its bytes must have.
      size_bytes(int): the declared size, -1 when unknown.
    """

    artifact_id: str
    owner_agent_id: str
    name: str
    compression: str
    expires_at: float
    expected_sha256: str | None
    size_bytes: int = -1

    def ref(self, host_url: str, size_bytes: int, sha256: str) -> ArtifactRef:
        """The ref of the artifact once its bytes are in, dated now."""
        return ArtifactRef(
            host_url=host_url,
            artifact_id=self.artifact_id,
            name=self.name,
            size_bytes=size_bytes,
            sha256=sha256,
            compression=self.compression,
            created_at=time.time(),
            expires_at=self.expires_at,
            owner_agent_id=self.owner_agent_id,
        )


class _Part:
    """The ``tmp/<id>.part`` of one write, and the inode this attempt put there (-1: none yet)."""

    __slots__ = ("path", "inode")

    def __init__(self, path: Path):
        self.path = path
        self.inode = -1


class _Reservation:
    """The quota one write holds in the index (``held`` bytes; ``None`` before the first hold)."""

    __slots__ = ("index", "artifact_id", "quota_bytes", "held")

    def __init__(self, index: StoreIndex, artifact_id: str, quota_bytes: int | None):
        self.index = index
        self.artifact_id = artifact_id
        self.quota_bytes = quota_bytes
        self.held: int | None = None

    def hold(self, size_bytes: int, *, must_fit: int | None = None) -> None:
        """Hold ``size_bytes`` (replacing what was held) or raise ``QuotaExceeded``."""
        self.index.reserve(self.artifact_id, size_bytes, self.quota_bytes, must_fit_bytes=must_fit)
        self.held = size_bytes

    def release(self) -> None:
        if self.held is not None:
            self.index.release(self.artifact_id)
            self.held = None


class _Bytes(Protocol):
    """Where a write's bytes come from: ``read`` them (into the part, or hashed in place),
    ``place`` them as the part, ``undo`` what was done to the source when the write fails."""

    def read(self, plan: WritePlan, part: _Part, hold: _Reservation) -> tuple[int, str]: ...

    def place(self, part: _Part) -> None: ...

    def undo(self, *, committed: bool) -> None: ...


class _StreamedBytes:
    """Bytes copied from a file object into a new, exclusively created part file.

    With ``reserve_ahead_bytes`` the quota held grows with the bytes that arrived instead of
    covering the declared size from the start (a client that may never send it)."""

    def __init__(
        self, store: ArtifactStore, source: Any, progress: Progress | None, *, reserve_ahead_bytes: int | None = None
    ):
        self.store = store
        self.source = source
        self.progress = progress
        self.ahead = reserve_ahead_bytes
        self.fd = -1

    def read(self, plan: WritePlan, part: _Part, hold: _Reservation) -> tuple[int, str]:
        store, size_bytes, ahead, progress = self.store, plan.size_bytes, self.ahead, self.progress
        if size_bytes >= 0:
            hold.hold(size_bytes if ahead is None else min(size_bytes, ahead), must_fit=size_bytes)
        self.fd = store._create_part(part.path)
        part.inode = os.fstat(self.fd).st_ino

        def on_chunk(total: int) -> None:
            store._check_size(total)
            if 0 <= size_bytes < total:
                raise SizeMismatch(f"body is longer than its declared {size_bytes} bytes")
            if ahead is not None and total > (hold.held or 0):
                grown = total + ahead
                hold.hold(grown if size_bytes < 0 else min(size_bytes, grown))
            if progress is not None:
                progress(total, size_bytes)

        written, sha256 = hashed_copy(self.source, self.fd, on_chunk=on_chunk, write_behind=store.fsync)
        if 0 <= size_bytes != written:
            raise SizeMismatch(f"body ended after {written} of {size_bytes} declared bytes")
        return written, sha256

    def place(self, part: _Part) -> None:
        if self.store.fsync:
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def undo(self, *, committed: bool) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _LinkedBytes:
    """A same-filesystem source hashed in place and hard-linked as the part: no byte copied.

    The source stays where it is until the artifact is committed (its caller removes it
    then), so an import killed at any point loses nothing. It is named relative to
    ``dir_fd``, the directory it was opened in; ``handle`` is open on it."""

    def __init__(
        self,
        store: ArtifactStore,
        dir_fd: int,
        path: Path,
        handle: Any,
        info: os.stat_result,
        progress: Progress | None,
    ):
        self.store = store
        self.dir_fd = dir_fd
        self.path = path
        self.handle = handle
        self.info = info
        self.progress = progress
        self.linked = False

    def read(self, plan: WritePlan, part: _Part, hold: _Reservation) -> tuple[int, str]:
        size, handle, progress, fsync = self.info.st_size, self.handle, self.progress, self.store.fsync
        read = 0

        def on_chunk(done: int) -> None:
            nonlocal read
            if done > size:
                raise SizeMismatch(f"source changed while it was read: more than its {size} bytes")
            if fsync:  # the disk writes what the source may still hold in memory while it is hashed
                start_writeback(handle.fileno(), read, done - read)
                read = done
            if progress is not None:
                progress(done, size)

        done, sha256 = hashed_read(handle, on_chunk=on_chunk)  # one read, overlapped with hashing
        if done != size:
            raise SizeMismatch(f"source changed while it was read: {done} of {size} bytes")
        return done, sha256

    def place(self, part: _Part) -> None:
        info = self.info
        self.store._clear_stale_part(part.path)
        # A second name, not a rename: the source stays where it is until the artifact is
        # committed, so an import killed at any point loses nothing (its retry clears the link).
        try:
            os.link(self.path.name, part.path, src_dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_LINK_ERRNOS:
                raise _LinkRefused(self.path) from exc
            raise
        linked = os.lstat(part.path)
        if (linked.st_ino, linked.st_dev, linked.st_size) != (info.st_ino, info.st_dev, info.st_size):
            _cleanup(part.path)
            raise SourceUnavailable(f"artifact source was replaced while it was imported: {self.path}")
        part.inode = info.st_ino
        self.linked = True
        os.utime(part.path)  # at once: a sweep must never take the new link for a stale file
        if info.st_mode & 0o022:  # the inode becomes the blob: nobody else may rewrite it
            os.chmod(part.path, stat.S_IMODE(info.st_mode) & ~0o022)
        if self.store.fsync:  # the source's bytes may still sit in the page cache: flush them before they count
            os.fsync(self.handle.fileno())

    def undo(self, *, committed: bool) -> None:
        if not self.linked or committed:
            # Once committed, the source is a second name of the blob, which must keep its safer mode.
            return
        # Not committed: the source keeps its own mode and times. Through the open descriptor:
        # whatever its name now leads to, it is the same inode.
        info = self.info
        with contextlib.suppress(OSError):
            if info.st_mode & 0o022:
                os.fchmod(self.handle.fileno(), stat.S_IMODE(info.st_mode))
            os.utime(self.handle.fileno(), ns=(info.st_atime_ns, info.st_mtime_ns))


class ArtifactStore:
    """Host-owned binary artifact storage with atomic, durable commits.

    Parameters:
      root: the store directory (``blobs/``, ``metadata/``, ``tmp/`` below it).
      host_url(str): the URL refs returned by this store carry.
      max_artifact_bytes(int|None): largest artifact; ``None`` or 0 for no cap.
      quota_bytes(int|None): total bytes the store may hold; ``None`` for no quota.
      spool_ttl_seconds(float): age after which a ``.part`` file is stale.
      fsync(bool): flush blobs, metadata and directories before a ref is returned
        (turn off only for tests and benchmarks that do not care about crashes).
      index(StoreIndex|None): where quota, expiry and owner questions are answered;
        by default a :class:`ScanIndex` that scans, as the reference store does.

    Its paths are its ``layout``'s (a :class:`StoreLayout`); ``blobs_dir``, ``metadata_dir``
    and ``tmp_dir`` are the layout's directories, kept for the callers of the reference API.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        host_url: str,
        max_artifact_bytes: int | None = DEFAULT_ARTIFACT_MAX_BYTES,
        quota_bytes: int | None = DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES,
        spool_ttl_seconds: float = DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS,
        fsync: bool = True,
        index: StoreIndex | None = None,
    ):
        self.layout = StoreLayout.at(root)
        self.root = self.layout.root
        self.host_url = str(host_url).rstrip("/")
        self.max_artifact_bytes = 0 if max_artifact_bytes is None else max(0, int(max_artifact_bytes))
        self.quota_bytes = None if quota_bytes is None else max(0, int(quota_bytes))
        self.spool_ttl_seconds = max(1.0, float(spool_ttl_seconds))
        self.fsync = fsync
        self.blobs_dir = self.layout.blobs_dir
        self.metadata_dir = self.layout.metadata_dir
        self.tmp_dir = self.layout.tmp_dir
        self._ensure_dirs()
        self.index: StoreIndex = index if index is not None else ScanIndex(self.layout, self.layout.read_ref)

    @classmethod
    def from_settings(cls, settings: Any, *, redis: Any = None) -> ArtifactStore:
        """The store a worker or server of these ``Settings`` uses (``redis``: the shared
        client, for an index every process shares)."""
        index = None
        if redis is not None:
            layout = StoreLayout.at(settings.store_root)
            # A reservation outlives any import attempt: the time limit kills an attempt first.
            index = RedisIndex(
                layout,
                layout.read_ref,
                redis,
                namespace=settings.namespace,
                reservation_seconds=settings.transfer_time_limit_seconds + 60.0,
                build_wait_seconds=settings.maintenance_time_limit_seconds,
            )
        return cls(
            settings.store_root,
            host_url=settings.host_url,
            max_artifact_bytes=settings.max_artifact_bytes,
            quota_bytes=settings.quota_bytes,
            spool_ttl_seconds=settings.spool_ttl_seconds,
            fsync=settings.fsync,
            index=index,
        )

    # ------------------------------------------------------------------ configuration

    def set_host_url(self, host_url: str) -> None:
        self.host_url = str(host_url).rstrip("/")

    # ------------------------------------------------------------------ writing

    def plan(
        self,
        *,
        size_bytes: int = -1,
        owner_agent_id: str = "",
        name: str = "",
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        artifact_id: str | None = None,
    ) -> WritePlan:
        """Validate what a write was asked for, before any byte moves or any path is named."""
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < -1:
            raise InvalidInput(f"invalid size_bytes {size_bytes!r}: expected a whole number >= 0, or -1 if unknown")
        expires = validate_expires_at(expires_at)
        expected = validate_sha256(expected_sha256, field="expected sha256") if expected_sha256 else None
        for label, value in (("owner_agent_id", owner_agent_id), ("name", name), ("compression", compression)):
            if not isinstance(value, str):
                raise InvalidInput(f"invalid {label} {value!r}: expected a string")
        return WritePlan(
            artifact_id=uuid.uuid4().hex if artifact_id is None else validate_artifact_id(artifact_id),
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires,
            expected_sha256=expected,
            size_bytes=size_bytes,
        )

    def create_from_path(
        self,
        source: str | Path | AllowedPath,
        *,
        owner_agent_id: str = "",
        name: str | None = None,
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        artifact_id: str | None = None,
        delete_source: bool = False,
        progress: Progress | None = None,
    ) -> ArtifactWriteResult:
        """Import a regular file. With ``delete_source`` the source is removed only after
        the artifact is committed; on the store's filesystem it is hashed in place and
        linked into the store, so no byte is copied.

        ``artifact_id`` makes the import idempotent: when that artifact is already committed
        (a redelivered job), its ref is returned and, with ``delete_source``, the source is
        removed if it is still there; the source need not exist any more.

        An :class:`AllowedPath` source (what workers pass) is opened beneath its allowed
        root, no link below it followed; opening, linking and removing the source are all
        done relative to its directory's descriptor (``PathNotAllowed`` when a component
        is, or was swapped for, a symlink)."""
        beneath = source if isinstance(source, AllowedPath) else None
        path = beneath.path if beneath is not None else Path(cast("str | Path", source))
        plan = self.plan(
            owner_agent_id=owner_agent_id,
            name=path.name if name is None or name == "" else name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
            artifact_id=artifact_id,
        )
        existing = self.adopt_committed(plan.artifact_id)
        if existing is not None and not delete_source:
            return existing
        try:
            dir_fd = beneath.open_parent() if beneath is not None else os.open(path.parent, _PARENT_FLAGS)
        except FileNotFoundError:
            if existing is not None:
                return existing  # a moved source went with the attempt that committed it
            raise SourceUnavailable(f"artifact source does not exist: {path}") from None
        except OSError as exc:
            raise SourceUnavailable(f"artifact source cannot be opened: {path}: {exc.strerror}") from None
        try:
            if existing is not None:
                # Committed by an attempt that died before it removed the moved source.
                _unlink_quietly(dir_fd, path.name)
                return existing
            return self._create_from_file(dir_fd, path, beneath, plan, delete_source=delete_source, progress=progress)
        finally:
            os.close(dir_fd)

    def _create_from_file(
        self,
        dir_fd: int,
        path: Path,
        beneath: AllowedPath | None,
        plan: WritePlan,
        *,
        delete_source: bool,
        progress: Progress | None,
    ) -> ArtifactWriteResult:
        try:
            fd = os.open(path.name, _SOURCE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise SourceUnavailable(f"artifact source does not exist: {path}") from None
        except OSError as exc:
            if beneath is not None and exc.errno == errno.ELOOP:  # resolved as a file, a link now
                raise beneath.refused() from None
            raise SourceUnavailable(f"artifact source cannot be opened: {path}: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise SourceUnavailable(f"artifact source is not a file: {path}")
        plan = dataclasses.replace(plan, size_bytes=info.st_size)
        with open(fd, "rb", buffering=0, closefd=True) as handle:
            result = None
            # A file with other hard links is copied: through them its bytes could change later.
            if delete_source and info.st_dev == self._tmp_device() and info.st_nlink == 1:
                try:
                    result = self._write(plan, _LinkedBytes(self, dir_fd, path, handle, info, progress))
                except _LinkRefused:
                    handle.seek(0)  # no hard links here (filesystem or protected_hardlinks): copy
            if result is None:
                result = self._write(plan, _StreamedBytes(self, handle, progress))
        if delete_source:
            _unlink_if_same(dir_fd, path.name, info.st_ino)
        return result

    def create_from_http_request(
        self,
        headers: Any,
        source: Any,
        *,
        owner_agent_id: str = "",
        name: str = "",
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
    ) -> ArtifactWriteResult:
        """Store a request body framed by ``Content-Length`` or ``Transfer-Encoding: chunked``."""
        stream, size = request_body(headers, source)
        return self.create_from_stream(
            stream,
            size_bytes=size,
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
        )

    def create_from_stream(
        self,
        source: Any,
        *,
        size_bytes: int = -1,
        owner_agent_id: str = "",
        name: str = "",
        compression: str = "",
        expires_at: float = 0.0,
        expected_sha256: str | None = None,
        artifact_id: str | None = None,
        progress: Progress | None = None,
        reserve_ahead_bytes: int | None = None,
    ) -> ArtifactWriteResult:
        """Stream ``source`` into a new artifact; ``size_bytes=-1`` when the size is unknown.

        ``artifact_id`` (hex) makes the write idempotent: when that artifact is already
        committed, its ref is returned and nothing is written (a redelivered job).

        The quota is reserved for the whole declared size before the first byte, unless
        ``reserve_ahead_bytes`` is given (a body from a client that may never send it): then
        the declared size must fit at the start, but the reservation holds at most that many
        bytes more than have arrived, and grows as they arrive (refused mid-body when the
        quota filled meanwhile).
        """
        if reserve_ahead_bytes is not None and (
            isinstance(reserve_ahead_bytes, bool) or not isinstance(reserve_ahead_bytes, int) or reserve_ahead_bytes < 1
        ):
            raise InvalidInput(f"invalid reserve_ahead_bytes {reserve_ahead_bytes!r}: expected a whole number >= 1")
        plan = self.plan(
            size_bytes=size_bytes,
            owner_agent_id=owner_agent_id,
            name=name,
            compression=compression,
            expires_at=expires_at,
            expected_sha256=expected_sha256,
            artifact_id=artifact_id,
        )
        existing = self.adopt_committed(plan.artifact_id)
        if existing is not None:
            return existing
        return self._write(plan, _StreamedBytes(self, source, progress, reserve_ahead_bytes=reserve_ahead_bytes))

    def _write(self, plan: WritePlan, source: _Bytes) -> ArtifactWriteResult:
        """The one write path, once the caller found nothing committed under the plan's id:
        the bytes into ``tmp/<id>.part`` (and verified), the quota held for them, then one
        commit; on any failure one rollback that leaves nothing of this attempt (its part
        file, its reservation) and gives a moved-in source back. Two attempts that overlap
        meet at the commit, where one gives way (``Superseded``)."""
        self._check_size(plan.size_bytes)
        self._ensure_dirs()
        part = _Part(self.layout.part(plan.artifact_id))
        hold = _Reservation(self.index, plan.artifact_id, self.quota_bytes)
        try:
            size, sha256 = source.read(plan, part, hold)
            if plan.expected_sha256 and sha256 != plan.expected_sha256:
                raise ChecksumMismatch(f"artifact checksum mismatch: expected {plan.expected_sha256}, got {sha256}")
            if hold.held != size:
                hold.hold(size)
            source.place(part)
            return self._commit(part.path, plan.ref(self.host_url, size, sha256), inode=part.inode)
        except BaseException as exc:
            source.undo(committed=self.layout.metadata(plan.artifact_id).exists())
            if part.inode >= 0:
                _cleanup_own(part.path, part.inode)
            hold.release()
            _raise_if_no_space(exc, self.root)
            raise

    def _commit(self, tmp_path: Path, ref: ArtifactRef, *, inode: int) -> ArtifactWriteResult:
        """Make a fully written ``.part`` visible: blob, then metadata, each renamed into place.

        The metadata is staged in ``tmp/`` first, so a crash between the two renames leaves
        a ``<id>.json.part`` behind that tells the sweep which blob is an orphan. On failure
        the bytes are back at ``tmp_path`` and the caller decides what becomes of them (a
        moved-in source is given back, not deleted).
        """
        blob_path = self.layout.blob(ref.artifact_id)
        meta_path = self.layout.metadata(ref.artifact_id)
        meta_tmp = self.layout.staged_metadata(ref.artifact_id)
        self._clear_stale_part(meta_tmp)
        try:
            fd = create_exclusive(meta_tmp)
        except FileExistsError:
            raise TransferError(f"another transfer is committing {ref.artifact_id}") from None
        blob_moved = False
        meta_inode = -1
        try:
            with open(fd, "w", encoding="utf-8", closefd=True) as handle:
                meta_inode = os.fstat(handle.fileno()).st_ino
                handle.write(metadata_json(ref))
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            # Two attempts of one job may overlap (a message redelivered while its first worker
            # still runs); each clears the other's leftovers by name. Rename only what this
            # attempt wrote, so a blob never goes out with another attempt's metadata.
            for staged, own in ((tmp_path, inode), (meta_tmp, meta_inode)):
                try:
                    mine = os.lstat(staged).st_ino == own
                except FileNotFoundError:
                    mine = False
                if not mine:
                    raise Superseded(f"another attempt replaced {staged.name}; this one gives way")
            os.replace(tmp_path, blob_path)
            blob_moved = True
            os.replace(meta_tmp, meta_path)
            if self.fsync:
                self._fsync_dir(self.blobs_dir)
                self._fsync_dir(self.metadata_dir)
        except BaseException:
            _cleanup_own(meta_tmp, meta_inode)
            if blob_moved:
                _cleanup(meta_path)
                try:
                    os.replace(blob_path, tmp_path)
                except OSError:
                    _cleanup(blob_path)
            raise
        self.index.add(ref)
        return ArtifactWriteResult(ref=self._with_host(ref), path=blob_path)

    # ------------------------------------------------------------------ reading

    def ref(self, artifact_id: str) -> ArtifactRef:
        """The artifact's ref, carrying this store's *current* host URL."""
        return self._with_host(self.layout.read_ref(artifact_id))

    def list(self, *, owner_agent_id: str | None = None) -> list[ArtifactRef]:
        """Every readable artifact (of one owner, if given), in id order."""
        if owner_agent_id is None:
            return list(self.scan())
        try:
            artifact_ids = sorted(self.index.owner_ids(owner_agent_id))
        except IndexUnavailable as exc:
            # Reading needs no index: the directory is the truth, at the price of a scan.
            logger.warning("owner listing scans the store directory: %s", exc)
            return [ref for ref in self.scan() if ref.owner_agent_id == owner_agent_id]
        refs = []
        for artifact_id in artifact_ids:
            with contextlib.suppress(TransferError):
                ref = self.ref(artifact_id)
                if ref.owner_agent_id == owner_agent_id:
                    refs.append(ref)
        return refs

    def scan(self, unreadable: builtins.list[str] | None = None) -> Iterator[ArtifactRef]:
        """Read every metadata file (a full scan); ids that fail to parse go to ``unreadable``."""
        self._ensure_dirs()
        for name in self.layout.metadata_names():
            try:
                yield self.ref(name)
            except TransferError:
                if unreadable is not None:
                    unreadable.append(name)

    def open_reader(self, artifact_id: str):
        """A binary file object over the blob (never follows a symlink)."""
        self.ref(artifact_id)
        try:
            fd = os.open(self.layout.blob(artifact_id), _READ_FLAGS)
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {artifact_id!r} has metadata but no blob") from None
        except OSError as exc:  # ELOOP: the blob is a symlink
            raise TransferError(f"artifact {artifact_id!r} blob cannot be opened: {exc.strerror}") from None
        return open(fd, "rb", buffering=0, closefd=True)

    def blob_path(self, artifact_id: str) -> Path:
        self.ref(artifact_id)
        return self.layout.blob(artifact_id)

    def export_to_path(
        self,
        artifact_id: str,
        target: str | Path | AllowedPath,
        *,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
        part_token: str | None = None,
    ) -> ArtifactRef:
        """Copy the blob to ``target`` through a hidden ``.part`` beside it, verified
        (size and SHA-256) before it is renamed into place.

        ``part_token`` (hex) names that ``.part`` instead of a random token: a retried export
        of the same job then replaces what a killed attempt left beside the target. An
        :class:`AllowedPath` target (what workers pass) is reached beneath its allowed root,
        no link below it followed (missing directories are made on the way); the ``.part``
        is created, renamed and removed relative to the target directory's descriptor.
        """
        expected = validate_sha256(expected_sha256, field="expected sha256") if expected_sha256 else None
        token = uuid.uuid4().hex if part_token is None else validate_artifact_id(part_token)
        ref = self.ref(artifact_id)
        beneath = target if isinstance(target, AllowedPath) else None
        target_path = beneath.path if beneath is not None else Path(cast("str | Path", target))
        if beneath is None:
            target_path.parent.mkdir(parents=True, exist_ok=True)
        dir_fd = beneath.open_parent(create=True) if beneath is not None else os.open(target_path.parent, _PARENT_FLAGS)
        try:
            self._export_into(dir_fd, target_path, ref, expected, token, part_token is not None, progress)
        finally:
            os.close(dir_fd)
        return ref

    def _export_into(
        self,
        dir_fd: int,
        target_path: Path,
        ref: ArtifactRef,
        expected: str | None,
        token: str,
        replace_stale: bool,
        progress: Progress | None,
    ) -> None:
        name = target_path.name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise InvalidInput(f"export target is a directory: {target_path}")
        part_name = f".{name}.{token}.part"
        if replace_stale:
            _unlink_quietly(dir_fd, part_name)  # a killed attempt's, of the same job
        with self.open_reader(ref.artifact_id) as source:
            try:
                fd = create_exclusive(part_name, dir_fd=dir_fd)
            except FileExistsError:
                raise TransferError(f"export temporary file {target_path.parent / part_name} already exists") from None
            try:

                def on_chunk(total: int) -> None:
                    if total > ref.size_bytes:
                        raise SizeMismatch(f"artifact size mismatch: blob is longer than {ref.size_bytes} bytes")
                    if progress is not None:
                        progress(total, ref.size_bytes)

                written, sha256 = hashed_copy(source, fd, on_chunk=on_chunk, write_behind=self.fsync)
                if written != ref.size_bytes:
                    raise SizeMismatch(f"artifact size mismatch: expected {ref.size_bytes}, got {written}")
                want = expected or ref.sha256
                if want and sha256 != want:
                    raise ChecksumMismatch(f"artifact checksum mismatch: expected {want}, got {sha256}")
                if self.fsync:
                    os.fsync(fd)
                os.close(fd)
                fd = -1
                os.replace(part_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                if self.fsync:
                    os.fsync(dir_fd)
            except BaseException as exc:
                if fd >= 0:
                    os.close(fd)
                _unlink_quietly(dir_fd, part_name)
                _raise_if_no_space(exc, target_path.parent)
                raise

    # ------------------------------------------------------------------ deleting

    def delete(self, artifact_id: str) -> None:
        """Remove an artifact (metadata first, so it is never visible without its blob)."""
        self.remove(artifact_id)

    def remove(self, artifact_id: str) -> int:
        """``delete``, returning the bytes freed (0 if it was not there)."""
        blob = self.layout.blob(artifact_id)
        meta = self.layout.metadata(artifact_id)
        try:
            size = blob.stat().st_size
        except FileNotFoundError:
            size = 0
        _cleanup(meta, blob)
        self.index.removed(artifact_id)
        return size

    def finish_removal(self, artifact_id: str) -> int:
        """Remove what a removal killed between the metadata and the blob left behind (the
        blob and the index entry), when the metadata is gone; return the bytes freed."""
        if self.layout.metadata(artifact_id).exists():
            return 0  # a whole artifact (or one being committed): not remains
        return self.remove(artifact_id)

    def reclaim(self, artifact_id: str, *, remove_committed: bool = False) -> int:
        """Remove what earlier attempts of the import writing ``artifact_id`` left behind and
        return the bytes freed: its ``.part`` and staged metadata, the blob of a commit cut
        between its two renames, its quota reservation; with ``remove_committed`` also the
        artifact itself, whole (an import of a deleted owner). For an attempt that fails:
        its job's earlier attempts were killed, and nothing else writes under that id."""
        artifact_id = validate_artifact_id(artifact_id)
        freed = 0
        for path in (self.layout.part(artifact_id), self.layout.staged_metadata(artifact_id)):
            with contextlib.suppress(FileNotFoundError):
                size = path.lstat().st_size
                path.unlink()
                freed += size
        if remove_committed:
            freed += self.remove(artifact_id)  # files, index entry and reservation
        elif self.adopt_committed(artifact_id) is None:  # (a whole one is recorded: its hold becomes usage)
            freed += self.finish_removal(artifact_id)
            self.index.release(artifact_id)
        return freed

    def delete_owner(self, owner_agent_id: str, *, stop: Stop = _never) -> OwnerDeletion:
        """Delete every artifact of ``owner_agent_id``, and what an earlier deletion killed
        half-way left of its artifacts; return the refs deleted and the bytes freed (so far,
        when ``stop`` said so before an artifact)."""
        if not self.index.scans:
            try:
                artifact_ids = sorted(self.index.owner_ids(owner_agent_id))
            except IndexUnavailable:
                pass  # the listing below scans the directory instead
            else:
                return self._delete_listed(owner_agent_id, artifact_ids, stop)
        deletion = OwnerDeletion()
        for ref in self.list(owner_agent_id=owner_agent_id):
            if stop():
                return deletion
            deletion.bytes_freed += self.remove(ref.artifact_id)
            deletion.deleted.append(ref)
        if not self.index.scans:  # a scan lists whole artifacts only
            for artifact_id in list(self.index.owner_ids(owner_agent_id)):
                if stop():
                    return deletion
                # What a removal killed between an artifact's metadata and its blob left behind.
                deletion.bytes_freed += self.finish_removal(artifact_id)
        return deletion

    def _delete_listed(self, owner_agent_id: str, artifact_ids: builtins.list[str], stop: Stop) -> OwnerDeletion:
        """:meth:`delete_owner` over the index's listing of the owner, read once: whole
        artifacts are removed, and the remains of a removal killed between an artifact's
        metadata and its blob (its metadata gone) are finished."""
        deletion = OwnerDeletion()
        for artifact_id in artifact_ids:
            if stop():
                return deletion
            try:
                ref = self.ref(artifact_id)
            except ArtifactNotFound:
                deletion.bytes_freed += self.finish_removal(artifact_id)
                continue
            except TransferError:  # unreadable metadata: not listed, as list() would not
                continue
            if ref.owner_agent_id == owner_agent_id:
                deletion.bytes_freed += self.remove(artifact_id)
                deletion.deleted.append(ref)
        return deletion

    def cleanup_temporary(self, *, now: float | None = None, stop: Stop = _never) -> SweepReport:
        """Sweep: stale ``.part`` files, expired artifacts and orphans.

        Orphans are blobs whose commit was interrupted (found through their staged
        metadata in ``tmp/``) and, when the index scans anyway, those of
        :meth:`remove_orphans`. Unreadable metadata is counted, not hidden.

        ``now`` dates the expiry of artifacts only. Temporary files and orphan blobs are
        judged by the real clock: a ``.part`` may belong to an upload still in progress, and
        a sweep dated in the future must never take it.

        ``stop`` is asked before each file and artifact; when it says so, the sweep ends
        there and reports what it removed until then.
        """
        current = time.time() if now is None else float(now)
        clock = time.time()
        self._ensure_dirs()
        report = SweepReport()
        for path in self.layout.parts():
            if stop():
                return report
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if clock - info.st_mtime < self.spool_ttl_seconds or stat.S_ISDIR(info.st_mode):
                continue  # fresh, or a directory that is none of ours: never ours to remove
            _cleanup(path)
            report.parts_removed += 1
            report.bytes_freed += info.st_size
            artifact_id = self.layout.staged_id(path)
            if artifact_id is not None:  # an interrupted commit: its blob is an orphan
                with contextlib.suppress(TransferError):
                    if not self.layout.metadata(artifact_id).exists():
                        blob = self.layout.blob(artifact_id)
                        with contextlib.suppress(FileNotFoundError):
                            report.bytes_freed += blob.stat().st_size
                            blob.unlink()
                            report.orphans_removed += 1
                            self.index.removed(artifact_id)
        for artifact_id in list(self.index.expired_ids(current)):
            if stop():
                return report
            try:
                ref = self.ref(artifact_id)
            except ArtifactNotFound:
                # Deleted behind the index's back (a paglets host's sweep), or a removal that
                # died between the metadata and the blob: remove what is left of it.
                freed = self.remove(artifact_id)
                if freed:
                    report.orphans_removed += 1
                    report.bytes_freed += freed
                continue
            except TransferError:
                continue
            if 0 < ref.expires_at <= current:
                report.bytes_freed += self.remove(artifact_id)
                report.expired_removed += 1
        if self.index.scans and not stop():  # it reads every file anyway; otherwise reindex does this full-scan work
            blobs, metas = self._listings()
            removed, freed = self._remove_orphans(blobs, metas, clock, stop)
            report.orphans_removed += removed
            report.bytes_freed += freed
            for artifact_id in metas:
                if artifact_id not in blobs:
                    continue
                try:
                    self.ref(artifact_id)
                except ArtifactNotFound:
                    pass  # deleted since the listing: gone, not unreadable
                except TransferError:
                    report.unreadable_metadata += 1
                    report.unreadable_ids.append(artifact_id)
        return report

    def remove_orphans(self, *, stop: Stop = _never) -> tuple[int, int]:
        """Remove, by a full scan, blobs without metadata older than the spool TTL (a commit
        that died; one in progress is younger) and metadata without a blob; return how many
        files were removed and the bytes freed (so far, when ``stop`` said so before a file)."""
        self._ensure_dirs()
        return self._remove_orphans(*self._listings(), time.time(), stop)

    def reindex(self, *, stop: Stop = _never) -> dict[str, Any]:
        """The reindex job: remove orphans, then bring the index in line with the files
        (``StoreIndex.rebuild``); return the index's figures and the orphans removed. A
        scanning index has nothing to rebuild and its sweep removes orphans: its figures.
        ``stop`` is asked before each orphan and before the rebuild (which, once begun, runs
        to its end); stopped, it returns the orphan figures alone."""
        return self._reindexed(self.index.rebuild, stop)

    def reconcile(self) -> dict[str, Any]:
        """:meth:`reindex`, reading only the metadata the index does not know
        (``StoreIndex.reconcile``): the cheaper call for a host that knows it changed files."""
        return self._reindexed(self.index.reconcile)

    def _reindexed(self, scan: Callable[[], dict[str, Any]], stop: Stop = _never) -> dict[str, Any]:
        if self.index.scans:
            return scan()
        removed, freed = self.remove_orphans(stop=stop)
        if stop():
            return {"orphans_removed": removed, "orphan_bytes_freed": freed}
        return {**scan(), "orphans_removed": removed, "orphan_bytes_freed": freed}

    def _listings(self) -> tuple[dict[str, os.DirEntry], dict[str, os.DirEntry]]:
        # Blobs first, metadata second: a commit renames the blob before the metadata, so an
        # artifact committed between the two listings shows up as metadata without a blob and
        # is re-checked instead of being taken for an orphan.
        blobs = self.layout.blobs()
        return blobs, self.layout.metadata_files()

    def _remove_orphans(
        self, blobs: dict[str, os.DirEntry], metas: dict[str, os.DirEntry], clock: float, stop: Stop = _never
    ) -> tuple[int, int]:
        removed = freed = 0
        for artifact_id, entry in blobs.items():
            if artifact_id in metas:
                continue
            if stop():
                return removed, freed
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if clock - info.st_mtime < self.spool_ttl_seconds:
                continue
            if self.layout.metadata(artifact_id).exists():
                continue  # committed since the listing
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
            freed += info.st_size
        for artifact_id, entry in metas.items():
            if artifact_id in blobs or self.layout.blob(artifact_id).exists():
                continue  # whole, or committed between the two listings
            if stop():
                return removed, freed
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
        return removed, freed

    # ------------------------------------------------------------------ internals

    def find_committed(self, artifact_id: str) -> ArtifactWriteResult | None:
        """The artifact if it is fully committed (metadata and blob), else ``None``; only reads."""
        try:
            ref = self.ref(artifact_id)
        except ArtifactNotFound:
            return None
        blob = self.layout.blob(artifact_id)
        if not blob.exists():
            return None
        return ArtifactWriteResult(ref=ref, path=blob)

    def adopt_committed(self, artifact_id: str) -> ArtifactWriteResult | None:
        """:meth:`find_committed`, and a found artifact added to the index again (idempotent):
        an import attempt killed between its renames and its index update is redelivered,
        finds its artifact here, and must not leave it out of the quota and owner sets."""
        found = self.find_committed(artifact_id)
        if found is not None:
            self.index.add(found.ref)
        return found

    def _create_part(self, tmp_path: Path) -> int:
        self._clear_stale_part(tmp_path)
        try:
            return create_exclusive(tmp_path)
        except FileExistsError:
            raise TransferError(f"another transfer is writing {tmp_path.name}") from None

    @staticmethod
    def _clear_stale_part(path: Path) -> None:
        # Our part names derive from the artifact id: one left here is a killed attempt's.
        _cleanup(path)

    def _check_size(self, size_bytes: int) -> None:
        if self.max_artifact_bytes and size_bytes > self.max_artifact_bytes:
            raise ArtifactTooLarge(
                f"artifact exceeds maximum size: {size_bytes} bytes would exceed {self.max_artifact_bytes} bytes"
            )

    def _with_host(self, ref: ArtifactRef) -> ArtifactRef:
        if ref.host_url == self.host_url:
            return ref
        return ArtifactRef(**{**ref.to_wire(), "host_url": self.host_url})

    def _ensure_dirs(self) -> None:
        self.layout.ensure()

    def _tmp_device(self) -> int:
        return os.stat(self.tmp_dir).st_dev

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def request_body(headers: Any, source: Any) -> tuple[Any, int]:
    """The reader of a request body and its declared size (-1 when chunked)."""
    if "chunked" in str(headers.get("Transfer-Encoding") or "").casefold():
        return ChunkedRequestReader(source), -1
    size = parse_content_length(headers.get("Content-Length"))
    return LimitedRequestReader(source, size), size


def parse_content_length(value: Any) -> int:
    """A ``Content-Length`` header as an int; anything but plain digits is ``InvalidInput``."""
    if value is None or value == "":
        return 0
    text = str(value).strip()
    if not text.isdigit() or not text.isascii() or len(text) > 19:
        raise InvalidInput(f"invalid Content-Length header {value!r}: expected a whole number of bytes")
    return int(text)


def safe_target_filename(name: str) -> str:
    """A file name made of letters, digits, ``.``, ``_`` and ``-`` only (never a path)."""
    cleaned = "".join(char if char.isalnum() or char in "._-" else "_" for char in str(name or ""))
    return cleaned.strip("._") or "artifact"


def paglet_file_ref_from_path(
    path: str | Path,
    *,
    name: str | None,
    mode: str,
    host_name: str,
    host_url: str,
) -> PagletFileRef:
    """Register a local file for a paglet: its size, SHA-256 and where it is now."""
    source = Path(path).expanduser().resolve(strict=False)
    if not source.is_file():
        raise SourceUnavailable(f"registered path is not a file: {source}")
    info = source.stat()
    logical_name = str(name or source.name).strip()
    if not logical_name:
        raise InvalidInput("registered file name cannot be empty")
    return PagletFileRef(
        name=logical_name,
        mode=normalize_file_mode(mode or ARTIFACT_COPY),
        source_host_name=host_name,
        source_host_url=host_url.rstrip("/"),
        source_path=str(source),
        source_created_at=getattr(info, "st_birthtime", info.st_ctime),
        source_modified_at=info.st_mtime,
        size_bytes=info.st_size,
        sha256=file_sha256(source),
        current_host_name=host_name,
        current_host_url=host_url.rstrip("/"),
        current_path=str(source),
        status=ARTIFACT_STATUS_REGISTERED,
        last_error="",
    )
