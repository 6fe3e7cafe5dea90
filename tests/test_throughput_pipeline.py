"""The overlapped copy: hashed_copy and hashed_read read on the calling thread while helper
threads hash and write. Every byte lands, the digest is hashlib's, memory stays bounded,
and any error stops every helper thread before it reaches the caller."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ReadOnly
from paglets_artifacts.errors import ArtifactTooLarge, SizeMismatch, TransferError
from paglets_artifacts.store import files, streams
from paglets_artifacts.store.artifacts import ArtifactStore
from paglets_artifacts.store.bodies import LimitedRequestReader
from paglets_artifacts.store.streams import file_sha256, hashed_copy, hashed_read

CHUNK = 4096
HOST = "http://127.0.0.1:8470"

pytestmark = pytest.mark.timeout(120)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("paglets-artifacts-copy")]


@pytest.fixture
def pipelined(monkeypatch):
    """Small chunks, and the pipeline from the first byte, so small inputs exercise it."""
    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", 0)
    monkeypatch.setattr(streams, "MIN_HANDOFF_BYTES", CHUNK)
    baseline = threading.active_count()
    yield
    assert copy_threads() == []
    assert threading.active_count() == baseline


class Trickle(ReadOnly):
    """``read()`` only, short reads of random length (a socket)."""

    def __init__(self, data: bytes, seed: int = 7):
        super().__init__(data)
        self._random = random.Random(seed)

    def read(self, size: int = -1) -> bytes:
        step = self._random.choice([1, 7, 100, 1000, CHUNK - 1, CHUNK, 3 * CHUNK])
        return self._buffer.read(step if size is None or size < 0 else min(size, step))


class ReusedBuffer(ReadOnly):
    """``read()`` that hands back the same bytearray every time, overwritten by the next read."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self._scratch = bytearray(CHUNK)

    def read(self, size: int = -1) -> bytearray:
        data = self._buffer.read(min(size, CHUNK) if size and size > 0 else CHUNK)
        self._scratch[: len(data)] = data
        return self._scratch[: len(data)] if len(data) < CHUNK else self._scratch


