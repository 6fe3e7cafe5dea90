"""Prometheus metrics: counted by every worker process, served once, added up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, wait_until
from paglets_artifacts.errors import SourceUnavailable
from paglets_artifacts.redis_server import free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


@pytest.fixture
def metrics_dir(tmp_path, monkeypatch):
    """Workers started by the test write their metric files here (removed with tmp_path)."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    return directory


def test_worker_metrics_count_jobs_bytes_sweeps_and_deletions(settings, workers, files, jobs, metrics_dir):
    metered = settings.with_changes(metrics_port=free_port())
    workers.start(processes=2, threads=2, settings=metered)
    sizes = [100_000 + i for i in range(6)]
    for i, size in enumerate(sizes):
        (files / f"m{i}.bin").write_bytes(os.urandom(size))
    imported = [
        jobs.import_file(str(files / f"m{i}.bin"), owner_agent_id="owner-a" if i < 2 else "") for i in range(len(sizes))
    ]
    refs = [job.wait(timeout=30) for job in imported]
    with pytest.raises(SourceUnavailable):
        jobs.import_file(str(files / "missing.bin")).wait(timeout=30)
    jobs.export(refs[-1]["artifact_id"], str(files / "out.bin")).wait(timeout=30)
    deleted = jobs.delete_owner("owner-a").wait(timeout=30)
    jobs.sweep().wait(timeout=30)
    assert wait_until(lambda: answers(metered.metrics_port), timeout=30)
    samples = scrape(metered.metrics_port)

    assert value(samples, "paglets_artifacts_jobs_total", kind="import", outcome="succeeded") == 6
    assert value(samples, "paglets_artifacts_jobs_total", kind="import", outcome="failed") == 1
    assert value(samples, "paglets_artifacts_jobs_total", kind="export", outcome="succeeded") == 1
    assert value(samples, "paglets_artifacts_jobs_total", kind="sweep", outcome="succeeded") == 1
    assert value(samples, "paglets_artifacts_job_duration_seconds_count", kind="import", outcome="succeeded") == 6
    assert value(samples, "paglets_artifacts_jobs_in_flight", kind="import") == 0
    assert value(samples, "paglets_artifacts_imported_bytes_total", kind="import") == sum(sizes)
    assert value(samples, "paglets_artifacts_exported_bytes_total", kind="export") == sizes[-1]
    assert value(samples, "paglets_artifacts_owner_deletions_total") == 1
    assert value(samples, "paglets_artifacts_owner_deleted_artifacts_total") == deleted["deleted"] == 2
    assert value(samples, "paglets_artifacts_owner_deleted_bytes_total") == sum(sizes[:2])
    assert value(samples, "paglets_artifacts_sweep_removed_total", what="parts") == 0
    assert value(samples, "paglets_artifacts_store_readable") == 1
    assert value(samples, "paglets_artifacts_store_used_bytes") == sum(sizes[2:])
    assert value(samples, "paglets_artifacts_store_quota_bytes") == settings.quota_bytes
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # both worker processes count


# A worker process's middleware, driven by hand in a process of its own (multiprocess mode
# changes prometheus_client for the whole process, so not in the test process).
_PROCESS = textwrap.dedent(
    """
    import sys, types
    from workers.metrics import Metrics
    from paglets_artifacts.settings import Settings

    settings = Settings.from_env()
    metrics = Metrics(settings)
    metrics.after_process_boot(None)
    actor = "paglets_artifacts_" + sys.argv[1]
    for i in range(int(sys.argv[2])):
        message = types.SimpleNamespace(actor_name=actor, message_id=f"{sys.argv[3]}-{i}", failed=False)
        metrics.before_process_message(None, message)
        metrics.after_process_message(None, message, exception=ConnectionError("hiccup") if i == 0 else None)
    metrics.metrics.record_result("sweep", {"parts_removed": 2, "expired_removed": 1, "orphans_removed": 0,
                                            "bytes_freed": 10, "unreadable_metadata": 0})
    """
)


def test_counts_from_several_processes_add_up_and_retries_are_counted(settings, tmp_path):
    from workers.metrics import exposition_registry

    directory = tmp_path / "prom"
    directory.mkdir()
    env = {
        **os.environ,
        **settings.with_changes(metrics_port=1).to_env(),
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "PYTHONPATH": str(ROOT),
    }
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", _PROCESS, "sweep", "3", name], env=env, check=True, cwd=ROOT)
    assert len(list(directory.glob("counter_*.db"))) == 2  # one file per process

    from prometheus_client import generate_latest

    text = generate_latest(exposition_registry(settings, directory)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert value(samples, "paglets_artifacts_jobs_total", kind="sweep", outcome="succeeded") == 4
    assert value(samples, "paglets_artifacts_job_retries_total", kind="sweep", error="ConnectionError") == 2
    assert value(samples, "paglets_artifacts_sweep_removed_total", what="parts") == 4
    assert value(samples, "paglets_artifacts_sweep_freed_bytes_total") == 20


def test_metrics_are_off_by_default(settings):
    from workers.metrics import Metrics

    metrics = Metrics(settings)
    assert settings.metrics_port == 0
    assert metrics.forks == []
    metrics.after_process_boot(None)
    assert metrics.metrics is None


def test_a_metrics_port_in_use_is_logged_and_jobs_still_run(settings, workers, jobs, metrics_dir):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        workers.start(settings=settings.with_changes(metrics_port=port))
        assert jobs.sweep().wait(timeout=30)["parts_removed"] == 0
        assert wait_until(lambda: f"metrics port {port} is in use" in workers.logs(), timeout=30)


def test_store_figures_report_an_unreadable_store(settings, tmp_path):
    from workers.metrics import StoreCollector

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    families = list(StoreCollector(settings.with_changes(store_root=blocker)).collect())
    assert [(family.name, family.samples[0].value) for family in families] == [("paglets_artifacts_store_readable", 0)]


def test_fallback_directory_is_per_dramatiq_main_process(monkeypatch):
    from workers.metrics import multiprocess_dir

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert multiprocess_dir().name == f"paglets-artifacts-metrics-{os.getppid()}"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/somewhere")
    assert multiprocess_dir() == Path("/somewhere")
