"""On-disk compatibility with a paglets host: a store directory laid out by hand, exactly as
the host protocol describes it, is served by our store, and ours is readable by theirs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path

import pytest

from paglets_artifacts import ArtifactNotFound, ArtifactRef, ArtifactStore

WIRE_KEYS = [
    "artifact_id",
    "compression",
    "created_at",
    "expires_at",
    "host_url",
    "name",
    "owner_agent_id",
    "sha256",
    "size_bytes",
]


def paglets_metadata_text(wire: dict) -> str:
    """How a paglets host writes ``metadata/<id>.json``."""
    return json.dumps(wire, indent=2, sort_keys=True) + "\n"


def lay_out_by_hand(root: Path, data: bytes, **fields) -> dict:
    """Write one artifact the way a paglets host does; return its wire form."""
    artifact_id = fields.pop("artifact_id", uuid.uuid4().hex)
    wire = {
        "host_url": "http://old-host:8470",
        "artifact_id": artifact_id,
        "name": "results.tar",
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "compression": "",
        "created_at": 1700000000.123456,
        "expires_at": 0.0,
        "owner_agent_id": "agent-42",
        **fields,
    }
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"{artifact_id}.bin").write_bytes(data)
    (root / "metadata" / f"{artifact_id}.json").write_text(paglets_metadata_text(wire), encoding="utf-8")
    return wire


def paglets_reads(root: Path, artifact_id: str) -> tuple[dict, bytes]:
    """What a paglets host reads back: the metadata JSON and the blob bytes."""
    wire = json.loads((root / "metadata" / f"{artifact_id}.json").read_text(encoding="utf-8"))
    return wire, (root / "blobs" / f"{artifact_id}.bin").read_bytes()


def test_a_hand_laid_store_round_trips_through_our_store(tmp_path):
    root = tmp_path / "store"
    data = os.urandom(5000)
    wire = lay_out_by_hand(root, data, compression="gzip", expires_at=4102444800.0)
    other = lay_out_by_hand(root, b"second", owner_agent_id="agent-7")
    store = ArtifactStore(root, host_url="http://new-host:9000/", fsync=False)

    ref = store.ref(wire["artifact_id"])
    assert ref == ArtifactRef.from_wire({**wire, "host_url": "http://new-host:9000"})
    assert ref.host_url == "http://new-host:9000"  # the store's current URL, not the one on disk
    assert sorted(r.artifact_id for r in store.list()) == sorted([wire["artifact_id"], other["artifact_id"]])
    assert [r.artifact_id for r in store.list(owner_agent_id="agent-42")] == [wire["artifact_id"]]
    with store.open_reader(wire["artifact_id"]) as reader:
        assert reader.read() == data
    assert store.blob_path(wire["artifact_id"]) == root.resolve() / "blobs" / f"{wire['artifact_id']}.bin"

    target = tmp_path / "work" / "results.tar"
    store.export_to_path(wire["artifact_id"], target, expected_sha256=wire["sha256"])
    assert target.read_bytes() == data

    report = store.cleanup_temporary()
    assert (report.expired_removed, report.orphans_removed, report.unreadable_metadata) == (0, 0, 0)
    # reading never rewrote the host's files
    assert (root / "metadata" / f"{wire['artifact_id']}.json").read_text() == paglets_metadata_text(wire)

    assert [r.artifact_id for r in store.delete_owner("agent-7").deleted] == [other["artifact_id"]]
    store.delete(wire["artifact_id"])
    assert list((root / "blobs").iterdir()) == [] and list((root / "metadata").iterdir()) == []


def test_a_hand_laid_store_without_tmp_directory_gets_one(tmp_path):
    root = tmp_path / "store"
    wire = lay_out_by_hand(root, b"x")
    store = ArtifactStore(root, host_url="http://h", fsync=False)
    assert (root / "tmp").is_dir()
    assert store.ref(wire["artifact_id"]).size_bytes == 1


def test_hand_laid_metadata_with_integer_times_and_no_optional_fields_is_read(tmp_path):
    root = tmp_path / "store"
    artifact_id = uuid.uuid4().hex
    (root / "blobs").mkdir(parents=True)
    (root / "metadata").mkdir()
    (root / "blobs" / f"{artifact_id}.bin").write_bytes(b"abc")
    minimal = {
        "artifact_id": artifact_id,
        "host_url": "http://h",
        "size_bytes": 3,
        "created_at": 1700000000,
        "expires_at": 0,
    }
    (root / "metadata" / f"{artifact_id}.json").write_text(paglets_metadata_text(minimal))
    store = ArtifactStore(root, host_url="http://h", fsync=False)
    ref = store.ref(artifact_id)
    assert (ref.created_at, ref.expires_at, ref.sha256, ref.name) == (1700000000.0, 0.0, "", "")
    target = tmp_path / "out"
    store.export_to_path(artifact_id, target)  # no checksum on record: size is still checked
    assert target.read_bytes() == b"abc"


def test_hand_laid_expired_artifact_is_swept(tmp_path):
    root = tmp_path / "store"
    wire = lay_out_by_hand(root, b"old", expires_at=1000.0)
    store = ArtifactStore(root, host_url="http://h", fsync=False)
    assert store.cleanup_temporary(now=1000.0).expired_removed == 1
    with pytest.raises(ArtifactNotFound):
        store.ref(wire["artifact_id"])


def test_our_metadata_is_byte_identical_to_the_paglets_format(tmp_path):
    root = tmp_path / "store"
    store = ArtifactStore(root, host_url="http://ours:8470", fsync=False)
    data = b"written by us"
    ref = store.create_from_stream(io.BytesIO(data), owner_agent_id="o", name="n", compression="zstd", expires_at=5).ref
    text = (root / "metadata" / f"{ref.artifact_id}.json").read_text(encoding="utf-8")
    assert text == paglets_metadata_text(ref.to_wire())
    wire, blob = paglets_reads(root, ref.artifact_id)
    assert sorted(wire) == WIRE_KEYS
    assert text == paglets_metadata_text(wire)
    assert blob == data and wire["sha256"] == hashlib.sha256(blob).hexdigest()
    assert wire["size_bytes"] == len(blob) and isinstance(wire["size_bytes"], int)
    assert isinstance(wire["created_at"], float) and wire["expires_at"] == 5.0 and isinstance(wire["expires_at"], float)
    assert len(ref.artifact_id) == 32 and ref.artifact_id == ref.artifact_id.lower()
    assert uuid.UUID(hex=ref.artifact_id).version == 4
    assert wire["host_url"] == "http://ours:8470"


def test_metadata_written_by_us_matches_metadata_laid_by_hand_for_the_same_artifact(tmp_path):
    ours = ArtifactStore(tmp_path / "ours", host_url="http://h", fsync=False)
    artifact_id = uuid.uuid4().hex
    ref = ours.create_from_stream(io.BytesIO(b"same"), artifact_id=artifact_id, name="f", owner_agent_id="a").ref
    theirs = tmp_path / "theirs"
    lay_out_by_hand(
        theirs,
        b"same",
        artifact_id=artifact_id,
        host_url="http://h",
        name="f",
        owner_agent_id="a",
        created_at=ref.created_at,
        expires_at=0.0,
    )
    for relative in (f"metadata/{artifact_id}.json", f"blobs/{artifact_id}.bin"):
        assert (tmp_path / "ours" / relative).read_bytes() == (theirs / relative).read_bytes(), relative


def test_a_store_written_by_us_is_served_by_a_second_store_on_the_same_directory(tmp_path):
    root = tmp_path / "shared"
    writer = ArtifactStore(root, host_url="http://writer", fsync=False)
    ref = writer.create_from_stream(io.BytesIO(b"shared bytes"), owner_agent_id="o").ref
    reader = ArtifactStore(root, host_url="http://reader", fsync=False)
    assert reader.ref(ref.artifact_id) == ArtifactRef(**{**ref.to_wire(), "host_url": "http://reader"})
    assert reader.open_reader(ref.artifact_id).read() == b"shared bytes"
