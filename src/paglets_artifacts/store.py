"""The host-owned artifact store: blobs, metadata and temporary files on disk.

Same names, signatures and on-disk layout as the paglets reference store, with these
guarantees on top: an artifact is visible only when blob and metadata are complete and
durable; temporary files are created exclusively and never follow a symlink; every
input is validated with an error that names the problem; a short body is an error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    ChecksumMismatch,
    InvalidInput,
    SizeMismatch,
    SourceUnavailable,
    Superseded,
    StorageFull,
    TransferError,
)
from .index import ScanIndex, StoreIndex
from .paths import AllowedPath
from .redis_index import IndexUnavailable, RedisIndex
from .refs import (
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
from .streams import (
    ChunkedRequestReader,
    LimitedRequestReader,
    create_exclusive,
    file_sha256,
    hashed_copy,
    hashed_read,
    start_writeback,
)

logger = logging.getLogger("paglets_artifacts.store")

#: Called with (bytes_done, bytes_total or -1) while a transfer runs.
Progress = Callable[[int, int], None]

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


def metadata_json(ref: ArtifactRef) -> str:
    """The metadata file's text: the wire form, indent 2, sorted keys, trailing newline."""
    return json.dumps(ref.to_wire(), indent=2, sort_keys=True) + "\n"


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
        self.root = Path(root).expanduser().resolve(strict=False)
        self.host_url = str(host_url).rstrip("/")
        self.max_artifact_bytes = 0 if max_artifact_bytes is None else max(0, int(max_artifact_bytes))
        self.quota_bytes = None if quota_bytes is None else max(0, int(quota_bytes))
        self.spool_ttl_seconds = max(1.0, float(spool_ttl_seconds))
        self.fsync = fsync
        self.blobs_dir = self.root / "blobs"
        self.metadata_dir = self.root / "metadata"
        self.tmp_dir = self.root / "tmp"
        self._ensure_dirs()
        self.index: StoreIndex = index if index is not None else ScanIndex(self)

    @classmethod
    def from_settings(cls, settings: Any, *, redis: Any = None) -> ArtifactStore:
        """The store a worker or server of these ``Settings`` uses (``redis``: the shared
        client, for an index every process shares)."""
        store = cls(
            settings.store_root,
            host_url=settings.host_url,
            max_artifact_bytes=settings.max_artifact_bytes,
            quota_bytes=settings.quota_bytes,
            spool_ttl_seconds=settings.spool_ttl_seconds,
            fsync=settings.fsync,
        )
        if redis is not None:
            # A reservation outlives any import attempt: the time limit kills an attempt first.
            store.index = RedisIndex(
                store,
                redis,
                namespace=settings.namespace,
                reservation_seconds=settings.transfer_time_limit_seconds + 60.0,
                build_wait_seconds=settings.maintenance_time_limit_seconds,
            )
        return store

    # ------------------------------------------------------------------ configuration

    def set_host_url(self, host_url: str) -> None:
        self.host_url = str(host_url).rstrip("/")

    # ------------------------------------------------------------------ writing

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

        An :class:`AllowedPath` source (what workers pass) is opened beneath its allowed
        root, no link below it followed; opening, linking and removing the source are all
        done relative to its directory's descriptor (``PathNotAllowed`` when a component
        is, or was swapped for, a symlink)."""
        beneath = source if isinstance(source, AllowedPath) else None
        path = beneath.path if beneath is not None else Path(source)
        try:
            dir_fd = beneath.open_parent() if beneath is not None else os.open(path.parent, _PARENT_FLAGS)
        except FileNotFoundError:
            raise SourceUnavailable(f"artifact source does not exist: {path}") from None
        except OSError as exc:
            raise SourceUnavailable(f"artifact source cannot be opened: {path}: {exc.strerror}") from None
        try:
            return self._create_from_file(
                dir_fd, path, beneath, delete_source=delete_source, owner_agent_id=owner_agent_id,
                name=name or path.name, compression=compression, expires_at=expires_at,
                expected_sha256=expected_sha256, artifact_id=artifact_id, progress=progress,
            )
        finally:
            os.close(dir_fd)

    def _create_from_file(
        self, dir_fd: int, path: Path, beneath: AllowedPath | None, *, delete_source: bool, **options: Any
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
        with open(fd, "rb", buffering=0, closefd=True) as handle:
            # A file with other hard links is copied: through them its bytes could change later.
            if delete_source and info.st_dev == self._tmp_device() and info.st_nlink == 1:
                try:
                    return self._move_in(dir_fd, path, handle, info, **options)
                except _LinkRefused:
                    handle.seek(0)  # no hard links here (filesystem or protected_hardlinks): copy
            result = self.create_from_stream(handle, size_bytes=info.st_size, **options)
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
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < -1:
            raise InvalidInput(f"invalid size_bytes {size_bytes!r}: expected a whole number >= 0, or -1 if unknown")
        if reserve_ahead_bytes is not None and (
            isinstance(reserve_ahead_bytes, bool) or not isinstance(reserve_ahead_bytes, int) or reserve_ahead_bytes < 1
        ):
            raise InvalidInput(f"invalid reserve_ahead_bytes {reserve_ahead_bytes!r}: expected a whole number >= 1")
        expires = validate_expires_at(expires_at)
        expected = validate_sha256(expected_sha256, field="expected sha256") if expected_sha256 else None
        for label, value in (("owner_agent_id", owner_agent_id), ("name", name), ("compression", compression)):
            if not isinstance(value, str):
                raise InvalidInput(f"invalid {label} {value!r}: expected a string")
        artifact_id = uuid.uuid4().hex if artifact_id is None else validate_artifact_id(artifact_id)
        existing = self.committed(artifact_id)
        if existing is not None:
            return existing
        self._check_size(size_bytes)
        self._ensure_dirs()
        tmp_path = self.tmp_dir / f"{artifact_id}.part"
        reserved = False
        held = 0  # bytes the reservation holds
        fd = -1
        inode = -1
        try:
            if size_bytes >= 0:
                held = size_bytes if reserve_ahead_bytes is None else min(size_bytes, reserve_ahead_bytes)
                self.index.reserve(artifact_id, held, self.quota_bytes, must_fit_bytes=size_bytes)
                reserved = True
            fd = self._create_part(tmp_path)
            inode = os.fstat(fd).st_ino

            def on_chunk(total: int) -> None:
                nonlocal held, reserved
                self._check_size(total)
                if 0 <= size_bytes < total:
                    raise SizeMismatch(f"body is longer than its declared {size_bytes} bytes")
                if reserve_ahead_bytes is not None and total > held:
                    grown = total + reserve_ahead_bytes
                    held = grown if size_bytes < 0 else min(size_bytes, grown)
                    self.index.reserve(artifact_id, held, self.quota_bytes)
                    reserved = True
                if progress is not None:
                    progress(total, size_bytes)

            written, sha256 = hashed_copy(source, fd, on_chunk=on_chunk, write_behind=self.fsync)
            if 0 <= size_bytes != written:
                raise SizeMismatch(f"body ended after {written} of {size_bytes} declared bytes")
            if expected and sha256 != expected:
                raise ChecksumMismatch(f"artifact checksum mismatch: expected {expected}, got {sha256}")
            if not reserved or held != written:
                self.index.reserve(artifact_id, written, self.quota_bytes)
                reserved = True
            if self.fsync:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            ref = ArtifactRef(
                host_url=self.host_url,
                artifact_id=artifact_id,
                name=name,
                size_bytes=written,
                sha256=sha256,
                compression=compression,
                created_at=time.time(),
                expires_at=expires,
                owner_agent_id=owner_agent_id,
            )
            return self._commit(tmp_path, ref, inode=inode)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            _cleanup_own(tmp_path, inode)
            if reserved:
                self.index.release(artifact_id)
            _raise_if_no_space(exc, self.root)
            raise

    def _move_in(
        self, dir_fd: int, path: Path, handle: Any, info: os.stat_result, **options: Any
    ) -> ArtifactWriteResult:
        """Hash a same-filesystem source in place, link it into the store, commit, and only
        then remove the source (no byte copied, nothing lost wherever it is interrupted).
        The source is named relative to ``dir_fd``, the directory it was opened in."""
        artifact_id = options["artifact_id"] or uuid.uuid4().hex
        artifact_id = validate_artifact_id(artifact_id)
        existing = self.committed(artifact_id)
        if existing is not None:
            return existing
        expires = validate_expires_at(options["expires_at"])
        expected = options["expected_sha256"]
        expected = validate_sha256(expected, field="expected sha256") if expected else None
        size = info.st_size
        self._check_size(size)
        progress = options["progress"]

        read = 0

        def on_chunk(done: int) -> None:
            nonlocal read
            if done > size:
                raise SizeMismatch(f"source changed while it was read: more than its {size} bytes")
            if self.fsync:  # the disk writes what the source may still hold in memory while it is hashed
                start_writeback(handle.fileno(), read, done - read)
                read = done
            if progress is not None:
                progress(done, size)

        done, sha256 = hashed_read(handle, on_chunk=on_chunk)  # one read, overlapped with hashing
        if done != size:
            raise SizeMismatch(f"source changed while it was read: {done} of {size} bytes")
        if expected and sha256 != expected:
            raise ChecksumMismatch(f"artifact checksum mismatch: expected {expected}, got {sha256}")
        self.index.reserve(artifact_id, size, self.quota_bytes)
        tmp_path = self.tmp_dir / f"{artifact_id}.part"
        try:
            self._clear_stale_part(tmp_path)
            # A second name, not a rename: the source stays where it is until the artifact is
            # committed, so an import killed at any point loses nothing (its retry clears the link).
            try:
                os.link(path.name, tmp_path, src_dir_fd=dir_fd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in _NO_LINK_ERRNOS:
                    raise _LinkRefused(path) from exc
                raise
            linked = os.lstat(tmp_path)
            if (linked.st_ino, linked.st_dev, linked.st_size) != (info.st_ino, info.st_dev, info.st_size):
                _cleanup(tmp_path)
                raise SourceUnavailable(f"artifact source was replaced while it was imported: {path}")
            os.utime(tmp_path)  # at once: a sweep must never take the new link for a stale file
            if info.st_mode & 0o022:  # the inode becomes the blob: nobody else may rewrite it
                os.chmod(tmp_path, stat.S_IMODE(info.st_mode) & ~0o022)
        except BaseException:
            self.index.release(artifact_id)
            raise
        try:
            if self.fsync:  # the source's bytes may still sit in the page cache: flush them before they count
                os.fsync(handle.fileno())
            ref = ArtifactRef(
                host_url=self.host_url,
                artifact_id=artifact_id,
                name=options["name"],
                size_bytes=size,
                sha256=sha256,
                compression=options["compression"],
                created_at=time.time(),
                expires_at=expires,
                owner_agent_id=options["owner_agent_id"],
            )
            result = self._commit(tmp_path, ref, inode=info.st_ino)
        except BaseException as exc:
            _cleanup_own(tmp_path, info.st_ino)
            if not self._metadata_path(artifact_id).exists():
                # Not committed: the source keeps its own mode and times. (Once committed, the
                # source is a second name of the blob, which must keep its safer mode.) Through
                # the open descriptor: whatever its name now leads to, it is the same inode.
                with contextlib.suppress(OSError):
                    if info.st_mode & 0o022:
                        os.fchmod(handle.fileno(), stat.S_IMODE(info.st_mode))
                    os.utime(handle.fileno(), ns=(info.st_atime_ns, info.st_mtime_ns))
            self.index.release(artifact_id)
            _raise_if_no_space(exc, self.root)
            raise
        _unlink_if_same(dir_fd, path.name, info.st_ino)
        return result

    def _commit(self, tmp_path: Path, ref: ArtifactRef, *, inode: int) -> ArtifactWriteResult:
        """Make a fully written ``.part`` visible: blob, then metadata, each renamed into place.

        The metadata is staged in ``tmp/`` first, so a crash between the two renames leaves
        a ``<id>.json.part`` behind that tells the sweep which blob is an orphan. On failure
        the bytes are back at ``tmp_path`` and the caller decides what becomes of them (a
        moved-in source is given back, not deleted).
        """
        blob_path = self._blob_path(ref.artifact_id)
        meta_path = self._metadata_path(ref.artifact_id)
        meta_tmp = self.tmp_dir / f"{ref.artifact_id}.json.part"
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
        self.index.committed(ref)
        return ArtifactWriteResult(ref=self._with_host(ref), path=blob_path)

    # ------------------------------------------------------------------ reading

    def ref(self, artifact_id: str) -> ArtifactRef:
        """The artifact's ref, carrying this store's *current* host URL."""
        path = self._metadata_path(artifact_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArtifactNotFound(f"No artifact {artifact_id!r}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TransferError(f"artifact {artifact_id!r} metadata is unreadable: {exc}") from None
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"artifact {artifact_id!r} metadata is not JSON: {exc}") from None
        ref = ArtifactRef.from_wire(payload)
        if ref.artifact_id != artifact_id:
            raise InvalidInput(f"artifact {artifact_id!r} metadata names another id {ref.artifact_id!r}")
        return self._with_host(ref)

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

    def scan(self, unreadable: list[str] | None = None) -> Iterator[ArtifactRef]:
        """Read every metadata file (a full scan); ids that fail to parse go to ``unreadable``."""
        self._ensure_dirs()
        for path in sorted(self.metadata_dir.glob("*.json")):
            try:
                yield self.ref(path.stem)
            except TransferError:
                if unreadable is not None:
                    unreadable.append(path.stem)

    def open_reader(self, artifact_id: str):
        """A binary file object over the blob (never follows a symlink)."""
        self.ref(artifact_id)
        try:
            fd = os.open(self._blob_path(artifact_id), _READ_FLAGS)
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {artifact_id!r} has metadata but no blob") from None
        except OSError as exc:  # ELOOP: the blob is a symlink
            raise TransferError(f"artifact {artifact_id!r} blob cannot be opened: {exc.strerror}") from None
        return open(fd, "rb", buffering=0, closefd=True)

    def blob_path(self, artifact_id: str) -> Path:
        self.ref(artifact_id)
        return self._blob_path(artifact_id)

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
        target_path = beneath.path if beneath is not None else Path(target)
        if beneath is None:
            target_path.parent.mkdir(parents=True, exist_ok=True)
        dir_fd = beneath.open_parent(create=True) if beneath is not None else os.open(target_path.parent, _PARENT_FLAGS)
        try:
            self._export_into(dir_fd, target_path, ref, expected, token, part_token is not None, progress)
        finally:
            os.close(dir_fd)
        return ref

    def _export_into(
        self, dir_fd: int, target_path: Path, ref: ArtifactRef, expected: str | None, token: str,
        replace_stale: bool, progress: Progress | None,
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
        blob = self._blob_path(artifact_id)
        meta = self._metadata_path(artifact_id)
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
        if self._metadata_path(artifact_id).exists():
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
        for path in (self.tmp_dir / f"{artifact_id}.part", self.tmp_dir / f"{artifact_id}.json.part"):
            with contextlib.suppress(FileNotFoundError):
                size = path.lstat().st_size
                path.unlink()
                freed += size
        if remove_committed:
            freed += self.remove(artifact_id)  # files, index entry and reservation
        elif self.committed(artifact_id) is None:  # (a whole one is recorded: its hold becomes usage)
            freed += self.finish_removal(artifact_id)
            self.index.release(artifact_id)
        return freed

    def delete_owner(self, owner_agent_id: str) -> list[ArtifactRef]:
        """Delete every artifact of ``owner_agent_id``; return the refs deleted."""
        deleted = []
        for ref in self.list(owner_agent_id=owner_agent_id):
            self.remove(ref.artifact_id)
            deleted.append(ref)
        if not isinstance(self.index, ScanIndex):  # a scan lists whole artifacts only
            for artifact_id in list(self.index.owner_ids(owner_agent_id)):
                self.finish_removal(artifact_id)  # remains of an earlier deletion that died half-way
        return deleted

    def cleanup_temporary(self, *, now: float | None = None) -> SweepReport:
        """Sweep: stale ``.part`` files, expired artifacts and orphans.

        Orphans are blobs whose commit was interrupted (found through their staged
        metadata in ``tmp/``) and, on a full scan, blobs without metadata older than the
        spool TTL and metadata without a blob. Unreadable metadata is counted, not hidden.

        ``now`` dates the expiry of artifacts only. Temporary files and orphan blobs are
        judged by the real clock: a ``.part`` may belong to an upload still in progress, and
        a sweep dated in the future must never take it.
        """
        current = time.time() if now is None else float(now)
        clock = time.time()
        self._ensure_dirs()
        report = SweepReport()
        for path in self.tmp_dir.glob("*.part"):
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if clock - info.st_mtime < self.spool_ttl_seconds or stat.S_ISDIR(info.st_mode):
                continue  # fresh, or a directory that is none of ours: never ours to remove
            _cleanup(path)
            report.parts_removed += 1
            report.bytes_freed += info.st_size
            if path.name.endswith(".json.part"):  # an interrupted commit: its blob is an orphan
                artifact_id = path.name[: -len(".json.part")]
                with contextlib.suppress(TransferError):
                    if not self._metadata_path(artifact_id).exists():
                        blob = self._blob_path(artifact_id)
                        with contextlib.suppress(FileNotFoundError):
                            report.bytes_freed += blob.stat().st_size
                            blob.unlink()
                            report.orphans_removed += 1
                            self.index.removed(artifact_id)
        for artifact_id in list(self.index.expired_ids(current)):
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
        if isinstance(self.index, ScanIndex):
            self._sweep_orphans(clock, report)
        return report

    def _sweep_orphans(self, current: float, report: SweepReport) -> None:
        """Full-scan orphan removal (the scanning index scans anyway; the Redis index
        leaves this to reindex)."""
        blobs = {path.stem: path for path in self.blobs_dir.glob("*.bin")}
        metas = {path.stem: path for path in self.metadata_dir.glob("*.json")}
        for artifact_id, blob in blobs.items():
            if artifact_id in metas:
                continue
            with contextlib.suppress(FileNotFoundError):
                info = blob.lstat()
                if current - info.st_mtime >= self.spool_ttl_seconds:
                    if (self.metadata_dir / f"{artifact_id}.json").exists():
                        continue  # committed since the listing
                    blob.unlink()
                    report.orphans_removed += 1
                    report.bytes_freed += info.st_size
        for artifact_id, meta in metas.items():
            if artifact_id in blobs:
                try:
                    self.ref(artifact_id)
                except ArtifactNotFound:
                    pass  # deleted since the listing: gone, not unreadable
                except TransferError:
                    report.unreadable_metadata += 1
                    report.unreadable_ids.append(artifact_id)
                continue
            if (self.blobs_dir / f"{artifact_id}.bin").exists():
                continue  # committed between the two listings (the blob is renamed in first)
            _cleanup(meta)
            report.orphans_removed += 1

    # ------------------------------------------------------------------ internals

    def committed(self, artifact_id: str) -> ArtifactWriteResult | None:
        """The artifact if it is fully committed (metadata and blob), else ``None``.

        A found artifact is recorded in the index again (idempotent): an import attempt
        killed between its renames and its index update is redelivered, finds its
        artifact here, and must not leave it out of the quota and owner sets.
        """
        try:
            ref = self.ref(artifact_id)
        except ArtifactNotFound:
            return None
        blob = self._blob_path(artifact_id)
        if not blob.exists():
            return None
        self.index.committed(ref)
        return ArtifactWriteResult(ref=ref, path=blob)

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
        for directory in (self.blobs_dir, self.metadata_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
            if directory.is_symlink():
                raise TransferError(f"store directory {directory} is a symlink; refusing to use it")

    def _tmp_device(self) -> int:
        return os.stat(self.tmp_dir).st_dev

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _blob_path(self, artifact_id: str) -> Path:
        return self.blobs_dir / f"{validate_artifact_id(artifact_id)}.bin"

    def _metadata_path(self, artifact_id: str) -> Path:
        return self.metadata_dir / f"{validate_artifact_id(artifact_id)}.json"


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
