"""A paglets Host process materializing a large registered file, with and without offloading.

    python3 scripts/dev.py run python -m benchmarks.bench_paglets_host            # 1 GiB, 3 runs
    python3 scripts/dev.py run python -m benchmarks.bench_paglets_host --size-mib 256 --runs 1

Two hosts, each in its own process: paglets' own ``paglets host`` (the baseline: the host
copies and hashes on its own threads) and ``paglets-artifacts paglets-host`` with one
worker process. For each run the registered file is staged as an artifact in the host's
store, then a dispatch envelope naming it is posted to the host, which materializes it into
the paglet's work directory (``export_to_path``) and deletes the artifact, as on a paglet's
arrival. Measured per run: the host process's CPU seconds (user + system) for the arrival,
the arrival's wall time, and the latency of the host's other requests
(``GET /artifacts/{id}/metadata`` at 20 a second) during the arrival against the same
probe while idle. Every run starts with settled, warmed free memory (see
``bench_throughput.warm_free_memory``); figures are medians over the runs, rows alternate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from paglets.core.agent import Paglet
from paglets.core.runtime_values import EnvelopeKind
from paglets.remote.client import HostClient
from paglets.remote.transfer import TransferTicket
from paglets.runtime.envelope import PagletEnvelope
from paglets.serialization.codec import dataclass_to_wire, qualified_name

from paglets_artifacts import PagletFileRef, Settings
from paglets_artifacts.jobs.worker_process import WorkerProcess
from paglets_artifacts.redis_client import connect_redis
from paglets_artifacts.redis_server import delete_namespace, free_port, redis_url_or_embedded

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
PROBE_RATE = 20.0  # requests a second
SETTLE_SECONDS = 3.0


@dataclass
class ArrivingState:
    pass


class Arriving(Paglet[ArrivingState]):
    """The paglet whose arrival materializes the file (it does nothing itself)."""

    State = ArrivingState


# ---------------------------------------------------------------------- processes


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.pop("PAGLETS_API_KEY", None)
    return env


def _wait_http(url: str, process: psutil.Popen, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class HostRig:
    label: str
    url: str
    persistence: Path
    host: psutil.Popen
    worker: subprocess.Popen | None = None

    def stop(self) -> None:
        for process in (self.host, self.worker):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait(30)


def start_plain(work: Path, log: Path) -> HostRig:
    port = free_port()
    persistence = work / "plain"
    args = [
        str(Path(sys.executable).parent / "paglets"),
        "host",
        "--name",
        "plain",
        "--port",
        str(port),
        "--no-mesh",
        "--persistence-dir",
        str(persistence),
        "--no-sync-launch-config",
        "--launch-config",
        str(persistence / "launch.toml"),
    ]
    process = psutil.Popen(args, env=_env({}), stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    rig = HostRig("paglets host (inline)", f"http://127.0.0.1:{port}", persistence, process)
    _wait_http(rig.url + "/health", process)
    return rig


def start_offloaded(work: Path, log: Path, redis_url: str, namespace: str) -> HostRig:
    port = free_port()
    persistence = work / "offloaded"
    settings = Settings(
        redis_url=redis_url,
        namespace=namespace,
        store_root=persistence / "artifacts",
        allowed_roots=(persistence / "work",),
        host_url=f"http://127.0.0.1:{port}",
        fsync=False,
    )
    env = _env(settings.to_env())
    args = [
        str(Path(sys.executable).parent / "paglets-artifacts"),
        "paglets-host",
        "--name",
        "offloaded",
        "--port",
        str(port),
        "--no-mesh",
        "--persistence-dir",
        str(persistence),
    ]
    host = psutil.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess(processes=1, threads=2, environ=env).start(stdout=log.open("ab"))
    rig = HostRig("paglets-host (offloaded)", f"http://127.0.0.1:{port}", persistence, host, worker)
    _wait_http(rig.url + "/health", host)
    return rig


# ---------------------------------------------------------------------- one run


def _probe(client: HostClient, url: str, artifact_id: str, stop: threading.Event, out: list[float]) -> None:
    """``GET /artifacts/{id}/metadata`` at PROBE_RATE a second until ``stop``; latencies in ms."""
    period = 1.0 / PROBE_RATE
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.perf_counter()
        client.artifact_metadata(url, artifact_id)
        out.append((time.perf_counter() - started) * 1000)
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))


def _envelope(rig: HostRig, staged, agent_id: str) -> PagletEnvelope:
    file_ref = PagletFileRef(
        name="payload.bin",
        mode="copy",
        source_host_name="elsewhere",
        source_host_url="http://elsewhere:1",
        source_path="/elsewhere/payload.bin",
        source_created_at=0.0,
        source_modified_at=0.0,
        size_bytes=staged.size_bytes,
        sha256=staged.sha256,
        current_host_name="elsewhere",
        current_host_url="http://elsewhere:1",
        current_path="/elsewhere/payload.bin",
        status="registered",
        last_error="",
    )
    from benchmarks import bench_paglets_host as importable  # its classes by module name, not __main__

    return PagletEnvelope(
        kind=EnvelopeKind.DISPATCH,
        agent_id=agent_id,
        agent_class_name=qualified_name(importable.Arriving),
        state_class_name=qualified_name(importable.ArrivingState),
        state=dataclass_to_wire(ArrivingState()),
        source_host_name="elsewhere",
        source_host_address="http://elsewhere:1",
        target_host_name=rig.label,
        target_host_address=rig.url,
        metadata={
            "transfer_ticket": TransferTicket(destination=rig.url, timeout=600).to_wire(),
            "registered_files": [
                {
                    "file": file_ref.to_wire(),
                    "artifact": staged.to_wire(),
                    "transfer_mode": "copy",
                    "source_path": "/elsewhere/payload.bin",
                }
            ],
        },
    )


def run_once(rig: HostRig, source: Path, scratch: Path, probe_id: str) -> dict[str, float]:
    client = HostClient(timeout=600)
    staged = client.upload_artifact(rig.url, source, owner_agent_id="bench")
    time.sleep(SETTLE_SECONDS)  # warm free memory for the copy that follows, as every row
    shutil.copyfile(source, scratch)
    scratch.unlink()

    idle: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=_probe, args=(client, rig.url, probe_id, stop, idle))
    prober.start()
    time.sleep(2.0)
    stop.set()
    prober.join()

    busy: list[float] = []
    stop = threading.Event()
    agent_id = os.urandom(16).hex()
    host = psutil.Process(rig.host.pid)
    cpu_before = host.cpu_times()
    prober = threading.Thread(target=_probe, args=(client, rig.url, probe_id, stop, busy))
    prober.start()
    started = time.perf_counter()
    client.post_pickle(f"{rig.url}/agents", {"envelope": _envelope(rig, staged, agent_id).to_wire()}, timeout=600)
    wall = time.perf_counter() - started
    cpu_after = host.cpu_times()
    stop.set()
    prober.join()
    client.post_json(f"{rig.url}/agents/{agent_id}/dispose", {})
    arrived = rig.persistence / "work" / agent_id / "payload.bin"
    assert not arrived.exists() or arrived.stat().st_size == staged.size_bytes
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "idle_p50_ms": statistics.median(idle),
        "idle_p99_ms": _p99(idle),
        "busy_p50_ms": statistics.median(busy) if busy else float("nan"),
        "busy_p99_ms": _p99(busy),
        "busy_probes": float(len(busy)),
    }


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-paglets-host-"))
    namespace = f"bench-paglets-host-{os.getpid()}"
    rigs: list[HostRig] = []
    try:
        source = work / "payload.bin"
        with source.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MIB))
        probe_file = work / "probe.bin"
        probe_file.write_bytes(b"probe")
        with redis_url_or_embedded() as redis_url:
            rigs = [
                start_plain(work, work / "plain.log"),
                start_offloaded(work, work / "offloaded.log", redis_url, namespace),
            ]
            probes = {rig.label: HostClient().upload_artifact(rig.url, probe_file).artifact_id for rig in rigs}
            results: dict[str, list[dict[str, float]]] = {rig.label: [] for rig in rigs}
            for run in range(args.runs):
                for rig in rigs:
                    results[rig.label].append(run_once(rig, source, work / "scratch.bin", probes[rig.label]))
                    print(
                        f"run {run + 1}/{args.runs} {rig.label}: "
                        + ", ".join(f"{k} {v:.3f}" for k, v in results[rig.label][-1].items()),
                        flush=True,
                    )
            for rig in rigs:
                rig.stop()
            client = connect_redis(Settings(redis_url=redis_url))
            delete_namespace(client, namespace)
            client.close()
        median = {label: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for label, rows in results.items()}
        plain, offloaded = (median[rig.label] for rig in rigs)
        print(
            f"\n{args.size_mib} MiB registered file materialized on arrival, {args.runs} runs, medians; "
            f"other requests: GET /artifacts/{{id}}/metadata at {PROBE_RATE:g}/s"
        )
        print("| host | host CPU s | arrival s | metadata p50 idle / busy ms | metadata p99 idle / busy ms |")
        print("|---|---|---|---|---|")
        for rig in rigs:
            m = median[rig.label]
            print(
                f"| {rig.label} | {m['cpu_s']:.3f} | {m['wall_s']:.2f} | {m['idle_p50_ms']:.2f} / "
                f"{m['busy_p50_ms']:.2f} "
                f"| {m['idle_p99_ms']:.2f} / {m['busy_p99_ms']:.2f} |"
            )
        ratio = plain["cpu_s"] / offloaded["cpu_s"] if offloaded["cpu_s"] > 0 else float("inf")
        print(f"\nhost CPU, inline / offloaded: {ratio:.1f}x")
        return 0
    finally:
        for rig in rigs:
            rig.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
