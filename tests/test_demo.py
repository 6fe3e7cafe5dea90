"""The demo end to end, as the README runs it: from nothing running to nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_until
from paglets_artifacts.cli import commands as cli

DEMO = [sys.executable, "-m", "paglets_artifacts.cli", "demo"]


def fresh_machine_env(**extra: str) -> dict[str, str]:
    """The environment of a machine where nothing runs: no REDIS_URL, no project variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "REDIS_URL" and not key.startswith("PAGLETS_ARTIFACTS_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["COLUMNS"] = "200"  # one line per message, so the test can read pids from the output
    return {**env, **extra}


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            data = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in data:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0


def assert_nothing_left(namespace: str, pids: list[int], directory: str) -> None:
    assert wait_until(lambda: all(gone(pid) for pid in pids), timeout=10)
    assert processes_mentioning(namespace) == []
    assert not Path(directory).exists()


def test_the_demo_runs_the_whole_pipeline_and_leaves_nothing_behind(tmp_path):
    out = subprocess.run(
        [*DEMO, "--size-mib", "8", "--json"],
        env=fresh_machine_env(),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["verified"] is True
    assert report["redis"]["embedded"] is True
    assert report["size_bytes"] == 8 * 1024 * 1024
    jobs = report["jobs"]
    assert {name: record["state"] for name, record in jobs.items()} == {
        "import": "succeeded",
        "import_short_lived": "succeeded",
        "export": "succeeded",
        "delete_owner": "succeeded",
        "sweep": "succeeded",
    }
    assert jobs["import"]["result"]["sha256"] == report["sha256"]
    assert jobs["import"]["bytes_done"] == 8 * 1024 * 1024
    assert jobs["export"]["result"]["sha256"] == report["sha256"]
    assert jobs["delete_owner"]["result"]["deleted"] == 1
    assert jobs["delete_owner"]["result"]["bytes_freed"] == 8 * 1024 * 1024
    assert jobs["sweep"]["result"]["expired_removed"] == 1
    assert jobs["sweep"]["result"]["parts_removed"] == 1
    assert report["metrics"]["paglets_artifacts_jobs_total{kind=import,outcome=succeeded}"] == 2
    # The people's output went to stderr: progress bars and each job's report.
    assert "import demo-input.bin" in out.stderr and "verified" in out.stderr
    if report["processes"]["scheduler"] is None:
        assert report["notes"]
    pids = [pid for pid in (report["redis"]["pid"], *report["processes"].values()) if pid]
    assert_nothing_left(report["namespace"], pids, report["directory"])


def _read_until(process: subprocess.Popen, pattern: str, seen: list[str], timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, "".join(seen))
        if match:
            return match
    raise AssertionError(f"{pattern!r} not in the demo's output: {''.join(seen)[-2000:]}")


def _start_demo(tmp_path: Path, size_mib: int) -> tuple[subprocess.Popen, list[str], str, str, list[int]]:
    process = subprocess.Popen(
        [*DEMO, "--size-mib", str(size_mib)],
        env=fresh_machine_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    header = _read_until(process, r"namespace (\S+), directory (\S+)", seen)
    redis_pid = int(_read_until(process, r"redis-server started \(pid (\d+)", seen).group(1))
    worker_pid = int(_read_until(process, r"worker started \(pid (\d+)", seen).group(1))
    return process, seen, header.group(1), header.group(2), [redis_pid, worker_pid]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_demo_stops_every_child_and_removes_the_directory(tmp_path, signum):
    process, seen, namespace, directory, pids = _start_demo(tmp_path, 64)
    process.send_signal(signum)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == cli.EXIT_INTERRUPTED, "".join(seen) + rest
    assert "interrupted" in rest
    assert_nothing_left(namespace, pids, directory)


def test_a_worker_that_dies_fails_the_demo_and_it_still_cleans_up(tmp_path):
    process, seen, namespace, directory, pids = _start_demo(tmp_path, 64)
    os.killpg(pids[1], signal.SIGKILL)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == cli.EXIT_FAILED, "".join(seen) + rest
    errors = [line for line in rest.splitlines() if line.startswith("error: ")]
    assert errors and "DemoFailed: the worker exited with code -9" in errors[-1]
    assert "Traceback" not in rest
    assert_nothing_left(namespace, pids, directory)


def test_a_bad_configuration_stops_the_demo_before_it_starts_anything(tmp_path):
    out = subprocess.run(
        [*DEMO, "--size-mib", "1"],
        env=fresh_machine_env(PAGLETS_ARTIFACTS_LOG_FORMAT="xml"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == cli.EXIT_CONFIG
    assert out.stderr.strip().splitlines()[-1].startswith("configuration error: PAGLETS_ARTIFACTS_LOG_FORMAT=")
    assert "redis-server started" not in out.stdout
