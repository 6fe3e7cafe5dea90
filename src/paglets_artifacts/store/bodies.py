"""HTTP request bodies as readable streams: a body of a declared length, and a chunked
body decoded with bounds on its framing (chunk-size lines, trailers)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput, SizeMismatch
from ..refs import STREAM_CHUNK_BYTES

#: Longest chunk-size line (size, extensions, CRLF) a chunked body may carry.
MAX_CHUNK_LINE_BYTES = 4096
#: Longest trailer section a chunked body may carry before its final CRLF.
MAX_CHUNK_TRAILER_BYTES = 16 * 1024

_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class LimitedRequestReader:
    """Reads exactly ``remaining`` bytes of a request body from ``source``.

    Parameters:
      source: a binary stream with ``read(n)`` (a socket file, ``wsgi.input``, ...) and,
        for :meth:`readline`, ``readline(limit)``.
      remaining(int): the declared ``Content-Length``; a body that ends sooner is a
        ``SizeMismatch`` instead of a silently short artifact.
    """

    def __init__(self, source: Any, remaining: int):
        if isinstance(remaining, bool) or not isinstance(remaining, int) or remaining < 0:
            raise InvalidInput(f"invalid Content-Length {remaining!r}: expected a whole number >= 0")
        self._source = source
        self.length = remaining
        self.remaining = remaining

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0 or size == 0:
            return b""
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        return self._take(self._source.read(want))

    def readline(self, size: int = -1) -> bytes:
        """One line of the body (up to and including ``\\n``), never past its end."""
        if self.remaining <= 0 or size == 0:
            return b""
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        return self._take(self._source.readline(want))

    def _take(self, data: bytes) -> bytes:
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
        self._pending = bytearray()  # read past a line's end by readline(), handed out first

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            return self._read_decoded(size)
        if size is None or size < 0:
            data = bytes(self._pending) + self._read_decoded(-1)
            self._pending.clear()
            return data
        data = bytes(self._pending[:size])
        del self._pending[:size]
        if len(data) < size:  # filled across chunks, as read(n) is everywhere else
            data += self._read_decoded(size - len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        """One line of the decoded body (up to and including ``\\n``, at most ``size`` bytes)."""
        limit = None if size is None or size < 0 else size
        line = bytearray()
        while limit is None or len(line) < limit:
            piece = self.read(STREAM_CHUNK_BYTES if limit is None else limit - len(line))
            if not piece:
                break
            newline = piece.find(b"\n")
            if newline >= 0:
                line += piece[: newline + 1]
                self._pending[:0] = piece[newline + 1 :]
                break
            line += piece
        return bytes(line)

    def _read_decoded(self, size: int) -> bytes:
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
        # read(n) fills n bytes across chunks unless the body ends first, as paglets' reader
        # and a buffered file do (a caller may read a fixed-size header in one call)
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