class Oversized(ReadOnly):
    """``read(n)`` that ignores ``n`` now and then and returns more."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self._calls = 0

    def read(self, size: int = -1) -> bytes:
        self._calls += 1
        return self._buffer.read(3 * CHUNK if self._calls % 3 == 0 else 10)


class Failing(ReadOnly):
    """Raises after ``after`` bytes."""

    def __init__(self, data: bytes, after: int):
        super().__init__(data)
        self._after = after
        self._given = 0

    def read(self, size: int = -1) -> bytes:
        if self._given >= self._after:
            raise ConnectionResetError("peer went away")
        data = self._buffer.read(min(size, CHUNK))
        self._given += len(data)
        return data


class Endless:
    """``readinto`` that never reaches the end."""

    def __init__(self):
        self.given = 0

    def readinto(self, view) -> int:
        view[:] = b"e" * len(view)
        self.given += len(view)
        return len(view)


SOURCES = {
    "readinto": io.BytesIO,
    "read": ReadOnly,
    "short-reads": Trickle,
    "reused-bytearray": ReusedBuffer,
    "oversized-reads": Oversized,
    "request-body": lambda data: LimitedRequestReader(io.BytesIO(data), len(data)),
}
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 17, 40 * CHUNK + 3]


def copy_into(tmp_path: Path, source, **options) -> tuple[int, str, bytes]:
    target = tmp_path / "out.bin"
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        count, digest = hashed_copy(source, fd, **options)
    finally:
        os.close(fd)
    return count, digest, target.read_bytes()


@pytest.mark.parametrize("kind", sorted(SOURCES))
@pytest.mark.parametrize("size", SIZES)
def test_every_byte_lands_and_the_digest_is_hashlibs(tmp_path, pipelined, kind, size):
    data = os.urandom(size)
    totals = []
    count, digest, landed = copy_into(tmp_path, SOURCES[kind](data), on_chunk=totals.append, chunk_size=CHUNK)
    assert (count, digest) == (size, sha(data))
    assert landed == data
    assert totals == sorted(totals) and (totals[-1] if totals else 0) == size


@pytest.mark.parametrize("kind", sorted(SOURCES))
@pytest.mark.parametrize("size", SIZES)
def test_hashed_read_matches_hashlib(pipelined, kind, size):
    data = os.urandom(size)
    assert hashed_read(SOURCES[kind](data), chunk_size=CHUNK) == (size, sha(data))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("kind", ["readinto", "short-reads"])
def test_any_ring_depth_copies_every_byte(tmp_path, pipelined, monkeypatch, depth, kind):
    monkeypatch.setattr(streams, "PIPELINE_DEPTH", depth)
    data = os.urandom(40 * CHUNK + 3)
    assert copy_into(tmp_path, SOURCES[kind](data), chunk_size=CHUNK) == (len(data), sha(data), data)


@pytest.mark.parametrize("size", [0, 1, CHUNK + 1, 9 * 1024 * 1024 + 5])
def test_files_use_the_default_chunks_and_match_hashlib(tmp_path, size):
    data = os.urandom(size)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    for opener in (lambda: open(source, "rb", buffering=0), lambda: open(source, "rb")):
        with opener() as handle:
            count, digest, landed = copy_into(tmp_path, handle)
        assert (count, digest, landed == data) == (size, sha(data), True)
    assert file_sha256(source) == sha(data)
    assert copy_threads() == []


def test_a_file_read_from_the_middle_copies_only_the_rest(tmp_path, pipelined):
    data = os.urandom(10 * CHUNK)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    with open(source, "rb", buffering=0) as handle:
        handle.seek(3 * CHUNK + 1)
        count, digest, landed = copy_into(tmp_path, handle, chunk_size=CHUNK)
    assert (count, digest, landed) == (len(data) - 3 * CHUNK - 1, sha(data[3 * CHUNK + 1 :]), data[3 * CHUNK + 1 :])


def test_small_inputs_start_no_thread(tmp_path, monkeypatch):
    def no_threads(*args, **kwargs):
        raise AssertionError("a small copy started a thread")

    monkeypatch.setattr(streams.threading, "Thread", no_threads)
    data = os.urandom(100_000)
    source = tmp_path / "small.bin"
    source.write_bytes(data)
    with open(source, "rb", buffering=0) as handle:
        assert copy_into(tmp_path, handle)[1] == sha(data)
    assert copy_into(tmp_path, io.BytesIO(data))[1] == sha(data)
    assert hashed_read(ReadOnly(data)) == (len(data), sha(data))


def test_large_inputs_hash_and_write_on_helper_threads(tmp_path, monkeypatch):
    seen = []
    real_write_all = streams.write_all

    def recording_write_all(fd, chunk):
        seen.append(threading.current_thread().name)
        real_write_all(fd, chunk)

    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", CHUNK)
    monkeypatch.setattr(streams, "write_all", recording_write_all)
    data = os.urandom(20 * CHUNK)
    count, digest, landed = copy_into(tmp_path, io.BytesIO(data), chunk_size=CHUNK)
    assert (count, digest, landed == data) == (len(data), sha(data), True)
    assert seen[0] == threading.current_thread().name  # the first bytes, before the size is known
    assert set(seen[1:]) == {"paglets-artifacts-copy-write"}
    assert copy_threads() == []


# ---------------------------------------------------------------- file to file: the kernel copies


@pytest.fixture
def kernel_copies(monkeypatch):
    """Counts copy_file_range calls; small files take the kernel path."""
    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", CHUNK)
    calls = []
    real = os.copy_file_range

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(streams.os, "copy_file_range", counting)
    baseline = threading.active_count()
    yield calls
    assert copy_threads() == []
    assert threading.active_count() == baseline


def write_source(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", [CHUNK + 1, 5 * CHUNK, 40 * CHUNK + 3])
def test_a_file_into_a_file_is_copied_by_the_kernel_and_hashed_as_it_landed(tmp_path, kernel_copies, size):
    data = os.urandom(size)
    totals = []
    with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
        count, digest, landed = copy_into(tmp_path, handle, on_chunk=totals.append, chunk_size=CHUNK)
    assert (count, digest, landed == data) == (size, sha(data), True)
    assert any(kernel_copies)  # not only the zero-length probe
    assert totals == sorted(totals) and totals[-1] == size


def test_a_kernel_copy_starts_at_both_files_offsets(tmp_path, kernel_copies):
    data = os.urandom(20 * CHUNK)
    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"header")
        with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
            handle.seek(CHUNK + 5)
            count, digest = hashed_copy(handle, fd, chunk_size=CHUNK)
    finally:
        os.close(fd)
    assert (count, digest) == (len(data) - CHUNK - 5, sha(data[CHUNK + 5 :]))
    assert target.read_bytes() == b"header" + data[CHUNK + 5 :]
    assert any(kernel_copies)


def test_a_buffered_source_is_not_copied_behind_its_buffer(tmp_path, kernel_copies):
    data = os.urandom(20 * CHUNK)
    with open(write_source(tmp_path, data), "rb") as handle:
        assert handle.read(10) == data[:10]  # the rest of a buffer-full sits in the reader
        count, digest, landed = copy_into(tmp_path, handle, chunk_size=CHUNK)
    assert (count, digest, landed) == (len(data) - 10, sha(data[10:]), data[10:])
    assert kernel_copies == []


@pytest.mark.parametrize("refusal", ["probe", "first copy"])
def test_a_refused_kernel_copy_falls_back_to_our_buffers(tmp_path, monkeypatch, refusal):
    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", CHUNK)
    real = os.copy_file_range

    def refusing(source, target, count, *args):
        if refusal == "probe" or count:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(source, target, count, *args)

    monkeypatch.setattr(streams.os, "copy_file_range", refusing)
    data = os.urandom(20 * CHUNK + 1)
    with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
        assert copy_into(tmp_path, handle, chunk_size=CHUNK) == (len(data), sha(data), data)
    assert copy_threads() == []


def test_a_kernel_copy_error_after_the_first_chunk_propagates(tmp_path, kernel_copies, monkeypatch):
    real = os.copy_file_range
    calls = []

    def failing(source, target, count, *args):
        calls.append(count)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target, count, *args)

    monkeypatch.setattr(streams.os, "copy_file_range", failing)
    with open(write_source(tmp_path, os.urandom(20 * CHUNK)), "rb", buffering=0) as handle:
        with pytest.raises(OSError, match="No space left"):
            copy_into(tmp_path, handle, chunk_size=CHUNK)


def test_a_kernel_copy_stops_before_copying_a_chunk_on_chunk_refuses(tmp_path, kernel_copies):
    data = os.urandom(30 * CHUNK)

    def cap(total: int) -> None:
        if total > 10 * CHUNK:
            raise SizeMismatch("over the cap")

    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
            with pytest.raises(SizeMismatch):
                hashed_copy(handle, fd, on_chunk=cap, chunk_size=CHUNK)
    finally:
        os.close(fd)
    assert target.read_bytes() == data[: 10 * CHUNK]


def test_a_source_that_grows_during_a_kernel_copy_is_copied_to_its_new_end(tmp_path, kernel_copies):
    data = os.urandom(10 * CHUNK)
    extra = os.urandom(3 * CHUNK + 7)
    source = write_source(tmp_path, data)

    def grow(total: int) -> None:
        if total == CHUNK:
            with open(source, "ab") as more:
                more.write(extra)

    with open(source, "rb", buffering=0) as handle:
        count, digest, landed = copy_into(tmp_path, handle, on_chunk=grow, chunk_size=CHUNK)
    assert (count, digest, landed) == (len(data + extra), sha(data + extra), data + extra)


def test_a_source_that_shrinks_during_a_kernel_copy_yields_the_bytes_that_landed(tmp_path, kernel_copies):
    data = os.urandom(10 * CHUNK)
    source = write_source(tmp_path, data)

    def shrink(total: int) -> None:
        if total == 2 * CHUNK:
            os.truncate(source, 3 * CHUNK + 1)

    with open(source, "rb", buffering=0) as handle:
        count, digest, landed = copy_into(tmp_path, handle, on_chunk=shrink, chunk_size=CHUNK)
    assert landed == data[: 3 * CHUNK + 1]
    assert (count, digest) == (len(landed), sha(landed))


def test_the_calling_thread_only_copies_and_the_hash_thread_reads_back_in_small_pieces(
    tmp_path, kernel_copies, monkeypatch
):
    monkeypatch.setattr(streams, "READBACK_BYTES", CHUNK // 2)
    real = os.preadv
    reads = []

    def recording(fd, buffers, offset, *args):
        reads.append((threading.current_thread().name, sum(map(len, buffers))))
        return real(fd, buffers, offset, *args)

    monkeypatch.setattr(streams.os, "preadv", recording)
    data = os.urandom(12 * CHUNK + 5)
    with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
        assert copy_into(tmp_path, handle, chunk_size=CHUNK) == (len(data), sha(data), data)
    assert reads and {name for name, _ in reads} == {"paglets-artifacts-copy-hash"}
    assert max(size for _, size in reads) <= CHUNK // 2


def test_a_kernel_copy_hashes_the_bytes_that_landed_not_the_source(tmp_path, kernel_copies, monkeypatch):
    """A chunk that lands other than it left (here: one byte changed in the target as it
    lands) is what the digest covers, so the store's checks compare against the landed bytes."""
    real = os.copy_file_range
    calls = []

    def corrupting(source, target, count, *args):
        copied = real(source, target, count, *args)
        calls.append(copied)
        if len(calls) == 3 and copied:  # the second real chunk: flip its last byte in the target
            end = os.lseek(target, 0, os.SEEK_CUR)
            os.pwrite(target, bytes([os.pread(target, 1, end - 1)[0] ^ 0xFF]), end - 1)
        return copied

    monkeypatch.setattr(streams.os, "copy_file_range", corrupting)
    data = os.urandom(6 * CHUNK)
    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_RDWR | os.O_CREAT)  # readable, so the test can flip a landed byte
    try:
        with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
            count, digest = hashed_copy(handle, fd, chunk_size=CHUNK)
    finally:
        os.close(fd)
    landed = target.read_bytes()
    assert landed != data and len(landed) == count == len(data)
    assert digest == sha(landed)


