"""Streaming: HTTP request body readers and hashed copies that keep memory flat.

Every copy here hashes the bytes it writes, so a caller can verify exactly what landed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InvalidInput, SizeMismatch, TransferError
from .refs import STREAM_CHUNK_BYTES

#: Longest chunk-size line (size, extensions, CRLF) a chunked body may carry.
MAX_CHUNK_LINE_BYTES = 4096
#: Longest trailer section a chunked body may carry before its final CRLF.
MAX_CHUNK_TRAILER_BYTES = 16 * 1024

_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class LimitedRequestReader:
    """Reads exactly ``length`` bytes of a request body from ``source``.

    Parameters:
      source: a binary stream with ``read(n)`` (a socket file, ``wsgi.input``, ...).
      length(int): the declared ``Content-Length``; a body that ends sooner is a
        ``SizeMismatch`` instead of a silently short artifact.
    """

    def __init__(self, source: Any, length: int):
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise InvalidInput(f"invalid Content-Length {length!r}: expected a whole number >= 0")
        self._source = source
        self.length = length
        self.remaining = length

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0 or size == 0:
            return b""
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._source.read(want)
        if not data:
            got = self.length - self.remaining
            raise SizeMismatch(f"request body ended after {got} of {self.length} declared bytes")
        self.remaining -= len(data)
        return bytes(data)


class ChunkedRequestReader:
    """Decodes a ``Transfer-Encoding: chunked`` body from ``source``.

    Parameters:
      source: a binary stream with ``read(n)`` and preferably ``readline(limit)``.

    Malformed framing (a size that is not hex, a missing CRLF, an over-long size line,
    a truncated chunk) raises ``InvalidInput`` or ``SizeMismatch``: never a hang or a
    partial artifact taken for a whole one.
    """

    def __init__(self, source: Any):
        self._source = source
        self._left = 0  # bytes left in the current chunk
        self._done = False

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while not self._done and (size is None or size < 0 or len(out) < size):
            if self._left == 0:
                self._left = self._next_chunk_size()
                if self._left == 0:
                    self._read_trailers()
                    self._done = True
                    break
            # read(-1) still asks the source for bounded pieces: a declared chunk size can be huge
            limit = STREAM_CHUNK_BYTES if size is None or size < 0 else size - len(out)
            want = min(self._left, limit)
            data = self._source.read(want)
            if not data:
                raise SizeMismatch(f"chunked body truncated: {self._left} bytes of the current chunk never arrived")
            out += data
            self._left -= len(data)
            if self._left == 0:
                self._expect_crlf()
            if out and size is not None and size >= 0:
                break  # hand back what one chunk gave; callers loop
        return bytes(out)

    def _readline(self, limit: int) -> bytes:
        readline = getattr(self._source, "readline", None)
        if readline is not None:
            return bytes(readline(limit))
        line = bytearray()
        while len(line) < limit:
            byte = self._source.read(1)
            if not byte:
                break
            line += byte
            if byte == b"\n":
                break
        return bytes(line)

    def _next_chunk_size(self) -> int:
        line = self._readline(MAX_CHUNK_LINE_BYTES + 1)
        if not line:
            raise SizeMismatch("chunked body truncated: the stream ended before the last chunk")
        if not line.endswith(b"\r\n"):
            if len(line) > MAX_CHUNK_LINE_BYTES:
                raise InvalidInput(f"chunked body: chunk size line longer than {MAX_CHUNK_LINE_BYTES} bytes")
            raise InvalidInput(f"chunked body: chunk size line {line[:40]!r} does not end with CRLF")
        size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or not _HEXDIGITS.issuperset(size_text):
            raise InvalidInput(f"chunked body: bad chunk size {size_text[:40]!r}: expected hex digits")
        return int(size_text, 16)

    def _expect_crlf(self) -> None:
        tail = self._source.read(2)
        if len(tail) == 1:
            tail += self._source.read(1)
        if tail != b"\r\n":
            if not tail:
                raise SizeMismatch("chunked body truncated: missing CRLF after a chunk")
            raise InvalidInput(f"chunked body: expected CRLF after chunk data, got {tail!r}")

    def _read_trailers(self) -> None:
        total = 0
        while True:
            line = self._readline(MAX_CHUNK_LINE_BYTES + 1)
            if not line:
                raise SizeMismatch("chunked body truncated: missing final CRLF")
            if not line.endswith(b"\r\n"):
                raise InvalidInput("chunked body: trailer line does not end with CRLF")
            if line == b"\r\n":
                return
            total += len(line)
            if total > MAX_CHUNK_TRAILER_BYTES:
                raise InvalidInput(f"chunked body: trailers longer than {MAX_CHUNK_TRAILER_BYTES} bytes")


def write_all(fd: int, data: memoryview | bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def hashed_copy(
    source: Any,
    fd: int,
    *,
    on_chunk: Callable[[int], None] | None = None,
    chunk_size: int = STREAM_CHUNK_BYTES,
) -> tuple[int, str]:
    """Copy ``source`` into the open file descriptor ``fd``; return (bytes, sha256 hex).

    ``on_chunk(total_so_far)`` runs after each chunk is read and before it is written:
    it may raise to stop the copy (a size cap) or report progress. One buffer is reused,
    so memory stays at one chunk whatever the size.
    """
    digest = hashlib.sha256()
    total = 0
    readinto = getattr(source, "readinto", None)
    buffer = bytearray(chunk_size) if readinto is not None else None
    view = memoryview(buffer) if buffer is not None else None
    while True:
        if readinto is not None:
            count = readinto(view)
            if not count:
                break
            chunk = view[:count]
        else:
            data = source.read(chunk_size)
            if not data:
                break
            chunk = memoryview(data)
            count = len(chunk)
        total += count
        if on_chunk is not None:
            on_chunk(total)
        digest.update(chunk)
        write_all(fd, chunk)
    return total, digest.hexdigest()


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
    """SHA-256 (lowercase hex) of a file's bytes, read in reused chunks."""
    digest = hashlib.sha256()
    buffer = bytearray(STREAM_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(view):
            digest.update(view[:count])
    return digest.hexdigest()


_EXCLUSIVE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_exclusive(path: Path, mode: int = 0o644) -> int:
    """Create ``path`` for writing; fail if anything (a file, a planted symlink) is there."""
    try:
        return os.open(path, _EXCLUSIVE_FLAGS, mode)
    except FileExistsError:
        raise
    except OSError as exc:
        raise TransferError(f"cannot create temporary file {path}: {exc.strerror}") from exc


def open_exclusive(path: Path):
    """``create_exclusive`` as a binary file object."""
    return os.fdopen(create_exclusive(path), "wb")
