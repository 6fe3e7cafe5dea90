"""Hashed copies that keep memory flat: a copy engine that overlaps reading, hashing and
writing for large inputs, and the kernel's copy where it can be verified.

Every copy here hashes the bytes it writes, so a caller can verify exactly what landed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, SizeMismatch, TransferError
from ..refs import STREAM_CHUNK_BYTES
from .files import open_exclusive, start_writeback, write_all

#: Chunk size for sources that ``readinto`` our buffers (files): large enough that
#: per-chunk overhead vanishes, small enough that the ring below stays a few MiB.
FILE_CHUNK_BYTES = 4 * 1024 * 1024
#: Chunks in flight between the reader, the hasher and the writer (bounds memory).
PIPELINE_DEPTH = 6
#: Inputs up to this size are copied on the calling thread: starting threads would cost
#: more than overlapping saves.
PIPELINE_MIN_BYTES = 8 * 1024 * 1024
#: Short reads (a socket's few KiB) are gathered until a chunk holds at least this much.
MIN_HANDOFF_BYTES = 256 * 1024
#: Idle ring buffers kept between copies, in bytes (one ring's worth).
BUFFER_POOL_BYTES = PIPELINE_DEPTH * FILE_CHUNK_BYTES


class _BufferPool:
    """Ring buffers kept between copies.

    Fresh memory costs a page fault on first touch of every page, which for a mid-size
    copy costs as much as the copy itself; reusing a few buffers pays that once per
    process. At most ``BUFFER_POOL_BYTES`` stay idle; the rest go back to the allocator.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        with self._lock:
            for index, buffer in enumerate(self._idle):
                if len(buffer) == size:
                    return self._idle.pop(index)
        return bytearray(size)

    def give(self, buffers: list[bytearray]) -> None:
        with self._lock:
            for buffer in buffers:
                if sum(map(len, self._idle)) + len(buffer) <= BUFFER_POOL_BYTES:
                    self._idle.append(buffer)


_POOL = _BufferPool()


def _no_read(size: int) -> bytes:
    raise AssertionError("read() of a source that is read with readinto()")


class _SourceChunks:
    """Reads ``source`` chunk by chunk, gathering short reads.

    A source with ``readinto`` reads straight into the buffer it is handed. A
    ``read()``-only source's ``bytes`` are passed on as they are (no copy) when they are
    big enough; short pieces are gathered into the buffer first.
    """

    def __init__(self, source: Any, min_fill: int):
        self._readinto: Callable[[memoryview], int] | None = getattr(source, "readinto", None)
        # a source with readinto() needs no read() (and may have none)
        self._read: Callable[[int], bytes] = source.read if self._readinto is None else _no_read
        self._min_fill = min_fill
        self._carry: bytes | None = None
        self._eof = False

    def next(self, size: int, buffer: Callable[[], memoryview]) -> memoryview | None:
        """The next chunk of at most about ``size`` bytes; ``None`` at the end.

        ``buffer()`` returns the (reused) buffer of at least ``size`` bytes to read into.
        """
        if self._readinto is not None:
            return self._next_readinto(buffer()[:size])
        return self._next_read(size, buffer)

    def _next_readinto(self, view: memoryview) -> memoryview | None:
        filled = 0
        want = min(self._min_fill, len(view))
        while not self._eof and filled < want:
            assert self._readinto is not None  # chosen by next() only when the source has one
            count = self._readinto(view[filled:])
            if not count:
                self._eof = True
                break
            filled += count
        return view[:filled] if filled else None

    def _next_read(self, size: int, buffer: Callable[[], memoryview]) -> memoryview | None:
        if self._carry is not None:
            data, self._carry = self._carry, None
            return memoryview(data)
        want = min(self._min_fill, size)
        view: memoryview | None = None
        filled = 0
        while not self._eof and filled < want:
            space = size - filled
            data = self._read(space)
            if not data:
                self._eof = True
                break
            if type(data) is not bytes and len(data) > space:
                data = bytes(data)
            if filled == 0 and type(data) is bytes and len(data) >= want:
                return memoryview(data)  # big enough as it is; the source never reuses a bytes object
            if len(data) > space:  # more than asked for: hand it on after what was gathered
                self._carry = data
                break
            if view is None:
                view = buffer()
            view[filled : filled + len(data)] = data  # a copy only of short or mutable pieces
            filled += len(data)
        return view[:filled] if view is not None and filled else None


