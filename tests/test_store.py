"""The artifact store: every public method, every failure cleanup, and the safety of its temp files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paglets_artifacts import (
    ARTIFACT_COPY,
    ARTIFACT_MOVE,
    ARTIFACT_STATUS_REGISTERED,
    DEFAULT_ARTIFACT_MAX_BYTES,
    DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS,
    DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    ArtifactTooLarge,
    ArtifactWriteResult,
    ChecksumMismatch,
    InvalidInput,
    QuotaExceeded,
    Settings,
    SizeMismatch,
    SourceUnavailable,
    SweepReport,
    TransferError,
    paglet_file_ref_from_path,
    safe_target_filename,
)
from paglets_artifacts.store.artifacts import OwnerDeletion, metadata_json, parse_content_length

HOST = "http://host-a:8470"
FIXED_ID = "feedface" * 4
TTL = 3600.0


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store", host_url=HOST + "/", fsync=False, spool_ttl_seconds=TTL)


def leftovers(store: ArtifactStore) -> list[str]:
    """Everything under tmp/, blobs/ and metadata/ (symlinks included)."""
    return sorted(
        f"{directory.name}/{entry.name}"
        for directory in (store.tmp_dir, store.blobs_dir, store.metadata_dir)
        for entry in directory.iterdir()
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ReadOnly:
    def __init__(self, data: bytes):
        self._buffer = io.BytesIO(data)
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        return self._buffer.read(size)


class Exploding:
    """Hands out ``good`` bytes, then raises ``error`` (a dropped connection, a ^C)."""

    def __init__(self, good: bytes, error: BaseException):
        self._good = io.BytesIO(good)
        self._error = error

    def read(self, size: int = -1) -> bytes:
        data = self._good.read(size)
        if data:
            return data
        raise self._error


class Endless:
    """An infinite body: a size cap must stop it."""

    def __init__(self):
        self.handed_out = 0

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size is None or size < 0 else size
        self.handed_out += size
        return b"\0" * size


class NeverRead:
    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the source must not be read")


def plant_outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / "victim.txt"
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes(b"must stay as it is")
    return outside


# ---------------------------------------------------------------- construction and configuration


def test_construction_creates_the_layout_with_reference_defaults(tmp_path):
    store = ArtifactStore(tmp_path / "a" / ".." / "root", host_url="http://h:1///")
    assert store.root == (tmp_path / "root").resolve()
    assert [p.name for p in sorted(store.root.iterdir())] == ["blobs", "metadata", "tmp"]
    assert store.host_url == "http://h:1"
    assert store.max_artifact_bytes == DEFAULT_ARTIFACT_MAX_BYTES
    assert store.quota_bytes == DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES
    assert store.spool_ttl_seconds == DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS
    assert store.fsync is True


def test_construction_normalises_limits(tmp_path):
    store = ArtifactStore(tmp_path, host_url="h", max_artifact_bytes=None, quota_bytes=-5, spool_ttl_seconds=0.01)
    assert store.max_artifact_bytes == 0  # no cap
    assert store.quota_bytes == 0
    assert store.spool_ttl_seconds == 1.0
    assert ArtifactStore(tmp_path, host_url="h", quota_bytes=None).quota_bytes is None


def test_a_symlinked_store_directory_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / "blobs").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(TransferError, match="symlink"):
        ArtifactStore(root, host_url="h")


def test_from_settings_uses_every_store_setting(tmp_path):
    settings_ = Settings(
        store_root=tmp_path / "s",
        host_url="http://x:1",
        max_artifact_bytes=7,
        quota_bytes=None,
        spool_ttl_seconds=5.0,
        fsync=False,
    )
    store = ArtifactStore.from_settings(settings_)
    assert (
        store.root,
        store.host_url,
        store.max_artifact_bytes,
        store.quota_bytes,
        store.spool_ttl_seconds,
        store.fsync,
    ) == (
        (tmp_path / "s").resolve(),
        "http://x:1",
        7,
        None,
        5.0,
        False,
    )


def test_set_host_url_changes_the_url_refs_carry_without_rewriting_metadata(store):
    ref = store.create_from_stream(io.BytesIO(b"abc")).ref
    assert ref.host_url == HOST
    on_disk = store.metadata_dir.joinpath(f"{ref.artifact_id}.json").read_bytes()
    store.set_host_url("http://moved:9000/")
    assert store.host_url == "http://moved:9000"
    assert store.ref(ref.artifact_id).host_url == "http://moved:9000"
    assert [r.host_url for r in store.list()] == ["http://moved:9000"]
    assert store.metadata_dir.joinpath(f"{ref.artifact_id}.json").read_bytes() == on_disk
    assert store.create_from_stream(io.BytesIO(b"d")).ref.host_url == "http://moved:9000"


# ---------------------------------------------------------------- create_from_stream


@pytest.mark.parametrize("make", [io.BytesIO, ReadOnly], ids=["readinto", "read-only"])
def test_create_from_stream_commits_blob_and_metadata(store, make):
    data = os.urandom(200_000)
    before = time.time()
    result = store.create_from_stream(
        make(data),
        size_bytes=len(data),
        owner_agent_id="agent-7",
        name="data.bin",
        compression="zstd",
        expires_at=1e10,
    )
    after = time.time()
    ref = result.ref
    assert isinstance(result, ArtifactWriteResult)
    assert len(ref.artifact_id) == 32 and int(ref.artifact_id, 16) >= 0
    assert (
        ref.host_url,
        ref.name,
        ref.size_bytes,
        ref.sha256,
        ref.compression,
        ref.expires_at,
        ref.owner_agent_id,
    ) == (
        HOST,
        "data.bin",
        len(data),
        sha(data),
        "zstd",
        1e10,
        "agent-7",
    )
    assert before <= ref.created_at <= after
    assert result.path == store.blobs_dir / f"{ref.artifact_id}.bin"
    assert result.path.read_bytes() == data
    meta = store.metadata_dir / f"{ref.artifact_id}.json"
    assert meta.read_text(encoding="utf-8") == metadata_json(ref)
    assert store.ref(ref.artifact_id) == ref
    assert leftovers(store) == [f"blobs/{ref.artifact_id}.bin", f"metadata/{ref.artifact_id}.json"]


def test_create_from_stream_with_unknown_size_and_empty_body(store):
    ref = store.create_from_stream(io.BytesIO(b"")).ref
    assert (ref.size_bytes, ref.sha256) == (0, sha(b""))
    assert store.blob_path(ref.artifact_id).read_bytes() == b""


def test_create_from_stream_with_fsync_on(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, fsync=True)
    ref = store.create_from_stream(io.BytesIO(b"durable"), size_bytes=7).ref
    assert store.open_reader(ref.artifact_id).read() == b"durable"


def test_create_from_stream_reports_progress(store):
    data = b"x" * (2 * 1024 * 1024 + 10)
    seen = []
    store.create_from_stream(
        io.BytesIO(data), size_bytes=len(data), progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (len(data), len(data))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    unknown = []
    store.create_from_stream(io.BytesIO(b"abc"), progress=lambda done, total: unknown.append((done, total)))
    assert unknown == [(3, -1)]


def test_expected_sha256_is_accepted_in_any_case(store):
    ref = store.create_from_stream(io.BytesIO(b"abc"), expected_sha256=sha(b"abc").upper()).ref
    assert ref.sha256 == sha(b"abc")


def test_checksum_mismatch_leaves_nothing(store):
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        store.create_from_stream(io.BytesIO(b"abc"), size_bytes=3, expected_sha256=sha(b"abd"))
    assert leftovers(store) == []
    assert store.index.used_bytes() == 0


@pytest.mark.parametrize("error", [ConnectionResetError("peer went away"), KeyboardInterrupt()])
def test_interrupted_stream_leaves_nothing(store, error):
    source = Exploding(b"partial data" * 1000, error)
    with pytest.raises(type(error)):
        store.create_from_stream(source, size_bytes=1_000_000)
    assert leftovers(store) == []
    assert store.index.used_bytes() == 0


def test_body_shorter_than_declared_size_is_refused_and_leaves_nothing(store):
    with pytest.raises(SizeMismatch, match="5 of 10"):
        store.create_from_stream(io.BytesIO(b"12345"), size_bytes=10)
    assert leftovers(store) == []


def test_body_longer_than_declared_size_is_refused_and_leaves_nothing(store):
    with pytest.raises(SizeMismatch, match="longer than its declared 5"):
        store.create_from_stream(io.BytesIO(b"1234567890"), size_bytes=5)
    assert leftovers(store) == []


def test_declared_size_over_the_cap_is_refused_before_reading(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, max_artifact_bytes=100, fsync=False)
    with pytest.raises(ArtifactTooLarge, match="101 bytes would exceed 100"):
        store.create_from_stream(NeverRead(), size_bytes=101)
    assert leftovers(store) == []


def test_an_endless_body_stops_at_the_cap_and_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, max_artifact_bytes=3 * 1024 * 1024, fsync=False)
    source = Endless()
    with pytest.raises(ArtifactTooLarge, match="exceed 3145728"):
        store.create_from_stream(source)
    assert source.handed_out <= 5 * 1024 * 1024
    assert leftovers(store) == []


def test_body_exactly_at_the_cap_is_stored(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, max_artifact_bytes=10, fsync=False)
    assert store.create_from_stream(io.BytesIO(b"0123456789")).ref.size_bytes == 10


def test_quota_refuses_a_declared_size_before_reading(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, quota_bytes=10, fsync=False)
    first = store.create_from_stream(io.BytesIO(b"12345678"), size_bytes=8).ref
    with pytest.raises(QuotaExceeded, match="13 bytes would exceed 10"):
        store.create_from_stream(NeverRead(), size_bytes=5)
    assert leftovers(store) == [f"blobs/{first.artifact_id}.bin", f"metadata/{first.artifact_id}.json"]
    assert store.index.used_bytes() == 8


def test_quota_refuses_an_unknown_size_body_after_reading_and_leaves_nothing_new(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, quota_bytes=10, fsync=False)
    first = store.create_from_stream(io.BytesIO(b"12345678")).ref
    with pytest.raises(QuotaExceeded):
        store.create_from_stream(io.BytesIO(b"abcde"))
    assert leftovers(store) == [f"blobs/{first.artifact_id}.bin", f"metadata/{first.artifact_id}.json"]
    store.delete(first.artifact_id)
    assert store.create_from_stream(io.BytesIO(b"abcde")).ref.size_bytes == 5


def test_quota_counts_a_transfer_in_flight(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, quota_bytes=10, fsync=False)
    observed = []

    class Watching:
        def __init__(self):
            self.data = io.BytesIO(b"123456")

        def read(self, size=-1):
            if not observed:
                observed.append(store.index.used_bytes())
                with pytest.raises(QuotaExceeded):
                    store.create_from_stream(io.BytesIO(b"abcde"), size_bytes=5)
            return self.data.read(size)

    store.create_from_stream(Watching(), size_bytes=6)
    assert observed == [6]
    assert store.index.used_bytes() == 6


@pytest.mark.parametrize("size_bytes", [-2, "5", 1.5, True, None])
def test_invalid_size_bytes_is_refused(store, size_bytes):
    with pytest.raises(InvalidInput, match="size_bytes"):
        store.create_from_stream(NeverRead(), size_bytes=size_bytes)
    assert leftovers(store) == []


@pytest.mark.parametrize("expires_at", [float("nan"), float("inf"), float("-inf"), -1, "never"])
def test_invalid_expires_at_is_refused(store, expires_at):
    with pytest.raises(InvalidInput, match="expires_at"):
        store.create_from_stream(NeverRead(), expires_at=expires_at)
    assert leftovers(store) == []


@pytest.mark.parametrize("bad", ["abc", "z" * 64, "a" * 63, sha(b"x") + "0"])
def test_invalid_expected_sha256_is_refused(store, bad):
    with pytest.raises(InvalidInput, match="expected sha256"):
        store.create_from_stream(NeverRead(), expected_sha256=bad)
    assert leftovers(store) == []


@pytest.mark.parametrize("field_name", ["owner_agent_id", "name", "compression"])
def test_non_string_metadata_fields_are_refused(store, field_name):
    with pytest.raises(InvalidInput, match=field_name):
        store.create_from_stream(NeverRead(), **{field_name: 5})


@pytest.mark.parametrize("delete_source", [False, True], ids=["copy", "move-in"])
@pytest.mark.parametrize("field_name", ["owner_agent_id", "name", "compression"])
def test_a_file_import_with_non_string_metadata_fields_is_refused_and_leaves_nothing(
    store, tmp_path, field_name, delete_source
):
    # The copy and the move-in share one validation: neither commits an artifact ref() refuses.
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    with pytest.raises(InvalidInput, match=field_name):
        store.create_from_path(source, delete_source=delete_source, **{field_name: 123})
    assert leftovers(store) == []
    assert store.index.used_bytes() == 0
    assert source.read_bytes() == b"payload"


def test_a_redelivered_move_in_returns_its_artifact_and_removes_the_source_left_behind(store, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"moved")
    first = store.create_from_stream(io.BytesIO(b"moved"), artifact_id=FIXED_ID)  # committed, then killed
    assert store.create_from_path(source, delete_source=True, artifact_id=FIXED_ID) == first
    assert not source.exists()
    # the attempt that committed it also removed the source: nothing to open, nothing refused
    assert store.create_from_path(source, delete_source=True, artifact_id=FIXED_ID) == first
    assert store.create_from_path(tmp_path / "gone" / "source.bin", delete_source=True, artifact_id=FIXED_ID) == first


def test_create_with_a_given_artifact_id_is_idempotent(store):
    first = store.create_from_stream(io.BytesIO(b"first"), artifact_id=FIXED_ID, name="a")
    again = store.create_from_stream(NeverRead(), artifact_id=FIXED_ID, name="b")
    assert first.ref.artifact_id == FIXED_ID
    assert again.ref == first.ref and again.path == first.path
    assert store.open_reader(FIXED_ID).read() == b"first"
    assert leftovers(store) == [f"blobs/{FIXED_ID}.bin", f"metadata/{FIXED_ID}.json"]


def test_a_given_id_with_metadata_but_no_blob_is_written_again(store):
    store.create_from_stream(io.BytesIO(b"old"), artifact_id=FIXED_ID)
    (store.blobs_dir / f"{FIXED_ID}.bin").unlink()
    ref = store.create_from_stream(io.BytesIO(b"new"), artifact_id=FIXED_ID).ref
    assert store.open_reader(FIXED_ID).read() == b"new"
    assert ref.sha256 == sha(b"new")


# ---------------------------------------------------------------- temp files: exclusive, never through a symlink


def test_metadata_is_staged_in_tmp_and_renamed_after_the_blob(store, monkeypatch):
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src).relative_to(store.root).as_posix(), Path(dst).relative_to(store.root).as_posix()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.create_from_stream(io.BytesIO(b"abc"), artifact_id=FIXED_ID)
    assert renames == [
        (f"tmp/{FIXED_ID}.part", f"blobs/{FIXED_ID}.bin"),
        (f"tmp/{FIXED_ID}.json.part", f"metadata/{FIXED_ID}.json"),
    ]


@pytest.mark.parametrize("suffix", [".part", ".json.part"])
def test_a_planted_symlink_in_tmp_is_replaced_never_written_through(store, tmp_path, suffix):
    outside = plant_outside(tmp_path)
    link = store.tmp_dir / f"{FIXED_ID}{suffix}"
    link.symlink_to(outside)
    result = store.create_from_stream(io.BytesIO(b"payload"), artifact_id=FIXED_ID)
    assert outside.read_bytes() == b"must stay as it is"
    assert not result.path.is_symlink() and result.path.read_bytes() == b"payload"
    meta = store.metadata_dir / f"{FIXED_ID}.json"
    assert not meta.is_symlink() and json.loads(meta.read_text())["artifact_id"] == FIXED_ID
    assert leftovers(store) == [f"blobs/{FIXED_ID}.bin", f"metadata/{FIXED_ID}.json"]


def test_a_symlink_planted_after_the_stale_part_is_cleared_is_refused(store, tmp_path, monkeypatch):
    outside = plant_outside(tmp_path)
    link = store.tmp_dir / f"{FIXED_ID}.part"

    def racing_attacker(path):
        if path == link and not path.is_symlink():
            link.symlink_to(outside)

    monkeypatch.setattr(ArtifactStore, "_clear_stale_part", staticmethod(racing_attacker))
    with pytest.raises(TransferError, match="another transfer"):
        store.create_from_stream(io.BytesIO(b"payload"), artifact_id=FIXED_ID)
    assert outside.read_bytes() == b"must stay as it is"
    assert not (store.blobs_dir / f"{FIXED_ID}.bin").exists()
    assert not (store.metadata_dir / f"{FIXED_ID}.json").exists()


def test_a_symlink_planted_at_the_staged_metadata_during_commit_is_refused(store, tmp_path, monkeypatch):
    outside = plant_outside(tmp_path)
    meta_link = store.tmp_dir / f"{FIXED_ID}.json.part"

    def racing_attacker(path):
        if path == meta_link:
            meta_link.symlink_to(outside)
        else:
            path.unlink(missing_ok=True)

    monkeypatch.setattr(ArtifactStore, "_clear_stale_part", staticmethod(racing_attacker))
    with pytest.raises(TransferError, match="another transfer"):
        store.create_from_stream(io.BytesIO(b"payload"), artifact_id=FIXED_ID)
    assert outside.read_bytes() == b"must stay as it is"
    assert leftovers(store) == [f"tmp/{FIXED_ID}.json.part"]  # only the attacker's link, untouched


def test_a_failed_commit_leaves_nothing(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path, host_url=HOST, fsync=True)

    def failing_fsync(directory):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "_fsync_dir", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        store.create_from_stream(io.BytesIO(b"abc"), size_bytes=3)
    assert leftovers(store) == []
    assert store.index.used_bytes() == 0


# ---------------------------------------------------------------- create_from_http_request


def test_http_request_with_content_length_reads_only_the_body(store):
    source = io.BytesIO(b"hello worldGET /next")
    ref = store.create_from_http_request(
        {"Content-Length": "11"},
        source,
        owner_agent_id="o",
        name="n.txt",
        compression="",
        expires_at=5.0,
        expected_sha256=sha(b"hello world"),
    ).ref
    assert store.open_reader(ref.artifact_id).read() == b"hello world"
    assert (ref.owner_agent_id, ref.name, ref.expires_at) == ("o", "n.txt", 5.0)
    assert source.read() == b"GET /next"


def test_http_request_with_chunked_body(store):
    body = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    ref = store.create_from_http_request(
        {"Transfer-Encoding": "Chunked", "Content-Length": "junk"}, io.BytesIO(body)
    ).ref
    assert (ref.size_bytes, store.open_reader(ref.artifact_id).read()) == (11, b"hello world")


def test_http_request_without_length_is_an_empty_artifact(store):
    ref = store.create_from_http_request({}, io.BytesIO(b"ignored")).ref
    assert ref.size_bytes == 0


def test_http_request_short_body_is_refused_and_leaves_nothing(store):
    with pytest.raises(SizeMismatch, match="4 of 100"):
        store.create_from_http_request({"Content-Length": "100"}, io.BytesIO(b"only"))
    assert leftovers(store) == []


def test_http_request_content_length_over_the_cap_is_refused_before_reading(tmp_path):
    store = ArtifactStore(tmp_path, host_url=HOST, max_artifact_bytes=10, fsync=False)
    with pytest.raises(ArtifactTooLarge):
        store.create_from_http_request({"Content-Length": "11"}, NeverRead())
    assert leftovers(store) == []


@pytest.mark.parametrize(
    "value",
    ["abc", "-1", "+5", "1e3", "5 5", "5,5", "0x10", "1.0", "²", "١٢", "9" * 20, " ", "\t-0"],
)
def test_http_request_bad_content_length_is_invalid_input(store, value):
    with pytest.raises(InvalidInput, match="Content-Length"):
        store.create_from_http_request({"Content-Length": value}, NeverRead())
    assert leftovers(store) == []


@pytest.mark.parametrize(
    "body,error",
    [
        (b"zz\r\nab\r\n0\r\n\r\n", InvalidInput),
        (b"5\r\nhel", SizeMismatch),
        (b"5\r\nhelloXX", InvalidInput),
        (b"5\r\nhello\r\n", SizeMismatch),
        (b"3;" + b"e" * 5000 + b"\r\nabc\r\n0\r\n\r\n", InvalidInput),
    ],
)
def test_http_request_bad_chunked_framing_leaves_nothing(store, body, error):
    with pytest.raises(error):
        store.create_from_http_request({"Transfer-Encoding": "chunked"}, io.BytesIO(body))
    assert leftovers(store) == []


@pytest.mark.parametrize(
    "value,expected", [(None, 0), ("", 0), ("0", 0), (" 42 ", 42), (7, 7), ("9" * 19, int("9" * 19))]
)
def test_parse_content_length(value, expected):
    assert parse_content_length(value) == expected


def chunked(body: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *sorted(cuts), len(body)]
    out = bytearray()
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:
            out += f"{end - start:x}\r\n".encode() + body[start:end] + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), body=st.binary(max_size=3000))
def test_chunked_uploads_store_exactly_the_body_or_nothing(data, body):
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=6))
    encoded = chunked(body, cuts)
    with tempfile.TemporaryDirectory() as root:
        store = ArtifactStore(root, host_url=HOST, fsync=False)
        ref = store.create_from_http_request({"Transfer-Encoding": "chunked"}, io.BytesIO(encoded)).ref
        assert store.open_reader(ref.artifact_id).read() == body
        assert ref.sha256 == sha(body)
        cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        with pytest.raises((InvalidInput, SizeMismatch)):
            store.create_from_http_request({"Transfer-Encoding": "chunked"}, io.BytesIO(encoded[:cut]))
        assert leftovers(store) == [f"blobs/{ref.artifact_id}.bin", f"metadata/{ref.artifact_id}.json"]


# ---------------------------------------------------------------- create_from_path


def test_create_from_path_copies_and_keeps_the_source(store, tmp_path):
    source = tmp_path / "report.csv"
    source.write_bytes(b"a,b\n1,2\n")
    result = store.create_from_path(source, owner_agent_id="o", expected_sha256=sha(b"a,b\n1,2\n"))
    assert result.ref.name == "report.csv"
    assert result.path.read_bytes() == source.read_bytes()
    assert os.stat(result.path).st_ino != os.stat(source).st_ino
    assert store.create_from_path(str(source), name="renamed").ref.name == "renamed"


def test_create_from_path_missing_source(store, tmp_path):
    with pytest.raises(SourceUnavailable, match="does not exist"):
        store.create_from_path(tmp_path / "missing")
    assert leftovers(store) == []


def test_create_from_path_refuses_a_directory(store, tmp_path):
    with pytest.raises(SourceUnavailable, match="not a file"):
        store.create_from_path(tmp_path)


def test_create_from_path_refuses_a_symlinked_source(store, tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"data")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with pytest.raises(SourceUnavailable, match="cannot be opened"):
        store.create_from_path(link, delete_source=True)
    assert real.read_bytes() == b"data" and link.is_symlink()
    assert leftovers(store) == []


@pytest.mark.timeout(20)
def test_create_from_path_refuses_a_fifo_without_blocking(store, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SourceUnavailable, match="not a file"):
        store.create_from_path(fifo)
    assert leftovers(store) == []


def test_create_from_path_checksum_mismatch_keeps_the_source(store, tmp_path):
    source = tmp_path / "s.bin"
    source.write_bytes(b"data")
    for delete_source in (False, True):
        with pytest.raises(ChecksumMismatch):
            store.create_from_path(source, expected_sha256=sha(b"other"), delete_source=delete_source)
        assert source.read_bytes() == b"data"
    assert leftovers(store) == []


def test_move_import_on_the_same_filesystem_renames_without_copying(store, tmp_path):
    source = tmp_path / "big.bin"
    data = os.urandom(100_000)
    source.write_bytes(data)
    inode = os.stat(source).st_ino
    seen = []
    result = store.create_from_path(
        source, delete_source=True, expected_sha256=sha(data), progress=lambda done, total: seen.append((done, total))
    )
    assert not source.exists()
    assert os.stat(result.path).st_ino == inode
    assert result.path.read_bytes() == data
    assert result.ref.sha256 == sha(data) and result.ref.name == "big.bin"
    assert seen[-1] == (len(data), len(data))
    assert leftovers(store) == [f"blobs/{result.ref.artifact_id}.bin", f"metadata/{result.ref.artifact_id}.json"]


def test_move_import_with_fsync_flushes_the_blob_data_before_it_is_visible(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store", host_url=HOST, fsync=True)
    source = tmp_path / "moved.bin"
    source.write_bytes(b"unflushed bytes")
    inode = os.stat(source).st_ino
    real_fsync = os.fsync
    flushed = []  # (inode, metadata visible yet) of each fsync

    def recording_fsync(fd):
        meta = store.metadata_dir / f"{FIXED_ID}.json"
        flushed.append((os.fstat(fd).st_ino, meta.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    result = store.create_from_path(source, delete_source=True, artifact_id=FIXED_ID)
    assert os.stat(result.path).st_ino == inode  # moved, not copied
    assert (inode, False) in flushed


def test_move_import_without_fsync_does_not_flush_the_blob(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store", host_url=HOST, fsync=False)
    source = tmp_path / "moved.bin"
    source.write_bytes(b"bytes")
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    store.create_from_path(source, delete_source=True)
    assert calls == []


def test_move_import_refreshes_the_blob_mtime_so_a_sweep_keeps_it(store, tmp_path):
    source = tmp_path / "old.bin"
    source.write_bytes(b"old file")
    os.utime(source, (1000, 1000))
    result = store.create_from_path(source, delete_source=True)
    report = store.cleanup_temporary()
    assert report.orphans_removed == 0
    assert result.path.exists() and store.ref(result.ref.artifact_id)


def test_move_import_across_filesystems_copies_then_removes_the_source(store, tmp_path, monkeypatch):
    source = tmp_path / "s.bin"
    source.write_bytes(b"elsewhere")
    inode = os.stat(source).st_ino
    monkeypatch.setattr(store, "_tmp_device", lambda: -1)
    result = store.create_from_path(source, delete_source=True)
    assert not source.exists()
    assert result.path.read_bytes() == b"elsewhere"
    assert os.stat(result.path).st_ino != inode


def test_move_import_quota_exceeded_keeps_the_source(tmp_path):
    store = ArtifactStore(tmp_path / "store", host_url=HOST, quota_bytes=3, fsync=False)
    source = tmp_path / "s.bin"
    source.write_bytes(b"four")
    with pytest.raises(QuotaExceeded):
        store.create_from_path(source, delete_source=True)
    assert source.read_bytes() == b"four"
    assert leftovers(store) == []


def test_move_import_over_the_cap_keeps_the_source(tmp_path):
    store = ArtifactStore(tmp_path / "store", host_url=HOST, max_artifact_bytes=3, fsync=False)
    source = tmp_path / "s.bin"
    source.write_bytes(b"four")
    with pytest.raises(ArtifactTooLarge):
        store.create_from_path(source, delete_source=True)
    assert source.read_bytes() == b"four"


def test_move_import_gives_the_source_back_when_the_commit_fails(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store", host_url=HOST, fsync=True)
    source = tmp_path / "precious.bin"
    source.write_bytes(b"only copy")
    os.utime(source, ns=(1_000_000_000_000, 2_000_000_000_000))
    before = os.stat(source)

    def failing_fsync(directory):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "_fsync_dir", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        store.create_from_path(source, delete_source=True)
    after = os.stat(source)
    assert source.read_bytes() == b"only copy"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert leftovers(store) == []
    assert store.index.used_bytes() == 0


def test_move_import_with_a_committed_id_returns_the_artifact(store, tmp_path):
    first = store.create_from_stream(io.BytesIO(b"done"), artifact_id=FIXED_ID).ref
    source = tmp_path / "s.bin"
    source.write_bytes(b"redelivered")
    assert store.create_from_path(source, delete_source=True, artifact_id=FIXED_ID).ref == first
    assert store.open_reader(FIXED_ID).read() == b"done"


# ---------------------------------------------------------------- reading


def test_ref_of_a_missing_artifact_is_not_found(store):
    with pytest.raises(ArtifactNotFound, match=FIXED_ID):
        store.ref(FIXED_ID)
    assert issubclass(ArtifactNotFound, TransferError)


@pytest.mark.parametrize(
    "content,error,message",
    [
        (b"{not json", InvalidInput, "not JSON"),
        (b"[1, 2]", InvalidInput, "JSON object"),
        (b"\xff\xfe\x00", TransferError, "unreadable"),
        (json.dumps({"artifact_id": "abcd"}).encode(), InvalidInput, "another id"),
        (json.dumps({"artifact_id": FIXED_ID, "size_bytes": -1}).encode(), InvalidInput, "size_bytes"),
    ],
)
def test_ref_of_unreadable_metadata_names_the_problem(store, content, error, message):
    (store.metadata_dir / f"{FIXED_ID}.json").write_bytes(content)
    with pytest.raises(error, match=message):
        store.ref(FIXED_ID)


def test_list_is_sorted_filters_by_owner_and_skips_unreadable_metadata(store):
    ids = sorted(
        store.create_from_stream(io.BytesIO(bytes([n])), owner_agent_id=owner).ref.artifact_id
        for n, owner in enumerate(["a", "b", "a"])
    )
    (store.metadata_dir / f"{FIXED_ID}.json").write_text("garbage")
    (store.blobs_dir / f"{FIXED_ID}.bin").write_bytes(b"x")
    assert [ref.artifact_id for ref in store.list()] == ids
    assert {ref.owner_agent_id for ref in store.list(owner_agent_id="a")} == {"a"}
    assert len(store.list(owner_agent_id="a")) == 2
    assert store.list(owner_agent_id="nobody") == []
    unreadable: list[str] = []
    assert [ref.artifact_id for ref in store.scan(unreadable)] == ids
    assert unreadable == [FIXED_ID]


def test_open_reader_and_blob_path(store):
    ref = store.create_from_stream(io.BytesIO(b"contents")).ref
    with store.open_reader(ref.artifact_id) as reader:
        assert reader.read() == b"contents"
    assert store.blob_path(ref.artifact_id) == store.blobs_dir / f"{ref.artifact_id}.bin"
    with pytest.raises(ArtifactNotFound):
        store.blob_path(FIXED_ID)
    with pytest.raises(ArtifactNotFound):
        store.open_reader(FIXED_ID)


def test_open_reader_with_metadata_but_no_blob_is_not_found(store):
    ref = store.create_from_stream(io.BytesIO(b"x")).ref
    (store.blobs_dir / f"{ref.artifact_id}.bin").unlink()
    with pytest.raises(ArtifactNotFound, match="no blob"):
        store.open_reader(ref.artifact_id)


def test_open_reader_never_follows_a_symlinked_blob(store, tmp_path):
    outside = plant_outside(tmp_path)
    ref = store.create_from_stream(io.BytesIO(b"x")).ref
    blob = store.blobs_dir / f"{ref.artifact_id}.bin"
    blob.unlink()
    blob.symlink_to(outside)
    with pytest.raises(TransferError, match="cannot be opened"):
        store.open_reader(ref.artifact_id)
    with pytest.raises(TransferError):
        store.export_to_path(ref.artifact_id, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


# ---------------------------------------------------------------- export_to_path


def export_dir_entries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_export_writes_a_verified_copy_through_a_hidden_part(store, tmp_path):
    data = os.urandom(1024 * 1024 + 3)
    ref = store.create_from_stream(io.BytesIO(data), name="x").ref
    target = tmp_path / "work" / "nested" / "x.bin"
    seen = []
    returned = store.export_to_path(
        ref.artifact_id, target, expected_sha256=sha(data).upper(), progress=lambda d, t: seen.append((d, t))
    )
    assert returned == ref
    assert target.read_bytes() == data
    assert export_dir_entries(target.parent) == ["x.bin"]
    assert seen[-1] == (len(data), len(data))


def test_export_replaces_an_existing_target(store, tmp_path):
    ref = store.create_from_stream(io.BytesIO(b"new")).ref
    target = tmp_path / "t.bin"
    target.write_bytes(b"old old old")
    store.export_to_path(ref.artifact_id, str(target))
    assert target.read_bytes() == b"new"


def test_export_with_a_wrong_expected_sha256_leaves_no_target(store, tmp_path):
    ref = store.create_from_stream(io.BytesIO(b"data")).ref
    target = tmp_path / "work" / "t.bin"
    with pytest.raises(ChecksumMismatch):
        store.export_to_path(ref.artifact_id, target, expected_sha256=sha(b"other"))
    assert export_dir_entries(target.parent) == []


def test_export_with_an_invalid_expected_sha256_is_invalid_input(store, tmp_path):
    ref = store.create_from_stream(io.BytesIO(b"data")).ref
    with pytest.raises(InvalidInput, match="expected sha256"):
        store.export_to_path(ref.artifact_id, tmp_path / "t", expected_sha256="abc")


@pytest.mark.parametrize(
    "corrupt,error",
    [(b"DATA", ChecksumMismatch), (b"dat", SizeMismatch), (b"data+more", SizeMismatch)],
    ids=["same-size", "shorter", "longer"],
)
def test_export_of_a_corrupted_blob_is_refused_and_leaves_no_target(store, tmp_path, corrupt, error):
    ref = store.create_from_stream(io.BytesIO(b"data")).ref
    (store.blobs_dir / f"{ref.artifact_id}.bin").write_bytes(corrupt)
    target = tmp_path / "work" / "t.bin"
    with pytest.raises(error):
        store.export_to_path(ref.artifact_id, target)
    assert export_dir_entries(target.parent) == []


def test_export_to_a_directory_is_refused(store, tmp_path):
    ref = store.create_from_stream(io.BytesIO(b"data")).ref
    with pytest.raises(InvalidInput, match="directory"):
        store.export_to_path(ref.artifact_id, tmp_path)


def test_export_of_a_missing_artifact_is_not_found(store, tmp_path):
    with pytest.raises(ArtifactNotFound):
        store.export_to_path(FIXED_ID, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_export_replaces_a_symlinked_target_instead_of_writing_through_it(store, tmp_path):
    outside = plant_outside(tmp_path)
    ref = store.create_from_stream(io.BytesIO(b"exported")).ref
    target = tmp_path / "work" / "t.bin"
    target.parent.mkdir()
    target.symlink_to(outside)
    store.export_to_path(ref.artifact_id, target)
    assert outside.read_bytes() == b"must stay as it is"
    assert not target.is_symlink() and target.read_bytes() == b"exported"


def test_export_never_writes_through_a_symlink_planted_at_its_temp_name(store, tmp_path, monkeypatch):
    outside = plant_outside(tmp_path)
    ref = store.create_from_stream(io.BytesIO(b"exported")).ref
    work = tmp_path / "work"
    work.mkdir()
    guessed = uuid.UUID(int=0x1234)
    (work / f".t.bin.{guessed.hex}.part").symlink_to(outside)
    monkeypatch.setattr(uuid, "uuid4", lambda: guessed)
    with pytest.raises(TransferError, match="already exists"):
        store.export_to_path(ref.artifact_id, work / "t.bin")
    assert outside.read_bytes() == b"must stay as it is"
    assert not (work / "t.bin").exists()


def test_an_interrupted_export_leaves_no_temp_file(store, tmp_path):
    ref = store.create_from_stream(io.BytesIO(b"x" * 100)).ref
    work = tmp_path / "work"

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.export_to_path(ref.artifact_id, work / "t.bin", progress=stop)
    assert export_dir_entries(work) == []


# ---------------------------------------------------------------- deleting


def test_delete_removes_blob_and_metadata_and_is_idempotent(store):
    ref = store.create_from_stream(io.BytesIO(b"abc")).ref
    assert store.delete(ref.artifact_id) is None
    assert leftovers(store) == []
    with pytest.raises(ArtifactNotFound):
        store.ref(ref.artifact_id)
    store.delete(ref.artifact_id)


def test_remove_returns_the_bytes_freed(store):
    ref = store.create_from_stream(io.BytesIO(b"12345")).ref
    assert store.remove(ref.artifact_id) == 5
    assert store.remove(ref.artifact_id) == 0


def test_delete_owner_deletes_only_that_owner(store):
    mine = [store.create_from_stream(io.BytesIO(b"m"), owner_agent_id="me").ref for _ in range(3)]
    theirs = store.create_from_stream(io.BytesIO(b"t"), owner_agent_id="them").ref
    deletion = store.delete_owner("me")
    assert sorted(ref.artifact_id for ref in deletion.deleted) == sorted(ref.artifact_id for ref in mine)
    assert deletion.bytes_freed == 3
    assert [ref.artifact_id for ref in store.list()] == [theirs.artifact_id]
    assert store.delete_owner("me") == OwnerDeletion(deleted=[], bytes_freed=0)


# ---------------------------------------------------------------- invalid ids never touch a path


BAD_IDS = ["../x", "../../outside/victim", "..", "x", "ab/cd", "/etc/passwd", "", "abc.bin", "ABCDEFG", "a\x00b"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_artifact_ids_are_refused_before_any_path_is_touched(store, tmp_path, monkeypatch, bad):
    # what "metadata/../x.json" and "blobs/../x.bin" would point at
    planted = [store.root / "x.json", store.root / "x.bin"]
    for path in planted:
        path.write_text(json.dumps({"artifact_id": "ab"}))
    touched: list[str] = []

    def spy(name, real):
        def wrapper(path, *args, **kwargs):
            if bad and bad in os.fsdecode(os.fspath(path)):
                touched.append(f"{name}:{path}")
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)

    for name in ("open", "stat", "lstat", "unlink", "replace", "rename"):
        spy(name, getattr(os, name))
    operations = [
        lambda: store.ref(bad),
        lambda: store.open_reader(bad),
        lambda: store.blob_path(bad),
        lambda: store.delete(bad),
        lambda: store.remove(bad),
        lambda: store.export_to_path(bad, tmp_path / "export.bin"),
        lambda: store.create_from_stream(NeverRead(), artifact_id=bad),
    ]
    for operation in operations:
        with pytest.raises(InvalidInput, match="artifact id"):
            operation()
    monkeypatch.undo()
    assert touched == []
    assert all(path.exists() for path in planted)
    assert not (tmp_path / "export.bin").exists()
    assert leftovers(store) == []


# ---------------------------------------------------------------- the sweep


def age(path: Path, seconds_ago: float, now: float) -> None:
    os.utime(path, (now - seconds_ago, now - seconds_ago), follow_symlinks=False)


def test_sweep_removes_stale_part_files_only(store):
    now = time.time()
    stale = store.tmp_dir / f"{'a' * 32}.part"
    fresh = store.tmp_dir / f"{'b' * 32}.part"
    stale.write_bytes(b"12345")
    fresh.write_bytes(b"1")
    age(stale, TTL, now)
    age(fresh, TTL - 60, now)
    report = store.cleanup_temporary(now=now)
    assert (report.parts_removed, report.bytes_freed) == (1, 5)
    assert not stale.exists() and fresh.exists()


def test_sweep_removes_a_stale_symlinked_part_without_touching_its_target(store, tmp_path):
    outside = plant_outside(tmp_path)
    now = time.time()
    link = store.tmp_dir / f"{FIXED_ID}.part"
    link.symlink_to(outside)
    age(link, TTL * 2, now)
    assert store.cleanup_temporary(now=now).parts_removed == 1
    assert not link.is_symlink() and outside.read_bytes() == b"must stay as it is"


def test_sweep_removes_expired_artifacts_and_keeps_the_rest(store):
    now = 1_800_000_000.0
    expired = store.create_from_stream(io.BytesIO(b"old"), expires_at=now).ref
    later = store.create_from_stream(io.BytesIO(b"later"), expires_at=now + 1).ref
    forever = store.create_from_stream(io.BytesIO(b"forever"), expires_at=0).ref
    report = store.cleanup_temporary(now=now)
    assert (report.expired_removed, report.bytes_freed) == (1, 3)
    assert sorted(ref.artifact_id for ref in store.list()) == sorted([later.artifact_id, forever.artifact_id])
    assert not (store.blobs_dir / f"{expired.artifact_id}.bin").exists()
    assert store.cleanup_temporary(now=now + 10**9).expired_removed == 1
    assert [ref.artifact_id for ref in store.list()] == [forever.artifact_id]


def test_sweep_removes_old_blobs_without_metadata_and_metadata_without_blobs(store):
    now = time.time()
    old_orphan = store.blobs_dir / f"{'a' * 32}.bin"
    young_orphan = store.blobs_dir / f"{'b' * 32}.bin"
    old_orphan.write_bytes(b"1234")
    young_orphan.write_bytes(b"12")
    age(old_orphan, TTL + 1, now)
    age(young_orphan, 10, now)
    kept = store.create_from_stream(io.BytesIO(b"kept")).ref
    lonely = store.create_from_stream(io.BytesIO(b"lonely")).ref
    (store.blobs_dir / f"{lonely.artifact_id}.bin").unlink()
    report = store.cleanup_temporary(now=now)
    assert report.orphans_removed == 2
    assert report.bytes_freed == 4
    assert not old_orphan.exists() and young_orphan.exists()
    assert not (store.metadata_dir / f"{lonely.artifact_id}.json").exists()
    assert [ref.artifact_id for ref in store.list()] == [kept.artifact_id]


def test_sweep_removes_the_blob_of_an_interrupted_commit(store):
    now = time.time()
    blob = store.blobs_dir / f"{FIXED_ID}.bin"
    staged = store.tmp_dir / f"{FIXED_ID}.json.part"
    blob.write_bytes(b"half committed")
    staged.write_text("{}")
    age(staged, TTL, now)  # the blob itself is young: only the staged metadata tells
    report = store.cleanup_temporary(now=now)
    assert not blob.exists() and not staged.exists()
    assert report.parts_removed == 1 and report.orphans_removed == 1
    assert report.bytes_freed == len(b"half committed") + len(b"{}")
    assert leftovers(store) == []


def test_sweep_keeps_a_fresh_interrupted_commit(store):
    now = time.time()
    blob = store.blobs_dir / f"{FIXED_ID}.bin"
    staged = store.tmp_dir / f"{FIXED_ID}.json.part"
    blob.write_bytes(b"in progress")
    staged.write_text("{}")
    store.cleanup_temporary(now=now)
    assert blob.exists() and staged.exists()


def test_a_sweep_as_if_far_in_the_future_expires_artifacts_but_keeps_young_temporary_files(store):
    """``now`` is honoured for expiry only: .part files and blobs without metadata are
    judged by the real clock, so a sweep dated 1e308 never takes a live upload's file."""
    part = store.tmp_dir / f"{'a' * 32}.part"
    part.write_bytes(b"live upload")
    staged = store.tmp_dir / f"{FIXED_ID}.json.part"
    (store.blobs_dir / f"{FIXED_ID}.bin").write_bytes(b"committing")
    staged.write_text("{}")
    young_orphan = store.blobs_dir / f"{'b' * 32}.bin"
    young_orphan.write_bytes(b"12")
    expiring = store.create_from_stream(io.BytesIO(b"old"), expires_at=time.time() + 3600).ref
    kept = store.create_from_stream(io.BytesIO(b"forever")).ref
    for far in (1e308, time.time() + TTL * 10):
        report = store.cleanup_temporary(now=far)
        assert report.parts_removed == 0 and part.read_bytes() == b"live upload"
        assert staged.exists() and (store.blobs_dir / f"{FIXED_ID}.bin").exists() and young_orphan.exists()
    assert [ref.artifact_id for ref in store.list()] == [kept.artifact_id]  # expiry did follow ``now``
    assert expiring.artifact_id not in {ref.artifact_id for ref in store.list()}
    age(part, TTL + 1, time.time())
    assert store.cleanup_temporary(now=1e308).parts_removed == 1  # stale by the clock: swept


