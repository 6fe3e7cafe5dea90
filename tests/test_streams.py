"""Request body readers, hashed copies and exclusive temp files."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ReadOnly
from paglets_artifacts import (
    STREAM_CHUNK_BYTES,
    ChunkedRequestReader,
    InvalidInput,
    LimitedRequestReader,
    SizeMismatch,
    TransferError,
    copy_path,
    copy_stream,
    file_sha256,
)
from paglets_artifacts.store import streams
from paglets_artifacts.store.bodies import MAX_CHUNK_LINE_BYTES, MAX_CHUNK_TRAILER_BYTES
from paglets_artifacts.store.files import create_exclusive, open_exclusive, write_all
from paglets_artifacts.store.streams import hashed_copy

FRAMING_ERRORS = (InvalidInput, SizeMismatch)


class Trickle(ReadOnly):
    """A socket-like stream that hands back at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int):
        super().__init__(data)
        self.step = step

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.step
        return self._buffer.read(min(size, self.step))


def drain(reader, sizes=(STREAM_CHUNK_BYTES,)) -> bytes:
    """Read until EOF, cycling through ``sizes`` (which may include -1)."""
    out = bytearray()
    index = 0
    for _ in range(1_000_000):  # a bound, so a reader that never ends fails instead of hanging
        data = reader.read(sizes[index % len(sizes)])
        index += 1
        if not data:
            return bytes(out)
        out += data
    raise AssertionError("reader never reached EOF")


def chunk(data: bytes, ext: str = "") -> bytes:
    return f"{len(data):x}{ext}\r\n".encode() + data + b"\r\n"


# ---------------------------------------------------------------- LimitedRequestReader


def test_limited_reader_reads_exactly_the_declared_length_and_leaves_the_rest():
    source = io.BytesIO(b"hello world, and the next request")
    reader = LimitedRequestReader(source, 11)
    assert drain(reader, sizes=(4,)) == b"hello world"
    assert reader.read() == b""
    assert reader.remaining == 0
    assert source.read() == b", and the next request"


def test_limited_reader_read_all_at_once():
    assert LimitedRequestReader(io.BytesIO(b"abcdef"), 6).read() == b"abcdef"
    assert LimitedRequestReader(io.BytesIO(b"abcdef"), 6).read(None) == b"abcdef"


def test_limited_reader_zero_length_reads_nothing_from_the_source():
    source = io.BytesIO(b"untouched")
    assert LimitedRequestReader(source, 0).read() == b""
    assert source.tell() == 0


def test_limited_reader_read_zero_returns_empty_without_error():
    reader = LimitedRequestReader(io.BytesIO(b"abc"), 3)
    assert reader.read(0) == b""
    assert reader.read() == b"abc"


def test_limited_reader_follows_short_reads_of_a_socket():
    reader = LimitedRequestReader(Trickle(b"0123456789", step=3), 10)
    assert drain(reader) == b"0123456789"


def test_limited_reader_short_body_is_a_size_mismatch():
    reader = LimitedRequestReader(io.BytesIO(b"only ten b"), 20)
    assert reader.read(10) == b"only ten b"
    with pytest.raises(SizeMismatch, match="10 of 20"):
        reader.read(10)


def test_limited_reader_empty_body_with_declared_length_is_a_size_mismatch():
    with pytest.raises(SizeMismatch, match="0 of 5"):
        LimitedRequestReader(io.BytesIO(b""), 5).read()


@pytest.mark.parametrize("length", [-1, "10", 1.5, True, None])
def test_limited_reader_refuses_bad_lengths(length):
    with pytest.raises(InvalidInput, match="Content-Length"):
        LimitedRequestReader(io.BytesIO(b""), length)  # type: ignore[arg-type]


# ---------------------------------------------------------------- ChunkedRequestReader: framing


def test_chunked_reader_decodes_chunks_extensions_and_trailers():
    body = (
        b"5;name=value\r\nhello\r\n"
        b"1 ; flag\r\n \r\n"
        b"A\r\n0123456789\r\n"
        b'0;last="yes"\r\n'
        b"X-Checksum: abc\r\n"
        b"X-Other: 1\r\n"
        b"\r\n"
        b"NEXT REQUEST"
    )
    source = io.BytesIO(body)
    assert drain(ChunkedRequestReader(source)) == b"hello 0123456789"
    assert source.read() == b"NEXT REQUEST"  # the reader stops at the end of the body