class _NoKernelCopy(Exception):
    """``copy_file_range`` refused this pair of files before copying anything."""


#: errno values with which ``copy_file_range`` says "not between these files".
_NO_KERNEL_COPY_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EXDEV", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "EINVAL", "EBADF", "EPERM")
    if hasattr(errno, name)
)


#: Bytes read back from a kernel copy's target per read: small enough to stay in the CPU's
#: cache between the read and the hash, large enough that the syscalls do not count.
READBACK_BYTES = 1024 * 1024


class _Landed:
    """A chunk the kernel has copied: ``length`` bytes at ``offset`` in the target."""

    __slots__ = ("offset", "length")

    def __init__(self, offset: int, length: int):
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length


class _KernelCopy:
    """Copies one regular file into another inside the kernel (``copy_file_range``); a
    helper thread reads each chunk back from the target and hashes it, so the digest
    covers the bytes that landed.

    The kernel copies page to page without a trip through our buffers. The calling thread
    only copies, and the helper reads back in ``READBACK_BYTES`` pieces into one reused
    buffer that stays in the CPU's cache until it is hashed: the two threads' work is
    about a plain copy's and a plain hash's, and they overlap.

    Parameters:
      source(int): the source's descriptor; copying starts at its offset.
      target(int): the target's descriptor (a regular file); copying starts at its offset.
      readback(int): the target opened again for reading.
      length(int): bytes to copy (what the source held when the copy started).
      on_chunk: called with the running total *before* each chunk is copied, so a
        callback that refuses a total stops the copy before those bytes land.
      write_behind(bool): start each chunk's writeback as it lands (``start_writeback``).
    """

    def __init__(
        self,
        source: int,
        target: int,
        readback: int,
        length: int,
        on_chunk: Callable[[int], None] | None,
        write_behind: bool = False,
    ):
        self._source = source
        self._target = target
        self._readback = readback
        self._start = os.lseek(target, 0, os.SEEK_CUR)
        self._length = length
        self._on_chunk = on_chunk
        self._write_behind = write_behind
        self.copied = 0

    @classmethod
    def open(
        cls, source: Any, fd: int, length: int, on_chunk: Callable[[int], None] | None, write_behind: bool = False
    ) -> _KernelCopy | None:
        """A copier when the kernel can copy between these two files, else ``None``."""
        if not (hasattr(os, "copy_file_range") and hasattr(os, "preadv")) or type(source) is not io.FileIO:
            return None  # a buffered source may hold bytes its descriptor has already passed
        try:
            target_info = os.fstat(fd)
            if not stat.S_ISREG(target_info.st_mode):
                return None
            readback = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            readback_info = os.fstat(readback)
            if (readback_info.st_dev, readback_info.st_ino) != (target_info.st_dev, target_info.st_ino):
                raise OSError("not the same file")
            os.copy_file_range(source.fileno(), fd, 0)  # refuses unsupported pairs up front
            return cls(source.fileno(), fd, readback, length, on_chunk, write_behind)
        except OSError:
            os.close(readback)
            return None

    def close(self) -> None:
        os.close(self._readback)

    def next(self, size: int, buffer: Callable[[], memoryview]) -> _Landed | None:
        """Copy the next chunk of at most ``size`` bytes; ``None`` at the end. (``buffer``,
        the pipeline's ring buffer, is not needed: the bytes never pass through ours.)"""
        want = min(size, self._length - self.copied)
        if want <= 0:
            return None
        if self._on_chunk is not None:
            self._on_chunk(self.copied + want)
        done = 0
        while done < want:
            try:
                count = os.copy_file_range(self._source, self._target, want - done)
            except OSError as exc:
                if self.copied == 0 and done == 0 and exc.errno in _NO_KERNEL_COPY_ERRNOS:
                    raise _NoKernelCopy() from exc
                raise
            if not count:
                break  # the source ended sooner than it was long
            done += count
        if not done:
            self._length = self.copied
            return None
        landed = _Landed(self._start + self.copied, done)
        if self._write_behind:
            start_writeback(self._target, landed.offset, done)
        self.copied += done
        return landed

    def hasher(self, digest: Any) -> Callable[[_Landed], None]:
        """The stage that reads each landed chunk back from the target into ``digest``.

        It trails the copy by up to ``PIPELINE_DEPTH`` chunks. A target cut below a chunk
        not yet read back is a ``TransferError``; a target cut and then written past again
        (by something other than this copy: the store's ``.part`` files are its own) reads
        back as it then is, zeros where it was cut, and the digest still matches the file.
        """
        view = memoryview(bytearray(min(READBACK_BYTES, max(self._length, 1))))

        def hash_landed(chunk: _Landed) -> None:
            offset, end = chunk.offset, chunk.offset + chunk.length
            while offset < end:
                count = os.preadv(self._readback, [view[: min(len(view), end - offset)]], offset)
                if not count:
                    raise TransferError("the copy's target shrank while it was being written")
                digest.update(view[:count])
                offset += count

        return hash_landed