def test_sweep_counts_unreadable_metadata_and_keeps_it(store):
    good = store.create_from_stream(io.BytesIO(b"good")).ref
    bad = store.create_from_stream(io.BytesIO(b"bad")).ref
    meta = store.metadata_dir / f"{bad.artifact_id}.json"
    meta.write_text("{ truncated")
    report = store.cleanup_temporary()
    assert report.unreadable_metadata == 1
    assert report.unreadable_ids == [bad.artifact_id]
    assert meta.exists() and (store.blobs_dir / f"{bad.artifact_id}.bin").exists()
    assert [ref.artifact_id for ref in store.list()] == [good.artifact_id]
    assert store.cleanup_temporary().unreadable_metadata == 1  # reported again, never hidden


def test_sweep_never_removes_an_artifact_committed_while_it_scans(store, monkeypatch):
    layout = store.layout
    real_blobs, real_metadata = layout.blobs, layout.metadata_files
    state = {"blobs_listed": False}
    committed = []

    def blobs():
        state["blobs_listed"] = True
        return real_blobs()

    def metadata_files():
        if state["blobs_listed"] and not committed:
            committed.append(store.create_from_stream(io.BytesIO(b"late arrival")).ref)
        return real_metadata()

    monkeypatch.setattr(layout, "blobs", blobs)
    monkeypatch.setattr(layout, "metadata_files", metadata_files)
    report = store.cleanup_temporary()
    monkeypatch.undo()
    assert committed, "the sweep listed blobs before metadata"
    assert report.orphans_removed == 0
    assert store.ref(committed[0].artifact_id) == committed[0]
    assert store.open_reader(committed[0].artifact_id).read() == b"late arrival"


