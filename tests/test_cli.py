"""The ``paglets-artifacts`` command line against a real Redis and real workers.

Commands run through typer's CliRunner (in this process, configured by environment
variables as in a shell) or as subprocesses where a process is what is tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT, ReadOnly, wait_until
from paglets_artifacts import ArtifactJobs, Settings
from paglets_artifacts.cli import commands as cli
from paglets_artifacts.jobs import worker_process
from paglets_artifacts.redis_server import EmbeddedRedis, free_port

runner = CliRunner()


def invoke(settings: Settings, *args: str, **env: str | None):
    """Run the CLI with ``settings`` as its environment (plus ``env``)."""
    return runner.invoke(cli.app, list(args), env={**settings.to_env(), **env}, catch_exceptions=False)


def as_json(result) -> object:
    return json.loads(result.stdout)


def one_line_error(result) -> str:
    """The error a failed command printed: exactly one line, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines, "no error printed"
    return lines[-1]


def write(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------ job commands


def test_import_with_wait_and_json_reports_the_artifact(settings, workers, files):
    workers.start()
    sha = write(files / "a.bin", 3 * 1024 * 1024 + 5)
    result = invoke(settings, "import", str(files / "a.bin"), "--owner", "agent-1", "--wait", "--json")
    assert result.exit_code == cli.EXIT_OK, result.stderr
    record = as_json(result)
    assert record["kind"] == "import" and record["state"] == "succeeded"
    assert record["result"]["sha256"] == sha
    assert record["result"]["owner_agent_id"] == "agent-1"
    assert record["bytes_done"] == record["bytes_total"] == 3 * 1024 * 1024 + 5


def test_import_without_wait_prints_the_job_id_and_jobs_finds_it(settings, workers, files, jobs, monkeypatch):
    workers.start()
    write(files / "b.bin", 1000)
    monkeypatch.chdir(files)  # a relative path is made absolute by the CLI, not by the worker
    result = invoke(settings, "import", "b.bin")
    assert result.exit_code == 0, result.stderr
    job_id = result.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id
    jobs.job(job_id).wait(timeout=30)

    shown = invoke(settings, "jobs", job_id, "--json")
    assert shown.exit_code == 0
    assert as_json(shown)["state"] == "succeeded"
    assert as_json(shown)["arguments"]["path"] == str(files / "b.bin")

    by_prefix = invoke(settings, "jobs", job_id[:8], "--json")  # the table shows 8 characters
    assert as_json(by_prefix)["id"] == job_id

    listed = invoke(settings, "jobs", "--json", "--kind", "import", "--state", "succeeded")
    assert job_id in [record["id"] for record in as_json(listed)]

    table = invoke(settings, "jobs")
    assert job_id[:8] in table.stdout and "succeeded" in table.stdout


def test_wait_shows_progress_and_the_report(settings, workers, files):
    workers.start()
    write(files / "c.bin", 4 * 1024 * 1024)
    result = invoke(settings, "import", str(files / "c.bin"), "--wait")
    assert result.exit_code == 0, result.stderr
    assert "MiB" in result.stderr  # the progress bar: bytes of the transfer
    assert "succeeded" in result.stdout and "sha256" in result.stdout


def test_a_failed_job_exits_1_with_its_error_on_one_line(settings, workers, files):
    workers.start()
    result = invoke(settings, "import", str(files / "missing.bin"), "--wait")
    assert result.exit_code == cli.EXIT_FAILED
    line = one_line_error(result)
    assert "failed: SourceUnavailable:" in line and "missing.bin" in line

    scripted = invoke(settings, "import", str(files / "missing.bin"), "--wait", "--json")
    assert scripted.exit_code == cli.EXIT_FAILED
    record = as_json(scripted)
    assert record["state"] == "failed" and record["error"]["type"] == "SourceUnavailable"


def test_export_delete_owner_sweep_and_reindex_through_the_cli(settings, workers, files):
    workers.start()
    sha = write(files / "d.bin", 2 * 1024 * 1024)
    imported = as_json(invoke(settings, "import", str(files / "d.bin"), "--owner", "gone", "--wait", "--json"))
    artifact_id = imported["result"]["artifact_id"]

    exported = invoke(settings, "export", artifact_id, str(files / "out" / "d.bin"), "--wait", "--json")
    assert exported.exit_code == 0, exported.stderr
    assert as_json(exported)["result"]["target"] == str(files / "out" / "d.bin")
    assert hashlib.sha256((files / "out" / "d.bin").read_bytes()).hexdigest() == sha

    deleted = invoke(settings, "delete-owner", "gone", "--wait", "--json")
    assert as_json(deleted)["result"]["deleted"] == 1

    swept = invoke(settings, "sweep", "--wait", "--json")
    assert swept.exit_code == 0 and as_json(swept)["kind"] == "sweep"
    assert as_json(swept)["result"]["parts_removed"] == 0

    reindexed = invoke(settings, "reindex", "--wait", "--json")
    assert reindexed.exit_code == 0 and as_json(reindexed)["state"] == "succeeded"


def test_list_info_and_rm_work_on_the_store(settings, workers, files, jobs):
    workers.start()
    write(files / "e.bin", 4096)
    artifact_id = jobs.import_file(str(files / "e.bin"), owner_agent_id="o").wait(timeout=30)["artifact_id"]

    listed = invoke(settings, "list", "--json")
    assert [ref["artifact_id"] for ref in as_json(listed)] == [artifact_id]
    assert as_json(invoke(settings, "list", "--owner", "someone-else", "--json")) == []
    assert artifact_id in invoke(settings, "list").stdout

    info = as_json(invoke(settings, "info", artifact_id, "--json"))
    assert info["size_bytes"] == 4096 and Path(info["blob_path"]).is_file()

    removed = invoke(settings, "rm", artifact_id, "--json")
    assert as_json(removed) == {"artifact_id": artifact_id, "removed": True, "bytes_freed": 4096}
    assert not Path(info["blob_path"]).exists()

    again = invoke(settings, "info", artifact_id)
    assert again.exit_code == cli.EXIT_FAILED
    assert "ArtifactNotFound" in one_line_error(again)
    assert invoke(settings, "rm", artifact_id).exit_code == cli.EXIT_FAILED


def test_import_url_and_push_enqueue_their_job_kinds(settings):
    pulled = as_json(
        invoke(settings, "import-url", "http://peer.test:8470/artifacts/abc", "--owner", "o", "--size", "10", "--json")
    )
    assert pulled["kind"] == "import_url" and pulled["state"] == "queued"
    pushed = as_json(invoke(settings, "push", "a" * 32, "http://peer.test:8470", "--move", "--json"))
    assert pushed["kind"] == "export_to_host"
    record = as_json(invoke(settings, "jobs", pushed["id"], "--json"))
    assert record["arguments"] == {"artifact_id": "a" * 32, "host_url": "http://peer.test:8470", "move": True}
    refused = invoke(settings, "import-url", "ftp://peer.test/x")
    assert refused.exit_code == cli.EXIT_FAILED
    assert "InvalidInput" in one_line_error(refused)


# ------------------------------------------------------------------------ errors and exit codes


def test_a_configuration_error_exits_3_on_one_line(settings):
    result = invoke(settings, "jobs", PAGLETS_ARTIFACTS_QUOTA_BYTES="lots")
    assert result.exit_code == cli.EXIT_CONFIG
    assert one_line_error(result).startswith("configuration error: PAGLETS_ARTIFACTS_QUOTA_BYTES=")

    debug = runner.invoke(
        cli.app, ["--debug", "jobs"], env={**settings.to_env(), "PAGLETS_ARTIFACTS_QUOTA_BYTES": "lots"}
    )
    assert debug.exit_code == cli.EXIT_CONFIG
    assert "Traceback" in debug.stderr and "SettingsError" in debug.stderr


def test_an_unreachable_redis_exits_4_without_showing_the_password(settings):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = invoke(settings, "jobs", "--json", REDIS_URL=url)
    assert result.exit_code == cli.EXIT_UNAVAILABLE
    line = one_line_error(result)
    assert line.startswith("cannot reach Redis at redis://:***@127.0.0.1:")
    assert "hunter2" not in result.stderr + result.stdout
    assert as_json(result)["error"]["exit_code"] == cli.EXIT_UNAVAILABLE


def test_a_transient_error_exits_4_and_is_named_not_taken_for_an_unreachable_redis(settings, tmp_path):
    import redis

    from paglets_artifacts.http.remote import RemoteUnavailable
    from paglets_artifacts.store.artifacts import ArtifactStore
    from paglets_artifacts.store.redis_index import IndexKeys, IndexUnavailable

    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.set(IndexKeys(settings.namespace).build_lock, "another process building", px=10_000)
        store = ArtifactStore.from_settings(settings.with_changes(maintenance_time_limit_seconds=0.2), redis=client)
        with pytest.raises(IndexUnavailable) as raised:
            store.index.used_bytes()  # the index is missing and another process builds it
    finally:
        client.delete(IndexKeys(settings.namespace).build_lock)
        client.close()
    code, line = cli.describe_failure(raised.value, redis_url=settings.redis_url)
    assert code == cli.EXIT_UNAVAILABLE
    assert line.startswith("unavailable for now, try again: IndexUnavailable: the index ")
    assert "was not ready within 0.2 s" in line and "cannot reach Redis" not in line
    code, line = cli.describe_failure(RemoteUnavailable("http://peer/artifacts answered 503"))
    assert (code, line) == (
        cli.EXIT_UNAVAILABLE,
        "unavailable for now, try again: RemoteUnavailable: http://peer/artifacts answered 503",
    )
    code, line = cli.describe_failure(redis.ConnectionError("refused"), redis_url="redis://127.0.0.1:1/0")
    assert (code, line) == (
        cli.EXIT_UNAVAILABLE,
        "cannot reach Redis at redis://127.0.0.1:1/0: ConnectionError: refused",
    )


def test_a_redis_with_a_password(settings):
    with EmbeddedRedis(password="s3cret") as server:
        good = invoke(settings, "jobs", "--json", REDIS_URL=server.url)
        assert good.exit_code == 0 and as_json(good) == []
        wrong = invoke(settings, "jobs", REDIS_URL=server.url.replace("s3cret", "wrong"))
        assert wrong.exit_code == cli.EXIT_UNAVAILABLE
        assert "AuthenticationError" in one_line_error(wrong)
        missing = invoke(settings, "jobs", REDIS_URL=server.url.replace(":s3cret@", ""))
        assert missing.exit_code == cli.EXIT_UNAVAILABLE


def test_waiting_past_the_timeout_exits_5_and_the_job_goes_on(settings, jobs):
    result = invoke(settings, "sweep", "--wait", "--timeout", "0.3")  # no worker is running
    assert result.exit_code == cli.EXIT_TIMEOUT
    assert one_line_error(result).startswith("timeout: job ")
    assert [record.state for record in jobs.jobs(kind="sweep")] == ["queued"]


def test_an_unknown_job_exits_1(settings):
    result = invoke(settings, "jobs", str(uuid.uuid4()))
    assert result.exit_code == cli.EXIT_FAILED
    assert "no job" in one_line_error(result)


def test_usage_errors_exit_2(settings):
    assert invoke(settings, "import").exit_code == cli.EXIT_USAGE
    both = invoke(settings, "import", "/x", "--expires-at", "1", "--expires-in", "1")
    assert both.exit_code == cli.EXIT_USAGE
    assert invoke(settings, "jobs", "--state", "sleeping").exit_code == cli.EXIT_USAGE
    assert invoke(settings, "no-such-command").exit_code == cli.EXIT_USAGE


def test_an_unexpected_error_is_one_line_with_a_debug_hint(settings, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = invoke(settings, "list", PAGLETS_ARTIFACTS_STORE_ROOT=str(blocker))
    assert result.exit_code == cli.EXIT_FAILED
    assert one_line_error(result).endswith("(run with --debug for the traceback)")
    debug = runner.invoke(
        cli.app, ["--debug", "list"], env={**settings.to_env(), "PAGLETS_ARTIFACTS_STORE_ROOT": str(blocker)}
    )
    assert debug.exit_code == cli.EXIT_FAILED and "Traceback" in debug.stderr


def test_ctrl_c_while_waiting_exits_130_and_says_the_job_goes_on(settings, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.views, "follow", interrupted)
    result = invoke(settings, "sweep", "--wait")
    assert result.exit_code == cli.EXIT_INTERRUPTED
    assert "goes on" in one_line_error(result)


# ------------------------------------------------------------------------ processes


@pytest.fixture
def execs(monkeypatch):
    """Record what the CLI would exec instead of replacing the test process."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(cli, "_exec", lambda args, env: calls.append((args, env)))
    return calls


def test_worker_execs_dramatiq_with_its_options_passed_through(settings, execs):
    result = invoke(settings, "worker", "-p", "3", "-t", "4", "-Q", "artifact-transfers", "--verbose")
    assert result.exit_code == 0, result.stderr
    [(args, env)] = execs
    assert args == [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.registry",
        "--processes",
        "3",
        "--threads",
        "4",
        "--queues",
        "artifact-transfers",
        "--verbose",
    ]
    assert "PROMETHEUS_MULTIPROC_DIR" not in env or env["PROMETHEUS_MULTIPROC_DIR"] == os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR"
    )


def test_worker_polls_redis_every_100_ms_unless_told_otherwise(settings, execs):
    invoke(settings, "worker", dramatiq_worker_timeout=None)  # None: unset while the command runs
    invoke(settings, "worker", dramatiq_worker_timeout="250")
    [(_, default), (_, chosen)] = execs
    assert default[worker_process.WORKER_TIMEOUT_VARIABLE] == "100"
    assert chosen[worker_process.WORKER_TIMEOUT_VARIABLE] == "250"


def test_worker_with_metrics_gets_a_fresh_multiprocess_directory(settings, execs):
    invoke(settings, "worker", PAGLETS_ARTIFACTS_METRICS_PORT="9999", PROMETHEUS_MULTIPROC_DIR="")
    [(_args, env)] = execs
    directory = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    # the pid dramatiq's main process gets by exec
    assert directory.name == f"{worker_process.METRICS_DIR_PREFIX}{os.getpid()}"
    assert directory.is_dir() and not any(directory.iterdir())
    directory.rmdir()


def test_worker_removes_metrics_directories_of_runs_that_ended(settings, execs, tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = Path(tempfile.gettempdir()) / f"{worker_process.METRICS_DIR_PREFIX}{int(ended.stdout)}"
    stale.mkdir(exist_ok=True)
    (stale / "counter_1.db").write_bytes(b"")
    live = Path(tempfile.gettempdir()) / f"{worker_process.METRICS_DIR_PREFIX}{os.getppid()}"
    live_existed = live.exists()
    live.mkdir(exist_ok=True)
    try:
        invoke(settings, "worker", PAGLETS_ARTIFACTS_METRICS_PORT="9999", PROMETHEUS_MULTIPROC_DIR="")
        assert not stale.exists()
        assert live.is_dir()  # its process still runs
    finally:
        if not live_existed:
            shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(execs[0][1]["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def test_worker_refuses_a_bad_configuration_before_starting(settings, execs):
    result = invoke(settings, "worker", PAGLETS_ARTIFACTS_LOG_FORMAT="xml")
    assert result.exit_code == cli.EXIT_CONFIG and execs == []


def test_the_worker_command_runs_jobs(settings, jobs):
    env = {**os.environ, **settings.to_env()}
    process = subprocess.Popen(
        [sys.executable, "-m", "paglets_artifacts.cli", "worker", "--processes", "1", "--threads", "1"],
        env=env,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert jobs.sweep().wait(timeout=30)["parts_removed"] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_scheduler_execs_the_scheduler_module(settings, execs, monkeypatch):
    monkeypatch.setattr(cli, "scheduler_available", lambda: True)
    assert invoke(settings, "scheduler").exit_code == 0
    assert execs == [([sys.executable, "-m", "workers.scheduler"], execs[0][1])]


def test_scheduler_missing_is_a_one_line_error(settings, execs, monkeypatch):
    monkeypatch.setattr(cli, "scheduler_available", lambda: False)
    result = invoke(settings, "scheduler")
    assert result.exit_code == cli.EXIT_FAILED and execs == []
    assert "workers.scheduler" in one_line_error(result)


def test_scheduler_is_found_without_importing_workers():
    code = (
        "import sys; from paglets_artifacts.cli import commands as cli; "
        "print(cli.scheduler_available(), 'workers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.split() == [str((ROOT / "workers" / "scheduler.py").is_file()), "False"]


def test_serve_calls_the_http_api(settings, monkeypatch):
    import paglets_artifacts.http.server as http_server

    calls = []
    monkeypatch.setattr(http_server, "serve", lambda *args: calls.append(args))
    assert invoke(settings, "serve").exit_code == 0
    assert invoke(settings, "serve", "--host", "0.0.0.0", "--port", "9000").exit_code == 0
    assert [(host, port) for _settings, host, port in calls] == [("127.0.0.1", 8470), ("0.0.0.0", 9000)]
    assert calls[0][0].namespace == settings.namespace


def test_serve_without_the_http_api_is_a_one_line_error(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "paglets_artifacts.http.server", None)
    result = invoke(settings, "serve")
    assert result.exit_code == cli.EXIT_FAILED
    assert "paglets_artifacts.http.server" in one_line_error(result)


# ------------------------------------------------------------------------ configuration and health


def test_config_shows_every_variable_with_secrets_masked(settings):
    result = invoke(settings, "config", "--json", PAGLETS_ARTIFACTS_API_KEY="top-secret")
    values = as_json(result)
    assert set(values) == {var for var, _default, _doc in Settings.documented()}
    assert values["PAGLETS_ARTIFACTS_API_KEY"] == "***"
    assert values["PAGLETS_ARTIFACTS_NAMESPACE"] == settings.namespace
    assert "top-secret" not in invoke(settings, "config", PAGLETS_ARTIFACTS_API_KEY="top-secret").stdout


def test_check_passes_and_fails_with_exit_codes(settings):
    ok = invoke(settings, "check", "--json")
    assert ok.exit_code == 0 and as_json(ok)["ok"] is True
    down = invoke(settings, "check", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert down.exit_code == cli.EXIT_UNAVAILABLE


def test_the_console_script_reports_errors_the_same_way(settings):
    env = {**os.environ, **settings.to_env(), "PAGLETS_ARTIFACTS_FSYNC": "maybe"}
    out = subprocess.run(
        [sys.executable, "-m", "paglets_artifacts.cli", "jobs"], env=env, capture_output=True, text=True, cwd="/"
    )
    assert out.returncode == cli.EXIT_CONFIG
    assert out.stderr.strip().splitlines() == [
        "configuration error: PAGLETS_ARTIFACTS_FSYNC='maybe' is invalid: expected 1/0, true/false, yes/no or on/off"
    ]


def test_help_documents_the_exit_codes(settings):
    result = invoke(settings, "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for fragment in ("0 success", "3 configuration error", "4 Redis unreachable", "5 --timeout"):
        assert fragment in text


def test_jobs_wait_follows_a_job_started_elsewhere(settings, workers, files):
    workers.start()
    write(files / "f.bin", 1024)
    with ArtifactJobs(settings=settings) as host:
        job = host.import_file(str(files / "f.bin"))
    result = invoke(settings, "jobs", job.id, "--wait", "--json")
    assert result.exit_code == 0 and as_json(result)["state"] == "succeeded"


# ------------------------------------------------------------------------ untrusted text is never markup

#: Names, owners and paths as a hostile client may choose them: rich markup if read as such.
HOSTILE = ["[/red]model.bin", "[conceal]hidden[/conceal].bin", "[link=http://evil.test]x[/link].bin", "[bold]b"]


def wide(settings: Settings, *args: str, **env: str | None):
    """``invoke`` with a terminal wide enough that no table folds a value over two lines."""
    return invoke(settings, *args, COLUMNS="400", **env)


def _hostile_store(settings: Settings):
    import redis as redis_module

    from paglets_artifacts.store.artifacts import ArtifactStore

    return ArtifactStore.from_settings(settings, redis=redis_module.Redis.from_url(settings.redis_url))


def test_list_and_info_show_hostile_names_and_owners_as_text(settings):
    store = _hostile_store(settings)
    ids = []
    for name in HOSTILE:
        ref = store.create_from_stream(
            ReadOnly(b"x" * 10), size_bytes=10, name=name, owner_agent_id=f"[conceal]{name}"
        ).ref
        ids.append(ref.artifact_id)
    listed = wide(settings, "list")
    assert listed.exit_code == 0, listed.stderr
    for name in HOSTILE:
        assert name in listed.stdout and f"[conceal]{name}" in listed.stdout
    for artifact_id, name in zip(ids, HOSTILE, strict=True):
        shown = wide(settings, "info", artifact_id)
        assert shown.exit_code == 0, shown.stderr
        assert name in shown.stdout and f"[conceal]{name}" in shown.stdout


def test_list_shows_a_store_root_with_brackets_as_text(settings, tmp_path):
    root = tmp_path / "[/red]store"
    listed = wide(settings, "list", PAGLETS_ARTIFACTS_STORE_ROOT=str(root))
    assert listed.exit_code == 0, listed.stderr
    assert str(root) in listed.stdout


def test_jobs_show_hostile_arguments_errors_and_results_as_text(settings, jobs):
    path = f"/nowhere/{HOSTILE[0]}"
    job = jobs.import_file(path, owner_agent_id=HOSTILE[1], name=HOSTILE[2])
    message = f"cannot read {path}: [/bold] [link=http://evil.test]x[/link]"
    jobs.records.finished(job.id, state="failed", error={"type": "SourceUnavailable", "message": message})
    done = jobs.export("a" * 32, f"/nowhere/{HOSTILE[3]}/out.bin")
    jobs.records.finished(
        done.id,
        state="succeeded",
        result={"artifact_id": "a" * 32, "size_bytes": 1, "target": f"/nowhere/{HOSTILE[3]}/out.bin"},
    )
    table = wide(settings, "jobs")
    assert table.exit_code == 0, table.stderr
    assert message in table.stdout and f"/nowhere/{HOSTILE[3]}/out.bin" in table.stdout

    report = wide(settings, "jobs", job.id)
    assert report.exit_code == cli.EXIT_FAILED  # the job failed: the command did not
    assert "MarkupError" not in report.stdout + report.stderr
    for text in (path, HOSTILE[1], HOSTILE[2], message):
        assert text in report.stdout
    shown = wide(settings, "jobs", done.id)
    assert shown.exit_code == 0, shown.stderr
    assert f"/nowhere/{HOSTILE[3]}/out.bin" in shown.stdout


def test_a_failed_import_of_a_hostile_path_is_reported_and_jobs_keeps_working(settings, workers, files):
    workers.start()
    path = files / "[/red]missing.bin"
    result = wide(settings, "import", str(path), "--wait")
    assert result.exit_code == cli.EXIT_FAILED
    assert "failed: SourceUnavailable:" in one_line_error(result) and str(path) in one_line_error(result)
    assert "MarkupError" not in result.stdout + result.stderr
    listed = wide(settings, "jobs")
    assert listed.exit_code == 0, listed.stderr
    assert "[/red]missing.bin" in listed.stdout


def test_an_export_to_a_hostile_target_succeeds_and_says_so(settings, workers, files, jobs):
    workers.start()
    write(files / "g.bin", 2048)
    artifact_id = jobs.import_file(str(files / "g.bin"), name="[/bold]g.bin").wait(timeout=30)["artifact_id"]
    target = files / "[/bold]" / "[link=http://evil.test]out[/link].bin"
    result = wide(settings, "export", artifact_id, str(target), "--wait")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout and str(target) in result.stdout
    assert target.read_bytes() == (files / "g.bin").read_bytes()


# ------------------------------------------------------------------------ serving without a key


@pytest.fixture
def uvicorn_runs(monkeypatch):
    """Record what ``serve`` would run instead of serving (the checks before it are real)."""
    import paglets_artifacts.http.server as http_server

    calls: list[dict] = []
    monkeypatch.setattr(http_server.uvicorn, "run", lambda app, **options: calls.append(options))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "host.example"])
def test_serve_refuses_a_non_loopback_address_without_an_api_key(settings, uvicorn_runs, host):
    result = invoke(settings, "serve", "--host", host)
    assert result.exit_code == cli.EXIT_CONFIG
    line = one_line_error(result)
    assert host in line and "PAGLETS_ARTIFACTS_API_KEY" in line and "--insecure" in line
    assert uvicorn_runs == []


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_serve_on_loopback_needs_no_api_key(settings, uvicorn_runs, host):
    assert invoke(settings, "serve", "--host", host).exit_code == 0
    assert [call["host"] for call in uvicorn_runs] == [host]


def test_serve_on_any_address_with_an_api_key(settings, uvicorn_runs):
    assert invoke(settings, "serve", "--host", "0.0.0.0", PAGLETS_ARTIFACTS_API_KEY="k3y").exit_code == 0
    assert [call["host"] for call in uvicorn_runs] == ["0.0.0.0"]


def test_serve_without_a_key_when_told_so_warns_at_every_start(settings, uvicorn_runs, caplog):
    caplog.set_level("WARNING", logger="paglets_artifacts.http")
    assert invoke(settings, "serve", "--host", "0.0.0.0", "--insecure").exit_code == 0
    assert invoke(settings, "serve", "--host", "0.0.0.0", PAGLETS_ARTIFACTS_ALLOW_INSECURE="1").exit_code == 0
    assert len(uvicorn_runs) == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2 and all("without an API key" in text and "0.0.0.0" in text for text in warnings)


def test_serve_writes_the_projects_log_lines(settings, tmp_path):
    """``serve`` uses the one logging setup (paglets_artifacts.logging_setup), as workers,
    the scheduler and paglets-host do: here its start-up warning, as a JSON line."""
    port = free_port()
    env = {**os.environ, **settings.with_changes(log_format="json").to_env()}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paglets_artifacts.cli",
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                str(port),
                "--insecure",
            ],
            env=env,
            cwd="/",
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "without an API key" in log_path.read_text(errors="replace"), timeout=30)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    [warning] = [
        json.loads(line)
        for line in log_path.read_text().splitlines()
        if line.startswith("{") and "without an API key" in line
    ]
    assert (warning["level"], warning["logger"]) == ("WARNING", "paglets_artifacts.http")
    assert warning["process"] == process.pid


def test_the_python_serve_refuses_too(settings, uvicorn_runs):
    from paglets_artifacts.http.server import serve
    from paglets_artifacts.settings import SettingsError

    with pytest.raises(SettingsError, match="PAGLETS_ARTIFACTS_ALLOW_INSECURE"):
        serve(settings, "0.0.0.0", 8470)
    assert uvicorn_runs == []