def test_chunked_reader_accepts_upper_and_lower_case_hex_and_leading_zeros():
    data = bytes(range(256)) * 2
    encoded = b"00ff\r\n" + data[:255] + b"\r\n" + b"101\r\n" + data[255:] + b"\r\n" + b"0\r\n\r\n"
    assert drain(ChunkedRequestReader(io.BytesIO(encoded))) == data
    assert drain(ChunkedRequestReader(io.BytesIO(encoded.replace(b"00ff", b"00FF")))) == data


def test_chunked_reader_empty_body():
    reader = ChunkedRequestReader(io.BytesIO(b"0\r\n\r\n"))
    assert reader.read() == b""
    assert reader.read() == b""


def test_chunked_reader_read_all_returns_the_whole_body():
    encoded = chunk(b"abc") + chunk(b"defg") + b"0\r\n\r\n"
    assert ChunkedRequestReader(io.BytesIO(encoded)).read() == b"abcdefg"


def test_chunked_reader_read_zero_returns_empty():
    reader = ChunkedRequestReader(io.BytesIO(chunk(b"abc") + b"0\r\n\r\n"))
    assert reader.read(0) == b""
    assert drain(reader) == b"abc"


def test_chunked_reader_works_without_readline_and_with_trickling_sources():
    encoded = chunk(b"first") + chunk(b"second;") + b"0;x\r\nT: v\r\n\r\n"
    assert drain(ChunkedRequestReader(ReadOnly(encoded))) == b"firstsecond;"
    assert drain(ChunkedRequestReader(Trickle(encoded, step=1))) == b"firstsecond;"


def test_chunked_reader_never_returns_more_than_asked():
    encoded = chunk(b"x" * 100) + b"0\r\n\r\n"
    reader = ChunkedRequestReader(io.BytesIO(encoded))
    sizes = []
    while data := reader.read(7):
        sizes.append(len(data))
    assert max(sizes) <= 7 and sum(sizes) == 100


@pytest.mark.parametrize(
    "encoded,error,message",
    [
        (b"zz\r\nab\r\n0\r\n\r\n", InvalidInput, "bad chunk size"),
        (b"-1\r\n", InvalidInput, "bad chunk size"),
        (b"0x5\r\nabcde\r\n0\r\n\r\n", InvalidInput, "bad chunk size"),
        (b"\r\n", InvalidInput, "bad chunk size"),
        (b";ext\r\n", InvalidInput, "bad chunk size"),
        (b"1_0\r\n", InvalidInput, "bad chunk size"),
        (b"1" * 17 + b"\r\n", InvalidInput, "bad chunk size"),
        (b"5\nhello\r\n0\r\n\r\n", InvalidInput, "CRLF"),
        (b"5", InvalidInput, "CRLF"),
        (b"5\r\nhelloXY0\r\n\r\n", InvalidInput, "expected CRLF"),
        (b"5\r\nhello\n0\r\n\r\n", InvalidInput, "expected CRLF"),
        (b"5\r\nhel", SizeMismatch, "truncated"),
        (b"5\r\nhello", SizeMismatch, "truncated"),
        (b"5\r\nhello\r\n", SizeMismatch, "truncated"),
        (b"", SizeMismatch, "truncated"),
        (b"0\r\n", SizeMismatch, "final CRLF"),
        (b"0\r\nX-Trailer: v\r\n", SizeMismatch, "final CRLF"),
        (b"0\r\nX-Trailer: v\n\r\n", InvalidInput, "trailer"),
        (b"0\r\n\r", InvalidInput, "trailer"),
    ],
)
def test_chunked_reader_malformed_framing_names_the_problem(encoded, error, message):
    with pytest.raises(error, match=message):
        drain(ChunkedRequestReader(io.BytesIO(encoded)))


def test_chunked_reader_refuses_an_over_long_size_line():
    line = b"5;" + b"x" * MAX_CHUNK_LINE_BYTES + b"\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(InvalidInput, match="longer than"):
        drain(ChunkedRequestReader(io.BytesIO(line)))


