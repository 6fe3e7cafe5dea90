"""Structured worker logs: each line about a job carries its job id and artifact id."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from conftest import wait_until
from paglets_artifacts import SourceUnavailable


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_json_lines_carry_the_job_and_artifact_ids(settings, workers, files, jobs):
    workers.start(settings=settings.with_changes(log_format="json"))
    (files / "a.bin").write_bytes(os.urandom(2048))
    imported = jobs.import_file(str(files / "a.bin"))
    artifact_id = imported.wait(timeout=30)["artifact_id"]
    exported = jobs.export(artifact_id, str(files / "b.bin"))
    exported.wait(timeout=30)

    def job_lines(job_id: str) -> list[dict]:
        return [line for line in json_lines(workers.logs()) if line.get("job_id") == job_id]

    wait_until(lambda: any(line["message"].endswith("succeeded") for line in job_lines(exported.id)))
    for job_id, kind in ((imported.id, "import"), (exported.id, "export")):
        lines = job_lines(job_id)
        assert {line["message"].split()[-1] for line in lines} >= {"1)", "succeeded"}  # started (attempt 1), succeeded
        assert all(line["job_kind"] == kind and line["artifact_id"] == artifact_id for line in lines)
        assert all(line["level"] and line["logger"] and line["time"].endswith("Z") for line in lines)


def test_text_lines_carry_the_job_context(settings, workers, files, jobs):
    workers.start()
    job = jobs.import_file(str(files / "missing.bin"))
    with pytest.raises(SourceUnavailable):
        job.wait(timeout=30)
    artifact_id = job.id.replace("-", "")
    context = f"[job={job.id} kind=import artifact={artifact_id}]"
    assert wait_until(
        lambda: any(context in line and "failed: SourceUnavailable" in line for line in workers.logs().splitlines())
    )


def test_lines_outside_a_job_have_no_job_fields(capsys):
    from paglets_artifacts.logging_setup import JsonFormatter
    from workers.logs import JobContextFilter

    record = logging.LogRecord("paglets_artifacts.test", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    assert JobContextFilter().filter(record)
    assert record.job_context == ""
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello there" and "job_id" not in line and "artifact_id" not in line


def test_an_explicit_artifact_id_wins_and_exceptions_are_kept():
    from paglets_artifacts.logging_setup import JsonFormatter
    from workers.logs import JobContextFilter

    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info)
    record.artifact_id = "a" * 32
    JobContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["artifact_id"] == "a" * 32
    assert "ValueError: boom" in line["exception"]
    assert record.job_context == f"[artifact={'a' * 32}] "


def test_configure_logging_is_idempotent(settings):
    from paglets_artifacts.logging_setup import JsonFormatter
    from workers.logs import JobContextFilter, configure_logging

    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]  # only this handler: pytest's own stay untouched
    try:
        configure_logging(settings.with_changes(log_format="json"))
        configure_logging(settings.with_changes(log_format="json"))
        assert sum(isinstance(item, JobContextFilter) for item in handler.filters) == 1
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("httpx", logging.INFO, __file__, 1, msg, args or None, exc_info)


def test_the_redacting_filter_masks_urls_in_messages_and_tracebacks():
    from paglets_artifacts.logging_setup import JsonFormatter, RedactingFilter

    record = _record('HTTP Request: %s %s "%s"', "GET", "http://peer/a?token=t0k3n&name=x", "HTTP/1.1 200 OK")
    assert RedactingFilter().filter(record)
    assert record.getMessage() == 'HTTP Request: GET http://peer/a?token=***&name=x "HTTP/1.1 200 OK"'
    try:
        raise ValueError("fetching http://peer/a?sig=t0k3n failed")
    except ValueError:
        failed = _record("pull failed", exc_info=sys.exc_info())
    assert RedactingFilter().filter(failed)
    shown = JsonFormatter().format(failed) + logging.Formatter().format(failed)
    assert "t0k3n" not in shown and "sig=***" in shown


def test_the_redacting_filter_never_raises_for_arguments_that_cannot_be_formatted():
    from paglets_artifacts.logging_setup import RedactingFilter

    class Garbage:
        def __str__(self) -> str:
            raise TypeError("kwargs is a list")

    record = _record("Failed to process message %s with unhandled exception.", Garbage())
    assert RedactingFilter().filter(record)
    assert record.getMessage() == (
        "Failed to process message %s with unhandled exception. [its arguments could not be formatted: TypeError]"
    )


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_scheduler_writes_the_workers_line_format(settings, tmp_path, log_format):
    """One logging setup (paglets_artifacts.logging_setup): the scheduler's lines are the workers'."""
    import re
    import signal
    import subprocess

    from conftest import ROOT

    env = {**os.environ, **settings.with_changes(log_format=log_format, sweep_schedule="3600").to_env()}
    log_path = tmp_path / "scheduler.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        wait_until(lambda: "next fire times" in log_path.read_text(errors="replace"), timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    text = log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if log_format == "json":
        parsed = json_lines(text)
        assert len(parsed) == len(lines)
        started = next(line for line in parsed if " started (namespace " in line["message"])
        assert set(started) == {"time", "level", "logger", "message", "process", "thread"}
        assert started["time"].endswith("Z") and started["logger"] == "paglets_artifacts.scheduler"
        assert started["process"] == process.pid and started["thread"] == "MainThread"
    else:
        layout = re.compile(
            rf"^\[[\d\- :,]+\] \[PID {process.pid}\] \[MainThread\] \[paglets_artifacts\.scheduler\] "
            r"\[(INFO|WARNING)\] \S"
        )
        assert all(layout.match(line) for line in lines), lines
        assert any("] [INFO] sweep: every 3600 s; next fire times " in line for line in lines)
