"""Offloading attached to a real paglets Host (paglets 2.x from PyPI).

The end-to-end tests run each host in its own process (``paglets-artifacts paglets-host``,
or paglets' own ``paglets host``), real workers beside them, a real Redis, and paglets'
own ``HostClient`` to drive them over loopback.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paglets.runtime.lifecycle as lifecycle
import pytest
import redis
from paglets.artifacts import PagletFileRef
from paglets.core.errors import RemoteHostError
from paglets.core.errors import TransferError as PagletsTransferError
from paglets.core.messages import Message
from paglets.core.runtime_values import EnvelopeKind
from paglets.remote.client import HostClient
from paglets.remote.transfer import TransferTicket
from paglets.runtime.envelope import PagletEnvelope
from paglets.runtime.host import Host
from paglets.serialization.codec import dataclass_to_wire, qualified_name

from conftest import ROOT, wait_until
from paglets_agents import Carrier, CarrierState, payload
from paglets_artifacts import ArtifactJobs, Settings, SettingsError
from paglets_artifacts.paglets_host import OffloadedStore, OffloadingClient, PagletsFacingStore, offload
from paglets_artifacts.redis_server import EmbeddedRedis, delete_namespace, free_port
from peers import Peer, offloaded_host, paglets_host, serve

sys.path.insert(0, str(ROOT))
from benchmarks.stress import CRASH_KIND_ENV, CRASH_STEP_ENV, kill_worker, start_worker  # noqa: E402

MiB = 1024 * 1024


def _host_settings(settings: Settings, persistence: Path, namespace: str, **changes) -> Settings:
    return settings.with_changes(
        namespace=namespace,
        store_root=(persistence / "artifacts").resolve(),
        allowed_roots=((persistence / "work").resolve(),),
        **changes,
    )


def _store_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- attaching, in this process


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    made = Host(
        "attach",
        port=0,
        mesh=False,
        persistence_dir=tmp_path / "host",
        artifact_max_bytes=5 * MiB,
        artifact_storage_quota_bytes=50 * MiB,
        artifact_spool_ttl_seconds=120,
    )
    yield made
    made.stop()


def test_offload_replaces_store_client_and_hash_and_detach_gives_them_back(host, settings, tmp_path, caplog):
    own_store, own_client = host.artifacts, host.client
    offloading = offload(host, _host_settings(settings, tmp_path / "host", settings.namespace))
    # the host's caps rule its store; the workers' differing ones are named
    assert "quota_bytes is 52428800 for the host but 10737418240 in the settings workers read" in caplog.text
    try:
        store = host.artifacts
        assert isinstance(store.store, OffloadedStore) and isinstance(host.client, OffloadingClient)
        assert store.root == own_store.root
        assert (store.max_artifact_bytes, store.quota_bytes, store.spool_ttl_seconds) == (5 * MiB, 50 * MiB, 120)
        assert store.host_url == host.address
        store.set_host_url("http://127.0.0.1:1")  # what paglets does on every (re)bind
        assert offloading.store.host_url == "http://127.0.0.1:1"
        assert lifecycle.file_sha256.__module__ == "paglets_artifacts.paglets_host"
        assert offloading.worker_env()["PAGLETS_ARTIFACTS_STORE_ROOT"] == str(own_store.root)
    finally:
        offloading.detach()
    assert host.artifacts is own_store and host.client is own_client
    assert own_store.host_url == "http://127.0.0.1:1"  # the host's URL stays in step
    assert lifecycle.file_sha256.__module__ == "paglets.artifacts"


def test_offloading_attaches_once(host, settings, tmp_path):
    with offload(host, _host_settings(settings, tmp_path / "host", settings.namespace)):
        with pytest.raises(RuntimeError, match="already has offloading attached"):
            offload(host, _host_settings(settings, tmp_path / "host", settings.namespace))


def test_a_store_root_other_than_the_hosts_is_refused_naming_both(host, settings, tmp_path):
    with pytest.raises(SettingsError, match="PAGLETS_ARTIFACTS_STORE_ROOT") as refused:
        offload(host, settings.with_changes(store_root=tmp_path / "elsewhere"))
    assert str(host.artifacts.root) in str(refused.value)
    assert not isinstance(host.artifacts, PagletsFacingStore)


def test_the_hosts_sweeps_become_jobs_never_a_second_one_while_one_is_pending(host, settings, tmp_path, workers):
    host_settings = _host_settings(settings, tmp_path / "host", settings.namespace)
    with offload(host, host_settings) as offloading:
        first = host.artifacts.cleanup_temporary()  # what paglets' cleanup thread calls
        assert first is not None and first.status().kind == "sweep"
        assert host.artifacts.cleanup_temporary() is None  # no worker yet: still queued
        workers.start(settings=host_settings)
        assert first.wait(30)["parts_removed"] == 0
        again = host.artifacts.cleanup_temporary()
        assert again is not None and again.id != first.id
        assert again.wait(30) is not None
        sweeps = [r for r in offloading.jobs.jobs(limit=20) if r.kind == "sweep"]
        assert len(sweeps) == 2


def test_registered_file_work_runs_as_jobs_and_errors_reach_paglets_as_its_own(host, settings, tmp_path, workers):
    host_settings = _host_settings(settings, tmp_path / "host", settings.namespace)
    workers.start(settings=host_settings)
    with offload(host, host_settings) as offloading:
        work = offloading.work_root / "agent-1"
        work.mkdir(parents=True)
        source = work / "data.bin"
        source.write_bytes(os.urandom(2 * MiB + 3))
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
        assert lifecycle.file_sha256(source) == sha  # the dispatch's hash: a checksum job
        ref = host.artifacts.create_from_path(
            source, owner_agent_id="agent-1", name="data.bin", expected_sha256=sha
        ).ref
        assert (ref.sha256, ref.owner_agent_id, ref.host_url) == (sha, "agent-1", host.address)
        target = offloading.work_root / "agent-2" / "data.bin"
        host.artifacts.export_to_path(ref.artifact_id, target, expected_sha256=sha)
        assert target.read_bytes() == source.read_bytes()
        kinds = sorted(r.kind for r in offloading.jobs.jobs(limit=20))
        assert kinds == ["checksum", "export", "import"]

        with pytest.raises(PagletsTransferError, match="(?i)checksum"):
            host.artifacts.create_from_path(source, expected_sha256="0" * 64)
        with pytest.raises(PagletsTransferError):
            host.artifacts.ref("f" * 32)
        # outside the workers' allowed roots: done here, as paglets' own store would
        outside = tmp_path / "outside.bin"
        outside.write_bytes(b"not for workers")
        assert host.artifacts.create_from_path(outside).ref.size_bytes == 15
        assert len(offloading.jobs.jobs(limit=20)) == 4  # the refused import; no job for the outside file
        assert [r.kind for r in offloading.jobs.jobs(limit=20)].count("import") == 2


def test_a_host_whose_jobs_no_worker_starts_fails_the_transfer_and_the_late_job_never_runs(
    host, settings, tmp_path, workers
):
    host_settings = _host_settings(settings, tmp_path / "host", settings.namespace)
    with offload(host, host_settings, queue_timeout=1.0) as offloading:
        source = offloading.work_root / "a" / "f.bin"
        source.parent.mkdir(parents=True)
        source.write_bytes(b"x" * 100)
        with pytest.raises(PagletsTransferError, match="no worker started it within 1 s"):
            host.artifacts.create_from_path(source)
        [late] = offloading.jobs.jobs(kind="import")
        workers.start(settings=host_settings)  # a worker comes up after the host gave up
        expired = wait_until(lambda: (r := offloading.jobs.records.get(late.id)) and r.done and r)
        assert (expired.state, expired.error["type"]) == ("failed", "JobExpired")
        assert host.artifacts.list() == [] and _store_files(offloading.store.root) == []


# ---------------------------------------------------------------------- two real hosts, real processes


@dataclass
class Rig:
    name: str
    settings: Settings
    persistence: Path
    peer: Peer

    @property
    def url(self) -> str:
        return self.peer.url

    @property
    def store_root(self) -> Path:
        return self.persistence / "artifacts"

    @property
    def work_root(self) -> Path:
        return self.persistence / "work"


@pytest.fixture
def two_hosts(settings: Settings, tmp_path: Path, redis_url: str) -> Iterator[tuple[Rig, Rig]]:
    """Hosts A and B (``paglets-artifacts paglets-host`` processes), each with its own store
    and namespace; each one's workers may upload to the other."""
    ports = {"a": free_port(), "b": free_port()}
    rigs = []
    for name, other in (("a", "b"), ("b", "a")):
        persistence = tmp_path / f"host-{name}"
        host_settings = _host_settings(
            settings,
            persistence,
            f"{settings.namespace}-{name}",
            host_url=f"http://127.0.0.1:{ports[name]}",
            allowed_hosts=(f"http://127.0.0.1:{ports[other]}",),
        )
        peer = offloaded_host(
            name,
            host_settings.to_env(),
            persistence,
            tmp_path / f"host-{name}.log",
            port=ports[name],
            extra_args=("--no-mesh",),
        )
        rigs.append(Rig(name, host_settings, persistence, peer))
    for rig in rigs:
        rig.peer.start(ready_path="/health")
    yield rigs[0], rigs[1]
    for rig in rigs:
        rig.peer.stop()
    client = redis.Redis.from_url(redis_url)
    for rig in rigs:
        delete_namespace(client, rig.settings.namespace)
    client.close()


