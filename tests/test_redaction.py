"""One rule shows URLs without their secrets: userinfo and secret query parameters are
masked wherever a URL is shown (CLI errors, ``config``, ``check``, ``repr(Settings)``)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import wait_until
from paglets_artifacts import Settings
from paglets_artifacts.cli import commands as cli
from paglets_artifacts.redaction import redact_text, redact_url
from paglets_artifacts.redis_server import free_port

runner = CliRunner()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@db:6379/0", "redis://:***@db:6379/0"),
        ("redis://app:hunter2@db:6379/0", "redis://app:***@db:6379/0"),
        ("https://ghp_hunter2@git.example/x", "https://***@git.example/x"),
        ("redis://127.0.0.1:1/0?password=hunter2", "redis://127.0.0.1:1/0?password=***"),
        ("redis://db/0?PassWord=hunter2&db=1", "redis://db/0?PassWord=***&db=1"),
        ("http://peer/a?token=hunter2&name=x", "http://peer/a?token=***&name=x"),
        ("http://peer/a?name=x&Signature=hunter2;sig=hunter2", "http://peer/a?name=x&Signature=***;sig=***"),
        (
            "http://peer/a?secret=hunter2&key=hunter2&api_key=hunter2&access_token=hunter2",
            "http://peer/a?secret=***&key=***&api_key=***&access_token=***",
        ),
        (
            "https://s3.example/b/o?X-Amz-Credential=hunter2&X-Amz-Signature=hunter2&x-amz-security-token=hunter2",
            "https://s3.example/b/o?X-Amz-Credential=***&X-Amz-Signature=***&x-amz-security-token=***",
        ),
        (
            "http://peer/a?upload_token=hunter2&client_secret=hunter2",
            "http://peer/a?upload_token=***&client_secret=***",
        ),
        ("http://peer/a#access_token=hunter2&state=1", "http://peer/a#access_token=***&state=1"),
        ("http://peer:8470/artifacts/abc?name=model.bin", "http://peer:8470/artifacts/abc?name=model.bin"),
        ("http://[::1?password=hunter2", "http://[::1?password=***"),  # does not parse: redacted all the same
        ("unix:///run/redis.sock?db=0&password=hunter2", "unix:///run/redis.sock?db=0&password=***"),
    ],
)
def test_a_url_is_shown_with_userinfo_and_secret_parameters_masked(url, shown):
    assert redact_url(url) == shown


def test_urls_inside_text_are_redacted_and_the_rest_is_left_alone():
    line = "paglets_artifacts_import_url(url='http://peer/a?token=hunter2', owner_agent_id='o') via redis://:pw@db/0"
    assert redact_text(line) == (
        "paglets_artifacts_import_url(url='http://peer/a?token=***', owner_agent_id='o') via redis://:***@db/0"
    )
    assert redact_text("no url here, token=x") == "no url here, token=x"


def test_the_cli_has_no_masking_rule_of_its_own():
    assert not hasattr(cli, "mask_url")


def _invoke(settings: Settings, *args: str, **env: str):
    return runner.invoke(cli.app, list(args), env={**settings.to_env(), **env}, catch_exceptions=False)


@pytest.mark.parametrize("command", [["jobs"], ["check"], ["sweep"], ["jobs", "--json"]])
def test_an_unreachable_redis_with_a_password_query_never_shows_it(settings, command):
    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2"
    result = _invoke(settings, *command, REDIS_URL=url)
    assert result.exit_code == cli.EXIT_UNAVAILABLE
    assert "hunter2" not in result.stdout + result.stderr
    assert "password=***" in result.stderr


def test_config_and_settings_repr_mask_a_password_query(settings):
    url = "redis://127.0.0.1:6390/0?password=hunter2"
    shown = json.loads(_invoke(settings, "config", "--json", REDIS_URL=url).stdout)
    assert shown["REDIS_URL"] == "redis://127.0.0.1:6390/0?password=***"
    assert "hunter2" not in _invoke(settings, "config", REDIS_URL=url).stdout
    assert "hunter2" not in repr(Settings(redis_url=url))
    assert "redis://127.0.0.1:6390/0?password=***" in repr(Settings(redis_url=url))


def test_config_shows_remote_host_urls_redacted_and_their_keys_masked(settings):
    shown = json.loads(
        _invoke(
            settings,
            "config",
            "--json",
            PAGLETS_ARTIFACTS_ALLOWED_HOSTS="http://peer:8470?token=hunter2",
            PAGLETS_ARTIFACTS_HOST_API_KEYS="http://peer:8470=k3y",
        ).stdout
    )
    assert shown["PAGLETS_ARTIFACTS_ALLOWED_HOSTS"] == "http://peer:8470?token=***"
    assert shown["PAGLETS_ARTIFACTS_HOST_API_KEYS"] == "http://peer:8470=***"


def test_a_malformed_redis_url_with_a_password_query_is_reported_without_it():
    from paglets_artifacts.settings import SettingsError

    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"REDIS_URL": "127.0.0.1:1?password=hunter2"})
    assert "hunter2" not in str(raised.value) and "REDIS_URL" in str(raised.value)


# ------------------------------------------------------------------------ secrets in pulled URLs

TOKEN, SIGNATURE = "tok-7c1e9a55", "sig-40d2b8f3"


def _signed(url: str) -> str:
    return f"{url}?token={TOKEN}&X-Amz-Signature={SIGNATURE}&name=kept"


def _redis_values(client, namespace: str, *, holding: str | None = None) -> str | set[str]:
    """Every value under ``namespace`` as text; with ``holding``, the keys whose values hold it."""
    stored = []
    keys = set()
    for key in client.scan_iter(match=f"{namespace}*"):
        before = len(stored)
        kind = client.type(key)
        if kind == b"hash":
            stored += [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == b"string":
            stored.append(client.get(key))
        elif kind == b"list":
            stored += client.lrange(key, 0, -1)
        elif kind == b"zset":
            stored += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        if holding is not None and holding in b"\n".join(stored[before:]).decode(errors="replace"):
            keys.add(key.decode())
    return keys if holding is not None else b"\n".join(stored).decode(errors="replace")


def test_a_job_record_keeps_the_redacted_url_and_the_message_the_whole_one(settings, jobs):
    job = jobs.import_url(_signed("http://peer.test:8470/artifacts/" + "ab" * 16))
    assert job.status().arguments["url"] == "http://peer.test:8470/artifacts/" + "ab" * 16 + (
        "?token=***&X-Amz-Signature=***&name=kept"
    )
    record = jobs.client.hgetall(jobs.records.key(job.id))
    assert TOKEN not in b"".join(record.values()).decode()
    messages = jobs.client.hgetall(f"{settings.namespace}:artifact-transfers.msgs")
    [payload] = messages.values()
    assert TOKEN in payload.decode() and SIGNATURE in payload.decode()  # what the worker needs, and only there


def _scrape(port: int) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return text if "paglets_artifacts_jobs_total" in text else None


def test_a_pre_signed_pull_reaches_the_worker_but_no_record_log_or_metric(settings, tmp_path, workers):
    from paglets_artifacts import ArtifactJobs, ArtifactRef, TransferError
    from paglets_artifacts.http.app import create_app
    from paglets_artifacts.http.server import ServerThread

    peer_settings = settings.with_changes(store_root=tmp_path / "peer-store", namespace=settings.namespace + "-peer")
    peer_jobs = ArtifactJobs(settings=peer_settings)
    with ServerThread(create_app(peer_settings, jobs=peer_jobs)) as peer:
        import httpx

        uploaded = httpx.post(f"{peer.url}/artifacts", content=b"signed bytes").json()["artifact"]
        metrics_port = free_port()
        puller = settings.with_changes(allowed_hosts=(peer.url,), metrics_port=metrics_port)
        workers.start(settings=puller)
        with ArtifactJobs(settings=puller) as jobs:
            pulled = jobs.import_url(_signed(f"{peer.url}/artifacts/{uploaded['artifact_id']}"))
            ref = ArtifactRef.from_wire(pulled.wait(60))
            assert ref.sha256 == uploaded["sha256"]
            refused = jobs.import_url(_signed(f"{peer.url}/missing/data.bin"))  # a GET of the URL itself: 404
            with pytest.raises(TransferError) as raised:
                refused.wait(60)
            assert TOKEN not in str(raised.value) and "token=***" in str(raised.value)
            assert "token=***" in refused.status().error["message"]
            metrics = wait_until(lambda: _scrape(metrics_port))  # the exposition process starts on its own
            holders = {
                secret: _redis_values(jobs.client, settings.namespace, holding=secret) for secret in (TOKEN, SIGNATURE)
            }
        logs = workers.logs()
        assert "HTTP Request: GET" in logs and "token=***" in logs  # httpx's line is there, redacted
        for secret in (TOKEN, SIGNATURE):
            # Records, index and live queues hold no secret; the failed job's message is kept,
            # whole, in Dramatiq's dead-letter queue (see README).
            assert holders[secret] == {f"{settings.namespace}:artifact-transfers.XQ.msgs"}, holders
            assert secret not in logs, "in the worker's log"
            assert secret not in metrics, "in the metrics"
    peer_jobs.close()


def test_every_parameter_name_the_readme_lists_as_secret_is_masked():
    import re

    from conftest import ROOT
    from paglets_artifacts.redaction import secret_parameter

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rule = readme.split("goes through one rule", 1)[1].split("`paglets-artifacts --debug COMMAND`", 1)[0]
    names = re.findall(r"`([A-Za-z_-]+)`", rule.split("case-insensitively:", 1)[1])
    assert len(names) >= 12
    for name in names:
        if name in ("X-Amz-", "X-Goog-"):
            name += "Signature"
        assert secret_parameter(name) and secret_parameter(name.upper()), name
        assert redact_url(f"http://h/p?{name}=hunter2") == f"http://h/p?{name}=***"
    assert not secret_parameter("name") and not secret_parameter("db")


def test_the_readme_lists_every_secret_parameter_name_of_the_rule():
    from conftest import ROOT
    from paglets_artifacts.redaction import SECRET_PARAMETERS, SECRET_PREFIXES, SECRET_WORDS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rule = " ".join(
        readme.split("goes through one rule", 1)[1].split("`paglets-artifacts --debug COMMAND`", 1)[0].split()
    )
    for name in (*SECRET_PARAMETERS, *SECRET_WORDS):
        assert f"`{name}`" in rule, name
    for prefix in SECRET_PREFIXES:
        assert f"`{prefix}`".lower() in rule.lower(), prefix