def _remaining_bytes(source: Any) -> int | None:
    """Bytes left in ``source`` when it is a regular file, else ``None`` (only a hint)."""
    try:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - source.tell())
    except (AttributeError, OSError, ValueError):
        return None


class _Pipeline:
    """Reads on the calling thread while one helper thread hashes and another writes.

    Parameters:
      chunks: where the chunks come from (a ``_SourceChunks``'s buffers, or the ranges a
        ``_KernelCopy`` copied); it fills the ring buffers it is handed, if any.
      stages: (name, callable) pairs; each callable consumes every chunk in order on a
        thread of its own named ``paglets-artifacts-copy-<name>``.
      on_chunk: called on the calling thread with the running total after a chunk is
        read and before any stage sees it; it may raise to stop the copy.
      chunk_size(int): size of each ring buffer.
      depth(int): ring buffers; a buffer is refilled only after every stage is done with it.

    Any error (the source's, ``on_chunk``'s, a stage's) stops every thread before it
    propagates from :meth:`run`; no thread outlives the call.
    """

    def __init__(
        self,
        chunks: _SourceChunks | _KernelCopy,
        stages: list[tuple[str, Callable[[Any], Any]]],
        *,
        on_chunk: Callable[[int], None] | None,
        chunk_size: int,
        depth: int,
    ):
        self._chunks = chunks
        self._stages = stages
        self._on_chunk = on_chunk
        self._size = chunk_size
        self._depth = depth
        self._buffers: list[bytearray | None] = [None] * depth
        self._slots: list[Any] = [None] * depth  # a chunk: a memoryview, or a landed kernel copy
        self._cond = threading.Condition()
        self._produced = 0  # chunks handed to the stages
        self._consumed = [0] * len(stages)  # chunks each stage has finished
        self._finished = False  # the reader is done (at the end, or stopped)
        self._error: BaseException | None = None

    def run(self, total: int) -> int:
        """Copy the rest of the source; return ``total`` plus the bytes copied."""
        threads = [
            threading.Thread(target=self._consume, args=(index,), name=f"paglets-artifacts-copy-{name}", daemon=True)
            for index, (name, _) in enumerate(self._stages)
        ]
        for thread in threads:
            thread.start()
        try:
            index = 0
            while True:
                slot = index % self._depth
                self._wait_for_slot(index)
                chunk = self._chunks.next(self._size, functools.partial(self._buffer, slot))
                if chunk is None:
                    break
                total += len(chunk)
                if self._on_chunk is not None:
                    self._on_chunk(total)
                index += 1
                with self._cond:
                    self._slots[slot] = chunk
                    self._produced = index
                    self._cond.notify_all()
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()
            for thread in threads:
                thread.join()
            self._slots = [None] * self._depth
            _POOL.give([buffer for buffer in self._buffers if buffer is not None])
            self._buffers = [None] * self._depth
        if self._error is not None:
            raise self._error
        return total

    def _buffer(self, slot: int) -> memoryview:
        buffer = self._buffers[slot]
        if buffer is None:  # taken on first use: read()-only sources rarely need one
            buffer = self._buffers[slot] = _POOL.take(self._size)
        return memoryview(buffer)

    def _wait_for_slot(self, index: int) -> None:
        reusable = index - self._depth  # the chunk that last used this slot
        with self._cond:
            while self._error is None and min(self._consumed) <= reusable:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def _consume(self, stage_index: int) -> None:
        stage = self._stages[stage_index][1]
        index = 0
        try:
            while True:
                with self._cond:
                    while self._error is None and self._produced <= index and not self._finished:
                        self._cond.wait()
                    if self._error is not None or self._produced <= index:
                        return
                    chunk = self._slots[index % self._depth]
                stage(chunk)
                index += 1
                with self._cond:
                    self._consumed[stage_index] = index
                    self._cond.notify_all()
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()