def test_chunked_reader_refuses_endless_trailers():
    trailers = b"X-Pad: " + b"p" * 100 + b"\r\n"
    count = MAX_CHUNK_TRAILER_BYTES // len(trailers) + 2
    encoded = b"0\r\n" + trailers * count + b"\r\n"
    with pytest.raises(InvalidInput, match="trailers longer"):
        drain(ChunkedRequestReader(io.BytesIO(encoded)))


@pytest.mark.parametrize("sizes", [(-1,), (STREAM_CHUNK_BYTES,), (1,)])
def test_chunked_reader_huge_declared_chunk_on_a_short_stream_is_truncation(sizes):
    encoded = b"ffffffffffffffff\r\nonly a few bytes"
    with pytest.raises(SizeMismatch, match="truncated"):
        drain(ChunkedRequestReader(io.BytesIO(encoded)), sizes=sizes)


def test_chunked_reader_read_all_asks_the_source_for_bounded_pieces():
    asked = []

    class Recording(ReadOnly):
        def read(self, size=-1):
            asked.append(size)
            return super().read(size)

    encoded = b"7fffffffffffffff\r\n" + b"x" * 10
    with pytest.raises(SizeMismatch):
        ChunkedRequestReader(Recording(encoded)).read()
    assert max(asked) <= STREAM_CHUNK_BYTES


# ---------------------------------------------------------------- ChunkedRequestReader: properties

token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=8
)
extension = st.one_of(
    st.just(""),
    token.map(lambda name: f";{name}"),
    st.tuples(token, token).map(lambda pair: f";{pair[0]}={pair[1]}"),
    st.tuples(token, token).map(lambda pair: f' ; {pair[0]}="{pair[1]} ;x"'),
)
trailer = st.tuples(token, st.text(alphabet="abc xyz0123:;=", max_size=20)).map(
    lambda pair: f"{pair[0]}: {pair[1]}".encode()
)
read_sizes = st.lists(st.one_of(st.just(-1), st.integers(min_value=1, max_value=300)), min_size=1, max_size=5)


@st.composite
def chunked_bodies(draw):
    """(body, its chunked encoding) with random splits, hex case, padding, extensions and trailers."""
    body = draw(st.binary(max_size=1500))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=8)))
    bounds = [0, *cuts, len(body)]
    encoded = bytearray()
    for start, end in zip(bounds, bounds[1:], strict=False):
        piece = body[start:end]
        if not piece:
            continue  # a zero-size chunk ends the body
        size = format(len(piece), draw(st.sampled_from(["x", "X"])))
        size = "0" * draw(st.integers(min_value=0, max_value=3)) + size
        encoded += f"{size}{draw(extension)}\r\n".encode() + piece + b"\r\n"
    encoded += f"0{draw(extension)}\r\n".encode()
    for line in draw(st.lists(trailer, max_size=3)):
        encoded += line + b"\r\n"
    encoded += b"\r\n"
    return body, bytes(encoded)


def make_source(kind: str, data: bytes):
    if kind == "bytesio":
        return io.BytesIO(data)
    if kind == "readonly":
        return ReadOnly(data)
    return Trickle(data, step=int(kind))


source_kinds = st.sampled_from(["bytesio", "readonly", "1", "3", "64"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=chunked_bodies(), sizes=read_sizes, kind=source_kinds)
def test_chunked_decoding_returns_the_encoded_body(case, sizes, kind):
    body, encoded = case
    assert drain(ChunkedRequestReader(make_source(kind, encoded)), sizes=tuple(sizes)) == body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=chunked_bodies(), data=st.data(), sizes=read_sizes, kind=source_kinds)
def test_chunked_decoding_of_a_truncated_body_always_raises(case, data, sizes, kind):
    _, encoded = case
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(FRAMING_ERRORS):
        drain(ChunkedRequestReader(make_source(kind, encoded[:cut])), sizes=tuple(sizes))


