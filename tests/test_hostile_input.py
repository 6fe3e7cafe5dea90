"""Hostile input: fuzzed wire parsers, path traversal, planted symlinks and links, absurd
sizes, garbage messages on the job queues and malformed HTTP.

Every bad input fails with a typed error that names the problem (``InvalidInput`` and the
other ``TransferError`` classes, ``SettingsError`` for configuration); none crashes a
worker, hangs, escapes the store or the allowed roots, or leaves anything behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import socket
import stat
import time
import uuid
from pathlib import Path

import pytest
from dramatiq import Message
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from conftest import wait_until
from paglets_artifacts import (
    ArtifactJobs,
    ArtifactRef,
    ArtifactStore,
    ArtifactTooLarge,
    ChunkedRequestReader,
    InvalidInput,
    LimitedRequestReader,
    PagletFileRef,
    PathNotAllowed,
    QuotaExceeded,
    Settings,
    SettingsError,
    SizeMismatch,
    SourceUnavailable,
    TransferError,
    safe_target_filename,
)
from paglets_artifacts.http.remote import host_allowed
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.records import JobRecord
from paglets_artifacts.settings import PREFIX
from paglets_artifacts.store.artifacts import parse_content_length
from paglets_artifacts.store.paths import resolve_allowed, resolve_beneath

FUZZ = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: JSON-like values, the nasty ones included (NaN, infinities, huge ints, NUL, nesting).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["", "../../etc/passwd", "/etc/passwd", "a\x00b", "ab" * 16, "0" * 64, "http://h/x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _store(root: Path, **options) -> ArtifactStore:
    return ArtifactStore(root, host_url="http://127.0.0.1:8470", fsync=False, **options)


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


# ============================================================================ fuzzed parsers


class _ReadOnly:
    """A source with ``read`` and no ``readline`` (the reader's other code path)."""

    def __init__(self, data: bytes):
        self._buffer = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


@FUZZ
@given(data=st.binary(max_size=400), sizes=st.lists(st.integers(-1, 50), min_size=1, max_size=6), lines=st.booleans())
def test_the_chunked_reader_answers_any_bytes_with_bytes_or_a_framing_error(data, sizes, lines):
    reader = ChunkedRequestReader(io.BytesIO(data) if lines else _ReadOnly(data))
    out = bytearray()
    try:
        for i in range(len(data) + 5):  # every read that returns data consumes input: bounded
            size = sizes[i % len(sizes)] or 1
            piece = reader.read(size)
            assert size < 0 or len(piece) <= size
            if not piece:
                break
            out += piece
        else:
            pytest.fail("the reader kept returning data")
    except (InvalidInput, SizeMismatch):
        pass
    assert len(out) <= len(data)


@FUZZ
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=200), max_size=6),
    extension=st.sampled_from([b"", b";name=value", b' ; q="x"']),
    trailers=st.lists(st.sampled_from([b"X-Checksum: abc", b"Expires: 0"]), max_size=2),
    size=st.integers(1, 300),
    upper=st.booleans(),
)
def test_the_chunked_reader_decodes_the_body_and_never_reads_past_it(chunks, extension, trailers, size, upper):
    body = b""
    for chunk in chunks:
        length = f"{len(chunk):X}" if upper else f"{len(chunk):x}"
        body += length.encode() + extension + b"\r\n" + chunk + b"\r\n"
    body += b"0" + extension + b"\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    source = io.BytesIO(body + b"NEXT REQUEST")  # a pipelined request follows the body
    reader = ChunkedRequestReader(source)
    out = bytearray()
    while piece := reader.read(size):
        out += piece
    assert bytes(out) == b"".join(chunks)
    assert source.read() == b"NEXT REQUEST"


@FUZZ
@given(data=st.binary(max_size=300), declared=st.integers(0, 400), size=st.integers(1, 64))
def test_the_length_reader_returns_exactly_the_declared_bytes_or_size_mismatch(data, declared, size):
    source = io.BytesIO(data + b"NEXT")
    reader = LimitedRequestReader(source, declared)
    out = bytearray()
    try:
        while piece := reader.read(size):
            out += piece
    except SizeMismatch:
        assert len(data) + 4 < declared
        return
    assert bytes(out) == (data + b"NEXT")[:declared]
    assert source.tell() == declared  # never a byte more than declared


@pytest.mark.parametrize("bad", [-1, -(2**40), True, 1.5, "12", None])
def test_the_length_reader_refuses_a_declared_length_that_is_not_a_whole_number(bad):
    with pytest.raises(InvalidInput):
        LimitedRequestReader(io.BytesIO(b""), bad)


@FUZZ
@given(value=st.one_of(st.text(max_size=30), st.integers(), st.none(), st.floats()))
def test_content_length_is_plain_ascii_digits_or_invalid_input(value):
    try:
        length = parse_content_length(value)
    except InvalidInput:
        return
    text = "" if value is None else str(value).strip()
    assert length == (int(text) if text else 0) and length >= 0
    assert text == "" or (text.isascii() and text.isdigit() and len(text) <= 19)


_REF_FIELDS = [
    "host_url",
    "artifact_id",
    "name",
    "size_bytes",
    "sha256",
    "compression",
    "created_at",
    "expires_at",
    "owner_agent_id",
]


@FUZZ
@given(
    payload=st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(_REF_FIELDS + ["extra"]), json_values, max_size=10),
        st.fixed_dictionaries(
            {"artifact_id": st.sampled_from(["ab" * 16, "AB" * 16, "../x"])},
            optional={key: json_values for key in _REF_FIELDS[2:]},
        ),
    )
)
def test_artifact_ref_from_wire_parses_or_raises_invalid_input(payload):
    try:
        ref = ArtifactRef.from_wire(payload)
    except InvalidInput:
        return
    blobs = Path("/store/blobs")
    assert (blobs / f"{ref.artifact_id}.bin").parent == blobs and "/" not in ref.artifact_id
    assert ref.size_bytes >= 0 and math.isfinite(ref.expires_at) and ref.expires_at >= 0
    assert ArtifactRef.from_wire(json.loads(json.dumps(ref.to_wire()))) == ref


