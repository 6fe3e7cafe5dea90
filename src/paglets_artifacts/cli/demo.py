"""The demo: the whole pipeline on one machine, from nothing running to nothing left.

``paglets-artifacts demo`` (the README's ``python3 scripts/dev.py demo``) uses
``REDIS_URL`` when it is set and otherwise starts an embedded Redis; starts a real worker
(the process ``paglets-artifacts worker`` runs) and the scheduler as child processes, in a temporary
directory with its own key namespace and allowed root; then

1. generates a file of ``--size-mib`` MiB of random bytes,
2. imports it for an owner, with a live progress bar (and a small short-lived artifact),
3. exports it and checks the SHA-256 of the exported file against the generated one,
4. deletes the owner's artifacts,
5. sweeps (the short-lived artifact has expired; a stale ``.part`` is waiting),

printing each job's report. Every child is stopped by its pid when the demo ends, fails,
or is interrupted (Ctrl-C, SIGTERM); the directory and the namespace's keys are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import redis
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from ..jobs.client import ArtifactJobs, Job, connect
from ..jobs.records import FAILED, JobRecord
from ..jobs.worker_process import WorkerProcess, scheduler_available
from ..redaction import redact_url
from ..redis_server import EmbeddedRedis, _die_with_parent, delete_namespace, free_port
from ..settings import Settings
from ..store.layout import StoreLayout
from ..store.streams import file_sha256
from . import console as views

MIB = 1024 * 1024
#: The owner whose artifacts the demo imports and then deletes.
DEMO_OWNER = "demo-paglet"
#: How long the demo's short-lived artifact lives before the sweep removes it.
SHORT_LIVED_SECONDS = 2.0
#: How long a child gets to stop after SIGTERM before it is killed.
STOP_SECONDS = 10.0
#: How long one demo job may take.
JOB_TIMEOUT_SECONDS = 900.0


class DemoFailed(RuntimeError):
    """A step of the demo did not do what it should."""


class Child:
    """A child process of the demo, in its own session so it can be stopped as a group.

    Parameters:
      name(str): what it is, for messages.
      start(Callable[[IO[bytes]], subprocess.Popen]): starts it, its output into the log given.
      log_path(Path): where its output goes.
    """

    def __init__(self, name: str, start: Callable[[IO[bytes]], subprocess.Popen], log_path: Path):
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = start(log)
        self.pid = self.process.pid

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise DemoFailed(f"the {self.name} exited with code {code}; its log ends: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM the process (it stops its own children), then kill what is left of its group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + STOP_SECONDS
        while _group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Demo:
    """Runs the demo and returns its report.

    Parameters:
      size_mib(int): size of the generated file.
      keep(bool): keep the temporary directory (its path is in the report).
      console(Console): where people see progress and reports.
      environ(dict[str, str]|None): the environment (default: ``os.environ``); ``REDIS_URL``
        there selects an existing Redis.
    """

    def __init__(
        self,
        *,
        size_mib: int = 256,
        keep: bool = False,
        console: Console | None = None,
        environ: dict[str, str] | None = None,
    ):
        self.size_mib = size_mib
        self.keep = keep
        self.console = console or Console()
        self.environ = dict(os.environ if environ is None else environ)
        self.children: list[Child] = []
        self.redis: EmbeddedRedis | None = None
        self.directory: Path | None = None
        self.settings: Settings | None = None
        self.report: dict[str, Any] = {}
        self.interrupted = False

    # ------------------------------------------------------------------ running

    def run(self) -> dict[str, Any]:
        """Run every step; stop every child and clean up whatever happens."""
        handled = (signal.SIGINT, signal.SIGTERM)
        in_main_thread = _in_main_thread()
        previous = {signum: signal.getsignal(signum) for signum in handled}
        if in_main_thread:
            for signum in handled:
                signal.signal(signum, self._interrupt)
        started = time.monotonic()
        try:
            self._steps()
            self.report["seconds"] = round(time.monotonic() - started, 2)
            self.report["ok"] = True
            return self.report
        finally:
            if in_main_thread:  # a second Ctrl-C must not cut the cleanup short
                for signum in handled:
                    signal.signal(signum, signal.SIG_IGN)
            try:
                self._teardown()
            finally:
                if in_main_thread:
                    for signum, handler in previous.items():
                        signal.signal(signum, handler)

    def _interrupt(self, signum: int, frame: Any) -> None:
        # SIGTERM ends the demo the way Ctrl-C does: through the cleanup. The flag keeps
        # the request when the exception is lost (raised inside an at-fork hook of Popen).
        self.interrupted = True
        raise KeyboardInterrupt

    def _check_interrupted(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def _say(self, text: Any) -> None:
        # Markup comes from this module's literals only: paths and errors are escaped.
        self.console.print(text)

    def _steps(self) -> None:
        base = Settings.from_env(self.environ)  # a configuration error stops the demo before it starts anything
        namespace = f"paglets-artifacts-demo-{uuid.uuid4().hex[:8]}"
        self.directory = Path(tempfile.mkdtemp(prefix="paglets-artifacts-demo-"))
        files = self.directory / "files"
        files.mkdir()
        redis_url = self.environ.get("REDIS_URL")
        self.report.update(namespace=namespace, directory=str(self.directory), size_bytes=self.size_mib * MIB)
        self._say(
            f"[bold]paglets-artifacts demo[/bold]: namespace {namespace}, directory {escape(str(self.directory))}"
        )
        if redis_url:
            self.report["redis"] = {"embedded": False, "pid": None}
            self._say("Redis: REDIS_URL (keys only under the demo's namespace)")
        else:
            self.redis = EmbeddedRedis()
            redis_url = self.redis.start()
            self._check_interrupted()
            pid = self.redis.process.pid if self.redis.process else None
            self.report["redis"] = {"embedded": True, "pid": pid}
            self._say(f"Redis: embedded redis-server started (pid {pid}, {escape(redact_url(redis_url))})")
        settings = base.with_changes(
            redis_url=redis_url,
            namespace=namespace,
            store_root=self.directory / "store",
            allowed_roots=(files.resolve(),),
            metrics_port=free_port(),
        )
        self.settings = settings
        self._start_processes(settings)
        source = files / "demo-input.bin"
        sha256 = self._generate(source)
        self.report["sha256"] = sha256
        jobs_report: dict[str, Any] = {}
        self.report["jobs"] = jobs_report
        with ArtifactJobs(settings=settings) as jobs:
            worker = self.children[0]
            # 1. Import, for an owner, with a live progress bar.
            record = self._run_job(
                jobs.import_file(str(source), owner_agent_id=DEMO_OWNER, expected_sha256=sha256),
                f"import {source.name}",
                worker,
            )
            jobs_report["import"] = record.to_wire()
            artifact_id = record.result["artifact_id"]
            # A short-lived artifact for the sweep to find expired.
            short = files / "short-lived.bin"
            short.write_bytes(os.urandom(MIB))
            expires_at = time.time() + SHORT_LIVED_SECONDS
            record = self._run_job(
                jobs.import_file(str(short), expires_at=expires_at), "import short-lived.bin", worker
            )
            jobs_report["import_short_lived"] = record.to_wire()
            # 2. Export, then check the exported bytes ourselves.
            target = files / "exported" / "demo-output.bin"
            record = self._run_job(jobs.export(artifact_id, str(target)), f"export {artifact_id[:8]}", worker)
            jobs_report["export"] = record.to_wire()
            exported = file_sha256(target)
            if exported != sha256:
                raise DemoFailed(f"exported file's SHA-256 {exported} differs from the generated {sha256}")
            self.report["verified"] = True
            self._say(f"[green]verified[/green]: {escape(str(target))} has SHA-256 {exported}")
            # 3. Owner deletion.
            record = self._run_job(jobs.delete_owner(DEMO_OWNER), f"delete-owner {DEMO_OWNER}", worker)
            jobs_report["delete_owner"] = record.to_wire()
            # 4. Sweep: a stale .part (as a crashed upload leaves) and the expired artifact.
            self._plant_stale_part(settings)
            time.sleep(max(0.0, expires_at - time.time() + 0.1))
            record = self._run_job(jobs.sweep(), "sweep", worker)
            jobs_report["sweep"] = record.to_wire()
            records = [jobs.job(wire["id"]).status() for wire in jobs_report.values()]
        self._say(views.jobs_table(records))
        self.report["metrics"] = self._metrics(settings)

    def _start_processes(self, settings: Settings) -> None:
        assert self.directory is not None
        env = {**self.environ, **settings.to_env()}
        metrics_dir = self.directory / "metrics"  # removed with the demo's directory
        metrics_dir.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        command = WorkerProcess(processes=1, threads=2, options=["--worker-shutdown-timeout", "5000"], environ=env)
        worker = Child(
            "worker", lambda log: command.start(stdout=log, preexec_fn=_die_with_parent), self.directory / "worker.log"
        )
        self.children.append(worker)
        self._check_interrupted()
        self._say(f"worker: paglets-artifacts worker started (pid {worker.pid})")
        processes: dict[str, Any] = {"worker": worker.pid, "scheduler": None}
        if scheduler_available():  # robust to a checkout without the scheduler

            def start_scheduler(log: IO[bytes]) -> subprocess.Popen:
                return subprocess.Popen(
                    [sys.executable, "-m", "paglets_artifacts.cli", "scheduler"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )

            scheduler = Child("scheduler", start_scheduler, self.directory / "scheduler.log")
            self.children.append(scheduler)
            self._check_interrupted()
            processes["scheduler"] = scheduler.pid
            self._say(f"scheduler: paglets-artifacts scheduler started (pid {scheduler.pid})")
        else:
            self.report["notes"] = ["the scheduler (workers.scheduler) is not installed; the demo ran without it"]
            self._say("scheduler: not installed (workers.scheduler); going on without it")
        self.report["processes"] = processes

    def _generate(self, path: Path) -> str:
        digest = hashlib.sha256()
        columns: list[Any] = ["generating", BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn()]
        with Progress(*columns, console=self.console) as progress, open(path, "wb") as out:
            task = progress.add_task("generate", total=self.size_mib * MIB)
            for _ in range(self.size_mib):
                chunk = os.urandom(MIB)
                digest.update(chunk)
                out.write(chunk)
                progress.advance(task, MIB)
        sha256 = digest.hexdigest()
        self._say(f"generated {path.name}: {self.size_mib} MiB, SHA-256 {sha256}")
        return sha256

    def _run_job(self, job: Job, label: str, worker: Child) -> JobRecord:
        def check() -> None:
            self._check_interrupted()
            worker.check_alive()

        record = views.follow(job, self.console, label=label, timeout=JOB_TIMEOUT_SECONDS, check=check)
        self._say(views.job_report(record))
        if record.state == FAILED:
            raise DemoFailed(views.error_line(record))
        return record

    def _plant_stale_part(self, settings: Settings) -> None:
        layout = StoreLayout.at(settings.store_root)
        layout.ensure()
        part = layout.part(uuid.uuid4().hex)
        part.write_bytes(os.urandom(64 * 1024))
        old = time.time() - settings.spool_ttl_seconds - 60
        os.utime(part, (old, old))
        self._say(f"planted a stale upload leftover: {part.name} (64 KiB, older than the spool TTL)")

    def _metrics(self, settings: Settings) -> dict[str, float]:
        """A few figures from the worker's Prometheus endpoint (empty if it does not answer)."""
        wanted = (
            "paglets_artifacts_jobs_total",
            "paglets_artifacts_imported_bytes_total",
            "paglets_artifacts_exported_bytes_total",
            "paglets_artifacts_store_used_bytes",
        )
        try:
            from prometheus_client.parser import text_string_to_metric_families

            with urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except (OSError, ValueError) as exc:
            self._say(f"metrics: not available ({escape(str(exc))})")
            return {}
        figures: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    label = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
                    figures[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
        table = Table(title=f"metrics (http://127.0.0.1:{settings.metrics_port}/metrics)", box=None)
        table.add_column("metric", overflow="fold")
        table.add_column("value", justify="right")
        for name, value in sorted(figures.items()):
            table.add_row(name, f"{value:,.0f}" if float(value).is_integer() else f"{value:g}")
        self._say(table)
        return figures

    # ------------------------------------------------------------------ teardown

    def _teardown(self) -> None:
        stopped = []
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
            stopped.append(child.name)
        if stopped:
            self._say(f"stopped: {', '.join(stopped)}")
        if self.redis is not None:
            self.redis.close()
            self._say("stopped: embedded redis-server")
        elif self.settings is not None:
            _drop_namespace(self.settings)
        if self.directory is not None:
            if self.keep:
                self._say(f"kept {escape(str(self.directory))}")
            else:
                shutil.rmtree(self.directory, ignore_errors=True)
        self.report["stopped"] = stopped


def _drop_namespace(settings: Settings) -> None:
    """Remove the demo's keys from a Redis the demo did not start."""
    with contextlib.suppress(redis.RedisError):
        client = connect(settings)
        try:
            delete_namespace(client, settings.namespace)
        finally:
            client.close()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["Demo", "DemoFailed"]