@st.composite
def corruptions(draw, encoded: bytes) -> bytes:
    position = draw(st.integers(min_value=0, max_value=len(encoded)))
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    if kind == "flip" and position < len(encoded):
        byte = draw(st.integers(min_value=0, max_value=255))
        return encoded[:position] + bytes([byte]) + encoded[position + 1 :]
    if kind == "insert":
        noise = draw(st.binary(min_size=1, max_size=20) | st.sampled_from([b"\r\n", b"ffffffffffffffff", b";", b"\n"]))
        return encoded[:position] + noise + encoded[position:]
    if kind == "delete":
        end = draw(st.integers(min_value=position, max_value=len(encoded)))
        return encoded[:position] + encoded[end:]
    return encoded[:position]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=chunked_bodies(), data=st.data(), sizes=read_sizes, kind=source_kinds)
def test_chunked_decoding_of_corrupt_input_raises_only_framing_errors(case, data, sizes, kind):
    _, encoded = case
    corrupt = data.draw(corruptions(encoded))
    try:
        result = drain(ChunkedRequestReader(make_source(kind, corrupt)), sizes=tuple(sizes))
    except FRAMING_ERRORS:
        return
    assert isinstance(result, bytes)  # a corruption that kept the framing valid decodes to something


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(max_size=200), sizes=read_sizes)
def test_chunked_decoding_of_random_bytes_raises_only_framing_errors(noise, sizes):
    try:
        drain(ChunkedRequestReader(io.BytesIO(noise)), sizes=tuple(sizes))
    except FRAMING_ERRORS:
        pass


# ---------------------------------------------------------------- hashed_copy and write_all