_FILE_REF_FIELDS = [
    "name",
    "mode",
    "source_host_name",
    "source_host_url",
    "source_path",
    "source_created_at",
    "source_modified_at",
    "size_bytes",
    "sha256",
    "current_host_name",
    "current_host_url",
    "current_path",
    "status",
    "last_error",
]


@FUZZ
@given(
    payload=st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(_FILE_REF_FIELDS), json_values, max_size=14),
        st.fixed_dictionaries(
            {"name": st.text(min_size=1, max_size=10)},
            optional={
                "mode": st.sampled_from(["copy", "MOVE", "link"]),
                "status": st.sampled_from(["registered", "available", "gone"]),
                "size_bytes": json_values,
            },
        ),
    )
)
def test_paglet_file_ref_from_wire_parses_or_raises_invalid_input(payload):
    try:
        ref = PagletFileRef.from_wire(payload)
    except InvalidInput:
        return
    assert ref.name.strip() and ref.mode in ("copy", "move") and ref.size_bytes >= 0
    assert PagletFileRef.from_wire(json.loads(json.dumps(ref.to_wire()))) == ref


def _argument_values(name: str) -> st.SearchStrategy:
    near = {
        "path": ["/files/a.bin", "relative.bin", "/files/../../etc/passwd", "/a\x00b", ""],
        "target": ["/files/out.bin", "out.bin", "/"],
        "artifact_id": ["ab" * 16, "../etc", "", "g" * 32],
        "url": [
            "http://peer:8470/artifacts/" + "ab" * 16,
            "ftp://x/y",
            "http://user:pw@peer/x",
            "http://",
            "http://[::1/x",
            "http://peer:99999/x",
            "http://peer:port/x",
        ],
        "host_url": ["http://peer:8470", "https://peer/", "http://k:secret@peer", "javascript:x"],
        "expected_sha256": ["0" * 64, "z" * 64, ""],
        "owner_agent_id": ["agent", "", " ", "a\x00"],
    }.get(name, [])
    return st.one_of(json_values, st.sampled_from(near)) if near else json_values


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(contract.KINDS.values(), key=lambda k: k.name)))
def test_every_job_kind_validates_any_arguments_or_raises_invalid_input(data, kind):
    names = sorted(kind.arguments) + ["bogus"]
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    kwargs = {name: data.draw(_argument_values(name)) for name in chosen}
    try:
        values = kind.validate(kwargs)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert set(values) == set(kind.arguments)
    assert kind.validate(values) == values  # what a host sends, a worker accepts unchanged
    for name in ("path", "target"):
        if name in values:
            assert values[name].startswith("/") and "\x00" not in values[name]
    if "artifact_id" in values:
        assert (Path("/s") / f"{values['artifact_id']}.bin").parent == Path("/s")
    for name in ("url", "host_url"):
        if name in values:
            assert values[name].split("://", 1)[0] in ("http", "https") and "@" not in values[name].split("/")[2]


@pytest.mark.parametrize("bad", [[], "x", 3, None])
def test_job_arguments_that_are_not_a_mapping_are_invalid_input(bad):
    with pytest.raises(InvalidInput):
        contract.IMPORT.validate(bad)


_RECORD_FIELDS = [
    "kind",
    "state",
    "enqueued_at",
    "started_at",
    "finished_at",
    "attempts",
    "bytes_done",
    "bytes_total",
    "result",
    "error",
    "worker",
    "arguments",
    "checkpoint",
]


@FUZZ
@given(
    data=st.dictionaries(
        st.sampled_from(_RECORD_FIELDS) | st.binary(max_size=4),
        st.text(max_size=20)
        | st.binary(max_size=20)
        | st.sampled_from(["inf", "nan", "1e400", "-0", "[]", "{}", "null", '{"type": 1}', "\xff"]),
        max_size=12,
    )
)
def test_a_job_record_hash_parses_or_raises_invalid_input(data):
    try:
        record = JobRecord.from_hash("job-1", data)
    except InvalidInput as exc:
        assert "job-1" in str(exc)
        return
    assert record.error is None or isinstance(record.error, dict)
    assert isinstance(record.arguments, dict)


_SETTING_VARS = [name for name, _, _ in Settings.documented()]


@FUZZ
@given(
    env=st.dictionaries(
        st.sampled_from(_SETTING_VARS),
        st.text(max_size=30) | st.sampled_from(["-1", "1e309", "nan", "none", "0", "http://[::1", "a=b=c", "* * * *"]),
        max_size=6,
    )
)
def test_settings_from_any_environment_parse_or_raise_settings_error(env):
    try:
        Settings.from_env(env)
    except SettingsError as exc:
        message = str(exc)
        var = message.split("=", 1)[0]
        assert var in env  # the error names the variable
        shown = message.split("=", 1)[1]
        if var in (PREFIX + "API_KEY", PREFIX + "HOST_API_KEYS"):
            assert shown.startswith("***")  # never a secret's value
        if var == "REDIS_URL" and "@" in env[var]:
            assert shown.startswith("'***@")  # nor what may be a password


@pytest.mark.parametrize("raw", ["redis//:hunter2@host:6379", ":hunter2@"])
def test_a_malformed_redis_url_is_reported_without_its_password(raw):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"REDIS_URL": raw})
    assert "hunter2" not in str(raised.value) and "REDIS_URL" in str(raised.value)


@FUZZ
@given(name=st.text(max_size=40))
def test_a_safe_target_filename_never_leaves_its_directory(name):
    cleaned = safe_target_filename(name)
    assert cleaned and cleaned not in (".", "..") and not cleaned.startswith(".")
    assert "/" not in cleaned and "\x00" not in cleaned
    assert (Path("/work") / cleaned).parent == Path("/work")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    """An allowed root with links inside it (one pointing out) and a secret outside it."""
    base = tmp_path_factory.mktemp("tree")
    root, outside = base / "root", base / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "link-out").symlink_to(outside)
    (root / "link-in").symlink_to(root / "a")
    (root / "a" / "up").symlink_to("../..")  # relative: points at base
    (root / "loop").symlink_to(root / "loop")
    return root.resolve(), outside.resolve()