def test_a_target_cut_short_during_a_kernel_copy_is_an_error_and_stops_every_thread(
    tmp_path, kernel_copies, monkeypatch
):
    real = os.copy_file_range
    data = os.urandom(10 * CHUNK)

    def truncating(source, target, count, *args):
        copied = real(source, target, count, *args)
        if os.lseek(target, 0, os.SEEK_CUR) == len(data):  # the last chunk landed; its hash is to come
            os.ftruncate(target, CHUNK)
        return copied

    monkeypatch.setattr(streams.os, "copy_file_range", truncating)
    with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
        with pytest.raises(TransferError, match="target shrank"):
            copy_into(tmp_path, handle, chunk_size=CHUNK)


# ---------------------------------------------------------------- write-behind


@pytest.fixture
def writebacks(monkeypatch):
    """Records every ``sync_file_range`` the copies ask for (nothing reaches the kernel)."""
    calls: list[tuple[int, int, int, int]] = []

    def recording(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((fd, offset, length, flags))
        return 0

    monkeypatch.setattr(files, "_SYNC_FILE_RANGE", recording)
    return calls


def covered_ranges(calls, fd: int) -> list[tuple[int, int]]:
    assert calls and all(call[0] == fd and call[3] == files._SYNC_FILE_RANGE_WRITE for call in calls)
    return [(offset, offset + length) for _, offset, length, _ in calls]


@pytest.mark.parametrize("path", ["kernel copy", "our buffers"])
def test_write_behind_starts_the_writeback_of_every_landed_byte_once(
    tmp_path, writebacks, kernel_copies, monkeypatch, path
):
    if path == "our buffers":
        monkeypatch.setattr(streams._KernelCopy, "open", classmethod(lambda cls, *args: None))
    data = os.urandom(9 * CHUNK + 11)
    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"head")  # the ranges start where the copy starts
        with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
            assert hashed_copy(handle, fd, chunk_size=CHUNK, write_behind=True) == (len(data), sha(data))
        ranges = covered_ranges(writebacks, fd)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"head" + data
    assert any(kernel_copies) == (path == "kernel copy")
    assert ranges[0][0] == 4 and ranges[-1][1] == 4 + len(data)
    assert all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False))  # no gap, no overlap


