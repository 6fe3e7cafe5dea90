"""Starting a worker process: one command line and one environment for every caller.

``paglets-artifacts worker`` execs it; the demo, the tests and the benchmarks start it as a
child in its own session (so that one signal to its process group stops the Dramatiq main
process and its forks). The worker loads :data:`REGISTRY_MODULE`, which lives in
``workers``: this package names it and never imports it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..settings import Settings

#: The module a worker process loads: the broker, and every actor registered on it.
REGISTRY_MODULE = "workers.registry"
#: Dramatiq's variable for how long (ms) an idle worker's consumer sleeps between polls of
#: Redis at most; its default, 1000, adds up to a second to a job enqueued to idle workers.
WORKER_TIMEOUT_VARIABLE = "dramatiq_worker_timeout"
#: What a worker gets unless it is set. An idle process then polls each of its queues and
#: their delay queues every 50 to 100 ms (Dramatiq's jitter): about 50 Redis calls a second
#: per idle process with this project's two queues.
WORKER_TIMEOUT_MS = 100
#: Name of a worker run's metrics directory, followed by the pid of its main process.
METRICS_DIR_PREFIX = "paglets-artifacts-metrics-"


@dataclass(frozen=True)
class WorkerProcess:
    """One ``python -m dramatiq workers.registry`` process, as it is started or exec'ed.

    Parameters:
      settings(Settings|None): written into its environment (``REDIS_URL`` and the
        ``PAGLETS_ARTIFACTS_*`` variables); None: the environment's own.
      processes(int|None): Dramatiq's ``--processes`` (None: Dramatiq's default).
      threads(int|None): Dramatiq's ``--threads`` (None: Dramatiq's default).
      queues(Sequence[str]): only these queues (empty: every queue).
      modules(Sequence[str]): more modules the worker loads after the actors
        (``benchmarks.stress`` and its crash points).
      options(Sequence[str]): other Dramatiq options, passed through.
      pythonpath(Sequence[str|Path]): directories put first on ``PYTHONPATH``, where
        ``modules`` are found.
      environ(Mapping[str, str]|None): the environment it starts from (default ``os.environ``).
      extra_env(Mapping[str, str]): variables set last.
    """

    settings: Settings | None = None
    processes: int | None = None
    threads: int | None = None
    queues: Sequence[str] = ()
    modules: Sequence[str] = ()
    options: Sequence[str] = ()
    pythonpath: Sequence[str | Path] = ()
    environ: Mapping[str, str] | None = None
    extra_env: Mapping[str, str] | None = None

    def argv(self) -> list[str]:
        """The command line."""
        args = [sys.executable, "-m", "dramatiq", REGISTRY_MODULE, *self.modules]
        if self.processes:
            args += ["--processes", str(self.processes)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.queues:
            args += ["--queues", *self.queues]
        return args + list(self.options)

    def env(self) -> dict[str, str]:
        """The environment: the base one, the worker timeout unless it is set, the settings,
        ``extra_env``, and ``pythonpath`` before any ``PYTHONPATH`` already there."""
        env = dict(os.environ if self.environ is None else self.environ)
        env.setdefault(WORKER_TIMEOUT_VARIABLE, str(WORKER_TIMEOUT_MS))
        if self.settings is not None:
            env.update(self.settings.to_env())
        env.update(self.extra_env or {})
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*map(str, self.pythonpath), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def exec_env(self) -> dict[str, str]:
        """:meth:`env` for a worker that replaces this process (``os.exec*``): with metrics on
        and no ``PROMETHEUS_MULTIPROC_DIR``, a fresh directory named by this process's pid,
        which the worker's main process keeps."""
        env = self.env()
        settings = self.settings or Settings.from_env(env)
        if settings.metrics_port > 0 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
            env["PROMETHEUS_MULTIPROC_DIR"] = fresh_metrics_dir()
        return env

    def start(
        self,
        *,
        stdout: IO[bytes] | int | None = None,
        cwd: str | Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen:
        """Start it as a child in its own session; its stderr goes where its ``stdout`` goes."""
        return subprocess.Popen(
            self.argv(),
            env=self.env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )


def fresh_metrics_dir() -> str:
    """An empty directory for prometheus_client's multiprocess files (one per worker run,
    named by the pid the worker's main process will have); those of runs whose main
    process is gone are removed."""
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{METRICS_DIR_PREFIX}*"):
        pid = stale.name[len(METRICS_DIR_PREFIX) :]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = base / f"{METRICS_DIR_PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scheduler_available() -> bool:
    """Whether ``workers.scheduler`` is installed."""
    # Found without importing ``workers``: this package never imports the worker side.
    spec = importlib.util.find_spec("workers")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return any((Path(location) / "scheduler.py").is_file() for location in locations)