@FUZZ
@given(
    parts=st.lists(
        st.sampled_from(["..", ".", "", "a", "b", "link-out", "link-in", "up", "loop", "secret", "x\x00", "%2e%2e"]),
        max_size=8,
    )
)
def test_a_resolved_source_or_target_always_lies_under_an_allowed_root(tree, parts):
    root, outside = tree
    text = str(root) + "/" + "/".join(parts)
    try:
        resolved = resolve_allowed(text, [root], what="import source")
    except (InvalidInput, PathNotAllowed):
        return
    assert resolved == root or resolved.is_relative_to(root)
    assert not resolved.is_relative_to(outside)


@pytest.mark.parametrize(
    "url",
    [
        "http://peer.example:8470/paglets/../admin/x",
        "http://peer.example:8470/paglets/%2e%2e/admin",
        "http://peer.example:8470/paglets/./../x",
        "http://peer.example:8470@evil.example/paglets/x",
        "http://evil.example#@peer.example:8470/paglets/x",
        "http://peer.example:8471/paglets/x",
        "https://peer.example:8470/paglets/x",
        "http://peer.example.evil/paglets/x",
        "http://[::1/paglets",
        "file:///etc/passwd",
    ],
)
def test_the_remote_host_allow_list_is_not_fooled(url):
    assert not host_allowed(url, ["http://peer.example:8470/paglets"])


def test_the_remote_host_allow_list_admits_what_lies_under_an_entry():
    assert host_allowed("http://PEER.example:8470/paglets/artifacts/ab", ["http://peer.example:8470/paglets"])
    assert host_allowed("http://peer.example/x", ["http://peer.example:80"])


# ============================================================================ path traversal