def test_without_write_behind_a_copy_leaves_writeback_to_the_kernel(tmp_path, writebacks, monkeypatch):
    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", CHUNK)
    data = os.urandom(9 * CHUNK)
    with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
        assert copy_into(tmp_path, handle, chunk_size=CHUNK)[:2] == (len(data), sha(data))
    assert writebacks == []


def test_write_behind_into_a_pipe_copies_without_naming_ranges(writebacks):
    data = os.urandom(3 * CHUNK)
    read_end, write_end = os.pipe()
    try:
        # small enough for the pipe's buffer: nothing reads the other end meanwhile
        assert hashed_copy(io.BytesIO(data), write_end, write_behind=True) == (len(data), sha(data))
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as landed:
            read_end = -1
            assert landed.read() == data
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert writebacks == []


def test_start_writeback_is_only_a_hint_and_never_fails(tmp_path, monkeypatch):
    read_end, write_end = os.pipe()
    try:
        files.start_writeback(write_end)  # sync_file_range refuses a pipe (ESPIPE): nothing happens
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("system", ["no such symbol", "no libc", "no ctypes"])
def test_without_sync_file_range_write_behind_does_nothing_and_copies_all_the_same(tmp_path, monkeypatch, system):
    import builtins
    import ctypes

    class NoSymbol:
        def __getattr__(self, name):
            raise AttributeError(name)

    def no_libc(*args, **kwargs):
        raise OSError("libc not found")

    real_import = builtins.__import__

    def no_ctypes(name, *args, **kwargs):
        if name.startswith("ctypes"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    if system == "no such symbol":
        monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: NoSymbol())
    elif system == "no libc":
        monkeypatch.setattr(ctypes, "CDLL", no_libc)
    else:
        monkeypatch.setattr(builtins, "__import__", no_ctypes)
    assert files._load_sync_file_range() is None
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.setattr(files, "_SYNC_FILE_RANGE", None)
    data = os.urandom(3 * CHUNK)
    with open(write_source(tmp_path, data), "rb", buffering=0) as handle:
        target = tmp_path / "out.bin"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT)
        try:
            assert hashed_copy(handle, fd, write_behind=True) == (len(data), sha(data))
        finally:
            os.close(fd)
    assert target.read_bytes() == data


