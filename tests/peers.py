"""Real peers in their own processes: our ``serve``, paglets' own ``paglets host``, and our
``paglets-host`` (a real paglets Host with offloading attached).

Each is started the way a user starts it (the console command, environment variables),
waited for until it answers HTTP, and killed with its whole process group afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from paglets_artifacts.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Peer:
    """One server process on loopback.

    Parameters:
      args(list[str]): the command line.
      port(int): the port it listens on.
      env(dict[str, str]): its whole environment.
      log(Path): where its stdout and stderr go.
    """

    def __init__(self, args: list[str], port: int, env: dict[str, str], log: Path):
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, *, ready_path: str = "/artifacts", timeout: float = 60.0) -> Peer:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited with {self.process.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(self.url + ready_path, timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answers (401 without a key, say): it is up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args[0]} did not answer on {self.url} within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
    return env


def serve(settings_env: dict[str, str], log: Path, *, port: int | None = None) -> Peer:
    """``paglets-artifacts serve`` with these settings; its host URL is its own address."""
    port = port or free_port()
    env = environment({**settings_env, "PAGLETS_ARTIFACTS_HOST_URL": f"http://127.0.0.1:{port}"})
    return Peer([str(BIN / "paglets-artifacts"), "serve", "--port", str(port)], port, env, log)


def paglets_host(name: str, persistence_dir: Path, log: Path, *, api_key: str = "", port: int | None = None) -> Peer:
    """paglets' own ``paglets host`` (no mesh discovery: tests stay on loopback)."""
    port = port or free_port()
    env = environment({"PAGLETS_API_KEY": api_key})
    if not api_key:
        del env["PAGLETS_API_KEY"]
    args = [
        str(BIN / "paglets"),
        "host",
        "--name",
        name,
        "--port",
        str(port),
        "--no-mesh",
        "--persistence-dir",
        str(persistence_dir),
        # an empty launch config of the test's own: nothing of the user's home is read or written
        "--no-sync-launch-config",
        "--launch-config",
        str(persistence_dir / "launch.toml"),
    ]
    return Peer(args, port, env, log)


def offloaded_host(
    name: str,
    settings_env: dict[str, str],
    persistence_dir: Path,
    log: Path,
    *,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> Peer:
    """Our ``paglets-artifacts paglets-host``: a real paglets Host with offloading attached."""
    port = port or free_port()
    env = environment(settings_env)
    args = [
        str(BIN / "paglets-artifacts"),
        "paglets-host",
        "--name",
        name,
        "--port",
        str(port),
        "--persistence-dir",
        str(persistence_dir),
        *extra_args,
    ]
    return Peer(args, port, env, log)