def _create_carrier(client: HostClient, url: str, size: int, seed: int) -> str:
    answer = client.post_pickle(
        f"{url}/agents",
        {
            "agent_class_name": qualified_name(Carrier),
            "state_class_name": qualified_name(CarrierState),
            "state": dataclass_to_wire(CarrierState(size=size, seed=seed)),
            "init": None,
            "agent_id": None,
        },
    )
    return str(answer["proxy"]["agent_id"])


def _files(client: HostClient, url: str, agent_id: str) -> list[dict]:
    answer = client.post_json(f"{url}/agents/{agent_id}/messages", {"message": Message(kind="files").to_wire()})
    return answer["result"]


def _dispatch(client: HostClient, source: str, agent_id: str, target: str) -> None:
    ticket = TransferTicket(destination=target, timeout=120.0)  # the target materializes before it answers
    client.post_json(f"{source}/agents/{agent_id}/dispatch", {"ticket": ticket.to_wire()}, timeout=130)


def _records(rig: Rig) -> list:
    with ArtifactJobs(settings=rig.settings) as jobs:
        return jobs.jobs(limit=100)


def test_a_paglet_dispatched_between_offloaded_hosts_moves_its_file_through_jobs_and_dispose_cleans_up(
    two_hosts, workers
):
    a, b = two_hosts
    for rig in (a, b):
        workers.start(settings=rig.settings)
    scheduler_settings = b.settings.with_changes(sweep_schedule="3600", reindex_schedule="1")
    scheduler = subprocess.Popen(
        [str(Path(sys.executable).parent / "paglets-artifacts"), "scheduler"],
        env={**os.environ, **scheduler_settings.to_env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _dispatch_and_dispose(a, b)
        # the scheduler beside them keeps reconciling B's index from its directory
        reindex = wait_until(lambda: next((r for r in _records(b) if r.kind == "reindex" and r.done), None))
        assert reindex.state == "succeeded"
    finally:
        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait(30)


def _dispatch_and_dispose(a: Rig, b: Rig) -> None:
    client = HostClient(timeout=60)
    size, seed = 3 * MiB + 11, 42
    agent_id = _create_carrier(client, a.url, size, seed)
    [before] = _files(client, a.url, agent_id)
    assert Path(before["path"]).is_relative_to(a.work_root)

    _dispatch(client, a.url, agent_id, b.url)
    [arrived] = _files(client, b.url, agent_id)
    assert Path(arrived["path"]).is_relative_to(b.work_root)
    assert arrived["on_disk_sha256"] == hashlib.sha256(payload(seed, size)).hexdigest() == arrived["ref"]["sha256"]
    assert arrived["ref"]["status"] == "available"

    jobs_a = {r.kind: r for r in _records(a)}
    jobs_b = {r.kind: r for r in _records(b)}
    assert {"checksum", "upload", "sweep"} <= set(jobs_a)  # the hash and the push ran in A's worker
    assert jobs_a["upload"].state == "succeeded" and jobs_a["upload"].result["host_url"] == b.url
    assert jobs_a["checksum"].result["sha256"] == arrived["on_disk_sha256"]
    assert "delete_owner" not in jobs_a  # a dispatch deletes nothing of its owner
    assert {"export", "sweep"} <= set(jobs_b)  # the materialization ran in B's worker
    assert jobs_b["export"].state == "succeeded"
    assert jobs_b["export"].id in b.peer.output()  # the job id is in the host's log
    assert _store_files(b.store_root) == []  # the staged artifact was deleted after the export
    assert client.list_artifacts(a.url) == [] and client.list_artifacts(b.url) == []

    # A second artifact of that owner, on B, then dispose on B (A holds nothing of it: the
    # dispatch's staging went straight to B)
    extra = b.work_root / "extra.bin"
    extra.write_bytes(b"extra bytes")
    client.upload_artifact(b.url, extra, owner_agent_id=agent_id)
    client.post_json(f"{b.url}/agents/{agent_id}/dispose", {})
    deletion = wait_until(lambda: next((r for r in _records(b) if r.kind == "delete_owner" and r.done), None))
    assert deletion.state == "succeeded" and deletion.arguments == {"owner_agent_id": agent_id}
    assert deletion.result["deleted"] == 1
    for rig in (a, b):
        assert client.list_artifacts(rig.url, owner_agent_id=agent_id) == []
        assert _store_files(rig.store_root) == []


def test_an_upload_with_a_wrong_sha256_to_an_offloaded_hosts_own_endpoint_leaves_nothing(two_hosts):
    a, _ = two_hosts
    source = a.persistence / "upload.bin"
    source.write_bytes(os.urandom(MiB + 1))
    client = HostClient()
    with pytest.raises(PagletsTransferError, match="(?i)checksum"):
        client.upload_artifact(a.url, source, expected_sha256="0" * 64)
    assert _store_files(a.store_root) == []
    good = client.upload_artifact(a.url, source, owner_agent_id="o")  # through paglets' HTTP server, our commit
    assert good.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert _store_files(a.store_root) == [f"blobs/{good.artifact_id}.bin", f"metadata/{good.artifact_id}.json"]


def test_a_worker_killed_while_a_host_waits_on_a_materialization_the_host_gets_its_file_once(
    two_hosts, workers, tmp_path
):
    a, b = two_hosts
    workers.start(settings=a.settings)
    # B's first worker dies just before the verified copy is renamed into place (the worst
    # moment: the .part is whole); a clean worker finishes the redelivered export.
    doomed = start_worker(
        b.settings, tmp_path / "doomed.log", env={CRASH_KIND_ENV: "export", CRASH_STEP_ENV: "replace:1"}, threads=1
    )
    try:
        client = HostClient(timeout=60)
        size, seed = 8 * MiB + 5, 7
        agent_id = _create_carrier(client, a.url, size, seed)

        exit_codes: list[int] = []

        def finish_after_the_kill() -> None:
            exit_codes.append(doomed.wait(timeout=60))
            workers.start(settings=b.settings)

        rescuer = threading.Thread(target=finish_after_the_kill)
        rescuer.start()
        _dispatch(client, a.url, agent_id, b.url)  # returns once B has the file
        rescuer.join(60)
    finally:
        kill_worker(doomed)
    assert exit_codes == [-signal.SIGKILL]  # the crash point was reached while B waited
    [arrived] = _files(client, b.url, agent_id)
    assert arrived["on_disk_sha256"] == hashlib.sha256(payload(seed, size)).hexdigest()
    work = Path(arrived["path"]).parent
    assert sorted(p.name for p in work.iterdir()) == ["payload.bin"]  # once: no second copy, no .part
    export = next(r for r in _records(b) if r.kind == "export")
    assert export.state == "succeeded" and export.attempts == 2
    assert _store_files(b.store_root) == []


# ---------------------------------------------------------------------- paglets' own host as the peer


@pytest.fixture
def plain_host(tmp_path: Path) -> Iterator[Peer]:
    peer = paglets_host("plain", tmp_path / "plain", tmp_path / "plain.log").start(ready_path="/health")
    yield peer
    peer.stop()


def test_import_url_and_export_to_host_with_move_against_a_real_paglets_host(
    plain_host, settings, jobs, workers, tmp_path
):
    ours = settings.with_changes(allowed_hosts=(plain_host.url,))
    workers.start(settings=ours)
    client = HostClient()
    source = tmp_path / "from-paglets.bin"
    source.write_bytes(os.urandom(3 * MiB + 7))
    theirs = client.upload_artifact(plain_host.url, source, owner_agent_id="p", name="w.bin")

    pulled = jobs.import_url(f"{plain_host.url}/artifacts/{theirs.artifact_id}", owner_agent_id="ours").wait(60)
    assert (pulled["sha256"], pulled["size_bytes"], pulled["name"]) == (theirs.sha256, theirs.size_bytes, "w.bin")

    pushed = jobs.export_to_host(pulled["artifact_id"], plain_host.url, owner_agent_id="back", move=True).wait(60)
    assert pushed["moved"] is True
    back = client.artifact_metadata(plain_host.url, pushed["artifact_id"])
    assert (back.sha256, back.owner_agent_id, back.host_url) == (theirs.sha256, "back", plain_host.url)
    target = tmp_path / "back.bin"
    client.download_artifact(back, target)
    assert target.read_bytes() == source.read_bytes()
    assert _store_files(settings.store_root) == []  # moved: nothing left here


def test_a_real_paglets_host_materializes_a_registered_file_whose_artifact_lives_on_our_server(
    plain_host, settings, tmp_path
):
    """paglets' own host, given an envelope whose registered file is staged on ``serve``,
    downloads it with its own HostClient, verifies it, and deletes it from our server."""
    server = serve(settings.to_env(), tmp_path / "serve.log").start()
    try:
        client = HostClient(timeout=60)
        data = payload(3, 2 * MiB + 9)
        staged_file = tmp_path / "staged.bin"
        staged_file.write_bytes(data)
        agent_id = "c0ffee" * 5 + "00"
        artifact = client.upload_artifact(server.url, staged_file, owner_agent_id=agent_id, name="payload.bin")
        file_ref = PagletFileRef(
            name="payload.bin",
            mode="copy",
            source_host_name="elsewhere",
            source_host_url="http://elsewhere:1",
            source_path="/nowhere/payload.bin",
            source_created_at=0.0,
            source_modified_at=0.0,
            size_bytes=len(data),
            sha256=artifact.sha256,
            current_host_name="elsewhere",
            current_host_url="http://elsewhere:1",
            current_path="/nowhere/payload.bin",
            status="registered",
            last_error="",
        )
        envelope = PagletEnvelope(
            kind=EnvelopeKind.DISPATCH,
            agent_id=agent_id,
            agent_class_name=qualified_name(Carrier),
            state_class_name=qualified_name(CarrierState),
            state=dataclass_to_wire(CarrierState()),
            source_host_name="elsewhere",
            source_host_address="http://elsewhere:1",
            target_host_name="plain",
            target_host_address=plain_host.url,
            metadata={
                "registered_files": [
                    {
                        "file": file_ref.to_wire(),
                        "artifact": artifact.to_wire(),
                        "transfer_mode": "copy",
                        "source_path": "/nowhere/payload.bin",
                    }
                ]
            },
        )
        client.post_pickle(f"{plain_host.url}/agents", {"envelope": envelope.to_wire()})
        [arrived] = _files(client, plain_host.url, agent_id)
        assert arrived["on_disk_sha256"] == hashlib.sha256(data).hexdigest()
        assert client.list_artifacts(server.url) == []  # paglets deleted the staged artifact after the copy
    finally:
        server.stop()


# ---------------------------------------------------------------------- a started host in this process


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Host]:
    made = Host(
        "started", port=0, mesh=False, persistence_dir=tmp_path / "started", artifact_storage_quota_bytes=4 * MiB
    )
    yield made
    made.stop()


def _started_settings(settings: Settings, host: Host) -> Settings:
    return _host_settings(settings, Path(host.persistence_dir), settings.namespace, quota_bytes=4 * MiB)


def test_quota_is_exact_across_the_hosts_own_uploads_and_the_workers_imports(started, settings, workers):
    host_settings = _started_settings(settings, started)
    attached = offload(started, host_settings)
    started.start_background()
    workers.start(settings=host_settings)
    client = HostClient()
    big = Path(started.persistence_dir) / "work" / "big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(os.urandom(3 * MiB))
    client.upload_artifact(started.address, big)  # through paglets' HTTP server, our index
    small = big.with_name("small.bin")
    small.write_bytes(os.urandom(MiB + 1))
    with ArtifactJobs(settings=host_settings) as jobs:
        with pytest.raises(Exception, match="quota exceeded"):
            jobs.import_file(str(small)).wait(30)  # 3 MiB + 1 MiB + 1 byte > 4 MiB
    with pytest.raises(PagletsTransferError, match="quota exceeded"):
        client.upload_artifact(started.address, small)
    assert len(client.list_artifacts(started.address)) == 1
    attached.detach()


@pytest.mark.parametrize("delete_on_dispose", [True, False])
def test_dispose_deletes_the_owners_artifacts_through_a_job_unless_told_to_keep(
    started, settings, workers, delete_on_dispose
):
    host_settings = _started_settings(settings, started)
    with offload(started, host_settings, delete_on_dispose=delete_on_dispose) as offloading:
        started.start_background()
        workers.start(settings=host_settings)
        proxy = started.create(Carrier, CarrierState(size=10, seed=1))
        owned = Path(started.persistence_dir) / "owned.bin"
        owned.write_bytes(b"the paglet's own artifact")
        HostClient().upload_artifact(started.address, owned, owner_agent_id=proxy.agent_id)
        started.dispose(proxy.agent_id)
        deletions = [r for r in offloading.jobs.jobs(limit=20) if r.kind == "delete_owner"]
        if delete_on_dispose:
            assert [r.arguments for r in deletions] == [{"owner_agent_id": proxy.agent_id}]
            assert _job_wait(offloading, deletions[0].id)["deleted"] == 1
            assert started.artifacts.list(owner_agent_id=proxy.agent_id) == []
        else:
            assert deletions == []
            assert len(started.artifacts.list(owner_agent_id=proxy.agent_id)) == 1


def _job_wait(offloading, job_id: str) -> dict:
    return offloading.jobs.job(job_id).wait(30)


def test_downloads_run_as_jobs_and_hosts_off_the_allow_list_are_done_in_the_host(started, settings, workers, tmp_path):
    remote = serve(
        settings.with_changes(
            namespace=settings.namespace + "-remote",
            store_root=tmp_path / "remote",
            allowed_roots=(tmp_path / "remote-files",),
        ).to_env(),
        tmp_path / "remote.log",
    ).start()
    try:
        host_settings = _started_settings(settings, started).with_changes(allowed_hosts=(remote.url,))
        with offload(started, host_settings) as offloading:
            offloading.work_root.mkdir(parents=True)  # as a started host has it (an allowed root is never made)
            workers.start(settings=host_settings)
            data = os.urandom(MiB + 3)
            staged = tmp_path / "staged.bin"
            staged.write_bytes(data)
            ref = HostClient().upload_artifact(remote.url, staged, owner_agent_id="p")
            target = offloading.work_root / "p" / "arrived.bin"
            assert started.client.download_artifact(ref, target, move=True) == ref  # what an arrival calls
            assert target.read_bytes() == data
            assert [r.kind for r in offloading.jobs.jobs(limit=10)] == ["download"]
            assert HostClient().list_artifacts(remote.url) == []  # moved

            # the same call for a target the workers may not write: the host's own client does it
            outside = tmp_path / "outside.bin"
            again = HostClient().upload_artifact(remote.url, staged)
            started.client.download_artifact(again, outside)
            assert outside.read_bytes() == data
            assert [r.kind for r in offloading.jobs.jobs(limit=10)] == ["download"]
    finally:
        remote.stop()


def test_a_path_outside_the_work_directories_is_hashed_by_paglets_own_function(host, settings, tmp_path, workers):
    other = tmp_path / "other-files"
    other.mkdir()
    host_settings = _host_settings(settings, tmp_path / "host", settings.namespace).with_changes(
        allowed_roots=((tmp_path / "host" / "work").resolve(), other.resolve())
    )
    with offload(host, host_settings) as offloading:
        elsewhere = other / "f.bin"
        elsewhere.write_bytes(b"not a paglet's file")
        assert lifecycle.file_sha256(elsewhere) == hashlib.sha256(b"not a paglet's file").hexdigest()
        assert offloading.jobs.jobs(limit=10) == []


def test_without_redis_a_paglets_host_reads_from_its_directory_and_moves_files_itself(started, settings, tmp_path):
    with EmbeddedRedis() as private:
        host_settings = _started_settings(settings, started).with_changes(redis_url=private.url)
        with offload(started, host_settings) as offloading:
            started.start_background()
            client = HostClient()
            source = offloading.work_root / "p" / "f.bin"
            source.parent.mkdir(parents=True)
            source.write_bytes(os.urandom(MiB))
            ref = client.upload_artifact(started.address, source, owner_agent_id="p")
            private.stop()
            assert client.artifact_metadata(started.address, ref.artifact_id) == ref
            assert client.list_artifacts(started.address, owner_agent_id="p") == [ref]
            back = tmp_path / "back.bin"
            client.download_artifact(ref, back)
            assert back.read_bytes() == source.read_bytes()
            with pytest.raises(RemoteHostError):  # the quota cannot be kept exact without Redis
                client.upload_artifact(started.address, source)
            # a dispatch's hash and an arrival's export need no Redis: done in the host process
            assert lifecycle.file_sha256(source) == hashlib.sha256(source.read_bytes()).hexdigest()
            target = offloading.work_root / "q" / "f.bin"
            started.artifacts.export_to_path(ref.artifact_id, target)
            assert target.read_bytes() == source.read_bytes()


def test_paglets_host_stops_cleanly_on_sigterm_and_sigint(settings, tmp_path):
    for signum in (signal.SIGTERM, signal.SIGINT):
        persistence = tmp_path / f"stop-{signum}"
        host_settings = _host_settings(settings, persistence, settings.namespace)
        peer = offloaded_host(
            "stopper", host_settings.to_env(), persistence, tmp_path / f"stop-{signum}.log", extra_args=("--no-mesh",)
        ).start(ready_path="/health")
        try:
            peer.process.send_signal(signum)
            assert peer.process.wait(timeout=30) == 0, peer.output()
            assert "stopping" in peer.output() and "offloading detached" in peer.output()
        finally:
            peer.stop()


def test_a_hosts_sweep_and_the_schedulers_never_pile_up_on_each_other(host, settings, tmp_path):
    from paglets_artifacts.jobs import contract
    from paglets_artifacts.schedule import parse_schedule
    from workers.scheduler import FIRED, SKIPPED_BUSY, Periodic, PeriodicScheduler

    host_settings = _host_settings(settings, tmp_path / "host", settings.namespace)
    tick = 1_800_000_000.0
    with offload(host, host_settings) as offloading:
        sweeps = Periodic(contract.SWEEP, parse_schedule("300"), lambda jobs: jobs.sweep())
        scheduler = PeriodicScheduler(offloading.jobs, [sweeps], scheduler_id="s", clock=lambda: tick + 0.5)
        hosts_sweep = host.artifacts.cleanup_temporary()  # no worker: it stays queued
        assert hosts_sweep is not None
        [decision] = scheduler.run_pending()
        assert (decision.outcome, decision.job_id) == (SKIPPED_BUSY, hosts_sweep.id)

        # and the other way round: a scheduler's queued sweep holds the host's back
        offloading.jobs.records.finished(hosts_sweep.id, state="succeeded", result={})
        later = PeriodicScheduler(offloading.jobs, [sweeps], scheduler_id="s", clock=lambda: tick + 300.5)
        [fired] = later.run_pending()
        assert fired.outcome == FIRED
        assert host.artifacts.cleanup_temporary() is None


def test_paglets_host_refuses_to_listen_beyond_loopback_without_an_api_key(settings, tmp_path):
    from typer.testing import CliRunner

    from paglets_artifacts.cli import commands as cli

    persistence = tmp_path / "exposed"
    env = {**_host_settings(settings, persistence, settings.namespace).to_env(), "PAGLETS_API_KEY": ""}
    result = CliRunner().invoke(
        cli.app,
        ["paglets-host", "--name", "exposed", "--host", "0.0.0.0", "--persistence-dir", str(persistence)],
        env=env,
    )
    assert result.exit_code == cli.EXIT_CONFIG, result.output
    assert "without an API key" in result.stderr and "--insecure" in result.stderr


def test_paglets_host_beyond_loopback_with_insecure_runs_and_warns(settings, tmp_path):
    persistence = tmp_path / "insecure"
    peer = offloaded_host(
        "insecure",
        _host_settings(settings, persistence, settings.namespace).to_env(),
        persistence,
        tmp_path / "insecure.log",
        extra_args=("--no-mesh", "--host", "0.0.0.0", "--insecure"),
    )
    # peers bind their URL on 127.0.0.1, which 0.0.0.0 serves too
    try:
        peer.start(ready_path="/health")
        assert "without an API key (PAGLETS_ARTIFACTS_ALLOW_INSECURE)" in peer.output()
        # the project's one log line layout (paglets_artifacts.logging_setup), as workers and the scheduler write it
        assert re.search(
            r"^\[[\d\- :,]+\] \[PID \d+\] \[MainThread\] \[paglets_artifacts\.paglets_host\] \[WARNING\] "
            r"paglets host insecure on 0\.0\.0\.0 without an API key",
            peer.output(),
            re.MULTILINE,
        )
    finally:
        peer.stop()