def test_this_linux_has_sync_file_range():
    """The write-behind the benchmarks measure is really there on Linux."""
    if not sys.platform.startswith("linux"):
        pytest.skip("sync_file_range is Linux's")
    assert files._load_sync_file_range() is not None


@pytest.mark.parametrize("fsync", [True, False])
def test_a_store_that_fsyncs_starts_writeback_as_it_imports_exports_and_moves(tmp_path, writebacks, monkeypatch, fsync):
    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", CHUNK)
    store = ArtifactStore(tmp_path / "store", host_url=HOST, fsync=fsync)
    data = os.urandom(9 * CHUNK)
    imported = store.create_from_path(write_source(tmp_path, data)).ref
    after_import = len(writebacks)
    store.export_to_path(imported.artifact_id, tmp_path / "exported.bin")
    after_export = len(writebacks)
    moved_source = tmp_path / "move-me.bin"
    moved_source.write_bytes(data)
    moved = store.create_from_path(moved_source, delete_source=True).ref
    assert (tmp_path / "exported.bin").read_bytes() == data
    assert store.ref(moved.artifact_id).sha256 == sha(data)
    if fsync:
        assert 0 < after_import < after_export < len(writebacks)
        moved_ranges = [(offset, length) for _, offset, length, _ in writebacks[after_export:]]
        assert sum(length for _, length in moved_ranges) == len(data)  # the moved source, as it is read
        assert moved_ranges[0][0] == 0
    else:
        assert writebacks == []