@pytest.mark.parametrize("make", [io.BytesIO, ReadOnly], ids=["readinto", "read"])
def test_hashed_copy_writes_and_hashes_every_byte(tmp_path, make):
    data = os.urandom(3 * 1000 + 17)
    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    totals = []
    try:
        count, sha = hashed_copy(make(data), fd, on_chunk=totals.append, chunk_size=1000)
    finally:
        os.close(fd)
    assert count == len(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    assert totals[-1] == len(data)
    steps = [b - a for a, b in zip([0, *totals], totals, strict=False)]
    assert all(0 < step <= 1000 for step in steps)  # running totals, one chunk at a time


def test_hashed_copy_stops_before_writing_the_chunk_its_callback_refuses(tmp_path):
    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    accepted = []

    def cap(total: int) -> None:
        if total > 10:
            raise SizeMismatch("over")
        accepted.append(total)

    try:
        with pytest.raises(SizeMismatch):
            hashed_copy(io.BytesIO(b"a" * 25), fd, on_chunk=cap, chunk_size=10)
    finally:
        os.close(fd)
    written = target.read_bytes()
    assert len(written) <= (accepted[-1] if accepted else 0) <= 10
    assert written == b"a" * len(written)


def test_write_all_retries_partial_writes(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def short_write(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data)[:3])

    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr(streams.os, "write", short_write)
    try:
        write_all(fd, b"0123456789")
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert target.read_bytes() == b"0123456789"
    assert calls == [10, 7, 4, 1]


# ---------------------------------------------------------------- copy_stream, copy_path, file_sha256


def test_copy_stream_returns_count_and_sha256():
    data = os.urandom(STREAM_CHUNK_BYTES + 5)
    target = io.BytesIO()
    assert copy_stream(io.BytesIO(data), target) == (len(data), hashlib.sha256(data).hexdigest())
    assert target.getvalue() == data


def test_copy_stream_checks_the_expected_byte_count():
    assert copy_stream(io.BytesIO(b"abc"), io.BytesIO(), expected_bytes=3)[0] == 3
    with pytest.raises(SizeMismatch, match="expected 4, got 3"):
        copy_stream(io.BytesIO(b"abc"), io.BytesIO(), expected_bytes=4)


def test_copy_path_copies_into_new_directories_and_leaves_no_temp(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload" * 1000)
    target = tmp_path / "deep" / "er" / "target.bin"
    copy_path(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert sorted(path.name for path in target.parent.iterdir()) == ["target.bin"]


def test_copy_path_replaces_an_existing_target(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"new")
    target = tmp_path / "target.bin"
    target.write_bytes(b"old contents")
    copy_path(source, target)
    assert target.read_bytes() == b"new"


def test_copy_path_replaces_a_symlinked_target_instead_of_writing_through_it(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    source = tmp_path / "source.bin"
    source.write_bytes(b"new")
    target = tmp_path / "work" / "target.bin"
    target.parent.mkdir()
    target.symlink_to(outside)
    copy_path(source, target)
    assert outside.read_bytes() == b"keep me"
    assert not target.is_symlink() and target.read_bytes() == b"new"


def test_copy_path_failure_leaves_neither_target_nor_temp(tmp_path):
    target = tmp_path / "work" / "target.bin"
    with pytest.raises(FileNotFoundError):
        copy_path(tmp_path / "missing.bin", target)
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("size", [0, 1, STREAM_CHUNK_BYTES, STREAM_CHUNK_BYTES + 1])
def test_file_sha256_matches_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- exclusive creation


def test_create_exclusive_creates_a_new_file(tmp_path):
    path = tmp_path / "new.part"
    fd = create_exclusive(path)
    try:
        write_all(fd, b"abc")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abc"


def test_create_exclusive_refuses_an_existing_file(tmp_path):
    path = tmp_path / "taken.part"
    path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        create_exclusive(path)
    assert path.read_bytes() == b"someone else's"


@pytest.mark.parametrize("dangling", [False, True])
def test_create_exclusive_never_follows_a_symlink(tmp_path, dangling):
    outside = tmp_path / "outside.txt"
    if not dangling:
        outside.write_bytes(b"secret")
    link = tmp_path / "planted.part"
    link.symlink_to(outside)
    with pytest.raises(FileExistsError):
        create_exclusive(link)
    if dangling:
        assert not outside.exists()
    else:
        assert outside.read_bytes() == b"secret"


def test_create_exclusive_in_a_missing_directory_is_a_transfer_error(tmp_path):
    with pytest.raises(TransferError, match="cannot create temporary file"):
        create_exclusive(tmp_path / "missing" / "x.part")


def test_open_exclusive_returns_a_binary_file(tmp_path):
    path = tmp_path / "x.part"
    with open_exclusive(path) as handle:
        handle.write(b"data")
    assert path.read_bytes() == b"data"
    with pytest.raises(FileExistsError):
        open_exclusive(path)


def test_stream_module_exports_paths_as_path_objects(tmp_path):
    # copy_path accepts both str and Path arguments
    source = tmp_path / "s"
    source.write_bytes(b"1")
    copy_path(str(source), str(tmp_path / "t"))
    assert Path(tmp_path / "t").read_bytes() == b"1"


# ---------------------------------------------------------------------- readline (paglets' readers have it)


def test_limited_reader_readline_stops_at_each_line_and_at_the_declared_length():
    reader = LimitedRequestReader(io.BytesIO(b"one\ntwo\nthree\nbeyond"), 14)
    assert reader.readline() == b"one\n"
    assert reader.readline(2) == b"tw"
    assert reader.readline() == b"o\n"
    assert reader.readline() == b"three\n"
    assert reader.readline() == b""  # the declared length is reached: "beyond" is not the body's


def test_limited_reader_readline_of_a_body_that_ends_early_is_a_size_mismatch():
    reader = LimitedRequestReader(io.BytesIO(b"short\n"), 20)
    assert reader.readline() == b"short\n"
    with pytest.raises(SizeMismatch, match="6 of 20"):
        reader.readline()


def test_chunked_reader_readline_spans_chunks_and_mixes_with_read():
    body = b"5\r\nab\ncd\r\n6\r\nef\ngh\n\r\n3\r\ntai\r\n0\r\n\r\n"
    reader = ChunkedRequestReader(io.BytesIO(body))
    assert reader.readline() == b"ab\n"
    assert reader.read(1) == b"c"
    assert reader.readline() == b"def\n"
    assert reader.readline(1) == b"g"
    assert reader.readline() == b"h\n"
    assert reader.read() == b"tai"
    assert reader.readline() == b""


def test_chunked_reader_read_all_after_readline_returns_the_rest_of_the_body():
    reader = ChunkedRequestReader(io.BytesIO(b"4\r\nx\nyz\r\n2\r\n12\r\n0\r\n\r\n"))
    assert reader.readline() == b"x\n"
    assert reader.read() == b"yz12"
