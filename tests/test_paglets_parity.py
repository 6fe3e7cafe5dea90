"""Drop-in parity with the installed paglets' ``paglets.artifacts``: every public name is
importable from ``paglets_artifacts`` with a compatible signature and the same behaviour,
except for the differences named here (each one deliberate, each one asserted).

A paglets release that adds a name or a parameter fails here, not in a user's host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import os
import time
import types

import paglets.artifacts as theirs
import paglets.core.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import paglets_artifacts as ours
from paglets_artifacts import InvalidInput, SizeMismatch, SweepReport


def public_names(module: types.ModuleType) -> dict[str, object]:
    """What ``from module import *`` would give a user: the module's own names and the
    paglets names it re-exports (not the standard library it imports)."""
    names = {}
    for name, value in vars(module).items():
        if name.startswith("_") or name == "annotations" or isinstance(value, types.ModuleType):
            continue
        origin = getattr(value, "__module__", None)
        if origin is not None and not str(origin).startswith("paglets"):
            continue
        names[name] = value
    return names


THEIR_NAMES = public_names(theirs)


def incompatibilities(their_fn: object, our_fn: object) -> list[str]:
    """Ways a call written for ``their_fn`` would break against ``our_fn``."""
    mine = inspect.signature(our_fn)
    problems = []
    positional = [
        p.name
        for p in inspect.signature(their_fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    our_positional = [
        p.name for p in mine.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if our_positional[: len(positional)] != positional:
        problems.append(f"positional parameters {positional} vs ours {our_positional}")
    theirs_by_name = inspect.signature(their_fn).parameters
    for name, param in theirs_by_name.items():
        if name not in mine.parameters:
            problems.append(f"parameter {name!r} missing")
            continue
        ours_param = mine.parameters[name]
        if ours_param.kind != param.kind:
            problems.append(f"parameter {name!r} is {ours_param.kind.description}, theirs {param.kind.description}")
        if ours_param.default != param.default:
            problems.append(f"parameter {name!r} defaults to {ours_param.default!r}, theirs {param.default!r}")
    for name, param in mine.parameters.items():
        if name not in theirs_by_name and (param.kind is not param.KEYWORD_ONLY or param.default is param.empty):
            problems.append(f"our extra parameter {name!r} must be keyword-only with a default")
    return problems


def test_every_public_name_of_paglets_artifacts_is_importable_from_ours():
    assert len(THEIR_NAMES) >= 20  # the filter above still sees paglets' API
    missing = sorted(set(THEIR_NAMES) - set(dir(ours)))
    assert missing == [], f"paglets.artifacts has names paglets_artifacts lacks: {missing}"
    assert set(THEIR_NAMES) <= set(ours.__all__)


@pytest.mark.parametrize("name", sorted(THEIR_NAMES))
def test_signatures_and_values_are_compatible(name):
    their_value, our_value = THEIR_NAMES[name], getattr(ours, name)
    if inspect.isclass(their_value):
        assert inspect.isclass(our_value)
        problems = incompatibilities(their_value.__init__, our_value.__init__)
        for attr, member in vars(their_value).items():
            if attr.startswith("_"):
                continue
            assert hasattr(our_value, attr), f"{name}.{attr} is missing"
            if callable(member) or isinstance(member, (classmethod, staticmethod)):
                problems += [
                    f"{attr}: {p}" for p in incompatibilities(getattr(their_value, attr), getattr(our_value, attr))
                ]
        if dataclasses.is_dataclass(their_value):
            assert [f.name for f in dataclasses.fields(our_value)] == [f.name for f in dataclasses.fields(their_value)]
        assert problems == []
    elif callable(their_value):
        assert incompatibilities(their_value, our_value) == []
    else:
        assert our_value == their_value


# ---------------------------------------------------------------------- same behaviour


def _ops() -> st.SearchStrategy:
    return st.lists(st.tuples(st.sampled_from(["read", "readline"]), st.integers(-1, 40)), max_size=30)


_BODIES = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"."))  # newlines galore, no CR confusion


@settings(max_examples=200, deadline=None)
@given(body=_BODIES, ops=_ops())
def test_limited_reader_reads_and_readlines_exactly_as_paglets(body, ops):
    a, b = (
        theirs.LimitedRequestReader(io.BytesIO(body), len(body)),
        ours.LimitedRequestReader(io.BytesIO(body), len(body)),
    )
    for op, size in ops:
        assert getattr(b, op)(size) == getattr(a, op)(size)


@settings(max_examples=200, deadline=None)
@given(body=_BODIES, cuts=st.lists(st.integers(1, 50), max_size=10), ops=_ops())
def test_chunked_reader_reads_and_readlines_exactly_as_paglets(body, cuts, ops):
    framed, rest = bytearray(), body
    for cut in cuts + [len(body)]:
        piece, rest = rest[:cut], rest[cut:]
        if piece:
            framed += b"%x\r\n" % len(piece) + piece + b"\r\n"
    framed += b"0\r\n\r\n"
    a, b = theirs.ChunkedRequestReader(io.BytesIO(bytes(framed))), ours.ChunkedRequestReader(io.BytesIO(bytes(framed)))
    for op, size in ops:
        assert getattr(b, op)(size) == getattr(a, op)(size)
    assert b.read() == a.read()


@given(name=st.text(max_size=40))
def test_safe_target_filename_is_paglets(name):
    assert ours.safe_target_filename(name) == theirs.safe_target_filename(name)


def test_hashing_copying_and_file_refs_match_paglets(tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    assert ours.file_sha256(source) == theirs.file_sha256(source) == hashlib.sha256(source.read_bytes()).hexdigest()
    assert ours.copy_stream(io.BytesIO(b"abc" * 1000), io.BytesIO()) == theirs.copy_stream(
        io.BytesIO(b"abc" * 1000), io.BytesIO()
    )
    ours.copy_path(source, tmp_path / "a" / "ours.bin")
    theirs.copy_path(source, tmp_path / "b" / "theirs.bin")
    assert (tmp_path / "a" / "ours.bin").read_bytes() == (tmp_path / "b" / "theirs.bin").read_bytes()
    mine = ours.paglet_file_ref_from_path(source, name=None, mode="move", host_name="h", host_url="http://h:1/")
    paglets_ref = theirs.paglet_file_ref_from_path(
        source, name=None, mode="move", host_name="h", host_url="http://h:1/"
    )
    assert mine.to_wire() == paglets_ref.to_wire()
    assert ours.PagletFileRef.from_wire(paglets_ref.to_wire()).to_wire() == paglets_ref.to_wire()


def test_a_store_directory_is_shared_both_ways_with_paglets_store(tmp_path):
    """paglets' store and ours over one directory: each reads, exports, lists and deletes
    what the other wrote, and both sweep expired artifacts alike."""
    root = tmp_path / "store"
    paglets_store = theirs.ArtifactStore(root, host_url="http://paglets:1")
    our_store = ours.ArtifactStore(root, host_url="http://ours:2", fsync=False)
    data = os.urandom(2 * 1024 * 1024 + 1)
    by_paglets = paglets_store.create_from_stream(io.BytesIO(data), size_bytes=len(data), owner_agent_id="o", name="p")
    by_us = our_store.create_from_stream(io.BytesIO(data), size_bytes=len(data), owner_agent_id="o", name="u")
    for store, url in ((paglets_store, "http://paglets:1"), (our_store, "http://ours:2")):
        refs = store.list(owner_agent_id="o")
        assert sorted(r.artifact_id for r in refs) == sorted([by_paglets.ref.artifact_id, by_us.ref.artifact_id])
        assert {r.host_url for r in refs} == {url}  # each store stamps its own current URL
        for ref in refs:
            target = tmp_path / "out" / f"{url[7:11]}-{ref.artifact_id}"
            store.export_to_path(ref.artifact_id, target)
            assert target.read_bytes() == data
    assert our_store.ref(by_paglets.ref.artifact_id).to_wire() == {
        **by_paglets.ref.to_wire(),
        "host_url": "http://ours:2",
    }
    expired = our_store.create_from_stream(io.BytesIO(b"old"), size_bytes=3, expires_at=time.time() - 5).ref
    paglets_store.cleanup_temporary()
    assert [r.artifact_id for r in our_store.list() if r.artifact_id == expired.artifact_id] == []
    our_store.delete_owner("o")
    assert paglets_store.list() == []


# ---------------------------------------------------------------------- where we differ, on purpose


def test_difference_errors_are_our_classes_not_paglets(tmp_path):
    """Our errors are ``paglets_artifacts.TransferError`` subclasses (precise classes a job
    record can carry), not paglets' ``TransferError``. Inside a paglets Host with offloading
    attached, the store's errors reach paglets as paglets' own TransferError (see
    tests/test_paglets_host.py)."""
    assert not issubclass(ours.TransferError, paglets.core.errors.TransferError)
    with pytest.raises(paglets.core.errors.TransferError):
        theirs.ArtifactStore(tmp_path / "p", host_url="http://p").ref("not-hex!")
    with pytest.raises(ours.InvalidInput):
        ours.ArtifactStore(tmp_path / "o", host_url="http://o", fsync=False).ref("not-hex!")


def test_difference_a_short_body_is_an_error_not_a_short_artifact(tmp_path):
    paglets_store = theirs.ArtifactStore(tmp_path / "p", host_url="http://p")
    assert paglets_store.create_from_stream(io.BytesIO(b"abc"), size_bytes=10).ref.size_bytes == 3
    our_store = ours.ArtifactStore(tmp_path / "o", host_url="http://o", fsync=False)
    with pytest.raises(SizeMismatch):
        our_store.create_from_stream(io.BytesIO(b"abc"), size_bytes=10)
    with pytest.raises(SizeMismatch):
        ours.LimitedRequestReader(io.BytesIO(b""), 1).read()
    assert theirs.LimitedRequestReader(io.BytesIO(b""), 1).read() == b""


def test_difference_inputs_are_validated(tmp_path):
    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    paglets_store = theirs.ArtifactStore(tmp_path / "p", host_url="http://p")
    assert paglets_store.create_from_path(source, owner_agent_id=123).ref.owner_agent_id == 123  # type: ignore[arg-type]
    our_store = ours.ArtifactStore(tmp_path / "o", host_url="http://o", fsync=False)
    with pytest.raises(InvalidInput):
        our_store.create_from_path(source, owner_agent_id=123)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        our_store.create_from_stream(io.BytesIO(b"x"), size_bytes=1, expires_at=float("nan"))


def test_difference_cleanup_temporary_reports_what_it_removed(tmp_path):
    assert theirs.ArtifactStore(tmp_path / "p", host_url="http://p").cleanup_temporary() is None
    assert isinstance(
        ours.ArtifactStore(tmp_path / "o", host_url="http://o", fsync=False).cleanup_temporary(), SweepReport
    )


@pytest.mark.parametrize("chunk", [1000, 1024 * 1024, 3 * 1024 * 1024 + 5])
def test_chunked_reads_of_a_chunk_size_after_readline_fill_as_paglets(chunk):
    body = b"header line\n" + os.urandom(4 * 1024 * 1024)
    framed = b"".join(
        b"%x\r\n" % len(body[i : i + chunk]) + body[i : i + chunk] + b"\r\n" for i in range(0, len(body), chunk)
    )
    framed += b"0\r\n\r\n"
    a, b = theirs.ChunkedRequestReader(io.BytesIO(framed)), ours.ChunkedRequestReader(io.BytesIO(framed))
    assert b.readline() == a.readline() == b"header line\n"
    while True:
        mine, paglets_piece = b.read(1024 * 1024), a.read(1024 * 1024)
        assert mine == paglets_piece
        if not mine:
            break