# ---------------------------------------------------------------- errors stop every thread


def test_an_on_chunk_error_propagates_and_nothing_past_the_cap_is_written(tmp_path, pipelined):
    data = os.urandom(50 * CHUNK)
    accepted = []

    def cap(total: int) -> None:
        if total > 10 * CHUNK:
            raise SizeMismatch("over the cap")
        accepted.append(total)

    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(SizeMismatch, match="over the cap"):
            hashed_copy(io.BytesIO(data), fd, on_chunk=cap, chunk_size=CHUNK)
    finally:
        os.close(fd)
    landed = target.read_bytes()
    assert len(landed) <= accepted[-1] == 10 * CHUNK
    assert data.startswith(landed)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_from_on_chunk_stops_an_endless_copy(tmp_path, pipelined, error):
    def stop(total: int) -> None:
        if total >= 100 * CHUNK:
            raise error("stop")

    fd = os.open(tmp_path / "out.bin", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(error):
            hashed_copy(Endless(), fd, on_chunk=stop, chunk_size=CHUNK)
    finally:
        os.close(fd)


@pytest.mark.parametrize("after", [0, 1, CHUNK, 7 * CHUNK + 3])
def test_a_source_error_propagates(tmp_path, pipelined, after):
    data = os.urandom(20 * CHUNK)
    fd = os.open(tmp_path / "out.bin", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(ConnectionResetError, match="peer went away"):
            hashed_copy(Failing(data, after), fd, chunk_size=CHUNK)
    finally:
        os.close(fd)


def test_a_source_error_during_the_inline_start_propagates(tmp_path):
    fd = os.open(tmp_path / "out.bin", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(ConnectionResetError):
            hashed_copy(Failing(os.urandom(10 * CHUNK), 2 * CHUNK), fd)
    finally:
        os.close(fd)
    assert copy_threads() == []


def test_a_write_error_propagates_even_while_the_reader_waits_for_a_free_buffer(tmp_path, pipelined):
    path = tmp_path / "read-only.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # os.write fails with EBADF on the writer thread
    source = Endless()
    try:
        with pytest.raises(OSError):
            hashed_copy(source, fd, chunk_size=CHUNK)
    finally:
        os.close(fd)
    assert source.given <= (streams.PIPELINE_DEPTH + 2) * CHUNK


def test_a_failing_write_is_not_taken_for_a_short_copy(tmp_path, pipelined, monkeypatch):
    calls = []
    real_write_all = streams.write_all

    def full_disk_after_three(fd, chunk):
        calls.append(len(chunk))
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        real_write_all(fd, chunk)

    monkeypatch.setattr(streams, "write_all", full_disk_after_three)
    fd = os.open(tmp_path / "out.bin", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left"):
            hashed_copy(io.BytesIO(os.urandom(30 * CHUNK)), fd, chunk_size=CHUNK)
    finally:
        os.close(fd)


def test_the_reader_never_runs_more_than_the_ring_ahead_of_a_slow_writer(tmp_path, pipelined, monkeypatch):
    written = [0]
    ahead = []
    real_write_all = streams.write_all

    def slow_write_all(fd, chunk):
        time.sleep(0.002)
        real_write_all(fd, chunk)
        written[0] += len(chunk)

    def watch(total: int) -> None:
        ahead.append(total - written[0])

    monkeypatch.setattr(streams, "write_all", slow_write_all)
    data = os.urandom(60 * CHUNK)
    count, digest, landed = copy_into(tmp_path, io.BytesIO(data), on_chunk=watch, chunk_size=CHUNK)
    assert (count, digest, landed == data) == (len(data), sha(data), True)
    assert max(ahead) <= (streams.PIPELINE_DEPTH + 1) * CHUNK


def test_concurrent_copies_do_not_mix_their_bytes(tmp_path, pipelined):
    datas = [os.urandom(30 * CHUNK + n) for n in range(6)]
    results: dict[int, tuple] = {}

    def one(index: int) -> None:
        results[index] = copy_into(tmp_path / str(index), io.BytesIO(datas[index]), chunk_size=CHUNK)

    for index in range(len(datas)):
        (tmp_path / str(index)).mkdir()
    workers = [threading.Thread(target=one, args=(index,)) for index in range(len(datas))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for index, data in enumerate(datas):
        assert results[index] == (len(data), sha(data), data)


# ---------------------------------------------------------------- through the store


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store", host_url=HOST, fsync=False)


def test_store_import_export_and_move_through_the_pipeline(store, tmp_path, monkeypatch):
    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", 64 * 1024)
    data = os.urandom(3 * 1024 * 1024 + 11)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    seen = []

    imported = store.create_from_path(source, progress=lambda done, total: seen.append((done, total)))
    assert imported.ref.sha256 == sha(data) and imported.path.read_bytes() == data
    assert seen[-1] == (len(data), len(data))

    target = tmp_path / "work" / "export.bin"
    store.export_to_path(imported.ref.artifact_id, target)
    assert target.read_bytes() == data

    moved_progress = []
    moved = store.create_from_path(
        source, delete_source=True, expected_sha256=sha(data), progress=lambda d, t: moved_progress.append((d, t))
    )
    assert not source.exists() and moved.path.read_bytes() == data
    assert moved_progress[-1] == (len(data), len(data))
    assert copy_threads() == []


def test_a_store_size_cap_stops_a_large_body_and_leaves_no_part(tmp_path, monkeypatch):
    monkeypatch.setattr(streams, "PIPELINE_MIN_BYTES", 64 * 1024)
    store = ArtifactStore(tmp_path / "store", host_url=HOST, fsync=False, max_artifact_bytes=1024 * 1024)
    with pytest.raises(ArtifactTooLarge, match="exceeds maximum size"):
        store.create_from_stream(io.BytesIO(os.urandom(4 * 1024 * 1024)))
    assert list(store.tmp_dir.iterdir()) == []
    assert copy_threads() == []


def test_ring_buffers_are_reused_between_copies_and_the_pool_stays_bounded(tmp_path, pipelined):
    datas = [os.urandom(30 * CHUNK + n) for n in range(3)]
    for data in datas:
        assert copy_into(tmp_path, io.BytesIO(data), chunk_size=CHUNK) == (len(data), sha(data), data)
    idle = streams._POOL._idle
    assert idle and sum(map(len, idle)) <= streams.BUFFER_POOL_BYTES
    kept = {id(buffer) for buffer in idle}
    assert copy_into(tmp_path, io.BytesIO(datas[0]), chunk_size=CHUNK)[1] == sha(datas[0])
    assert {id(buffer) for buffer in streams._POOL._idle} & kept