def test_sweep_report_wire_form(store):
    report = store.cleanup_temporary()
    assert isinstance(report, SweepReport)
    assert report.to_wire() == {
        "parts_removed": 0,
        "expired_removed": 0,
        "orphans_removed": 0,
        "unreadable_metadata": 0,
        "bytes_freed": 0,
        "unreadable_ids": [],
    }


# ---------------------------------------------------------------- module helpers


@pytest.mark.parametrize(
    "name,expected",
    [
        ("report.csv", "report.csv"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", "artifact"),
        ("", "artifact"),
        (None, "artifact"),
        ("a b/c\\d:e", "a_b_c_d_e"),
        (".hidden", "hidden"),
        ("name.", "name"),
        ("x\x00y", "x_y"),
    ],
)
def test_safe_target_filename(name, expected):
    assert safe_target_filename(name) == expected


@given(st.text(max_size=60))
def test_safe_target_filename_is_never_a_path(name):
    cleaned = safe_target_filename(name)
    assert cleaned and "/" not in cleaned and "\x00" not in cleaned
    assert cleaned not in (".", "..") and not cleaned.startswith(".")
    assert Path(cleaned).name == cleaned


def test_paglet_file_ref_from_path_registers_size_checksum_and_location(tmp_path):
    path = tmp_path / "input.csv"
    path.write_bytes(b"1,2,3\n")
    ref = paglet_file_ref_from_path(path, name=None, mode="MOVE", host_name="alpha", host_url="http://alpha:1/")
    assert (ref.name, ref.mode, ref.status, ref.last_error) == (
        "input.csv",
        ARTIFACT_MOVE,
        ARTIFACT_STATUS_REGISTERED,
        "",
    )
    assert (ref.size_bytes, ref.sha256) == (6, sha(b"1,2,3\n"))
    assert ref.source_path == ref.current_path == str(path.resolve())
    assert ref.source_host_url == ref.current_host_url == "http://alpha:1"
    assert ref.source_host_name == ref.current_host_name == "alpha"
    assert ref.source_modified_at == os.stat(path).st_mtime
    assert paglet_file_ref_from_path(path, name=" logical ", mode="", host_name="a", host_url="u").name == "logical"
    assert paglet_file_ref_from_path(path, name="n", mode="", host_name="a", host_url="u").mode == ARTIFACT_COPY


def test_paglet_file_ref_from_path_errors(tmp_path):
    with pytest.raises(SourceUnavailable):
        paglet_file_ref_from_path(tmp_path / "missing", name=None, mode="copy", host_name="a", host_url="u")
    with pytest.raises(SourceUnavailable):
        paglet_file_ref_from_path(tmp_path, name=None, mode="copy", host_name="a", host_url="u")
    path = tmp_path / "f"
    path.write_bytes(b"")
    with pytest.raises(InvalidInput, match="mode"):
        paglet_file_ref_from_path(path, name=None, mode="link", host_name="a", host_url="u")
    with pytest.raises(InvalidInput, match="name"):
        paglet_file_ref_from_path(path, name="   ", mode="copy", host_name="a", host_url="u")


def test_metadata_json_is_indented_sorted_with_a_trailing_newline():
    ref = ArtifactRef(host_url="h", artifact_id=FIXED_ID, size_bytes=3)
    text = metadata_json(ref)
    assert text == json.dumps(ref.to_wire(), indent=2, sort_keys=True) + "\n"
    assert text.startswith('{\n  "artifact_id": ')
    odd = ArtifactRef(
        host_url="http://h/\u00e9",
        artifact_id=FIXED_ID,
        name='r\u00e9sum\u00e9 "q"\\\n\u2603.bin',
        size_bytes=2**40,
        created_at=1700000000.123456,
        expires_at=1e20,
        owner_agent_id="agent-\U0001f600",
    )
    assert metadata_json(odd) == json.dumps(odd.to_wire(), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- find_committed() and the scanning index


@pytest.mark.parametrize("lookup", ["find_committed", "adopt_committed"])
def test_committed_needs_both_metadata_and_blob(store, lookup):
    committed = getattr(store, lookup)
    assert committed(FIXED_ID) is None
    result = store.create_from_stream(io.BytesIO(b"x"), artifact_id=FIXED_ID)
    assert committed(FIXED_ID) == result
    store.layout.blob(FIXED_ID).unlink()
    assert committed(FIXED_ID) is None
    with pytest.raises(InvalidInput):
        committed("../x")


def test_find_committed_only_reads_and_adopt_committed_adds_to_the_index(store):
    result = store.create_from_stream(io.BytesIO(b"xyz"), artifact_id=FIXED_ID)
    added = []
    store.index.add = added.append  # what a redelivered import's lookup records
    assert store.find_committed(FIXED_ID) == result and added == []
    assert store.adopt_committed(FIXED_ID) == result and added == [result.ref]


def test_scan_index_answers_from_the_directory(store):
    index = store.index
    a = store.create_from_stream(io.BytesIO(b"aaa"), owner_agent_id="o1", expires_at=100).ref
    b = store.create_from_stream(io.BytesIO(b"bb"), owner_agent_id="o2").ref
    assert index.used_bytes() == 5
    assert sorted(index.all_ids()) == sorted([a.artifact_id, b.artifact_id])
    assert index.owner_ids("o1") == [a.artifact_id]
    assert index.expired_ids(99) == [] and index.expired_ids(100) == [a.artifact_id]
    # a file dropped in behind the store's back counts at once: the directory is the truth
    (store.blobs_dir / f"{FIXED_ID}.bin").write_bytes(b"1234")
    assert index.used_bytes() == 9


def test_scan_index_reservations(store):
    index = store.index
    index.reserve("aa", 10, quota_bytes=15)
    index.reserve("aa", 12, quota_bytes=15)  # reserving again replaces, never double counts
    assert index.used_bytes() == 12
    with pytest.raises(QuotaExceeded, match="16 bytes would exceed 15"):
        index.reserve("bb", 4, quota_bytes=15)
    index.reserve("bb", 3, quota_bytes=15)
    index.release("aa")
    index.release("aa")
    assert index.used_bytes() == 3
    index.add(ArtifactRef(host_url="h", artifact_id="bb"))
    index.removed("bb")
    assert index.used_bytes() == 0
    index.reserve("cc", 10**15, quota_bytes=None)
    assert index.used_bytes() == 10**15


def test_sweep_leaves_a_directory_named_like_a_part_file_alone(tmp_path):
    store = ArtifactStore(tmp_path / "store", host_url="http://h", fsync=False)
    odd = store.tmp_dir / "not-ours.part"
    odd.mkdir()
    stale = store.tmp_dir / f"{'a' * 32}.part"
    stale.write_bytes(b"xx")
    os.utime(odd, (0, 0))
    os.utime(stale, (0, 0))
    report = store.cleanup_temporary()
    assert report.parts_removed == 1 and not stale.exists()
    assert odd.is_dir()


class _InterruptedSource:
    """A read()-only source that runs ``meanwhile`` once, halfway through being read."""

    def __init__(self, data: bytes, meanwhile):
        self._data = io.BytesIO(data)
        self._half = len(data) // 2
        self._meanwhile = meanwhile

    def read(self, size: int = -1) -> bytes:
        if self._meanwhile is not None and self._data.tell() >= self._half:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return self._data.read(min(size, 4096) if size and size > 0 else 4096)


def test_an_overlapping_attempt_of_the_same_artifact_gives_way_without_touching_the_winner(tmp_path):
    from paglets_artifacts.errors import Superseded

    store = ArtifactStore(tmp_path / "store", host_url="http://h", fsync=False)
    artifact_id = "c" * 32
    first, second = os.urandom(300_000), os.urandom(300_000)
    committed = []

    def second_attempt() -> None:  # a redelivered copy of the job runs to the end meanwhile
        committed.append(store.create_from_stream(io.BytesIO(second), artifact_id=artifact_id))

    with pytest.raises(Superseded):
        store.create_from_stream(_InterruptedSource(first, second_attempt), artifact_id=artifact_id)
    ref = store.ref(artifact_id)
    assert ref == committed[0].ref
    assert store.blob_path(artifact_id).read_bytes() == second  # blob and metadata agree
    assert ref.sha256 == hashlib.sha256(second).hexdigest()
    assert list(store.tmp_dir.iterdir()) == []
    # Retried, the first attempt finds the artifact instead of writing another.
    assert store.create_from_stream(io.BytesIO(first), artifact_id=artifact_id).ref == ref


def test_a_failed_move_in_after_its_commit_keeps_the_blob_mode_and_does_not_revert_the_source(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store", host_url="http://h", fsync=False)
    source = tmp_path / "group-writable.bin"
    source.write_bytes(os.urandom(50_000))
    os.chmod(source, 0o664)
    calls = []

    def index_down(ref):
        calls.append(ref.artifact_id)
        raise ConnectionError("index unreachable")

    monkeypatch.setattr(store.index, "add", index_down)
    with pytest.raises(ConnectionError):
        store.create_from_path(source, delete_source=True, artifact_id="d" * 32)
    blob = store.blobs_dir / f"{'d' * 32}.bin"
    assert calls and blob.exists()  # the commit happened before the index failed
    assert stat.S_IMODE(blob.stat().st_mode) & 0o022 == 0


# ---------------------------------------------------------------------- reclaiming a job's leftovers


def test_reclaim_removes_parts_a_half_committed_blob_and_the_reservation(store):
    (store.tmp_dir / f"{FIXED_ID}.part").write_bytes(b"p" * 10)
    (store.tmp_dir / f"{FIXED_ID}.json.part").write_text("{}")
    (store.blobs_dir / f"{FIXED_ID}.bin").write_bytes(b"b" * 20)  # renamed in, metadata not
    store.index.reserve(FIXED_ID, 20, None)
    assert store.reclaim(FIXED_ID) == 10 + 2 + 20
    assert leftovers(store) == [] and store.index.used_bytes() == 0


def test_reclaim_keeps_a_whole_artifact_unless_asked_to_remove_it(store):
    ref = store.create_from_stream(io.BytesIO(b"whole"), artifact_id=FIXED_ID).ref
    assert store.reclaim(FIXED_ID) == 0
    assert store.ref(FIXED_ID) == ref and store.index.used_bytes() == 5
    assert store.reclaim(FIXED_ID, remove_committed=True) == 5
    assert leftovers(store) == [] and store.index.used_bytes() == 0


def test_reclaim_refuses_an_id_that_is_not_hex(store):
    with pytest.raises(InvalidInput):
        store.reclaim("../blobs/x")
