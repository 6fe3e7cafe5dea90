"""The one worker-process launcher: its command line, its environment, its own session."""

from __future__ import annotations

import os
import signal
import sys

from conftest import ROOT
from paglets_artifacts.jobs.worker_process import REGISTRY_MODULE, WORKER_TIMEOUT_VARIABLE, WorkerProcess


def test_the_command_loads_the_registry_then_the_extra_modules_then_the_options():
    command = WorkerProcess(
        processes=2,
        threads=3,
        queues=["artifact-maintenance"],
        modules=["benchmarks.stress"],
        options=["--worker-shutdown-timeout", "5000"],
    )
    assert command.argv() == [
        sys.executable,
        "-m",
        "dramatiq",
        REGISTRY_MODULE,
        "benchmarks.stress",
        "--processes",
        "2",
        "--threads",
        "3",
        "--queues",
        "artifact-maintenance",
        "--worker-shutdown-timeout",
        "5000",
    ]
    assert WorkerProcess().argv() == [sys.executable, "-m", "dramatiq", "workers.registry"]


def test_the_environment_has_the_settings_the_poll_interval_and_the_path(settings):
    base = {"PYTHONPATH": "/elsewhere", "PAGLETS_ARTIFACTS_NAMESPACE": "overridden", "KEPT": "1"}
    env = WorkerProcess(settings=settings, environ=base, pythonpath=[ROOT], extra_env={"LAST": "2"}).env()
    assert env["KEPT"] == "1" and env["LAST"] == "2"
    assert env["PAGLETS_ARTIFACTS_NAMESPACE"] == settings.namespace  # the settings win over the base
    assert env[WORKER_TIMEOUT_VARIABLE] == "100"
    assert env["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/elsewhere"])
    chosen = WorkerProcess(environ={WORKER_TIMEOUT_VARIABLE: "250"}).env()
    assert chosen == {WORKER_TIMEOUT_VARIABLE: "250"}  # nothing else added without settings or a path


def test_a_started_worker_runs_jobs_in_its_own_session(settings, jobs, tmp_path):
    with open(tmp_path / "worker.log", "wb") as log:
        process = WorkerProcess(settings=settings, processes=1, threads=1).start(stdout=log, cwd="/")
    try:
        assert os.getsid(process.pid) == process.pid  # one signal to its group stops it all
        assert jobs.sweep().wait(timeout=30)["parts_removed"] == 0
    finally:
        process.send_signal(signal.SIGTERM)  # Dramatiq's main process stops its forks
        assert process.wait(timeout=30) == 0
    assert " sweep started (attempt 1)" in (tmp_path / "worker.log").read_text(errors="replace")  # stderr too
