"""paglets' own ``HostClient`` (paglets 2.x from PyPI) against ``paglets-artifacts serve``
running in its own process: every artifact method, as a paglets Host calls them."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from paglets.artifacts import ArtifactRef
from paglets.core.errors import AuthenticationError, RemoteHostError, TransferError
from paglets.remote.client import HostClient

from paglets_artifacts import Settings
from paglets_artifacts.redis_server import EmbeddedRedis
from peers import Peer, serve

KEY = "k3y-for-the-client-tests"
MIB = 1024 * 1024


def _served(settings: Settings, tmp_path: Path, **changes) -> Iterator[Peer]:
    peer = serve(settings.with_changes(**changes).to_env(), tmp_path / "serve.log").start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Peer]:
    yield from _served(settings, tmp_path)


@pytest.fixture
def keyed_server(settings: Settings, tmp_path: Path) -> Iterator[Peer]:
    yield from _served(settings, tmp_path, api_key=KEY)


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _store_files(settings: Settings) -> list[str]:
    root = settings.store_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + 17])
def test_upload_download_metadata_list_delete_round_trip(server, tmp_path, size):
    client = HostClient()
    source = _file(tmp_path / "source.bin", size)
    expires = time.time() + 3600
    ref = client.upload_artifact(
        server.url, source, owner_agent_id="agent-1", name="model.bin", compression="zstd", expires_at=expires
    )
    assert (ref.size_bytes, ref.sha256) == (size, hashlib.sha256(source.read_bytes()).hexdigest())
    assert (ref.owner_agent_id, ref.name, ref.compression, ref.expires_at) == ("agent-1", "model.bin", "zstd", expires)
    assert ref.host_url == server.url

    assert client.artifact_metadata(server.url, ref.artifact_id) == ref
    assert client.list_artifacts(server.url, owner_agent_id="agent-1") == [ref]
    assert client.list_artifacts(server.url, owner_agent_id="someone-else") == []
    assert client.list_artifacts(server.url) == [ref]

    target = tmp_path / "out" / "copy.bin"
    assert client.download_artifact(ref, target) == ref
    assert target.read_bytes() == source.read_bytes()
    # the host-URL-and-id form of the same call
    again = tmp_path / "again.bin"
    client.download_artifact(server.url, again, ref.artifact_id)
    assert again.read_bytes() == source.read_bytes()

    client.delete_artifact(ref)
    assert client.list_artifacts(server.url) == []
    with pytest.raises(TransferError):
        client.artifact_metadata(server.url, ref.artifact_id)


def test_upload_without_a_name_takes_the_file_name_and_an_expected_sha_is_accepted(server, tmp_path):
    client = HostClient()
    source = _file(tmp_path / "weights.safetensors", 3 * MIB)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    ref = client.upload_artifact(server.url, source, expected_sha256=sha)
    assert (ref.name, ref.sha256, ref.owner_agent_id, ref.expires_at) == ("weights.safetensors", sha, "", 0.0)


def test_download_with_move_deletes_the_artifact_after_the_verified_copy(server, tmp_path):
    client = HostClient()
    source = _file(tmp_path / "source.bin", 2 * MIB)
    ref = client.upload_artifact(server.url, source, owner_agent_id="mover")
    target = tmp_path / "moved.bin"
    client.download_artifact(ref, target, move=True)
    assert target.read_bytes() == source.read_bytes()
    assert client.list_artifacts(server.url) == []


def test_unknown_artifact_is_a_transfer_error_and_writes_nothing(server, tmp_path):
    client = HostClient()
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(TransferError):
        client.artifact_metadata(server.url, missing)
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    with pytest.raises(TransferError):
        client.download_artifact(server.url, target_dir / "x.bin", missing)
    stale = ArtifactRef(
        host_url=server.url,
        artifact_id=missing,
        name="x.bin",
        size_bytes=5,
        sha256="0" * 64,
        compression="",
        created_at=0.0,
        expires_at=0.0,
        owner_agent_id="",
    )
    with pytest.raises(TransferError):  # a ref whose artifact is gone: straight to GET
        client.download_artifact(stale, target_dir / "y.bin")
    assert list(target_dir.iterdir()) == []  # no target and no .part beside it
    client.delete_artifact(server.url, missing)  # deleting what is not there is ok, as in paglets


def test_upload_with_a_wrong_sha256_is_a_transfer_error_and_stores_nothing(server, settings, tmp_path):
    client = HostClient()
    source = _file(tmp_path / "source.bin", 3 * MIB)
    with pytest.raises(TransferError, match="(?i)checksum"):
        client.upload_artifact(server.url, source, expected_sha256="0" * 64)
    assert client.list_artifacts(server.url) == []
    assert _store_files(settings) == []  # no blob, no metadata, no .part


def test_api_key_none_or_wrong_is_an_authentication_error_and_the_right_one_works(keyed_server, tmp_path):
    source = _file(tmp_path / "source.bin", MIB + 3)
    for client in (HostClient(), HostClient(api_key="wrong")):
        with pytest.raises(AuthenticationError):
            client.upload_artifact(keyed_server.url, source)
        with pytest.raises(AuthenticationError):
            client.list_artifacts(keyed_server.url)
    good = HostClient(api_key=KEY)
    ref = good.upload_artifact(keyed_server.url, source, owner_agent_id="keyed")
    target = tmp_path / "back.bin"
    good.download_artifact(ref, target)
    assert target.read_bytes() == source.read_bytes()
    for call in (lambda c: c.download_artifact(ref, tmp_path / "no.bin"), lambda c: c.delete_artifact(ref)):
        with pytest.raises(AuthenticationError):
            call(HostClient(api_key="wrong"))
    assert not (tmp_path / "no.bin").exists()
    assert good.list_artifacts(keyed_server.url) == [ref]  # the wrong key deleted nothing


# ---------------------------------------------------------------------- Redis down


def test_with_redis_down_reads_work_from_the_directory_and_writes_answer_503_retry_after(settings, tmp_path):
    """Downloads, metadata and both listings need no Redis; an upload or a deletion (the index
    keeps the quota exact) answers 503 with Retry-After and an error_type paglets maps."""
    with EmbeddedRedis() as private:
        peer = serve(settings.with_changes(redis_url=private.url).to_env(), tmp_path / "serve.log").start()
        try:
            client = HostClient()
            source = _file(tmp_path / "source.bin", MIB + 5)
            ref = client.upload_artifact(server_url := peer.url, source, owner_agent_id="owner-r")
            private.stop()

            assert client.artifact_metadata(server_url, ref.artifact_id) == ref
            assert client.list_artifacts(server_url) == [ref]
            assert client.list_artifacts(server_url, owner_agent_id="owner-r") == [ref]
            assert client.list_artifacts(server_url, owner_agent_id="nobody") == []
            target = tmp_path / "down.bin"
            client.download_artifact(ref, target)
            assert target.read_bytes() == source.read_bytes()

            with pytest.raises(RemoteHostError, match="Redis"):
                client.upload_artifact(server_url, source)
            with pytest.raises(RemoteHostError, match="Redis"):
                client.delete_artifact(ref)
            for method, path in (("POST", "/artifacts"), ("DELETE", f"/artifacts/{ref.artifact_id}"), ("GET", "/jobs")):
                answer = httpx.request(method, server_url + path, content=b"x" if method == "POST" else None)
                assert answer.status_code == 503, (method, path, answer.text)
                assert answer.headers["Retry-After"].isdigit()
                assert answer.json()["error_type"] == "RemoteHostError"
            assert list((settings.store_root / "tmp").iterdir()) == []  # the refused uploads left no .part

            private.restart()  # a deletion is idempotent: its retry converges once Redis is back
            client.delete_artifact(ref)
            assert client.list_artifacts(server_url) == []
            assert client.upload_artifact(server_url, source).size_bytes == MIB + 5
        finally:
            peer.stop()