BAD_IDS = [
    "../etc/passwd",
    "..",
    "/etc/passwd",
    "a/b",
    "ab/../cd",
    "%2e%2e",
    "",
    " ",
    "ab\x00cd",
    "ａｂ",
    "0x1f",
    "g" * 32,
    "a" * 129,
    None,
    12,
    ["ab"],
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_an_id_that_is_not_hex_never_reaches_a_path(bad, tmp_path):
    store = _store(tmp_path / "store")
    target = tmp_path / "out.bin"
    before = _files_under(tmp_path)
    calls = [
        lambda: store.ref(bad),
        lambda: store.blob_path(bad),
        lambda: store.open_reader(bad),
        lambda: store.remove(bad),
        lambda: store.delete(bad),
        lambda: store.finish_removal(bad),
        lambda: store.export_to_path(bad, target),
    ]
    if bad is not None:  # None means "make one up" for these two
        calls += [
            lambda: store.create_from_stream(io.BytesIO(b"x"), artifact_id=bad),
            lambda: store.export_to_path("ab" * 16, target, part_token=bad),
        ]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()
    assert _files_under(tmp_path) == before


def test_names_owners_and_compressions_are_stored_as_text_never_as_paths(tmp_path):
    store = _store(tmp_path / "store")
    hostile = '../../../etc/passwd\x00\n"}{'
    ref = store.create_from_stream(io.BytesIO(b"data"), name=hostile, owner_agent_id=hostile, compression=hostile).ref
    assert _files_under(tmp_path) == [f"store/blobs/{ref.artifact_id}.bin", f"store/metadata/{ref.artifact_id}.json"]
    assert store.ref(ref.artifact_id) == ref and ref.name == hostile
    assert [r.artifact_id for r in store.list(owner_agent_id=hostile)] == [ref.artifact_id]
    assert store.delete_owner(hostile).deleted == [ref]


@pytest.mark.parametrize("path", ["relative/x.bin", "", "/a\x00b", "~/x"])
def test_a_host_cannot_enqueue_a_relative_or_nul_path(jobs, path):
    with pytest.raises(InvalidInput):
        jobs.import_file(path)
    with pytest.raises(InvalidInput):
        jobs.export("ab" * 16, path)
    assert jobs.jobs() == []


def test_sources_and_targets_that_escape_the_allowed_roots_are_refused_by_workers(
    settings, jobs, workers, files, tmp_path
):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(b"do not read")
    (files / "door").symlink_to(outside)  # a directory link out of the root
    (files / "trap.bin").symlink_to(secret)  # a file link out of the root
    (files / "real.bin").write_bytes(b"inside")
    workers.start()
    ref = ArtifactRef.from_wire(jobs.import_file(str(files / "real.bin")).wait(30))
    cases = [
        jobs.import_file(str(files / ".." / "outside" / "secret.bin")),
        jobs.import_file(str(files / "sub" / ".." / ".." / "outside" / "secret.bin")),
        jobs.import_file(str(files / "door" / "secret.bin")),
        jobs.import_file(str(files / "trap.bin")),
        jobs.export(ref.artifact_id, str(files / "door" / "planted.bin")),
        jobs.export(ref.artifact_id, str(files / "trap.bin")),
        jobs.export(ref.artifact_id, str(files / ".." / "outside" / "planted.bin")),
    ]
    for job in cases:
        with pytest.raises(PathNotAllowed):
            job.wait(30)
        assert job.status().attempts == 1
    assert sorted(p.name for p in outside.iterdir()) == ["secret.bin"] and secret.read_bytes() == b"do not read"
    assert [r.artifact_id for r in ArtifactStore.from_settings(settings).list()] == [ref.artifact_id]


# ============================================================================ symlinks and links


def test_a_symlink_planted_as_a_part_file_is_replaced_never_followed(tmp_path):
    store = _store(tmp_path / "store")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    artifact_id = uuid.uuid4().hex
    (store.tmp_dir / f"{artifact_id}.part").symlink_to(victim)
    (store.tmp_dir / f"{artifact_id}.json.part").symlink_to(victim)
    ref = store.create_from_stream(io.BytesIO(b"payload"), artifact_id=artifact_id).ref
    assert victim.read_text() == "untouched"
    assert (store.blobs_dir / f"{artifact_id}.bin").read_bytes() == b"payload"
    assert not (store.blobs_dir / f"{artifact_id}.bin").is_symlink() and store.ref(artifact_id) == ref
    assert list(store.tmp_dir.iterdir()) == []


def test_a_blob_replaced_by_a_symlink_is_never_served_or_exported(tmp_path):
    store = _store(tmp_path / "store")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    ref = store.create_from_stream(io.BytesIO(b"data")).ref
    blob = store.blobs_dir / f"{ref.artifact_id}.bin"
    blob.unlink()
    blob.symlink_to(secret)
    with pytest.raises(TransferError):
        store.open_reader(ref.artifact_id)
    target = tmp_path / "work" / "out.bin"
    with pytest.raises(TransferError):
        store.export_to_path(ref.artifact_id, target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_an_export_onto_a_symlink_replaces_the_link_not_what_it_points_to(tmp_path):
    store = _store(tmp_path / "store")
    ref = store.create_from_stream(io.BytesIO(b"new bytes")).ref
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    target = tmp_path / "work" / "out.bin"
    target.parent.mkdir()
    target.symlink_to(victim)
    store.export_to_path(ref.artifact_id, target)
    assert victim.read_text() == "untouched"
    assert not target.is_symlink() and target.read_bytes() == b"new bytes"


def _swapped_root(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An allowed root whose directory ``d`` is checked, then swapped for a link to outside/."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    return root.resolve(), root.resolve() / "d", outside


def test_a_source_whose_directory_became_a_symlink_is_refused_and_outside_stays_untouched(tmp_path):
    store = _store(tmp_path / "store")
    root, d, outside = _swapped_root(tmp_path)
    (d / "src.bin").write_bytes(b"inside")
    (outside / "src.bin").write_bytes(b"outside secret")
    for delete_source in (False, True):
        source = resolve_beneath(d / "src.bin", [root], what="import source")
        d.rename(root / "d.moved")
        d.symlink_to(outside, target_is_directory=True)
        with pytest.raises(PathNotAllowed, match=r"import source path .*/d/src\.bin refused: .*/d is not a directory"):
            store.create_from_path(source, delete_source=delete_source)
        d.unlink()
        (root / "d.moved").rename(d)
    assert (outside / "src.bin").read_bytes() == b"outside secret"  # neither read nor removed
    assert store.list() == [] and list(store.tmp_dir.iterdir()) == []


def test_a_moved_in_source_is_linked_and_removed_through_its_directory_not_its_name(tmp_path):
    # The directory is renamed (within the root) after it was opened: the import still
    # reads, links and removes the file it opened, and nothing under the old name.
    store = _store(tmp_path / "store")
    root = (tmp_path / "store").resolve()  # the store's filesystem: a move-in, not a copy
    (root / "in").mkdir()
    (root / "in" / "src.bin").write_bytes(b"moved in")
    source = resolve_beneath(root / "in" / "src.bin", [root], what="import source")
    renamed = []

    def progress(done: int, total: int) -> None:
        if not renamed:
            (root / "in").rename(root / "in.renamed")
            (root / "in").mkdir()
            (root / "in" / "src.bin").write_bytes(b"a bystander under the old name")
            renamed.append(True)

    ref = store.create_from_path(source, delete_source=True, progress=progress).ref
    assert renamed and store.open_reader(ref.artifact_id).read() == b"moved in"
    assert not (root / "in.renamed" / "src.bin").exists()  # the imported file is gone
    assert (root / "in" / "src.bin").read_bytes() == b"a bystander under the old name"


def test_an_export_whose_directory_became_a_symlink_writes_nothing_outside(tmp_path):
    store = _store(tmp_path / "store")
    ref = store.create_from_stream(io.BytesIO(b"exported")).ref
    root, d, outside = _swapped_root(tmp_path)
    for token in (None, "ab" * 16):
        target = resolve_beneath(d / "sub" / "out.bin", [root], what="export target")
        d.rename(root / "d.moved")
        d.symlink_to(outside, target_is_directory=True)
        with pytest.raises(
            PathNotAllowed, match=r"export target path .*/d/sub/out\.bin refused: .*/d is not a directory"
        ):
            store.export_to_path(ref.artifact_id, target, part_token=token)
        d.unlink()
        (root / "d.moved").rename(d)
    assert list(outside.iterdir()) == []  # no directory made, no .part, no target
    target = resolve_beneath(d / "sub" / "out.bin", [root], what="export target")
    store.export_to_path(ref.artifact_id, target)  # and once it is a directory again, the export works
    assert (d / "sub" / "out.bin").read_bytes() == b"exported"


def test_a_stale_symlink_in_tmp_is_swept_as_a_link(tmp_path):
    store = _store(tmp_path / "store")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    link = store.tmp_dir / f"{uuid.uuid4().hex}.part"
    link.symlink_to(victim)
    os.utime(link, (0, 0), follow_symlinks=False)
    report = store.cleanup_temporary()
    assert report.parts_removed == 1 and not link.is_symlink() and victim.read_text() == "untouched"


@pytest.mark.parametrize("which", ["tmp", "blobs", "metadata"])
def test_a_store_directory_that_is_a_symlink_is_refused(tmp_path, which):
    root = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    (root / which).symlink_to(elsewhere)
    with pytest.raises(TransferError, match="symlink"):
        _store(root)
    assert list(elsewhere.iterdir()) == []


def test_an_import_source_that_is_a_symlink_or_a_fifo_is_refused_at_once(tmp_path):
    store = _store(tmp_path / "store")
    real = tmp_path / "real.bin"
    real.write_bytes(b"real")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with pytest.raises(SourceUnavailable):
        store.create_from_path(link)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="not a file"):
        store.create_from_path(fifo)  # no writer: it must not block
    assert time.monotonic() - started < 5
    assert store.list() == []


def test_a_source_with_other_hard_links_is_copied_not_moved_in(tmp_path):
    store = _store(tmp_path / "store")
    source = tmp_path / "inbox" / "model.bin"
    source.parent.mkdir()
    source.write_bytes(b"original")
    other = tmp_path / "inbox" / "other-name.bin"
    os.link(source, other)
    ref = store.create_from_path(source, delete_source=True).ref
    blob = store.blobs_dir / f"{ref.artifact_id}.bin"
    assert not source.exists() and blob.stat().st_ino != other.stat().st_ino
    other.write_bytes(b"tampered")  # through the other name: the artifact must not change
    assert blob.read_bytes() == b"original"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == ref.sha256


def test_a_move_in_falls_back_to_a_copy_where_hard_links_are_refused(tmp_path, monkeypatch):
    store = _store(tmp_path / "store")
    source = tmp_path / "model.bin"
    source.write_bytes(b"payload" * 1000)

    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    ref = store.create_from_path(source, delete_source=True).ref
    assert not source.exists()
    assert (store.blobs_dir / f"{ref.artifact_id}.bin").read_bytes() == b"payload" * 1000
    assert list(store.tmp_dir.iterdir()) == []


def test_a_half_removed_artifact_is_finished_but_a_whole_one_is_left_alone(tmp_path):
    store = _store(tmp_path / "store")
    whole = store.create_from_stream(io.BytesIO(b"whole")).ref
    half = store.create_from_stream(io.BytesIO(b"half!!")).ref
    (store.metadata_dir / f"{half.artifact_id}.json").unlink()  # what a kill mid-removal leaves
    assert store.finish_removal(whole.artifact_id) == 0
    assert store.finish_removal(half.artifact_id) == 6
    assert store.list() == [whole] and _files_under(store.blobs_dir) == [f"{whole.artifact_id}.bin"]


def test_an_export_part_left_by_a_killed_attempt_is_replaced(tmp_path):
    store = _store(tmp_path / "store")
    ref = store.create_from_stream(io.BytesIO(b"bytes")).ref
    target = tmp_path / "work" / "out.bin"
    target.parent.mkdir()
    token = uuid.uuid4().hex
    (target.parent / f".out.bin.{token}.part").write_bytes(b"half")
    store.export_to_path(ref.artifact_id, target, part_token=token)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"] and target.read_bytes() == b"bytes"


# ============================================================================ sizes


@pytest.mark.parametrize("size", [-2, -(2**63), True, 1.0, "5"])
def test_a_negative_or_mistyped_declared_size_is_invalid_input(tmp_path, size):
    store = _store(tmp_path / "store")
    with pytest.raises(InvalidInput):
        store.create_from_stream(io.BytesIO(b"abc"), size_bytes=size)
    assert _files_under(store.root) == []


def test_a_huge_declared_size_is_refused_before_a_byte_is_written(tmp_path):
    store = _store(tmp_path / "store", max_artifact_bytes=1024**3)
    with pytest.raises(ArtifactTooLarge):
        store.create_from_stream(io.BytesIO(b"abc"), size_bytes=2**70)
    quota = _store(tmp_path / "quota", max_artifact_bytes=0, quota_bytes=10**6)
    with pytest.raises(QuotaExceeded):
        quota.create_from_stream(io.BytesIO(b"abc"), size_bytes=2**62)
    assert quota.index.used_bytes() == 0  # no reservation leaked
    uncapped = _store(tmp_path / "uncapped", max_artifact_bytes=0, quota_bytes=None)
    with pytest.raises(SizeMismatch):
        uncapped.create_from_stream(io.BytesIO(b"abc"), size_bytes=2**70)
    for each in (store, quota, uncapped):
        assert _files_under(each.root) == []


def test_a_huge_declared_size_is_refused_by_the_shared_index_without_leaking_a_reservation(settings, redis_client):
    store = ArtifactStore.from_settings(
        settings.with_changes(max_artifact_bytes=0, quota_bytes=10**6), redis=redis_client
    )
    with pytest.raises(QuotaExceeded):
        store.create_from_stream(io.BytesIO(b"abc"), size_bytes=2**62)
    with pytest.raises(SizeMismatch):
        store.create_from_stream(io.BytesIO(b"abc"), size_bytes=1000)
    assert store.index.used_bytes() == 0 and store.index.figures()["reservations"] == 0


def test_a_chunk_declaring_an_absurd_size_ends_in_a_typed_error(tmp_path):
    store = _store(tmp_path / "store", max_artifact_bytes=1024)
    headers = {"Transfer-Encoding": "chunked"}
    with pytest.raises(SizeMismatch):
        store.create_from_http_request(headers, io.BytesIO(b"ffffffffffffffff\r\nshort"))
    with pytest.raises(SizeMismatch):
        store.create_from_http_request(headers, io.BytesIO(b"ffffffff\r\n" + b"x" * 5000))
    with pytest.raises(ArtifactTooLarge):  # a whole body over the cap
        store.create_from_http_request(headers, io.BytesIO(b"1388\r\n" + b"x" * 5000 + b"\r\n0\r\n\r\n"))
    assert _files_under(store.root) == []


@pytest.mark.parametrize("kwargs", [{"expected_size": -1}, {"expires_at": -1.0}, {"expires_at": float("inf")}])
def test_negative_sizes_and_times_in_job_arguments_are_refused_by_the_host(jobs, kwargs):
    with pytest.raises(InvalidInput):
        jobs.import_url("http://peer.example:8470/artifacts/" + "ab" * 16, **kwargs)


# ============================================================================ garbage on the queues


def _raw(
    jobs: ArtifactJobs, actor: str, kwargs, *, args=(), queue=contract.TRANSFER_QUEUE, message_id=None, timestamp=None
) -> str:
    message = Message(
        queue_name=queue,
        actor_name=actor,
        args=args,
        kwargs=kwargs,
        options={},
        message_id=message_id or str(uuid.uuid4()),
        message_timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
    )
    jobs.broker.enqueue(message)
    return message.message_id


def test_garbage_messages_on_the_queues_fail_cleanly_are_reported_and_spare_the_worker(settings, jobs, workers, files):
    (files / "x.bin").write_bytes(b"x")
    transfer, maintenance = contract.TRANSFER_QUEUE, contract.MAINTENANCE_QUEUE
    cases = {  # message id -> (error type, ...) expected in its job record
        _raw(jobs, contract.IMPORT.actor_name, {"path": 12}): "InvalidInput",
        _raw(jobs, contract.IMPORT.actor_name, {"path": str(files / "x.bin"), "delete_source": "yes"}): "InvalidInput",
        _raw(jobs, contract.IMPORT.actor_name, {"path": str(files / "x.bin"), "expires_at": "soon"}): "InvalidInput",
        _raw(jobs, contract.IMPORT.actor_name, {}): "InvalidInput",
        _raw(jobs, contract.IMPORT.actor_name, [1, 2]): "TypeError",
        _raw(jobs, contract.IMPORT.actor_name, {"path": str(files / "x.bin")}, message_id="../../etc"): "InvalidInput",
        _raw(jobs, contract.EXPORT.actor_name, {"artifact_id": "../x", "target": str(files / "o")}): "InvalidInput",
        _raw(jobs, contract.EXPORT.actor_name, {"artifact_id": "ab" * 16, "target": None}): "InvalidInput",
        _raw(jobs, contract.SWEEP.actor_name, {"now": "x"}, queue=maintenance): "InvalidInput",
        _raw(jobs, contract.SWEEP.actor_name, {"now": float("nan")}, queue=maintenance): "InvalidInput",
        _raw(jobs, contract.DELETE_OWNER.actor_name, {"owner_agent_id": ""}, queue=maintenance): "InvalidInput",
        _raw(jobs, contract.REINDEX.actor_name, {"full": True}, queue=maintenance): "InvalidInput",
        _raw(jobs, contract.IMPORT_URL.actor_name, {"url": "http://k:secret@peer/x"}): "InvalidInput",
    }
    late = _raw(jobs, contract.IMPORT.actor_name, {"path": str(files / "x.bin")}, timestamp="yesterday")
    unknown = _raw(jobs, "paglets_artifacts_rm_rf", {"path": "/"}, queue=transfer)
    workers.start(threads=2)

    for message_id, error_type in cases.items():
        record = wait_until(
            lambda message_id=message_id: (r := jobs.records.get(message_id)) and r.done and r, timeout=30
        )
        assert record.state == "failed" and record.attempts == 1, record
        assert record.error["type"] == error_type and record.error["message"], record.error
    # A garbage timestamp does not stop an otherwise good job, nor its record.
    assert wait_until(lambda: (r := jobs.records.get(late)) and r.done and r, timeout=30).state == "succeeded"
    # An unknown actor has no job record: the worker logs it and moves it to the dead-letter queue.
    wait_until(lambda: "undefined actor 'paglets_artifacts_rm_rf'" in workers.logs(), timeout=30)
    assert jobs.records.get(unknown) is None
    # Nothing killed a worker thread: both threads still take jobs, and nothing was written.
    assert "Exception in thread" not in workers.logs()
    parallel = [jobs.import_file(str(files / "x.bin")) for _ in range(6)]
    assert all(job.wait(30)["size_bytes"] == 1 for job in parallel)
    assert not (files / "o").exists()


def test_an_undecodable_message_does_not_stop_the_queue(settings, jobs, workers, files):
    queue = f"{settings.namespace}:{contract.TRANSFER_QUEUE}"
    garbage = str(uuid.uuid4())
    jobs.client.hset(f"{queue}.msgs", garbage, b"\xff\xfe not a message")
    jobs.client.rpush(queue, garbage)
    (files / "x.bin").write_bytes(b"x")
    job = jobs.import_file(str(files / "x.bin"))  # fetched together with the garbage
    workers.start()
    assert job.wait(30)["size_bytes"] == 1
    wait_until(lambda: "moved to the dead-letter queue" in workers.logs(), timeout=10)
    assert jobs.client.hget(f"{queue}.XQ.msgs", garbage) == b"\xff\xfe not a message"
    assert "Consumer encountered an unexpected error" not in workers.logs()


# ============================================================================ malformed HTTP


def _raw_http(url: str, request: bytes, *, timeout: float = 2.0) -> bytes:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        try:
            conn.sendall(request)
        except OSError:
            return b""
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except (TimeoutError, OSError):
            pass
        return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture
def http_server(settings, jobs):
    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread

    store = ArtifactStore.from_settings(settings, redis=jobs.client)
    with ServerThread(create_app(settings, store=store, jobs=jobs)) as server:
        yield server, store


H = b"Host: x\r\nConnection: close\r\n"
HTTP_CASES = {
    "not http": (b"\x00\x01\x02 garbage\r\n\r\n", 400),
    "negative content-length": (b"POST /artifacts HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello", 400),
    "two content-lengths": (
        b"POST /artifacts HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "bad chunk size": (
        b"POST /artifacts HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "huge header": (b"GET /artifacts HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n", 400),
    "encoded traversal id": (b"GET /artifacts/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\n" + H + b"\r\n", 404),
    "dot-dot path": (b"GET /artifacts/../../etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 404),
    "NUL in id": (b"GET /artifacts/ab%00cd HTTP/1.1\r\n" + H + b"\r\n", 400),
    "delete traversal": (b"DELETE /artifacts/..%2f..%2fstore HTTP/1.1\r\n" + H + b"\r\n", 404),
    "negative size query": (b"POST /artifacts?size=-1 HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", 400),
    "huge size query": (
        b"POST /artifacts?size=99999999999999999999999 HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
        400,
    ),
    "NaN expiry": (b"POST /artifacts?expires_at=nan HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", 400),
    "bad sha256": (b"POST /artifacts?sha256=zz HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", 400),
    "job body not JSON": (b"POST /jobs/import HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\n{{{{{", 400),
    "job body a list of no objects": (b"POST /jobs/import HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\n[1]", 400),
    "job argument mistyped": (b"POST /jobs/import HTTP/1.1\r\n" + H + b'Content-Length: 12\r\n\r\n{"path": 12}', 400),
    "job relative path": (
        b"POST /jobs/import HTTP/1.1\r\n" + H + b'Content-Length: 21\r\n\r\n{"path": "../secret"}',
        400,
    ),
    "job unknown kind": (b"POST /jobs/rm HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}", 404),
    "job body too large": (b"POST /jobs/sweep HTTP/1.1\r\n" + H + b"Content-Length: 70000\r\n\r\n" + b" " * 70000, 400),
    "job id traversal": (b"GET /jobs/..%2f..%2fx HTTP/1.1\r\n" + H + b"\r\n", 404),
    "negative limit": (b"GET /jobs?limit=-5 HTTP/1.1\r\n" + H + b"\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_malformed_http_is_answered_with_a_client_error_and_leaves_nothing(http_server, case):
    server, store = http_server
    request, status = HTTP_CASES[case]
    answer = _raw_http(server.url, request)
    assert _status(answer) == status, answer[:300]
    body = answer.split(b"\r\n\r\n", 1)[1]
    if body.startswith(b"{"):
        error = json.loads(body)
        assert error["error_type"] in ("TransferError", "HostError") and error["error"]
    # a body the parser refused is answered at once; the upload that had begun removes its
    # .part when it hears of the disconnect, a moment later
    wait_until(lambda: _files_under(store.root) == [], timeout=10)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /artifacts HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"x" * 1000,
        b"POST /artifacts HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n" + b"x" * 1000,
        b"POST /artifacts HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + b"x" * 16,
    ],
    ids=["short body", "absurd chunk", "no final chunk"],
)
def test_an_upload_cut_short_leaves_nothing_and_the_server_keeps_serving(http_server, request_bytes):
    server, store = http_server
    host, port = server.url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request_bytes)
    wait_until(lambda: _files_under(store.root) == [], timeout=10)
    assert _status(_raw_http(server.url, b"GET /artifacts HTTP/1.1\r\n" + H + b"\r\n")) == 200


#: Query strings and job bodies that once answered 500: each must be a 400 InvalidInput
#: whose message names what was wrong.
MALFORMED_QUERIES = {
    "superscript limit": ("GET", "/jobs?limit=%C2%B2", None, "limit"),
    "circled limit": ("GET", "/jobs?limit=%E2%91%A0", None, "limit"),
    "5000-digit limit": ("GET", "/jobs?limit=" + "9" * 5000, None, "limit"),
    "arabic-indic limit": ("GET", "/jobs?limit=%D9%A3", None, "limit"),
    "superscript size": ("POST", "/artifacts?size=%C2%B2", b"hello", "size"),
    "5000-digit size": ("POST", "/artifacts?size=" + "9" * 5000, b"hello", "size"),
    "superscript expiry": ("POST", "/artifacts?expires_at=%C2%B2", b"hello", "expires_at"),
    "arabic-indic expiry": ("POST", "/artifacts?expires_at=%D9%A3", b"hello", "expires_at"),
    "5000-digit expiry": ("POST", "/artifacts?expires_at=" + "9" * 5000, b"hello", "expires_at"),
    "nested brackets": ("POST", "/jobs/sweep", b"[" * 1000 + b"]" * 1000, "nested"),
    "nested objects": ("POST", "/jobs/import", b'{"path": ' + b'{"a": ' * 400 + b"1" + b"}" * 401, "nested"),
    "argument named like a parameter": ("POST", "/jobs/sweep", b'{"kind": 1}', "kind"),
    "argument named self": ("POST", "/jobs/sweep", b'{"self": 1}', "self"),
    "invalid UTF-8": ("POST", "/jobs/sweep", b'{"now": "\xff"}', "JSON"),
    "5000-digit number": ("POST", "/jobs/sweep", b'{"now": ' + b"9" * 5000 + b"}", "JSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_QUERIES))
def test_malformed_queries_and_job_bodies_are_invalid_input_never_a_500(http_server, case):
    import httpx

    server, store = http_server
    method, target, body, named = MALFORMED_QUERIES[case]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        answer = client.request(method, target, content=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["error_class"] == "InvalidInput" and named in error["error"]
        assert client.get("/jobs").status_code == 200  # and the server goes on
    assert _files_under(store.root) == []


def test_job_body_nesting_is_refused_before_parsing_even_below_the_size_cap(http_server):
    import httpx

    from paglets_artifacts.http.limits import MAX_JOB_BODY_BYTES, MAX_JSON_DEPTH

    server, _store = http_server
    deep = b'{"now": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}"
    shallow = b'{"now": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    brackets_in_text = b'{"owner_agent_id": "' + b"[" * 5000 + b'"}'
    assert len(deep) < MAX_JOB_BODY_BYTES
    with httpx.Client(base_url=server.url, timeout=10) as client:
        refused = client.post("/jobs/sweep", content=deep)
        assert refused.status_code == 400 and "nested" in refused.json()["error"]
        # Within the bound, the body is parsed and judged by the contract (a list is no time).
        judged = client.post("/jobs/sweep", content=shallow)
        assert judged.status_code == 400 and "finite Unix time" in judged.json()["error"]
        # Brackets inside a string are text, not nesting.
        accepted = client.post("/jobs/delete_owner", content=brackets_in_text)
        assert accepted.status_code == 202, accepted.text


# ============================================================================ secrets and permissions


def test_settings_never_show_secrets():
    shown = repr(
        Settings(
            redis_url="rediss://app:hunter2@redis.example:6380/0",
            api_key="topsecret",
            host_api_keys=(("http://peer:8470", "k3y-of-peer"),),
        )
    )
    for secret in ("hunter2", "topsecret", "k3y-of-peer"):
        assert secret not in shown
    assert "rediss://app:***@redis.example:6380/0" in shown and "http://peer:8470" in shown
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({PREFIX + "HOST_API_KEYS": "no-equals-sign-secret"})
    assert "no-equals-sign-secret" not in str(raised.value)


@pytest.mark.parametrize("url", ["http://user:pw@peer:8470/artifacts/x", "http://token@peer/x", "https://:pw@peer/x"])
def test_credentials_in_urls_are_refused_so_no_job_record_carries_them(jobs, url):
    with pytest.raises(InvalidInput, match="credentials"):
        jobs.import_url(url)
    with pytest.raises(InvalidInput, match="credentials"):
        jobs.export_to_host("ab" * 16, url)
    assert jobs.jobs() == []


def test_api_keys_and_the_redis_password_never_reach_job_records_or_logs(settings, tmp_path, workers):
    """A pull from a peer that requires a key, on a Redis that requires a password."""
    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread
    from paglets_artifacts.redis_server import EmbeddedRedis

    password, peer_key, own_key = "redis-pw-7f3a9c", "peer-key-2b8e41", "own-key-9d0c55"
    with EmbeddedRedis(password=password) as redis_server:
        secured = settings.with_changes(redis_url=redis_server.url, api_key=own_key)
        peer_settings = secured.with_changes(
            store_root=tmp_path / "peer-store", api_key=peer_key, namespace=settings.namespace + "-peer"
        )
        peer_jobs = ArtifactJobs(settings=peer_settings)
        with ServerThread(create_app(peer_settings, jobs=peer_jobs)) as peer:
            import httpx

            uploaded = httpx.post(
                f"{peer.url}/artifacts", content=b"from the peer", headers={"Authorization": f"Bearer {peer_key}"}
            ).json()["artifact"]
            secured = secured.with_changes(allowed_hosts=(peer.url,), host_api_keys=((peer.url, peer_key),))
            workers.start(settings=secured)
            jobs = ArtifactJobs(settings=secured)
            url = f"{peer.url}/artifacts/{uploaded['artifact_id']}"
            ref = ArtifactRef.from_wire(jobs.import_url(url).wait(60))
            assert ref.sha256 == uploaded["sha256"]
            refused = jobs.import_url(f"{peer.url}/artifacts/{'0' * 32}")  # a failure is logged too
            with pytest.raises(TransferError):
                refused.wait(60)
            stored = []
            for key in jobs.client.scan_iter(match=f"{settings.namespace}*"):
                kind = jobs.client.type(key)
                if kind == b"hash":
                    stored += [v for pair in jobs.client.hgetall(key).items() for v in pair]
                elif kind == b"string":
                    stored.append(jobs.client.get(key))
                elif kind == b"list":
                    stored += jobs.client.lrange(key, 0, -1)
                elif kind == b"zset":
                    stored += [m for m, _ in jobs.client.zrange(key, 0, -1, withscores=True)]
            text = b"\n".join(stored).decode(errors="replace") + workers.logs()
            for secret in (password, peer_key, own_key):
                assert secret not in text, f"{secret} leaked"
            jobs.close()
        peer_jobs.close()


def test_store_files_carry_no_more_permission_than_the_umask_allows(tmp_path):
    previous = os.umask(0o027)
    try:
        store = _store(tmp_path / "store")
        ref = store.create_from_stream(io.BytesIO(b"private")).ref
        source = tmp_path / "world-writable.bin"
        source.write_bytes(b"moved in")
        os.chmod(source, 0o666)
        moved = store.create_from_path(source, delete_source=True).ref
        target = tmp_path / "out.bin"
        store.export_to_path(ref.artifact_id, target)
    finally:
        os.umask(previous)
    for path in [store.blobs_dir / f"{ref.artifact_id}.bin", store.metadata_dir / f"{ref.artifact_id}.json", target]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o027 == 0, path
    for directory in (store.root, store.blobs_dir, store.metadata_dir, store.tmp_dir):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o027 == 0, directory
    # A moved-in source keeps its inode, and with it its mode: that is why the store drops write bits.
    moved_mode = stat.S_IMODE((store.blobs_dir / f"{moved.artifact_id}.bin").stat().st_mode)
    assert moved_mode & 0o022 == 0, oct(moved_mode)


def test_a_made_up_method_is_refused_by_the_parser_with_a_client_error(http_server):
    server, store = http_server
    answer = _raw_http(server.url, b"FOO1 /artifacts HTTP/1.1\r\n" + H + b"\r\n")
    assert _status(answer) == 400
    assert _files_under(store.root) == []


def test_a_request_head_just_under_the_bound_is_served(http_server):
    from paglets_artifacts.http.limits import MAX_REQUEST_HEAD_BYTES

    server, _ = http_server
    padding = b"X-Pad: " + b"a" * (MAX_REQUEST_HEAD_BYTES - 200) + b"\r\n"
    answer = _raw_http(server.url, b"GET /artifacts HTTP/1.1\r\n" + H + padding + b"\r\n")
    assert _status(answer) == 200


def test_a_job_body_declaring_a_non_ascii_length_is_read_not_a_crash():
    """h11 refuses such a header itself; behind another server the application must not crash."""
    import anyio
    from starlette.requests import Request

    from paglets_artifacts.http.job_bodies import read_job_body

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/jobs/sweep",
        "query_string": b"",
        "headers": [(b"content-length", "²".encode("latin-1"))],
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    assert anyio.run(read_job_body, Request(scope, receive)) == {}


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_a_request_head_over_the_bound_is_refused_however_it_is_split(http_server, pieces):
    from paglets_artifacts.http.limits import MAX_REQUEST_HEAD_BYTES

    server, _ = http_server
    request = (
        b"GET /artifacts HTTP/1.1\r\n"
        + H
        + b"X-Pad: "
        + b"a" * (MAX_REQUEST_HEAD_BYTES + 50_000)
        + b"\r\n"
        + b"X-More: b\r\n\r\n"
    )
    host, port = server.url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        step = -(-len(request) // pieces)
        try:
            for offset in range(0, len(request), step):
                conn.sendall(request[offset : offset + step])
                time.sleep(0.05)  # each piece its own read on the server
        except OSError:
            pass  # refused mid-head: the server closed the connection
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
    assert _status(answer) == 400, answer[:200]