def _writer(fd: int, write_behind: bool) -> Callable[[memoryview], None]:
    """Writes each chunk it is given to ``fd``; with ``write_behind``, also starts writing
    the chunk to disk (``start_writeback``) as soon as it is in the file."""
    offset = -1
    if write_behind:
        with contextlib.suppress(OSError):  # not seekable (a pipe): no range to name
            offset = os.lseek(fd, 0, os.SEEK_CUR)
    if offset < 0:
        return lambda chunk: write_all(fd, chunk)

    def write(chunk: memoryview) -> None:
        nonlocal offset
        write_all(fd, chunk)
        start_writeback(fd, offset, len(chunk))
        offset += len(chunk)

    return write


def _hashed_stream(
    source: Any,
    fd: int | None,
    on_chunk: Callable[[int], None] | None,
    chunk_size: int | None,
    write_behind: bool = False,
) -> tuple[int, str]:
    if chunk_size is None:
        chunk_size = FILE_CHUNK_BYTES if hasattr(source, "readinto") else STREAM_CHUNK_BYTES
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInput(f"invalid chunk_size {chunk_size!r}: expected a whole number >= 1")
    digest = hashlib.sha256()
    chunks = _SourceChunks(source, min(MIN_HANDOFF_BYTES, chunk_size))
    remaining = _remaining_bytes(source)
    total = 0
    if fd is not None and remaining is not None and remaining > PIPELINE_MIN_BYTES:
        copier = _KernelCopy.open(source, fd, remaining, on_chunk, write_behind)
        if copier is not None:
            try:
                hashing = [("hash", copier.hasher(digest))]
                pipeline = _Pipeline(copier, hashing, on_chunk=None, chunk_size=chunk_size, depth=PIPELINE_DEPTH)
                total = pipeline.run(0)
            except _NoKernelCopy:
                pass  # refused before a byte was copied: copy through our buffers instead
            finally:
                copier.close()
            remaining = _remaining_bytes(source)  # usually 0: whatever the source gained meanwhile
    write = _writer(fd, write_behind) if fd is not None else None
    if remaining is None or remaining <= PIPELINE_MIN_BYTES:
        # Small or of unknown size: start on this thread; a known-small file never leaves it.
        # A buffer no bigger than the file (plus one byte to see its end), but not tiny:
        # after a kernel copy ``remaining`` is usually 0, yet a growing source may go on.
        size = min(chunk_size, STREAM_CHUNK_BYTES, chunk_size if remaining is None else max(remaining + 1, 64 * 1024))
        buffer: memoryview | None = None

        def inline_buffer() -> memoryview:
            nonlocal buffer
            if buffer is None:
                buffer = memoryview(bytearray(size))
            return buffer

        while remaining is not None or total < PIPELINE_MIN_BYTES:
            chunk = chunks.next(size, inline_buffer)
            if chunk is None:
                return total, digest.hexdigest()
            total += len(chunk)
            if on_chunk is not None:
                on_chunk(total)
            digest.update(chunk)
            if write is not None:
                write(chunk)
    stages: list[tuple[str, Callable[[memoryview], Any]]] = [("hash", digest.update)]
    if write is not None:
        stages.append(("write", write))
    pipeline = _Pipeline(chunks, stages, on_chunk=on_chunk, chunk_size=chunk_size, depth=PIPELINE_DEPTH)
    total = pipeline.run(total)
    return total, digest.hexdigest()


