"""Value types, their wire forms, and the validators that guard every id, checksum and time."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import paglets_artifacts
from paglets_artifacts import (
    ARTIFACT_COPY,
    ARTIFACT_MOVE,
    ARTIFACT_STATUS_AVAILABLE,
    ARTIFACT_STATUS_FAILED,
    ARTIFACT_STATUS_REGISTERED,
    DEFAULT_ARTIFACT_MAX_BYTES,
    DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS,
    DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES,
    STREAM_CHUNK_BYTES,
    ArtifactRef,
    ArtifactWriteResult,
    InvalidInput,
    PagletFileRef,
    TransferError,
)
from paglets_artifacts.errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    ChecksumMismatch,
    JobFailed,
    QuotaExceeded,
    RemoteError,
    SizeMismatch,
    SourceUnavailable,
    error_class,
)
from paglets_artifacts.refs import (
    normalize_file_mode,
    validate_artifact_id,
    validate_expires_at,
    validate_sha256,
)

SHA = "ab" * 32
AID = "0123456789abcdef0123456789abcdef"

ARTIFACT_WIRE_KEYS = {
    "host_url",
    "artifact_id",
    "name",
    "size_bytes",
    "sha256",
    "compression",
    "created_at",
    "expires_at",
    "owner_agent_id",
}
FILE_WIRE_KEYS = {
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
}


def artifact_wire(**changes):
    wire = {
        "host_url": "http://host-a:8470",
        "artifact_id": AID,
        "name": "data.bin",
        "size_bytes": 12,
        "sha256": SHA,
        "compression": "gzip",
        "created_at": 1700000000.25,
        "expires_at": 1700003600.0,
        "owner_agent_id": "agent-1",
    }
    wire.update(changes)
    return wire


def file_wire(**changes):
    wire = {
        "name": "input.csv",
        "mode": "move",
        "source_host_name": "alpha",
        "source_host_url": "http://alpha:8470",
        "source_path": "/data/input.csv",
        "source_created_at": 1.5,
        "source_modified_at": 2.5,
        "size_bytes": 99,
        "sha256": SHA,
        "current_host_name": "beta",
        "current_host_url": "http://beta:8470",
        "current_path": "/work/input.csv",
        "status": "available",
        "last_error": "",
    }
    wire.update(changes)
    return wire


# ---------------------------------------------------------------- constants and exports


def test_constants_have_the_reference_values():
    assert (ARTIFACT_COPY, ARTIFACT_MOVE) == ("copy", "move")
    assert (ARTIFACT_STATUS_REGISTERED, ARTIFACT_STATUS_AVAILABLE, ARTIFACT_STATUS_FAILED) == (
        "registered",
        "available",
        "failed",
    )
    assert DEFAULT_ARTIFACT_MAX_BYTES == 1024**3
    assert DEFAULT_ARTIFACT_STORAGE_QUOTA_BYTES == 10 * 1024**3
    assert DEFAULT_ARTIFACT_SPOOL_TTL_SECONDS == 24 * 3600
    assert STREAM_CHUNK_BYTES == 1024 * 1024


def test_reference_api_names_are_importable_from_the_package():
    for name in (
        "ArtifactStore",
        "ArtifactRef",
        "PagletFileRef",
        "ArtifactWriteResult",
        "file_sha256",
        "safe_target_filename",
        "paglet_file_ref_from_path",
        "copy_stream",
        "copy_path",
        "LimitedRequestReader",
        "ChunkedRequestReader",
        "TransferError",
    ):
        assert hasattr(paglets_artifacts, name), name
        assert name in paglets_artifacts.__all__


@pytest.mark.parametrize(
    "cls",
    [
        InvalidInput,
        ArtifactNotFound,
        ChecksumMismatch,
        SizeMismatch,
        ArtifactTooLarge,
        QuotaExceeded,
        SourceUnavailable,
    ],
)
def test_every_store_error_is_a_transfer_error_and_maps_back_by_name(cls):
    assert issubclass(cls, TransferError)
    assert error_class(cls.__name__) is cls


def test_unknown_error_names_map_to_job_failed():
    assert error_class("SomethingNew") is JobFailed
    assert issubclass(JobFailed, TransferError)


def test_remote_error_keeps_the_remote_type_and_status():
    error = RemoteError("refused", remote_type="QuotaExceeded", status=507)
    assert (str(error), error.remote_type, error.status) == ("refused", "QuotaExceeded", 507)


# ---------------------------------------------------------------- validators


@pytest.mark.parametrize("value", [AID, "abc", "ABCDEF0123", "0" * 128])
def test_validate_artifact_id_accepts_hex(value):
    assert validate_artifact_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "../x", "..", "abc/def", "/abs", "ab cd", "g" * 32, "0x12", "abc\x00", "１２３", "0" * 129, None, 12, b"abc"],
)
def test_validate_artifact_id_refuses_anything_but_hex(value):
    with pytest.raises(InvalidInput, match="artifact id"):
        validate_artifact_id(value)


def test_validate_sha256_lowercases_and_checks_length_and_digits():
    assert validate_sha256("AB" * 32) == "ab" * 32
    for bad in ["ab" * 31, "ab" * 33, "zz" * 32, "", None, 5, " " + "a" * 63]:
        with pytest.raises(InvalidInput, match="sha256"):
            validate_sha256(bad)


def test_validate_sha256_names_the_field_it_checks():
    with pytest.raises(InvalidInput, match="expected sha256"):
        validate_sha256("nope", field="expected sha256")


@pytest.mark.parametrize("value,expected", [(0, 0.0), (0.0, 0.0), (1700000000, 1700000000.0), ("12.5", 12.5)])
def test_validate_expires_at_accepts_finite_times(value, expected):
    result = validate_expires_at(value)
    assert result == expected and isinstance(result, float)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), -1, -0.5, "nan", "inf", "soon", None, True, [], {}]
)
def test_validate_expires_at_refuses_non_finite_negative_and_non_numbers(value):
    with pytest.raises(InvalidInput, match="expires_at"):
        validate_expires_at(value)


def test_normalize_file_mode():
    assert normalize_file_mode(" MOVE ") == "move"
    assert normalize_file_mode("") == "copy"
    assert normalize_file_mode(None) == "copy"
    with pytest.raises(InvalidInput, match="mode"):
        normalize_file_mode("link")


# ---------------------------------------------------------------- ArtifactRef


def test_artifact_ref_wire_has_exactly_the_protocol_keys_and_round_trips():
    ref = ArtifactRef.from_wire(artifact_wire())
    wire = ref.to_wire()
    assert set(wire) == ARTIFACT_WIRE_KEYS
    assert wire == artifact_wire()
    assert ArtifactRef.from_wire(json.loads(json.dumps(wire))) == ref


def test_artifact_ref_is_frozen():
    ref = ArtifactRef(host_url="http://h", artifact_id=AID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.name = "other"  # type: ignore[misc]


def test_artifact_ref_from_wire_fills_missing_optional_fields_with_defaults():
    ref = ArtifactRef.from_wire({"artifact_id": AID})
    assert ref == ArtifactRef(host_url="", artifact_id=AID)
    assert ref.expires_at == 0.0 and ref.size_bytes == 0 and ref.sha256 == ""


def test_artifact_ref_from_wire_normalises_types():
    ref = ArtifactRef.from_wire(artifact_wire(size_bytes=12.0, created_at=5, expires_at=0, sha256="AB" * 32))
    assert ref.size_bytes == 12 and isinstance(ref.size_bytes, int)
    assert isinstance(ref.created_at, float) and isinstance(ref.expires_at, float)
    assert ref.sha256 == "ab" * 32


@pytest.mark.parametrize(
    "changes,field_name",
    [
        ({"artifact_id": None}, "artifact_id"),
        ({"artifact_id": "../etc"}, "artifact id"),
        ({"artifact_id": 7}, "artifact_id"),
        ({"host_url": 1}, "host_url"),
        ({"name": ["x"]}, "name"),
        ({"compression": 0}, "compression"),
        ({"owner_agent_id": False}, "owner_agent_id"),
        ({"size_bytes": -1}, "size_bytes"),
        ({"size_bytes": 1.5}, "size_bytes"),
        ({"size_bytes": "12"}, "size_bytes"),
        ({"size_bytes": True}, "size_bytes"),
        ({"size_bytes": float("nan")}, "size_bytes"),
        ({"sha256": "xyz"}, "sha256"),
        ({"created_at": "now"}, "created_at"),
        ({"created_at": float("inf")}, "created_at"),
        ({"expires_at": float("nan")}, "expires_at"),
        ({"expires_at": -5}, "expires_at"),
        ({"expires_at": "later"}, "expires_at"),
    ],
)
def test_artifact_ref_from_wire_errors_name_the_field(changes, field_name):
    with pytest.raises(InvalidInput, match=field_name):
        ArtifactRef.from_wire(artifact_wire(**changes))


@pytest.mark.parametrize("payload", [None, [], "text", 5])
def test_artifact_ref_from_wire_needs_an_object(payload):
    with pytest.raises(InvalidInput, match="ArtifactRef"):
        ArtifactRef.from_wire(payload)  # type: ignore[arg-type]


hex_ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)
texts = st.text(max_size=40)
times = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(
    host_url=texts,
    artifact_id=hex_ids,
    name=texts,
    size_bytes=st.integers(min_value=0, max_value=2**53),
    sha256=st.one_of(st.just(""), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
    compression=texts,
    created_at=times,
    expires_at=times,
    owner=texts,
)
def test_artifact_ref_json_round_trip_property(
    host_url, artifact_id, name, size_bytes, sha256, compression, created_at, expires_at, owner
):
    ref = ArtifactRef(
        host_url=host_url,
        artifact_id=artifact_id,
        name=name,
        size_bytes=size_bytes,
        sha256=sha256,
        compression=compression,
        created_at=created_at,
        expires_at=expires_at,
        owner_agent_id=owner,
    )
    assert ArtifactRef.from_wire(json.loads(json.dumps(ref.to_wire()))) == ref


# ---------------------------------------------------------------- PagletFileRef


def test_paglet_file_ref_wire_has_exactly_the_protocol_keys_and_round_trips():
    ref = PagletFileRef.from_wire(file_wire())
    wire = ref.to_wire()
    assert set(wire) == FILE_WIRE_KEYS
    assert wire == file_wire()
    assert PagletFileRef.from_wire(json.loads(json.dumps(wire))) == ref


def test_paglet_file_ref_defaults():
    ref = PagletFileRef.from_wire({"name": " report.txt "})
    assert ref.name == "report.txt"
    assert (ref.mode, ref.status, ref.size_bytes, ref.sha256) == ("copy", "registered", 0, "")
    assert PagletFileRef(name="x").to_wire()["status"] == ARTIFACT_STATUS_REGISTERED


def test_paglet_file_ref_is_mutable_so_status_can_advance():
    ref = PagletFileRef.from_wire(file_wire(status="registered"))
    ref.status = ARTIFACT_STATUS_FAILED
    ref.last_error = "gone"
    assert PagletFileRef.from_wire(ref.to_wire()).status == "failed"


@pytest.mark.parametrize(
    "changes,field_name",
    [
        ({"name": None}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 3}, "name"),
        ({"mode": "link"}, "mode"),
        ({"mode": 1}, "mode"),
        ({"status": "lost"}, "status"),
        ({"size_bytes": -3}, "size_bytes"),
        ({"sha256": "00"}, "sha256"),
        ({"source_created_at": "yesterday"}, "source_created_at"),
        ({"source_modified_at": float("nan")}, "source_modified_at"),
        ({"source_path": 5}, "source_path"),
        ({"current_host_url": []}, "current_host_url"),
        ({"last_error": {}}, "last_error"),
    ],
)
def test_paglet_file_ref_from_wire_errors_name_the_field(changes, field_name):
    with pytest.raises(InvalidInput, match=field_name):
        PagletFileRef.from_wire(file_wire(**changes))


def test_paglet_file_ref_from_wire_needs_an_object():
    with pytest.raises(InvalidInput, match="PagletFileRef"):
        PagletFileRef.from_wire(["name", "x"])  # type: ignore[arg-type]


@given(
    name=st.text(min_size=1, max_size=30).filter(lambda text: text.strip() == text and text != ""),
    mode=st.sampled_from(["copy", "move"]),
    status=st.sampled_from(["registered", "available", "failed"]),
    size=st.integers(min_value=0, max_value=2**53),
    stamps=st.tuples(times, times),
    strings=st.lists(texts, min_size=7, max_size=7),
)
def test_paglet_file_ref_json_round_trip_property(name, mode, status, size, stamps, strings):
    ref = PagletFileRef(
        name=name,
        mode=mode,
        source_host_name=strings[0],
        source_host_url=strings[1],
        source_path=strings[2],
        source_created_at=stamps[0],
        source_modified_at=stamps[1],
        size_bytes=size,
        sha256=SHA,
        current_host_name=strings[3],
        current_host_url=strings[4],
        current_path=strings[5],
        status=status,
        last_error=strings[6],
    )
    assert PagletFileRef.from_wire(json.loads(json.dumps(ref.to_wire()))) == ref


def test_artifact_write_result_carries_ref_and_path():
    ref = ArtifactRef(host_url="http://h", artifact_id=AID)
    result = ArtifactWriteResult(ref=ref, path=Path("/store/blobs") / f"{AID}.bin")
    assert result.ref is ref and result.path.name == f"{AID}.bin"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.path = Path("/elsewhere")  # type: ignore[misc]


def test_wire_floats_survive_json_exactly():
    ref = ArtifactRef(host_url="h", artifact_id=AID, created_at=math.pi * 1e9, expires_at=0.1)
    assert ArtifactRef.from_wire(json.loads(json.dumps(ref.to_wire()))).created_at == math.pi * 1e9