def hashed_copy(
    source: Any,
    fd: int,
    *,
    on_chunk: Callable[[int], None] | None = None,
    chunk_size: int | None = None,
    write_behind: bool = False,
) -> tuple[int, str]:
    """Copy ``source`` into the open file descriptor ``fd``; return (bytes, sha256 hex).

    The digest covers exactly the bytes that land in ``fd``, and hashing overlaps the I/O,
    so a large copy takes about as long as the slower of the two:

    - a raw regular file (``io.FileIO``) into a regular file is copied by the kernel
      (``copy_file_range``); each chunk is read back from ``fd``'s file and hashed on a
      helper thread while the next one is copied;
    - anything else is read on the calling thread into reused buffers (``read()``-only
      sources' bytes are passed on as they are) while one helper thread hashes and another
      writes, the digest being taken over the very buffers handed to ``os.write``;
    - inputs up to ``PIPELINE_MIN_BYTES`` stay on the calling thread.

    Memory stays at a few chunks whatever the size. ``on_chunk(total_so_far)`` runs on the
    calling thread after each chunk is read and before it is hashed or written (for a
    kernel copy: before the chunk is copied, with the total it will bring): it may raise
    to stop the copy (a size cap) or report progress. ``chunk_size`` defaults to
    ``FILE_CHUNK_BYTES`` for sources with ``readinto`` and ``STREAM_CHUNK_BYTES`` for
    ``read()``-only ones. ``write_behind``, for a caller that will ``fsync`` ``fd``,
    starts writing each chunk to disk as it lands (``start_writeback``), so that the disk
    works while the rest is copied and hashed and the ``fsync`` has little left to wait for.
    """
    return _hashed_stream(source, fd, on_chunk, chunk_size, write_behind)


def hashed_read(
    source: Any,
    *,
    on_chunk: Callable[[int], None] | None = None,
    chunk_size: int | None = None,
) -> tuple[int, str]:
    """Read ``source`` to its end; return (bytes, sha256 hex). Reading overlaps hashing
    for large inputs, as in :func:`hashed_copy`."""
    return _hashed_stream(source, None, on_chunk, chunk_size)


def copy_stream(source: Any, target: Any, *, expected_bytes: int | None = None) -> tuple[int, str]:
    """Copy a readable stream into a writable one; return (bytes, sha256 hex).

    A byte count other than ``expected_bytes`` (when given) is a ``SizeMismatch``.
    """
    digest = hashlib.sha256()
    written = 0
    while True:
        chunk = source.read(STREAM_CHUNK_BYTES)
        if not chunk:
            break
        target.write(chunk)
        digest.update(chunk)
        written += len(chunk)
    if expected_bytes is not None and written != expected_bytes:
        raise SizeMismatch(f"artifact size mismatch: expected {expected_bytes}, got {written}")
    return written, digest.hexdigest()


def copy_path(source: str | Path, target: str | Path) -> None:
    """Copy a file so that ``target`` appears whole or not at all."""
    target_path = Path(target)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target_path.with_name(f".{target_path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(source, "rb") as src, open_exclusive(tmp_path) as fd_file:
            shutil.copyfileobj(src, fd_file, STREAM_CHUNK_BYTES)
        os.replace(tmp_path, target_path)
    except Exception:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def file_sha256(path: str | Path) -> str:
    """SHA-256 (lowercase hex) of a file's bytes; reading overlaps hashing for large files."""
    with open(path, "rb", buffering=0) as handle:
        return hashed_read(handle)[1]
